//! `semroute-train profile`: model profiles from scored prompts, and what selecting by them is
//! worth. Reads any JSONL of prompts scored per model (`{"text": ..., "scores": {"model-a": 1,
//! "model-b": 0.5, "model-c": null}}`; booleans count 1/0, null or absent = not scored), embeds
//! the texts with the encoder the classifier serves, fits a profile (`semroute_encoder::profile`)
//! on the training split with its neighbours and shrinkage chosen on the validation split, writes
//! it (`head.json` + `head.safetensors` + CARD.md), and reports on the held-out test split the
//! accuracy/cost curve of the router's selection (`routing.selection` of a router config, through
//! the router's own policy function) against every single model, random routing at equal cost
//! and the oracle. `--max-scored N --join MODEL` profiles MODEL from N scored prompts only;
//! `--join-curve` reports how the benefit grows with N.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use semroute_encoder::profile::{Profile, ProfileSpec};
use semroute_encoder::{LoadOptions, Model, Source};
use semroute_router::config::{Config, SelectionRule};
use semroute_router::decide::{policy, Signal};
use serde::Serialize;
use serde_json::Value;

use crate::dataset;

#[derive(Debug, Clone, Args)]
pub struct ProfileArgs {
    /// JSONL file(s) of scored prompts (repeatable).
    #[arg(long = "data", required = true)]
    pub data: Vec<PathBuf>,
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// JSON pointer to the object of model name -> score (0..1, true/false, null: not scored).
    #[arg(long, default_value = "/scores")]
    pub scores_field: String,
    /// A router config with `routing.selection` and the models' prices: its models are the
    /// candidates (named as in the scores), its policy is what the report scores.
    #[arg(long, default_value = "models/selection-mmlu-pro.yaml")]
    pub config: PathBuf,
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    pub encoder: String,
    #[arg(long, default_value_t = 256)]
    pub max_length: usize,
    #[arg(long, default_value = "models/cache/embeddings")]
    pub cache_dir: PathBuf,
    /// The split: a head's (the same label field, map, fractions and seed as its training),
    /// or without `--split-label-field` one stratified by nothing.
    #[command(flatten)]
    pub head_split: crate::train::HeadSplit,
    /// Neighbours to try (the validation split chooses).
    #[arg(long, value_delimiter = ',', default_value = "25,50,100,200")]
    pub k: Vec<usize>,
    /// Shrinkage pseudo-counts to try (the validation split chooses).
    #[arg(long, value_delimiter = ',', default_value = "5,20,50")]
    pub shrinkage: Vec<f32>,
    /// Profile `--join` from this many of its scored training prompts only (a model joining
    /// with a few dozen scores).
    #[arg(long)]
    pub max_scored: Option<usize>,
    /// The model(s) `--max-scored` and `--join-curve` apply to (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub join: Vec<String>,
    /// Report the selection's gain with each `--join` model profiled from 10, 25, 50, 100 and
    /// all of its scored prompts (mean of `--join-seeds` draws).
    #[arg(long)]
    pub join_curve: bool,
    #[arg(long, default_value_t = 3)]
    pub join_seeds: u64,
    /// Write the profile here (head.json, head.safetensors, CARD.md with the report).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the report here too (markdown).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Print the report as JSON on stdout instead of markdown.
    #[arg(long)]
    pub json: bool,
}

/// One held-out prompt: each model's score on it and cost for it, and its similarities to the
/// profile's stored prompts.
pub struct Case {
    pub correct: Vec<f64>,
    /// USD per request, per model (names order).
    pub cost: Vec<f64>,
    pub chars: usize,
}

/// One way of choosing a model per prompt: mean score, cost, where the requests went.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// The knob's setting (cost weight, or the strong-model threshold); None for a fixed choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setting: Option<f64>,
    pub accuracy: f64,
    /// USD per 1,000 prompts.
    pub cost: f64,
    /// Share of prompts sent to the reference model (the most accurate single model).
    pub strong_share: f64,
    /// Random routing among single models at the same cost (the best such mix).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub random_accuracy: Option<f64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub mix: BTreeMap<String, f64>,
}

/// What `profile` and `route-bench` report.
#[derive(Debug, Clone, Serialize)]
pub struct Curve {
    pub rows: usize,
    pub reference_model: String,
    pub models: BTreeMap<String, Point>,
    pub knob: Vec<Point>,
    pub oracle: Point,
    /// Mean over the single models' cost range (21 points) of (the knob's best accuracy at that
    /// cost or less) - (the best single model's accuracy at that cost or less).
    pub gain: f64,
    /// Best accuracy of the knob at <= 40 % and <= 20 % of the reference model's cost, as shares
    /// of its accuracy and cost.
    pub at_40: Option<(f64, f64)>,
    pub at_20: Option<(f64, f64)>,
}

/// The single models' curve: the best accuracy a random mix of single models reaches at a cost.
pub fn random_at(singles: &[(f64, f64)], cost: f64) -> f64 {
    let mut best = f64::NEG_INFINITY;
    for &(ci, ai) in singles {
        if ci <= cost {
            best = best.max(ai);
        }
        for &(cj, aj) in singles {
            if ci <= cost && cost <= cj && cj > ci {
                let t = (cost - ci) / (cj - ci);
                best = best.max((1.0 - t) * ai + t * aj);
            }
        }
    }
    best
}

/// Builds the report from each prompt's choice at each knob setting (`choices[s][i]`: model
/// index for prompt i at setting s).
pub fn curve(names: &[String], cases: &[Case], settings: &[f64], choices: &[Vec<usize>]) -> Curve {
    let n = cases.len().max(1) as f64;
    let score = |pick: &dyn Fn(usize) -> usize, setting: Option<f64>, refm: usize| {
        let (mut acc, mut cost, mut strong) = (0.0, 0.0, 0.0);
        let mut mix = BTreeMap::new();
        for (i, c) in cases.iter().enumerate() {
            let m = pick(i);
            acc += c.correct[m];
            cost += c.cost[m];
            strong += f64::from(u8::from(m == refm));
            *mix.entry(names[m].clone()).or_insert(0.0) += 1.0 / n;
        }
        Point {
            setting,
            accuracy: acc / n,
            cost: cost / n * 1000.0,
            strong_share: strong / n,
            random_accuracy: None,
            mix,
        }
    };
    let acc_of = |m: usize| cases.iter().map(|c| c.correct[m]).sum::<f64>() / n;
    let refm = (0..names.len())
        .max_by(|&a, &b| acc_of(a).total_cmp(&acc_of(b)))
        .unwrap_or(0);
    let mut models = BTreeMap::new();
    let mut singles = Vec::new();
    for (m, name) in names.iter().enumerate() {
        let mut p = score(&|_| m, None, refm);
        p.mix.clear();
        singles.push((p.cost, p.accuracy));
        models.insert(name.clone(), p);
    }
    let knob: Vec<Point> = settings
        .iter()
        .zip(choices)
        .map(|(&s, ch)| {
            let mut p = score(&|i| ch[i], Some(s), refm);
            p.random_accuracy = Some(random_at(&singles, p.cost));
            p
        })
        .collect();
    let oracle = score(
        &|i| {
            let c = &cases[i];
            let right = (0..names.len()).filter(|&m| c.correct[m] >= 0.5);
            right
                .min_by(|&a, &b| c.cost[a].total_cmp(&c.cost[b]))
                .unwrap_or_else(|| {
                    (0..names.len())
                        .min_by(|&a, &b| c.cost[a].total_cmp(&c.cost[b]))
                        .unwrap_or(0)
                })
        },
        None,
        refm,
    );
    let lo = singles.iter().map(|s| s.0).fold(f64::INFINITY, f64::min);
    let hi = singles.iter().map(|s| s.0).fold(0.0, f64::max);
    let mut gains = Vec::new();
    for g in 0..=20 {
        let c = lo + (hi - lo) * f64::from(g) / 20.0;
        let best = knob
            .iter()
            .filter(|p| p.cost <= c + 1e-12)
            .map(|p| p.accuracy)
            .fold(f64::NEG_INFINITY, f64::max);
        let single = singles
            .iter()
            .filter(|s| s.0 <= c + 1e-12)
            .map(|s| s.1)
            .fold(f64::NEG_INFINITY, f64::max);
        if best.is_finite() && single.is_finite() {
            gains.push(best - single);
        }
    }
    let gain = gains.iter().sum::<f64>() / gains.len().max(1) as f64;
    let r = &models[&names[refm]];
    let at = |share: f64| {
        knob.iter()
            .filter(|p| p.cost <= share * r.cost + 1e-12)
            .max_by(|a, b| a.accuracy.total_cmp(&b.accuracy))
            .map(|p| (p.accuracy / r.accuracy, p.cost / r.cost))
    };
    Curve {
        rows: cases.len(),
        reference_model: names[refm].clone(),
        at_40: at(0.4),
        at_20: at(0.2),
        models,
        knob,
        oracle,
        gain,
    }
}

/// The cost weights swept: 0, then 40 steps from 0.001 to 10 (geometric).
pub fn weights() -> Vec<f64> {
    std::iter::once(0.0)
        .chain((0..40).map(|i| 1e-3 * 10f64.powf(4.0 * f64::from(i) / 39.0)))
        .collect()
}

/// Each prompt's model at each weight, by the router's policy on the predicted qualities.
pub fn select_all(
    cfg: &Config,
    names: &[String],
    quality: &[Vec<f32>],
    cases: &[Case],
    settings: &[f64],
) -> anyhow::Result<Vec<Vec<usize>>> {
    let rule = selection_rule(cfg)?;
    let index: BTreeMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut c = cfg.clone();
    settings
        .iter()
        .map(|&w| {
            c.routing.selection.as_mut().expect("checked").cost_weight = w;
            quality
                .iter()
                .zip(cases)
                .map(|(q, case)| {
                    let signal = Signal {
                        task: rule.task.clone(),
                        label: String::new(),
                        probability: 0.0,
                        scores: names.iter().cloned().zip(q.iter().copied()).collect(),
                    };
                    let d = policy::decide(&c, vec![signal], None, case.chars);
                    index.get(d.model.as_str()).copied().ok_or_else(|| {
                        anyhow::anyhow!("the policy chose {:?}, not a scored model", d.model)
                    })
                })
                .collect()
        })
        .collect()
}

fn selection_rule(cfg: &Config) -> anyhow::Result<SelectionRule> {
    cfg.routing
        .selection
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the config has no routing.selection to score"))
}

/// Scored prompts: text, and per model (names order) a score or NaN.
struct Scored {
    texts: Vec<String>,
    scores: Vec<Vec<f32>>,
    /// Each row's split label id (all 0 without `--split-label-field`).
    y: Vec<usize>,
}

fn read_scored(args: &ProfileArgs, names: &[String]) -> anyhow::Result<Scored> {
    let input = args.head_split.data_args(&args.data, &args.text_field);
    let by_label = args.head_split.split_label_field.is_some();
    let rows = if by_label {
        dataset::load(&input, None, true)?
    } else {
        dataset::text_rows(&args.data, &args.text_field)?
    };
    let y_all = if by_label {
        crate::train::label_ids(&rows)?.1
    } else {
        vec![0; rows.len()]
    };
    let labelled = rows.len();
    let mut out = Scored {
        texts: Vec::new(),
        scores: Vec::new(),
        y: Vec::new(),
    };
    for (r, y) in rows.into_iter().zip(y_all) {
        let map = r
            .record
            .as_ref()
            .and_then(|v| v.pointer(&args.scores_field));
        let s: Vec<f32> = names
            .iter()
            .map(|m| match map.and_then(|o| o.get(m)) {
                Some(Value::Bool(b)) => f32::from(u8::from(*b)),
                Some(Value::Number(x)) => x.as_f64().map_or(f32::NAN, |x| x as f32),
                _ => f32::NAN,
            })
            .collect();
        if let Some(bad) = s.iter().find(|x| !x.is_nan() && !(0.0..=1.0).contains(*x)) {
            anyhow::bail!(
                "a score of {bad} at {}: scores are in [0, 1]",
                args.scores_field
            );
        }
        if s.iter().all(|x| x.is_nan()) {
            continue;
        }
        out.texts.push(r.text);
        out.scores.push(s);
        out.y.push(y);
    }
    // A head's split is of all its rows: one without any score would shift it.
    anyhow::ensure!(
        !by_label || out.texts.len() == labelled,
        "every row with a split label needs a score: {labelled} labelled, {} scored",
        out.texts.len()
    );
    anyhow::ensure!(
        !out.texts.is_empty(),
        "no row of {:?} scores any of {} at {}",
        args.data,
        names.join(", "),
        args.scores_field
    );
    Ok(out)
}

fn matmul_rows(a: &[Vec<f32>], b: &[Vec<f32>]) -> anyhow::Result<Vec<Vec<f32>>> {
    use candle_core::{Device, Tensor};
    let d = b.first().map_or(0, Vec::len);
    let bt = Tensor::from_vec(b.concat(), (b.len(), d), &Device::Cpu)?
        .t()?
        .contiguous()?;
    let mut out = Vec::with_capacity(a.len());
    for chunk in a.chunks(512) {
        let at = Tensor::from_vec(chunk.concat(), (chunk.len(), d), &Device::Cpu)?;
        out.extend(at.matmul(&bt)?.to_vec2::<f32>()?);
    }
    Ok(out)
}

/// Each training row's `k` nearest other training rows as `(similarity, row)`, best first.
type Neighbours = Vec<Vec<(f32, u32)>>;

fn train_neighbours(emb: &[Vec<f32>], k: usize) -> anyhow::Result<Neighbours> {
    let mut train_near = Vec::with_capacity(emb.len());
    for (start, chunk) in emb.chunks(1024).enumerate() {
        let sims = matmul_rows(chunk, emb)?;
        for (j, row) in sims.into_iter().enumerate() {
            let me = start * 1024 + j;
            let mut all: Vec<(f32, u32)> = row
                .into_iter()
                .enumerate()
                .filter(|&(i, _)| i != me)
                .map(|(i, s)| (s, i as u32))
                .collect();
            let k = k.min(all.len());
            if k > 0 && all.len() > k {
                all.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
                all.truncate(k);
            }
            all.sort_by(|a, b| b.0.total_cmp(&a.0));
            train_near.push(all);
        }
    }
    Ok(train_near)
}

fn logit(p: f64) -> f64 {
    let p = p.clamp(1e-3, 1.0 - 1e-3);
    (p / (1.0 - p)).ln()
}

/// `(a, b)` of `sigmoid(a + b x)` fitted to `(x, y)` by Newton's method, with a unit ridge
/// toward `(a0, 1)`: a few dozen points move it a little, thousands decide it.
fn calibrate(xy: &[(f64, f64)], a0: f64) -> [f32; 2] {
    let (mut a, mut b) = (a0, 1.0);
    for _ in 0..30 {
        let (mut ga, mut gb) = (a - a0, b - 1.0);
        let (mut haa, mut hab, mut hbb) = (1.0, 0.0, 1.0);
        for &(x, y) in xy {
            let p = 1.0 / (1.0 + (-(a + b * x)).exp());
            let w = (p * (1.0 - p)).max(1e-9);
            ga += p - y;
            gb += (p - y) * x;
            haa += w;
            hab += w * x;
            hbb += w * x * x;
        }
        let det = haa * hbb - hab * hab;
        if det.abs() < 1e-12 {
            break;
        }
        let (da, db) = ((hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det);
        a -= da;
        b -= db;
        if da.abs() + db.abs() < 1e-7 {
            break;
        }
    }
    [a as f32, b as f32]
}

/// Fits a profile on the training rows (`scores[i][m]`, NaN = not scored).
#[allow(clippy::too_many_arguments)]
fn fit(
    names: &[String],
    emb: &[Vec<f32>],
    scores: &[Vec<f32>],
    sims: &Neighbours,
    k: usize,
    shrinkage: f32,
    encoder: &str,
    source: &str,
) -> anyhow::Result<Profile> {
    let m = names.len();
    let n = emb.len();
    let scored: Vec<usize> = (0..m)
        .map(|j| scores.iter().filter(|s| !s[j].is_nan()).count())
        .collect();
    let mut reference: Vec<usize> = (0..m).filter(|&j| scored[j] == n).collect();
    if reference.is_empty() {
        reference = (0..m).collect();
    }
    let difficulty: Vec<f32> = scores
        .iter()
        .map(|s| {
            let v: Vec<f32> = reference
                .iter()
                .map(|&j| s[j])
                .filter(|x| !x.is_nan())
                .collect();
            if v.is_empty() {
                f32::NAN
            } else {
                v.iter().sum::<f32>() / v.len() as f32
            }
        })
        .collect();
    let known: Vec<f32> = difficulty.iter().copied().filter(|x| !x.is_nan()).collect();
    let mean = known.iter().sum::<f32>() / known.len().max(1) as f32;
    let difficulty: Vec<f32> = difficulty
        .into_iter()
        .map(|x| if x.is_nan() { mean } else { x })
        .collect();
    // Each training row's difficulty as a new prompt would see it: from its neighbours, not
    // from itself.
    let est: Vec<f64> = sims
        .iter()
        .map(|near| {
            let (mut num, mut den) = (f64::from(shrinkage * mean), f64::from(shrinkage));
            for &(s, r) in near.iter().take(k) {
                let w = f64::from(s.max(0.0));
                num += w * f64::from(difficulty[r as usize]);
                den += w;
            }
            logit(num / den)
        })
        .collect();
    let mut prior = Vec::with_capacity(m);
    let mut calibration = Vec::with_capacity(m);
    for j in 0..m {
        let xy: Vec<(f64, f64)> = scores
            .iter()
            .zip(&est)
            .filter(|(s, _)| !s[j].is_nan())
            .map(|(s, &x)| (x, f64::from(s[j])))
            .collect();
        let p = xy.iter().map(|x| x.1).sum::<f64>() / xy.len().max(1) as f64;
        prior.push(p as f32);
        calibration.push(calibrate(&xy, logit(p) - logit(f64::from(mean))));
    }
    let spec = ProfileSpec {
        task: "quality".into(),
        kind: "profile".into(),
        labels: names.to_vec(),
        k,
        shrinkage,
        calibration,
        prior,
        scored,
        reference: reference.iter().map(|&j| names[j].clone()).collect(),
        difficulty_mean: mean,
        encoder: encoder.to_string(),
        source: source.to_string(),
    };
    Ok(Profile::new(
        spec,
        emb.first().map_or(0, Vec::len),
        emb.concat(),
        scores.concat(),
        difficulty,
    )?)
}

/// Held-out rows with a score for every model, their similarities to the training rows.
struct Eval {
    cases: Vec<Case>,
    sims: Vec<Vec<f32>>,
}

fn held_out(
    idx: &[usize],
    data: &Scored,
    emb: &[Vec<f32>],
    train_emb: &[Vec<f32>],
    cost: &dyn Fn(usize, usize) -> f64,
) -> anyhow::Result<Eval> {
    let keep: Vec<usize> = idx
        .iter()
        .copied()
        .filter(|&i| data.scores[i].iter().all(|x| !x.is_nan()))
        .collect();
    let m = data.scores.first().map_or(0, Vec::len);
    let cases = keep
        .iter()
        .map(|&i| Case {
            correct: data.scores[i].iter().map(|&x| f64::from(x)).collect(),
            cost: (0..m).map(|j| cost(i, j)).collect(),
            chars: data.texts[i].chars().count(),
        })
        .collect();
    let rows: Vec<Vec<f32>> = keep.iter().map(|&i| emb[i].clone()).collect();
    Ok(Eval {
        cases,
        sims: matmul_rows(&rows, train_emb)?,
    })
}

fn evaluate(cfg: &Config, names: &[String], profile: &Profile, ev: &Eval) -> anyhow::Result<Curve> {
    let quality: Vec<Vec<f32>> = ev.sims.iter().map(|s| profile.predict(s)).collect();
    let settings = weights();
    let choices = select_all(cfg, names, &quality, &ev.cases, &settings)?;
    Ok(curve(names, &ev.cases, &settings, &choices))
}

/// The join experiment's row: one model profiled from `n` scored prompts.
#[derive(Debug, Clone, Serialize)]
pub struct JoinRow {
    pub model: String,
    /// None: all its scored training prompts.
    pub scored: Option<usize>,
    pub gain: f64,
    /// gain / the gain with the model profiled from all.
    pub share_of_full: f64,
    /// (gain - gain without the model) / (gain from all - gain without it): how much of what
    /// the model adds to the selection it adds from N scores (None where it adds under 0.005).
    pub share_of_benefit: Option<f64>,
    pub at_40: Option<(f64, f64)>,
    pub at_20: Option<(f64, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub train_rows: usize,
    pub k: usize,
    pub shrinkage: f32,
    /// (k, shrinkage, gain on validation) of every setting tried.
    pub grid: Vec<(usize, f32, f64)>,
    pub test: Curve,
    pub join: Vec<JoinRow>,
    /// The model profiled from `--max-scored` prompts only, if any.
    pub max_scored: Option<(String, usize)>,
}

/// Keeps `n` of model `j`'s scored rows (a seeded draw), NaN for the rest.
fn restrict(scores: &[Vec<f32>], j: usize, n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rows: Vec<usize> = (0..scores.len())
        .filter(|&i| !scores[i][j].is_nan())
        .collect();
    rows.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let keep: std::collections::HashSet<usize> = rows.into_iter().take(n).collect();
    scores
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut s = s.clone();
            if !keep.contains(&i) {
                s[j] = f32::NAN;
            }
            s
        })
        .collect()
}

pub fn run(args: &ProfileArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    let cfg =
        Config::from_yaml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    let rule = selection_rule(&cfg)?;
    let names: Vec<String> = cfg
        .models
        .iter()
        .map(|m| m.name.clone())
        .filter(|m| rule.candidates.is_empty() || rule.candidates.contains(m))
        .collect();
    for j in &args.join {
        anyhow::ensure!(names.contains(j), "--join {j:?}: not a model of the config");
    }
    anyhow::ensure!(
        args.max_scored.is_none() || !args.join.is_empty(),
        "--max-scored needs --join MODEL (the model that joins with that many scores)"
    );
    let data = read_scored(args, &names)?;
    let source: Source = args.encoder.parse()?;
    let model = Model::load_encoder(&source, None, &LoadOptions::default())?;
    let texts: Vec<&str> = data.texts.iter().map(String::as_str).collect();
    let emb = crate::train::embed_cached(&model, &texts, args.max_length, &args.cache_dir)?;
    let (train, val, test) = args.head_split.splits.split(&data.y);
    let train_emb: Vec<Vec<f32>> = train.iter().map(|&i| emb[i].clone()).collect();
    let mut train_scores: Vec<Vec<f32>> = train.iter().map(|&i| data.scores[i].clone()).collect();
    let prices: Vec<(f64, f64)> = names
        .iter()
        .map(|n| {
            let p = &cfg.model(n).expect("a config model").pricing;
            (p.input_per_million, p.output_per_million)
        })
        .collect();
    let answer = f64::from(rule.answer_tokens);
    let cost = |i: usize, j: usize| {
        let prompt = data.texts[i].chars().count().div_ceil(4) as f64;
        (prompt * prices[j].0 + answer * prices[j].1) / 1e6
    };
    let kmax = args.k.iter().copied().max().unwrap_or(100);
    eprintln!(
        "profile: {} scored prompts ({} train, {} validation, {} test), {} models",
        data.texts.len(),
        train.len(),
        val.len(),
        test.len(),
        names.len()
    );
    let sims = train_neighbours(&train_emb, kmax)?;
    let val_ev = held_out(&val, &data, &emb, &train_emb, &cost)?;
    let test_ev = held_out(&test, &data, &emb, &train_emb, &cost)?;
    let encoder_id = model.meta.versioned_id();
    let src = format!(
        "{} ({}), train split of {} rows",
        args.data
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        args.scores_field,
        train.len()
    );
    let max_scored = match (args.max_scored, args.join.first()) {
        (Some(n), Some(j)) => {
            let idx = names.iter().position(|m| m == j).expect("checked");
            train_scores = restrict(&train_scores, idx, n, args.head_split.splits.seed);
            Some((j.clone(), n))
        }
        _ => None,
    };
    let fit_with = |scores: &[Vec<f32>], k: usize, s: f32| {
        fit(&names, &train_emb, scores, &sims, k, s, &encoder_id, &src)
    };
    let mut grid = Vec::new();
    let mut best: Option<(f64, usize, f32)> = None;
    for &k in &args.k {
        for &s in &args.shrinkage {
            let p = fit_with(&train_scores, k, s)?;
            let g = evaluate(&cfg, &names, &p, &val_ev)?.gain;
            eprintln!("  k {k}, shrinkage {s}: validation gain {g:.4}");
            grid.push((k, s, g));
            if best.is_none_or(|b| g > b.0) {
                best = Some((g, k, s));
            }
        }
    }
    let (_, k, s) = best.ok_or_else(|| anyhow::anyhow!("--k and --shrinkage: nothing to try"))?;
    let profile = fit_with(&train_scores, k, s)?;
    let test_curve = evaluate(&cfg, &names, &profile, &test_ev)?;
    let mut join = Vec::new();
    if args.join_curve {
        for j in &args.join {
            let idx = names.iter().position(|m| m == j).expect("checked");
            let full_scores: Vec<Vec<f32>> =
                train.iter().map(|&i| data.scores[i].clone()).collect();
            let full = fit_with(&full_scores, k, s)?;
            let full_curve = evaluate(&cfg, &names, &full, &test_ev)?;
            let mut without_cfg = cfg.clone();
            without_cfg
                .routing
                .selection
                .as_mut()
                .expect("checked")
                .candidates = names.iter().filter(|m| *m != j).cloned().collect();
            let without = evaluate(&without_cfg, &names, &full, &test_ev)?.gain;
            eprintln!("  without {j}: gain {without:.4}");
            for n in [Some(10), Some(25), Some(50), Some(100), None] {
                let seeds = if n.is_some() {
                    args.join_seeds.max(1)
                } else {
                    1
                };
                let mut curves = Vec::new();
                for seed in 0..seeds {
                    let c = match n {
                        Some(n) => {
                            let sc = restrict(&full_scores, idx, n, seed);
                            let p = fit_with(&sc, k, s)?;
                            evaluate(&cfg, &names, &p, &test_ev)?
                        }
                        None => full_curve.clone(),
                    };
                    curves.push(c);
                }
                let gain = curves.iter().map(|c| c.gain).sum::<f64>() / curves.len() as f64;
                let mean2 = |f: &dyn Fn(&Curve) -> Option<(f64, f64)>| {
                    let v: Vec<(f64, f64)> = curves.iter().filter_map(f).collect();
                    (!v.is_empty()).then(|| {
                        (
                            v.iter().map(|x| x.0).sum::<f64>() / v.len() as f64,
                            v.iter().map(|x| x.1).sum::<f64>() / v.len() as f64,
                        )
                    })
                };
                join.push(JoinRow {
                    model: j.clone(),
                    scored: n,
                    gain,
                    share_of_full: gain / full_curve.gain,
                    share_of_benefit: (full_curve.gain - without > 0.005)
                        .then(|| (gain - without) / (full_curve.gain - without)),
                    at_40: mean2(&|c| c.at_40),
                    at_20: mean2(&|c| c.at_20),
                });
                eprintln!(
                    "  join {j} from {}: gain {gain:.4} ({:.0} % of all)",
                    n.map_or("all".into(), |n| n.to_string()),
                    100.0 * gain / full_curve.gain
                );
            }
        }
    }
    let report = Report {
        train_rows: train.len(),
        k,
        shrinkage: s,
        grid,
        test: test_curve,
        join,
        max_scored,
    };
    let md = markdown(args, &report);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{md}");
    }
    if let Some(p) = &args.report {
        std::fs::write(p, &md).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    }
    if let Some(dir) = &args.out {
        profile.save(dir)?;
        std::fs::write(dir.join("CARD.md"), card(&report, &md))?;
        eprintln!("wrote {}", dir.display());
    }
    Ok(())
}

fn command_line() -> String {
    std::iter::once("semroute-train".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ")
}

/// "x % of its accuracy at y % of its cost" (shares of the reference model's).
pub fn pct(x: Option<(f64, f64)>) -> String {
    x.map_or("-".into(), |(a, c)| {
        format!(
            "{:.1} % of its accuracy at {:.1} % of its cost",
            100.0 * a,
            100.0 * c
        )
    })
}

/// The accuracy/cost table of a curve (shared with `route-bench`).
pub fn curve_markdown(s: &mut String, c: &Curve, knob: &str) {
    let r = &c.models[&c.reference_model];
    let rel = |p: &Point| {
        format!(
            "{:.1} % / {:.1} %",
            100.0 * p.accuracy / r.accuracy.max(1e-12),
            100.0 * p.cost / r.cost.max(1e-12)
        )
    };
    let _ = writeln!(
        s,
        "| choice | accuracy | cost (USD / 1k prompts) | to {} | vs {} (acc / cost) | random at same cost |",
        c.reference_model, c.reference_model
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    let mut singles: Vec<_> = c.models.iter().collect();
    singles.sort_by(|a, b| a.1.cost.total_cmp(&b.1.cost));
    for (m, p) in singles {
        let _ = writeln!(
            s,
            "| {m} | {:.4} | {:.4} | {:.0} % | {} | |",
            p.accuracy,
            p.cost,
            100.0 * p.strong_share,
            rel(p)
        );
    }
    let _ = writeln!(
        s,
        "| oracle (cheapest right model) | {:.4} | {:.4} | {:.0} % | {} | |",
        c.oracle.accuracy,
        c.oracle.cost,
        100.0 * c.oracle.strong_share,
        rel(&c.oracle)
    );
    let mut last = None;
    for p in &c.knob {
        // Settings that change nothing are left out.
        let key = (p.accuracy.to_bits(), p.cost.to_bits());
        if last == Some(key) {
            continue;
        }
        last = Some(key);
        let _ = writeln!(
            s,
            "| {knob} {} | {:.4} | {:.4} | {:.0} % | {} | {} |",
            p.setting.map_or("-".into(), |w| format!("{w:.4}")),
            p.accuracy,
            p.cost,
            100.0 * p.strong_share,
            rel(p),
            p.random_accuracy.map_or("-".into(), |a| format!("{a:.4}"))
        );
    }
}

fn markdown(args: &ProfileArgs, r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Model profile and selection\n");
    let _ = writeln!(s, "Reproduce: `{}`\n", command_line());
    let t = &r.test;
    let _ = writeln!(
        s,
        "Profile fitted on {} training prompts (k {}, shrinkage {}, chosen on the validation split); \
         scored on {} held-out test prompts with a score for every model, policy and prices from `{}`.{}\n",
        r.train_rows,
        r.k,
        r.shrinkage,
        t.rows,
        args.config.display(),
        r.max_scored
            .as_ref()
            .map_or(String::new(), |(m, n)| format!(" {m} profiled from {n} scored prompts only."))
    );
    let _ = writeln!(
        s,
        "**At <= 40 % of {}'s cost: {}; at <= 20 %: {}.** Gain over the best single model at equal \
         cost (or less), mean over the single models' cost range: {:+.4}.\n",
        t.reference_model,
        pct(t.at_40),
        pct(t.at_20),
        t.gain
    );
    curve_markdown(&mut s, t, "selection, weight");
    if !r.join.is_empty() {
        let _ = writeln!(
            s,
            "\n## A model joins with few scores\n\nThe model profiled from N of its scored \
             training prompts (mean of {} draws), every other model from all; gain as above.\n",
            args.join_seeds
        );
        let _ = writeln!(
            s,
            "| model | N | gain | share of the gain from all | share of what the model adds | at <= 40 % | at <= 20 % |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for j in &r.join {
            let f = |x: Option<(f64, f64)>| {
                x.map_or("-".into(), |(a, c)| {
                    format!("{:.1} % / {:.1} %", 100.0 * a, 100.0 * c)
                })
            };
            let _ = writeln!(
                s,
                "| {} | {} | {:+.4} | {:.0} % | {} | {} | {} |",
                j.model,
                j.scored.map_or("all".into(), |n| n.to_string()),
                j.gain,
                100.0 * j.share_of_full,
                j.share_of_benefit
                    .map_or("- (adds < 0.005)".into(), |b| format!("{:.0} %", 100.0 * b)),
                f(j.at_40),
                f(j.at_20)
            );
        }
    }
    let _ = writeln!(
        s,
        "\n## Validation grid\n\n| k | shrinkage | validation gain |\n|---|---|---|"
    );
    for (k, sh, g) in &r.grid {
        let _ = writeln!(s, "| {k} | {sh} | {g:+.4} |");
    }
    s
}

fn card(r: &Report, report: &str) -> String {
    format!(
        "# Model profile (task `quality`)\n\nEach model's expected score on a prompt, from the {} \
         scored training prompts nearest it (k {}, shrinkage {}; `semroute_encoder::profile`). \
         Served by classifier-svc with `--profile <this directory>` (kind `profile`: labels are \
         model names, values expected scores); read by router-svc's `routing.selection`.\n\n{}",
        r.train_rows, r.k, r.shrinkage, report
    )
}
