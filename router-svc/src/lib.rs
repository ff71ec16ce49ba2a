//! router-svc: the OpenAI-compatible semantic routing gateway.
//!
//! The road of a request: `api` (parse, admit) -> `decide` (what text, cache, classifier,
//! policy -> a `Decision`) -> `upstream` (endpoint pools, balancing by load, overflow, health,
//! retries) -> `relay` (body or SSE stream back). `config` and `metrics` are leaves used by all; `state`
//! holds what a request runs against and swaps it on reload; `error` is the one error type.

pub mod api;
pub mod balance;
pub mod config;
pub mod decide;
pub mod error;
pub mod events;
pub mod metrics;
pub mod relay;
pub mod response_cache;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tenant;
pub mod upstream;
pub mod workers;

use std::future::Future;
use std::sync::Arc;

/// Binds `addr` with a listen backlog of 4096 (capped by `net.core.somaxconn`). The default of
/// 128 drops the SYNs of a burst of new connections (a thousand clients opening streams at
/// once), which then wait a second for the retransmission.
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Builds everything from `cfg` and serves HTTP on `listener` until `shutdown` resolves,
/// then lets in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cfg: config::Config,
    config_path: Option<std::path::PathBuf>,
    reload_every: std::time::Duration,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let grace = config::ms(cfg.server.shutdown_grace_ms);
    let drain = config::ms(cfg.server.drain_ms);
    let workers = workers::count(cfg.server.workers);
    let summary = tokio::spawn(events::run(config::ms(cfg.server.summary_interval_ms)));
    let shared = state::Shared::new(state::Runtime::build(cfg, None)?);
    let health = tokio::spawn(upstream::health::run(shared.clone()));
    let load = tokio::spawn(upstream::load::run(shared.clone()));
    let watcher = config_path.map(|p| tokio::spawn(state::watch(shared.clone(), p, reload_every)));
    let app = api::app(Arc::clone(&shared), metrics);
    // hyper directly rather than `axum::serve`, to cap each connection's read buffer at hyper's
    // minimum (8 KiB): by default it grew to 16 KiB once a request was read, and kept it as long
    // as a stream stayed open.
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.http1().max_buf_size(8192);
    let pool = workers::Workers::start(workers, app, builder)
        .map_err(|e| anyhow::anyhow!("cannot start the worker threads: {e}"))?;
    // Stop accepting on `shutdown`; requests in flight get `grace` to finish.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let draining = shared.clone();
    tokio::spawn(async move {
        shutdown.await;
        // Readiness fails first; connections keep being served for `drain`, then accepting stops.
        draining.start_draining();
        if !drain.is_zero() {
            tokio::time::sleep(drain).await;
        }
        let _ = stop_tx.send(true);
    });
    let mut forced = stop_rx.clone();
    let server = accept(listener, pool, stop_rx);
    // The workers (and what their runtimes hold) stop when `serve` returns.
    let _workers = tokio::select! {
        pool = server => Some(pool),
        _ = async {
            let _ = forced.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(grace_ms = grace.as_millis() as u64,
                "requests still in flight after the shutdown grace period; stopping anyway");
            None
        }
    };
    health.abort();
    load.abort();
    summary.abort();
    if let Some(w) = watcher {
        w.abort();
    }
    Ok(())
}

/// Accepts connections and hands them to the worker threads (`workers.rs`) until `stop` turns
/// true, then waits for the open ones to finish their requests.
async fn accept(
    listener: tokio::net::TcpListener,
    mut pool: workers::Workers,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> workers::Workers {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: say so, back off, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stopped => break,
        };
        let _ = stream.set_nodelay(true);
        pool.hand(stream, graceful.watcher());
    }
    drop(listener);
    pool.close();
    graceful.shutdown().await;
    pool
}
