//! The decision: which model serves a request, with reasoning on or off, and why.
//!
//! text (what is classified) -> cache (local LRU, then Redis; concurrent misses coalesced)
//! -> classifier (one Classify call for every task) -> policy (config) -> `Decision`.
//! Any failure on the way fails open to the default model and is counted (metrics and the
//! periodic summary in `events`, never a log line per request). A decision already in the
//! cache is used whatever state the classifier is in: the cache is asked first.

pub mod admission;
pub mod cache;
pub mod classifier;
pub mod fast_tier;
pub use semroute_pii as pii;
pub mod pii_scan;
pub mod policy;
pub mod routes;
pub mod select;
pub mod session;
pub mod text;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::state::Runtime;

/// What every classified request needs besides its text: the tasks to ask for and the cache
/// key's version tag. The same until the classifier reports other tasks or model versions (its
/// generation), the routes finish embedding, or the config changes (a new `Runtime`), so it is
/// made once, not per request (formatting, sorting and hashing the versions cost a cache hit
/// more than hashing its text).
#[derive(Default)]
pub struct KeyParts(std::sync::Mutex<Option<(u64, bool, std::sync::Arc<Parts>)>>);

pub struct Parts {
    pub tasks: Vec<String>,
    /// None until the classifier has told every task's version: nothing is cached then.
    pub tag: Option<String>,
}

impl KeyParts {
    pub fn get(&self, rt: &Runtime, with_embedding: bool) -> std::sync::Arc<Parts> {
        let generation = rt.classifier.generation();
        if let Some((g, e, p)) = &*self.0.lock().unwrap() {
            if *g == generation && *e == with_embedding {
                return p.clone();
            }
        }
        let cfg = &rt.cfg;
        let t = &cfg.routing.tasks;
        let mut wanted: Vec<&str> = vec![&t.domain, &t.complexity];
        if cfg.routing.jailbreak.enabled {
            wanted.push(&t.jailbreak);
        }
        if let Some(sm) = &cfg.routing.strong_model {
            wanted.push(&sm.task);
        }
        if let Some(sel) = &cfg.routing.selection {
            wanted.push(&sel.task);
        }
        wanted.retain(|s| !s.is_empty());
        wanted.dedup();
        let tasks = rt.classifier.tasks_for(&wanted);
        // Said once per change of what the classifier serves (this runs only then).
        if let Some(sel) = cfg.routing.selection.as_ref() {
            if !tasks.contains(&sel.task) {
                tracing::warn!(
                    task = %sel.task,
                    "routing.selection is configured but the classifier serves no such profile task \
                     (classifier-svc --profile DIR): categories and the default model decide"
                );
            }
        }
        // Routes embedded or not yet is part of what a decision depends on.
        let routes_state = match (rt.routes.is_empty(), with_embedding) {
            (true, _) => "",
            (false, true) => ";routes=ready",
            (false, false) => ";routes=pending",
        };
        let tag = rt
            .classifier
            .version(&tasks)
            .map(|v| cache::version_tag(&format!("{v}{routes_state}"), &rt.policy_version));
        let parts = std::sync::Arc::new(Parts { tasks, tag });
        *self.0.lock().unwrap() = Some((generation, with_embedding, parts.clone()));
        parts
    }
}

/// One classifier output the policy looked at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    pub task: String,
    pub label: String,
    pub probability: f32,
    /// Every label's value, for the selection's profile task only (model -> expected quality);
    /// empty for the others, whose top label is all the policy reads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scores: Vec<(String, f32)>,
}

impl Signal {
    /// P(label) for a task: the top label's probability, or its complement for a binary task
    /// whose top label is the other one.
    pub fn probability_of(&self, label: &str) -> f32 {
        if self.label == label {
            self.probability
        } else {
            1.0 - self.probability
        }
    }
}

/// How the decision was reached (headers, metrics, /v1/route).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// This request's classification.
    #[default]
    Classified,
    CacheLocal,
    CacheRedis,
    /// Rode on an identical request's classification in flight at the same time.
    Coalesced,
    /// The client named a model: no classification.
    Explicit,
    /// The classifier failed (down, slow, overloaded, breaker open): default model.
    FailOpen,
    /// Nothing to classify (no user text) or the classifier serves none of the policy's tasks.
    NoText,
    /// The session's decision (`session.rs`): a tool-loop or acknowledgement turn, or a new turn
    /// whose classification did not pay for a switch.
    Session,
    /// The classifier could not answer (the reason in `classifier_tier`); the router's own fast
    /// tier classified the request (`fast_tier.rs`).
    FastTier,
}

impl Source {
    /// Every source, in declaration order (`as usize` indexes it).
    pub const ALL: [Source; 9] = [
        Source::Classified,
        Source::CacheLocal,
        Source::CacheRedis,
        Source::Coalesced,
        Source::Explicit,
        Source::FailOpen,
        Source::NoText,
        Source::Session,
        Source::FastTier,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Classified => "classified",
            Source::CacheLocal => "cache_local",
            Source::CacheRedis => "cache_redis",
            Source::Coalesced => "coalesced",
            Source::Explicit => "explicit",
            Source::FailOpen => "fail_open",
            Source::NoText => "no_text",
            Source::Session => "session",
            Source::FastTier => "fast_tier",
        }
    }

    pub fn is_cache_hit(self) -> bool {
        matches!(
            self,
            Source::CacheLocal | Source::CacheRedis | Source::Coalesced
        )
    }
}

/// The one small serialisable struct: what the cache stores, what the headers show, what
/// /v1/route returns and what the metrics count. Never holds prompt text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub model: String,
    /// Tried in order when every endpoint of `model` fails (then the fallback model).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternatives: Vec<String>,
    #[serde(default)]
    pub category: Option<String>,
    /// Probability of the domain label (0 when not classified).
    #[serde(default)]
    pub confidence: f32,
    #[serde(default)]
    pub complexity: Option<String>,
    /// Whether reasoning is switched on for the chosen model (false = off or not switchable).
    #[serde(default)]
    pub use_reasoning: bool,
    /// The similarity route taken, and how close its nearest example was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_similarity: Option<f32>,
    /// P(strong model needed), when the cost knob is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strong_score: Option<f32>,
    /// The candidates scored by expected quality and price, when `routing.selection` decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<select::Selection>,
    #[serde(default)]
    pub jailbreak: bool,
    #[serde(default)]
    pub blocked: bool,
    #[serde(default)]
    pub signals: Vec<Signal>,
    #[serde(default)]
    pub source: Source,
    /// Why the router failed open, when it did: the `router_fail_open_total` reason (shed,
    /// timeout, overloaded, circuit_open, unavailable, ...), also sent as `x-vsr-fail-reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_reason: Option<String>,
    /// The session this turn belongs to and what it did (None: sessions off, or not a chat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<session::Note>,
    /// Which classifier tier made the classification (`x-vsr-classifier-tier`): `encoder`,
    /// `fast` (the fast tier was sure), `fast:deadline` / `fast:shed` (it stood in for an
    /// encoder that could not answer in time or was shedding load), or `fast:router:<reason>`
    /// (the router's own fast tier stood in for a classifier that failed with `<reason>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_tier: Option<String>,
}

impl Decision {
    pub fn default_model(cfg: &Config, source: Source) -> Self {
        Self::new(&cfg.routing.default_model, source)
    }

    /// The client named a model.
    pub fn explicit(model: &str) -> Self {
        Self::new(model, Source::Explicit)
    }

    fn new(model: &str, source: Source) -> Self {
        Self {
            model: model.to_string(),
            alternatives: Vec::new(),
            category: None,
            confidence: 0.0,
            complexity: None,
            use_reasoning: false,
            route: None,
            route_similarity: None,
            strong_score: None,
            selection: None,
            jailbreak: false,
            blocked: false,
            signals: Vec::new(),
            source,
            fail_reason: None,
            session: None,
            classifier_tier: None,
        }
    }
}

impl Decision {
    /// Whether the decision cache may keep it: not a stand-in that the fast tier made for an
    /// encoder that could not answer (deadline, shed), which is this request's business.
    pub fn cacheable(&self) -> bool {
        !self
            .classifier_tier
            .as_deref()
            .is_some_and(|t| t.starts_with("fast:"))
    }
}

/// The tier that answered a text's tasks, as `Decision::classifier_tier` says it: the fast
/// tier when it answered any of them (it answers a text whole), with its reason unless it was
/// sure; the encoder otherwise (also for a classifier that predates tiers).
pub fn tier_of(results: &[semroute_proto::classifier::v1::TaskResult]) -> String {
    use semroute_proto::classifier::v1::Tier;
    match results.iter().find(|r| r.tier == Tier::Fast as i32) {
        Some(r) if matches!(r.tier_reason.as_str(), "" | "confident" | "requested") => {
            "fast".into()
        }
        Some(r) => format!("fast:{}", r.tier_reason),
        None => "encoder".into(),
    }
}

/// A decision and what it cost.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub decision: Decision,
    /// Time in the classifier call (None when it was not called).
    pub classify: Option<Duration>,
    /// Time in the cache layers (lookups, coalescing waits), classification excluded.
    pub cache: Option<Duration>,
    /// The cache key (prefix + hashes; no text).
    pub cache_key: Option<String>,
    /// The classified text's embedding, when this request's classification returned one (for
    /// the semantic response cache).
    pub embedding: Option<Vec<f32>>,
}

/// Decides for `text` (the classified part of an `auto` request).
pub async fn decide(rt: &Runtime, text: Option<&str>) -> Outcome {
    let cfg = &rt.cfg;
    let plain = |source| Outcome {
        decision: Decision::default_model(cfg, source),
        classify: None,
        cache: None,
        cache_key: None,
        embedding: None,
    };
    let Some(text) = text else {
        return count(rt, plain(Source::NoText));
    };
    if !rt.classifier.configured() {
        return count(rt, plain(Source::NoText));
    }
    let with_embedding = !rt.routes.is_empty() && rt.routes.ready();
    let parts = rt.key_parts.get(rt, with_embedding);
    let tasks = &parts.tasks;
    if tasks.is_empty() {
        return count(rt, plain(Source::NoText));
    }
    let classify_us = AtomicU64::new(u64::MAX);
    // The semantic response cache compares the embedding of the same pass.
    let want_embedding = with_embedding || rt.response_cache.as_ref().is_some_and(|c| c.semantic());
    let embedding = std::sync::OnceLock::new();
    let classify = async {
        let t0 = Instant::now();
        // Boxed: only a miss runs it, and in line it would size every hit's future.
        let r = Box::pin(rt.classifier.classify(text, tasks, want_embedding)).await;
        let mut r = match r {
            Ok(r) => r,
            Err(e) => {
                let d = Box::pin(stand_in(rt, text, tasks, e)).await;
                classify_us.store(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
                return d;
            }
        };
        classify_us.store(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
        if want_embedding && !r.embedding.is_empty() {
            let _ = embedding.set(std::mem::take(&mut r.embedding));
        }
        let route = with_embedding
            .then(|| embedding.get().and_then(|e| rt.routes.nearest(e)))
            .flatten();
        let tier = tier_of(&r.results);
        let profile_task = cfg.routing.selection.as_ref().map(|s| s.task.as_str());
        let signals = r
            .results
            .into_iter()
            .map(|r| Signal {
                scores: if profile_task == Some(r.task.as_str()) {
                    r.scores
                        .into_iter()
                        .map(|s| (s.label, s.probability))
                        .collect()
                } else {
                    Vec::new()
                },
                task: r.task,
                label: r.label,
                probability: r.probability,
            })
            .collect();
        let mut d = policy::decide(cfg, signals, route, text.chars().count());
        d.classifier_tier = Some(tier);
        Ok::<_, classifier::ClassifyError>(d)
    };
    let started = Instant::now();
    let key = parts
        .tag
        .as_deref()
        .map(|tag| cache::key_tagged(rt.cache.prefix(), text, tag));
    let result = match &key {
        Some(key) => rt.cache.get_or_classify(key, classify).await,
        // Model versions not known yet (classifier not reached since start): no caching.
        None => classify
            .await
            .map(|d| (std::sync::Arc::new(d), cache::Hit::Miss))
            .map_err(std::sync::Arc::new),
    };
    let total = started.elapsed();
    let classify = match classify_us.load(Ordering::Relaxed) {
        u64::MAX => None,
        us => Some(Duration::from_micros(us)),
    };
    let cache_time = total.saturating_sub(classify.unwrap_or_default());
    let decision = match result {
        Ok((d, hit)) => {
            let mut d = (*d).clone();
            let by_router = d.source == Source::FastTier;
            crate::events::count(if by_router {
                crate::events::Event::FastTier
            } else {
                crate::events::Event::Classified
            });
            d.source = match hit {
                cache::Hit::Local => Source::CacheLocal,
                cache::Hit::Redis => Source::CacheRedis,
                cache::Hit::Coalesced if by_router => Source::FastTier,
                cache::Hit::Coalesced => Source::Coalesced,
                cache::Hit::Miss if by_router => Source::FastTier,
                cache::Hit::Miss => Source::Classified,
            };
            d
        }
        Err(e) => {
            metrics::counter!("router_fail_open_total", "reason" => e.reason()).increment(1);
            crate::events::count(crate::events::Event::fail_open(e.reason()));
            tracing::debug!(reason = %e, "classification failed; routing to the default model");
            let mut d = Decision::default_model(cfg, Source::FailOpen);
            d.fail_reason = Some(e.reason().to_string());
            d
        }
    };
    count(
        rt,
        Outcome {
            decision,
            classify,
            cache: key.is_some().then_some(cache_time),
            cache_key: key,
            embedding: embedding.into_inner(),
        },
    )
}

/// The classifier failed with `e`: the router's fast tier classifies the text instead, when
/// one is loaded and has a head for every task; otherwise `e` stands (the request fails open).
/// Its decision is marked (`Source::FastTier`, `fast:router:<reason>`) and not cached.
async fn stand_in(
    rt: &Runtime,
    text: &str,
    tasks: &[String],
    e: classifier::ClassifyError,
) -> Result<Decision, classifier::ClassifyError> {
    // The selection's profile is built on the encoder's embeddings: the router's tier has
    // none, and the policy falls back to categories and the default model without it.
    let profile = rt.cfg.routing.selection.as_ref().map(|s| s.task.as_str());
    let tasks: Vec<String> = tasks
        .iter()
        .filter(|t| Some(t.as_str()) != profile)
        .cloned()
        .collect();
    let tasks = &tasks[..];
    let Some(local) = rt.fast.clone().filter(|f| f.serves(tasks)) else {
        return Err(e);
    };
    let reason = e.reason();
    let t0 = Instant::now();
    // A long text (a millisecond or more: tokenizing it, its windows) leaves the request's
    // worker thread, which serves other connections meanwhile.
    let answer = if text.len() > 2048 {
        let (text, tasks, rules) = (text.to_string(), tasks.to_vec(), rt.routes.rules.clone());
        tokio::task::spawn_blocking(move || local.classify(&text, &tasks, &rules))
            .await
            .ok()
    } else {
        Some(local.classify(text, tasks, &rt.routes.rules))
    };
    metrics::histogram!("router_fast_tier_duration_seconds").record(t0.elapsed().as_secs_f64());
    let answer = match answer {
        Some(Ok(a)) => a,
        Some(Err(err)) => {
            metrics::counter!("router_fast_tier_errors_total").increment(1);
            tracing::debug!(error = %err, "the fast tier could not classify; failing open");
            return Err(e);
        }
        None => return Err(e),
    };
    metrics::counter!("router_fast_tier_total", "reason" => reason).increment(1);
    let mut d = policy::decide(&rt.cfg, answer.signals, answer.route, text.chars().count());
    d.source = Source::FastTier;
    d.classifier_tier = Some(format!("fast:router:{reason}"));
    Ok(d)
}

/// Decides a chat turn of a session (`session.rs`): a turn with no new user words or an
/// acknowledgement takes the session's decision without classifying; a new user turn is
/// classified and the session's rules say whether the model switches. `commit`: keep the
/// session's new state (false for /v1/route, which only explains).
pub async fn decide_in_session(
    rt: &Runtime,
    input: &text::Input,
    id: session::Identity,
    commit: bool,
) -> Outcome {
    let cfg = &rt.cfg;
    let sessions = &rt.sessions;
    let turn = session::turn_of(input);
    let note = |action, previous: Option<&str>, classified: Option<&str>, endpoint: Option<u64>| {
        session::Note {
            id: id.id.clone(),
            key: id.source,
            action,
            previous: previous.map(str::to_string),
            classified: classified.map(str::to_string),
            endpoint,
        }
    };
    // The fast path: a tool loop on a replica that saw its user turn.
    let here = sessions
        .current(&id.id, turn)
        .filter(|st| st.policy == rt.policy_version);
    if !input.new_turn || input.light {
        let known = match here.clone() {
            Some(st) => Some(st),
            None => sessions
                .load(&id.id)
                .await
                .filter(|st| st.policy == rt.policy_version),
        };
        if let Some(st) = known {
            let (mut d, action, next) = session::unclassified(cfg, &st, input);
            d.session = Some(note(action, Some(&st.model), None, next.endpoint));
            if commit {
                if next != *st {
                    sessions.save(&id.id, next).await;
                } else {
                    sessions.touch(&id.id);
                }
                sessions.count(action);
            }
            return count(
                rt,
                Outcome {
                    decision: d,
                    classify: None,
                    cache: None,
                    cache_key: None,
                    embedding: None,
                },
            );
        }
    }
    if let Some(st) = here {
        // The turn that set the state, again (a retry, a regenerate): decided as before (the
        // decision cache answers), on the session's model; nothing stored.
        let mut outcome = Box::pin(decide(rt, input.text.as_deref())).await;
        let classified = outcome.decision.model.clone();
        let (mut d, action) = if outcome.decision.blocked {
            (outcome.decision, session::Action::Refused)
        } else {
            (
                session::repeat(outcome.decision, &st),
                session::Action::Repeated,
            )
        };
        let overrode = (d.model != classified).then_some(classified.as_str());
        d.session = Some(note(action, Some(&st.model), overrode, st.endpoint));
        if commit {
            sessions.count(action);
        }
        outcome.decision = d;
        return outcome;
    }
    // The first user turn of a conversation named by its opening has no earlier state (the
    // opening is in its name): Redis is not asked.
    let prev = if id.source == session::KeySource::Fingerprint && input.user_turns <= 1 {
        None
    } else {
        sessions.load(&id.id).await
    };
    let mut outcome = Box::pin(decide(rt, input.text.as_deref())).await;
    let classified = outcome.decision.model.clone();
    let (mut d, action, next) = session::apply(
        cfg,
        &rt.policy_version,
        prev.as_deref(),
        outcome.decision,
        input,
    );
    let overrode = (d.model != classified).then_some(classified.as_str());
    d.session = Some(note(
        action,
        prev.as_deref().map(|p| p.model.as_str()),
        overrode,
        next.as_ref().and_then(|st| st.endpoint),
    ));
    if commit {
        if let Some(st) = next {
            sessions.save(&id.id, st).await;
        }
        sessions.count(action);
        if action.switched() {
            // Counted (router_session_turns_total{action}); a line per switch would flood the log.
            tracing::debug!(session = %id.id, action = action.as_str(), "session switched model");
        }
    }
    outcome.decision = d;
    outcome
}

fn count(rt: &Runtime, o: Outcome) -> Outcome {
    rt.decisions.count(o.decision.source);
    o
}

/// `router_decisions_total{source}`, a handle per source registered once per runtime (the
/// registry's look-up per request cost a cache hit ~1 % of its instructions).
pub struct DecisionCounters([metrics::Counter; Source::ALL.len()]);

impl Default for DecisionCounters {
    fn default() -> Self {
        Self(
            Source::ALL
                .map(|s| metrics::counter!("router_decisions_total", "source" => s.as_str())),
        )
    }
}

impl DecisionCounters {
    pub fn count(&self, source: Source) {
        self.0[source as usize].increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use semroute_proto::classifier::v1::{TaskResult, Tier};

    #[test]
    fn the_classifier_tier_says_who_answered_and_why_the_fast_tier_stood_in() {
        let r = |tier: Tier, reason: &str| TaskResult {
            task: "complexity".into(),
            tier: tier as i32,
            tier_reason: reason.into(),
            ..Default::default()
        };
        assert_eq!(
            tier_of(&[r(Tier::Encoder, ""), r(Tier::Encoder, "")]),
            "encoder"
        );
        assert_eq!(
            tier_of(&[r(Tier::Unspecified, "")]),
            "encoder",
            "an older classifier"
        );
        assert_eq!(tier_of(&[r(Tier::Fast, "confident")]), "fast");
        assert_eq!(tier_of(&[r(Tier::Fast, "deadline")]), "fast:deadline");
        assert_eq!(tier_of(&[r(Tier::Fast, "shed")]), "fast:shed");
        assert_eq!(tier_of(&[]), "encoder");
    }
}
