//! Step 3 of the road, before any backend is called: the models that may serve this request, in
//! order (the decided model, its alternatives, the fallback), less those whose PII policy bars
//! what the request holds; for models that mask instead, which types to mask.

use std::collections::{BTreeSet, HashMap, HashSet};

use axum::http::{HeaderMap, HeaderValue};

use super::openai::Parsed;
use crate::config::{Config, ModelConfig, PiiAction};
use crate::decide::pii::{self, PiiType};
use crate::decide::{Decision, Source};
use crate::error::Error;

pub struct Candidates<'a> {
    pub models: Vec<&'a ModelConfig>,
    /// model -> PII types to mask in what it is sent.
    pub masks: HashMap<String, BTreeSet<PiiType>>,
    /// PII types the request holds (found only when some candidate has a PII policy).
    pub found: BTreeSet<PiiType>,
}

pub fn candidates<'a>(
    cfg: &'a Config,
    d: &Decision,
    req: &Parsed,
) -> Result<Candidates<'a>, Error> {
    let mut order: Vec<&str> = vec![&d.model];
    order.extend(d.alternatives.iter().map(String::as_str));
    if d.source != Source::Explicit {
        order.extend(cfg.routing.fallback_model.as_deref());
    }
    let mut seen = HashSet::new();
    order.retain(|m| seen.insert(*m));
    let mut models: Vec<_> = order.iter().filter_map(|m| cfg.model(m)).collect();
    if models.is_empty() {
        // A decision cached by a replica with other models (or an older config).
        models.extend(cfg.model(&cfg.routing.default_model));
    }
    let mut out = Candidates {
        models,
        masks: HashMap::new(),
        found: BTreeSet::new(),
    };
    if !out.models.iter().any(|m| m.pii.is_some()) {
        return Ok(out);
    }
    out.found = pii::types(&req.all_text());
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
