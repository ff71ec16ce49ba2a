//! The HTTP face: OpenAI-compatible routes, thin handlers over one road:
//! admit -> read body -> parse -> decide -> forward -> relay. Health, readiness and metrics too.

pub mod anthropic;
pub mod candidates;
pub mod dialect;
pub mod openai;
pub mod probe;
pub mod request_id;
pub mod responses;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};
use tower::Layer;

use crate::config::ms;
use crate::decide::{self, Decision};
use crate::error::Error;
use crate::relay::{self, Report};
use crate::response_cache;
use crate::state::{Runtime, Shared};
use crate::telemetry;
use crate::tenant::{Caller, TenantReport};
use crate::upstream::{self, Outgoing};
use openai::Kind;

pub struct AppState {
    pub shared: Arc<Shared>,
    pub metrics: Option<PrometheusHandle>,
    in_flight: Arc<AtomicUsize>,
    /// `router_request_duration_seconds{endpoint}`, registered once (chat, completions).
    durations: [metrics::Histogram; 2],
    requests: crate::metrics::RequestCounters,
}

impl AppState {
    fn duration(&self, kind: Kind) -> &metrics::Histogram {
        &self.durations[(kind == Kind::Completion) as usize]
    }
}

/// The whole HTTP service: the routes inside, the cross-cutting layer (request id) around the
/// router once. Added with `Router::layer` each was boxed per route and its box cloned per
/// request (a cache hit's ~4 allocations).
pub type App = request_id::RequestIds<Routes>;

pub fn app(shared: Arc<Shared>, metrics: Option<PrometheusHandle>) -> App {
    let state = state(shared, metrics);
    request_id::RequestIdLayer.layer(Routes {
        router: routes(state.clone()),
        state,
    })
}

/// What hyper calls: a POST to one of the two inference paths goes straight to its handler,
/// anything else through axum's router (which has those routes too, for their 405s). axum's
/// path match, method router, `MatchedPath` extension and boxed route future were ~3k of a
/// proxied request's ~68k instructions, for a choice of two paths.
#[derive(Clone)]
pub struct Routes {
    state: Arc<AppState>,
    router: Router,
}

impl<B> tower::Service<Request<B>> for Routes
where
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures::future::Either<
        futures::future::BoxFuture<'static, Result<Response, Self::Error>>,
        <Router as tower::Service<Request<B>>>::Future,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let kind = match (req.method() == axum::http::Method::POST).then(|| req.uri().path()) {
            Some("/v1/chat/completions") => Kind::Chat,
            Some("/v1/completions") => Kind::Completion,
            _ => return futures::future::Either::Right(self.router.call(req)),
        };
        let s = self.state.clone();
        let (parts, body) = req.into_parts();
        futures::future::Either::Left(Box::pin(async move {
            Ok(proxy(&s, kind, parts.headers, Body::new(body), None).await)
        }))
    }
}

fn state(shared: Arc<Shared>, metrics: Option<PrometheusHandle>) -> Arc<AppState> {
    Arc::new(AppState {
        shared,
        metrics,
        in_flight: Arc::new(AtomicUsize::new(0)),
        durations: [Kind::Chat, Kind::Completion].map(
            |k| metrics::histogram!("router_request_duration_seconds", "endpoint" => k.path()),
        ),
        requests: Default::default(),
    })
}

/// The routes (no layers: `app` puts those around them).
fn routes(state: Arc<AppState>) -> Router {
    // Bodies are read by `read_body` with the configured limit (413 in OpenAI format); no
    // extractor here applies axum's default one.
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/messages", post(messages))
        .route("/v1/responses", post(responses_api))
        .route("/v1/route", post(route))
        .route("/v1/models", get(models))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> Response {
    let msg = "Unknown path; the router serves /v1/chat/completions, /v1/completions, /v1/models and /v1/route.";
    (
        StatusCode::NOT_FOUND,
        Json(crate::error::body(
            msg,
            "invalid_request_error",
            None,
            "not_found",
        )),
    )
        .into_response()
}

async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(crate::error::body(
            "Method not allowed for this path.",
            "invalid_request_error",
            None,
            "method_not_allowed",
        )),
    )
        .into_response()
}

/// Step 2 of the road: an explicit model skips classification; the alias classifies, within
/// the request's session when sessions are on (`decide::session`). `commit`: the session keeps
/// this turn (false for /v1/route, which only explains).
async fn decide_for(
    rt: &Runtime,
    req: &openai::Parsed,
    who: &Who<'_>,
    commit: bool,
) -> Result<decide::Outcome, Error> {
    if req.model == rt.cfg.server.auto_model {
        let input = req.input(&rt.cfg.classifier.input);
        let session = (rt.cfg.session.enabled && req.kind == Kind::Chat)
            .then(|| {
                // Responses' `prompt_cache_key` and `conversation` are not in its chat
                // translation: read from the client's body (no other API needs a second look).
                let responses = who
                    .native
                    .filter(|n| n.api == crate::config::Api::Responses);
                let keys = decide::session::Keys::of_request(
                    req.prompt_cache_key.as_deref(),
                    req.user.as_deref(),
                    responses.map(|n| &n.raw[..]),
                );
                decide::session::identify(
                    &rt.cfg.session,
                    &rt.cfg.classifier.input,
                    who.headers,
                    &keys,
                    who.scope,
                    &req.messages,
                )
            })
            .flatten();
        Ok(match session {
            Some(id) => Box::pin(decide::decide_in_session(rt, &input, id, commit)).await,
            None => Box::pin(decide::decide(rt, input.text.as_deref())).await,
        })
    } else if rt.cfg.model(&req.model).is_some() {
        Ok(decide::Outcome {
            decision: Decision::explicit(&req.model),
            classify: None,
            cache: None,
            cache_key: None,
            embedding: None,
        })
    } else {
        Err(Error::ModelNotFound(req.model.clone()))
    }
}

/// Header with a request's own price weight for the selection (`routing.selection`).
pub const COST_WEIGHT_HEADER: &str = "x-vsr-cost-weight";

/// A selection decided with the config's price weight, re-ranked with the request's
/// (`x-vsr-cost-weight`, where the config allows it) or else its key's. Not over a session's
/// later turns, whose model the session's rules keep.
fn reweigh(
    cfg: &crate::config::Config,
    d: &mut Decision,
    headers: &HeaderMap,
    caller: Option<&Caller>,
) -> Result<(), Error> {
    let Some(rule) = &cfg.routing.selection else {
        return Ok(());
    };
    let header = match headers.get(COST_WEIGHT_HEADER) {
        Some(v) if rule.weight_header => {
            let w = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<f64>().ok())
                .filter(|w| w.is_finite() && *w >= 0.0)
                .ok_or_else(|| {
                    Error::bad_request(
                        format!("{COST_WEIGHT_HEADER} must be a number >= 0 (0: best expected quality whatever it costs)"),
                        None,
                    )
                })?;
            Some((w, "header"))
        }
        _ => None,
    };
    let weight = header.or_else(|| caller.and_then(|c| c.rec.cost_weight).map(|w| (w, "key")));
    let fresh = d
        .session
        .as_ref()
        .is_none_or(|s| s.action == decide::session::Action::Started);
    if let (Some((w, from)), Some(sel), true) = (weight, d.selection.as_mut(), fresh) {
        if sel.candidates.first().is_some_and(|c| c.model == d.model) {
            decide::select::reweigh(sel, w, from);
            d.model = sel.candidates[0].model.clone();
            d.alternatives = sel.candidates[1..]
                .iter()
                .map(|c| c.model.clone())
                .collect();
        }
    }
    Ok(())
}

// The road's future is large; boxed, the layers above move a pointer, not its state.
// The request whole, not `HeaderMap` + `Body`: that extractor copies the headers.
async fn chat(State(s): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    Box::pin(proxy(&s, Kind::Chat, parts.headers, body, None)).await
}

async fn completions(State(s): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    Box::pin(proxy(&s, Kind::Completion, parts.headers, body, None)).await
}

/// Anthropic Messages: translated to chat for the road (or sent as it is to a model whose
/// backend speaks Messages), the answer translated back; errors in Anthropic's format.
async fn messages(State(s): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    Box::pin(dialect::road::<anthropic::Messages>(
        &s,
        parts.headers,
        body,
    ))
    .await
}

/// OpenAI Responses: the same, for `client.responses` and the agents that speak it.
async fn responses_api(State(s): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    Box::pin(dialect::road::<responses::Responses>(
        &s,
        parts.headers,
        body,
    ))
    .await
}

/// One admission slot per request, held until its response body ends.
struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn admit(s: &AppState, limit: usize) -> Result<Admitted, Error> {
    if s.in_flight.fetch_add(1, Ordering::Relaxed) >= limit {
        s.in_flight.fetch_sub(1, Ordering::Relaxed);
        metrics::counter!("router_rejected_total", "reason" => "in_flight_limit").increment(1);
        return Err(Error::Overloaded(limit));
    }
    Ok(Admitted(s.in_flight.clone()))
}

async fn read_body(
    headers: &HeaderMap,
    body: Body,
    server: &crate::config::ServerConfig,
) -> Result<bytes::Bytes, Error> {
    let limit = server.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Error::PayloadTooLarge(limit));
    }
    let read = tokio::time::timeout(
        ms(server.body_timeout_ms),
        axum::body::to_bytes(body, limit),
    );
    read.await
        .map_err(|_| Error::BodyTimeout(server.body_timeout_ms))?
        .map_err(|e| {
            if std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit")
            {
                Error::PayloadTooLarge(limit)
            } else {
                Error::bad_request(format!("Could not read the request body: {e}"), None)
            }
        })
}

/// A request in another API's format (Anthropic Messages), translated to chat for the road; a
/// model whose backend serves that API gets `raw` instead.
pub struct Native {
    pub api: crate::config::Api,
    /// The client's body.
    pub raw: bytes::Bytes,
}

/// Who sent a request, as the session step reads it.
struct Who<'a> {
    headers: &'a HeaderMap,
    native: Option<&'a Native>,
    /// The caller's API key label ("" without keys): sessions never cross tenants.
    scope: &'a str,
}

/// The road of a request.
async fn proxy(
    s: &AppState,
    kind: Kind,
    headers: HeaderMap,
    body: Body,
    native: Option<&Native>,
) -> Response {
    let started = Instant::now();
    let rt = s.shared.current();
    let endpoint = native.map_or(kind.path(), |n| n.api.path());
    let mut tenant = TenantReport::default();
    let span = telemetry::request_span(endpoint, &headers);
    let result = telemetry::traced(
        span.clone(),
        road(s, &rt, kind, &headers, body, started, &mut tenant, native),
    )
    .await;
    let (mut resp, model, category) = match result {
        Ok(v) => v,
        Err(e) => {
            if e.status().is_server_error() {
                // Counted for the periodic summary: a dead backend must not mean a line a request.
                crate::events::count(crate::events::Event::UpstreamError);
                tracing::debug!(endpoint, error = %e, "request failed");
            }
            (e.into_response(), String::new(), String::new())
        }
    };
    tenant.apply(resp.headers_mut());
    if !span.is_none() {
        span.record("semroute.model", model.as_str());
        span.record("semroute.category", category.as_str());
        span.record("http.response.status_code", resp.status().as_u16());
    }
    s.requests
        .count(endpoint, &model, &category, resp.status().as_u16());
    s.duration(kind).record(started.elapsed().as_secs_f64());
    // Per-request lines at debug (RUST_LOG=semroute_router=debug): at thousands of requests a
    // second the metrics tell the story; failures are counted in `events` (one summary line an
    // interval) and state changes are logged where they happen.
    tracing::debug!(
        endpoint,
        model,
        category,
        status = resp.status().as_u16(),
        ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    resp
}

#[allow(clippy::too_many_arguments)]
async fn road(
    s: &AppState,
    rt: &Runtime,
    kind: Kind,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
    tenant: &mut TenantReport,
    native: Option<&Native>,
) -> Result<(Response, String, String), Error> {
    let cfg = &rt.cfg;
    // 1. admit, authenticate (keyed set-ups), parse, check the key's limits and budget
    let admitted = admit(s, cfg.server.max_in_flight)?;
    let caller = authenticate(rt, headers, tenant).await?;
    let mut req = telemetry::traced(telemetry::step("parse"), async {
        let bytes = read_body(headers, body, &cfg.server).await?;
        openai::parse(kind, &bytes)
    })
    .await?;
    // A keyed stream is metered by its usage: the backend is asked for it, and the relay drops
    // the usage event the client did not ask for.
    let strip_usage = caller.is_some() && req.stream && !req.include_usage;
    if strip_usage {
        req.ask_for_stream_usage();
    }
    let admission = match (&rt.tenants, &caller) {
        (Some(t), Some(c)) => {
            let auto = req.model == cfg.server.auto_model;
            Some(Box::pin(t.admit(c, &req.model, auto, req.token_estimate(), tenant)).await?)
        }
        _ => None,
    };

    // 2. decide (cache, classify, policy), within what the key may use
    let decide_span = telemetry::step("decide");
    let who = Who {
        headers,
        native,
        scope: caller.as_ref().map_or("", |c| c.label()),
    };
    let mut outcome =
        telemetry::traced(decide_span.clone(), decide_for(rt, &req, &who, true)).await?;
    reweigh(cfg, &mut outcome.decision, headers, caller.as_ref())?;
    if let (Some(c), Some(a)) = (&caller, &admission) {
        c.confine(cfg, &mut outcome.decision, a.downgrade);
    }
    let d = &outcome.decision;
    if !decide_span.is_none() {
        let layer = match d.source {
            decide::Source::CacheLocal => "local",
            decide::Source::CacheRedis => "redis",
            decide::Source::Coalesced => "coalesced",
            _ => "none",
        };
        for span in [&decide_span, &tracing::Span::current()] {
            span.record("semroute.model", d.model.as_str());
            span.record("semroute.category", d.category.as_deref().unwrap_or(""));
            span.record("semroute.decision_source", d.source.as_str());
            span.record("semroute.cache_layer", layer);
        }
    }
    let category = d.category.clone().unwrap_or_default();
    if d.jailbreak {
        let action = if d.blocked { "blocked" } else { "flagged" };
        metrics::counter!("router_jailbreak_total", "action" => action).increment(1);
        // Counted (router_jailbreak_total{action}); a line per request would flood the log.
        tracing::debug!(action, "jailbreak detected");
    }
    if d.blocked {
        return Ok((refuse(&req, cfg, &outcome), String::new(), category));
    }

    // 3. the response cache (opt-in): a stored answer to the same request, or a close one
    let lookup = match &rt.response_cache {
        Some(rc) => {
            let looked = Box::pin(cache_lookup(
                rc, cfg, kind, &req, &outcome, headers, &caller, native,
            ));
            telemetry::traced(telemetry::step("response_cache"), looked).await
        }
        None => response_cache::Lookup::Off,
    };
    let cache_status = lookup.status();
    let mut record = match lookup {
        response_cache::Lookup::Hit {
            entry, similarity, ..
        } => {
            // Nothing forwarded: the key is charged no tokens (its meter, dropped unused,
            // gives the estimate back).
            let report = Report {
                decision: d,
                served_by: &d.model,
                classify: outcome.classify,
                cache: outcome.cache,
                upstream: None,
            };
            return Ok((
                relay::replay(&entry, &report, similarity),
                d.model.clone(),
                category,
            ));
        }
        response_cache::Lookup::Miss(t) => Some(t),
        _ => None,
    };

    // 4. pick endpoint and forward: decided model, alternatives, fallback (PII policy applied)
    let mut cands = Box::pin(candidates::candidates(cfg, d, &req, &rt.classifier)).await?;
    if let Some(c) = &caller {
        cands.models.retain(|m| c.rec.allows(&m.name));
        if cands.models.is_empty() {
            return Err(Error::ModelNotAllowed(d.model.clone()));
        }
    }
    let deadline = started + ms(cfg.upstream.total_timeout_ms);
    let headers_by = if req.stream {
        deadline.min(Instant::now() + ms(cfg.upstream.first_byte_timeout_ms))
    } else {
        deadline
    };
    // The steps' futures are boxed: inline, each made the road's state (moved whole at every
    // layer) as large as the largest of them.
    let answered = Box::pin(rt.upstream.send(
        &rt.pools,
        &cands.models,
        |m| {
            let mask = cands.masks.get(&m.name).map(|k| (k, &cands.scan));
            match native.filter(|n| m.serves(n.api)) {
                Some(n) => (n.api.path(), openai::native_body(&n.raw, m, mask)),
                None => (kind.path(), openai::body_for(&req, cfg, m, d, mask)),
            }
        },
        Outgoing {
            headers: &forwarded_headers(headers, caller.is_none()),
            keys: &rt.api_keys,
            headers_by,
            affinity: d.session.as_ref().and_then(|s| {
                Some(upstream::Affinity {
                    key: u64::from_str_radix(&s.id, 16).ok()?,
                    endpoint: s.endpoint,
                    place: s.places(),
                })
            }),
        },
    ))
    .await?;
    // A session's first turn on its model: its turns go where this one went (its prefix is
    // cached there now).
    if let Some(s) = d.session.as_ref().filter(|s| s.places()) {
        if answered.model == d.model {
            let placed = rt.sessions.place(&s.id, &d.model, answered.endpoint.key);
            Box::pin(placed).await;
        }
    }

    // 5. relay (a cache miss's answer stored if it ends well and came from the decided model)
    let served = answered.model.clone();
    let overflow = answered.overflow.clone();
    if served != d.model {
        if let Some(t) = record.take() {
            t.skip(if overflow.is_some() {
                "overflow"
            } else {
                "failover"
            });
        }
    }
    let pricing = cfg
        .model(&served)
        .map(|m| m.pricing.clone())
        .unwrap_or_default();
    let ttfb = answered.ttfb;
    let mut resp = Box::pin(telemetry::traced(
        telemetry::step("relay"),
        relay::relay(
            answered,
            &Report {
                decision: d,
                served_by: &served,
                classify: outcome.classify,
                cache: outcome.cache,
                upstream: Some(ttfb),
            },
            deadline,
            &pricing,
            admitted,
            relay::After {
                meter: admission.map(|a| a.meter),
                strip_usage,
                record,
            },
        ),
    ))
    .await?;
    cands.report(&served, resp.headers_mut());
    // The decided model's pool was saturated: which model took the request instead.
    if let Some(v) =
        overflow.and_then(|(from, to)| HeaderValue::try_from(format!("{from}->{to}")).ok())
    {
        resp.headers_mut()
            .insert(header::HeaderName::from_static("x-vsr-overflow"), v);
    }
    if let Some(status) = cache_status {
        resp.headers_mut().insert(
            header::HeaderName::from_static(response_cache::STATUS_HEADER),
            HeaderValue::from_static(status),
        );
    }
    Ok((resp, served, category))
}

/// The response cache's view of a request: the body its answer depends on (the client's own
/// when the decided model's backend serves its API natively), its scope, the classified text
/// and embedding for a semantic match.
#[allow(clippy::too_many_arguments)]
async fn cache_lookup(
    rc: &Arc<response_cache::ResponseCache>,
    cfg: &crate::config::Config,
    kind: Kind,
    req: &openai::Parsed,
    outcome: &decide::Outcome,
    headers: &HeaderMap,
    caller: &Option<Caller>,
    native: Option<&Native>,
) -> response_cache::Lookup {
    let d = &outcome.decision;
    let api = match native {
        Some(n) => n.api.name(),
        None if kind == Kind::Completion => "completions",
        None => "chat",
    };
    if !rc.covers(&d.model, api) {
        return response_cache::Lookup::Off;
    }
    let served_natively = native.filter(|n| cfg.model(&d.model).is_some_and(|m| m.serves(n.api)));
    let native_body = served_natively.and_then(|n| match serde_json::from_slice::<Value>(&n.raw) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    });
    let classified = outcome
        .embedding
        .as_ref()
        .and_then(|_| req.classify_text(&cfg.classifier.input));
    // A native backend gets the client's body with only `model` replaced.
    let added = cfg
        .model(&d.model)
        .filter(|_| served_natively.is_none())
        .map(|m| openai::added_by_router(req, cfg, m, d))
        .unwrap_or_default();
    rc.lookup(&response_cache::Request {
        api,
        added: &added,
        body: native_body.as_ref().unwrap_or_else(|| req.body()),
        native: served_natively.is_some(),
        decision: d,
        headers,
        key: caller.as_ref().map(|c| c.rec.sha256.as_str()),
        classified: classified.as_deref(),
        embedding: outcome.embedding.as_deref(),
    })
    .await
}

/// A blocked request's answer: an OpenAI-style refusal (SSE when streaming), nothing forwarded.
fn refuse(
    req: &openai::Parsed,
    cfg: &crate::config::Config,
    outcome: &decide::Outcome,
) -> Response {
    let (sse, body) = openai::refusal(req, &cfg.routing.jailbreak.message);
    let mut resp = Response::new(Body::from(body));
    let ct = if sse {
        "text/event-stream"
    } else {
        "application/json"
    };
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    relay::report_headers(
        resp.headers_mut(),
        &Report {
            decision: &outcome.decision,
            served_by: "",
            classify: outcome.classify,
            cache: outcome.cache,
            upstream: None,
        },
    );
    resp
}

/// Client headers that travel to the backend: the request id (vLLM logs it), and the client's
/// credentials when the router does not check keys itself (a router key never leaves it).
/// A list, not a map: each attempt's request inserts them into its own headers.
fn forwarded_headers(h: &HeaderMap, with_credentials: bool) -> Vec<(HeaderName, HeaderValue)> {
    // The client's trace context goes on as it came (replaced by the attempt's own
    // `traceparent` when the router traces this request).
    const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
    const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
    let credentials = with_credentials.then_some(header::AUTHORIZATION);
    [
        Some(request_id::X_REQUEST_ID),
        Some(TRACEPARENT),
        Some(TRACESTATE),
        credentials,
    ]
    .into_iter()
    .flatten()
    .filter_map(|name| {
        let value = h.get(&name)?.clone();
        Some((name, value))
    })
    .collect()
}

/// The caller's key when `auth.mode` is `keys` (its name goes into the report); None otherwise.
async fn authenticate(
    rt: &Runtime,
    headers: &HeaderMap,
    tenant: &mut TenantReport,
) -> Result<Option<Caller>, Error> {
    let Some(t) = &rt.tenants else {
        return Ok(None);
    };
    let caller = t.authenticate(headers).await?;
    tenant.key = Some(caller.label().to_string());
    Ok(Some(caller))
}

/// The decision for a request body, without forwarding it.
async fn route(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let rt = s.shared.current();
    let mut tenant = TenantReport::default();
    let result: Result<Response, Error> = async {
        let _admitted = admit(&s, rt.cfg.server.max_in_flight)?;
        let caller = authenticate(&rt, &headers, &mut tenant).await?;
        let bytes = read_body(&headers, body, &rt.cfg.server).await?;
        let probe: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let kind = if probe.get("prompt").is_some() && probe.get("messages").is_none() {
            Kind::Completion
        } else {
            Kind::Chat
        };
        let req = openai::parse(kind, &bytes)?;
        if let Some(c) = &caller {
            if req.model != rt.cfg.server.auto_model && !c.rec.allows(&req.model) {
                return Err(Error::ModelNotAllowed(req.model.clone()));
            }
        }
        let who = Who {
            headers: &headers,
            native: None,
            scope: caller.as_ref().map_or("", |c| c.label()),
        };
        let mut outcome = decide_for(&rt, &req, &who, false).await?;
        reweigh(&rt.cfg, &mut outcome.decision, &headers, caller.as_ref())?;
        if let Some(c) = &caller {
            c.confine(&rt.cfg, &mut outcome.decision, false);
        }
        let d = &outcome.decision;
        let reasoning = rt
            .cfg
            .model(&d.model)
            .filter(|_| d.source != decide::Source::Explicit)
            .and_then(|m| openai::reasoning_fields(m, d.use_reasoning))
            .map(|(k, v)| json!({k: v}));
        let mut resp = Json(json!({
            "decision": d,
            "cache_hit": d.source.is_cache_hit(),
            "cache_key": outcome.cache_key,
            "policy_version": rt.policy_version,
            "reasoning_fields": reasoning,
            "timings_ms": {
                "classify": outcome.classify.map(|t| t.as_secs_f64() * 1000.0),
                "cache": outcome.cache.map(|t| t.as_secs_f64() * 1000.0),
            },
        }))
        .into_response();
        relay::report_headers(
            resp.headers_mut(),
            &Report {
                decision: d,
                served_by: &d.model,
                classify: outcome.classify,
                cache: outcome.cache,
                upstream: None,
            },
        );
        Ok(resp)
    }
    .await;
    let mut resp = result.unwrap_or_else(IntoResponse::into_response);
    tenant.apply(resp.headers_mut());
    resp
}

/// The models a caller may use (all of them without keys), and the `auto` alias.
async fn models(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let rt = s.shared.current();
    let mut tenant = TenantReport::default();
    let caller = match authenticate(&rt, &headers, &mut tenant).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut data = vec![json!({"id": rt.cfg.server.auto_model, "object": "model",
        "created": created, "owned_by": "semroute",
        "description": "semantic routing: the router picks the model"})];
    for m in &rt.cfg.models {
        if caller.as_ref().is_some_and(|c| !c.rec.allows(&m.name)) {
            continue;
        }
        data.push(json!({"id": m.name, "object": "model", "created": created,
            "owned_by": "semroute", "max_model_len": m.max_context}));
    }
    let mut resp = Json(json!({"object": "list", "data": data})).into_response();
    tenant.apply(resp.headers_mut());
    resp
}

/// Ready when the config is loaded (it is, once serving) and a backend endpoint is healthy.
/// A dead classifier or Redis does not make the router unready: it degrades.
async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    let rt = s.shared.current();
    if s.shared.draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining: shutting down"})),
        )
            .into_response()
    } else if rt.pools.any_available() {
        (StatusCode::OK, Json(json!({"status": "ready"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "no healthy backend endpoint"})),
        )
            .into_response()
    }
}

async fn render_metrics(State(s): State<Arc<AppState>>) -> Response {
    match &s.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response(),
    }
}
