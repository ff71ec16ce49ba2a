//! classifier-svc binary: `serve` (gRPC + HTTP) or `bench` (throughput/latency report). Training
//! and evaluation are `semroute-train` (the trainer crate).

use clap::Parser;

// Inference allocates and frees large activation buffers per op; glibc hands those out as fresh
// mmaps (page faults every time). mimalloc reuses them: measured +30% on 256-token batches.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use classifier_svc::config::{Cli, Command};

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> anyhow::Result<()> {
    semroute_encoder::use_all_cores();
    let cli = Cli::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            init_tracing(args.log_json);
            let metrics = classifier_svc::metrics::install()?;
            classifier_svc::server::serve(args, Some(metrics)).await
        }
        Command::Bench(args) => {
            init_tracing(false);
            classifier_svc::bench::run(args).await
        }
    }
}
