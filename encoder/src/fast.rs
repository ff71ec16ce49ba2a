//! The fast tier: a static model (`static_embed`) and its MLP heads, copied out of candle into
//! plain arrays and run one text at a time on the calling thread. A static model's pass is a
//! table look-up per token and two small products per head; through candle each of its ~20
//! ops costs more in dispatch and allocation than its arithmetic, so this path is several
//! times cheaper for one text and needs no thread pool. classifier-svc's cascade and
//! router-svc's stand-in for an absent classifier both run it; `Model::forward` stays the
//! reference, and the tests hold the two to the same probabilities.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};

use crate::config::{Activation, Arch, Pooling};
use crate::error::{Error, Result};
use crate::heads::{self, Head};
use crate::{LoadOptions, Model, Source, Truncation};

/// One layer, `y = x · w + b`, with `w` stored `(in, out)` row-major: each input scales one
/// contiguous row, which the compiler vectorises.
struct Dense {
    w: Vec<f32>,
    b: Vec<f32>,
    out: usize,
}

impl Dense {
    fn from(w: &Tensor, b: Option<&Tensor>) -> Result<Self> {
        let (_, out) = w.dims2()?;
        let w = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let b = match b {
            Some(b) => b.to_dtype(DType::F32)?.to_vec1()?,
            None => vec![0.0; out],
        };
        Ok(Self { w, b, out })
    }

    #[inline(always)]
    fn forward(&self, x: &[f32]) -> Vec<f32> {
        let mut y = self.b.clone();
        for (xi, row) in x.iter().zip(self.w.chunks_exact(self.out)) {
            if *xi != 0.0 {
                axpy(*xi, row, &mut y);
            }
        }
        y
    }
}

/// `y += a · x`.
#[inline(always)]
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// A sentence head over the pooled embedding and, for lexical heads, the text's token bag.
struct PlainHead {
    layers: Vec<Dense>,
    act: Activation,
    /// The first layer's token-bag rows `(features, out)` and the bag's shape (ids, bigrams).
    bag: Option<(Vec<f32>, usize, usize)>,
}

impl PlainHead {
    #[inline(always)]
    fn probabilities(&self, embedding: &[f32], bag: &[(usize, f32)]) -> Vec<f32> {
        let mut x = embedding.to_vec();
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(&x);
            if i == 0 {
                if let Some((w, _, _)) = &self.bag {
                    let rows = w.len() / l.out.max(1);
                    for &(f, v) in bag {
                        if f < rows {
                            axpy(v, &w[f * l.out..(f + 1) * l.out], &mut x);
                        }
                    }
                }
            }
            if i + 1 < self.layers.len() {
                x.iter_mut().for_each(|v| *v = activate(*v, self.act));
            }
        }
        softmax(&mut x);
        x
    }
}

fn activate(x: f32, act: Activation) -> f32 {
    match act {
        Activation::Relu => x.max(0.0),
        Activation::Tanh => x.tanh(),
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::GeluErf => 0.5 * x * (1.0 + libm::erff(x / std::f32::consts::SQRT_2)),
        Activation::GeluTanh => {
            let c = (2.0 / std::f32::consts::PI).sqrt();
            0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
        }
    }
}

fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    x.iter_mut().for_each(|v| *v /= sum);
}

/// One text through the fast tier.
#[derive(Debug, Clone)]
pub struct FastRun {
    /// `probs[task][label]` in `FastTier::model.tasks` order (empty for token heads).
    pub probs: Vec<Vec<f32>>,
    /// The L2-normalised pooled embedding of the whole (truncated) text.
    pub embedding: Vec<f32>,
    pub num_tokens: u32,
    pub truncated: bool,
    pub took: Duration,
}

/// A static model with its sentence heads and, per task, the cascade's confidence threshold.
pub struct FastTier {
    /// The loaded model: its tokenizer, metadata, heads' labels and windows.
    pub model: Model,
    table: Vec<f32>,
    dim: usize,
    /// Per task of `model.tasks`; None for a token head (not served here).
    heads: Vec<Option<PlainHead>>,
    /// task -> least top probability for the fast tier to answer by itself
    /// (`cascade.threshold` in head.json, from `semroute-train cascade`).
    thresholds: HashMap<String, f32>,
}

impl FastTier {
    /// The static model at `source` with the heads in `heads_dir`.
    pub fn load(source: &Source, heads_dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let model = Model::load_encoder(source, Some(heads_dir), opts)?;
        let mut thresholds = HashMap::new();
        for t in &model.tasks {
            let path = heads_dir.join(&t.name).join("head.json");
            let text = std::fs::read_to_string(&path)
                .map_err(|e| Error::load(path.display().to_string(), e))?;
            let spec: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::load(path.display().to_string(), e))?;
            if let Some(th) = spec["cascade"]["threshold"].as_f64() {
                if !(0.0..=1.0).contains(&th) {
                    return Err(Error::load(
                        path.display().to_string(),
                        format!("cascade.threshold {th} is not a probability"),
                    ));
                }
                thresholds.insert(t.name.clone(), th as f32);
            }
        }
        Self::new(model, thresholds)
    }

    /// Copies a loaded static model's table and MLP heads out of candle.
    pub fn new(model: Model, thresholds: HashMap<String, f32>) -> Result<Self> {
        let id = model.meta.versioned_id();
        let Some(table) = model.static_table() else {
            return Err(Error::load(
                &id,
                format!(
                    "the fast tier needs a static model, not {}",
                    model.meta.arch.as_str()
                ),
            ));
        };
        debug_assert_eq!(model.meta.arch, Arch::Static);
        let (_, dim) = table.dims2()?;
        let table = table.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let mut plain = Vec::with_capacity(model.tasks.len());
        for t in &model.tasks {
            plain.push(match &t.head {
                Head::Mlp {
                    layers,
                    act,
                    bag_weight,
                    ..
                } => {
                    let layers = layers
                        .iter()
                        .map(|l| {
                            let (w, b) = l.parts();
                            Dense::from(w, b)
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let (vocab, bigrams) = t.bag_shape();
                    let bag = match bag_weight {
                        Some(w) => Some((
                            w.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
                            vocab,
                            bigrams,
                        )),
                        None => None,
                    };
                    Some(PlainHead {
                        layers,
                        act: *act,
                        bag,
                    })
                }
                // A profile is built on its encoder's embeddings, not a static model's.
                Head::Token { .. } | Head::Profile { .. } => None,
                _ => {
                    return Err(Error::load(
                        &id,
                        format!("head {}: the fast tier runs MLP heads only", t.name),
                    ))
                }
            });
        }
        if plain.iter().all(Option::is_none) {
            return Err(Error::load(&id, "the fast tier has no sentence heads"));
        }
        Ok(Self {
            model,
            table,
            dim,
            heads: plain,
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

    /// `id@revision` of the model and its heads.
    pub fn version(&self) -> String {
        self.model.meta.versioned_id()
    }

    /// The L2-normalised embedding of token ids (special tokens included, as tokenized).
    #[inline(always)]
    pub fn embed_ids(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let rows = self.table.len() / self.dim.max(1);
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= rows) {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is past the static table's {rows} rows (tokenizer and table differ)"
            )));
        }
        let row = |i: u32| &self.table[i as usize * self.dim..(i as usize + 1) * self.dim];
        let mut v = vec![0.0f32; self.dim];
        match self.model.meta.pooling {
            Pooling::Cls => v.copy_from_slice(row(ids.first().copied().unwrap_or(0))),
            Pooling::Mean => {
                for &i in ids {
                    axpy(1.0, row(i), &mut v);
                }
                let n = ids.len().max(1) as f32;
                v.iter_mut().for_each(|x| *x /= n);
            }
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        v.iter_mut().for_each(|x| *x /= norm);
        Ok(v)
    }

    /// Every task's probabilities for token ids, and their embedding. The arithmetic is
    /// compiled twice: with AVX2 (8 lanes) where the CPU has it, else for the baseline target.
    fn run_ids(&self, ids: &[u32]) -> Result<(Vec<Vec<f32>>, Vec<f32>)> {
        #[cfg(target_arch = "x86_64")]
        if crate::ops::has_avx2() {
            // SAFETY: the CPU has AVX2 and FMA (checked at run time just above).
            return unsafe { self.run_ids_avx2(ids) };
        }
        self.run_ids_here(ids)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_ids_avx2(&self, ids: &[u32]) -> Result<(Vec<Vec<f32>>, Vec<f32>)> {
        self.run_ids_here(ids)
    }

    #[inline(always)]
    fn run_ids_here(&self, ids: &[u32]) -> Result<(Vec<Vec<f32>>, Vec<f32>)> {
        let embedding = self.embed_ids(ids)?;
        // Each bag shape once, whichever heads read it.
        let mut bags: Vec<((usize, usize), heads::Bag)> = Vec::new();
        let mut probs = Vec::with_capacity(self.heads.len());
        for h in &self.heads {
            let Some(h) = h else {
                probs.push(Vec::new());
                continue;
            };
            let bag: &[(usize, f32)] = match &h.bag {
                Some((_, vocab, bigrams)) => {
                    let shape = (*vocab, *bigrams);
                    let at = match bags.iter().position(|(s, _)| *s == shape) {
                        Some(at) => at,
                        None => {
                            bags.push((shape, heads::token_bag_with(ids, shape.0, shape.1)));
                            bags.len() - 1
                        }
                    };
                    &bags[at].1
                }
                None => &[],
            };
            probs.push(h.probabilities(&embedding, bag));
        }
        Ok((probs, embedding))
    }

    /// One text: tokenized, every sentence head, and the windows of a windowed head when the
    /// text is longer than one window.
    pub fn classify(&self, text: &str, truncation: Truncation) -> Result<FastRun> {
        let start = Instant::now();
        let m = &self.model;
        if text.trim().is_empty() {
            return Err(Error::InvalidArgument("text is empty".into()));
        }
        // Tokenized once, whole: the (truncated) text and its windows both come from it.
        let content = m.content_ids(text)?;
        let (pre, post) = m.wrap();
        let windows = match m.window() {
            Some(w) if pre.len() + content.len() + post.len() > w.tokens => m.windows_of(&content),
            _ => Vec::new(),
        };
        let e = m.encode_content(content, truncation)?;
        let (mut probs, embedding) = self.run_ids(&e.ids)?;
        if !windows.is_empty() {
            let windows = windows
                .iter()
                .map(|ids| self.run_ids(ids).map(|r| r.0))
                .collect::<Result<Vec<_>>>()?;
            m.apply_windows(&mut probs, &windows);
        }
        Ok(FastRun {
            probs,
            embedding,
            num_tokens: e.ids.len() as u32,
            truncated: e.truncated,
            took: start.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    /// The plain path and candle's batched forward give the same embedding and probabilities,
    /// windows included.
    #[test]
    fn the_plain_path_matches_the_candle_forward() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (model_dir, heads_dir) = fixtures::static_with_heads(dir.path())?;
        let source = Source::Local(model_dir);
        let opts = LoadOptions::default();
        let reference = Model::load_encoder(&source, Some(&heads_dir), &opts)?;
        let fast = FastTier::load(&source, &heads_dir, &opts)?;
        assert_eq!(fast.version(), reference.meta.versioned_id());
        let long = "lorem ipsum dolor sit amet ".repeat(200);
        // Not ASCII: the tokenizers pipeline, truncation and windows included.
        let long_accented = "héllo wörld, ça va? ".repeat(150);
        for text in [
            "hello there",
            "a b c d e f",
            long.as_str(),
            long_accented.as_str(),
        ] {
            let run = fast.classify(text, Truncation::Truncate)?;
            let e = reference.tokenize(text, Truncation::Truncate)?;
            let mut windows: Vec<Vec<u32>> = Vec::new();
            if let Some(w) = reference.window() {
                if e.truncated || e.ids.len() > w.tokens {
                    windows = reference.windows(text)?;
                }
            }
            let mut seqs: Vec<&[u32]> = vec![&e.ids];
            seqs.extend(windows.iter().map(Vec::as_slice));
            let out = reference.run(&seqs)?;
            let mut probs = out.probs;
            let mut whole = probs.remove(0);
            reference.apply_windows(&mut whole, &probs);
            for (a, b) in run.embedding.iter().zip(&out.embeddings[0]) {
                assert!((a - b).abs() < 1e-5, "{text}: embedding {a} vs {b}");
            }
            assert_eq!(run.probs.len(), whole.len());
            for (pa, pb) in run.probs.iter().zip(&whole) {
                assert_eq!(pa.len(), pb.len());
                for (a, b) in pa.iter().zip(pb) {
                    assert!((a - b).abs() < 1e-4, "{text}: probability {a} vs {b}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn a_transformer_is_not_a_fast_tier() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let model_dir = dir.path().join("bert");
        fixtures::write_checkpoint(&model_dir, &fixtures::Spec::tiny(Arch::Bert))?;
        let model = Model::load_encoder(&Source::Local(model_dir), None, &LoadOptions::default())?;
        let err = FastTier::new(model, HashMap::new()).err().expect("refused");
        assert!(err.to_string().contains("static model"), "{err}");
        Ok(())
    }
}
