//! Server configuration: where data lives, how searches are batched, and the limits every
//! request is checked against. Defaults are documented in the README and measured in
//! docs/BENCHMARKS.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use quiver_store::StoreConfig;

/// Limits on what one request may ask for; each violation is an INVALID_ARGUMENT naming the
/// field.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest encoded request or response, in bytes.
    pub max_message_bytes: usize,
    /// Largest k.
    pub max_k: usize,
    /// Most query vectors in one SearchBatch request (and ids in one Get).
    pub max_queries_per_request: usize,
    /// Most points in one upsert message.
    pub max_upsert_points: usize,
    /// Largest collection dimension.
    pub max_dim: usize,
    /// Largest estimated working memory of one search request, in bytes.
    pub max_request_bytes: u64,
    /// Most bytes of writes (vectors and payloads) in flight across the server.
    pub max_write_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 << 20,
            max_k: 1024,
            max_queries_per_request: 4096,
            max_upsert_points: 65_536,
            max_dim: 4096,
            max_request_bytes: 1 << 30,
            max_write_bytes: 1 << 30,
        }
    }
}

/// How searches are gathered into batches.
#[derive(Debug, Clone)]
pub struct BatchingConfig {
    /// A batch runs as soon as it holds this many queries.
    pub max_batch: usize,
    /// ... or when its oldest query has waited this long.
    pub max_delay: Duration,
    /// Search requests waiting per collection; beyond, requests get RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
    /// Bytes of queries waiting per collection; beyond, requests get RESOURCE_EXHAUSTED.
    pub max_queued_bytes: usize,
    /// Batches of one collection running at once (each on its own blocking thread); while
    /// all run, new requests queue and the next batch grows.
    pub concurrent_batches: usize,
}

/// Default of [`BatchingConfig::concurrent_batches`] (measured in docs/BENCHMARKS.md,
/// "Concurrent search batches").
pub const DEFAULT_CONCURRENT_BATCHES: usize = 2;

impl Default for BatchingConfig {
    fn default() -> Self {
        BatchingConfig {
            max_batch: 256,
            max_delay: Duration::from_millis(2),
            queue_capacity: 1024,
            max_queued_bytes: 256 << 20,
            concurrent_batches: DEFAULT_CONCURRENT_BATCHES,
        }
    }
}

/// An index file served as a collection.
#[derive(Debug, Clone)]
pub struct StaticCollection {
    /// Collection name.
    pub name: String,
    /// Index file made by `quiver build`.
    pub path: PathBuf,
    /// Copied into the data directory as a writable starting state (else served read-only).
    pub writable: bool,
}

/// Everything `quiver serve` is configured with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Prometheus text metrics listen address (`/metrics`), if any.
    pub metrics_listen: Option<SocketAddr>,
    /// Root of the collections' files.
    pub data_dir: PathBuf,
    /// Index files served as collections.
    pub static_collections: Vec<StaticCollection>,
    /// Batching.
    pub batching: BatchingConfig,
    /// Request limits.
    pub limits: Limits,
    /// How collections manage segments, checkpoints and recovery.
    pub store: StoreConfig,
    /// The backend that searches trained collections.
    pub backend: crate::backend::AnyBackend,
    /// How long open requests and streams may go on once shutdown begins.
    pub shutdown_grace: Duration,
    /// TLS on the gRPC and metrics listeners (none: plaintext).
    pub tls: Option<crate::tls::TlsFiles>,
    /// API keys (none: every call is allowed).
    pub api_keys: crate::auth::ApiKeys,
    /// The folder `LoadIndex` reads index files from (none: `LoadIndex` is off).
    pub import_dir: Option<crate::imports::ImportDir>,
    /// Per-client rate limits.
    pub rate_limits: crate::ratelimit::RateLimits,
    /// `/metrics` answers only requests carrying one of `api_keys` (read-only suffices).
    pub metrics_require_key: bool,
    /// Qdrant's gRPC API (`crate::qdrant`) listen address, if any (Qdrant's port: 6334).
    pub qdrant_grpc_listen: Option<SocketAddr>,
    /// Qdrant's REST API listen address, if any (Qdrant's port: 6333).
    pub qdrant_http_listen: Option<SocketAddr>,
    /// Cluster mode: the NATS servers and this node's id (none: a single server).
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_listen: None,
            data_dir: PathBuf::from("quiver-data"),
            static_collections: Vec::new(),
            batching: BatchingConfig::default(),
            limits: Limits::default(),
            store: quiver_store::StoreConfig::default(),
            backend: crate::backend::AnyBackend::Cpu(quiver_engine::backend::cpu::CpuBackend),
            shutdown_grace: Duration::from_secs(10),
            tls: None,
            api_keys: crate::auth::ApiKeys::default(),
            import_dir: None,
            rate_limits: crate::ratelimit::RateLimits::default(),
            metrics_require_key: false,
            qdrant_grpc_listen: None,
            qdrant_http_listen: None,
            cluster: None,
        }
    }
}
