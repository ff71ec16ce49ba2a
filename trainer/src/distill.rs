//! `semroute-train distill`: a static token-embedding model made from the shared encoder, on
//! this machine, in a minute (the model2vec method). Every vocabulary token goes through the
//! encoder once, alone between its special tokens; its sentence embedding (the encoder's own
//! pooling, L2-normalised) becomes its row. The rows are reduced by PCA, and weighted by how
//! rare the token is (SIF: a / (a + p(token)), p counted on a corpus of prompts, so that
//! "the" and "please" weigh little and "proof" or "refactor" much). A text's embedding is then
//! the normalised mean of its tokens' rows: `semroute-encoder` loads the result as a static
//! encoder (`static_embed.rs`), and heads are trained on it with `train --encoder <dir>`.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use clap::Args;
use serde_json::json;

use semroute_encoder::{LoadOptions, Model, Source};

use crate::dataset::{field_str, records};

#[derive(Debug, Clone, Args)]
pub struct DistillArgs {
    /// The encoder to distil: a local directory or hf:org/name[@revision].
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    pub encoder: String,
    /// Output directory (config.json, model.safetensors, tokenizer.json, CARD.md).
    #[arg(long, default_value = "models/static-minilm")]
    pub out: PathBuf,
    /// Dimensions kept by PCA (0 or the encoder's size: no reduction).
    #[arg(long, default_value_t = 256)]
    pub dims: usize,
    /// JSONL file(s) of prompts whose token counts give the weights (repeatable); without
    /// one, a token's rank in the vocabulary stands for its frequency (Zipf's law).
    #[arg(long)]
    pub corpus: Vec<PathBuf>,
    /// Field with the text in the corpus files (a name or a JSON pointer).
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// The SIF weight's constant `a` in a / (a + p).
    #[arg(long, default_value_t = 1e-3)]
    pub sif: f64,
    /// Tokens per encoder batch.
    #[arg(long, default_value_t = 512)]
    pub batch_size: usize,
}

pub fn run(args: &DistillArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let source: Source = args.encoder.parse()?;
    let model = Model::load_encoder(&source, None, &LoadOptions::default())?;
    let files = source.resolve()?;
    let vocab = model.meta.vocab_size;
    let (pre, post) = model.wrap();
    let (pre, post) = (pre.to_vec(), post.to_vec());
    let special: Vec<u32> = pre.iter().chain(&post).copied().collect();
    eprintln!(
        "distilling {} ({vocab} tokens, {} dims)",
        model.meta.versioned_id(),
        model.meta.hidden_size
    );

    // 1. Every token alone through the encoder: its sentence embedding.
    let dim = model.meta.hidden_size;
    let mut rows = vec![0f32; vocab * dim];
    for start in (0..vocab).step_by(args.batch_size.max(1)) {
        let end = (start + args.batch_size.max(1)).min(vocab);
        let seqs: Vec<Vec<u32>> = (start..end)
            .map(|id| [pre.as_slice(), &[id as u32], post.as_slice()].concat())
            .collect();
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let out = model.run(&refs)?;
        for (i, e) in out.embeddings.iter().enumerate() {
            rows[(start + i) * dim..(start + i + 1) * dim].copy_from_slice(e);
        }
    }
    eprintln!(
        "encoded every token in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // 2. PCA over the vocabulary's rows.
    let keep = if args.dims == 0 {
        dim
    } else {
        args.dims.min(dim)
    };
    let (reduced, explained) = pca(&rows, vocab, dim, keep)?;

    // 3. SIF weights from token frequencies.
    let (p, counted) = token_probabilities(&model, args, vocab, &special)?;
    let mut table = reduced;
    for (id, row) in table.chunks_mut(keep).enumerate() {
        let w = if special.contains(&(id as u32)) {
            0.0
        } else {
            (args.sif / (args.sif + p[id])) as f32
        };
        row.iter_mut().for_each(|v| *v *= w);
    }

    // 4. The model2vec layout, stored in f16 (half the size; the rows are means of unit
    // vectors, well within its range).
    std::fs::create_dir_all(&args.out)?;
    let t = Tensor::from_vec(table, (vocab, keep), &Device::Cpu)?.to_dtype(DType::F16)?;
    let mut tensors = HashMap::new();
    tensors.insert("embeddings".to_string(), t);
    candle_core::safetensors::save(&tensors, args.out.join("model.safetensors"))?;
    std::fs::copy(&files.tokenizer, args.out.join("tokenizer.json"))?;
    let config = json!({
        "model_type": "model2vec",
        "architectures": ["StaticModel"],
        "hidden_dim": keep,
        "vocab_size": vocab,
        "normalize": true,
        "apply_pca": keep,
        "sif_coefficient": args.sif,
        "distilled_from": model.meta.versioned_id(),
    });
    std::fs::write(
        args.out.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    let size = std::fs::metadata(args.out.join("model.safetensors"))?.len();
    let card = card(
        args,
        &model,
        keep,
        explained,
        counted,
        size,
        started.elapsed().as_secs_f64(),
    );
    std::fs::write(args.out.join("CARD.md"), card)?;
    eprintln!(
        "wrote {} ({vocab} x {keep}, {:.1} MB) in {:.1}s",
        args.out.display(),
        size as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The top `keep` principal components of `rows` (`n` x `dim`, centred here): the projected
/// rows and the share of the variance they keep.
fn pca(rows: &[f32], n: usize, dim: usize, keep: usize) -> anyhow::Result<(Vec<f32>, f64)> {
    let mut mean = vec![0f64; dim];
    for r in rows.chunks(dim) {
        for (m, v) in mean.iter_mut().zip(r) {
            *m += *v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n.max(1) as f64);
    let centred: Vec<f64> = rows
        .chunks(dim)
        .flat_map(|r| r.iter().zip(&mean).map(|(v, m)| *v as f64 - m))
        .collect();
    let x = nalgebra::DMatrix::from_row_slice(n, dim, &centred);
    let cov = (x.transpose() * &x) / (n.max(2) - 1) as f64;
    let eig = nalgebra::SymmetricEigen::new(cov);
    let mut order: Vec<usize> = (0..dim).collect();
    order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
    let total: f64 = eig.eigenvalues.iter().map(|v| v.max(0.0)).sum();
    let kept: f64 = order[..keep]
        .iter()
        .map(|&i| eig.eigenvalues[i].max(0.0))
        .sum();
    let basis = nalgebra::DMatrix::from_fn(dim, keep, |r, c| eig.eigenvectors[(r, order[c])]);
    let projected = x * basis;
    let mut out = Vec::with_capacity(n * keep);
    for r in 0..n {
        out.extend((0..keep).map(|c| projected[(r, c)] as f32));
    }
    anyhow::ensure!(
        out.iter().all(|v| v.is_finite()),
        "PCA gave non-finite values"
    );
    Ok((out, if total > 0.0 { kept / total } else { 1.0 }))
}

/// p(token) for every id: counted on the corpus (add-one smoothed), else by Zipf's law on the
/// vocabulary rank. Also how many corpus tokens were counted.
fn token_probabilities(
    model: &Model,
    args: &DistillArgs,
    vocab: usize,
    special: &[u32],
) -> anyhow::Result<(Vec<f64>, u64)> {
    if args.corpus.is_empty() {
        let h: f64 = (1..=vocab).map(|r| 1.0 / r as f64).sum();
        return Ok(((1..=vocab).map(|r| 1.0 / (r as f64 * h)).collect(), 0));
    }
    let mut counts = vec![1u64; vocab];
    let mut total = vocab as u64;
    for f in &args.corpus {
        for v in records(f)? {
            let Some(t) = field_str(&v, &args.text_field) else {
                continue;
            };
            for id in model.content_ids(&t)? {
                if (id as usize) < vocab && !special.contains(&id) {
                    counts[id as usize] += 1;
                    total += 1;
                }
            }
        }
    }
    let counted = total - vocab as u64;
    anyhow::ensure!(
        counted > 0,
        "no text under {:?} in the corpus files",
        args.text_field
    );
    Ok((
        counts.iter().map(|&c| c as f64 / total as f64).collect(),
        counted,
    ))
}

fn card(
    args: &DistillArgs,
    model: &Model,
    keep: usize,
    explained: f64,
    counted: u64,
    size: u64,
    secs: f64,
) -> String {
    let corpus = if args.corpus.is_empty() {
        "none: a token's vocabulary rank stands for its frequency (Zipf)".to_string()
    } else {
        format!(
            "{} tokens counted in {}",
            counted,
            args.corpus
                .iter()
                .map(|p| format!("`{}`", p.display()))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let cmd = std::iter::once("semroute-train distill".to_string())
        .chain(std::env::args().skip(2))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "# Static token embeddings distilled from {src}\n\n\
         The fast tier of the classification cascade: a text's embedding is the L2-normalised \
         mean of its tokens' rows, a table look-up per token (no layers).\n\n\
         - Method (model2vec): every one of the {vocab} vocabulary tokens through {src} once, \
         alone between its special tokens; its pooled, L2-normalised sentence embedding is its \
         row. PCA to {keep} of {dim} dimensions ({pct:.1} % of the variance kept). Each row \
         weighted by a / (a + p(token)) with a = {sif} (SIF), p from: {corpus}. Special tokens \
         carry zero rows.\n\
         - Files: `model.safetensors` (`embeddings`, {vocab} x {keep}, f16, {mb:.1} MB), \
         `config.json` (model2vec's keys), `tokenizer.json` (the encoder's).\n\
         - Made in {secs:.0} s on this machine with:\n\n```sh\n{cmd}\n```\n",
        src = model.meta.versioned_id(),
        vocab = model.meta.vocab_size,
        dim = model.meta.hidden_size,
        pct = explained * 100.0,
        sif = args.sif,
        mb = size as f64 / 1e6,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use semroute_encoder::fixtures::{write_checkpoint, Spec};
    use semroute_encoder::{Arch, Truncation};

    /// A distilled tiny encoder loads as a static encoder; texts embed to unit vectors of the
    /// kept dimension, a text and its tokens' mean agree, and frequent tokens weigh less.
    #[test]
    fn a_distilled_model_loads_as_a_static_encoder() {
        let dir = tempfile::tempdir().unwrap();
        let enc = dir.path().join("enc");
        std::fs::create_dir_all(&enc).unwrap();
        write_checkpoint(&enc, &Spec::tiny(Arch::Bert)).unwrap();
        let corpus = dir.path().join("corpus.jsonl");
        std::fs::write(
            &corpus,
            "{\"text\": \"the the the the sea\"}\n{\"text\": \"the poem\"}\n",
        )
        .unwrap();
        let out = dir.path().join("static");
        let args = DistillArgs {
            encoder: enc.display().to_string(),
            out: out.clone(),
            dims: 8,
            corpus: vec![corpus],
            text_field: "text".into(),
            sif: 1e-3,
            batch_size: 7,
        };
        run(&args).unwrap();
        assert!(out.join("CARD.md").is_file());
        let m = Model::load_encoder(&Source::Local(out.clone()), None, &LoadOptions::default())
            .unwrap();
        assert_eq!(m.meta.arch, Arch::Static);
        assert_eq!(m.meta.hidden_size, 8);
        let ids = m.tokenize("the sea", Truncation::Truncate).unwrap().ids;
        let e = m.run(&[&ids]).unwrap().embeddings.remove(0);
        assert_eq!(e.len(), 8);
        let norm: f32 = e.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "{norm}");
        // "the" (5 of 7 corpus tokens) weighs less than "sea" (1 of 7).
        let table = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu)
            .unwrap()
            .remove("embeddings")
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let row_norm = |id: u32| -> f32 {
            let r: Vec<f32> = table.get(id as usize).unwrap().to_vec1().unwrap();
            r.iter().map(|v| v * v).sum::<f32>().sqrt()
        };
        let the = m.content_ids("the").unwrap()[0];
        let sea = m.content_ids("sea").unwrap()[0];
        assert!(
            row_norm(the) < row_norm(sea),
            "{} {}",
            row_norm(the),
            row_norm(sea)
        );
        let (pre, _) = m.wrap();
        assert_eq!(row_norm(pre[0]), 0.0, "special tokens carry zero rows");
        // The embedding of a text is the normalised sum of its tokens' rows.
        let mut sum = vec![0f32; 8];
        for id in m.content_ids("the sea").unwrap() {
            let r: Vec<f32> = table.get(id as usize).unwrap().to_vec1().unwrap();
            sum.iter_mut().zip(r).for_each(|(s, v)| *s += v);
        }
        let n = sum.iter().map(|v| v * v).sum::<f32>().sqrt();
        for (a, b) in e.iter().zip(&sum) {
            assert!((a - b / n).abs() < 1e-4, "{a} {}", b / n);
        }
    }
}
