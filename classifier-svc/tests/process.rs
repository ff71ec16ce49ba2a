//! The `classifier-svc serve` binary as an operator runs it: flags and env, background loading,
//! /healthz, classification with the real MiniLM encoder, no prompt text in logs, clean SIGTERM.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use semroute_encoder::fixtures::{self, Spec};
use semroute_encoder::Arch;
use semroute_proto::classifier::v1 as pb;
use semroute_proto::classifier::v1::classifier_client::ClassifierClient;

const SECRET_PROMPT: &str = "my password is hunter2, what is the capital of North Carolina?";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn minilm() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "run models/fetch.sh first"
    );
    dir
}

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn stop(mut child: Child) -> (bool, String) {
    // SIGTERM, as an orchestrator would.
    unsafe_kill(child.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.success(), err);
        }
        assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn unsafe_kill(pid: u32) {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_binary_loads_classifies_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let heads = dir.path().join("heads");
    fixtures::write_head(&heads, "domain", &["math", "law", "other"], 384, &[], 1).unwrap();
    fixtures::write_head(
        &heads,
        "complexity",
        &["simple", "reasoning"],
        384,
        &[16],
        2,
    )
    .unwrap();
    let jb = dir.path().join("jailbreak-ckpt");
    fixtures::write_checkpoint(
        &jb,
        &Spec::tiny(Arch::ModernBert).with_labels(&["benign", "jailbreak"]),
    )
    .unwrap();
    let (grpc, http) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_classifier-svc"))
        .arg("serve")
        .args(["--encoder", minilm().to_str().unwrap()])
        .args(["--heads", heads.to_str().unwrap()])
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
        .env("CLASSIFIER_HTTP_ADDR", format!("127.0.0.1:{http}"))
        .env(
            "CLASSIFIER_CHECKPOINTS",
            format!("jailbreak={}", jb.display()),
        )
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(body) = http_get(http, "/healthz") {
            if body.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not healthy within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c = ClassifierClient::connect(format!("http://127.0.0.1:{grpc}"))
        .await
        .unwrap();
    let r = c
        .classify(pb::ClassifyRequest {
            texts: vec![SECRET_PROMPT.into()],
            tasks: vec![],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let tasks: Vec<_> = r.results[0]
        .results
        .iter()
        .map(|t| t.task.clone())
        .collect();
    assert_eq!(tasks, vec!["complexity", "domain", "jailbreak"]);
    let info = c.info(pb::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.models[0].id, "all-MiniLM-L6-v2");
    assert_eq!(info.models[0].pooling, "mean");
    let metrics = http_get(http, "/metrics").unwrap();
    assert!(metrics.contains("classifier_batch_size"));
    let (ok, logs) = stop(child);
    assert!(ok, "exit status after SIGTERM; logs:\n{logs}");
    assert!(logs.contains("model loaded"), "{logs}");
    assert!(!logs.contains("hunter2"), "prompt text leaked into logs");
}

#[test]
fn a_bad_model_path_fails_loudly_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_classifier-svc"))
        .arg("serve")
        .args(["--encoder", "/nonexistent/encoder"])
        .args(["--grpc-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-addr", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/encoder") && err.contains("fetch.sh"),
        "{err}"
    );
}
