//! Step 3 of the road, before any backend is called: the models that may serve this request, in
//! order (the decided model, its alternatives, the fallback), less those whose context is too
//! small for it (while another fits) and those whose PII policy bars what the request holds; for
//! models that mask instead, which types to mask.

use std::collections::{BTreeSet, HashMap};

use axum::http::{HeaderMap, HeaderValue};

use super::openai::Parsed;
use crate::config::{Config, ModelConfig, PiiAction};
use crate::decide::classifier::Classifier;
use crate::decide::pii::PiiType;
use crate::decide::pii_scan::PiiScan;
use crate::decide::{Decision, Source};
use crate::error::Error;

pub struct Candidates<'a> {
    pub models: Vec<&'a ModelConfig>,
    /// model -> PII types to mask in what it is sent.
    pub masks: HashMap<String, BTreeSet<PiiType>>,
    /// PII types the request holds (found only when some candidate has a PII policy).
    pub found: BTreeSet<PiiType>,
    /// Where the PII is, text by text (for masking).
    pub scan: PiiScan,
}

pub async fn candidates<'a>(
    cfg: &'a Config,
    d: &Decision,
    req: &Parsed,
    classifier: &Classifier,
) -> Result<Candidates<'a>, Error> {
    let mut order: Vec<&str> = vec![&d.model];
    order.extend(d.alternatives.iter().map(String::as_str));
    if d.source != Source::Explicit {
        order.extend(cfg.routing.fallback_model.as_deref());
    }
    // Each name once, first place kept (a few names: a scan beats hashing each).
    let mut unique: Vec<&str> = Vec::with_capacity(order.len());
    for m in order {
        if !unique.contains(&m) {
            unique.push(m);
        }
    }
    let order = unique;
    let mut models: Vec<_> = order.iter().filter_map(|m| cfg.model(m)).collect();
    if models.is_empty() {
        // A decision cached by a replica with other models (or an older config).
        models.extend(cfg.model(&cfg.routing.default_model));
    }
    // A model whose context cannot hold the request is passed over while another can take it
    // (estimate: 4 characters a token, plus the completion budget asked for).
    if models.iter().any(|m| m.max_context.is_some()) {
        let need = req.text_chars() / 4 + req.max_tokens.unwrap_or(0) as usize;
        let fits = |m: &&ModelConfig| m.max_context.is_none_or(|c| need <= c as usize);
        if models.iter().any(fits) && !models.iter().all(fits) {
            models.retain(fits);
            metrics::counter!("router_context_skips_total").increment(1);
        }
    }
    let mut out = Candidates {
        models,
        masks: HashMap::new(),
        found: BTreeSet::new(),
        scan: PiiScan::default(),
    };
    let wanted: BTreeSet<PiiType> = out
        .models
        .iter()
        .filter_map(|m| m.pii.as_ref())
        .flat_map(|p| p.denied())
        .collect();
    if wanted.is_empty() {
        return Ok(out);
    }
    out.scan = PiiScan::run(req.model_texts(), &wanted, classifier).await;
    out.found = out.scan.types();
    if out.found.is_empty() {
        return Ok(out);
    }
    for t in &out.found {
        metrics::counter!("router_pii_detected_total", "type" => t.as_str()).increment(1);
    }
    let (found, masks) = (&out.found, &mut out.masks);
    out.models.retain(|m| {
        let Some(policy) = &m.pii else { return true };
        let hit: BTreeSet<_> = policy.denied().intersection(found).copied().collect();
        match (hit.is_empty(), policy.action) {
            (true, _) => true,
            (false, PiiAction::Skip) => false,
            (false, PiiAction::Mask) => {
                masks.insert(m.name.clone(), hit);
                true
            }
        }
    });
    if out.models.is_empty() {
        metrics::counter!("router_rejected_total", "reason" => "pii").increment(1);
        return Err(Error::PiiNotAllowed(out.found_list()));
    }
    Ok(out)
}

impl Candidates<'_> {
    fn found_list(&self) -> String {
        self.found
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `x-vsr-pii` (types found) and `x-vsr-pii-masked` (when `served` got them masked).
    pub fn report(&self, served: &str, h: &mut HeaderMap) {
        if self.found.is_empty() {
            return;
        }
        if let Ok(v) = HeaderValue::from_str(&self.found_list()) {
            h.insert("x-vsr-pii", v);
        }
        if self.masks.contains_key(served) {
            h.insert("x-vsr-pii-masked", HeaderValue::from_static("true"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::openai::{parse, Kind};

    fn cfg() -> Config {
        let mut c = Config::from_yaml(crate::config::EMBEDDED_DEFAULT).unwrap();
        c.models[0].max_context = Some(100);
        c.models[1].pii = Some(crate::config::PiiPolicy {
            deny: vec!["US_SSN".into()],
            action: PiiAction::Skip,
        });
        c
    }

    fn req(text: &str, max_tokens: u64) -> Parsed {
        let body = serde_json::json!({"model": "auto", "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": text}]});
        parse(Kind::Chat, &body.to_string().into()).unwrap()
    }

    fn names(c: &Candidates) -> Vec<String> {
        c.models.iter().map(|m| m.name.clone()).collect()
    }

    #[tokio::test]
    async fn order_then_context_then_pii() {
        let c = cfg();
        // No classifier address: patterns alone (the e2e tests cover the classifier's PII task).
        let cl = Classifier::new(&crate::config::ClassifierConfig {
            addresses: vec![],
            ..Default::default()
        })
        .unwrap();
        let mut d = Decision::default_model(&c, Source::Classified);
        d.model = "qwen3-0.6b".into();
        d.alternatives = vec!["qwen3-8b".into()];
        let small = candidates(&c, &d, &req("hi", 10), &cl).await.unwrap();
        assert_eq!(names(&small), ["qwen3-0.6b", "qwen3-8b"]);
        // 100-token context: a long prompt goes to the model that holds it.
        let long = candidates(&c, &d, &req(&"word ".repeat(200), 10), &cl)
            .await
            .unwrap();
        assert_eq!(names(&long), ["qwen3-8b"]);
        // ...unless that one may not see it: PII skip wins, and nothing is left -> refused.
        let text = format!("{} ssn 123-45-6789", "word ".repeat(200));
        assert!(matches!(
            candidates(&c, &d, &req(&text, 10), &cl).await,
            Err(Error::PiiNotAllowed(_))
        ));
        let short = candidates(&c, &d, &req("ssn 123-45-6789", 10), &cl)
            .await
            .unwrap();
        assert_eq!(names(&short), ["qwen3-0.6b"]);
        assert_eq!(short.found.len(), 1);
    }
}
