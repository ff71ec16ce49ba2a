//! Connections served on worker threads, each running its own single-threaded tokio runtime,
//! as nginx runs worker processes. A connection stays on the worker it was handed to, and so do
//! its requests, their backend calls (`upstream::Upstream` keeps a connection pool per thread)
//! and the relay of their answers: no request wakes another thread or is stolen by one. On the
//! work-stealing runtime a proxied request crossed threads about twice (futex wake-ups and
//! context switches were a quarter of the router's CPU).
//!
//! The caller's runtime accepts and hands each connection to the worker with the fewest open
//! ones; background work (health checks, config reload, summaries) stays on it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::Watcher;

use crate::api::App;

/// How often an idle worker's timer fires. tokio's timer wakes its own runtime (an eventfd
/// write and one more `epoll_wait` return) whenever a new timer is due sooner than every timer
/// it had when it last parked; a worker serving one request at a time had none, so each
/// request's upstream deadline did that: a syscall a request. With this one pending, the
/// request deadlines (seconds at least) come later and are just added to the wheel.
const PACE: std::time::Duration = std::time::Duration::from_millis(500);

/// A lane's count once its worker thread has gone (only if it panicked).
const DEAD: usize = usize::MAX;

/// A connection on its way to a worker, with the graceful-shutdown watcher it is served under.
type Handoff = (std::net::TcpStream, Watcher);

struct Lane {
    tx: tokio::sync::mpsc::UnboundedSender<Handoff>,
    open: Arc<AtomicUsize>,
}

/// The worker threads. Dropping this stops them: a worker ends when its lane is closed and its
/// connections have ended, or at once when `stop` is dropped (whatever is still open is
/// cancelled).
pub struct Workers {
    lanes: Vec<Lane>,
    _stop: tokio::sync::watch::Sender<()>,
}

/// How many workers `configured` asks for: 0 means one per core.
pub fn count(configured: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

impl Workers {
    /// Starts `n` workers serving `app` with `builder`'s HTTP settings.
    pub fn start(
        n: usize,
        app: App,
        builder: Builder<hyper_util::rt::TokioExecutor>,
    ) -> std::io::Result<Self> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
        let mut lanes = Vec::with_capacity(n);
        for i in 0..n.max(1) {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let open = Arc::new(AtomicUsize::new(0));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (app, builder, open2, mut stop) =
                (app.clone(), builder.clone(), open.clone(), stop_rx.clone());
            std::thread::Builder::new()
                .name(format!("router-worker-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        tokio::select! {
                            () = run(rx, app, builder, open2) => {}
                            _ = stop.changed() => {}
                        }
                    });
                })?;
            lanes.push(Lane { tx, open });
        }
        Ok(Self {
            lanes,
            _stop: stop_tx,
        })
    }

    /// Hands `stream` to the worker with the fewest open connections.
    pub fn hand(&self, stream: tokio::net::TcpStream, watcher: Watcher) {
        let Some(lane) = self
            .lanes
            .iter()
            .filter(|l| l.open.load(Ordering::Relaxed) != DEAD)
            .min_by_key(|l| l.open.load(Ordering::Relaxed))
        else {
            return;
        };
        match stream.into_std() {
            Ok(s) => {
                lane.open.fetch_add(1, Ordering::Relaxed);
                if lane.tx.send((s, watcher)).is_err() {
                    // Only if its thread died; said once, and the lane is avoided from now on.
                    if lane.open.swap(DEAD, Ordering::Relaxed) != DEAD {
                        tracing::error!("a worker thread has stopped; its connections are dropped");
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "connection lost before its hand-off"),
        }
    }

    /// No more connections: each worker ends once its open ones have.
    pub fn close(&mut self) {
        self.lanes.clear();
    }
}

/// One worker: serves the connections handed to it until its lane closes and they have all
/// ended.
async fn run(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Handoff>,
    app: App,
    builder: Builder<hyper_util::rt::TokioExecutor>,
    open: Arc<AtomicUsize>,
) {
    let mut conns = tokio::task::JoinSet::new();
    let mut pace = tokio::time::interval(PACE);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            handed = rx.recv() => match handed {
                Some((stream, watcher)) => {
                    let stream = match tokio::net::TcpStream::from_std(stream) {
                        Ok(s) => s,
                        Err(e) => {
                            open.fetch_sub(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "cannot register a connection with its worker");
                            continue;
                        }
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app.clone());
                    let conn = builder
                        .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service)
                        .into_owned();
                    let conn = watcher.watch(conn);
                    let open = open.clone();
                    conns.spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        open.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                None => break,
            },
            // Reap finished connections so the set does not grow with every one ever served.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = pace.tick() => {}
        }
    }
    while conns.join_next().await.is_some() {}
}
