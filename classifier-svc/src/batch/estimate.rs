//! How long a batch will take: a running fit of inference time against padded tokens
//! (`time = fixed + per_token * rows * longest`), exponentially weighted so it follows the
//! machine's current speed (other processes on the cores, a slowed model). The former uses it to
//! cap a batch so that it finishes within its members' earliest deadline.

use std::time::Duration;

/// Weight kept by older batches at each new one (about the last 10-20 batches count, so a
/// slowdown or its end shows within a few batches).
const DECAY: f64 = 0.9;

#[derive(Debug, Clone, Default)]
pub struct Estimator {
    w: f64,
    x: f64,
    y: f64,
    xx: f64,
    xy: f64,
    samples: u64,
}

impl Estimator {
    /// A finished batch of `tokens` padded tokens took `took`.
    pub fn observe(&mut self, tokens: usize, took: Duration) {
        let (x, y) = (tokens.max(1) as f64, took.as_secs_f64() * 1e6);
        self.w = self.w * DECAY + 1.0;
        self.x = self.x * DECAY + x;
        self.y = self.y * DECAY + y;
        self.xx = self.xx * DECAY + x * x;
        self.xy = self.xy * DECAY + x * y;
        self.samples += 1;
    }

    /// (fixed µs, µs per padded token), or None before the first batch.
    fn fit(&self) -> Option<(f64, f64)> {
        if self.samples == 0 {
            return None;
        }
        let (mx, my) = (self.x / self.w, self.y / self.w);
        let var = self.xx / self.w - mx * mx;
        let cov = self.xy / self.w - mx * my;
        // Too little spread in batch sizes to separate the two terms (or a noisy negative
        // slope): assume half the time is fixed, as measured for small BERT batches on CPU
        // (MiniLM, 21 tokens: batch 1 4.2 ms, batch 8 24.8 ms; classifier-svc/BENCH.md). Without
        // some fixed share a model that has only run single texts would never batch: two would
        // always look twice as slow as one.
        if var <= mx * mx * 1e-3 || cov <= 0.0 {
            return Some((0.5 * my, 0.5 * my / mx));
        }
        let per_token = cov / var;
        let fixed = my - per_token * mx;
        if fixed < 0.0 {
            return Some((0.0, my / mx));
        }
        Some((fixed, per_token))
    }

    /// Expected time of a batch of `rows` texts padded to `longest` tokens; None before any
    /// batch ran (then the former sends one text, which measures).
    pub fn estimate(&self, rows: usize, longest: usize) -> Option<Duration> {
        let (fixed, per_token) = self.fit()?;
        let us = fixed + per_token * (rows * longest.max(1)) as f64;
        Some(Duration::from_secs_f64(us.max(0.0) / 1e6))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_fixed_cost_and_cost_per_token() {
        let mut e = Estimator::default();
        assert!(e.estimate(1, 10).is_none());
        // 2 ms + 10 µs a token.
        for tokens in [10, 40, 80, 160, 320, 640, 20, 200] {
            let t = Duration::from_micros(2000 + 10 * tokens as u64);
            e.observe(tokens, t);
        }
        let got = e.estimate(32, 20).unwrap().as_micros() as i64;
        assert!((got - (2000 + 6400)).abs() < 50, "{got}");
    }

    #[test]
    fn one_size_only_still_batches_and_follows_a_slowdown() {
        let mut e = Estimator::default();
        for _ in 0..10 {
            e.observe(100, Duration::from_millis(5));
        }
        assert_eq!(e.estimate(1, 100).unwrap().as_millis(), 5);
        let two = e.estimate(2, 100).unwrap();
        assert!(
            two < Duration::from_millis(10),
            "a batch of two must look cheaper than two batches, or batches never grow: {two:?}"
        );
        for _ in 0..30 {
            e.observe(100, Duration::from_millis(50));
        }
        assert!(e.estimate(1, 100).unwrap() > Duration::from_millis(40));
        for _ in 0..30 {
            e.observe(100, Duration::from_millis(5));
        }
        assert!(
            e.estimate(1, 100).unwrap() < Duration::from_millis(7),
            "the end of a slowdown shows within a few dozen batches"
        );
    }
}
