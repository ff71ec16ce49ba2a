//! The fast tier in process: the static model and heads that classifier-svc's cascade runs
//! (`semroute_encoder::fast`), loaded here too, so that a request the classifier cannot answer
//! (dead, breaker open, shed by admission, past its deadline, overloaded) is classified by it
//! instead of failing open. One text costs tens of microseconds of this router's CPU; it runs
//! only on the classifier's failure, never on a decision-cache hit. Its decisions are not
//! cached (the encoder answers the next identical request when it can). Similarity routes
//! are matched on its own embedding against the examples embedded with it at load.

use std::sync::Arc;
use std::time::Instant;

use semroute_encoder::fast::FastTier;
use semroute_encoder::{LoadOptions, Source, Truncation};

use super::routes::{nearest_of, RouteMatch};
use super::Signal;
use crate::config::{FastTierConfig, RouteRule};

/// The loaded tier and the route examples embedded with it.
pub struct LocalTier {
    tier: FastTier,
    /// Per route, each example's embedding (in the fast model's space).
    routes: Vec<Vec<Vec<f32>>>,
}

/// A text's classification by the local tier.
pub struct Answer {
    pub signals: Vec<Signal>,
    /// The nearest route above its `fast_threshold` (else its `threshold`).
    pub route: Option<RouteMatch>,
}

/// Loads the tier `cfg` names: None when it is off, or when the default directory is absent
/// (a checkout without `models/fast-tier.sh`'s output); an error when a directory the
/// operator named is missing or does not load.
pub fn load(cfg: &FastTierConfig, routes: &[RouteRule]) -> anyhow::Result<Option<Arc<LocalTier>>> {
    if !cfg.enabled || cfg.model == "none" {
        return Ok(None);
    }
    let source: Source = cfg.model.parse()?;
    if let Source::Local(dir) = &source {
        if !dir.is_dir() && cfg.is_default() {
            tracing::info!(dir = %dir.display(), "no fast tier in process: its directory is not there (models/fast-tier.sh makes it)");
            return Ok(None);
        }
    }
    let heads = std::path::Path::new(&cfg.heads);
    anyhow::ensure!(
        heads.is_dir(),
        "fast_tier.heads {}: not a directory",
        heads.display()
    );
    let started = Instant::now();
    let tier = FastTier::load(&source, heads, &LoadOptions::default())?;
    let local = LocalTier::new(tier, routes)?;
    tracing::info!(
        model = %local.tier.version(),
        tasks = ?local.tier.model.tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ms = started.elapsed().as_millis() as u64,
        "fast tier loaded in process"
    );
    Ok(Some(Arc::new(local)))
}

impl LocalTier {
    pub fn new(tier: FastTier, routes: &[RouteRule]) -> anyhow::Result<Self> {
        let routes = routes
            .iter()
            .map(|r| {
                r.examples
                    .iter()
                    .map(|e| Ok(tier.classify(e, Truncation::Truncate)?.embedding))
                    .collect::<anyhow::Result<Vec<_>>>()
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { tier, routes })
    }

    /// Whether it has a head for every one of `tasks`.
    pub fn serves(&self, tasks: &[String]) -> bool {
        !tasks.is_empty() && tasks.iter().all(|t| self.tier.head(t).is_some())
    }

    /// Every one of `tasks` (each must be served) and the nearest of `rules`, for one text.
    pub fn classify(
        &self,
        text: &str,
        tasks: &[String],
        rules: &[RouteRule],
    ) -> Result<Answer, semroute_encoder::error::Error> {
        let run = self.tier.classify(text, Truncation::Truncate)?;
        let signals = tasks
            .iter()
            .filter_map(|t| {
                let hi = self.tier.head(t)?;
                let probs = &run.probs[hi];
                let (best, p) =
                    probs
                        .iter()
                        .enumerate()
                        .fold((0, f32::MIN), |b, (i, &p)| if p > b.1 { (i, p) } else { b });
                Some(Signal {
                    task: t.clone(),
                    label: self.tier.model.tasks[hi].labels[best].clone(),
                    probability: p,
                    scores: Vec::new(),
                })
            })
            .collect();
        let route = nearest_of(rules, &self.routes, &run.embedding, |r| {
            r.fast_threshold.unwrap_or(r.threshold)
        });
        Ok(Answer { signals, route })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use semroute_encoder::fixtures;

    fn rule(name: &str, examples: &[&str], threshold: f32) -> RouteRule {
        RouteRule {
            name: name.into(),
            examples: examples.iter().map(|s| s.to_string()).collect(),
            model: "m".into(),
            use_reasoning: false,
            threshold,
            fast_threshold: None,
            system_prompt: None,
        }
    }

    #[test]
    fn the_local_tier_answers_every_task_it_serves_and_its_nearest_route() {
        let dir = tempfile::tempdir().unwrap();
        let (model, heads) = fixtures::static_with_heads(dir.path()).unwrap();
        let rules = vec![
            rule("greeting", &["hello world"], 0.99),
            rule("never", &["tax income"], 1.01),
        ];
        let cfg = FastTierConfig {
            enabled: true,
            model: model.display().to_string(),
            heads: heads.display().to_string(),
        };
        let tier = load(&cfg, &rules).unwrap().expect("loaded");
        let tasks: Vec<String> = ["domain", "complexity"].map(String::from).to_vec();
        assert!(tier.serves(&tasks));
        assert!(!tier.serves(&["strong".to_string()]));
        assert!(!tier.serves(&[]));
        let a = tier.classify("hello world", &tasks, &rules).unwrap();
        assert_eq!(
            a.signals
                .iter()
                .map(|s| s.task.as_str())
                .collect::<Vec<_>>(),
            ["domain", "complexity"]
        );
        for s in &a.signals {
            assert!(s.probability > 0.0 && s.probability <= 1.0, "{s:?}");
        }
        let m = a.route.expect("the example itself matches");
        let (i, sim) = (m.index, m.similarity);
        assert_eq!(i, 0);
        assert!((sim - 1.0).abs() < 1e-4, "{sim}");
        let a = tier.classify("prove the theorem", &tasks, &rules).unwrap();
        assert!(a.route.is_none_or(|m| m.index == 0));

        // Off, or the default directory absent: none; a named directory absent: an error.
        let off = FastTierConfig {
            enabled: false,
            ..cfg.clone()
        };
        assert!(load(&off, &rules).unwrap().is_none());
        let named = FastTierConfig {
            model: dir.path().join("nope").display().to_string(),
            ..cfg.clone()
        };
        assert!(load(&named, &rules).is_err());
    }
}
