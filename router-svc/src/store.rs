//! The one way router-svc talks to Redis, for everything replicas share (the decision cache;
//! API keys, rate limits and spend): one server, a Redis Cluster or a Sentinel-watched master
//! behind one URL. A request never waits for a connect (connections are made in the
//! background), every call has a budget, and after an error Redis is skipped for a while and
//! then probed; "lost" and "back" are logged once each, per user of the handle.
//!
//! URLs: `redis://`, `rediss://`, `unix://` (one server); `redis+cluster://h1:p1,h2:p2,...`
//! (a Redis Cluster: any of its nodes, the slots are discovered); `redis+sentinel://s1:p1,s2:p2/
//! <master name>` (Sentinel: the master it names, re-asked after an error, so a failover is
//! followed). A password in the userinfo part (`redis+cluster://:secret@...`) is used for every
//! node.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_redis::redis::aio::{ConnectionLike, MultiplexedConnection};
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::{self, Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// A connection every request of the process shares: both kinds pipeline concurrent commands
/// over their sockets, so a command costs one round trip. Cheap to clone.
#[derive(Clone)]
pub enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// What a URL points at.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Single(String),
    Cluster(Vec<String>),
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        password: Option<String>,
    },
}

/// Parses a Redis URL of any of the three kinds; the error says what is wrong with it.
pub fn target(url: &str) -> Result<Target, String> {
    use redis::IntoConnectionInfo;
    let multi =
        |rest: &str, scheme: &str| -> Result<(Vec<String>, Option<String>, String), String> {
            let (auth, hosts) = match rest.rsplit_once('@') {
                Some((a, h)) => (Some(a), h),
                None => (None, rest),
            };
            let (hosts, path) = hosts.split_once('/').unwrap_or((hosts, ""));
            let password = auth
                .and_then(|a| a.split_once(':').map(|(_, p)| p).or(Some(a)))
                .filter(|p| !p.is_empty())
                .map(String::from);
            let nodes: Vec<String> = hosts
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(|h| match auth {
                    Some(a) => format!("{scheme}://{a}@{h}"),
                    None => format!("{scheme}://{h}"),
                })
                .collect();
            if nodes.is_empty() {
                return Err("no host:port listed".into());
            }
            for n in &nodes {
                n.as_str()
                    .into_connection_info()
                    .map_err(|e| format!("node {:?}: {e}", n.rsplit('@').next().unwrap_or(n)))?;
            }
            Ok((nodes, password, path.to_string()))
        };
    for (prefix, scheme) in [
        ("redis+cluster://", "redis"),
        ("rediss+cluster://", "rediss"),
    ] {
        if let Some(rest) = url.strip_prefix(prefix) {
            let (nodes, _, _) = multi(rest, scheme)?;
            return Ok(Target::Cluster(nodes));
        }
    }
    if let Some(rest) = url.strip_prefix("redis+sentinel://") {
        let (sentinels, password, path) = multi(rest, "redis")?;
        let master = path.trim_matches('/').to_string();
        if master.is_empty() {
            return Err(
                "the master's name is missing (redis+sentinel://host:port,.../mymaster)".into(),
            );
        }
        return Ok(Target::Sentinel {
            sentinels,
            master,
            password,
        });
    }
    url.into_connection_info().map_err(|e| e.to_string())?;
    Ok(Target::Single(url.to_string()))
}

enum Connector {
    Pool(deadpool_redis::Pool),
    Cluster(redis::cluster::ClusterClient),
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
}

impl Connector {
    fn new(url: &str, pool_size: usize) -> anyhow::Result<Self> {
        let connect = Duration::from_secs(1);
        Ok(match target(url).map_err(|e| anyhow::anyhow!("{e}"))? {
            Target::Single(url) => {
                let mut rc = deadpool_redis::Config::from_url(url);
                rc.pool = Some(deadpool_redis::PoolConfig {
                    max_size: pool_size.max(1),
                    timeouts: deadpool_redis::Timeouts {
                        wait: Some(connect),
                        create: Some(connect),
                        recycle: Some(Duration::from_millis(500)),
                    },
                    ..Default::default()
                });
                Connector::Pool(rc.create_pool(Some(deadpool_redis::Runtime::Tokio1))?)
            }
            Target::Cluster(nodes) => Connector::Cluster(
                redis::cluster::ClusterClientBuilder::new(nodes)
                    .connection_timeout(connect)
                    .response_timeout(connect)
                    .build()?,
            ),
            Target::Sentinel {
                sentinels,
                master,
                password,
            } => {
                let mut info = redis::RedisConnectionInfo::default();
                if let Some(p) = password {
                    info = info.set_password(p);
                }
                let node = redis::sentinel::SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(info);
                Connector::Sentinel(tokio::sync::Mutex::new(
                    redis::sentinel::SentinelClient::build(
                        sentinels,
                        master,
                        Some(node),
                        redis::sentinel::SentinelServerType::Master,
                    )?,
                ))
            }
        })
    }

    async fn connect(&self) -> anyhow::Result<Conn> {
        let budget = Duration::from_secs(2);
        let conn = async {
            Ok::<_, anyhow::Error>(match self {
                Connector::Pool(p) => Conn::Single((*p.get().await?).clone()),
                Connector::Cluster(c) => Conn::Cluster(c.get_async_connection().await?),
                Connector::Sentinel(s) => {
                    Conn::Single(s.lock().await.get_async_connection().await?)
                }
            })
        };
        tokio::time::timeout(budget, conn)
            .await
            .map_err(|_| anyhow::anyhow!("connect timed out after {budget:?}"))?
    }
}

/// A shared, lazily (re)connected Redis connection with a failure back-off.
pub struct Store {
    connector: Connector,
    conn: Mutex<Option<Conn>>,
    connecting: AtomicBool,
    /// Failed since it last answered (so "lost" and "back" are logged once each).
    lost: AtomicBool,
    timeout: Duration,
    retry: Duration,
    /// Redis is skipped until this instant (ms since `epoch`) after an error.
    skip_until_ms: AtomicU64,
    epoch: Instant,
    /// Who uses this handle ("cache", "tenant"): the `client` label and a log field.
    client: &'static str,
    /// What the log says runs while Redis is lost.
    degraded: &'static str,
}

/// Why a call gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Skipped: backing off after an error, or no connection yet (being made).
    Skipped,
    /// Tried: an error or past the budget.
    Failed,
}

impl Store {
    /// Starts connecting in the background at once.
    pub fn new(
        url: &str,
        pool_size: usize,
        timeout: Duration,
        retry: Duration,
        client: &'static str,
        degraded: &'static str,
    ) -> anyhow::Result<Arc<Self>> {
        let store = Arc::new(Self {
            connector: Connector::new(url, pool_size)?,
            conn: Mutex::new(None),
            connecting: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            timeout,
            retry,
            skip_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            client,
            degraded,
        });
        metrics::gauge!("router_redis_connected", "client" => client).set(0.0);
        store.connection();
        Ok(store)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether a call would be tried now (not backing off after an error).
    pub fn usable(&self) -> bool {
        self.now_ms() >= self.skip_until_ms.load(Ordering::Relaxed)
    }

    /// Whether Redis answered its last call (false while lost).
    pub fn healthy(&self) -> bool {
        !self.lost.load(Ordering::Relaxed)
    }

    /// Drops the connection, backs off, and logs "lost" once.
    pub fn failed(&self, op: &str, err: &str) {
        if self.conn.lock().unwrap().take().is_some() {
            metrics::gauge!("router_redis_connected", "client" => self.client).set(0.0);
        }
        let until = self.now_ms() + self.retry.as_millis() as u64;
        self.skip_until_ms.store(until, Ordering::Relaxed);
        if !self.lost.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                client = self.client,
                op,
                error = err,
                retry_ms = self.retry.as_millis() as u64,
                "redis lost; {} until it answers again",
                self.degraded
            );
        }
        crate::events::count(crate::events::Event::RedisError);
    }

    /// The shared connection, or None while one is being made off the request path.
    pub fn connection(self: &Arc<Self>) -> Option<Conn> {
        if let Some(c) = self.conn.lock().unwrap().as_ref() {
            return Some(c.clone());
        }
        if !self.connecting.swap(true, Ordering::AcqRel) {
            let this = self.clone();
            tokio::spawn(async move {
                match this.connector.connect().await {
                    Ok(c) => {
                        *this.conn.lock().unwrap() = Some(c);
                        metrics::gauge!("router_redis_connected", "client" => this.client).set(1.0);
                        if this.lost.swap(false, Ordering::Relaxed) {
                            tracing::info!(client = this.client, "redis back");
                        } else {
                            tracing::info!(client = this.client, "redis connected");
                        }
                    }
                    Err(e) => this.failed("connect", &e.to_string()),
                }
                this.connecting.store(false, Ordering::Release);
            });
        }
        None
    }

    /// `SET key bytes EX ttl` off the request path (a spawned task with 4x the call budget):
    /// the decision cache and the response cache write this way. `failed`
    /// runs when the write did not happen (Redis skipped or failing).
    pub fn set_later(
        self: &Arc<Self>,
        op: &'static str,
        key: String,
        bytes: Vec<u8>,
        ttl_secs: u64,
        failed: impl FnOnce(Unavailable) + Send + 'static,
    ) {
        let store = self.clone();
        tokio::spawn(async move {
            let budget = Some(store.timeout() * 4);
            let out = store
                .call(op, budget, |mut c| async move {
                    deadpool_redis::redis::AsyncCommands::set_ex::<_, _, ()>(
                        &mut c, key, bytes, ttl_secs,
                    )
                    .await
                })
                .await;
            if let Err(u) = out {
                failed(u);
            }
        });
    }

    /// Runs one call within `budget` (the handle's timeout when None). An error or a timeout
    /// marks Redis lost for the back-off time.
    pub async fn call<T, F, Fut>(
        self: &Arc<Self>,
        op: &'static str,
        budget: Option<Duration>,
        f: F,
    ) -> Result<T, Unavailable>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if !self.usable() {
            return Err(Unavailable::Skipped);
        }
        let Some(conn) = self.connection() else {
            return Err(Unavailable::Skipped);
        };
        match tokio::time::timeout(budget.unwrap_or(self.timeout), f(conn)).await {
            Err(_) => {
                self.failed(op, "timeout");
                Err(Unavailable::Failed)
            }
            Ok(Err(e)) => {
                self.failed(op, &e.to_string());
                Err(Unavailable::Failed)
            }
            Ok(Ok(v)) => {
                if self.lost.swap(false, Ordering::Relaxed) {
                    tracing::info!(client = self.client, "redis back");
                }
                Ok(v)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_each_kind_parse_and_bad_ones_say_why() {
        assert_eq!(
            target("redis://127.0.0.1:6379/2").unwrap(),
            Target::Single("redis://127.0.0.1:6379/2".into())
        );
        assert_eq!(
            target("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001").unwrap(),
            Target::Cluster(vec![
                "redis://:pw@10.0.0.1:7000".into(),
                "redis://:pw@10.0.0.2:7001".into()
            ])
        );
        assert_eq!(
            target("redis+sentinel://:pw@s1:26379,s2:26379/mymaster").unwrap(),
            Target::Sentinel {
                sentinels: vec!["redis://:pw@s1:26379".into(), "redis://:pw@s2:26379".into()],
                master: "mymaster".into(),
                password: Some("pw".into()),
            }
        );
        assert!(target("redis+sentinel://s1:26379")
            .unwrap_err()
            .contains("master"));
        assert!(target("redis+cluster://").unwrap_err().contains("no host"));
        assert!(target("http://x").is_err());
    }
}
