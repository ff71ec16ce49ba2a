//! `loadgen`: open-loop (fixed schedule, latency from the scheduled time), closed-loop or
//! held-streams HTTP load against one URL; prints a summary and a JSON report, and exits 1 when
//! a threshold (`--max-p99-ms`, `--max-error-rate`) is missed, as k6's thresholds do.

use std::time::Duration;

use clap::{ArgGroup, Parser};
use loadtest::loadgen::{run, Load, Plan, Target};

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Open-loop HTTP load generator (fixed send schedule, latency from the scheduled time)"
)]
#[command(group(ArgGroup::new("load").required(true).args(["rate", "concurrency", "streams"])))]
struct Args {
    /// http://host:port/path
    #[arg(long)]
    url: String,
    /// Open loop: requests per second on a fixed schedule.
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: keep-alive connections that take due requests (like wrk2's -c).
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// Closed loop: requests always in flight.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Streams: streaming requests held open at once for the whole run.
    #[arg(long)]
    streams: Option<usize>,
    /// Streams: sample this process's RSS while they are open.
    #[arg(long)]
    watch_pid: Option<u32>,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seconds sent on the same schedule first, not recorded.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Request body (JSON); `{seq}` becomes the request's number. Empty: GET.
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    #[arg(long)]
    body_file: Option<std::path::PathBuf>,
    /// JSONL of prompts for `{prompt}` in the body (each line a JSON string, or an object with
    /// a "text" field), taken in turn.
    #[arg(long)]
    prompts: Option<std::path::PathBuf>,
    /// Extra header `name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Per-request limit in seconds (open loop: from the scheduled time).
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Threads (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write the JSON report here (else to stdout).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Exit 1 when the p99 latency is above this.
    #[arg(long)]
    max_p99_ms: Option<f64>,
    /// Exit 1 when more than this share of due requests failed or was never sent.
    #[arg(long, default_value_t = 0.01)]
    max_error_rate: f64,
}

/// The prompts of a JSONL file, escaped for the body's JSON.
fn read_prompts(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("--prompts {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("--prompts {}:{}: {e}", path.display(), i + 1))?;
        let t = v.as_str().or_else(|| v["text"].as_str()).ok_or_else(|| {
            anyhow::anyhow!(
                "--prompts {}:{}: neither a string nor an object with \"text\"",
                path.display(),
                i + 1
            )
        })?;
        out.push(loadtest::loadgen::escape_json(t));
    }
    anyhow::ensure!(!out.is_empty(), "--prompts {}: no prompts", path.display());
    Ok(out)
}

fn secs(name: &str, v: f64) -> anyhow::Result<Duration> {
    if !(v >= 0.0 && v.is_finite()) {
        anyhow::bail!("--{name} must be a non-negative number of seconds");
    }
    Ok(Duration::from_secs_f64(v))
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let body = match (&a.body, &a.body_file) {
        (Some(b), _) => b.clone(),
        (None, Some(p)) => std::fs::read_to_string(p)
            .map_err(|e| anyhow::anyhow!("--body-file {}: {e}", p.display()))?,
        (None, None) => String::new(),
    };
    let load = match (a.rate, a.concurrency, a.streams) {
        (Some(rate), _, _) => Load::Open {
            rate,
            connections: a.connections,
        },
        (_, Some(concurrency), _) => Load::Closed { concurrency },
        (_, _, Some(count)) => Load::Streams {
            count,
            watch_pid: a.watch_pid,
        },
        _ => unreachable!("clap requires one of --rate, --concurrency, --streams"),
    };
    let duration = secs("seconds", a.seconds)?;
    let warmup = secs("warmup", a.warmup)?;
    let timeout = secs("timeout", a.timeout)?;
    // One thread (the default): no cross-thread wake-ups, the lightest on a small machine.
    let rt = if a.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(a.threads)
            .enable_all()
            .build()?
    };
    let report = rt.block_on(async {
        let mut target = Target::parse(&a.url, body, timeout).await?;
        if let Some(path) = &a.prompts {
            target.prompts = read_prompts(path)?;
        }
        for h in &a.headers {
            let (k, v) = h
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("--header {h:?}: expected `name: value`"))?;
            target.headers.push((k.trim().into(), v.trim().into()));
        }
        anyhow::Ok(
            run(Plan {
                target,
                load,
                duration,
                warmup,
            })
            .await?,
        )
    })?;
    let l = &report.latency_ms;
    eprintln!(
        "{} {}: {:.0} ok/s ({} ok, {} http errors, {} io errors, {} timeouts, {} unsent); \
         latency ms p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}",
        report.mode,
        report.url,
        report.achieved_rps,
        report.ok,
        report.http_errors,
        report.io_errors,
        report.timeouts,
        report.unsent,
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max
    );
    let json = serde_json::to_string_pretty(&report)?;
    match &a.json {
        Some(p) => std::fs::write(p, json + "\n")
            .map_err(|e| anyhow::anyhow!("--json {}: {e}", p.display()))?,
        None => println!("{json}"),
    }
    let mut failed = Vec::new();
    if report.error_rate() > a.max_error_rate {
        failed.push(format!(
            "error rate {:.4} > {}",
            report.error_rate(),
            a.max_error_rate
        ));
    }
    if let Some(max) = a.max_p99_ms {
        if l.p99 > max {
            failed.push(format!("p99 {:.3} ms > {max} ms", l.p99));
        }
    }
    if !failed.is_empty() {
        eprintln!("thresholds missed: {}", failed.join("; "));
        std::process::exit(1);
    }
    Ok(())
}
