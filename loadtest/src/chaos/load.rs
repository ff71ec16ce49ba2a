//! The chaos run's load: an open-loop generator (request `i` is sent at `start + i / rate`,
//! whether or not earlier ones finished) that also plays the load balancer in front of the
//! router replicas: round-robin over the replicas whose `/readyz` answered 200 at the last poll
//! (every 100 ms), and one retry on the other replica for a request that failed at the
//! connection level before any response byte, as an LB does. Every request's outcome is judged
//! from what the client saw (see `Outcome`).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::Events;

/// How a request ended, from the client's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx with a complete body, or a stream that ended with `data: [DONE]`.
    Ok,
    /// A non-2xx answer, a connection broken after the response head, a timeout, a stream that
    /// ended without `[DONE]` or an error event, or no answer from either replica.
    Lost,
    /// A stream the router ended with an SSE error event (its backend died mid-stream).
    CutByBackend,
    /// The client itself dropped the stream after its first chunk.
    ClientAborted,
}

/// One request as the client saw it.
#[derive(Debug, Clone)]
pub struct Record {
    pub seq: u64,
    pub phase: usize,
    /// Scheduled send time, from the start of the load.
    pub at: Duration,
    /// The replica that gave the final answer (index).
    pub replica: usize,
    pub retried: bool,
    pub stream: bool,
    pub long: bool,
    pub abort: bool,
    pub unique: bool,
    pub outcome: Outcome,
    pub status: Option<u16>,
    /// Scheduled send time to the full body / last SSE byte.
    pub latency: Option<Duration>,
    pub source: Option<String>,
    pub fail_reason: Option<String>,
    pub model: Option<String>,
    pub backend: Option<String>,
    /// What went wrong (lost, cut), or the first attempt's error (retried).
    pub detail: String,
}

/// What the orchestrator and the load share.
pub struct Control {
    pub phase: AtomicUsize,
    /// Phase 7: drop a share of streams after their first chunk.
    pub abort_streams: AtomicBool,
    pub stop: AtomicBool,
    pub ready: Vec<AtomicBool>,
    rr: AtomicUsize,
    /// Streams whose head has arrived and that have not ended.
    pub open_streams: AtomicU64,
    pub ports: Vec<u16>,
    pub names: Vec<String>,
}

impl Control {
    pub fn new(ports: Vec<u16>, names: Vec<String>) -> Self {
        Self {
            phase: AtomicUsize::new(0),
            abort_streams: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            ready: ports.iter().map(|_| AtomicBool::new(true)).collect(),
            rr: AtomicUsize::new(0),
            open_streams: AtomicU64::new(0),
            ports,
            names,
        }
    }

    /// Round-robin over the ready replicas (over all when none is ready).
    fn pick(&self) -> usize {
        let n = self.ports.len();
        let k = self.rr.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|j| (k + j) % n)
            .find(|&i| self.ready[i].load(Ordering::Relaxed))
            .unwrap_or(k % n)
    }
}

/// The load's size.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub rate: f64,
    /// Per request, from its scheduled time.
    pub timeout: Duration,
    /// Share of streams dropped after the first chunk while `abort_streams` is on.
    pub abort_share: f64,
    /// Bounds: the schedule stops at whichever comes first (or at `Control::stop`).
    pub max_requests: u64,
    pub max_duration: Duration,
}

/// splitmix64: the request's shape is a pure function of its number (reproducible runs).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Prompts asked again and again (decision-cache hits once classified).
const REPEATED: &[&str] = &[
    "What is the derivative of x squared times sine of x?",
    "Solve the equation 3x + 7 = 22 for x.",
    "Who was the first emperor of Rome and how did he come to power?",
    "What caused the fall of the Berlin Wall in 1989?",
    "Is a verbal contract legally binding in most jurisdictions?",
    "What is the difference between a misdemeanor and a felony?",
    "Write a Python function that reverses a linked list.",
    "Explain the difference between a process and a thread.",
    "What is the capital of North Carolina?",
    "How do vaccines train the immune system?",
    "What are the main causes of inflation in an economy?",
    "Give me a simple recipe for pancakes.",
];

/// Unique prompts: a template per topic, made unique by the request number.
fn unique_prompt(seq: u64, h: u64) -> String {
    let (a, b, c) = (seq % 89 + 2, (seq / 7) % 53 + 3, 1200 + seq % 800);
    match (h >> 40) % 8 {
        0 => format!("What is {a} times {b} plus {c}? Show each step of the calculation."),
        1 => {
            format!("Prove that the sum of the first {a} odd numbers is {a} squared (case {seq}).")
        }
        2 => format!("What happened in Europe around the year {c}? Question number {seq}."),
        3 => format!("Which empire ruled Anatolia in the year {c}, and who led it? (ref {seq})"),
        4 => format!(
            "Can a landlord with {a} tenants end lease number {seq} early under contract law?"
        ),
        5 => format!("Is clause {a}.{b} of agreement {seq} enforceable if it was never signed?"),
        6 => format!(
            "Write a Rust function that returns the {a}th Fibonacci number modulo {c} (task {seq})."
        ),
        _ => format!("Why does my SQL query {seq} with {a} joins run slower than one with {b}?"),
    }
}

/// One request's shape.
#[derive(Debug, Clone)]
struct Shape {
    seq: u64,
    phase: usize,
    unique: bool,
    stream: bool,
    long: bool,
    abort: bool,
    body: Bytes,
}

impl Shape {
    /// ~60 % unique prompts, ~40 % from `REPEATED`; ~30 % streams, a third of them long (~1 s
    /// at the simulators' 100 tokens/s); all `model: "auto"`.
    fn of(seq: u64, phase: usize, abort_on: bool, abort_share: f64) -> Self {
        let h = mix(seq);
        let unique = h % 100 < 60;
        let stream = (h >> 8) % 100 < 30;
        let long = stream && (h >> 16).is_multiple_of(3);
        let abort = stream && abort_on && ((h >> 24) % 1000) as f64 / 1000.0 < abort_share;
        let prompt = if unique {
            unique_prompt(seq, h)
        } else {
            REPEATED[((h >> 32) % REPEATED.len() as u64) as usize].to_string()
        };
        let max_tokens = if long { 100 } else { 8 };
        let body = json!({
            "model": "auto",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "stream": stream,
        });
        Self {
            seq,
            phase,
            unique,
            stream,
            long,
            abort,
            body: Bytes::from(body.to_string()),
        }
    }
}

/// Runs the schedule until `ctl.stop` (or the plan's bounds), then waits for every request sent
/// to end (each within its timeout). The records, in send order.
pub async fn run(plan: Plan, ctl: Arc<Control>, events: Arc<Events>) -> Vec<Record> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .pool_max_idle_per_host(128)
        .build()
        .expect("a plain HTTP client builds");
    let poller = tokio::spawn(poll_ready(ctl.clone(), events.clone()));
    let origin = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut records = Vec::new();
    for seq in 0..plan.max_requests {
        let offset = Duration::from_secs_f64(seq as f64 / plan.rate);
        if offset > plan.max_duration {
            events.note(&format!(
                "the load reached its time bound ({:.0} s): no more requests scheduled",
                plan.max_duration.as_secs_f64()
            ));
            break;
        }
        let due = origin + offset;
        tokio::time::sleep_until(due).await;
        if ctl.stop.load(Ordering::Relaxed) {
            break;
        }
        let shape = Shape::of(
            seq,
            ctl.phase.load(Ordering::Relaxed),
            ctl.abort_streams.load(Ordering::Relaxed),
            plan.abort_share,
        );
        tasks.spawn(one(
            client.clone(),
            ctl.clone(),
            shape,
            due,
            offset,
            plan.timeout,
        ));
        while let Some(r) = tasks.try_join_next() {
            records.extend(r.ok());
        }
    }
    while let Some(r) = tasks.join_next().await {
        records.extend(r.ok());
    }
    poller.abort();
    records.sort_by_key(|r: &Record| r.seq);
    records
}

/// Polls every replica's `/readyz` every 100 ms; a change is an event.
async fn poll_ready(ctl: Arc<Control>, events: Arc<Events>) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("a plain HTTP client builds");
    let mut last: Vec<String> = ctl.ports.iter().map(|_| "200".to_string()).collect();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        for (i, &port) in ctl.ports.iter().enumerate() {
            let seen = match client
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
            {
                Ok(r) => r.status().as_u16().to_string(),
                Err(e) if e.is_timeout() => "no answer in 300 ms".into(),
                Err(_) => "refused".into(),
            };
            ctl.ready[i].store(seen == "200", Ordering::Relaxed);
            if seen != last[i] {
                events.note(&format!(
                    "LB: {} /readyz {} -> {}",
                    ctl.names[i], last[i], seen
                ));
                last[i] = seen;
            }
        }
    }
}

/// A streamed answer in progress (counted in `Control::open_streams`).
struct OpenStream(Arc<Control>);

impl OpenStream {
    fn new(ctl: &Arc<Control>) -> Self {
        ctl.open_streams.fetch_add(1, Ordering::Relaxed);
        Self(ctl.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn one(
    client: reqwest::Client,
    ctl: Arc<Control>,
    shape: Shape,
    due: Instant,
    at: Duration,
    timeout: Duration,
) -> Record {
    let first = ctl.pick();
    let mut rec = Record {
        seq: shape.seq,
        phase: shape.phase,
        at,
        replica: first,
        retried: false,
        stream: shape.stream,
        long: shape.long,
        abort: shape.abort,
        unique: shape.unique,
        outcome: Outcome::Lost,
        status: None,
        latency: None,
        source: None,
        fail_reason: None,
        model: None,
        backend: None,
        detail: String::new(),
    };
    let exchange = async {
        let Some(e1) = attempt(&client, &ctl, first, &shape, due, &mut rec).await else {
            return;
        };
        // Nothing came back from `first`: an LB sends it to the other replica, once.
        let other = (first + 1) % ctl.ports.len();
        rec.retried = true;
        rec.replica = other;
        let first_said = format!("{} said {e1}", ctl.names[first]);
        if let Some(e2) = attempt(&client, &ctl, other, &shape, due, &mut rec).await {
            rec.outcome = Outcome::Lost;
            rec.detail = format!(
                "no response from either replica: {first_said}; {} said {e2}",
                ctl.names[other]
            );
        } else if rec.detail.is_empty() {
            rec.detail = format!("retried: {first_said}");
        } else {
            rec.detail = format!("{} (after a retry: {first_said})", rec.detail);
        }
    };
    if tokio::time::timeout_at(due + timeout, exchange)
        .await
        .is_err()
    {
        rec.outcome = Outcome::Lost;
        rec.latency = None;
        rec.detail = format!(
            "client timeout: no complete answer {:.0} s after the scheduled send{}",
            timeout.as_secs_f64(),
            match rec.status {
                Some(s) => format!(" (status {s} received, body incomplete)"),
                None => " (no response head)".into(),
            }
        );
    }
    rec
}

/// The error and its causes on one line (reqwest's own message hides the cause).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// One try on replica `i`. `Some(error)` when it failed before any response byte (the caller
/// may retry elsewhere); otherwise `rec` holds the judged outcome.
async fn attempt(
    client: &reqwest::Client,
    ctl: &Arc<Control>,
    i: usize,
    shape: &Shape,
    due: Instant,
    rec: &mut Record,
) -> Option<String> {
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", ctl.ports[i]);
    let resp = match client
        .post(url)
        .header("content-type", "application/json")
        .body(shape.body.clone())
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return Some(chain(&e)),
    };
    let status = resp.status().as_u16();
    let h = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    rec.status = Some(status);
    rec.source = h("x-vsr-decision-source");
    rec.fail_reason = h("x-vsr-fail-reason");
    rec.model = h("x-vsr-selected-model");
    rec.backend = h("x-sim-backend");
    let is_sse = h("content-type").is_some_and(|v| v.starts_with("text/event-stream"));
    if !(200..300).contains(&status) {
        let body = resp.text().await.unwrap_or_default();
        rec.outcome = Outcome::Lost;
        rec.detail = format!("status {status}: {}", excerpt(&body));
        return None;
    }
    if !is_sse {
        match resp.bytes().await {
            Ok(b) => {
                let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
                rec.latency = Some(due.elapsed());
                if v["choices"].is_array() {
                    rec.outcome = Outcome::Ok;
                } else {
                    rec.outcome = Outcome::Lost;
                    rec.detail = format!(
                        "status {status} without a completion{}: {}",
                        if shape.stream {
                            " (a stream was asked for)"
                        } else {
                            ""
                        },
                        excerpt(&String::from_utf8_lossy(&b))
                    );
                }
            }
            Err(e) => {
                rec.outcome = Outcome::Lost;
                rec.detail = format!("body broke off after the head: {}", chain(&e));
            }
        }
        return None;
    }
    let _open = OpenStream::new(ctl);
    let mut body = Vec::new();
    let mut chunks = resp.bytes_stream();
    loop {
        match chunks.next().await {
            Some(Ok(c)) => {
                body.extend_from_slice(&c);
                if shape.abort && !body.is_empty() {
                    // Dropping the response closes the connection: the client walked away.
                    rec.outcome = Outcome::ClientAborted;
                    return None;
                }
            }
            Some(Err(e)) => {
                rec.outcome = Outcome::Lost;
                rec.detail = format!(
                    "stream broke off after {} bytes (no error event): {}",
                    body.len(),
                    chain(&e)
                );
                return None;
            }
            None => break,
        }
    }
    rec.latency = Some(due.elapsed());
    let text = String::from_utf8_lossy(&body);
    if text.contains("data: [DONE]") {
        rec.outcome = Outcome::Ok;
    } else if let Some(err) = sse_error(&text) {
        rec.outcome = Outcome::CutByBackend;
        rec.detail = format!("SSE error event: {err}");
    } else {
        rec.outcome = Outcome::Lost;
        rec.detail = format!(
            "stream ended without data: [DONE] and without an error event ({} bytes): ...{}",
            body.len(),
            excerpt(&text[text.len().saturating_sub(160)..])
        );
    }
    None
}

/// The first SSE `data:` event that is an OpenAI-format error, as "code: message".
fn sse_error(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v.get("error").is_some())
        .map(|v| {
            let e = &v["error"];
            format!(
                "{}: {}",
                e["code"].as_str().unwrap_or("?"),
                e["message"].as_str().unwrap_or("")
            )
        })
}

fn excerpt(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_of_requests_is_as_documented() {
        let shapes: Vec<Shape> = (0..10_000).map(|s| Shape::of(s, 0, true, 0.5)).collect();
        let share = |f: &dyn Fn(&Shape) -> bool| {
            shapes.iter().filter(|s| f(s)).count() as f64 / shapes.len() as f64
        };
        assert!((share(&|s| s.unique) - 0.6).abs() < 0.03);
        assert!((share(&|s| s.stream) - 0.3).abs() < 0.03);
        assert!((share(&|s| s.long) - 0.1).abs() < 0.02);
        assert!((share(&|s| s.abort) - 0.15).abs() < 0.02);
        let mut prompts: Vec<&Bytes> = shapes
            .iter()
            .filter(|s| s.unique)
            .map(|s| &s.body)
            .collect();
        let n = prompts.len();
        prompts.sort();
        prompts.dedup();
        assert_eq!(prompts.len(), n, "unique prompts are unique");
    }

    #[test]
    fn sse_error_events_are_found() {
        let t = "data: {\"choices\":[]}\n\ndata: {\"error\":{\"message\":\"The backend stream broke off.\",\"code\":\"upstream_error\"}}\n\n";
        assert_eq!(
            sse_error(t).as_deref(),
            Some("upstream_error: The backend stream broke off.")
        );
        assert!(sse_error("data: [DONE]\n\n").is_none());
    }
}
