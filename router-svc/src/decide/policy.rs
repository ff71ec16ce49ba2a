//! From classifier signals to a Decision, by the routing policy of the config. Pure: the same
//! signals and policy always give the same decision (which is why decisions can be cached).

use std::collections::HashSet;

use super::routes::RouteMatch;
use super::{select, Decision, Signal, Source};
use crate::config::{Config, JailbreakAction};

/// Applies the policy to the classifier's signals and the nearest similarity route, for a
/// text of `prompt_chars` characters (the selection's cost estimate).
pub fn decide(
    cfg: &Config,
    signals: Vec<Signal>,
    route: Option<RouteMatch>,
    prompt_chars: usize,
) -> Decision {
    let r = &cfg.routing;
    let get = |task: &str| signals.iter().find(|s| s.task == task);
    let mut d = Decision::default_model(cfg, Source::Classified);

    if r.jailbreak.enabled {
        if let Some(s) = get(&r.tasks.jailbreak) {
            if r.jailbreak.labels.contains(&s.label) && s.probability >= r.jailbreak.threshold {
                d.jailbreak = true;
                d.blocked = r.jailbreak.action == JailbreakAction::Block;
            }
        }
    }

    if let Some(s) = get(&r.tasks.domain) {
        d.category = Some(s.label.clone());
        d.confidence = s.probability;
        if s.probability >= r.confidence_threshold {
            if let Some(rule) = r.categories.get(&s.label) {
                let mut cands: Vec<_> = rule.candidates.iter().collect();
                // Highest score first; ties keep the config's order.
                cands.sort_by(|a, b| b.score.total_cmp(&a.score));
                let best = cands[0];
                d.model = best.model.clone();
                d.use_reasoning = best.use_reasoning;
                d.alternatives = cands[1..].iter().map(|c| c.model.clone()).collect();
            }
        }
    }

    // A route declared by examples: ahead of the trained domains (routes_win), or where they
    // give no confident category rule. Operator intent: complexity does not override it.
    let category_decided = d
        .category
        .as_ref()
        .is_some_and(|c| r.categories.contains_key(c))
        && d.confidence >= r.confidence_threshold;
    let route = route.filter(|_| r.routes_win || !category_decided);
    if let Some(m) = &route {
        let rule = &r.routes[m.index];
        if d.model != rule.model {
            let prev = std::mem::replace(&mut d.model, rule.model.clone());
            d.alternatives.insert(0, prev);
        }
        d.use_reasoning = rule.use_reasoning;
        d.route = Some(m.name.clone());
        d.route_similarity = Some(m.similarity);
    }

    // Selection by expected quality and price, where no route or category rule decided.
    if let (Some(rule), None, false) = (&r.selection, &route, category_decided) {
        if let Some(s) = get(&rule.task).filter(|s| !s.scores.is_empty()) {
            if let Some(sel) = select::select(cfg, rule, &s.scores, prompt_chars) {
                d.model = sel.candidates[0].model.clone();
                d.alternatives = sel.candidates[1..]
                    .iter()
                    .map(|c| c.model.clone())
                    .collect();
                d.selection = Some(sel);
            }
        }
    }
    let selected = d.selection.is_some();

    if let Some(s) = get(&r.tasks.complexity) {
        d.complexity = Some(s.label.clone());
        if s.probability >= r.confidence_threshold && route.is_none() {
            if let Some(rule) = r.complexity.get(&s.label) {
                // The selection chose the model; the rule may still switch reasoning.
                if let Some(m) = rule.model.as_ref().filter(|_| !selected) {
                    if *m != d.model {
                        let prev = std::mem::replace(&mut d.model, m.clone());
                        d.alternatives.insert(0, prev);
                    }
                }
                if let Some(on) = rule.use_reasoning {
                    d.use_reasoning = on;
                }
            }
        }
    }

    // The cost knob: a weak/strong decision by the strong-model-needed task (the selection,
    // where it decided, is the finer knob).
    if let (Some(sm), None, false) = (&r.strong_model, &route, selected) {
        if let Some(s) = get(&sm.task) {
            let p = s.probability_of(&sm.label);
            d.strong_score = Some(p);
            let target = if p >= sm.threshold {
                if let Some(on) = sm.use_reasoning {
                    d.use_reasoning = on;
                }
                Some(&sm.model)
            } else {
                sm.weak_model.as_ref()
            };
            if let Some(m) = target {
                if *m != d.model {
                    let prev = std::mem::replace(&mut d.model, m.clone());
                    d.alternatives.insert(0, prev);
                }
            }
        }
    }

    // A model without a reasoning family cannot switch reasoning: say so truthfully.
    if cfg
        .model(&d.model)
        .is_none_or(|m| m.reasoning_family.is_none())
    {
        d.use_reasoning = false;
    }
    let mut seen = HashSet::from([d.model.clone()]);
    d.alternatives.retain(|m| seen.insert(m.clone()));
    // The profile's every value served the selection (kept in `d.selection`, scored); the
    // cached decision keeps the top label only, like the other signals.
    let mut signals = signals;
    for s in &mut signals {
        s.scores = Vec::new();
    }
    d.signals = signals;
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::from_yaml(crate::config::EMBEDDED_DEFAULT).unwrap()
    }

    fn sig(task: &str, label: &str, p: f32) -> Signal {
        Signal {
            task: task.into(),
            label: label.into(),
            probability: p,
            scores: vec![],
        }
    }

    #[test]
    fn category_picks_best_candidate_and_reasoning() {
        let d = decide(
            &cfg(),
            vec![
                sig("domain", "math", 0.9),
                sig("complexity", "reasoning", 0.9),
            ],
            None,
            0,
        );
        assert_eq!(d.model, "qwen3-8b");
        assert!(d.use_reasoning);
        assert_eq!(d.alternatives, ["qwen3-0.6b"]);
        assert_eq!(d.category.as_deref(), Some("math"));
    }

    #[test]
    fn simple_prompt_goes_small_without_reasoning() {
        let d = decide(
            &cfg(),
            vec![
                sig("domain", "math", 0.9),
                sig("complexity", "simple", 0.95),
            ],
            None,
            0,
        );
        assert_eq!(d.model, "qwen3-0.6b");
        assert!(!d.use_reasoning);
    }

    #[test]
    fn low_confidence_uses_default_model() {
        let d = decide(&cfg(), vec![sig("domain", "law", 0.2)], None, 0);
        assert_eq!(d.model, "qwen3-0.6b");
        assert_eq!(d.category.as_deref(), Some("law"));
        assert!((d.confidence - 0.2).abs() < 1e-6);
    }

    #[test]
    fn a_route_wins_or_yields_to_a_confident_category() {
        let mut c = cfg();
        c.routing.routes = vec![crate::config::RouteRule {
            name: "support".into(),
            examples: vec!["x".into()],
            model: "qwen3-0.6b".into(),
            use_reasoning: false,
            threshold: 0.5,
            fast_threshold: None,
            system_prompt: None,
        }];
        let m = RouteMatch {
            index: 0,
            name: "support".into(),
            similarity: 0.8,
        };
        let signals = vec![
            sig("domain", "math", 0.9),
            sig("complexity", "reasoning", 0.9),
        ];
        let d = decide(&c, signals.clone(), Some(m.clone()), 0);
        assert_eq!(d.model, "qwen3-0.6b");
        assert_eq!(d.route.as_deref(), Some("support"));
        assert!(!d.use_reasoning, "complexity does not override a route");
        c.routing.routes_win = false;
        let d = decide(&c, signals, Some(m.clone()), 0);
        assert_eq!((d.model.as_str(), d.route.as_deref()), ("qwen3-8b", None));
        let d = decide(&c, vec![sig("domain", "math", 0.2)], Some(m), 0);
        assert_eq!(
            d.route.as_deref(),
            Some("support"),
            "no confident category: route"
        );
    }

    #[test]
    fn strong_model_knob_escalates_or_economises() {
        let mut c = cfg();
        c.routing.strong_model = Some(crate::config::StrongModelRule {
            task: "strong".into(),
            label: "strong".into(),
            threshold: 0.6,
            model: "qwen3-8b".into(),
            weak_model: Some("qwen3-0.6b".into()),
            use_reasoning: Some(true),
        });
        let d = decide(
            &c,
            vec![sig("domain", "history", 0.9), sig("strong", "strong", 0.7)],
            None,
            0,
        );
        assert_eq!(d.model, "qwen3-8b");
        assert!(d.use_reasoning);
        // The top label is "weak" at 0.8: P(strong) = 0.2, under the threshold.
        let d = decide(
            &c,
            vec![sig("domain", "math", 0.9), sig("strong", "weak", 0.8)],
            None,
            0,
        );
        assert_eq!(d.model, "qwen3-0.6b");
        assert!((d.strong_score.unwrap() - 0.2).abs() < 1e-6);
    }

    #[test]
    fn selection_decides_where_no_category_or_route_did() {
        let mut c = cfg();
        c.models[1].pricing.output_per_million = 2.0;
        c.routing.selection = Some(crate::config::SelectionRule {
            task: "quality".into(),
            cost_weight: 0.0,
            candidates: vec![],
            answer_tokens: 300,
            weight_header: true,
        });
        let quality = Signal {
            task: "quality".into(),
            label: "qwen3-8b".into(),
            probability: 0.8,
            scores: vec![("qwen3-0.6b".into(), 0.5), ("qwen3-8b".into(), 0.8)],
        };
        // An unconfident domain: the selection decides (best quality at weight 0).
        let d = decide(
            &c,
            vec![sig("domain", "law", 0.2), quality.clone()],
            None,
            100,
        );
        assert_eq!(d.model, "qwen3-8b");
        assert_eq!(d.alternatives, ["qwen3-0.6b"]);
        let sel = d.selection.as_ref().unwrap();
        assert_eq!(sel.candidates.len(), 2);
        // A confident category rule takes precedence (math -> qwen3-8b first in the embedded
        // config, so give the selection the other preference to tell them apart).
        c.routing.selection.as_mut().unwrap().cost_weight = 10.0;
        let d = decide(
            &c,
            vec![sig("domain", "math", 0.9), quality.clone()],
            None,
            100,
        );
        assert!(d.selection.is_none());
        assert_eq!(d.model, "qwen3-8b");
        let d = decide(&c, vec![sig("domain", "law", 0.2), quality], None, 100);
        assert_eq!(d.model, "qwen3-0.6b", "the weight prices qwen3-8b out");
        // No profile signal (the router's fast tier stood in): categories and default.
        let d = decide(&c, vec![sig("domain", "law", 0.2)], None, 100);
        assert!(d.selection.is_none());
        assert_eq!(d.model, c.routing.default_model);
    }

    #[test]
    fn jailbreak_blocks_or_flags() {
        let mut c = cfg();
        let d = decide(&c, vec![sig("jailbreak", "jailbreak", 0.99)], None, 0);
        assert!(d.jailbreak && d.blocked);
        let d = decide(&c, vec![sig("jailbreak", "jailbreak", 0.5)], None, 0);
        assert!(!d.jailbreak, "under the threshold");
        c.routing.jailbreak.action = JailbreakAction::Flag;
        let d = decide(&c, vec![sig("jailbreak", "malicious", 0.99)], None, 0);
        assert!(d.jailbreak && !d.blocked);
    }
}
