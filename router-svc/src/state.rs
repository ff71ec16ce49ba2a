//! What a request runs against: the config and everything built from it (classifier client,
//! decision cache, endpoint pools, backend client), swapped atomically on reload. A request
//! holds the `Runtime` it started with until it ends, so a reload never drops one.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::http::HeaderValue;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::decide::cache::DecisionCache;
use crate::decide::classifier::Classifier;
use crate::upstream::{Pools, Upstream};

pub struct Runtime {
    pub cfg: Config,
    pub policy_version: String,
    pub classifier: Arc<Classifier>,
    pub cache: Arc<DecisionCache>,
    pub upstream: Arc<Upstream>,
    pub pools: Pools,
    /// model -> "Bearer <key>" from the model's `api_key_env`.
    pub api_keys: HashMap<String, HeaderValue>,
}

impl Runtime {
    /// Builds from `cfg`, reusing what did not change in `prev` (connections, cache, endpoint
    /// state). Needs a tokio runtime.
    pub fn build(cfg: Config, prev: Option<&Runtime>) -> anyhow::Result<Self> {
        let classifier = match prev {
            Some(p) if p.cfg.classifier == cfg.classifier => p.classifier.clone(),
            _ => Classifier::new(&cfg.classifier)?,
        };
        let cache = match prev {
            Some(p) if p.cfg.cache == cfg.cache => p.cache.clone(),
            _ => Arc::new(DecisionCache::new(&cfg.cache)?),
        };
        let upstream = match prev {
            Some(p) if p.cfg.upstream == cfg.upstream => p.upstream.clone(),
            _ => Arc::new(Upstream::new(&cfg.upstream)?),
        };
        let pools = Pools::build(&cfg, prev.map(|p| &p.pools));
        let mut api_keys = HashMap::new();
        for m in &cfg.models {
            if let Some(var) = &m.api_key_env {
                match std::env::var(var) {
                    Ok(k) if !k.is_empty() => {
                        let mut v =
                            HeaderValue::from_str(&format!("Bearer {k}")).map_err(|_| {
                                anyhow::anyhow!(
                                    "env {var} (api key of model {}) is not a valid header value",
                                    m.name
                                )
                            })?;
                        v.set_sensitive(true);
                        api_keys.insert(m.name.clone(), v);
                    }
                    _ => tracing::warn!(model = %m.name, env = %var,
                        "api_key_env is set but the variable is empty or missing"),
                }
            }
        }
        Ok(Self {
            policy_version: cfg.policy_version(),
            cfg,
            classifier,
            cache,
            upstream,
            pools,
            api_keys,
        })
    }
}

/// The current runtime, swapped atomically.
pub struct Shared {
    current: ArcSwap<Runtime>,
}

impl Shared {
    pub fn new(rt: Runtime) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::from_pointee(rt),
        })
    }

    pub fn current(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// Validates and swaps in a new config; on error the old one stays.
    pub fn reload(&self, text: &str) -> anyhow::Result<()> {
        let cfg = Config::from_yaml(text)?;
        let old = self.current();
        if cfg == old.cfg {
            return Ok(());
        }
        let rt = Runtime::build(cfg, Some(&old))?;
        let policy_changed = rt.policy_version != old.policy_version;
        self.current.store(Arc::new(rt));
        tracing::info!(policy_changed, "config reloaded");
        Ok(())
    }
}

/// Watches `path` (content hash, every `every`) and reloads on change.
pub async fn watch(shared: Arc<Shared>, path: PathBuf, every: Duration) {
    let hash = |b: &[u8]| Sha256::digest(b).to_vec();
    let mut last = std::fs::read(&path).ok().map(|b| hash(&b));
    loop {
        tokio::time::sleep(every).await;
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let h = hash(&bytes);
        if last.as_ref() == Some(&h) {
            continue;
        }
        last = Some(h);
        let text = String::from_utf8_lossy(&bytes);
        match shared.reload(&text) {
            Ok(()) => {
                metrics::counter!("router_config_reloads_total", "result" => "ok").increment(1)
            }
            Err(e) => {
                metrics::counter!("router_config_reloads_total", "result" => "rejected")
                    .increment(1);
                tracing::error!(file = %path.display(), error = %e,
                    "new config rejected; still serving the previous one");
            }
        }
    }
}
