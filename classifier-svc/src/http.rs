//! The HTTP side port: Prometheus `/metrics` and `/healthz` (200 once every model is loaded).

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::service::ClassifierService;

#[derive(Clone)]
struct HttpState {
    metrics: Option<PrometheusHandle>,
    service: ClassifierService,
}

pub fn router(metrics: Option<PrometheusHandle>, service: ClassifierService) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .with_state(HttpState { metrics, service })
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
