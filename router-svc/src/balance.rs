//! Power of two choices, shared by the two places that balance (classifier replicas, backend
//! endpoints): two distinct random candidates, the less loaded wins (calls in flight for
//! classifier replicas, the load score of `upstream/load.rs` for backends). And
//! for sessions, whose turns must find the endpoint that holds their prefix cache: placement on
//! the least loaded endpoint, kept under a load bound, with rendezvous hashing as the order
//! every replica agrees on when a session's endpoint is over the bound or not known.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;

/// `0..n` minus `skip`, those `usable` (if none is, all of them: a call is better tried than
/// refused).
fn candidates(
    n: usize,
    skip: impl Fn(usize) -> bool,
    usable: impl Fn(usize) -> bool,
) -> Vec<usize> {
    let fresh: Vec<usize> = (0..n).filter(|&i| !skip(i)).collect();
    let ok: Vec<usize> = fresh.iter().copied().filter(|&i| usable(i)).collect();
    if ok.is_empty() {
        fresh
    } else {
        ok
    }
}

/// Among the candidates (`candidates`), the less loaded of two random picks.
pub fn pick<K: PartialOrd>(
    n: usize,
    skip: impl Fn(usize) -> bool,
    usable: impl Fn(usize) -> bool,
    load: impl Fn(usize) -> K,
) -> Option<usize> {
    let set = candidates(n, skip, usable);
    match set.len() {
        0 => None,
        1 => Some(set[0]),
        n => {
            let mut rng = rand::rng();
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (set[a], set[b]);
            Some(if load(b) < load(a) { b } else { a })
        }
    }
}

/// SplitMix64's finaliser: a well-mixed 64-bit hash of one word.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

/// The least of the candidates (as for `pick`) by `score`, ties broken at random. For what
/// is decided once and kept (a session's endpoint), where a full look pays.
pub fn pick_least<K: PartialOrd + Copy>(
    n: usize,
    skip: impl Fn(usize) -> bool,
    usable: impl Fn(usize) -> bool,
    score: impl Fn(usize) -> K,
) -> Option<usize> {
    // Each score read once: loads move under other threads, and a second read could leave
    // no candidate at the least.
    let scored: Vec<(usize, K)> = candidates(n, skip, usable)
        .into_iter()
        .map(|i| (i, score(i)))
        .collect();
    let least = scored
        .iter()
        .map(|&(_, k)| k)
        .reduce(|a, b| if b < a { b } else { a })?;
    let set: Vec<usize> = scored
        .iter()
        .filter(|&&(_, k)| k <= least)
        .map(|&(i, _)| i)
        .collect();
    set.get(rand::rng().random_range(0..set.len().max(1)))
        .or(scored.first().map(|(i, _)| i))
        .copied()
}

/// A count that fades (exponentially, with time constant `tau`): what happened lately, such
/// as the sessions an endpoint was given, without a window to keep.
#[derive(Debug)]
pub struct Fading {
    tau: Duration,
    at: Mutex<(f64, Instant)>,
}

impl Fading {
    pub fn new(tau: Duration) -> Self {
        Self {
            tau,
            at: Mutex::new((0.0, Instant::now())),
        }
    }

    fn decayed(&self, v: f64, since: Instant, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(since).as_secs_f64();
        v * (-dt / self.tau.as_secs_f64().max(1e-3)).exp()
    }

    pub fn add(&self, x: f64) {
        let now = Instant::now();
        let mut g = self.at.lock().expect("fading lock");
        *g = (self.decayed(g.0, g.1, now) + x, now);
    }

    pub fn get(&self) -> f64 {
        let g = self.at.lock().expect("fading lock");
        self.decayed(g.0, g.1, Instant::now())
    }
}

/// A session's endpoint with bounded load. The cap is `bound` times the mean load of the
/// candidates (as for `pick`), this request included, the mean at least one. `placed` (the
/// session's endpoint) is kept while it is usable, not skipped and under the cap; otherwise
/// the first in the order of a hash of (`key`, `id(i)`) under the cap, so that replicas that
/// send a session elsewhere send it to the same place, and when an endpoint goes away only its
/// sessions move. Every candidate over the cap: `pick`'s choice.
#[allow(clippy::too_many_arguments)]
pub fn pick_affine(
    n: usize,
    skip: impl Fn(usize) -> bool,
    usable: impl Fn(usize) -> bool,
    load: impl Fn(usize) -> f64,
    key: u64,
    id: impl Fn(usize) -> u64,
    bound: f64,
    placed: Option<usize>,
) -> Option<usize> {
    let mut set = candidates(n, &skip, &usable);
    if set.len() <= 1 {
        return set.first().copied();
    }
    // The mean counts this request, and never less than one request per endpoint: an endpoint
    // with a request or two in flight is not a hot spot worth a session's prefix cache.
    let total: f64 = set.iter().map(|&i| load(i)).sum();
    let mean = ((total + 1.0) / set.len() as f64).max(1.0);
    let cap = (bound * mean).ceil();
    if let Some(p) = placed {
        if set.contains(&p) && load(p) < cap {
            return Some(p);
        }
    }
    set.sort_by_key(|&i| std::cmp::Reverse(mix(key ^ mix(id(i)))));
    if let Some(&i) = set.iter().find(|&&i| load(i) < cap) {
        return Some(i);
    }
    pick(n, skip, usable, load)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Option<usize> = None;

    /// Loads that move while the choice is made (other threads' requests), or that are not
    /// numbers, still give an endpoint: a score is read once per candidate.
    #[test]
    fn the_least_loaded_pick_survives_loads_that_move_or_are_not_numbers() {
        let calls = std::cell::Cell::new(0usize);
        let rising = |_: usize| {
            calls.set(calls.get() + 1);
            calls.get()
        };
        for _ in 0..100 {
            assert!(pick_least(4, |_| false, |_| true, rising).is_some());
        }
        assert!(pick_least(3, |_| false, |_| true, |_| f64::NAN).is_some());
        assert_eq!(
            pick_least(3, |i| i < 3, |_| true, |_| 0),
            None,
            "all tried: none"
        );
    }

    #[test]
    fn affinity_is_stable_spreads_keys_and_yields_under_load() {
        let ids = |i: usize| (i as u64 + 1).wrapping_mul(0x9e3779b97f4a7c15);
        let idle = |_: usize| 0.0;
        // The same key, the same endpoint; keys spread over the endpoints.
        let mut per = [0usize; 4];
        for key in 0..4000u64 {
            let a = pick_affine(4, |_| false, |_| true, idle, key, ids, 1.25, H).unwrap();
            let b = pick_affine(4, |_| false, |_| true, idle, key, ids, 1.25, H).unwrap();
            assert_eq!(a, b);
            per[a] += 1;
        }
        assert!(per.iter().all(|&c| (800..1200).contains(&c)), "{per:?}");
        // Removing one endpoint moves only its keys.
        for key in 0..500u64 {
            let a = pick_affine(4, |_| false, |_| true, idle, key, ids, 1.25, H).unwrap();
            let b = pick_affine(4, |_| false, |i| i != 3, idle, key, ids, 1.25, H).unwrap();
            if a != 3 {
                assert_eq!(a, b);
            } else {
                assert_ne!(b, 3);
            }
        }
        // Over its bound, the key's endpoint yields to the next one.
        let key = 7;
        let home = pick_affine(2, |_| false, |_| true, idle, key, ids, 1.25, H).unwrap();
        let busy = |i: usize| if i == home { 10.0 } else { 0.0 };
        let moved = pick_affine(2, |_| false, |_| true, busy, key, ids, 1.25, H).unwrap();
        assert_ne!(moved, home);
        // Skipped (already tried): the next in the key's order.
        let next = pick_affine(2, |i| i == home, |_| true, idle, key, ids, 1.25, H).unwrap();
        assert_ne!(next, home);
        assert_eq!(
            pick_affine(0, |_| false, |_| true, idle, key, ids, 1.25, H),
            None
        );
    }

    #[test]
    fn a_placed_session_stays_until_its_endpoint_is_over_the_bound_and_placement_takes_the_least() {
        let ids = |i: usize| (i as u64 + 1).wrapping_mul(0x9e3779b97f4a7c15);
        let idle = |_: usize| 0.0;
        for key in 0..200u64 {
            let home = pick_affine(3, |_| false, |_| true, idle, key, ids, 1.25, H).unwrap();
            let placed = (home + 1) % 3;
            // Kept where it was placed, whatever its hash says.
            let a = pick_affine(3, |_| false, |_| true, idle, key, ids, 1.25, Some(placed));
            assert_eq!(a, Some(placed));
            // Over the bound (or gone): the hashed order, as every replica computes it.
            let busy = |i: usize| if i == placed { 9.0 } else { 1.0 };
            let moved = pick_affine(3, |_| false, |_| true, busy, key, ids, 1.25, Some(placed));
            assert_ne!(moved, Some(placed));
            let gone = pick_affine(
                3,
                |_| false,
                |i| i != placed,
                idle,
                key,
                ids,
                1.25,
                Some(placed),
            );
            assert_ne!(gone, Some(placed));
        }
        // Placement: the least by score, ties at random, skipped and unusable ones left out.
        let score = |i: usize| [(2, 0.0), (0, 3.0), (0, 1.0), (0, 1.0)][i];
        let mut seen = [0; 4];
        for _ in 0..200 {
            seen[pick_least(4, |_| false, |_| true, score).unwrap()] += 1;
        }
        assert_eq!(seen[0] + seen[1], 0, "{seen:?}");
        assert!(seen[2] > 50 && seen[3] > 50, "{seen:?}");
        assert_eq!(pick_least(4, |i| i == 3, |i| i != 2, score), Some(1));
        assert_eq!(pick_least(0, |_| false, |_| true, score), None);
    }

    #[test]
    fn a_fading_count_halves_in_tau_ln2() {
        let f = Fading::new(Duration::from_millis(100));
        let t0 = Instant::now();
        let half = t0 + Duration::from_secs_f64(0.1 * std::f64::consts::LN_2);
        assert!((f.decayed(4.0, t0, half) - 2.0).abs() < 1e-6);
        assert_eq!(f.decayed(4.0, half, t0), 4.0, "no growth backwards in time");
        f.add(1.0);
        f.add(1.0);
        assert!(f.get() > 1.5 && f.get() <= 2.0);
    }
}
