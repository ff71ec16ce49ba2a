//! Cross-service test harness: starts real processes (classifier-svc with the MiniLM encoder,
//! router-svc, redis-server) and in-process simulated vLLM backends on free ports, and stops
//! them all when dropped. The tests live in tests/tests/.
//!
//! The binaries come from the workspace's target dir (`scripts/test.sh` builds them first with
//! `cargo build --workspace --bins`).

pub mod otlp;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use loadtest::sim::{self, SimConfig};
use serde_json::Value;

/// The generic process helpers (free ports, `Proc`, `Redis`, blocking HTTP/RESP, metrics) live
/// in `loadtest::procs`, shared with the chaos run.
pub use loadtest::procs::*;

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
        Self::start_full(dir, shipped, &[])
    }

    /// `start` with these environment variables (e.g. the OpenTelemetry settings).
    pub fn start_env(dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_full(dir, &[], env)
    }

    fn start_full(dir: &Path, shipped: &[&str], env: &[(&str, &str)]) -> Self {
        let heads = dir.join("heads");
        for name in shipped {
            let (from, to) = (repo().join("models/heads").join(name), heads.join(name));
            std::fs::create_dir_all(&to).unwrap();
            for f in ["head.json", "head.safetensors"] {
                std::fs::copy(from.join(f), to.join(f)).unwrap();
            }
        }
        if !heads.join("domain/head.json").is_file() {
            let st = Command::new(bin("semroute-train"))
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
                .env("RAYON_NUM_THREADS", "1")
                .envs(env.iter().copied()),
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

/// Runs a Python script with the router's base URL; panics with its stderr if it fails.
pub fn python_client(dir: &std::path::Path, package: &str, script: &str, base: &str) -> String {
    let py = dir.join(format!("{package}_client.py"));
    std::fs::write(&py, script).unwrap();
    let out = std::process::Command::new("python3")
        .arg(&py)
        .arg(base)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains(&format!("No module named '{package}'")),
        "the {package} package is missing: `python3 -m pip install {package}` (scripts/test.sh does)"
    );
    assert!(out.status.success(), "{err}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A chat backend that answers at once and keeps the value of `header` on each request (empty
/// when absent): what the router sent along (trace context, a gateway's routing header).
pub async fn recording_backend(
    header: &'static str,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let app = axum::Router::new()
        .route(
            "/v1/chat/completions",
            axum::routing::post(move |h: axum::http::HeaderMap| {
                let s2 = s2.clone();
                async move {
                    let v = h.get(header).and_then(|v| v.to_str().ok());
                    s2.lock().unwrap().push(v.unwrap_or("").to_string());
                    axum::Json(
                        serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion",
                        "model": "small",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                            "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 1}}),
                    )
                }
            }),
        )
        .route("/health", axum::routing::get(|| async { "ok" }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (url, seen)
}
