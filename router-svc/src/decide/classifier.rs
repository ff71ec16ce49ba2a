//! The one place router-svc calls classifier-svc: calls balanced over every configured address
//! (fewest in flight of two; an unreachable replica is skipped for a while), a deadline per call,
//! admission (an adaptive limit on calls in flight: over it a request fails open at once), a
//! circuit breaker that stops waiting on a dead classifier, and the classifier's model versions
//! (from Info, refreshed in the background) for the cache keys.
//!
//! Overload is not failure: a classifier that is *busy* (deadline missed, RESOURCE_EXHAUSTED)
//! teaches admission to send less; only a *dead* one (connection refused or reset, UNAVAILABLE)
//! feeds the breaker and takes a replica out of the rotation. State changes are logged once
//! each (breaker opened/closed, replica lost/back); per-request outcomes are only counted.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use semroute_proto::classifier::v1 as pb;
use semroute_proto::classifier::v1::classifier_client::ClassifierClient;
use tonic::transport::{Channel, Endpoint};

use super::admission::{Admission, Outcome};
use crate::config::{ms, ClassifierConfig};

/// Why a classification did not happen (the request then fails open to the default model).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClassifyError {
    #[error("no classifier configured")]
    NotConfigured,
    #[error("circuit breaker open")]
    CircuitOpen,
    #[error("over the classifier's admission limit")]
    Shed,
    /// No answer within the deadline (a slow classifier, or one unreachable without a refusal).
    #[error("deadline exceeded")]
    Timeout,
    /// The classifier answered DEADLINE_EXCEEDED: it dropped the call as too late to serve.
    #[error("deadline exceeded: dropped by the classifier")]
    Dropped,
    #[error("classifier overloaded")]
    Overloaded,
    #[error("classifier unavailable: {0}")]
    Unavailable(String),
    #[error("classifier refused the text: {0}")]
    Rejected(String),
    #[error("classifier answered without task {0:?}")]
    Incomplete(String),
}

impl ClassifyError {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            ClassifyError::NotConfigured => "not_configured",
            ClassifyError::CircuitOpen => "circuit_open",
            ClassifyError::Shed => "shed",
            ClassifyError::Timeout | ClassifyError::Dropped => "timeout",
            ClassifyError::Overloaded => "overloaded",
            ClassifyError::Unavailable(_) => "unavailable",
            ClassifyError::Rejected(_) => "rejected",
            ClassifyError::Incomplete(_) => "incomplete",
        }
    }

    /// The classifier is alive but has more than it can do in time.
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            ClassifyError::Timeout | ClassifyError::Dropped | ClassifyError::Overloaded
        )
    }
}

/// Consecutive failures open it for a cooldown; then one probe call decides.
#[derive(Debug)]
struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    failures: u32,
    open_until: Option<Instant>,
    /// When the current probe call started; a probe that never reported back (its caller was
    /// cancelled) expires after the cooldown, so the breaker cannot stay open for good.
    probe_since: Option<Instant>,
}

impl Breaker {
    fn allow(&self) -> bool {
        let mut s = self.state.lock().unwrap();
        match s.open_until {
            None => true,
            Some(t) if Instant::now() >= t => {
                let now = Instant::now();
                if s.probe_since.is_some_and(|p| now < p + self.cooldown) {
                    return false;
                }
                s.probe_since = Some(now);
                true
            }
            Some(_) => false,
        }
    }

    fn success(&self) {
        let mut s = self.state.lock().unwrap();
        if s.open_until.is_some() {
            tracing::info!("classifier circuit breaker closed");
            metrics::gauge!("router_classifier_circuit_open").set(0.0);
        }
        *s = BreakerState::default();
    }

    fn failure(&self) {
        let mut s = self.state.lock().unwrap();
        s.failures += 1;
        s.probe_since = None;
        if s.failures >= self.threshold {
            if s.open_until.is_none() {
                tracing::warn!(
                    failures = s.failures,
                    "classifier circuit breaker opened: failing open to the default model"
                );
                metrics::gauge!("router_classifier_circuit_open").set(1.0);
            }
            s.open_until = Some(Instant::now() + self.cooldown);
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Known {
    /// Tasks the classifier serves (None until Info answered once).
    tasks: Option<BTreeSet<String>>,
    /// task -> "model@revision".
    models: Vec<(String, String)>,
}

/// One classifier-svc address: its own lazy HTTP/2 channel, calls in flight, and how long it is
/// skipped after a connection failure (so a dead replica does not take every other call).
struct Replica {
    address: String,
    client: ClassifierClient<Channel>,
    in_flight: AtomicUsize,
    down_until_ms: AtomicU64,
    /// Unreachable since its last answer (so "lost" and "back" are logged once each).
    lost: AtomicBool,
}

impl Replica {
    fn up(&self, now_ms: u64) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    fn answered(&self) {
        if self.lost.swap(false, Ordering::Relaxed) {
            tracing::info!(replica = %self.address, "classifier replica answers again");
            metrics::gauge!("router_classifier_replica_up", "replica" => self.address.clone())
                .set(1.0);
        }
    }

    fn unreachable(&self, error: &ClassifyError) {
        if !self.lost.swap(true, Ordering::Relaxed) {
            tracing::warn!(replica = %self.address, %error,
                "classifier replica unreachable; skipping it until it answers again");
            metrics::gauge!("router_classifier_replica_up", "replica" => self.address.clone())
                .set(0.0);
        }
    }
}

pub struct Classifier {
    replicas: Vec<Replica>,
    timeout: Duration,
    /// How long a replica that refused a connection is skipped.
    replica_cooldown: Duration,
    breaker: Breaker,
    admission: Admission,
    known: RwLock<Known>,
    /// Bumped whenever `known` changes (what cache keys are built from).
    generation: std::sync::atomic::AtomicU64,
    epoch: Instant,
}

impl Classifier {
    /// Builds the (lazy) channels and starts the Info refresher; needs a tokio runtime.
    pub fn new(cfg: &ClassifierConfig) -> anyhow::Result<Arc<Self>> {
        let replicas = cfg
            .addresses
            .iter()
            .map(|a| {
                let channel = Endpoint::from_shared(a.clone())?
                    .connect_timeout(ms(cfg.connect_timeout_ms))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .connect_lazy();
                Ok(Replica {
                    address: a.clone(),
                    client: ClassifierClient::new(channel),
                    in_flight: AtomicUsize::new(0),
                    down_until_ms: AtomicU64::new(0),
                    lost: AtomicBool::new(false),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let this = Arc::new(Self {
            replicas,
            timeout: ms(cfg.timeout_ms),
            replica_cooldown: ms(cfg.breaker_cooldown_ms),
            breaker: Breaker {
                threshold: cfg.breaker_failures.max(1),
                cooldown: ms(cfg.breaker_cooldown_ms),
                state: Mutex::default(),
            },
            admission: Admission::new(
                &cfg.admission,
                ms(match cfg.admission.slow_ms {
                    0 => (cfg.timeout_ms * 3 / 4).max(1),
                    v => v,
                }),
            ),
            known: RwLock::default(),
            generation: Default::default(),
            epoch: Instant::now(),
        });
        if this.configured() {
            tokio::spawn(refresh_info(Arc::downgrade(&this), ms(cfg.info_refresh_ms)));
        }
        Ok(this)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Power of two choices by calls in flight among replicas that are up and not `except`;
    /// if none is up, any but `except` (better tried than refused).
    fn pick(&self, except: Option<usize>) -> Option<usize> {
        let now = self.now_ms();
        crate::balance::pick(
            self.replicas.len(),
            |i| Some(i) == except,
            |i| self.replicas[i].up(now),
            |i| self.replicas[i].in_flight.load(Ordering::Relaxed),
        )
    }

    pub fn configured(&self) -> bool {
        !self.replicas.is_empty()
    }

    /// The tasks to ask for out of `wanted`: those the classifier serves (all of them until it
    /// has told us). Empty means nothing to classify.
    pub fn tasks_for(&self, wanted: &[&str]) -> Vec<String> {
        let known = self.known.read().unwrap();
        wanted
            .iter()
            .filter(|t| known.tasks.as_ref().is_none_or(|set| set.contains(**t)))
            .map(|t| t.to_string())
            .collect()
    }

    fn bump(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// Changes whenever the tasks or model versions the classifier reported change: what is
    /// derived from them (`tasks_for`, `version`) may be kept until then.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// "task=model@revision,..." of the given tasks: part of the cache key. None until the
    /// classifier has told us every task's version (then nothing is cached: a key without the
    /// version could serve another model's decisions).
    pub fn version(&self, tasks: &[String]) -> Option<String> {
        let known = self.known.read().unwrap();
        let mut v: Vec<String> = known
            .models
            .iter()
            .filter(|(t, _)| tasks.contains(t))
            .map(|(t, m)| format!("{t}={m}"))
            .collect();
        v.sort();
        (v.len() == tasks.len()).then(|| v.join(","))
    }

    /// One Classify call for every task, within the deadline, through the breaker. A replica
    /// that refuses the connection is skipped for a while and the call goes to another one.
    pub async fn classify(
        &self,
        text: &str,
        tasks: &[String],
        with_embedding: bool,
    ) -> Result<pb::TextResult, ClassifyError> {
        let mut out = self
            .classify_texts(vec![text.to_string()], tasks, with_embedding)
            .await?;
        Ok(out.pop().unwrap_or_default())
    }

    /// `classify` for several texts in one call (one result per text, in order).
    pub async fn classify_texts(
        &self,
        texts: Vec<String>,
        tasks: &[String],
        with_embedding: bool,
    ) -> Result<Vec<pb::TextResult>, ClassifyError> {
        if !self.configured() {
            return Err(ClassifyError::NotConfigured);
        }
        // Admission first: a shed call never takes the breaker's one probe.
        let Some(ticket) = self.admission.try_acquire() else {
            metrics::counter!("router_classifier_errors_total", "reason" => "shed").increment(1);
            return Err(ClassifyError::Shed);
        };
        if !self.breaker.allow() {
            return Err(ClassifyError::CircuitOpen);
        }
        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut tried = None;
        let result = loop {
            let Some(i) = self.pick(tried) else {
                break Err(ClassifyError::Unavailable("no classifier replica".into()));
            };
            let replica = &self.replicas[i];
            let left = deadline.saturating_duration_since(Instant::now());
            let out = self
                .call(replica, texts.clone(), tasks, with_embedding, left)
                .await;
            match out {
                // Dead: skip this replica for a while and try another one.
                Err(e @ ClassifyError::Unavailable(_)) => {
                    replica.down_until_ms.store(
                        self.now_ms() + self.replica_cooldown.as_millis() as u64,
                        Ordering::Relaxed,
                    );
                    replica.unreachable(&e);
                    if tried.is_none() && self.replicas.len() > 1 && Instant::now() < deadline {
                        tried = Some(i);
                        continue;
                    }
                    break Err(e);
                }
                // Busy (late, overloaded) or the text's fault: it is alive.
                Err(e) => {
                    if !matches!(e, ClassifyError::Timeout) {
                        replica.answered();
                    }
                    break Err(e);
                }
                Ok(r) => {
                    replica.answered();
                    break Ok(r);
                }
            }
        };
        metrics::histogram!("router_classify_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        let result = result.and_then(|rs| {
            let missing = rs.iter().find_map(|r| {
                tasks
                    .iter()
                    .find(|t| !r.results.iter().any(|x| x.task == **t))
            });
            match missing.or(tasks.first().filter(|_| rs.len() != texts.len())) {
                // Info said it serves the task but the answer lacks it (the server changed): fail
                // open without caching; the next Info refresh fixes the task list.
                Some(t) => Err(ClassifyError::Incomplete(t.clone())),
                None => Ok(rs),
            }
        });
        match &result {
            Ok(results) => {
                ticket.finish(Outcome::Answered);
                self.breaker.success();
                if let Some(first) = results.first() {
                    self.note_versions(&first.results);
                }
            }
            Err(ClassifyError::Incomplete(_)) => {
                ticket.finish(Outcome::Answered);
                metrics::counter!("router_classifier_errors_total", "reason" => "incomplete")
                    .increment(1);
                self.breaker.success();
            }
            // The text's fault, not the classifier's.
            Err(ClassifyError::Rejected(_)) => {
                ticket.finish(Outcome::Ignored);
                self.breaker.success();
            }
            Err(e) if e.is_busy() => {
                ticket.finish(Outcome::Busy);
                metrics::counter!("router_classifier_errors_total", "reason" => e.reason())
                    .increment(1);
                // RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED from the server are answers: the
                // classifier is up. A deadline that passed with no answer says nothing either
                // way (a black-holed address also times out).
                if !matches!(e, ClassifyError::Timeout) {
                    self.breaker.success();
                }
            }
            Err(e) => {
                ticket.finish(Outcome::Ignored);
                metrics::counter!("router_classifier_errors_total", "reason" => e.reason())
                    .increment(1);
                self.breaker.failure();
            }
        }
        result
    }

    async fn call(
        &self,
        replica: &Replica,
        texts: Vec<String>,
        tasks: &[String],
        with_embedding: bool,
        budget: Duration,
    ) -> Result<Vec<pb::TextResult>, ClassifyError> {
        let mut req = tonic::Request::new(pb::ClassifyRequest {
            texts,
            tasks: tasks.to_vec(),
            truncation: pb::Truncation::Truncate as i32,
            include_embedding: with_embedding,
            ..Default::default()
        });
        req.set_timeout(budget);
        // The trace goes on to classifier-svc (W3C traceparent in the gRPC metadata).
        if let Some(tp) =
            crate::telemetry::traceparent(&tracing::Span::current()).and_then(|t| t.parse().ok())
        {
            req.metadata_mut().insert("traceparent", tp);
        }
        struct InFlight<'a>(&'a AtomicUsize);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        replica.in_flight.fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight(&replica.in_flight);
        let out = tokio::time::timeout(budget, replica.client.clone().classify(req)).await;
        match out {
            Err(_) => Err(ClassifyError::Timeout),
            Ok(Err(status)) => Err(match status.code() {
                tonic::Code::DeadlineExceeded => ClassifyError::Dropped,
                tonic::Code::Cancelled => ClassifyError::Timeout,
                tonic::Code::ResourceExhausted => ClassifyError::Overloaded,
                tonic::Code::InvalidArgument => {
                    ClassifyError::Rejected(status.message().to_string())
                }
                _ => {
                    ClassifyError::Unavailable(format!("{:?}: {}", status.code(), status.message()))
                }
            }),
            Ok(Ok(resp)) => Ok(resp.into_inner().results),
        }
    }

    /// Pooled embeddings of `texts` from the default encoder (Embed RPC), for similarity routes.
    /// Off the request path: a generous deadline, no breaker.
    pub async fn embed(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
        let i = self
            .pick(None)
            .ok_or_else(|| anyhow::anyhow!("no classifier configured"))?;
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(32) {
            let mut req = tonic::Request::new(pb::EmbedRequest {
                texts: chunk.to_vec(),
                model: String::new(),
                truncation: pb::Truncation::Truncate as i32,
            });
            req.set_timeout(Duration::from_secs(10));
            let resp = tokio::time::timeout(
                Duration::from_secs(10),
                self.replicas[i].client.clone().embed(req),
            )
            .await
            .map_err(|_| anyhow::anyhow!("Embed timed out"))?
            .map_err(|s| anyhow::anyhow!("Embed: {:?}: {}", s.code(), s.message()))?;
            out.extend(resp.into_inner().embeddings.into_iter().map(|e| e.values));
        }
        anyhow::ensure!(
            out.len() == texts.len(),
            "Embed answered {} of {} texts",
            out.len(),
            texts.len()
        );
        Ok(out)
    }

    /// A response naming another model version than Info did (a model was swapped): adopt it,
    /// so later cache keys carry the new version at once.
    fn note_versions(&self, results: &[pb::TaskResult]) {
        let changed = {
            let known = self.known.read().unwrap();
            results.iter().any(|r| {
                !known
                    .models
                    .iter()
                    .any(|(t, m)| *t == r.task && *m == r.model)
            })
        };
        if changed {
            let mut known = self.known.write().unwrap();
            for r in results {
                known.models.retain(|(t, _)| *t != r.task);
                known.models.push((r.task.clone(), r.model.clone()));
            }
            self.bump();
        }
    }

    async fn info(&self) -> anyhow::Result<()> {
        let Some(i) = self.pick(None) else {
            return Ok(());
        };
        let client = self.replicas[i].client.clone();
        let mut req = tonic::Request::new(pb::InfoRequest {});
        req.set_timeout(Duration::from_secs(2));
        let resp = tokio::time::timeout(Duration::from_secs(2), client.clone().info(req))
            .await??
            .into_inner();
        let versions: Vec<(String, String)> = resp
            .tasks
            .iter()
            .map(|t| {
                // TaskInfo.model is "id@revision" (as in every TaskResult); older servers may
                // name the id only.
                let versioned = match resp.models.iter().find(|m| m.id == t.model) {
                    Some(m) if !t.model.contains('@') => format!("{}@{}", m.id, m.revision),
                    _ => t.model.clone(),
                };
                (t.name.clone(), versioned)
            })
            .collect();
        let tasks: BTreeSet<String> = resp.tasks.into_iter().map(|t| t.name).collect();
        if tasks.is_empty() {
            // A classifier still loading (a restart) serves no task yet: what was known stays,
            // so requests keep asking for their tasks (and the fast tier stands in for the
            // refusals) instead of finding nothing to classify.
            return Ok(());
        }
        let mut known = self.known.write().unwrap();
        if known.tasks.as_ref() != Some(&tasks) {
            tracing::info!(tasks = ?tasks, "classifier tasks");
        }
        if known.tasks.as_ref() != Some(&tasks) || known.models != versions {
            known.tasks = Some(tasks);
            known.models = versions;
            self.bump();
        }
        Ok(())
    }
}

/// Asks Info at start (every second until it answers) and then every `every`; stops when the
/// classifier client is dropped (config reload to other addresses).
async fn refresh_info(this: Weak<Classifier>, every: Duration) {
    let mut answered = false;
    loop {
        let Some(c) = this.upgrade() else { return };
        match c.info().await {
            // A classifier still loading its models serves no task yet: ask again soon.
            Ok(()) => {
                answered = c
                    .known
                    .read()
                    .unwrap()
                    .tasks
                    .as_ref()
                    .is_some_and(|t| !t.is_empty())
            }
            Err(e) => tracing::debug!(error = %e, "classifier Info failed"),
        }
        drop(c);
        tokio::time::sleep(if answered {
            every
        } else {
            Duration::from_secs(1)
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker {
            threshold: 2,
            cooldown: Duration::from_millis(30),
            state: Mutex::default(),
        }
    }

    #[test]
    fn breaker_opens_after_threshold_then_probes_once() {
        let b = breaker();
        assert!(b.allow());
        b.failure();
        assert!(b.allow(), "one failure keeps it closed");
        b.failure();
        assert!(!b.allow(), "open after two");
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow(), "one probe after the cooldown");
        assert!(!b.allow(), "only one probe at a time");
        b.failure();
        assert!(!b.allow(), "failed probe reopens");
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow());
        b.success();
        assert!(b.allow() && b.allow(), "closed after a good probe");
    }

    #[test]
    fn a_probe_that_never_reports_back_expires() {
        let b = breaker();
        b.failure();
        b.failure();
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow(), "probe let through");
        // ...and its caller was cancelled: no success(), no failure().
        assert!(!b.allow());
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow(), "a new probe after the old one expired");
    }

    #[tokio::test]
    async fn dead_address_fails_fast_and_opens_breaker() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = ClassifierConfig {
            addresses: vec![format!("http://127.0.0.1:{port}")],
            breaker_failures: 2,
            ..Default::default()
        };
        let c = Classifier::new(&cfg).unwrap();
        let tasks = vec!["domain".to_string()];
        for _ in 0..2 {
            let e = c.classify("hi", &tasks, false).await.unwrap_err();
            assert!(
                matches!(e, ClassifyError::Unavailable(_) | ClassifyError::Timeout),
                "{e:?}"
            );
        }
        let t = Instant::now();
        assert!(matches!(
            c.classify("hi", &tasks, false).await,
            Err(ClassifyError::CircuitOpen)
        ));
        assert!(t.elapsed() < Duration::from_millis(5));
    }
}
