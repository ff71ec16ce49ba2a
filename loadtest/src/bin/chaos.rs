//! `chaos`: the chaos run in one command (see `loadtest::chaos`). Starts the whole stack as real
//! processes, breaks one part after another under open-loop load, prints and writes a report,
//! and exits 1 when a request was lost or the routers and the classifier logged too much (2 when
//! the run could not be done at all).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use loadtest::chaos::{self, Options};

#[derive(Debug, Parser)]
#[command(
    name = "chaos",
    version,
    about = "Kill, slow and misconfigure the router's dependencies under load; count lost requests"
)]
struct Args {
    /// The CI run: phases of 6 s (about a minute in all) at 40 req/s unless --rate is given.
    #[arg(long)]
    short: bool,
    /// Requests per second (default 100, or 40 with --short).
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds per phase (default 9, or 6 with --short; phase 4 runs 1.5 times as long).
    #[arg(long)]
    phase_secs: Option<f64>,
    /// Client timeout per request, from its scheduled send time, seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Share of streams the clients drop after the first chunk in phase 7.
    #[arg(long, default_value_t = 0.5)]
    abort_share: f64,
    /// The routers' classifier timeout (classifier.timeout_ms), ms.
    #[arg(long, default_value_t = 50)]
    classifier_timeout_ms: u64,
    /// Directory with classifier-svc, router-svc and vllm-sim (default: target/release when it
    /// has all three and is newer, else target/debug).
    #[arg(long, env = "CHAOS_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// Markdown report (default loadtest/CHAOS.md for a full run, none for --short).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Most log lines the routers and the classifier may write over the whole run.
    #[arg(long, default_value_t = 200)]
    max_log_lines: u64,
    /// Keep the processes' logs even when the run passes.
    #[arg(long)]
    keep_logs: bool,
}

fn main() {
    let a = Args::parse();
    let report = a
        .report
        .clone()
        .or_else(|| (!a.short).then(|| chaos::repo_root().join("loadtest/CHAOS.md")));
    // loadtest/chaos.sh passes its own command line; run directly, this one.
    let command = std::env::var("CHAOS_COMMAND").unwrap_or_else(|_| {
        std::env::args()
            .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
            .collect::<Vec<_>>()
            .join(" ")
    });
    let opts = Options {
        rate: a.rate.unwrap_or(if a.short { 40.0 } else { 100.0 }),
        phase_secs: a.phase_secs.unwrap_or(if a.short { 6.0 } else { 9.0 }),
        timeout: Duration::from_secs_f64(a.timeout),
        abort_share: a.abort_share.clamp(0.0, 1.0),
        classifier_timeout_ms: a.classifier_timeout_ms,
        bin_dir: a.bin_dir,
        report,
        max_log_lines: a.max_log_lines,
        keep_logs: a.keep_logs,
        command,
    };
    match chaos::run(&opts) {
        Ok(v) => {
            println!("\n{}", v.markdown);
            if let Some(p) = &opts.report {
                println!("report written to {}", p.display());
            }
            if let Some(d) = &v.log_dir {
                println!("process logs kept in {}", d.display());
            }
            if !v.passed {
                println!("chaos run FAILED");
                std::process::exit(1);
            }
            println!("chaos run passed");
        }
        Err(e) => {
            eprintln!("chaos run could not be done: {e:#}");
            std::process::exit(2);
        }
    }
}
