//! router-svc binary. The road a request takes (src/api/mod.rs `road`):
//!
//! ```text
//! POST /v1/chat/completions | /v1/completions   (api::Routes: straight to the handler)
//!      /v1/messages | /v1/responses: api/dialect.rs, translated to chat and back (or native)
//!   -> tenant::Tenants           auth.mode keys: the key (401), its models (403), rpm/tpm and
//!                                budget in one Redis trip (429, or a budget downgrade)
//!   -> api::openai::parse        one pass (api/probe.rs) checks the JSON and reads what the
//!                                router needs; unknown fields kept (400/413/429 in OpenAI format)
//!   -> decide::decide            "auto": text -> cache (LRU, Redis) -> classifier -> policy
//!                                a named model: straight to it; unknown: 404
//!   -> upstream::Upstream::send  the less loaded of two endpoints (the backends' own queue and
//!                                KV usage, scraped; upstream/load.rs), overflow when the pool is
//!                                saturated, retry, alternatives, fallback; or a gateway's pool
//!   -> relay::relay              body or SSE stream back, x-vsr-* and Server-Timing headers
//! ```

use clap::Parser;
use semroute_router::config::{Cli, Config};

// jemalloc with its thread caches: every request's two 8 KiB connection read buffers (hyper's)
// and the small allocations around them came from glibc's slower paths (malloc/free were ~18 %
// of a proxied request's instructions; 12 % fewer instructions in all with jemalloc). One arena
// and dirty pages returned at once keep the RSS with 1,000 open streams below glibc's (52.8 vs
// 57 MiB; two arenas with a 1 s decay: 66 MiB; mimalloc: 73-108 MiB unless tuned by environment
// variables). Its thread caches are trimmed every 1 MiB allocated rather than every 64 KiB:
// each request allocates two 8 KiB buffers, so the default trimmed (and refilled) every few
// requests (-1.7k of a named request's 64k instructions; RSS with 1,000 streams +1 to 2 MiB).
// README, "The hop". `MALLOC_CONF` in the environment still overrides this.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// jemalloc reads this C string (`const char *malloc_conf`) at start.
#[unsafe(export_name = "malloc_conf")]
pub static MALLOC_CONF: Option<&'static std::ffi::c_char> =
    // SAFETY: the literal is 'static and NUL-terminated; only its address is taken.
    Some(unsafe {
        &*c"narenas:1,dirty_decay_ms:0,muzzy_decay_ms:0,tcache_gc_incr_bytes:1048576".as_ptr()
    });

/// Logs to stderr (RUST_LOG, text or JSON) and, when OTEL_EXPORTER_OTLP_ENDPOINT is set, spans
/// to an OTLP collector (`telemetry.rs`). The guard flushes the last spans when dropped.
fn init_tracing(json: bool) -> anyhow::Result<Option<semroute_router::telemetry::Telemetry>> {
    use tracing_subscriber::prelude::*;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    if !semroute_router::telemetry::configured() {
        // The plain subscriber: a layered registry with per-layer filters costs every event's
        // check more (~1 % of a cache hit's instructions), for nothing when no spans go out.
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr);
        if json {
            builder.json().init();
        } else {
            builder.init();
        }
        return Ok(None);
    }
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let registry = tracing_subscriber::registry().with(fmt.with_filter(filter()));
    let (guard, layer) = semroute_router::telemetry::init()?
        .ok_or_else(|| anyhow::anyhow!("OpenTelemetry configured but not started"))?;
    // The road's spans only, whatever RUST_LOG says.
    let spans = tracing_subscriber::filter::Targets::new()
        .with_target("semroute_router", tracing::Level::INFO);
    registry.with(layer.with_filter(spans)).init();
    tracing::info!("OpenTelemetry traces on (OTLP)");
    Ok(Some(guard))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = init_tracing(cli.log_json)?;
    let cfg = Config::load(cli.config.as_deref())?;
    if let Some(semroute_router::config::Command::Keys(cmd)) = cli.command {
        return semroute_router::tenant::cli::run(cmd, &cfg).await;
    }
    if cli.check {
        // Everything start-up builds (Redis client, classifier channels, upstream pools and
        // client, TLS), so a config that passes here does not fail at start.
        semroute_router::state::Runtime::build(cfg.clone(), None)?;
        println!("config OK (policy version {})", cfg.policy_version());
        return Ok(());
    }
    let metrics = semroute_router::metrics::install()?;
    let addr = cfg.server.listen;
    let listener = semroute_router::listen(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    tracing::info!(%addr, config = ?cli.config, models = cfg.models.len(), "router-svc listening");
    semroute_router::serve(
        listener,
        cfg,
        cli.config,
        std::time::Duration::from_millis(cli.reload_interval_ms),
        Some(metrics),
        shutdown_signal(),
    )
    .await?;
    tracing::info!("router-svc stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
