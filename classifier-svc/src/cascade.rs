//! The fast tier of the classification cascade: a static token-embedding model
//! (`semroute-train distill`) with its own heads, run in the request's task, no queue. Per
//! task, it answers when its top probability clears the task's threshold (`cascade.threshold`
//! in the fast head's head.json, chosen on validation by `semroute-train cascade` for a stated
//! accuracy loss); the encoder answers the rest. It also answers, whatever its confidence, when
//! the encoder cannot: admission shed the request, or the batch former said the request cannot
//! meet its deadline. A request is then classified by a cheaper tier instead of not at all.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use semroute_encoder::{LoadOptions, Model, Source, Truncation};

use crate::error::Error;

/// Why a tier answered (`TaskResult.tier_reason`, `classifier_answers_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The encoder, as asked or because the fast tier was not sure.
    Encoder,
    /// The fast tier cleared every asked task's threshold.
    Confident,
    /// The caller asked for the fast tier.
    Requested,
    /// The encoder could not meet the deadline.
    Deadline,
    /// Admission shed the encoder's share.
    Shed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Encoder => "",
            Reason::Confident => "confident",
            Reason::Requested => "requested",
            Reason::Deadline => "deadline",
            Reason::Shed => "shed",
        }
    }
}

/// The fast model, its heads' thresholds, and what it costs.
pub struct FastTier {
    pub model: Arc<Model>,
    /// task -> least top probability for the fast tier to answer by itself (absent: it answers
    /// that task only when the encoder cannot).
    thresholds: HashMap<String, f32>,
}

/// One text through the fast tier: `probs[task][label]` in the fast model's task order.
pub struct FastRun {
    pub probs: Vec<Vec<f32>>,
    pub num_tokens: u32,
    pub truncated: bool,
    pub took: Duration,
}

impl FastTier {
    /// The static model at `source` with the heads in `heads` (each head.json may carry
    /// `cascade.threshold`). Token heads are not served by the fast tier.
    pub fn load(source: &Source, heads: &Path, opts: &LoadOptions) -> anyhow::Result<Self> {
        let model = Model::load_encoder(source, Some(heads), opts)?;
        anyhow::ensure!(
            !model.tasks.is_empty(),
            "fast tier {}: no heads in {}",
            model.meta.id,
            heads.display()
        );
        let mut thresholds = HashMap::new();
        for t in &model.tasks {
            let path = heads.join(&t.name).join("head.json");
            let spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            if let Some(th) = spec["cascade"]["threshold"].as_f64() {
                anyhow::ensure!(
                    (0.0..=1.0).contains(&th),
                    "{}: cascade.threshold {th} is not a probability",
                    path.display()
                );
                thresholds.insert(t.name.clone(), th as f32);
            }
        }
        Ok(Self {
            model: Arc::new(model),
            thresholds,
        })
    }

    /// The head index of `task`, if the fast tier serves it (sentence heads only).
    pub fn head(&self, task: &str) -> Option<usize> {
        self.model
            .tasks
            .iter()
            .position(|t| t.name == task && !t.is_token())
    }

    pub fn threshold(&self, task: &str) -> Option<f32> {
        self.thresholds.get(task).copied()
    }

    pub fn version(&self) -> String {
        self.model.meta.versioned_id()
    }

    /// Every text through the fast model, windows included for windowed heads. Long inputs go
    /// to the blocking pool, as the encoder's tokenization does.
    pub async fn run(
        self: &Arc<Self>,
        texts: Arc<Vec<String>>,
        truncation: Truncation,
    ) -> Result<Vec<FastRun>, Error> {
        let big = texts.iter().map(|t| t.len()).sum::<usize>() > 16 * 1024;
        let me = self.clone();
        let work = move || me.classify_now(&texts, truncation);
        if big {
            tokio::task::spawn_blocking(work)
                .await
                .map_err(|e| Error::Internal(format!("fast tier task: {e}")))?
        } else {
            work()
        }
    }

    /// `run` on the calling thread.
    pub fn classify_now(
        &self,
        texts: &[String],
        truncation: Truncation,
    ) -> Result<Vec<FastRun>, Error> {
        let m = &self.model;
        texts
            .iter()
            .map(|t| {
                let start = Instant::now();
                let e = m.tokenize(t, truncation)?;
                // Windows only for a text longer than one (a second tokenization, whole).
                let windows = match m.window() {
                    Some(w) if e.truncated || e.ids.len() > w.tokens => m.windows(t)?,
                    _ => Vec::new(),
                };
                let mut seqs: Vec<&[u32]> = vec![&e.ids];
                seqs.extend(windows.iter().map(Vec::as_slice));
                let out = m.forward_inline(&m.prepare(&seqs)?)?;
                let mut probs = out.probs;
                let mut whole = probs.remove(0);
                if !probs.is_empty() {
                    m.apply_windows(&mut whole, &probs);
                }
                Ok(FastRun {
                    probs: whole,
                    num_tokens: e.ids.len() as u32,
                    truncated: e.truncated,
                    took: start.elapsed(),
                })
            })
            .collect()
    }
}
