//! Every setting of router-svc in one place: the YAML schema (with defaults), the command line,
//! environment overrides for addresses and secrets, and validation whose errors name the bad field.
//!
//! The file is re-read on change (see `state.rs`); the policy part of it is hashed into the
//! policy version so a new policy never serves a stale cached decision.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Error;

/// The config the binary runs with when given no `--config`: two local (simulated) backends,
/// the classifier on :50051, Redis on :6379. Also the documented example of every field.
pub const EMBEDDED_DEFAULT: &str = include_str!("../config/router.yaml");

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "router-svc",
    version,
    about = "OpenAI-compatible semantic router: classify, cache the decision, forward to vLLM"
)]
pub struct Cli {
    /// YAML config file (watched and reloaded on change). Without it: the embedded defaults.
    #[arg(long, env = "ROUTER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Check the config (after env overrides) and exit.
    #[arg(long)]
    pub check: bool,
    /// JSON logs on stderr (text otherwise); RUST_LOG filters. The environment variable takes
    /// 1/0, true/false, yes/no, on/off.
    #[arg(long, env = "ROUTER_LOG_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub log_json: bool,
    /// How often the config file is checked for changes, ms.
    #[arg(long, env = "ROUTER_RELOAD_INTERVAL_MS", default_value_t = 1000)]
    pub reload_interval_ms: u64,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// API keys (auth.mode: keys): add, list, revoke. Uses the config's Redis.
    #[command(subcommand)]
    Keys(crate::tenant::cli::KeysCmd),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub classifier: ClassifierConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub response_cache: ResponseCacheConfig,
    #[serde(default)]
    pub session: SessionConfig,
    #[serde(default)]
    pub fast_tier: FastTierConfig,
    pub models: Vec<ModelConfig>,
    pub routing: RoutingConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// HTTP listen address (env ROUTER_LISTEN). Read at start only.
    pub listen: SocketAddr,
    /// The model name that asks for semantic routing.
    pub auto_model: String,
    /// Request bodies over this many bytes get 413.
    pub max_body_bytes: usize,
    /// Requests handled at once; more get 429 at once (nothing queues without bound).
    pub max_in_flight: usize,
    /// A request body must arrive within this (else 408).
    pub body_timeout_ms: u64,
    /// On SIGTERM/Ctrl-C, requests in flight get this long to finish.
    pub shutdown_grace_ms: u64,
    /// On SIGTERM/Ctrl-C, /readyz answers 503 for this long while the router still serves, so a
    /// load balancer stops sending before connections close (0: stop accepting at once).
    pub drain_ms: u64,
    /// Trouble that happens per request (fail-open, retries, Redis errors, broken streams) is
    /// counted and logged as one summary line per interval, never a line per request; the
    /// classified-share gauge covers the same interval.
    pub summary_interval_ms: u64,
    /// Threads that serve connections, each a single-threaded runtime (`workers.rs`); 0: one
    /// per core (env ROUTER_WORKERS). Read at start only.
    pub workers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".parse().unwrap(),
            auto_model: "auto".into(),
            max_body_bytes: 8 << 20,
            max_in_flight: 4096,
            body_timeout_ms: 30_000,
            shutdown_grace_ms: 30_000,
            drain_ms: 0,
            summary_interval_ms: 10_000,
            workers: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifierConfig {
    /// gRPC addresses of classifier-svc replicas (env ROUTER_CLASSIFIER_ADDRS, comma-separated);
    /// calls are balanced over them. Empty: no classification, every `auto` request goes to the
    /// default model.
    pub addresses: Vec<String>,
    /// Deadline of one Classify call (sent as grpc-timeout too).
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Consecutive failures that open the circuit breaker (connection refused or reset,
    /// UNAVAILABLE: the classifier is dead; a busy one, past its deadline or RESOURCE_EXHAUSTED,
    /// is left to `admission`)...
    pub breaker_failures: u32,
    /// ...and how long it stays open before one probe call is let through.
    pub breaker_cooldown_ms: u64,
    /// How often the classifier's Info (tasks, model versions) is refreshed.
    pub info_refresh_ms: u64,
    /// What text of a request is classified.
    pub input: InputConfig,
    /// The adaptive limit on Classify calls in flight: over it a request fails open at once
    /// (reason `shed`) instead of waiting out the deadline behind a busy classifier.
    pub admission: AdmissionConfig,
}

/// The fast tier in process (`decide::fast_tier`): a static model and its heads that classify
/// a request when the classifier cannot (dead, shed, late), instead of failing open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FastTierConfig {
    /// Off: such requests fail open to the default model.
    pub enabled: bool,
    /// The static model: a directory, `hf:org/name[@revision]`, or `none` (env
    /// ROUTER_FAST_TIER_MODEL). The default directory may be absent (then there is none); one
    /// named here must load.
    pub model: String,
    /// Its heads' directory (env ROUTER_FAST_TIER_HEADS).
    pub heads: String,
}

impl Default for FastTierConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            model: "models/static-minilm".into(),
            heads: "models/heads-static".into(),
        }
    }
}

impl FastTierConfig {
    /// The shipped paths, which a checkout or image may lack.
    pub fn is_default(&self) -> bool {
        let d = Self::default();
        self.model == d.model && self.heads == d.heads
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Calls in flight allowed at start, and the bounds the limit moves between.
    pub initial_limit: usize,
    pub min_limit: usize,
    pub max_limit: usize,
    /// A call answered slower than this (or past its deadline, or RESOURCE_EXHAUSTED) shrinks
    /// the limit by `backoff_ratio`; a quick one grows it by one. 0 = 3/4 of `timeout_ms`.
    pub slow_ms: u64,
    pub backoff_ratio: f64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            initial_limit: 16,
            min_limit: 1,
            max_limit: 256,
            slow_ms: 0,
            backoff_ratio: 0.9,
        }
    }
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        Self {
            addresses: vec!["http://127.0.0.1:50051".into()],
            timeout_ms: 50,
            connect_timeout_ms: 250,
            breaker_failures: 5,
            breaker_cooldown_ms: 2000,
            info_refresh_ms: 10_000,
            input: InputConfig::default(),
            admission: AdmissionConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// Prepend the system prompt to the classified text.
    pub include_system: bool,
    /// Earlier user/assistant turns to include before the latest user message (newest first,
    /// within `max_chars`).
    pub history_messages: usize,
    /// Budget for the classified text, in characters (the latest user message is cut to it).
    pub max_chars: usize,
    /// Text parts of user messages that clients add around what the user typed: a part that
    /// begins with one of these (after leading white space) is not the user's words.
    pub skip_prefixes: Vec<String>,
    /// Tagged segments (`<tag>...</tag>`) cut out of user text wherever they appear.
    pub strip_tags: Vec<String>,
    /// A latest user turn of fewer words than this is a follow-up ("now in Rust", "what about
    /// 4k+1?"): classified after up to `follow_up_turns` earlier user turns (within
    /// `max_chars`; not when `history_messages` is set, which already adds them). 0 turns: off.
    pub follow_up_words: usize,
    pub follow_up_turns: usize,
    /// A user turn of 1-6 words, all of them from this list, is an acknowledgement ("thanks",
    /// "ok, got it"): light, never given the earlier turns; in a session it keeps the model and
    /// turns reasoning off.
    pub light_words: Vec<String>,
}

/// Defaults that recognise the major clients: Claude Code's `<system-reminder>` blocks and local
/// command output, Codex's `<environment_context>`, `<user_instructions>` and AGENTS.md items.
const STRIP_TAGS: &[&str] = &[
    "system-reminder",
    "environment_context",
    "user_instructions",
    "INSTRUCTIONS",
    "local-command-stdout",
];
const SKIP_PREFIXES: &[&str] = &[
    "# AGENTS.md instructions",
    "Caveat: The messages below were generated by the user while running local commands",
];
const LIGHT_WORDS: &[&str] = &[
    "thanks", "thank", "you", "thx", "ty", "ok", "okay", "k", "great", "cool", "perfect", "nice",
    "awesome", "got", "it", "cheers", "bye", "much", "so", "very", "a", "lot", "that", "works",
    "good", "alright", "sounds", "fine", "merci", "danke", "gracias",
];

impl Default for InputConfig {
    fn default() -> Self {
        let owned = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        Self {
            include_system: false,
            history_messages: 0,
            max_chars: 8000,
            skip_prefixes: owned(SKIP_PREFIXES),
            strip_tags: owned(STRIP_TAGS),
            follow_up_words: 16,
            follow_up_turns: 2,
            light_words: owned(LIGHT_WORDS),
        }
    }
}

/// Sessions (`decide/session.rs`): the turns of one conversation or agent session keep one
/// decision unless a switch pays, stored where every replica sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    pub enabled: bool,
    /// A request header that names the session (else the body's keys, else a fingerprint).
    pub header: String,
    /// Redis key prefix (the decision cache's Redis) and the state's TTL, renewed every turn.
    pub key_prefix: String,
    pub ttl_secs: u64,
    /// In-process copy: entries and TTL (also what serves when Redis is away).
    pub local_capacity: u64,
    pub local_ttl_secs: u64,
    /// A new user turn that needs a stronger model than the session's switches up to it.
    pub escalate: bool,
    /// After this many user turns in a row that a weaker model would serve, step down to it
    /// (0: never step down).
    pub step_down_after: u32,
    /// Models from weakest to strongest; models not listed rank by their price (input +
    /// output per million), unpriced ones lowest.
    pub tiers: Vec<String>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            header: "x-session-id".into(),
            key_prefix: "vsr:session:".into(),
            ttl_secs: 3600,
            local_capacity: 100_000,
            local_ttl_secs: 3600,
            escalate: true,
            step_down_after: 0,
            tiers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Redis URL (env ROUTER_REDIS_URL): `redis://`, `redis+cluster://h1:p1,h2:p2` or
    /// `redis+sentinel://s1:p1,s2:p2/<master>` (see `store.rs`); also where API keys, limits and
    /// spend live. Absent, `null` or `""` (in the file or the environment): no Redis, the
    /// in-process cache only.
    pub redis_url: Option<String>,
    pub key_prefix: String,
    /// TTL of a decision in Redis.
    pub ttl_secs: u64,
    /// In-process LRU in front of Redis: entries, and their (shorter) TTL.
    pub local_capacity: u64,
    pub local_ttl_secs: u64,
    /// Budget of one Redis call; past it the cache is skipped for this request.
    pub redis_timeout_ms: u64,
    /// After a Redis failure, Redis is skipped for this long (then one call probes it).
    pub redis_retry_ms: u64,
    pub redis_pool_size: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            key_prefix: "vsr:decision:".into(),
            ttl_secs: 3600,
            local_capacity: 10_000,
            local_ttl_secs: 300,
            redis_timeout_ms: 5,
            redis_retry_ms: 1000,
            redis_pool_size: 32,
        }
    }
}

/// The response cache (off unless `enabled`; see `response_cache.rs`): answers replayed for a
/// request the same as an earlier one in the same scope (exact), or one whose classified text
/// is as close as `semantic.threshold` (the classifier's embedding, same pass).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseCacheConfig {
    pub enabled: bool,
    /// Models whose answers are cached; empty: every model.
    pub models: Vec<String>,
    /// APIs cached (`chat`, `completions`, `messages`, `responses`); empty: every one.
    pub endpoints: Vec<String>,
    /// How long an answer is replayed.
    pub ttl_secs: u64,
    /// Answers larger than this are not stored.
    pub max_entry_bytes: usize,
    /// Bytes of answers held in process (least recently used evicted).
    pub local_max_bytes: u64,
    /// Also store answers in the Redis of `cache.redis_url`, shared by every replica. They are
    /// prompt-derived answer text: off unless the operator turns it on (TTL `ttl_secs`).
    pub redis: bool,
    /// Cache requests that sample (`temperature` absent or above 0, `top_p` below 1, `n` above
    /// 1): their answers are meant to differ, so by default they bypass the cache.
    pub sampled: bool,
    pub semantic: SemanticCacheConfig,
}

impl Default for ResponseCacheConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            models: Vec::new(),
            endpoints: Vec::new(),
            ttl_secs: 300,
            max_entry_bytes: 256 * 1024,
            local_max_bytes: 64 * 1024 * 1024,
            redis: false,
            sampled: false,
            semantic: SemanticCacheConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SemanticCacheConfig {
    pub enabled: bool,
    /// Cosine similarity of the classified texts' embeddings at or above which an answer is
    /// reused.
    pub threshold: f32,
    /// Texts that differ in their negations or numbers never match, however close
    /// ("how to install X" / "how not to install X").
    pub guard: bool,
    /// Vectors kept per group of otherwise identical requests (oldest dropped).
    pub group_capacity: usize,
}

impl Default for SemanticCacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: 0.95,
            guard: true,
            group_capacity: 256,
        }
    }
}

/// Who may call the router and how much: API keys, per-key rate limits and daily budgets
/// (see `tenant/`). Keys and limits live in the Redis of `cache.redis_url` (shared by every
/// replica) and/or in `keys_file`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `none`: anyone may call (the quickstart); `keys`: every /v1 route needs a key.
    pub mode: AuthMode,
    /// Static keys (a YAML file written by `router-svc keys add --file`), read at start and on
    /// config reload. Keys in Redis are added and revoked at run time.
    pub keys_file: Option<PathBuf>,
    /// Prefix of every Redis key the tenant layer writes (records, limits, spend).
    pub key_prefix: String,
    /// A replica keeps a looked-up key this long before asking Redis again: a revocation takes
    /// effect on every replica within it.
    pub lookup_cache_ms: u64,
    /// Budget of one Redis call of the tenant layer (lookup, limits).
    pub redis_timeout_ms: u64,
    /// When Redis cannot be asked: `fail_open` enforces each key's limits per replica (in
    /// process) and serves keys looked up before; `fail_closed` answers 503.
    pub redis_unavailable: RedisUnavailable,
    /// Share of a key's daily budget past which its `auto` requests go to the cheapest model.
    pub downgrade_at: f64,
    /// Past the whole budget: `reject` (429 budget_exceeded) or `downgrade_only` (keep serving
    /// `auto` requests on the cheapest model; named models are refused either way).
    pub over_budget: OverBudget,
    /// Distinct key names shown as the `key` label of metrics; later ones count as "other".
    pub max_key_labels: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::None,
            keys_file: None,
            key_prefix: "semroute:".into(),
            lookup_cache_ms: 500,
            redis_timeout_ms: 20,
            redis_unavailable: RedisUnavailable::FailOpen,
            downgrade_at: 0.8,
            over_budget: OverBudget::Reject,
            max_key_labels: 200,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    #[default]
    None,
    Keys,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RedisUnavailable {
    #[default]
    FailOpen,
    FailClosed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OverBudget {
    #[default]
    Reject,
    DowngradeOnly,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub connect_timeout_ms: u64,
    /// Streaming requests: until the response headers (vLLM sends them with the first token).
    /// Plain requests wait for their headers until the total timeout (vLLM answers when done).
    pub first_byte_timeout_ms: u64,
    /// The whole exchange, body or stream included.
    pub total_timeout_ms: u64,
    /// Endpoints tried per model (connection failures and 5xx before any byte).
    pub max_attempts: usize,
    pub health_path: String,
    pub health_interval_ms: u64,
    pub health_timeout_ms: u64,
    /// Consecutive request failures that eject an endpoint...
    pub eject_after_failures: u32,
    /// ...for this long.
    pub eject_ms: u64,
    pub max_idle_per_host: usize,
    /// A session's turns go to the endpoint of its model that its first turn was placed on, so
    /// the replica holding its prefix cache serves it, while that endpoint's requests in flight
    /// stay within this many times the mean; 0: no affinity (power of two choices for every
    /// request).
    pub affinity_load_bound: f64,
    /// The load each endpoint reports (its Prometheus metrics), what endpoint choice and
    /// overflow read.
    pub load: LoadConfig,
    /// The request header a gateway's HTTPRoute matches to pick the model's pool, sent to models
    /// whose `endpoint_picker` is `gateway` (the Gateway API Inference Extension's body-based
    /// routing sets the same header).
    pub gateway_header: String,
}

/// Load signals: every endpoint's `metrics_path` scraped every `interval_ms` (vLLM's
/// `num_requests_waiting`, `num_requests_running`, `kv_cache_usage_perc`; SGLang's and
/// llama.cpp's equivalents). An endpoint's score is
/// `max(in_flight, running) + queue_weight * waiting + kv_weight * kv_usage`, where `in_flight`
/// is this router's requests there; a scrape older than `stale_after_ms` (or none) leaves only
/// `in_flight`. It is saturated when a fresh scrape shows `waiting >= saturated_waiting` or
/// `kv_usage >= saturated_kv`: choice avoids it while another endpoint is not, and a model
/// whose endpoints are all saturated overflows to the next candidate (`overflow`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadConfig {
    /// 0: no scraping (choice by this router's in-flight counts alone; no overflow).
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub metrics_path: String,
    pub stale_after_ms: u64,
    pub queue_weight: f64,
    pub kv_weight: f64,
    pub saturated_waiting: f64,
    pub saturated_kv: f64,
    /// Requests may go to the next candidate when their model's pool is saturated (each model
    /// may forbid it: `models[].overflow: false`).
    pub overflow: bool,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            interval_ms: 1000,
            timeout_ms: 500,
            metrics_path: "/metrics".into(),
            stale_after_ms: 5000,
            queue_weight: 4.0,
            kv_weight: 4.0,
            saturated_waiting: 1.0,
            saturated_kv: 0.95,
            overflow: true,
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 1000,
            first_byte_timeout_ms: 60_000,
            total_timeout_ms: 600_000,
            max_attempts: 3,
            health_path: "/health".into(),
            health_interval_ms: 2000,
            health_timeout_ms: 1000,
            eject_after_failures: 3,
            eject_ms: 10_000,
            max_idle_per_host: 512,
            affinity_load_bound: 2.0,
            load: LoadConfig::default(),
            gateway_header: "x-gateway-model-name".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Name clients use and the name sent to the backend.
    pub name: String,
    /// Base URLs of the vLLM servers serving it (env ROUTER_ENDPOINTS_<NAME>, comma-separated).
    pub endpoints: Vec<String>,
    /// How reasoning is switched on and off for this model.
    #[serde(default)]
    pub reasoning_family: Option<ReasoningFamily>,
    /// gpt-oss: the effort sent when reasoning is on ("low" when off).
    #[serde(default = "default_effort")]
    pub reasoning_effort: String,
    #[serde(default)]
    pub pricing: Pricing,
    #[serde(default)]
    pub max_context: Option<u32>,
    /// Name of an environment variable holding the backend's API key (sent as a Bearer token).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// PII this model may not see, and what then happens.
    #[serde(default)]
    pub pii: Option<PiiPolicy>,
    /// The APIs its backend serves besides chat and text completions: `messages` (Anthropic's
    /// `/v1/messages`), `responses` (OpenAI's `/v1/responses`). Such requests go to it as the
    /// client sent them (`model` replaced) and its answers are relayed unchanged; without it
    /// they are translated to chat completions and the answer back.
    #[serde(default)]
    pub api: Vec<Api>,
    /// Who picks the server: `router` (default: `endpoints` are the model's servers, chosen by
    /// load) or `gateway` (`endpoints` are an inference gateway's URLs; the model goes in
    /// `upstream.gateway_header` and the gateway's endpoint picker, e.g. llm-d's, picks the pod).
    #[serde(default)]
    pub endpoint_picker: EndpointPicker,
    /// The pool the gateway routes to (the header's value; default the model's name).
    #[serde(default)]
    pub pool: Option<String>,
    /// Whether its requests may overflow to the next candidate when all its endpoints are
    /// saturated (`upstream.load`).
    #[serde(default = "yes")]
    pub overflow: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointPicker {
    #[default]
    Router,
    Gateway,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// OpenAI chat completions (every backend serves it; listing it changes nothing).
    Chat,
    /// Anthropic Messages, `POST /v1/messages`.
    Messages,
    /// OpenAI Responses, `POST /v1/responses` (vLLM serves it; stored responses live there).
    Responses,
}

impl Api {
    pub fn path(self) -> &'static str {
        match self {
            Api::Chat => "/v1/chat/completions",
            Api::Messages => "/v1/messages",
            Api::Responses => "/v1/responses",
        }
    }

    /// As `response_cache.endpoints` names it.
    pub fn name(self) -> &'static str {
        match self {
            Api::Chat => "chat",
            Api::Messages => "messages",
            Api::Responses => "responses",
        }
    }
}

impl ModelConfig {
    /// The pool named in the gateway header (gateway models).
    pub fn pool(&self) -> &str {
        self.pool.as_deref().unwrap_or(&self.name)
    }

    /// Whether its backend serves `api` itself.
    pub fn serves(&self, api: Api) -> bool {
        api == Api::Chat || self.api.contains(&api)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiPolicy {
    /// Entity types (`semroute_pii::PiiType`: EMAIL_ADDRESS, CREDIT_CARD, US_SSN, IP_ADDRESS,
    /// PHONE_NUMBER by pattern; PERSON, ADDRESS, LOCATION, ... by the classifier's PII task), or ALL.
    pub deny: Vec<String>,
    #[serde(default = "pii_skip")]
    pub action: PiiAction,
}

fn pii_skip() -> PiiAction {
    PiiAction::Skip
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PiiAction {
    /// The model is skipped for such requests (next candidate; none left: 400).
    Skip,
    /// The PII is replaced by `[TYPE]` before the request reaches this model.
    Mask,
}

impl PiiPolicy {
    /// The denied types.
    pub fn denied(&self) -> std::collections::BTreeSet<crate::decide::pii::PiiType> {
        use crate::decide::pii::{PiiType, ALL};
        if self.deny.iter().any(|d| d == "ALL") {
            return ALL.into_iter().collect();
        }
        self.deny.iter().filter_map(|d| PiiType::parse(d)).collect()
    }
}

fn default_effort() -> String {
    "high".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReasoningFamily {
    /// chat_template_kwargs.enable_thinking
    #[serde(rename = "qwen3")]
    Qwen3,
    /// chat_template_kwargs.thinking
    #[serde(rename = "deepseek")]
    DeepSeek,
    /// reasoning_effort
    #[serde(rename = "gpt-oss")]
    GptOss,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    /// Currency units per million prompt tokens.
    #[serde(default)]
    pub input_per_million: f64,
    #[serde(default)]
    pub output_per_million: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Used when nothing else decides: no text, low confidence, classifier down.
    pub default_model: String,
    /// Tried when every endpoint of the chosen model (and its alternatives) failed.
    #[serde(default)]
    pub fallback_model: Option<String>,
    /// Under this probability a task's label is ignored.
    #[serde(default = "default_threshold")]
    pub confidence_threshold: f32,
    /// Classifier task names.
    #[serde(default)]
    pub tasks: TaskNames,
    /// Domain label -> candidates (best first by score) and an optional system prompt.
    #[serde(default)]
    pub categories: BTreeMap<String, CategoryRule>,
    /// Complexity label -> overrides applied after the category rule.
    #[serde(default)]
    pub complexity: BTreeMap<String, ComplexityRule>,
    #[serde(default)]
    pub jailbreak: JailbreakPolicy,
    /// Routes without training: a few example prompts and a target model each.
    #[serde(default)]
    pub routes: Vec<RouteRule>,
    /// true: a matching route wins over the trained domains; false: routes decide only when the
    /// domain gives no confident category rule.
    #[serde(default = "yes")]
    pub routes_win: bool,
    /// The cost knob: a "strong model needed" classifier task decides between a weak and a
    /// strong model, last (after categories and complexity; not over a similarity route).
    #[serde(default)]
    pub strong_model: Option<StrongModelRule>,
    /// Choosing among many models by predicted quality and price (`decide/select.rs`): where
    /// no route or confident category rule decided, the candidate with the highest expected
    /// quality (the classifier's model-profile task) less `cost_weight` x its relative cost.
    /// Replaces the strong-model knob for the requests it decides.
    #[serde(default)]
    pub selection: Option<SelectionRule>,
}

/// `routing.selection`: the profile task to read and the operator's price weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionRule {
    /// The classifier task of kind `profile` (`semroute-train profile`): its labels are model
    /// names, its values each model's expected quality in [0, 1] on the text.
    #[serde(default = "quality_task")]
    pub task: String,
    /// Quality given up for price: a candidate's utility is its expected quality less
    /// `cost_weight` x (its cost for this prompt / the dearest candidate's). 0: the best
    /// expected quality whatever it costs; 0.1: a cheaper model wins when it is expected to be
    /// at most 0.1 x (the price gap as a share of the dearest model's) worse. Overridden per
    /// key (`cost_weight` of its record) and per request (`x-vsr-cost-weight`).
    #[serde(default = "default_cost_weight")]
    pub cost_weight: f64,
    /// The models it chooses among; empty: every configured model the profile scores.
    #[serde(default)]
    pub candidates: Vec<String>,
    /// Tokens an answer is expected to take, for a candidate's cost (the prompt's are its
    /// characters / 4).
    #[serde(default = "default_answer_tokens")]
    pub answer_tokens: u32,
    /// Clients may set the weight per request with `x-vsr-cost-weight`.
    #[serde(default = "yes")]
    pub weight_header: bool,
}

fn quality_task() -> String {
    "quality".into()
}

fn default_cost_weight() -> f64 {
    0.2
}

fn default_answer_tokens() -> u32 {
    300
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrongModelRule {
    /// Classifier task and its label meaning "the strong model is needed".
    #[serde(default = "strong_task")]
    pub task: String,
    #[serde(default = "strong_task")]
    pub label: String,
    /// P(label) at or over this sends the request to `model`. The head's card lists the
    /// threshold for each target share of strong-model calls.
    pub threshold: f32,
    pub model: String,
    /// Under the threshold: this model, if set (else the decision stands).
    #[serde(default)]
    pub weak_model: Option<String>,
    /// Reasoning for escalated requests, if set.
    #[serde(default)]
    pub use_reasoning: Option<bool>,
}

fn strong_task() -> String {
    "strong".into()
}

fn default_threshold() -> f32 {
    0.5
}

fn yes() -> bool {
    true
}

/// A route declared by example prompts (embedded through classifier-svc's Embed RPC); a request
/// whose embedding is this close (cosine) to one of the examples takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    pub name: String,
    pub examples: Vec<String>,
    pub model: String,
    #[serde(default)]
    pub use_reasoning: bool,
    /// Minimum cosine similarity to the nearest example.
    #[serde(default = "route_threshold")]
    pub threshold: f32,
    /// The threshold when the router's fast tier stands in for the classifier (its static
    /// embeddings are another space: similarities run higher); default: `threshold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_threshold: Option<f32>,
    #[serde(default)]
    pub system_prompt: Option<String>,
}

fn route_threshold() -> f32 {
    0.6
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskNames {
    pub domain: String,
    pub complexity: String,
    pub jailbreak: String,
}

impl Default for TaskNames {
    fn default() -> Self {
        Self {
            domain: "domain".into(),
            complexity: "complexity".into(),
            jailbreak: "jailbreak".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryRule {
    pub candidates: Vec<Candidate>,
    #[serde(default)]
    pub system_prompt: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    pub model: String,
    #[serde(default = "one")]
    pub score: f32,
    #[serde(default)]
    pub use_reasoning: bool,
}

fn one() -> f32 {
    1.0
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComplexityRule {
    /// Route to this model instead of the category's choice.
    #[serde(default)]
    pub model: Option<String>,
    /// Switch reasoning on or off whatever the category said.
    #[serde(default)]
    pub use_reasoning: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JailbreakAction {
    /// Answer with an OpenAI-style refusal; nothing is forwarded.
    Block,
    /// Forward, and say so in `x-vsr-jailbreak` and the metrics.
    Flag,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JailbreakPolicy {
    pub enabled: bool,
    pub action: JailbreakAction,
    /// Classifier labels that mean "attack" (any of them).
    pub labels: Vec<String>,
    pub threshold: f32,
    pub message: String,
}

impl Default for JailbreakPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            action: JailbreakAction::Block,
            labels: vec!["jailbreak".into(), "malicious".into()],
            threshold: 0.7,
            message: "I can't help with that request.".into(),
        }
    }
}

impl Config {
    /// Parses YAML, applies environment overrides, validates. Errors name the field.
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        let de = serde_norway::Deserializer::from_str(text);
        let mut cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            Error::Config {
                field: if path == "." { "(root)".into() } else { path },
                message: e.into_inner().to_string(),
            }
        })?;
        cfg.apply_env(|k| std::env::var(k).ok());
        cfg.normalise();
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: Option<&std::path::Path>) -> Result<Self, Error> {
        match path {
            None => Self::from_yaml(EMBEDDED_DEFAULT),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| Error::Config {
                    field: "(file)".into(),
                    message: format!("cannot read {}: {e}", p.display()),
                })?;
                Self::from_yaml(&text)
            }
        }
    }

    /// Addresses and secrets from the environment win over the file.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        let list = |v: String| -> Vec<String> {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        };
        if let Some(v) = get("ROUTER_LISTEN") {
            if let Ok(a) = v.parse() {
                self.server.listen = a;
            }
        }
        if let Some(v) = get("ROUTER_WORKERS") {
            if let Ok(n) = v.trim().parse() {
                self.server.workers = n;
            }
        }
        if let Some(v) = get("ROUTER_CLASSIFIER_ADDRS") {
            self.classifier.addresses = list(v);
        }
        if let Some(v) = get("ROUTER_FAST_TIER_MODEL") {
            self.fast_tier.model = v.trim().to_string();
        }
        if let Some(v) = get("ROUTER_FAST_TIER_HEADS") {
            self.fast_tier.heads = v.trim().to_string();
        }
        if let Some(v) = get("ROUTER_REDIS_URL") {
            self.cache.redis_url = (!v.trim().is_empty()).then(|| v.trim().to_string());
        }
        for m in &mut self.models {
            if let Some(v) = get(&endpoints_env_name(&m.name)) {
                m.endpoints = list(v);
            }
        }
    }

    /// Every way of saying "none" becomes None.
    fn normalise(&mut self) {
        if self
            .cache
            .redis_url
            .as_ref()
            .is_some_and(|u| u.trim().is_empty())
        {
            self.cache.redis_url = None;
        }
    }

    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }

    /// Whether `model`'s endpoints are a gateway that picks the pod (`endpoint_picker: gateway`).
    pub fn picks_pods(&self, model: &str) -> bool {
        self.model(model)
            .is_some_and(|m| m.endpoint_picker == EndpointPicker::Gateway)
    }

    fn validate(&self) -> Result<(), Error> {
        let bad = |field: String, message: String| Err(Error::Config { field, message });
        if self.models.is_empty() {
            return bad("models".into(), "at least one model is needed".into());
        }
        let mut names = HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            if m.name.trim().is_empty() {
                return bad(format!("models[{i}].name"), "empty".into());
            }
            if !names.insert(m.name.as_str()) {
                return bad(
                    format!("models[{i}].name"),
                    format!("duplicate model {:?}", m.name),
                );
            }
            if m.endpoints.is_empty() {
                return bad(
                    format!("models[{i}].endpoints"),
                    format!("model {:?} has no endpoint", m.name),
                );
            }
            for (j, e) in m.endpoints.iter().enumerate() {
                match e.parse::<axum::http::Uri>() {
                    Ok(u)
                        if matches!(u.scheme_str(), Some("http" | "https"))
                            && u.host().is_some_and(|h| !h.is_empty()) => {}
                    _ => {
                        return bad(
                            format!("models[{i}].endpoints[{j}]"),
                            format!("{e:?} is not an http(s) URL"),
                        )
                    }
                }
            }
            if let Some(p) = &m.pii {
                for (j, d) in p.deny.iter().enumerate() {
                    if d != "ALL" && crate::decide::pii::PiiType::parse(d).is_none() {
                        return bad(
                            format!("models[{i}].pii.deny[{j}]"),
                            format!(
                                "unknown PII type {d:?} ({}, ALL)",
                                crate::decide::pii::ALL.map(|t| t.as_str()).join(", ")
                            ),
                        );
                    }
                }
            }
            if m.pricing.input_per_million < 0.0 || m.pricing.output_per_million < 0.0 {
                return bad(format!("models[{i}].pricing"), "negative price".into());
            }
        }
        if names.contains(self.server.auto_model.as_str()) {
            return bad(
                "server.auto_model".into(),
                format!(
                    "{:?} is also a model name; the alias must differ",
                    self.server.auto_model
                ),
            );
        }
        let known = |field: String, m: &str| -> Result<(), Error> {
            if names.contains(m) {
                Ok(())
            } else {
                let mut list: Vec<_> = names.iter().copied().collect();
                list.sort();
                bad(
                    field,
                    format!("unknown model {m:?} (known: {})", list.join(", ")),
                )
            }
        };
        let r = &self.routing;
        known("routing.default_model".into(), &r.default_model)?;
        if let Some(f) = &r.fallback_model {
            known("routing.fallback_model".into(), f)?;
        }
        let prob = |field: &str, v: f32| -> Result<(), Error> {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                bad(field.into(), format!("{v} is not a probability in [0, 1]"))
            }
        };
        prob("routing.confidence_threshold", r.confidence_threshold)?;
        let rc = &self.response_cache;
        prob("response_cache.semantic.threshold", rc.semantic.threshold)?;
        for (i, m) in rc.models.iter().enumerate() {
            known(format!("response_cache.models[{i}]"), m)?;
        }
        for (i, e) in rc.endpoints.iter().enumerate() {
            if !["chat", "completions", "messages", "responses"].contains(&e.as_str()) {
                return bad(
                    format!("response_cache.endpoints[{i}]"),
                    format!("{e:?} is not one of chat, completions, messages, responses"),
                );
            }
        }
        if rc.enabled && rc.redis && self.cache.redis_url.is_none() {
            return bad(
                "response_cache.redis".into(),
                "needs cache.redis_url".into(),
            );
        }
        prob("routing.jailbreak.threshold", r.jailbreak.threshold)?;
        for (cat, rule) in &r.categories {
            if rule.candidates.is_empty() {
                return bad(
                    format!("routing.categories.{cat}.candidates"),
                    "at least one candidate model is needed".into(),
                );
            }
            for (i, c) in rule.candidates.iter().enumerate() {
                known(
                    format!("routing.categories.{cat}.candidates[{i}].model"),
                    &c.model,
                )?;
            }
        }
        let mut route_names = HashSet::new();
        for (i, route) in r.routes.iter().enumerate() {
            if route.name.trim().is_empty() || !route_names.insert(route.name.as_str()) {
                return bad(
                    format!("routing.routes[{i}].name"),
                    format!("empty or duplicate route name {:?}", route.name),
                );
            }
            if route.examples.iter().all(|e| e.trim().is_empty()) {
                return bad(
                    format!("routing.routes[{i}].examples"),
                    "a route needs at least one example prompt".into(),
                );
            }
            known(format!("routing.routes[{i}].model"), &route.model)?;
            prob(&format!("routing.routes[{i}].threshold"), route.threshold)?;
            if let Some(t) = route.fast_threshold {
                prob(&format!("routing.routes[{i}].fast_threshold"), t)?;
            }
        }
        if let Some(sm) = &r.strong_model {
            known("routing.strong_model.model".into(), &sm.model)?;
            if let Some(w) = &sm.weak_model {
                known("routing.strong_model.weak_model".into(), w)?;
            }
            prob("routing.strong_model.threshold", sm.threshold)?;
        }
        if let Some(sel) = &r.selection {
            for (i, m) in sel.candidates.iter().enumerate() {
                known(format!("routing.selection.candidates[{i}]"), m)?;
            }
            if !(sel.cost_weight.is_finite() && sel.cost_weight >= 0.0) {
                return bad(
                    "routing.selection.cost_weight".into(),
                    format!("{} is not a weight >= 0", sel.cost_weight),
                );
            }
            if sel.task.trim().is_empty() {
                return bad(
                    "routing.selection.task".into(),
                    "the profile task's name is needed".into(),
                );
            }
        }
        for (label, rule) in &r.complexity {
            if let Some(m) = &rule.model {
                known(format!("routing.complexity.{label}.model"), m)?;
            }
        }
        let positive = [
            ("classifier.timeout_ms", self.classifier.timeout_ms),
            (
                "classifier.connect_timeout_ms",
                self.classifier.connect_timeout_ms,
            ),
            (
                "classifier.info_refresh_ms",
                self.classifier.info_refresh_ms,
            ),
            ("cache.redis_timeout_ms", self.cache.redis_timeout_ms),
            ("response_cache.ttl_secs", self.response_cache.ttl_secs),
            (
                "upstream.connect_timeout_ms",
                self.upstream.connect_timeout_ms,
            ),
            (
                "upstream.first_byte_timeout_ms",
                self.upstream.first_byte_timeout_ms,
            ),
            ("upstream.total_timeout_ms", self.upstream.total_timeout_ms),
            (
                "upstream.health_interval_ms",
                self.upstream.health_interval_ms,
            ),
            (
                "upstream.health_timeout_ms",
                self.upstream.health_timeout_ms,
            ),
            ("upstream.max_attempts", self.upstream.max_attempts as u64),
            ("server.max_body_bytes", self.server.max_body_bytes as u64),
            ("server.max_in_flight", self.server.max_in_flight as u64),
            ("server.body_timeout_ms", self.server.body_timeout_ms),
            (
                "server.summary_interval_ms",
                self.server.summary_interval_ms,
            ),
            ("auth.redis_timeout_ms", self.auth.redis_timeout_ms),
            ("auth.lookup_cache_ms", self.auth.lookup_cache_ms),
        ];
        for (field, v) in positive {
            if v == 0 {
                return bad(field.into(), "must be greater than 0".into());
            }
        }
        for (i, a) in self.classifier.addresses.iter().enumerate() {
            if tonic::transport::Endpoint::from_shared(a.clone()).is_err()
                || !(a.starts_with("http://") || a.starts_with("https://"))
            {
                return bad(
                    format!("classifier.addresses[{i}]"),
                    format!("{a:?} is not an http(s) gRPC address"),
                );
            }
        }
        if let Some(url) = &self.cache.redis_url {
            if let Err(e) = crate::store::target(url) {
                return bad(
                    "cache.redis_url".into(),
                    format!("{url:?} is not a Redis URL ({e}); null or \"\" for none"),
                );
            }
        }
        let a = &self.classifier.admission;
        if a.min_limit == 0 || a.min_limit > a.max_limit {
            return bad(
                "classifier.admission.min_limit".into(),
                format!("must be at least 1 and at most max_limit ({})", a.max_limit),
            );
        }
        if a.initial_limit < a.min_limit || a.initial_limit > a.max_limit {
            return bad(
                "classifier.admission.initial_limit".into(),
                format!("must be within [{}, {}]", a.min_limit, a.max_limit),
            );
        }
        if !(0.5..1.0).contains(&a.backoff_ratio) {
            return bad(
                "classifier.admission.backoff_ratio".into(),
                format!("{} is not in [0.5, 1)", a.backoff_ratio),
            );
        }
        let auth = &self.auth;
        if !(0.0..=1.0).contains(&auth.downgrade_at) {
            return bad(
                "auth.downgrade_at".into(),
                format!("{} is not a share in [0, 1]", auth.downgrade_at),
            );
        }
        if auth.key_prefix.contains(['{', '}']) {
            return bad(
                "auth.key_prefix".into(),
                "must not hold '{' or '}' (the hash tags of Redis Cluster)".into(),
            );
        }
        if auth.mode == AuthMode::Keys && auth.keys_file.is_none() && self.cache.redis_url.is_none()
        {
            return bad(
                "auth.mode".into(),
                "`keys` needs auth.keys_file or cache.redis_url (where keys are kept)".into(),
            );
        }
        if !self.upstream.health_path.starts_with('/') {
            return bad("upstream.health_path".into(), "must start with '/'".into());
        }
        let bound = self.upstream.affinity_load_bound;
        if !(bound == 0.0 || (bound >= 1.0 && bound.is_finite())) {
            return bad(
                "upstream.affinity_load_bound".into(),
                format!("{bound} must be 0 (off) or at least 1"),
            );
        }
        let lc = &self.upstream.load;
        if !lc.metrics_path.starts_with('/') {
            return bad(
                "upstream.load.metrics_path".into(),
                "must start with '/'".into(),
            );
        }
        for (field, v) in [
            ("queue_weight", lc.queue_weight),
            ("kv_weight", lc.kv_weight),
            ("saturated_waiting", lc.saturated_waiting),
            ("saturated_kv", lc.saturated_kv),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(
                    format!("upstream.load.{field}"),
                    format!("{v} must be a number >= 0"),
                );
            }
        }
        if lc.interval_ms > 0 && (lc.timeout_ms == 0 || lc.stale_after_ms < lc.interval_ms) {
            return bad(
                "upstream.load".into(),
                "timeout_ms must be > 0 and stale_after_ms at least interval_ms".into(),
            );
        }
        if axum::http::HeaderName::from_bytes(self.upstream.gateway_header.as_bytes()).is_err() {
            return bad(
                "upstream.gateway_header".into(),
                format!("{:?} is not a header name", self.upstream.gateway_header),
            );
        }
        for (i, m) in self.models.iter().enumerate() {
            if axum::http::HeaderValue::from_str(m.pool()).is_err() {
                return bad(
                    format!("models[{i}].pool"),
                    format!("{:?} cannot be sent in a header", m.pool()),
                );
            }
        }
        let ss = &self.session;
        for (i, m) in ss.tiers.iter().enumerate() {
            known(format!("session.tiers[{i}]"), m)?;
        }
        if ss.enabled {
            if ss.ttl_secs == 0 || ss.local_ttl_secs == 0 || ss.local_capacity == 0 {
                return bad(
                    "session".into(),
                    "ttl_secs, local_ttl_secs and local_capacity must be > 0".into(),
                );
            }
            if ss.header.is_empty()
                || axum::http::HeaderName::from_bytes(ss.header.as_bytes()).is_err()
            {
                return bad(
                    "session.header".into(),
                    format!("{:?} is not a header name", ss.header),
                );
            }
            if ss.key_prefix.is_empty() || ss.key_prefix.contains(['{', '}']) {
                return bad(
                    "session.key_prefix".into(),
                    "must be non-empty and hold no '{' or '}' (Redis Cluster hash tags)".into(),
                );
            }
        }
        Ok(())
    }

    /// Hash of everything a decision depends on (routing policy, what text is classified).
    /// Part of every cache key: a new policy never serves an old decision.
    pub fn policy_version(&self) -> String {
        #[derive(Serialize)]
        struct Policy<'a> {
            routing: &'a RoutingConfig,
            input: &'a InputConfig,
            /// The decision reads each model's reasoning switch.
            models: Vec<(&'a str, Option<ReasoningFamily>, &'a str)>,
        }
        let bytes = serde_json::to_vec(&Policy {
            routing: &self.routing,
            input: &self.classifier.input,
            models: self
                .models
                .iter()
                .map(|m| {
                    (
                        m.name.as_str(),
                        m.reasoning_family,
                        m.reasoning_effort.as_str(),
                    )
                })
                .collect(),
        })
        .expect("config serialises");
        hex::encode(&Sha256::digest(&bytes)[..8])
    }
}

/// `ROUTER_ENDPOINTS_<NAME>`, the model name upper-cased with non-alphanumerics as `_`.
pub fn endpoints_env_name(model: &str) -> String {
    let up: String = model
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("ROUTER_ENDPOINTS_{up}")
}

pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> String {
        r#"
models:
  - name: small
    endpoints: ["http://127.0.0.1:8001"]
  - name: big
    endpoints: ["http://127.0.0.1:8002"]
    reasoning_family: qwen3
routing:
  default_model: small
  categories:
    math:
      candidates: [{model: big, use_reasoning: true}]
"#
        .into()
    }

    #[test]
    fn embedded_default_is_valid() {
        let cfg: Config = serde_norway::from_str(EMBEDDED_DEFAULT).unwrap();
        cfg.validate().unwrap();
        assert!(!cfg.routing.categories.is_empty());
    }

    #[test]
    fn defaults_fill_missing_sections() {
        let cfg = Config::from_yaml(&minimal()).unwrap();
        assert_eq!(cfg.server.auto_model, "auto");
        assert_eq!(cfg.classifier.timeout_ms, 50);
        assert_eq!(cfg.models[1].reasoning_family, Some(ReasoningFamily::Qwen3));
    }

    #[test]
    fn unknown_field_is_named() {
        let text = minimal().replace("default_model: small", "default_model: small\n  typo: 1");
        let e = Config::from_yaml(&text).unwrap_err().to_string();
        assert!(e.contains("typo"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_path() {
        let text = minimal().replace("[\"http://127.0.0.1:8001\"]", "42");
        let e = Config::from_yaml(&text).unwrap_err().to_string();
        assert!(e.contains("models[0].endpoints"), "{e}");
    }

    #[test]
    fn unknown_candidate_model_is_named() {
        let text = minimal().replace("{model: big,", "{model: huge,");
        let e = Config::from_yaml(&text).unwrap_err().to_string();
        assert!(
            e.contains("routing.categories.math.candidates[0].model") && e.contains("huge"),
            "{e}"
        );
    }

    #[test]
    fn bad_endpoint_url_is_named() {
        let text = minimal().replace("http://127.0.0.1:8002", "not a url");
        let e = Config::from_yaml(&text).unwrap_err().to_string();
        assert!(e.contains("models[1].endpoints[0]"), "{e}");
    }

    #[test]
    fn env_overrides_addresses() {
        let mut cfg: Config = serde_norway::from_str(&minimal()).unwrap();
        cfg.apply_env(|k| match k {
            "ROUTER_ENDPOINTS_BIG" => Some("http://10.0.0.1:9000, http://10.0.0.2:9000".into()),
            "ROUTER_REDIS_URL" => Some("".into()),
            "ROUTER_CLASSIFIER_ADDRS" => Some("http://a:1,http://b:2".into()),
            _ => None,
        });
        assert_eq!(cfg.models[1].endpoints.len(), 2);
        assert_eq!(cfg.cache.redis_url, None);
        assert_eq!(cfg.classifier.addresses, ["http://a:1", "http://b:2"]);
    }

    #[test]
    fn policy_version_follows_policy_only() {
        let a = Config::from_yaml(&minimal()).unwrap();
        let mut b = a.clone();
        b.models[0].endpoints = vec!["http://127.0.0.1:9999".into()];
        assert_eq!(a.policy_version(), b.policy_version());
        b.routing.confidence_threshold = 0.9;
        assert_ne!(a.policy_version(), b.policy_version());
        let mut c = a.clone();
        c.models[0].reasoning_family = Some(ReasoningFamily::DeepSeek);
        assert_ne!(
            a.policy_version(),
            c.policy_version(),
            "reasoning switch is policy"
        );
    }

    proptest::proptest! {
        /// Random text and the embedded default with a line dropped, duplicated or a value
        /// swapped: the loader answers a config or a `Config` error naming a field, never panics.
        #[test]
        fn loader_never_panics(text in ".{0,200}") {
            if let Err(e) = Config::from_yaml(&text) {
                proptest::prop_assert!(matches!(e, Error::Config { .. }), "{e:?}");
            }
        }

        #[test]
        fn mutated_default_never_panics(
            line in 0usize..200,
            how in 0u8..3,
            value in proptest::sample::select(vec![
                "", "0", "-1", "null", "\"\"", "[]", "{}", "99999999999999999999", "1.5",
                "yes", "\"http://\"", "[\"not a url\"]", "{model: nope}",
            ]),
        ) {
            let mut lines: Vec<String> = EMBEDDED_DEFAULT.lines().map(String::from).collect();
            let i = line % lines.len();
            match how {
                0 => { lines.remove(i); }
                1 => { let l = lines[i].clone(); lines.insert(i, l); }
                _ => {
                    if let Some((k, _)) = lines[i].clone().split_once(": ") {
                        lines[i] = format!("{k}: {value}");
                    }
                }
            }
            if let Err(e) = Config::from_yaml(&lines.join("\n")) {
                proptest::prop_assert!(matches!(e, Error::Config { .. }), "{e:?}");
            }
        }
    }
}
