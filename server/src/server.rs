//! Runs the service: opens the collections, binds the listeners, serves gRPC with health and
//! reflection (v1 and v1alpha) and Prometheus metrics, and shuts down gracefully on SIGINT or
//! SIGTERM: stop accepting, answer what is queued, flush every collection.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::proto::quiver_server::QuiverServer;
use crate::registry::{OpenError, Registry};
use crate::service::QuiverService;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Opening the data failed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The gRPC transport failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be set up.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Addresses actually bound (port 0 resolved).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// gRPC.
    pub grpc: SocketAddr,
    /// Metrics, if enabled.
    pub metrics: Option<SocketAddr>,
}

/// Serves until `shutdown` resolves, then drains and flushes. `on_ready` is called once the
/// listeners are bound and the collections are open.
pub async fn serve(
    config: ServerConfig,
    on_ready: impl FnOnce(Bound, &Registry),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let metrics = Metrics::new();
    let cfg = config.clone();
    let registry = tokio::task::spawn_blocking(move || Registry::open(cfg, metrics))
        .await
        .map_err(|e| OpenError::Collection {
            name: "*".into(),
            message: e.to_string(),
        })??;
    let registry = Arc::new(registry);
    registry.start();

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let grpc = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics_addr = match config.metrics_listen {
        Some(addr) => {
            let l = crate::metrics::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })?;
            let bound = l
                .local_addr()
                .map_err(|source| ServeError::Bind { addr, source })?;
            let mut rx = stop_rx.clone();
            let m = registry.metrics().clone();
            tokio::spawn(async move {
                let stop = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                if let Err(e) = m.serve(l, stop).await {
                    tracing::error!(error = %e, "metrics server failed");
                }
            });
            Some(bound)
        }
        None => None,
    };

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<QuiverServer<QuiverService>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let limit = config.limits.max_message_bytes;
    let service = QuiverServer::new(QuiverService::new(registry.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);

    on_ready(
        Bound {
            grpc,
            metrics: metrics_addr,
        },
        &registry,
    );
    let reporter = health_reporter.clone();
    let (fired_tx, fired_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections; draining queued searches");
        reporter
            .set_not_serving::<QuiverServer<QuiverService>>()
            .await;
        let _ = fired_tx.send(());
    };
    let serve = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service)
        // TCP_NODELAY on every accepted connection (tonic sets it only on listeners it binds
        // itself): with Nagle on, a reply written in several frames waits for the client's
        // delayed ACK, ≈ 40 ms.
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            signal,
        );
    // Requests and streams still open when shutdown begins get `shutdown_grace` to end; then
    // their connections are closed (a stream's acknowledged messages are durable already).
    let grace = config.shutdown_grace;
    let deadline = async move {
        match fired_rx.await {
            Ok(()) => tokio::time::sleep(grace).await,
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        r = serve => r?,
        _ = deadline => tracing::warn!(grace_s = grace.as_secs_f64(), "requests or streams still open after the shutdown grace period; closing them"),
    }
    registry.shutdown().await;
    let _ = stop_tx.send(true);
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn termination_signal() {
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
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
