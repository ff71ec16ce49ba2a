//! `semroute-train train`: one head per task on the shared (frozen) encoder. Embeds the data once
//! (cached on disk, so another head on the same data is fast), splits it stratified with a fixed
//! seed into train / validation (early stopping, thresholds) / test (the reported figures),
//! trains a linear or small-MLP head with class weights and AdamW, and writes the head in the
//! format classifier-svc serves (`models/README.md`) with its metrics and a model card.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use clap::Args;
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::dataset::{self, Row, Scores};
use semroute_encoder::{LoadOptions, Model, Source, Truncation};

#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Task name (the head's directory and the name clients ask for).
    #[arg(long)]
    pub task: String,
    #[command(flatten)]
    pub input: dataset::DataArgs,
    /// A finer kind to report per group on the test split (e.g. the jailbreak data's category).
    #[arg(long)]
    pub group_field: Option<String>,
    /// Heads directory to write `<task>/` into.
    #[arg(long, default_value = "models/heads")]
    pub out: PathBuf,
    /// Shared encoder: a local directory or hf:org/name[@revision].
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    pub encoder: String,
    /// Tokens per text when embedding (longer texts are truncated); serving uses 512.
    #[arg(long, default_value_t = 512)]
    pub max_length: usize,
    /// Lexical features beside the embedding: a bag of the text's token ids (vocabulary-wide,
    /// `log(1+count)`, L2-normalised), from the same tokenization as the encoder pass.
    #[arg(long)]
    pub token_features: bool,
    /// With --token-features: also adjacent token-id pairs, hashed into this many buckets.
    #[arg(long, default_value_t = 0)]
    pub bigram_buckets: usize,
    /// Hidden units of the MLP head; 0 = a linear head.
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    #[arg(long, default_value_t = 0.1)]
    pub dropout: f32,
    #[arg(long, default_value_t = 300)]
    pub epochs: usize,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    /// Epochs without a better validation macro-F1 before stopping.
    #[arg(long, default_value_t = 25)]
    pub patience: usize,
    #[command(flatten)]
    pub splits: SplitArgs,
    /// Binary detectors: the positive label, and the false-positive rate its threshold is set
    /// for on the validation split (written to head.json as `threshold`).
    #[arg(long)]
    pub positive: Option<String>,
    #[arg(long, default_value_t = 0.03)]
    pub max_fpr: f64,
    /// Where embeddings of data files are cached.
    #[arg(long, default_value = "models/cache/embeddings")]
    pub cache_dir: PathBuf,
    /// With --positive: a weak/strong pair as WEAK_FIELD,STRONG_FIELD (JSON pointers to whether
    /// each model answered right, e.g. /correct/mixtral-8x7b-instruct,/correct/gpt-4o); the
    /// test split's quality-vs-strong-share curve (PGR, APGR, CPT) is reported for it.
    /// Repeatable.
    #[arg(long = "quality-pair")]
    pub quality_pairs: Vec<String>,
    /// Train a token-classification head instead: this field holds each text's entity spans
    /// (`[{entity_type, start, end}]`, character offsets); `--label-map` maps entity types.
    #[arg(long)]
    pub spans_field: Option<String>,
    /// Weight examples so each group (`--group-field`) of a label counts alike (square-rooted
    /// inverse group frequency within the label): small kinds are not drowned by large ones.
    #[arg(long)]
    pub balance_groups: bool,
    /// Token heads: neighbouring tokens on each side whose hidden states a token also reads.
    #[arg(long, default_value_t = 1)]
    pub context: usize,
    /// Add this many perturbed copies of every training row (harmless words, sentences and
    /// greetings before or after, case, spacing, look-alike letters: `perturb::train_edit`), so
    /// that such edits do not move the head. Validation and test rows stay as they are.
    #[arg(long, default_value_t = 0)]
    pub augment: usize,
    /// Temperature scaling: one temperature fitted on the validation split (least negative
    /// log-likelihood) and folded into the last layer, so probabilities mean what they say;
    /// expected calibration error before / after on the test split goes to metrics and card.
    #[arg(long)]
    pub calibrate: bool,
    /// A detector that also judges long texts in windows as served: TOKENS,STRIDE,MAX_WINDOWS
    /// (written to head.json as `window`; `guard-robustness --rethreshold` then sets the
    /// threshold on the validation split as served). With --augment, every positive training
    /// row also gets a copy padded with benign training text to about a window's length.
    #[arg(long)]
    pub window: Option<String>,
}

/// `--window TOKENS,STRIDE,MAX_WINDOWS`.
fn parse_window(w: &str) -> anyhow::Result<[usize; 3]> {
    let n: Vec<usize> = w
        .split(',')
        .map(|x| x.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("--window {w:?}: {e}"))?;
    n.try_into()
        .map_err(|_| anyhow::anyhow!("--window {w:?} is TOKENS,STRIDE,MAX_WINDOWS"))
}

/// Embeds `texts` with `model`, 32 at a time in length order, cached under `cache_dir` by the
/// encoder revision, max length and the texts themselves.
pub fn embed_cached(
    model: &Model,
    texts: &[&str],
    max_length: usize,
    cache_dir: &Path,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut h = Sha256::new();
    h.update(model.meta.revision.as_bytes());
    h.update(max_length.to_le_bytes());
    for t in texts {
        h.update((t.len() as u64).to_le_bytes());
        h.update(t.as_bytes());
    }
    let path = cache_dir.join(format!("{}.safetensors", hex::encode(&h.finalize()[..16])));
    if let Ok(t) = candle_core::safetensors::load(&path, &Device::Cpu) {
        if let Some(e) = t.get("embeddings") {
            eprintln!(
                "embeddings: {} texts from cache {}",
                texts.len(),
                path.display()
            );
            return Ok(e.to_vec2()?);
        }
    }
    let started = Instant::now();
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| {
            Ok(truncate_ids(
                model.tokenize(t, Truncation::Truncate)?.ids,
                max_length,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    let mut out = vec![Vec::new(); ids.len()];
    let mut done = 0;
    let mut next_report = 0.0;
    for chunk in order.chunks(32) {
        let seqs: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
        let res = model.run(&seqs)?;
        for (&i, e) in chunk.iter().zip(res.embeddings) {
            out[i] = e;
        }
        done += chunk.len();
        let frac = done as f64 / ids.len() as f64;
        if frac >= next_report {
            eprintln!(
                "embedding: {done}/{} ({:.0}%), {:.0} texts/s",
                ids.len(),
                frac * 100.0,
                done as f64 / started.elapsed().as_secs_f64().max(1e-9)
            );
            next_report += 0.1;
        }
    }
    std::fs::create_dir_all(cache_dir)?;
    let dim = out[0].len();
    let flat: Vec<f32> = out.iter().flatten().copied().collect();
    let t = Tensor::from_vec(flat, (out.len(), dim), &Device::Cpu)?;
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("embeddings".to_string(), t)]),
        &path,
    )?;
    Ok(out)
}

/// Cuts token ids to `max_length`, keeping the final [SEP] so the sequence stays well-formed.
pub(crate) fn truncate_ids(mut ids: Vec<u32>, max_length: usize) -> Vec<u32> {
    if ids.len() > max_length && max_length >= 2 {
        let last = *ids.last().unwrap();
        ids.truncate(max_length - 1);
        ids.push(last);
    }
    ids
}

pub(crate) struct Head {
    layers: Vec<(Var, Var)>,
}

impl Head {
    pub(crate) fn new(dims: &[usize], rng: &mut StdRng, device: &Device) -> anyhow::Result<Self> {
        let mut layers = Vec::new();
        for w in dims.windows(2) {
            let (inp, out) = (w[0], w[1]);
            // Kaiming-uniform-like init, from our own seeded generator.
            let bound = (6.0 / inp as f64).sqrt() as f32 * 0.5;
            let data: Vec<f32> = (0..inp * out)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            let wt = Var::from_tensor(&Tensor::from_vec(data, (out, inp), device)?)?;
            let b = Var::from_tensor(&Tensor::zeros(out, DType::F32, device)?)?;
            layers.push((wt, b));
        }
        Ok(Self { layers })
    }

    /// Training forward with inverted dropout on the hidden layer; the mask comes from our own
    /// seeded generator (candle cannot seed its CPU one), so runs repeat exactly.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        dropout: f32,
        rng: &mut StdRng,
    ) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (i, (w, b)) in self.layers.iter().enumerate() {
            h = h
                .matmul(&w.as_tensor().t()?)?
                .broadcast_add(b.as_tensor())?;
            if i + 1 < self.layers.len() {
                h = h.relu()?;
                if dropout > 0.0 {
                    let keep = 1.0 - dropout;
                    let mask: Vec<f32> = (0..h.elem_count())
                        .map(|_| {
                            if rng.random::<f32>() < keep {
                                1.0 / keep
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    let mask = Tensor::from_vec(mask, h.shape(), h.device())?;
                    h = (h * mask)?;
                }
            }
        }
        Ok(h)
    }

    pub(crate) fn vars(&self) -> Vec<Var> {
        self.layers
            .iter()
            .flat_map(|(w, b)| [w.clone(), b.clone()])
            .collect()
    }

    /// Sets every layer from `weights` (a `snapshot` of a head of the same shape).
    pub(crate) fn restore(&self, weights: &[(Tensor, Tensor)]) -> candle_core::Result<()> {
        if weights.len() != self.layers.len() {
            return Err(candle_core::Error::Msg(format!(
                "head has {} layers, the weights {}",
                self.layers.len(),
                weights.len()
            )));
        }
        for ((w, b), (tw, tb)) in self.layers.iter().zip(weights) {
            w.set(tw)?;
            b.set(tb)?;
        }
        Ok(())
    }

    pub(crate) fn snapshot(&self) -> candle_core::Result<Vec<(Tensor, Tensor)>> {
        self.layers
            .iter()
            .map(|(w, b)| Ok((w.as_tensor().copy()?, b.as_tensor().copy()?)))
            .collect()
    }
}

/// Weighted mean cross-entropy, one weight per example (`w`).
pub(crate) fn weighted_ce(
    logits: &Tensor,
    targets: &Tensor,
    w: &Tensor,
) -> candle_core::Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
    (picked * w)?.sum_all()?.neg()? / w.sum_all()?.to_scalar::<f32>()? as f64
}

pub(crate) fn probs(
    weights: &[(Tensor, Tensor)],
    x: &Tensor,
) -> candle_core::Result<Vec<Vec<f32>>> {
    let mut h = x.clone();
    for (i, (w, b)) in weights.iter().enumerate() {
        h = h.matmul(&w.t()?)?.broadcast_add(b)?;
        if i + 1 < weights.len() {
            h = h.relu()?;
        }
    }
    candle_nn::ops::softmax(&h, D::Minus1)?.to_vec2()
}

pub(crate) fn argmax(p: &[f32]) -> usize {
    p.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// Sparse `(token id, value)` features of one text (see `heads::token_bag`).
type TokenBag = Vec<(usize, f32)>;

/// Head inputs: the embedding, then (with lexical features) the token bag.
struct Features {
    emb: Vec<Vec<f32>>,
    /// (width, one sparse bag per row)
    bags: Option<(usize, Vec<TokenBag>)>,
}

impl Features {
    fn dim(&self) -> usize {
        self.emb[0].len() + self.bags.as_ref().map_or(0, |b| b.0)
    }

    fn rows(&self, idx: &[usize]) -> candle_core::Result<Tensor> {
        let (h, d) = (self.emb[0].len(), self.dim());
        let mut flat = vec![0f32; idx.len() * d];
        for (r, &i) in idx.iter().enumerate() {
            flat[r * d..r * d + h].copy_from_slice(&self.emb[i]);
            if let Some((_, bags)) = &self.bags {
                for &(j, v) in &bags[i] {
                    flat[r * d + h + j] = v;
                }
            }
        }
        Tensor::from_vec(flat, (idx.len(), d), &Device::Cpu)
    }
}

/// Trains a sentence head (one label per text); token heads (`--spans-field`) are `spans::run`.
pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    let rows: Vec<Row> = dataset::load(
        &args.input,
        args.group_field.as_deref(),
        !args.quality_pairs.is_empty(),
    )?;
    let (labels, y) = label_ids(&rows)?;
    eprintln!("{}: {} rows, labels {labels:?}", args.task, rows.len());

    let source: Source = args.encoder.parse()?;
    let model = Model::load_encoder(&source, None, &LoadOptions::default())?;
    let (labels, mut y) = (labels, y);
    let mut rows = rows;
    let (mut train, val, test) = args.splits.split(&y);
    let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
    let mut emb = embed_cached(&model, &texts, args.max_length, &args.cache_dir)?;
    if args.augment > 0 {
        // Perturbed copies of the training rows only, embedded (and cached) apart.
        let mut rng = StdRng::seed_from_u64(args.splits.seed ^ 0x5eed);
        let mut extra = Vec::new();
        for _ in 0..args.augment {
            for &i in &train {
                let mut r = rows[i].clone();
                r.text = crate::perturb::train_edit(&mut rng, &r.text);
                extra.push((r, y[i]));
            }
        }
        // A windowed detector also meets its attacks inside a window of harmless text (an
        // attack padded with an essay): one padded copy of every positive training row, the
        // padding drawn from the benign training rows.
        let window_tokens = args
            .window
            .as_deref()
            .map(parse_window)
            .transpose()?
            .map(|[tokens, _, _]| tokens);
        let positive = args
            .positive
            .as_ref()
            .and_then(|p| labels.iter().position(|l| l == p));
        if let (Some(tokens), Some(pos)) = (window_tokens, positive) {
            let benign: Vec<usize> = train.iter().copied().filter(|&i| y[i] != pos).collect();
            // About 0.7 words a token for English prose under a WordPiece vocabulary.
            let words = tokens * 7 / 10;
            for &i in train.iter().filter(|&&i| y[i] == pos) {
                if benign.is_empty() {
                    break;
                }
                let mut r = rows[i].clone();
                r.text = crate::perturb::pad_to_window(&mut rng, &r.text, words, |g| {
                    rows[benign[g.random_range(0..benign.len())]].text.as_str()
                });
                extra.push((r, pos));
            }
        }
        let texts: Vec<&str> = extra.iter().map(|(r, _)| r.text.as_str()).collect();
        emb.extend(embed_cached(
            &model,
            &texts,
            args.max_length,
            &args.cache_dir,
        )?);
        let n_extra = extra.len();
        for (r, l) in extra {
            train.push(rows.len());
            rows.push(r);
            y.push(l);
        }
        eprintln!("augmented: {n_extra} perturbed training rows");
    }
    let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
    // As served: the encoder's own limit (512 for MiniLM), whatever --max-length trains on.
    let ids = texts
        .iter()
        .map(|t| Ok(model.tokenize(t, Truncation::Truncate)?.ids))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tokens: Vec<usize> = ids.iter().map(Vec::len).collect();
    let bags = if args.token_features {
        let v = model.meta.vocab_size;
        let nb = args.bigram_buckets;
        let bags = ids
            .iter()
            .map(|ids| semroute_encoder::heads::token_bag_with(ids, v, nb))
            .collect();
        Some((v + nb, bags))
    } else {
        None
    };
    let feats = Features { emb, bags };
    let dim = feats.dim();

    eprintln!(
        "split (seed {}): train {}, validation {}, test {}",
        args.splits.seed,
        train.len(),
        val.len(),
        test.len()
    );

    let k = labels.len();
    let example_w = example_weights(args, &rows, &y, &train, k)?;

    let mut rng = StdRng::seed_from_u64(args.splits.seed);
    let dims: Vec<usize> = if args.hidden == 0 {
        vec![dim, k]
    } else {
        vec![dim, args.hidden, k]
    };
    let head = Head::new(&dims, &mut rng, &Device::Cpu)?;
    let mut opt = AdamW::new(
        head.vars(),
        ParamsAdamW {
            lr: args.lr,
            weight_decay: args.weight_decay,
            ..Default::default()
        },
    )?;
    let x_val = feats.rows(&val)?;
    let y_val: Vec<usize> = val.iter().map(|&i| y[i]).collect();
    let mut best = (f64::MIN, 0usize, head.snapshot()?);
    let mut order = train.clone();
    let started = Instant::now();
    for epoch in 1..=args.epochs {
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0;
        let mut batches = 0;
        for b in order.chunks(args.batch_size) {
            let x = feats.rows(b)?;
            let t: Vec<u32> = b.iter().map(|&i| y[i] as u32).collect();
            let t = Tensor::new(t.as_slice(), &Device::Cpu)?;
            let logits = head.forward(&x, args.dropout, &mut rng)?;
            let w: Vec<f32> = b.iter().map(|&i| example_w[i]).collect();
            let loss = weighted_ce(&logits, &t, &Tensor::new(w.as_slice(), &Device::Cpu)?)?;
            opt.backward_step(&loss)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            batches += 1;
        }
        let p = probs(&head.snapshot()?, &x_val)?;
        let pred: Vec<usize> = p.iter().map(|r| argmax(r)).collect();
        let s = dataset::score(&labels, &y_val, &pred);
        if s.macro_f1 > best.0 {
            best = (s.macro_f1, epoch, head.snapshot()?);
        }
        if epoch == 1 || epoch % 10 == 0 {
            eprintln!(
                "epoch {epoch:>4}: train loss {:.4}, validation accuracy {:.4} macro-F1 {:.4} (best {:.4} at {})",
                loss_sum / batches as f64,
                s.accuracy,
                s.macro_f1,
                best.0,
                best.1
            );
        }
        if epoch - best.1 >= args.patience {
            eprintln!(
                "early stop at epoch {epoch} (best validation macro-F1 at epoch {})",
                best.1
            );
            break;
        }
    }
    let mut weights = best.2;
    let x_test = feats.rows(&test)?;
    let y_test: Vec<usize> = test.iter().map(|&i| y[i]).collect();
    let calibration = if args.calibrate {
        Some(calibrate(
            &mut weights,
            (&x_val, &y_val),
            (&x_test, &y_test),
        )?)
    } else {
        None
    };

    let p_val = probs(&weights, &x_val)?;
    let p_test = probs(&weights, &x_test)?;
    let (test_scores, detector) = report(
        args,
        &rows,
        &labels,
        (&y, &tokens),
        (&val, &p_val),
        (&test, &p_test),
    )?;

    write_head(
        args,
        &labels,
        &weights,
        &test_scores,
        detector,
        &model,
        best.1,
        started,
        (train.len(), val.len(), test.len()),
        "frozen",
        calibration,
    )?;
    Ok(())
}

/// The card's line on calibration.
fn metrics_calibration(c: &Option<serde_json::Value>) -> Option<String> {
    let c = c.as_ref()?;
    Some(format!(
        "Temperature scaling (fitted on validation, folded into the last layer): T = {:.3}; test expected calibration error {:.4} -> {:.4} (15 bins).",
        c["temperature"].as_f64()?,
        c["test_ece"]["before"].as_f64()?,
        c["test_ece"]["after"].as_f64()?
    ))
}

/// Raw scores of the last layer (before softmax).
fn logits(weights: &[(Tensor, Tensor)], x: &Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
    let mut h = x.clone();
    for (i, (w, b)) in weights.iter().enumerate() {
        h = h.matmul(&w.t()?)?.broadcast_add(b)?;
        if i + 1 < weights.len() {
            h = h.relu()?;
        }
    }
    h.to_vec2()
}

fn softmax_t(l: &[f32], t: f32) -> Vec<f32> {
    let m = l.iter().copied().fold(f32::MIN, f32::max);
    let e: Vec<f32> = l.iter().map(|v| ((v - m) / t).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// Mean negative log-likelihood of the true labels at temperature `t`.
fn nll(logits: &[Vec<f32>], y: &[usize], t: f32) -> f64 {
    logits
        .iter()
        .zip(y)
        .map(|(l, &k)| -(softmax_t(l, t)[k].max(1e-12) as f64).ln())
        .sum::<f64>()
        / y.len().max(1) as f64
}

/// Expected calibration error of the top label's probability (15 equal-width bins).
pub(crate) fn ece(probs: &[Vec<f32>], y: &[usize]) -> f64 {
    let bins = 15;
    let mut acc = vec![(0usize, 0f64, 0f64); bins];
    for (p, &k) in probs.iter().zip(y) {
        let top = argmax(p);
        let b = ((p[top] * bins as f32) as usize).min(bins - 1);
        acc[b].0 += 1;
        acc[b].1 += p[top] as f64;
        acc[b].2 += f64::from(u8::from(top == k));
    }
    acc.iter()
        .filter(|b| b.0 > 0)
        .map(|&(_, conf, right)| (conf - right).abs())
        .sum::<f64>()
        / y.len().max(1) as f64
}

/// Fits one temperature on the validation split (grid over log T, then refined) and folds it
/// into the last layer (weights and bias divided by T), so the served head needs nothing new.
fn calibrate(
    weights: &mut [(Tensor, Tensor)],
    (x_val, y_val): (&Tensor, &[usize]),
    (x_test, y_test): (&Tensor, &[usize]),
) -> anyhow::Result<serde_json::Value> {
    let lv = logits(weights, x_val)?;
    let lt = logits(weights, x_test)?;
    let mut best = (f64::MAX, 1f32);
    for i in -60..=60 {
        let t = (i as f32 * 0.05).exp();
        let v = nll(&lv, y_val, t);
        if v < best.0 {
            best = (v, t);
        }
    }
    let t = best.1;
    let at = |l: &[Vec<f32>], t: f32| l.iter().map(|r| softmax_t(r, t)).collect::<Vec<_>>();
    let report = json!({
        "method": "temperature scaling, fitted on the validation split",
        "temperature": t,
        "validation_nll": {"before": nll(&lv, y_val, 1.0), "after": best.0},
        "test_ece": {"before": ece(&at(&lt, 1.0), y_test), "after": ece(&at(&lt, t), y_test)},
    });
    eprintln!("calibration: {report}");
    if let Some(last) = weights.last_mut() {
        last.0 = (&last.0 / t as f64)?;
        last.1 = (&last.1 / t as f64)?;
    }
    Ok(report)
}

/// The reported figures from a head's probabilities on the validation and test splits: test
/// scores (printed), and for a detector (`--positive`) its threshold at `--max-fpr` set on
/// validation, test recall / FPR per group, share thresholds and quality curves.
pub(crate) fn report(
    args: &TrainArgs,
    rows: &[Row],
    labels: &[String],
    (y, tokens): (&[usize], &[usize]),
    (val, p_val): (&[usize], &[Vec<f32>]),
    (test, p_test): (&[usize], &[Vec<f32>]),
) -> anyhow::Result<(Scores, Option<serde_json::Value>)> {
    // Reported figures: the test split, never seen in training or model selection.
    let y_val: Vec<usize> = val.iter().map(|&i| y[i]).collect();
    let y_test: Vec<usize> = test.iter().map(|&i| y[i]).collect();
    let pred: Vec<usize> = p_test.iter().map(|r| argmax(r)).collect();
    let test_scores = dataset::score(labels, &y_test, &pred);
    println!("== {} test split\n{}", args.task, test_scores.render());
    // Accuracy per group (`--group-field`): e.g. exam questions vs conversational prompts.
    let mut by_group = std::collections::BTreeMap::<&str, (usize, usize)>::new();
    for (&i, (&t, &p)) in test.iter().zip(y_test.iter().zip(&pred)) {
        if let Some(g) = &rows[i].group {
            let e = by_group.entry(g.as_str()).or_default();
            e.0 += 1;
            e.1 += usize::from(t == p);
        }
    }
    for (g, (n, right)) in &by_group {
        println!(
            "   group {g:<38} n={n:>5} accuracy {:.4}",
            *right as f64 / *n as f64
        );
    }

    // Long inputs apart: a head (or encoder) trained on short ones may not hold on them.
    for (name, long) in [("<= 128 tokens", false), ("> 128 tokens", true)] {
        let (n, right) = test
            .iter()
            .zip(y_test.iter().zip(&pred))
            .filter(|(&i, _)| (tokens[i] > 128) == long)
            .fold((0usize, 0usize), |(n, r), (_, (t, p))| {
                (n + 1, r + usize::from(t == p))
            });
        if n > 0 {
            println!(
                "   inputs {name:<37} n={n:>5} accuracy {:.4}",
                right as f64 / n as f64
            );
        }
    }
    let mut detector = None;
    if let Some(pos) = &args.positive {
        let pi = labels
            .binary_search(pos)
            .map_err(|_| anyhow::anyhow!("--positive {pos:?} is not a label ({labels:?})"))?;
        let split = |p: &[Vec<f32>], ys: &[usize]| {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for (r, &t) in p.iter().zip(ys) {
                if t == pi {
                    a.push(r[pi])
                } else {
                    b.push(r[pi])
                }
            }
            (a, b)
        };
        let (vp, vn) = split(p_val, &y_val);
        let (thr, val_recall, val_fpr) = dataset::threshold_at_fpr(&vp, &vn, args.max_fpr);
        let (tp, tn) = split(p_test, &y_test);
        let recall = tp.iter().filter(|&&p| p >= thr).count() as f64 / tp.len().max(1) as f64;
        let fpr = tn.iter().filter(|&&p| p >= thr).count() as f64 / tn.len().max(1) as f64;
        let mut groups = std::collections::BTreeMap::<String, (usize, usize)>::new();
        for ((r, &t), &i) in p_test.iter().zip(&y_test).zip(test) {
            if let Some(g) = &rows[i].group {
                let e = groups.entry(format!("{} ({})", g, labels[t])).or_default();
                e.0 += 1;
                if r[pi] >= thr {
                    e.1 += 1;
                }
            }
        }
        println!(
            "== {pos} detector: threshold {thr:.4} (set on validation: recall {val_recall:.4} at FPR {val_fpr:.4})\n   test: recall {recall:.4} at FPR {fpr:.4}"
        );
        for (g, (n, flagged)) in &groups {
            println!(
                "   {g:<40} n={n:>5} flagged {:.4}",
                *flagged as f64 / *n as f64
            );
        }
        // Thresholds that send a given share of traffic to the positive side (validation
        // quantiles): the cost knob for a strong-model-needed task.
        let mut all_val: Vec<f32> = p_val.iter().map(|r| r[pi]).collect();
        all_val.sort_by(|a, b| b.total_cmp(a));
        let share_thresholds: Vec<(f64, f32)> = (1..10)
            .map(|t| {
                let share = t as f64 / 10.0;
                let k = ((all_val.len() as f64 * share) as usize).min(all_val.len() - 1);
                (share, all_val[k])
            })
            .collect();
        let mut curves = serde_json::Map::new();
        for pair in &args.quality_pairs {
            let (wf, sf) = pair
                .split_once(',')
                .ok_or_else(|| anyhow::anyhow!("--quality-pair {pair:?}: expected WEAK,STRONG"))?;
            let (mut sc, mut wk, mut st) = (Vec::new(), Vec::new(), Vec::new());
            for (r, &i) in p_test.iter().zip(test) {
                let rec = rows[i].record.as_ref();
                let get = |f: &str| rec.and_then(|v| v.pointer(f)).and_then(|v| v.as_bool());
                if let (Some(w), Some(s)) = (get(wf), get(sf)) {
                    sc.push(r[pi]);
                    wk.push(w);
                    st.push(s);
                }
            }
            let c = dataset::quality_curve(&sc, &wk, &st);
            println!(
                "== quality curve {wf} -> {sf} (test, n={}): weak {:.4}, strong {:.4}, APGR {:.4}, CPT(50%) {:.3}, CPT(80%) {:.3}",
                c.n, c.weak_accuracy, c.strong_accuracy, c.apgr, c.cpt50, c.cpt80
            );
            println!(
                "   PGR at strong share 0..100%: {:?}",
                c.points
                    .iter()
                    .map(|p| (p.1 * 1000.0).round() / 1000.0)
                    .collect::<Vec<_>>()
            );
            curves.insert(pair.clone(), serde_json::to_value(&c)?);
        }
        detector = Some(json!({
            "share_thresholds": share_thresholds,
            "quality_curves": curves,
            "positive": pos, "threshold": thr, "max_fpr": args.max_fpr,
            "validation": {"recall": val_recall, "fpr": val_fpr},
            "test": {"recall": recall, "fpr": fpr},
            "test_groups_flagged": groups.iter().map(|(g, (n, f))| (g.clone(), json!({"n": n, "flagged_rate": *f as f64 / *n as f64}))).collect::<serde_json::Map<_, _>>(),
        }));
    }

    Ok((test_scores, detector))
}

/// The sorted label set of `rows` (at least two) and each row's label index.
pub(crate) fn label_ids(rows: &[Row]) -> anyhow::Result<(Vec<String>, Vec<usize>)> {
    let labels: Vec<String> = rows
        .iter()
        .map(|r| r.label.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    anyhow::ensure!(
        labels.len() >= 2,
        "a head needs at least 2 labels, found {labels:?}"
    );
    let y = rows
        .iter()
        .map(|r| labels.binary_search(&r.label).unwrap())
        .collect();
    Ok((labels, y))
}

/// The split of a head trained on the same file: the label it was trained on (field, map) and
/// the fractions and seed, so that `route-bench` and `profile` split the rows exactly as it did.
#[derive(Debug, Clone, Args)]
pub struct HeadSplit {
    /// The label the split is stratified by (a JSON pointer or field, `a+b` joins two).
    #[arg(long)]
    pub split_label_field: Option<String>,
    #[arg(long)]
    pub split_label_map: Option<String>,
    #[command(flatten)]
    pub splits: SplitArgs,
}

impl HeadSplit {
    /// The rows of `data` as the head read them (those with its label).
    pub fn data_args(&self, data: &[PathBuf], text_field: &str) -> dataset::DataArgs {
        dataset::DataArgs {
            data: data.to_vec(),
            text_field: text_field.to_string(),
            label_field: self.split_label_field.clone().unwrap_or_default(),
            label_map: self.split_label_map.clone(),
        }
    }
}

/// How a head's data is split (`train`), and so how the commands that judge a head on its own
/// validation or test rows (`route-bench`, `cascade`) split it again.
#[derive(Debug, Clone, Args)]
pub struct SplitArgs {
    #[arg(long, default_value_t = 0.15)]
    pub val_fraction: f64,
    #[arg(long, default_value_t = 0.15)]
    pub test_fraction: f64,
    /// The split's seed (and the training's).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl SplitArgs {
    /// `split3` with these fractions and seed.
    pub fn split(&self, y: &[usize]) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
        split3(y, self.val_fraction, self.test_fraction, self.seed)
    }
}

/// Train / validation / test indices, each stratified by label, with a fixed seed: `train` and
/// `finetune` both split this way, so their test figures are on the same rows.
pub(crate) fn split3(
    y: &[usize],
    val_fraction: f64,
    test_fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    // train / rest, then rest -> validation / test, both stratified.
    let held = val_fraction + test_fraction;
    let (train, rest) = dataset::stratified_split(y, held, seed);
    let rest_y: Vec<usize> = rest.iter().map(|&i| y[i]).collect();
    let (val_r, test_r) = dataset::stratified_split(&rest_y, test_fraction / held, seed + 1);
    let val: Vec<usize> = val_r.iter().map(|&i| rest[i]).collect();
    let test: Vec<usize> = test_r.iter().map(|&i| rest[i]).collect();
    (train, val, test)
}

/// Per training example: its class weight (inverse frequency), times, with `--balance-groups`,
/// a weight that lets each group of a label count as much as the others of that label.
pub(crate) fn example_weights(
    args: &TrainArgs,
    rows: &[Row],
    y: &[usize],
    train: &[usize],
    k: usize,
) -> anyhow::Result<Vec<f32>> {
    let mut counts = vec![0usize; k];
    for &i in train {
        counts[y[i]] += 1;
    }
    let class_w: Vec<f32> = counts
        .iter()
        .map(|&c| train.len() as f32 / (k as f32 * c.max(1) as f32))
        .collect();
    // Per example: its class weight, times (with --balance-groups) a weight that lets each
    // group (--group-field) of a label count as much as the others of that label, square-rooted.
    let mut group_w = vec![1f32; rows.len()];
    if args.balance_groups {
        anyhow::ensure!(
            args.group_field.is_some(),
            "--balance-groups needs --group-field"
        );
        let mut per = std::collections::HashMap::<(usize, Option<&str>), usize>::new();
        for &i in train {
            *per.entry((y[i], rows[i].group.as_deref())).or_default() += 1;
        }
        for &i in train {
            let groups = per.keys().filter(|(l, _)| *l == y[i]).count() as f32;
            let n = per[&(y[i], rows[i].group.as_deref())] as f32;
            group_w[i] = (counts[y[i]] as f32 / (groups * n)).sqrt();
        }
    }
    let example_w: Vec<f32> = (0..rows.len())
        .map(|i| class_w[y[i]] * group_w[i])
        .collect();

    Ok(example_w)
}

/// Writes a trained head into `dir`: `head.safetensors` (`layers.N.weight` / `.bias`),
/// `head.json` (`spec`) and `metrics.json` (`metrics` plus the command that made them, as a user
/// would type it: models/train.sh runs exactly this). Returns that command for the card.
pub(crate) fn save_head(
    dir: &Path,
    weights: &[(Tensor, Tensor)],
    spec: &serde_json::Value,
    mut metrics: serde_json::Value,
) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    let tensors: std::collections::HashMap<String, Tensor> = weights
        .iter()
        .enumerate()
        .flat_map(|(i, (w, b))| {
            [
                (format!("layers.{i}.weight"), w.clone()),
                (format!("layers.{i}.bias"), b.clone()),
            ]
        })
        .collect();
    candle_core::safetensors::save(&tensors, dir.join("head.safetensors"))?;
    std::fs::write(
        dir.join("head.json"),
        serde_json::to_string_pretty(spec)? + "\n",
    )?;
    let command = command_line();
    metrics["command"] = json!(command);
    std::fs::write(
        dir.join("metrics.json"),
        serde_json::to_string_pretty(&metrics)? + "\n",
    )?;
    Ok(command)
}

/// This process's command line as a user would type it (what cards and metrics record).
pub(crate) fn command_line() -> String {
    std::iter::once("semroute-train".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The training files, as a card lists them.
pub(crate) fn data_files(args: &TrainArgs) -> String {
    args.input
        .data
        .iter()
        .map(|p| format!("`{}`", p.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn write_head(
    args: &TrainArgs,
    labels: &[String],
    weights: &[(Tensor, Tensor)],
    scores: &Scores,
    detector: Option<serde_json::Value>,
    model: &Model,
    best_epoch: usize,
    started: Instant,
    split: (usize, usize, usize),
    encoder_note: &str,
    calibration: Option<serde_json::Value>,
) -> anyhow::Result<()> {
    let dir = args.out.join(&args.task);
    let mut spec = json!({
        "task": args.task,
        "labels": labels,
        "activation": "relu",
        "kind": if args.hidden == 0 { "linear" } else { "mlp" },
        "token_features": if args.token_features { model.meta.vocab_size } else { 0 },
        "bigram_buckets": if args.token_features { args.bigram_buckets } else { 0 },
        "encoder": model.meta.id,
    });
    if let Some(d) = &detector {
        spec["positive"] = d["positive"].clone();
        spec["threshold"] = d["threshold"].clone();
    }
    if let Some(w) = &args.window {
        let [tokens, stride, max_windows] = parse_window(w)?;
        anyhow::ensure!(detector.is_some(), "--window needs --positive");
        spec["window"] = json!({"tokens": tokens, "stride": stride, "max_windows": max_windows});
    }
    let metrics = json!({
        "task": args.task,
        "split": {"seed": args.splits.seed, "train": split.0, "validation": split.1, "test": split.2},
        "best_epoch": best_epoch,
        "test": scores,
        "detector": detector,
        "calibration": calibration,
        "augment": args.augment,
        "train_seconds": started.elapsed().as_secs_f64(),
    });
    let command = save_head(&dir, weights, &spec, metrics)?;
    let mut card = std::fs::File::create(dir.join("CARD.md"))?;
    writeln!(card, "# `{}` head\n", args.task)?;
    writeln!(
        card,
        "- Encoder: `{}` ({encoder_note}; pooled, L2-normalised embedding, max {} tokens)",
        model.meta.id, args.max_length
    )?;
    writeln!(
        card,
        "- Head: {}, class-weighted cross-entropy, AdamW lr {} wd {}, dropout {}, early stopping on validation macro-F1 (patience {}, best epoch {best_epoch})",
        if args.hidden == 0 { "linear".to_string() } else { format!("MLP {} -> {} (relu) -> {}", model.meta.hidden_size, args.hidden, labels.len()) },
        args.lr, args.weight_decay, args.dropout, args.patience
    )?;
    if args.token_features {
        writeln!(
            card,
            "- Inputs: the embedding and a bag of the text's {} token ids{} (`log(1+count)`, L2-normalised; lexical features from the same tokenization, no second pass)",
            model.meta.vocab_size,
            if args.bigram_buckets > 0 {
                format!(" and of adjacent id pairs hashed into {} buckets", args.bigram_buckets)
            } else {
                String::new()
            }
        )?;
    }
    writeln!(
        card,
        "- Data: {} (text `{}`, label `{}`{}); labels: {}",
        data_files(args),
        args.input.text_field,
        args.input.label_field,
        args.input
            .label_map
            .as_ref()
            .map(|m| format!(", mapped {m}"))
            .unwrap_or_default(),
        labels.join(", ")
    )?;
    writeln!(
        card,
        "- Split: stratified, seed {}: train {}, validation {} (early stopping{}), test {} (the figures below)",
        args.splits.seed,
        split.0,
        split.1,
        if detector.is_some() { ", threshold" } else { "" },
        split.2
    )?;
    writeln!(
        card,
        "\n## Test split\n\naccuracy {:.4}, macro-F1 {:.4}\n\n```\n{}```",
        scores.accuracy,
        scores.macro_f1,
        scores.render()
    )?;
    if let Some(c) = &metrics_calibration(&calibration) {
        writeln!(card, "\n## Calibration\n\n{c}")?;
    }
    if args.augment > 0 {
        writeln!(
            card,
            "\n{} perturbed copies of each training row (`perturb::train_edit`: greetings, closers, unrelated sentences, case, spacing, look-alike letters); validation and test rows unedited.",
            args.augment
        )?;
    }
    if let Some(d) = &detector {
        writeln!(
            card,
            "\n## Detector\n\n```json\n{}\n```",
            serde_json::to_string_pretty(d)?
        )?;
    }
    writeln!(card, "\n## Reproduce\n\n```sh\n{command}\n```")?;
    eprintln!("wrote {}", dir.display());
    Ok(())
}
