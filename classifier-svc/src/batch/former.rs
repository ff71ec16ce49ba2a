//! The queue owner: takes requests in, drops dead ones, forms length-grouped batches under the
//! token budget, and pads the next batch while the inference thread runs the current one.
//!
//! Deadline-aware: from a running estimate of batch time (`estimate`), counting the time until
//! the inference thread is free, the batch is the one that gets the most requests done by their
//! deadlines (`on_time_batch`): smaller when a bigger one would make the earliest members late,
//! bigger when capping would only push the rest past their deadlines in the next batch. A
//! request that cannot make its deadline even alone is answered DEADLINE_EXCEEDED before any
//! inference is spent on it (while a batch runs; an idle model always runs something, which
//! keeps the estimate honest).

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::estimate::Estimator;
use super::{BatchConfig, Msg, Request};
use crate::error::Error;
use crate::metrics as m;
use semroute_encoder::{Model, Prepared};

pub(crate) struct Formed {
    pub requests: Vec<Request>,
    pub prepared: Prepared,
}

pub(crate) fn run(model: Arc<Model>, cfg: BatchConfig, rx: Receiver<Msg>, out: SyncSender<Formed>) {
    let labels = [("model", model.meta.id.clone())];
    let mut pending: Vec<Request> = Vec::new();
    // Batches handed to the inference thread and not finished: at most one running + one ready.
    let mut in_flight = 0usize;
    // Estimated durations of the batches handed over (running first), and when the running one
    // started: together, when the inference thread will be free.
    let mut handed: VecDeque<Duration> = VecDeque::new();
    let mut running_since = Instant::now();
    let mut est = Estimator::default();
    let mut open = true;
    while open || !pending.is_empty() || in_flight > 0 {
        // Decide how long we may block for the next message.
        let wait = if pending.is_empty() || in_flight >= 2 {
            None // block
        } else if in_flight == 0 {
            let oldest = pending
                .iter()
                .map(|r| r.enqueued)
                .min()
                .unwrap_or_else(Instant::now);
            let left = cfg.max_wait.saturating_sub(oldest.elapsed());
            if is_full(&pending, &cfg) || left.is_zero() {
                Some(Duration::ZERO)
            } else {
                Some(left)
            }
        } else if is_full(&pending, &cfg) {
            Some(Duration::ZERO)
        } else {
            None // wait for the running batch to finish or for more requests
        };
        let first = match wait {
            _ if !open => None,
            None => match rx.recv() {
                Ok(msg) => Some(msg),
                Err(_) => {
                    open = false;
                    None
                }
            },
            Some(d) if d.is_zero() => None,
            Some(d) => match rx.recv_timeout(d) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    open = false;
                    None
                }
            },
        };
        let mut handle = |msg: Msg, pending: &mut Vec<Request>| match msg {
            Msg::Request(r) => {
                metrics::gauge!(m::QUEUE_SIZE, &labels).increment(1.0);
                pending.push(r);
            }
            Msg::Idle { tokens, took } => {
                in_flight = in_flight.saturating_sub(1);
                if tokens > 0 {
                    est.observe(tokens, took);
                }
                handed.pop_front();
                running_since = Instant::now();
            }
        };
        if let Some(msg) = first {
            handle(msg, &mut pending);
        }
        while let Ok(msg) = rx.try_recv() {
            handle(msg, &mut pending);
        }
        if !open && in_flight > 0 && pending.is_empty() {
            // Senders are gone; wait for the running batches to drain, then stop.
            break;
        }

        drop_dead(&mut pending, &labels);
        if pending.is_empty() {
            continue;
        }
        let form_now = match in_flight {
            0 => {
                let oldest = pending
                    .iter()
                    .map(|r| r.enqueued)
                    .min()
                    .unwrap_or_else(Instant::now);
                is_full(&pending, &cfg) || oldest.elapsed() >= cfg.max_wait || !open
            }
            1 => is_full(&pending, &cfg),
            _ => false,
        };
        if !form_now {
            continue;
        }
        let now = Instant::now();
        let free_at = (running_since + handed.iter().sum::<Duration>()).max(now);
        let start = if in_flight == 0 { now } else { free_at };
        // Predicted misses are dropped only while a batch runs: an idle model always runs at
        // least the request due first, so the estimate keeps learning (a slowdown that has
        // passed would otherwise be remembered for good, every request dropped on its word).
        if in_flight > 0 {
            drop_doomed(&mut pending, &est, start, &labels);
            if pending.is_empty() {
                continue;
            }
        }
        let mut requests = take_batch(&mut pending, &cfg, &est, start);
        let estimate = est
            .estimate(
                requests.len(),
                requests.iter().map(|r| r.ids.len()).max().unwrap_or(1),
            )
            .unwrap_or_default();
        let shapes: Vec<Vec<f32>> = if requests.iter().any(|r| !r.shape.is_empty()) {
            requests
                .iter_mut()
                .map(|r| std::mem::take(&mut r.shape))
                .collect()
        } else {
            Vec::new()
        };
        let seqs: Vec<&[u32]> = requests.iter().map(|r| r.ids.as_slice()).collect();
        match model.prepare_with(&seqs, shapes) {
            Ok(prepared) => {
                if in_flight == 0 {
                    running_since = Instant::now();
                }
                in_flight += 1;
                handed.push_back(estimate);
                if let Err(e) = out.send(Formed { requests, prepared }) {
                    for r in e.0.requests {
                        let _ = r
                            .reply
                            .send(Err(Error::Unavailable("inference thread stopped".into())));
                    }
                    return;
                }
            }
            Err(e) => {
                metrics::gauge!(m::QUEUE_SIZE, &labels).decrement(requests.len() as f64);
                for r in requests {
                    let _ = r
                        .reply
                        .send(Err(Error::Internal(format!("batch preparation: {e}"))));
                }
            }
        }
    }
}

fn is_full(pending: &[Request], cfg: &BatchConfig) -> bool {
    pending.len() >= cfg.max_batch_size
        || pending.iter().map(|r| r.ids.len()).sum::<usize>() >= cfg.max_batch_tokens
}

/// Removes requests whose caller went away or whose deadline passed (answering the latter).
fn drop_dead(pending: &mut Vec<Request>, labels: &[(&'static str, String); 1]) {
    let now = Instant::now();
    // In place: the common case (nothing dead) allocates nothing on this per-message path.
    let dead = pending.extract_if(.., |r| {
        r.reply.is_closed() || r.deadline.is_some_and(|d| d <= now)
    });
    answer_dropped(dead, now, labels, "deadline");
}

/// Counts dropped requests (`cancelled` when the caller left, else `reason`), answers the
/// callers still there DEADLINE_EXCEEDED, and takes them off the queue gauge.
fn answer_dropped(
    dropped: impl Iterator<Item = Request>,
    now: Instant,
    labels: &[(&'static str, String); 1],
    reason: &'static str,
) {
    let mut n = 0usize;
    for r in dropped {
        n += 1;
        let reason = if r.reply.is_closed() {
            "cancelled"
        } else {
            reason
        };
        metrics::counter!(m::DROPPED, "reason" => reason, "model" => labels[0].1.clone())
            .increment(1);
        let waited = now.saturating_duration_since(r.enqueued);
        let _ = r.reply.send(Err(Error::DeadlineExceeded(waited)));
    }
    if n > 0 {
        metrics::gauge!(m::QUEUE_SIZE, labels).decrement(n as f64);
    }
}

/// Whether `r`, run alone from `start`, would finish by `by` (true while nothing is measured).
fn alone_by(r: &Request, est: &Estimator, start: Instant, by: Instant) -> bool {
    est.estimate(1, r.ids.len()).is_none_or(|t| start + t <= by)
}

/// Answers DEADLINE_EXCEEDED, before any inference, the requests that cannot finish by their
/// deadline even in a batch of their own starting at `start`.
fn drop_doomed(
    pending: &mut Vec<Request>,
    est: &Estimator,
    start: Instant,
    labels: &[(&'static str, String); 1],
) {
    let doomed = pending.extract_if(.., |r| {
        r.deadline.is_some_and(|d| !alone_by(r, est, start, d))
    });
    answer_dropped(doomed, start, labels, "would_miss");
}

/// A request without a deadline is served as if it had this one from its arrival (so requests
/// with deadlines cannot starve it).
const NO_DEADLINE_BUDGET: Duration = Duration::from_secs(1);

fn due(r: &Request) -> Instant {
    r.deadline.unwrap_or(r.enqueued + NO_DEADLINE_BUDGET)
}

/// Picks the next batch. Without deadlines: the oldest request plus the requests closest to it
/// in length, growing while the batch stays within `max_batch_size` and the padded-token budget.
/// With deadlines (and a batch time known): see `on_time_batch`.
fn take_batch(
    pending: &mut Vec<Request>,
    cfg: &BatchConfig,
    est: &Estimator,
    start: Instant,
) -> Vec<Request> {
    if pending.iter().any(|r| r.deadline.is_some()) && est.estimate(1, 1).is_some() {
        return on_time_batch(pending, cfg, est, start);
    }
    length_window(pending, cfg)
}

/// The batch that gets the most requests done by their deadlines. Requests in order of due
/// time; for each prefix that fits the size and token limits, the batch started at `start` would
/// finish at `start + estimate(rows, longest)`, and the members due after that are on time. The
/// prefix with the most on-time members is taken (the longest of equals): a small batch when a
/// bigger one would make the earliest ones late, a big one when capping it would only make the
/// rest late in the next batch (capping then costs throughput and every deadline after it).
/// Members that will be late anyway stay in it: they are dropped as `would_miss` the next time a
/// batch is formed while this one runs, or answered late.
fn on_time_batch(
    pending: &mut Vec<Request>,
    cfg: &BatchConfig,
    est: &Estimator,
    start: Instant,
) -> Vec<Request> {
    pending.sort_by_key(|r| (due(r), r.enqueued));
    // Requests that cannot make it even alone go last (they are dropped or run when nothing
    // else can be): serving the most urgent first when they are already lost is how an EDF
    // queue makes every request late under overload.
    let lost = pending
        .extract_if(.., |r| !alone_by(r, est, start, due(r)))
        .collect::<Vec<_>>();
    if pending.is_empty() {
        // Nothing can make it: run the one due first anyway (the estimate may be stale).
        *pending = lost;
        return pending.drain(..1).collect();
    }
    let (mut best, mut best_on_time) = (1usize, 0usize);
    let mut longest = 0usize;
    for k in 1..=pending.len().min(cfg.max_batch_size) {
        longest = longest.max(pending[k - 1].ids.len().max(1));
        if k > 1 && k * longest > cfg.max_batch_tokens {
            break;
        }
        let Some(t) = est.estimate(k, longest) else {
            break;
        };
        let finish = start + t;
        let on_time = pending[..k].iter().filter(|r| due(r) >= finish).count();
        if on_time >= best_on_time {
            (best, best_on_time) = (k, on_time);
        }
    }
    let batch = pending.drain(..best).collect();
    pending.extend(lost);
    batch
}

fn length_window(pending: &mut Vec<Request>, cfg: &BatchConfig) -> Vec<Request> {
    pending.sort_by_key(|r| (r.ids.len(), r.enqueued));
    let anchor = pending
        .iter()
        .enumerate()
        .min_by_key(|(_, r)| (due(r), r.enqueued))
        .map(|(i, _)| i)
        .unwrap_or(0);
    let len = |i: usize| pending[i].ids.len().max(1);
    let (mut lo, mut hi) = (anchor, anchor); // inclusive window in length order
    loop {
        let count = hi - lo + 1;
        if count >= cfg.max_batch_size {
            break;
        }
        let down = (lo > 0).then(|| lo - 1);
        let up = (hi + 1 < pending.len()).then_some(hi + 1);
        let pick = match (down, up) {
            (Some(d), Some(u)) => {
                if len(anchor) - len(d) <= len(u) - len(anchor) {
                    d
                } else {
                    u
                }
            }
            (Some(d), None) => d,
            (None, Some(u)) => u,
            (None, None) => break,
        };
        let longest = len(hi).max(len(pick));
        if (count + 1) * longest > cfg.max_batch_tokens {
            break;
        }
        if pick < lo {
            lo = pick
        } else {
            hi = pick
        }
    }
    pending.drain(lo..=hi).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn req(len: usize, age_ms: u64) -> Request {
        let (reply, rx) = oneshot::channel();
        std::mem::forget(rx);
        Request {
            ids: vec![1; len],
            shape: Vec::new(),
            enqueued: Instant::now() - Duration::from_millis(age_ms),
            deadline: None,
            reply,
        }
    }

    #[test]
    fn groups_similar_lengths_around_the_oldest() {
        let cfg = BatchConfig {
            max_batch_size: 3,
            max_batch_tokens: 10_000,
            max_wait: Duration::ZERO,
        };
        let mut p = vec![
            req(100, 1),
            req(10, 50),
            req(12, 2),
            req(11, 3),
            req(200, 4),
        ];
        let b = take_batch(&mut p, &cfg, &Estimator::default(), Instant::now());
        let mut lens: Vec<_> = b.iter().map(|r| r.ids.len()).collect();
        lens.sort();
        assert_eq!(lens, vec![10, 11, 12]);
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn respects_token_budget_but_never_starves_a_long_text() {
        let cfg = BatchConfig {
            max_batch_size: 64,
            max_batch_tokens: 100,
            max_wait: Duration::ZERO,
        };
        let mut p = vec![req(300, 10), req(20, 1), req(20, 1)];
        let b = take_batch(&mut p, &cfg, &Estimator::default(), Instant::now());
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].ids.len(), 300);
        let b = take_batch(&mut p, &cfg, &Estimator::default(), Instant::now());
        assert_eq!(b.len(), 2, "2 x 20 tokens fit in 100");
    }

    #[test]
    fn caps_a_batch_to_finish_by_the_earliest_deadline_and_drops_the_doomed() {
        let cfg = BatchConfig {
            max_batch_size: 32,
            max_batch_tokens: 100_000,
            max_wait: Duration::ZERO,
        };
        let mut est = Estimator::default();
        for _ in 0..5 {
            // 1 ms a padded token, nothing fixed.
            est.observe(10, Duration::from_millis(10));
            est.observe(40, Duration::from_millis(40));
        }
        let now = Instant::now();
        let with_deadline = |ms: u64| {
            let mut r = req(10, 1);
            r.deadline = Some(now + Duration::from_millis(ms));
            r
        };
        // Six 10-token texts due in 35 ms: three fit (30 ms), not six (60 ms).
        let mut p: Vec<_> = (0..6).map(|_| with_deadline(35)).collect();
        let b = take_batch(&mut p, &cfg, &est, now);
        assert_eq!(b.len(), 3);
        assert_eq!(p.len(), 3, "the rest wait for the next batch");
        // Due one after the other, 10 ms apart: capping would only make the later ones late
        // in the next batch; the batch that gets the most done on time is taken.
        let mut p: Vec<_> = (0..6).map(|i| with_deadline(60 + 10 * i)).collect();
        let b = take_batch(&mut p, &cfg, &est, now);
        assert_eq!(b.len(), 6, "all six finish at 60 ms, each by its deadline");
        // Without deadlines the batch is as big as the limits allow.
        let mut p: Vec<_> = (0..6).map(|_| req(10, 1)).collect();
        assert_eq!(take_batch(&mut p, &cfg, &est, now).len(), 6);
        // Starting 30 ms from now (a batch running), one due in 35 ms cannot make it.
        let labels = [("model", "t".to_string())];
        let mut p = vec![with_deadline(35), with_deadline(500)];
        drop_doomed(&mut p, &est, now + Duration::from_millis(30), &labels);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].deadline, Some(now + Duration::from_millis(500)));
    }

    #[test]
    fn drops_expired_and_cancelled() {
        let labels = [("model", "t".to_string())];
        let (reply, rx) = oneshot::channel();
        let mut expired = req(5, 10);
        expired.deadline = Some(Instant::now() - Duration::from_millis(1));
        expired.reply = reply;
        let (reply2, rx2) = oneshot::channel();
        let mut cancelled = req(5, 10);
        cancelled.reply = reply2;
        drop(rx2);
        let mut p = vec![expired, cancelled, req(5, 1)];
        drop_dead(&mut p, &labels);
        assert_eq!(p.len(), 1);
        assert!(matches!(
            rx.blocking_recv(),
            Ok(Err(Error::DeadlineExceeded(_)))
        ));
    }
}
