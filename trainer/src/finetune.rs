//! `semroute-train finetune`: fine-tunes the shared BERT-family encoder jointly for several
//! sentence tasks, so all of them are still answered from ONE encoder pass. Each task is given as
//! a line of `train` arguments (same data options, same stratified split and seed, so its test
//! figures sit on the same rows as the frozen-encoder head's). Steps interleave batches of all
//! tasks; the loss of each task's head flows back through the encoder (candle autograd over a
//! BERT forward of plain ops; the serving encoder's fused kernels are forward-only). The best
//! checkpoint by mean validation macro-F1 is written as an encoder directory (config.json,
//! tokenizer.json, model.safetensors) with its heads under `heads/`, which `serve --encoder DIR
//! --heads DIR/heads` loads like any other. Runs on CUDA when built with the `cuda` feature and a
//! GPU is present, else on the CPU (slow: bound it with --max-steps / --max-train-rows).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use clap::{Args, Parser};
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use serde_json::json;

use crate::checkpoint;
use crate::dataset::{self, Row};
use crate::train::{self, argmax, probs, weighted_ce, Head, TrainArgs};
use semroute_encoder::config::Activation;
use semroute_encoder::heads::token_bag_with;
use semroute_encoder::{Arch, EncoderConfig, LoadOptions, Model, Pooling, Source, Truncation};

#[derive(Debug, Clone, Args)]
pub struct FinetuneArgs {
    /// File of tasks, one per line as `train` arguments (--task, --data, --text-field,
    /// --label-field, --label-map, --positive, --token-features, --hidden, ...); split on
    /// whitespace, `#` starts a comment.
    #[arg(long)]
    pub tasks: PathBuf,
    /// Encoder to start from: a local directory or hf:org/name[@revision] (BERT family).
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    pub encoder: String,
    /// Output: the fine-tuned encoder directory; heads go to `<out>/heads/<task>/`.
    #[arg(long, default_value = "models/finetuned")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Tokens per text while training (longer texts are truncated, keeping the final [SEP]).
    /// 512 is what serving reads; less is cheaper on a CPU but never trains on a long input
    /// (the report gives the accuracy of inputs over 128 tokens apart).
    #[arg(long, default_value_t = 512)]
    pub max_length: usize,
    /// Encoder learning rate (AdamW).
    #[arg(long, default_value_t = 3e-5)]
    pub lr: f64,
    /// Heads' learning rate (they start from scratch).
    #[arg(long, default_value_t = 1e-3)]
    pub head_lr: f64,
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Stop after this many optimizer steps (0 = no limit): bounded runs on a CPU.
    #[arg(long, default_value_t = 0)]
    pub max_steps: usize,
    /// Also validate every N steps (0 = at epoch ends only).
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
    /// Use at most N training rows per task (0 = all), drawn at random with the seed.
    #[arg(long, default_value_t = 0)]
    pub max_train_rows: usize,
    /// Train only the top N encoder layers (embeddings and the layers below frozen): a cheaper
    /// backward pass on a CPU. Default: the whole encoder.
    #[arg(long)]
    pub train_layers: Option<usize>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Continue from `<out>/checkpoint` (written at every validation: the weights reached, the
    /// best so far, the step): the steps done are skipped and the run goes on with the same
    /// batches; only `--epochs`, `--max-steps` and `--eval-every` may differ. The optimizers'
    /// moments start afresh.
    #[arg(long)]
    pub resume: bool,
}

/// One task line: `train`'s own arguments.
#[derive(Debug, Parser)]
#[command(no_binary_name = true)]
struct TaskLine {
    #[command(flatten)]
    args: TrainArgs,
}

/// Reads the tasks file: one `TrainArgs` per non-empty line.
pub fn parse_tasks(path: &Path) -> anyhow::Result<Vec<TrainArgs>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("--tasks {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let parsed = TaskLine::try_parse_from(line.split_whitespace())
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1))?;
        anyhow::ensure!(
            parsed.args.spans_field.is_none(),
            "{}:{}: token tasks (--spans-field) are trained on the frozen encoder with `train`",
            path.display(),
            n + 1
        );
        out.push(parsed.args);
    }
    anyhow::ensure!(!out.is_empty(), "{}: no tasks", path.display());
    let mut names: Vec<&str> = out.iter().map(|t| t.task.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    anyhow::ensure!(names.len() == out.len(), "a task is listed twice");
    Ok(out)
}

/// The best checkpoint so far: mean validation macro-F1, step, trained encoder tensors, heads.
type Best = (
    f64,
    usize,
    HashMap<String, Tensor>,
    Vec<Vec<(Tensor, Tensor)>>,
);

/// A task's data, split and head while training.
struct Task {
    args: TrainArgs,
    rows: Vec<Row>,
    labels: Vec<String>,
    y: Vec<usize>,
    ids: Vec<Vec<u32>>,
    /// Tokens of each text as served (before `--max-length`), for the long-input figures.
    tokens: Vec<usize>,
    train: Vec<usize>,
    val: Vec<usize>,
    test: Vec<usize>,
    weights: Vec<f32>,
    /// Lexical feature width (vocabulary + bigram buckets), 0 without.
    bag: (usize, usize),
    head: Head,
    opt: AdamW,
}

/// The trainable encoder: a BERT forward written with differentiable candle ops only (the
/// serving encoder's fused kernels and candle-nn's fused layer norm have no backward pass), over
/// variables named as in the checkpoint, so the saved weights load in `model::bert` unchanged.
pub struct Trainable {
    vars: HashMap<String, Var>,
    /// Tensors left frozen (`--train-layers`): plain tensors, so backward stops above them.
    fixed: HashMap<String, Tensor>,
    cfg: EncoderConfig,
    pooling: Pooling,
    device: Device,
}

impl Trainable {
    /// Loads the encoder tensors of `weights` (names without the `bert.` prefix; the pooler and
    /// any classifier are left out): the top `train_layers` layers (all with None) as variables,
    /// the embeddings and the layers below them frozen.
    pub fn load(
        config: &Path,
        weights: &Path,
        pooling: Pooling,
        train_layers: Option<usize>,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(config)?;
        let cfg = EncoderConfig::from_json(&text, &config.display().to_string())?;
        anyhow::ensure!(
            cfg.arch == Arch::Bert,
            "finetune supports BERT-family encoders (BERT, MiniLM); this one is {}",
            cfg.arch.as_str()
        );
        let stored = candle_core::safetensors::load(weights, device)?;
        let first_trained =
            cfg.num_layers - train_layers.unwrap_or(cfg.num_layers).min(cfg.num_layers);
        let trained = |name: &str| match name.strip_prefix("encoder.layer.") {
            Some(rest) => rest
                .split('.')
                .next()
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n >= first_trained),
            None => train_layers.is_none(),
        };
        let (mut vars, mut fixed) = (HashMap::new(), HashMap::new());
        for (name, t) in stored {
            let name = name.strip_prefix("bert.").unwrap_or(&name).to_string();
            if !(name.starts_with("embeddings.") || name.starts_with("encoder."))
                || name.ends_with("position_ids")
            {
                continue;
            }
            let t = t.to_dtype(DType::F32)?;
            if trained(&name) {
                vars.insert(name, Var::from_tensor(&t)?);
            } else {
                fixed.insert(name, t);
            }
        }
        let enc = Self {
            vars,
            fixed,
            cfg,
            pooling,
            device: device.clone(),
        };
        // Fail on a missing tensor now, not at the first step.
        enc.embed(&[&[0u32, 0][..]])
            .map_err(|e| anyhow::anyhow!("{}: {e}", weights.display()))?;
        Ok(enc)
    }

    fn var(&self, name: &str) -> candle_core::Result<&Tensor> {
        self.vars
            .get(name)
            .map(|v| v.as_tensor())
            .or_else(|| self.fixed.get(name))
            .ok_or_else(|| candle_core::Error::Msg(format!("no tensor {name}")))
    }

    fn linear(&self, x: &Tensor, name: &str) -> candle_core::Result<Tensor> {
        x.broadcast_matmul(&self.var(&format!("{name}.weight"))?.t()?)?
            .broadcast_add(self.var(&format!("{name}.bias"))?)
    }

    fn layer_norm(&self, x: &Tensor, name: &str) -> candle_core::Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let x = x.broadcast_sub(&mean)?;
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        x.broadcast_div(&(var + self.cfg.layer_norm_eps)?.sqrt()?)?
            .broadcast_mul(self.var(&format!("{name}.weight"))?)?
            .broadcast_add(self.var(&format!("{name}.bias"))?)
    }

    fn activate(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.cfg.hidden_act {
            Activation::GeluErf => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
            Activation::Tanh => x.tanh(),
        }
    }

    /// Last hidden states `(b, t, h)`; `bias` `(b, 1, 1, t)` is 0 on real keys, -1e4 on padding.
    fn hidden(&self, ids: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let h = self.cfg.hidden_size;
        let (nh, hd) = (self.cfg.num_heads, h / self.cfg.num_heads);
        let x = self
            .var("embeddings.word_embeddings.weight")?
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, h))?;
        let pos = self
            .var("embeddings.position_embeddings.weight")?
            .narrow(0, 0, t)?;
        let tt = self
            .var("embeddings.token_type_embeddings.weight")?
            .narrow(0, 0, 1)?;
        let x = x.broadcast_add(&pos.broadcast_add(&tt)?)?;
        let mut x = self.layer_norm(&x, "embeddings.LayerNorm")?;
        let heads = |y: Tensor| y.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous();
        for i in 0..self.cfg.num_layers {
            let l = format!("encoder.layer.{i}");
            let q = heads(self.linear(&x, &format!("{l}.attention.self.query"))?)?;
            let k = heads(self.linear(&x, &format!("{l}.attention.self.key"))?)?;
            let v = heads(self.linear(&x, &format!("{l}.attention.self.value"))?)?;
            let scores =
                (q.matmul(&k.t()?.contiguous()?)? / (hd as f64).sqrt())?.broadcast_add(bias)?;
            let p = candle_nn::ops::softmax(&scores, D::Minus1)?;
            let ctx = p
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b, t, h))?;
            let attn = self.linear(&ctx, &format!("{l}.attention.output.dense"))?;
            let a = self.layer_norm(&(attn + &x)?, &format!("{l}.attention.output.LayerNorm"))?;
            let inter = self.activate(&self.linear(&a, &format!("{l}.intermediate.dense"))?)?;
            let out = self.linear(&inter, &format!("{l}.output.dense"))?;
            x = self.layer_norm(&(out + a)?, &format!("{l}.output.LayerNorm"))?;
        }
        Ok(x)
    }

    fn all_vars(&self) -> Vec<Var> {
        self.vars.values().cloned().collect()
    }

    /// Pooled, L2-normalised embeddings `(b, hidden)` of right-padded `seqs`, as serving computes
    /// them (`Model::forward`), differentiable.
    pub fn embed(&self, seqs: &[&[u32]]) -> candle_core::Result<Tensor> {
        let b = seqs.len();
        let t = seqs.iter().map(|s| s.len()).max().unwrap_or(1).max(1);
        let mut ids = vec![0u32; b * t];
        let mut mask = vec![0f32; b * t];
        for (r, s) in seqs.iter().enumerate() {
            ids[r * t..r * t + s.len()].copy_from_slice(s);
            mask[r * t..r * t + s.len()].fill(1.0);
        }
        let ids = Tensor::from_vec(ids, (b, t), &self.device)?;
        let mask = Tensor::from_vec(mask, (b, t), &self.device)?;
        let bias = ((&mask - 1.0)? * 1e4)?.reshape((b, 1, 1, t))?;
        let hidden = self.hidden(&ids, &bias)?;
        let pooled = match self.pooling {
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => {
                let m = mask.unsqueeze(2)?;
                hidden
                    .broadcast_mul(&m)?
                    .sum(1)?
                    .broadcast_div(&m.sum(1)?.clamp(1.0, f64::MAX)?)?
            }
        };
        let norm = pooled
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?;
        pooled.broadcast_div(&norm)
    }

    /// The trained tensors' current values (what a checkpoint stores).
    fn trained(&self) -> candle_core::Result<HashMap<String, Tensor>> {
        self.vars
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().copy()?)))
            .collect()
    }

    /// `snap` with the frozen tensors added (a full encoder from a checkpoint's trained ones).
    fn with_fixed(&self, mut snap: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
        for (n, t) in &self.fixed {
            snap.entry(n.clone()).or_insert_with(|| t.clone());
        }
        snap
    }

    fn restore(&self, snap: &HashMap<String, Tensor>) -> candle_core::Result<()> {
        for (n, v) in &self.vars {
            let t = snap
                .get(n)
                .ok_or_else(|| candle_core::Error::Msg(format!("no tensor {n} to restore")))?;
            v.set(t)?;
        }
        Ok(())
    }
}

/// Head input: the embedding, then (for heads that read them) the dense token-id bag.
fn head_input(
    emb: &Tensor,
    seqs: &[&[u32]],
    (vocab, bigrams): (usize, usize),
) -> candle_core::Result<Tensor> {
    let dim = vocab + bigrams;
    if dim == 0 {
        return Ok(emb.clone());
    }
    let mut dense = vec![0f32; seqs.len() * dim];
    for (r, ids) in seqs.iter().enumerate() {
        for (i, v) in token_bag_with(ids, vocab, bigrams) {
            dense[r * dim + i] = v;
        }
    }
    let bag = Tensor::from_vec(dense, (seqs.len(), dim), emb.device())?;
    Tensor::cat(&[emb, &bag], 1)
}

/// What must match for `--resume`: the tasks file and every setting that shapes the batches,
/// the model or the optimizer (not `--epochs`, `--max-steps` or `--eval-every`).
fn run_fingerprint(args: &FinetuneArgs) -> anyhow::Result<String> {
    let tasks = std::fs::read_to_string(&args.tasks)
        .map_err(|e| anyhow::anyhow!("--tasks {}: {e}", args.tasks.display()))?;
    let settings = format!(
        "{} {} {} {} {} {} {} {:?} {}",
        args.encoder,
        args.batch_size,
        args.max_length,
        args.lr,
        args.head_lr,
        args.weight_decay,
        args.max_train_rows,
        args.train_layers,
        args.seed
    );
    Ok(checkpoint::fingerprint(&[&tasks, &settings]))
}

/// Label probabilities of `idx` rows of a task under the current encoder and head (no dropout).
fn predict(enc: &Trainable, task: &Task, idx: &[usize]) -> anyhow::Result<Vec<Vec<f32>>> {
    predict_with(enc, task, &task.head.snapshot()?, idx)
}

/// Validation macro-F1 per task.
fn validate(enc: &Trainable, tasks: &[Task]) -> anyhow::Result<Vec<f64>> {
    tasks
        .iter()
        .map(|t| {
            let p = predict(enc, t, &t.val)?;
            let pred: Vec<usize> = p.iter().map(|r| argmax(r)).collect();
            let truth: Vec<usize> = t.val.iter().map(|&i| t.y[i]).collect();
            Ok(dataset::score(&t.labels, &truth, &pred).macro_f1)
        })
        .collect()
}

pub fn run(args: &FinetuneArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let device = Device::cuda_if_available(0)?;
    let source: Source = args.encoder.parse()?;
    let files = source.resolve()?;
    // The serving model, for its tokenizer and pooling (and the cards' facts about it).
    let base = Model::load_encoder(&source, None, &LoadOptions::default())?;
    let enc = Trainable::load(
        &files.config,
        &files.weights,
        base.meta.pooling,
        args.train_layers,
        &device,
    )?;
    let mut rng = StdRng::seed_from_u64(args.seed);

    let mut tasks = Vec::new();
    for mut a in parse_tasks(&args.tasks)? {
        a.max_length = args.max_length;
        a.out = args.out.join("heads");
        a.encoder = args.encoder.clone();
        let rows = dataset::load(
            &a.input,
            a.group_field.as_deref(),
            !a.quality_pairs.is_empty(),
        )?;
        let (labels, y) =
            train::label_ids(&rows).map_err(|e| anyhow::anyhow!("{}: {e}", a.task))?;
        let served = rows
            .iter()
            .map(|r| Ok(base.tokenize(&r.text, Truncation::Truncate)?.ids))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let tokens: Vec<usize> = served.iter().map(Vec::len).collect();
        let ids: Vec<Vec<u32>> = served
            .into_iter()
            .map(|ids| train::truncate_ids(ids, args.max_length))
            .collect();
        let (mut tr, val, test) = a.splits.split(&y);
        let weights = train::example_weights(&a, &rows, &y, &tr, labels.len())?;
        if args.max_train_rows > 0 && tr.len() > args.max_train_rows {
            tr.shuffle(&mut rng);
            tr.truncate(args.max_train_rows);
        }
        let bag = if a.token_features {
            (base.meta.vocab_size, a.bigram_buckets)
        } else {
            (0, 0)
        };
        let input = base.meta.hidden_size + bag.0 + bag.1;
        let dims = if a.hidden == 0 {
            vec![input, labels.len()]
        } else {
            vec![input, a.hidden, labels.len()]
        };
        let head = Head::new(&dims, &mut rng, &device)?;
        let opt = AdamW::new(
            head.vars(),
            ParamsAdamW {
                lr: args.head_lr,
                weight_decay: a.weight_decay,
                ..Default::default()
            },
        )?;
        eprintln!(
            "{}: {} rows, labels {labels:?}; train {} validation {} test {}",
            a.task,
            rows.len(),
            tr.len(),
            val.len(),
            test.len()
        );
        tasks.push(Task {
            args: a,
            rows,
            labels,
            y,
            ids,
            tokens,
            train: tr,
            val,
            test,
            weights,
            bag,
            head,
            opt,
        });
    }

    let mut enc_opt = AdamW::new(
        enc.all_vars(),
        ParamsAdamW {
            lr: args.lr,
            weight_decay: args.weight_decay,
            ..Default::default()
        },
    )?;
    let mut best: Option<Best> = None;
    let mut step = 0usize;
    let mut history = Vec::new();
    let fingerprint = run_fingerprint(args)?;
    let (mut first_epoch, mut skip) = (1usize, 0usize);
    if args.resume {
        let (state, live, saved) = checkpoint::load(&args.out, &fingerprint, tasks.len(), &device)?;
        enc.restore(&live.encoder)?;
        for (t, w) in tasks.iter().zip(&live.heads) {
            t.head.restore(w)?;
        }
        best = Some((state.best_mean, state.best_step, saved.encoder, saved.heads));
        (step, history, first_epoch, skip) =
            (state.step, state.history, state.epoch, state.batches_done);
        eprintln!(
            "resumed at step {step} (epoch {first_epoch}, {skip} batches done); best so far: step {}, mean validation macro-F1 {:.4}",
            state.best_step, state.best_mean
        );
    }
    'epochs: for epoch in first_epoch..=args.epochs {
        // Every task's training rows in batches, all batches interleaved at random, in an order
        // that depends on the seed and the epoch only (a resumed run sees the same batches).
        let mut order_rng =
            StdRng::seed_from_u64(args.seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9));
        let mut batches: Vec<(usize, Vec<usize>)> = Vec::new();
        for (ti, t) in tasks.iter().enumerate() {
            let mut order = t.train.clone();
            order.shuffle(&mut order_rng);
            batches.extend(order.chunks(args.batch_size).map(|c| (ti, c.to_vec())));
        }
        batches.shuffle(&mut order_rng);
        let total = batches.len();
        let (mut loss_sum, mut done, mut seen, t0) = (0.0, 0usize, 0usize, Instant::now());
        let skipped = std::mem::take(&mut skip);
        for (bi, (ti, rows)) in batches.into_iter().enumerate().skip(skipped) {
            let task = &mut tasks[ti];
            let seqs: Vec<&[u32]> = rows.iter().map(|&i| task.ids[i].as_slice()).collect();
            let x = head_input(&enc.embed(&seqs)?, &seqs, task.bag)?;
            let logits = task.head.forward(&x, task.args.dropout, &mut rng)?;
            let t: Vec<u32> = rows.iter().map(|&i| task.y[i] as u32).collect();
            let w: Vec<f32> = rows.iter().map(|&i| task.weights[i]).collect();
            let loss = weighted_ce(
                &logits,
                &Tensor::new(t.as_slice(), &device)?,
                &Tensor::new(w.as_slice(), &device)?,
            )?;
            let grads = loss.backward()?;
            enc_opt.step(&grads)?;
            task.opt.step(&grads)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            done += 1;
            seen += rows.len();
            step += 1;
            if step.is_multiple_of(20) || bi + 1 == total {
                let rate = seen as f64 / t0.elapsed().as_secs_f64().max(1e-9);
                eprintln!(
                    "epoch {epoch} step {step} ({}/{total}): loss {:.4}, {rate:.1} texts/s",
                    bi + 1,
                    loss_sum / done as f64
                );
            }
            let last = (args.max_steps > 0 && step >= args.max_steps) || bi + 1 == total;
            if last || (args.eval_every > 0 && step.is_multiple_of(args.eval_every)) {
                let v = validate(&enc, &tasks)?;
                let mean = v.iter().sum::<f64>() / v.len() as f64;
                eprintln!("step {step}: validation macro-F1 {v:.4?} (mean {mean:.4})");
                history.push(json!({"step": step, "epoch": epoch, "validation_macro_f1": v}));
                if best.as_ref().is_none_or(|b| mean > b.0) {
                    let heads = tasks
                        .iter()
                        .map(|t| t.head.snapshot())
                        .collect::<candle_core::Result<_>>()?;
                    best = Some((mean, step, enc.trained()?, heads));
                }
                if let Some((best_mean, best_step, best_enc, best_heads)) = &best {
                    let state = checkpoint::State {
                        fingerprint: fingerprint.clone(),
                        step,
                        epoch: if bi + 1 == total { epoch + 1 } else { epoch },
                        batches_done: if bi + 1 == total { 0 } else { bi + 1 },
                        best_step: *best_step,
                        best_mean: *best_mean,
                        history: history.clone(),
                    };
                    let live = checkpoint::Weights {
                        encoder: enc.trained()?,
                        heads: tasks
                            .iter()
                            .map(|t| t.head.snapshot())
                            .collect::<candle_core::Result<_>>()?,
                    };
                    let kept = checkpoint::Weights {
                        encoder: best_enc.clone(),
                        heads: best_heads.clone(),
                    };
                    checkpoint::save(&args.out, &state, &live, &kept)?;
                }
            }
            if args.max_steps > 0 && step >= args.max_steps {
                break 'epochs;
            }
        }
    }
    let (best_mean, best_step, enc_snap, head_snaps) =
        best.ok_or_else(|| anyhow::anyhow!("no training step ran (empty training splits?)"))?;
    enc.restore(&enc_snap)?;
    let enc_snap = enc.with_fixed(enc_snap);
    eprintln!("best: step {best_step}, mean validation macro-F1 {best_mean:.4}");

    // The encoder directory: weights, plus the base checkpoint's config, tokenizer and pooling.
    std::fs::create_dir_all(&args.out)?;
    candle_core::safetensors::save(&enc_snap, args.out.join("model.safetensors"))?;
    std::fs::copy(&files.config, args.out.join("config.json"))?;
    std::fs::copy(&files.tokenizer, args.out.join("tokenizer.json"))?;
    if let Some(p) = &files.pooling {
        std::fs::create_dir_all(args.out.join("1_Pooling"))?;
        std::fs::copy(p, args.out.join("1_Pooling/config.json"))?;
    }
    let names: Vec<&str> = tasks.iter().map(|t| t.args.task.as_str()).collect();
    let note = format!(
        "fine-tuned jointly for {} from `{}` by `semroute-train finetune` ({}): encoder lr {}, heads lr {}, batch {}, best of {step} steps at step {best_step}",
        names.join(", "),
        args.encoder,
        args.train_layers.map_or("all layers".to_string(), |n| format!("top {n} layers")),
        args.lr,
        args.head_lr,
        args.batch_size
    );
    let mut summary = serde_json::Map::new();
    for (task, snap) in tasks.iter().zip(head_snaps) {
        let p_val = predict_with(&enc, task, &snap, &task.val)?;
        let p_test = predict_with(&enc, task, &snap, &task.test)?;
        let (scores, detector) = train::report(
            &task.args,
            &task.rows,
            &task.labels,
            (&task.y, &task.tokens),
            (&task.val, &p_val),
            (&task.test, &p_test),
        )?;
        summary.insert(
            task.args.task.clone(),
            json!({"test_accuracy": scores.accuracy, "test_macro_f1": scores.macro_f1,
                   "detector_test": detector.as_ref().map(|d| d["test"].clone())}),
        );
        train::write_head(
            &task.args,
            &task.labels,
            &snap,
            &scores,
            detector,
            &base,
            best_step,
            started,
            (task.train.len(), task.val.len(), task.test.len()),
            &note,
            None,
        )?;
    }
    let command = train::command_line();
    std::fs::write(
        args.out.join("finetune.json"),
        serde_json::to_string_pretty(&json!({
            "command": command, "base_encoder": args.encoder, "tasks": names,
            "best_step": best_step, "steps": step, "best_mean_validation_macro_f1": best_mean,
        "history": history, "test": summary,
            "seconds": started.elapsed().as_secs_f64(), "device": format!("{device:?}"),
        }))? + "\n",
    )?;
    eprintln!(
        "wrote {} (serve: classifier-svc serve --encoder {} --heads {})",
        args.out.display(),
        args.out.display(),
        args.out.join("heads").display()
    );
    Ok(())
}

/// `predict` with given head weights (the best checkpoint's, not the live head's).
fn predict_with(
    enc: &Trainable,
    task: &Task,
    weights: &[(Tensor, Tensor)],
    idx: &[usize],
) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut order: Vec<usize> = (0..idx.len()).collect();
    order.sort_by_key(|&i| task.ids[idx[i]].len());
    let mut out = vec![Vec::new(); idx.len()];
    for chunk in order.chunks(64) {
        let seqs: Vec<&[u32]> = chunk.iter().map(|&i| task.ids[idx[i]].as_slice()).collect();
        let emb = enc.embed(&seqs)?.detach();
        let p = probs(weights, &head_input(&emb, &seqs, task.bag)?)?;
        for (&i, p) in chunk.iter().zip(p) {
            out[i] = p;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use semroute_encoder::fixtures::{write_checkpoint, Spec};

    fn write_tasks(dir: &Path, line: &str) -> PathBuf {
        let p = dir.join("tasks");
        std::fs::write(&p, format!("# a comment\n\n{line}\n")).unwrap();
        p
    }

    #[test]
    fn task_lines_are_train_arguments_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ok = write_tasks(
            dir.path(),
            "--task a --data x.jsonl --label-field y --hidden 0  # trailing comment",
        );
        let t = parse_tasks(&ok).unwrap();
        assert_eq!((t[0].task.as_str(), t[0].hidden), ("a", 0));
        assert_eq!(t[0].input.label_field, "y");
        let spans = write_tasks(dir.path(), "--task p --data x.jsonl --spans-field spans");
        assert!(parse_tasks(&spans)
            .unwrap_err()
            .to_string()
            .contains("token tasks"));
        let unknown = write_tasks(dir.path(), "--task p --data x.jsonl --no-such-flag");
        assert!(parse_tasks(&unknown)
            .unwrap_err()
            .to_string()
            .contains(":3:"));
        let p = dir.path().join("twice");
        std::fs::write(&p, "--task a --data x\n--task a --data y\n").unwrap();
        assert!(parse_tasks(&p).unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn train_layers_freezes_embeddings_and_lower_layers() {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(dir.path(), &Spec::tiny(Arch::Bert)).unwrap();
        let enc = Trainable::load(
            &dir.path().join("config.json"),
            &dir.path().join("model.safetensors"),
            Pooling::Mean,
            Some(1),
            &Device::Cpu,
        )
        .unwrap();
        assert!(!enc.vars.is_empty());
        assert!(enc.vars.keys().all(|n| n.starts_with("encoder.layer.3.")));
        assert!(enc.fixed.contains_key("embeddings.word_embeddings.weight"));
        let loss = enc
            .embed(&[&[1u32, 5, 6, 2][..]])
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let with_grad = enc
            .all_vars()
            .iter()
            .filter(|v| grads.get(v).is_some())
            .count();
        assert!(with_grad > 0, "no gradient reached the trained layer");
        assert_eq!(
            enc.with_fixed(enc.trained().unwrap()).len(),
            enc.vars.len() + enc.fixed.len()
        );
    }

    /// A tiny random BERT, a two-topic data set its frozen random embedding barely separates,
    /// and the settings of a short run on them (texts and labels returned for checks).
    fn tiny_run(dir: &Path) -> (FinetuneArgs, Vec<(String, &'static str)>) {
        let base = dir.join("base");
        write_checkpoint(&base, &Spec::tiny(Arch::Bert)).unwrap();
        let fillers = ["the", "a", "what", "is", "of", "how", "do", "i", "my", "me"];
        let mut rows = String::new();
        let mut texts = Vec::new();
        for i in 0..160 {
            let (topic, label) = if i % 2 == 0 {
                ("tax income", "money")
            } else {
                ("poem sea", "verse")
            };
            let text = format!(
                "{} {} {topic} {}",
                fillers[i % fillers.len()],
                fillers[(i / 3) % fillers.len()],
                fillers[(i / 7) % fillers.len()]
            );
            rows += &format!("{}\n", json!({"text": text, "label": label}));
            texts.push((text, label));
        }
        let data = dir.join("data.jsonl");
        std::fs::write(&data, rows).unwrap();
        let tasks = write_tasks(
            dir,
            &format!("--task topic --data {} --hidden 0", data.display()),
        );
        let args = FinetuneArgs {
            tasks,
            encoder: base.display().to_string(),
            out: dir.join("tuned"),
            epochs: 4,
            batch_size: 8,
            max_length: 32,
            lr: 1e-3,
            head_lr: 2e-2,
            weight_decay: 0.0,
            max_steps: 0,
            eval_every: 0,
            max_train_rows: 0,
            train_layers: None,
            seed: 3,
            resume: false,
        };
        (args, texts)
    }

    /// Fine-tunes the tiny BERT, then serves the written directory: the encoder changed, the
    /// served embedding is the trained one, and the served head classifies the held-out rows.
    #[test]
    fn finetuned_encoder_is_served_as_trained() {
        let dir = tempfile::tempdir().unwrap();
        let (args, texts) = tiny_run(dir.path());
        let (base, out) = (PathBuf::from(&args.encoder), args.out.clone());
        run(&args).unwrap();

        let before =
            candle_core::safetensors::load(base.join("model.safetensors"), &Device::Cpu).unwrap();
        let after =
            candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
        let name = "encoder.layer.0.attention.self.query.weight";
        let diff = (&before[name] - &after[name])
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff > 1e-3, "encoder weights did not move ({diff})");

        let served = Model::load_encoder(
            &Source::Local(out.clone()),
            Some(&out.join("heads")),
            &LoadOptions::default(),
        )
        .unwrap();
        let trained = Trainable::load(
            &out.join("config.json"),
            &out.join("model.safetensors"),
            Pooling::Mean,
            None,
            &Device::Cpu,
        )
        .unwrap();
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|(t, _)| served.tokenize(t, Truncation::Truncate).unwrap().ids)
            .collect();
        let seqs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
        let res = served.run(&seqs).unwrap();
        let want: Vec<Vec<f32>> = trained.embed(&seqs).unwrap().to_vec2().unwrap();
        for (a, b) in res.embeddings.iter().zip(&want) {
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() < 1e-4, "served {x} vs trained {y}");
            }
        }
        let labels = &served.tasks[0].labels;
        let right = res
            .probs
            .iter()
            .zip(&texts)
            .filter(|(p, (_, l))| labels[argmax(&p[0])] == *l)
            .count();
        assert!(right as f64 / texts.len() as f64 > 0.95, "{right}/160");
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("finetune.json")).unwrap())
                .unwrap();
        assert!(summary["test"]["topic"]["test_accuracy"].as_f64().unwrap() > 0.95);
        assert!(out.join("heads/topic/CARD.md").is_file());
    }

    /// A run cut off after 4 steps resumes from its checkpoint: it goes on at step 5 with the
    /// best so far kept, and a checkpoint is never resumed under other settings.
    #[test]
    fn a_cut_off_run_resumes_from_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (mut args, _) = tiny_run(dir.path());
        (args.max_steps, args.eval_every) = (4, 2);
        run(&args).unwrap();
        let state = |args: &FinetuneArgs| -> serde_json::Value {
            let p = checkpoint::dir(&args.out).join("state.json");
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
        };
        assert_eq!(state(&args)["step"], 4);
        assert_eq!(state(&args)["history"].as_array().unwrap().len(), 2);

        let other = FinetuneArgs {
            seed: 4,
            resume: true,
            ..args.clone()
        };
        let err = run(&other).unwrap_err().to_string();
        assert!(err.contains("other data or settings"), "{err}");

        (args.max_steps, args.resume) = (9, true);
        run(&args).unwrap();
        let s = state(&args);
        assert_eq!(s["step"], 9);
        let steps: Vec<u64> = s["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["step"].as_u64().unwrap())
            .collect();
        assert_eq!(
            steps,
            [2, 4, 6, 8, 9],
            "the resumed run went on from step 5"
        );
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(args.out.join("finetune.json")).unwrap())
                .unwrap();
        assert_eq!(summary["steps"], 9);
        assert_eq!(summary["history"].as_array().unwrap().len(), 5);
    }
}
