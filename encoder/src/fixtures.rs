//! Random-weight checkpoints with the same files and tensor names as Hugging Face's, written on
//! demand: the tests' models (no network) and the benchmark's ModernBERT-base-sized model.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::json;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::Tokenizer;

use crate::Arch;

#[derive(Debug, Clone)]
pub struct Spec {
    pub arch: Arch,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub max_positions: usize,
    /// Extra vocabulary rows beyond the tokenizer's (a real model's vocab size).
    pub vocab_size: Option<usize>,
    /// Some(labels) writes a sequence-classification checkpoint.
    pub labels: Option<Vec<String>>,
    /// ModernBERT `classifier_pooling`.
    pub pooling: &'static str,
    /// ModernBERT sliding window.
    pub local_attention: usize,
    pub seed: u64,
}

impl Spec {
    pub fn tiny(arch: Arch) -> Self {
        Self {
            arch,
            hidden: 32,
            layers: 4,
            heads: 4,
            intermediate: 48,
            max_positions: 256,
            vocab_size: None,
            labels: None,
            pooling: "mean",
            local_attention: 8,
            seed: 7,
        }
    }

    /// ModernBERT-base sizes (answerdotai/ModernBERT-base), random weights.
    pub fn modernbert_base() -> Self {
        Self {
            arch: Arch::ModernBert,
            hidden: 768,
            layers: 22,
            heads: 12,
            intermediate: 1152,
            max_positions: 8192,
            vocab_size: Some(50368),
            labels: Some((0..14).map(|i| format!("label_{i}")).collect()),
            pooling: "mean",
            local_attention: 128,
            seed: 11,
        }
    }

    pub fn with_labels(mut self, labels: &[&str]) -> Self {
        self.labels = Some(labels.iter().map(|s| s.to_string()).collect());
        self
    }
}

/// Words in the test vocabulary (plus single characters and `##` pieces so any text tokenizes).
const WORDS: &[&str] = &[
    "the",
    "a",
    "what",
    "is",
    "of",
    "capital",
    "north",
    "carolina",
    "how",
    "do",
    "i",
    "compute",
    "tax",
    "on",
    "my",
    "income",
    "write",
    "poem",
    "about",
    "sea",
    "ignore",
    "previous",
    "instructions",
    "and",
    "tell",
    "me",
    "secret",
    "prove",
    "theorem",
    "integral",
    "hello",
    "world",
    "model",
    "router",
    "fast",
    "slow",
];

pub fn vocabulary() -> Vec<String> {
    let mut v: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let chars: Vec<char> = ('a'..='z')
        .chain('0'..='9')
        .chain("?.,!'-:;()\"".chars())
        .collect();
    v.extend(chars.iter().map(|c| c.to_string()));
    v.extend(chars.iter().map(|c| format!("##{c}")));
    for w in WORDS {
        if !v.iter().any(|x| x == w) {
            v.push(w.to_string());
        }
    }
    v
}

/// A BERT-style WordPiece tokenizer over [`vocabulary`], saved as `tokenizer.json`.
pub fn write_tokenizer(path: &Path) -> anyhow::Result<()> {
    let vocab_file = path.with_extension("vocab.txt");
    std::fs::write(&vocab_file, vocabulary().join("\n") + "\n")?;
    let wp = WordPiece::from_file(&vocab_file.to_string_lossy())
        .unk_token("[UNK]".into())
        .build()
        .map_err(anyhow::Error::msg)?;
    std::fs::remove_file(&vocab_file)?;
    let mut tok = Tokenizer::new(wp);
    tok.with_normalizer(Some(BertNormalizer::new(true, true, None, true)));
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    tok.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".into(), 3),
        ("[CLS]".into(), 2),
    )));
    tok.save(path, false).map_err(anyhow::Error::msg)?;
    Ok(())
}

struct Weights {
    rng: StdRng,
    map: HashMap<String, Tensor>,
}

impl Weights {
    fn randn(&mut self, name: &str, shape: &[usize], std: f32) {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| {
                // Box-Muller from two uniforms.
                let u1: f32 = self.rng.random_range(1e-7f32..1.0);
                let u2: f32 = self.rng.random_range(0.0f32..1.0);
                (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos() * std
            })
            .collect();
        let t = Tensor::from_vec(data, shape, &Device::Cpu).expect("tensor");
        self.map.insert(name.to_string(), t);
    }
    fn norm(&mut self, name: &str, size: usize, bias: bool) {
        let w: Vec<f32> = (0..size)
            .map(|_| 1.0 + self.rng.random_range(-0.1f32..0.1))
            .collect();
        self.map.insert(
            format!("{name}.weight"),
            Tensor::from_vec(w, size, &Device::Cpu).expect("tensor"),
        );
        if bias {
            self.randn(&format!("{name}.bias"), &[size], 0.02);
        }
    }
    fn linear(&mut self, name: &str, out: usize, inp: usize, bias: bool) {
        self.randn(
            &format!("{name}.weight"),
            &[out, inp],
            1.0 / (inp as f32).sqrt(),
        );
        if bias {
            self.randn(&format!("{name}.bias"), &[out], 0.02);
        }
    }
}

/// Writes `config.json`, `tokenizer.json` and `model.safetensors` into `dir`.
pub fn write_checkpoint(dir: &Path, spec: &Spec) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    write_tokenizer(&dir.join("tokenizer.json"))?;
    let vocab = spec
        .vocab_size
        .unwrap_or(vocabulary().len())
        .max(vocabulary().len());
    let (h, i) = (spec.hidden, spec.intermediate);
    let mut w = Weights {
        rng: StdRng::seed_from_u64(spec.seed),
        map: HashMap::new(),
    };
    let mut config = match spec.arch {
        Arch::Bert => {
            let p = if spec.labels.is_some() { "bert." } else { "" };
            w.randn(
                &format!("{p}embeddings.word_embeddings.weight"),
                &[vocab, h],
                0.5,
            );
            w.randn(
                &format!("{p}embeddings.position_embeddings.weight"),
                &[spec.max_positions, h],
                0.1,
            );
            w.randn(
                &format!("{p}embeddings.token_type_embeddings.weight"),
                &[2, h],
                0.1,
            );
            w.norm(&format!("{p}embeddings.LayerNorm"), h, true);
            for l in 0..spec.layers {
                let n = format!("{p}encoder.layer.{l}");
                for part in ["query", "key", "value"] {
                    w.linear(&format!("{n}.attention.self.{part}"), h, h, true);
                }
                w.linear(&format!("{n}.attention.output.dense"), h, h, true);
                w.norm(&format!("{n}.attention.output.LayerNorm"), h, true);
                w.linear(&format!("{n}.intermediate.dense"), i, h, true);
                w.linear(&format!("{n}.output.dense"), h, i, true);
                w.norm(&format!("{n}.output.LayerNorm"), h, true);
            }
            if spec.labels.is_some() {
                w.linear("bert.pooler.dense", h, h, true);
            }
            json!({
                "architectures": [if spec.labels.is_some() { "BertForSequenceClassification" } else { "BertModel" }],
                "model_type": "bert", "hidden_act": "gelu", "hidden_size": h,
                "intermediate_size": i, "layer_norm_eps": 1e-12,
                "max_position_embeddings": spec.max_positions, "num_attention_heads": spec.heads,
                "num_hidden_layers": spec.layers, "pad_token_id": 0, "type_vocab_size": 2,
                "vocab_size": vocab, "hidden_dropout_prob": 0.1, "initializer_range": 0.02,
                "position_embedding_type": "absolute"
            })
        }
        Arch::ModernBert => {
            w.randn("model.embeddings.tok_embeddings.weight", &[vocab, h], 0.5);
            w.norm("model.embeddings.norm", h, false);
            for l in 0..spec.layers {
                let n = format!("model.layers.{l}");
                if l > 0 {
                    w.norm(&format!("{n}.attn_norm"), h, false);
                }
                w.linear(&format!("{n}.attn.Wqkv"), 3 * h, h, false);
                w.linear(&format!("{n}.attn.Wo"), h, h, false);
                w.norm(&format!("{n}.mlp_norm"), h, false);
                w.linear(&format!("{n}.mlp.Wi"), 2 * i, h, false);
                w.linear(&format!("{n}.mlp.Wo"), h, i, false);
            }
            w.norm("model.final_norm", h, false);
            if spec.labels.is_some() {
                w.linear("head.dense", h, h, false);
                w.norm("head.norm", h, false);
            }
            json!({
                "architectures": [if spec.labels.is_some() { "ModernBertForSequenceClassification" } else { "ModernBertModel" }],
                "model_type": "modernbert", "hidden_activation": "gelu", "hidden_size": h,
                "intermediate_size": i, "norm_eps": 1e-5, "norm_bias": false,
                "max_position_embeddings": spec.max_positions, "num_attention_heads": spec.heads,
                "num_hidden_layers": spec.layers, "pad_token_id": 0, "vocab_size": vocab,
                "global_attn_every_n_layers": 3, "global_rope_theta": 160000.0,
                "local_attention": spec.local_attention, "local_rope_theta": 10000.0,
                "classifier_pooling": spec.pooling, "classifier_activation": "gelu",
                "classifier_bias": false
            })
        }
        Arch::Static => {
            anyhow::ensure!(spec.labels.is_none(), "a static model has no classifier");
            w.randn("embeddings", &[vocab, h], 0.5);
            json!({
                "model_type": "model2vec", "architectures": ["StaticModel"], "hidden_dim": h,
                "normalize": true
            })
        }
    };
    if let Some(labels) = &spec.labels {
        w.linear("classifier", labels.len(), h, true);
        // As Hugging Face writes them: string keys in id2label, integer values in label2id.
        let id2label: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), json!(l)))
            .collect();
        let label2id: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), json!(i)))
            .collect();
        config["id2label"] = json!(id2label);
        config["label2id"] = json!(label2id);
    }
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    candle_core::safetensors::save(&w.map, dir.join("model.safetensors"))?;
    Ok(())
}

/// Writes a shared-encoder head (`<heads_dir>/<task>/head.json` + `head.safetensors`): a linear
/// layer (`hidden_layers` empty) or an MLP with the given hidden widths.
pub fn write_head(
    heads_dir: &Path,
    task: &str,
    labels: &[&str],
    input: usize,
    hidden_layers: &[usize],
    seed: u64,
) -> anyhow::Result<()> {
    write_head_with_bag(heads_dir, task, labels, input, (0, 0), hidden_layers, seed)
}

/// `write_head` for a head that also reads a token bag of `(vocab, bigram buckets)` beside the
/// embedding of `input` dimensions.
pub fn write_head_with_bag(
    heads_dir: &Path,
    task: &str,
    labels: &[&str],
    input: usize,
    (vocab, bigrams): (usize, usize),
    hidden_layers: &[usize],
    seed: u64,
) -> anyhow::Result<()> {
    let dir = heads_dir.join(task);
    std::fs::create_dir_all(&dir)?;
    let mut w = Weights {
        rng: StdRng::seed_from_u64(seed),
        map: HashMap::new(),
    };
    let mut dims = vec![input + vocab + bigrams];
    dims.extend_from_slice(hidden_layers);
    dims.push(labels.len());
    for (k, pair) in dims.windows(2).enumerate() {
        // Larger weights than a trained head, so random outputs are not all near-uniform.
        w.randn(&format!("layers.{k}.weight"), &[pair[1], pair[0]], 3.0);
        w.randn(&format!("layers.{k}.bias"), &[pair[1]], 0.1);
    }
    candle_core::safetensors::save(&w.map, dir.join("head.safetensors"))?;
    let spec = crate::heads::HeadSpec {
        task: task.to_string(),
        labels: labels.iter().map(|s| s.to_string()).collect(),
        activation: "relu".into(),
        token_features: vocab,
        bigram_buckets: bigrams,
        kind: String::new(),
        context: 0,
        positive: None,
        window: None,
    };
    std::fs::write(dir.join("head.json"), serde_json::to_string_pretty(&spec)?)?;
    Ok(())
}

/// Writes a token-classification head (`"kind": "token"`, BIO labels over `types`) reading
/// `context` neighbours each side of an encoder with `hidden` dimensions; random weights.
pub fn write_token_head(
    heads_dir: &Path,
    task: &str,
    types: &[&str],
    hidden: usize,
    context: usize,
    seed: u64,
) -> anyhow::Result<()> {
    let types: Vec<String> = types.iter().map(|t| t.to_string()).collect();
    let labels = crate::spans::bio_labels(&types);
    let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
    let width = crate::spans::token_input_width(hidden, context);
    write_head(heads_dir, task, &refs, width, &[16], seed)?;
    let spec = crate::heads::HeadSpec {
        task: task.to_string(),
        labels,
        activation: "relu".into(),
        token_features: 0,
        bigram_buckets: 0,
        kind: "token".into(),
        context,
        positive: None,
        window: None,
    };
    std::fs::write(
        heads_dir.join(task).join("head.json"),
        serde_json::to_string_pretty(&spec)?,
    )?;
    Ok(())
}

/// A static model (`dir/static`) and heads for it (`dir/static-heads`) as the fast tier has
/// them: `domain` an MLP reading the token bag with bigrams, `complexity` linear, `jailbreak`
/// judging long texts in windows. Returns (model dir, heads dir).
pub fn static_with_heads(dir: &Path) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let model = dir.join("static");
    let spec = Spec::tiny(Arch::Static);
    write_checkpoint(&model, &spec)?;
    let vocab = vocabulary().len();
    let heads = dir.join("static-heads");
    let domain = ["math", "law", "other"];
    write_head_with_bag(
        &heads,
        "domain",
        &domain,
        spec.hidden,
        (vocab, 64),
        &[16],
        3,
    )?;
    write_head(
        &heads,
        "complexity",
        &["simple", "reasoning"],
        spec.hidden,
        &[],
        4,
    )?;
    write_head(
        &heads,
        "jailbreak",
        &["benign", "jailbreak"],
        spec.hidden,
        &[8],
        5,
    )?;
    let p = heads.join("jailbreak").join("head.json");
    let mut head: crate::heads::HeadSpec = serde_json::from_str(&std::fs::read_to_string(&p)?)?;
    head.positive = Some("jailbreak".into());
    head.window = Some(crate::heads::WindowSpec {
        tokens: 16,
        stride: 8,
        max_windows: 4,
    });
    std::fs::write(&p, serde_json::to_string_pretty(&head)?)?;
    Ok((model, heads))
}
