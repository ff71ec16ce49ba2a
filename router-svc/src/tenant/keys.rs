//! API keys: how they are made, stored and looked up. A key is `sk-sr-` and 32 random bytes
//! (256 bits) in hex, shown once when made; only its SHA-256 is kept (in Redis,
//! shared by every replica and changed at run time, and/or in a YAML file for static set-ups).
//! A plain hash is the right tool for high-entropy tokens: a slow password hash (argon2,
//! bcrypt) defends guessable secrets against brute force, and 2^256 random keys cannot be
//! guessed, while a fast hash keeps the per-request cost near a microsecond.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_redis::redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{Store, Unavailable};

pub const KEY_PREFIX: &str = "sk-sr-";

/// What is kept of a key: never the key itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// Shown in metrics, headers and `keys list`; 1-64 of `[A-Za-z0-9_.-]`.
    pub name: String,
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// Models it may use (the `auto` alias routes among them); empty: every model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Requests per minute; None: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens (prompt + completion) per minute; None: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Spend per UTC day from the models' prices; None: no budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd_per_day: Option<f64>,
    /// The selection's price weight for this key's `auto` requests (`routing.selection`);
    /// None: the config's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_weight: Option<f64>,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
}

impl KeyRecord {
    pub fn allows(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }
}

/// Name rules: short, and no character that means something in a Redis key, a hash tag, a
/// header or a metric label.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "key name {name:?}: 1-64 characters of A-Z, a-z, 0-9, '_', '.', '-'"
        ))
    }
}

/// A new random key (256 bits from the OS's generator).
pub fn generate() -> String {
    use rand::TryRngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the OS random generator works");
    format!("{KEY_PREFIX}{}", hex::encode(bytes))
}

pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Compares two hex digests in time independent of where they differ.
fn same_digest(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The static keys file.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    #[serde(default)]
    pub keys: Vec<KeyRecord>,
}

impl KeyFile {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        if !path.exists() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read keys file {}: {e}", path.display()))?;
        let file: KeyFile = serde_norway::from_str(&text)
            .map_err(|e| anyhow::anyhow!("keys file {}: {e}", path.display()))?;
        for k in &file.keys {
            check_name(&k.name)
                .map_err(|e| anyhow::anyhow!("keys file {}: {e}", path.display()))?;
        }
        Ok(file)
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_norway::to_string(self)?;
        std::fs::write(path, text)
            .map_err(|e| anyhow::anyhow!("cannot write keys file {}: {e}", path.display()))
    }
}

/// Redis layout (under `auth.key_prefix`): `key:<sha256>` holds the record (JSON), the hash
/// `keys` maps name -> sha256 (for list and revoke).
pub fn record_key(prefix: &str, sha: &str) -> String {
    format!("{prefix}key:{sha}")
}

pub fn index_key(prefix: &str) -> String {
    format!("{prefix}keys")
}

/// How a key looked up came out.
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(Arc<KeyRecord>),
    Unknown,
    /// Redis could not be asked and the key was not seen before.
    StoreUnavailable,
}

/// Looks keys up: the file's first, then Redis through a short per-replica cache.
pub struct KeyStore {
    file: HashMap<String, Arc<KeyRecord>>,
    redis: Option<Arc<Store>>,
    prefix: String,
    fresh_for: Duration,
    /// sha256 -> (when asked, answer). Answers older than `fresh_for` are asked again; when
    /// Redis cannot be asked, a known key's last answer is used (fail open), for at most
    /// `STALE_FOR`.
    seen: Mutex<HashMap<String, Seen>>,
}

/// When a key was last asked of Redis, and the answer (None: unknown).
type Seen = (Instant, Option<Arc<KeyRecord>>);

const STALE_FOR: Duration = Duration::from_secs(600);
const SEEN_MAX: usize = 100_000;

impl KeyStore {
    pub fn new(
        file: Option<&Path>,
        redis: Option<Arc<Store>>,
        prefix: &str,
        fresh_for: Duration,
    ) -> anyhow::Result<Self> {
        let file = match file {
            Some(p) => KeyFile::read(p)?
                .keys
                .into_iter()
                .map(|k| (k.sha256.clone(), Arc::new(k)))
                .collect(),
            None => HashMap::new(),
        };
        Ok(Self {
            file,
            redis,
            prefix: prefix.to_string(),
            fresh_for,
            seen: Mutex::new(HashMap::new()),
        })
    }

    pub async fn lookup(&self, key: &str, allow_stale: bool) -> Lookup {
        let sha = hash(key);
        if let Some(r) = self.file.get(&sha) {
            // The map lookup compares digests, not keys; the check below keeps the comparison
            // itself constant-time as well.
            if same_digest(&r.sha256, &sha) {
                return Lookup::Found(r.clone());
            }
        }
        let Some(redis) = &self.redis else {
            return Lookup::Unknown;
        };
        let cached = self.seen.lock().unwrap().get(&sha).cloned();
        if let Some((at, answer)) = &cached {
            if at.elapsed() < self.fresh_for {
                return answer.clone().map_or(Lookup::Unknown, Lookup::Found);
            }
        }
        let rkey = record_key(&self.prefix, &sha);
        let out = redis
            .call("key_lookup", None, |mut c| async move {
                c.get::<_, Option<String>>(rkey).await
            })
            .await;
        let answer = match out {
            Ok(None) => None,
            Ok(Some(json)) => match serde_json::from_str::<KeyRecord>(&json) {
                Ok(r) if same_digest(&r.sha256, &sha) => Some(Arc::new(r)),
                Ok(_) | Err(_) => {
                    tracing::warn!("an undecodable key record in Redis is ignored");
                    None
                }
            },
            Err(Unavailable::Skipped | Unavailable::Failed) => {
                return match cached {
                    Some((at, Some(r))) if allow_stale && at.elapsed() < STALE_FOR => {
                        Lookup::Found(r)
                    }
                    _ => Lookup::StoreUnavailable,
                };
            }
        };
        let mut seen = self.seen.lock().unwrap();
        if seen.len() >= SEEN_MAX {
            // Random keys sent by a scanner must not grow this without bound.
            seen.retain(|_, (_, a)| a.is_some());
            if seen.len() >= SEEN_MAX {
                seen.clear();
            }
        }
        seen.insert(sha, (Instant::now(), answer.clone()));
        answer.map_or(Lookup::Unknown, Lookup::Found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_prefixed_and_kept_as_hashes() {
        let a = generate();
        let b = generate();
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 64);
        assert_ne!(a, b);
        assert_eq!(hash(&a).len(), 64);
        assert_ne!(hash(&a), hash(&b));
        assert!(same_digest(&hash(&a), &hash(&a)));
        assert!(!same_digest(&hash(&a), &hash(&b)));
        assert!(!same_digest(&hash(&a), "ab"));
    }

    #[test]
    fn names_are_checked() {
        for ok in ["team-a", "A.b_c-9", &"x".repeat(64)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a{b}", "é", &"x".repeat(65), "a:b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn file_keys_are_found_by_key_and_unknown_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        let key = generate();
        let file = KeyFile {
            keys: vec![KeyRecord {
                name: "team-a".into(),
                sha256: hash(&key),
                models: vec!["small".into()],
                rpm: Some(60),
                tpm: None,
                budget_usd_per_day: Some(5.0),
                cost_weight: None,
                created: 1,
            }],
        };
        file.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&key), "the file never holds the key");
        let store = KeyStore::new(Some(&path), None, "t:", Duration::from_millis(500)).unwrap();
        match store.lookup(&key, true).await {
            Lookup::Found(r) => {
                assert_eq!(r.name, "team-a");
                assert!(r.allows("small") && !r.allows("big"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            store.lookup(&generate(), true).await,
            Lookup::Unknown
        ));
    }
}
