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
use crate::decide::routes::RouteSet;
use crate::upstream::{Pools, Upstream};

pub struct Runtime {
    pub cfg: Config,
    pub policy_version: String,
    pub classifier: Arc<Classifier>,
    pub cache: Arc<DecisionCache>,
    /// Similarity routes (examples embedded in the background).
    pub routes: Arc<RouteSet>,
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
        let routes = match prev {
            Some(p)
                if p.cfg.routing.routes == cfg.routing.routes
                    && Arc::ptr_eq(&p.classifier, &classifier) =>
            {
                p.routes.clone()
            }
            _ => RouteSet::new(cfg.routing.routes.clone(), &classifier),
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
            routes,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn api_keys_come_from_the_environment_and_reload_keeps_endpoints() {
        std::env::set_var("SEMROUTE_TEST_KEY_BIG", "sk-test");
        let yaml = crate::config::EMBEDDED_DEFAULT
            .replace(
                "# api_key_env: QWEN3_8B_API_KEY",
                "api_key_env: SEMROUTE_TEST_KEY_BIG",
            )
            .replace("redis_url: redis://127.0.0.1:6379", "redis_url: null")
            .replace("addresses: [\"http://127.0.0.1:50051\"]", "addresses: []");
        let rt = Runtime::build(Config::from_yaml(&yaml).unwrap(), None).unwrap();
        let key = &rt.api_keys["qwen3-8b"];
        assert_eq!(key.to_str().unwrap(), "Bearer sk-test");
        assert!(key.is_sensitive(), "kept out of debug output");
        assert!(!rt.api_keys.contains_key("qwen3-0.6b"));

        let shared = Shared::new(rt);
        let ep = shared.current().pools.endpoints("qwen3-8b")[0].clone();
        let cache = shared.current().cache.clone();
        shared
            .reload(&yaml.replace("confidence_threshold: 0.5", "confidence_threshold: 0.6"))
            .unwrap();
        let now = shared.current();
        assert!(Arc::ptr_eq(&ep, &now.pools.endpoints("qwen3-8b")[0]));
        assert!(
            Arc::ptr_eq(&cache, &now.cache),
            "unchanged sections are reused"
        );
        assert!(shared.reload("models: []").is_err());
        assert_eq!(shared.current().cfg.routing.confidence_threshold, 0.6);
    }
}
