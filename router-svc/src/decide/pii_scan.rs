//! PII in the texts a model will read, for the per-model PII policies: validated patterns
//! always (e-mail, cards, SSN, IP, phone); names, addresses, places and the other types from the
//! classifier's token-classification task (`pii`) when a policy names such a type and the
//! classifier serves the task. One Classify call for all of a request's texts, within the
//! classifier deadline; if it fails, the patterns alone decide (counted, logged).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};

use semroute_pii::{self as pii, PiiType, Span};

use super::classifier::Classifier;

/// The classifier task that finds PII entities.
pub const PII_TASK: &str = "pii";

#[derive(Debug, Default)]
pub struct PiiScan {
    /// text -> its spans (sorted, not overlapping).
    by_text: HashMap<String, Vec<Span>>,
}

impl PiiScan {
    /// Scans `texts`; asks the classifier when `wanted` holds a type patterns cannot find.
    pub async fn run(
        texts: Vec<String>,
        wanted: &BTreeSet<PiiType>,
        classifier: &Classifier,
    ) -> Self {
        let mut by_text: HashMap<String, Vec<Span>> =
            texts.iter().map(|t| (t.clone(), pii::detect(t))).collect();
        let tasks = classifier.tasks_for(&[PII_TASK]);
        let needs_model = wanted.iter().any(|t| !t.by_pattern());
        if texts.is_empty() || !needs_model || tasks.is_empty() || !classifier.configured() {
            return Self { by_text };
        }
        match classifier
            .classify_texts(texts.clone(), &tasks, false)
            .await
        {
            Ok(results) => {
                for (text, r) in texts.iter().zip(results) {
                    let model: Vec<Span> = r
                        .entities
                        .iter()
                        .filter(|e| e.task == PII_TASK)
                        .filter_map(|e| {
                            let (start, end) = (e.start as usize, e.end as usize);
                            // Only spans that fit the text on char boundaries are used.
                            text.get(start..end)?;
                            Some(Span {
                                kind: PiiType::parse(&e.entity_type)?,
                                start,
                                end,
                            })
                        })
                        .collect();
                    if let Some(spans) = by_text.get_mut(text) {
                        *spans = pii::merge(std::mem::take(spans), model);
                    }
                }
            }
            Err(e) => {
                metrics::counter!("router_pii_model_errors_total", "reason" => e.reason())
                    .increment(1);
                tracing::warn!(error = %e,
                    "PII task unavailable: only validated patterns checked for this request");
            }
        }
        Self { by_text }
    }

    /// Every type found in any text.
    pub fn types(&self) -> BTreeSet<PiiType> {
        self.by_text.values().flatten().map(|s| s.kind).collect()
    }

    /// The spans of `text` (patterns only for a text the scan did not see).
    pub fn spans(&self, text: &str) -> Cow<'_, [Span]> {
        match self.by_text.get(text) {
            Some(s) => Cow::Borrowed(s.as_slice()),
            None => Cow::Owned(pii::detect(text)),
        }
    }
}
