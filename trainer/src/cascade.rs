//! `semroute-train cascade`: the fast tier's threshold for one task, chosen on validation for a
//! stated accuracy loss. The head's own data is split exactly as `train` split it (same seed and
//! fractions), so the validation rows were never trained on by either tier's head. On them, both
//! tiers classify every row as served (windows included); the cascade lets the fast tier answer
//! where its top probability is at least the threshold and the encoder elsewhere. The threshold
//! is the lowest (the fast tier answering the most) whose cascade accuracy stays within
//! `--max-loss` of the encoder alone. Written to the fast head's head.json as
//! `cascade.threshold` (what classifier-svc and router-svc read), with the test split's figures
//! in its card and metrics.

use std::path::PathBuf;

use clap::Args;
use serde_json::{json, Value};

use semroute_encoder::{LoadOptions, Model, Source};

use crate::dataset::{self, DataArgs};
use crate::eval::classify_all;
use crate::train::{argmax, label_ids, SplitArgs};

#[derive(Debug, Clone, Args)]
pub struct CascadeArgs {
    /// The task (a head of both tiers).
    #[arg(long)]
    pub task: String,
    #[command(flatten)]
    pub input: DataArgs,
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    pub encoder: String,
    #[arg(long, default_value = "models/heads")]
    pub heads: PathBuf,
    #[arg(long, default_value = "models/static-minilm")]
    pub fast_encoder: String,
    #[arg(long, default_value = "models/heads-static")]
    pub fast_heads: PathBuf,
    /// Accuracy the cascade may lose against the encoder alone on validation (0.005: half a
    /// point).
    #[arg(long, default_value_t = 0.005)]
    pub max_loss: f64,
    /// The split of the heads' training (as given to `train`).
    #[command(flatten)]
    pub splits: SplitArgs,
}

/// One row as both tiers see it: the truth, each tier's label and the fast tier's confidence.
#[derive(Debug, Clone, Copy)]
pub struct Judged {
    pub truth: usize,
    pub encoder: usize,
    pub fast: usize,
    pub confidence: f32,
}

/// Accuracy of the cascade at `threshold`, and the share the fast tier answers.
pub fn at(rows: &[Judged], threshold: f32) -> (f64, f64) {
    let n = rows.len().max(1) as f64;
    let (mut right, mut fast) = (0usize, 0usize);
    for r in rows {
        let by_fast = r.confidence >= threshold;
        fast += by_fast as usize;
        right += (if by_fast { r.fast } else { r.encoder } == r.truth) as usize;
    }
    (right as f64 / n, fast as f64 / n)
}

/// The lowest threshold among the rows' confidences (and 1.0, "only when certain", and above it
/// nothing) whose cascade accuracy is at least the encoder's less `max_loss`.
pub fn choose(rows: &[Judged], max_loss: f64) -> f32 {
    let encoder = at(rows, f32::INFINITY).0;
    let mut candidates: Vec<f32> = rows.iter().map(|r| r.confidence).collect();
    candidates.push(1.0);
    candidates.sort_by(f32::total_cmp);
    candidates.dedup();
    candidates
        .into_iter()
        .find(|&t| at(rows, t).0 >= encoder - max_loss - 1e-12)
        .unwrap_or(f32::INFINITY)
}

pub fn run(args: &CascadeArgs) -> anyhow::Result<()> {
    let rows = dataset::load(&args.input, None, false)?;
    let (labels, y) = label_ids(&rows)?;
    let (_, val, test) = args.splits.split(&y);
    let load = |enc: &str, heads: &PathBuf| -> anyhow::Result<Model> {
        let source: Source = enc.parse()?;
        Ok(Model::load_encoder(
            &source,
            Some(heads),
            &LoadOptions::default(),
        )?)
    };
    let encoder = load(&args.encoder, &args.heads)?;
    let fast = load(&args.fast_encoder, &args.fast_heads)?;
    let judge = |idx: &[usize]| -> anyhow::Result<Vec<Judged>> {
        let texts: Vec<&str> = idx.iter().map(|&i| rows[i].text.as_str()).collect();
        let e = tier_labels(&encoder, &args.task, &labels, &texts)?;
        let f = tier_labels(&fast, &args.task, &labels, &texts)?;
        Ok(idx
            .iter()
            .zip(e.into_iter().zip(f))
            .map(|(&i, ((el, _), (fl, conf)))| Judged {
                truth: y[i],
                encoder: el,
                fast: fl,
                confidence: conf,
            })
            .collect())
    };
    let v = judge(&val)?;
    let threshold = choose(&v, args.max_loss);
    let t = judge(&test)?;
    let report = |rows: &[Judged]| {
        let (cascade, share) = at(rows, threshold);
        json!({
            "rows": rows.len(),
            "encoder_accuracy": at(rows, f32::INFINITY).0,
            "fast_accuracy": at(rows, 0.0).0,
            "cascade_accuracy": cascade,
            "fast_share": share,
        })
    };
    let (val_report, test_report) = (report(&v), report(&t));
    println!(
        "{}: threshold {threshold:.4}\n  validation {val_report}\n  test {test_report}",
        args.task
    );
    let dir = args.fast_heads.join(&args.task);
    let path = dir.join("head.json");
    let mut spec: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let cmd = std::iter::once("semroute-train cascade".to_string())
        .chain(std::env::args().skip(2))
        .collect::<Vec<_>>()
        .join(" ");
    spec["cascade"] = json!({
        "threshold": if threshold.is_finite() { json!(threshold) } else { json!(null) },
        "max_loss": args.max_loss,
        "encoder": encoder.meta.versioned_id(),
        "validation": val_report,
        "test": test_report,
        "command": cmd,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&spec)? + "\n")?;
    let card = dir.join("CARD.md");
    if card.is_file() {
        let mut text = std::fs::read_to_string(&card)?;
        if let Some(i) = text.find("\n## Cascade") {
            text.truncate(i);
        }
        text.push_str(&format!(
            "\n## Cascade\n\nThreshold {threshold:.4}: this head answers alone where its top \
             probability is at least that, {encoder} the rest; chosen on the validation split \
             ({} rows) as the lowest whose cascade accuracy is within {} of {encoder} alone.\n\n\
             | split | encoder alone | fast alone | cascade | answered by the fast tier |\n\
             |---|---|---|---|---|\n{}{}\n```sh\n{cmd}\n```\n",
            v.len(),
            args.max_loss,
            row("validation", &val_report),
            row("test", &test_report),
            encoder = encoder.meta.versioned_id(),
        ));
        std::fs::write(&card, text)?;
    }
    Ok(())
}

fn row(name: &str, r: &Value) -> String {
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    format!(
        "| {name} ({}) | {:.4} | {:.4} | {:.4} | {:.3} |\n",
        r["rows"],
        f("encoder_accuracy"),
        f("fast_accuracy"),
        f("cascade_accuracy"),
        f("fast_share")
    )
}

/// Each text's label (an index into `labels`) and top probability from `model`'s head for
/// `task`, as served.
fn tier_labels(
    model: &Model,
    task: &str,
    labels: &[String],
    texts: &[&str],
) -> anyhow::Result<Vec<(usize, f32)>> {
    let hi = model
        .tasks
        .iter()
        .position(|t| t.name == task)
        .ok_or_else(|| anyhow::anyhow!("{} has no head {task:?}", model.meta.id))?;
    let head_labels = &model.tasks[hi].labels;
    let probs = classify_all(model, texts)?;
    probs
        .iter()
        .map(|p| {
            let i = argmax(&p[hi]);
            let conf = p[hi].get(i).copied().unwrap_or(0.0);
            let name = &head_labels[i];
            // A label the data does not have counts as wrong (index past the data's labels).
            let idx = labels.binary_search(name).unwrap_or(labels.len());
            Ok((idx, conf))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(truth: usize, encoder: usize, fast: usize, confidence: f32) -> Judged {
        Judged {
            truth,
            encoder,
            fast,
            confidence,
        }
    }

    #[test]
    fn the_threshold_is_the_lowest_within_the_allowed_loss() {
        // The fast tier is right when sure (>= 0.9), wrong below; the encoder always right.
        let rows: Vec<Judged> = (0..100)
            .map(|i| {
                let c = i as f32 / 100.0;
                j(0, 0, if c >= 0.9 { 0 } else { 1 }, c)
            })
            .collect();
        let t = choose(&rows, 0.0);
        assert!((t - 0.9).abs() < 1e-6, "{t}");
        assert_eq!(at(&rows, t), (1.0, 0.1));
        // Allowing 5 points of loss: five more rows go to the fast tier.
        let t = choose(&rows, 0.05);
        assert!((t - 0.85).abs() < 1e-6, "{t}");
        // A fast tier never right where the encoder is: only "certain" and above, which no
        // row reaches here, so the encoder answers everything.
        let wrong: Vec<Judged> = (0..10).map(|i| j(0, 0, 1, i as f32 / 20.0)).collect();
        let t = choose(&wrong, 0.0);
        assert_eq!(at(&wrong, t), (1.0, 0.0));
    }
}
