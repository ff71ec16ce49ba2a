//! An open-loop HTTP load generator, lighter than k6, for rates where k6 itself would saturate
//! the machine. Requests follow a fixed schedule (request `i` is due at `start + i / rate`),
//! set by a dedicated OS thread, and each latency is counted from the request's *scheduled* time,
//! so a slow server cannot slow the generator down and hide its own queueing (no coordinated
//! omission). A fixed pool of keep-alive HTTP/1.1 connections takes due requests from one queue,
//! as wrk2 does; when every connection is busy the queue grows and so does the measured latency.
//!
//! Three ways to load:
//! - open loop (`rate`): a fixed arrival rate;
//! - closed loop (`concurrency`): that many requests always in flight, back to back;
//! - streams (`streams`): that many streaming requests held open at once, with the RSS of a
//!   watched process sampled while they are (the router's memory per open stream).

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{header, Request};
use hyper_util::rt::TokioIo;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use serde::Serialize;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};

/// What to send and how.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// `host:port` for the Host header.
    pub authority: String,
    /// Path and query.
    pub path: String,
    /// Request body; every `{seq}` becomes the request's sequence number (unique prompts), every
    /// `{prompt}` the next of `prompts` in turn (request `seq` takes `prompts[seq % len]`).
    pub body: String,
    /// Texts for `{prompt}`, already escaped for a JSON string (`escape_json`).
    pub prompts: Vec<String>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Per-request limit, from its scheduled time.
    pub timeout: Duration,
}

/// How much load.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// Requests per second on a fixed schedule, over `connections` keep-alive connections.
    Open { rate: f64, connections: usize },
    /// This many requests always in flight.
    Closed { concurrency: usize },
    /// This many streams open at once, held for the run.
    Streams {
        count: usize,
        watch_pid: Option<u32>,
    },
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub target: Target,
    pub load: Load,
    /// Measured part of the run.
    pub duration: Duration,
    /// Sent on the same schedule before the measured part, not recorded.
    pub warmup: Duration,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// What a run measured. Latencies count from the scheduled send time (open loop) or the send
/// (closed loop, streams); `service` always from the send.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub url: String,
    pub target_rate: Option<f64>,
    pub connections: usize,
    pub duration_s: f64,
    /// Requests due in the measured part.
    pub scheduled: u64,
    /// Completed (any status) in the measured part.
    pub completed: u64,
    pub ok: u64,
    /// Non-2xx responses.
    pub http_errors: u64,
    /// Connection failures, broken responses.
    pub io_errors: u64,
    pub timeouts: u64,
    /// Due but never sent before the run ended (the generator or the server fell behind).
    pub unsent: u64,
    /// Successful responses per second, from the start of the measured part until the last
    /// measured response (past the schedule's end when the server fell behind).
    pub achieved_rps: f64,
    /// Responses with `x-vsr-cache-hit: true` (router decision-cache hits).
    pub cache_hits: u64,
    pub latency_ms: Percentiles,
    pub service_ms: Percentiles,
    /// Time to the first body chunk from the send (a streamed answer's first token), ok
    /// responses.
    pub first_chunk_ms: Option<Percentiles>,
    /// Streams: the most that were open (first chunk received, not yet ended) at once.
    pub max_open_streams: Option<usize>,
    /// Streams: RSS of the watched process when `max_open_streams` was first reached, and its peak.
    pub watched_rss_kib_at_max_open: Option<u64>,
    pub watched_rss_kib_peak: Option<u64>,
}

impl Report {
    /// Failed share of what was due.
    pub fn error_rate(&self) -> f64 {
        let failed = self.http_errors + self.io_errors + self.timeouts + self.unsent;
        let total = self.ok + failed;
        if total == 0 {
            0.0
        } else {
            failed as f64 / total as f64
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("invalid URL {0:?}: expected http://host:port/path")]
    Url(String),
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, std::io::Error),
    #[error("invalid load: {0}")]
    Load(String),
    #[error("cannot set up the schedule's timer (timerfd): {0}")]
    Timer(std::io::Error),
    #[error("cannot reach {addr}: {source}")]
    Unreachable {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A text as the inside of a JSON string (quotes, backslashes and control characters escaped),
/// for `{prompt}`.
pub fn escape_json(text: &str) -> String {
    let quoted = serde_json::to_string(text).expect("a string serializes");
    quoted[1..quoted.len() - 1].to_string()
}

impl Target {
    /// Parses `http://host:port/path` (plain HTTP only: the generator measures servers on this
    /// machine).
    pub async fn parse(url: &str, body: String, timeout: Duration) -> Result<Self, LoadgenError> {
        let uri: hyper::Uri = url.parse().map_err(|_| LoadgenError::Url(url.into()))?;
        if uri.scheme_str() != Some("http") {
            return Err(LoadgenError::Url(url.into()));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| LoadgenError::Url(url.into()))?
            .to_string();
        let host_port = if uri.port().is_some() {
            authority.clone()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(host_port.as_str())
            .await
            .map_err(|e| LoadgenError::Resolve(host_port.clone(), e))?
            .next()
            .ok_or_else(|| {
                LoadgenError::Resolve(host_port.clone(), std::io::Error::other("no address"))
            })?;
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        Ok(Self {
            addr,
            authority,
            path,
            body,
            prompts: Vec::new(),
            headers: Vec::new(),
            timeout,
        })
    }

    fn request(&self, seq: u64) -> Request<Full<Bytes>> {
        let mut body = self.body.clone();
        if body.contains("{prompt}") && !self.prompts.is_empty() {
            body = body.replace(
                "{prompt}",
                &self.prompts[(seq % self.prompts.len() as u64) as usize],
            );
        }
        if body.contains("{seq}") {
            body = body.replace("{seq}", &seq.to_string());
        }
        let body = Bytes::from(body);
        let method = if self.body.is_empty() { "GET" } else { "POST" };
        let mut b = Request::builder()
            .method(method)
            .uri(&self.path)
            .header(header::HOST, &self.authority)
            .header(header::CONTENT_TYPE, "application/json");
        for (k, v) in &self.headers {
            b = b.header(k, v);
        }
        b.body(Full::new(body))
            .expect("request parts were validated")
    }
}

async fn connect(addr: SocketAddr) -> std::io::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One request's outcome.
enum Outcome {
    Done {
        ok: bool,
        cache_hit: bool,
        first_chunk: Duration,
    },
    Io,
    Timeout,
}

/// Sends one request on `conn` (reconnecting first if it is gone) and reads the whole body.
async fn exchange(
    conn: &mut Option<SendRequest<Full<Bytes>>>,
    target: &Target,
    seq: u64,
    deadline: tokio::time::Instant,
) -> (Outcome, Instant) {
    let attempt = async {
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            *conn = Some(connect(target.addr).await.map_err(|_| ())?);
        }
        let sender = conn.as_mut().expect("connected above");
        sender.ready().await.map_err(|_| ())?;
        let sent = Instant::now();
        let resp = sender
            .send_request(target.request(seq))
            .await
            .map_err(|_| ())?;
        let ok = resp.status().is_success();
        let cache_hit = resp
            .headers()
            .get("x-vsr-cache-hit")
            .is_some_and(|v| v == "true");
        let mut body = resp.into_body();
        let mut first_chunk = None;
        while let Some(frame) = body.frame().await {
            frame.map_err(|_| ())?;
            first_chunk.get_or_insert_with(|| sent.elapsed());
        }
        Ok::<_, ()>((
            ok,
            cache_hit,
            first_chunk.unwrap_or_else(|| sent.elapsed()),
            sent,
        ))
    };
    let start = Instant::now();
    match tokio::time::timeout_at(deadline, attempt).await {
        Ok(Ok((ok, cache_hit, first_chunk, sent))) => (
            Outcome::Done {
                ok,
                cache_hit,
                first_chunk,
            },
            sent,
        ),
        Ok(Err(())) => {
            *conn = None;
            (Outcome::Io, start)
        }
        Err(_) => {
            *conn = None;
            (Outcome::Timeout, start)
        }
    }
}

/// What one worker counted.
struct Tally {
    latency: Histogram<u64>,
    service: Histogram<u64>,
    first_chunk: Histogram<u64>,
    completed: u64,
    ok: u64,
    http_errors: u64,
    io_errors: u64,
    timeouts: u64,
    cache_hits: u64,
    /// When the last measured request ended.
    last_done: Option<Instant>,
}

impl Tally {
    fn new() -> Self {
        // 1 µs .. 10 min, 3 significant digits.
        let h = || Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
        Self {
            latency: h(),
            service: h(),
            first_chunk: h(),
            completed: 0,
            ok: 0,
            http_errors: 0,
            io_errors: 0,
            timeouts: 0,
            cache_hits: 0,
            last_done: None,
        }
    }

    fn record(&mut self, outcome: Outcome, from: Instant, sent: Instant) {
        let now = Instant::now();
        self.last_done = Some(self.last_done.map_or(now, |t| t.max(now)));
        let us = |d: Duration| (d.as_micros() as u64).max(1);
        match outcome {
            Outcome::Done {
                ok,
                cache_hit,
                first_chunk,
            } => {
                self.completed += 1;
                if ok {
                    self.ok += 1;
                    self.latency.saturating_record(us(now - from));
                    self.service.saturating_record(us(now - sent));
                    self.first_chunk.saturating_record(us(first_chunk));
                } else {
                    self.http_errors += 1;
                }
                self.cache_hits += u64::from(cache_hit);
            }
            Outcome::Io => self.io_errors += 1,
            Outcome::Timeout => self.timeouts += 1,
        }
    }

    fn merge(&mut self, o: Tally) {
        self.latency.add(&o.latency).expect("same bounds");
        self.service.add(&o.service).expect("same bounds");
        self.first_chunk.add(&o.first_chunk).expect("same bounds");
        self.completed += o.completed;
        self.ok += o.ok;
        self.http_errors += o.http_errors;
        self.io_errors += o.io_errors;
        self.timeouts += o.timeouts;
        self.cache_hits += o.cache_hits;
        self.last_done = match (self.last_done, o.last_done) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

/// A one-shot timer with microsecond precision (Linux timerfd) that the runtime's epoll waits on.
struct PreciseTimer(AsyncFd<Fd>);

/// The timerfd as tokio's reactor wants it (a raw fd).
struct Fd(TimerFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl PreciseTimer {
    fn new() -> std::io::Result<Self> {
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // SAFETY: `Fd` owns the timerfd, which stays open and is the same descriptor for as long
        // as the AsyncFd holds it (it is dropped with it).
        let registered = unsafe { AsyncFd::register_with_interest(Fd(fd), Interest::READABLE) };
        Ok(Self(registered?))
    }

    async fn wait_until(&self, at: Instant) -> std::io::Result<()> {
        let left = at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        let left = nix::sys::time::TimeSpec::from_duration(left);
        self.0
            .get_ref()
            .0
            .set(Expiration::OneShot(left), TimerSetTimeFlags::empty())?;
        loop {
            let mut ready = self.0.readable().await?;
            match ready.get_inner().0.wait() {
                Ok(()) => return Ok(()),
                Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Every worker's counts together.
async fn merged(workers: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut tally = Tally::new();
    for w in workers {
        if let Ok(t) = w.await {
            tally.merge(t);
        }
    }
    tally
}

/// A due request: its sequence number, its scheduled time, whether it is measured.
struct Due {
    seq: u64,
    at: Instant,
    measured: bool,
}

/// Runs the plan and reports. Fails only when the target cannot be reached at all.
pub async fn run(plan: Plan) -> Result<Report, LoadgenError> {
    // Fail early and clearly when nothing listens.
    connect(plan.target.addr)
        .await
        .map_err(|source| LoadgenError::Unreachable {
            addr: plan.target.addr,
            source,
        })?;
    let url = format!("http://{}{}", plan.target.authority, plan.target.path);
    match plan.load {
        Load::Open { rate, connections } => {
            if !(rate > 0.0 && rate.is_finite()) || connections == 0 {
                return Err(LoadgenError::Load(
                    "rate and connections must be positive".into(),
                ));
            }
            open_loop(plan, rate, connections, url).await
        }
        Load::Closed { concurrency } => {
            if concurrency == 0 {
                return Err(LoadgenError::Load("concurrency must be positive".into()));
            }
            Ok(closed_loop(plan, concurrency, url).await)
        }
        Load::Streams { count, watch_pid } => {
            if count == 0 {
                return Err(LoadgenError::Load("streams must be positive".into()));
            }
            Ok(streams(plan, count, watch_pid, url).await)
        }
    }
}

async fn open_loop(
    plan: Plan,
    rate: f64,
    connections: usize,
    url: String,
) -> Result<Report, LoadgenError> {
    let (tx, rx) = mpsc::unbounded_channel::<Due>();
    let rx = Arc::new(Mutex::new(rx));
    let target = Arc::new(plan.target.clone());
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.duration;
    // Past `end` + timeout nothing more is waited for.
    let hard_stop = tokio::time::Instant::from_std(end + plan.target.timeout);

    // The schedule, as a task on the same runtime, woken by a timerfd: a runtime timer's
    // millisecond granularity would bunch requests and add up to a millisecond to every
    // latency, and a thread of its own would cost a cross-thread wake-up per request.
    let interval = Duration::from_secs_f64(1.0 / rate);
    let timer = PreciseTimer::new().map_err(LoadgenError::Timer)?;
    let scheduler = tokio::spawn(async move {
        let mut seq = 0u64;
        let mut scheduled = 0u64;
        loop {
            let at = start + interval.mul_f64(seq as f64);
            if at >= end {
                break;
            }
            if at > Instant::now() && timer.wait_until(at).await.is_err() {
                break;
            }
            let measured = at >= measure_from;
            scheduled += u64::from(measured);
            if tx.send(Due { seq, at, measured }).is_err() {
                break;
            }
            seq += 1;
        }
        scheduled
    });

    let mut workers = Vec::with_capacity(connections);
    for _ in 0..connections {
        let rx = rx.clone();
        let target = target.clone();
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            let mut conn = None;
            loop {
                let due = {
                    let mut rx = rx.lock().await;
                    match tokio::time::timeout_at(hard_stop, rx.recv()).await {
                        Ok(Some(d)) => d,
                        _ => break,
                    }
                };
                let deadline =
                    tokio::time::Instant::from_std(due.at + target.timeout).min(hard_stop);
                let (outcome, sent) = exchange(&mut conn, &target, due.seq, deadline).await;
                if due.measured {
                    tally.record(outcome, due.at, sent);
                }
            }
            tally
        }));
    }
    let scheduled = scheduler.await.unwrap_or(0);
    let tally = merged(workers).await;
    let done = tally.ok + tally.http_errors + tally.io_errors + tally.timeouts;
    let mut report = report(
        "open",
        url,
        connections,
        measure_from,
        plan.duration,
        &tally,
    );
    report.target_rate = Some(rate);
    report.scheduled = scheduled;
    report.unsent = scheduled.saturating_sub(done);
    Ok(report)
}

async fn closed_loop(plan: Plan, concurrency: usize, url: String) -> Report {
    let target = Arc::new(plan.target.clone());
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.duration;
    let seq = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let target = target.clone();
        let seq = seq.clone();
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            let mut conn = None;
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let deadline = tokio::time::Instant::from_std(now + target.timeout);
                let (outcome, sent) = exchange(&mut conn, &target, n, deadline).await;
                if now >= measure_from {
                    tally.record(outcome, sent, sent);
                }
            }
            tally
        }));
    }
    let tally = merged(workers).await;
    let mut report = report(
        "closed",
        url,
        concurrency,
        measure_from,
        plan.duration,
        &tally,
    );
    report.scheduled = tally.completed + tally.io_errors + tally.timeouts;
    report
}

/// RSS of a process in KiB, from /proc (Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn streams(plan: Plan, count: usize, watch_pid: Option<u32>, url: String) -> Report {
    let target = Arc::new(plan.target.clone());
    let open = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let end = tokio::time::Instant::from_std(start + plan.duration);

    // Watch how many are open and the watched process's memory.
    let watcher = {
        let open = open.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut max_open, mut rss_at_max, mut peak) = (0usize, None, None::<u64>);
            while !stop.load(Ordering::Relaxed) {
                let now_open = open.load(Ordering::Relaxed);
                let rss = watch_pid.and_then(rss_kib);
                if let Some(r) = rss {
                    peak = Some(peak.map_or(r, |p| p.max(r)));
                }
                if now_open > max_open {
                    max_open = now_open;
                    rss_at_max = rss;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (max_open, rss_at_max, peak)
        })
    };

    let mut tasks = Vec::with_capacity(count);
    for seq in 0..count as u64 {
        let target = target.clone();
        let open = open.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            let attempt = async {
                let mut sender = connect(target.addr).await.map_err(|_| false)?;
                sender.ready().await.map_err(|_| false)?;
                let sent = Instant::now();
                let resp = sender
                    .send_request(target.request(seq))
                    .await
                    .map_err(|_| false)?;
                if !resp.status().is_success() {
                    return Err(true);
                }
                let mut body = resp.into_body();
                let mut first = None;
                let mut counted = false;
                while let Some(frame) = body.frame().await {
                    frame.map_err(|_| false)?;
                    if first.is_none() {
                        first = Some(sent.elapsed());
                        open.fetch_add(1, Ordering::Relaxed);
                        counted = true;
                    }
                }
                if counted {
                    open.fetch_sub(1, Ordering::Relaxed);
                }
                Ok((sent, first.unwrap_or_else(|| sent.elapsed())))
            };
            let t0 = Instant::now();
            match tokio::time::timeout_at(end, attempt).await {
                Ok(Ok((sent, first_chunk))) => tally.record(
                    Outcome::Done {
                        ok: true,
                        cache_hit: false,
                        first_chunk,
                    },
                    sent,
                    sent,
                ),
                Ok(Err(true)) => tally.record(
                    Outcome::Done {
                        ok: false,
                        cache_hit: false,
                        first_chunk: Duration::ZERO,
                    },
                    t0,
                    t0,
                ),
                Ok(Err(false)) => tally.record(Outcome::Io, t0, t0),
                // Still streaming when the hold ended: it stayed open the whole run.
                Err(_) => tally.record(Outcome::Timeout, t0, t0),
            }
            tally
        }));
    }
    let tally = merged(tasks).await;
    stop.store(true, Ordering::Relaxed);
    let (max_open, rss_at_max, peak) = watcher.await.unwrap_or((0, None, None));
    let mut report = report("streams", url, count, start, plan.duration, &tally);
    report.scheduled = count as u64;
    report.max_open_streams = Some(max_open);
    report.watched_rss_kib_at_max_open = rss_at_max;
    report.watched_rss_kib_peak = peak;
    report
}

fn report(
    mode: &'static str,
    url: String,
    connections: usize,
    measure_from: Instant,
    duration: Duration,
    t: &Tally,
) -> Report {
    let span = t
        .last_done
        .map_or(duration, |last| {
            last.saturating_duration_since(measure_from)
        })
        .max(duration);
    Report {
        mode,
        url,
        connections,
        duration_s: duration.as_secs_f64(),
        completed: t.completed,
        ok: t.ok,
        http_errors: t.http_errors,
        io_errors: t.io_errors,
        timeouts: t.timeouts,
        achieved_rps: t.ok as f64 / span.as_secs_f64(),
        cache_hits: t.cache_hits,
        latency_ms: Percentiles::of(&t.latency),
        service_ms: Percentiles::of(&t.service),
        first_chunk_ms: (!t.first_chunk.is_empty()).then(|| Percentiles::of(&t.first_chunk)),
        ..Report::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{prompt}` takes the prompts in turn, escaped for JSON; `{seq}` still numbers requests.
    #[tokio::test]
    async fn bodies_take_the_prompts_in_turn_escaped() {
        let mut t = Target::parse(
            "http://127.0.0.1:9/v1/route",
            r#"{"p":"{prompt} #{seq}"}"#.into(),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        t.prompts = ["say \"hi\"\n", "two"].map(escape_json).to_vec();
        let t = &t;
        let body = |seq: u64| async move {
            let b = t
                .request(seq)
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes();
            serde_json::from_slice::<serde_json::Value>(&b).unwrap()["p"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(body(0).await, "say \"hi\"\n #0");
        assert_eq!(body(3).await, "two #3");
    }
}
