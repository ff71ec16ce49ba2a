//! The decision cache: a small in-process LRU in front of Redis (shared by every replica).
//! Identical concurrent misses are coalesced into one classification (moka runs one init per
//! key and hands its result to every waiter). Redis is the one place Redis is called: every call
//! has a budget of a few milliseconds and no request waits for a connect; after an error Redis is
//! skipped for a while (then probed), and writes happen off the request path. Only the compact decision is stored, never text.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::AsyncCommands;
use sha2::{Digest, Sha256};

use super::Decision;
use crate::config::{ms, CacheConfig};

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
}

/// `prefix + sha256(text) + ":" + hash(classifier version, policy version)`.
pub fn key(prefix: &str, text: &str, classifier_version: &str, policy_version: &str) -> String {
    let text_hash = hex::encode(Sha256::digest(text.as_bytes()));
    let mut h = Sha256::new();
    h.update(classifier_version.as_bytes());
    h.update([0]);
    h.update(policy_version.as_bytes());
    let ver = hex::encode(&h.finalize()[..8]);
    format!("{prefix}{text_hash}:{ver}")
}

struct RedisLayer {
    /// Creates and checks connections (with its own create/recycle timeouts).
    pool: deadpool_redis::Pool,
    /// The checked connection every request shares: a multiplexed connection pipelines all
    /// concurrent commands over one socket, so a lookup costs one round trip (a checkout from
    /// the pool would add a PING). Cleared on error; re-made in the background.
    conn: Mutex<Option<MultiplexedConnection>>,
    connecting: AtomicBool,
    /// Failed since it last answered (so "lost" and "back" are logged once each).
    lost: AtomicBool,
    timeout: Duration,
    ttl_secs: u64,
    retry: Duration,
    /// Redis is skipped until this instant (ms since `epoch`) after an error.
    skip_until_ms: AtomicU64,
    epoch: Instant,
}

impl RedisLayer {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn usable(&self) -> bool {
        self.now_ms() >= self.skip_until_ms.load(Ordering::Relaxed)
    }

    fn failed(&self, what: &str, err: &str) {
        if self.conn.lock().unwrap().take().is_some() {
            metrics::gauge!("router_redis_connected").set(0.0);
        }
        let until = self.now_ms() + self.retry.as_millis() as u64;
        self.skip_until_ms.store(until, Ordering::Relaxed);
        if !self.lost.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                op = what,
                error = err,
                retry_ms = self.retry.as_millis() as u64,
                "redis lost; decision cache runs in-process only until it answers again"
            );
        }
        crate::events::count(crate::events::Event::RedisError);
        metrics::counter!("router_cache_requests_total", "layer" => "redis", "result" => "error")
            .increment(1);
    }

    fn skipped() {
        metrics::counter!("router_cache_requests_total", "layer" => "redis", "result" => "skipped")
            .increment(1);
    }

    /// The shared connection, or None while one is being made off the request path (so no
    /// request waits for a connect).
    fn connection(self: &Arc<Self>) -> Option<MultiplexedConnection> {
        if let Some(c) = self.conn.lock().unwrap().as_ref() {
            return Some(c.clone());
        }
        if !self.connecting.swap(true, Ordering::AcqRel) {
            let this = self.clone();
            tokio::spawn(async move {
                match this.pool.get().await {
                    Ok(c) => {
                        *this.conn.lock().unwrap() = Some((*c).clone());
                        metrics::gauge!("router_redis_connected").set(1.0);
                        if this.lost.swap(false, Ordering::Relaxed) {
                            tracing::info!("redis back; decision cache shared again");
                        } else {
                            tracing::info!("redis connected");
                        }
                    }
                    Err(e) => this.failed("connect", &e.to_string()),
                }
                this.connecting.store(false, Ordering::Release);
            });
        }
        None
    }

    async fn get(self: &Arc<Self>, key: &str) -> Option<Decision> {
        if !self.usable() {
            Self::skipped();
            return None;
        }
        let Some(mut conn) = self.connection() else {
            Self::skipped();
            return None;
        };
        let out = tokio::time::timeout(self.timeout, conn.get::<_, Option<Vec<u8>>>(key)).await;
        match out {
            Err(_) => {
                self.failed("get", "timeout");
                None
            }
            Ok(Err(e)) => {
                self.failed("get", &e.to_string());
                None
            }
            Ok(Ok(None)) => {
                metrics::counter!("router_cache_requests_total", "layer" => "redis", "result" => "miss")
                    .increment(1);
                None
            }
            Ok(Ok(Some(bytes))) => match serde_json::from_slice(&bytes) {
                Ok(d) => {
                    metrics::counter!("router_cache_requests_total", "layer" => "redis", "result" => "hit")
                        .increment(1);
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
    fn set(self: &Arc<Self>, key: String, d: &Decision) {
        if !self.usable() {
            return;
        }
        let Some(mut conn) = self.connection() else {
            return;
        };
        let Ok(bytes) = serde_json::to_vec(d) else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let out = tokio::time::timeout(
                this.timeout * 4,
                conn.set_ex::<_, _, ()>(key, bytes, this.ttl_secs),
            )
            .await;
            match out {
                Err(_) => this.failed("set", "timeout"),
                Ok(Err(e)) => this.failed("set", &e.to_string()),
                Ok(Ok(())) => {}
            }
        });
    }
}

impl DecisionCache {
    pub fn new(cfg: &CacheConfig) -> anyhow::Result<Self> {
        let local = moka::future::Cache::builder()
            .max_capacity(cfg.local_capacity)
            .time_to_live(Duration::from_secs(cfg.local_ttl_secs.max(1)))
            .build();
        let redis = match &cfg.redis_url {
            None => None,
            Some(url) => {
                let mut rc = deadpool_redis::Config::from_url(url.clone());
                let t = ms(cfg.redis_timeout_ms);
                rc.pool = Some(deadpool_redis::PoolConfig {
                    max_size: cfg.redis_pool_size.max(1),
                    timeouts: deadpool_redis::Timeouts {
                        // Connections are made off the request path (see `connection`).
                        wait: Some(Duration::from_secs(1)),
                        create: Some(Duration::from_secs(1)),
                        recycle: Some(Duration::from_millis(500)),
                    },
                    ..Default::default()
                });
                let pool = rc
                    .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                    .map_err(|e| anyhow::anyhow!("cache.redis_url {url:?}: {e}"))?;
                Some(RedisLayer {
                    pool,
                    conn: Mutex::new(None),
                    connecting: AtomicBool::new(false),
                    lost: AtomicBool::new(false),
                    timeout: t,
                    ttl_secs: cfg.ttl_secs.max(1),
                    retry: ms(cfg.redis_retry_ms),
                    skip_until_ms: AtomicU64::new(0),
                    epoch: Instant::now(),
                })
            }
        };
        let redis = redis.map(Arc::new);
        if let Some(r) = &redis {
            metrics::gauge!("router_redis_connected").set(0.0);
            r.connection(); // connect now, in the background
        }
        Ok(Self {
            prefix: cfg.key_prefix.clone(),
            local,
            redis,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn has_redis(&self) -> bool {
        self.redis.is_some()
    }

    /// The cached decision for `key`, or the result of `classify` (stored in both layers).
    /// Errors are not cached: every coalesced waiter gets the same error and fails open.
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
            metrics::counter!("router_cache_requests_total", "layer" => "local", "result" => "hit")
                .increment(1);
            return Ok((d, Hit::Local));
        }
        metrics::counter!("router_cache_requests_total", "layer" => "local", "result" => "miss")
            .increment(1);
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
                if let Some(r) = &self.redis {
                    r.set(key.to_string(), &d);
                }
                Ok(Arc::new(d))
            })
            .await?;
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
