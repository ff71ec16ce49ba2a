//! Power of two choices, shared by the two places that balance (classifier replicas, backend
//! endpoints): two distinct random candidates, the one with fewer requests in flight wins.

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
