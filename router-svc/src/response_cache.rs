//! The response cache (opt-in): a step of the road between the decision and the backend. A
//! request the same as an earlier one of its scope (exact: the decided model, the body but
//! its `model`, hashed in a canonical form) or whose classified text is as close as the
//! threshold to an earlier one's (semantic: the embedding the classifier returned in the
//! decision's pass, compared within the group of requests that are the same but for that text)
//! is answered with the stored answer, the backend not asked.
//!
//! What keeps it safe: only a 2xx answer that ended as it should (a JSON body read whole, a
//! stream that reached its final event) is stored; scopes (the API key, else the client's
//! `x-semroute-cache-scope`, else its backend credentials) never share entries; sampling
//! requests bypass it unless configured; texts that differ in a negation or a number never
//! match semantically. Entries are answer text: in process by default, in Redis (shared by
//! the replicas, with the TTL) only when `response_cache.redis` is on. The semantic index is
//! per replica (the vectors of the answers it stored); an exact entry in Redis is found by any.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue};
use bytes::Bytes;
use deadpool_redis::redis::AsyncCommands;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::{ms, CacheConfig, ResponseCacheConfig};
use crate::decide::Decision;
use crate::store::{Store, Unavailable};

/// The header a client names its own scope with (within its key's, when keys are checked).
pub const SCOPE_HEADER: &str = "x-semroute-cache-scope";
/// `hit`, `miss` or `bypass` on every answer of a cached model.
pub const STATUS_HEADER: &str = "x-vsr-response-cache";

/// A stored answer.
pub struct Entry {
    pub content_type: HeaderValue,
    pub body: Bytes,
}

impl Entry {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 40);
        out.extend_from_slice(self.content_type.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&self.body);
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let nl = bytes.iter().position(|&b| b == b'\n')?;
        Some(Self {
            content_type: HeaderValue::from_bytes(&bytes[..nl]).ok()?,
            body: Bytes::copy_from_slice(&bytes[nl + 1..]),
        })
    }
}

/// What the cache says of a request.
pub enum Lookup {
    /// Not a cached model or API: no header.
    Off,
    Bypass(&'static str),
    Hit {
        entry: Arc<Entry>,
        /// `local`, `redis` or `semantic`.
        layer: &'static str,
        similarity: Option<f32>,
    },
    /// Store the answer with this.
    Miss(Ticket),
}

impl Lookup {
    pub fn status(&self) -> Option<&'static str> {
        match self {
            Lookup::Off => None,
            Lookup::Bypass(_) => Some("bypass"),
            Lookup::Hit { .. } => Some("hit"),
            Lookup::Miss(_) => Some("miss"),
        }
    }
}

/// The request as the cache sees it.
pub struct Request<'a> {
    /// `chat`, `completions`, `messages` or `responses`: the API the client spoke.
    pub api: &'static str,
    /// The body the answer depends on: the chat/completions body, or the client's own when
    /// the model's backend serves that API natively (`native` then true).
    pub body: &'a Map<String, Value>,
    pub native: bool,
    pub decision: &'a Decision,
    /// What the router adds to the body for the decided model (`openai::added_by_router`).
    pub added: &'a str,
    pub headers: &'a HeaderMap,
    /// The key's identity when keys are checked.
    pub key: Option<&'a str>,
    /// The text the decision classified, and its embedding (None when the decision came
    /// from the decision cache: exact matching only then).
    pub classified: Option<&'a str>,
    pub embedding: Option<&'a [f32]>,
}

/// A vector of an entry in a group.
struct Item {
    key: String,
    vector: Vec<f32>,
    guard: Vec<String>,
    at: Instant,
}

pub struct ResponseCache {
    cfg: ResponseCacheConfig,
    prefix: String,
    local: moka::future::Cache<String, Arc<Entry>>,
    /// Groups of requests the same but for the classified text: their vectors.
    groups: moka::future::Cache<String, Arc<Mutex<VecDeque<Item>>>>,
    redis: Option<Arc<Store>>,
}

fn count(result: &'static str, layer: &'static str) {
    metrics::counter!("router_response_cache_total", "result" => result, "layer" => layer)
        .increment(1);
}

fn stored(result: &'static str) {
    metrics::counter!("router_response_cache_stores_total", "result" => result).increment(1);
}

impl ResponseCache {
    /// None when the cache is off.
    pub fn new(cfg: &ResponseCacheConfig, cache: &CacheConfig) -> anyhow::Result<Option<Self>> {
        if !cfg.enabled {
            return Ok(None);
        }
        let ttl = Duration::from_secs(cfg.ttl_secs.max(1));
        let local = moka::future::Cache::builder()
            .weigher(|k: &String, e: &Arc<Entry>| {
                (k.len() + e.body.len() + 64).try_into().unwrap_or(u32::MAX)
            })
            .max_capacity(cfg.local_max_bytes)
            .time_to_live(ttl)
            .build();
        let groups = moka::future::Cache::builder()
            .max_capacity(100_000)
            .time_to_idle(ttl)
            .build();
        let redis = match (&cache.redis_url, cfg.redis) {
            (Some(url), true) => Some(
                Store::new(
                    url,
                    cache.redis_pool_size,
                    ms(cache.redis_timeout_ms),
                    ms(cache.redis_retry_ms),
                    "response_cache",
                    "response cache answers from this replica's memory only",
                )
                .map_err(|e| anyhow::anyhow!("cache.redis_url {url:?}: {e}"))?,
            ),
            _ => None,
        };
        Ok(Some(Self {
            cfg: cfg.clone(),
            prefix: format!(
                "{}response:",
                cache.key_prefix.trim_end_matches("decision:")
            ),
            local,
            groups,
            redis,
        }))
    }

    pub fn semantic(&self) -> bool {
        self.cfg.semantic.enabled
    }

    /// Whether answers of `model` on `api` are cached.
    pub fn covers(&self, model: &str, api: &str) -> bool {
        (self.cfg.models.is_empty() || self.cfg.models.iter().any(|m| m == model))
            && (self.cfg.endpoints.is_empty() || self.cfg.endpoints.iter().any(|e| e == api))
    }

    pub async fn lookup(self: &Arc<Self>, r: &Request<'_>) -> Lookup {
        if !self.covers(&r.decision.model, r.api) {
            return Lookup::Off;
        }
        if let Some(reason) = self.bypass(r) {
            count("bypass", reason);
            return Lookup::Bypass(reason);
        }
        let scope = scope(r.key, r.headers);
        let key = format!("{}{}", self.prefix, exact_key(&scope, r));
        if let Some(e) = self.local.get(&key).await {
            count("hit", "local");
            return Lookup::Hit {
                entry: e,
                layer: "local",
                similarity: None,
            };
        }
        if let Some(e) = self.redis_get(&key).await {
            let e = Arc::new(e);
            self.local.insert(key, e.clone()).await;
            count("hit", "redis");
            return Lookup::Hit {
                entry: e,
                layer: "redis",
                similarity: None,
            };
        }
        let semantic = match self.group(&scope, r) {
            Some((group, vector, guard)) => {
                let found = self.nearest(&group, &vector, &guard).await;
                Some((group, vector, guard, found))
            }
            None => None,
        };
        let mut ticket = Ticket {
            cache: self.clone(),
            key,
            semantic: None,
        };
        if let Some((group, vector, guard, found)) = semantic {
            if let Some((other, similarity)) = found {
                if let Some(e) = self.local.get(&other).await {
                    // This text's own key now finds it exactly (a decision-cache hit brings no
                    // embedding to match with).
                    self.local.insert(ticket.key, e.clone()).await;
                    count("hit", "semantic");
                    return Lookup::Hit {
                        entry: e,
                        layer: "semantic",
                        similarity: Some(similarity),
                    };
                }
            }
            ticket.semantic = Some((group, vector, guard));
        }
        count("miss", "");
        Lookup::Miss(ticket)
    }

    /// Why a request is not for the cache, if it is not.
    fn bypass(&self, r: &Request) -> Option<&'static str> {
        let no_cache = r
            .headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                let v = v.to_ascii_lowercase();
                v.contains("no-cache") || v.contains("no-store")
            });
        if no_cache {
            return Some("no_cache");
        }
        if !self.cfg.sampled {
            let num = |k: &str| r.body.get(k).and_then(Value::as_f64);
            // OpenAI's and vLLM's default temperature is 1: absent means sampled.
            if num("temperature").is_none_or(|t| t > 0.0) {
                return Some("sampled");
            }
            if num("n").is_some_and(|n| n > 1.0) {
                return Some("n");
            }
        }
        None
    }

    /// The group key, normalised vector and guard words of a request that can match
    /// semantically: its classified text is exactly its last message (or prompt), and the
    /// rest of the request is what the group key hashes.
    fn group(&self, scope: &str, r: &Request) -> Option<(String, Vec<f32>, Vec<String>)> {
        if !self.cfg.semantic.enabled || r.native {
            return None;
        }
        let text = r.classified?;
        let vector = normalised(r.embedding?)?;
        let mut rest = r.body.clone();
        let blanked = match rest.get_mut("messages").and_then(Value::as_array_mut) {
            Some(msgs) => msgs.last_mut().and_then(|m| {
                let user = m.get("role").and_then(Value::as_str) == Some("user");
                let c = m.get_mut("content")?;
                (user && c.as_str() == Some(text)).then(|| *c = Value::Null)
            }),
            None => rest
                .get_mut("prompt")
                .filter(|p| p.as_str() == Some(text))
                .map(|p| *p = Value::Null),
        };
        blanked?;
        let mut h = Sha256::new();
        h.update(b"group\0");
        h.update(scope.as_bytes());
        hash_request(&mut h, r, &rest);
        let guard = if self.cfg.semantic.guard {
            guard_words(text)
        } else {
            Vec::new()
        };
        Some((hex::encode(h.finalize()), vector, guard))
    }

    /// The closest entry of a group at or above the threshold, with the same guard words.
    async fn nearest(
        &self,
        group: &str,
        vector: &[f32],
        guard: &[String],
    ) -> Option<(String, f32)> {
        let items = self.groups.get(group).await?;
        let items = items.lock().unwrap();
        let ttl = Duration::from_secs(self.cfg.ttl_secs.max(1));
        items
            .iter()
            .filter(|i| i.at.elapsed() < ttl && i.guard == guard)
            .map(|i| (i, dot(&i.vector, vector)))
            .filter(|(_, s)| *s >= self.cfg.semantic.threshold)
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, s)| (i.key.clone(), s))
    }

    async fn redis_get(&self, key: &str) -> Option<Entry> {
        let store = self.redis.as_ref()?;
        let key = key.to_string();
        let out = store
            .call("get", None, |mut c| async move {
                c.get::<_, Option<Vec<u8>>>(key).await
            })
            .await;
        match out {
            Ok(Some(b)) => Entry::decode(&b),
            Ok(None) => None,
            Err(Unavailable::Skipped | Unavailable::Failed) => {
                count("error", "redis");
                None
            }
        }
    }

    async fn put(&self, t: Ticket, entry: Entry) {
        let entry = Arc::new(entry);
        if let Some(store) = &self.redis {
            let (key, bytes, ttl) = (t.key.clone(), entry.encode(), self.cfg.ttl_secs.max(1));
            store.set_later("set", key, bytes, ttl, |_| stored("redis_error"));
        }
        if let Some((group, vector, guard)) = t.semantic {
            let items = self
                .groups
                .get_with(group, async { Default::default() })
                .await;
            let mut items = items.lock().unwrap();
            items.push_back(Item {
                key: t.key.clone(),
                vector,
                guard,
                at: Instant::now(),
            });
            while items.len() > self.cfg.semantic.group_capacity.max(1) {
                items.pop_front();
            }
        }
        self.local.insert(t.key, entry).await;
        stored("stored");
    }
}

/// A miss's place in the cache: the relay stores the answer with it when it ended well.
pub struct Ticket {
    cache: Arc<ResponseCache>,
    key: String,
    semantic: Option<(String, Vec<f32>, Vec<String>)>,
}

impl Ticket {
    /// The answer's size limit.
    pub fn max_bytes(&self) -> usize {
        self.cache.cfg.max_entry_bytes
    }

    /// Stores a complete 2xx answer (the caller checked it ended well).
    pub async fn store(self, content_type: Option<&HeaderValue>, body: Bytes) {
        if body.len() > self.max_bytes() {
            stored("too_large");
            return;
        }
        let content_type = content_type
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("application/json"));
        let cache = self.cache.clone();
        cache.put(self, Entry { content_type, body }).await;
    }

    /// Counts an answer not stored, and why.
    pub fn skip(self, why: &'static str) {
        stored(why);
    }
}

/// Whether a recorded SSE body reached its API's last event (a stream cut short does not).
pub fn stream_complete(body: &[u8]) -> bool {
    let tail = &body[body.len().saturating_sub(512)..];
    let has = |n: &[u8]| tail.windows(n.len()).any(|w| w == n);
    has(b"data: [DONE]") || has(b"event: message_stop") || has(b"event: response.completed")
}

/// Whose entries a request may see: its key's, narrowed by the client's scope header; without
/// keys, the scope header, else the credentials it sends the backend (hashed), else one shared.
pub fn scope(key: Option<&str>, headers: &HeaderMap) -> String {
    let named = headers.get(SCOPE_HEADER).map(|v| v.as_bytes());
    let mut h = Sha256::new();
    match (key, named) {
        (Some(k), n) => {
            h.update(b"key\0");
            h.update(k.as_bytes());
            h.update([0]);
            h.update(n.unwrap_or_default());
        }
        (None, Some(n)) => {
            h.update(b"scope\0");
            h.update(n);
        }
        (None, None) => {
            let cred = headers
                .get(header::AUTHORIZATION)
                .or_else(|| headers.get("x-api-key"));
            match cred {
                Some(c) => {
                    h.update(b"credential\0");
                    h.update(c.as_bytes());
                }
                None => h.update(b"shared"),
            }
        }
    }
    hex::encode(&h.finalize()[..16])
}

fn exact_key(scope: &str, r: &Request) -> String {
    let mut h = Sha256::new();
    h.update(b"exact\0");
    h.update(scope.as_bytes());
    hash_request(&mut h, r, r.body);
    hex::encode(h.finalize())
}

/// What an answer depends on besides the body: the API, the model decided and what the
/// router adds to the body for it (a system prompt, the reasoning switch). Not the category or
/// the decision's source: two decisions that send the backend the same body share an answer.
fn hash_request(h: &mut Sha256, r: &Request, body: &Map<String, Value>) {
    for part in [
        r.api,
        if r.native { "native" } else { "" },
        &r.decision.model,
        r.added,
    ] {
        h.update([0]);
        h.update(part.as_bytes());
    }
    h.update([0]);
    for (k, v) in sorted(body) {
        if k != "model" {
            hash_value(h, &Value::String(k.clone()));
            hash_value(h, v);
        }
    }
}

fn sorted(m: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut kv: Vec<_> = m.iter().collect();
    kv.sort_by(|a, b| a.0.cmp(b.0));
    kv
}

/// A JSON value into the hash, objects with their keys in order (key order is no difference),
/// each value tagged and framed so no two values hash alike.
fn hash_value(h: &mut Sha256, v: &Value) {
    match v {
        Value::Null => h.update(b"n"),
        Value::Bool(b) => h.update(if *b { b"t" } else { b"f" }),
        Value::Number(n) => {
            h.update(b"#");
            h.update(n.to_string().as_bytes());
            h.update(b";");
        }
        Value::String(s) => {
            h.update(b"s");
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        Value::Array(a) => {
            h.update(b"[");
            h.update((a.len() as u64).to_le_bytes());
            for x in a {
                hash_value(h, x);
            }
        }
        Value::Object(o) => {
            h.update(b"{");
            h.update((o.len() as u64).to_le_bytes());
            for (k, x) in sorted(o) {
                h.update((k.len() as u64).to_le_bytes());
                h.update(k.as_bytes());
                hash_value(h, x);
            }
        }
    }
}

fn normalised(v: &[f32]) -> Option<Vec<f32>> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    (norm > 0.0 && norm.is_finite()).then(|| v.iter().map(|x| x / norm).collect())
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::MIN;
    }
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The words whose difference turns a question around however close the embeddings are:
/// negations and numbers, in order.
pub fn guard_words(text: &str) -> Vec<String> {
    const NEGATIONS: &[&str] = &[
        "not", "no", "never", "none", "nothing", "nobody", "nowhere", "nor", "neither", "without",
        "cannot", "cant", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "wont",
        "wouldnt", "shouldnt", "couldnt", "mustnt", "hasnt", "havent", "hadnt", "except", "avoid",
        "stop", "prevent", "instead", "nicht", "kein", "pas", "jamais", "nunca",
    ];
    let lower = text.to_lowercase().replace(['\u{2019}', '\''], "");
    lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .filter(|w| NEGATIONS.contains(w) || w.chars().any(|c| c.is_ascii_digit()))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decision(model: &str) -> Decision {
        Decision::explicit(model)
    }

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn req<'a>(
        body: &'a Map<String, Value>,
        d: &'a Decision,
        headers: &'a HeaderMap,
        text: Option<&'a str>,
        emb: Option<&'a [f32]>,
    ) -> Request<'a> {
        Request {
            api: "chat",
            body,
            native: false,
            decision: d,
            added: "",
            headers,
            key: None,
            classified: text,
            embedding: emb,
        }
    }

    fn cache(f: impl FnOnce(&mut ResponseCacheConfig)) -> Arc<ResponseCache> {
        let mut cfg = ResponseCacheConfig {
            enabled: true,
            ..Default::default()
        };
        f(&mut cfg);
        Arc::new(
            ResponseCache::new(&cfg, &CacheConfig::default())
                .unwrap()
                .unwrap(),
        )
    }

    #[test]
    fn key_order_and_model_name_do_not_change_the_key_and_the_rest_does() {
        let d = decision("m");
        let h = HeaderMap::new();
        let a = map(
            json!({"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}),
        );
        let b = map(
            json!({"messages": [{"content": "hi", "role": "user"}], "temperature": 0, "model": "m"}),
        );
        let c = map(
            json!({"model": "auto", "temperature": 0, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
        );
        let k = |m| exact_key("s", &req(m, &d, &h, None, None));
        assert_eq!(k(&a), k(&b));
        assert_ne!(k(&a), k(&c));
        assert_ne!(
            exact_key("s", &req(&a, &d, &h, None, None)),
            exact_key("t", &req(&a, &d, &h, None, None))
        );
        let other = decision("n");
        assert_ne!(k(&a), exact_key("s", &req(&a, &other, &h, None, None)));
    }

    #[test]
    fn scopes_keep_keys_scope_headers_and_credentials_apart() {
        let none = HeaderMap::new();
        let mut named = HeaderMap::new();
        named.insert(SCOPE_HEADER, HeaderValue::from_static("team-a"));
        let mut other = HeaderMap::new();
        other.insert(SCOPE_HEADER, HeaderValue::from_static("team-b"));
        let mut cred = HeaderMap::new();
        cred.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        let all = [
            scope(None, &none),
            scope(None, &named),
            scope(None, &other),
            scope(None, &cred),
            scope(Some("k1"), &none),
            scope(Some("k2"), &none),
            scope(Some("k1"), &named),
        ];
        let set: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(set.len(), all.len(), "{all:?}");
    }

    #[test]
    fn guard_words_catch_negations_and_numbers() {
        assert_eq!(guard_words("How to install nginx?"), Vec::<String>::new());
        assert_eq!(guard_words("How NOT to install nginx?"), ["not"]);
        assert_eq!(guard_words("Why doesn't it start?"), ["doesnt"]);
        assert_eq!(guard_words("Why doesn’t it start?"), ["doesnt"]);
        assert_eq!(guard_words("top 5 or 10 films"), ["5", "10"]);
    }

    #[test]
    fn only_complete_streams_count_as_complete() {
        assert!(stream_complete(b"data: {}\n\ndata: [DONE]\n\n"));
        assert!(stream_complete(b"event: message_stop\ndata: {}\n\n"));
        assert!(stream_complete(b"event: response.completed\ndata: {}\n\n"));
        assert!(!stream_complete(b"data: {\"choices\":[]}\n\n"));
        assert!(!stream_complete(b""));
    }

    #[tokio::test]
    async fn sampling_requests_and_no_cache_bypass() {
        let c = cache(|_| {});
        let d = decision("m");
        let h = HeaderMap::new();
        for (body, why) in [
            (json!({"messages": []}), "sampled"),
            (json!({"messages": [], "temperature": 0.7}), "sampled"),
            (json!({"messages": [], "temperature": 0, "n": 2}), "n"),
        ] {
            let b = map(body);
            assert!(
                matches!(c.lookup(&req(&b, &d, &h, None, None)).await, Lookup::Bypass(w) if w == why)
            );
        }
        let b = map(json!({"messages": [], "temperature": 0}));
        let mut nc = HeaderMap::new();
        nc.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        assert!(matches!(
            c.lookup(&req(&b, &d, &nc, None, None)).await,
            Lookup::Bypass("no_cache")
        ));
        let sampled = cache(|c| c.sampled = true);
        let b = map(json!({"messages": [], "temperature": 0.7}));
        assert!(matches!(
            sampled.lookup(&req(&b, &d, &h, None, None)).await,
            Lookup::Miss(_)
        ));
        let other = cache(|c| c.models = vec!["x".into()]);
        assert!(matches!(
            other.lookup(&req(&b, &d, &h, None, None)).await,
            Lookup::Off
        ));
    }

    #[tokio::test]
    async fn a_stored_answer_is_found_exactly_and_semantically_within_its_group() {
        let c = cache(|_| {});
        let d = decision("m");
        let h = HeaderMap::new();
        let body = |t: &str| {
            map(
                json!({"temperature": 0, "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": t}]}),
            )
        };
        let (b1, e1) = (body("how to install x"), [1.0, 0.0, 0.0]);
        let Lookup::Miss(t) = c
            .lookup(&req(&b1, &d, &h, Some("how to install x"), Some(&e1)))
            .await
        else {
            panic!("first is a miss")
        };
        t.store(None, Bytes::from_static(b"{\"answer\":1}")).await;
        assert!(matches!(
            c.lookup(&req(&b1, &d, &h, None, None)).await,
            Lookup::Hit { layer: "local", .. }
        ));
        // Close: a semantic hit; then found exactly under its own key without an embedding.
        let (b2, e2) = (body("how do I install x"), [0.99, 0.1, 0.0]);
        let Lookup::Hit {
            layer,
            similarity,
            entry,
        } = c
            .lookup(&req(&b2, &d, &h, Some("how do I install x"), Some(&e2)))
            .await
        else {
            panic!("close text hits")
        };
        assert_eq!(
            (layer, &entry.body[..]),
            ("semantic", &b"{\"answer\":1}"[..])
        );
        assert!(similarity.unwrap() > 0.99);
        assert!(matches!(
            c.lookup(&req(&b2, &d, &h, None, None)).await,
            Lookup::Hit { layer: "local", .. }
        ));
        // Far, or a negation apart, or another system prompt: misses.
        let (b3, e3) = (body("what is y"), [0.0, 1.0, 0.0]);
        assert!(matches!(
            c.lookup(&req(&b3, &d, &h, Some("what is y"), Some(&e3)))
                .await,
            Lookup::Miss(_)
        ));
        let b4 = body("how not to install x");
        assert!(matches!(
            c.lookup(&req(&b4, &d, &h, Some("how not to install x"), Some(&e1)))
                .await,
            Lookup::Miss(_)
        ));
        let b5 = map(
            json!({"temperature": 0, "messages": [{"role": "system", "content": "other"}, {"role": "user", "content": "how to install x"}]}),
        );
        assert!(matches!(
            c.lookup(&req(&b5, &d, &h, Some("how to install x"), Some(&e1)))
                .await,
            Lookup::Miss(_)
        ));
        // Another scope sees nothing.
        let mut other = HeaderMap::new();
        other.insert(SCOPE_HEADER, HeaderValue::from_static("b"));
        assert!(matches!(
            c.lookup(&req(&b1, &d, &other, Some("how to install x"), Some(&e1)))
                .await,
            Lookup::Miss(_)
        ));
    }

    #[tokio::test]
    async fn answers_over_the_size_limit_are_not_stored() {
        let c = cache(|c| c.max_entry_bytes = 8);
        let d = decision("m");
        let h = HeaderMap::new();
        let b = map(json!({"temperature": 0, "messages": [{"role": "user", "content": "q"}]}));
        let Lookup::Miss(t) = c.lookup(&req(&b, &d, &h, None, None)).await else {
            panic!()
        };
        t.store(None, Bytes::from_static(b"0123456789")).await;
        assert!(matches!(
            c.lookup(&req(&b, &d, &h, None, None)).await,
            Lookup::Miss(_)
        ));
    }

    #[test]
    fn entries_survive_their_redis_encoding() {
        let e = Entry {
            content_type: HeaderValue::from_static("text/event-stream"),
            body: Bytes::from_static(b"data: x\n\ndata: [DONE]\n\n"),
        };
        let back = Entry::decode(&e.encode()).unwrap();
        assert_eq!((back.content_type, back.body), (e.content_type, e.body));
    }
}
