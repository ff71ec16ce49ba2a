//! Prometheus metrics, named by stage (`router_<stage>_...`). Every module records through the
//! `metrics` facade; this file installs the exporter and documents the names.
//!
//! - `router_requests_total{endpoint,model,category,status}`, `router_request_duration_seconds{endpoint}`
//!   (until the response head is sent; a stream's body continues after it)
//! - `router_decisions_total{source}` (classified, cache_local, cache_redis, coalesced, explicit,
//!   fail_open, no_text, session, fast_tier), `router_fail_open_total{reason}`
//! - `router_classify_duration_seconds`, `router_classifier_errors_total{reason}` (shed, timeout,
//!   overloaded, unavailable, ...), `router_classifier_circuit_open`,
//!   `router_classifier_concurrency_limit` (admission's current limit),
//!   `router_classifier_replica_up{replica}` (after a replica was first lost)
//! - `router_classified_ratio`: share of the last summary interval's `auto` decisions that came
//!   from a classification (the classifier's, now or cached, or the router's fast tier's)
//!   rather than failing open (`events`)
//! - the fast tier in process (`decide::fast_tier`): `router_fast_tier_total{reason}` (requests it
//!   classified, by why the classifier could not), `router_fast_tier_duration_seconds`,
//!   `router_fast_tier_errors_total`; `router_decisions_total{source="fast_tier"}`
//! - `router_cache_requests_total{layer,result}` (layer local|redis, result hit|miss|error|skipped),
//!   `router_redis_connected{client}` (cache, tenant)
//! - per API key (`key`: its name, bounded by `auth.max_key_labels`): `router_key_requests_total{key,result}`,
//!   `router_key_tokens_total{key}`, `router_key_spend_usd_total{key}`, `router_key_spend_today_usd{key}`;
//!   `router_auth_failures_total{reason}`, `router_limits_local` (1 while limits run in process)
//! - `router_upstream_requests_total{model,outcome}`, `router_upstream_ttfb_seconds{model}`,
//!   `router_upstream_retries_total{model}`, `router_upstream_endpoint_healthy{model,endpoint}`,
//!   `router_upstream_in_flight{model,endpoint}`
//! - `router_tokens_total{model,kind}` and `router_cost_total{model}` (currency units by the
//!   model's pricing; a gauge that only grows) from `usage` in bodies and in SSE streams
//! - `router_jailbreak_total{action}`, `router_config_reloads_total{result}`,
//!   `router_rejected_total{reason}`, `router_stream_errors_total{model,reason}`,
//!   `router_upstream_ejections_total{model}`, `router_upstream_fallbacks_total{model}`,
//!   `router_context_skips_total`, `router_pii_detected_total{type}`

use std::cell::RefCell;

use metrics::Counter;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

const FAST_TIER_BUCKETS: &[f64] = &[
    0.00001, 0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.005, 0.02,
];

/// Installs the global recorder; the handle renders `/metrics`.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        // (A full name wins over a suffix.) The fast tier takes tens of microseconds.
        .set_buckets_for_metric(
            Matcher::Full("router_fast_tier_duration_seconds".into()),
            FAST_TIER_BUCKETS,
        )?
        .install_recorder()?;
    Ok(handle)
}

/// `router_requests_total{endpoint,model,category,status}` handles, kept per thread once made:
/// the registry's look-up for a request's labels (copied, hashed, compared) was ~5 % of a
/// proxied request's instructions. As bounded as the labels: the config's models and
/// categories, HTTP statuses.
#[derive(Default)]
pub struct RequestCounters {
    by_thread: thread_local::ThreadLocal<RefCell<hashbrown::HashMap<RequestLabels, Counter>>>,
}

#[derive(Hash, PartialEq, Eq)]
struct RequestLabels {
    endpoint: &'static str,
    model: String,
    category: String,
    status: u16,
}

/// A request's labels as it has them; hashes as the owned key does (str and String hash alike).
#[derive(Hash)]
struct Labels<'a> {
    endpoint: &'static str,
    model: &'a str,
    category: &'a str,
    status: u16,
}

impl hashbrown::Equivalent<RequestLabels> for Labels<'_> {
    fn equivalent(&self, k: &RequestLabels) -> bool {
        self.status == k.status
            && self.endpoint == k.endpoint
            && self.model == k.model
            && self.category == k.category
    }
}

impl RequestCounters {
    /// Counts one request.
    pub fn count(&self, endpoint: &'static str, model: &str, category: &str, status: u16) {
        let labels = Labels {
            endpoint,
            model,
            category,
            status,
        };
        let mut map = self.by_thread.get_or_default().borrow_mut();
        if let Some(c) = map.get(&labels) {
            c.increment(1);
            return;
        }
        let c = metrics::counter!("router_requests_total", "endpoint" => endpoint,
            "model" => model.to_string(), "category" => category.to_string(),
            "status" => status.to_string());
        c.increment(1);
        map.insert(
            RequestLabels {
                endpoint,
                model: model.to_string(),
                category: category.to_string(),
                status,
            },
            c,
        );
    }
}
