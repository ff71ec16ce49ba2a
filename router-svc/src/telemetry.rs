//! OpenTelemetry traces, configured the standard way and off by default. On when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set and
//! `OTEL_SDK_DISABLED` is not `true`; the exporter speaks `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`,
//! or `http/protobuf`); `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER` / `_ARG` (e.g.
//! `parentbased_traceidratio` and `0.01`: decided here, before a span is made) and
//! `OTEL_BSP_*`. A client's W3C `traceparent` is the parent of the request's span, and goes on to the backend and to
//! classifier-svc. Spans carry the decision (model, category, source, cache layer), never the
//! prompt. Off, the road makes no span at all (`on()` is one relaxed load).

use axum::http::HeaderMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use semroute_telemetry::{configured, on, Telemetry};

/// The exporter and the tracing layer for router-svc's spans, when configured.
pub fn init<S>() -> anyhow::Result<
    Option<(
        Telemetry,
        tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>,
    )>,
>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    semroute_telemetry::init("router-svc")
}

/// The request's root span, child of the client's `traceparent` when it sent one.
pub fn request_span(endpoint: &'static str, headers: &HeaderMap) -> tracing::Span {
    if !on() {
        return tracing::Span::none();
    }
    let parent = semroute_telemetry::extract(headers);
    if !semroute_telemetry::sampled(&parent) {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "router.request",
        otel.kind = "server",
        http.route = endpoint,
        semroute.model = tracing::field::Empty,
        semroute.category = tracing::field::Empty,
        semroute.decision_source = tracing::field::Empty,
        semroute.cache_layer = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    let _ = span.set_parent(parent);
    span
}

/// `fut` in `span` when tracing is on; as it is otherwise (no span to enter at each poll).
pub fn traced<F: std::future::Future>(
    span: tracing::Span,
    fut: F,
) -> futures::future::Either<tracing::instrument::Instrumented<F>, F> {
    use tracing::Instrument;
    if span.is_none() {
        futures::future::Either::Right(fut)
    } else {
        futures::future::Either::Left(fut.instrument(span))
    }
}

/// Whether the request being served has a span (tracing on and the request sampled).
fn traced_request() -> bool {
    on() && !tracing::Span::current().is_none()
}

/// A step's span (parse, decide, relay), under the current one.
pub fn step(name: &'static str) -> tracing::Span {
    if !traced_request() {
        return tracing::Span::none();
    }
    match name {
        "parse" => tracing::info_span!("parse"),
        "decide" => tracing::info_span!(
            "decide",
            semroute.model = tracing::field::Empty,
            semroute.category = tracing::field::Empty,
            semroute.decision_source = tracing::field::Empty,
            semroute.cache_layer = tracing::field::Empty,
        ),
        "relay" => tracing::info_span!("relay"),
        "response_cache" => tracing::info_span!("response_cache"),
        _ => tracing::info_span!("step", name),
    }
}

/// One upstream attempt's span.
pub fn attempt_span(model: &str, endpoint: &str, attempt: u32) -> tracing::Span {
    if !traced_request() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "upstream.attempt",
        otel.kind = "client",
        semroute.model = model,
        server.address = endpoint,
        semroute.attempt = attempt,
        semroute.outcome = tracing::field::Empty,
    )
}

/// Puts `span`'s context into `headers` as `traceparent` (for the backend).
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    if !on() || span.is_none() {
        return;
    }
    semroute_telemetry::inject(&span.context(), headers);
}

/// The `traceparent` of `span`, for gRPC metadata (classifier-svc).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !on() || span.is_none() {
        return None;
    }
    let mut h = HeaderMap::new();
    inject(span, &mut h);
    h.get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
