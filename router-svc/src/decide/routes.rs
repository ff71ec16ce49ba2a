//! Routes without training: each route is a handful of example prompts and a target model.
//! The examples are embedded once through classifier-svc's Embed RPC (in the background, retried
//! until the classifier answers; again whenever the routes in the config change), and a request
//! takes the route whose nearest example is the most similar (cosine), if above its threshold.
//! The request's embedding rides on its Classify call (same encoder pass).

use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use super::classifier::Classifier;
use crate::config::RouteRule;

/// A request's nearest route.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteMatch {
    pub index: usize,
    pub name: String,
    pub similarity: f32,
}

pub struct RouteSet {
    pub rules: Vec<RouteRule>,
    /// Per route, the L2-normalised embedding of each example; None until embedded.
    index: ArcSwapOption<Vec<Vec<Vec<f32>>>>,
}

impl RouteSet {
    /// Starts embedding the examples in the background (needs a tokio runtime).
    pub fn new(rules: Vec<RouteRule>, classifier: &Arc<Classifier>) -> Arc<Self> {
        let this = Arc::new(Self {
            rules,
            index: ArcSwapOption::empty(),
        });
        if !this.rules.is_empty() && classifier.configured() {
            tokio::spawn(embed_examples(Arc::downgrade(&this), classifier.clone()));
        }
        this
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn ready(&self) -> bool {
        self.index.load().is_some()
    }

    /// The best route above its threshold for an embedding.
    pub fn nearest(&self, embedding: &[f32]) -> Option<RouteMatch> {
        let index = self.index.load_full()?;
        nearest_of(&self.rules, &index, embedding, |r| r.threshold)
    }

    #[cfg(test)]
    fn set_index(&self, index: Vec<Vec<Vec<f32>>>) {
        self.index.store(Some(Arc::new(index)));
    }
}

/// The route whose nearest example (`index[route][example]`, L2-normalised) is the most
/// similar (cosine) to `embedding`, if at or above that route's `threshold`.
pub fn nearest_of(
    rules: &[RouteRule],
    index: &[Vec<Vec<f32>>],
    embedding: &[f32],
    threshold: impl Fn(&RouteRule) -> f32,
) -> Option<RouteMatch> {
    let norm = embedding
        .iter()
        .map(|v| v * v)
        .sum::<f32>()
        .sqrt()
        .max(1e-12);
    let mut best: Option<RouteMatch> = None;
    for (i, (rule, examples)) in rules.iter().zip(index).enumerate() {
        let sim = examples
            .iter()
            .map(|e| e.iter().zip(embedding).map(|(a, b)| a * b).sum::<f32>() / norm)
            .fold(f32::MIN, f32::max);
        if sim >= threshold(rule) && best.as_ref().is_none_or(|b| sim > b.similarity) {
            best = Some(RouteMatch {
                index: i,
                name: rule.name.clone(),
                similarity: sim,
            });
        }
    }
    best
}

async fn embed_examples(this: Weak<RouteSet>, classifier: Arc<Classifier>) {
    loop {
        let Some(set) = this.upgrade() else { return };
        let texts: Vec<String> = set.rules.iter().flat_map(|r| r.examples.clone()).collect();
        match classifier.embed(&texts).await {
            Ok(mut flat) => {
                let mut index = Vec::with_capacity(set.rules.len());
                for r in &set.rules {
                    let rest = flat.split_off(r.examples.len());
                    index.push(std::mem::replace(&mut flat, rest));
                }
                set.index.store(Some(Arc::new(index)));
                tracing::info!(
                    routes = set.rules.len(),
                    examples = texts.len(),
                    "similarity routes ready"
                );
                return;
            }
            Err(e) => tracing::warn!(error = %e, "embedding route examples failed; retrying"),
        }
        drop(set);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, threshold: f32) -> RouteRule {
        RouteRule {
            name: name.into(),
            examples: vec!["a".into(), "b".into()],
            model: "m".into(),
            use_reasoning: false,
            threshold,
            fast_threshold: None,
            system_prompt: None,
        }
    }

    #[tokio::test]
    async fn nearest_example_above_threshold_wins() {
        let c = Classifier::new(&crate::config::ClassifierConfig {
            addresses: vec![],
            ..Default::default()
        })
        .unwrap();
        let set = RouteSet::new(vec![rule("support", 0.8), rule("billing", 0.5)], &c);
        assert!(!set.ready() && set.nearest(&[1.0, 0.0]).is_none());
        set.set_index(vec![
            vec![vec![1.0, 0.0], vec![0.0, 1.0]],
            vec![vec![0.6, 0.8], vec![0.8, 0.6]],
        ]);
        let m = set.nearest(&[2.0, 0.0]).unwrap();
        assert_eq!((m.name.as_str(), m.similarity), ("support", 1.0));
        // 0.707 to support (under its 0.8), 0.99 to billing.
        let m = set.nearest(&[std::f32::consts::FRAC_1_SQRT_2; 2]).unwrap();
        assert_eq!(m.name, "billing");
        assert!(
            set.nearest(&[-1.0, -1.0]).is_none(),
            "unrelated stays unrouted"
        );
    }
}
