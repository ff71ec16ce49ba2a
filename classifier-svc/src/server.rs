//! Wiring: gRPC (service + health + reflection) and HTTP listeners, model loading in the
//! background (tasks NOT_SERVING until loaded), graceful shutdown.

use std::net::SocketAddr;

use metrics_exporter_prometheus::PrometheusHandle;
use semroute_proto::classifier::v1::classifier_server::ClassifierServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use crate::cascade::FastTier;
use crate::config::{Limits, ModelArgs, ModelPlan, ServeArgs};
use crate::service::ClassifierService;
use semroute_encoder::{LoadOptions, Model};

/// A started server. Dropping it does not stop it; call `shutdown`.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub service: ClassifierService,

    stop: watch::Sender<bool>,
    grpc: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Running {
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.grpc.await;
    }

    /// Wait for SIGINT/SIGTERM, then drain and stop.
    pub async fn wait_for_signal(self) {
        shutdown_signal().await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}

/// Starts both listeners with no model loaded yet (every task NOT_SERVING).
pub async fn start(
    grpc: TcpListener,
    http: TcpListener,
    limits: Limits,
    expected_tasks: &[String],
    metrics: Option<PrometheusHandle>,
) -> anyhow::Result<Running> {
    let grpc_addr = grpc.local_addr()?;
    let http_addr = http.local_addr()?;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let chaos_control = limits.chaos_control;
    let service = ClassifierService::new(limits, health_reporter);
    service.expect_tasks(expected_tasks).await;
    // Both reflection protocols: grpcurl and current clients speak v1; Python's
    // grpcio-reflection client, older grpcurl and GUI clients speak only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(semroute_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let (stop, mut stopped) = watch::channel(false);
    let grpc_service = ClassifierServer::new(service.clone())
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(grpc_service);
    let mut stopped_grpc = stopped.clone();
    // serve_with_incoming does not apply the builder's tcp_nodelay: set it on each connection,
    // or small responses wait ~40 ms for delayed ACKs.
    let incoming = TcpListenerStream::new(grpc).map(|conn| {
        if let Ok(c) = &conn {
            let _ = c.set_nodelay(true);
        }
        conn
    });
    let grpc = tokio::spawn(server.serve_with_incoming_shutdown(incoming, async move {
        let _ = stopped_grpc.wait_for(|s| *s).await;
    }));
    let app = crate::http::router(metrics, service.clone(), chaos_control);
    tokio::spawn(async move {
        let r = axum::serve(http, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    tracing::info!(%grpc_addr, %http_addr, "listening");
    Ok(Running {
        grpc_addr,
        http_addr,
        service,
        stop,
        grpc,
    })
}

/// Loads one planned model (blocking: file I/O and weight conversion).
pub fn load(plan: &ModelPlan, opts: &LoadOptions) -> crate::error::Result<Model> {
    Ok(match plan {
        ModelPlan::Encoder {
            source,
            heads,
            profiles,
            ..
        } => {
            let mut m = Model::load_encoder(source, heads.as_deref(), opts)?;
            for p in profiles {
                m.add_profile(p)?;
            }
            m
        }
        ModelPlan::Checkpoint { task, source } => Model::load_checkpoint(task, source, opts)?,
    })
}

/// Loads every planned model in order, making each one's tasks SERVING as it arrives.
pub async fn load_all(
    running: &Running,
    args: &ModelArgs,
    batch: crate::batch::BatchConfig,
) -> anyhow::Result<()> {
    let plans = args.plan()?;
    let opts = args.load_options()?;
    for plan in plans {
        let o = opts.clone();
        let started = std::time::Instant::now();
        let model = tokio::task::spawn_blocking(move || load(&plan, &o)).await??;
        tracing::info!(
            model = %model.meta.versioned_id(),
            arch = model.meta.arch.as_str(),
            tasks = ?model.tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            took_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        running.service.add_model(model, batch.clone()).await;
    }
    if let Some((source, heads)) = args.fast_plan()? {
        // On the CPU whatever the encoder runs on: a look-up per token, in the request's task.
        let o = LoadOptions {
            max_length: opts.max_length,
            ..LoadOptions::default()
        };
        let fast =
            tokio::task::spawn_blocking(move || FastTier::load(&source, &heads, &o)).await??;
        tracing::info!(
            model = %fast.version(),
            thresholds = ?fast.model.tasks.iter().map(|t| (t.name.as_str(), fast.threshold(&t.name))).collect::<Vec<_>>(),
            "fast tier loaded"
        );
        running.service.set_fast_tier(Some(fast));
    }
    running.service.mark_ready().await;

    Ok(())
}

/// `classifier-svc serve`.
pub async fn serve(args: ServeArgs, metrics: Option<PrometheusHandle>) -> anyhow::Result<()> {
    let plans = args.model.plan()?;
    args.model.load_options()?;
    let tasks: Vec<String> = plans.iter().flat_map(|p| p.tasks()).collect();
    let grpc = TcpListener::bind(args.grpc_addr)
        .await
        .map_err(|e| anyhow::anyhow!("bind gRPC {}: {e}", args.grpc_addr))?;
    let http = TcpListener::bind(args.http_addr)
        .await
        .map_err(|e| anyhow::anyhow!("bind HTTP {}: {e}", args.http_addr))?;
    let running = start(grpc, http, args.limits(), &tasks, metrics).await?;
    tokio::select! {
        r = load_all(&running, &args.model, args.batch_config()) => {
            if let Err(e) = r {
                tracing::error!(error = %e, "model loading failed");
                running.shutdown().await;
                return Err(e);
            }
        }
        _ = shutdown_signal() => {
            running.shutdown().await;
            return Ok(());
        }
    }
    running.wait_for_signal().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
