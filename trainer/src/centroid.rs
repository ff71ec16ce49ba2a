//! `semroute-train centroid-heads`: heads without training. Each label is described by a few
//! example prompts; its row of a linear head is the normalised mean embedding of its examples,
//! scaled, so the head's softmax ranks labels by cosine similarity to their centroids. Written
//! in the shared-encoder head format (`models/README.md`) and served like any trained head.
//! Good for demos, tests and a quick start; trained heads (models/) generalise far better.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use clap::Args;
use serde_json::json;

use semroute_encoder::{LoadOptions, Model, Source, Truncation};

#[derive(Debug, Clone, Args)]
pub struct CentroidArgs {
    /// JSON file: {"task": {"label": ["example prompt", ...], ...}, ...}
    #[arg(long)]
    pub examples: PathBuf,
    /// Output heads directory (one <task>/ per task; existing task dirs are replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// Shared encoder: a local directory or hf:org/name[@revision].
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    pub encoder: String,
    /// Logit scale (inverse temperature) applied to the cosine similarities.
    #[arg(long, default_value_t = 20.0)]
    pub scale: f32,
}

/// task -> label -> examples.
pub type Examples = BTreeMap<String, BTreeMap<String, Vec<String>>>;

pub fn run(args: &CentroidArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.examples)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.examples.display()))?;
    let examples: Examples = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.examples.display()))?;
    let source: Source = args.encoder.parse()?;
    let model = Model::load_encoder(&source, None, &LoadOptions::default())?;
    write_heads(&model, &examples, args.scale, &args.out)?;
    eprintln!(
        "wrote {} centroid head(s) to {}",
        examples.len(),
        args.out.display()
    );
    Ok(())
}

/// Embeds every example once and writes one head per task.
pub fn write_heads(
    model: &Model,
    examples: &Examples,
    scale: f32,
    out: &Path,
) -> anyhow::Result<()> {
    for (task, labels) in examples {
        anyhow::ensure!(
            labels.len() >= 2,
            "task {task:?}: a head needs at least 2 labels"
        );
        let mut rows = Vec::with_capacity(labels.len());
        for (label, texts) in labels {
            anyhow::ensure!(
                !texts.is_empty(),
                "task {task:?} label {label:?}: no examples"
            );
            let ids: Vec<Vec<u32>> = texts
                .iter()
                .map(|t| Ok(model.tokenize(t, Truncation::Truncate)?.ids))
                .collect::<anyhow::Result<_>>()?;
            let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
            let out = model.run(&refs)?;
            let dim = out.embeddings[0].len();
            let mut mean = vec![0f32; dim];
            for e in &out.embeddings {
                for (m, v) in mean.iter_mut().zip(e) {
                    *m += v;
                }
            }
            let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            rows.extend(mean.iter().map(|v| v / norm * scale));
        }
        let dim = rows.len() / labels.len();
        let dir = out.join(task);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let mut tensors = HashMap::new();
        tensors.insert(
            "layers.0.weight".to_string(),
            Tensor::from_vec(rows, (labels.len(), dim), &Device::Cpu)?,
        );
        tensors.insert(
            "layers.0.bias".to_string(),
            Tensor::zeros(labels.len(), candle_core::DType::F32, &Device::Cpu)?,
        );
        candle_core::safetensors::save(&tensors, dir.join("head.safetensors"))?;
        let spec = json!({
            "task": task,
            "labels": labels.keys().collect::<Vec<_>>(),
            "activation": "relu",
            "kind": "centroid",
            "scale": scale,
        });
        std::fs::write(dir.join("head.json"), serde_json::to_string_pretty(&spec)?)?;
    }
    Ok(())
}
