//! Backend load as the backends themselves report it. A replica shared with other routers or
//! clients can be saturated while this router has few requests there, so every endpoint's
//! Prometheus metrics are scraped (vLLM's names; SGLang's and llama.cpp's where they differ) and
//! endpoint choice ranks by queue depth, KV-cache usage and in-flight together
//! (`LoadConfig`'s formula). A failed scrape leaves the in-flight count alone, logged once.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use super::{now_ms, Endpoint};
use crate::config::{ms, LoadConfig};
use crate::state::Shared;

/// What a backend says about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reported {
    /// Requests queued for a slot (every label set summed).
    pub waiting: f64,
    /// Requests being generated.
    pub running: f64,
    /// KV-cache usage, 0..1 (the highest label set).
    pub kv: f64,
}

/// The metric names each server exports for the three numbers.
const WAITING: [&str; 4] = [
    "vllm:num_requests_waiting",
    "sglang:num_queue_reqs",
    "llamacpp:requests_deferred",
    "tgi_queue_size",
];
const RUNNING: [&str; 4] = [
    "vllm:num_requests_running",
    "sglang:num_running_reqs",
    "llamacpp:requests_processing",
    "tgi_batch_current_size",
];
const KV: [&str; 4] = [
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "sglang:token_usage",
    "llamacpp:kv_cache_usage_ratio",
];

/// The three numbers out of a Prometheus text exposition; None when it names none of them (not
/// a serving engine's metrics). Written here rather than taken from `prometheus-parse`, whose
/// metric-name pattern has no colon and so misses every `vllm:` name.
pub fn parse(text: &str) -> Option<Reported> {
    let mut r = Reported::default();
    let mut seen = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = sample(line) else {
            continue;
        };
        if !value.is_finite() {
            continue;
        }
        if WAITING.contains(&name) {
            r.waiting += value.max(0.0);
        } else if RUNNING.contains(&name) {
            r.running += value.max(0.0);
        } else if KV.contains(&name) {
            r.kv = r.kv.max(value.clamp(0.0, 1.0));
        } else {
            continue;
        }
        seen = true;
    }
    seen.then_some(r)
}

/// A sample line's metric name and value: `name{label="v",...} value [timestamp]`, label values
/// quoted with `\"` and `\\` escapes (a `}` inside one does not end the labels).
fn sample(line: &str) -> Option<(&str, f64)> {
    let end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let (name, mut rest) = line.split_at(end);
    if rest.starts_with('{') {
        let mut quoted = false;
        let mut escaped = false;
        let mut close = None;
        for (i, c) in rest.char_indices() {
            match (quoted, escaped, c) {
                (true, true, _) => escaped = false,
                (true, false, '\\') => escaped = true,
                (_, false, '"') => quoted = !quoted,
                (false, _, '}') => {
                    close = Some(i);
                    break;
                }
                _ => {}
            }
        }
        rest = &rest[close? + 1..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, value))
}

/// An endpoint's last report and when it came (f64s as bits, so reads take no lock).
#[derive(Debug, Default)]
pub struct Load {
    waiting: AtomicU64,
    running: AtomicU64,
    kv: AtomicU64,
    /// `now_ms()` of the last good scrape; 0: none yet.
    at_ms: AtomicU64,
    /// Scrapes failed in a row (a failing endpoint is asked less often).
    failures: AtomicU32,
    /// Whether the last scrape failed (logged on the change only).
    failing: AtomicBool,
}

impl Load {
    /// Records a report as just scraped.
    pub fn store(&self, r: Reported) {
        self.waiting.store(r.waiting.to_bits(), Ordering::Relaxed);
        self.running.store(r.running.to_bits(), Ordering::Relaxed);
        self.kv.store(r.kv.to_bits(), Ordering::Relaxed);
        self.at_ms.store(now_ms().max(1), Ordering::Relaxed);
    }

    /// The last report, if it is younger than `stale_after_ms`.
    pub fn fresh(&self, lc: &LoadConfig) -> Option<Reported> {
        let at = self.at_ms.load(Ordering::Relaxed);
        if lc.interval_ms == 0 || at == 0 || now_ms().saturating_sub(at) > lc.stale_after_ms {
            return None;
        }
        let f = |a: &AtomicU64| f64::from_bits(a.load(Ordering::Relaxed));
        Some(Reported {
            waiting: f(&self.waiting),
            running: f(&self.running),
            kv: f(&self.kv),
        })
    }
}

/// What endpoint choice ranks by (lower is better): with a fresh report,
/// `max(in_flight, running) + queue_weight * waiting + kv_weight * kv`; without, `in_flight`.
/// `running` counts this router's requests too, hence the max rather than a sum.
pub fn score(in_flight: usize, report: Option<Reported>, lc: &LoadConfig) -> f64 {
    let local = in_flight as f64;
    match report {
        Some(r) => local.max(r.running) + lc.queue_weight * r.waiting + lc.kv_weight * r.kv,
        None => local,
    }
}

/// Whether a report shows no room: requests queue there, or its KV cache is (nearly) full.
pub fn saturated(report: Option<Reported>, lc: &LoadConfig) -> bool {
    report.is_some_and(|r| r.waiting >= lc.saturated_waiting || r.kv >= lc.saturated_kv)
}

/// Scrapes every router-picked endpoint of the current config, every `interval_ms` (an endpoint
/// whose scrape fails is asked again after ten intervals, at most 30 s). Runs until the process
/// ends; picks up config reloads at each round.
pub async fn run(shared: Arc<Shared>) {
    let mut round: u64 = 0;
    loop {
        let rt = shared.current();
        let cfg = rt.upstream.config().clone();
        let lc = cfg.load.clone();
        if lc.interval_ms == 0 {
            drop(rt);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let retry_every = (30_000 / lc.interval_ms).clamp(1, 10);
        let scrapes = rt
            .pools
            .all()
            .filter(|ep| !rt.cfg.picks_pods(&ep.model))
            .filter(|ep| {
                ep.load.failures.load(Ordering::Relaxed) == 0 || round.is_multiple_of(retry_every)
            })
            .map(|ep| {
                let (upstream, path) = (&rt.upstream, lc.metrics_path.as_str());
                async move {
                    let got = tokio::time::timeout(ms(lc.timeout_ms), upstream.text(ep, path))
                        .await
                        .ok()
                        .flatten();
                    scraped(ep, got.as_deref().and_then(parse), path);
                }
            });
        join_all(scrapes).await;
        drop(rt);
        round = round.wrapping_add(1);
        tokio::time::sleep(ms(lc.interval_ms)).await;
    }
}

/// Records a scrape's result; logs when an endpoint's signals go away or come back.
fn scraped(ep: &Endpoint, got: Option<Reported>, path: &str) {
    let l = &ep.load;
    match got {
        Some(r) => {
            l.store(r);
            l.failures.store(0, Ordering::Relaxed);
            ep.load_gauges(Some(r));
            if l.failing.swap(false, Ordering::Relaxed) {
                tracing::info!(model = %ep.model, endpoint = %ep.url,
                    "endpoint load metrics back; choosing by queue, KV usage and in-flight");
            }
        }
        None => {
            l.failures.fetch_add(1, Ordering::Relaxed);
            ep.load_gauges(None);
            if !l.failing.swap(true, Ordering::Relaxed) {
                metrics::counter!("router_upstream_load_scrape_failures_total",
                    "model" => ep.model.clone())
                .increment(1);
                tracing::warn!(model = %ep.model, endpoint = %ep.url, path,
                    "endpoint load metrics unavailable; choosing by this router's in-flight count");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VLLM: &str = r#"# HELP vllm:num_requests_running Number of requests currently running.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="qwen3-8b"} 7.0
vllm:num_requests_waiting{engine="0",model_name="qwen3-8b"} 3.0
vllm:num_requests_waiting{engine="1",model_name="odd } \" name"} 2
vllm:kv_cache_usage_perc{engine="0",model_name="qwen3-8b"} 0.42
vllm:kv_cache_usage_perc{engine="1",model_name="qwen3-8b"} 0.61 1712345678000
vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="qwen3-8b"} 12
"#;

    #[test]
    fn reads_vllm_sglang_and_llamacpp_names_and_nothing_else() {
        let r = parse(VLLM).unwrap();
        assert_eq!(
            r,
            Reported {
                waiting: 5.0,
                running: 7.0,
                kv: 0.61
            }
        );
        let sglang = "sglang:num_running_reqs{model_name=\"m\"} 4\n\
                      sglang:num_queue_reqs{model_name=\"m\"} 9\n\
                      sglang:token_usage{model_name=\"m\"} 0.5\n";
        assert_eq!(
            parse(sglang),
            Some(Reported {
                waiting: 9.0,
                running: 4.0,
                kv: 0.5
            })
        );
        let llama = "llamacpp:requests_processing 1\nllamacpp:requests_deferred 0\n";
        assert_eq!(parse(llama).unwrap().running, 1.0);
        assert_eq!(parse("process_cpu_seconds_total 3\n"), None);
        assert_eq!(parse("<html>not metrics</html>"), None);
        assert_eq!(
            parse("vllm:num_requests_waiting{model_name=\"m\" 3\n"),
            None
        );
        assert_eq!(parse("vllm:num_requests_waiting NaN\n"), None);
    }

    #[test]
    fn the_score_weighs_queue_and_kv_and_counts_our_requests_once() {
        let lc = LoadConfig::default();
        assert_eq!(score(3, None, &lc), 3.0);
        let r = Reported {
            waiting: 2.0,
            running: 5.0,
            kv: 0.5,
        };
        // max(3, 5) + 4 * 2 + 4 * 0.5
        assert_eq!(score(3, Some(r), &lc), 15.0);
        // Our requests since the scrape count when they exceed what it saw.
        assert_eq!(score(9, Some(r), &lc), 19.0);
        assert!(saturated(Some(r), &lc));
        let idle = Reported {
            waiting: 0.0,
            running: 2.0,
            kv: 0.3,
        };
        assert!(!saturated(Some(idle), &lc));
        assert!(saturated(Some(Reported { kv: 0.97, ..idle }), &lc));
        assert!(!saturated(None, &lc), "no report: never saturated");
    }

    #[test]
    fn a_report_goes_stale() {
        let lc = LoadConfig {
            stale_after_ms: 50,
            ..Default::default()
        };
        let l = Load::default();
        assert_eq!(l.fresh(&lc), None);
        l.store(Reported {
            waiting: 1.0,
            ..Default::default()
        });
        assert_eq!(l.fresh(&lc).unwrap().waiting, 1.0);
        let off = LoadConfig {
            interval_ms: 0,
            ..lc.clone()
        };
        assert_eq!(l.fresh(&off), None, "scraping off: reports ignored");
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(l.fresh(&lc), None);
    }
}
