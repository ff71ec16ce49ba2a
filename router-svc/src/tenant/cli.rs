//! `router-svc keys add | list | revoke`: keys in Redis (the config's `cache.redis_url`,
//! shared by every replica; a revocation is seen everywhere within `auth.lookup_cache_ms`) or,
//! with `--file`, in a static keys file. A new key is printed once; only its hash is stored.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use deadpool_redis::redis::AsyncCommands;

use super::keys::{self, check_name, KeyFile, KeyRecord};
use crate::config::Config;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum KeysCmd {
    /// Make a key; it is printed once (store it now), only its SHA-256 is kept.
    Add {
        #[arg(long)]
        name: String,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u64>,
        /// Tokens (prompt + completion) per minute.
        #[arg(long)]
        tpm: Option<u64>,
        /// Spend per UTC day, from the models' prices.
        #[arg(long)]
        budget_usd_per_day: Option<f64>,
        /// The selection's price weight for this key (`routing.selection.cost_weight`).
        #[arg(long)]
        cost_weight: Option<f64>,
        /// Models it may use, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Write to this keys file instead of Redis.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// The keys, by name, with their limits and today's spend (never a key or a hash).
    List {
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Remove a key by name.
    Revoke {
        name: String,
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

async fn connect(cfg: &Config) -> anyhow::Result<crate::store::Conn> {
    let url = cfg.cache.redis_url.as_deref().ok_or_else(|| {
        anyhow::anyhow!("no Redis: set cache.redis_url (or ROUTER_REDIS_URL), or use --file")
    })?;
    let store = crate::store::Store::new(
        url,
        1,
        std::time::Duration::from_secs(5),
        std::time::Duration::from_millis(0),
        "cli",
        "nothing",
    )?;
    for _ in 0..100 {
        if let Some(c) = store.connection() {
            return Ok(c);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    anyhow::bail!("could not connect to Redis at {url}")
}

fn line(r: &KeyRecord, spend: Option<f64>) -> String {
    let opt = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
    format!(
        "{}\tmodels={}\trpm={}\ttpm={}\tbudget_usd_per_day={}\tcost_weight={}\tspent_today_usd={}",
        r.name,
        if r.models.is_empty() {
            "all".into()
        } else {
            r.models.join(",")
        },
        opt(r.rpm),
        opt(r.tpm),
        r.budget_usd_per_day.map_or("-".into(), |b| b.to_string()),
        r.cost_weight.map_or("-".into(), |w| w.to_string()),
        spend.map_or("-".into(), |s| format!("{s:.6}")),
    )
}

pub async fn run(cmd: KeysCmd, cfg: &Config) -> anyhow::Result<()> {
    let prefix = &cfg.auth.key_prefix;
    match cmd {
        KeysCmd::Add {
            name,
            rpm,
            tpm,
            budget_usd_per_day,
            cost_weight,
            models,
            file,
        } => {
            check_name(&name).map_err(|e| anyhow::anyhow!(e))?;
            for m in &models {
                if cfg.model(m).is_none() {
                    anyhow::bail!("unknown model {m:?} in --models");
                }
            }
            if budget_usd_per_day.is_some_and(|b| b.is_nan() || b < 0.0) {
                anyhow::bail!("--budget-usd-per-day must be 0 or more");
            }
            if cost_weight.is_some_and(|w| !w.is_finite() || w < 0.0) {
                anyhow::bail!("--cost-weight must be a number >= 0");
            }
            let key = keys::generate();
            let rec = KeyRecord {
                name: name.clone(),
                sha256: keys::hash(&key),
                models,
                rpm,
                tpm,
                budget_usd_per_day,
                cost_weight,
                created: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            };
            match file {
                Some(path) => {
                    let mut f = KeyFile::read(&path)?;
                    if f.keys.iter().any(|k| k.name == name) {
                        anyhow::bail!(
                            "a key named {name:?} exists in {}; revoke it first",
                            path.display()
                        );
                    }
                    f.keys.push(rec.clone());
                    f.write(&path)?;
                }
                None => {
                    let mut c = connect(cfg).await?;
                    let added: bool = c
                        .hset_nx(keys::index_key(prefix), &name, &rec.sha256)
                        .await?;
                    if !added {
                        anyhow::bail!("a key named {name:?} exists; revoke it first");
                    }
                    let json = serde_json::to_string(&rec)?;
                    let _: () = c.set(keys::record_key(prefix, &rec.sha256), json).await?;
                }
            }
            eprintln!("key {name:?} added; it is shown once, store it now:");
            println!("{key}");
        }
        KeysCmd::List { file } => {
            let recs: Vec<(KeyRecord, Option<f64>)> = match file {
                Some(path) => KeyFile::read(&path)?
                    .keys
                    .into_iter()
                    .map(|k| (k, None))
                    .collect(),
                None => {
                    let mut c = connect(cfg).await?;
                    let index: Vec<(String, String)> = c.hgetall(keys::index_key(prefix)).await?;
                    let day = super::limits::today();
                    let mut out = Vec::new();
                    for (_, sha) in index {
                        let json: Option<String> = c.get(keys::record_key(prefix, &sha)).await?;
                        let Some(rec) =
                            json.and_then(|j| serde_json::from_str::<KeyRecord>(&j).ok())
                        else {
                            continue;
                        };
                        let spend: Option<i64> = c
                            .get(super::limits::tenant_keys(prefix, &rec.name, day)[2].clone())
                            .await?;
                        out.push((rec, Some(spend.unwrap_or(0) as f64 / 1e6)));
                    }
                    out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
                    out
                }
            };
            for (r, spend) in recs {
                println!("{}", line(&r, spend));
            }
        }
        KeysCmd::Revoke { name, file } => match file {
            Some(path) => {
                let mut f = KeyFile::read(&path)?;
                let before = f.keys.len();
                f.keys.retain(|k| k.name != name);
                if f.keys.len() == before {
                    anyhow::bail!("no key named {name:?} in {}", path.display());
                }
                f.write(&path)?;
                eprintln!("key {name:?} revoked (replicas read the file on config reload)");
            }
            None => {
                let mut c = connect(cfg).await?;
                let sha: Option<String> = c.hget(keys::index_key(prefix), &name).await?;
                let Some(sha) = sha else {
                    anyhow::bail!("no key named {name:?}");
                };
                let _: () = c.del(keys::record_key(prefix, &sha)).await?;
                let _: () = c.hdel(keys::index_key(prefix), &name).await?;
                eprintln!(
                    "key {name:?} revoked; every replica refuses it within {} ms",
                    cfg.auth.lookup_cache_ms
                );
            }
        },
    }
    Ok(())
}
