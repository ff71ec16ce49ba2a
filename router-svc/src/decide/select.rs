//! Selection among many models by predicted quality and price (`routing.selection`).
//!
//! The classifier's profile task (`semroute-train profile`) gives each model's expected quality
//! on the prompt. A candidate's utility is that quality less the operator's `cost_weight` times
//! its cost for this prompt relative to the dearest candidate's; the highest utility wins and
//! the rest follow in order as the decision's alternatives (failover, key limits and context
//! limits take the next best). The scored candidates ride in the decision (cached with it), so
//! a per-key or per-request weight re-ranks them without classifying again.

use serde::{Deserialize, Serialize};

use crate::config::{Config, SelectionRule};

/// One candidate as the selection saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub model: String,
    /// Expected quality in [0, 1] (the profile's prediction).
    pub quality: f32,
    /// USD per 1,000 requests like this one (prompt at 4 characters a token, the answer at
    /// `answer_tokens`), from the model's configured prices.
    pub cost: f64,
    /// `quality - cost_weight * cost / (the dearest candidate's cost)`.
    pub utility: f64,
}

/// What the selection decided and why (shown by /v1/route).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    pub cost_weight: f64,
    /// Where the weight came from: `config`, `key` or `header`.
    pub weight_from: String,
    /// Best first.
    pub candidates: Vec<Scored>,
    /// Why the first won, in a line.
    pub why: String,
}

/// A text's candidates, scored and ranked; None when the profile scores none of them.
pub fn select(
    cfg: &Config,
    rule: &SelectionRule,
    quality: &[(String, f32)],
    prompt_chars: usize,
) -> Option<Selection> {
    let prompt_tokens = prompt_chars.div_ceil(4) as f64;
    let wanted = |m: &str| rule.candidates.is_empty() || rule.candidates.iter().any(|c| c == m);
    let candidates: Vec<Scored> = quality
        .iter()
        .filter(|(m, _)| wanted(m))
        .filter_map(|(m, q)| {
            let p = &cfg.model(m)?.pricing;
            let cost = (prompt_tokens * p.input_per_million
                + f64::from(rule.answer_tokens) * p.output_per_million)
                / 1e6
                * 1000.0;
            Some(Scored {
                model: m.clone(),
                quality: *q,
                cost,
                utility: 0.0,
            })
        })
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let mut s = Selection {
        cost_weight: rule.cost_weight,
        weight_from: "config".into(),
        candidates,
        why: String::new(),
    };
    rank(&mut s);
    Some(s)
}

/// Re-ranks a selection with another weight (a key's or a request's).
pub fn reweigh(s: &mut Selection, weight: f64, from: &str) {
    s.cost_weight = weight;
    s.weight_from = from.to_string();
    rank(s);
}

fn rank(s: &mut Selection) {
    let dearest = s
        .candidates
        .iter()
        .map(|c| c.cost)
        .fold(0.0_f64, f64::max)
        .max(f64::MIN_POSITIVE);
    for c in &mut s.candidates {
        c.utility = f64::from(c.quality) - s.cost_weight * c.cost / dearest;
    }
    // Highest utility first; ties go to the cheaper, then the name (stable across replicas).
    s.candidates.sort_by(|a, b| {
        b.utility
            .total_cmp(&a.utility)
            .then(a.cost.total_cmp(&b.cost))
            .then(a.model.cmp(&b.model))
    });
    let top = &s.candidates[0];
    let best_q = s
        .candidates
        .iter()
        .max_by(|a, b| {
            a.quality
                .total_cmp(&b.quality)
                .then(b.cost.total_cmp(&a.cost))
        })
        .expect("candidates are not empty");
    s.why = if best_q.model == top.model {
        format!(
            "{}: highest expected quality ({:.3}) at weight {}",
            top.model, top.quality, s.cost_weight
        )
    } else {
        format!(
            "{}: expected quality {:.3} at {:.3} USD / 1k requests beats {} ({:.3} at {:.3}) at weight {}",
            top.model,
            top.quality,
            top.cost,
            best_q.model,
            best_q.quality,
            best_q.cost,
            s.cost_weight
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        let mut c = Config::from_yaml(crate::config::EMBEDDED_DEFAULT).unwrap();
        // qwen3-0.6b cheap, qwen3-8b dear.
        c.models[0].pricing.input_per_million = 0.1;
        c.models[0].pricing.output_per_million = 0.1;
        c.models[1].pricing.input_per_million = 1.0;
        c.models[1].pricing.output_per_million = 2.0;
        c
    }

    fn rule(weight: f64) -> SelectionRule {
        SelectionRule {
            task: "quality".into(),
            cost_weight: weight,
            candidates: vec![],
            answer_tokens: 300,
            weight_header: true,
        }
    }

    fn quality() -> Vec<(String, f32)> {
        vec![
            ("qwen3-0.6b".into(), 0.60),
            ("qwen3-8b".into(), 0.75),
            ("not-configured".into(), 0.99),
        ]
    }

    #[test]
    fn the_weight_trades_quality_for_price() {
        let c = cfg();
        let s = select(&c, &rule(0.0), &quality(), 400).unwrap();
        let names: Vec<_> = s.candidates.iter().map(|c| c.model.as_str()).collect();
        assert_eq!(
            names,
            ["qwen3-8b", "qwen3-0.6b"],
            "unconfigured models are no candidates"
        );
        assert!(s.why.contains("highest expected quality"), "{}", s.why);
        // 100 prompt tokens + 300 answer tokens: 0.04 and 0.7 USD per 1k requests.
        assert!((s.candidates[1].cost - 0.04).abs() < 1e-9);
        assert!((s.candidates[0].cost - 0.7).abs() < 1e-9);
        // 0.15 better for ~94 % of the dearest price: a weight over 0.16 picks the cheap one.
        let s = select(&c, &rule(0.2), &quality(), 400).unwrap();
        assert_eq!(s.candidates[0].model, "qwen3-0.6b");
        assert!(s.why.contains("beats qwen3-8b"), "{}", s.why);
        let mut s = select(&c, &rule(0.1), &quality(), 400).unwrap();
        assert_eq!(s.candidates[0].model, "qwen3-8b");
        reweigh(&mut s, 1.0, "header");
        assert_eq!(
            (s.candidates[0].model.as_str(), s.weight_from.as_str()),
            ("qwen3-0.6b", "header")
        );
    }

    #[test]
    fn candidates_can_be_narrowed_and_nothing_scored_means_no_selection() {
        let c = cfg();
        let mut r = rule(0.0);
        r.candidates = vec!["qwen3-0.6b".into()];
        let s = select(&c, &r, &quality(), 10).unwrap();
        assert_eq!(s.candidates.len(), 1);
        assert!(select(&c, &r, &[("other".into(), 0.9)], 10).is_none());
    }
}
