//! Admission in front of the classifier: an adaptive limit on Classify calls in flight (AIMD,
//! tower-acc's algorithm, as in Netflix's concurrency-limits). A call over the limit is refused
//! at once, so the request fails open now (reason `shed`) instead of queueing behind a busy
//! classifier, waiting out its deadline and making every other call late too. Quick answers grow
//! the limit by one; a slow answer, a missed deadline or RESOURCE_EXHAUSTED shrinks it. A dead
//! classifier (connection refused) is the circuit breaker's business, not this: such calls leave
//! the limit alone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tower_acc::{Aimd, Algorithm};

use crate::config::AdmissionConfig;

pub struct Admission {
    algorithm: Mutex<Aimd>,
    in_flight: AtomicUsize,
}

/// How a call that was let in ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered (how fast decides whether the limit grows or shrinks).
    Answered,
    /// Past its deadline, or the classifier said RESOURCE_EXHAUSTED.
    Busy,
    /// Says nothing about load (refused connection, bad text, caller went away).
    Ignored,
}

/// One admitted call; `finish` reports how it went. Dropped unfinished (the caller was
/// cancelled): it frees its slot and teaches the limit nothing.
pub struct Ticket<'a> {
    admission: &'a Admission,
    started: Instant,
    finished: bool,
}

impl Admission {
    /// `slow`: answers slower than this count as congestion.
    pub fn new(cfg: &AdmissionConfig, slow: Duration) -> Self {
        // Config validation keeps the bounds within what the builder accepts.
        let algorithm = Aimd::builder()
            .initial_limit(cfg.initial_limit)
            .min_limit(cfg.min_limit)
            .max_limit(cfg.max_limit)
            .backoff_ratio(cfg.backoff_ratio)
            .timeout(slow)
            .build();
        metrics::gauge!("router_classifier_concurrency_limit").set(cfg.initial_limit as f64);
        Self {
            algorithm: Mutex::new(algorithm),
            in_flight: AtomicUsize::new(0),
        }
    }

    pub fn limit(&self) -> usize {
        self.algorithm.lock().unwrap().max_concurrency()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A slot, or None when the limit is reached (shed this call).
    pub fn try_acquire(&self) -> Option<Ticket<'_>> {
        let limit = self.limit();
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(Ticket {
            admission: self,
            started: Instant::now(),
            finished: false,
        })
    }
}

impl Ticket<'_> {
    pub fn finish(mut self, outcome: Outcome) {
        self.finished = true;
        let a = self.admission;
        let in_flight = a.in_flight.fetch_sub(1, Ordering::AcqRel);
        if outcome == Outcome::Ignored {
            return;
        }
        let limit = {
            let mut alg = a.algorithm.lock().unwrap();
            alg.update(
                self.started.elapsed(),
                in_flight,
                outcome == Outcome::Busy,
                false,
            );
            alg.max_concurrency()
        };
        metrics::gauge!("router_classifier_concurrency_limit").set(limit as f64);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.admission.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(initial: usize) -> Admission {
        let cfg = AdmissionConfig {
            initial_limit: initial,
            min_limit: 1,
            max_limit: 64,
            ..Default::default()
        };
        Admission::new(&cfg, Duration::from_millis(40))
    }

    #[test]
    fn sheds_over_the_limit_and_frees_slots() {
        let a = admission(2);
        let t1 = a.try_acquire().unwrap();
        let t2 = a.try_acquire().unwrap();
        assert!(a.try_acquire().is_none(), "third call shed");
        drop(t1); // cancelled caller: slot freed, nothing learnt
        assert_eq!(a.limit(), 2);
        let t3 = a.try_acquire().unwrap();
        t2.finish(Outcome::Ignored);
        t3.finish(Outcome::Ignored);
        assert_eq!(a.in_flight(), 0);
    }

    #[test]
    fn busy_shrinks_and_quick_answers_grow_it_back() {
        let a = admission(10);
        for _ in 0..5 {
            a.try_acquire().unwrap().finish(Outcome::Busy);
        }
        let shrunk = a.limit();
        assert!(shrunk < 10, "{shrunk}");
        // Grows only while it is used: hold enough calls to count as loaded.
        for _ in 0..20 {
            let held: Vec<_> = (0..a.limit()).filter_map(|_| a.try_acquire()).collect();
            for t in held {
                t.finish(Outcome::Answered);
            }
        }
        assert!(a.limit() > shrunk, "{} > {shrunk}", a.limit());
    }

    #[test]
    fn a_dead_classifier_leaves_the_limit_alone() {
        let a = admission(8);
        for _ in 0..20 {
            a.try_acquire().unwrap().finish(Outcome::Ignored);
        }
        assert_eq!(a.limit(), 8);
    }
}
