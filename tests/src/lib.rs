//! Cross-service test harness: starts real processes (classifier-svc with the MiniLM encoder,
//! router-svc, redis-server) and in-process simulated vLLM backends on free ports, and stops
//! them all when dropped. The tests live in tests/tests/.
//!
//! The binaries come from the workspace's target dir (`scripts/test.sh` builds them first with
//! `cargo build --workspace --bins`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loadtest::sim::{self, SimConfig};
use serde_json::Value;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A workspace binary next to this test executable (target/<profile>/<name>).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} not built: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        p.display()
    );
    p
}

pub fn minilm() -> PathBuf {
    let dir = repo().join("models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "run models/fetch.sh first"
    );
    dir
}

/// The demo few-shot examples: task -> label -> prompts. Tests take their prompts from here.
pub fn examples() -> Value {
    let text = std::fs::read_to_string(repo().join("models/demo/examples.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn example(task: &str, label: &str, i: usize) -> String {
    examples()[task][label][i].as_str().unwrap().to_string()
}

/// A child process killed (SIGKILL) when dropped; its stderr goes to a log file.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> Self {
        let log = log_dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self {
            name: name.into(),
            child: Some(child),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Minimal blocking HTTP GET status (for readiness polling without a runtime).
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1)?.parse().ok()
}

pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// classifier-svc with the real MiniLM encoder and the demo centroid heads.
pub struct Classifier {
    pub proc: Proc,
    pub grpc_port: u16,
    pub http_port: u16,
}

impl Classifier {
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[])
    }

    /// `start`, serving also these shipped heads of `models/heads` (e.g. `pii`).
    pub fn start_with(dir: &Path, shipped: &[&str]) -> Self {
        let heads = dir.join("heads");
        for name in shipped {
            let (from, to) = (repo().join("models/heads").join(name), heads.join(name));
            std::fs::create_dir_all(&to).unwrap();
            for f in ["head.json", "head.safetensors"] {
                std::fs::copy(from.join(f), to.join(f)).unwrap();
            }
        }
        if !heads.join("domain/head.json").is_file() {
            let st = Command::new(bin("classifier-svc"))
                .args(["centroid-heads", "--examples"])
                .arg(repo().join("models/demo/examples.json"))
                .arg("--out")
                .arg(&heads)
                .arg("--encoder")
                .arg(minilm())
                .status()
                .unwrap();
            assert!(st.success(), "centroid-heads failed");
        }
        let grpc_port = free_port();
        let http_port = free_port();
        let proc = Proc::spawn(
            "classifier",
            Command::new(bin("classifier-svc"))
                .arg("serve")
                .arg("--encoder")
                .arg(minilm())
                .arg("--heads")
                .arg(&heads)
                .args(["--grpc-addr", &format!("127.0.0.1:{grpc_port}")])
                .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
                .env("RAYON_NUM_THREADS", "1"),
            dir,
        );
        let mut c = Self {
            proc,
            grpc_port,
            http_port,
        };
        wait_until("classifier /healthz", Duration::from_secs(60), || {
            assert!(
                c.proc.is_running(),
                "classifier died:\n{}",
                c.proc.log_text()
            );
            http_status(http_port, "/healthz") == Some(200)
        });
        c
    }

    /// Classify calls answered so far (from the classifier's own metrics).
    pub fn classify_calls(&self) -> u64 {
        metric_sum(
            &http_get_text(self.http_port, "/metrics"),
            "classifier_requests_total",
            &["method=\"Classify\""],
        )
    }
}

pub fn http_get_text(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Sum of a Prometheus metric's samples whose labels contain every `filters` item.
pub fn metric_sum(text: &str, name: &str, filters: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| {
            let rest = &l[name.len()..];
            rest.starts_with('{') || rest.starts_with(' ')
        })
        .filter(|l| filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A private redis-server on a free port (no persistence), killed when dropped.
pub struct Redis {
    pub proc: Proc,
    pub port: u16,
}

impl Redis {
    pub fn start(dir: &Path) -> Self {
        Self::start_on(dir, free_port())
    }

    /// On a given port (e.g. to restart one that was killed).
    pub fn start_on(dir: &Path, port: u16) -> Self {
        let proc = Proc::spawn(
            "redis",
            Command::new("redis-server")
                .args(["--port", &port.to_string()])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                // DEBUG SLEEP simulates a stalled Redis.
                .args(["--enable-debug-command", "local"])
                .arg("--dir")
                .arg(dir),
            dir,
        );
        let mut r = Self { proc, port };
        wait_until("redis", Duration::from_secs(10), || {
            assert!(r.proc.is_running(), "redis died:\n{}", r.proc.log_text());
            r.command(&["PING"]).is_some()
        });
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// One RESP command; the reply as text lines (bulk strings and array items), None on error.
    pub fn command(&self, args: &[&str]) -> Option<Vec<String>> {
        redis_command(self.port, args)
    }

    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.command(&["KEYS", pattern]).unwrap_or_default()
    }
}

/// One RESP command to the Redis on `port` (see `Redis::command`).
pub fn redis_command(port: u16, args: &[&str]) -> Option<Vec<String>> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).ok()?;
    let mut r = std::io::BufReader::new(s);
    let mut out = Vec::new();
    read_reply(&mut r, &mut out)?;
    Some(out)
}

fn read_reply(r: &mut impl std::io::BufRead, out: &mut Vec<String>) -> Option<()> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let line = line.trim_end();
    let (kind, rest) = line.split_at(1);
    match kind {
        "+" | ":" => out.push(rest.to_string()),
        "-" => return None,
        "$" => {
            let n: i64 = rest.parse().ok()?;
            if n >= 0 {
                let mut buf = vec![0u8; n as usize + 2];
                r.read_exact(&mut buf).ok()?;
                out.push(String::from_utf8_lossy(&buf[..n as usize]).into_owned());
            }
        }
        "*" => {
            let n: i64 = rest.parse().ok()?;
            for _ in 0..n.max(0) {
                read_reply(r, out)?;
            }
        }
        _ => return None,
    }
    Some(())
}

/// An in-process simulated vLLM backend; `stop` takes it down (connections refused after).
pub struct Sim {
    pub url: String,
    pub name: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Sim {
    pub async fn start(name: &str, cfg: SimConfig) -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let cfg = SimConfig {
            name: name.into(),
            ..cfg
        };
        let task = tokio::spawn(async move {
            let _ = sim::serve(l, cfg, async {
                let _ = rx.await;
            })
            .await;
        });
        Self {
            url,
            name: name.into(),
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn fast() -> SimConfig {
        SimConfig {
            ttft: Duration::from_millis(5),
            token_interval: Duration::from_millis(1),
            default_max_tokens: 8,
            ..SimConfig::default()
        }
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Bodies the backend received, oldest first.
    pub async fn requests(&self) -> Vec<Value> {
        reqwest::get(format!("{}/sim/requests", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn set_mode(&self, mode: &str) {
        let r = reqwest::Client::new()
            .post(format!("{}/sim/control", self.url))
            .json(&serde_json::json!({"mode": mode, "fail_status": 503}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
}

/// router-svc as a process with a config file the test may rewrite (hot reload).
pub struct Router {
    pub proc: Proc,
    pub port: u16,
    pub config: PathBuf,
    pub base: String,
}

impl Router {
    /// `yaml` is the whole config; `listen` is added here.
    pub fn start(dir: &Path, yaml: &str, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let config = dir.join("router.yaml");
        std::fs::write(&config, yaml).unwrap();
        let mut cmd = Command::new(bin("router-svc"));
        cmd.arg("--config")
            .arg(&config)
            .env("ROUTER_LISTEN", format!("127.0.0.1:{port}"))
            .env("ROUTER_RELOAD_INTERVAL_MS", "100")
            .env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut r = Self {
            proc: Proc::spawn("router", &mut cmd, dir),
            port,
            config,
            base: format!("http://127.0.0.1:{port}"),
        };
        wait_until("router /readyz", Duration::from_secs(30), || {
            assert!(r.proc.is_running(), "router died:\n{}", r.proc.log_text());
            http_status(port, "/readyz") == Some(200)
        });
        r
    }

    /// Until the router has the classifier's tasks and model versions (part of the cache key;
    /// nothing is cached before).
    pub fn wait_classifier_known(&self) {
        wait_until(
            "router knows the classifier",
            Duration::from_secs(20),
            || self.proc.log_text().contains("classifier tasks"),
        );
    }

    pub fn metrics(&self) -> String {
        http_get_text(self.port, "/metrics")
    }
}

/// A test stack's config: `small` (two endpoints), `big` (qwen3), `ds` (deepseek), `oss`
/// (gpt-oss), and the policy the routing tests expect.
pub fn config_yaml(
    classifier: Option<u16>,
    redis: Option<&str>,
    small: &[&str],
    other: &str,
    extra_routing: &str,
) -> String {
    let list = |v: &[&str]| {
        v.iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let classifier = classifier
        .map(|p| format!("[\"http://127.0.0.1:{p}\"]"))
        .unwrap_or_else(|| "[]".into());
    let redis = redis.map(|r| format!("\"{r}\"")).unwrap_or("null".into());
    format!(
        r#"
classifier:
  addresses: {classifier}
  timeout_ms: 3000
  breaker_failures: 3
  breaker_cooldown_ms: 500
  info_refresh_ms: 500
cache:
  redis_url: {redis}
  redis_timeout_ms: 50
  redis_retry_ms: 200
upstream:
  connect_timeout_ms: 300
  first_byte_timeout_ms: 3000
  total_timeout_ms: 20000
  health_interval_ms: 200
  health_timeout_ms: 300
models:
  - name: small
    endpoints: [{small}]
    reasoning_family: qwen3
    pricing: {{input_per_million: 0.1, output_per_million: 0.2}}
  - name: big
    endpoints: ["{other}"]
    reasoning_family: qwen3
  - name: ds
    endpoints: ["{other}"]
    reasoning_family: deepseek
  - name: oss
    endpoints: ["{other}"]
    reasoning_family: gpt-oss
    reasoning_effort: medium
routing:
  default_model: small
  fallback_model: small
  confidence_threshold: 0.4
  categories:
    math:
      candidates: [{{model: big, score: 1.0, use_reasoning: true}}, {{model: small, score: 0.2}}]
      system_prompt: "You are a careful mathematician."
    computer science: {{candidates: [{{model: ds, use_reasoning: true}}]}}
    business: {{candidates: [{{model: oss, use_reasoning: true}}]}}
    history: {{candidates: [{{model: small}}]}}
  complexity:
    simple: {{model: small, use_reasoning: false}}
    reasoning: {{use_reasoning: true}}
  jailbreak:
    action: block
    threshold: 0.6
{extra_routing}
"#,
        small = list(small),
    )
}

/// POST a JSON body; returns (status, headers, body).
pub async fn post(
    c: &reqwest::Client,
    url: &str,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = c.post(url).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, v)
}

pub fn chat(model: &str, prompt: &str) -> Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": prompt}]})
}

pub fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}
