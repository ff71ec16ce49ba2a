//! `semroute-train eval`: judges a task's classifier on any JSONL file (its text and label field
//! named on the command line, labels optionally mapped), in process (encoder + heads) or against
//! a running classifier-svc by address. Prints accuracy, macro-F1, per-class precision/recall,
//! the confusion matrix and texts/s; `--json` for machines; `--predictions` writes every row's
//! label probabilities as JSONL.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use semroute_proto::classifier::v1 as pb;
use serde_json::json;

use crate::dataset;
use semroute_encoder::{LoadOptions, Model, Source, Truncation};

#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub input: dataset::DataArgs,
    /// The classifier task to judge (e.g. domain).
    #[arg(long)]
    pub task: String,
    /// A running classifier-svc (e.g. http://127.0.0.1:50051); without it, in process.
    #[arg(long)]
    pub addr: Option<String>,
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    pub encoder: String,
    #[arg(long, default_value = "models/heads")]
    pub heads: PathBuf,
    /// Judge only the first N rows.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Write every row's probabilities here (JSONL).
    #[arg(long)]
    pub predictions: Option<PathBuf>,
}

/// Label order and per-row probabilities (in that order).
type Predicted = (Vec<String>, Vec<Vec<f32>>);

fn in_process(args: &EvalArgs, texts: &[&str]) -> anyhow::Result<Predicted> {
    let source: Source = args.encoder.parse()?;
    let model = Model::load_encoder(&source, Some(&args.heads), &LoadOptions::default())?;
    let ti = model
        .tasks
        .iter()
        .position(|t| t.name == args.task)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no head for task {:?} in {} (have: {})",
                args.task,
                args.heads.display(),
                model
                    .tasks
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    anyhow::ensure!(
        !model.tasks[ti].is_token(),
        "task {:?} is a token-classification head: its entity F1 is measured by `train --spans-field` on a held-out split",
        args.task
    );
    let probs = classify_all(&model, texts)?
        .into_iter()
        .map(|mut p| std::mem::take(&mut p[ti]))
        .collect();
    Ok((model.tasks[ti].labels.clone(), probs))
}

/// Every sentence task's probabilities for every text (`[row][task][label]`, tasks in
/// `model.tasks` order), 32 texts a batch in length order so padding stays small. As served:
/// a windowed head (the guard) also judges a long text's windows, and the most positive wins.
pub fn classify_all(model: &Model, texts: &[&str]) -> anyhow::Result<Vec<Vec<Vec<f32>>>> {
    // Whole texts first, then every window, each row remembering its text.
    let mut ids: Vec<Vec<u32>> = Vec::with_capacity(texts.len());
    let mut owner: Vec<usize> = Vec::with_capacity(texts.len());
    for (i, t) in texts.iter().enumerate() {
        ids.push(model.tokenize(t, Truncation::Truncate)?.ids);
        owner.push(i);
    }
    for (i, t) in texts.iter().enumerate() {
        for w in model.windows(t)? {
            ids.push(w);
            owner.push(i);
        }
    }
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    let mut probs = vec![Vec::new(); ids.len()];
    for chunk in order.chunks(32) {
        let seqs: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
        for (&i, p) in chunk.iter().zip(model.run(&seqs)?.probs) {
            probs[i] = p;
        }
    }
    let windows = probs.split_off(texts.len());
    let mut per_text: Vec<Vec<Vec<Vec<f32>>>> = vec![Vec::new(); texts.len()];
    for (w, &i) in windows.into_iter().zip(&owner[texts.len()..]) {
        per_text[i].push(w);
    }
    for (p, w) in probs.iter_mut().zip(&per_text) {
        model.apply_windows(p, w);
    }
    Ok(probs)
}

async fn remote(args: &EvalArgs, addr: &str, texts: &[&str]) -> anyhow::Result<Predicted> {
    let mut client = pb::classifier_client::ClassifierClient::connect(addr.to_string())
        .await
        .map_err(|e| anyhow::anyhow!("connect {addr}: {e}"))?;
    let mut labels: Vec<String> = Vec::new();
    let mut probs = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(32) {
        let resp = client
            .classify(pb::ClassifyRequest {
                texts: chunk.iter().map(|t| t.to_string()).collect(),
                tasks: vec![args.task.clone()],
                truncation: pb::Truncation::Truncate as i32,
                include_embedding: false,
                ..Default::default()
            })
            .await
            .map_err(|s| anyhow::anyhow!("Classify: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        for r in resp.results {
            let t = r
                .results
                .into_iter()
                .find(|t| t.task == args.task)
                .ok_or_else(|| anyhow::anyhow!("answer without task {:?}", args.task))?;
            if labels.is_empty() {
                labels = t.scores.iter().map(|s| s.label.clone()).collect();
            }
            probs.push(t.scores.iter().map(|s| s.probability).collect());
        }
    }
    Ok((labels, probs))
}

/// Scores `args.task` on the data (see the module comment).
pub async fn evaluate(args: &EvalArgs) -> anyhow::Result<Report> {
    let mut rows = dataset::load(&args.input, None, false)?;
    if let Some(n) = args.limit {
        rows.truncate(n);
    }
    let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
    let started = Instant::now();
    let (head_labels, probs) = match &args.addr {
        Some(addr) => remote(args, addr, &texts).await?,
        None => in_process(args, &texts)?,
    };
    let secs = started.elapsed().as_secs_f64();
    // Labels the head does not know stay in the report (always wrong), so nothing is hidden.
    let mut labels = head_labels.clone();
    for r in &rows {
        if !labels.contains(&r.label) {
            labels.push(r.label.clone());
        }
    }
    let truth: Vec<usize> = rows
        .iter()
        .map(|r| labels.iter().position(|l| *l == r.label).unwrap())
        .collect();
    let pred: Vec<usize> = probs
        .iter()
        .map(|p| {
            p.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i)
        })
        .collect();
    let scores = dataset::score(&labels, &truth, &pred);
    let unknown: Vec<&String> = labels[head_labels.len()..].iter().collect();
    if let Some(path) = &args.predictions {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        for (i, (r, p)) in rows.iter().zip(&probs).enumerate() {
            let dist: serde_json::Map<String, serde_json::Value> = head_labels
                .iter()
                .zip(p)
                .map(|(l, v)| (l.clone(), json!(v)))
                .collect();
            let line = json!({"row": i, "label": r.label, "predicted": labels[pred[i]], "probabilities": dist});
            writeln!(f, "{line}")?;
        }
    }
    let rate = rows.len() as f64 / secs.max(1e-9);
    let report = Report {
        json: json!({
            "task": args.task,
            "source": args.addr.clone().unwrap_or_else(|| "in-process".into()),
            "scores": scores,
            "labels_unknown_to_the_head": unknown,
            "seconds": secs,
            "texts_per_second": rate,
        }),
        text: format!(
            "task {} on {} rows ({}): {:.1} texts/s\n{}{}",
            args.task,
            rows.len(),
            args.addr.as_deref().unwrap_or("in process"),
            rate,
            if unknown.is_empty() {
                String::new()
            } else {
                format!("labels in the data the head does not have (always counted wrong): {unknown:?}\n")
            },
            scores.render()
        ),
    };
    Ok(report)
}

/// What `eval` prints: `json` with `--json`, else `text`.
pub struct Report {
    pub json: serde_json::Value,
    pub text: String,
}

pub async fn run(args: &EvalArgs) -> anyhow::Result<()> {
    let r = evaluate(args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r.json)?);
    } else {
        print!("{}", r.text);
    }
    Ok(())
}
