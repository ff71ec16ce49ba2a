//! classifier-svc binary: `serve` (gRPC + HTTP) or `bench` (throughput/latency report).

use clap::Parser;
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
