//! Power of two choices, shared by the two places that balance (classifier replicas, backend
//! endpoints): two distinct random candidates, the one with fewer requests in flight wins. And
//! rendezvous hashing with bounded load, for a session's turns to find the endpoint that holds
//! its prefix cache.

use rand::Rng;

/// Among `0..n` minus `skip`, those `usable` (if none is, all of them: a call is better tried
/// than refused), the less loaded of two random picks.
pub fn pick(
    n: usize,
    skip: impl Fn(usize) -> bool,
    usable: impl Fn(usize) -> bool,
    load: impl Fn(usize) -> usize,
) -> Option<usize> {
    let fresh: Vec<usize> = (0..n).filter(|&i| !skip(i)).collect();
    let ok: Vec<usize> = fresh.iter().copied().filter(|&i| usable(i)).collect();
    let set = if ok.is_empty() { fresh } else { ok };
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

/// Rendezvous hashing with bounded load: the candidates (as for `pick`) ranked by a hash of
/// (`key`, `id(i)`), the first whose load, this request included, stays within `bound` times
/// the mean (also counting this request; at least one). A key keeps its candidate while that
/// one is usable and not overloaded, and when one goes away only its keys move. None over the
/// bound: `pick`'s choice.
pub fn pick_affine(
    n: usize,
    skip: impl Fn(usize) -> bool,
    usable: impl Fn(usize) -> bool,
    load: impl Fn(usize) -> usize,
    key: u64,
    id: impl Fn(usize) -> u64,
    bound: f64,
) -> Option<usize> {
    let fresh: Vec<usize> = (0..n).filter(|&i| !skip(i)).collect();
    let ok: Vec<usize> = fresh.iter().copied().filter(|&i| usable(i)).collect();
    let mut set = if ok.is_empty() { fresh } else { ok };
    if set.len() <= 1 {
        return set.first().copied();
    }
    let total: usize = set.iter().map(|&i| load(i)).sum();
    let cap = (bound * (total + 1) as f64 / set.len() as f64)
        .ceil()
        .max(1.0) as usize;
    set.sort_by_key(|&i| std::cmp::Reverse(mix(key ^ mix(id(i)))));
    if let Some(&i) = set.iter().find(|&&i| load(i) < cap) {
        return Some(i);
    }
    pick(n, skip, usable, load)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_is_stable_spreads_keys_and_yields_under_load() {
        let ids = |i: usize| (i as u64 + 1).wrapping_mul(0x9e3779b97f4a7c15);
        let idle = |_: usize| 0;
        // The same key, the same endpoint; keys spread over the endpoints.
        let mut per = [0usize; 4];
        for key in 0..4000u64 {
            let a = pick_affine(4, |_| false, |_| true, idle, key, ids, 1.25).unwrap();
            let b = pick_affine(4, |_| false, |_| true, idle, key, ids, 1.25).unwrap();
            assert_eq!(a, b);
            per[a] += 1;
        }
        assert!(per.iter().all(|&c| (800..1200).contains(&c)), "{per:?}");
        // Removing one endpoint moves only its keys.
        for key in 0..500u64 {
            let a = pick_affine(4, |_| false, |_| true, idle, key, ids, 1.25).unwrap();
            let b = pick_affine(4, |_| false, |i| i != 3, idle, key, ids, 1.25).unwrap();
            if a != 3 {
                assert_eq!(a, b);
            } else {
                assert_ne!(b, 3);
            }
        }
        // Over its bound, the key's endpoint yields to the next one.
        let key = 7;
        let home = pick_affine(2, |_| false, |_| true, idle, key, ids, 1.25).unwrap();
        let busy = |i: usize| if i == home { 10 } else { 0 };
        let moved = pick_affine(2, |_| false, |_| true, busy, key, ids, 1.25).unwrap();
        assert_ne!(moved, home);
        // Skipped (already tried): the next in the key's order.
        let next = pick_affine(2, |i| i == home, |_| true, idle, key, ids, 1.25).unwrap();
        assert_ne!(next, home);
        assert_eq!(
            pick_affine(0, |_| false, |_| true, idle, key, ids, 1.25),
            None
        );
    }
}
