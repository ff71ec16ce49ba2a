//! Per-request trouble, counted instead of logged. At 5k req/s a WARN per failed-open request is
//! 5k lines a second exactly when something is wrong, so the request path only bumps counters
//! here (and the Prometheus metrics); `run` writes at most one summary line per interval, logs
//! shedding starting and stopping once each, and sets the classified-share gauge that the
//! dashboard and the alert rules read. State changes (breaker, replicas, Redis) are logged where
//! they happen, once per change.
//!
//! A leaf like `metrics`: every module may record here, it imports none of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What the summary counts. The order is the order of the summary line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A decision came from the classifier: classified now, coalesced or cached.
    Classified,
    /// The classifier could not answer; the router's fast tier did (`decide::fast_tier`).
    FastTier,
    FailOpenShed,
    FailOpenTimeout,
    FailOpenOverloaded,
    FailOpenCircuitOpen,
    FailOpenUnavailable,
    /// Rejected, incomplete, not configured.
    FailOpenOther,
    UpstreamRetry,
    /// A request answered with an error because every endpoint failed.
    UpstreamError,
    StreamError,
    RedisError,
}

const ALL: [Event; 12] = [
    Event::Classified,
    Event::FastTier,
    Event::FailOpenShed,
    Event::FailOpenTimeout,
    Event::FailOpenOverloaded,
    Event::FailOpenCircuitOpen,
    Event::FailOpenUnavailable,
    Event::FailOpenOther,
    Event::UpstreamRetry,
    Event::UpstreamError,
    Event::StreamError,
    Event::RedisError,
];

impl Event {
    fn name(self) -> &'static str {
        match self {
            Event::Classified => "classified",
            Event::FastTier => "classified_by_router_fast_tier",
            Event::FailOpenShed => "fail_open_shed",
            Event::FailOpenTimeout => "fail_open_timeout",
            Event::FailOpenOverloaded => "fail_open_overloaded",
            Event::FailOpenCircuitOpen => "fail_open_circuit_open",
            Event::FailOpenUnavailable => "fail_open_unavailable",
            Event::FailOpenOther => "fail_open_other",
            Event::UpstreamRetry => "upstream_retries",
            Event::UpstreamError => "upstream_errors",
            Event::StreamError => "stream_errors",
            Event::RedisError => "redis_errors",
        }
    }

    fn is_fail_open(self) -> bool {
        matches!(
            self,
            Event::FailOpenShed
                | Event::FailOpenTimeout
                | Event::FailOpenOverloaded
                | Event::FailOpenCircuitOpen
                | Event::FailOpenUnavailable
                | Event::FailOpenOther
        )
    }

    /// The fail-open event of a `router_fail_open_total` reason label.
    pub fn fail_open(reason: &str) -> Self {
        match reason {
            "shed" => Event::FailOpenShed,
            "timeout" => Event::FailOpenTimeout,
            "overloaded" => Event::FailOpenOverloaded,
            "circuit_open" => Event::FailOpenCircuitOpen,
            "unavailable" => Event::FailOpenUnavailable,
            _ => Event::FailOpenOther,
        }
    }
}

static COUNTS: [AtomicU64; ALL.len()] = [const { AtomicU64::new(0) }; ALL.len()];

/// Counts one event (a relaxed atomic add: nothing else on the request path).
pub fn count(e: Event) {
    COUNTS[e as usize].fetch_add(1, Ordering::Relaxed);
}

/// One interval's counts, taken and reset.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Interval {
    counts: [u64; ALL.len()],
}

impl Interval {
    pub fn take() -> Self {
        let mut counts = [0; ALL.len()];
        for (c, a) in counts.iter_mut().zip(&COUNTS) {
            *c = a.swap(0, Ordering::Relaxed);
        }
        Self { counts }
    }

    pub fn get(&self, e: Event) -> u64 {
        self.counts[e as usize]
    }

    fn fail_open(&self) -> u64 {
        ALL.iter()
            .filter(|e| e.is_fail_open())
            .map(|e| self.get(*e))
            .sum()
    }

    /// Share of decisions that came from a classification (the classifier's, now or cached,
    /// or the router's fast tier's) among those that needed one; None when none did.
    pub fn classified_share(&self) -> Option<f64> {
        let ok = self.get(Event::Classified) + self.get(Event::FastTier);
        let total = ok + self.fail_open();
        (total > 0).then(|| ok as f64 / total as f64)
    }

    /// Anything worth a summary line: some request was failed open, retried or cut.
    fn troubled(&self) -> bool {
        ALL.iter()
            .any(|e| *e != Event::Classified && self.get(*e) > 0)
    }

    /// "fail_open_shed=12 upstream_retries=3 ..." (non-zero counts only).
    pub fn describe(&self) -> String {
        ALL.iter()
            .filter(|e| **e != Event::Classified && self.get(**e) > 0)
            .map(|e| format!("{}={}", e.name(), self.get(*e)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What the summary task remembers between intervals.
#[derive(Debug, Default)]
pub struct Summary {
    shedding: bool,
}

impl Summary {
    /// Handles one finished interval: the gauge, state-change lines, the summary line.
    /// Returns the lines it logged (for tests).
    pub fn interval(&mut self, i: &Interval, every: Duration) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(share) = i.classified_share() {
            metrics::gauge!("router_classified_ratio").set(share);
        }
        let shed = i.get(Event::FailOpenShed) > 0;
        if shed != self.shedding {
            self.shedding = shed;
            let line = if shed {
                "classifier admission started shedding: requests over its limit go to the default model at once"
            } else {
                "classifier admission stopped shedding"
            };
            tracing::info!("{line}");
            lines.push(line.to_string());
        }
        if i.troubled() {
            let share = i
                .classified_share()
                .map(|s| format!("{:.1}%", s * 100.0))
                .unwrap_or_else(|| "-".into());
            let line = format!(
                "last {}s: {} (classified share {share})",
                every.as_secs_f64(),
                i.describe()
            );
            tracing::warn!(classified_share = %share, "{line}");
            lines.push(line);
        }
        lines
    }
}

/// Every `every`: one interval handled. Runs until the task is aborted.
pub async fn run(every: Duration) {
    let mut summary = Summary::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        summary.interval(&Interval::take(), every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(events: &[(Event, u64)]) -> Interval {
        let mut i = Interval::default();
        for (e, n) in events {
            i.counts[*e as usize] += n;
        }
        i
    }

    #[test]
    fn one_line_per_interval_and_shedding_logged_on_change_only() {
        let mut s = Summary::default();
        let every = Duration::from_secs(10);
        let quiet = interval(&[(Event::Classified, 100)]);
        assert!(s.interval(&quiet, every).is_empty(), "nothing to say");
        let busy = interval(&[
            (Event::Classified, 70),
            (Event::FailOpenShed, 20),
            (Event::FailOpenTimeout, 10),
        ]);
        let lines = s.interval(&busy, every);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("started shedding"));
        assert!(
            lines[1].contains("fail_open_shed=20")
                && lines[1].contains("fail_open_timeout=10")
                && lines[1].contains("70.0%"),
            "{lines:?}"
        );
        let lines = s.interval(&busy, every);
        assert_eq!(lines.len(), 1, "shedding goes on: no second state line");
        let lines = s.interval(&quiet, every);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("stopped shedding"));
    }

    #[test]
    fn classified_share_counts_every_fail_open_reason() {
        let i = interval(&[
            (Event::Classified, 3),
            (Event::FailOpenCircuitOpen, 1),
            (Event::UpstreamRetry, 5),
        ]);
        assert_eq!(i.classified_share(), Some(0.75));
        assert_eq!(Interval::default().classified_share(), None);
        assert_eq!(Event::fail_open("shed"), Event::FailOpenShed);
        assert_eq!(Event::fail_open("rejected"), Event::FailOpenOther);
    }
}
