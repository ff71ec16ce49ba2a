//! The fast tier of the classification cascade: a static token-embedding model
//! (`semroute-train distill`) with its own heads, run in the request's task, no queue. Per
//! task, it answers when its top probability clears the task's threshold (`cascade.threshold`
//! in the fast head's head.json, chosen on validation by `semroute-train cascade` for a stated
//! accuracy loss); the encoder answers the rest. It also answers, whatever its confidence, when
//! the encoder cannot: admission shed the request, or the batch former said the request cannot
//! meet its deadline. A request is then classified by a cheaper tier instead of not at all.

use std::sync::Arc;

pub use semroute_encoder::fast::{FastRun, FastTier};
use semroute_encoder::Truncation;

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

/// Every text through the fast tier, windows included for windowed heads. Long inputs go to
/// the blocking pool; short ones run in the caller's task.
pub async fn run(
    fast: &Arc<FastTier>,
    texts: Arc<Vec<String>>,
    truncation: Truncation,
) -> Result<Vec<FastRun>, Error> {
    // Past ~2 KB the work is a millisecond or more (a non-ASCII text takes the general
    // tokenizer): off the runtime's threads, which serve other calls meanwhile.
    let big = texts.iter().map(|t| t.len()).sum::<usize>() > 2048;
    let me = fast.clone();
    let work = move || -> Result<Vec<FastRun>, Error> {
        texts
            .iter()
            .map(|t| me.classify(t, truncation).map_err(Error::from))
            .collect()
    };
    if big {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| Error::Internal(format!("fast tier task: {e}")))?
    } else {
        work()
    }
}
