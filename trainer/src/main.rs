//! semroute-train: train, fine-tune and judge the classifier's heads (`train`, `finetune`,
//! `eval`, `centroid-heads`, `route-bench`, `profile`, `guard-robustness`, `distill`, `cascade`). The server binary (classifier-svc) serves what this writes.

use clap::{Parser, Subcommand};

// Training allocates and frees large activation buffers per op; mimalloc reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "semroute-train",
    version,
    about = "Train, fine-tune and evaluate the classifier heads of semroute"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a head on the shared encoder from a JSONL file and write it with a model card.
    Train(semroute_trainer::train::TrainArgs),
    /// Fine-tune the shared encoder jointly for several tasks (one encoder pass still serves all).
    Finetune(semroute_trainer::finetune::FinetuneArgs),
    /// Judge a task's classifier on a JSONL file (in process or against a server).
    Eval(semroute_trainer::eval::EvalArgs),
    /// Write heads without training: each label's row is the mean embedding of a few examples.
    CentroidHeads(semroute_trainer::centroid::CentroidArgs),
    /// Replay prompts with per-model correctness through the routing policy: accuracy and cost
    /// of every model, the router along its cost knob, random routing and the oracle.
    RouteBench(semroute_trainer::route_bench::RouteBenchArgs),
    /// Model profiles from scored prompts (each model's expected quality on a prompt) and the
    /// accuracy/cost curve of selecting by them; `--max-scored`: a model joining with few scores.
    Profile(semroute_trainer::profile::ProfileArgs),
    /// Judge the guard under small harmless edits: fixed ones and an adaptive greedy search.
    GuardRobustness(semroute_trainer::robustness::RobustnessArgs),
    /// Distil the shared encoder into static token embeddings (model2vec): the fast tier.
    Distill(semroute_trainer::distill::DistillArgs),
    /// Choose the fast tier's threshold for a task on validation, for a stated accuracy loss.
    Cascade(semroute_trainer::cascade::CascadeArgs),
}

fn main() -> anyhow::Result<()> {
    semroute_encoder::use_all_cores();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Train(args) => semroute_trainer::train(&args),
        Command::Finetune(args) => semroute_trainer::finetune::run(&args),
        Command::CentroidHeads(args) => semroute_trainer::centroid::run(&args),
        Command::RouteBench(args) => semroute_trainer::route_bench::run(&args),
        Command::Profile(args) => semroute_trainer::profile::run(&args),
        Command::GuardRobustness(args) => semroute_trainer::robustness::run(&args),
        Command::Distill(args) => semroute_trainer::distill::run(&args),
        Command::Cascade(args) => semroute_trainer::cascade::run(&args),
        Command::Eval(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(semroute_trainer::eval::run(&args)),
    }
}
