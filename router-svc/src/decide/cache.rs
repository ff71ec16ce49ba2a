//! The decision cache: a small in-process LRU in front of Redis (shared by every replica).
//! Identical concurrent misses are coalesced into one classification (moka runs one init per
//! key and hands its result to every waiter). Redis calls go through `store::Store` (a budget
//! of a few milliseconds each, no request waits for a connect, back-off after an error); writes
//! happen off the request path. Only the compact decision is stored, never text.

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis::AsyncCommands;
use sha2::{Digest, Sha256};

use super::Decision;
use crate::config::{ms, CacheConfig};
use crate::store::{Store, Unavailable};

/// Where a decision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hit {
    /// The in-process LRU.
    Local,
    /// Redis (another replica, or this one earlier).
    Redis,
    /// Another request's classification of the same text, in flight at the same time.
    Coalesced,
    /// Nowhere: this request classified it.
    Miss,
}

impl Hit {
    pub fn is_hit(self) -> bool {
        self != Hit::Miss
    }
}

pub struct DecisionCache {
    prefix: String,
    local: moka::future::Cache<String, Arc<Decision>>,
    redis: Option<Arc<RedisLayer>>,
    /// `router_cache_requests_total{layer="local",result}` for hit and miss, registered once.
    local_counts: [metrics::Counter; 2],
}

/// What a key says of the models and policy that made its decision (the same for every
/// request until one of them changes; `decide` keeps it).
pub fn version_tag(classifier_version: &str, policy_version: &str) -> String {
    let mut h = Sha256::new();
    h.update(classifier_version.as_bytes());
    h.update([0]);
    h.update(policy_version.as_bytes());
    hex::encode(&h.finalize()[..8])
}

/// `prefix + sha256(text) + ":" + version_tag(classifier version, policy version)`.
/// Written into one string of the right size (hex-encoding into its own string and then
/// formatting allocated and copied twice more per request).
pub fn key_tagged(prefix: &str, text: &str, tag: &str) -> String {
    let mut hex = [0u8; 64];
    hex::encode_to_slice(Sha256::digest(text.as_bytes()), &mut hex)
        .expect("64 hex digits for 32 bytes");
    let mut key = String::with_capacity(prefix.len() + hex.len() + 1 + tag.len());
    key.push_str(prefix);
    key.push_str(std::str::from_utf8(&hex).expect("hex digits are ASCII"));
    key.push(':');
    key.push_str(tag);
    key
}

struct RedisLayer {
    store: Arc<Store>,
    ttl_secs: u64,
}

impl RedisLayer {
    fn count(result: &'static str) {
        metrics::counter!("router_cache_requests_total", "layer" => "redis", "result" => result)
            .increment(1);
    }

    fn unavailable(u: Unavailable) {
        Self::count(match u {
            Unavailable::Skipped => "skipped",
            Unavailable::Failed => "error",
        });
    }

    async fn get(&self, key: &str) -> Option<Decision> {
        let key = key.to_string();
        let out = self
            .store
            .call("get", None, |mut c| async move {
                c.get::<_, Option<Vec<u8>>>(key).await
            })
            .await;
        match out {
            Err(u) => {
                Self::unavailable(u);
                None
            }
            Ok(None) => {
                Self::count("miss");
                None
            }
            Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
                Ok(d) => {
                    Self::count("hit");
                    Some(d)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable cached decision ignored");
                    None
                }
            },
        }
    }

    /// Off the request path.
    fn set(&self, key: String, d: &Decision) {
        if !self.store.usable() {
            return;
        }
        let Ok(bytes) = serde_json::to_vec(d) else {
            return;
        };
        self.store.set_later("set", key, bytes, self.ttl_secs, |u| {
            if let Unavailable::Failed = u {
                Self::count("error");
            }
        });
    }
}

impl DecisionCache {
    /// The Redis store, shared with the session states (None: in-process only).
    pub fn store(&self) -> Option<Arc<Store>> {
        self.redis.as_ref().map(|r| r.store.clone())
    }

    pub fn new(cfg: &CacheConfig) -> anyhow::Result<Self> {
        let local = moka::future::Cache::builder()
            .max_capacity(cfg.local_capacity)
            .time_to_live(Duration::from_secs(cfg.local_ttl_secs.max(1)))
            .build();
        let redis = match &cfg.redis_url {
            None => None,
            Some(url) => Some(Arc::new(RedisLayer {
                store: Store::new(
                    url,
                    cfg.redis_pool_size,
                    ms(cfg.redis_timeout_ms),
                    ms(cfg.redis_retry_ms),
                    "cache",
                    "decision cache runs in-process only",
                )
                .map_err(|e| anyhow::anyhow!("cache.redis_url {url:?}: {e}"))?,
                ttl_secs: cfg.ttl_secs.max(1),
            })),
        };
        Ok(Self {
            prefix: cfg.key_prefix.clone(),
            local,
            redis,
            local_counts: ["hit", "miss"].map(|result| {
                metrics::counter!("router_cache_requests_total", "layer" => "local", "result" => result)
            }),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn has_redis(&self) -> bool {
        self.redis.is_some()
    }

    /// The cached decision for `key`, or the result of `classify` (stored in both layers).
    /// Errors are not cached: every coalesced waiter gets the same error and fails open; nor
    /// are stand-in decisions (`Decision::cacheable`).
    pub async fn get_or_classify<F, E>(
        &self,
        key: &str,
        classify: F,
    ) -> Result<(Arc<Decision>, Hit), Arc<E>>
    where
        F: Future<Output = Result<Decision, E>>,
        E: Send + Sync + 'static,
    {
        if let Some(d) = self.local.get(key).await {
            self.local_counts[0].increment(1);
            return Ok((d, Hit::Local));
        }
        self.local_counts[1].increment(1);
        // On the heap: the miss's future (Redis, moka's insertion, the classification) is many
        // KiB, and in line it made every hit's future as big, copied whole when boxed.
        Box::pin(self.miss(key, classify)).await
    }

    /// Not in the local LRU: Redis, else `classify` (one classification for concurrent misses).
    async fn miss<F, E>(&self, key: &str, classify: F) -> Result<(Arc<Decision>, Hit), Arc<E>>
    where
        F: Future<Output = Result<Decision, E>>,
        E: Send + Sync + 'static,
    {
        // 0 = classified here, 1 = found in Redis.
        let origin = AtomicU8::new(0);
        let entry = self
            .local
            .entry_by_ref(key)
            .or_try_insert_with(async {
                if let Some(r) = &self.redis {
                    if let Some(d) = r.get(key).await {
                        origin.store(1, Ordering::Relaxed);
                        return Ok(Arc::new(d));
                    }
                }
                let d = classify.await?;
                if let Some(r) = self.redis.as_ref().filter(|_| d.cacheable()) {
                    r.set(key.to_string(), &d);
                }
                Ok(Arc::new(d))
            })
            .await?;
        // A stand-in (the fast tier for an encoder that could not answer) serves the requests
        // that shared its classification, and is not kept for later ones.
        if entry.is_fresh() && !entry.value().cacheable() {
            self.local.invalidate(key).await;
        }
        let hit = if !entry.is_fresh() {
            Hit::Coalesced
        } else if origin.load(Ordering::Relaxed) == 1 {
            Hit::Redis
        } else {
            Hit::Miss
        };
        Ok((entry.into_value(), hit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_prefix_hex_sha256_of_the_text_then_the_tag() {
        let key = key_tagged(
            "semroute:",
            "What is the capital of North Carolina?",
            "abc123",
        );
        let hash = hex::encode(Sha256::digest(b"What is the capital of North Carolina?"));
        assert_eq!(key, format!("semroute:{hash}:abc123"));
        assert_eq!(key.len(), "semroute:".len() + 64 + 1 + 6);
        assert_ne!(
            key,
            key_tagged("semroute:", "What is the capital of Ohio?", "abc123")
        );
    }

    /// A decision the fast tier made for an encoder that could not answer is not cached: the
    /// next request classifies again; an encoder's (or a confident fast tier's) is.
    #[tokio::test]
    async fn stand_in_decisions_are_not_cached() {
        let cache = DecisionCache::new(&CacheConfig {
            redis_url: None,
            ..CacheConfig::default()
        })
        .unwrap();
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let decide = |tier: &'static str| {
            calls.fetch_add(1, Ordering::Relaxed);
            let mut d = Decision::explicit("m");
            d.classifier_tier = Some(tier.into());
            async move { Ok::<_, ()>(d) }
        };
        for tier in ["fast:deadline", "fast:shed"] {
            let key = format!("k-{tier}");
            let (_, hit) = cache.get_or_classify(&key, decide(tier)).await.unwrap();
            assert_eq!(hit, Hit::Miss);
            let (_, hit) = cache.get_or_classify(&key, decide(tier)).await.unwrap();
            assert_eq!(hit, Hit::Miss, "{tier}: classified again");
        }
        for tier in ["encoder", "fast"] {
            let key = format!("k-{tier}");
            cache.get_or_classify(&key, decide(tier)).await.unwrap();
            let (d, hit) = cache.get_or_classify(&key, decide(tier)).await.unwrap();
            assert_eq!(
                (hit, d.classifier_tier.as_deref()),
                (Hit::Local, Some(tier))
            );
        }
        assert_eq!(calls.load(Ordering::Relaxed), 8);
    }
}
