//! The gRPC face: Classify, ClassifyStream, Embed, Info, on top of `batch`. Also the one place
//! where `Error` becomes a gRPC status, and where task health is reported.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::Stream;
use semroute_proto::classifier::v1 as pb;
use semroute_proto::classifier::v1::classifier_server::Classifier;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::batch::{Admission, Batcher, Output};
use crate::cascade::{FastRun, FastTier, Reason};
use crate::config::Limits;
use crate::error::Error;
use crate::metrics as m;
use semroute_encoder::{spans, Encoded, Model, Truncation};

/// gRPC service name used in health checks for the whole server.
pub const SERVICE_NAME: &str = "semroute.classifier.v1.Classifier";

/// One text's trip through one model.
struct TextRun {
    num_tokens: u32,
    truncated: bool,
    tokenization: Duration,
    output: Output,
    /// Token byte offsets and word starts, for models with token heads (else empty).
    offsets: Vec<(usize, usize)>,
    word_starts: Vec<bool>,
    /// Probabilities of the text's windows (`[window][task][label]`), when a windowed head
    /// (the guard) was asked for and the text is longer than one window.
    windows: Vec<Vec<Vec<f32>>>,
}

/// Loaded models and the task -> (model, head) index. Replaced whole when a model is added.
#[derive(Default)]
struct Registry {
    models: Vec<Batcher>,
    /// task name -> (model index, head index)
    tasks: BTreeMap<String, (usize, usize)>,
}

struct Inner {
    registry: RwLock<Arc<Registry>>,
    /// Every planned model is loaded.
    ready: std::sync::atomic::AtomicBool,
    admission: Admission,
    limits: Limits,
    health: HealthReporter,
    /// The cascade's fast tier, when one is loaded.
    fast: RwLock<Option<Arc<FastTier>>>,
}

#[derive(Clone)]
pub struct ClassifierService {
    inner: Arc<Inner>,
}

impl ClassifierService {
    pub fn new(limits: Limits, health: HealthReporter) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry: RwLock::new(Arc::new(Registry::default())),
                ready: std::sync::atomic::AtomicBool::new(false),
                admission: Admission::new(limits.max_concurrent),
                limits,
                health,
                fast: RwLock::new(None),
            }),
        }
    }

    /// Loads the cascade's fast tier (or takes it away with None).
    pub fn set_fast_tier(&self, fast: Option<FastTier>) {
        *self.inner.fast.write().expect("fast tier lock") = fast.map(Arc::new);
    }

    pub fn fast_tier(&self) -> Option<Arc<FastTier>> {
        self.inner.fast.read().expect("fast tier lock").clone()
    }

    /// Marks the server and these tasks NOT_SERVING until their models are added.
    pub async fn expect_tasks(&self, tasks: &[String]) {
        let h = &self.inner.health;
        h.set_service_status("", ServingStatus::NotServing).await;
        h.set_service_status(SERVICE_NAME, ServingStatus::NotServing)
            .await;
        for t in tasks {
            h.set_service_status(t, ServingStatus::NotServing).await;
        }
    }

    /// Starts a model's batcher and makes its tasks SERVING.
    pub async fn add_model(&self, model: Model, batch: crate::batch::BatchConfig) {
        let tasks: Vec<String> = model.tasks.iter().map(|t| t.name.clone()).collect();
        metrics::gauge!(m::MODEL_LOADED, "model" => model.meta.id.clone()).set(1.0);
        let batcher = Batcher::spawn(Arc::new(model), batch);
        {
            let mut guard = self.inner.registry.write().expect("registry lock");
            let mut next = Registry {
                models: guard.models.clone(),
                tasks: guard.tasks.clone(),
            };
            let idx = next.models.len();
            for (h, t) in tasks.iter().enumerate() {
                next.tasks.insert(t.clone(), (idx, h));
            }
            next.models.push(batcher);
            *guard = Arc::new(next);
        }
        for t in &tasks {
            self.inner
                .health
                .set_service_status(t, ServingStatus::Serving)
                .await;
        }
    }

    /// Every planned model is loaded: the server as a whole is SERVING.
    pub async fn mark_ready(&self) {
        let h = &self.inner.health;
        h.set_service_status("", ServingStatus::Serving).await;
        h.set_service_status(SERVICE_NAME, ServingStatus::Serving)
            .await;
        self.inner
            .ready
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// True once `mark_ready` ran: what /healthz reports.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn model_ids(&self) -> Vec<String> {
        self.registry()
            .models
            .iter()
            .map(|b| b.model().meta.versioned_id())
            .collect()
    }

    fn registry(&self) -> Arc<Registry> {
        self.inner.registry.read().expect("registry lock").clone()
    }

    fn validate_texts(&self, texts: &[String]) -> Result<(), Error> {
        let l = &self.inner.limits;
        if texts.is_empty() {
            return Err(Error::InvalidArgument(
                "texts is empty: send at least one text".into(),
            ));
        }
        if texts.len() > l.max_client_batch {
            return Err(Error::InvalidArgument(format!(
                "{} texts in one call; the limit is {} (split the call)",
                texts.len(),
                l.max_client_batch
            )));
        }
        for (i, t) in texts.iter().enumerate() {
            if t.trim().is_empty() {
                return Err(Error::InvalidArgument(format!("texts[{i}] is empty")));
            }
            if t.len() > l.max_text_bytes {
                return Err(Error::InvalidArgument(format!(
                    "texts[{i}] is {} bytes; the limit is {}",
                    t.len(),
                    l.max_text_bytes
                )));
            }
        }
        Ok(())
    }

    /// Tokenizes every text for `batcher`'s model and queues it; waits for all answers.
    /// `token_tasks`: the caller asked for a token task of this model (then texts are tokenized
    /// with offsets and carry spelling features; without them the token heads are not run).
    async fn run_texts(
        batcher: &Batcher,
        texts: Arc<Vec<String>>,
        truncation: Truncation,
        deadline: Option<Instant>,
        token_tasks: bool,
        windowed: bool,
    ) -> Result<Vec<TextRun>, Error> {
        let model = batcher.model().clone();
        let model_id = model.meta.id.clone();
        let labels = [("model", model.meta.id.clone())];
        let big = texts.iter().map(|t| t.len()).sum::<usize>() > 16 * 1024;
        // Token heads read the text through each token's offsets (and its spelling).
        let with_offsets = token_tasks && model.has_token_heads();
        type Tokenized = (Encoded, Vec<f32>, Vec<Vec<u32>>, Duration);
        let tokenize = move || -> Result<Vec<Tokenized>, Error> {
            texts
                .iter()
                .map(|t| {
                    let start = Instant::now();
                    let (e, shape) = if with_offsets {
                        let e = model.tokenize_with_offsets(t, truncation)?;
                        let shape = spans::shape_features(t, &e.offsets);
                        (e, shape)
                    } else {
                        (model.tokenize(t, truncation)?, Vec::new())
                    };
                    let windows = if windowed {
                        model.windows(t)?
                    } else {
                        Vec::new()
                    };
                    Ok((e, shape, windows, start.elapsed()))
                })
                .collect()
        };
        // Long inputs are tokenized on the blocking pool so they never stall the async workers.
        let encoded = if big {
            tokio::task::spawn_blocking(tokenize)
                .await
                .map_err(|e| Error::Internal(format!("tokenizer task: {e}")))??
        } else {
            tokenize()?
        };
        let mut waits = Vec::with_capacity(encoded.len());
        let mut runs = Vec::with_capacity(encoded.len());
        // Windows ride the same batches as whole texts; each answer knows its text.
        let mut window_waits = Vec::new();
        for (text, (e, shape, windows, took)) in encoded.into_iter().enumerate() {
            for w in windows {
                window_waits.push((text, batcher.submit(w, Vec::new(), deadline)));
            }
            metrics::histogram!(m::TOKENIZATION_SECONDS, &labels).record(took.as_secs_f64());
            if e.truncated {
                metrics::counter!(m::TRUNCATED, &labels).increment(1);
            }
            runs.push((
                e.ids.len() as u32,
                e.truncated,
                took,
                e.offsets,
                e.word_starts,
            ));
            waits.push(batcher.submit(e.ids, shape, deadline));
        }
        let (owners, window_rx): (Vec<usize>, Vec<_>) = window_waits.into_iter().unzip();
        let all = futures::future::join(
            futures::future::join_all(waits),
            futures::future::join_all(window_rx),
        );
        let (outputs, window_outputs) = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), all)
                .await
                .map_err(|_| Error::DeadlineExceeded(Duration::ZERO))?,
            None => all.await,
        };
        let mut windows: Vec<Vec<Vec<Vec<f32>>>> = vec![Vec::new(); runs.len()];
        for (text, out) in owners.into_iter().zip(window_outputs) {
            let out = out.map_err(|_| Error::Internal("batcher dropped the request".into()))??;
            windows[text].push(out.probs);
        }
        runs.into_iter()
            .zip(outputs)
            .zip(windows)
            .map(
                |(((num_tokens, truncated, tokenization, offsets, word_starts), out), windows)| {
                    let output =
                        out.map_err(|_| Error::Internal("batcher dropped the request".into()))??;
                    crate::trace::batch_spans(&model_id, num_tokens, &output);
                    Ok(TextRun {
                        num_tokens,
                        truncated,
                        tokenization,
                        output,
                        offsets,
                        word_starts,
                        windows,
                    })
                },
            )
            .collect()
    }

    /// Classify, shared by the unary and the streaming call.
    pub async fn classify_request(
        &self,
        req: pb::ClassifyRequest,
        deadline: Option<Instant>,
    ) -> Result<pb::ClassifyResponse, Error> {
        let start = Instant::now();
        let reg = self.registry();
        if reg.models.is_empty() {
            return Err(Error::Unavailable("models are still loading".into()));
        }
        self.validate_texts(&req.texts)?;
        let truncation = truncation(req.truncation)?;
        // Resolve tasks, grouped by the model that serves them.
        let mut wanted: BTreeMap<usize, Vec<(String, usize)>> = BTreeMap::new();
        if req.tasks.is_empty() {
            if reg.tasks.is_empty() {
                return Err(Error::Unavailable(
                    "no classification task is loaded (only Embed is available)".into(),
                ));
            }
            for (name, &(mi, hi)) in &reg.tasks {
                wanted.entry(mi).or_default().push((name.clone(), hi));
            }
        } else {
            for name in &req.tasks {
                let &(mi, hi) = reg.tasks.get(name).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "unknown task {name:?}; loaded tasks: {}",
                        reg.tasks.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))
                })?;
                let entry = wanted.entry(mi).or_default();
                if !entry.iter().any(|(n, _)| n == name) {
                    entry.push((name.clone(), hi));
                }
            }
        }
        if req.include_embedding {
            // The default encoder's embedding: free when it serves a task, one more pass if not.
            wanted.entry(0).or_default();
        }
        let n = req.texts.len();
        let include_embedding = req.include_embedding;
        let tier = pb::Tier::try_from(req.tier)
            .map_err(|_| Error::InvalidArgument(format!("unknown tier value {}", req.tier)))?;
        let texts = Arc::new(req.texts);
        // The fast tier stands in only for requests it can answer whole: every asked task is
        // one of its sentence heads, and no encoder embedding is asked for.
        let names: Vec<String> = wanted.values().flatten().map(|(n, _)| n.clone()).collect();
        let loaded = self.fast_tier();
        let fast = loaded.clone().filter(|f| {
            tier != pb::Tier::Encoder
                && !include_embedding
                && !names.is_empty()
                && names.iter().all(|t| f.head(t).is_some())
        });
        if tier == pb::Tier::Fast && fast.is_none() {
            return Err(Error::InvalidArgument(match &loaded {
                None => "tier FAST: no fast tier is loaded".into(),
                Some(_) => format!(
                    "tier FAST: the fast tier does not serve every asked task ({}) or an \
                     embedding was asked for",
                    names.join(", ")
                ),
            }));
        }
        let fast_runs = match &fast {
            Some(f) => {
                let runs = crate::cascade::run(f, texts.clone(), truncation).await?;
                for r in &runs {
                    metrics::histogram!(m::FAST_SECONDS).record(r.took.as_secs_f64());
                }
                runs
            }
            None => Vec::new(),
        };
        // Per text: the encoder, or the fast tier and why.
        let mut reasons: Vec<Reason> = match &fast {
            Some(_) if tier == pb::Tier::Fast => vec![Reason::Requested; n],
            Some(f) => fast_runs
                .iter()
                .map(|r| {
                    let sure = names.iter().all(|t| {
                        let (hi, th) = (f.head(t), f.threshold(t));
                        match (hi, th) {
                            (Some(hi), Some(th)) => top(&r.probs[hi]).1 >= th,
                            _ => false,
                        }
                    });
                    if sure {
                        Reason::Confident
                    } else {
                        Reason::Encoder
                    }
                })
                .collect(),
            None => vec![Reason::Encoder; n],
        };
        let need: Vec<usize> = (0..n).filter(|&i| reasons[i] == Reason::Encoder).collect();
        let mut results: Vec<pb::TextResult> = (0..n).map(|_| pb::TextResult::default()).collect();
        if !need.is_empty() {
            let sub = if need.len() == n {
                texts.clone()
            } else {
                Arc::new(need.iter().map(|&i| texts[i].clone()).collect())
            };
            // With the fast tier to fall back on, the encoder gets the deadline less a margin
            // for the fast answer to reach the caller in time.
            let by = match (&fast, deadline) {
                (Some(_), Some(d)) => {
                    let left = d.saturating_duration_since(Instant::now());
                    Some(d - (left / 5).min(Duration::from_millis(5)))
                }
                _ => deadline,
            };
            let encoded = self
                .encoder_results(&reg, &wanted, sub, truncation, by, include_embedding)
                .await;
            match encoded {
                Ok(rs) => {
                    for (&i, r) in need.iter().zip(rs) {
                        results[i] = r;
                    }
                }
                Err(e) if fast.is_some() && matches!(e, Error::Overloaded { .. }) => {
                    need.iter().for_each(|&i| reasons[i] = Reason::Shed);
                }
                Err(e) if fast.is_some() && matches!(e, Error::DeadlineExceeded(_)) => {
                    need.iter().for_each(|&i| reasons[i] = Reason::Deadline);
                }
                Err(e) => return Err(e),
            }
        }
        for (i, reason) in reasons.iter().enumerate() {
            let tier_name = if *reason == Reason::Encoder {
                "encoder"
            } else {
                "fast"
            };
            metrics::counter!(m::ANSWERS, "tier" => tier_name, "reason" => reason.as_str())
                .increment(1);
            if let (Some(f), false) = (&fast, *reason == Reason::Encoder) {
                results[i] = fast_result(f, &names, &fast_runs[i], *reason);
            }
        }
        Ok(pb::ClassifyResponse {
            results,
            total_us: start.elapsed().as_micros() as u64,
        })
    }

    /// The encoder's answers for `texts` (admission, batches, heads): every asked task of every
    /// text, tier ENCODER.
    async fn encoder_results(
        &self,
        reg: &Registry,
        wanted: &BTreeMap<usize, Vec<(String, usize)>>,
        texts: Arc<Vec<String>>,
        truncation: Truncation,
        deadline: Option<Instant>,
        include_embedding: bool,
    ) -> Result<Vec<pb::TextResult>, Error> {
        let _permit = self
            .inner
            .admission
            .try_admit(texts.len() * wanted.len())
            .inspect_err(|_| metrics::counter!(m::REJECTED).increment(1))?;
        let runs = wanted.iter().map(|(&mi, heads)| {
            let batcher = &reg.models[mi];
            let token_tasks = heads
                .iter()
                .any(|(_, hi)| batcher.model().tasks[*hi].is_token());
            let windowed = heads
                .iter()
                .any(|(_, hi)| batcher.model().tasks[*hi].window.is_some());
            Self::run_texts(
                batcher,
                texts.clone(),
                truncation,
                deadline,
                token_tasks,
                windowed,
            )
        });
        let per_model = futures::future::try_join_all(runs).await?;

        let mut results: Vec<pb::TextResult> = (0..texts.len())
            .map(|_| pb::TextResult::default())
            .collect();
        for ((mi, heads), outs) in wanted.iter().zip(per_model) {
            let model = reg.models[*mi].model();
            let version = model.meta.versioned_id();
            for ((text_result, run), text) in results.iter_mut().zip(outs).zip(texts.iter()) {
                let out = &run.output;
                if include_embedding && *mi == 0 {
                    text_result.embedding = out.embedding.clone();
                }
                text_result.num_tokens = text_result.num_tokens.max(run.num_tokens);
                text_result.truncated |= run.truncated;
                text_result.timings.push(pb::Timings {
                    queue_us: out.queue.as_micros() as u64,
                    tokenization_us: run.tokenization.as_micros() as u64,
                    inference_us: out.inference.as_micros() as u64,
                    batch_size: out.batch_size as u32,
                    batch_tokens: out.batch_tokens as u32,
                });
                for (name, hi) in heads {
                    let labels = &model.tasks[*hi].labels;
                    if model.tasks[*hi].is_token() {
                        let (result, entities) =
                            token_task(name, labels, text, &run, &out.tokens[*hi], &version);
                        text_result.results.push(result);
                        text_result.entities.extend(entities);
                        continue;
                    }
                    let mut windowed = None;
                    if let (Some(w), false) = (model.tasks[*hi].window, run.windows.is_empty()) {
                        let mut p = out.probs[*hi].clone();
                        semroute_encoder::heads::pick_window(
                            &mut p,
                            run.windows
                                .iter()
                                .filter_map(|x| x.get(*hi))
                                .map(Vec::as_slice),
                            w.positive,
                        );
                        windowed = Some(p);
                    }
                    let probs = windowed.as_ref().unwrap_or(&out.probs[*hi]);
                    text_result.results.push(task_result(
                        name,
                        labels,
                        probs,
                        &version,
                        Reason::Encoder,
                    ));
                }
            }
        }
        Ok(results)
    }

    async fn embed_request(
        &self,
        req: pb::EmbedRequest,
        deadline: Option<Instant>,
    ) -> Result<pb::EmbedResponse, Error> {
        let reg = self.registry();
        if reg.models.is_empty() {
            return Err(Error::Unavailable("models are still loading".into()));
        }
        self.validate_texts(&req.texts)?;
        let truncation = truncation(req.truncation)?;
        let batcher = if req.model.is_empty() {
            &reg.models[0]
        } else {
            reg.models
                .iter()
                .find(|b| {
                    b.model().meta.id == req.model || b.model().meta.versioned_id() == req.model
                })
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "unknown model {:?}; loaded: {}",
                        req.model,
                        reg.models
                            .iter()
                            .map(|b| b.model().meta.id.clone())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?
        };
        let _permit = self
            .inner
            .admission
            .try_admit(req.texts.len())
            .inspect_err(|_| metrics::counter!(m::REJECTED).increment(1))?;
        let meta = batcher.model().meta.clone();
        let outs = Self::run_texts(
            batcher,
            Arc::new(req.texts),
            truncation,
            deadline,
            false,
            false,
        )
        .await?;
        Ok(pb::EmbedResponse {
            embeddings: outs
                .into_iter()
                .map(|run| pb::Embedding {
                    values: run.output.embedding,
                    num_tokens: run.num_tokens,
                    truncated: run.truncated,
                })
                .collect(),
            model: meta.versioned_id(),
            dimensions: meta.hidden_size as u32,
        })
    }

    pub fn info(&self) -> pb::InfoResponse {
        let reg = self.registry();
        let l = &self.inner.limits;
        let mut tasks = Vec::new();
        let models = reg
            .models
            .iter()
            .map(|b| {
                let model = b.model();
                let meta = &model.meta;
                for t in &model.tasks {
                    tasks.push(pb::TaskInfo {
                        name: t.name.clone(),
                        labels: t.labels.clone(),
                        model: meta.versioned_id(),
                        kind: t.kind().into(),
                    });
                }
                pb::ModelInfo {
                    id: meta.id.clone(),
                    revision: meta.revision.clone(),
                    architecture: meta.arch.as_str().into(),
                    hidden_size: meta.hidden_size as u32,
                    max_length: meta.max_length as u32,
                    device: meta.device.clone(),
                    dtype: meta.dtype.clone(),
                    tasks: model.tasks.iter().map(|t| t.name.clone()).collect(),
                    pooling: meta.pooling.as_str().into(),
                }
            })
            .collect();
        pb::InfoResponse {
            models,
            tasks,
            limits: Some(pb::Limits {
                max_client_batch: l.max_client_batch as u32,
                max_concurrent_requests: l.max_concurrent as u32,
                max_batch_size: l.batch.max_batch_size as u32,
                max_batch_tokens: l.batch.max_batch_tokens as u32,
                max_text_bytes: l.max_text_bytes as u32,
                max_wait_us: l.batch.max_wait.as_micros() as u64,
            }),
            server_version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// A token task's answer for one text: its entities (the head's, decoded, with validated
/// patterns added and winning overlaps) and a sentence-level result: label `found` when there
/// is any entity (probability: the highest entity score), else `none` (probability: the lowest
/// per-word probability of `O`).
fn token_task(
    name: &str,
    labels: &[String],
    text: &str,
    run: &TextRun,
    probs: &[Vec<f32>],
    version: &str,
) -> (pb::TaskResult, Vec<pb::Entity>) {
    let found = spans::decode(&run.offsets, &run.word_starts, probs, labels);
    let entities: Vec<pb::Entity> = spans::with_patterns(text, found)
        .into_iter()
        .map(|(e, pattern)| pb::Entity {
            task: name.to_string(),
            entity_type: e.kind,
            start: e.start as u32,
            end: e.end as u32,
            score: e.score,
            source: if pattern { "pattern" } else { "model" }.into(),
        })
        .collect();
    let (label, probability) = if entities.is_empty() {
        let p_o = probs
            .iter()
            .zip(&run.word_starts)
            .filter(|(_, w)| **w)
            .map(|(p, _)| p.first().copied().unwrap_or(1.0))
            .fold(1.0f32, f32::min);
        ("none", p_o)
    } else {
        (
            "found",
            entities.iter().map(|e| e.score).fold(0.0, f32::max),
        )
    };
    let result = pb::TaskResult {
        task: name.to_string(),
        label: label.into(),
        probability,
        scores: Vec::new(),
        model: version.to_string(),
        tier: pb::Tier::Encoder as i32,
        tier_reason: String::new(),
    };
    (result, entities)
}

/// The top label's index and probability.
fn top(probs: &[f32]) -> (usize, f32) {
    probs
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, p)| (i, *p))
        .unwrap_or((0, 0.0))
}

/// One sentence task's answer from `probs`, said to come from the tier that `reason` names.
fn task_result(
    name: &str,
    labels: &[String],
    probs: &[f32],
    version: &str,
    reason: Reason,
) -> pb::TaskResult {
    let (i, p) = top(probs);
    pb::TaskResult {
        task: name.to_string(),
        label: labels.get(i).cloned().unwrap_or_default(),
        probability: p,
        scores: labels
            .iter()
            .zip(probs)
            .map(|(l, p)| pb::LabelScore {
                label: l.clone(),
                probability: *p,
            })
            .collect(),
        model: version.to_string(),
        tier: if reason == Reason::Encoder {
            pb::Tier::Encoder
        } else {
            pb::Tier::Fast
        } as i32,
        tier_reason: reason.as_str().into(),
    }
}

/// A text's answer from the fast tier, every asked task.
fn fast_result(f: &FastTier, names: &[String], run: &FastRun, reason: Reason) -> pb::TextResult {
    let version = f.version();
    pb::TextResult {
        results: names
            .iter()
            .filter_map(|t| {
                let hi = f.head(t)?;
                let labels = &f.model.tasks[hi].labels;
                Some(task_result(t, labels, &run.probs[hi], &version, reason))
            })
            .collect(),
        num_tokens: run.num_tokens,
        truncated: run.truncated,
        timings: vec![pb::Timings {
            tokenization_us: run.took.as_micros() as u64,
            batch_size: 1,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn truncation(v: i32) -> Result<Truncation, Error> {
    match pb::Truncation::try_from(v) {
        Ok(pb::Truncation::Unspecified) | Ok(pb::Truncation::Truncate) => Ok(Truncation::Truncate),
        Ok(pb::Truncation::Reject) => Ok(Truncation::Reject),
        Err(_) => Err(Error::InvalidArgument(format!(
            "unknown truncation value {v}"
        ))),
    }
}

/// The call's deadline from its `grpc-timeout` header (e.g. "50m" = 50 ms).
pub fn deadline_of<T>(req: &Request<T>) -> Option<Instant> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Some(Instant::now() + d)
}

/// The gRPC code for each error: the one mapping from `Error` to the wire.
pub fn code_of(e: &Error) -> tonic::Code {
    use tonic::Code;
    match e {
        Error::InvalidArgument(_) | Error::Tokenizer(_) => Code::InvalidArgument,
        Error::Overloaded { .. } => Code::ResourceExhausted,
        Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
        Error::Unavailable(_) => Code::Unavailable,
        Error::ModelLoad { .. } => Code::FailedPrecondition,
        Error::Inference(_) | Error::Internal(_) => Code::Internal,
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        Status::new(code_of(&e), e.to_string())
    }
}

fn record(method: &'static str, start: Instant, result: &Result<impl Sized, Error>) {
    let code = match result {
        Ok(_) => tonic::Code::Ok,
        Err(e) => code_of(e),
    };
    metrics::counter!(m::REQUESTS, "method" => method, "code" => format!("{code:?}")).increment(1);
    metrics::histogram!(m::REQUEST_SECONDS, "method" => method)
        .record(start.elapsed().as_secs_f64());
    if let Err(e) = result {
        // Never the text itself: only what went wrong.
        tracing::debug!(method, error = %e, "request failed");
    }
}

type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<pb::ClassifyStreamResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Classifier for ClassifierService {
    async fn classify(
        &self,
        req: Request<pb::ClassifyRequest>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        let start = Instant::now();
        let deadline = deadline_of(&req);
        let span = crate::trace::rpc_span("Classify", req.metadata(), req.get_ref().texts.len());
        let work = self.classify_request(req.into_inner(), deadline);
        let result = crate::trace::traced(span, work).await;
        record("Classify", start, &result);
        Ok(Response::new(result?))
    }

    type ClassifyStreamStream = ResponseStream;

    #[tracing::instrument(skip_all)]
    async fn classify_stream(
        &self,
        req: Request<Streaming<pb::ClassifyStreamRequest>>,
    ) -> Result<Response<Self::ClassifyStreamStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<pb::ClassifyStreamResponse, Status>>(256);
        let svc = self.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    _ = tx.closed() => break,
                };
                let msg = match msg {
                    Ok(Some(msg)) => msg,
                    Ok(None) => break,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                let (svc, tx) = (svc.clone(), tx.clone());
                tokio::spawn(async move {
                    let start = Instant::now();
                    let work = svc.classify_request(msg.request.unwrap_or_default(), None);
                    // The client went away: drop the work so the batcher skips it.
                    let result = tokio::select! {
                        r = work => r,
                        _ = tx.closed() => return,
                    };
                    record("ClassifyStream", start, &result);
                    let outcome = match result {
                        Ok(r) => pb::classify_stream_response::Outcome::Response(r),
                        Err(e) => {
                            let status = Status::from(e);
                            pb::classify_stream_response::Outcome::Error(pb::Error {
                                code: status.code() as i32,
                                message: status.message().to_string(),
                            })
                        }
                    };
                    let _ = tx
                        .send(Ok(pb::ClassifyStreamResponse {
                            request_id: msg.request_id,
                            outcome: Some(outcome),
                        }))
                        .await;
                });
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn embed(
        &self,
        req: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let start = Instant::now();
        let deadline = deadline_of(&req);
        let span = crate::trace::rpc_span("Embed", req.metadata(), req.get_ref().texts.len());
        let work = self.embed_request(req.into_inner(), deadline);
        let result = crate::trace::traced(span, work).await;
        record("Embed", start, &result);
        Ok(Response::new(result?))
    }

    async fn info(
        &self,
        _req: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        Ok(Response::new(ClassifierService::info(self)))
    }
}
