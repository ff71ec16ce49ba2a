//! PII in the texts a model will read, for the per-model PII policies: validated patterns
//! always (e-mail, cards, SSN, IP, phone); names, addresses, places and the other types from the
//! classifier's token-classification task (`pii`) when a policy names such a type and the
//! classifier serves the task. One Classify call for all of a request's texts, within the
//! classifier deadline; if it fails, the patterns alone decide (counted, logged).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};

use semroute_pii::{self as pii, PiiType, Span};

use semroute_proto::classifier::v1 as pb;

use super::classifier::Classifier;

/// The `pii` task's entities of `text` whose type a policy can name and whose span fits the text
/// on char boundaries (sorted, not overlapping, as the classifier sends them).
fn model_spans(text: &str, entities: &[pb::Entity]) -> Vec<Span> {
    let mut spans: Vec<Span> = entities
        .iter()
        .filter(|e| e.task == PII_TASK)
        .filter_map(|e| {
            let (start, end) = (e.start as usize, e.end as usize);
            text.get(start..end)?;
            Some(Span {
                kind: PiiType::parse(&e.entity_type)?,
                start,
                end,
            })
        })
        .collect();
    spans.sort_by_key(|s| s.start);
    spans.dedup_by(|b, a| b.start < a.end);
    spans
}

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
        let tasks = classifier.tasks_for(&[PII_TASK]);
        let needs_model = wanted.iter().any(|t| !t.by_pattern());
        if !texts.is_empty() && needs_model && !tasks.is_empty() && classifier.configured() {
            match classifier
                .classify_texts(texts.clone(), &tasks, false)
                .await
            {
                // The classifier's entities already hold the validated patterns' spans.
                Ok(results) => {
                    let by_text = texts
                        .into_iter()
                        .zip(results)
                        .map(|(text, r)| {
                            let spans = model_spans(&text, &r.entities);
                            (text, spans)
                        })
                        .collect();
                    return Self { by_text };
                }
                Err(e) => {
                    metrics::counter!("router_pii_model_errors_total", "reason" => e.reason())
                        .increment(1);
                    tracing::warn!(error = %e,
                        "PII task unavailable: only validated patterns checked for this request");
                }
            }
        }
        let by_text = texts
            .into_iter()
            .map(|t| {
                let spans = pii::detect(&t);
                (t, spans)
            })
            .collect();
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
