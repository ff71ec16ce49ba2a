//! `semroute-train route-bench`: what routing is worth, in accuracy and money. Replays prompts
//! with per-model correctness (any JSONL whose rows carry a `correct` map, model -> true/false)
//! through the router's own policy (`semroute_router::decide::policy::decide`, the function every
//! `auto` request goes through) on signals from the encoder and heads, in process. Prices come
//! from the router config it is given (`models[].pricing`, per million tokens); a prompt costs
//! its tokens (4 characters a token, the router's own estimate) and an answer a fixed estimate
//! per model. Reports every single model, the router at each setting of the cost knob (a curve
//! over the strong-model threshold), random routing at the same cost, the oracle, APGR/CPT for
//! weak/strong pairs, and the headline "x % of the best model's accuracy at y % of its cost".

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use semroute_encoder::{LoadOptions, Model, Source};
use semroute_router::config::Config;
use semroute_router::decide::{policy, Signal};
use serde::Serialize;

use crate::dataset::{self, Row};

#[derive(Debug, Clone, Args)]
pub struct RouteBenchArgs {
    /// JSONL file(s) with a text and a per-model correctness map (repeatable).
    #[arg(long = "data", required = true)]
    pub data: Vec<PathBuf>,
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// JSON pointer to the object of model name -> answered right (true/false/null).
    #[arg(long, default_value = "/correct")]
    pub correct_field: String,
    /// A router config (router-svc's format): its models (names as in the correctness map) with
    /// their prices, and the routing policy under test. Its endpoints are never contacted.
    #[arg(long, default_value = "models/route-bench.yaml")]
    pub config: PathBuf,
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    pub encoder: String,
    #[arg(long, default_value = "models/heads")]
    pub heads: PathBuf,
    /// `all` rows, or the `test` split of a head trained on the same file: give the label that
    /// head was trained on (`--split-label-field`, `--split-label-map`) and the same split
    /// fractions and seed, and the rows are exactly that head's test split.
    #[arg(long, default_value = "all")]
    pub split: String,
    #[command(flatten)]
    pub head_split: crate::train::HeadSplit,
    /// Tokens an answer costs, for every model...
    #[arg(long, default_value_t = 300)]
    pub answer_tokens: u32,
    /// ...or for one model (MODEL=N, repeatable).
    #[arg(long = "model-answer-tokens")]
    pub model_answer_tokens: Vec<String>,
    /// Weak/strong pairs (WEAK,STRONG) to report APGR and CPT for, ranked by the router's strong
    /// score; the knob's own pair is always reported.
    #[arg(long = "pair")]
    pub pairs: Vec<String>,
    /// The knob on another classifier task and label than the config's (e.g. `complexity`,
    /// `reasoning`): compare signals under the same policy and prices.
    #[arg(long)]
    pub knob_task: Option<String>,
    #[arg(long)]
    pub knob_label: Option<String>,
    /// The knob between other models than the config's (weak: also the default model).
    #[arg(long)]
    pub knob_weak: Option<String>,
    #[arg(long)]
    pub knob_strong: Option<String>,
    /// Points on the cost-knob curve (shares of strong-model calls 0, 1/N, ..., 1).
    #[arg(long, default_value_t = 20)]
    pub knob_points: usize,
    /// Write the report here (markdown), with the command that reproduces it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the report as JSON on stdout instead of markdown: for each knob setting and each
    /// single model `accuracy`, `cost` (USD per 1k prompts) and `strong_share` (share sent to
    /// the `reference_model`, the most accurate single model), and the `oracle`.
    #[arg(long)]
    pub json: bool,
    /// A model profile (`semroute-train profile`) served beside the heads, for a config with
    /// `routing.selection` (repeatable).
    #[arg(long = "profile")]
    pub profiles: Vec<PathBuf>,
}

/// Accuracy and mean cost per request of one way of choosing models.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Outcome {
    pub accuracy: f64,
    /// Currency units per request.
    pub cost: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct KnobPoint {
    pub threshold: f32,
    /// Share of requests sent to the knob's strong model.
    pub strong_share: f64,
    pub router: Outcome,
    /// Random weak/strong routing spending the same.
    pub random_accuracy: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub rows: usize,
    pub skipped: usize,
    pub models: BTreeMap<String, Outcome>,
    pub router: Outcome,
    /// Share of requests per model, as configured.
    pub router_mix: BTreeMap<String, f64>,
    pub oracle: Outcome,
    pub knob: Vec<KnobPoint>,
    pub pairs: BTreeMap<String, dataset::QualityCurve>,
    pub best_model: String,
    pub headline: String,
    /// The same figures along the knob (the cost weight with `routing.selection`, else the
    /// strong-model threshold), in the JSON form `--json` prints.
    pub curve: crate::profile::Curve,
    /// With `routing.selection` (the knob is then its cost weight): the policy's CPU per decision (µs) and the decision's JSON
    /// size (bytes, what the cache stores), with the selection and with it taken out, measured
    /// in the same run on the same signals.
    pub selection_cost: Option<SelectionCost>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SelectionCost {
    pub policy_us_with: f64,
    pub policy_us_without: f64,
    pub decision_bytes_with: f64,
    pub decision_bytes_without: f64,
}

/// Mean µs per `policy::decide` over the cases (interleaved rounds, best of 5) and mean JSON
/// bytes of the decisions.
fn policy_cost(cfg: &Config, cases: &[Case]) -> (f64, f64) {
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t0 = std::time::Instant::now();
        for c in cases {
            std::hint::black_box(policy::decide(cfg, c.signals.clone(), None, c.chars));
        }
        best = best.min(t0.elapsed().as_secs_f64() * 1e6 / cases.len().max(1) as f64);
    }
    let bytes: usize = cases
        .iter()
        .map(|c| {
            serde_json::to_vec(&policy::decide(cfg, c.signals.clone(), None, c.chars))
                .map_or(0, |v| v.len())
        })
        .sum();
    (best, bytes as f64 / cases.len().max(1) as f64)
}

/// One prompt: what each model costs on it and whether it answered it right.
struct Case {
    correct: BTreeMap<String, bool>,
    cost: BTreeMap<String, f64>,
    signals: Vec<Signal>,
    chars: usize,
}

pub fn run(args: &RouteBenchArgs) -> anyhow::Result<()> {
    let report = bench(args)?;
    let md = markdown(args, &report);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.curve)?);
    } else {
        print!("{md}");
    }
    if let Some(p) = &args.out {
        std::fs::write(p, &md).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    }
    Ok(())
}

fn load_rows(args: &RouteBenchArgs) -> anyhow::Result<Vec<Row>> {
    let input = args.head_split.data_args(&args.data, &args.text_field);
    match (args.split.as_str(), &args.head_split.split_label_field) {
        ("test", Some(_)) => {
            let rows = dataset::load(&input, None, true)?;
            let (_, y) = crate::train::label_ids(&rows)?;
            let (_, _, test) =
                args.head_split.splits.split(&y);
            let mut rows: Vec<Option<Row>> = rows.into_iter().map(Some).collect();
            Ok(test.iter().filter_map(|&i| rows[i].take()).collect())
        }
        ("test", None) => anyhow::bail!(
            "--split test needs --split-label-field (the label the head was trained on), so the rows are that head's test split"
        ),
        ("all", _) => dataset::text_rows(&args.data, &args.text_field),
        (other, _) => anyhow::bail!("--split {other:?}: expected all or test"),
    }
}

/// Top label and its probability per sentence task: what classifier-svc answers the router.
fn signals(model: &Model, texts: &[&str]) -> anyhow::Result<Vec<Vec<Signal>>> {
    Ok(crate::eval::classify_all(model, texts)?
        .into_iter()
        .map(|probs| {
            model
                .tasks
                .iter()
                .zip(probs)
                .filter(|(t, _)| !t.is_token())
                .filter_map(|(t, p)| {
                    let (best, &prob) = p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1))?;
                    Some(Signal {
                        task: t.name.clone(),
                        label: t.labels[best].clone(),
                        probability: prob,
                        // A profile's every value is what the selection reads.
                        scores: if t.kind() == "profile" {
                            t.labels.iter().cloned().zip(p.iter().copied()).collect()
                        } else {
                            Vec::new()
                        },
                    })
                })
                .collect()
        })
        .collect())
}

fn answer_tokens(args: &RouteBenchArgs) -> anyhow::Result<BTreeMap<String, u32>> {
    args.model_answer_tokens
        .iter()
        .map(|s| {
            let (m, n) = s
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--model-answer-tokens {s:?}: expected MODEL=N"))?;
            Ok((m.to_string(), n.parse()?))
        })
        .collect()
}

fn pair(spec: &str) -> anyhow::Result<(String, String)> {
    let (w, s) = spec
        .split_once(',')
        .ok_or_else(|| anyhow::anyhow!("--pair {spec:?}: expected WEAK,STRONG"))?;
    Ok((w.to_string(), s.to_string()))
}

/// Mean accuracy and cost of choosing `pick(case)` for every case.
fn outcome<'a>(cases: &'a [Case], mut pick: impl FnMut(usize, &'a Case) -> String) -> Outcome {
    let n = cases.len().max(1) as f64;
    let (mut right, mut cost) = (0.0, 0.0);
    for (i, c) in cases.iter().enumerate() {
        let m = pick(i, c);
        right += f64::from(u8::from(c.correct[&m]));
        cost += c.cost[&m];
    }
    Outcome {
        accuracy: right / n,
        cost: cost / n,
    }
}

pub fn bench(args: &RouteBenchArgs) -> anyhow::Result<Report> {
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    let mut cfg =
        Config::from_yaml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    let knob_set = [
        &args.knob_task,
        &args.knob_label,
        &args.knob_weak,
        &args.knob_strong,
    ];
    if knob_set.iter().any(|o| o.is_some()) {
        let sm = cfg.routing.strong_model.as_mut().ok_or_else(|| {
            anyhow::anyhow!(
                "--knob-*: {} has no routing.strong_model",
                args.config.display()
            )
        })?;
        if let Some(w) = &args.knob_weak {
            sm.weak_model = Some(w.clone());
            cfg.routing.default_model = w.clone();
        }
        if let Some(s) = &args.knob_strong {
            sm.model = s.clone();
        }
        if let Some(t) = &args.knob_task {
            sm.task = t.clone();
        }
        if let Some(l) = &args.knob_label {
            sm.label = l.clone();
        }
        let sm = cfg.routing.strong_model.clone();
        for m in sm
            .iter()
            .flat_map(|s| std::iter::once(&s.model).chain(&s.weak_model))
        {
            anyhow::ensure!(
                cfg.model(m).is_some(),
                "--knob-*: {m:?} is not a model of {}",
                args.config.display()
            );
        }
    }
    let names: Vec<String> = cfg.models.iter().map(|m| m.name.clone()).collect();
    let tokens = answer_tokens(args)?;
    let rows = load_rows(args)?;
    // Only rows where every configured model has a verdict: each choice can then be scored.
    let mut kept = Vec::new();
    let mut skipped = 0;
    for r in rows {
        let map = r
            .record
            .as_ref()
            .and_then(|v| v.pointer(&args.correct_field));
        let correct: Option<BTreeMap<String, bool>> = names
            .iter()
            .map(|m| Some((m.clone(), map?.get(m)?.as_bool()?)))
            .collect();
        match correct {
            Some(c) => kept.push((r.text, c)),
            None => skipped += 1,
        }
    }
    anyhow::ensure!(
        !kept.is_empty(),
        "no row of {:?} has a verdict at {} for every model of {} ({})",
        args.data,
        args.correct_field,
        args.config.display(),
        names.join(", ")
    );
    let source: Source = args.encoder.parse()?;
    let mut model = Model::load_encoder(&source, Some(&args.heads), &LoadOptions::default())?;
    for p in &args.profiles {
        model.add_profile(p)?;
    }
    let texts: Vec<&str> = kept.iter().map(|(t, _)| t.as_str()).collect();
    let sigs = signals(&model, &texts)?;
    let cases: Vec<Case> = kept
        .iter()
        .zip(sigs)
        .map(|((text, correct), signals)| {
            let prompt = text.chars().count().div_ceil(4) as f64;
            let cost = cfg
                .models
                .iter()
                .map(|m| {
                    let out = f64::from(*tokens.get(&m.name).unwrap_or(&args.answer_tokens));
                    let c = (prompt * m.pricing.input_per_million
                        + out * m.pricing.output_per_million)
                        / 1e6;
                    (m.name.clone(), c)
                })
                .collect();
            Case {
                correct: correct.clone(),
                cost,
                signals,
                chars: text.chars().count(),
            }
        })
        .collect();

    let decide = |cfg: &Config, c: &Case| policy::decide(cfg, c.signals.clone(), None, c.chars);
    let decisions: Vec<_> = cases.iter().map(|c| decide(&cfg, c)).collect();
    for d in &decisions {
        anyhow::ensure!(
            names.contains(&d.model),
            "the policy chose {:?}, which is not a model of the config",
            d.model
        );
    }
    let models: BTreeMap<String, Outcome> = names
        .iter()
        .map(|m| (m.clone(), outcome(&cases, |_, _| m.clone())))
        .collect();
    let router = outcome(&cases, |i, _| decisions[i].model.clone());
    let mut router_mix = BTreeMap::new();
    for d in &decisions {
        *router_mix.entry(d.model.clone()).or_insert(0.0) += 1.0 / cases.len() as f64;
    }
    let cheapest = |c: &Case, only_right: bool| {
        names
            .iter()
            .filter(|m| !only_right || c.correct[*m])
            .min_by(|a, b| c.cost[*a].total_cmp(&c.cost[*b]))
            .cloned()
    };
    let oracle = outcome(&cases, |_, c| {
        cheapest(c, true).or_else(|| cheapest(c, false)).unwrap()
    });

    // The cost knob: the strong-model threshold at each share of strong calls.
    let scores: Vec<f32> = decisions
        .iter()
        .map(|d| d.strong_score.unwrap_or(0.0))
        .collect();
    let mut knob = Vec::new();
    let mut pair_specs: Vec<(String, String)> = Vec::new();
    if let Some(sm) = &cfg.routing.strong_model {
        let weak = sm
            .weak_model
            .clone()
            .unwrap_or(cfg.routing.default_model.clone());
        pair_specs.push((weak.clone(), sm.model.clone()));
        let mut sorted = scores.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let points = args.knob_points.max(1);
        for k in 0..=points {
            let take = cases.len() * k / points;
            let threshold = if take == 0 {
                f32::INFINITY
            } else {
                sorted[take - 1]
            };
            let mut c2 = cfg.clone();
            c2.routing.strong_model.as_mut().unwrap().threshold = threshold;
            let ds: Vec<_> = cases.iter().map(|c| decide(&c2, c)).collect();
            let r = outcome(&cases, |i, _| ds[i].model.clone());
            let strong_share =
                ds.iter().filter(|d| d.model == sm.model).count() as f64 / cases.len() as f64;
            let (w, s) = (models[&weak], models[&sm.model]);
            let q = if (s.cost - w.cost).abs() < 1e-12 {
                0.0
            } else {
                ((r.cost - w.cost) / (s.cost - w.cost)).clamp(0.0, 1.0)
            };
            knob.push(KnobPoint {
                threshold,
                strong_share,
                router: r,
                random_accuracy: (1.0 - q) * w.accuracy + q * s.accuracy,
            });
        }
    }
    for p in &args.pairs {
        let p = pair(p)?;
        anyhow::ensure!(
            names.contains(&p.0) && names.contains(&p.1),
            "--pair {},{}: both must be models of the config",
            p.0,
            p.1
        );
        if !pair_specs.contains(&p) {
            pair_specs.push(p);
        }
    }
    let pairs = pair_specs
        .iter()
        .map(|(w, s)| {
            let wk: Vec<bool> = cases.iter().map(|c| c.correct[w]).collect();
            let st: Vec<bool> = cases.iter().map(|c| c.correct[s]).collect();
            (
                format!("{w} -> {s}"),
                dataset::quality_curve(&scores, &wk, &st),
            )
        })
        .collect();
    let best_model = models
        .iter()
        .max_by(|a, b| a.1.accuracy.total_cmp(&b.1.accuracy))
        .map(|(m, _)| m.clone())
        .unwrap();
    let best = models[&best_model];
    let mut headline = format!(
        "the router as configured: {:.1} % of {best_model}'s accuracy at {:.1} % of its cost",
        100.0 * router.accuracy / best.accuracy.max(1e-12),
        100.0 * router.cost / best.cost.max(1e-12)
    );
    // The knob setting a user would pick for "nearly the best model, for less".
    if let Some(p) = knob
        .iter()
        .filter(|p| p.router.accuracy >= 0.95 * best.accuracy)
        .min_by(|a, b| a.router.cost.total_cmp(&b.router.cost))
    {
        let _ = write!(
            headline,
            "; the cheapest knob setting with >= 95 % of its accuracy (threshold {:.3}, {:.0} % strong calls): {:.1} % of its cost",
            p.threshold,
            100.0 * p.strong_share,
            100.0 * p.router.cost / best.cost.max(1e-12)
        );
    }
    // The knob as a curve: the cost weight of the selection, else the strong threshold.
    let index = |m: &str| names.iter().position(|n| n == m).expect("checked above");
    let (settings, choices): (Vec<f64>, Vec<Vec<usize>>) = if cfg.routing.selection.is_some() {
        let settings = crate::profile::weights();
        let mut c2 = cfg.clone();
        let choices = settings
            .iter()
            .map(|&w| {
                c2.routing.selection.as_mut().expect("checked").cost_weight = w;
                cases.iter().map(|c| index(&decide(&c2, c).model)).collect()
            })
            .collect();
        (settings, choices)
    } else {
        let mut c2 = cfg.clone();
        let choices = knob
            .iter()
            .map(|p| {
                if let Some(sm) = c2.routing.strong_model.as_mut() {
                    sm.threshold = p.threshold;
                }
                cases.iter().map(|c| index(&decide(&c2, c).model)).collect()
            })
            .collect();
        (
            knob.iter().map(|p| f64::from(p.threshold)).collect(),
            choices,
        )
    };
    let plain: Vec<crate::profile::Case> = cases
        .iter()
        .map(|c| crate::profile::Case {
            correct: names
                .iter()
                .map(|m| f64::from(u8::from(c.correct[m])))
                .collect(),
            cost: names.iter().map(|m| c.cost[m]).collect(),
            chars: c.chars,
        })
        .collect();
    let curve = crate::profile::curve(&names, &plain, &settings, &choices);
    let selection_cost = cfg.routing.selection.as_ref().map(|_| {
        let mut bare = cfg.clone();
        bare.routing.selection = None;
        // Alternated, so that both see the same machine state.
        let (mut w, mut o) = ((f64::INFINITY, 0.0), (f64::INFINITY, 0.0));
        for _ in 0..3 {
            let a = policy_cost(&cfg, &cases);
            let b = policy_cost(&bare, &cases);
            w = (w.0.min(a.0), a.1);
            o = (o.0.min(b.0), b.1);
        }
        SelectionCost {
            policy_us_with: w.0,
            policy_us_without: o.0,
            decision_bytes_with: w.1,
            decision_bytes_without: o.1,
        }
    });
    Ok(Report {
        curve,
        selection_cost,
        rows: cases.len(),
        skipped,
        models,
        router,
        router_mix,
        oracle,
        knob,
        pairs,
        best_model,
        headline,
    })
}

fn markdown(args: &RouteBenchArgs, r: &Report) -> String {
    let best = r.models[&r.best_model];
    let rel = |o: &Outcome| {
        format!(
            "{:.1} % / {:.1} %",
            100.0 * o.accuracy / best.accuracy.max(1e-12),
            100.0 * o.cost / best.cost.max(1e-12)
        )
    };
    let mut s = String::new();
    let _ = writeln!(s, "# Routing benchmark\n");
    let _ = writeln!(
        s,
        "Reproduce: `{}`\n",
        std::iter::once("semroute-train".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(
        s,
        "{} prompts ({} skipped: not every model has a verdict), {} split, policy and prices from `{}`, \
         answers {} tokens unless set per model, prompts 4 characters a token.\n",
        r.rows,
        r.skipped,
        args.split,
        args.config.display(),
        args.answer_tokens
    );
    let _ = writeln!(s, "**Headline: {}.**\n", r.headline);
    let _ = writeln!(
        s,
        "| choice | accuracy | cost / 1k requests | accuracy / cost vs {} |",
        r.best_model
    );
    let _ = writeln!(s, "|---|---|---|---|");
    let mut by_cost: Vec<_> = r.models.iter().collect();
    by_cost.sort_by(|a, b| a.1.cost.total_cmp(&b.1.cost));
    for (m, o) in by_cost {
        let _ = writeln!(
            s,
            "| {m} | {:.4} | {:.4} | {} |",
            o.accuracy,
            o.cost * 1000.0,
            rel(o)
        );
    }
    let mix: Vec<String> = r
        .router_mix
        .iter()
        .map(|(m, x)| format!("{m} {:.0} %", 100.0 * x))
        .collect();
    let _ = writeln!(
        s,
        "| **router as configured** ({}) | {:.4} | {:.4} | {} |",
        mix.join(", "),
        r.router.accuracy,
        r.router.cost * 1000.0,
        rel(&r.router)
    );
    let _ = writeln!(
        s,
        "| oracle (cheapest right model) | {:.4} | {:.4} | {} |\n",
        r.oracle.accuracy,
        r.oracle.cost * 1000.0,
        rel(&r.oracle)
    );
    if !r.knob.is_empty() {
        let _ = writeln!(s, "## The cost knob (strong-model threshold)\n");
        let _ = writeln!(
            s,
            "| threshold | strong share | accuracy | cost / 1k | vs {} (acc / cost) | random at same cost |",
            r.best_model
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for p in &r.knob {
            let t = if p.threshold.is_finite() {
                format!("{:.3}", p.threshold)
            } else {
                "never".into()
            };
            let _ = writeln!(
                s,
                "| {t} | {:.0} % | {:.4} | {:.4} | {} | {:.4} |",
                100.0 * p.strong_share,
                p.router.accuracy,
                p.router.cost * 1000.0,
                rel(&p.router),
                p.random_accuracy
            );
        }
        s.push('\n');
    }
    if r.selection_cost.is_some() {
        let _ = writeln!(s, "## The selection (cost weight)\n");
        let _ = writeln!(
            s,
            "At <= 40 % of {}'s cost: {}; at <= 20 %: {}.\n",
            r.curve.reference_model,
            crate::profile::pct(r.curve.at_40),
            crate::profile::pct(r.curve.at_20)
        );
        crate::profile::curve_markdown(&mut s, &r.curve, "selection, weight");
        s.push('\n');
        if let Some(c) = &r.selection_cost {
            let _ = writeln!(
                s,
                "Policy CPU per decision (`policy::decide`, in process, best of 15 rounds over these \
                 prompts' signals): **{:.2} µs with the selection, {:.2} µs without it** (+{:.2} µs); \
                 the decision the cache stores: {:.0} bytes of JSON with it, {:.0} without.\n",
                c.policy_us_with,
                c.policy_us_without,
                c.policy_us_with - c.policy_us_without,
                c.decision_bytes_with,
                c.decision_bytes_without
            );
        }
    }
    if !r.pairs.is_empty() {
        let _ = writeln!(s, "## Weak/strong pairs, ranked by the strong score\n");
        let _ = writeln!(
            s,
            "| pair | weak acc | strong acc | APGR (random 0.5) | CPT(50 %) | CPT(80 %) |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for (p, c) in &r.pairs {
            let _ = writeln!(
                s,
                "| {p} | {:.4} | {:.4} | {:.4} | {:.1} % | {:.1} % |",
                c.weak_accuracy,
                c.strong_accuracy,
                c.apgr,
                100.0 * c.cpt50,
                100.0 * c.cpt80
            );
        }
    }
    s
}
