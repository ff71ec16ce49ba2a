//! The one place router-svc calls vLLM backends: per-model endpoint pools, choice by load
//! (power of two choices over the score of `load.rs`: the backend's own queue and KV usage with
//! this router's in-flight count), overflow to the next candidate model when every endpoint of
//! the decided one is saturated, hand-off to an inference gateway that picks the pod itself,
//! passive ejection of failing endpoints (active health checks live in `health.rs`), retry on
//! another endpoint when the connection fails or a 5xx arrives before any byte was relayed,
//! alternatives and the fallback model, timeouts.

pub mod conn;
pub mod health;
pub mod load;

use sha2::Digest;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use axum::http::{HeaderName, HeaderValue, Request, Uri};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::config::{ms, Config, EndpointPicker, LoadConfig, ModelConfig, UpstreamConfig};
use crate::error::Error;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// How long a session placed on an endpoint counts against it when the next is placed (it
/// fades with this time constant): about the life of an agent session or a conversation.
const SESSION_FADE: Duration = Duration::from_secs(600);

/// One backend server of one model.
#[derive(Debug)]
pub struct Endpoint {
    /// A hash of the URL, the same on every replica (rendezvous hashing).
    pub key: u64,
    pub model: String,
    /// Base URL without a trailing slash (e.g. `http://10.0.0.5:8000`).
    pub url: String,
    in_flight: AtomicUsize,
    /// Sessions placed here by this replica lately (fading over `SESSION_FADE`).
    sessions: crate::balance::Fading,
    /// What the backend last reported of its load (`load.rs`).
    pub load: load::Load,
    /// Last active health check.
    healthy: AtomicBool,
    failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    /// The forwarded paths in origin form (after the URL's own path), parsed once: parsing one
    /// per request cost a cache hit ~4 % of its CPU.
    targets: Vec<(&'static str, Uri)>,
    /// The URL's own path, without its trailing slash (`/openai` of `https://h/openai`).
    prefix: String,
    /// Scheme and authority, what a connection is opened to (None: not a valid URL).
    base: Option<Uri>,
    /// The `Host` header of its requests.
    host: Option<HeaderValue>,
    /// Its idle keep-alive connections, per thread (`conn.rs`).
    idle: conn::Idle,
    /// `router_upstream_in_flight` for this endpoint, registered once.
    in_flight_gauge: metrics::Gauge,
    /// `router_upstream_requests_total{outcome}` and `router_upstream_ttfb_seconds` of its
    /// model, registered once (labels built per request were a cache hit's ~1 %).
    outcomes: [(&'static str, metrics::Counter); OUTCOMES.len()],
    ttfb: metrics::Histogram,
    /// Its model's token and cost counters.
    pub tokens: TokenMetrics,
    /// The health check's verdict, for requests waiting on this endpoint: one that fails its
    /// check while they wait for a response head moves them to another endpoint.
    health: tokio::sync::watch::Sender<bool>,
}

/// `router_upstream_requests_total`'s outcomes.
const OUTCOMES: [&str; 6] = [
    "ok",
    "4xx",
    "5xx",
    "timeout",
    "connect_error",
    "health_lost",
];

/// The paths requests are forwarded to.
const FORWARDED_PATHS: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/messages",
    "/v1/responses",
];

impl Endpoint {
    fn new(model: &str, url: &str) -> Self {
        let url = url.trim_end_matches('/').to_string();
        let parsed = url.parse::<Uri>().ok();
        let prefix = parsed
            .as_ref()
            .map_or("", |u| u.path().trim_end_matches('/'))
            .to_string();
        let targets = FORWARDED_PATHS
            .iter()
            .filter_map(|p| Some((*p, format!("{prefix}{p}").parse().ok()?)))
            .collect();
        let base = parsed.as_ref().and_then(|u| {
            Uri::builder()
                .scheme(u.scheme()?.clone())
                .authority(u.authority()?.clone())
                .path_and_query("/")
                .build()
                .ok()
        });
        let host = parsed
            .as_ref()
            .and_then(|u| HeaderValue::from_str(u.authority()?.as_str()).ok());
        let key = u64::from_le_bytes(
            sha2::Sha256::digest(url.as_bytes())[..8]
                .try_into()
                .expect("8 bytes"),
        );
        let ep = Self {
            key,
            model: model.to_string(),
            in_flight_gauge: metrics::gauge!("router_upstream_in_flight",
                "model" => model.to_string(), "endpoint" => url.clone()),
            outcomes: OUTCOMES.map(|o| {
                (
                    o,
                    metrics::counter!("router_upstream_requests_total",
                        "model" => model.to_string(), "outcome" => o),
                )
            }),
            ttfb: metrics::histogram!("router_upstream_ttfb_seconds", "model" => model.to_string()),
            tokens: TokenMetrics::new(model),
            url,
            in_flight: AtomicUsize::new(0),
            sessions: crate::balance::Fading::new(SESSION_FADE),
            load: load::Load::default(),
            healthy: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            targets,
            prefix,
            base,
            host,
            idle: conn::Idle::default(),
            health: tokio::sync::watch::Sender::new(true),
        };
        ep.gauge_healthy(true);
        ep
    }

    /// The origin-form URI of `path` on this endpoint.
    fn target(&self, path: &str) -> Result<Uri, String> {
        if self.base.is_none() || self.host.is_none() {
            return Err(self.url.clone());
        }
        match self.targets.iter().find(|(p, _)| *p == path) {
            Some((_, u)) => Ok(u.clone()),
            None => format!("{}{path}", self.prefix)
                .parse()
                .map_err(|e| format!("{}{path}: {e}", self.url)),
        }
    }

    fn outcome(&self, outcome: &str) {
        if let Some((_, c)) = self.outcomes.iter().find(|(o, _)| *o == outcome) {
            c.increment(1);
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The load score endpoint choice ranks by (`load::score`).
    pub fn score(&self, lc: &LoadConfig) -> f64 {
        load::score(self.in_flight(), self.load.fresh(lc), lc)
    }

    /// Its backend reports no room (`load::saturated`).
    pub fn saturated(&self, lc: &LoadConfig) -> bool {
        load::saturated(self.load.fresh(lc), lc)
    }

    /// `router_upstream_endpoint_{waiting,running,kv_usage}` (NaN while its metrics are away).
    fn load_gauges(&self, r: Option<load::Reported>) {
        let labels = [
            ("model", self.model.clone()),
            ("endpoint", self.url.clone()),
        ];
        let nan = f64::NAN;
        let (w, run, kv) = r.map_or((nan, nan, nan), |r| (r.waiting, r.running, r.kv));
        metrics::gauge!("router_upstream_endpoint_waiting", &labels).set(w);
        metrics::gauge!("router_upstream_endpoint_running", &labels).set(run);
        metrics::gauge!("router_upstream_endpoint_kv_usage", &labels).set(kv);
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Resolves when the health check fails (at once if it has failed already).
    fn health_lost(&self) -> impl std::future::Future<Output = ()> + use<> {
        let mut rx = self.health.subscribe();
        async move {
            if rx.wait_for(|ok| !*ok).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Healthy by the last check and not ejected.
    pub fn available(&self) -> bool {
        self.is_healthy() && now_ms() >= self.ejected_until_ms.load(Ordering::Relaxed)
    }

    fn gauge_healthy(&self, ok: bool) {
        metrics::gauge!("router_upstream_endpoint_healthy",
            "model" => self.model.clone(), "endpoint" => self.url.clone())
        .set(if ok { 1.0 } else { 0.0 });
    }

    /// Active health check result.
    pub fn set_healthy(&self, ok: bool) {
        let was = self.healthy.swap(ok, Ordering::Relaxed);
        if was != ok {
            if ok {
                tracing::info!(model = %self.model, endpoint = %self.url, "endpoint healthy again");
                self.failures.store(0, Ordering::Relaxed);
                self.ejected_until_ms.store(0, Ordering::Relaxed);
            } else {
                tracing::warn!(model = %self.model, endpoint = %self.url, "endpoint failed its health check");
            }
            self.gauge_healthy(ok);
            self.health.send_replace(ok);
        }
    }

    fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    fn failed(&self, cfg: &UpstreamConfig) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= cfg.eject_after_failures.max(1) {
            let until = now_ms() + cfg.eject_ms;
            if self.ejected_until_ms.swap(until, Ordering::Relaxed) < now_ms() {
                tracing::warn!(model = %self.model, endpoint = %self.url, failures = n,
                    eject_ms = cfg.eject_ms, "endpoint ejected after consecutive failures");
                metrics::counter!("router_upstream_ejections_total", "model" => self.model.clone())
                    .increment(1);
            }
        }
    }
}

/// `router_tokens_total{model,kind}` and `router_cost_total{model}` of one model, registered once.
#[derive(Debug, Clone)]
pub struct TokenMetrics {
    prompt: metrics::Counter,
    completion: metrics::Counter,
    cost: metrics::Gauge,
}

impl TokenMetrics {
    fn new(model: &str) -> Self {
        let m = model.to_string();
        Self {
            prompt: metrics::counter!("router_tokens_total", "model" => m.clone(), "kind" => "prompt"),
            completion: metrics::counter!("router_tokens_total", "model" => m.clone(), "kind" => "completion"),
            cost: metrics::gauge!("router_cost_total", "model" => m),
        }
    }

    /// An answer's usage, priced.
    pub fn count(&self, prompt: u64, completion: u64, pricing: &crate::config::Pricing) {
        self.prompt.increment(prompt);
        self.completion.increment(completion);
        // Fractional currency units: a gauge that only goes up (counters are integers).
        self.cost.increment(
            prompt as f64 * pricing.input_per_million / 1e6
                + completion as f64 * pricing.output_per_million / 1e6,
        );
    }
}

/// Counts a request against its endpoint until dropped (held by the relayed body), with the
/// connection its answer comes on (back to the endpoint's idle list then).
pub struct InFlight(Arc<Endpoint>, Option<conn::Lease>);

impl InFlight {
    fn new(ep: Arc<Endpoint>) -> Self {
        let n = ep.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        ep.in_flight_gauge.set(n as f64);
        Self(ep, None)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        drop(self.1.take());
        let n = self.0.in_flight.fetch_sub(1, Ordering::Relaxed) - 1;
        self.0.in_flight_gauge.set(n as f64);
    }
}

/// Every model's endpoints. Rebuilt on config reload, keeping the state (in-flight counts,
/// health, ejection) of endpoints that stay.
#[derive(Default)]
pub struct Pools {
    models: HashMap<String, Vec<Arc<Endpoint>>>,
}

impl Pools {
    pub fn build(cfg: &Config, prev: Option<&Pools>) -> Self {
        let mut models = HashMap::new();
        for m in &cfg.models {
            let eps = m
                .endpoints
                .iter()
                .map(|u| {
                    let url = u.trim_end_matches('/');
                    prev.and_then(|p| p.models.get(&m.name))
                        .and_then(|old| old.iter().find(|e| e.url == url).cloned())
                        .unwrap_or_else(|| Arc::new(Endpoint::new(&m.name, url)))
                })
                .collect();
            models.insert(m.name.clone(), eps);
        }
        Self { models }
    }

    pub fn endpoints(&self, model: &str) -> &[Arc<Endpoint>] {
        self.models.get(model).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.models.values().flatten()
    }

    pub fn any_available(&self) -> bool {
        self.all().any(|e| e.available())
    }

    /// Whether `model` has an available endpoint with room (not saturated).
    fn has_room(&self, model: &str, lc: &LoadConfig) -> bool {
        self.endpoints(model)
            .iter()
            .any(|e| e.available() && !e.saturated(lc))
    }
}

/// The order models are tried in: `models` as given, unless every endpoint of the first one is
/// saturated, it allows overflow and a later one has room; then that one first (the rest
/// after it in their order, the first one included). Returns the (from, to) of an overflow.
fn overflow<'m>(
    pools: &Pools,
    models: &[&'m ModelConfig],
    lc: &LoadConfig,
) -> (Vec<&'m ModelConfig>, Option<(String, String)>) {
    let mut order = models.to_vec();
    let Some(first) = models.first() else {
        return (order, None);
    };
    let routed = |m: &ModelConfig| m.endpoint_picker == EndpointPicker::Router;
    if !lc.overflow
        || lc.interval_ms == 0
        || !first.overflow
        || !routed(first)
        || pools.endpoints(&first.name).is_empty()
        || pools.has_room(&first.name, lc)
        || !pools.endpoints(&first.name).iter().any(|e| e.available())
    {
        return (order, None);
    }
    // Gateway models have room as far as the router can tell (the gateway queues).
    let to = models[1..].iter().position(|m| {
        !pools.endpoints(&m.name).is_empty() && (!routed(m) || pools.has_room(&m.name, lc))
    });
    let Some(j) = to.map(|j| j + 1) else {
        metrics::counter!("router_upstream_saturated_total", "model" => first.name.clone())
            .increment(1);
        return (order, None);
    };
    let target = order.remove(j);
    order.insert(0, target);
    metrics::counter!("router_upstream_overflow_total",
        "from" => first.name.clone(), "to" => target.name.clone())
    .increment(1);
    (order, Some((first.name.clone(), target.name.clone())))
}

/// Power of two choices by load score among available endpoints not tried yet, those with room
/// (not saturated) first; if none is available, among all not tried yet (a request is better
/// tried than refused). A session's turns go to its endpoint (`Affinity`) while its load stays
/// within `bound` and it is not saturated.
fn pick(
    eps: &[Arc<Endpoint>],
    tried: &[usize],
    affinity: Option<Affinity>,
    bound: f64,
    lc: &LoadConfig,
) -> Option<usize> {
    let open = |i: usize| eps[i].available() && !eps[i].saturated(lc);
    let any_open = (0..eps.len()).any(|i| !tried.contains(&i) && open(i));
    let usable = |i: usize| {
        if any_open {
            open(i)
        } else {
            eps[i].available()
        }
    };
    let score = |i: usize| eps[i].score(lc);
    match affinity.filter(|_| bound > 0.0) {
        Some(a) => {
            let placed = a.endpoint.and_then(|k| eps.iter().position(|e| e.key == k));
            if a.place && placed.is_none() {
                // The sessions given lately plus the requests in flight: a session's requests
                // come and go, its turns to come stay with it.
                return crate::balance::pick_least(
                    eps.len(),
                    |i| tried.contains(&i),
                    usable,
                    |i| eps[i].sessions.get() + score(i),
                );
            }
            crate::balance::pick_affine(
                eps.len(),
                |i| tried.contains(&i),
                usable,
                score,
                a.key,
                |i| eps[i].key,
                bound,
                placed,
            )
        }
        None => crate::balance::pick(eps.len(), |i| tried.contains(&i), usable, score),
    }
}

/// A backend's response head, its body still to come.
pub type BackendResponse = axum::http::Response<hyper::body::Incoming>;

/// rustls on the ring provider (named, not the process default, which panics when another
/// crate enables a second provider) with the Mozilla roots.
fn rustls_config() -> anyhow::Result<rustls::ClientConfig> {
    use hyper_rustls::ConfigBuilderExt;
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_webpki_roots()
    .with_no_client_auth())
}

/// HTTP client for backends (pooled keep-alive connections) and the timeouts.
pub struct Upstream {
    /// Forwarded requests' connections, kept per endpoint and thread (`conn.rs`): a
    /// connection's task runs on the runtime that opened it, so a request served by a worker
    /// (`workers.rs`) goes out on that worker's own connections, with no wake-up of another
    /// thread on the way.
    conns: conn::Connections,
    cfg: UpstreamConfig,
    /// `cfg.gateway_header`, parsed once (validated with the config).
    gateway_header: Option<HeaderName>,
}

/// What to send besides the body.
pub struct Outgoing<'a> {
    /// Client headers that go along (credentials, request id, trace context).
    pub headers: &'a [(HeaderName, HeaderValue)],
    /// model -> its own backend key (replaces the client's authorization).
    pub keys: &'a HashMap<String, HeaderValue>,
    /// The response headers must arrive by then: vLLM sends them with the first token when
    /// streaming, and with the whole answer otherwise.
    pub headers_by: Instant,
    /// The session's claim on an endpoint (its prefix cache).
    pub affinity: Option<Affinity>,
}

/// A session's turns go to one endpoint of its model, where its prefix is cached: the one it
/// was placed on (`endpoint`, an `Endpoint::key`), else, on its first turn on the model
/// (`place`), the least loaded, else the first of its key's rendezvous order within the load
/// bound. The endpoint that served comes back in `Answered::endpoint`; the session keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Affinity {
    /// The session's hash.
    pub key: u64,
    pub endpoint: Option<u64>,
    pub place: bool,
}

/// A backend response whose headers arrived; the body is still to be relayed.
pub struct Answered {
    pub response: BackendResponse,
    /// The model that actually served (may be an alternative or the fallback).
    pub model: String,
    pub endpoint: Arc<Endpoint>,
    pub in_flight: InFlight,
    /// Time until the response headers (all attempts).
    pub ttfb: Duration,
    pub attempts: u32,
    /// (decided model, model that took the request) when its pool was saturated.
    pub overflow: Option<(String, String)>,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> anyhow::Result<Self> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(ms(cfg.connect_timeout_ms)));
        http.set_nodelay(true);
        // https needs the connector to accept the scheme; http stays plain.
        http.enforce_http(false);
        let tls = rustls_config()?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            conns: conn::Connections::new(
                connector,
                cfg.max_idle_per_host,
                Duration::from_secs(90),
            ),
            cfg: cfg.clone(),
            gateway_header: HeaderName::from_bytes(cfg.gateway_header.as_bytes()).ok(),
        })
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.cfg
    }

    /// `GET <path>` on `ep` as text (a metrics page, at most 4 MiB), or None.
    pub async fn text(&self, ep: &Arc<Endpoint>, path: &str) -> Option<String> {
        let uri = ep.target(path).ok()?;
        let req = Request::get(uri)
            .header(HOST, ep.host.clone()?)
            .body(Full::default())
            .ok()?;
        let (resp, lease) = self.conns.send(ep, req).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body = http_body_util::Limited::new(resp.into_body(), 4 << 20);
        let bytes = http_body_util::BodyExt::collect(body)
            .await
            .ok()?
            .to_bytes();
        drop(lease);
        String::from_utf8(bytes.to_vec()).ok()
    }

    /// `GET <path>` on `ep` (the health check): true for a 2xx answer read to its end (its
    /// connection is then kept, like a forwarded request's). Redirects count as failures; none
    /// is followed, here or when forwarding.
    pub async fn check(&self, ep: &Arc<Endpoint>, path: &str) -> bool {
        let (Ok(uri), Some(host)) = (ep.target(path), ep.host.clone()) else {
            return false;
        };
        let Ok(req) = Request::get(uri).header(HOST, host).body(Full::default()) else {
            return false;
        };
        let Ok((resp, lease)) = self.conns.send(ep, req).await else {
            return false;
        };
        let ok = resp.status().is_success();
        let read = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .is_ok();
        drop(lease);
        ok && read
    }

    /// Sends `path` to the first model of `models` that answers, trying up to `max_attempts`
    /// endpoints of each. `body_for` writes the path and body for a model (its name, reasoning
    /// fields; the API its backend speaks);
    /// `forward_headers` go as they are (the client's authorization, x-request-id), except that a
    /// model's own API key replaces the client's authorization.
    pub async fn send(
        &self,
        pools: &Pools,
        models: &[&ModelConfig],
        body_for: impl Fn(&ModelConfig) -> (&'static str, Bytes),
        out: Outgoing<'_>,
    ) -> Result<Answered, Error> {
        let Outgoing {
            headers: forward_headers,
            keys,
            headers_by,
            affinity,
        } = out;
        let started = Instant::now();
        let mut attempts = 0u32;
        let mut last_error: Option<Error> = None;
        let mut last_5xx: Option<Answered> = None;
        let lc = &self.cfg.load;
        let (models, overflowed) = overflow(pools, models, lc);
        for (mi, model) in models.iter().enumerate() {
            let eps = pools.endpoints(&model.name);
            if eps.is_empty() {
                continue;
            }
            if mi > 0 {
                metrics::counter!("router_upstream_fallbacks_total", "model" => model.name.clone())
                    .increment(1);
                tracing::debug!(model = %model.name, "trying the next model after failures");
            }
            let (path, body) = body_for(model);
            let mut tried = Vec::new();
            while tried.len() < self.cfg.max_attempts.min(eps.len()) {
                let Some(i) = pick(eps, &tried, affinity, self.cfg.affinity_load_bound, lc) else {
                    break;
                };
                tried.push(i);
                attempts += 1;
                if affinity.is_some_and(|a| a.place && a.endpoint.is_none()) {
                    eps[i].sessions.add(1.0);
                }
                if attempts > 1 {
                    metrics::counter!("router_upstream_retries_total", "model" => model.name.clone())
                        .increment(1);
                    crate::events::count(crate::events::Event::UpstreamRetry);
                }
                let ep = eps[i].clone();
                let mut in_flight = InFlight::new(ep.clone());
                let url = match ep.target(path) {
                    Ok(u) => u,
                    Err(e) => {
                        last_error = Some(Error::BadGateway {
                            model: model.name.clone(),
                            detail: format!("invalid endpoint URL {e}"),
                        });
                        continue;
                    }
                };
                let mut req = Request::post(url)
                    .body(Full::new(body.clone()))
                    .map_err(|e| Error::BadGateway {
                        model: model.name.clone(),
                        detail: format!("cannot build the backend request: {e}"),
                    })?;
                let attempt = crate::telemetry::attempt_span(&model.name, &ep.url, attempts);
                let h = req.headers_mut();
                h.reserve(forward_headers.len() + 3);
                for (name, value) in forward_headers {
                    h.insert(name, value.clone());
                }
                crate::telemetry::inject(&attempt, h);
                h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                if let Some(host) = &ep.host {
                    h.insert(HOST, host.clone());
                }
                if let Some(k) = keys.get(&model.name) {
                    h.insert(AUTHORIZATION, k.clone());
                }
                // An inference gateway picks the pod: the pool goes in the header its
                // HTTPRoute matches (validated as a header value with the config).
                if model.endpoint_picker == EndpointPicker::Gateway {
                    if let (Some(name), Ok(v)) =
                        (&self.gateway_header, HeaderValue::from_str(model.pool()))
                    {
                        h.insert(name.clone(), v);
                    }
                }
                let t0 = Instant::now();
                // Only worth giving up on this endpoint if another one may take the request
                // (else it waits for its answer or the timeout, as before).
                let another = tried.len() < self.cfg.max_attempts.min(eps.len())
                    && pick(eps, &tried, affinity, self.cfg.affinity_load_bound, lc).is_some();
                let health_lost = async {
                    if another {
                        ep.health_lost().await
                    } else {
                        std::future::pending().await
                    }
                };
                let out = crate::telemetry::traced(attempt.clone(), async {
                    tokio::select! {
                        r = tokio::time::timeout_at(tokio::time::Instant::from_std(headers_by), self.conns.send(&ep, req)) => Some(r),
                        () = health_lost => None,
                    }
                })
                .await;
                // The endpoint failed its health check while this request waited for a response
                // head (a hung or dying backend): nothing came back, so another endpoint may
                // take it.
                let Some(out) = out else {
                    ep.outcome("health_lost");
                    attempt.record("semroute.outcome", "health_lost");
                    last_error = Some(Error::BadGateway {
                        model: model.name.clone(),
                        detail: "the endpoint failed its health check while the request waited"
                            .into(),
                    });
                    continue;
                };
                let outcome = match &out {
                    Err(_) => "timeout",
                    Ok(Err(_)) => "connect_error",
                    Ok(Ok((r, _))) if r.status().is_server_error() => "5xx",
                    Ok(Ok((r, _))) if r.status().is_client_error() => "4xx",
                    Ok(Ok(_)) => "ok",
                };
                ep.outcome(outcome);
                attempt.record("semroute.outcome", outcome);
                match out {
                    Err(_) => {
                        // Not retried (the request may be running there; a retry could double
                        // it) and not held against the endpoint (a long generation is no fault;
                        // a hung server fails its health check).
                        return Err(Error::GatewayTimeout {
                            model: model.name.clone(),
                            detail: format!(
                                "no response within {} ms",
                                headers_by.saturating_duration_since(started).as_millis()
                            ),
                        });
                    }
                    Ok(Err(e)) => {
                        ep.failed(&self.cfg);
                        tracing::debug!(model = %model.name, endpoint = %ep.url, error = %e,
                            "backend request failed; trying another endpoint");
                        last_error = Some(Error::BadGateway {
                            model: model.name.clone(),
                            detail: if e.is_connect() {
                                "connection failed".into()
                            } else {
                                "request failed before a response".into()
                            },
                        });
                    }
                    Ok(Ok((resp, lease))) => {
                        in_flight.1 = Some(lease);
                        ep.ttfb.record(t0.elapsed().as_secs_f64());
                        let answered = Answered {
                            response: resp,
                            model: model.name.clone(),
                            endpoint: ep.clone(),
                            in_flight,
                            ttfb: started.elapsed(),
                            attempts,
                            overflow: overflowed.clone().filter(|(_, to)| *to == model.name),
                        };
                        if answered.response.status().is_server_error() {
                            ep.failed(&self.cfg);
                            tracing::debug!(model = %model.name, endpoint = %ep.url,
                                status = answered.response.status().as_u16(),
                                "backend answered 5xx; trying another endpoint");
                            last_5xx = Some(answered);
                        } else {
                            ep.succeeded();
                            return Ok(answered);
                        }
                    }
                }
            }
        }
        // Every endpoint failed: relay the last backend error as it was, else say why.
        if let Some(a) = last_5xx {
            return Ok(a);
        }
        Err(last_error.unwrap_or_else(|| {
            Error::Unavailable(models.first().map(|m| m.name.clone()).unwrap_or_default())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LC: LoadConfig = LoadConfig {
        interval_ms: 1000,
        timeout_ms: 500,
        metrics_path: String::new(),
        stale_after_ms: 60_000,
        queue_weight: 4.0,
        kv_weight: 4.0,
        saturated_waiting: 1.0,
        saturated_kv: 0.95,
        overflow: true,
    };

    fn eps(n: usize) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| Arc::new(Endpoint::new("m", &format!("http://h{i}"))))
            .collect()
    }

    #[test]
    fn requests_go_in_origin_form_under_the_urls_own_path_with_its_authority_as_host() {
        let e = Endpoint::new("m", "https://api.example.com:8443/openai/");
        assert_eq!(
            e.target("/v1/chat/completions").unwrap(),
            "/openai/v1/chat/completions"
        );
        assert_eq!(e.target("/v1/other").unwrap(), "/openai/v1/other");
        assert_eq!(e.host.as_ref().unwrap(), "api.example.com:8443");
        assert_eq!(
            e.base.as_ref().unwrap().to_string(),
            "https://api.example.com:8443/"
        );
        let e = Endpoint::new("m", "http://10.0.0.5:8000");
        assert_eq!(e.target("/v1/completions").unwrap(), "/v1/completions");
        assert_eq!(e.host.as_ref().unwrap(), "10.0.0.5:8000");
        assert!(Endpoint::new("m", "not a url")
            .target("/v1/completions")
            .is_err());
    }

    #[test]
    fn p2c_prefers_fewer_in_flight() {
        let e = eps(2);
        let _busy: Vec<_> = (0..5).map(|_| InFlight::new(e[0].clone())).collect();
        for _ in 0..50 {
            assert_eq!(pick(&e, &[], None, 0.0, &LC), Some(1));
        }
        assert_eq!(
            pick(&e, &[1], None, 0.0, &LC),
            Some(0),
            "retries go elsewhere"
        );
        assert_eq!(pick(&e, &[0, 1], None, 0.0, &LC), None);
    }

    #[test]
    fn unhealthy_and_ejected_are_avoided_unless_nothing_else() {
        let e = eps(3);
        e[0].set_healthy(false);
        let cfg = UpstreamConfig {
            eject_after_failures: 2,
            ..Default::default()
        };
        e[1].failed(&cfg);
        e[1].failed(&cfg);
        for _ in 0..50 {
            assert_eq!(pick(&e, &[], None, 0.0, &LC), Some(2));
        }
        assert!(
            pick(&e, &[2], None, 0.0, &LC).is_some(),
            "panic mode: try the others"
        );
        e[0].set_healthy(true);
        assert!(e[0].available());
    }

    fn report(waiting: f64, kv: f64) -> load::Reported {
        load::Reported {
            waiting,
            running: 4.0,
            kv,
        }
    }

    #[test]
    fn choice_ranks_by_reported_load_and_avoids_saturated_endpoints() {
        let e = eps(3);
        // By in-flight alone, 0 is the least loaded; its backend says it has a queue.
        let _ours: Vec<_> = (0..2).map(|_| InFlight::new(e[1].clone())).collect();
        e[0].load.store(report(3.0, 0.5));
        e[1].load.store(report(0.0, 0.2));
        e[2].load.store(report(0.0, 0.9));
        assert!(e[0].saturated(&LC) && !e[1].saturated(&LC) && !e[2].saturated(&LC));
        // max(2 ours, 4 running) + 4 * 0.2 = 4.8 < 4 + 4 * 0.9 = 7.6
        assert!(e[1].score(&LC) < e[2].score(&LC));
        for _ in 0..50 {
            assert_eq!(pick(&e, &[], None, 0.0, &LC), Some(1));
        }
        assert_eq!(pick(&e, &[1], None, 0.0, &LC), Some(2));
        // Only saturated ones left: still tried (a request is better queued than refused).
        assert_eq!(pick(&e, &[1, 2], None, 0.0, &LC), Some(0));
        // A session's endpoint yields when saturated, and comes back after.
        let a = Some(Affinity {
            key: 7,
            endpoint: Some(e[0].key),
            place: false,
        });
        assert_ne!(pick(&e, &[], a, 2.0, &LC), Some(0));
        e[0].load.store(report(0.0, 0.1));
        assert_eq!(pick(&e, &[], a, 2.0, &LC), Some(0));
    }

    #[test]
    fn a_saturated_pool_overflows_to_the_first_candidate_with_room() {
        let mut cfg = Config::from_yaml(crate::config::EMBEDDED_DEFAULT).unwrap();
        let extra = cfg.models[1].clone();
        cfg.models.push(ModelConfig {
            name: "third".into(),
            endpoints: vec!["http://127.0.0.1:9".into()],
            ..extra
        });
        let pools = Pools::build(&cfg, None);
        let (big, small, third) = (&cfg.models[1], &cfg.models[0], &cfg.models[2]);
        let names = |o: &[&ModelConfig]| o.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
        let models = [big, small, third];
        // Nothing reported: no overflow.
        assert_eq!(overflow(&pools, &models, &LC).1, None);
        for ep in pools.endpoints(&big.name) {
            ep.load.store(report(5.0, 0.5));
        }
        for ep in pools.endpoints(&small.name) {
            ep.load.store(report(0.0, 0.99));
        }
        let (order, moved) = overflow(&pools, &models, &LC);
        assert_eq!(moved, Some((big.name.clone(), "third".to_string())));
        assert_eq!(
            names(&order),
            ["third", big.name.as_str(), small.name.as_str()]
        );
        // Forbidden by the model, or everywhere: the order stays.
        let stay = ModelConfig {
            overflow: false,
            ..big.clone()
        };
        assert_eq!(overflow(&pools, &[&stay, small, third], &LC).1, None);
        let off = LoadConfig {
            overflow: false,
            ..LC
        };
        assert_eq!(overflow(&pools, &models, &off).1, None);
        // No candidate with room: the decided model keeps the request.
        assert_eq!(overflow(&pools, &[big, small], &LC).1, None);
        // A gateway candidate has room as far as the router knows.
        let gw = ModelConfig {
            endpoint_picker: EndpointPicker::Gateway,
            ..small.clone()
        };
        assert_eq!(
            overflow(&pools, &[big, &gw], &LC).1,
            Some((big.name.clone(), small.name.clone()))
        );
    }

    #[test]
    fn pools_keep_endpoint_state_across_rebuilds() {
        let cfg = Config::from_yaml(crate::config::EMBEDDED_DEFAULT).unwrap();
        let a = Pools::build(&cfg, None);
        let ep = a.endpoints("qwen3-8b")[0].clone();
        ep.set_healthy(false);
        let b = Pools::build(&cfg, Some(&a));
        assert!(Arc::ptr_eq(&ep, &b.endpoints("qwen3-8b")[0]));
        ep.set_healthy(true);
    }
}
