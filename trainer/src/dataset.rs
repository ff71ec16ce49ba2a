//! Labelled text for `train` and `eval`: any JSONL file, a text field, a label field, an
//! optional label mapping; a stratified split with a fixed seed; and the scores both report
//! (accuracy, macro-F1, per-class precision/recall, confusion matrix).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Row {
    pub text: String,
    pub label: String,
    /// A finer kind to report on (e.g. benign_roleplay), when asked for.
    pub group: Option<String>,
    /// The whole record, kept when a report needs more of it (the quality curve).
    pub record: Option<Value>,
}

/// `a=b,c=d` or a JSON object file: data label -> label. Labels mapped to "" are dropped.
pub fn parse_label_map(spec: Option<&str>) -> anyhow::Result<HashMap<String, String>> {
    let Some(spec) = spec else {
        return Ok(HashMap::new());
    };
    if Path::new(spec).is_file() {
        let v: HashMap<String, String> = serde_json::from_str(&std::fs::read_to_string(spec)?)?;
        return Ok(v);
    }
    spec.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (a, b) = p
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--label-map: {p:?} is not FROM=TO"))?;
            Ok((a.trim().to_string(), b.trim().to_string()))
        })
        .collect()
}

/// A field's value as text. `field` is a name, or a JSON pointer (`/correct/gpt-4o`); several
/// joined by `+` give their values joined by `+` (e.g. `false+true`), none of them null;
/// alternatives joined by `|` give the first one present (files that name a field differently).
pub fn field_str(v: &Value, field: &str) -> Option<String> {
    if field.contains('|') {
        return field.split('|').find_map(|f| field_str(v, f));
    }
    if field.contains('+') {
        let parts: Option<Vec<String>> = field.split('+').map(|f| field_str(v, f)).collect();
        return parts.map(|p| p.join("+"));
    }
    let value = if field.starts_with('/') {
        v.pointer(field)?
    } else {
        v.get(field)?
    };
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Every JSON record of a JSONL file (blank lines skipped); a bad line is an error that says
/// where.
pub fn records(f: &std::path::Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", f.display(), i + 1))
        })
        .collect()
}

/// Which labelled file(s) to read and how: shared by `train` and `eval`.
#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// JSONL file(s) (repeatable).
    #[arg(long = "data", required = true)]
    pub data: Vec<PathBuf>,
    /// Field with the text (a name, a JSON pointer, or several joined by `+`).
    #[arg(long, default_value = "text")]
    pub text_field: String,
    #[arg(long, default_value = "label")]
    pub label_field: String,
    /// FROM=TO,... or a JSON object file; labels mapped to "" are dropped.
    #[arg(long)]
    pub label_map: Option<String>,
}

/// Reads every row that has a text and a (mapped) label; says how many were skipped.
pub fn load(
    input: &DataArgs,
    group_field: Option<&str>,
    keep_records: bool,
) -> anyhow::Result<Vec<Row>> {
    let label_map = parse_label_map(input.label_map.as_deref())?;
    let (files, text_field, label_field) = (
        &input.data,
        input.text_field.as_str(),
        input.label_field.as_str(),
    );
    let mut rows = Vec::new();
    let mut skipped = 0usize;
    for f in files {
        for v in records(f)? {
            let (Some(t), Some(l)) = (field_str(&v, text_field), field_str(&v, label_field)) else {
                skipped += 1;
                continue;
            };
            let l = label_map.get(&l).cloned().unwrap_or(l);
            if l.is_empty() || t.trim().is_empty() {
                skipped += 1;
                continue;
            }
            rows.push(Row {
                text: t,
                label: l,
                group: group_field.and_then(|g| field_str(&v, g)),
                record: keep_records.then_some(v),
            });
        }
    }
    if skipped > 0 {
        eprintln!("skipped {skipped} rows without {text_field:?} or {label_field:?}");
    }
    anyhow::ensure!(
        !rows.is_empty(),
        "no rows with fields {text_field:?} and {label_field:?}"
    );
    Ok(rows)
}

/// Every record of the JSONL files that has a text at `text_field`, unlabelled (a whole file
/// is the input, as `route-bench --split all` and `profile` read it).
pub fn text_rows(paths: &[PathBuf], text_field: &str) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for f in paths {
        for v in records(f)? {
            if let Some(t) = field_str(&v, text_field) {
                rows.push(Row {
                    text: t,
                    label: String::new(),
                    group: None,
                    record: Some(v),
                });
            }
        }
    }
    Ok(rows)
}

/// Indices of a stratified split: `val_fraction` of every label goes to validation.
pub fn stratified_split(
    labels: &[usize],
    val_fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut by: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &l) in labels.iter().enumerate() {
        by.entry(l).or_default().push(i);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (_, mut idx) in by {
        idx.shuffle(&mut rng);
        let n_val = ((idx.len() as f64) * val_fraction).round() as usize;
        let n_val = n_val.min(idx.len().saturating_sub(1));
        val.extend_from_slice(&idx[..n_val]);
        train.extend_from_slice(&idx[n_val..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    (train, val)
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassScore {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Scores {
    pub n: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub per_class: Vec<ClassScore>,
    /// `confusion[true][predicted]`, in `labels` order.
    pub confusion: Vec<Vec<usize>>,
    pub labels: Vec<String>,
}

/// Scores of predictions against truths (indices into `labels`).
pub fn score(labels: &[String], truth: &[usize], pred: &[usize]) -> Scores {
    let k = labels.len();
    let mut confusion = vec![vec![0usize; k]; k];
    for (&t, &p) in truth.iter().zip(pred) {
        confusion[t][p] += 1;
    }
    let n = truth.len();
    let correct: usize = (0..k).map(|i| confusion[i][i]).sum();
    let per_class: Vec<ClassScore> = (0..k)
        .map(|c| {
            let tp = confusion[c][c] as f64;
            let predicted: usize = (0..k).map(|t| confusion[t][c]).sum();
            let support: usize = confusion[c].iter().sum();
            let precision = if predicted > 0 {
                tp / predicted as f64
            } else {
                0.0
            };
            let recall = if support > 0 {
                tp / support as f64
            } else {
                0.0
            };
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            ClassScore {
                label: labels[c].clone(),
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();
    let present: Vec<&ClassScore> = per_class.iter().filter(|c| c.support > 0).collect();
    Scores {
        n,
        accuracy: if n > 0 {
            correct as f64 / n as f64
        } else {
            0.0
        },
        macro_f1: present.iter().map(|c| c.f1).sum::<f64>() / present.len().max(1) as f64,
        per_class,
        confusion,
        labels: labels.to_vec(),
    }
}

impl Scores {
    /// Human-readable report.
    pub fn render(&self) -> String {
        let mut s = format!(
            "n = {}   accuracy = {:.4}   macro-F1 = {:.4}\n\n{:<22} {:>9} {:>9} {:>9} {:>8}\n",
            self.n, self.accuracy, self.macro_f1, "label", "precision", "recall", "f1", "support"
        );
        for c in &self.per_class {
            s.push_str(&format!(
                "{:<22} {:>9.4} {:>9.4} {:>9.4} {:>8}\n",
                c.label, c.precision, c.recall, c.f1, c.support
            ));
        }
        s.push_str("\nconfusion (rows: true, columns: predicted, in the order above)\n");
        for (i, row) in self.confusion.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:>5}")).collect();
            s.push_str(&format!("{:<22}{}\n", self.labels[i], cells.join("")));
        }
        s
    }
}

/// For a binary detector: the lowest threshold on P(positive) whose false-positive rate on the
/// negatives stays at or under `max_fpr`, and the recall it gives.
pub fn threshold_at_fpr(pos_scores: &[f32], neg_scores: &[f32], max_fpr: f64) -> (f32, f64, f64) {
    let mut neg = neg_scores.to_vec();
    neg.sort_by(|a, b| b.total_cmp(a));
    let allowed = ((neg.len() as f64) * max_fpr).floor() as usize;
    // Threshold just above the (allowed+1)-th highest negative score.
    let thr = if allowed < neg.len() {
        next_up(neg[allowed])
    } else {
        0.0
    };
    let recall =
        pos_scores.iter().filter(|&&p| p >= thr).count() as f64 / pos_scores.len().max(1) as f64;
    let fpr = neg.iter().filter(|&&p| p >= thr).count() as f64 / neg.len().max(1) as f64;
    (thr, recall, fpr)
}

fn next_up(x: f32) -> f32 {
    if x >= 1.0 {
        1.0
    } else {
        f32::from_bits(x.to_bits() + 1)
    }
}

/// RouteLLM's measures of a weak/strong router: for every share of calls sent to the strong
/// model (the rows the router scores highest), the quality reached, as the performance gap
/// recovered `PGR = (q - q_weak) / (q_strong - q_weak)`; APGR is its mean over the shares 0..1;
/// CPT(x) the smallest share of strong calls whose PGR reaches x.
#[derive(Debug, Clone, Serialize)]
pub struct QualityCurve {
    pub n: usize,
    pub weak_accuracy: f64,
    pub strong_accuracy: f64,
    pub apgr: f64,
    pub cpt50: f64,
    pub cpt80: f64,
    /// (share of strong calls, PGR) at every 10 %.
    pub points: Vec<(f64, f64)>,
}

/// `scores[i]`: how much row i needs the strong model; `weak[i]`, `strong[i]`: whether each
/// model answered it right.
pub fn quality_curve(scores: &[f32], weak: &[bool], strong: &[bool]) -> QualityCurve {
    let n = scores.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let qw = weak.iter().filter(|&&c| c).count() as f64;
    let qs = strong.iter().filter(|&&c| c).count() as f64;
    let gap = (qs - qw).max(1e-9);
    // pgr[k]: the k top-scored rows go to the strong model.
    let mut pgr = Vec::with_capacity(n + 1);
    let mut q = qw;
    pgr.push(0.0);
    for &i in &order {
        q += f64::from(u8::from(strong[i])) - f64::from(u8::from(weak[i]));
        pgr.push((q - qw) / gap);
    }
    let apgr = if n == 0 {
        0.0
    } else {
        (0..n).map(|k| (pgr[k] + pgr[k + 1]) / 2.0).sum::<f64>() / n as f64
    };
    let cpt = |x: f64| {
        pgr.iter()
            .position(|&p| p >= x)
            .map_or(1.0, |k| k as f64 / n.max(1) as f64)
    };
    QualityCurve {
        n,
        weak_accuracy: qw / n.max(1) as f64,
        strong_accuracy: qs / n.max(1) as f64,
        apgr,
        cpt50: cpt(0.5),
        cpt80: cpt(0.8),
        points: (0..=10)
            .map(|t| {
                let k = (n * t) / 10;
                (t as f64 / 10.0, pgr[k])
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternative_fields_take_the_first_present() {
        let v: Value = serde_json::json!({"expected": "small", "kind": "chat", "ok": true});
        assert_eq!(field_str(&v, "label|expected").as_deref(), Some("small"));
        assert_eq!(field_str(&v, "kind|expected").as_deref(), Some("chat"));
        assert_eq!(field_str(&v, "label|missing"), None);
        assert_eq!(field_str(&v, "kind+ok").as_deref(), Some("chat+true"));
    }

    #[test]
    fn quality_curve_of_a_perfect_and_a_useless_router() {
        // Strong right where weak is wrong on rows 0 and 1 only.
        let weak = [false, false, true, true];
        let strong = [true, true, true, true];
        let perfect = quality_curve(&[0.9, 0.8, 0.1, 0.2], &weak, &strong);
        assert_eq!(perfect.cpt50, 0.25);
        assert_eq!(perfect.cpt80, 0.5);
        // Trapezoids over 4 rows: (0 + 0.5)/2, (0.5 + 1)/2, 1, 1 -> 0.75, the most possible here.
        assert!((perfect.apgr - 0.75).abs() < 1e-9, "{perfect:?}");
        let backwards = quality_curve(&[0.1, 0.2, 0.9, 0.8], &weak, &strong);
        assert_eq!(backwards.cpt50, 0.75);
        assert!(backwards.apgr < 0.3);
    }

    #[test]
    fn split_is_stratified_and_seeded() {
        let labels: Vec<usize> = (0..100).map(|i| usize::from(i % 4 == 0)).collect();
        let (t, v) = stratified_split(&labels, 0.2, 7);
        assert_eq!(t.len() + v.len(), 100);
        assert_eq!(v.iter().filter(|&&i| labels[i] == 1).count(), 5);
        assert_eq!(stratified_split(&labels, 0.2, 7), (t, v));
    }

    #[test]
    fn scores_match_hand_counts() {
        let labels = vec!["a".to_string(), "b".to_string()];
        let s = score(&labels, &[0, 0, 1, 1], &[0, 1, 1, 1]);
        assert_eq!(s.accuracy, 0.75);
        assert_eq!(s.confusion, vec![vec![1, 1], vec![0, 2]]);
        assert!((s.per_class[1].precision - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.per_class[0].recall, 0.5);
    }

    #[test]
    fn threshold_holds_the_fpr() {
        let neg: Vec<f32> = (0..100).map(|i| i as f32 / 100.0).collect();
        let pos = vec![0.99, 0.985, 0.5];
        let (thr, recall, fpr) = threshold_at_fpr(&pos, &neg, 0.03);
        assert!(fpr <= 0.03, "{fpr}");
        assert!(thr > 0.96 && thr <= 0.98, "{thr}");
        assert!((recall - 2.0 / 3.0).abs() < 1e-9);
    }
}
