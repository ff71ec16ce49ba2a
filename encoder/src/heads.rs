//! Classification heads: what turns encoder output into label probabilities.
//!
//! Two layouts:
//! - shared-encoder heads (`<heads dir>/<task>/head.json` + `head.safetensors`): a linear layer or a
//!   small MLP over the pooled, L2-normalised sentence embedding, so one encoder pass serves every
//!   task;
//! - the head of a Hugging Face sequence-classification checkpoint (BERT pooler + classifier, or
//!   ModernBERT pooling + prediction head + classifier), exactly as its config says.

use std::collections::HashSet;
use std::path::Path;

use candle_core::{Device, Module, Tensor, D};
use candle_nn::{LayerNorm, VarBuilder};
use serde::{Deserialize, Serialize};

use super::config::{Activation, Arch, EncoderConfig, Pooling};
use super::ops::{self, Linear};
use crate::error::{Error, Result};

/// `head.json` of a shared-encoder head.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadSpec {
    /// Task name; defaults to the directory name.
    #[serde(default)]
    pub task: String,
    pub labels: Vec<String>,
    /// Activation between MLP layers (ignored for a single linear layer).
    #[serde(default = "default_act")]
    pub activation: String,
    /// Lexical features beside the embedding: the first layer also reads a bag of the text's
    /// token ids (`token_bag`) of this many dimensions (the vocabulary size); 0 = none.
    #[serde(default)]
    pub token_features: usize,
    /// Adjacent token-id pairs hashed into this many more buckets after the token ids (all
    /// heads of one encoder that use them must agree on the count).
    #[serde(default)]
    pub bigram_buckets: usize,
    /// `token`: a token-classification head (BIO labels per token, `model::spans`); otherwise
    /// (`linear`, `mlp`, absent) a sentence head.
    #[serde(default)]
    pub kind: String,
    /// Token heads: neighbouring tokens on each side whose hidden states a token also reads.
    #[serde(default)]
    pub context: usize,
    /// A detector's positive label (with `window`: the label whose probability picks the window).
    #[serde(default)]
    pub positive: Option<String>,
    /// Judge long texts in overlapping windows as well as whole (a guard: an attack padded
    /// with a harmless essay is not diluted by it); the answer is the window, or the whole text,
    /// with the highest probability of `positive`.
    #[serde(default)]
    pub window: Option<WindowSpec>,
}

/// `window` of head.json: windows of `tokens` tokens (special tokens included) every `stride`
/// tokens over the whole text (beyond the encoder's max length too), at most `max_windows`
/// of them (evenly spread, the first and the last always among them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSpec {
    pub tokens: usize,
    pub stride: usize,
    pub max_windows: usize,
}

/// A windowed head's settings, with the index of the label that picks the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub spec: WindowSpec,
    pub positive: usize,
}

impl WindowSpec {
    /// Start offsets of the windows over `n` content tokens (none when the text fits one).
    pub fn starts(&self, n: usize) -> Vec<usize> {
        let size = self.tokens.saturating_sub(2).max(1);
        if n <= size || self.max_windows == 0 {
            return Vec::new();
        }
        let stride = self.stride.max(1);
        let last = n - size;
        let mut all: Vec<usize> = (0..last).step_by(stride).collect();
        all.push(last);
        if all.len() > self.max_windows {
            let k = self.max_windows.max(2);
            all = (0..k).map(|i| all[i * (all.len() - 1) / (k - 1)]).collect();
            all.dedup();
        }
        all
    }
}

/// Replaces `whole` (one text's label probabilities) by the window's whose `positive`
/// probability is highest, when that is higher than the whole text's.
pub fn pick_window<'a>(
    whole: &mut Vec<f32>,
    windows: impl IntoIterator<Item = &'a [f32]>,
    positive: usize,
) {
    for w in windows {
        if w.get(positive) > whole.get(positive) {
            *whole = w.to_vec();
        }
    }
}

/// The bag-of-token-ids features of one tokenized text: `log(1 + count)` per id, L2-normalised,
/// special tokens at both ends left out; sparse `(id, value)`. Training and serving share it.
pub fn token_bag(ids: &[u32], dim: usize) -> Vec<(usize, f32)> {
    token_bag_with(ids, dim, 0)
}

/// `token_bag` over `vocab` ids, plus adjacent id pairs hashed into `bigrams` more buckets.
pub fn token_bag_with(ids: &[u32], vocab: usize, bigrams: usize) -> Vec<(usize, f32)> {
    let inner = if ids.len() > 2 {
        &ids[1..ids.len() - 1]
    } else {
        &[][..]
    };
    // Feature indices, sorted and counted (a sort of a few dozen beats a tree map).
    let mut feats: Vec<usize> = inner
        .iter()
        .map(|&id| id as usize)
        .filter(|&id| id < vocab)
        .collect();
    if bigrams > 0 {
        for w in inner.windows(2) {
            // FNV-1a over the pair: stable across builds and platforms.
            let mut h: u64 = 0xcbf29ce484222325;
            for b in w[0].to_le_bytes().into_iter().chain(w[1].to_le_bytes()) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x100000001b3);
            }
            feats.push(vocab + (h % bigrams as u64) as usize);
        }
    }
    feats.sort_unstable();
    let mut counts: Vec<(usize, f32)> = Vec::with_capacity(feats.len());
    for f in feats {
        match counts.last_mut() {
            Some((i, c)) if *i == f => *c += 1.0,
            _ => counts.push((f, 1.0)),
        }
    }
    let mut v: Vec<(usize, f32)> = counts.into_iter().map(|(i, c)| (i, c.ln_1p())).collect();
    let norm = v.iter().map(|(_, x)| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for (_, x) in &mut v {
            *x /= norm;
        }
    }
    v
}

/// One text's token bag: `(feature index, value)` pairs (`token_bag_with`).
pub type Bag = Vec<(usize, f32)>;

/// `x + bags · w`: row `r` of `x` `(b, out)` gets `value · w[index]` for every `(index, value)`
/// of `bags[r]` (indices past `w`'s rows are ignored).
fn add_sparse(x: &Tensor, w: &Tensor, bags: &[Bag]) -> candle_core::Result<Tensor> {
    let n = w.dim(0)?;
    let (mut rows, mut idx, mut val) = (Vec::new(), Vec::new(), Vec::new());
    for (r, bag) in bags.iter().enumerate() {
        for &(i, v) in bag.iter().filter(|(i, _)| *i < n) {
            rows.push(r as u32);
            idx.push(i as u32);
            val.push(v);
        }
    }
    if idx.is_empty() {
        return Ok(x.clone());
    }
    let dev = x.device();
    let nnz = idx.len();
    let picked = w.index_select(&Tensor::new(idx, dev)?, 0)?;
    let scaled =
        picked.broadcast_mul(&Tensor::from_vec(val, (nnz, 1), dev)?.to_dtype(picked.dtype())?)?;
    x.index_add(&Tensor::new(rows, dev)?, &scaled, 0)
}

fn default_act() -> String {
    "relu".into()
}

pub enum Head {
    /// Over the normalised pooled embedding: `layers.0`, `layers.1`, ... with `act` between.
    Mlp {
        /// With token features, `layers.0` holds only the embedding's columns of the stored
        /// first layer; the bag's columns are `bag_weight`.
        layers: Vec<Linear>,
        act: Activation,
        /// Width of the token-bag input beside the embedding (0 = embedding only), bigram
        /// buckets included.
        token_features: usize,
        bigram_buckets: usize,
        /// The first layer's token-bag columns, transposed `(token_features, out)`: a text's
        /// bag has a few dozen entries, so its product is a gather of that many rows instead
        /// of a dense product over the whole vocabulary (whose weights would be read from
        /// memory in full for every batch).
        bag_weight: Option<Tensor>,
    },
    /// Per token over `model::spans::token_inputs` (hidden state, `context` neighbours each side,
    /// spelling features): `layers.0`, ... with `act` between; labels are BIO tags.
    Token {
        layers: Vec<Linear>,
        act: Activation,
        context: usize,
    },
    /// BERT: tanh(pooler(CLS)) -> classifier.
    BertPooler { pooler: Linear, classifier: Linear },
    /// A model profile (`profile.rs`): each model's expected score from the stored prompts
    /// nearest the embedding; `table` is the stored embeddings transposed `(dim, rows)`, on the
    /// device, for the similarity product.
    Profile {
        profile: std::sync::Arc<super::profile::Profile>,
        table: Tensor,
    },
    /// ModernBERT: pool -> dense -> act -> norm -> classifier.
    ModernBert {
        pooling: Pooling,
        dense: Linear,
        act: Activation,
        norm: LayerNorm,
        classifier: Linear,
    },
}

pub struct TaskHead {
    pub name: String,
    pub labels: Vec<String>,
    pub head: Head,
    /// Long texts judged in windows too (`WindowSpec`); sentence heads of layout b only.
    pub window: Option<Window>,
}

impl TaskHead {
    pub fn kind(&self) -> &'static str {
        match self.head {
            Head::Mlp { .. } => "head",
            Head::Token { .. } => "token_classification",
            Head::Profile { .. } => "profile",
            _ => "sequence_classification",
        }
    }

    pub fn is_token(&self) -> bool {
        matches!(self.head, Head::Token { .. })
    }

    /// Entity types of a token head (from its `B-` labels), in label order.
    pub fn entity_types(&self) -> Vec<String> {
        self.labels
            .iter()
            .filter_map(|l| l.strip_prefix("B-").map(str::to_string))
            .collect()
    }

    /// A token head's label probabilities for every token of every row: `hidden[row][token]`
    /// (padding left out), `shapes[row]` the rows' spelling features (missing rows: zeros).
    /// Returns `[row][token][label]`; empty for sentence heads.
    pub fn token_probabilities(
        &self,
        hidden: &[Vec<Vec<f32>>],
        shapes: &[Vec<f32>],
        device: &Device,
    ) -> candle_core::Result<Vec<Vec<Vec<f32>>>> {
        let Head::Token {
            layers,
            act,
            context,
        } = &self.head
        else {
            return Ok(Vec::new());
        };
        let h = hidden.iter().find_map(|r| r.first()).map_or(0, |t| t.len());
        let width = super::spans::token_input_width(h, *context);
        let mut flat = Vec::new();
        for (i, rows) in hidden.iter().enumerate() {
            let shape = shapes.get(i).map_or(&[][..], |s| s.as_slice());
            flat.extend(super::spans::token_inputs(rows, shape, *context));
        }
        let n = flat.len() / width.max(1);
        if n == 0 {
            return Ok(hidden.iter().map(|_| Vec::new()).collect());
        }
        let mut x = Tensor::from_vec(flat, (n, width), device)?.to_dtype(layers[0].dtype())?;
        for (i, l) in layers.iter().enumerate() {
            x = l.forward(&x)?;
            if i + 1 < layers.len() {
                x = ops::activate(&x, *act)?;
            }
        }
        let p: Vec<Vec<f32>> =
            candle_nn::ops::softmax(&x.to_dtype(candle_core::DType::F32)?, D::Minus1)?.to_vec2()?;
        let mut it = p.into_iter();
        Ok(hidden
            .iter()
            .map(|rows| it.by_ref().take(rows.len()).collect())
            .collect())
    }

    /// Dimensions of the token bag this head reads (0 = none).
    pub fn token_features(&self) -> usize {
        match self.head {
            Head::Mlp { token_features, .. } => token_features,
            _ => 0,
        }
    }

    /// (token-id width, bigram buckets) of the bag this head reads.
    pub fn bag_shape(&self) -> (usize, usize) {
        match self.head {
            Head::Mlp {
                token_features,
                bigram_buckets,
                ..
            } => (token_features - bigram_buckets, bigram_buckets),
            _ => (0, 0),
        }
    }

    /// Label probabilities `(b, labels)` from the hidden states, the pooled embedding and (for
    /// heads with lexical features) each row's token bag of this head's `bag_shape`.
    pub fn probabilities(
        &self,
        hidden: &Tensor,
        lengths: &[usize],
        embedding: &Tensor,
        bags: Option<&[Bag]>,
    ) -> candle_core::Result<Tensor> {
        if let Head::Profile { profile, table } = &self.head {
            // Expected scores, not a distribution: no softmax.
            let sims = embedding
                .to_dtype(candle_core::DType::F32)?
                .matmul(table)?
                .to_vec2::<f32>()?;
            let rows: Vec<Vec<f32>> = sims.iter().map(|s| profile.predict(s)).collect();
            return Tensor::new(rows, embedding.device());
        }
        let logits = match &self.head {
            Head::Mlp {
                layers,
                act,
                bag_weight,
                ..
            } => {
                let mut x = embedding.clone();
                for (i, l) in layers.iter().enumerate() {
                    x = l.forward(&x)?;
                    if i == 0 {
                        if let Some(w) = bag_weight {
                            let Some(bags) = bags else {
                                candle_core::bail!("head {} needs token features", self.name)
                            };
                            x = add_sparse(&x, w, bags)?;
                        }
                    }
                    if i + 1 < layers.len() {
                        x = ops::activate(&x, *act)?;
                    }
                }
                x
            }
            Head::Token { .. } => candle_core::bail!("a token head has no sentence probabilities"),
            Head::Profile { .. } => unreachable!("answered above"),
            Head::BertPooler { pooler, classifier } => {
                let pooled = pooler.forward(&ops::cls_pool(hidden)?)?.tanh()?;
                classifier.forward(&pooled)?
            }
            Head::ModernBert {
                pooling,
                dense,
                act,
                norm,
                classifier,
            } => {
                let pooled = match pooling {
                    Pooling::Cls => ops::cls_pool(hidden)?,
                    Pooling::Mean => ops::mean_pool(hidden, lengths)?,
                };
                let x = ops::activate(&dense.forward(&pooled)?, *act)?;
                classifier.forward(&norm.forward(&x)?)?
            }
        };
        candle_nn::ops::softmax(&logits.to_dtype(candle_core::DType::F32)?, D::Minus1)
    }

    /// A model profile (`profile.rs`) served as a head over the pooled embedding.
    pub fn load_profile(dir: &Path, hidden_size: usize, device: &Device) -> Result<Self> {
        let profile = super::profile::Profile::load(dir)?;
        if profile.dim() != hidden_size {
            return Err(Error::load(
                dir.display().to_string(),
                format!(
                    "profile embeddings have {} dimensions, the encoder {hidden_size} (built on {})",
                    profile.dim(),
                    profile.spec.encoder
                ),
            ));
        }
        let table = Tensor::from_slice(
            profile.embeddings(),
            (profile.rows(), profile.dim()),
            device,
        )?
        .t()?
        .contiguous()?;
        Ok(Self {
            name: profile.spec.task.clone(),
            labels: profile.spec.labels.clone(),
            head: Head::Profile {
                profile: std::sync::Arc::new(profile),
                table,
            },
            window: None,
        })
    }

    /// The head of a sequence-classification checkpoint, with labels from its config.
    pub fn from_checkpoint(
        task: &str,
        vb: &VarBuilder,
        cfg: &EncoderConfig,
        model: &str,
    ) -> Result<Self> {
        let labels = cfg.labels.clone().ok_or_else(|| {
            Error::load(
                model,
                "config.json has no id2label: not a sequence-classification checkpoint",
            )
        })?;
        let h = cfg.hidden_size;
        let n = labels.len();
        let classifier = Linear::load(&vb.pp("classifier"), h, n).map_err(|e| {
            Error::load(
                model,
                format!("classifier weights do not match the {n} labels of id2label: {e}"),
            )
        })?;
        let head = match cfg.arch {
            Arch::Static => {
                return Err(Error::load(
                    model,
                    "a static model has no sequence-classification head (train heads for it)",
                ))
            }
            Arch::Bert => {
                let p = super::bert::prefix(vb);
                Head::BertPooler {
                    pooler: Linear::load(&vb.pp(format!("{p}pooler.dense")), h, h)
                        .map_err(|e| Error::load(model, format!("pooler: {e}")))?,
                    classifier,
                }
            }
            Arch::ModernBert => Head::ModernBert {
                pooling: cfg.classifier_pooling,
                dense: Linear::load(&vb.pp("head.dense"), h, h)
                    .map_err(|e| Error::load(model, format!("head.dense: {e}")))?,
                act: cfg.classifier_activation,
                norm: ops::layer_norm(&vb.pp("head.norm"), h, cfg.layer_norm_eps)
                    .map_err(|e| Error::load(model, format!("head.norm: {e}")))?,
                classifier,
            },
        };
        Ok(TaskHead {
            name: task.to_string(),
            labels,
            head,
            window: None,
        })
    }

    /// Loads every `<dir>/<task>/head.json` + `head.safetensors`, sorted by task name.
    pub fn load_dir(dir: &Path, hidden_size: usize, device: &Device) -> Result<Vec<Self>> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| Error::load(dir.display().to_string(), format!("heads dir: {e}")))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("head.json").is_file())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        let mut heads = Vec::with_capacity(entries.len());
        let mut seen = HashSet::new();
        for e in entries {
            let head = Self::load_head(&e.path(), hidden_size, device)?;
            if !seen.insert(head.name.clone()) {
                return Err(Error::load(
                    dir.display().to_string(),
                    format!("two heads for task {:?}", head.name),
                ));
            }
            heads.push(head);
        }
        let shapes: HashSet<(usize, usize)> = heads
            .iter()
            .map(|h| h.bag_shape())
            .filter(|s| s.0 > 0)
            .collect();
        if shapes.iter().map(|s| s.0).collect::<HashSet<_>>().len() > 1
            || shapes
                .iter()
                .map(|s| s.1)
                .filter(|b| *b > 0)
                .collect::<HashSet<_>>()
                .len()
                > 1
        {
            return Err(Error::load(
                dir.display().to_string(),
                format!("heads disagree on their token features {shapes:?}"),
            ));
        }
        Ok(heads)
    }

    fn load_head(dir: &Path, hidden_size: usize, device: &Device) -> Result<Self> {
        let name = dir.display().to_string();
        let text = std::fs::read_to_string(dir.join("head.json"))
            .map_err(|e| Error::load(&name, format!("head.json: {e}")))?;
        if serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .is_some_and(|v| v["kind"] == "profile")
        {
            return Self::load_profile(dir, hidden_size, device);
        }
        let mut spec: HeadSpec = serde_json::from_str(&text)
            .map_err(|e| Error::load(&name, format!("head.json: {e}")))?;
        if spec.task.is_empty() {
            spec.task = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        if spec.labels.len() < 2 {
            return Err(Error::load(
                &name,
                "head.json: a head needs at least 2 labels",
            ));
        }
        if spec.labels.iter().collect::<HashSet<_>>().len() != spec.labels.len() {
            return Err(Error::load(&name, "head.json: duplicate labels"));
        }
        let act = Activation::parse(&spec.activation).map_err(|e| Error::load(&name, e))?;
        let tensors = candle_core::safetensors::load(dir.join("head.safetensors"), device)
            .map_err(|e| Error::load(&name, format!("head.safetensors: {e}")))?;
        let token = spec.kind == "token";
        if token
            && (spec.labels.first().map(String::as_str) != Some("O")
                || spec.labels[1..]
                    .iter()
                    .any(|l| !l.starts_with("B-") && !l.starts_with("I-")))
        {
            return Err(Error::load(
                &name,
                "head.json: a token head's labels are O, then B-TYPE / I-TYPE",
            ));
        }
        let mut layers = Vec::new();
        let mut in_dim = if token {
            super::spans::token_input_width(hidden_size, spec.context)
        } else {
            hidden_size + spec.token_features + spec.bigram_buckets
        };
        if spec.bigram_buckets > 0 && spec.token_features == 0 {
            return Err(Error::load(
                &name,
                "head.json: bigram_buckets needs token_features",
            ));
        }
        while let Some(w) = tensors.get(&format!("layers.{}.weight", layers.len())) {
            let (out, inp) = w
                .dims2()
                .map_err(|e| Error::load(&name, format!("layers.{}.weight: {e}", layers.len())))?;
            if inp != in_dim {
                return Err(Error::load(
                    &name,
                    format!(
                        "layers.{}.weight takes {inp} inputs, expected {in_dim} (encoder hidden size or previous layer)",
                        layers.len()
                    ),
                ));
            }
            let b = tensors
                .get(&format!("layers.{}.bias", layers.len()))
                .cloned();
            layers.push(Linear::new(w.clone(), b)?);
            in_dim = out;
        }
        if layers.is_empty() {
            return Err(Error::load(
                &name,
                "head.safetensors has no layers.0.weight",
            ));
        }
        if in_dim != spec.labels.len() {
            return Err(Error::load(
                &name,
                format!(
                    "last layer has {in_dim} outputs but head.json lists {} labels",
                    spec.labels.len()
                ),
            ));
        }
        if token {
            return Ok(TaskHead {
                name: spec.task,
                labels: spec.labels,
                head: Head::Token {
                    layers,
                    act,
                    context: spec.context,
                },
                window: None,
            });
        }
        let window = match spec.window {
            None => None,
            Some(w) => {
                let positive = spec
                    .positive
                    .as_ref()
                    .and_then(|p| spec.labels.iter().position(|l| l == p))
                    .ok_or_else(|| {
                        Error::load(&name, "head.json: window needs positive, one of the labels")
                    })?;
                if w.tokens < 8 || w.stride == 0 || w.stride > w.tokens {
                    return Err(Error::load(
                        &name,
                        "head.json: window needs tokens >= 8 and 0 < stride <= tokens",
                    ));
                }
                Some(Window { spec: w, positive })
            }
        };
        let bag_width = spec.token_features + spec.bigram_buckets;
        let bag_weight = if bag_width > 0 {
            // Split the first layer: the embedding's columns stay a Linear, the bag's are
            // kept one row per bag entry for gathers.
            let (emb, bag) = layers[0]
                .split_inputs(hidden_size)
                .map_err(|e| Error::load(&name, format!("layers.0.weight: {e}")))?;
            layers[0] = emb;
            Some(bag)
        } else {
            None
        };
        Ok(TaskHead {
            window,
            name: spec.task,
            labels: spec.labels,
            head: Head::Mlp {
                layers,
                act,
                token_features: bag_width,
                bigram_buckets: spec.bigram_buckets,
                bag_weight,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{pick_window, token_bag, token_bag_with, WindowSpec};

    #[test]
    fn windows_cover_the_text_and_are_capped() {
        let w = WindowSpec {
            tokens: 10,
            stride: 4,
            max_windows: 100,
        };
        assert!(w.starts(8).is_empty(), "fits one window: judged whole");
        let s = w.starts(20);
        assert_eq!(s, [0, 4, 8, 12]);
        assert_eq!(
            *s.last().unwrap() + 8,
            20,
            "the last window ends at the text's end"
        );
        let capped = WindowSpec {
            max_windows: 3,
            ..w
        }
        .starts(1000);
        assert_eq!(capped.len(), 3);
        assert_eq!((capped[0], capped[2]), (0, 992));
    }

    #[test]
    fn the_most_positive_window_wins() {
        let mut whole = vec![0.9, 0.1];
        pick_window(
            &mut whole,
            [&[0.8f32, 0.2][..], &[0.3, 0.7], &[0.5, 0.5]],
            1,
        );
        assert_eq!(whole, [0.3, 0.7]);
        let mut whole = vec![0.1, 0.9];
        pick_window(&mut whole, [&[0.8f32, 0.2][..]], 1);
        assert_eq!(whole, [0.1, 0.9]);
    }

    #[test]
    fn bigrams_land_after_the_vocabulary_and_are_stable() {
        let a = token_bag_with(&[101, 5, 7, 5, 7, 102], 200, 16);
        let pairs: Vec<_> = a.iter().filter(|(i, _)| *i >= 200).collect();
        assert!(!pairs.is_empty() && pairs.iter().all(|(i, _)| *i < 216));
        assert_eq!(a, token_bag_with(&[101, 5, 7, 5, 7, 102], 200, 16));
        assert_eq!(
            token_bag_with(&[101, 5, 7, 102], 200, 0),
            token_bag(&[101, 5, 7, 102], 200)
        );
    }

    #[test]
    fn token_bag_skips_the_ends_counts_and_normalises() {
        // [CLS] 5 7 5 [SEP]
        let bag = token_bag(&[101, 5, 7, 5, 102], 200);
        assert_eq!(bag.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [5, 7]);
        let norm: f32 = bag.iter().map(|(_, v)| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-6);
        assert!(bag[0].1 > bag[1].1, "two occurrences weigh more than one");
        assert!(token_bag(&[101, 102], 200).is_empty());
        assert!(
            token_bag(&[101, 500, 102], 200).is_empty(),
            "ids past the width are dropped"
        );
    }
}
