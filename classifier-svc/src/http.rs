//! The HTTP side port: Prometheus `/metrics` and `/healthz` (200 once every model is loaded);
//! with `--chaos-control`, `POST /chaos` for fault injection (chaos runs).

use axum::routing::{get, post};
use axum::{extract::State, http::StatusCode, response::IntoResponse, Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::json;

use crate::service::ClassifierService;

#[derive(Clone)]
struct HttpState {
    metrics: Option<PrometheusHandle>,
    service: ClassifierService,
}

pub fn router(
    metrics: Option<PrometheusHandle>,
    service: ClassifierService,
    chaos_control: bool,
) -> Router {
    let mut r = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz));
    if chaos_control {
        r = r.route("/chaos", post(chaos));
    }
    r.with_state(HttpState { metrics, service })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Chaos {
    /// Added to every batch's inference from now on (0: off).
    inference_delay_ms: u64,
}

async fn chaos(Json(c): Json<Chaos>) -> impl IntoResponse {
    crate::batch::set_inference_delay(std::time::Duration::from_millis(c.inference_delay_ms));
    tracing::warn!(
        inference_delay_ms = c.inference_delay_ms,
        "chaos control: inference delay set"
    );
    Json(json!({"inference_delay_ms": c.inference_delay_ms}))
}

async fn metrics_handler(State(s): State<HttpState>) -> impl IntoResponse {
    match &s.metrics {
        Some(h) => (StatusCode::OK, h.render()),
        None => (
            StatusCode::NOT_FOUND,
            "metrics recorder not installed".into(),
        ),
    }
}

async fn healthz(State(s): State<HttpState>) -> impl IntoResponse {
    let ready = s.service.is_ready();
    let body = json!({
        "status": if ready { "serving" } else { "loading" },
        "models": s.service.model_ids(),
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}
