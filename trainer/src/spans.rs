//! `semroute-train train --spans-field F`: a token-classification head (PII entities) on the
//! shared frozen encoder. Gold character spans become per-token BIO labels; the head reads each
//! token's last hidden state, its neighbours' and its spelling (`model::spans`); early stopping
//! and the reported figures are entity-level F1 (exact type and span) on a held-out split.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use serde_json::{json, Value};

use crate::dataset;
use crate::train::{data_files, probs, save_head, weighted_ce, Head, TrainArgs};
use semroute_encoder::spans::{self, EntityScores};
use semroute_encoder::{LoadOptions, Model, Source, Truncation};

/// One text with its gold entities as byte ranges, types already mapped.
struct Example {
    text: String,
    gold: Vec<(String, usize, usize)>,
}

/// Byte offset of char index `c` in `text` (clamped to the end).
fn byte_at(text: &str, c: usize) -> usize {
    text.char_indices().nth(c).map_or(text.len(), |(b, _)| b)
}

fn load(args: &TrainArgs, field: &str) -> anyhow::Result<Vec<Example>> {
    let map = dataset::parse_label_map(args.input.label_map.as_deref())?;
    let mut out = Vec::new();
    for f in &args.input.data {
        let body =
            std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        for (i, line) in body
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: Value = serde_json::from_str(line)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", f.display(), i + 1))?;
            let Some(text) = dataset::field_str(&v, &args.input.text_field) else {
                continue;
            };
            if text.trim().is_empty() {
                continue;
            }
            let mut gold = Vec::new();
            for s in v
                .get(field)
                .and_then(|s| s.as_array())
                .into_iter()
                .flatten()
            {
                let kind = ["entity_type", "label", "type"]
                    .iter()
                    .find_map(|k| s.get(*k).and_then(|x| x.as_str()))
                    .ok_or_else(|| {
                        anyhow::anyhow!("{}:{}: a span without entity_type", f.display(), i + 1)
                    })?;
                let kind = map.get(kind).cloned().unwrap_or_else(|| kind.to_string());
                let (Some(a), Some(b)) = (
                    s.get("start").and_then(|x| x.as_u64()),
                    s.get("end").and_then(|x| x.as_u64()),
                ) else {
                    anyhow::bail!("{}:{}: a span without start/end", f.display(), i + 1);
                };
                if kind.is_empty() {
                    continue;
                }
                // Offsets in the data count characters (Python); ours count bytes.
                let (a, b) = (byte_at(&text, a as usize), byte_at(&text, b as usize));
                // Spans are compared trimmed, as token offsets never cover whitespace.
                let inner = &text[a..b];
                let a2 = a + (inner.len() - inner.trim_start().len());
                let b2 = b - (inner.len() - inner.trim_end().len());
                if b2 > a2 {
                    gold.push((kind, a2, b2));
                }
            }
            gold.sort_by_key(|g| (g.1, g.2));
            out.push(Example { text, gold });
        }
    }
    anyhow::ensure!(!out.is_empty(), "no texts in {:?}", args.input.data);
    Ok(out)
}

pub fn run(args: &TrainArgs, field: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let examples = load(args, field)?;
    let types: Vec<String> = examples
        .iter()
        .flat_map(|e| e.gold.iter().map(|g| g.0.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    anyhow::ensure!(!types.is_empty(), "no entity spans in field {field:?}");
    let labels = spans::bio_labels(&types);
    let with = examples.iter().filter(|e| !e.gold.is_empty()).count();
    eprintln!(
        "{}: {} texts ({with} with entities), types {types:?}",
        args.task,
        examples.len()
    );

    let source: Source = args.encoder.parse()?;
    let model = Model::load_encoder(
        &source,
        None,
        &LoadOptions {
            max_length: args.max_length,
            ..Default::default()
        },
    )?;
    let context = args.context;
    // Tokens (with offsets), BIO targets and head inputs per text.
    let mut offsets = Vec::with_capacity(examples.len());
    let mut words = Vec::with_capacity(examples.len());
    let mut ids = Vec::with_capacity(examples.len());
    for e in &examples {
        let enc = model.tokenize_with_offsets(&e.text, Truncation::Truncate)?;
        ids.push(enc.ids);
        offsets.push(enc.offsets);
        words.push(enc.word_starts);
    }
    let mut inputs: Vec<Vec<f32>> = vec![Vec::new(); examples.len()];
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    let mut done = 0;
    for chunk in order.chunks(32) {
        let seqs: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
        for (&i, states) in chunk.iter().zip(model.token_states(&seqs)?) {
            let shape = spans::shape_features(&examples[i].text, &offsets[i]);
            inputs[i] = spans::token_inputs(&states, &shape, context);
        }
        done += chunk.len();
        if done % 640 < 32 {
            eprintln!("encoding: {done}/{}", examples.len());
        }
    }
    let width = spans::token_input_width(model.meta.hidden_size, context);
    let targets: Vec<Vec<Option<usize>>> = examples
        .iter()
        .enumerate()
        .map(|(i, e)| spans::bio_targets(&offsets[i], &words[i], &e.gold, &labels))
        .collect();

    // Split by text, stratified on whether a text has entities.
    let has: Vec<usize> = examples
        .iter()
        .map(|e| (!e.gold.is_empty()) as usize)
        .collect();
    let held = args.splits.val_fraction + args.splits.test_fraction;
    let (train, rest) = dataset::stratified_split(&has, held, args.splits.seed);
    let rest_y: Vec<usize> = rest.iter().map(|&i| has[i]).collect();
    let (val_r, test_r) = dataset::stratified_split(
        &rest_y,
        args.splits.test_fraction / held,
        args.splits.seed + 1,
    );
    let val: Vec<usize> = val_r.iter().map(|&i| rest[i]).collect();
    let test: Vec<usize> = test_r.iter().map(|&i| rest[i]).collect();
    eprintln!(
        "split (seed {}): train {}, validation {}, test {} texts",
        args.splits.seed,
        train.len(),
        val.len(),
        test.len()
    );

    // Every training token that starts a word, as (text, position, target).
    let mut tokens: Vec<(usize, usize, usize)> = train
        .iter()
        .flat_map(|&i| {
            let t = &targets[i];
            (0..t.len()).filter_map(move |p| t[p].map(|y| (i, p, y)))
        })
        .collect();
    let k = labels.len();
    let mut counts = vec![0usize; k];
    for &(_, _, y) in &tokens {
        counts[y] += 1;
    }
    // Square-root class weights: entity tokens count more than O without flooding predictions.
    let class_w: Vec<f32> = counts
        .iter()
        .map(|&c| (tokens.len() as f32 / (k as f32 * c.max(1) as f32)).sqrt())
        .collect();
    let class_w = Tensor::new(class_w.as_slice(), &Device::Cpu)?;

    let mut rng = StdRng::seed_from_u64(args.splits.seed);
    let dims: Vec<usize> = if args.hidden == 0 {
        vec![width, k]
    } else {
        vec![width, args.hidden, k]
    };
    let head = Head::new(&dims, &mut rng, &Device::Cpu)?;
    let mut opt = AdamW::new(
        head.vars(),
        ParamsAdamW {
            lr: args.lr,
            weight_decay: args.weight_decay,
            ..Default::default()
        },
    )?;
    let predict = |weights: &[(Tensor, Tensor)],
                   idx: &[usize]|
     -> anyhow::Result<Vec<Vec<(String, usize, usize)>>> {
        idx.iter()
            .map(|&i| {
                let n = targets[i].len();
                let x = Tensor::from_slice(&inputs[i], (n, width), &Device::Cpu)?;
                let p = probs(weights, &x)?;
                Ok(spans::decode(&offsets[i], &words[i], &p, &labels)
                    .into_iter()
                    .map(|s| (s.kind, s.start, s.end))
                    .collect())
            })
            .collect()
    };
    let gold_of = |idx: &[usize]| -> Vec<Vec<(String, usize, usize)>> {
        idx.iter().map(|&i| examples[i].gold.clone()).collect()
    };
    let val_gold = gold_of(&val);
    let mut best = (f64::MIN, 0usize, head.snapshot()?);
    for epoch in 1..=args.epochs {
        tokens.shuffle(&mut rng);
        let (mut loss_sum, mut batches) = (0.0, 0);
        for b in tokens.chunks(args.batch_size) {
            let mut x = Vec::with_capacity(b.len() * width);
            for &(i, t, _) in b {
                x.extend_from_slice(&inputs[i][t * width..(t + 1) * width]);
            }
            let x = Tensor::from_vec(x, (b.len(), width), &Device::Cpu)?;
            let y: Vec<u32> = b.iter().map(|&(_, _, y)| y as u32).collect();
            let y = Tensor::new(y.as_slice(), &Device::Cpu)?;
            let w = class_w.index_select(&y, 0)?;
            let loss = weighted_ce(&head.forward(&x, args.dropout, &mut rng)?, &y, &w)?;
            opt.backward_step(&loss)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            batches += 1;
        }
        let s = spans::entity_scores(&val_gold, &predict(&head.snapshot()?, &val)?);
        if s.f1 > best.0 {
            best = (s.f1, epoch, head.snapshot()?);
        }
        eprintln!(
            "epoch {epoch:>3}: train loss {:.4}, validation entity F1 {:.4} (P {:.4} R {:.4}; best {:.4} at {})",
            loss_sum / batches.max(1) as f64,
            s.f1,
            s.precision,
            s.recall,
            best.0,
            best.1
        );
        if epoch - best.1 >= args.patience {
            eprintln!("early stop at epoch {epoch}");
            break;
        }
    }
    let weights = best.2;
    let test_pred = predict(&weights, &test)?;
    // As served: the head's entities with validated patterns added.
    let served: Vec<Vec<(String, usize, usize)>> = test
        .iter()
        .zip(&test_pred)
        .map(|(&i, p)| {
            let found = p
                .iter()
                .map(|(kind, start, end)| spans::EntitySpan {
                    kind: kind.clone(),
                    start: *start,
                    end: *end,
                    score: 1.0,
                })
                .collect();
            spans::with_patterns(&examples[i].text, found)
                .into_iter()
                .map(|(e, _)| (e.kind, e.start, e.end))
                .collect()
        })
        .collect();
    let served_scores = spans::entity_scores(&gold_of(&test), &served);
    if std::env::var_os("DEBUG_SPANS").is_some() {
        for (&i, p) in test.iter().zip(&test_pred) {
            let e = &examples[i];
            if &e.gold != p {
                let show = |v: &[(String, usize, usize)]| {
                    v.iter()
                        .map(|(k, a, b)| format!("{k}:{:?}", &e.text[*a..*b]))
                        .collect::<Vec<_>>()
                };
                eprintln!(
                    "TEXT {:?}\n  gold {:?}\n  pred {:?}",
                    e.text,
                    show(&e.gold),
                    show(p)
                );
            }
        }
    }
    let test_scores = spans::entity_scores(&gold_of(&test), &test_pred);
    println!(
        "== {} test split, head alone\n{}\n== with validated patterns (as served)\n{}",
        args.task,
        test_scores.render(),
        served_scores.render()
    );
    write(
        args,
        &types,
        &labels,
        &weights,
        (&test_scores, &served_scores),
        &model,
        (best.1, best.0),
        started,
        (train.len(), val.len(), test.len()),
    )
}

#[allow(clippy::too_many_arguments)]
fn write(
    args: &TrainArgs,
    types: &[String],
    labels: &[String],
    weights: &[(Tensor, Tensor)],
    (scores, served): (&EntityScores, &EntityScores),
    model: &Model,
    best: (usize, f64),
    started: Instant,
    split: (usize, usize, usize),
) -> anyhow::Result<()> {
    let dir = args.out.join(&args.task);
    let spec = json!({
        "task": args.task,
        "kind": "token",
        "labels": labels,
        "activation": "relu",
        "context": args.context,
        "encoder": model.meta.id,
    });
    let metrics = json!({
        "task": args.task,
        "split": {"seed": args.splits.seed, "train": split.0, "validation": split.1, "test": split.2},
        "best_epoch": best.0,
        "validation_entity_f1": best.1,
        "test": scores,
        "test_with_patterns": served,
        "train_seconds": started.elapsed().as_secs_f64(),
    });
    let command = save_head(&dir, weights, &spec, metrics)?;
    let mut card = std::fs::File::create(dir.join("CARD.md"))?;
    writeln!(card, "# `{}` token-classification head\n", args.task)?;
    writeln!(
        card,
        "- Encoder: `{}` (frozen; last hidden states, max {} tokens); one pass shared with the sentence heads",
        model.meta.id, args.max_length
    )?;
    writeln!(
        card,
        "- Head: {} per token over [its hidden state; {} neighbour(s) on each side; {} spelling features (capitals, digits, word start, ...) read through the token's offsets]; BIO labels; sqrt class-weighted cross-entropy, AdamW lr {} wd {}, dropout {}, early stopping on validation entity F1 (patience {}, best epoch {})",
        if args.hidden == 0 { "linear".to_string() } else { format!("MLP -> {} (relu) ->", args.hidden) },
        args.context,
        spans::SHAPE_DIM,
        args.lr,
        args.weight_decay,
        args.dropout,
        args.patience,
        best.0
    )?;
    writeln!(
        card,
        "- Decoding: `B-T`/`I-T` runs become spans (each word follows its first token's label); classifier-svc then adds validated patterns (e-mail, Luhn-checked cards, SSN, IP, phone), which win where they overlap",
    )?;
    writeln!(
        card,
        "- Data: {} (text `{}`, spans `{}`{}); entity types: {}",
        data_files(args),
        args.input.text_field,
        args.spans_field.as_deref().unwrap_or_default(),
        args.input
            .label_map
            .as_ref()
            .map(|m| format!(", types mapped {m}"))
            .unwrap_or_default(),
        types.join(", ")
    )?;
    writeln!(
        card,
        "- Split by text, stratified on having entities, seed {}: train {}, validation {} (early stopping), test {} (the figures below)",
        args.splits.seed, split.0, split.1, split.2
    )?;
    writeln!(
        card,
        "\n## Test split, as served (head + validated patterns)\n\n```\n{}```\n\n## Test split, head alone\n\n```\n{}```",
        served.render(),
        scores.render()
    )?;
    writeln!(card, "\n## Reproduce\n\n```sh\n{command}\n```")?;
    eprintln!("wrote {}", dir.display());
    Ok(())
}
