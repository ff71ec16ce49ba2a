//! `semroute-train guard-robustness`: does the guard hold when an attacker adds a few harmless
//! words? On the held-out test split of the guard's data (the same seeded split `train` made),
//! as served (encoder, heads and threshold of the heads directory, long texts judged the way
//! classifier-svc judges them):
//! - recall and false-positive rate of the unedited prompts;
//! - fixed edits (`perturb::FIXED_EDITS`): the share of detected attacks that at least one edit
//!   flips to benign, per edit, and the false-positive rate of benign prompts with each edit;
//! - an adaptive attacker: a greedy search that adds words of `perturb::ADAPTIVE_WORDS` before
//!   or after the prompt, keeping at each step the candidate that lowers the score most, with a
//!   bounded number of queries per prompt; the share of detected attacks it flips.
//!
//! Neither word pool is in the training augmentation's pool (`perturb` tests that).

use std::path::PathBuf;

use clap::Args;
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use serde_json::json;

use crate::dataset;
use crate::perturb::{Edit, ADAPTIVE_WORDS, FIXED_EDITS};
use semroute_encoder::{LoadOptions, Model, Source};

#[derive(Debug, Clone, Args)]
pub struct RobustnessArgs {
    #[command(flatten)]
    pub input: dataset::DataArgs,
    /// The guard's task and its positive label.
    #[arg(long, default_value = "jailbreak")]
    pub task: String,
    #[arg(long, default_value = "malicious")]
    pub positive: String,
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    pub encoder: String,
    #[arg(long, default_value = "models/heads")]
    pub heads: PathBuf,
    /// The split the head was trained with (its test part is judged here).
    #[arg(long, default_value_t = 0.25)]
    pub val_fraction: f64,
    #[arg(long, default_value_t = 0.15)]
    pub test_fraction: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Queries the adaptive attacker may spend on one prompt.
    #[arg(long, default_value_t = 60)]
    pub budget: usize,
    /// Candidates tried per greedy step (a random subset of words x {before, after}).
    #[arg(long, default_value_t = 20)]
    pub per_step: usize,
    /// Detected attacks and benign prompts the fixed edits run on (the first N of each in the
    /// test split; 0 = all).
    #[arg(long, default_value_t = 0)]
    pub sample: usize,
    /// Detected attacks the adaptive search runs on (the first N of the test split).
    #[arg(long, default_value_t = 200)]
    pub adaptive_limit: usize,
    /// First set the head's threshold (head.json) for this false-positive rate on the
    /// validation split, judged as served (windows included).
    #[arg(long)]
    pub rethreshold: Option<f64>,
    /// Write the report here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(args: &RobustnessArgs) -> anyhow::Result<()> {
    let rows = dataset::load(&args.input, None, false)?;
    let (labels, y) = crate::train::label_ids(&rows)?;
    let pi = labels.binary_search(&args.positive).map_err(|_| {
        anyhow::anyhow!("--positive {:?} is not a label ({labels:?})", args.positive)
    })?;
    let (_, val, test) = crate::train::split3(&y, args.val_fraction, args.test_fraction, args.seed);

    let model = Model::load_encoder(
        &args.encoder.parse::<Source>()?,
        Some(&args.heads),
        &LoadOptions::default(),
    )?;
    let ti = model
        .tasks
        .iter()
        .position(|t| t.name == args.task)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no head for task {:?} in {}",
                args.task,
                args.heads.display()
            )
        })?;
    let hi = model.tasks[ti]
        .labels
        .iter()
        .position(|l| *l == args.positive)
        .ok_or_else(|| {
            anyhow::anyhow!("the {} head has no label {:?}", args.task, args.positive)
        })?;
    let spec_path = args.heads.join(&args.task).join("head.json");
    let mut spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&spec_path)?)?;
    let score = |texts: &[String]| -> anyhow::Result<Vec<f32>> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        Ok(crate::eval::classify_all(&model, &refs)?
            .into_iter()
            .map(|p| p[ti][hi])
            .collect())
    };
    if let Some(max_fpr) = args.rethreshold {
        let texts: Vec<String> = val.iter().map(|&i| rows[i].text.clone()).collect();
        let s = score(&texts)?;
        let (mut vp, mut vn) = (Vec::new(), Vec::new());
        for (&i, &v) in val.iter().zip(&s) {
            if y[i] == pi {
                vp.push(v)
            } else {
                vn.push(v)
            }
        }
        let (t, r, f) = dataset::threshold_at_fpr(&vp, &vn, max_fpr);
        println!("== threshold set as served on validation: {t:.4} (recall {r:.4} at FPR {f:.4}), written to {}", spec_path.display());
        spec["threshold"] = json!(t);
        spec["threshold_as_served"] =
            json!({"max_fpr": max_fpr, "validation_recall": r, "validation_fpr": f});
        std::fs::write(&spec_path, serde_json::to_string_pretty(&spec)? + "\n")?;
    }
    let thr = spec["threshold"].as_f64().unwrap_or(0.5) as f32;

    let pos: Vec<String> = test
        .iter()
        .filter(|&&i| y[i] == pi)
        .map(|&i| rows[i].text.clone())
        .collect();
    let neg: Vec<String> = test
        .iter()
        .filter(|&&i| y[i] != pi)
        .map(|&i| rows[i].text.clone())
        .collect();
    let sp = score(&pos)?;
    let sn = score(&neg)?;
    let detected: Vec<&String> = pos
        .iter()
        .zip(&sp)
        .filter(|(_, &s)| s >= thr)
        .map(|(t, _)| t)
        .collect();
    let recall = detected.len() as f64 / pos.len().max(1) as f64;
    let fpr = sn.iter().filter(|&&s| s >= thr).count() as f64 / neg.len().max(1) as f64;
    println!(
        "== {} as served (threshold {thr:.4}): test recall {recall:.4} ({} of {}), FPR {fpr:.4} ({} benign)",
        args.task,
        detected.len(),
        pos.len(),
        neg.len()
    );

    // Fixed edits (on a sample when asked: each edit is a full pass over it).
    let cap = if args.sample == 0 {
        usize::MAX
    } else {
        args.sample
    };
    let detected: Vec<&String> = detected.into_iter().take(cap).collect();
    let neg: Vec<String> = neg.into_iter().take(cap).collect();
    let mut flipped_any = vec![false; detected.len()];
    let mut per_edit = Vec::new();
    for (name, edit) in FIXED_EDITS {
        let edited: Vec<String> = detected.iter().map(|t| edit.apply(t)).collect();
        let s = score(&edited)?;
        let mut flips = 0;
        for (f, &v) in flipped_any.iter_mut().zip(&s) {
            if v < thr {
                *f = true;
                flips += 1;
            }
        }
        let benign: Vec<String> = neg.iter().map(|t| edit.apply(t)).collect();
        let bs = score(&benign)?;
        let bfpr = bs.iter().filter(|&&v| v >= thr).count() as f64 / neg.len().max(1) as f64;
        let rate = flips as f64 / detected.len().max(1) as f64;
        println!(
            "   {name:<60} flips {rate:.4}   benign FPR {bfpr:.4}  (of {} detected, {} benign)",
            detected.len(),
            neg.len()
        );
        per_edit.push(json!({"edit": name, "flip_rate": rate, "benign_fpr": bfpr}));
    }
    let any = flipped_any.iter().filter(|&&f| f).count() as f64 / detected.len().max(1) as f64;
    let worst_fpr = per_edit
        .iter()
        .filter_map(|e| e["benign_fpr"].as_f64())
        .fold(0.0, f64::max);
    let mean_fpr = per_edit
        .iter()
        .filter_map(|e| e["benign_fpr"].as_f64())
        .sum::<f64>()
        / per_edit.len().max(1) as f64;
    println!(
        "   fixed edits: {any:.4} of detected attacks flipped by at least one of {}; benign FPR with an edit: mean {mean_fpr:.4}, worst {worst_fpr:.4}",
        FIXED_EDITS.len()
    );

    // Adaptive greedy search.
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut cands: Vec<Edit> = Vec::new();
    for w in ADAPTIVE_WORDS {
        cands.push(Edit::Prefix(w));
        cands.push(Edit::Suffix(w));
    }
    let targets: Vec<&String> = detected.iter().copied().take(args.adaptive_limit).collect();
    let (mut flipped, mut queries_used, mut words_added) = (0usize, 0usize, 0usize);
    for t in &targets {
        let mut cur = (*t).clone();
        let mut spent = 0;
        let mut added = 0;
        let mut done = false;
        while spent < args.budget && !done {
            cands.shuffle(&mut rng);
            let n = args.per_step.min(args.budget - spent).min(cands.len());
            let tries: Vec<String> = cands[..n].iter().map(|e| e.apply(&cur)).collect();
            let s = score(&tries)?;
            spent += n;
            let (bi, &bs) = s
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .expect("at least one candidate");
            cur = tries[bi].clone();
            added += 1;
            if bs < thr {
                done = true;
            }
        }
        if done {
            flipped += 1;
            words_added += added;
        }
        queries_used += spent;
    }
    let adaptive = flipped as f64 / targets.len().max(1) as f64;
    println!(
        "   adaptive search (budget {} queries a prompt, {} candidates a step, {} words): {adaptive:.4} of {} detected attacks flipped ({:.1} words added on average when flipped; {queries_used} queries)",
        args.budget,
        args.per_step,
        ADAPTIVE_WORDS.len(),
        targets.len(),
        words_added as f64 / flipped.max(1) as f64
    );
    if let Some(path) = &args.json {
        let report = json!({
            "command": crate::train::command_line(),
            "task": args.task, "threshold": thr,
            "test": {"positives": pos.len(), "negatives": neg.len(), "recall": recall, "fpr": fpr},
            "fixed": {"flipped_by_any": any, "per_edit": per_edit, "benign_fpr_mean": mean_fpr, "benign_fpr_worst": worst_fpr},
            "adaptive": {"budget": args.budget, "per_step": args.per_step, "words": ADAPTIVE_WORDS.len(),
                          "prompts": targets.len(), "flip_rate": adaptive, "queries": queries_used},
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")?;
    }
    Ok(())
}
