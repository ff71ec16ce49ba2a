//! Tenants: who calls (an API key), what it may use (models), how fast (requests and tokens
//! per minute) and how much it may spend a day. The road asks three things of it:
//!
//! ```text
//! authenticate   Bearer / x-api-key -> the key's record          (401 invalid_api_key)
//! admit          model allowed? limits + budget, one Redis trip a grant (403, 429, or "downgrade")
//! Meter (drop)   the answer's usage corrects the token charge and adds the spend
//! ```
//!
//! Every response of a keyed request carries OpenAI's `x-ratelimit-*` headers and
//! `x-semroute-key` (the key's name; never the key or its hash).

pub mod cli;
pub mod keys;
pub mod limits;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{ms, AuthConfig, AuthMode, Config, OverBudget, Pricing, RedisUnavailable};
use crate::decide::{Decision, Source};
use crate::error::Error;
use crate::store::Store;
pub use keys::KeyRecord;
use keys::{KeyStore, Lookup};
use limits::{Limiter, Verdict, Which};

pub struct Tenants {
    cfg: AuthConfig,
    keys: KeyStore,
    limits: Arc<Limiter>,
    labels: Labels,
}

/// Builds the Redis handle the tenant layer uses (keys, limits), from `cache.redis_url`.
pub fn redis_store(cfg: &Config) -> anyhow::Result<Option<Arc<Store>>> {
    cfg.cache
        .redis_url
        .as_deref()
        .map(|url| {
            Store::new(
                url,
                4,
                ms(cfg.auth.redis_timeout_ms),
                ms(cfg.cache.redis_retry_ms),
                "tenant",
                match cfg.auth.redis_unavailable {
                    RedisUnavailable::FailOpen => {
                        "rate limits are per replica and known keys are served from memory"
                    }
                    RedisUnavailable::FailClosed => "keyed requests are refused (fail_closed)",
                },
            )
            .map_err(|e| anyhow::anyhow!("cache.redis_url {url:?}: {e}"))
        })
        .transpose()
}

impl Tenants {
    /// None when `auth.mode` is `none`.
    pub fn new(cfg: &Config) -> anyhow::Result<Option<Self>> {
        if cfg.auth.mode == AuthMode::None {
            return Ok(None);
        }
        let redis = redis_store(cfg)?;
        let keys = KeyStore::new(
            cfg.auth.keys_file.as_deref(),
            redis.clone(),
            &cfg.auth.key_prefix,
            ms(cfg.auth.lookup_cache_ms),
        )?;
        Ok(Some(Self {
            limits: Arc::new(Limiter::new(
                redis,
                &cfg.auth.key_prefix,
                cfg.auth.downgrade_at,
            )),
            keys,
            labels: Labels::new(cfg.auth.max_key_labels),
            cfg: cfg.auth.clone(),
        }))
    }

    fn fail_open(&self) -> bool {
        self.cfg.redis_unavailable == RedisUnavailable::FailOpen
    }

    /// Step 0 of a keyed request: the caller's key, from `Authorization: Bearer` or `x-api-key`.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, Error> {
        let bearer = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        let key = bearer
            .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
            .map(str::trim)
            .filter(|k| !k.is_empty());
        let Some(key) = key else {
            metrics::counter!("router_auth_failures_total", "reason" => "missing").increment(1);
            return Err(Error::InvalidApiKey(false));
        };
        match self.keys.lookup(key, self.fail_open()).await {
            Lookup::Found(rec) => Ok(Caller {
                metrics: self.labels.metrics(&rec.name),
                rec,
            }),
            Lookup::Unknown => {
                metrics::counter!("router_auth_failures_total", "reason" => "unknown").increment(1);
                Err(Error::InvalidApiKey(true))
            }
            Lookup::StoreUnavailable => {
                metrics::counter!("router_auth_failures_total", "reason" => "store_unavailable")
                    .increment(1);
                Err(Error::AuthUnavailable)
            }
        }
    }

    /// After parsing: may this caller use `model` (or `auto`), within its limits and budget?
    /// `tokens`: the prompt estimate charged now (corrected by the answer's usage).
    pub async fn admit(
        &self,
        caller: &Caller,
        model: &str,
        auto: bool,
        tokens: u64,
        report: &mut TenantReport,
    ) -> Result<Admission, Error> {
        let rec = &caller.rec;
        let m = &caller.metrics;
        let count = |result: &'static str| m.result(result);
        if !auto && !rec.allows(model) {
            count("model_not_allowed");
            return Err(Error::ModelNotAllowed(model.to_string()));
        }
        let verdict = self
            .limits
            .admit(rec, tokens, self.fail_open())
            .await
            .map_err(|_| {
                count("store_unavailable");
                Error::AuthUnavailable
            })?;
        report.verdict = Some(verdict.clone());
        if let Some((which, retry_ms)) = verdict.limited {
            count(match which {
                Which::Requests => "rate_limited_requests",
                Which::Tokens => "rate_limited_tokens",
            });
            return Err(Error::RateLimited {
                tokens: which == Which::Tokens,
                retry_ms,
            });
        }
        let mut downgrade = false;
        if let Some(budget) = rec.budget_usd_per_day {
            let spent = verdict.spend_usd;
            m.spend_today.set(spent);
            if spent >= budget {
                if !auto || self.cfg.over_budget == OverBudget::Reject {
                    count("budget_exceeded");
                    // The request was charged one request above; tokens come back.
                    self.limits.settle(rec, -(tokens as i64), 0);
                    return Err(Error::BudgetExceeded { budget });
                }
                downgrade = true;
            } else if auto && spent >= self.cfg.downgrade_at * budget {
                downgrade = true;
            }
        }
        count(if downgrade { "downgraded" } else { "ok" });
        report.downgraded = downgrade;
        Ok(Admission {
            downgrade,
            meter: Meter {
                limits: self.limits.clone(),
                rec: rec.clone(),
                metrics: caller.metrics.clone(),
                charged: tokens,
                usage: None,
                pricing: None,
            },
        })
    }
}

/// Who called.
pub struct Caller {
    pub rec: Arc<KeyRecord>,
    /// Its metric handles (label `rec.name`, or "other" past `auth.max_key_labels` names).
    pub metrics: Arc<KeyMetrics>,
}

impl Caller {
    pub fn label(&self) -> &str {
        &self.metrics.label
    }
}

impl Caller {
    /// Confines an `auto` decision to the models this key may use, and pushes it to the
    /// cheapest of them when `downgrade` (the cost knob at its cheap end; reasoning off).
    pub fn confine(&self, cfg: &Config, d: &mut Decision, downgrade: bool) {
        if d.source == Source::Explicit || d.blocked {
            return;
        }
        let rec = &self.rec;
        let price = |name: &str| {
            cfg.model(name).map_or(f64::INFINITY, |m| {
                m.pricing.input_per_million + m.pricing.output_per_million
            })
        };
        let cheapest = || {
            cfg.models
                .iter()
                .filter(|m| rec.allows(&m.name))
                .min_by(|a, b| price(&a.name).total_cmp(&price(&b.name)))
                .map(|m| m.name.clone())
        };
        if downgrade {
            if let Some(m) = cheapest() {
                d.model = m;
                d.alternatives.clear();
                d.use_reasoning = false;
            }
            return;
        }
        d.alternatives.retain(|m| rec.allows(m));
        if !rec.allows(&d.model) {
            let next = if d.alternatives.is_empty() {
                cheapest()
            } else {
                Some(d.alternatives.remove(0))
            };
            if let Some(m) = next {
                d.model = m;
            }
        }
    }
}

pub struct Admission {
    pub downgrade: bool,
    pub meter: Meter,
}

/// What the tenant layer adds to a keyed request's response, whatever its status.
#[derive(Default)]
pub struct TenantReport {
    pub key: Option<String>,
    pub verdict: Option<Verdict>,
    pub downgraded: bool,
}

/// OpenAI's reset format: "1s", "6m0s", "250ms".
fn reset(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = ms as f64 / 1000.0;
        format!("{}s", (s * 100.0).round() / 100.0)
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

impl TenantReport {
    pub fn apply(&self, h: &mut HeaderMap) {
        let mut set = |name: &'static str, v: String| {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(HeaderName::from_static(name), v);
            }
        };
        if let Some(k) = &self.key {
            set("x-semroute-key", k.clone());
        }
        if self.downgraded {
            set("x-vsr-downgraded", "budget".into());
        }
        let Some(v) = &self.verdict else { return };
        if let Some(w) = v.requests {
            set("x-ratelimit-limit-requests", w.limit.to_string());
            set("x-ratelimit-remaining-requests", w.remaining.to_string());
            set("x-ratelimit-reset-requests", reset(w.reset_ms));
        }
        if let Some(w) = v.tokens {
            set("x-ratelimit-limit-tokens", w.limit.to_string());
            set("x-ratelimit-remaining-tokens", w.remaining.to_string());
            set("x-ratelimit-reset-tokens", reset(w.reset_ms));
        }
    }
}

/// Meters one admitted request: the answer's `usage` (body or stream) corrects the token
/// charge and prices the spend when it is dropped (the response ended, however it ended).
/// An answer that never succeeded gives its tokens back and costs nothing.
pub struct Meter {
    limits: Arc<Limiter>,
    rec: Arc<KeyRecord>,
    metrics: Arc<KeyMetrics>,
    charged: u64,
    usage: Option<(u64, u64)>,
    /// The serving model's prices, once a backend answered 2xx.
    pricing: Option<Pricing>,
}

impl Meter {
    /// A backend of a model with these prices answered 2xx.
    pub fn answered(&mut self, pricing: &Pricing) {
        self.pricing = Some(pricing.clone());
    }

    pub fn usage(&mut self, prompt: u64, completion: u64) {
        self.usage = Some((prompt, completion));
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        let charged = self.charged as i64;
        let Some(p) = &self.pricing else {
            self.limits.settle(&self.rec, -charged, 0);
            return;
        };
        let (prompt, completion) = self.usage.unwrap_or((self.charged, 0));
        let used = prompt + completion;
        let usd = prompt as f64 * p.input_per_million / 1e6
            + completion as f64 * p.output_per_million / 1e6;
        let micro = (usd * 1e6).round() as u64;
        self.metrics.tokens.increment(used);
        self.metrics.spend.increment(usd);
        self.limits.settle(&self.rec, used as i64 - charged, micro);
    }
}

/// One key's metric handles, registered once (no label allocation per request).
pub struct KeyMetrics {
    pub label: String,
    results: HashMap<&'static str, metrics::Counter>,
    tokens: metrics::Counter,
    spend: metrics::Gauge,
    spend_today: metrics::Gauge,
}

const RESULTS: [&str; 7] = [
    "ok",
    "downgraded",
    "rate_limited_requests",
    "rate_limited_tokens",
    "budget_exceeded",
    "model_not_allowed",
    "store_unavailable",
];

impl KeyMetrics {
    fn new(label: &str) -> Self {
        let key = label.to_string();
        Self {
            results: RESULTS
                .iter()
                .map(|r| {
                    let c = metrics::counter!("router_key_requests_total", "key" => key.clone(),
                        "result" => *r);
                    (*r, c)
                })
                .collect(),
            tokens: metrics::counter!("router_key_tokens_total", "key" => key.clone()),
            spend: metrics::gauge!("router_key_spend_usd_total", "key" => key.clone()),
            spend_today: metrics::gauge!("router_key_spend_today_usd", "key" => key.clone()),
            label: key,
        }
    }

    fn result(&self, r: &'static str) {
        if let Some(c) = self.results.get(r) {
            c.increment(1);
        }
    }
}

/// Key names as metric labels, at most `max` distinct ones (then "other").
struct Labels {
    max: usize,
    seen: Mutex<HashMap<String, Arc<KeyMetrics>>>,
    other: Arc<KeyMetrics>,
}

impl Labels {
    fn new(max: usize) -> Self {
        Self {
            max,
            seen: Mutex::new(HashMap::new()),
            other: Arc::new(KeyMetrics::new("other")),
        }
    }

    fn metrics(&self, name: &str) -> Arc<KeyMetrics> {
        let mut seen = self.seen.lock().unwrap();
        if let Some(m) = seen.get(name) {
            return m.clone();
        }
        if seen.len() < self.max {
            let m = Arc::new(KeyMetrics::new(name));
            seen.insert(name.to_string(), m.clone());
            return m;
        }
        self.other.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_times_read_like_openais() {
        assert_eq!(reset(250), "250ms");
        assert_eq!(reset(1000), "1s");
        assert_eq!(reset(7660), "7.66s");
        assert_eq!(reset(360_000), "6m0s");
    }

    #[test]
    fn metric_labels_are_bounded() {
        let l = Labels::new(2);
        assert_eq!(l.metrics("a").label, "a");
        assert_eq!(l.metrics("b").label, "b");
        assert_eq!(l.metrics("c").label, "other");
        assert_eq!(l.metrics("a").label, "a");
    }

    #[test]
    fn auto_decisions_stay_within_the_keys_models_and_downgrade_to_the_cheapest() {
        let cfg = Config::from_yaml(
            &crate::config::EMBEDDED_DEFAULT
                .replace("redis_url: redis://127.0.0.1:6379", "redis_url: null"),
        )
        .unwrap();
        let names: Vec<String> = cfg.models.iter().map(|m| m.name.clone()).collect();
        let cheap = names
            .iter()
            .min_by(|a, b| {
                let p = |n: &str| {
                    let m = cfg.model(n).unwrap();
                    m.pricing.input_per_million + m.pricing.output_per_million
                };
                p(a).total_cmp(&p(b))
            })
            .unwrap()
            .clone();
        let dear = names.iter().find(|n| **n != cheap).unwrap().clone();
        let caller = |models: Vec<String>| Caller {
            rec: Arc::new(KeyRecord {
                name: "t".into(),
                sha256: String::new(),
                models,
                rpm: None,
                tpm: None,
                budget_usd_per_day: None,
                cost_weight: None,
                created: 0,
            }),
            metrics: Arc::new(KeyMetrics::new("t")),
        };
        let mut d = Decision::default_model(&cfg, Source::Classified);
        d.model = dear.clone();
        d.use_reasoning = true;
        let mut down = d.clone();
        caller(vec![]).confine(&cfg, &mut down, true);
        assert_eq!(
            (down.model.as_str(), down.use_reasoning),
            (cheap.as_str(), false)
        );
        let mut kept = d.clone();
        caller(vec![]).confine(&cfg, &mut kept, false);
        assert_eq!(kept.model, dear);
        let mut confined = d.clone();
        caller(vec![cheap.clone()]).confine(&cfg, &mut confined, false);
        assert_eq!(confined.model, cheap);
        let mut explicit = Decision::explicit(&dear);
        caller(vec![]).confine(&cfg, &mut explicit, true);
        assert_eq!(explicit.model, dear, "named models are never changed");
    }
}
