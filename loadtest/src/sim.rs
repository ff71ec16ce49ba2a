//! A vLLM stand-in: OpenAI-compatible chat and text completions, plain or streamed (SSE) at a set
//! token rate after a set time to first token, with a tool call when tools are offered, and
//! Anthropic Messages (`/v1/messages`) and OpenAI Responses (`/v1/responses`) natively; echoes the model it was asked for; exposes vLLM's
//! `/metrics` gauges; fails, hangs or slows down on command (`/sim/control`, or per request with
//! the `x-sim-mode` header). Every response carries `x-sim-backend` so tests see who answered.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// How the simulator answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Answer normally.
    Ok,
    /// Answer every request with `fail_status` and an OpenAI-format error (and /health 503).
    Fail,
    /// Accept the request and never answer (until the client gives up).
    Hang,
    /// Answer normally, `slow_factor` times slower.
    Slow,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Shown in `x-sim-backend` and the metrics' labels.
    pub name: String,
    /// Model names served; empty = answer for any model name.
    pub models: Vec<String>,
    pub ttft: Duration,
    /// Time between streamed tokens.
    pub token_interval: Duration,
    /// Completion length when the request sets no max_tokens.
    pub default_max_tokens: usize,
    /// Requests processed at once (vLLM's max_num_seqs); more wait (num_requests_waiting).
    pub max_num_seqs: usize,
    /// Prefill time per prompt token not in the prefix cache, added to `ttft` (zero: the time
    /// to first token is `ttft` whatever the prompt).
    pub prefill_per_token: Duration,
    /// Automatic prefix caching as vLLM does it: prompt blocks of `PREFIX_BLOCK_TOKENS`,
    /// chained hashes, this many blocks kept (least recently used evicted; 0: no cache).
    pub prefix_cache_blocks: usize,
    pub control: Control,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            name: "sim".into(),
            models: Vec::new(),
            ttft: Duration::from_millis(20),
            token_interval: Duration::from_millis(5),
            default_max_tokens: 16,
            max_num_seqs: 256,
            prefill_per_token: Duration::ZERO,
            prefix_cache_blocks: 0,
            control: Control::default(),
        }
    }
}

/// Fault settings, changeable at run time through `POST /sim/control`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Control {
    pub mode: Mode,
    #[serde(default = "default_fail_status")]
    pub fail_status: u16,
    #[serde(default = "default_slow_factor")]
    pub slow_factor: f64,
}

fn default_fail_status() -> u16 {
    500
}
fn default_slow_factor() -> f64 {
    10.0
}

impl Default for Control {
    fn default() -> Self {
        Self {
            mode: Mode::Ok,
            fail_status: default_fail_status(),
            slow_factor: default_slow_factor(),
        }
    }
}

struct Sim {
    cfg: SimConfig,
    control: Mutex<Control>,
    slots: Arc<Semaphore>,
    running: AtomicUsize,
    waiting: AtomicUsize,
    ids: AtomicU64,
    /// The last request bodies, as received (for tests checking what was forwarded).
    log: Mutex<VecDeque<Value>>,
    prefix: Mutex<PrefixCache>,
    /// Prompt tokens looked up in the prefix cache, and those found (vLLM's counters).
    prefix_queries: AtomicU64,
    prefix_hits: AtomicU64,
}

/// Tokens per prefix-cache block (vLLM's default block size).
pub const PREFIX_BLOCK_TOKENS: usize = 16;

/// An LRU set of prompt-block hashes: what a replica's KV cache still holds.
#[derive(Default)]
pub struct PrefixCache {
    capacity: usize,
    tick: u64,
    used: std::collections::HashMap<u64, u64>,
    order: std::collections::BTreeMap<u64, u64>,
}

impl PrefixCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    /// Looks `blocks` (chained hashes, in prompt order) up: how many leading ones were cached;
    /// then every one of them is (re)cached as most recently used.
    pub fn lookup_and_insert(&mut self, blocks: &[u64]) -> usize {
        if self.capacity == 0 {
            return 0;
        }
        let hit = blocks
            .iter()
            .take_while(|b| self.used.contains_key(b))
            .count();
        for &b in blocks {
            self.tick += 1;
            if let Some(old) = self.used.insert(b, self.tick) {
                self.order.remove(&old);
            }
            self.order.insert(self.tick, b);
            while self.used.len() > self.capacity {
                let Some((_, evict)) = self.order.pop_first() else {
                    break;
                };
                self.used.remove(&evict);
            }
        }
        hit
    }
}

/// A prompt's blocks as chained hashes (each covers every token before it, as vLLM's do):
/// the prompt text in order (roles and contents), `PREFIX_BLOCK_TOKENS` x 4 characters a block;
/// a last partial block is not cached, as in vLLM.
pub fn prompt_blocks(req: &Value) -> Vec<u64> {
    let mut text = String::new();
    match (&req["messages"], &req["prompt"]) {
        (Value::Array(msgs), _) => {
            for m in msgs {
                text.push_str(m["role"].as_str().unwrap_or(""));
                text.push('\n');
                match &m["content"] {
                    Value::String(c) => text.push_str(c),
                    Value::Array(parts) => {
                        for p in parts.iter().filter_map(|p| p["text"].as_str()) {
                            text.push_str(p);
                        }
                    }
                    _ => {}
                }
                text.push('\n');
            }
        }
        (_, Value::String(p)) => text.push_str(p),
        _ => {}
    }
    let size = PREFIX_BLOCK_TOKENS * 4;
    let mut h: u64 = 0xcbf29ce484222325;
    text.as_bytes()
        .chunks_exact(size)
        .map(|block| {
            // FNV-1a over the previous hash and the block.
            for &b in h.to_le_bytes().iter().chain(block) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x100000001b3);
            }
            h
        })
        .collect()
}

const LOG_LEN: usize = 256;

/// The simulator's routes.
pub fn router(cfg: SimConfig) -> Router {
    let sim = Arc::new(Sim {
        control: Mutex::new(cfg.control),
        slots: Arc::new(Semaphore::new(cfg.max_num_seqs.max(1))),
        running: AtomicUsize::new(0),
        waiting: AtomicUsize::new(0),
        ids: AtomicU64::new(0),
        log: Mutex::new(VecDeque::new()),
        prefix: Mutex::new(PrefixCache::new(cfg.prefix_cache_blocks)),
        prefix_queries: AtomicU64::new(0),
        prefix_hits: AtomicU64::new(0),
        cfg,
    });
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/messages", post(messages))
        .route("/v1/responses", post(responses))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/sim/control", get(get_control).post(set_control))
        .route("/sim/requests", get(requests).delete(clear_requests))
        .with_state(sim)
}

/// Serves until `shutdown` resolves, then closes every connection at once, as a backend process
/// that dies would: requests and streams in flight are cut, kept-alive connections are reset.
/// The connections are tasks of a `JoinSet` owned by this future, so dropping the future (a task
/// that is aborted) closes them too. `axum::serve` spawned them apart: a stopped simulator kept
/// answering on connections opened before, which made "backend gone" tests race.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cfg: SimConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(cfg);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            // Reap finished connections so the set does not grow with every one ever served.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        conns.spawn(async move {
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
        });
    }
    drop(listener);
    conns.shutdown().await;
    Ok(())
}

fn openai_error(status: StatusCode, message: &str, kind: &str) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": status.as_u16()}});
    (status, Json(body)).into_response()
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

async fn chat(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    complete(sim, headers, body, Kind::Chat).await
}

async fn completions(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    complete(sim, headers, body, Kind::Text).await
}

/// Decrements `running` when a request (or its stream) ends, however it ends.
struct Running(Arc<Sim>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn complete(sim: Arc<Sim>, headers: HeaderMap, body: Bytes, kind: Kind) -> Response {
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "body must be a JSON object",
                "invalid_request_error",
            )
        }
        Err(e) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                &format!("invalid JSON: {e}"),
                "invalid_request_error",
            )
        }
    };
    let Some(model) = req["model"].as_str().map(str::to_string) else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "model is required",
            "invalid_request_error",
        );
    };
    if !sim.cfg.models.is_empty() && !sim.cfg.models.contains(&model) {
        return openai_error(
            StatusCode::NOT_FOUND,
            &format!("The model `{model}` does not exist."),
            "NotFoundError",
        );
    }
    {
        let mut log = sim.log.lock().expect("log lock");
        if log.len() == LOG_LEN {
            log.pop_front();
        }
        log.push_back(req.clone());
    }
    let mut control = *sim.control.lock().expect("control lock");
    if let Some(m) = headers.get("x-sim-mode").and_then(|v| v.to_str().ok()) {
        if let Ok(mode) = serde_json::from_value(json!(m)) {
            control.mode = mode;
        }
    }
    match control.mode {
        Mode::Fail => {
            let status = StatusCode::from_u16(control.fail_status)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return with_backend(
                &sim,
                openai_error(status, "simulated failure", "InternalServerError"),
            );
        }
        Mode::Hang => std::future::pending::<()>().await,
        Mode::Ok | Mode::Slow => {}
    }
    let factor = if control.mode == Mode::Slow {
        control.slow_factor.max(0.0)
    } else {
        1.0
    };
    // Prefill: the prompt tokens the prefix cache does not hold.
    let prompt_tokens = prompt_tokens(&req);
    let cached = if sim.cfg.prefix_cache_blocks > 0 {
        let blocks = prompt_blocks(&req);
        let hit = sim
            .prefix
            .lock()
            .expect("prefix lock")
            .lookup_and_insert(&blocks);
        (hit * PREFIX_BLOCK_TOKENS).min(prompt_tokens)
    } else {
        0
    };
    sim.prefix_queries
        .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
    sim.prefix_hits.fetch_add(cached as u64, Ordering::Relaxed);
    let prefill = sim
        .cfg
        .prefill_per_token
        .mul_f64((prompt_tokens - cached) as f64);
    let ttft = (sim.cfg.ttft + prefill).mul_f64(factor);
    let interval = sim.cfg.token_interval.mul_f64(factor);
    let max_tokens = req["max_completion_tokens"]
        .as_u64()
        .or(req["max_tokens"].as_u64())
        .map(|n| n as usize)
        .unwrap_or(sim.cfg.default_max_tokens)
        .max(1);
    let stream = req["stream"].as_bool().unwrap_or(false);
    let include_usage = req["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);

    // Queue for a slot like vLLM's scheduler.
    sim.waiting.fetch_add(1, Ordering::Relaxed);
    let permit = sim.slots.clone().acquire_owned().await;
    sim.waiting.fetch_sub(1, Ordering::Relaxed);
    let Ok(permit) = permit else {
        return openai_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "simulator shutting down",
            "ServiceUnavailable",
        );
    };
    sim.running.fetch_add(1, Ordering::Relaxed);
    let guard = Running(sim.clone());
    let id = format!(
        "{}-{}",
        if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        },
        sim.ids.fetch_add(1, Ordering::Relaxed)
    );
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens, "total_tokens": prompt_tokens + max_tokens});

    let tool = (kind == Kind::Chat).then(|| tool_call(&req)).flatten();
    if !stream {
        pause(ttft + interval * (max_tokens as u32 - 1)).await;
        let text: String = (0..max_tokens).map(token).collect();
        let body = match kind {
            Kind::Chat if tool.is_some() => {
                let (name, args) = tool.as_ref().expect("tool");
                json!({
                    "id": id, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
                        "tool_calls": [{"id": format!("call_{id}"), "type": "function",
                            "function": {"name": name, "arguments": args}}]},
                        "finish_reason": "tool_calls"}],
                    "usage": usage,
                })
            }
            Kind::Chat => json!({
                "id": id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}],
                "usage": usage,
            }),
            Kind::Text => json!({
                "id": id, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": "length"}],
                "usage": usage,
            }),
        };
        drop((permit, guard));
        let resp = with_backend(&sim, Json(body).into_response());
        return with_prefix(resp, prompt_tokens, cached);
    }

    let (mut tx, rx) = futures::channel::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let _hold = (permit, guard);
        let chunk = |delta: Value, finish: Value| match kind {
            Kind::Chat => {
                json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            }
            Kind::Text => {
                json!({"id": id, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": delta["content"].as_str().unwrap_or(""), "finish_reason": finish}]})
            }
        };
        let sse = |v: &Value| Bytes::from(format!("data: {v}\n\n"));
        pause(ttft).await;
        if kind == Kind::Chat
            && tx
                .send(sse(&chunk(
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                )))
                .await
                .is_err()
        {
            return;
        }
        if let Some((name, args)) = &tool {
            // The call's head, then its arguments in two pieces, as vLLM streams them.
            let (a, b) = args.split_at(args.len() / 2);
            let parts = [
                json!([{"index": 0, "id": format!("call_{id}"), "type": "function",
                    "function": {"name": name, "arguments": ""}}]),
                json!([{"index": 0, "function": {"arguments": a}}]),
                json!([{"index": 0, "function": {"arguments": b}}]),
            ];
            for p in parts {
                if tx
                    .send(sse(&chunk(json!({ "tool_calls": p }), Value::Null)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let _ = tx.send(sse(&chunk(json!({}), json!("tool_calls")))).await;
        }
        for i in 0..max_tokens {
            if tool.is_some() {
                break;
            }
            if i > 0 {
                pause(interval).await;
            }
            let last = i + 1 == max_tokens;
            let finish = if last { json!("length") } else { Value::Null };
            // The client went away: stop generating, as vLLM aborts the request.
            if tx
                .send(sse(&chunk(json!({"content": token(i)}), finish)))
                .await
                .is_err()
            {
                return;
            }
        }
        if include_usage {
            let mut u = chunk(json!({}), Value::Null);
            u["choices"] = json!([]);
            u["usage"] = usage;
            if tx.send(sse(&u)).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    let mut resp = Response::new(Body::from_stream(rx.map(Ok::<_, Infallible>)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    with_prefix(with_backend(&sim, resp), prompt_tokens, cached)
}

/// The tool call the simulator answers with: when tools are offered, `tool_choice` is not
/// "none" and no tool result is in the conversation yet, the named (or first) tool with
/// arguments `{"city": "Raleigh", "n": 1}`.
fn tool_call(req: &Value) -> Option<(String, String)> {
    let tools = req["tools"].as_array().filter(|t| !t.is_empty())?;
    if req["tool_choice"] == "none" {
        return None;
    }
    let answered = req["messages"]
        .as_array()
        .is_some_and(|m| m.iter().any(|m| m["role"] == "tool"));
    if answered {
        return None;
    }
    let name = req["tool_choice"]["function"]["name"]
        .as_str()
        .or(tools[0]["function"]["name"].as_str())?;
    Some((
        name.to_string(),
        r#"{"city": "Raleigh", "n": 1}"#.to_string(),
    ))
}

/// Anthropic Messages, natively (for a router model with `api: [messages]`): a text answer of
/// `max_tokens` tokens, whole or as the Messages SSE events; `x-sim-mode: fail` answers an
/// Anthropic-format error.
async fn messages(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(req @ Value::Object(_)) = serde_json::from_slice::<Value>(&body) else {
        return anthropic_error(StatusCode::BAD_REQUEST, "invalid JSON body");
    };
    {
        let mut log = sim.log.lock().expect("log lock");
        if log.len() == LOG_LEN {
            log.pop_front();
        }
        log.push_back(req.clone());
    }
    let failing = sim.control.lock().expect("control lock").mode == Mode::Fail
        || headers.get("x-sim-mode").is_some_and(|m| m == "fail");
    if failing {
        return with_backend(
            &sim,
            anthropic_error(StatusCode::INTERNAL_SERVER_ERROR, "simulated failure"),
        );
    }
    let model = req["model"].as_str().unwrap_or("").to_string();
    let n = req["max_tokens"].as_u64().unwrap_or(16).max(1) as usize;
    let id = format!("msg_sim{}", sim.ids.fetch_add(1, Ordering::Relaxed));
    let input = prompt_tokens(&req);
    if !req["stream"].as_bool().unwrap_or(false) {
        let text: String = (0..n).map(token).collect();
        return with_backend(
            &sim,
            Json(
                json!({"id": id, "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}], "stop_reason": "max_tokens",
                "stop_sequence": null, "usage": {"input_tokens": input, "output_tokens": n}}),
            )
            .into_response(),
        );
    }
    let ev = |name: &str, v: Value| format!("event: {name}\ndata: {v}\n\n");
    let mut out = ev(
        "message_start",
        json!({"type": "message_start", "message": {"id": id, "type": "message",
            "role": "assistant", "model": model, "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": {"input_tokens": input, "output_tokens": 0}}}),
    );
    out += &ev(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    );
    for i in 0..n {
        out += &ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": token(i)}}),
        );
    }
    out += &ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    );
    out += &ev(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": null},
            "usage": {"output_tokens": n}}),
    );
    out += &ev("message_stop", json!({"type": "message_stop"}));
    let mut resp = Response::new(Body::from(out));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    with_backend(&sim, resp)
}

/// OpenAI Responses, natively (for a router model with `api: [responses]`): a text answer of
/// `max_output_tokens` tokens, whole or as the Responses stream events; `previous_response_id`
/// is echoed (the simulator stores nothing).
async fn responses(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let Ok(req @ Value::Object(_)) = serde_json::from_slice::<Value>(&body) else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid JSON body",
            "invalid_request_error",
        );
    };
    {
        let mut log = sim.log.lock().expect("log lock");
        if log.len() == LOG_LEN {
            log.pop_front();
        }
        log.push_back(req.clone());
    }
    let n = req["max_output_tokens"].as_u64().unwrap_or(16).max(1) as usize;
    let id = format!("resp_sim{}", sim.ids.fetch_add(1, Ordering::Relaxed));
    let text: String = (0..n).map(token).collect();
    let item = json!({"type": "message", "id": format!("msg_{id}"), "status": "completed",
        "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]});
    let full = json!({"id": id, "object": "response", "created_at": 0, "status": "completed",
        "model": req["model"], "output": [item], "previous_response_id": req["previous_response_id"],
        "usage": {"input_tokens": prompt_tokens(&req), "output_tokens": n,
            "total_tokens": prompt_tokens(&req) + n}});
    if !req["stream"].as_bool().unwrap_or(false) {
        return with_backend(&sim, Json(full).into_response());
    }
    let mut seq = 0;
    let mut ev = |v: Value| {
        let mut v = v;
        v["sequence_number"] = json!(seq);
        seq += 1;
        format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap_or(""))
    };
    let mut out = ev(json!({"type": "response.created", "response": full}));
    out += &ev(
        json!({"type": "response.output_text.delta", "item_id": format!("msg_{id}"),
        "output_index": 0, "content_index": 0, "delta": text}),
    );
    out += &ev(json!({"type": "response.completed", "response": full}));
    let mut resp = Response::new(Body::from(out));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    with_backend(&sim, resp)
}

fn anthropic_error(status: StatusCode, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": "api_error", "message": message}});
    (status, Json(body)).into_response()
}

/// Token `i` of every completion: deterministic, so tests can check order.
fn token(i: usize) -> String {
    format!("t{i} ")
}

/// Rough prompt size: ~4 characters a token, as a stand-in for a tokenizer.
fn prompt_tokens(req: &Value) -> usize {
    let chars: usize = match (&req["messages"], &req["prompt"]) {
        (Value::Array(msgs), _) => msgs
            .iter()
            .map(|m| match &m["content"] {
                Value::String(s) => s.len(),
                Value::Array(parts) => parts
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .map(str::len)
                    .sum(),
                _ => 0,
            })
            .sum(),
        (_, Value::String(p)) => p.len(),
        _ => 0,
    };
    chars.div_ceil(4).max(1)
}

/// `x-sim-prompt-tokens` and `x-sim-cached-tokens` (prefix-cache hits): what a benchmark
/// reads to tell whether a conversation's turn found its prefix on this replica.
fn with_prefix(mut resp: Response, prompt: usize, cached: usize) -> Response {
    let h = resp.headers_mut();
    h.insert("x-sim-prompt-tokens", HeaderValue::from(prompt));
    h.insert("x-sim-cached-tokens", HeaderValue::from(cached));
    resp
}

fn with_backend(sim: &Sim, mut resp: Response) -> Response {
    if let Ok(v) = HeaderValue::from_str(&sim.cfg.name) {
        resp.headers_mut().insert("x-sim-backend", v);
    }
    resp
}

async fn models(State(sim): State<Arc<Sim>>) -> Json<Value> {
    let names = if sim.cfg.models.is_empty() {
        vec!["sim-model".to_string()]
    } else {
        sim.cfg.models.clone()
    };
    let data: Vec<Value> = names
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": "vllm-sim"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn metrics(State(sim): State<Arc<Sim>>) -> impl IntoResponse {
    let running = sim.running.load(Ordering::Relaxed);
    let waiting = sim.waiting.load(Ordering::Relaxed);
    let usage = running as f64 / sim.cfg.max_num_seqs.max(1) as f64;
    let label = sim
        .cfg
        .models
        .first()
        .cloned()
        .unwrap_or_else(|| sim.cfg.name.clone());
    let body = format!(
        "# HELP vllm:num_requests_running Number of requests currently running.\n\
         # TYPE vllm:num_requests_running gauge\n\
         vllm:num_requests_running{{model_name=\"{label}\"}} {running}\n\
         # HELP vllm:num_requests_waiting Number of requests waiting.\n\
         # TYPE vllm:num_requests_waiting gauge\n\
         vllm:num_requests_waiting{{model_name=\"{label}\"}} {waiting}\n\
         # HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n\
         # TYPE vllm:kv_cache_usage_perc gauge\n\
         vllm:kv_cache_usage_perc{{model_name=\"{label}\"}} {usage}\n\
         # HELP vllm:prefix_cache_queries_total Prompt tokens looked up in the prefix cache.\n\
         # TYPE vllm:prefix_cache_queries_total counter\n\
         vllm:prefix_cache_queries_total{{model_name=\"{label}\"}} {queries}\n\
         # HELP vllm:prefix_cache_hits_total Prompt tokens found in the prefix cache.\n\
         # TYPE vllm:prefix_cache_hits_total counter\n\
         vllm:prefix_cache_hits_total{{model_name=\"{label}\"}} {hits}\n",
        queries = sim.prefix_queries.load(Ordering::Relaxed),
        hits = sim.prefix_hits.load(Ordering::Relaxed),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

async fn health(State(sim): State<Arc<Sim>>) -> Response {
    let mode = sim.control.lock().expect("control lock").mode;
    match mode {
        Mode::Fail => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Mode::Hang => std::future::pending().await,
        Mode::Ok | Mode::Slow => StatusCode::OK.into_response(),
    }
}

async fn get_control(State(sim): State<Arc<Sim>>) -> Json<Control> {
    Json(*sim.control.lock().expect("control lock"))
}

async fn set_control(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Control>(&body) {
        Ok(c) => {
            *sim.control.lock().expect("control lock") = c;
            Json(c).into_response()
        }
        Err(e) => openai_error(
            StatusCode::BAD_REQUEST,
            &format!("control: {e}"),
            "invalid_request_error",
        ),
    }
}

/// Waits `d`; not at all when it is zero (`--ttft-ms 0 --tokens-per-sec inf`: an instant
/// backend), since even a zero-length runtime timer waits for the next millisecond tick.
async fn pause(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

async fn requests(State(sim): State<Arc<Sim>>) -> Json<Vec<Value>> {
    Json(sim.log.lock().expect("log lock").iter().cloned().collect())
}

async fn clear_requests(State(sim): State<Arc<Sim>>) -> StatusCode {
    sim.log.lock().expect("log lock").clear();
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod prefix_tests {
    use super::*;

    fn conv(turns: usize) -> Value {
        let mut msgs = vec![json!({"role": "system", "content": "s".repeat(300)})];
        for i in 0..turns {
            msgs.push(
                json!({"role": "user", "content": format!("question {i} {}", "q".repeat(200))}),
            );
            msgs.push(json!({"role": "assistant", "content": "a".repeat(200)}));
        }
        json!({"messages": msgs})
    }

    #[test]
    fn a_conversations_later_turns_hit_its_prefix_and_lru_evicts() {
        let mut c = PrefixCache::new(1000);
        let first = prompt_blocks(&conv(1));
        assert!(!first.is_empty());
        assert_eq!(c.lookup_and_insert(&first), 0);
        // The next turn repeats the whole earlier prompt: every one of its blocks is a hit.
        let second = prompt_blocks(&conv(2));
        assert_eq!(&second[..first.len() - 1], &first[..first.len() - 1]);
        assert!(c.lookup_and_insert(&second) >= first.len() - 1);
        // Another conversation shares no block.
        let other =
            prompt_blocks(&json!({"messages": [{"role": "user", "content": "z".repeat(500)}]}));
        assert_eq!(c.lookup_and_insert(&other), 0);
        // A cache of 4 blocks keeps only the last 4 inserted.
        let mut small = PrefixCache::new(4);
        small.lookup_and_insert(&first);
        assert_eq!(small.used.len(), 4);
        assert_eq!(
            small.lookup_and_insert(&first[..1]),
            0,
            "the first block was evicted"
        );
        assert_eq!(PrefixCache::new(0).lookup_and_insert(&first), 0);
    }
}
