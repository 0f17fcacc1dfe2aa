//! API keys: who may call what. Keys come from `--api-key-file` (one per line, `rw:KEY` or
//! `ro:KEY`, `#` comments) and the `QUIVER_API_KEYS` environment variable (the same entries,
//! separated by commas or newlines). Clients send `api-key: KEY` (Qdrant's header) or
//! `authorization: Bearer KEY`. With keys configured, every gRPC call but health checks needs
//! one: none or an unknown one is UNAUTHENTICATED, a read-only key on a write is
//! PERMISSION_DENIED. Keys are compared in constant time and never logged.

use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use subtle::ConstantTimeEq;

use crate::metrics::Metrics;
use crate::ratelimit::{Client, Limit, RateLimiter};
use tonic::body::Body;
use tonic::Status;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Searches and reads.
    ReadOnly,
    /// Everything.
    ReadWrite,
}

/// Shortest key accepted (bytes): shorter ones are guessable.
pub const MIN_KEY_LEN: usize = 16;

/// The configured keys.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<(Vec<u8>, Access)>,
}

impl std::fmt::Debug for ApiKeys {
    /// The number of keys, never the keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.keys.len())
    }
}

/// A bad key file or variable.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// An entry is malformed (the key itself is not repeated in the message).
    #[error("{origin}, entry {entry}: {reason}")]
    Entry {
        /// The file or variable.
        origin: String,
        /// 1-based entry (line) number.
        entry: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

impl ApiKeys {
    /// True when no key is configured (every call is allowed).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Adds the entries of `text` (`rw:KEY` / `ro:KEY`, one per line or comma-separated;
    /// blank entries and `#` comments skipped); `origin` names the source in errors.
    pub fn add(&mut self, origin: &str, text: &str) -> Result<(), KeyError> {
        let entries = text.split(['\n', ',']);
        for (i, raw) in entries.enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason| KeyError::Entry {
                origin: origin.to_string(),
                entry: i + 1,
                reason,
            };
            let (access, key) = match line.split_once(':') {
                Some(("rw", k)) => (Access::ReadWrite, k),
                Some(("ro", k)) => (Access::ReadOnly, k),
                _ => return Err(bad("expected rw:KEY or ro:KEY")),
            };
            if key.len() < MIN_KEY_LEN {
                return Err(bad("the key is shorter than 16 characters"));
            }
            if !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad("the key holds spaces or non-ASCII characters"));
            }
            if self
                .keys
                .iter()
                .any(|(k, _)| k.as_slice() == key.as_bytes())
            {
                return Err(bad("the key is given twice"));
            }
            self.keys.push((key.as_bytes().to_vec(), access));
        }
        Ok(())
    }

    /// Adds the entries of a key file.
    pub fn add_file(&mut self, path: &Path) -> Result<(), KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.add(&path.display().to_string(), &text)
    }

    /// The access of a presented key (`None`: unknown). Every configured key is compared, in
    /// constant time for keys of the presented length.
    pub fn check(&self, presented: &[u8]) -> Option<Access> {
        self.identify(presented).map(|(_, a)| a)
    }

    /// The number and access of a presented key (see [`Self::check`]).
    pub fn identify(&self, presented: &[u8]) -> Option<(usize, Access)> {
        let mut found = None;
        for (i, (key, access)) in self.keys.iter().enumerate() {
            if bool::from(key.as_slice().ct_eq(presented)) {
                found = Some((i, *access));
            }
        }
        found
    }
}

/// The key a request carries: `api-key`, else `authorization: Bearer`.
pub fn presented_key(headers: &http::HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get("api-key") {
        return Some(v.as_bytes());
    }
    let auth = headers.get(http::header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = auth.split_at(auth.len().min(7));
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

/// What a gRPC method (`/package.Service/Method`) needs: `None` for health checks (open).
pub fn needed(path: &str) -> Option<Access> {
    if path.starts_with("/grpc.health.v1.Health/") {
        return None;
    }
    const READS: &[&str] = &[
        "ListCollections",
        "GetCollection",
        "Get",
        "Search",
        "SearchBatch",
        "Count",
        "Scroll",
    ];
    if path.starts_with("/grpc.reflection.") {
        return Some(Access::ReadOnly);
    }
    // Qdrant's API (crate::qdrant): its health check is open like gRPC health.
    const QDRANT_READS: &[&str] = &[
        "/qdrant.Collections/Get",
        "/qdrant.Collections/List",
        "/qdrant.Collections/CollectionExists",
        "/qdrant.Points/Get",
        "/qdrant.Points/Search",
        "/qdrant.Points/SearchBatch",
        "/qdrant.Points/Scroll",
        "/qdrant.Points/Count",
        "/qdrant.Points/Query",
        "/qdrant.Points/QueryBatch",
    ];
    if path == "/qdrant.Qdrant/HealthCheck" {
        return None;
    }
    if QDRANT_READS.contains(&path) {
        return Some(Access::ReadOnly);
    }
    match path.strip_prefix("/quiver.v1.Quiver/") {
        Some(m) if READS.contains(&m) => Some(Access::ReadOnly),
        // Writes, and anything not known to be a read.
        _ => Some(Access::ReadWrite),
    }
}

/// The status a request gets, if refused.
pub fn refusal(keys: &ApiKeys, path: &str, headers: &http::HeaderMap) -> Option<Status> {
    admit(keys, path, headers).err()
}

/// Checks a request's key once: the number of its valid key (`None`: it presented none that is
/// valid, and needs none), or the status refusing it.
fn admit(keys: &ApiKeys, path: &str, headers: &http::HeaderMap) -> Result<Option<usize>, Status> {
    admit_key(keys, needed(path), headers)
}

/// Checks a request needing `need` (`None`: open) against the keys: the number of its valid
/// key (`None`: it presented none that is valid, and needs none), or the status refusing it.
/// For front ends other than gRPC (Qdrant's REST API).
pub fn admit_key(
    keys: &ApiKeys,
    need: Option<Access>,
    headers: &http::HeaderMap,
) -> Result<Option<usize>, Status> {
    if keys.is_empty() {
        return Ok(None);
    }
    let presented = presented_key(headers);
    let valid = presented.and_then(|k| keys.identify(k));
    let Some(need) = need else {
        return Ok(valid.map(|(i, _)| i));
    };
    match valid {
        None if presented.is_none() => Err(Status::unauthenticated(
            "an API key is required: send it as `api-key: KEY` or `authorization: Bearer KEY`",
        )),
        None => Err(Status::unauthenticated("the API key is not valid")),
        Some((_, Access::ReadOnly)) if need == Access::ReadWrite => Err(Status::permission_denied(
            "the API key is read-only; this call writes",
        )),
        Some((i, _)) => Ok(Some(i)),
    }
}

/// Who sent a request: its valid key (`key`, from [`admit`]) if any, else its address.
fn client_of<B>(key: Option<usize>, req: &http::Request<B>) -> Client {
    if let Some(i) = key {
        return Client::Key(i);
    }
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let ext = req.extensions();
    let addr = ext
        .get::<TcpConnectInfo>()
        .and_then(|c| c.remote_addr())
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|c| c.get_ref().remote_addr())
        });
    addr.map_or(Client::Unknown, |a| Client::Peer(a.ip()))
}

/// Admission of every gRPC request, as a tower layer: the API key (see the module doc), then
/// the client's request rate ([`RateLimiter`]). The request carries its [`Client`] on, for the
/// handlers' vector limits.
#[derive(Clone)]
pub struct AuthLayer {
    keys: Arc<ApiKeys>,
    limiter: Arc<RateLimiter>,
    metrics: Metrics,
}

impl AuthLayer {
    /// Checks requests against `keys` (none: every request passes) and `limiter`.
    pub fn new(keys: Arc<ApiKeys>, limiter: Arc<RateLimiter>, metrics: Metrics) -> Self {
        AuthLayer {
            keys,
            limiter,
            metrics,
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let l = &self.layer;
        let path = req.uri().path();
        let checked = admit(&l.keys, path, req.headers()).and_then(|key| {
            let client = client_of(key, &req);
            match needed(path) {
                // Health checks are neither keyed nor limited.
                None => Ok(client),
                Some(_) => l
                    .limiter
                    .check(client, Limit::Requests, 1, &l.metrics)
                    .map(|()| client),
            }
        });
        let client = match checked {
            Ok(c) => c,
            Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
        };
        req.extensions_mut().insert(client);
        let fut = self.inner.call(req);
        Box::pin(fut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ApiKeys {
        let mut k = ApiKeys::default();
        k.add(
            "test",
            "# writers\nrw:0123456789abcdef-write\n\n ro:0123456789abcdef-read ",
        )
        .unwrap();
        k
    }

    fn headers(name: &str, value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        h
    }

    #[test]
    fn keys_parse_and_bad_entries_name_the_entry_not_the_key() {
        let k = keys();
        assert_eq!(k.len(), 2);
        assert_eq!(k.check(b"0123456789abcdef-write"), Some(Access::ReadWrite));
        assert_eq!(k.check(b"0123456789abcdef-read"), Some(Access::ReadOnly));
        assert_eq!(k.check(b"0123456789abcdef-rea"), None);
        assert!(format!("{k:?}").contains("2 keys"));
        for (text, reason) in [
            ("xx:0123456789abcdef", "expected rw:KEY"),
            ("rw:short", "shorter than 16"),
            ("rw:0123456789abcdef gh", "spaces"),
            ("rw:0123456789abcdef,ro:0123456789abcdef", "given twice"),
        ] {
            let e = ApiKeys::default().add("f", text).unwrap_err().to_string();
            assert!(e.contains(reason), "{e}");
            assert!(!e.contains("0123456789abcdef"), "{e}");
        }
    }

    #[test]
    fn calls_need_the_right_key() {
        let k = keys();
        let search = "/quiver.v1.Quiver/Search";
        let upsert = "/quiver.v1.Quiver/Upsert";
        let none = http::HeaderMap::new();
        let code = |p: &str, h: &http::HeaderMap| refusal(&k, p, h).map(|s| s.code());
        assert_eq!(code(search, &none), Some(tonic::Code::Unauthenticated));
        assert_eq!(code("/grpc.health.v1.Health/Check", &none), None);
        let ro = headers("api-key", "0123456789abcdef-read");
        assert_eq!(code(search, &ro), None);
        assert_eq!(code(upsert, &ro), Some(tonic::Code::PermissionDenied));
        assert_eq!(
            code("/quiver.v1.Quiver/NewThing", &ro),
            Some(tonic::Code::PermissionDenied)
        );
        let rw = headers("authorization", "Bearer 0123456789abcdef-write");
        assert_eq!(code(upsert, &rw), None);
        let wrong = headers("authorization", "Basic 0123456789abcdef-write");
        assert_eq!(code(search, &wrong), Some(tonic::Code::Unauthenticated));
        let unknown = headers("api-key", "fedcba9876543210-none");
        assert_eq!(code(search, &unknown), Some(tonic::Code::Unauthenticated));
        // No keys configured: everything passes.
        assert_eq!(
            refusal(&ApiKeys::default(), upsert, &none).map(|s| s.code()),
            None
        );
    }
}
