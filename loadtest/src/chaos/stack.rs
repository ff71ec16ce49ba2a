//! The chaos run's processes, all real and on free loopback ports: one classifier-svc, one
//! redis-server, two vllm-sim backends and two router-svc replicas that share them. Each process
//! logs to its own file in the run's directory (a restarted process appends to the same file, so
//! the lines a phase adds can be counted); this module starts, kills, restarts and reconfigures
//! them, and says plainly what went wrong when one will not come up.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};

use crate::procs::{
    free_port, http_request, http_status, poll_until, tail_lines, Proc, ProcError, Redis,
};

/// The workspace binaries the run starts.
#[derive(Debug, Clone)]
pub struct Bins {
    pub classifier: PathBuf,
    pub router: PathBuf,
    pub sim: PathBuf,
}

impl Bins {
    const NAMES: [&'static str; 3] = ["classifier-svc", "router-svc", "vllm-sim"];

    /// From `bin_dir` when given; else all three from `<target>/release` when it has them and
    /// its newest is newer than `<target>/debug`'s newest (one profile, never a mix), else from
    /// `<target>/debug`.
    pub fn locate(bin_dir: Option<&Path>, target: &Path) -> Result<Self> {
        let dir = match bin_dir {
            Some(d) => d.to_path_buf(),
            None => {
                let newest = |dir: &Path| -> Option<SystemTime> {
                    Self::NAMES
                        .iter()
                        .map(|n| {
                            std::fs::metadata(dir.join(n))
                                .and_then(|m| m.modified())
                                .ok()
                        })
                        .collect::<Option<Vec<_>>>()?
                        .into_iter()
                        .max()
                };
                let (rel, dbg) = (target.join("release"), target.join("debug"));
                match (newest(&rel), newest(&dbg)) {
                    (Some(r), Some(d)) if r >= d => rel,
                    (Some(_), None) => rel,
                    _ => dbg,
                }
            }
        };
        let pick = |name: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            if !p.is_file() {
                bail!(
                    "{} is not built: run `cargo build --workspace --bins` (or with --release), \
                     or pass --bin-dir",
                    p.display()
                );
            }
            Ok(p)
        };
        Ok(Self {
            classifier: pick(Self::NAMES[0])?,
            router: pick(Self::NAMES[1])?,
            sim: pick(Self::NAMES[2])?,
        })
    }
}

/// A process the run may stop and start again on the same port(s).
pub struct Slot {
    pub name: String,
    pub port: u16,
    pub log: PathBuf,
    pub proc: Option<Proc>,
    /// False while the run has it stopped on purpose.
    pub expected_up: bool,
}

impl Slot {
    fn new(name: &str, port: u16, dir: &Path) -> Self {
        Self {
            name: name.into(),
            port,
            log: dir.join(format!("{name}.log")),
            proc: None,
            expected_up: false,
        }
    }

    /// SIGKILL (the process gets no chance to clean up).
    pub fn kill(&mut self) -> Option<u32> {
        self.expected_up = false;
        let pid = self.proc.as_ref().and_then(Proc::pid);
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        pid
    }

    fn died(&mut self) -> Option<String> {
        let p = self.proc.as_mut()?;
        let status = p.exit_status()?;
        Some(format!(
            "{} exited ({status}); last log lines:\n{}",
            self.name,
            tail_lines(&self.log, 15)
        ))
    }
}

/// The stack: ports, files and processes.
pub struct Stack {
    pub dir: PathBuf,
    pub bins: Bins,
    pub encoder: PathBuf,
    pub heads: PathBuf,
    pub classifier: Slot,
    /// The classifier's HTTP port (`classifier.port` is its gRPC port).
    pub classifier_http: u16,
    /// Whether the classifier accepted `--chaos-control` (it exposes `POST /chaos` then).
    pub chaos_control: bool,
    pub redis: Slot,
    redis_proc: Option<Redis>,
    pub sims: Vec<Slot>,
    pub routers: Vec<Slot>,
    /// `server.drain_ms` is written into the configs (dropped when the router refuses it).
    pub drain_ms: Option<u64>,
    /// Things worth knowing about the stack (missing features, fallbacks taken).
    pub notes: Vec<String>,
    /// The routers' `classifier.timeout_ms`.
    pub classifier_timeout_ms: u64,
}

impl Stack {
    pub fn new(dir: &Path, bins: Bins, encoder: PathBuf, heads: PathBuf) -> Self {
        let routers = (1..=2)
            .map(|i| Slot::new(&format!("router-{i}"), free_port(), dir))
            .collect();
        Self {
            dir: dir.to_path_buf(),
            bins,
            encoder,
            heads,
            classifier: Slot::new("classifier", free_port(), dir),
            classifier_http: free_port(),
            chaos_control: true,
            redis: Slot::new("redis", free_port(), dir),
            redis_proc: None,
            sims: ["sim-a", "sim-b"]
                .iter()
                .map(|n| Slot::new(n, free_port(), dir))
                .collect(),
            routers,
            drain_ms: Some(1000),
            notes: Vec::new(),
            classifier_timeout_ms: 50,
        }
    }

    /// Every process started and ready: redis, classifier, both sims, both routers (config
    /// checked first), and each router answering with a classified decision.
    pub fn start_all(&mut self) -> Result<()> {
        self.start_redis()?;
        self.start_classifier()?;
        for i in 0..self.sims.len() {
            self.start_sim(i)?;
        }
        self.check_router_config()?;
        for i in 0..self.routers.len() {
            self.write_config(i, true)?;
            self.start_router(i)?;
        }
        for i in 0..self.routers.len() {
            self.warm_up(i)?;
        }
        Ok(())
    }

    /// Every log file, in table order.
    pub fn logs(&self) -> Vec<(String, PathBuf)> {
        let mut v = vec![
            (self.classifier.name.clone(), self.classifier.log.clone()),
            (self.redis.name.clone(), self.redis.log.clone()),
        ];
        v.extend(self.sims.iter().map(|s| (s.name.clone(), s.log.clone())));
        v.extend(self.routers.iter().map(|s| (s.name.clone(), s.log.clone())));
        v
    }

    /// Processes that should run and do not, each with its exit status and last log lines.
    pub fn unexpected_exits(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        if self.redis.expected_up {
            if let Some(r) = self.redis_proc.as_mut() {
                if let Some(s) = r.proc.exit_status() {
                    out.push(format!(
                        "redis exited ({s}); last log lines:\n{}",
                        tail_lines(&self.redis.log, 15)
                    ));
                }
            }
        }
        let slots = std::iter::once(&mut self.classifier)
            .chain(self.sims.iter_mut())
            .chain(self.routers.iter_mut());
        for s in slots {
            if s.expected_up {
                out.extend(s.died());
            }
        }
        out
    }

    pub fn start_redis(&mut self) -> Result<()> {
        let r = Redis::launch(&self.dir, self.redis.port, &self.redis.log)
            .context("start redis-server (is it installed and on PATH?)")?;
        self.redis_proc = Some(r);
        self.redis.expected_up = true;
        Ok(())
    }

    pub fn kill_redis(&mut self) -> Option<u32> {
        self.redis.expected_up = false;
        let r = self.redis_proc.take()?;
        let pid = r.proc.pid();
        drop(r); // SIGKILL
        pid
    }

    fn classifier_cmd(&self, chaos_control: bool) -> Command {
        let mut cmd = Command::new(&self.bins.classifier);
        cmd.arg("serve")
            .arg("--encoder")
            .arg(&self.encoder)
            .arg("--heads")
            .arg(&self.heads)
            .args([
                "--grpc-addr",
                &format!("127.0.0.1:{}", self.classifier.port),
            ])
            .args([
                "--http-addr",
                &format!("127.0.0.1:{}", self.classifier_http),
            ])
            .env("RAYON_NUM_THREADS", "1")
            .env_remove("RUST_LOG");
        if chaos_control {
            cmd.arg("--chaos-control");
        }
        cmd
    }

    /// Starts the classifier (on its fixed ports) and waits for `/healthz` 200. A classifier that
    /// does not know `--chaos-control` yet is started without it (phase 2 is then skipped).
    pub fn start_classifier(&mut self) -> Result<Duration> {
        let t0 = std::time::Instant::now();
        loop {
            let mut cmd = self.classifier_cmd(self.chaos_control);
            self.classifier.proc = Some(Proc::start("classifier", &mut cmd, &self.classifier.log)?);
            self.classifier.expected_up = true;
            let http = self.classifier_http;
            let log = self.classifier.log.clone();
            let slot = &mut self.classifier;
            let r = poll_until("classifier /healthz 200", Duration::from_secs(90), || {
                if let Some(why) = slot.died() {
                    return Err(ProcError(why));
                }
                Ok(http_status(http, "/healthz") == Some(200))
            });
            match r {
                Ok(()) => return Ok(t0.elapsed()),
                Err(e)
                    if self.chaos_control
                        && e.0.contains("--chaos-control")
                        && tail_lines(&log, 30).contains("unexpected argument") =>
                {
                    self.chaos_control = false;
                    self.classifier.proc = None;
                    self.notes.push(
                        "classifier-svc does not accept --chaos-control (not built with it yet): \
                         started without it; phase 2 (slow classifier) is skipped"
                            .into(),
                    );
                }
                Err(e) => {
                    return Err(anyhow!(e)).with_context(|| {
                        format!(
                            "start classifier-svc ({}) on gRPC :{} / HTTP :{}",
                            self.bins.classifier.display(),
                            self.classifier.port,
                            self.classifier_http
                        )
                    })
                }
            }
        }
    }

    /// Sets the classifier's artificial inference delay (`POST /chaos`); Ok(false) when the
    /// endpoint is not there (an older classifier-svc).
    pub fn classifier_delay(&self, ms: u64) -> Result<bool> {
        if !self.chaos_control {
            return Ok(false);
        }
        let body = format!("{{\"inference_delay_ms\": {ms}}}");
        let r = http_request(
            self.classifier_http,
            "POST",
            "/chaos",
            Some(&body),
            Duration::from_secs(3),
        )?;
        match r.status {
            200..=299 => Ok(true),
            404 | 405 => Ok(false),
            s => bail!("classifier POST /chaos {body} answered {s}: {}", r.body),
        }
    }

    pub fn start_sim(&mut self, i: usize) -> Result<()> {
        let s = &mut self.sims[i];
        let mut cmd = Command::new(&self.bins.sim);
        cmd.args(["--addr", &format!("127.0.0.1:{}", s.port)])
            .args(["--name", &s.name])
            .args(["--ttft-ms", "20", "--tokens-per-sec", "100"])
            .args(["--default-max-tokens", "8"])
            .env_remove("RUST_LOG");
        s.proc = Some(Proc::start(&s.name, &mut cmd, &s.log)?);
        s.expected_up = true;
        let port = s.port;
        poll_until(
            &format!("{} /health 200", s.name),
            Duration::from_secs(20),
            || {
                if let Some(why) = s.died() {
                    return Err(ProcError(why));
                }
                Ok(http_status(port, "/health") == Some(200))
            },
        )
        .with_context(|| format!("start vllm-sim {}", self.bins.sim.display()))?;
        Ok(())
    }

    /// `POST /sim/control`: mode ok | fail (503) | hang.
    pub fn sim_mode(&self, i: usize, mode: &str) -> Result<()> {
        let s = &self.sims[i];
        let body = format!("{{\"mode\": \"{mode}\", \"fail_status\": 503}}");
        let r = http_request(
            s.port,
            "POST",
            "/sim/control",
            Some(&body),
            Duration::from_secs(3),
        )?;
        if r.status != 200 {
            bail!(
                "{} POST /sim/control {body} answered {}: {}",
                s.name,
                r.status,
                r.body
            );
        }
        Ok(())
    }

    fn sim_urls(&self) -> String {
        self.sims
            .iter()
            .map(|s| format!("\"http://127.0.0.1:{}\"", s.port))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A replica's config (valid, or with `models: 5`, which every router must refuse).
    pub fn config_yaml(&self, valid: bool) -> String {
        let eps = self.sim_urls();
        let drain = self
            .drain_ms
            .map(|ms| format!("  drain_ms: {ms}\n"))
            .unwrap_or_default();
        let models = if valid {
            format!(
                "models:\n  - name: small\n    endpoints: [{eps}]\n    reasoning_family: qwen3\n  \
                 - name: big\n    endpoints: [{eps}]\n    reasoning_family: qwen3\n"
            )
        } else {
            "models: 5\n".into()
        };
        format!(
            "# Written by the chaos run (loadtest/src/chaos): both models on both simulators.\n\
server:\n{drain}  shutdown_grace_ms: 10000\n\
classifier:\n  addresses: [\"http://127.0.0.1:{grpc}\"]\n  timeout_ms: {cto}\n  connect_timeout_ms: 100\n  \
breaker_failures: 5\n  breaker_cooldown_ms: 1000\n  info_refresh_ms: 1000\n\
cache:\n  redis_url: \"redis://127.0.0.1:{redis}\"\n  redis_timeout_ms: 20\n  redis_retry_ms: 500\n\
upstream:\n  connect_timeout_ms: 300\n  first_byte_timeout_ms: 1500\n  total_timeout_ms: 5000\n  \
max_attempts: 3\n  health_interval_ms: 200\n  health_timeout_ms: 300\n  eject_after_failures: 2\n  \
eject_ms: 2000\n\
{models}\
routing:\n  default_model: small\n  fallback_model: small\n  confidence_threshold: 0.4\n  categories:\n    \
math: {{candidates: [{{model: big, score: 1.0, use_reasoning: true}}, {{model: small, score: 0.3}}]}}\n    \
physics: {{candidates: [{{model: big, score: 0.9}}]}}\n    \
computer science: {{candidates: [{{model: big, score: 0.9, use_reasoning: true}}]}}\n    \
law: {{candidates: [{{model: big, score: 0.8}}]}}\n    \
history: {{candidates: [{{model: small, score: 0.8}}]}}\n    \
other: {{candidates: [{{model: small, score: 0.8}}]}}\n  \
complexity:\n    simple: {{model: small, use_reasoning: false}}\n    reasoning: {{use_reasoning: true}}\n  \
jailbreak: {{action: flag}}\n",
            grpc = self.classifier.port,
            redis = self.redis.port,
            cto = self.classifier_timeout_ms,
        )
    }

    /// Writes replica `i`'s config file atomically (temp file + rename: a router never reads
    /// half a file).
    pub fn write_config(&self, i: usize, valid: bool) -> Result<()> {
        let path = self.config_path(i);
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, self.config_yaml(valid))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("write {}", path.display()))
    }

    pub fn config_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.yaml", self.routers[i].name))
    }

    /// `router-svc --check` on the config; a router that does not know `server.drain_ms` yet
    /// gets configs without it (noted; phase 6 then shows an undrained stop).
    fn check_router_config(&mut self) -> Result<()> {
        for attempt in 0..2 {
            let path = self.dir.join("check.yaml");
            std::fs::write(&path, self.config_yaml(true))?;
            let out = Command::new(&self.bins.router)
                .arg("--config")
                .arg(&path)
                .arg("--check")
                .env_remove("RUST_LOG")
                .output()
                .with_context(|| format!("run {} --check", self.bins.router.display()))?;
            if out.status.success() {
                return Ok(());
            }
            let why = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if attempt == 0 && why.contains("drain_ms") {
                self.drain_ms = None;
                self.notes.push(
                    "router-svc refuses server.drain_ms (not built with it yet): configs written \
                     without it"
                        .into(),
                );
                continue;
            }
            bail!(
                "router-svc refuses the chaos config {}:\n{why}",
                path.display()
            );
        }
        unreachable!("the loop returns or bails")
    }

    /// Starts replica `i` on its fixed port and waits for `/readyz` 200.
    pub fn start_router(&mut self, i: usize) -> Result<Duration> {
        let t0 = std::time::Instant::now();
        let config = self.config_path(i);
        let r = &mut self.routers[i];
        let mut cmd = Command::new(&self.bins.router);
        cmd.arg("--config")
            .arg(&config)
            .env("ROUTER_LISTEN", format!("127.0.0.1:{}", r.port))
            .env("ROUTER_RELOAD_INTERVAL_MS", "200")
            .env_remove("RUST_LOG")
            .env_remove("ROUTER_CONFIG")
            .env_remove("ROUTER_REDIS_URL")
            .env_remove("ROUTER_CLASSIFIER_ADDRS");
        r.proc = Some(Proc::start(&r.name, &mut cmd, &r.log)?);
        r.expected_up = true;
        let port = r.port;
        poll_until(
            &format!("{} /readyz 200", r.name),
            Duration::from_secs(30),
            || {
                if let Some(why) = r.died() {
                    return Err(ProcError(why));
                }
                Ok(http_status(port, "/readyz") == Some(200))
            },
        )
        .with_context(|| format!("start router-svc {}", self.bins.router.display()))?;
        Ok(t0.elapsed())
    }

    /// SIGTERM to replica `i` (it drains and stops by itself).
    pub fn sigterm_router(&mut self, i: usize) -> Result<()> {
        let r = &mut self.routers[i];
        r.expected_up = false;
        let pid = r
            .proc
            .as_ref()
            .and_then(Proc::pid)
            .ok_or_else(|| anyhow!("{} is not running", r.name))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .with_context(|| format!("SIGTERM {} (pid {pid})", r.name))
    }

    /// Until replica `i` has exited (after `sigterm_router`); its exit status.
    pub fn wait_router_exit(&mut self, i: usize, timeout: Duration) -> Result<String> {
        let r = &mut self.routers[i];
        let p = r
            .proc
            .as_mut()
            .ok_or_else(|| anyhow!("{} is not running", r.name))?;
        match p.wait_exit(timeout) {
            Some(s) => {
                r.proc = None;
                Ok(s.to_string())
            }
            None => bail!(
                "{} still runs {:.0} s after SIGTERM (drain_ms + shutdown_grace_ms passed)",
                r.name,
                timeout.as_secs_f64()
            ),
        }
    }

    /// Until replica `i` routes with the classifier: one answer whose decision came from it or
    /// the cache. Before that its first requests would fail open (it has not fetched the
    /// classifier's tasks yet), which is start-up, not chaos. A classifier that is reached but
    /// always too slow for the router's timeout (a debug build on a small machine) ends the wait
    /// too, with a note: the run then shows decisions failing open, as they would in production.
    fn warm_up(&mut self, i: usize) -> Result<()> {
        let port = self.routers[i].port;
        let name = self.routers[i].name.clone();
        let mut n = 0;
        let mut last = String::new();
        let (mut no_header, mut busy) = (0, 0);
        let r = poll_until(
            &format!("{name} to route with the classifier"),
            Duration::from_secs(30),
            || {
                n += 1;
                let body = format!(
                    "{{\"model\": \"auto\", \"max_tokens\": 2, \"messages\": [{{\"role\": \
                     \"user\", \"content\": \"Warm-up {n} for {name}: what is {n} plus {n}?\"}}]}}"
                );
                let reply = match http_request(
                    port,
                    "POST",
                    "/v1/chat/completions",
                    Some(&body),
                    Duration::from_secs(5),
                ) {
                    Ok(r) => r,
                    Err(e) => {
                        last = e.0;
                        return Ok(false);
                    }
                };
                let source = reply.header("x-vsr-decision-source").map(str::to_string);
                let reason = reply.header("x-vsr-fail-reason").map(str::to_string);
                last = format!(
                    "status {}, x-vsr-decision-source {source:?}, x-vsr-fail-reason {reason:?}",
                    reply.status
                );
                if reply.status != 200 {
                    return Ok(false);
                }
                match (source.as_deref(), reason.as_deref()) {
                    (Some("classified" | "coalesced" | "cache_local" | "cache_redis"), _) => {
                        Ok(true)
                    }
                    (Some("fail_open"), Some("timeout" | "overloaded" | "shed")) => {
                        busy += 1;
                        Ok(busy >= 20)
                    }
                    (Some(_), _) => Ok(false),
                    (None, _) => {
                        no_header += 1;
                        Ok(no_header >= 5)
                    }
                }
            },
        );
        if no_header >= 5 {
            self.notes.push(format!(
                "{name} sends no x-vsr-decision-source header: decision sources are not counted"
            ));
        }
        if busy >= 20 {
            self.notes.push(format!(
                "{name}: 20 warm-up requests in a row failed open because the classifier did not \
                 answer within the router's {} ms (classifier.timeout_ms) on this machine (a \
                 debug build?); the run goes on, and such decisions fail open all along",
                self.classifier_timeout_ms
            ));
        }
        r.map_err(|e| anyhow!("{e}; last answer: {last}"))
    }
}
