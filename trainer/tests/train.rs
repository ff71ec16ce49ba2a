//! `train` end to end on a tiny random-weight encoder: it learns a separable task, writes a head
//! (with lexical features) that the server's loader reads back, and the served model gives the
//! trained labels; `eval` scores it.

use semroute_encoder::fixtures::{self, Spec};
use semroute_encoder::{Arch, LoadOptions, Model, Source, Truncation};
use semroute_trainer::dataset::DataArgs;
use semroute_trainer::train::{self, TrainArgs};

#[tokio::test(flavor = "multi_thread")]
async fn train_writes_a_head_the_server_loads_and_that_separates_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let enc = dir.path().join("enc");
    fixtures::write_checkpoint(&enc, &Spec::tiny(Arch::Bert)).unwrap();
    // Two labels told apart by their words.
    let mut lines = Vec::new();
    for i in 0..60 {
        lines.push(format!(
            r#"{{"q": "the cat sat on the mat {i}", "y": "cats"}}"#
        ));
        lines.push(format!(
            r#"{{"q": "a law court and a judge {i}", "y": "law"}}"#
        ));
    }
    let data = dir.path().join("d.jsonl");
    std::fs::write(&data, lines.join("\n")).unwrap();
    let out = dir.path().join("heads");
    let out_dir = out.clone();
    let args = TrainArgs {
        task: "topic".into(),
        input: DataArgs {
            data: vec![data],
            text_field: "q".into(),
            label_field: "y".into(),
            label_map: None,
        },
        group_field: None,
        out: out.clone(),
        encoder: enc.display().to_string(),
        max_length: 64,
        token_features: true,
        bigram_buckets: 64,
        hidden: 0,
        dropout: 0.0,
        epochs: 60,
        batch_size: 16,
        lr: 1e-2,
        weight_decay: 0.0,
        patience: 60,
        splits: semroute_trainer::train::SplitArgs {
            val_fraction: 0.2,
            test_fraction: 0.2,
            seed: 1,
        },
        positive: Some("law".into()),
        max_fpr: 0.05,
        cache_dir: dir.path().join("cache"),
        quality_pairs: vec![],
        spans_field: None,
        balance_groups: false,
        context: 1,
        augment: 0,
        calibrate: false,
        window: None,
    };
    train::run(&args).unwrap();
    let e = train::run(&TrainArgs {
        balance_groups: true,
        ..args.clone()
    })
    .unwrap_err();
    assert!(e.to_string().contains("--group-field"), "{e}");
    for f in ["head.json", "head.safetensors", "metrics.json", "CARD.md"] {
        assert!(out.join("topic").join(f).is_file(), "{f}");
    }
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("topic/metrics.json")).unwrap())
            .unwrap();
    assert!(
        metrics["test"]["accuracy"].as_f64().unwrap() >= 0.95,
        "{metrics}"
    );
    assert!(metrics["detector"]["threshold"].is_number());
    assert!(metrics["calibration"].is_null());

    // Perturbed copies of the training rows and a fitted temperature: same quality, the
    // temperature recorded, the test split untouched (its size is that of the plain run).
    let calibrated = dir.path().join("calibrated");
    train::run(&TrainArgs {
        augment: 1,
        calibrate: true,
        out: calibrated.clone(),
        ..args.clone()
    })
    .unwrap();
    let m2: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(calibrated.join("topic/metrics.json")).unwrap(),
    )
    .unwrap();
    let t = m2["calibration"]["temperature"].as_f64().unwrap();
    assert!(t > 0.0 && t.is_finite(), "{m2}");
    assert!(m2["test"]["accuracy"].as_f64().unwrap() >= 0.95, "{m2}");
    assert_eq!(m2["split"]["test"], metrics["split"]["test"]);
    assert!(m2["split"]["train"].as_u64() > metrics["split"]["train"].as_u64());

    // The server's loader reads it back, lexical features included.
    let model = Model::load_encoder(
        &Source::Local(enc.clone()),
        Some(&out),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(model.tasks[0].name, "topic");
    assert!(model.tasks[0].token_features() > 0);
    let ids: Vec<Vec<u32>> = ["the cat sat on the mat", "a judge in a law court"]
        .iter()
        .map(|t| model.tokenize(t, Truncation::Truncate).unwrap().ids)
        .collect();
    let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let out = model.run(&refs).unwrap();
    let labels = &model.tasks[0].labels;
    let top = |p: &Vec<f32>| labels[if p[0] > p[1] { 0 } else { 1 }].clone();
    assert_eq!(top(&out.probs[0][0]), "cats");
    assert_eq!(top(&out.probs[1][0]), "law");
    drop(model);
    eval_scores(&enc, &out_dir, dir.path()).await;
}

/// `eval` on a file it has never seen, with a label the head does not know.
async fn eval_scores(enc: &std::path::Path, heads: &std::path::Path, dir: &std::path::Path) {
    let data = dir.join("unseen.jsonl");
    std::fs::write(
        &data,
        [
            r#"{"body": "the cat sat on the mat", "kind": "feline"}"#,
            r#"{"body": "a judge in a law court", "kind": "law"}"#,
            r#"{"body": "a law court and a judge again", "kind": "law"}"#,
            r#"{"body": "an unrelated row", "kind": "weather"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let preds = dir.join("preds.jsonl");
    let args = semroute_trainer::eval::EvalArgs {
        input: DataArgs {
            data: vec![data],
            text_field: "body".into(),
            label_field: "kind".into(),
            label_map: Some("feline=cats".into()),
        },
        task: "topic".into(),
        addr: None,
        encoder: enc.display().to_string(),
        heads: heads.to_path_buf(),
        limit: None,
        json: true,
        predictions: Some(preds.clone()),
    };
    let r = semroute_trainer::eval::evaluate(&args).await.unwrap();
    assert_eq!(r.json["scores"]["n"], 4);
    assert_eq!(r.json["labels_unknown_to_the_head"][0], "weather");
    assert_eq!(r.json["scores"]["accuracy"], 0.75, "{}", r.json);
    assert!(r.text.contains("confusion"));
    let lines = std::fs::read_to_string(&preds).unwrap();
    assert_eq!(lines.lines().count(), 4);
    assert!(lines.lines().next().unwrap().contains("\"probabilities\""));
}
