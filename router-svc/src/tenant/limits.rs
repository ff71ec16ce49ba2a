//! Per-key limits that every replica shares: requests and tokens per minute as GCRA (the
//! generic cell rate algorithm redis-cell uses: one "theoretical arrival time" per limit,
//! a full minute's allowance may come in one burst, then it refills evenly), checked and
//! charged together with reading the day's spend in one Lua script. After the response,
//! `settle` corrects the token charge by the real `usage` (a refund or an extra charge) and
//! adds the spend. All keys of one tenant share the hash tag `{name}`, so the scripts stay on
//! one slot of a Redis Cluster.
//!
//! Grants: a replica that serves a key often takes a few requests' worth of its allowance in
//! one trip (a grant, sized to about `GRANT_SPAN` of this replica's own traffic for the key,
//! never more than 1/`GRANT_SHARE` of a limit) and admits from it in process until it runs
//! out or `GRANT_TTL` passes; what is left then goes back to Redis. A key seen once a second
//! gets grants of one: exactly one round trip a request, as without grants. A key at
//! thousands a second costs one trip per grant. A refusal is remembered until the retry time
//! Redis gave, so a client hammering past its limit is refused without asking Redis again.
//!
//! When Redis cannot be asked, the same algorithm runs in process (per replica: N replicas
//! then allow up to N times a limit), going on from the state Redis last reported (TATs and
//! spend), so an outage does not hand out a fresh minute.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use deadpool_redis::redis::Script;

use super::keys::KeyRecord;
use crate::store::Store;

const WINDOW_MS: f64 = 60_000.0;
/// A grant is given back (what is left of it) this long after it was taken.
const GRANT_TTL_MS: f64 = 250.0;
/// Grants grow (doubling) while they run out faster than this.
const GRANT_SPAN_MS: f64 = 100.0;
/// One grant holds at most this fraction of a limit (1/50: 2 %); a limit under 50 a minute
/// is granted one at a time.
const GRANT_SHARE: u64 = 50;

/// Gives back what a grant left (and charges what was admitted in process while Redis was
/// away: a negative "back"), then takes up to `want` (at least `need`) of each limit and
/// charges both when both pass; returns the day's spend.
/// KEYS: requests TAT, tokens TAT, spend.
/// ARGV: rpm, tpm (0 = no limit), requests back, tokens back, tokens needed, requests wanted,
/// tokens wanted (one request is always needed).
/// Returns {ok, granted, remaining, reset ms, retry ms} for requests then tokens, then
/// spend_micro_usd, requests TAT, tokens TAT (ms since the epoch, for the in-process
/// fallback to go on from).
const ADMIT: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local window = 60000
local function put(key, v)
  if v > now then
    redis.call('SET', key, string.format('%.3f', v), 'PX', math.ceil(v - now) + 1)
  else
    redis.call('DEL', key)
  end
end
-- ok, granted, remaining, reset, retry, TAT now, TAT if charged, TAT moved back
local function take(key, limit, back, need, want)
  if limit <= 0 then return 1, want, 0, 0, 0, now, nil, false end
  if need > limit then need = limit end
  if want < need then want = need end
  local interval = window / limit
  local tat = tonumber(redis.call('GET', key) or now)
  -- back < 0: admitted in process while Redis was away, charged now
  if back < 0 and tat < now then tat = now end
  tat = tat - back * interval
  if tat < now then tat = now end
  local avail = math.floor((now + window - tat) / interval + 1e-6)
  if avail < need then
    local retry = math.ceil(tat + need * interval - window - now)
    if retry < 1 then retry = 1 end
    return 0, 0, avail, math.ceil(tat - now), retry, tat, nil, back ~= 0
  end
  if want > avail then want = avail end
  local new = tat + want * interval
  return 1, want, avail - want, math.ceil(new - now), 0, tat, new, back ~= 0
end
local rok, rn, rrem, rreset, rretry, rtat, rnew, rback =
  take(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[3]), 1, tonumber(ARGV[6]))
local tok, tn, trem, treset, tretry, ttat, tnew, tback =
  take(KEYS[2], tonumber(ARGV[2]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[7]))
if rok == 1 and tok == 1 then
  if rnew then rtat = rnew; put(KEYS[1], rnew) end
  if tnew then ttat = tnew; put(KEYS[2], tnew) end
else
  if rback then put(KEYS[1], rtat) end
  if tback then put(KEYS[2], ttat) end
end
local spend = tonumber(redis.call('GET', KEYS[3]) or '0')
return {rok, rn, rrem, rreset, rretry, tok, tn, trem, treset, tretry, spend,
  math.floor(rtat), math.floor(ttat)}
"#;

/// Moves the tokens TAT by a correction (negative: a refund), the requests TAT by requests
/// admitted in process while Redis was away (negative: a grant's rest given back), and adds
/// spend.
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

/// One GCRA step, the one the Lua script takes: up to `want` (at least `need`) units.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Take {
    ok: bool,
    granted: u64,
    remaining: u64,
    reset_ms: u64,
    retry_ms: u64,
    /// The TAT after (charged when ok).
    tat: f64,
}

fn take(tat: f64, now: f64, limit: u64, need: u64, want: u64) -> Take {
    let need = need.min(limit);
    let want = want.max(need);
    let interval = WINDOW_MS / limit as f64;
    let tat = tat.max(now);
    let avail = ((now + WINDOW_MS - tat) / interval + 1e-6).floor().max(0.0) as u64;
    if avail < need {
        let retry = (tat + need as f64 * interval - WINDOW_MS - now)
            .ceil()
            .max(1.0);
        return Take {
            ok: false,
            granted: 0,
            remaining: avail,
            reset_ms: (tat - now).ceil() as u64,
            retry_ms: retry as u64,
            tat,
        };
    }
    let n = want.min(avail);
    let new = tat + n as f64 * interval;
    Take {
        ok: true,
        granted: n,
        remaining: avail - n,
        reset_ms: (new - now).ceil() as u64,
        retry_ms: 0,
        tat: new,
    }
}

/// Allowance taken from Redis and not used yet.
#[derive(Debug, Clone)]
struct Grant {
    /// The limits it was taken under (a changed key record starts afresh).
    rpm: u64,
    tpm: u64,
    at: f64,
    req_left: u64,
    tok_left: u64,
    /// Requests it served.
    used: u64,
    /// Redis's remaining after the grant, and when each limit is whole again (ms since the
    /// epoch): the headers of requests served from it.
    req_rem: u64,
    tok_rem: u64,
    req_reset_at: f64,
    tok_reset_at: f64,
}

impl Grant {
    fn serves(&self, rpm: u64, tpm: u64, need: u64, now: f64) -> bool {
        self.rpm == rpm
            && self.tpm == tpm
            && now < self.at + GRANT_TTL_MS
            && (rpm == 0 || self.req_left >= 1)
            && (tpm == 0 || self.tok_left >= need.min(tpm))
    }

    /// What is left, to give back: (requests, tokens).
    fn rest(&self) -> (u64, u64) {
        (
            if self.rpm > 0 { self.req_left } else { 0 },
            if self.tpm > 0 { self.tok_left } else { 0 },
        )
    }
}

/// A Redis refusal, repeated in process until its retry time.
#[derive(Debug, Clone)]
struct Refusal {
    rpm: u64,
    tpm: u64,
    until: f64,
    /// Requests needing at least this many tokens are refused (0: every request).
    need: u64,
    verdict: Verdict,
}

/// What this replica knows of one tenant.
#[derive(Default)]
struct TenantState {
    /// The in-process algorithm's TATs (Redis's last answer when there is Redis).
    req_tat: f64,
    tok_tat: f64,
    /// Spend known for `day`: Redis's last answer plus what was settled here since.
    day: u64,
    spend_micro: u64,
    grant: Option<Grant>,
    /// Requests the next grant asks for (1 at first).
    scale: u64,
    refusal: Option<Refusal>,
    /// When a request was last admitted in process (ms since the epoch).
    last_local: f64,
}

impl TenantState {
    fn window(limit: u64, remaining: u64, reset_at: f64, now: f64) -> Option<Window> {
        (limit > 0).then(|| Window {
            limit,
            remaining: remaining.min(limit),
            reset_ms: (reset_at - now).max(0.0).ceil() as u64,
        })
    }

    /// Repeats a standing refusal, or admits from the grant (when `grant`); `None`: ask Redis.
    fn in_process(
        &mut self,
        rpm: u64,
        tpm: u64,
        need: u64,
        now: f64,
        grant: bool,
    ) -> Option<Verdict> {
        if let Some(r) = &self.refusal {
            if r.rpm == rpm && r.tpm == tpm && now < r.until && need >= r.need {
                let mut v = r.verdict.clone();
                if let Some((_, retry)) = &mut v.limited {
                    *retry = (r.until - now).ceil().max(1.0) as u64;
                }
                return Some(v);
            }
        }
        let g = self.grant.as_mut().filter(|_| grant)?;
        if !g.serves(rpm, tpm, need, now) {
            return None;
        }
        g.req_left = g.req_left.saturating_sub(1);
        g.tok_left = g.tok_left.saturating_sub(need.min(tpm));
        g.used += 1;
        Some(Verdict {
            requests: Self::window(rpm, g.req_rem + g.req_left, g.req_reset_at, now),
            tokens: Self::window(tpm, g.tok_rem + g.tok_left, g.tok_reset_at, now),
            limited: None,
            spend_usd: self.spend_micro as f64 / 1e6,
            local: false,
        })
    }

    /// Ends the grant (it could not serve, or expired): its rest to give back, and the size
    /// of the next one.
    fn end_grant(&mut self, now: f64) -> (u64, u64) {
        let Some(g) = self.grant.take() else {
            self.scale = self.scale.max(1);
            return (0, 0);
        };
        let expired = now >= g.at + GRANT_TTL_MS;
        // The rest goes back here as it goes back to Redis.
        let (r, t) = g.rest();
        if r > 0 {
            self.req_tat = (self.req_tat - r as f64 * WINDOW_MS / g.rpm as f64).max(now);
        }
        if t > 0 {
            self.tok_tat = (self.tok_tat - t as f64 * WINDOW_MS / g.tpm as f64).max(now);
        }
        self.scale = if !expired && now - g.at < GRANT_SPAN_MS {
            self.scale.max(1) * 2
        } else if expired {
            g.used.max(1)
        } else {
            self.scale.max(1)
        };
        (r, t)
    }
}

/// How much the next grant asks for: (requests, tokens).
fn wanted(scale: u64, rpm: u64, tpm: u64, need: u64) -> (u64, u64) {
    let req = if rpm > 0 {
        scale.min((rpm / GRANT_SHARE).max(1))
    } else {
        scale
    };
    let tok = if tpm > 0 {
        let need = need.min(tpm);
        (req.max(1).saturating_mul(need))
            .min(tpm / GRANT_SHARE)
            .max(need)
    } else {
        0
    };
    (req.max(1), tok)
}

pub struct Limiter {
    redis: Option<Arc<Store>>,
    /// The share of a budget past which grants stop (the spend is read every request).
    fresh_spend_at: f64,
    prefix: String,
    admit: Script,
    settle: Script,
    tenants: Mutex<HashMap<String, TenantState>>,
    /// Corrections and given-back grants not yet written to Redis, by tenant.
    pending: Mutex<HashMap<String, Pending>>,
    /// The flush task runs.
    flushing: AtomicBool,
}

#[derive(Default)]
struct Pending {
    tpm: u64,
    rpm: u64,
    /// Token corrections from answers.
    delta: i64,
    spend_micro: u64,
    /// Admitted in process (Redis away): charged to Redis once it answers, so that the
    /// requests let through meanwhile are not let through again. Negative: the rest of an
    /// expired grant, given back.
    local_requests: i64,
    local_tokens: i64,
}

impl Pending {
    fn merge(&mut self, p: Pending) {
        self.rpm = p.rpm;
        self.tpm = p.tpm;
        self.delta += p.delta;
        self.spend_micro += p.spend_micro;
        self.local_requests += p.local_requests;
        self.local_tokens += p.local_tokens;
    }
}

const SETTLE_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Flushes the limiter's corrections (and gives back expired grants) every `SETTLE_EVERY`
/// while it lives (a config reload that replaces the tenant layer ends the task; at most one
/// interval's corrections are lost).
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
    /// `downgrade_at`: the share of a budget where `auto` requests are downgraded.
    pub fn new(redis: Option<Arc<Store>>, prefix: &str, downgrade_at: f64) -> Self {
        Self {
            redis,
            fresh_spend_at: 0.5 * downgrade_at.clamp(0.0, 1.0),
            prefix: prefix.to_string(),
            admit: Script::new(ADMIT),
            settle: Script::new(SETTLE),
            tenants: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            flushing: AtomicBool::new(false),
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
        let Some(redis) = &self.redis else {
            return Ok(self.admit_local(&rec.name, rpm, tpm, tokens, day));
        };
        let now = now_ms();
        let (back, want) = {
            let mut all = self.tenants.lock().unwrap();
            let s = tenant_state(&mut all, &rec.name, day);
            // Near its budget (half way to `downgrade_at`) a key's spend is read from Redis on
            // every request, so a budget spent on one replica is seen by the next request on
            // any other.
            let near_budget = rec
                .budget_usd_per_day
                .is_some_and(|b| s.spend_micro as f64 >= b * 1e6 * self.fresh_spend_at);
            if let Some(v) = s.in_process(rpm, tpm, tokens, now, !near_budget) {
                return Ok(v);
            }
            let back = s.end_grant(now);
            let scale = if near_budget { 1 } else { s.scale };
            (back, wanted(scale, rpm, tpm, tokens))
        };
        // What this replica admitted while Redis was away and has not told it yet goes with
        // this trip, so Redis's answer (and the TATs the fallback goes on from) count it.
        let owed = self
            .pending
            .lock()
            .unwrap()
            .get_mut(&rec.name)
            .map_or((0, 0), |p| {
                (
                    std::mem::take(&mut p.local_requests),
                    std::mem::take(&mut p.local_tokens),
                )
            });
        let back = (back.0 as i64 - owed.0, back.1 as i64 - owed.1);
        let [req, tok, spend] = self.keys(&rec.name, day);
        let mut inv = self.admit.key(req);
        inv.key(tok)
            .key(spend)
            .arg(rpm)
            .arg(tpm)
            .arg(back.0)
            .arg(back.1)
            .arg(tokens)
            .arg(want.0)
            .arg(want.1);
        let out = redis
            .call("limits", None, |mut c| async move {
                inv.invoke_async::<Vec<i64>>(&mut c).await
            })
            .await;
        match out {
            Ok(v) if v.len() == 13 => {
                metrics::gauge!("router_limits_local").set(0.0);
                return Ok(self.granted(rec, rpm, tpm, tokens, day, &v));
            }
            Ok(_) => tracing::warn!("limits script answered an unexpected shape"),
            Err(_) => {}
        }
        // The rest of the grant (and what was owed) did not reach Redis: sent later.
        if back != (0, 0) {
            self.add_pending(&rec.name, |p| {
                p.rpm = rpm;
                p.tpm = tpm;
                p.local_requests -= back.0;
                p.local_tokens -= back.1;
            });
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
        Ok(v)
    }

    /// Redis's answer to the script: this request's verdict; the grant (what is left of it
    /// after this request) or the refusal kept; the state the fallback goes on from.
    fn granted(
        self: &Arc<Self>,
        rec: &KeyRecord,
        rpm: u64,
        tpm: u64,
        tokens: u64,
        day: u64,
        v: &[i64],
    ) -> Verdict {
        let u = |i: usize| v[i].max(0) as u64;
        let now = now_ms();
        let unsettled = self
            .pending
            .lock()
            .unwrap()
            .get(&rec.name)
            .map_or(0, |p| p.spend_micro);
        let mut all = self.tenants.lock().unwrap();
        let s = tenant_state(&mut all, &rec.name, day);
        s.spend_micro = u(10) + unsettled;
        let (rok, tok) = (v[0] == 1, v[5] == 1);
        let mut limited = if !rok {
            Some((Which::Requests, u(4)))
        } else if !tok {
            Some((Which::Tokens, u(9)))
        } else {
            None
        };
        // Admitted in process within the last minute: some of those may not be in Redis yet
        // (a settle in flight when its flush fails), so what this replica knows refuses too.
        if limited.is_none() && now - s.last_local < WINDOW_MS {
            let r = (rpm > 0).then(|| take(s.req_tat, now, rpm, 1, 1));
            let t = (tpm > 0).then(|| take(s.tok_tat, now, tpm, tokens, tokens));
            limited = match (r, t) {
                (Some(r), _) if !r.ok => Some((Which::Requests, r.retry_ms)),
                (_, Some(t)) if !t.ok => Some((Which::Tokens, t.retry_ms)),
                _ => None,
            };
            if limited.is_some() {
                // Redis charged this request and its grant: given back.
                let (r, t) = (u(1) as i64, u(6) as i64);
                drop(all);
                self.add_pending(&rec.name, |p| {
                    p.rpm = rpm;
                    p.tpm = tpm;
                    p.local_requests -= r;
                    p.local_tokens -= t;
                });
                all = self.tenants.lock().unwrap();
            }
        }
        let s = tenant_state(&mut all, &rec.name, day);
        // What Redis charged is charged here too, and the TATs never go back to Redis's when
        // this replica knows more (the same settle in flight would be lost to the fallback).
        let ok = rok && tok && limited.is_none();
        let charge = |tat: f64, limit: u64, n: u64, redis: i64| {
            if limit == 0 {
                return tat;
            }
            let mine = if ok {
                tat.max(now) + n as f64 * WINDOW_MS / limit as f64
            } else {
                tat
            };
            mine.max(redis as f64)
        };
        s.req_tat = charge(s.req_tat, rpm, u(1), v[11]);
        s.tok_tat = charge(s.tok_tat, tpm, u(6), v[12]);
        let at = |ms: u64| now + ms as f64;
        let verdict = Verdict {
            requests: TenantState::window(rpm, u(2), at(u(3)), now),
            tokens: TenantState::window(tpm, u(7), at(u(8)), now),
            limited,
            // What every replica reads (this one's unsettled spend is in `s` for the grant).
            spend_usd: u(10) as f64 / 1e6,
            local: false,
        };
        if let Some((which, retry)) = limited {
            s.refusal = Some(Refusal {
                rpm,
                tpm,
                until: at(retry),
                need: if which == Which::Requests { 0 } else { tokens },
                verdict: verdict.clone(),
            });
            return verdict;
        }
        let need = tokens.min(tpm);
        let (req_left, tok_left) = (u(1).saturating_sub(1), u(6).saturating_sub(need));
        let mut verdict = verdict;
        let merged = match s.grant.take() {
            // A grant another request of this replica took meanwhile: both are kept.
            Some(g) if g.serves(rpm, tpm, 0, now) => Grant {
                req_left: g.req_left + req_left,
                tok_left: g.tok_left + tok_left,
                used: g.used + 1,
                ..g
            },
            old => {
                if let Some(g) = old {
                    let (r, t) = g.rest();
                    drop(all);
                    self.add_pending(&rec.name, |p| {
                        p.rpm = rpm;
                        p.tpm = tpm;
                        p.local_requests -= r as i64;
                        p.local_tokens -= t as i64;
                    });
                    all = self.tenants.lock().unwrap();
                }
                Grant {
                    rpm,
                    tpm,
                    at: now,
                    req_left,
                    tok_left,
                    used: 1,
                    req_rem: u(2),
                    tok_rem: u(7),
                    req_reset_at: at(u(3)),
                    tok_reset_at: at(u(8)),
                }
            }
        };
        if let Some(w) = &mut verdict.requests {
            w.remaining = (merged.req_rem + merged.req_left).min(rpm);
        }
        if let Some(w) = &mut verdict.tokens {
            w.remaining = (merged.tok_rem + merged.tok_left).min(tpm);
        }
        let s = tenant_state(&mut all, &rec.name, day);
        s.refusal = None;
        s.grant = Some(merged);
        drop(all);
        self.ensure_flushing();
        verdict
    }

    fn admit_local(&self, name: &str, rpm: u64, tpm: u64, tokens: u64, day: u64) -> Verdict {
        let now = now_ms();
        let mut all = self.tenants.lock().unwrap();
        let s = tenant_state(&mut all, name, day);
        let r = (rpm > 0).then(|| take(s.req_tat, now, rpm, 1, 1));
        let t = (tpm > 0).then(|| take(s.tok_tat, now, tpm, tokens, tokens));
        let pass = |x: &Option<Take>| x.is_none_or(|x| x.ok);
        let window = |limit: u64, x: &Option<Take>| {
            x.map(|x| Window {
                limit,
                remaining: x.remaining.min(limit),
                reset_ms: x.reset_ms,
            })
        };
        let limited = if !pass(&r) {
            r.map(|x| (Which::Requests, x.retry_ms))
        } else if !pass(&t) {
            t.map(|x| (Which::Tokens, x.retry_ms))
        } else {
            if let Some(r) = r {
                s.req_tat = r.tat;
            }
            if let Some(t) = t {
                s.tok_tat = t.tat;
            }
            s.last_local = now;
            None
        };
        Verdict {
            requests: window(rpm, &r),
            tokens: window(tpm, &t),
            limited,
            spend_usd: s.spend_micro as f64 / 1e6,
            local: true,
        }
    }

    /// After the response: `delta` tokens more (or fewer) than charged, `spend_micro` spent.
    /// Seen at once by this replica; added up per tenant and written to Redis every
    /// `SETTLE_EVERY` (one script call per tenant per interval, not one per request: a second
    /// round trip a request doubled the cost of keys), so other replicas see a correction at
    /// most that much later.
    pub fn settle(self: &Arc<Self>, rec: &KeyRecord, delta: i64, spend_micro: u64) {
        let tpm = rec.tpm.unwrap_or(0);
        if (delta == 0 || tpm == 0) && spend_micro == 0 {
            return;
        }
        self.settle_local(&rec.name, tpm, delta, spend_micro, today());
        if self.redis.is_some() {
            self.add_pending(&rec.name, |p| {
                p.tpm = tpm;
                p.delta += delta;
                p.spend_micro += spend_micro;
            });
        }
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
        self.ensure_flushing();
    }

    fn ensure_flushing(self: &Arc<Self>) {
        if !self.flushing.swap(true, Ordering::AcqRel) {
            tokio::spawn(flush(Arc::downgrade(self)));
        }
    }

    /// Gives back what expired grants left, then writes what `settle` added up; what Redis
    /// does not take is kept for the next try.
    async fn flush_once(&self) {
        let now = now_ms();
        let mut expired = Vec::new();
        for (name, s) in self.tenants.lock().unwrap().iter_mut() {
            if let Some(g) = &s.grant {
                if now >= g.at + GRANT_TTL_MS {
                    let (rpm, tpm) = (g.rpm, g.tpm);
                    let (r, t) = s.end_grant(now);
                    if (r, t) != (0, 0) {
                        expired.push((name.clone(), rpm, tpm, r, t));
                    }
                }
            }
        }
        let mut batch = std::mem::take(&mut *self.pending.lock().unwrap());
        for (name, rpm, tpm, r, t) in expired {
            batch.entry(name).or_default().merge(Pending {
                rpm,
                tpm,
                local_requests: -(r as i64),
                local_tokens: -(t as i64),
                ..Pending::default()
            });
        }
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
                // Seen here already (settle_local); kept for Redis.
                self.pending
                    .lock()
                    .unwrap()
                    .entry(name)
                    .or_default()
                    .merge(p);
            }
        }
    }

    fn settle_local(&self, name: &str, tpm: u64, delta: i64, spend_micro: u64, day: u64) {
        let now = now_ms();
        let mut all = self.tenants.lock().unwrap();
        let s = tenant_state(&mut all, name, day);
        if tpm > 0 {
            s.tok_tat = (s.tok_tat.max(now) + delta as f64 * WINDOW_MS / tpm as f64).max(now);
        }
        s.spend_micro += spend_micro;
    }
}

/// A tenant's in-process state, its spend reset when the UTC day changed.
fn tenant_state<'a>(
    all: &'a mut HashMap<String, TenantState>,
    name: &str,
    day: u64,
) -> &'a mut TenantState {
    if !all.contains_key(name) {
        all.insert(name.to_string(), TenantState::default());
    }
    let s = all.get_mut(name).expect("inserted above");
    if s.day != day {
        s.day = day;
        s.spend_micro = 0;
    }
    s
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
            cost_weight: None,
            created: 0,
        }
    }

    #[test]
    fn gcra_allows_a_minute_in_a_burst_then_refills_evenly() {
        let now = 1_000_000.0;
        let mut tat = 0.0;
        let mut passed = 0;
        for _ in 0..100 {
            let t = take(tat, now, 60, 1, 1);
            if t.ok {
                passed += 1;
                tat = t.tat;
            }
        }
        assert_eq!(passed, 60);
        let t = take(tat, now, 60, 1, 1);
        assert!(!t.ok);
        assert_eq!((t.remaining, t.reset_ms, t.retry_ms), (0, 60_000, 1000));
        // One second later, one more passes.
        assert!(take(tat, now + 1000.0, 60, 1, 1).ok);
        assert!(!take(tat, now + 999.0, 60, 1, 1).ok);
        // A grant takes what there is, at least what is needed.
        let t = take(0.0, now, 60, 1, 100);
        assert_eq!((t.ok, t.granted, t.remaining), (true, 60, 0));
        let t = take(now + 59_000.0, now, 60, 2, 10);
        assert_eq!((t.ok, t.granted, t.remaining), (false, 0, 1));
    }

    #[test]
    fn grants_grow_while_they_run_out_fast_and_never_pass_a_share_of_the_limit() {
        // A limit under GRANT_SHARE a minute is granted one request at a time.
        assert_eq!(wanted(64, 60, 0, 10), (1, 0));
        assert_eq!(wanted(64, 6000, 60_000, 10), (64, 640));
        assert_eq!(wanted(1000, 6000, 60_000, 10), (120, 1200));
        // Tokens: never less than the request needs (clamped to the limit).
        assert_eq!(wanted(4, 0, 1000, 300), (4, 300));
        assert_eq!(wanted(4, 0, 100, 300), (4, 100));
        let mut s = TenantState::default();
        let g = |at: f64, used: u64| Grant {
            rpm: 6000,
            tpm: 0,
            at,
            req_left: 0,
            tok_left: 0,
            used,
            req_rem: 0,
            tok_rem: 0,
            req_reset_at: 0.0,
            tok_reset_at: 0.0,
        };
        assert_eq!(s.end_grant(0.0), (0, 0));
        assert_eq!(s.scale, 1);
        s.grant = Some(g(0.0, 1));
        s.end_grant(10.0);
        assert_eq!(s.scale, 2, "ran out in 10 ms: doubles");
        s.grant = Some(Grant {
            req_left: 5,
            ..g(0.0, 3)
        });
        assert_eq!(s.end_grant(GRANT_TTL_MS), (5, 0), "the rest goes back");
        assert_eq!(s.scale, 3, "expired: what it served");
        // Served in process while it lasts, with the headers Redis gave.
        s.grant = Some(Grant {
            req_left: 2,
            req_rem: 10,
            ..g(0.0, 1)
        });
        let v = s.in_process(6000, 0, 5, 1.0, true).unwrap();
        assert_eq!(v.requests.unwrap().remaining, 11);
        assert!(s.in_process(6000, 0, 5, 2.0, true).is_some());
        assert!(s.in_process(6000, 0, 5, 3.0, true).is_none(), "used up");
        s.grant = Some(Grant {
            req_left: 2,
            ..g(0.0, 1)
        });
        assert!(
            s.in_process(60, 0, 5, 1.0, true).is_none(),
            "the key's limits changed"
        );
    }

    #[tokio::test]
    async fn local_limits_hold_and_settle_refunds_tokens() {
        let l = Arc::new(Limiter::new(None, "t:", 0.8));
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
        let (s1, s2) = (connected(&redis.url()).await, connected(&redis.url()).await);
        let a = Arc::new(Limiter::new(Some(s1), "t:", 0.8));
        let b = Arc::new(Limiter::new(Some(s2), "t:", 0.8));
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
        // A refusal Redis gave stands until its retry time, Redis or not.
        let v = a.admit(&r, 1, false).await.unwrap();
        assert_eq!(v.limited.map(|x| x.0), Some(Which::Requests));
        assert!(!v.local);
        // Past what the grant holds: fail closed refuses, fail open goes on in process from
        // what Redis last said (about 660 tokens left, not a fresh minute).
        assert!(b.admit(&r2, 700, false).await.is_err());
        let v = b.admit(&r2, 700, true).await.unwrap();
        assert!(v.local);
        assert_eq!(v.limited.map(|x| x.0), Some(Which::Tokens));
        assert!(b.admit(&r2, 100, true).await.unwrap().limited.is_none());
    }

    /// A store on `url` that has connected (tests use it at once).
    async fn connected(url: &str) -> Arc<Store> {
        let s = Store::new(
            url,
            1,
            std::time::Duration::from_millis(500),
            std::time::Duration::from_millis(100),
            "test",
            "test",
        )
        .unwrap();
        for _ in 0..100 {
            if s.connection().is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        s
    }

    async fn script_calls(store: &Arc<Store>) -> u64 {
        let mut c = store.connection().expect("connected");
        let info: String = deadpool_redis::redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut c)
            .await
            .unwrap();
        info.lines()
            .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }

    /// A busy key is served from grants (a few trips, not one a request) and what a grant
    /// left goes back to Redis, so the limit stays exact across replicas; a refusal is
    /// repeated in process until its retry time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grants_cut_trips_and_give_back_what_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let redis = loadtest::procs::Redis::start(dir.path());
        let (s1, s2, probe) = (
            connected(&redis.url()).await,
            connected(&redis.url()).await,
            connected(&redis.url()).await,
        );
        let a = Arc::new(Limiter::new(Some(s1), "t:", 0.8));
        let b = Arc::new(Limiter::new(Some(s2), "t:", 0.8));
        // 6000 a minute: grants of up to 120; refills 1 per 10 ms.
        let r = rec(Some(6000), Some(6_000_000));
        let calls = script_calls(&probe).await;
        let start = std::time::Instant::now();
        for i in 0..300 {
            let v = a.admit(&r, 10, false).await.unwrap();
            assert!(v.limited.is_none() && !v.local, "{i}");
        }
        let trips = script_calls(&probe).await - calls;
        assert!(trips <= 12, "300 admits took {trips} trips");
        // What a still holds comes back once its grant expires.
        tokio::time::sleep(std::time::Duration::from_millis(
            (GRANT_TTL_MS as u64) + 2 * SETTLE_EVERY.as_millis() as u64,
        ))
        .await;
        let v = b.admit(&r, 10, false).await.unwrap();
        let refilled = start.elapsed().as_millis() as u64 / 10 + 1;
        let rem = v.requests.unwrap().remaining;
        assert!(
            (6000 - 301..=6000 - 301 + refilled).contains(&rem),
            "{rem} remaining: 301 charged, up to {refilled} refilled"
        );
        let tok = v.tokens.unwrap().remaining;
        assert!(tok >= 6_000_000 - 3010, "tokens given back too: {tok}");

        // Two a minute: the third is refused by Redis, the next ones in process.
        let r = KeyRecord {
            name: "x".into(),
            ..rec(Some(2), None)
        };
        assert!(a.admit(&r, 1, false).await.unwrap().limited.is_none());
        assert!(a.admit(&r, 1, false).await.unwrap().limited.is_none());
        let v = a.admit(&r, 1, false).await.unwrap();
        let (which, retry) = v.limited.unwrap();
        assert_eq!(which, Which::Requests);
        let calls = script_calls(&probe).await;
        for _ in 0..50 {
            let v = a.admit(&r, 1, false).await.unwrap();
            assert!(v.limited.unwrap().1 <= retry);
        }
        assert_eq!(script_calls(&probe).await, calls, "refused without a trip");
        // The other replica asks Redis and hears the same.
        assert!(b.admit(&r, 1, false).await.unwrap().limited.is_some());
    }
}
