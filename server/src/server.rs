//! Runs the service: opens the collections, binds the listeners, serves gRPC with health and
//! reflection (v1 and v1alpha) and Prometheus metrics, and shuts down gracefully when its
//! shutdown future resolves (SIGINT or SIGTERM, registered before start-up by
//! [`crate::signals`]): stop accepting, answer what is queued, flush every collection.

use std::net::SocketAddr;
use std::sync::Arc;
use tonic::codec::CompressionEncoding;

use tokio_stream::StreamExt;

use crate::admission::WriteAdmissionLayer;
use crate::auth::AuthLayer;
use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::proto::quiver_server::QuiverServer;
use crate::registry::{OpenError, Registry};
use crate::service::QuiverService;
use crate::signals::Hangups;
use crate::tls::{Protocol, Tls, TlsListener};

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
    /// The TLS files cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// Joining the cluster failed.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::JoinError),
}

/// Addresses actually bound (port 0 resolved).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// gRPC.
    pub grpc: SocketAddr,
    /// Metrics, if enabled.
    pub metrics: Option<SocketAddr>,
    /// Qdrant's gRPC API, if enabled.
    pub qdrant_grpc: Option<SocketAddr>,
    /// Qdrant's REST API, if enabled.
    pub qdrant_http: Option<SocketAddr>,
}

/// Serves until `shutdown` resolves, then drains and flushes. `on_ready` is called once the
/// listeners are bound and the collections are open. A `shutdown` that resolved during
/// start-up (a signal while the collections opened) shuts the server down as soon as it is
/// up, through the same drain and checkpoint. Each SIGHUP in `hangups` reloads the TLS files.
pub async fn serve(
    config: ServerConfig,
    on_ready: impl FnOnce(Bound, &Registry),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    hangups: Hangups,
) -> Result<(), ServeError> {
    // TLS files are checked before anything opens.
    let tls = match &config.tls {
        Some(files) => Some(Arc::new(Tls::load(files.clone())?)),
        None => None,
    };
    warn_if_exposed(&config, tls.is_some());
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
    if let Some(cluster) = &config.cluster {
        let front = crate::cluster::ClusterFront::join(
            cluster,
            &config.data_dir,
            config.backend.clone(),
            config.store.clone(),
        )
        .await?;
        tracing::info!(node = %cluster.node_id, nats = %cluster.urls.join(","), "joined the cluster");
        front.report_metrics(registry.metrics().clone());
        registry.join_cluster(Arc::new(front));
    }

    let (listener, grpc) = bind(config.listen).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics_addr = match config.metrics_listen {
        Some(addr) => {
            let (l, bound) = bind(addr).await?;
            let mut rx = stop_rx.clone();
            let m = registry.metrics().clone();
            let tls = tls.clone();
            let keys = config
                .metrics_require_key
                .then(|| Arc::new(config.api_keys.clone()));
            tokio::spawn(async move {
                let stop = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                let r = match tls {
                    Some(tls) => match TlsListener::new(l, tls) {
                        Ok(l) => m.serve(l, keys, stop).await,
                        Err(e) => Err(e),
                    },
                    None => m.serve(l, keys, stop).await,
                };
                if let Err(e) = r {
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
    // Requests may come compressed (gzip, deflate: what gRPC clients offer); answers go
    // uncompressed, which every client reads, without spending CPU on them.
    let service = QuiverServer::new(QuiverService::new(registry.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Deflate);

    // Qdrant's APIs: bound now (a bad address fails the start), served until shutdown begins.
    let (draining_tx, draining_rx) = tokio::sync::watch::channel(false);
    let mut extra = Vec::new();
    let qdrant_grpc = match config.qdrant_grpc_listen {
        Some(addr) => {
            let (bound, task) =
                serve_qdrant_grpc(addr, &config, &registry, tls.clone(), draining_rx.clone())
                    .await?;
            extra.push(task);
            Some(bound)
        }
        None => None,
    };
    let qdrant_http = match config.qdrant_http_listen {
        Some(addr) => {
            let (bound, task) =
                serve_qdrant_http(addr, &config, &registry, tls.clone(), draining_rx.clone())
                    .await?;
            extra.push(task);
            Some(bound)
        }
        None => None,
    };

    on_ready(
        Bound {
            grpc,
            metrics: metrics_addr,
            qdrant_grpc,
            qdrant_http,
        },
        &registry,
    );
    let reporter = health_reporter.clone();
    let (fired_tx, fired_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections; draining queued searches");
        let _ = draining_tx.send(true);
        reporter
            .set_not_serving::<QuiverServer<QuiverService>>()
            .await;
        let _ = fired_tx.send(());
    };
    tokio::spawn(reload_on_sighup(hangups, tls.clone()));
    let router = tonic::transport::Server::builder()
        .layer(crate::request_id::RequestIdLayer)
        .layer(crate::unknown_method::NameUnknownMethodLayer)
        .layer(AuthLayer::new(
            Arc::new(config.api_keys.clone()),
            registry.limiter().clone(),
            registry.metrics().clone(),
        ))
        .layer(WriteAdmissionLayer::new(registry.write_budget().clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service);
    type Serving = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>,
    >;
    let serve: Serving = match &tls {
        // TCP_NODELAY on every accepted connection (tonic sets it only on listeners it binds
        // itself): with Nagle on, a reply written in several frames waits for the client's
        // delayed ACK, ≈ 40 ms.
        None => Box::pin(router.serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            signal,
        )),
        Some(tls) => {
            let established = crate::tls::accept(listener, tls.clone(), Protocol::Grpc);
            let incoming = tokio_stream::wrappers::ReceiverStream::new(established)
                .map(|(stream, _)| Ok::<_, std::io::Error>(stream));
            Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
        }
    };
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
    // The Qdrant listeners stopped accepting when shutdown began; their open requests get
    // the same grace.
    for task in extra {
        if tokio::time::timeout(grace, task).await.is_err() {
            tracing::warn!(
                "Qdrant API requests still open after the shutdown grace period; closing them"
            );
        }
    }
    registry.shutdown().await;
    let _ = stop_tx.send(true);
    tracing::info!("stopped");
    Ok(())
}

/// Resolves once `rx` turns true (shutdown began).
async fn draining(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|d| *d).await;
}

async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), ServeError> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = l
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    Ok((l, bound))
}

/// Binds and serves Qdrant's gRPC services (with the same keys, limits and TLS as the main
/// listener).
async fn serve_qdrant_grpc(
    addr: SocketAddr,
    config: &ServerConfig,
    registry: &Arc<Registry>,
    tls: Option<Arc<Tls>>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ServeError> {
    use crate::qdrant::proto::{
        collections_server::CollectionsServer, points_server::PointsServer,
        qdrant_server::QdrantServer,
    };
    let (listener, bound) = bind(addr).await?;
    let svc = crate::qdrant::grpc::QdrantGrpc::new(registry.clone());
    let limit = config.limits.max_message_bytes;
    let router = tonic::transport::Server::builder()
        .layer(crate::request_id::RequestIdLayer)
        .layer(crate::unknown_method::NameUnknownMethodLayer)
        .layer(AuthLayer::new(
            Arc::new(config.api_keys.clone()),
            registry.limiter().clone(),
            registry.metrics().clone(),
        ))
        .layer(WriteAdmissionLayer::new(registry.write_budget().clone()))
        .add_service(
            QdrantServer::new(svc.clone())
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Deflate),
        )
        .add_service(
            CollectionsServer::new(svc.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit)
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Deflate),
        )
        .add_service(
            PointsServer::new(svc)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit)
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Deflate),
        );
    let task = tokio::spawn(async move {
        let r = match tls {
            None => {
                router
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(listener)
                            .with_nodelay(Some(true)),
                        draining(stop),
                    )
                    .await
            }
            Some(tls) => {
                let established = crate::tls::accept(listener, tls, Protocol::Grpc);
                let incoming = tokio_stream::wrappers::ReceiverStream::new(established)
                    .map(|(stream, _)| Ok::<_, std::io::Error>(stream));
                router
                    .serve_with_incoming_shutdown(incoming, draining(stop))
                    .await
            }
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "Qdrant gRPC server failed");
        }
    });
    Ok((bound, task))
}

/// Binds and serves Qdrant's REST API.
async fn serve_qdrant_http(
    addr: SocketAddr,
    config: &ServerConfig,
    registry: &Arc<Registry>,
    tls: Option<Arc<Tls>>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ServeError> {
    let (listener, bound) = bind(addr).await?;
    let rest = crate::qdrant::rest::Rest::new(registry.clone(), Arc::new(config.api_keys.clone()));
    let task = tokio::spawn(async move {
        let r = match tls {
            Some(tls) => match TlsListener::new(listener, tls) {
                Ok(l) => crate::qdrant::rest::serve(rest, l, draining(stop)).await,
                Err(e) => Err(e),
            },
            None => crate::qdrant::rest::serve(rest, listener, draining(stop)).await,
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "Qdrant REST server failed");
        }
    });
    Ok((bound, task))
}

/// Warns, loudly, when the service listens beyond this machine without TLS (keys and data
/// would cross the network in the clear), without keys (anyone reaching the port may write
/// and drop collections), or with open metrics beside keys held to some collections (the
/// metrics name them all).
fn warn_if_exposed(config: &ServerConfig, tls: bool) {
    let exposed = |a: &SocketAddr| !a.ip().is_loopback();
    let mut listeners = vec![("gRPC", config.listen)];
    listeners.extend(config.metrics_listen.map(|m| ("metrics", m)));
    listeners.extend(config.qdrant_grpc_listen.map(|m| ("Qdrant gRPC", m)));
    listeners.extend(config.qdrant_http_listen.map(|m| ("Qdrant REST", m)));
    for (what, addr) in listeners.into_iter().filter(|(_, a)| exposed(a)) {
        if !tls {
            let m = format!("WARNING: the {what} listener {addr} is reachable beyond this machine without TLS: requests, data and API keys cross the network in plaintext (use --tls-cert and --tls-key)");
            tracing::warn!("{m}");
            eprintln!("{m}");
        }
        if what == "metrics" && config.api_keys.has_scoped() && !config.metrics_require_key {
            let m = format!("WARNING: the metrics listener {addr} is reachable beyond this machine without a key, while some API keys are held to some collections: /metrics names every collection and its figures to whoever reaches it (use --metrics-require-key: then only keys without a scope may read it)");
            tracing::warn!("{m}");
            eprintln!("{m}");
        }
        if what != "metrics" && config.api_keys.is_empty() {
            let m = format!("WARNING: the gRPC listener {addr} is reachable beyond this machine and no API key is set: anyone reaching it may write, overwrite and drop collections (use --api-key-file)");
            tracing::warn!("{m}");
            eprintln!("{m}");
        }
    }
}

/// Reads the TLS files again on every SIGHUP (without TLS there is nothing to reload: the
/// signal is logged and otherwise ignored, never the default action of ending the process).
async fn reload_on_sighup(mut hangups: Hangups, tls: Option<Arc<Tls>>) {
    while hangups.recv().await.is_some() {
        match &tls {
            Some(tls) => {
                let tls = tls.clone();
                match tokio::task::spawn_blocking(move || tls.reload()).await {
                    Ok(Ok(())) => tracing::info!("TLS certificate and key reloaded"),
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "reloading TLS failed; the previous certificate stays")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reloading TLS failed; the previous certificate stays")
                    }
                }
            }
            None => tracing::info!("SIGHUP received; nothing to reload (no TLS)"),
        }
    }
}
