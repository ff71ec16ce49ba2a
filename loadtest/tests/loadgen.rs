//! The open-loop generator against the simulator over real HTTP: it keeps its schedule, counts
//! latency from the scheduled time (a server slower than the schedule shows as latency, not as a
//! slower generator), counts failures, holds streams open, and its CLI gates on thresholds.

use std::process::Command;
use std::time::Duration;

use loadtest::loadgen::{run, Load, Plan, Target};
use loadtest::sim::{self, Control, Mode, SimConfig};

async fn start(cfg: SimConfig) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(sim::serve(l, cfg, std::future::pending()));
    format!("http://{addr}")
}

fn instant() -> SimConfig {
    SimConfig {
        ttft: Duration::ZERO,
        token_interval: Duration::from_micros(10),
        default_max_tokens: 4,
        ..SimConfig::default()
    }
}

const BODY: &str =
    r#"{"model": "m", "messages": [{"role": "user", "content": "hi {seq}"}], "max_tokens": 4}"#;

async fn target(base: &str, body: &str) -> Target {
    Target::parse(
        &format!("{base}/v1/chat/completions"),
        body.into(),
        Duration::from_secs(5),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_keeps_the_schedule_and_counts_every_request() {
    let base = start(instant()).await;
    let report = run(Plan {
        target: target(&base, BODY).await,
        load: Load::Open {
            rate: 400.0,
            connections: 16,
        },
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
    })
    .await
    .unwrap();
    // 400 due in the measured second (the warm-up's 80 are not counted), all answered.
    assert_eq!(report.scheduled, 400, "{report:?}");
    assert_eq!(report.ok, 400, "{report:?}");
    assert_eq!(report.unsent + report.io_errors + report.timeouts, 0);
    assert_eq!(report.latency_ms.count, 400);
    assert!(report.latency_ms.p50 > 0.0 && report.latency_ms.p50 < 50.0);
    assert!(report.latency_ms.p99 >= report.latency_ms.p50);
    assert_eq!(report.error_rate(), 0.0);
    // The sim saw unique prompts ({seq} substituted) from the warm-up and the run.
    let seen: serde_json::Value = reqwest::get(format!("{base}/sim/requests"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let texts: std::collections::HashSet<String> = seen
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["messages"][0]["content"].to_string())
        .collect();
    // The sim keeps the last 256 bodies: every one distinct.
    assert_eq!(texts.len(), 256, "prompts were not unique");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_slower_than_the_schedule_shows_as_latency_from_the_schedule() {
    // Each answer takes ~20 ms and only 2 connections serve 200 req/s (capacity ~100/s): the
    // queue grows, and latency from the scheduled time grows far beyond the 20 ms service time.
    let base = start(SimConfig {
        ttft: Duration::from_millis(20),
        default_max_tokens: 1,
        ..SimConfig::default()
    })
    .await;
    let report = run(Plan {
        target: target(&base, BODY).await,
        load: Load::Open {
            rate: 200.0,
            connections: 2,
        },
        duration: Duration::from_secs(1),
        warmup: Duration::ZERO,
    })
    .await
    .unwrap();
    assert!(report.service_ms.p50 < 60.0, "{report:?}");
    assert!(
        report.latency_ms.p99 > 3.0 * report.service_ms.p99,
        "queueing hidden: {report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_not_timed() {
    let base = start(SimConfig {
        control: Control {
            mode: Mode::Fail,
            fail_status: 503,
            slow_factor: 1.0,
        },
        ..instant()
    })
    .await;
    let report = run(Plan {
        target: target(&base, BODY).await,
        load: Load::Closed { concurrency: 4 },
        duration: Duration::from_millis(300),
        warmup: Duration::ZERO,
    })
    .await
    .unwrap();
    assert!(report.http_errors > 10, "{report:?}");
    assert_eq!(report.ok, 0);
    assert_eq!(report.latency_ms.count, 0);
    assert_eq!(report.error_rate(), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_held_open_together_and_memory_is_watched() {
    // 20 streams of 10 tokens at 20 tokens/s: each is open ~0.5 s, all at once.
    let base = start(SimConfig {
        ttft: Duration::ZERO,
        token_interval: Duration::from_millis(50),
        default_max_tokens: 10,
        ..SimConfig::default()
    })
    .await;
    let body = r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": true}"#;
    let report = run(Plan {
        target: target(&base, body).await,
        load: Load::Streams {
            count: 20,
            watch_pid: Some(std::process::id()),
        },
        duration: Duration::from_secs(3),
        warmup: Duration::ZERO,
    })
    .await
    .unwrap();
    assert_eq!(report.ok, 20, "{report:?}");
    assert_eq!(report.max_open_streams, Some(20));
    assert!(report.watched_rss_kib_at_max_open.unwrap() > 1000);
    assert!(
        report.service_ms.p50 >= 400.0,
        "streams ended early: {report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_target_is_a_clear_error() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let err = run(Plan {
        target: target(&base, BODY).await,
        load: Load::Closed { concurrency: 1 },
        duration: Duration::from_millis(100),
        warmup: Duration::ZERO,
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("cannot reach"), "{err}");
    assert!(
        Target::parse("https://x:1/", String::new(), Duration::from_secs(1))
            .await
            .is_err()
    );
}

#[test]
fn cli_writes_json_and_gates_on_thresholds() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = rt.block_on(start(instant()));
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let run_cli = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(["--url", &format!("{base}/v1/chat/completions")])
            .args(["--rate", "100", "--seconds", "0.5", "--body", BODY])
            .args(["--json", json.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run_cli(&[]);
    assert!(out.status.success(), "{out:?}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["mode"], "open");
    assert_eq!(r["ok"], 50);
    // An unmeetable p99 threshold fails the run, as k6's do.
    let out = run_cli(&["--max-p99-ms", "0.000001"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("thresholds missed"));
    // Bad flags are refused with a message.
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--url",
            "http://127.0.0.1:1/",
            "--rate",
            "10",
            "--seconds=-1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--seconds"));
}
