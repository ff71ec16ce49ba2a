//! Dynamic batching: admission control, the queue, batch formation by token budget, and the
//! inference loop. Knows requests and models, not gRPC.
//!
//! Per model, two threads:
//! - the *former* owns the queue. It drops requests whose deadline passed or whose caller went
//!   away, and forms a batch around the oldest request from the requests nearest to it in length,
//!   while `count <= max_batch_size` and `count * longest <= max_batch_tokens`. It forms the next
//!   batch while the current one runs as soon as a full batch is waiting; otherwise it waits for
//!   the inference thread to go idle (or `max_wait`) so batches are as full as load allows.
//! - the *inference* thread runs one prepared batch at a time and answers each request.
//!
//! Tokenization happens on the caller's task before `submit`, never on these threads.

mod admission;
mod estimate;
mod former;

pub use admission::{Admission, Permit};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::metrics as m;
use semroute_encoder::Model;

#[derive(Debug, Clone)]
pub struct BatchConfig {
    pub max_batch_size: usize,
    /// Budget of padded tokens per batch (rows x longest row).
    pub max_batch_tokens: usize,
    /// How long the oldest request may wait for company when the model is idle (0 = never).
    pub max_wait: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 32,
            max_batch_tokens: 8192,
            max_wait: Duration::ZERO,
        }
    }
}

/// What one request gets back.
#[derive(Debug, Clone)]
pub struct Output {
    pub embedding: Vec<f32>,
    /// `probs[task][label]` in `Model::tasks` order (empty for token heads).
    pub probs: Vec<Vec<f32>>,
    /// `tokens[task][token][label]` for token heads (empty for sentence heads).
    pub tokens: Vec<Vec<Vec<f32>>>,
    pub queue: Duration,
    pub inference: Duration,
    pub batch_size: usize,
    pub batch_tokens: usize,
}

pub(crate) struct Request {
    ids: Vec<u32>,
    /// Spelling features per token for token heads (`model::spans::shape_features`), or empty.
    shape: Vec<f32>,
    enqueued: Instant,
    deadline: Option<Instant>,
    reply: oneshot::Sender<Result<Output>>,
}

pub(crate) enum Msg {
    Request(Request),
    /// The inference thread finished a batch of `tokens` padded tokens in `took` (0 tokens: it
    /// ran nothing, every caller had left).
    Idle {
        tokens: usize,
        took: Duration,
    },
}

/// Handle to one model's queue. Cheap to clone; the threads stop when every handle is dropped.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Msg>,
    model: Arc<Model>,
}

impl Batcher {
    pub fn spawn(model: Arc<Model>, cfg: BatchConfig) -> Self {
        let (tx, rx) = mpsc::channel::<Msg>();
        // Capacity 1: one batch prepared and waiting while one runs.
        let (batch_tx, batch_rx) = mpsc::sync_channel::<former::Formed>(1);
        let id = model.meta.id.clone();
        let idle_tx = tx.clone();
        let infer_model = model.clone();
        let former_model = model.clone();
        std::thread::Builder::new()
            .name(format!("batch-{id}"))
            .spawn(move || former::run(former_model, cfg, rx, batch_tx))
            .expect("spawn batch former thread");
        std::thread::Builder::new()
            .name(format!("infer-{id}"))
            .spawn(move || inference_loop(infer_model, batch_rx, idle_tx))
            .expect("spawn inference thread");
        Self { tx, model }
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Queues one tokenized text; the answer arrives on the returned receiver. Dropping the
    /// receiver (caller went away) makes the batcher skip the request.
    pub fn submit(
        &self,
        ids: Vec<u32>,
        shape: Vec<f32>,
        deadline: Option<Instant>,
    ) -> oneshot::Receiver<Result<Output>> {
        let (reply, rx) = oneshot::channel();
        let req = Request {
            ids,
            shape,
            enqueued: Instant::now(),
            deadline,
            reply,
        };
        if let Err(mpsc::SendError(Msg::Request(req))) = self.tx.send(Msg::Request(req)) {
            let _ = req
                .reply
                .send(Err(Error::Unavailable("model worker stopped".into())));
        }
        rx
    }
}

/// Fault injection (`--chaos-control`): a delay added to every batch, in µs.
static INFERENCE_DELAY_US: AtomicU64 = AtomicU64::new(0);

/// Slows every batch of every model by `d` from now on (zero: back to normal).
pub fn set_inference_delay(d: Duration) {
    INFERENCE_DELAY_US.store(d.as_micros() as u64, Ordering::Relaxed);
}

fn inference_loop(model: Arc<Model>, rx: mpsc::Receiver<former::Formed>, idle: mpsc::Sender<Msg>) {
    let labels = [("model", model.meta.id.clone())];
    for batch in rx {
        let _span = tracing::debug_span!(
            "inference",
            model = %model.meta.id,
            size = batch.requests.len(),
            tokens = batch.prepared.padded_tokens()
        )
        .entered();
        let start = Instant::now();
        let live = batch.requests.iter().any(|r| !r.reply.is_closed());
        let delay = INFERENCE_DELAY_US.load(Ordering::Relaxed);
        if live && delay > 0 {
            std::thread::sleep(Duration::from_micros(delay));
        }
        let result = if live {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                model.forward(&batch.prepared).map_err(Error::from)
            }))
            .unwrap_or_else(|_| Err(Error::Internal("inference panicked".into())))
        } else {
            Err(Error::Internal("every caller left".into()))
        };
        let inference = start.elapsed();
        let size = batch.requests.len();
        let padded = batch.prepared.padded_tokens();
        metrics::histogram!(m::INFERENCE_SECONDS, &labels).record(inference.as_secs_f64());
        metrics::histogram!(m::BATCH_SIZE, &labels).record(size as f64);
        metrics::histogram!(m::BATCH_TOKENS, &labels).record(padded as f64);
        metrics::gauge!(m::QUEUE_SIZE, &labels).decrement(size as f64);
        match result {
            Ok(out) => {
                let rows = out.embeddings.into_iter().zip(out.probs).zip(out.tokens);
                for (req, ((embedding, probs), tokens)) in batch.requests.into_iter().zip(rows) {
                    let queue = start.saturating_duration_since(req.enqueued);
                    metrics::histogram!(m::QUEUE_SECONDS, &labels).record(queue.as_secs_f64());
                    let _ = req.reply.send(Ok(Output {
                        embedding,
                        probs,
                        tokens,
                        queue,
                        inference,
                        batch_size: size,
                        batch_tokens: padded,
                    }));
                }
            }
            Err(e) => {
                if live {
                    tracing::error!(model = %model.meta.id, error = %e, batch = size, "batch failed");
                }
                let msg = e.to_string();
                for req in batch.requests {
                    let _ = req.reply.send(Err(Error::Internal(msg.clone())));
                }
            }
        }
        let tokens = if live { padded } else { 0 };
        if idle
            .send(Msg::Idle {
                tokens,
                took: inference,
            })
            .is_err()
        {
            break;
        }
    }
}
