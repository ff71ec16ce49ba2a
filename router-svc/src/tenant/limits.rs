//! Per-key limits that every replica shares: requests and tokens per minute as GCRA (the
//! generic cell rate algorithm redis-cell uses: one "theoretical arrival time" per limit,
//! a full minute's allowance may come in one burst, then it refills evenly), checked and
//! charged together with reading the day's spend in one Lua script: one round trip a request.
//! After the response, `settle` corrects the token charge by the real `usage` (a refund or an
//! extra charge) and adds the spend. All keys of one tenant share the hash tag `{name}`, so
//! the scripts stay on one slot of a Redis Cluster.
//!
//! When Redis cannot be asked, the same algorithm runs in process (per replica: N replicas
//! then allow up to N times a limit), going on from the state Redis last reported (TATs and
//! spend), so an outage does not hand out a fresh minute.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use deadpool_redis::redis::Script;

use super::keys::KeyRecord;
use crate::store::Store;

const WINDOW_MS: f64 = 60_000.0;

/// Checks both limits, charges them when both pass, returns the day's spend.
/// KEYS: requests TAT, tokens TAT, spend. ARGV: rpm, tpm, tokens (0 = no limit).
/// Returns {allowed_req, rem_req, reset_req, retry_req, allowed_tok, rem_tok, reset_tok,
/// retry_tok, spend_micro_usd, requests TAT, tokens TAT} (TATs in ms since the epoch, for the
/// in-process fallback to go on from).
const ADMIT: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local window = 60000
local function gcra(key, limit, n)
  if limit <= 0 then return 1, 0, 0, 0, now, nil end
  if n > limit then n = limit end
  local interval = window / limit
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local new = tat + n * interval
  local allow_at = new - window
  if allow_at > now then
    return 0, math.floor((now + window - tat) / interval), math.ceil(tat - now), math.ceil(allow_at - now), tat, nil
  end
  return 1, math.floor((now + window - new) / interval), math.ceil(new - now), 0, tat, new
end
local ra, rrem, rreset, rretry, rtat, rnew = gcra(KEYS[1], tonumber(ARGV[1]), 1)
local ta, trem, treset, tretry, ttat, tnew = gcra(KEYS[2], tonumber(ARGV[2]), tonumber(ARGV[3]))
if ra == 1 and ta == 1 then
  if rnew then
    rtat = rnew
    redis.call('SET', KEYS[1], string.format('%.3f', rnew), 'PX', math.ceil(rnew - now) + 1)
  end
  if tnew then
    ttat = tnew
    redis.call('SET', KEYS[2], string.format('%.3f', tnew), 'PX', math.ceil(tnew - now) + 1)
  end
end
local spend = tonumber(redis.call('GET', KEYS[3]) or '0')
return {ra, rrem, rreset, rretry, ta, trem, treset, tretry, spend, math.floor(rtat), math.floor(ttat)}
"#;

/// Moves the tokens TAT by a correction (negative: a refund), the requests TAT by requests
/// admitted in process while Redis was away, and adds spend.
/// KEYS: tokens TAT, spend, requests TAT. ARGV: tpm, token delta, spend micro-USD, spend TTL
/// seconds, rpm, request delta.
const SETTLE: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local function move(key, limit, n)
  if limit <= 0 or n == 0 then return end
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local new = tat + n * 60000 / limit
  if new > now then
    redis.call('SET', key, string.format('%.3f', new), 'PX', math.ceil(new - now) + 1)
  else
    redis.call('DEL', key)
  end
end
move(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
move(KEYS[3], tonumber(ARGV[5]), tonumber(ARGV[6]))
local spend = tonumber(ARGV[3])
if spend > 0 then
  redis.call('INCRBY', KEYS[2], spend)
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
end
return 1
"#;

/// One limit's state for the response headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub limit: u64,
    pub remaining: u64,
    /// Until the allowance is whole again.
    pub reset_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Requests,
    Tokens,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub requests: Option<Window>,
    pub tokens: Option<Window>,
    /// The limit that refused, and in how long a retry can pass.
    pub limited: Option<(Which, u64)>,
    /// Spent today (UTC), before this request.
    pub spend_usd: f64,
    /// Decided in process (Redis unavailable or not configured).
    pub local: bool,
}

/// The GCRA step both implementations share: (allowed, remaining, reset ms, retry ms, new TAT).
fn gcra(tat: f64, now: f64, limit: u64, n: u64) -> (bool, u64, u64, u64, f64) {
    let n = n.min(limit) as f64;
    let interval = WINDOW_MS / limit as f64;
    let tat = tat.max(now);
    let new = tat + n * interval;
    let allow_at = new - WINDOW_MS;
    if allow_at > now {
        let rem = ((now + WINDOW_MS - tat) / interval).floor() as u64;
        (
            false,
            rem,
            (tat - now).ceil() as u64,
            (allow_at - now).ceil() as u64,
            tat,
        )
    } else {
        let rem = ((now + WINDOW_MS - new) / interval).floor() as u64;
        (true, rem, (new - now).ceil() as u64, 0, new)
    }
}

#[derive(Default)]
struct LocalState {
    req_tat: f64,
    tok_tat: f64,
    /// Spend known for `day`: Redis's last answer plus what was settled here since.
    day: u64,
    spend_micro: u64,
}

pub struct Limiter {
    redis: Option<Arc<Store>>,
    prefix: String,
    admit: Script,
    settle: Script,
    local: Mutex<HashMap<String, LocalState>>,
    /// Corrections not yet written to Redis, by tenant.
    pending: Mutex<HashMap<String, Pending>>,
    /// The flush task runs.
    flushing: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Pending {
    tpm: u64,
    rpm: u64,
    /// Token corrections from answers.
    delta: i64,
    spend_micro: u64,
    /// Admitted in process (Redis away): charged to Redis once it answers, so that the
    /// requests let through meanwhile are not let through again.
    local_requests: i64,
    local_tokens: i64,
}

const SETTLE_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Flushes the limiter's corrections every `SETTLE_EVERY` while it lives (a config reload
/// that replaces the tenant layer ends the task; at most one interval's corrections are lost).
async fn flush(limiter: std::sync::Weak<Limiter>) {
    loop {
        tokio::time::sleep(SETTLE_EVERY).await;
        let Some(l) = limiter.upgrade() else { return };
        l.flush_once().await;
    }
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// A tenant's requests TAT, tokens TAT and spend of `day`, under one hash tag.
pub fn tenant_keys(prefix: &str, name: &str, day: u64) -> [String; 3] {
    let base = format!("{prefix}rl:{{{name}}}");
    [
        format!("{base}:req"),
        format!("{base}:tok"),
        format!("{base}:spend:{day}"),
    ]
}

/// Days since the epoch (UTC): budgets are per UTC day.
pub fn today() -> u64 {
    (now_ms() / 86_400_000.0) as u64
}

/// Why `admit` has no verdict.
#[derive(Debug)]
pub struct StoreUnavailable;

impl Limiter {
    pub fn new(redis: Option<Arc<Store>>, prefix: &str) -> Self {
        Self {
            redis,
            prefix: prefix.to_string(),
            admit: Script::new(ADMIT),
            settle: Script::new(SETTLE),
            local: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            flushing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn keys(&self, name: &str, day: u64) -> [String; 3] {
        tenant_keys(&self.prefix, name, day)
    }

    /// Checks and charges one request of `tokens` (estimated) for `rec`. Without an answer from
    /// Redis: in process when `fail_open`, else `StoreUnavailable`.
    pub async fn admit(
        self: &Arc<Self>,
        rec: &KeyRecord,
        tokens: u64,
        fail_open: bool,
    ) -> Result<Verdict, StoreUnavailable> {
        let (rpm, tpm) = (rec.rpm.unwrap_or(0), rec.tpm.unwrap_or(0));
        let day = today();
        if let Some(redis) = &self.redis {
            let [req, tok, spend] = self.keys(&rec.name, day);
            let mut inv = self.admit.key(req);
            inv.key(tok).key(spend).arg(rpm).arg(tpm).arg(tokens);
            let out = redis
                .call("limits", None, |mut c| async move {
                    inv.invoke_async::<Vec<i64>>(&mut c).await
                })
                .await;
            match out {
                Ok(v) if v.len() == 11 => {
                    let spend_micro = v[8].max(0) as u64;
                    self.remember(&rec.name, day, spend_micro, v[9] as f64, v[10] as f64);
                    metrics::gauge!("router_limits_local").set(0.0);
                    return Ok(verdict_from(rpm, tpm, &v, spend_micro, false));
                }
                Ok(_) => tracing::warn!("limits script answered an unexpected shape"),
                Err(_) => {}
            }
            if !fail_open {
                return Err(StoreUnavailable);
            }
            metrics::gauge!("router_limits_local").set(1.0);
            let v = self.admit_local(&rec.name, rpm, tpm, tokens, day);
            if v.limited.is_none() {
                self.add_pending(&rec.name, |p| {
                    p.rpm = rpm;
                    p.tpm = tpm;
                    p.local_requests += 1;
                    p.local_tokens += tokens as i64;
                });
            }
            return Ok(v);
        }
        Ok(self.admit_local(&rec.name, rpm, tpm, tokens, day))
    }

    /// What Redis last said of a tenant: where the in-process fallback starts from.
    fn remember(&self, name: &str, day: u64, spend_micro: u64, req_tat: f64, tok_tat: f64) {
        let mut local = self.local.lock().unwrap();
        let s = local.entry(name.to_string()).or_default();
        s.day = day;
        s.spend_micro = spend_micro;
        s.req_tat = req_tat;
        s.tok_tat = tok_tat;
    }

    fn admit_local(&self, name: &str, rpm: u64, tpm: u64, tokens: u64, day: u64) -> Verdict {
        let now = now_ms();
        let mut local = self.local.lock().unwrap();
        let s = local_state(&mut local, name, day);
        let r = (rpm > 0).then(|| gcra(s.req_tat, now, rpm, 1));
        let t = (tpm > 0).then(|| gcra(s.tok_tat, now, tpm, tokens));
        let pass = |x: &Option<(bool, u64, u64, u64, f64)>| x.is_none_or(|x| x.0);
        let mut v = vec![1i64, 0, 0, 0, 1, 0, 0, 0, s.spend_micro as i64, 0, 0];
        if let Some(r) = r {
            v[..4].copy_from_slice(&[r.0 as i64, r.1 as i64, r.2 as i64, r.3 as i64]);
        }
        if let Some(t) = t {
            v[4..8].copy_from_slice(&[t.0 as i64, t.1 as i64, t.2 as i64, t.3 as i64]);
        }
        if pass(&r) && pass(&t) {
            if let Some(r) = r {
                s.req_tat = r.4;
            }
            if let Some(t) = t {
                s.tok_tat = t.4;
            }
        }
        verdict_from(rpm, tpm, &v, s.spend_micro, true)
    }

    /// After the response: `delta` tokens more (or fewer) than charged, `spend_micro` spent.
    /// Added up per tenant and written every `SETTLE_EVERY` (one script call per tenant per
    /// interval, not one per request: a second round trip a request doubled the cost of keys),
    /// so other replicas see a correction at most that much later.
    pub fn settle(self: &Arc<Self>, rec: &KeyRecord, delta: i64, spend_micro: u64) {
        let tpm = rec.tpm.unwrap_or(0);
        if (delta == 0 || tpm == 0) && spend_micro == 0 {
            return;
        }
        if self.redis.is_none() {
            self.settle_local(&rec.name, tpm, delta, spend_micro, today());
            return;
        }
        self.add_pending(&rec.name, |p| {
            p.tpm = tpm;
            p.delta += delta;
            p.spend_micro += spend_micro;
        });
    }

    fn add_pending(self: &Arc<Self>, name: &str, f: impl FnOnce(&mut Pending)) {
        let mut pending = self.pending.lock().unwrap();
        match pending.get_mut(name) {
            Some(p) => f(p),
            None => {
                let mut p = Pending::default();
                f(&mut p);
                pending.insert(name.to_string(), p);
            }
        }
        drop(pending);
        if !self
            .flushing
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            tokio::spawn(flush(Arc::downgrade(self)));
        }
    }

    /// Writes what `settle` added up; what Redis does not take goes to the in-process state.
    async fn flush_once(&self) {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap());
        let Some(redis) = &self.redis else { return };
        let day = today();
        for (name, p) in batch {
            let [req, tok, spend] = self.keys(&name, day);
            let mut inv = self.settle.key(tok);
            inv.key(spend)
                .key(req)
                .arg(p.tpm)
                .arg(p.delta + p.local_tokens)
                .arg(p.spend_micro)
                .arg(2 * 86_400)
                .arg(p.rpm)
                .arg(p.local_requests);
            let budget = Some(redis.timeout() * 4);
            let out = redis
                .call("settle", budget, |mut c| async move {
                    inv.invoke_async::<i64>(&mut c).await
                })
                .await;
            if out.is_err() {
                self.settle_local(&name, p.tpm, p.delta, p.spend_micro, day);
                // Charged here already; kept for Redis.
                if p.local_requests != 0 || p.local_tokens != 0 {
                    let mut pending = self.pending.lock().unwrap();
                    let q = pending.entry(name).or_default();
                    q.rpm = p.rpm;
                    q.tpm = p.tpm;
                    q.local_requests += p.local_requests;
                    q.local_tokens += p.local_tokens;
                }
            }
        }
    }

    fn settle_local(&self, name: &str, tpm: u64, delta: i64, spend_micro: u64, day: u64) {
        let now = now_ms();
        let mut local = self.local.lock().unwrap();
        let s = local_state(&mut local, name, day);
        if tpm > 0 {
            s.tok_tat = (s.tok_tat.max(now) + delta as f64 * WINDOW_MS / tpm as f64).max(now);
        }
        s.spend_micro += spend_micro;
    }
}

/// A tenant's in-process state, its spend reset when the UTC day changed.
fn local_state<'a>(
    local: &'a mut HashMap<String, LocalState>,
    name: &str,
    day: u64,
) -> &'a mut LocalState {
    let s = local.entry(name.to_string()).or_default();
    if s.day != day {
        s.day = day;
        s.spend_micro = 0;
    }
    s
}

fn verdict_from(rpm: u64, tpm: u64, v: &[i64], spend_micro: u64, local: bool) -> Verdict {
    let u = |i: usize| v[i].max(0) as u64;
    let window = |limit: u64, i: usize| {
        (limit > 0).then(|| Window {
            limit,
            remaining: u(i + 1).min(limit),
            reset_ms: u(i + 2),
        })
    };
    let limited = if v[0] == 0 {
        Some((Which::Requests, u(3)))
    } else if v[4] == 0 {
        Some((Which::Tokens, u(7)))
    } else {
        None
    };
    Verdict {
        requests: window(rpm, 0),
        tokens: window(tpm, 4),
        limited,
        spend_usd: spend_micro as f64 / 1e6,
        local,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(rpm: Option<u64>, tpm: Option<u64>) -> KeyRecord {
        KeyRecord {
            name: "t".into(),
            sha256: String::new(),
            models: vec![],
            rpm,
            tpm,
            budget_usd_per_day: None,
            created: 0,
        }
    }

    #[test]
    fn gcra_allows_a_minute_in_a_burst_then_refills_evenly() {
        let now = 1_000_000.0;
        let mut tat = 0.0;
        let mut passed = 0;
        for _ in 0..100 {
            let (ok, _, _, _, new) = gcra(tat, now, 60, 1);
            if ok {
                passed += 1;
                tat = new;
            }
        }
        assert_eq!(passed, 60);
        let (ok, rem, reset, retry, _) = gcra(tat, now, 60, 1);
        assert!(!ok);
        assert_eq!((rem, reset, retry), (0, 60_000, 1000));
        // One second later, one more passes.
        assert!(gcra(tat, now + 1000.0, 60, 1).0);
        assert!(!gcra(tat, now + 999.0, 60, 1).0);
    }

    #[tokio::test]
    async fn local_limits_hold_and_settle_refunds_tokens() {
        let l = Arc::new(Limiter::new(None, "t:"));
        let r = rec(Some(3), Some(1000));
        for i in 0..3 {
            let v = l.admit(&r, 100, true).await.unwrap();
            assert!(v.local && v.limited.is_none(), "{i}");
            assert_eq!(v.requests.unwrap().remaining, 2 - i);
        }
        let v = l.admit(&r, 100, true).await.unwrap();
        assert_eq!(v.limited.map(|x| x.0), Some(Which::Requests));

        let r = Arc::new(rec(None, Some(1000)));
        let mut r2 = (*r).clone();
        r2.name = "u".into();
        let v = l.admit(&r2, 900, true).await.unwrap();
        assert_eq!(v.tokens.unwrap().remaining, 100);
        assert_eq!(
            l.admit(&r2, 200, true).await.unwrap().limited.map(|x| x.0),
            Some(Which::Tokens)
        );
        // The answer used 500 tokens fewer than charged: they come back.
        l.settle_local("u", 1000, -500, 42, today());
        let v = l.admit(&r2, 200, true).await.unwrap();
        assert!(v.limited.is_none());
        assert_eq!(v.spend_usd, 42e-6);
    }

    /// The Lua scripts against a real redis-server: the same answers as the in-process
    /// algorithm, limits shared by two limiters (two replicas), the fallback going on from
    /// Redis's state when Redis dies.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_scripts_share_limits_and_the_fallback_goes_on_from_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut redis = loadtest::procs::Redis::start(dir.path());
        let store = || {
            Store::new(
                &redis.url(),
                1,
                std::time::Duration::from_millis(500),
                std::time::Duration::from_millis(100),
                "test",
                "test",
            )
            .unwrap()
        };
        let (s1, s2) = (store(), store());
        for s in [&s1, &s2] {
            for _ in 0..100 {
                if s.connection().is_some() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        let a = Arc::new(Limiter::new(Some(s1), "t:"));
        let b = Arc::new(Limiter::new(Some(s2), "t:"));
        let r = rec(Some(4), Some(1000));
        let mut passed = 0;
        for i in 0..8 {
            let l = if i % 2 == 0 { &a } else { &b };
            let v = l.admit(&r, 10, false).await.unwrap();
            assert!(!v.local);
            if let Some((which, retry_ms)) = v.limited {
                assert_eq!(which, Which::Requests);
                assert!(retry_ms > 10_000, "next slot in ~15 s");
            } else {
                passed += 1;
                assert_eq!(v.tokens.unwrap().remaining, 1000 - 10 * passed);
            }
        }
        assert_eq!(passed, 4, "4 a minute across both");
        // 30 tokens charged; the answers used 330: 300 more, and 7 micro-USD.
        a.settle(&r, 300, 7);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let r2 = rec(None, Some(1000));
        let v = b.admit(&r2, 1, false).await.unwrap();
        assert_eq!(v.spend_usd, 7e-6);
        let rem = v.tokens.unwrap().remaining;
        // 40 charged for the 4 that passed, 300 settled, 1 now; a few refilled since.
        assert!((659..=666).contains(&rem), "{rem}");
        // Redis dies: fail closed refuses, fail open goes on in process from Redis's state
        // (still over the requests limit, not a fresh minute).
        redis.proc.kill();
        assert!(a.admit(&r, 1, false).await.is_err());
        let v = a.admit(&r, 1, true).await.unwrap();
        assert!(v.local);
        assert_eq!(v.limited.map(|x| x.0), Some(Which::Requests));
    }
}
