//! semroute-encoder: the encoders (BERT family, ModernBERT) on candle, where they come from, their
//! heads and labels, tokenization. Pure inference: no queues, no networking, no training. The
//! server (classifier-svc) and the trainer (semroute-trainer) both build on it.

pub mod attention;
pub mod bert;
pub mod config;
pub mod error;
pub mod fast;
#[cfg(feature = "fixtures")]
pub mod fixtures;
pub mod heads;
pub mod modernbert;
pub mod ops;
pub mod profile;
pub mod source;
pub mod spans;
pub mod static_embed;
pub mod tokenize;
pub mod wordpiece;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use config::{Arch, EncoderConfig, Pooling};
pub use heads::TaskHead;
pub use source::Source;
pub use tokenize::{Encoded, Truncation};

use crate::error::{Error, Result};

/// Sizes candle's matmul thread pool (rayon) to every core this process may run on, unless the
/// operator set RAYON_NUM_THREADS: candle guesses physical cores, which can be 1 on a VM. Call
/// first thing in `main`, before any thread exists.
pub fn use_all_cores() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

/// Where and how to run models.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// f32 on CPU; f16/bf16 are for GPUs.
    pub dtype: DType,
    /// Max tokens per text (special tokens included), capped by the model's position table.
    pub max_length: usize,
    /// Pooling for embeddings and shared-encoder heads; None = the checkpoint's own
    /// (sentence-transformers `1_Pooling`), else mean.
    pub pooling: Option<Pooling>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            max_length: 512,
            pooling: None,
        }
    }
}

enum Encoder {
    Bert(bert::Bert),
    ModernBert(modernbert::ModernBert),
    Static(static_embed::StaticEmbed),
}

/// Static facts about a loaded model (for Info, metrics and responses).
#[derive(Debug, Clone)]
pub struct ModelMeta {
    pub id: String,
    /// Content hash of config, weights and heads.
    pub revision: String,
    pub arch: Arch,
    pub hidden_size: usize,
    pub vocab_size: usize,
    pub max_length: usize,
    pub pooling: Pooling,
    pub device: String,
    pub dtype: String,
}

impl ModelMeta {
    /// `id@revision`, as reported in every result.
    pub fn versioned_id(&self) -> String {
        format!("{}@{}", self.id, self.revision)
    }
}

/// One encoder and the heads that share its output: one forward pass serves all its tasks.
pub struct Model {
    pub meta: ModelMeta,
    pub tasks: Vec<TaskHead>,
    encoder: Encoder,
    tokenizer: tokenize::TextTokenizer,
    device: Device,
    pad_id: u32,
}

/// Output of one batch, row-aligned with its input.
pub struct BatchOutput {
    /// L2-normalised pooled embedding per row.
    pub embeddings: Vec<Vec<f32>>,
    /// `probs[row][task][label]`, tasks in `Model::tasks` order (empty for token heads).
    pub probs: Vec<Vec<Vec<f32>>>,
    /// `tokens[row][task][token][label]` for token heads (empty for sentence heads).
    pub tokens: Vec<Vec<Vec<Vec<f32>>>>,
}

impl Model {
    /// A shared encoder with the heads found in `heads_dir` (layout b).
    pub fn load_encoder(
        source: &Source,
        heads_dir: Option<&Path>,
        opts: &LoadOptions,
    ) -> Result<Self> {
        let (files, cfg, vb, mut model) = Self::load_common(source, opts)?;
        if let Some(dir) = heads_dir {
            model.tasks = TaskHead::load_dir(dir, cfg.hidden_size, &opts.device)?;
        }
        drop(vb);
        let mut hashed = vec![files.config.as_path(), files.weights.as_path()];
        let head_files: Vec<_> = heads_dir
            .map(|d| {
                model
                    .tasks
                    .iter()
                    .flat_map(|t| {
                        let p = d.join(&t.name);
                        [p.join("head.json"), p.join("head.safetensors")]
                    })
                    .filter(|p| p.is_file())
                    .collect()
            })
            .unwrap_or_default();
        hashed.extend(head_files.iter().map(|p| p.as_path()));
        model.meta.revision = source::content_version(&hashed)?;
        Ok(model)
    }

    /// Serves a model profile (`profile.rs`, a directory with `head.json` of kind `profile`)
    /// with this encoder's heads, from the same pass. Its files join the revision, so cached
    /// decisions made without it (or with another) are not reused.
    pub fn add_profile(&mut self, dir: &Path) -> Result<()> {
        let head = TaskHead::load_profile(dir, self.meta.hidden_size, &self.device)?;
        if self.tasks.iter().any(|t| t.name == head.name) {
            return Err(Error::load(
                dir.display().to_string(),
                format!("task {:?} is already served by a head", head.name),
            ));
        }
        self.tasks.push(head);
        let h = source::content_version(&[&dir.join("head.json"), &dir.join("head.safetensors")])?;
        self.meta.revision = format!("{}+{h}", self.meta.revision);
        Ok(())
    }

    /// A Hugging Face sequence-classification checkpoint serving one task (layout a).
    pub fn load_checkpoint(task: &str, source: &Source, opts: &LoadOptions) -> Result<Self> {
        let (files, cfg, vb, mut model) = Self::load_common(source, opts)?;
        let head = TaskHead::from_checkpoint(task, &vb, &cfg, &files.id)?;
        if cfg.arch == Arch::ModernBert && opts.pooling.is_none() {
            model.meta.pooling = cfg.classifier_pooling;
        }
        model.tasks = vec![head];
        model.meta.revision = source::content_version(&[&files.config, &files.weights])?;
        Ok(model)
    }

    fn load_common(
        source: &Source,
        opts: &LoadOptions,
    ) -> Result<(source::Files, EncoderConfig, VarBuilder<'static>, Self)> {
        let files = source.resolve()?;
        let id = files.id.clone();
        let text = std::fs::read_to_string(&files.config)
            .map_err(|e| Error::load(&id, format!("config.json: {e}")))?;
        let mut cfg = EncoderConfig::from_json(&text, &id)?;
        // SAFETY: the weights file is memory-mapped read-only and not modified while loaded.
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(&[&files.weights], opts.dtype, &opts.device)
        }
        .map_err(|e| Error::load(&id, format!("model.safetensors: {e}")))?;
        let encoder = match cfg.arch {
            Arch::Bert => bert::Bert::load(vb.clone(), &cfg).map(Encoder::Bert),
            Arch::ModernBert => {
                modernbert::ModernBert::load(vb.clone(), &cfg).map(Encoder::ModernBert)
            }
            Arch::Static => {
                let table = static_embed::StaticEmbed::load(&vb, cfg.hidden_size, &id)?;
                cfg.vocab_size = table.vocab_size();
                Ok(Encoder::Static(table))
            }
        }
        .map_err(|e| Error::load(&id, format!("{} weights: {e}", cfg.arch.as_str())))?;
        let max_length = opts.max_length.min(cfg.max_position_embeddings).max(2);
        let tokenizer = tokenize::TextTokenizer::load(&files.tokenizer, max_length, &id)?;
        let pooling = match (opts.pooling, &files.pooling) {
            (Some(p), _) => p,
            (None, Some(p)) => pooling_from_sentence_transformers(p)?,
            (None, None) => Pooling::Mean,
        };
        let meta = ModelMeta {
            id,
            revision: String::new(),
            arch: cfg.arch,
            hidden_size: cfg.hidden_size,
            vocab_size: cfg.vocab_size,
            max_length,
            pooling,
            device: device_name(&opts.device),
            dtype: format!("{:?}", opts.dtype).to_lowercase(),
        };
        let model = Model {
            meta,
            tasks: Vec::new(),
            encoder,
            tokenizer,
            device: opts.device.clone(),
            pad_id: cfg.pad_token_id,
        };
        Ok((files, cfg, vb, model))
    }

    pub fn tokenize(&self, text: &str, truncation: Truncation) -> Result<Encoded> {
        self.tokenizer.encode(text, truncation)
    }

    /// `tokenize` with each token's byte offsets (token heads read the text through them).
    pub fn tokenize_with_offsets(&self, text: &str, truncation: Truncation) -> Result<Encoded> {
        self.tokenizer.encode_with(text, truncation, true)
    }

    /// The special tokens the tokenizer puts before and after a text's own.
    pub fn wrap(&self) -> (&[u32], &[u32]) {
        self.tokenizer.wrap()
    }

    /// A text's own token ids, whole (no special tokens, no truncation).
    pub fn content_ids(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.content_ids(text)
    }

    /// The windowed head's settings, if a head judges long texts in windows (the first one's:
    /// heads of one encoder share their windows).
    pub fn window(&self) -> Option<heads::WindowSpec> {
        self.tasks.iter().find_map(|t| t.window.map(|w| w.spec))
    }

    /// The windows of a long text that windowed heads also judge (token ids with special
    /// tokens); empty when no head is windowed or the text fits one window.
    pub fn windows(&self, text: &str) -> Result<Vec<Vec<u32>>> {
        if self.window().is_none() {
            return Ok(Vec::new());
        }
        Ok(self.windows_of(&self.tokenizer.content_ids(text)?))
    }

    /// `windows` from a text's own token ids (`content_ids`).
    pub fn windows_of(&self, content: &[u32]) -> Vec<Vec<u32>> {
        let Some(spec) = self.window() else {
            return Vec::new();
        };
        let (pre, post) = self.tokenizer.wrap();
        let size = spec.tokens.saturating_sub(2).max(1);
        spec.starts(content.len())
            .into_iter()
            .map(|s| {
                let end = (s + size).min(content.len());
                [pre, &content[s..end], post].concat()
            })
            .collect()
    }

    /// A text's encoding from its own token ids (`content_ids`): the special tokens around
    /// them, truncated to the max length as `tokenize` does. One tokenization then serves the
    /// whole text and its windows.
    pub fn encode_content(&self, content: Vec<u32>, truncation: Truncation) -> Result<Encoded> {
        self.tokenizer.wrap_content(content, truncation)
    }

    /// Folds the windows' probabilities (`windows[window][task][label]`) into one text's
    /// (`probs[task][label]`) for every windowed head: the most positive of them wins.
    pub fn apply_windows(&self, probs: &mut [Vec<f32>], windows: &[Vec<Vec<f32>>]) {
        for (ti, task) in self.tasks.iter().enumerate() {
            if let (Some(w), Some(p)) = (task.window, probs.get_mut(ti)) {
                heads::pick_window(
                    p,
                    windows.iter().filter_map(|x| x.get(ti)).map(Vec::as_slice),
                    w.positive,
                );
            }
        }
    }

    /// Pads `seqs` into one `(b, t)` id tensor: done by the batcher while the previous batch runs.
    pub fn prepare(&self, seqs: &[&[u32]]) -> Result<Prepared> {
        self.prepare_with(seqs, Vec::new())
    }

    /// Whether a head reads tokens (then texts are tokenized with offsets, and `prepare_with`
    /// gets their spelling features).
    pub fn has_token_heads(&self) -> bool {
        self.tasks.iter().any(|t| t.is_token())
    }

    /// `prepare`, with each row's spelling features (`model::spans::shape_features`) for token
    /// heads; rows without them read zeros. Token heads run only on batches given features.
    pub fn prepare_with(&self, seqs: &[&[u32]], shapes: Vec<Vec<f32>>) -> Result<Prepared> {
        let b = seqs.len();
        let t = seqs.iter().map(|s| s.len()).max().unwrap_or(1).max(1);
        let lengths: Vec<usize> = seqs.iter().map(|s| s.len().max(1)).collect();
        let mut ids = vec![self.pad_id; b * t];
        for (row, s) in seqs.iter().enumerate() {
            ids[row * t..row * t + s.len()].copy_from_slice(s);
        }
        Ok(Prepared {
            ids: Tensor::from_vec(ids, (b.max(1), t), &self.device)?,
            lengths,
            shapes,
        })
    }

    /// Runs the encoder once over a prepared batch and every head on its output.
    ///
    /// On the CPU the pass runs inside the rayon pool, so the many small parallel ops (gemm,
    /// fused kernels) fork from a pool worker instead of parking the calling thread once per op.
    pub fn forward(&self, batch: &Prepared) -> Result<BatchOutput> {
        if self.device.is_cpu() {
            rayon::scope(|_| self.forward_here(batch))
        } else {
            self.forward_here(batch)
        }
    }

    /// `forward` on the calling thread, outside the rayon pool: for a model whose pass is a
    /// few look-ups (a static model), where a hop into the pool would cost more than the work.
    pub fn forward_inline(&self, batch: &Prepared) -> Result<BatchOutput> {
        self.forward_here(batch)
    }

    fn forward_here(&self, batch: &Prepared) -> Result<BatchOutput> {
        let b = batch.lengths.len();
        if b == 0 {
            return Ok(BatchOutput {
                embeddings: vec![],
                probs: vec![],
                tokens: vec![],
            });
        }
        let lengths = &batch.lengths;
        let hidden = self.hidden(batch)?;
        let pooled = match self.meta.pooling {
            Pooling::Cls => ops::cls_pool(&hidden)?,
            Pooling::Mean => ops::mean_pool(&hidden, lengths)?,
        };
        let embedding = ops::l2_normalize(&pooled.to_dtype(DType::F32)?)?;
        let head_input = embedding.to_dtype(hidden.dtype())?;
        // Lexical features for heads that read them: each text's bag of token ids, of each head's
        // own shape (as it was trained), built from the ids already in the batch (no second
        // pass); sparse, a few dozen entries a text.
        let mut bags: HashMap<(usize, usize), Vec<heads::Bag>> = HashMap::new();
        let mut ids: Vec<Vec<u32>> = Vec::new();
        for shape in self.tasks.iter().map(|t| t.bag_shape()) {
            if shape.0 + shape.1 > 0 && !bags.contains_key(&shape) {
                if ids.is_empty() {
                    ids = batch.ids.to_vec2()?;
                }
                let rows = ids
                    .iter()
                    .zip(lengths)
                    .map(|(ids, &len)| {
                        heads::token_bag_with(&ids[..len.min(ids.len())], shape.0, shape.1)
                    })
                    .collect();
                bags.insert(shape, rows);
            }
        }
        // Token heads read every token's hidden state (padding left out), once for all of them;
        // only when some text in the batch asked for them (it then carries spelling features).
        let states: Option<Vec<Vec<Vec<f32>>>> =
            if self.has_token_heads() && !batch.shapes.is_empty() {
                let mut rows: Vec<Vec<Vec<f32>>> = hidden.to_dtype(DType::F32)?.to_vec3()?;
                for (r, &len) in rows.iter_mut().zip(lengths) {
                    r.truncate(len);
                }
                Some(rows)
            } else {
                None
            };
        let mut per_task = Vec::with_capacity(self.tasks.len());
        let mut per_task_tokens = Vec::with_capacity(self.tasks.len());
        for task in &self.tasks {
            match &states {
                Some(rows) if task.is_token() => {
                    per_task.push(vec![Vec::new(); b]);
                    per_task_tokens.push(task.token_probabilities(
                        rows,
                        &batch.shapes,
                        &self.device,
                    )?);
                }
                // Not asked for in this batch.
                None if task.is_token() => {
                    per_task.push(vec![Vec::new(); b]);
                    per_task_tokens.push(vec![Vec::new(); b]);
                }
                _ => {
                    per_task.push(
                        task.probabilities(
                            &hidden,
                            lengths,
                            &head_input,
                            bags.get(&task.bag_shape()).map(Vec::as_slice),
                        )?
                        .to_vec2()?,
                    );
                    per_task_tokens.push(vec![Vec::new(); b]);
                }
            }
        }
        let embeddings: Vec<Vec<f32>> = embedding.to_vec2()?;
        let mut probs = vec![Vec::with_capacity(self.tasks.len()); b];
        let mut tokens = vec![Vec::with_capacity(self.tasks.len()); b];
        for (p, t) in per_task.into_iter().zip(per_task_tokens) {
            for (row, (p, t)) in p.into_iter().zip(t).enumerate() {
                probs[row].push(p);
                tokens[row].push(t);
            }
        }
        Ok(BatchOutput {
            embeddings,
            probs,
            tokens,
        })
    }

    /// A static model's token table `(vocab, dim)` (None for a transformer).
    pub(crate) fn static_table(&self) -> Option<&Tensor> {
        match &self.encoder {
            Encoder::Static(m) => Some(m.table()),
            _ => None,
        }
    }

    /// The encoder's last hidden states `(b, t, hidden)`.
    fn hidden(&self, batch: &Prepared) -> Result<Tensor> {
        Ok(match &self.encoder {
            Encoder::Bert(m) => m.forward(&batch.ids, &batch.lengths)?,
            Encoder::ModernBert(m) => m.forward(&batch.ids, &batch.lengths)?,
            Encoder::Static(m) => m.forward(&batch.ids)?,
        })
    }

    /// Last hidden states per text and token, padding left out (offline: training token heads).
    pub fn token_states(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<Vec<f32>>>> {
        let batch = self.prepare(seqs)?;
        let hidden = if self.device.is_cpu() {
            rayon::scope(|_| self.hidden(&batch))?
        } else {
            self.hidden(&batch)?
        };
        let mut rows: Vec<Vec<Vec<f32>>> = hidden.to_dtype(DType::F32)?.to_vec3()?;
        for (r, &len) in rows.iter_mut().zip(&batch.lengths) {
            r.truncate(len);
        }
        Ok(rows)
    }

    /// Convenience for offline use (bench, eval): prepare + forward.
    pub fn run(&self, seqs: &[&[u32]]) -> Result<BatchOutput> {
        self.forward(&self.prepare(seqs)?)
    }
}

/// A padded batch ready for `Model::forward`.
pub struct Prepared {
    ids: Tensor,
    lengths: Vec<usize>,
    shapes: Vec<Vec<f32>>,
}

impl Prepared {
    pub fn len(&self) -> usize {
        self.lengths.len()
    }
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }
    /// Padded tokens: rows x longest row.
    pub fn padded_tokens(&self) -> usize {
        self.lengths.len() * self.lengths.iter().copied().max().unwrap_or(0)
    }
}

fn pooling_from_sentence_transformers(path: &Path) -> Result<Pooling> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::load(path.display().to_string(), e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::load(path.display().to_string(), e))?;
    if v["pooling_mode_cls_token"].as_bool() == Some(true) {
        Ok(Pooling::Cls)
    } else {
        Ok(Pooling::Mean)
    }
}

fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}
