//! Target `grpc`: every `quiver.v1.Quiver` handler, reached as a client reaches it — through
//! the API-key layer and tonic's decoding — with request bodies of arbitrary content. The
//! input is a sequence of calls, each `[method: u8][flags: u8][length: u16 LE][bytes]`:
//! `method` indexes [`METHODS`]; flags bits 0–1 pick the credentials (read-write key, read-only
//! key, bearer token, none; bit 3: a key scoped to some collections) and bit 2 sends `bytes` as the raw HTTP body (gRPC framing
//! included, so a stream of several messages) instead of as one framed message. One server
//! (registry, batcher, write pool, rate limiter) serves every input; collections an input
//! made are dropped after it, so inputs do not see each other's data.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use quiver_server::auth::{ApiKeys, AuthLayer};
use quiver_server::config::ServerConfig;
use quiver_server::imports::ImportDir;
use quiver_server::metrics::Metrics;
use quiver_server::proto::quiver_server::QuiverServer;
use quiver_server::ratelimit::RateLimits;
use quiver_server::registry::Registry;
use quiver_server::service::QuiverService;
use tower::{Layer, ServiceExt};

use crate::scratch;

/// The service's methods, by the index an input names them with.
pub const METHODS: &[&str] = &[
    "CreateCollection",
    "DropCollection",
    "ListCollections",
    "GetCollection",
    "Upsert",
    "UpsertStream",
    "Delete",
    "Get",
    "Train",
    "LoadIndex",
    "Flush",
    "Search",
    "SearchBatch",
    "Count",
    "Scroll",
    "SetPayload",
    "DeletePayload",
    "CreateFieldIndex",
    "DeleteFieldIndex",
];

/// The read-write key of the fuzzed server.
pub const RW_KEY: &str = "fuzz-read-write-key-0001";
/// Its read-only key.
pub const RO_KEY: &str = "fuzz-read-only-key-00001";
/// Its read-write key held to the collections `fz` and `loaded`.
pub const SCOPED_KEY: &str = "fuzz-scoped-key-0000001";
/// Most calls taken from one input.
const MAX_CALLS: usize = 24;
/// A call that takes longer than this is a hang.
const CALL_LIMIT: Duration = Duration::from_secs(20);

/// The fuzzed server, shared by the `grpc` and `qdrant` targets' inputs within a process.
pub(crate) struct Server {
    pub(crate) runtime: tokio::runtime::Runtime,
    pub(crate) registry: Arc<Registry>,
    pub(crate) layer: AuthLayer,
    pub(crate) limit: usize,
}

pub(crate) fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let root = scratch().join("grpc");
        let imports = root.join("imports");
        std::fs::create_dir_all(&imports).expect("creating the import folder");
        crate::seeds::write_import_files(&imports).expect("writing the import folder's files");
        let mut keys = ApiKeys::default();
        keys.add(
            "fuzz",
            &format!("rw:{RW_KEY}\nro:{RO_KEY}\nrw@fz|loaded:{SCOPED_KEY}\n"),
        )
        .expect("the fuzz keys are valid");
        let mut cfg = ServerConfig {
            data_dir: root.join("data"),
            api_keys: keys,
            import_dir: Some(ImportDir::new(&imports).expect("the import folder exists")),
            // Limits on, but high enough that the fuzzer does not spend itself against them.
            rate_limits: RateLimits {
                requests_per_s: 1e9,
                request_burst: 1e9,
                vectors_per_s: 1e9,
                vector_burst: 1e9,
            },
            ..ServerConfig::default()
        };
        cfg.store = crate::collection_files::config(false);
        cfg.shutdown_grace = Duration::from_secs(1);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("starting the runtime");
        let limit = cfg.limits.max_message_bytes;
        let keys = Arc::new(cfg.api_keys.clone());
        let registry = Arc::new(Registry::open(cfg, Metrics::new()).expect("opening the registry"));
        {
            let _in = runtime.enter();
            registry.start();
        }
        let layer = AuthLayer::new(keys, registry.limiter().clone(), registry.metrics().clone());
        Server {
            runtime,
            registry,
            layer,
            limit,
        }
    })
}

/// One call of an input.
pub struct Call<'a> {
    /// Index into [`METHODS`] (taken modulo its length).
    pub method: u8,
    /// Credential and framing bits.
    pub flags: u8,
    /// The message (or raw body).
    pub bytes: &'a [u8],
}

/// The calls of an input, in order.
pub fn parse(mut data: &[u8]) -> Vec<Call<'_>> {
    let mut calls = Vec::new();
    while data.len() >= 4 && calls.len() < MAX_CALLS {
        let (method, flags) = (data[0], data[1]);
        let len = u16::from_le_bytes([data[2], data[3]]) as usize;
        let body = &data[4..];
        let take = len.min(body.len());
        calls.push(Call {
            method,
            flags,
            bytes: &body[..take],
        });
        data = &body[take..];
    }
    calls
}

/// Encodes calls as an input (for seeds): `(method name, flags, message bytes)`.
pub fn pack(calls: &[(&str, u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, flags, bytes) in calls {
        let m = METHODS
            .iter()
            .position(|x| x == name)
            .unwrap_or_else(|| panic!("unknown method {name}"));
        out.extend_from_slice(&[m as u8, *flags]);
        out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// One gRPC frame (uncompressed) around a message.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Whether `QUIVER_FUZZ_TRACE` is set: each call's status is printed (to check what seeds reach).
pub(crate) fn tracing() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("QUIVER_FUZZ_TRACE").is_some())
}

/// A gRPC request for `path` (`/package.Service/Method`) with the credentials of `flags` bits
/// 0–1 and `bytes` as one framed message, or as the raw body when bit 2 is set.
pub(crate) fn grpc_request(
    path: &str,
    flags: u8,
    bytes: &[u8],
) -> http::Request<tonic::body::Body> {
    let body = if flags & 4 != 0 {
        bytes.to_vec()
    } else {
        frame(bytes)
    };
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://fuzz{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    with_key(req, flags)
        .body(tonic::body::Body::new(Full::new(Bytes::from(body))))
        .expect("a well-formed HTTP request")
}

/// Adds the credentials the flags pick: the scoped key when bit 3 is set, else by bits 0–1
/// the read-write key, the read-only key, the read-write key as a bearer token, or none.
pub(crate) fn with_key(req: http::request::Builder, flags: u8) -> http::request::Builder {
    if flags & 8 != 0 {
        return req.header("api-key", SCOPED_KEY);
    }
    match flags & 3 {
        0 => req.header("api-key", RW_KEY),
        1 => req.header("api-key", RO_KEY),
        2 => req.header("authorization", format!("Bearer {RW_KEY}")),
        _ => req,
    }
}

/// Sends `req` to `svc` and drives the whole reply (trailers included) within [`CALL_LIMIT`];
/// no answer in time is a hang, and fails the input.
pub(crate) async fn call<S, B>(name: &str, svc: S, req: http::Request<tonic::body::Body>)
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
{
    let answer = tokio::time::timeout(CALL_LIMIT, async {
        let resp = svc
            .oneshot(req)
            .await
            .expect("the service never fails a call");
        let (head, body) = resp.into_parts();
        let body = body.collect().await;
        if tracing() {
            let trailers = body.ok().and_then(|b| b.trailers().cloned());
            let get = |k: &str| {
                trailers
                    .as_ref()
                    .and_then(|t| t.get(k))
                    .or_else(|| head.headers.get(k))
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            eprintln!(
                "{name}: http {} grpc-status {} {}",
                head.status,
                get("grpc-status"),
                get("grpc-message")
            );
        }
    })
    .await;
    assert!(
        answer.is_ok(),
        "{name} did not answer within {CALL_LIMIT:?}"
    );
}

/// Empties the server for the next input: background loads end first, then every
/// collection (served or failed) is dropped.
pub(crate) async fn reset(s: &Server) {
    for _ in 0..2000 {
        if s.registry.loading().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for (name, _) in s.registry.list() {
        let _ = s.registry.drop_collection(&name).await;
    }
    for (name, _) in s.registry.failed() {
        let _ = s.registry.drop_collection(&name).await;
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let s = server();
    s.runtime.block_on(async {
        for c in parse(data) {
            let method = METHODS[c.method as usize % METHODS.len()];
            let req = grpc_request(&format!("/quiver.v1.Quiver/{method}"), c.flags, c.bytes);
            let svc = s.layer.layer(
                QuiverServer::new(QuiverService::new(s.registry.clone()))
                    .max_decoding_message_size(s.limit)
                    .max_encoding_message_size(s.limit),
            );
            call(method, svc, req).await;
        }
        reset(s).await;
    });
}
