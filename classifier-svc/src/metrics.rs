//! Metric names, by stage (admission -> queue -> tokenization -> inference), and the Prometheus
//! recorder with bucket layouts that fit an inference server.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "classifier_requests_total";
pub const REQUEST_SECONDS: &str = "classifier_request_duration_seconds";
pub const IN_FLIGHT: &str = "classifier_admission_in_flight_texts";
pub const REJECTED: &str = "classifier_admission_rejected_total";
pub const QUEUE_SIZE: &str = "classifier_queue_size";
pub const QUEUE_SECONDS: &str = "classifier_queue_duration_seconds";
pub const TOKENIZATION_SECONDS: &str = "classifier_tokenization_duration_seconds";
pub const INFERENCE_SECONDS: &str = "classifier_inference_duration_seconds";
pub const BATCH_SIZE: &str = "classifier_batch_size";
pub const BATCH_TOKENS: &str = "classifier_batch_tokens";
pub const DROPPED: &str = "classifier_requests_dropped_total";
pub const TRUNCATED: &str = "classifier_texts_truncated_total";
pub const MODEL_LOADED: &str = "classifier_model_loaded";
/// Texts answered, by tier (`encoder`, `fast`) and the fast tier's reason.
pub const ANSWERS: &str = "classifier_answers_total";
/// The fast tier's time per text (tokenization and look-ups, heads included).
pub const FAST_SECONDS: &str = "classifier_fast_tier_duration_seconds";

/// Installs the global recorder (once per process) and returns the handle that renders /metrics.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let secs = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ];
    let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
    let tokens = [
        16.0, 64.0, 256.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &secs)?
        .set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &sizes)?
        .set_buckets_for_metric(Matcher::Full(BATCH_TOKENS.into()), &tokens)?
        .install_recorder()?;
    Ok(handle)
}
