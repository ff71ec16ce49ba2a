//! `route-bench` on a tiny random-weight encoder and a two-model config: every figure it reports
//! is checked against counts done by hand (single models, oracle, the knob's two ends, random
//! routing at the same cost, skipped rows), whatever the random head scores.

use semroute_encoder::fixtures::{self, Spec};
use semroute_encoder::Arch;
use semroute_trainer::route_bench::{bench, RouteBenchArgs};

const CONFIG: &str = r#"
routing:
  default_model: small
  strong_model: {task: strong, label: strong, threshold: 0.5, model: big, weak_model: small}
models:
  - {name: small, endpoints: ["http://127.0.0.1:9"], pricing: {input_per_million: 1, output_per_million: 1}}
  - {name: big, endpoints: ["http://127.0.0.1:9"], pricing: {input_per_million: 10, output_per_million: 10}}
"#;

fn args(dir: &std::path::Path) -> RouteBenchArgs {
    RouteBenchArgs {
        data: vec![dir.join("d.jsonl")],
        text_field: "q".into(),
        correct_field: "/correct".into(),
        config: dir.join("bench.yaml"),
        encoder: dir.join("enc").display().to_string(),
        heads: dir.join("heads"),
        split: "all".into(),
        head_split: semroute_trainer::train::HeadSplit {
            split_label_field: None,
            split_label_map: None,
            splits: semroute_trainer::train::SplitArgs {
                val_fraction: 0.15,
                test_fraction: 0.15,
                seed: 42,
            },
        },
        answer_tokens: 100,
        model_answer_tokens: vec![],
        pairs: vec![],
        knob_task: None,
        knob_label: None,
        knob_weak: None,
        knob_strong: None,
        knob_points: 4,
        out: None,
        json: false,
        profiles: vec![],
    }
}

#[test]
fn route_bench_figures_match_hand_counts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fixtures::write_checkpoint(&d.join("enc"), &Spec::tiny(Arch::Bert)).unwrap();
    fixtures::write_head(&d.join("heads"), "strong", &["strong", "weak"], 32, &[], 7).unwrap();
    std::fs::write(d.join("bench.yaml"), CONFIG).unwrap();
    // (small right, big right); the last row has no verdict for small and is skipped.
    let verdicts = [
        ("true", "true"),
        ("false", "true"),
        ("false", "false"),
        ("true", "false"),
        ("false", "true"),
        ("null", "true"),
    ];
    let lines: Vec<String> = verdicts
        .iter()
        .enumerate()
        .map(|(i, (s, b))| {
            format!(r#"{{"q": "question number {i} about cats", "correct": {{"small": {s}, "big": {b}}}}}"#)
        })
        .collect();
    std::fs::write(d.join("d.jsonl"), lines.join("\n")).unwrap();

    let r = bench(&args(d)).unwrap();
    assert_eq!((r.rows, r.skipped), (5, 1));
    assert!((r.models["small"].accuracy - 0.4).abs() < 1e-9);
    assert!((r.models["big"].accuracy - 0.6).abs() < 1e-9);
    // 28 characters -> 7 prompt tokens, 100 answer tokens; prices per million.
    assert!((r.models["small"].cost - 107e-6).abs() < 1e-12);
    assert!((r.models["big"].cost - 1070e-6).abs() < 1e-12);
    // Oracle: any right model (rows 1, 2, 4, 5), the cheap one where it suffices.
    assert!((r.oracle.accuracy - 0.8).abs() < 1e-9);
    assert!((r.oracle.cost - (3.0 * 107e-6 + 2.0 * 1070e-6) / 5.0).abs() < 1e-12);
    // The knob's ends are the two models, and random routing at their cost is the same.
    let (first, last) = (&r.knob[0], r.knob.last().unwrap());
    assert_eq!(r.knob.len(), 5);
    assert_eq!((first.strong_share, last.strong_share), (0.0, 1.0));
    assert!((first.router.accuracy - 0.4).abs() < 1e-9);
    assert!((last.router.accuracy - 0.6).abs() < 1e-9);
    assert!((first.random_accuracy - 0.4).abs() < 1e-9);
    assert!((last.random_accuracy - 0.6).abs() < 1e-9);
    // Shares grow along the knob; the configured router is one of its settings.
    assert!(r
        .knob
        .windows(2)
        .all(|w| w[0].strong_share <= w[1].strong_share));
    let mix: f64 = r.router_mix.values().sum();
    assert!((mix - 1.0).abs() < 1e-9);
    let pair = &r.pairs["small -> big"];
    assert!((pair.weak_accuracy - 0.4).abs() < 1e-9 && (pair.strong_accuracy - 0.6).abs() < 1e-9);
    assert_eq!(r.best_model, "big");
    assert!(r.headline.contains("of big's accuracy"), "{}", r.headline);
    // The JSON form (`--json`): the same figures, costs per 1k prompts, shares to the most
    // accurate model.
    let c = &r.curve;
    assert_eq!(c.reference_model, "big");
    assert!((c.models["small"].cost - 0.107).abs() < 1e-9);
    assert_eq!(
        (c.models["small"].strong_share, c.models["big"].strong_share),
        (0.0, 1.0)
    );
    assert!((c.oracle.accuracy - 0.8).abs() < 1e-9);
    assert_eq!(c.knob.len(), r.knob.len());
    assert!((c.knob[0].accuracy - 0.4).abs() < 1e-9 && c.knob[0].strong_share == 0.0);
    let json = serde_json::to_value(c).unwrap();
    for k in ["accuracy", "cost", "strong_share"] {
        assert!(
            json["knob"][0][k].is_number() && json["models"]["big"][k].is_number(),
            "{json}"
        );
    }

    // The test split needs the label the head was trained on; a model the data lacks is refused.
    let mut a = args(d);
    a.split = "test".into();
    assert!(bench(&a)
        .unwrap_err()
        .to_string()
        .contains("--split-label-field"));
    std::fs::write(
        d.join("bench.yaml"),
        CONFIG
            .replace("name: big", "name: huge")
            .replace("model: big", "model: huge"),
    )
    .unwrap();
    let e = bench(&args(d)).unwrap_err().to_string();
    assert!(e.contains("no row") && e.contains("huge"), "{e}");
}

/// With `routing.selection` and a served profile (the large model expected right everywhere,
/// the small one nowhere), the knob is the cost weight: 0 sends everything to the large
/// model, a weight that prices it out everything to the small one; the policy's cost is
/// measured alongside.
#[test]
fn route_bench_sweeps_the_selection_over_a_served_profile() {
    use semroute_encoder::profile::{Profile, ProfileSpec};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = Spec::tiny(Arch::Bert);
    fixtures::write_checkpoint(&d.join("enc"), &spec).unwrap();
    fixtures::write_head(&d.join("heads"), "strong", &["strong", "weak"], 32, &[], 7).unwrap();
    std::fs::write(
        d.join("bench.yaml"),
        CONFIG.replace(
            "  strong_model: {task: strong, label: strong, threshold: 0.5, model: big, weak_model: small}\n",
            "  selection: {task: quality, cost_weight: 0.0}\n",
        ),
    )
    .unwrap();
    let dim = 32;
    let rows = 4;
    let mut emb = vec![0.0; rows * dim];
    for i in 0..rows {
        emb[i * dim + i] = 1.0;
    }
    let p = Profile::new(
        ProfileSpec {
            task: "quality".into(),
            kind: "profile".into(),
            labels: vec!["small".into(), "big".into()],
            k: 4,
            shrinkage: 0.01,
            calibration: vec![[-6.0, 0.0], [6.0, 0.0]],
            prior: vec![0.0, 1.0],
            scored: vec![rows, rows],
            reference: vec![],
            difficulty_mean: 0.5,
            encoder: "tiny".into(),
            source: String::new(),
        },
        dim,
        emb,
        [0.0, 1.0].repeat(rows),
        vec![0.5; rows],
    )
    .unwrap();
    p.save(&d.join("quality")).unwrap();
    let lines: Vec<String> = (0..6)
        .map(|i| {
            format!(r#"{{"q": "question number {i} about dogs", "correct": {{"small": {}, "big": true}}}}"#, i % 2 == 0)
        })
        .collect();
    std::fs::write(d.join("d.jsonl"), lines.join("\n")).unwrap();
    let mut a = args(d);
    a.profiles = vec![d.join("quality")];
    let r = bench(&a).unwrap();
    assert!(
        r.selection_cost.is_some(),
        "the knob is the selection's weight"
    );
    let c = &r.curve;
    let (first, last) = (&c.knob[0], c.knob.last().unwrap());
    assert_eq!(first.setting, Some(0.0));
    assert_eq!((first.strong_share, last.strong_share), (1.0, 0.0));
    assert!((first.accuracy - 1.0).abs() < 1e-9 && (last.accuracy - 0.5).abs() < 1e-9);
    let cost = r.selection_cost.as_ref().unwrap();
    assert!(cost.policy_us_with > 0.0 && cost.decision_bytes_with > cost.decision_bytes_without);
}
