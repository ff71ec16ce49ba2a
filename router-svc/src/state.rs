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
use crate::tenant::Tenants;
use crate::upstream::{Pools, Upstream};

pub struct Runtime {
    pub cfg: Config,
    pub policy_version: String,
    pub classifier: Arc<Classifier>,
    pub cache: Arc<DecisionCache>,
    /// Session states (in the decision cache's Redis, an in-process copy in front).
    pub sessions: Arc<crate::decide::session::Sessions>,
    /// Answers replayed (None when `response_cache.enabled` is off).
    pub response_cache: Option<Arc<crate::response_cache::ResponseCache>>,
    /// Similarity routes (examples embedded in the background).
    pub routes: Arc<RouteSet>,
    /// The fast tier in process, standing in for a classifier that cannot answer.
    pub fast: Option<Arc<crate::decide::fast_tier::LocalTier>>,
    pub upstream: Arc<Upstream>,
    pub pools: Pools,
    /// model -> "Bearer <key>" from the model's `api_key_env`.
    pub api_keys: HashMap<String, HeaderValue>,
    /// API keys, limits and budgets (None when `auth.mode` is `none`).
    pub tenants: Option<Arc<Tenants>>,
    /// Tasks and cache-key version tag, made once per classifier generation.
    pub key_parts: crate::decide::KeyParts,
    pub decisions: crate::decide::DecisionCounters,
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
        // Kept while its section and the Redis it shares with the decision cache stay the same.
        let sessions = match prev {
            Some(p) if p.cfg.session == cfg.session && Arc::ptr_eq(&p.cache, &cache) => {
                p.sessions.clone()
            }
            _ => Arc::new(crate::decide::session::Sessions::new(
                &cfg.session,
                cache.store(),
            )),
        };
        let response_cache = match prev {
            Some(p) if p.cfg.response_cache == cfg.response_cache && p.cfg.cache == cfg.cache => {
                p.response_cache.clone()
            }
            _ => crate::response_cache::ResponseCache::new(&cfg.response_cache, &cfg.cache)?
                .map(Arc::new),
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
        let fast = match prev {
            Some(p)
                if p.cfg.fast_tier == cfg.fast_tier
                    && p.cfg.routing.routes == cfg.routing.routes =>
            {
                p.fast.clone()
            }
            _ => crate::decide::fast_tier::load(&cfg.fast_tier, &cfg.routing.routes)?,
        };
        let upstream = match prev {
            Some(p) if p.cfg.upstream == cfg.upstream => p.upstream.clone(),
            _ => Arc::new(Upstream::new(&cfg.upstream)?),
        };
        let pools = Pools::build(&cfg, prev.map(|p| &p.pools));
        // Rebuilt on any change of its section (the keys file is re-read then); the in-process
        // limit state is kept otherwise.
        let tenants = match prev {
            Some(p) if p.cfg.auth == cfg.auth && p.cfg.cache.redis_url == cfg.cache.redis_url => {
                p.tenants.clone()
            }
            _ => Tenants::new(&cfg)?.map(Arc::new),
        };
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
            sessions,
            response_cache,
            routes,
            fast,
            upstream,
            pools,
            api_keys,
            tenants,
            key_parts: Default::default(),
            decisions: Default::default(),
        })
    }
}

/// The current runtime, swapped atomically.
pub struct Shared {
    current: ArcSwap<Runtime>,
    /// Shutting down: readiness says 503 so load balancers stop sending.
    draining: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn new(rt: Runtime) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::from_pointee(rt),
            draining: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        if !self
            .draining
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::info!("draining: readiness is 503 from now on");
        }
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

    /// Sets `path` (dot-separated; numbers index lists) in a YAML tree.
    fn set(doc: &mut serde_norway::Value, path: &str, value: serde_norway::Value) {
        let mut node = doc;
        let parts: Vec<&str> = path.split('.').collect();
        for (i, p) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            node = match p.parse::<usize>() {
                Ok(n) => &mut node[n],
                Err(_) => {
                    let map = node.as_mapping_mut().expect("a mapping on the path");
                    let key = serde_norway::Value::from(*p);
                    if last {
                        map.insert(key.clone(), serde_norway::Value::Null);
                    } else if !map.contains_key(&key) {
                        map.insert(key.clone(), serde_norway::Mapping::new().into());
                    }
                    map.get_mut(&key).unwrap()
                }
            };
        }
        *node = value;
    }

    /// Every field's documented values (router.yaml and README) and a bad one where there is
    /// one: a value the loader accepts also builds everything start-up builds (what `--check`
    /// runs), and a refused one is refused by the loader, naming its field.
    #[tokio::test]
    async fn documented_values_of_every_field_load_and_build_or_are_refused_by_name() {
        let ok: &[(&str, &str)] = &[
            ("server.listen", "127.0.0.1:0"),
            ("server.listen", "\"[::1]:8080\""),
            ("server.auto_model", "router"),
            ("server.max_body_bytes", "1024"),
            ("server.max_in_flight", "1"),
            ("server.body_timeout_ms", "100"),
            ("server.shutdown_grace_ms", "0"),
            ("server.drain_ms", "5000"),
            ("server.summary_interval_ms", "1000"),
            ("server.workers", "0"),
            ("server.workers", "1"),
            ("classifier.addresses", "[]"),
            (
                "classifier.addresses",
                "[\"http://10.0.0.1:50051\", \"https://classifier:443\"]",
            ),
            ("classifier.timeout_ms", "200"),
            ("classifier.connect_timeout_ms", "1000"),
            ("classifier.breaker_failures", "1"),
            ("classifier.breaker_cooldown_ms", "0"),
            ("classifier.info_refresh_ms", "1000"),
            ("classifier.input.include_system", "true"),
            ("classifier.input.history_messages", "3"),
            ("classifier.input.max_chars", "100"),
            ("classifier.admission.initial_limit", "1"),
            ("classifier.admission.max_limit", "16"),
            ("classifier.admission.slow_ms", "20"),
            ("classifier.admission.backoff_ratio", "0.5"),
            ("cache.redis_url", "null"),
            ("cache.redis_url", "\"\""),
            ("cache.redis_url", "redis://127.0.0.1:6379"),
            ("cache.redis_url", "redis://:secret@redis.internal:6380/2"),
            ("cache.redis_url", "unix:///var/run/redis.sock"),
            ("cache.key_prefix", "\"other:\""),
            ("cache.ttl_secs", "60"),
            ("cache.local_capacity", "0"),
            ("cache.local_ttl_secs", "1"),
            ("cache.redis_timeout_ms", "50"),
            ("cache.redis_retry_ms", "0"),
            ("cache.redis_pool_size", "1"),
            ("upstream.connect_timeout_ms", "50"),
            ("upstream.first_byte_timeout_ms", "1000"),
            ("upstream.total_timeout_ms", "1000"),
            ("upstream.max_attempts", "1"),
            ("upstream.health_path", "/v1/models"),
            ("upstream.health_interval_ms", "100"),
            ("upstream.health_timeout_ms", "100"),
            ("upstream.eject_after_failures", "1"),
            ("upstream.eject_ms", "0"),
            ("upstream.max_idle_per_host", "0"),
            (
                "models.0.endpoints",
                "[\"https://vllm.example.com/\", \"http://[::1]:8001\"]",
            ),
            ("models.0.reasoning_family", "deepseek"),
            ("models.0.reasoning_family", "gpt-oss"),
            ("models.0.reasoning_family", "null"),
            ("models.0.reasoning_effort", "medium"),
            (
                "models.0.pricing",
                "{input_per_million: 0, output_per_million: 2.5}",
            ),
            ("models.0.max_context", "null"),
            ("models.0.api_key_env", "SEMROUTE_TEST_UNSET_KEY"),
            (
                "models.0.pii",
                "{deny: [EMAIL_ADDRESS, CREDIT_CARD], action: mask}",
            ),
            ("models.0.pii", "{deny: [ALL]}"),
            ("routing.fallback_model", "null"),
            ("routing.confidence_threshold", "0"),
            ("routing.confidence_threshold", "1"),
            ("routing.tasks", "{domain: d, complexity: c, jailbreak: j}"),
            ("routing.categories", "{}"),
            ("routing.complexity", "{}"),
            ("routing.routes", "[]"),
            ("routing.routes_win", "false"),
            (
                "routing.strong_model",
                "{threshold: 0.56, model: qwen3-8b, weak_model: qwen3-0.6b, use_reasoning: true}",
            ),
            ("routing.jailbreak.enabled", "false"),
            ("routing.jailbreak.action", "flag"),
            ("routing.jailbreak.labels", "[jailbreak]"),
            ("routing.jailbreak.threshold", "0.9"),
            ("routing.jailbreak.message", "\"No.\""),
        ];
        let bad: &[(&str, &str)] = &[
            ("server.listen", "localhost"),
            ("server.auto_model", "qwen3-8b"),
            ("server.max_in_flight", "0"),
            ("server.summary_interval_ms", "0"),
            ("server.typo", "1"),
            ("classifier.addresses", "[\"127.0.0.1:50051\"]"),
            ("classifier.timeout_ms", "0"),
            ("classifier.admission.min_limit", "0"),
            ("classifier.admission.initial_limit", "1000"),
            ("classifier.admission.backoff_ratio", "1.0"),
            ("cache.redis_url", "\"not a url\""),
            ("cache.redis_url", "http://127.0.0.1:6379"),
            // This build has no TLS to Redis: refused at load (and by --check), not at start.
            ("cache.redis_url", "rediss://redis.example.com:6380"),
            ("cache.redis_timeout_ms", "0"),
            ("upstream.health_path", "health"),
            ("upstream.max_attempts", "0"),
            ("models.0.endpoints", "[]"),
            ("models.0.endpoints", "[\"localhost:8001\"]"),
            ("models.0.reasoning_family", "llama"),
            ("models.0.pricing", "{input_per_million: -1}"),
            ("models.0.pii", "{deny: [SHOE_SIZE]}"),
            ("models", "[]"),
            ("routing.default_model", "gpt-9"),
            ("routing.fallback_model", "gpt-9"),
            ("routing.confidence_threshold", "1.5"),
            ("routing.categories.math.candidates", "[]"),
            ("routing.complexity.simple.model", "gpt-9"),
            ("routing.routes.0.examples", "[\"\"]"),
            ("routing.strong_model", "{threshold: 2, model: qwen3-8b}"),
            ("routing.jailbreak.action", "ignore"),
        ];
        let base: serde_norway::Value =
            serde_norway::from_str(crate::config::EMBEDDED_DEFAULT).unwrap();
        let with = |path: &str, value: &str| {
            let mut doc = base.clone();
            set(&mut doc, path, serde_norway::from_str(value).unwrap());
            serde_norway::to_string(&doc).unwrap()
        };
        for (path, value) in ok {
            let cfg = Config::from_yaml(&with(path, value))
                .unwrap_or_else(|e| panic!("{path}: {value}: {e}"));
            Runtime::build(cfg, None).unwrap_or_else(|e| panic!("{path}: {value}: built: {e}"));
        }
        for (path, value) in bad {
            let e = Config::from_yaml(&with(path, value))
                .err()
                .unwrap_or_else(|| panic!("{path}: {value} was accepted"))
                .to_string();
            let leaf = path
                .rsplit('.')
                .find(|p| p.parse::<usize>().is_err())
                .unwrap();
            assert!(
                e.contains(leaf) || e.contains(&path.replace(".0", "[0]")),
                "{path}: {value}: the error does not name the field: {e}"
            );
        }
        // "None" said every documented way, in the file and in the environment.
        let none_redis = [
            with("cache.redis_url", "null"),
            with("cache.redis_url", "\"\""),
            with("cache.redis_url", "\"  \""),
            crate::config::EMBEDDED_DEFAULT.replace("  redis_url: redis://127.0.0.1:6379", ""),
        ];
        for text in none_redis {
            let cfg = Config::from_yaml(&text).unwrap();
            assert_eq!(cfg.cache.redis_url, None);
            Runtime::build(cfg, None).unwrap();
        }
        let mut cfg = Config::from_yaml(crate::config::EMBEDDED_DEFAULT).unwrap();
        cfg.apply_env(|k| (k == "ROUTER_REDIS_URL").then(String::new));
        assert_eq!(cfg.cache.redis_url, None);
    }
}
