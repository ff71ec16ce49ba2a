//! classifier-svc's spans in the router's traces (OpenTelemetry, off unless configured: see
//! `semroute-telemetry`). A Classify call is a span under the caller's `traceparent` (gRPC
//! metadata); the batch each text rode in shows in it as two spans with their real times: the
//! wait in the queue and the batch's inference, with the batch's size and tokens. A batch serves
//! many traces: each gets its own copy of the batch span. No text in any span.

use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{Span as _, TraceContextExt, Tracer};
use opentelemetry::KeyValue;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::batch::Output;

/// The span of one RPC, child of the caller's trace context; `Span::none()` when tracing is
/// off or the head sampler says no (a traced caller's decision is kept).
pub fn rpc_span(
    method: &'static str,
    md: &tonic::metadata::MetadataMap,
    texts: usize,
) -> tracing::Span {
    if !semroute_telemetry::on() {
        return tracing::Span::none();
    }
    let parent = semroute_telemetry::extract(&md.clone().into_headers());
    if !semroute_telemetry::sampled(&parent) {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "classifier.rpc",
        otel.name = format!("classifier.{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = method,
        semroute.texts = texts as u64,
    );
    let _ = span.set_parent(parent);
    span
}

/// `fut` in `span` when there is one.
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

/// The queue wait and the batch of one text's run, as children of the current RPC span, ended
/// now (when its output arrived).
pub fn batch_spans(model: &str, num_tokens: u32, out: &Output) {
    let current = tracing::Span::current();
    if !semroute_telemetry::on() || current.is_none() {
        return;
    }
    let cx = current.context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    let tracer = opentelemetry::global::tracer("classifier-svc");
    let wall = |t: Instant| SystemTime::now() - t.elapsed();
    let now = Instant::now();
    let ran_from = now.checked_sub(out.inference).unwrap_or(now);
    let queued_from = ran_from.checked_sub(out.queue).unwrap_or(ran_from);
    let model = KeyValue::new("semroute.model", model.to_string());
    let mut queue = tracer
        .span_builder("classifier.queue")
        .with_start_time(wall(queued_from))
        .with_attributes([model.clone()])
        .start_with_context(&tracer, &cx);
    queue.end_with_timestamp(wall(ran_from));
    let mut batch = tracer
        .span_builder("classifier.batch")
        .with_start_time(wall(ran_from))
        .with_attributes([
            model,
            KeyValue::new("semroute.batch_size", out.batch_size as i64),
            KeyValue::new("semroute.batch_tokens", out.batch_tokens as i64),
            KeyValue::new("semroute.text_tokens", num_tokens as i64),
            KeyValue::new("semroute.inference_ms", ms(out.inference)),
        ])
        .start_with_context(&tracer, &cx);
    batch.end_with_timestamp(wall(now));
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
