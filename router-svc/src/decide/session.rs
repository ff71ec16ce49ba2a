//! Sessions: the turns of one conversation or agent session keep one decision (model and
//! reasoning) unless a switch pays. A model switch mid-session throws the backend's prefix cache
//! away and changes the voice of the answers; in agent loops it costs task success.
//!
//! - Identity (`identify`): an explicit key where the client gives one (the `session.header`
//!   header, `prompt_cache_key`, a Responses `conversation`), else a fingerprint of the
//!   conversation's stable start (the client's `user`, the system prompt and the user's first
//!   own turn). Only a hash is kept or shown (`x-vsr-session`).
//! - State (`State`): the session's model and reasoning, versioned by the user turn that set it,
//!   in the decision cache's Redis (shared by every replica, written before a new turn is
//!   forwarded, TTL renewed while in use) with an in-process copy in front (and serving alone
//!   while Redis is away).
//! - Rules (`apply`): a turn with no new user words (a tool loop, boilerplate) keeps the
//!   decision without classifying; an acknowledgement keeps the model with reasoning off; a new
//!   user turn is classified and switches only up (`escalate`), or down after
//!   `step_down_after` lighter turns in a row; a blocked, explicit or failed classification
//!   never moves the session. A first turn that fails open leaves a provisional state (the
//!   default model) that the tool loop keeps and the first classified user turn replaces.

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use deadpool_redis::redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::text::{self, Input, Turn};
use super::{Decision, Source};
use crate::config::{Config, InputConfig, SessionConfig};
use crate::store::{Store, Unavailable};

/// Which key named the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    Header,
    PromptCacheKey,
    Conversation,
    Fingerprint,
}

/// A session's identity: a hash of its key (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// 16 hex digits: what `x-vsr-session` shows and the Redis key ends with.
    pub id: String,
    pub source: KeySource,
}

fn hashed(parts: &[&str], source: KeySource) -> Identity {
    let mut h = Sha256::new();
    h.update(format!("{source:?}").as_bytes());
    for p in parts {
        h.update([0]);
        h.update(p.as_bytes());
    }
    Identity {
        id: hex::encode(&h.finalize()[..8]),
        source,
    }
}

/// The session keys a request's body may carry (OpenAI `prompt_cache_key` and `user`,
/// Anthropic `metadata.user_id` translated to `user`, Responses `conversation`).
#[derive(Debug, Default, Deserialize)]
pub struct Keys {
    #[serde(default)]
    pub prompt_cache_key: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    /// Responses: an id, or an object with one.
    #[serde(default)]
    pub conversation: Option<Value>,
}

impl Keys {
    /// A chat request's keys (`prompt_cache_key`, `user`: Anthropic's `metadata.user_id` arrives
    /// translated), with those of the client's Responses body when it was one.
    pub fn of_request(
        prompt_cache_key: Option<&str>,
        user: Option<&str>,
        responses: Option<&[u8]>,
    ) -> Self {
        let mut k = responses.map(Self::of_body).unwrap_or_default();
        k.prompt_cache_key = k
            .prompt_cache_key
            .or_else(|| prompt_cache_key.map(str::to_string));
        k.user = k.user.or_else(|| user.map(str::to_string));
        k
    }

    /// The keys of a client's body in another API (Responses), read without building its tree.
    pub fn of_body(raw: &[u8]) -> Self {
        #[derive(Deserialize)]
        struct Loose {
            #[serde(default)]
            prompt_cache_key: Option<Value>,
            #[serde(default)]
            user: Option<Value>,
            #[serde(default)]
            conversation: Option<Value>,
        }
        let Ok(l) = serde_json::from_slice::<Loose>(raw) else {
            return Self::default();
        };
        let s = |v: Option<Value>| v.and_then(|v| v.as_str().map(str::to_string));
        Self {
            prompt_cache_key: s(l.prompt_cache_key),
            user: s(l.user),
            conversation: l.conversation,
        }
    }
}

/// The session of a chat request: an explicit key when the client sent one, else the
/// fingerprint of its opening (None when it has no user turn to fingerprint). `scope` (the
/// caller's API key, "" without keys) keeps tenants' sessions apart.
pub fn identify<M: Turn>(
    cfg: &SessionConfig,
    input: &InputConfig,
    headers: &HeaderMap,
    keys: &Keys,
    scope: &str,
    messages: &[M],
) -> Option<Identity> {
    fn explicit(v: Option<&str>) -> Option<&str> {
        v.map(str::trim).filter(|v| !v.is_empty())
    }
    let header = headers
        .get(cfg.header.as_str())
        .and_then(|v| v.to_str().ok());
    if let Some(v) = explicit(header) {
        return Some(hashed(&[scope, v], KeySource::Header));
    }
    if let Some(v) = explicit(keys.prompt_cache_key.as_deref()) {
        return Some(hashed(&[scope, v], KeySource::PromptCacheKey));
    }
    let conv = keys.conversation.as_ref();
    let conv = conv
        .and_then(Value::as_str)
        .or_else(|| conv.and_then(|c| c.get("id")).and_then(Value::as_str));
    if let Some(v) = explicit(conv) {
        return Some(hashed(&[scope, v], KeySource::Conversation));
    }
    let (system, first) = text::opening(messages, input)?;
    Some(hashed(
        &[scope, keys.user.as_deref().unwrap_or(""), &system, &first],
        KeySource::Fingerprint,
    ))
}

/// What a session remembers: the decision of its last user turn, and which turn that was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub model: String,
    pub use_reasoning: bool,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub complexity: Option<String>,
    /// Hash of the user turn that set this state (its words and position): a copy whose turn
    /// is the request's latest is current, whatever another replica did since.
    pub turn: u64,
    /// The policy version that made it (`Config::policy_version`): a state from another
    /// policy is void, as the decision cache's entries are.
    #[serde(default)]
    pub policy: String,
    /// User turns in a row that a weaker model would have served.
    #[serde(default)]
    pub lighter: u32,
    #[serde(default)]
    pub switches: u32,
    /// Set by a first turn the classifier did not answer (fail-open: the default model, never
    /// a decision). The turns without new user words keep it without asking the classifier
    /// again: under overload, classifying every tool-loop turn of every new session again is
    /// what keeps the classifier overloaded (measured: 74 % of all turns failed open at 192
    /// sessions). The next user turn that is classified replaces it as a first turn would.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub provisional: bool,
    /// The endpoint of `model` that holds the session's prefix cache (`Endpoint::key` of
    /// upstream): where its first turn on the model was placed, by load. Kept while the model
    /// is; None: not placed yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<u64>,
}

/// The version of a request's latest user turn (`State::turn`).
pub fn turn_of(input: &Input) -> u64 {
    let mut h = Sha256::new();
    h.update((input.user_turns as u64).to_le_bytes());
    if let Some(t) = &input.text {
        h.update(t.as_bytes());
    }
    u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

/// What the session did with this turn (`x-vsr-session-action`, metrics, /v1/route).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// First turn seen: the classification becomes the session's decision.
    Started,
    /// A new user turn classified; the session's model kept.
    Kept,
    /// No new user words (a tool loop, boilerplate): the session's decision, not classified.
    ToolLoop,
    /// An acknowledgement: the session's model, reasoning off, not classified.
    Light,
    /// Switched up: the new turn needs a stronger model.
    Escalated,
    /// Switched down after `step_down_after` lighter turns.
    SteppedDown,
    /// The classification failed (fail open) or said nothing: the session's decision.
    Held,
    /// The same user turn again (a retry, a regenerate): its decision, not classified.
    Repeated,
    /// Refused by the guard: this request's business, the session untouched.
    Refused,
}

impl Action {
    pub const ALL: [Action; 9] = [
        Action::Started,
        Action::Kept,
        Action::ToolLoop,
        Action::Light,
        Action::Escalated,
        Action::SteppedDown,
        Action::Held,
        Action::Repeated,
        Action::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Started => "started",
            Action::Kept => "kept",
            Action::ToolLoop => "tool_loop",
            Action::Light => "light",
            Action::Escalated => "escalated",
            Action::SteppedDown => "stepped_down",
            Action::Held => "held",
            Action::Repeated => "repeated",
            Action::Refused => "refused",
        }
    }

    /// A switch of model.
    pub fn switched(self) -> bool {
        matches!(self, Action::Escalated | Action::SteppedDown)
    }
}

/// Carried on the decision: headers, /v1/route and the logs' fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Note {
    pub id: String,
    pub key: KeySource,
    pub action: Action,
    /// The session's model before this turn, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// What this turn's classification alone chose, when the session overrode it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classified: Option<String>,
    /// The session's endpoint on its model (`State::endpoint`), for the forward step.
    #[serde(skip)]
    pub endpoint: Option<u64>,
}

impl Note {
    /// This turn starts the session on its model: its endpoint is to be placed by load.
    pub fn places(&self) -> bool {
        self.endpoint.is_none()
            && matches!(
                self.action,
                Action::Started | Action::Escalated | Action::SteppedDown
            )
    }
}

/// The rank of a model for "stronger": its place in `session.tiers` when listed (unlisted
/// models below every listed one), else its price (input + output per million).
pub fn rank(cfg: &Config, model: &str) -> f64 {
    if !cfg.session.tiers.is_empty() {
        return cfg
            .session
            .tiers
            .iter()
            .position(|t| t == model)
            .map_or(-1.0, |i| i as f64);
    }
    cfg.model(model).map_or(0.0, |m| {
        m.pricing.input_per_million + m.pricing.output_per_million
    })
}

/// A decision taken from a session's state.
fn from_state(st: &State, source: Source) -> Decision {
    let mut d = Decision::new(&st.model, source);
    d.use_reasoning = st.use_reasoning;
    d.category = st.category.clone();
    d.complexity = st.complexity.clone();
    d
}

/// The turn that set `st`, classified again: the session's model and reasoning, the
/// classification's signals (and its source where the model is the same).
pub fn repeat(mut d: Decision, st: &State) -> Decision {
    d.category = st.category.clone();
    if d.model != st.model {
        d.alternatives.retain(|m| *m != st.model);
        d.model = st.model.clone();
        d.source = Source::Session;
    }
    d.use_reasoning = st.use_reasoning;
    d
}

/// A turn that is not classified (tool loop or acknowledgement) with the session's state.
pub fn unclassified(cfg: &Config, st: &State, input: &Input) -> (Decision, Action, State) {
    let action = if !input.new_turn {
        Action::ToolLoop
    } else if st.turn == turn_of(input) {
        Action::Repeated
    } else {
        Action::Light
    };
    let mut d = from_state(st, Source::Session);
    let mut next = st.clone();
    if action == Action::Light {
        d.use_reasoning = false;
        next.turn = turn_of(input);
        next.use_reasoning = st.use_reasoning;
    }
    if input.light {
        // An acknowledgement never turns reasoning on, repeated or not.
        d.use_reasoning = false;
    }
    // A model dropped from the config since: the default model, as a fresh decision would.
    if cfg.model(&d.model).is_none() {
        d.model = cfg.routing.default_model.clone();
        next.model = d.model.clone();
        next.endpoint = None;
    }
    (d, action, next)
}

/// A classified user turn against the session's state (None: the session's first turn).
pub fn apply(
    cfg: &Config,
    policy: &str,
    prev: Option<&State>,
    classified: Decision,
    input: &Input,
) -> (Decision, Action, Option<State>) {
    let state_of = |d: &Decision, lighter: u32, switches: u32| State {
        model: d.model.clone(),
        use_reasoning: d.use_reasoning,
        category: d.category.clone(),
        complexity: d.complexity.clone(),
        turn: turn_of(input),
        policy: policy.to_string(),
        lighter,
        switches,
        provisional: false,
        // The same model: the same endpoint (its prefix cache); another model, placed anew.
        endpoint: prev.filter(|p| p.model == d.model).and_then(|p| p.endpoint),
    };
    // A refusal is this request's business, never the session's.
    if classified.blocked {
        return (classified, Action::Refused, None);
    }
    let failed = matches!(classified.source, Source::FailOpen | Source::NoText);
    // A provisional state (a first turn that failed open) gives way to the first classification.
    let Some(prev) = prev.filter(|p| {
        cfg.model(&p.model).is_some() && p.policy == policy && (!p.provisional || failed)
    }) else {
        let mut st = state_of(&classified, 0, 0);
        st.provisional = failed;
        return (classified, Action::Started, Some(st));
    };
    if failed {
        let mut d = from_state(prev, Source::Session);
        d.fail_reason = classified.fail_reason.clone();
        let mut st = prev.clone();
        st.turn = turn_of(input);
        return (d, Action::Held, Some(st));
    }
    let (now, was) = (rank(cfg, &classified.model), rank(cfg, &prev.model));
    if classified.model == prev.model || (now > was && !cfg.session.escalate) {
        let mut d = classified;
        if d.model != prev.model {
            d = keep_model(cfg, d, prev);
        } else {
            d.category = prev.category.clone();
        }
        let st = state_of(&d, 0, prev.switches);
        return (d, Action::Kept, Some(st));
    }
    if now > was {
        let st = state_of(&classified, 0, prev.switches + 1);
        return (classified, Action::Escalated, Some(st));
    }
    // Lighter than the session's model.
    let lighter = prev.lighter + 1;
    let n = cfg.session.step_down_after;
    if n > 0 && lighter >= n {
        let st = state_of(&classified, 0, prev.switches + 1);
        return (classified, Action::SteppedDown, Some(st));
    }
    let d = keep_model(cfg, classified, prev);
    let st = state_of(&d, lighter, prev.switches);
    (d, Action::Kept, Some(st))
}

/// The classification's signals on the session's model: reasoning as classified where that
/// model can switch it, the session's model tried first, the session's category kept (it picks
/// the system prompt the router adds: a new one would change the conversation's prefix and its
/// voice).
fn keep_model(cfg: &Config, mut d: Decision, prev: &State) -> Decision {
    d.category = prev.category.clone();
    let can_reason = cfg
        .model(&prev.model)
        .is_some_and(|m| m.reasoning_family.is_some());
    d.use_reasoning = d.use_reasoning && can_reason;
    d.alternatives.retain(|m| *m != prev.model);
    d.model = prev.model.clone();
    d.source = Source::Session;
    d
}

/// Where session states live: an in-process copy in front of the decision cache's Redis.
pub struct Sessions {
    prefix: String,
    ttl_secs: u64,
    local: moka::sync::Cache<String, Arc<State>>,
    /// Sessions whose Redis TTL was renewed lately (a tool loop renews it once per tenth of it).
    touched: moka::sync::Cache<String, ()>,
    redis: Option<Arc<Store>>,
    counts: [metrics::Counter; Action::ALL.len()],
}

impl Sessions {
    pub fn new(cfg: &SessionConfig, redis: Option<Arc<Store>>) -> Self {
        Self {
            prefix: cfg.key_prefix.clone(),
            ttl_secs: cfg.ttl_secs.max(1),
            local: moka::sync::Cache::builder()
                .max_capacity(cfg.local_capacity.max(1))
                .time_to_live(Duration::from_secs(cfg.local_ttl_secs.max(1)))
                .build(),
            touched: moka::sync::Cache::builder()
                .max_capacity(cfg.local_capacity.max(1))
                .time_to_live(Duration::from_secs((cfg.ttl_secs / 10).max(1)))
                .build(),
            redis,
            counts: Action::ALL
                .map(|a| metrics::counter!("router_session_turns_total", "action" => a.as_str())),
        }
    }

    /// Counts a turn (`router_session_turns_total{action}`; switches are `escalated` and
    /// `stepped_down`).
    pub fn count(&self, action: Action) {
        self.counts[action as usize].increment(1);
    }

    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    /// The in-process copy, when it was set by `turn` (then it is current on every replica:
    /// only a new user turn changes a session).
    pub fn current(&self, id: &str, turn: u64) -> Option<Arc<State>> {
        self.local.get(id).filter(|s| s.turn == turn)
    }

    /// The shared state (Redis), else the in-process copy (Redis away, or not configured).
    pub async fn load(&self, id: &str) -> Option<Arc<State>> {
        if let Some(store) = &self.redis {
            let key = self.key(id);
            // A new user turn is classified anyway (tens of milliseconds): the state is worth a
            // few times the decision cache's budget before the session is taken as unknown.
            let budget = Some(store.timeout() * 4);
            let got = store
                .call("session_get", budget, |mut c| async move {
                    c.get::<_, Option<Vec<u8>>>(key).await
                })
                .await;
            match got {
                Ok(Some(bytes)) => match serde_json::from_slice::<State>(&bytes) {
                    Ok(st) => {
                        let st = Arc::new(st);
                        self.local.insert(id.to_string(), st.clone());
                        return Some(st);
                    }
                    Err(e) => tracing::warn!(error = %e, "undecodable session state ignored"),
                },
                Ok(None) => return None,
                Err(Unavailable::Skipped | Unavailable::Failed) => {}
            }
        }
        self.local.get(id)
    }

    /// Keeps `st` here and in Redis, its TTL renewed.
    pub async fn save(&self, id: &str, st: State) {
        let st = Arc::new(st);
        self.local.insert(id.to_string(), st.clone());
        self.touched.insert(id.to_string(), ());
        let Some(store) = self.redis.clone().filter(|s| s.usable()) else {
            return;
        };
        let Ok(bytes) = serde_json::to_vec(&*st) else {
            return;
        };
        // Written before the request goes on (a new user turn only, which was classified
        // anyway): when the client has its answer, every replica sees the session's state, so
        // the next turn on another replica never meets the state before it.
        let (key, ttl) = (self.key(id), self.ttl_secs);
        let _ = store
            .call(
                "session_set",
                Some(store.timeout() * 4),
                |mut c| async move { c.set_ex::<_, _, ()>(key, bytes, ttl).await },
            )
            .await;
    }

    /// The session's first turn on `model` was served by `endpoint`: its turns go there from
    /// now on (`State::endpoint`). Written before the answer is relayed, so that the next
    /// turn, on whichever replica, finds it. Only the placement is written: a turn that the
    /// load bound sends elsewhere is not a move (every replica would have to learn of it, and
    /// a replica's in-process copy would not), so the session comes back when the load allows.
    pub async fn place(&self, id: &str, model: &str, endpoint: u64) {
        let Some(st) = self
            .local
            .get(id)
            .filter(|st| st.model == model && st.endpoint.is_none())
        else {
            return;
        };
        let mut st = (*st).clone();
        st.endpoint = Some(endpoint);
        self.save(id, st).await;
    }

    /// Renews the TTL of a session used without change (a tool loop), off the request path, at
    /// most once per tenth of the TTL.
    pub fn touch(&self, id: &str) {
        let Some(store) = self.redis.clone().filter(|s| s.usable()) else {
            return;
        };
        if self.touched.contains_key(id) {
            return;
        }
        self.touched.insert(id.to_string(), ());
        let (key, ttl) = (self.key(id), self.ttl_secs as i64);
        tokio::spawn(async move {
            let budget = Some(store.timeout() * 4);
            let _ = store
                .call("session_touch", budget, |mut c| async move {
                    c.expire::<_, ()>(key, ttl).await
                })
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::openai::{self, Kind};
    use crate::config::Config;
    use serde_json::json;

    fn cfg() -> Config {
        Config::from_yaml(crate::config::EMBEDDED_DEFAULT).unwrap()
    }

    const TASK: &str = "The integration test scaling::replicas_share_redis fails with a 503 \
        instead of 502 after the backends restart. Find the race in the retry logic and fix it.";
    const REMINDER: &str = "<system-reminder>\nAs you answer the user's questions, you can use \
        the following context:\n# claudeMd\nCodebase and user instructions are shown below. Be \
        sure to adhere to these instructions.\n- Run cargo fmt before committing.\n\
        </system-reminder>";

    /// A Claude Code-shaped Messages request: long system prompt, five tools, a session in
    /// `metadata.user_id`, reminders as text blocks, tool_use / tool_result turns.
    fn claude_code(messages: Vec<Value>) -> Value {
        let tool = |name: &str| {
            json!({"name": name, "description": format!("{name} tool"),
                   "input_schema": {"type": "object", "properties": {"x": {"type": "string"}}}})
        };
        json!({
            "model": "auto", "max_tokens": 32000, "stream": true,
            "metadata": {"user_id": "user_2f1c_account_8a7e_session_5b3d9c1e-77aa-4b8e-9d0f-1c2b3a4d5e6f"},
            "system": [
                {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
                {"type": "text", "text": "You are an interactive CLI tool that helps users with software engineering tasks. Use the instructions below and the tools available to you to assist the user.", "cache_control": {"type": "ephemeral"}}
            ],
            "tools": [tool("Bash"), tool("Read"), tool("Edit"), tool("Grep"), tool("TodoWrite")],
            "messages": messages,
        })
    }

    fn claude_turns() -> Vec<Value> {
        vec![
            json!({"role": "user", "content": [
                {"type": "text", "text": REMINDER},
                {"type": "text", "text": TASK}]}),
            json!({"role": "assistant", "content": [
                {"type": "text", "text": "Let me look at the retry loop."},
                {"type": "tool_use", "id": "toolu_01", "name": "Grep", "input": {"x": "retry"}}]}),
            json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "router-svc/src/upstream/mod.rs:452"},
                {"type": "text", "text": "<system-reminder>\nThe TodoWrite tool hasn't been used recently.\n</system-reminder>"}]}),
            json!({"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_02", "name": "Edit", "input": {"x": "fix"}}]}),
            json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_02", "content": "ok"},
                {"type": "text", "text": "<system-reminder>\nNote: the file was modified.\n</system-reminder>"}]}),
            json!({"role": "assistant", "content": [{"type": "text", "text": "Fixed: the retry now re-reads the pool."}]}),
            json!({"role": "user", "content": [{"type": "text", "text": "thanks"}]}),
            json!({"role": "assistant", "content": [{"type": "text", "text": "You're welcome."}]}),
            json!({"role": "user", "content": [{"type": "text", "text": "Now add a Prometheus counter for the retries in upstream/mod.rs, labelled by model, and a unit test for it."}]}),
        ]
    }

    /// A Codex-shaped Responses request: instructions, a developer item, AGENTS.md and
    /// environment context as user items, the task, function calls, `prompt_cache_key`.
    fn codex(extra: Vec<Value>) -> Value {
        let msg = |role: &str, text: &str| json!({"type": "message", "role": role, "content": [{"type": "input_text", "text": text}]});
        let mut input = vec![
            msg("developer", "<permissions instructions>\nFilesystem sandboxing: workspace-write.\n</permissions instructions>"),
            msg("user", "# AGENTS.md instructions for /home/dev/semroute\n\n<INSTRUCTIONS>\nRun cargo fmt and clippy before you finish.\n</INSTRUCTIONS>"),
            msg("user", "<environment_context>\n  <cwd>/home/dev/semroute</cwd>\n  <shell>bash</shell>\n</environment_context>"),
            msg("user", "Refactor the retry loop in router-svc/src/upstream/mod.rs to use exponential backoff with jitter, bounded by the request deadline, and add unit tests"),
        ];
        input.extend(extra);
        json!({
            "model": "auto", "instructions": "You are Codex, based on GPT-5. You are running as a coding agent in the Codex CLI.",
            "input": input, "stream": true, "store": false,
            "tools": [{"type": "function", "name": "shell", "parameters": {"type": "object"}}],
            "prompt_cache_key": "0199a213-81c0-7800-8aa1-bbab2a035a53",
        })
    }

    fn codex_loop() -> Vec<Value> {
        vec![
            json!({"type": "function_call", "name": "shell", "arguments": "{\"command\":[\"rg\",\"retry\"]}", "call_id": "call_1"}),
            json!({"type": "function_call_output", "call_id": "call_1", "output": "router-svc/src/upstream/mod.rs:452: loop {"}),
        ]
    }

    fn chat_of(v: &Value) -> openai::Parsed {
        openai::parse(Kind::Chat, &bytes::Bytes::from(v.to_string())).unwrap()
    }

    fn input_of(req: &openai::Parsed) -> Input {
        req.input(&cfg().classifier.input)
    }

    fn anthropic(messages: &[Value]) -> openai::Parsed {
        let raw = claude_code(messages.to_vec()).to_string();
        chat_of(&crate::api::anthropic::to_chat(raw.as_bytes()).unwrap())
    }

    fn responses(body: &Value) -> openai::Parsed {
        chat_of(&crate::api::responses::to_chat(body.to_string().as_bytes()).unwrap())
    }

    fn id_of(req: &openai::Parsed, keys: Keys) -> Identity {
        let c = cfg();
        identify(
            &c.session,
            &c.classifier.input,
            &HeaderMap::new(),
            &keys,
            "",
            &req.messages,
        )
        .unwrap()
    }

    #[test]
    fn claude_code_turns_classify_the_task_not_the_reminders() {
        let turns = claude_turns();
        let first = input_of(&anthropic(&turns[..1]));
        assert_eq!(first.text.as_deref(), Some(TASK));
        assert!(first.new_turn && !first.light);
        // Tool results with reminders: no new user words; the task is still what is classified.
        for end in [3, 5] {
            let i = input_of(&anthropic(&turns[..end]));
            assert_eq!(i.text.as_deref(), Some(TASK), "turn {end}");
            assert!(!i.new_turn, "turn {end} is a tool loop");
        }
        let thanks = input_of(&anthropic(&turns[..7]));
        assert!(thanks.new_turn && thanks.light);
        assert_eq!(thanks.text.as_deref(), Some("thanks"));
        let next = input_of(&anthropic(&turns[..9]));
        assert!(next.new_turn && !next.light);
        assert!(next
            .text
            .unwrap()
            .starts_with("Now add a Prometheus counter"));
        // One session for all of them (metadata.user_id + the opening).
        let ids: Vec<Identity> = [1, 3, 5, 7, 9]
            .iter()
            .map(|&n| {
                let req = anthropic(&turns[..n]);
                let user = req.user.clone();
                id_of(
                    &req,
                    Keys {
                        user,
                        ..Keys::default()
                    },
                )
            })
            .collect();
        assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
        assert_eq!(ids[0].source, KeySource::Fingerprint);
    }

    #[test]
    fn codex_turns_classify_the_task_not_agents_md_or_the_environment() {
        let task = "Refactor the retry loop in router-svc/src/upstream/mod.rs to use exponential \
            backoff with jitter, bounded by the request deadline, and add unit tests";
        let first = input_of(&responses(&codex(vec![])));
        assert_eq!(first.text.as_deref(), Some(task));
        assert!(first.new_turn);
        assert_eq!(
            first.user_turns, 1,
            "AGENTS.md and environment items are not turns"
        );
        let looped = input_of(&responses(&codex(codex_loop())));
        assert_eq!(looped.text.as_deref(), Some(task));
        assert!(!looped.new_turn);
        // The session key: prompt_cache_key from the client's body.
        let body = codex(codex_loop());
        let keys = Keys::of_body(body.to_string().as_bytes());
        let id = id_of(&responses(&body), keys);
        assert_eq!(id.source, KeySource::PromptCacheKey);
        let first_id = id_of(
            &responses(&codex(vec![])),
            Keys::of_body(codex(vec![]).to_string().as_bytes()),
        );
        assert_eq!(id, first_id);
    }

    #[test]
    fn chat_follow_ups_carry_the_earlier_turns_and_acknowledgements_do_not() {
        let c = cfg();
        let conv = |turns: &[&str]| -> Input {
            let mut msgs = vec![json!({"role": "system", "content": "You are helpful."})];
            for (i, t) in turns.iter().enumerate() {
                if i > 0 {
                    msgs.push(json!({"role": "assistant", "content": "An answer."}));
                }
                msgs.push(json!({"role": "user", "content": t}));
            }
            text::read(&msgs, &c.classifier.input)
        };
        let proof = "Prove that there are infinitely many primes of the form 4k+3.";
        let i = conv(&[proof, "thanks!"]);
        assert!(i.light);
        assert_eq!(i.text.as_deref(), Some("thanks!"));
        let i = conv(&[proof, "thanks!", "what about primes of the form 4k+1?"]);
        assert!(!i.light);
        assert_eq!(
            i.text.as_deref(),
            Some(format!("{proof}\nwhat about primes of the form 4k+1?").as_str())
        );
        // A long turn stands alone.
        let long = "Write a function that parses an RFC 3339 timestamp and returns the Unix time in milliseconds, handling UTC offsets.";
        assert_eq!(conv(&[proof, long]).text.as_deref(), Some(long));
        // Tags inside a turn are cut, a turn of boilerplate only is not a turn.
        let msgs = vec![
            json!({"role": "user", "content": format!("{REMINDER}\nexplain monads")}),
            json!({"role": "user", "content": REMINDER}),
        ];
        let i = text::read(&msgs, &c.classifier.input);
        assert_eq!(i.text.as_deref(), Some("explain monads"));
        assert!(!i.new_turn);
        assert_eq!(i.user_turns, 1);
    }

    #[test]
    fn explicit_keys_win_and_tenants_stay_apart() {
        let c = cfg();
        let msgs = vec![json!({"role": "user", "content": "hello there"})];
        let mut h = HeaderMap::new();
        let none = Keys::default();
        let fp = identify(&c.session, &c.classifier.input, &h, &none, "", &msgs).unwrap();
        assert_eq!(fp.source, KeySource::Fingerprint);
        let other_user = Keys {
            user: Some("u2".into()),
            ..Keys::default()
        };
        let fp2 = identify(&c.session, &c.classifier.input, &h, &other_user, "", &msgs).unwrap();
        assert_ne!(
            fp.id, fp2.id,
            "the same opening by two users is two sessions"
        );
        let pck = Keys {
            prompt_cache_key: Some("k1".into()),
            ..Keys::default()
        };
        let a = identify(&c.session, &c.classifier.input, &h, &pck, "", &msgs).unwrap();
        assert_eq!(a.source, KeySource::PromptCacheKey);
        h.insert("x-session-id", "s-42".parse().unwrap());
        let b = identify(&c.session, &c.classifier.input, &h, &pck, "", &msgs).unwrap();
        assert_eq!(b.source, KeySource::Header);
        let b2 = identify(&c.session, &c.classifier.input, &h, &pck, "key-2", &msgs).unwrap();
        assert_ne!(b.id, b2.id, "another API key: another session");
        assert_eq!(b.id.len(), 16);
        assert!(!b.id.contains("s-42"));
        let conv = Keys {
            conversation: Some(json!({"id": "conv_1"})),
            ..Keys::default()
        };
        let h0 = HeaderMap::new();
        let d = identify(&c.session, &c.classifier.input, &h0, &conv, "", &msgs).unwrap();
        assert_eq!(d.source, KeySource::Conversation);
        // A chat request's own keys, and a Responses body's over them.
        let k = Keys::of_request(Some("k"), Some("u"), None);
        assert_eq!(
            (k.prompt_cache_key.as_deref(), k.user.as_deref()),
            (Some("k"), Some("u"))
        );
        let k = Keys::of_request(
            None,
            Some("u"),
            Some(br#"{"prompt_cache_key": "r", "conversation": "c"}"#),
        );
        assert_eq!(k.prompt_cache_key.as_deref(), Some("r"));
        assert_eq!(k.conversation, Some(json!("c")));
        assert!(identify(
            &c.session,
            &c.classifier.input,
            &h0,
            &none,
            "",
            &[json!({"role": "system", "content": "x"})]
        )
        .is_none());
    }

    /// A session on qwen3-8b set by `turn` under policy "p".
    fn large_state(use_reasoning: bool, turn: u64) -> State {
        State {
            model: "qwen3-8b".into(),
            use_reasoning,
            category: None,
            complexity: None,
            turn,
            policy: "p".into(),
            lighter: 0,
            switches: 0,
            provisional: false,
            endpoint: None,
        }
    }

    /// A first turn that fails open leaves a provisional state on the default model: the tool
    /// loop keeps it without the classifier, another failure holds it, and the first user turn
    /// classified replaces it as a first turn would (no switch counted).
    #[test]
    fn a_failed_first_turn_leaves_a_provisional_state() {
        let c = cfg();
        let default = c.routing.default_model.clone();
        let mut failed = decided(&default, false, Source::FailOpen);
        failed.fail_reason = Some("shed".into());
        let (d, a, st) = apply(&c, "p", None, failed.clone(), &turn("task", 1));
        assert_eq!((d.model.as_str(), a), (default.as_str(), Action::Started));
        let st = st.expect("a provisional state is kept");
        assert!(st.provisional);
        let json = serde_json::to_string(&st).unwrap();
        assert!(json.contains("provisional"), "{json}");
        let plain = serde_json::to_string(&large_state(false, 1)).unwrap();
        assert!(
            !plain.contains("provisional"),
            "stored only when set: {plain}"
        );

        let mut tool = turn("task", 1);
        tool.new_turn = false;
        let (d, a, _) = unclassified(&c, &st, &tool);
        assert_eq!((d.model.as_str(), a), (default.as_str(), Action::ToolLoop));

        let (_, a, again) = apply(&c, "p", Some(&st), failed, &turn("more", 2));
        assert_eq!(a, Action::Held);
        assert!(again.unwrap().provisional);

        let (d, a, next) = apply(
            &c,
            "p",
            Some(&st),
            decided("qwen3-8b", true, Source::Classified),
            &turn("more", 2),
        );
        assert_eq!((d.model.as_str(), a), ("qwen3-8b", Action::Started));
        let next = next.unwrap();
        assert!(!next.provisional);
        assert_eq!(next.switches, 0);
    }

    /// A session's endpoint stays with its model: kept by classified, held, light and tool-loop
    /// turns, dropped when the model changes (the new one is placed anew), stored only when set.
    #[test]
    fn the_placed_endpoint_stays_with_the_model() {
        let c = cfg();
        let mut st = large_state(true, 1);
        st.endpoint = Some(42);
        let json = serde_json::to_string(&st).unwrap();
        assert!(json.contains("\"endpoint\":42"), "{json}");
        assert!(!serde_json::to_string(&large_state(true, 1))
            .unwrap()
            .contains("endpoint"));
        let kept = apply(
            &c,
            "p",
            Some(&st),
            decided("qwen3-8b", true, Source::Classified),
            &turn("more", 2),
        );
        assert_eq!((kept.1, kept.2.unwrap().endpoint), (Action::Kept, Some(42)));
        let held = apply(
            &c,
            "p",
            Some(&st),
            decided("qwen3-0.6b", false, Source::FailOpen),
            &turn("more", 2),
        );
        assert_eq!((held.1, held.2.unwrap().endpoint), (Action::Held, Some(42)));
        let mut ack = turn("thanks", 2);
        ack.light = true;
        let (_, a, next) = unclassified(&c, &st, &ack);
        assert_eq!((a, next.endpoint), (Action::Light, Some(42)));
        // Stepped down to the small model: another pool, placed anew.
        let mut c2 = cfg();
        c2.session.step_down_after = 1;
        let down = apply(
            &c2,
            "p",
            Some(&st),
            decided("qwen3-0.6b", false, Source::Classified),
            &turn("more", 2),
        );
        assert_eq!(down.1, Action::SteppedDown);
        assert_eq!(down.2.unwrap().endpoint, None);
        let note = |action, endpoint| Note {
            id: "s".into(),
            key: KeySource::Fingerprint,
            action,
            previous: None,
            classified: None,
            endpoint,
        };
        assert!(note(Action::Started, None).places());
        assert!(note(Action::Escalated, None).places());
        assert!(!note(Action::Kept, Some(42)).places());
        assert!(!note(Action::ToolLoop, None).places(), "unknown: hashed");
    }

    fn decided(model: &str, reasoning: bool, source: Source) -> Decision {
        let mut d = Decision::new(model, source);
        d.use_reasoning = reasoning;
        d
    }

    fn turn(text: &str, n: usize) -> Input {
        Input {
            text: Some(text.into()),
            new_turn: true,
            light: false,
            user_turns: n,
        }
    }

    #[test]
    fn a_session_escalates_keeps_and_holds() {
        let c = cfg();
        let (small, large) = ("qwen3-0.6b", "qwen3-8b");
        assert!(rank(&c, large) > rank(&c, small));
        // Start small, escalate on a hard turn, keep the large model on a light one.
        let (d, a, st) = apply(
            &c,
            "p",
            None,
            decided(small, false, Source::Classified),
            &turn("hi", 1),
        );
        assert_eq!((d.model.as_str(), a), (small, Action::Started));
        let st = st.unwrap();
        let (d, a, st) = apply(
            &c,
            "p",
            Some(&st),
            decided(large, true, Source::Classified),
            &turn("prove it", 2),
        );
        assert_eq!(
            (d.model.as_str(), a, d.use_reasoning),
            (large, Action::Escalated, true)
        );
        let st = State {
            category: Some("math".into()),
            ..st.unwrap()
        };
        assert_eq!(st.switches, 1);
        let (d, a, st2) = apply(
            &c,
            "p",
            Some(&st),
            decided(small, false, Source::CacheLocal),
            &turn("simpler please", 3),
        );
        assert_eq!(
            (d.model.as_str(), a, d.source),
            (large, Action::Kept, Source::Session)
        );
        assert!(
            !d.use_reasoning,
            "a lighter turn turns reasoning off, not the model"
        );
        assert_eq!(
            d.category, st.category,
            "the session's category (its system prompt) stays"
        );
        assert_eq!(st2.unwrap().lighter, 1);
        // The classifier failing holds the session's model.
        let mut failed = decided(&c.routing.default_model, false, Source::FailOpen);
        failed.fail_reason = Some("timeout".into());
        let (d, a, _) = apply(&c, "p", Some(&st), failed, &turn("more", 3));
        assert_eq!((d.model.as_str(), a), (large, Action::Held));
        assert_eq!(d.fail_reason.as_deref(), Some("timeout"));
        // A state from another policy version is void.
        let (d, a, _) = apply(
            &c,
            "q",
            Some(&st),
            decided(small, false, Source::Classified),
            &turn("x", 3),
        );
        assert_eq!((d.model.as_str(), a), (small, Action::Started));
        // A refusal never touches the session.
        let mut blocked = decided(small, false, Source::Classified);
        blocked.blocked = true;
        let (d, a, st3) = apply(&c, "p", Some(&st), blocked, &turn("attack", 3));
        assert!(d.blocked && st3.is_none());
        assert_eq!(a, Action::Refused);
    }

    #[test]
    fn step_down_after_n_lighter_turns_when_configured() {
        let mut c = cfg();
        c.session.step_down_after = 2;
        let st = large_state(true, 1);
        let small = || decided("qwen3-0.6b", false, Source::Classified);
        let (d, a, st) = apply(&c, "p", Some(&st), small(), &turn("a", 2));
        assert_eq!((d.model.as_str(), a), ("qwen3-8b", Action::Kept));
        let (d, a, st) = apply(&c, "p", st.as_ref(), small(), &turn("b", 3));
        assert_eq!((d.model.as_str(), a), ("qwen3-0.6b", Action::SteppedDown));
        assert_eq!(st.unwrap().switches, 1);
        // Tiers override prices: listing the small model last makes it the strongest.
        c.session.tiers = vec!["qwen3-8b".into(), "qwen3-0.6b".into()];
        assert!(rank(&c, "qwen3-0.6b") > rank(&c, "qwen3-8b"));
    }

    #[test]
    fn unclassified_turns_keep_the_state() {
        let c = cfg();
        let st = State {
            category: Some("math".into()),
            complexity: Some("reasoning".into()),
            ..large_state(true, 7)
        };
        let mut tool = turn("task", 1);
        tool.new_turn = false;
        let (d, a, next) = unclassified(&c, &st, &tool);
        assert_eq!(
            (d.model.as_str(), d.use_reasoning, a),
            ("qwen3-8b", true, Action::ToolLoop)
        );
        assert_eq!(d.source, Source::Session);
        assert_eq!(next, st);
        let mut thanks = turn("thanks", 2);
        thanks.light = true;
        let (d, a, next) = unclassified(&c, &st, &thanks);
        assert_eq!(
            (d.model.as_str(), d.use_reasoning, a),
            ("qwen3-8b", false, Action::Light)
        );
        assert_eq!(next.turn, turn_of(&thanks));
        // The turn that set the state, classified again: the session's model and reasoning.
        let again = repeat(decided("qwen3-0.6b", false, Source::CacheLocal), &st);
        assert_eq!(
            (again.model.as_str(), again.use_reasoning, again.source),
            ("qwen3-8b", true, Source::Session)
        );
        let same = repeat(decided("qwen3-8b", true, Source::CacheLocal), &st);
        assert_eq!(same.source, Source::CacheLocal);
    }

    #[tokio::test]
    async fn states_live_in_process_without_redis() {
        let c = cfg();
        let s = Sessions::new(&c.session, None);
        assert!(s.load("abc").await.is_none());
        let st = large_state(false, 9);
        s.save("abc", st.clone()).await;
        assert_eq!(s.load("abc").await.as_deref(), Some(&st));
        assert!(s.current("abc", 9).is_some());
        assert!(s.current("abc", 10).is_none(), "another turn: not current");
        s.touch("abc");
        s.count(Action::Kept);
    }
}
