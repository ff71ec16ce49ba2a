//! The open-loop generator (loadtest's `loadgen`, what the performance report measures with)
//! through a real router-svc process: the CI smoke run of the report's harness. Every request of
//! the schedule is answered through the router, and held streams are open at once while the
//! router's RSS is sampled.

use std::process::Command;

use e2e::*;
use serde_json::Value;

fn loadgen(args: &[&str], dir: &std::path::Path, name: &str) -> Value {
    let json = dir.join(format!("{name}.json"));
    let out = Command::new(bin("loadgen"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "loadgen {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_through_the_router_answers_the_whole_schedule_and_holds_streams() {
    let dir = tempfile::tempdir().unwrap();
    // Tokens every 20 ms: a plain answer takes ~150 ms, a 200-token stream ~4 s (all 30 open
    // together).
    let slow_tokens = loadtest::sim::SimConfig {
        token_interval: std::time::Duration::from_millis(20),
        ..Sim::fast()
    };
    let a = Sim::start("sim-a", slow_tokens).await;
    let big = Sim::start("sim-big", Sim::fast()).await;
    let yaml = config_yaml(None, None, &[&a.url], &big.url, "");
    let router = Router::start(dir.path(), &yaml, &[]);
    let url = format!("{}/v1/chat/completions", router.base);
    let pid = router.proc.pid().unwrap().to_string();
    let out = dir.path().to_path_buf();
    let (open, streams) = tokio::task::spawn_blocking(move || {
        let plain = r#"{"model": "small", "messages": [{"role": "user", "content": "hi {seq}"}]}"#;
        let open = loadgen(
            &[
                "--url", &url, "--rate", "200", "--seconds", "2", "--warmup", "0.5", "--body",
                plain,
            ],
            &out,
            "open",
        );
        let streamed = r#"{"model": "small", "messages": [{"role": "user", "content": "hi"}], "stream": true, "max_tokens": 200}"#;
        let streams = loadgen(
            &[
                "--url", &url, "--streams", "30", "--seconds", "10", "--watch-pid", &pid,
                "--body", streamed,
            ],
            &out,
            "streams",
        );
        (open, streams)
    })
    .await
    .unwrap();
    assert_eq!(open["scheduled"], 400, "{open}");
    assert_eq!(open["ok"], 400, "{open}");
    assert_eq!(open["unsent"], 0);
    assert!(
        open["latency_ms"]["p99"].as_f64().unwrap() < 1000.0,
        "{open}"
    );
    assert_eq!(streams["ok"], 30, "{streams}");
    assert_eq!(streams["max_open_streams"], 30, "{streams}");
    assert!(streams["watched_rss_kib_at_max_open"].as_u64().unwrap() > 1000);
}
