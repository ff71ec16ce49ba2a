//! semroute-trainer: everything that makes and judges the classifier's heads, none of which the
//! server runs. `dataset` (JSONL, splits, scores) <- `train` (sentence heads on the frozen encoder)
//! <- `spans` (token heads), `finetune` (the encoder itself, jointly for several tasks); `eval`
//! judges a head in process or through a running classifier-svc; `centroid` writes few-shot
//! heads without training; `route_bench` replays per-model correctness through routing policies.

pub mod cascade;
pub mod centroid;
pub mod checkpoint;
pub mod dataset;
pub mod distill;
pub mod eval;
pub mod finetune;
pub mod perturb;
pub mod profile;
pub mod robustness;
pub mod route_bench;
pub mod spans;
pub mod train;

/// `train`: a sentence head, or a token head when the data has character spans.
pub fn train(args: &train::TrainArgs) -> anyhow::Result<()> {
    match &args.spans_field {
        Some(field) => spans::run(args, field),
        None => train::run(args),
    }
}
