//! Relay: the backend's answer back to the client. SSE streams go chunk by chunk as the backend
//! sends them (headers with the first event; nothing buffered, `data: [DONE]` untouched); plain
//! bodies are read whole (to count tokens and cost) within the total timeout. A stream's pump
//! task holds the endpoint's in-flight count and the request's admission slot until it ends; a
//! client that goes away ends it, which closes the backend connection and so cancels the
//! upstream request.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use futures::StreamExt;
use http_body_util::BodyExt;

use crate::config::Pricing;
use crate::decide::Decision;
use crate::error::Error;
use crate::response_cache::{self, Entry, Ticket};
use crate::tenant::Meter;
use crate::upstream::{Answered, TokenMetrics};

/// What the response headers report.
pub struct Report<'a> {
    pub decision: &'a Decision,
    /// The model that served (may differ from the decision after failover).
    pub served_by: &'a str,
    pub classify: Option<Duration>,
    pub cache: Option<Duration>,
    pub upstream: Option<Duration>,
}

/// `x-vsr-*` (names as in vLLM Semantic Router) and `Server-Timing`. Fixed values are static
/// header values and numbers are written as integers: float formatting and a copy per header
/// were ~3 % of a cache hit's instructions.
pub fn report_headers(h: &mut HeaderMap, r: &Report) {
    // Names made at compile time (`from_static` checks each byte when it runs).
    const REASONING: HeaderName = HeaderName::from_static("x-vsr-selected-reasoning");
    const CACHE_HIT: HeaderName = HeaderName::from_static("x-vsr-cache-hit");
    const SOURCE: HeaderName = HeaderName::from_static("x-vsr-decision-source");
    const JAILBREAK: HeaderName = HeaderName::from_static("x-vsr-jailbreak");
    const MODEL: HeaderName = HeaderName::from_static("x-vsr-selected-model");
    const CATEGORY: HeaderName = HeaderName::from_static("x-vsr-selected-category");
    const CONFIDENCE: HeaderName = HeaderName::from_static("x-vsr-confidence");
    const FAIL_REASON: HeaderName = HeaderName::from_static("x-vsr-fail-reason");
    const ROUTE: HeaderName = HeaderName::from_static("x-vsr-selected-route");
    const COMPLEXITY: HeaderName = HeaderName::from_static("x-vsr-selected-complexity");
    const SESSION: HeaderName = HeaderName::from_static("x-vsr-session");
    const SESSION_ACTION: HeaderName = HeaderName::from_static("x-vsr-session-action");
    const TIER: HeaderName = HeaderName::from_static("x-vsr-classifier-tier");
    const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");
    let d = r.decision;
    h.reserve(15);
    let mut fixed = |name: HeaderName, v: &'static str| {
        h.insert(name, HeaderValue::from_static(v));
    };
    fixed(REASONING, if d.use_reasoning { "on" } else { "off" });
    fixed(
        CACHE_HIT,
        if d.source.is_cache_hit() {
            "true"
        } else {
            "false"
        },
    );
    fixed(SOURCE, d.source.as_str());
    if let Some(s) = &d.session {
        fixed(SESSION_ACTION, s.action.as_str());
    }
    if d.jailbreak {
        fixed(JAILBREAK, if d.blocked { "blocked" } else { "flagged" });
    }
    let text = |v: &str| HeaderValue::from_str(v).ok();
    if let Some(v) = text(r.served_by).filter(|_| !r.served_by.is_empty()) {
        h.insert(MODEL, v);
    }
    if let Some(v) = d
        .category
        .as_deref()
        .filter(|c| !c.is_empty())
        .and_then(text)
    {
        h.insert(CATEGORY, v);
    }
    let mut set = |name: HeaderName, v: String| {
        if v.is_empty() {
            return;
        }
        if let Ok(v) = HeaderValue::try_from(v) {
            h.insert(name, v);
        }
    };
    set(CONFIDENCE, decimals(d.confidence as f64, 4));
    if let Some(reason) = &d.fail_reason {
        set(FAIL_REASON, reason.clone());
    }
    if let Some(r) = &d.route {
        set(ROUTE, r.clone());
    }
    if let Some(c) = &d.complexity {
        set(COMPLEXITY, c.clone());
    }
    if let Some(s) = &d.session {
        set(SESSION, s.id.clone());
    }
    if let Some(t) = &d.classifier_tier {
        set(TIER, t.clone());
    }
    let mut timing = String::with_capacity(80);
    for (name, t) in [
        ("cache", r.cache),
        ("classify", r.classify),
        ("upstream", r.upstream),
    ] {
        if let Some(t) = t {
            if !timing.is_empty() {
                timing.push_str(", ");
            }
            timing.push_str(name);
            timing.push_str(";dur=");
            push_decimals(&mut timing, t.as_nanos() as f64 / 1e6, 3);
        }
    }
    set(SERVER_TIMING, timing);
}

/// `x` with `places` decimals (as `{:.places$}` for finite non-negative values), by integers.
fn decimals(x: f64, places: u32) -> String {
    let mut s = String::with_capacity(24);
    push_decimals(&mut s, x, places);
    s
}

/// Appends `x` with `places` decimals to `s`, digits written by `itoa` (`format!` went through
/// the formatting machinery and an allocation per number).
fn push_decimals(s: &mut String, x: f64, places: u32) {
    let scale = 10u64.pow(places);
    let n = if x.is_finite() && x > 0.0 {
        (x * scale as f64).round() as u64
    } else {
        0
    };
    let mut digits = itoa::Buffer::new();
    s.push_str(digits.format(n / scale));
    s.push('.');
    let frac = digits.format(n % scale);
    for _ in frac.len()..places as usize {
        s.push('0');
    }
    s.push_str(frac);
}

fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "content-length"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-connection"
    )
}

/// What is done with an answer besides relaying it.
pub struct After {
    /// A keyed request's meter (its usage charged).
    pub meter: Option<Meter>,
    /// Drop the usage event the router asked for on the client's behalf.
    pub strip_usage: bool,
    /// A response-cache miss: the answer is stored if it is 2xx and ends well.
    pub record: Option<Ticket>,
}

/// A stored answer replayed: the body as it was relayed the first time (a stream is the
/// complete recorded stream, `data: [DONE]` included), this request's report headers.
pub fn replay(entry: &Entry, report: &Report, similarity: Option<f32>) -> Response {
    let mut resp = Response::new(Body::from(entry.body.clone()));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, entry.content_type.clone());
    report_headers(h, report);
    h.insert(
        HeaderName::from_static(response_cache::STATUS_HEADER),
        HeaderValue::from_static("hit"),
    );
    if let Some(v) = similarity.and_then(|s| HeaderValue::try_from(decimals(s as f64, 4)).ok()) {
        h.insert(
            HeaderName::from_static("x-vsr-response-cache-similarity"),
            v,
        );
    }
    resp
}

/// Turns a backend answer into the client's response. `hold` lives as long as the body.
pub async fn relay(
    answered: Answered,
    report: &Report<'_>,
    deadline: Instant,
    pricing: &Pricing,
    hold: impl Send + 'static,
    after: After,
) -> Result<Response, Error> {
    let After {
        mut meter,
        strip_usage,
        record,
    } = after;
    let Answered {
        response,
        model,
        in_flight,
        endpoint,
        ..
    } = answered;
    let tokens = endpoint.tokens.clone();
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    // Room for the backend's headers and the report's, so it is not grown while filling.
    let mut headers = HeaderMap::with_capacity(response.headers().len() + 12);
    for (k, v) in response.headers() {
        if !hop_by_hop(k) {
            headers.append(k.clone(), v.clone());
        }
    }
    report_headers(&mut headers, report);
    if status.is_success() {
        if let Some(m) = &mut meter {
            m.answered(pricing);
        }
    }
    let is_sse = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));

    let body = if is_sse {
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        tokio::spawn(pump(
            response,
            tx,
            tokio::time::Instant::from_std(deadline),
            model.clone(),
            pricing.clone(),
            Metering {
                meter,
                strip_usage,
                tokens: tokens.clone(),
                record: record
                    .filter(|_| status.is_success())
                    .map(|t| (t, headers.get(header::CONTENT_TYPE).cloned(), Vec::new())),
            },
            (in_flight, hold),
        ));
        // Headers go out with the first event, not before: the client's time to first byte is
        // its time to first token (what load tools can measure), and a stream the backend ends
        // before any event is answered at once. Dropping this future (client gone) closes `rx`,
        // which stops the pump and cancels the upstream request.
        let mut rx = rx;
        let first = rx.recv().await;
        Body::from_stream(
            futures::stream::iter(first.map(Ok::<_, std::io::Error>)).chain(
                futures::stream::unfold(rx, |mut rx| async move {
                    rx.recv()
                        .await
                        .map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
                }),
            ),
        )
    } else {
        let bytes = tokio::time::timeout_at(
            tokio::time::Instant::from_std(deadline),
            response.into_body().collect(),
        )
        .await
        .map_err(|_| Error::GatewayTimeout {
            model: model.clone(),
            detail: "body not complete within the total timeout".into(),
        })?
        .map_err(|e| Error::BadGateway {
            model: model.clone(),
            detail: format!("body broke off: {e}"),
        })?
        .to_bytes();
        drop(in_flight);
        drop(hold);
        if status.is_success() {
            if let Some(u) = count_usage(&tokens, &bytes, pricing) {
                if let Some(m) = &mut meter {
                    m.usage(u.prompt_tokens, u.completion_tokens);
                }
            }
        }
        drop(meter);
        if let Some(t) = record {
            if status.is_success() {
                t.store(headers.get(header::CONTENT_TYPE), bytes.clone())
                    .await;
            } else {
                t.skip("not_2xx");
            }
        }
        Body::from(bytes)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// Token usage as chat/completions report it, or as Messages and Responses do (`input_tokens`,
/// `output_tokens`: their native backends' answers are metered too).
#[derive(serde::Deserialize, Clone, Copy, Default, Debug, PartialEq)]
struct Usage {
    #[serde(default, alias = "input_tokens")]
    prompt_tokens: u64,
    #[serde(default, alias = "output_tokens")]
    completion_tokens: u64,
}

impl Usage {
    /// Two reports of one answer's usage (Messages: the input in `message_start`, the output
    /// so far in each `message_delta`): the larger of each count.
    fn merge(self, other: Usage) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.max(other.prompt_tokens),
            completion_tokens: self.completion_tokens.max(other.completion_tokens),
        }
    }
}

#[derive(serde::Deserialize)]
struct Nested {
    usage: Option<Usage>,
}

/// Where an answer or event carries its usage: at the top (chat, a Messages body or
/// `message_delta`, a Responses body), in `message` (`message_start`) or in `response`
/// (`response.completed`).
#[derive(serde::Deserialize)]
struct WithUsage {
    usage: Option<Usage>,
    message: Option<Nested>,
    response: Option<Nested>,
}

impl WithUsage {
    fn usage(self) -> Option<Usage> {
        self.usage
            .or(self.message.and_then(|m| m.usage))
            .or(self.response.and_then(|r| r.usage))
    }
}

/// An OpenAI-format error as an SSE event: how a stream that already sent its 200 says it failed
/// (the OpenAI clients raise it as an APIError).
fn error_event(message: &str, code: &str) -> bytes::Bytes {
    let body = crate::error::body(message, "server_error", None, code);
    bytes::Bytes::from(format!("data: {body}\n\n"))
}

/// A stream's token counters; a keyed stream's meter, and whether the usage event is the
/// router's to drop.
struct Metering {
    meter: Option<Meter>,
    strip_usage: bool,
    tokens: TokenMetrics,
    /// A cache miss's ticket, content type and the chunks relayed so far (dropped, and the
    /// answer not stored, once they pass the entry size limit).
    record: Option<(Ticket, Option<HeaderValue>, Vec<bytes::Bytes>)>,
}

/// Chunks buffered between the backend and a slow client.
const STREAM_BUFFER: usize = 32;

/// Moves an SSE stream from the backend to the client's body, chunk by chunk. It runs on its
/// own task so the total deadline holds even when the client stops reading; it ends (dropping
/// the backend connection, the endpoint's in-flight count and the admission slot in `guards`)
/// when the backend finishes, the client goes away, or the deadline passes.
async fn pump<G: Send>(
    response: crate::upstream::BackendResponse,
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
    deadline: tokio::time::Instant,
    model: String,
    pricing: Pricing,
    metering: Metering,
    guards: G,
) {
    let _guards = guards;
    let Metering {
        mut meter,
        strip_usage,
        tokens,
        mut record,
    } = metering;
    let mut recorded = 0usize;
    // Counted once the stream ends, however it ends (a Messages stream reports in two events).
    let mut usage: Option<Usage> = None;
    let mut upstream = http_body_util::BodyDataStream::new(response.into_body());
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout_at(deadline, upstream.next()) => next,
            _ = tx.closed() => break, // the client went away: cancel upstream
        };
        let (chunk, last) = match next {
            Ok(None) => {
                // The backend ended the stream: stored if it reached its last event.
                if let Some((t, ct, chunks)) = record.take() {
                    let body = bytes::Bytes::from(chunks.concat());
                    if response_cache::stream_complete(&body) {
                        t.store(ct.as_ref(), body).await;
                    } else {
                        t.skip("incomplete");
                    }
                }
                break;
            }
            Ok(Some(Ok(chunk))) => {
                let mut chunk = chunk;
                if let Some(u) = sse_usage(&chunk) {
                    usage = Some(usage.map_or(u, |seen| seen.merge(u)));
                    if strip_usage {
                        chunk = strip_usage_events(&chunk);
                        if chunk.is_empty() {
                            continue;
                        }
                    }
                }
                (chunk, false)
            }
            Ok(Some(Err(e))) => {
                if let Some((t, ..)) = record.take() {
                    t.skip("incomplete");
                }
                metrics::counter!("router_stream_errors_total", "model" => model.clone(), "reason" => "upstream").increment(1);
                crate::events::count(crate::events::Event::StreamError);
                tracing::debug!(model = %model, error = %e, "backend stream broke off");
                (
                    error_event("The backend stream broke off.", "upstream_error"),
                    true,
                )
            }
            Err(_) => {
                if let Some((t, ..)) = record.take() {
                    t.skip("incomplete");
                }
                metrics::counter!("router_stream_errors_total", "model" => model.clone(), "reason" => "timeout").increment(1);
                crate::events::count(crate::events::Event::StreamError);
                tracing::debug!(model = %model, "stream passed the total timeout; cut off");
                (
                    error_event("The stream passed the total timeout.", "upstream_timeout"),
                    true,
                )
            }
        };
        if let Some((t, _, chunks)) = &mut record {
            recorded += chunk.len();
            if recorded > t.max_bytes() {
                if let Some((t, ..)) = record.take() {
                    t.skip("too_large");
                }
            } else {
                chunks.push(chunk.clone());
            }
        }
        // A client that stops reading holds the stream until the deadline at most.
        match tokio::time::timeout_at(deadline, tx.send(chunk)).await {
            Ok(Ok(())) if !last => {}
            _ => break,
        }
    }
    if let Some(u) = usage {
        tokens.count(u.prompt_tokens, u.completion_tokens, &pricing);
        if let Some(m) = &mut meter {
            m.usage(u.prompt_tokens, u.completion_tokens);
        }
    }
}

/// Tokens and cost from a JSON body's `usage`.
fn count_usage(tokens: &TokenMetrics, body: &[u8], pricing: &Pricing) -> Option<Usage> {
    let u = match trailing_usage(body) {
        Some(u) => u,
        None => serde_json::from_slice::<WithUsage>(body).ok()?.usage()?,
    };
    tokens.count(u.prompt_tokens, u.completion_tokens, pricing);
    Some(u)
}

/// The usage of an answer whose last member is `"usage": {...}` (the order vLLM and OpenAI
/// write), read from its end: the whole answer deserialized only to find it was ~8 % of a
/// proxied request's instructions. None (the whole answer is read) when it is not laid out so:
/// the key must open a member (after `{` or `,`), and its object be followed by the `}` that
/// ends the answer, so it is a member of the outermost object. The text before it is not
/// checked; a usage is trusted as much as the backend that wrote it.
fn trailing_usage(body: &[u8]) -> Option<Usage> {
    const KEY: &[u8] = b"\"usage\"";
    // Built once (a searcher per call was a third of this function).
    static FINDER: std::sync::LazyLock<memchr::memmem::FinderRev<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::FinderRev::new(KEY));
    let at = FINDER.rfind(body)?;
    let before = body[..at].iter().rev().find(|b| !b.is_ascii_whitespace())?;
    if !matches!(before, b',' | b'{') {
        return None;
    }
    let rest = body[at + KEY.len()..]
        .trim_ascii_start()
        .strip_prefix(b":")?;
    let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<Usage>();
    let usage = values.next()?.ok()?;
    let tail = rest[values.byte_offset()..].trim_ascii();
    (tail == b"}").then_some(usage)
}

/// The usage of an SSE chunk that carries one (the last chunk when `include_usage` is set).
fn sse_usage(chunk: &[u8]) -> Option<Usage> {
    const NEEDLE: &[u8] = b"\"usage\"";
    chunk.windows(NEEDLE.len()).position(|w| w == NEEDLE)?;
    std::str::from_utf8(chunk)
        .ok()?
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| {
            serde_json::from_str::<WithUsage>(d.trim_start())
                .ok()?
                .usage()
        })
        .reduce(Usage::merge)
}

/// Drops the usage-only events (`"choices": []` with a `usage` object) of a chunk: the ones the
/// router asked for on a client's behalf. An event split over two chunks is left as it is (the
/// client then sees one usage chunk more, which OpenAI clients accept).
fn strip_usage_events(chunk: &bytes::Bytes) -> bytes::Bytes {
    let Ok(text) = std::str::from_utf8(chunk) else {
        return chunk.clone();
    };
    let usage_only = |event: &str| {
        event
            .trim_end()
            .strip_prefix("data: ")
            .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .is_some_and(|v| {
                v.get("usage").is_some_and(serde_json::Value::is_object)
                    && v.get("choices")
                        .and_then(serde_json::Value::as_array)
                        .is_some_and(Vec::is_empty)
            })
    };
    let kept: String = text
        .split_inclusive("\n\n")
        .filter(|e| !usage_only(e))
        .collect();
    bytes::Bytes::from(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_read_from_the_end_or_from_the_whole_answer() {
        let tail = br#"{"id":"x","choices":[{"message":{"content":"\"usage\": {}"}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10,
                      "prompt_tokens_details": null} }
"#;
        let u = trailing_usage(tail).unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (7, 3));
        // Not the last member, null, nested, or a string's text: the whole answer is read.
        for (body, want) in [
            (
                &br#"{"usage":{"prompt_tokens":1,"completion_tokens":2},"id":"x"}"#[..],
                Some((1, 2)),
            ),
            (
                br#"{"usage":null,"response":{"usage":{"input_tokens":4,"output_tokens":5}}}"#,
                Some((4, 5)),
            ),
            (
                br#"{"response":{"usage":{"input_tokens":4,"output_tokens":5}}}"#,
                Some((4, 5)),
            ),
            (
                br#"{"choices":[{"text":"\"usage\":{\"prompt_tokens\":9}}"}]}"#,
                None,
            ),
            (br#"{"x":["usage",{"prompt_tokens":9}]}"#, None),
            (b"not json", None),
        ] {
            assert!(
                trailing_usage(body).is_none(),
                "{}",
                String::from_utf8_lossy(body)
            );
            let read = serde_json::from_slice::<WithUsage>(body)
                .ok()
                .and_then(WithUsage::usage)
                .map(|u| (u.prompt_tokens, u.completion_tokens));
            assert_eq!(read, want, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn decimals_as_the_float_formatter_writes_them() {
        for x in [0.0, 0.5, 0.12345, 0.99995, 1.0, 3.21959, 12.0005, 1234.5678] {
            assert_eq!(decimals(x, 4), format!("{x:.4}"), "{x}");
            assert_eq!(decimals(x, 3), format!("{x:.3}"), "{x}");
        }
        assert_eq!(decimals(f64::NAN, 3), "0.000");
    }

    #[test]
    fn usage_found_in_sse_chunks_only_when_present() {
        let last = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":5}}\n\ndata: [DONE]\n\n";
        let u = sse_usage(last).unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (3, 5));
        assert!(sse_usage(b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n").is_none());
        assert!(sse_usage(b"data: {\"usage\":null}\n\n").is_none());
    }

    #[test]
    fn native_messages_and_responses_usage_is_found() {
        let u = |prompt_tokens, completion_tokens| Usage {
            prompt_tokens,
            completion_tokens,
        };
        // Messages: input in message_start, output in message_delta (merged over the stream).
        let start = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n";
        let delta = b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":30}}\n\n";
        assert_eq!(sse_usage(start), Some(u(12, 1)));
        assert_eq!(sse_usage(delta), Some(u(0, 30)));
        assert_eq!(
            sse_usage(&[&start[..], &delta[..]].concat()),
            Some(u(12, 30))
        );
        assert_eq!(
            sse_usage(start).unwrap().merge(sse_usage(delta).unwrap()),
            u(12, 30)
        );
        // Responses: in response.completed's response.
        let done = b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"usage\": {\"input_tokens\":7,\"output_tokens\":9,\"total_tokens\":16}}}\n\n";
        assert_eq!(sse_usage(done), Some(u(7, 9)));
        // Whole bodies of both.
        let body = br#"{"id":"m","type":"message","usage":{"input_tokens":3,"output_tokens":4}}"#;
        let w: WithUsage = serde_json::from_slice(body).unwrap();
        assert_eq!(w.usage(), Some(u(3, 4)));
    }

    #[test]
    fn usage_events_asked_for_by_the_router_are_dropped_and_nothing_else() {
        let chunk = bytes::Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":5}}\n\ndata: [DONE]\n\n",
        );
        let out = strip_usage_events(&chunk);
        assert_eq!(
            &out[..],
            b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\ndata: [DONE]\n\n"
        );
        let only = bytes::Bytes::from_static(
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":5}}\n\n",
        );
        assert!(strip_usage_events(&only).is_empty());
    }

    proptest::proptest! {
        /// Whatever bytes a backend streams (cut anywhere, not UTF-8, not JSON), the chunk
        /// parser answers without panicking.
        #[test]
        fn chunk_parser_never_panics(chunk in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = sse_usage(&chunk);
        }

        /// A real usage chunk cut at any point: a prefix never yields made-up numbers.
        #[test]
        fn cut_usage_chunks_are_all_or_nothing(p in 0u64..100_000, c in 0u64..100_000, cut in 0usize..200) {
            let full = format!("data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":{p},\"completion_tokens\":{c}}}}}\n\n");
            let cut = cut.min(full.len());
            if let Some(u) = sse_usage(&full.as_bytes()[..cut]) {
                proptest::prop_assert_eq!((u.prompt_tokens, u.completion_tokens), (p, c));
            }
        }
    }
}
