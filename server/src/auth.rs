//! API keys: who may call what. Keys come from `--api-key-file` (one per line, `rw:KEY` or
//! `ro:KEY`, `#` comments) and the `QUIVER_API_KEYS` environment variable (the same entries,
//! separated by commas or newlines). Clients send `api-key: KEY` (Qdrant's header) or
//! `authorization: Bearer KEY`. With keys configured, every gRPC call but health checks needs
//! one: none or an unknown one is UNAUTHENTICATED, a read-only key on a write is
//! PERMISSION_DENIED. Keys are kept and compared as SHA-256 digests, in constant time (so
//! neither their content nor their length shows in the time a check takes), and never logged.
//!
//! A key may be held to some collections (multi-tenant use): `rw@tenant-a-*:KEY` or
//! `ro@docs|faq:KEY` reaches only the collections its [`Scope`] names (a name, or a prefix
//! ending in `*`; `|` between them). The layer hands the scope to the handlers as a [`Reach`]
//! extension; they refuse a call naming any other collection with PERMISSION_DENIED
//! ([`check_reach`]) and list only the collections in reach. Calls that act beyond
//! collections (LoadIndex reads the server's import folder; /metrics shows every collection)
//! need a key without a scope.

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

/// The collections a scoped key reaches: those named, or starting with a prefix given as
/// `PREFIX*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Exact names, and prefixes (with their `*` stripped).
    names: Vec<String>,
    prefixes: Vec<String>,
}

impl Scope {
    /// Parses `a|b|tenant-*`: names of collections (their characters), or prefixes ending in
    /// `*`; at least one.
    pub fn parse(text: &str) -> Result<Scope, &'static str> {
        let mut scope = Scope {
            names: Vec::new(),
            prefixes: Vec::new(),
        };
        for part in text.split('|') {
            let (body, prefix) = match part.strip_suffix('*') {
                Some(p) => (p, true),
                None => (part, false),
            };
            let ok_chars = body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
            if !ok_chars || body.len() > 64 || (!prefix && body.is_empty()) {
                return Err("a scope is collection names or prefixes ending in *, separated by |");
            }
            if prefix {
                scope.prefixes.push(body.to_string());
            } else {
                scope.names.push(body.to_string());
            }
        }
        Ok(scope)
    }

    /// Whether the scope reaches collection `name`.
    pub fn reaches(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name) || self.prefixes.iter().any(|p| name.starts_with(p))
    }
}

/// What a request's key is held to, when it is scoped: set by [`AuthLayer`] (and Qdrant's
/// REST front end) as a request extension; absent, the request reaches every collection.
#[derive(Debug, Clone)]
pub struct Reach(pub Arc<Scope>);

/// Refuses (PERMISSION_DENIED, naming `field` and the collection) a request whose key's
/// scope (its [`Reach`] extension) does not reach `collection`.
pub fn check_reach(ext: &http::Extensions, field: &str, collection: &str) -> Result<(), Status> {
    match ext.get::<Reach>() {
        Some(Reach(scope)) if !scope.reaches(collection) => Err(Status::permission_denied(
            format!("{field}: the API key does not reach collection {collection:?}"),
        )),
        _ => Ok(()),
    }
}

/// Whether a request (by its extensions) may see collection `name` in a listing.
pub fn in_reach(ext: &http::Extensions, name: &str) -> bool {
    ext.get::<Reach>().is_none_or(|Reach(s)| s.reaches(name))
}

/// Refuses a request whose key is scoped: for calls that act beyond collections.
pub fn check_unscoped(ext: &http::Extensions, what: &str) -> Result<(), Status> {
    match ext.get::<Reach>() {
        Some(_) => Err(Status::permission_denied(format!(
            "{what} needs an API key without a collection scope"
        ))),
        None => Ok(()),
    }
}

/// A configured key.
#[derive(Clone)]
struct Key {
    /// The key's SHA-256 digest.
    digest: [u8; 32],
    access: Access,
    scope: Option<Arc<Scope>>,
}

/// A presented key found valid.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Its number among the configured keys (for per-key limits).
    pub index: usize,
    /// What it may do.
    pub access: Access,
    /// The collections it is held to (`None`: all).
    pub scope: Option<Arc<Scope>>,
}

/// The configured keys.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<Key>,
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

    /// Whether some key is held to some collections.
    pub fn has_scoped(&self) -> bool {
        self.keys.iter().any(|k| k.scope.is_some())
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Adds the entries of `text` (`rw:KEY` / `ro:KEY`, either optionally scoped as
    /// `rw@SCOPE:KEY`, one per line or comma-separated; blank entries and `#` comments
    /// skipped); `origin` names the source in errors.
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
            let Some((head, key)) = line.split_once(':') else {
                return Err(bad("expected rw:KEY or ro:KEY (or rw@SCOPE:KEY)"));
            };
            let (access, scope) = match head.split_once('@') {
                Some((a, s)) => (a, Some(Arc::new(Scope::parse(s).map_err(bad)?))),
                None => (head, None),
            };
            let access = match access {
                "rw" => Access::ReadWrite,
                "ro" => Access::ReadOnly,
                _ => return Err(bad("expected rw:KEY or ro:KEY (or rw@SCOPE:KEY)")),
            };
            if key.len() < MIN_KEY_LEN {
                return Err(bad("the key is shorter than 16 characters"));
            }
            if !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad("the key holds spaces or non-ASCII characters"));
            }
            let digest = digest(key.as_bytes());
            if self.keys.iter().any(|k| k.digest == digest) {
                return Err(bad("the key is given twice"));
            }
            self.keys.push(Key {
                digest,
                access,
                scope,
            });
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

    /// The access of a presented key (`None`: unknown). Every configured key's digest is
    /// compared with the presented key's, in constant time.
    pub fn check(&self, presented: &[u8]) -> Option<Access> {
        self.identify(presented).map(|g| g.access)
    }

    /// What a presented key grants (see [`Self::check`]).
    pub fn identify(&self, presented: &[u8]) -> Option<Grant> {
        let presented = digest(presented);
        let mut found = None;
        for (index, key) in self.keys.iter().enumerate() {
            if bool::from(key.digest.ct_eq(&presented)) {
                found = Some(Grant {
                    index,
                    access: key.access,
                    scope: key.scope.clone(),
                });
            }
        }
        found
    }
}

/// A key's SHA-256 digest: what is kept and compared.
fn digest(key: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, key);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
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
        "/qdrant.Collections/ListAliases",
        "/qdrant.Collections/ListCollectionAliases",
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

/// Checks a request's key once: what its valid key grants (`None`: it presented none that is
/// valid, and needs none), or the status refusing it.
fn admit(keys: &ApiKeys, path: &str, headers: &http::HeaderMap) -> Result<Option<Grant>, Status> {
    admit_key(keys, needed(path), headers)
}

/// Checks a request needing `need` (`None`: open) against the keys: what its valid key grants
/// (`None`: it presented none that is valid, and needs none), or the status refusing it.
/// For front ends other than gRPC (Qdrant's REST API).
pub fn admit_key(
    keys: &ApiKeys,
    need: Option<Access>,
    headers: &http::HeaderMap,
) -> Result<Option<Grant>, Status> {
    if keys.is_empty() {
        return Ok(None);
    }
    let presented = presented_key(headers);
    let valid = presented.and_then(|k| keys.identify(k));
    let Some(need) = need else {
        return Ok(valid);
    };
    match valid {
        None if presented.is_none() => Err(Status::unauthenticated(
            "an API key is required: send it as `api-key: KEY` or `authorization: Bearer KEY`",
        )),
        None => Err(Status::unauthenticated("the API key is not valid")),
        Some(g) if g.access == Access::ReadOnly && need == Access::ReadWrite => Err(
            Status::permission_denied("the API key is read-only; this call writes"),
        ),
        Some(g) => Ok(Some(g)),
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
        let checked = admit(&l.keys, path, req.headers()).and_then(|grant| {
            let client = client_of(grant.as_ref().map(|g| g.index), &req);
            let scope = grant.and_then(|g| g.scope);
            match needed(path) {
                // Health checks are neither keyed nor limited.
                None => Ok((client, scope)),
                Some(_) => l
                    .limiter
                    .check(client, Limit::Requests, 1, &l.metrics)
                    .map(|()| (client, scope)),
            }
        });
        let (client, scope) = match checked {
            Ok(c) => c,
            Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
        };
        req.extensions_mut().insert(client);
        if let Some(scope) = scope {
            req.extensions_mut().insert(Reach(scope));
        }
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
    fn scoped_keys_reach_only_their_collections() {
        let mut k = ApiKeys::default();
        k.add(
            "test",
            "rw@tenant-a-*:0123456789abcdef-tenant\nro@docs|faq:0123456789abcdef-reader\nrw@*:0123456789abcdef-any",
        )
        .unwrap();
        let tenant = k.identify(b"0123456789abcdef-tenant").unwrap();
        assert_eq!(tenant.access, Access::ReadWrite);
        let scope = tenant.scope.unwrap();
        assert!(scope.reaches("tenant-a-docs") && scope.reaches("tenant-a-"));
        assert!(!scope.reaches("tenant-b-docs") && !scope.reaches("tenant-a"));
        let reader = k.identify(b"0123456789abcdef-reader").unwrap();
        assert_eq!(reader.access, Access::ReadOnly);
        let scope = reader.scope.unwrap();
        assert!(scope.reaches("docs") && scope.reaches("faq"));
        assert!(!scope.reaches("docs2") && !scope.reaches("fa"));
        assert!(k
            .identify(b"0123456789abcdef-any")
            .unwrap()
            .scope
            .unwrap()
            .reaches("x"));
        for text in [
            "rw@:0123456789abcdef",
            "rw@a||b:0123456789abcdef",
            "rw@a/b:0123456789abcdef",
            "rw@a*b:0123456789abcdef",
            "xx@a:0123456789abcdef",
        ] {
            let e = ApiKeys::default().add("f", text).unwrap_err().to_string();
            assert!(!e.contains("0123456789abcdef"), "{e}");
        }

        // The extension the layer sets holds a request to its scope.
        let mut ext = http::Extensions::new();
        assert!(check_reach(&ext, "collection", "anything").is_ok());
        assert!(check_unscoped(&ext, "LoadIndex").is_ok());
        ext.insert(Reach(Arc::new(Scope::parse("docs|t-*").unwrap())));
        assert!(check_reach(&ext, "collection", "t-1").is_ok());
        let refused = check_reach(&ext, "collection", "other").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(
            refused.message().starts_with("collection:"),
            "{}",
            refused.message()
        );
        assert!(in_reach(&ext, "docs") && !in_reach(&ext, "doc"));
        assert_eq!(
            check_unscoped(&ext, "LoadIndex").unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
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
