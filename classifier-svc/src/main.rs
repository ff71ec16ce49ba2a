//! classifier-svc binary: `serve` (gRPC + HTTP) or `bench` (throughput/latency report). Training
//! and evaluation are `semroute-train` (the trainer crate).

use clap::Parser;

// Inference allocates and frees large activation buffers per op; glibc hands those out as fresh
// mmaps (page faults every time). mimalloc reuses them: measured +30% on 256-token batches.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use classifier_svc::config::{Cli, Command};

/// Logs to stderr; with the OpenTelemetry settings (see `semroute-telemetry`) also the spans
/// of `classifier_svc::trace` to the OTLP collector. The returned guard flushes them at exit.
fn init_tracing(json: bool) -> anyhow::Result<Option<semroute_telemetry::Telemetry>> {
    use tracing_subscriber::prelude::*;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let registry = tracing_subscriber::registry().with(fmt.with_filter(filter()));
    let Some((guard, layer)) = semroute_telemetry::init("classifier-svc")? else {
        registry.init();
        return Ok(None);
    };
    // Its own spans only, whatever RUST_LOG says.
    let spans = tracing_subscriber::filter::Targets::new()
        .with_target("classifier_svc::trace", tracing::Level::INFO);
    registry.with(layer.with_filter(spans)).init();
    tracing::info!("OpenTelemetry traces on (OTLP)");
    Ok(Some(guard))
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
            let _telemetry = init_tracing(args.log_json)?;
            let metrics = classifier_svc::metrics::install()?;
            classifier_svc::server::serve(args, Some(metrics)).await
        }
        Command::Bench(args) => {
            let _telemetry = init_tracing(false)?;
            classifier_svc::bench::run(args).await
        }
    }
}
