//! `quiver serve`: the gRPC search service. With no arguments it listens on 127.0.0.1:50051
//! with its data in `./quiver-data` (created if missing).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use quiver_server::config::{BatchingConfig, Limits, ServerConfig, StaticCollection};

use super::BackendChoice;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// gRPC listen address (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Where collections are stored.
    #[arg(long, default_value = "quiver-data")]
    data_dir: PathBuf,
    /// Serve an index file made by `quiver build` as collection NAME: `NAME=INDEX` read-only,
    /// `NAME=INDEX:rw` copied into the data directory as the collection's starting state.
    #[arg(long = "collection", value_name = "NAME=INDEX[:rw]")]
    collections: Vec<String>,
    /// A search batch runs when it holds this many queries...
    #[arg(long, default_value_t = 256)]
    max_batch: usize,
    /// ...or when its oldest query has waited this many milliseconds.
    #[arg(long, default_value_t = 2.0)]
    max_delay_ms: f64,
    /// Searches queued per collection before RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 1024)]
    queue_capacity: usize,
    /// Search batches of one collection running at once.
    #[arg(long, default_value_t = quiver_server::config::DEFAULT_CONCURRENT_BATCHES)]
    concurrent_batches: usize,
    /// Largest request or response message, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    max_message_bytes: usize,
    /// Largest k a search may ask for.
    #[arg(long, default_value_t = 1024)]
    max_k: usize,
    /// Most queries in one SearchBatch request.
    #[arg(long, default_value_t = 4096)]
    max_queries_per_request: usize,
    /// Largest collection dimension.
    #[arg(long, default_value_t = 4096)]
    max_dim: usize,
    /// Most points in one upsert message.
    #[arg(long, default_value_t = 65_536)]
    max_upsert_points: usize,
    /// Most bytes of writes (vectors and payloads) in flight across the server; past it a
    /// write is refused with RESOURCE_EXHAUSTED (retry later).
    #[arg(long, default_value_t = 1 << 30)]
    max_write_bytes: u64,
    /// Checkpoint a collection (new segment files, log removed) when its write-ahead log
    /// passes this many MiB.
    #[arg(long, alias = "wal-snapshot-mib", default_value_t = 256)]
    checkpoint_wal_mib: u64,
    /// Seal a collection's appendable segment (and checkpoint) when it holds this many points.
    /// Each write group copies the lists it touches in the appendable segment, so this bounds
    /// a write's cost (docs/BENCHMARKS.md: 8,192 against 65,536).
    #[arg(long, default_value_t = 8_192)]
    seal_rows: usize,
    /// Nice value (0-19) of the threads that run writes and background work (encoding,
    /// commits, checkpoints, merges): above the searches' so that search latency holds while
    /// writers run. 0 runs them at the searches' priority.
    #[arg(long, default_value_t = 10)]
    write_nice: i32,
    /// Threads of the pool that runs every collection's background work (checkpoints,
    /// indexing, merges, purges; one collection at a time per thread). Default: half the
    /// cores, between 2 and 4. Trainings run on threads of their own.
    #[arg(long)]
    background_threads: Option<usize>,
    /// Retrain a collection's quantizers in the background when the points added since training
    /// (at least 10% of those trained on) sit this many times farther from their list's
    /// centroid, on average, than the training points did (mean squared distance). 0 never
    /// retrains by itself (Train on a trained collection still does).
    #[arg(long, default_value_t = 1.5)]
    retrain_factor: f64,
    /// At start, a damaged write-ahead log record followed by valid ones keeps the records
    /// before it and drops the rest, instead of refusing to open the collection.
    #[arg(long)]
    wal_recover: bool,
    /// Refuse (RESOURCE_EXHAUSTED) a search whose estimated working memory is above this.
    #[arg(long, default_value_t = 1 << 30)]
    max_request_bytes: u64,
    /// Refuse searches while a collection's queue holds this many bytes of queries.
    #[arg(long, default_value_t = 256 << 20)]
    max_queued_bytes: usize,
    /// Seconds open requests and streams may go on once shutdown begins (SIGINT/SIGTERM);
    /// then their connections are closed.
    #[arg(long, default_value_t = 10.0)]
    shutdown_grace_s: f64,
    /// Prometheus metrics listen address (serves /metrics).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Backend for trained collections.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    /// TLS certificate chain (PEM, leaf first) for the gRPC and metrics listeners; with
    /// --tls-key. SIGHUP reloads both files.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: clients must present a certificate signed by this CA (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// API keys, one per line: `rw:KEY` (read-write) or `ro:KEY` (read-only); `#` comments.
    /// Also read from the QUIVER_API_KEYS environment variable (entries separated by commas
    /// or newlines). With any key set, every call but health checks needs one (`api-key:
    /// KEY` or `authorization: Bearer KEY`).
    #[arg(long, value_name = "FILE")]
    api_key_file: Option<PathBuf>,
    /// `/metrics` answers only requests with an API key (any, read-only included) as
    /// `api-key: KEY` or `authorization: Bearer KEY`; needs keys to be set.
    #[arg(long)]
    metrics_require_key: bool,
    /// Requests per second each client (API key, or address without keys) may send; 0: no
    /// limit. Over it: RESOURCE_EXHAUSTED with the wait (`retry-after-ms`).
    #[arg(long, default_value_t = 100_000.0)]
    rate_limit_requests: f64,
    /// Requests a client may send at once after being idle.
    #[arg(long, default_value_t = 100_000.0)]
    rate_limit_request_burst: f64,
    /// Vectors (upserted or searched) per second per client; 0: no limit.
    #[arg(long, default_value_t = 5_000_000.0)]
    rate_limit_vectors: f64,
    /// Vectors a client may send at once after being idle.
    #[arg(long, default_value_t = 5_000_000.0)]
    rate_limit_vector_burst: f64,
    /// The folder LoadIndex may read index files from (relative paths are taken inside it;
    /// nothing outside it, and only regular files). Without it LoadIndex is refused.
    #[arg(long, value_name = "DIR")]
    import_dir: Option<PathBuf>,
    /// Also serve Qdrant's gRPC API here (Qdrant's clients with prefer_grpc=True; Qdrant's
    /// port is 6334). docs/QDRANT.md lists what is supported.
    #[arg(long, value_name = "ADDR")]
    qdrant_grpc_listen: Option<SocketAddr>,
    /// Also serve Qdrant's REST API here (Qdrant's clients by default, LangChain, LlamaIndex;
    /// Qdrant's port is 6333).
    #[arg(long, value_name = "ADDR")]
    qdrant_http_listen: Option<SocketAddr>,
    /// Serve Qdrant's APIs on Qdrant's own ports: REST on 127.0.0.1:6333 and gRPC on
    /// 127.0.0.1:6334 (unless given with --qdrant-http-listen / --qdrant-grpc-listen).
    #[arg(long)]
    qdrant: bool,
    /// Join a cluster: the NATS servers (with JetStream) holding its logs, comma-separated.
    /// Collections are then created, written and read through the cluster (their replicas
    /// in DATA_DIR/cluster); without it the server stands alone.
    #[arg(
        long,
        value_name = "URL[,URL...]",
        value_delimiter = ',',
        requires = "node_id"
    )]
    nats: Vec<String>,
    /// This node's id in the cluster (1 to 64 of A-Z a-z 0-9 _ -), the same across restarts:
    /// shards are placed on node ids.
    #[arg(long, value_name = "ID", requires = "nats")]
    node_id: Option<String>,
    /// Copies of each log on the JetStream cluster (3 on a cluster of 3 NATS servers).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    stream_replicas: u8,
    /// How often (seconds) this node exports a snapshot of each shard replica it holds that
    /// has applied at least --snapshot-min-ops ops since the shard's last snapshot (one node
    /// per shard at a time). A new or wiped node starts its replicas from them, and each
    /// shard's log is trimmed below them. 0: never (the logs then keep every write).
    #[arg(long, default_value_t = 300, value_name = "SECS", requires = "nats",
          value_parser = clap::value_parser!(u64).range(0..=604_800))]
    snapshot_interval: u64,
    /// Ops a shard replica must have applied past its shard's last snapshot before this node
    /// exports another.
    #[arg(long, default_value_t = 10_000, value_name = "N", requires = "nats")]
    snapshot_min_ops: u64,
}

fn parse_collection(s: &str) -> anyhow::Result<StaticCollection> {
    let Some((name, path)) = s.split_once('=') else {
        bail!("--collection {s:?}: expected NAME=INDEX or NAME=INDEX:rw");
    };
    let (path, writable) = match path.strip_suffix(":rw") {
        Some(p) => (p, true),
        None => (path, false),
    };
    if name.is_empty() || path.is_empty() {
        bail!("--collection {s:?}: expected NAME=INDEX or NAME=INDEX:rw");
    }
    Ok(StaticCollection {
        name: name.to_string(),
        path: PathBuf::from(path),
        writable,
    })
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    // The runtime and the signal handlers come first, before any file is read or opened, any
    // backend starts or any line is printed: from here on a SIGTERM, SIGINT or SIGHUP takes
    // the server's own path (a SIGTERM during start-up shuts down once the collections are
    // open, with their checkpoint), never the default action of ending the process.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (shutdown, hangups) = {
        let _in_runtime = rt.enter();
        quiver_server::signals::ProcessSignals::install()?.split()
    };
    if a.max_batch == 0
        || a.queue_capacity == 0
        || a.concurrent_batches == 0
        || a.max_k == 0
        || a.max_queries_per_request == 0
        || a.max_dim == 0
        || a.max_upsert_points == 0
        || a.max_write_bytes == 0
    {
        bail!("--max-batch, --queue-capacity, --concurrent-batches, --max-k, --max-queries-per-request, --max-dim, --max-upsert-points and --max-write-bytes must be at least 1");
    }
    let Some(max_delay) = (a.max_delay_ms >= 0.0)
        .then(|| Duration::try_from_secs_f64(a.max_delay_ms / 1000.0).ok())
        .flatten()
        .filter(|d| *d <= Duration::from_secs(3600))
    else {
        bail!("--max-delay-ms must be a number of milliseconds between 0 and 3600000");
    };
    let Some(shutdown_grace) = (a.shutdown_grace_s >= 0.0)
        .then(|| Duration::try_from_secs_f64(a.shutdown_grace_s).ok())
        .flatten()
        .filter(|d| *d <= Duration::from_secs(86_400))
    else {
        bail!("--shutdown-grace-s must be a number of seconds between 0 and 86400");
    };
    if !(0..=19).contains(&a.write_nice) {
        bail!("--write-nice must be between 0 and 19");
    }
    if a.background_threads.is_some_and(|n| !(1..=64).contains(&n)) {
        bail!("--background-threads must be between 1 and 64");
    }
    if a.seal_rows == 0 {
        bail!("--seal-rows must be at least 1");
    }
    if !(a.retrain_factor == 0.0 || (a.retrain_factor.is_finite() && a.retrain_factor >= 1.0)) {
        bail!("--retrain-factor must be 0 (never) or a number of at least 1");
    }
    let static_collections = a
        .collections
        .iter()
        .map(|s| parse_collection(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut api_keys = quiver_server::auth::ApiKeys::default();
    if let Some(f) = &a.api_key_file {
        api_keys.add_file(f).context("--api-key-file")?;
    }
    if let Ok(text) = std::env::var("QUIVER_API_KEYS") {
        api_keys.add("QUIVER_API_KEYS", &text)?;
    }
    if a.metrics_require_key && api_keys.is_empty() {
        bail!("--metrics-require-key needs API keys (--api-key-file or QUIVER_API_KEYS)");
    }
    let import_dir = match &a.import_dir {
        Some(d) => Some(
            quiver_server::imports::ImportDir::new(d)
                .with_context(|| format!("--import-dir {}", d.display()))?,
        ),
        None => None,
    };
    let tls = a
        .tls_cert
        .clone()
        .zip(a.tls_key.clone())
        .map(|(cert, key)| quiver_server::tls::TlsFiles {
            cert,
            key,
            client_ca: a.tls_client_ca.clone(),
        });
    for (flag, v) in [
        ("--rate-limit-requests", a.rate_limit_requests),
        ("--rate-limit-request-burst", a.rate_limit_request_burst),
        ("--rate-limit-vectors", a.rate_limit_vectors),
        ("--rate-limit-vector-burst", a.rate_limit_vector_burst),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            bail!("{flag} must be a number of at least 0");
        }
    }
    let rate_limits = quiver_server::ratelimit::RateLimits {
        requests_per_s: a.rate_limit_requests,
        request_burst: a.rate_limit_request_burst,
        vectors_per_s: a.rate_limit_vectors,
        vector_burst: a.rate_limit_vector_burst,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    if a.node_id.is_some() && !a.collections.is_empty() {
        bail!("--collection serves an index file from one server; in cluster mode (--nats) create collections through the API");
    }
    let config = ServerConfig {
        rate_limits,
        metrics_require_key: a.metrics_require_key,
        tls,
        api_keys,
        import_dir,
        listen: a.listen,
        metrics_listen: a.metrics_listen,
        qdrant_grpc_listen: a
            .qdrant_grpc_listen
            .or(a.qdrant.then(|| SocketAddr::from(([127, 0, 0, 1], 6334)))),
        qdrant_http_listen: a
            .qdrant_http_listen
            .or(a.qdrant.then(|| SocketAddr::from(([127, 0, 0, 1], 6333)))),
        data_dir: a.data_dir.clone(),
        cluster: a
            .node_id
            .clone()
            .map(|node_id| quiver_server::cluster::ClusterConfig {
                urls: a.nats.clone(),
                node_id,
                stream_replicas: a.stream_replicas as usize,
                snapshot_interval: Duration::from_secs(a.snapshot_interval),
                snapshot_min_ops: a.snapshot_min_ops,
            }),
        static_collections,
        batching: BatchingConfig {
            max_batch: a.max_batch,
            max_delay,
            queue_capacity: a.queue_capacity,
            max_queued_bytes: a.max_queued_bytes,
            concurrent_batches: a.concurrent_batches,
        },
        limits: Limits {
            max_message_bytes: a.max_message_bytes,
            max_k: a.max_k,
            max_queries_per_request: a.max_queries_per_request,
            max_dim: a.max_dim,
            max_request_bytes: a.max_request_bytes,
            max_upsert_points: a.max_upsert_points,
            max_write_bytes: a.max_write_bytes,
        },
        store: quiver_server::config::StoreConfig {
            checkpoint_wal_bytes: a.checkpoint_wal_mib.saturating_mul(1 << 20),
            seal_rows: a.seal_rows,
            write_nice: a.write_nice,
            wal_recover: a.wal_recover,
            retrain_factor: a.retrain_factor,
            background_threads: a
                .background_threads
                .unwrap_or_else(quiver_store::optimizer::default_threads),
            ..Default::default()
        },
        backend: super::open_backend(a.backend)?,
        shutdown_grace,
    };
    let backend_name = quiver_engine::backend::Backend::name(&config.backend);
    let data_dir = a.data_dir.clone();
    rt.block_on(quiver_server::server::serve(
        config,
        |bound, registry| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on {}", bound.grpc);
            if let Some(m) = bound.metrics {
                let _ = writeln!(out, "metrics on {scheme}://{m}/metrics");
            }
            if let Some(q) = bound.qdrant_grpc {
                let _ = writeln!(out, "qdrant grpc on {q}");
            }
            if let Some(q) = bound.qdrant_http {
                let _ = writeln!(out, "qdrant rest on {scheme}://{q}");
            }
            let names: Vec<String> = registry.list().into_iter().map(|(n, _)| n).collect();
            let _ = writeln!(out, "backend {backend_name}; data in {}; collections: [{}]", data_dir.display(), names.join(", "));
            let _ = writeln!(
                out,
                "try it (service quiver.v1.Quiver, reflection enabled):\n  \
                 CreateCollection {{\"name\":\"docs\",\"dim\":384,\"metric\":\"METRIC_COSINE\"}}\n  \
                 Upsert {{\"collection\":\"docs\",\"ids\":[1],\"vectors\":[...384 floats...]}}\n  \
                 Search {{\"collection\":\"docs\",\"vector\":[...],\"k\":10}}\n  \
                 e.g. with grpcurl: grpcurl -plaintext -d '{{\"name\":\"docs\",\"dim\":384,\"metric\":\"METRIC_COSINE\"}}' {} quiver.v1.Quiver/CreateCollection",
                bound.grpc
            );
            let _ = out.flush();
        },
        shutdown,
        hangups,
    ))
    .with_context(|| format!("serving on {}", a.listen))?;
    Ok(())
}
