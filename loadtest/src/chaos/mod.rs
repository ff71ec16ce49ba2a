//! The chaos run: the whole stack as real processes (one classifier-svc, one redis-server, two
//! vllm-sim backends, two router-svc replicas sharing them) under continuous open-loop load,
//! while each phase breaks one thing on purpose and repairs it: the classifier killed and
//! restarted, the classifier slow, Redis killed and restarted, a backend failing, hanging and
//! killed mid-stream, an invalid config, a replica stopped with SIGTERM, clients walking away
//! mid-stream. It exists to show, with numbers, that the router loses no request through any of
//! it and stays quiet in its logs; the run fails (exit 1) when a request was lost or the routers
//! and the classifier logged more than a set number of lines.
//!
//! `stack` starts and breaks the processes, `load` is the generator and load balancer, `report`
//! the tables. The orchestrator below runs the phases on the main thread (blocking process
//! control) while the load runs on a tokio runtime.

pub mod load;
pub mod report;
pub mod stack;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::procs::{count_lines, http_request, metric_sum, tail_lines};
use load::{Control, Outcome, Plan, Record};
use report::Row;
use stack::{Bins, Stack};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Requests per second, on a fixed schedule.
    pub rate: f64,
    /// Length of one phase (phase 4, with three faults, runs 1.5 times as long).
    pub phase_secs: f64,
    /// Per request, from its scheduled send time.
    pub timeout: Duration,
    /// Share of streams the clients drop after the first chunk in phase 7.
    pub abort_share: f64,
    /// The routers' `classifier.timeout_ms` (past it a decision fails open).
    pub classifier_timeout_ms: u64,
    pub bin_dir: Option<PathBuf>,
    /// The Markdown report (none: printed only).
    pub report: Option<PathBuf>,
    /// Most lines the routers and the classifier may write over the whole run.
    pub max_log_lines: u64,
    /// Keep the process logs even when the run passes.
    pub keep_logs: bool,
    /// The command that reproduces this run (for the report).
    pub command: String,
}

/// Timestamped things that happened, printed as they happen and listed in the report.
pub struct Events {
    origin: Instant,
    list: Mutex<Vec<(f64, String)>>,
}

impl Events {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            list: Mutex::new(Vec::new()),
        }
    }

    pub fn note(&self, text: &str) {
        let t = self.origin.elapsed().as_secs_f64();
        println!("[{t:6.2} s] {text}");
        self.list
            .lock()
            .expect("events lock")
            .push((t, text.to_string()));
    }

    fn all(&self) -> Vec<(f64, String)> {
        self.list.lock().expect("events lock").clone()
    }
}

/// The phases, in order.
pub const PHASES: [&str; 8] = [
    "0 baseline",
    "1 classifier SIGKILL + restart",
    "2 classifier slow (+200 ms)",
    "3 redis SIGKILL + restart",
    "4 backend faults (A 503, A hang, B SIGKILL)",
    "5 invalid config on router-1",
    "6 router-2 SIGTERM (drain) + restart",
    "7 clients abort streams",
];

/// Phase 4 holds three faults in a row.
fn phase_len(i: usize, secs: f64) -> Duration {
    Duration::from_secs_f64(if i == 4 { secs * 1.5 } else { secs })
}

/// Sleeps to points of a phase given as fractions of its length.
struct Clock {
    start: Instant,
    len: Duration,
}

impl Clock {
    fn until(&self, frac: f64) {
        let t = self.start + self.len.mul_f64(frac);
        let now = Instant::now();
        if t > now {
            std::thread::sleep(t - now);
        }
    }
}

/// The repository (models/, loadtest/): where this crate was built, else the working directory.
pub fn repo_root() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if built.join("models").is_dir() {
        built
    } else {
        PathBuf::from(".")
    }
}

/// The cargo target directory: $CARGO_TARGET_DIR, else the one this executable runs from
/// (`target/<profile>/chaos`), else `<repo>/target`.
fn target_dir(repo: &Path) -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().ok();
    let profile_dir = exe.as_deref().and_then(Path::parent);
    match profile_dir {
        Some(p)
            if matches!(
                p.file_name().and_then(|n| n.to_str()),
                Some("debug" | "release")
            ) =>
        {
            p.parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| repo.join("target"))
        }
        _ => repo.join("target"),
    }
}

/// What a run found.
pub struct Verdict {
    pub passed: bool,
    pub markdown: String,
    /// Where the process logs are (kept when the run failed or `keep_logs`).
    pub log_dir: Option<PathBuf>,
}

/// Sets up the stack, runs every phase under load, and judges. `Err` when the run could not be
/// done at all (a missing binary or model, a process that would not start); a run that was done
/// and failed is `Ok` with `passed: false`.
pub fn run(opts: &Options) -> Result<Verdict> {
    if !(opts.rate > 0.0 && opts.rate.is_finite()) {
        bail!("--rate must be a positive number of requests per second");
    }
    let repo = repo_root();
    let bins = Bins::locate(opts.bin_dir.as_deref(), &target_dir(&repo))?;
    let encoder = repo.join("models/all-MiniLM-L6-v2");
    if !encoder.join("model.safetensors").is_file() {
        bail!(
            "the encoder is not installed in {}: run models/fetch.sh",
            encoder.display()
        );
    }
    let heads = repo.join("models/heads");
    if !heads.join("domain/head.json").is_file() {
        bail!("no classifier heads in {}", heads.display());
    }
    let dir = tempfile::Builder::new()
        .prefix("semroute-chaos-")
        .tempdir()
        .context("create the run's temp dir")?;
    println!(
        "chaos: classifier-svc {}, router-svc {}, vllm-sim {}; logs in {}",
        bins.classifier.display(),
        bins.router.display(),
        bins.sim.display(),
        dir.path().display()
    );
    let mut stack = Stack::new(dir.path(), bins.clone(), encoder, heads);
    stack.classifier_timeout_ms = opts.classifier_timeout_ms;
    if let Err(e) = stack.start_all() {
        let kept = dir.keep();
        print_tails(&stack);
        return Err(e.context(format!(
            "setting up the stack (logs kept in {})",
            kept.display()
        )));
    }
    for n in &stack.notes {
        println!("note: {n}");
    }
    let result = run_phases(opts, &mut stack);
    let (passed, markdown) = match result {
        Ok(v) => v,
        Err(e) => {
            let kept = dir.keep();
            print_tails(&stack);
            return Err(e.context(format!("logs kept in {}", kept.display())));
        }
    };
    if let Some(path) = &opts.report {
        std::fs::write(path, &markdown)
            .with_context(|| format!("write the report {}", path.display()))?;
    }
    let log_dir = if !passed || opts.keep_logs {
        if !passed {
            print_tails(&stack);
        }
        drop(stack); // stop every process before the directory is kept
        Some(dir.keep())
    } else {
        None
    };
    Ok(Verdict {
        passed,
        markdown,
        log_dir,
    })
}

fn print_tails(stack: &Stack) {
    for (name, path) in stack.logs() {
        println!("---- last lines of {name} ({}):", path.display());
        println!("{}", tail_lines(&path, 20));
    }
}

fn line_counts(stack: &Stack) -> Vec<u64> {
    stack.logs().iter().map(|(_, p)| count_lines(p)).collect()
}

fn diff(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| y.saturating_sub(*x)).collect()
}

/// The phases under load, then the tables. (passed, Markdown).
fn run_phases(opts: &Options, stack: &mut Stack) -> Result<(bool, String)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    let names: Vec<String> = stack.routers.iter().map(|r| r.name.clone()).collect();
    let ports: Vec<u16> = stack.routers.iter().map(|r| r.port).collect();
    let ctl = Arc::new(Control::new(ports, names.clone()));
    let planned: f64 = (0..PHASES.len())
        .map(|i| phase_len(i, opts.phase_secs).as_secs_f64())
        .sum();
    let max_duration = Duration::from_secs_f64(planned * 2.0 + 120.0);
    let plan = Plan {
        rate: opts.rate,
        timeout: opts.timeout,
        abort_share: opts.abort_share,
        max_requests: (opts.rate * max_duration.as_secs_f64()).ceil() as u64,
        max_duration,
    };
    let start_lines = line_counts(stack);
    let events = Arc::new(Events::new());
    events.note(&format!(
        "load starts: {} req/s, {} phases of {:.1} s (planned {planned:.0} s)",
        opts.rate,
        PHASES.len(),
        opts.phase_secs
    ));
    let load = rt.spawn(load::run(plan, ctl.clone(), events.clone()));

    let mut spans: Vec<(String, f64, Vec<u64>)> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut notes: Vec<String> = stack.notes.clone();
    for (i, name) in PHASES.iter().enumerate() {
        let before = line_counts(stack);
        ctl.phase.store(i, Ordering::Relaxed);
        events.note(&format!("phase {name}"));
        let clock = Clock {
            start: Instant::now(),
            len: phase_len(i, opts.phase_secs),
        };
        let r = phase(i, stack, &ctl, &events, &clock, &mut notes);
        let exits = stack.unexpected_exits();
        spans.push((
            name.to_string(),
            clock.start.elapsed().as_secs_f64(),
            diff(&before, &line_counts(stack)),
        ));
        if let Err(e) = r {
            failures.push(format!("phase {name} could not be done: {e:#}"));
            events.note(&format!("phase {name} failed: {e:#}"));
        }
        for x in &exits {
            failures.push(format!("during phase {name}: {x}"));
            events.note(&format!("unexpected exit: {x}"));
        }
        if !failures.is_empty() {
            break;
        }
    }
    ctl.stop.store(true, Ordering::Relaxed);
    let end_of_phases = line_counts(stack);
    events.note("schedule ended; waiting for the requests in flight");
    let records: Vec<Record> = rt.block_on(load).context("the load task panicked")?;
    events.note(&format!("all {} requests ended", records.len()));
    if let Some(n) = backends_idle(stack) {
        notes.push(n);
    }
    let end_lines = line_counts(stack);

    // Tables.
    let rows: Vec<Row> = spans
        .iter()
        .enumerate()
        .map(|(i, (name, secs, _))| Row::of(name, *secs, records.iter().filter(|r| r.phase == i)))
        .collect();
    let total = Row::of("total", spans.iter().map(|s| s.1).sum(), &records);
    let log_names: Vec<String> = stack.logs().into_iter().map(|(n, _)| n).collect();
    let mut log_rows = vec![("start-up".to_string(), start_lines.clone())];
    log_rows.extend(spans.iter().map(|(n, _, l)| (n.clone(), l.clone())));
    log_rows.push(("after the phases".into(), diff(&end_of_phases, &end_lines)));
    log_rows.push(("**total**".into(), end_lines.clone()));
    let quiet_lines: u64 = log_names
        .iter()
        .zip(&end_lines)
        .filter(|(n, _)| n.starts_with("router") || n.as_str() == "classifier")
        .map(|(_, c)| c)
        .sum();
    if total.lost > 0 {
        failures.push(format!("{} of {} requests lost", total.lost, total.sent));
    }
    if quiet_lines > opts.max_log_lines {
        failures.push(format!(
            "the routers and the classifier wrote {quiet_lines} log lines (more than \
             --max-log-lines {})",
            opts.max_log_lines
        ));
    }
    let passed = failures.is_empty();

    let mut md = String::new();
    md.push_str("# Chaos run\n\n");
    md.push_str(&format!(
        "`{}` on {} cores ({}): {} req/s open loop for {:.0} s over two router-svc replicas \
         (the generator is their load balancer: round-robin over the replicas whose /readyz \
         answered 200 at its last poll, every 100 ms; a request that got no response byte is \
         retried once on the other replica). One classifier-svc (MiniLM + models/heads, \
         RAYON_NUM_THREADS=1), one redis-server, two vllm-sim backends (20 ms to the first \
         token, 100 tokens/s); every process on this machine, logging at its default level.\n\n",
        opts.command,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        report::today(),
        opts.rate,
        total.secs,
    ));
    md.push_str(
        "Requests: `model: \"auto\"` chat completions, ~60 % unique prompts (templates on math, \
         history, law and code with numbers: cache misses) and ~40 % from 12 repeated ones \
         (cache hits); ~30 % streamed, a third of those long (100 tokens, ~1 s). A request is \
         **lost** when its final answer is not 2xx, the connection broke after the head, it \
         took over the client timeout, or a stream ended without `data: [DONE]` and without an \
         SSE error event. A stream the router ends with an SSE error event because its backend \
         died is **cut by backend**; streams the client dropped after the first chunk (phase 7) \
         are **client aborted**; neither is lost. Latency: scheduled send time to the last byte \
         of complete 2xx answers. *classified*: decisions by the classifier (classified or \
         coalesced) among those that needed it (also cache_local, cache_redis, fail_open); \
         *from cache*: cache_local + cache_redis among the same; *other decisions*: \
         no_text (nothing the classifier could be asked, e.g. it serves no task yet) and none \
         (no decision header: the request failed before one was made or was dropped by the \
         client). p99 includes the long streams (~1 s of tokens).\n\n",
    );
    md.push_str(&format!(
        "**Result: {}**{}\n\n",
        if passed { "PASS" } else { "FAIL" },
        if passed {
            format!(
                ": nothing lost; the routers and the classifier wrote {quiet_lines} log lines \
                 (limit {}).",
                opts.max_log_lines
            )
        } else {
            format!(
                "\n\n{}",
                failures
                    .iter()
                    .map(|f| format!("- {}", f.replace('\n', "\n  ")))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        }
    ));
    md.push_str("## Requests by phase (by scheduled send time)\n\n");
    md.push_str(&report::outcome_table(&rows, &total));
    md.push_str("\nDecision sources, all phases: ");
    md.push_str(
        &total
            .sources
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    md.push_str(".\n\n## Log lines\n\n");
    md.push_str(&report::log_table(&log_names, &log_rows));
    md.push_str("\n## Events\n\n");
    for (t, e) in events.all() {
        md.push_str(&format!("- {t:.2} s: {e}\n"));
    }
    if !notes.is_empty() {
        md.push_str("\n## Notes\n\n");
        for n in &notes {
            md.push_str(&format!("- {n}\n"));
        }
    }
    md.push_str("\n## Lost requests\n\n");
    md.push_str(&report::lost_table(&records, &names, 40));
    let cut: Vec<&Record> = records
        .iter()
        .filter(|r| r.outcome == Outcome::CutByBackend)
        .collect();
    if !cut.is_empty() {
        md.push_str("\n## Streams cut by a backend\n\n");
        let mut by: std::collections::BTreeMap<String, u64> = Default::default();
        for r in &cut {
            *by.entry(format!(
                "phase {}, {}: {}",
                r.phase,
                r.backend.as_deref().unwrap_or("?"),
                r.detail
            ))
            .or_default() += 1;
        }
        for (k, v) in by {
            md.push_str(&format!("- {v} x {k}\n"));
        }
    }
    Ok((passed, md))
}

/// After the load: every backend back to no running request (aborted streams cancelled
/// upstream). A note when one is not within 3 s.
fn backends_idle(stack: &Stack) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let busy: Vec<String> = stack
            .sims
            .iter()
            .filter_map(|s| {
                let m =
                    http_request(s.port, "GET", "/metrics", None, Duration::from_secs(1)).ok()?;
                let n = metric_sum(&m.body, "vllm:num_requests_running", &[]);
                (n > 0).then(|| format!("{} {n}", s.name))
            })
            .collect();
        if busy.is_empty() {
            return None;
        }
        if Instant::now() >= deadline {
            return Some(format!(
                "3 s after the load the backends still counted running requests ({}): streams \
                 the clients dropped were not all cancelled upstream",
                busy.join(", ")
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn show(pid: Option<u32>) -> String {
    pid.map_or_else(|| "none: not running".into(), |p| p.to_string())
}

/// Phase `i`'s script; load runs all along.
fn phase(
    i: usize,
    stack: &mut Stack,
    ctl: &Control,
    ev: &Events,
    clock: &Clock,
    notes: &mut Vec<String>,
) -> Result<()> {
    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    match i {
        0 => {}
        1 => {
            clock.until(0.15);
            let pid = stack.classifier.kill();
            ev.note(&format!("SIGKILL classifier (pid {})", show(pid)));
            clock.until(0.45);
            let t = stack.start_classifier().context("restart the classifier")?;
            ev.note(&format!(
                "classifier restarted on the same ports: /healthz 200 after {}",
                secs(t)
            ));
        }
        2 => {
            clock.until(0.1);
            if stack.classifier_delay(200)? {
                ev.note("classifier POST /chaos {\"inference_delay_ms\": 200}");
                clock.until(0.85);
                stack.classifier_delay(0)?;
                ev.note("classifier POST /chaos {\"inference_delay_ms\": 0}");
            } else {
                let n = "the classifier has no POST /chaos (404, or started without \
                         --chaos-control): phase 2 ran without the slowdown";
                ev.note(&format!("warning: {n}"));
                notes.push(n.into());
            }
        }
        3 => {
            clock.until(0.15);
            let pid = stack.kill_redis();
            ev.note(&format!("SIGKILL redis (pid {})", show(pid)));
            clock.until(0.5);
            stack.start_redis().context("restart redis")?;
            ev.note("redis restarted on the same port (empty: no persistence)");
            clock.until(0.95);
            for r in &stack.routers {
                let m = http_request(r.port, "GET", "/metrics", None, Duration::from_secs(1))
                    .map(|m| metric_sum(&m.body, "router_redis_connected", &[]));
                if let Ok(0) = m {
                    let n = format!(
                        "{} was not reconnected to redis {:.1} s after its restart",
                        r.name,
                        clock.len.as_secs_f64() * 0.45
                    );
                    ev.note(&format!("warning: {n}"));
                    notes.push(n);
                }
            }
        }
        4 => {
            clock.until(0.05);
            stack.sim_mode(0, "fail")?;
            ev.note("sim-a: mode fail (503 to everything, /health 503)");
            clock.until(0.25);
            stack.sim_mode(0, "hang")?;
            ev.note("sim-a: mode hang (accepts, never answers; /health hangs)");
            clock.until(0.42);
            stack.sim_mode(0, "ok")?;
            ev.note("sim-a: mode ok");
            clock.until(0.62);
            let open = ctl.open_streams.load(Ordering::Relaxed);
            let pid = stack.sims[1].kill();
            ev.note(&format!(
                "SIGKILL sim-b (pid {}) with {open} streams open through the routers",
                show(pid)
            ));
            clock.until(0.85);
            stack.start_sim(1).context("restart sim-b")?;
            ev.note("sim-b restarted on the same port");
        }
        5 => {
            let metric = |stack: &Stack| {
                http_request(
                    stack.routers[0].port,
                    "GET",
                    "/metrics",
                    None,
                    Duration::from_secs(1),
                )
                .map(|m| {
                    metric_sum(
                        &m.body,
                        "router_config_reloads_total",
                        &["result=\"rejected\""],
                    )
                })
                .unwrap_or(0)
            };
            let rejected0 = metric(stack);
            clock.until(0.15);
            stack.write_config(0, false)?;
            ev.note("router-1: config file now says `models: 5` (invalid)");
            clock.until(0.6);
            let rejected = metric(stack).saturating_sub(rejected0);
            ev.note(&format!(
                "router-1: router_config_reloads_total{{result=\"rejected\"}} +{rejected}"
            ));
            if rejected == 0 {
                let n = "router-1 did not count the invalid config as rejected (metric \
                         router_config_reloads_total{result=\"rejected\"} unchanged)";
                ev.note(&format!("warning: {n}"));
                notes.push(n.into());
            }
            stack.write_config(0, true)?;
            ev.note("router-1: valid config written back");
        }
        6 => {
            clock.until(0.1);
            let t0 = Instant::now();
            stack.sigterm_router(1)?;
            ev.note("SIGTERM router-2");
            let status = stack.wait_router_exit(1, Duration::from_secs(20))?;
            ev.note(&format!(
                "router-2 exited after {} ({status})",
                secs(t0.elapsed())
            ));
            if !status.contains("exit status: 0") {
                notes.push(format!("router-2 exited with {status} after SIGTERM"));
            }
            let t = stack.start_router(1).context("restart router-2")?;
            ev.note(&format!(
                "router-2 restarted on the same port: /readyz 200 after {}",
                secs(t)
            ));
        }
        7 => {
            ctl.abort_streams.store(true, Ordering::Relaxed);
            ev.note("clients drop a share of streams after the first chunk");
            clock.until(1.0);
            ctl.abort_streams.store(false, Ordering::Relaxed);
        }
        _ => unreachable!("eight phases"),
    }
    clock.until(1.0);
    Ok(())
}
