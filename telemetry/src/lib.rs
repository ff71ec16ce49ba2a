//! OpenTelemetry for the workspace's services, configured the standard way and off by
//! default: on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set and `OTEL_SDK_DISABLED` is not `true`; the exporter speaks `OTEL_EXPORTER_OTLP_PROTOCOL`
//! (`grpc`, or `http/protobuf`); `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER` / `_ARG` (decided
//! here, before a span is made: `sampled`) and `OTEL_BSP_*`. W3C trace context in and out of
//! HTTP headers (`extract`, `inject`). router-svc and classifier-svc each add their own spans.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;

static ON: AtomicBool = AtomicBool::new(false);
/// The head sampler (OTEL_TRACES_SAMPLER / _ARG), decided here before any span is made: an
/// unsampled request then costs no span at all (made and dropped by the SDK, they cost a cache
/// hit ~65 % more instructions at 1 % sampling).
static RATIO_BITS: AtomicU64 = AtomicU64::new(0);
static PARENT_BASED: AtomicBool = AtomicBool::new(true);

/// (ratio, parent-based) from the standard variables; unknown samplers fall back to the
/// default, parentbased_always_on.
fn sampler_from_env() -> (f64, bool) {
    let arg = || {
        std::env::var("OTEL_TRACES_SAMPLER_ARG")
            .ok()
            .and_then(|a| a.trim().parse::<f64>().ok())
            .filter(|r| (0.0..=1.0).contains(r))
            .unwrap_or(1.0)
    };
    match std::env::var("OTEL_TRACES_SAMPLER")
        .as_deref()
        .map(str::trim)
    {
        Ok("always_on") => (1.0, false),
        Ok("always_off") => (0.0, false),
        Ok("traceidratio") => (arg(), false),
        Ok("parentbased_always_off") => (0.0, true),
        Ok("parentbased_traceidratio") => (arg(), true),
        _ => (1.0, true),
    }
}

/// The head sampler's verdict for a request under `parent` (the client's context, maybe empty).
pub fn sampled(parent: &opentelemetry::Context) -> bool {
    use opentelemetry::trace::TraceContextExt;
    let sc = parent.span().span_context().clone();
    if PARENT_BASED.load(Ordering::Relaxed) && sc.is_valid() {
        return sc.is_sampled();
    }
    let ratio = f64::from_bits(RATIO_BITS.load(Ordering::Relaxed));
    ratio >= 1.0 || (ratio > 0.0 && rand::random::<f64>() < ratio)
}

/// Whether requests are traced.
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Flushes and stops the exporter when dropped (at the end of `main`).
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("OpenTelemetry: flushing the last spans failed: {e}");
        }
    }
}

/// Whether the environment asks for traces (decided once).
pub fn configured() -> bool {
    static CONFIGURED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CONFIGURED.get_or_init(|| {
        let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
        let disabled =
            std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        !disabled
            && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
            && collector_resolves()
    })
}

/// With `SEMROUTE_OTLP_OPTIONAL=true` (compose sets it: its collector runs only in the
/// `tracing` profile), a collector whose host does not resolve at start turns tracing off (one
/// line on stderr) instead of exporting into the void. Otherwise always true.
fn collector_resolves() -> bool {
    use std::net::ToSocketAddrs;
    if !std::env::var("SEMROUTE_OTLP_OPTIONAL").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        return true;
    }
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .unwrap_or_default();
    let Ok(uri) = endpoint.trim().parse::<http::Uri>() else {
        return true; // the exporter reports a bad endpoint itself
    };
    let (Some(host), port) = (uri.host(), uri.port_u16().unwrap_or(4317)) else {
        return true;
    };
    let found = (host, port)
        .to_socket_addrs()
        .is_ok_and(|mut a| a.next().is_some());
    if !found {
        eprintln!(
            "tracing off: the OTLP collector {host} does not resolve (SEMROUTE_OTLP_OPTIONAL)"
        );
    }
    found
}

/// The exporter and the tracing layer that feeds it, when configured. Call inside the tokio
/// runtime (the gRPC exporter's channel lives there).
/// `service` names the service when `OTEL_SERVICE_NAME` does not, and the tracer. The
/// provider is also made the global one (for spans made with the OpenTelemetry API directly).
pub fn init<S>(
    service: &'static str,
) -> anyhow::Result<
    Option<(
        Telemetry,
        tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>,
    )>,
>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    if !configured() {
        return Ok(None);
    }
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|_| "http/protobuf".into());
    use opentelemetry_otlp::WithHttpConfig;
    let exporter = match protocol.trim() {
        "grpc" => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build(),
        "http/protobuf" => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(OnRuntime {
                inner: Arc::new(
                    opentelemetry_http::hyper::HyperClient::with_default_connector(
                        std::time::Duration::from_secs(10),
                        None,
                    ),
                ),
                rt: tokio::runtime::Handle::current(),
            })
            .build(),
        other => anyhow::bail!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other:?}: {service} exports `grpc` or `http/protobuf`"
        ),
    }
    .map_err(|e| anyhow::anyhow!("OpenTelemetry exporter: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.into()))
        .build();
    let (ratio, parent_based) = sampler_from_env();
    RATIO_BITS.store(ratio.to_bits(), Ordering::Relaxed);
    PARENT_BASED.store(parent_based, Ordering::Relaxed);
    let provider = SdkTracerProvider::builder()
        // Sampled in `request_span` already.
        .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer(service);
    opentelemetry::global::set_tracer_provider(provider.clone());
    ON.store(true, Ordering::Relaxed);
    Ok(Some((
        Telemetry { provider },
        tracing_opentelemetry::layer().with_tracer(tracer),
    )))
}

/// The HTTP exporter's client, run on the service's tokio runtime: the SDK's batch processor
/// exports from a thread of its own, where hyper's client finds no reactor.
#[derive(Debug)]
struct OnRuntime {
    inner: Arc<opentelemetry_http::hyper::HyperClient>,
    rt: tokio::runtime::Handle,
}

#[tonic::async_trait]
impl opentelemetry_http::HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let inner = self.inner.clone();
        self.rt
            .spawn(async move { inner.send_bytes(request).await })
            .await
            .map_err(|e| Box::new(e) as opentelemetry_http::HttpError)?
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// The client's trace context from its `traceparent` / `tracestate` headers (empty without).
pub fn extract(headers: &HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// Writes `cx` into `headers` as `traceparent` (and `tracestate`).
pub fn inject(cx: &opentelemetry::Context, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(cx, &mut HeadersMut(headers));
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    #[test]
    fn trace_context_goes_through_headers_both_ways() {
        let mut h = HeaderMap::new();
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        h.insert("traceparent", HeaderValue::from_static(tp));
        let cx = extract(&h);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        let mut out = HeaderMap::new();
        inject(&cx, &mut out);
        assert_eq!(out.get("traceparent").unwrap(), tp);
        assert!(!extract(&HeaderMap::new()).span().span_context().is_valid());
    }
}
