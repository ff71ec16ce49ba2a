//! The chaos run in CI: the built `chaos` binary in `--short` mode (about a minute: the whole
//! stack as processes, every fault phase under load at 40 req/s) must lose no request and keep
//! the routers' and the classifier's logs under the line limit. Its output is shown on failure.

use std::process::Command;

use e2e::*;

#[test]
fn short_chaos_run_loses_no_request() {
    let chaos = bin("chaos");
    let bin_dir = chaos.parent().unwrap().to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("CHAOS.md");
    let out = Command::new(&chaos)
        .arg("--short")
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--report")
        .arg(&report)
        .env_remove("CHAOS_BIN_DIR")
        .env_remove("CHAOS_COMMAND")
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "chaos --short failed ({}):\n{text}",
        out.status
    );
    let md = std::fs::read_to_string(&report).unwrap();
    assert!(md.contains("**Result: PASS**"), "{md}");
    for phase in ["0 baseline", "4 backend faults", "7 clients abort streams"] {
        assert!(md.contains(phase), "report lacks phase {phase}:\n{md}");
    }
}
