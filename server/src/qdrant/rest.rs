//! Qdrant's REST API on Quiver (the port Qdrant serves REST on: 6333), with axum: Qdrant's
//! paths and JSON shapes, answers in its `{"result", "status", "time"}` envelope and errors as
//! `{"status": {"error": …}, "time": …}` with the HTTP code of the failure (400 for bad input
//! and for features outside the supported surface, 401/403 for keys, 404, 409, 429, 5xx).
//! API keys and per-client request limits apply as on the gRPC port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::serve::IncomingStream;
use axum::Router;
use quiver_engine::payload::fields::FieldType;
use quiver_store::UpsertMode;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tonic::{Code, Status};

use super::api::{
    AliasAction, ContextPair, CreateSpec, Datatype, Distance, Example, Group, GroupSpec, InfoView,
    LookupFrom, Mmr, PayloadSel, PointIn, PointVectorsIn, QdrantApi, QuerySpec, QueryVector,
    Record, Scored, Selector, Strategy, UpdateOp, VectorForm, WithLookup,
};
use super::filter::from_rest;
use super::fusion::Fusion;
use super::ids::PointKey;
use super::unsupported;
use super::vectors::{SpaceParams, SparseParams, VectorIn, VectorOut, VectorSel, VectorsOut};
use crate::auth::{Access, ApiKeys};
use crate::metrics::Metrics;
use crate::ratelimit::{Client, Limit, RateLimiter};
use crate::registry::Registry;
use crate::status::invalid;
use quiver_engine::sparse::SparseVector;

/// The REST front end's state.
#[derive(Clone)]
pub struct Rest {
    api: QdrantApi,
    keys: Arc<ApiKeys>,
    limiter: Arc<RateLimiter>,
    metrics: Metrics,
    max_body: usize,
    budget: crate::writes::WriteBudget,
}

impl Rest {
    /// The REST API over `registry`, checking `keys`.
    pub fn new(registry: Arc<Registry>, keys: Arc<ApiKeys>) -> Self {
        Rest {
            api: QdrantApi::new(registry.clone()),
            keys,
            limiter: registry.limiter().clone(),
            metrics: registry.metrics().clone(),
            max_body: registry.config().limits.max_message_bytes,
            budget: registry.write_budget().clone(),
        }
    }

    /// The routes.
    pub fn router(self) -> Router {
        let limit = axum::extract::DefaultBodyLimit::max(self.max_body);
        Router::new()
            .route("/", get(root))
            .route("/healthz", get(health))
            .route("/livez", get(health))
            .route("/readyz", get(health))
            .route("/collections", get(list))
            .route("/collections/aliases", post(update_aliases))
            .route("/aliases", get(list_aliases))
            .route("/collections/{name}/aliases", get(list_collection_aliases))
            .route(
                "/collections/{name}",
                get(info).put(create).patch(update).delete(drop),
            )
            .route("/collections/{name}/exists", get(exists))
            .route("/collections/{name}/points", put(upsert).post(retrieve))
            .route("/collections/{name}/points/{id}", get(retrieve_one))
            .route("/collections/{name}/points/delete", post(delete_points))
            .route("/collections/{name}/points/vectors", put(update_vectors))
            .route("/collections/{name}/points/batch", post(update_batch))
            .route(
                "/collections/{name}/points/vectors/delete",
                post(delete_vectors),
            )
            .route(
                "/collections/{name}/points/payload",
                post(set_payload).put(overwrite_payload),
            )
            .route(
                "/collections/{name}/points/payload/delete",
                post(delete_payload),
            )
            .route(
                "/collections/{name}/points/payload/clear",
                post(clear_payload),
            )
            .route("/collections/{name}/index", put(create_index))
            .route("/collections/{name}/index/{field}", delete(delete_index))
            .route("/collections/{name}/points/search", post(search))
            .route(
                "/collections/{name}/points/search/batch",
                post(search_batch),
            )
            .route("/collections/{name}/points/query", post(query))
            .route("/collections/{name}/points/query/batch", post(query_batch))
            .route(
                "/collections/{name}/points/query/groups",
                post(query_groups),
            )
            .route(
                "/collections/{name}/points/search/groups",
                post(search_groups),
            )
            .route("/collections/{name}/points/scroll", post(scroll))
            .route("/collections/{name}/points/count", post(count))
            .fallback(not_supported)
            .method_not_allowed_fallback(not_supported)
            .layer(limit)
            .layer(crate::request_id::RequestIdLayer)
            .with_state(self)
    }

    /// Admits a request: its key (when keys are set), the collection it names (`collection`)
    /// against the key's scope, and its client's request rate.
    fn admit(
        &self,
        headers: &HeaderMap,
        peer: SocketAddr,
        need: Access,
        collection: Option<&str>,
    ) -> Result<Caller, Status> {
        let grant = crate::auth::admit_key(&self.keys, Some(need), headers)?;
        let client = match &grant {
            Some(g) => Client::Key(g.index),
            None => Client::Peer(peer.ip()),
        };
        // Counted first: refusals out of a key's reach count against its rate too.
        self.limiter
            .check(client, Limit::Requests, 1, &self.metrics)?;
        let scope = grant.and_then(|g| g.scope);
        if let (Some(scope), Some(name)) = (&scope, collection) {
            // The name, and the collection it stands for when it is an alias.
            let target = self.api.collection_of(name);
            for n in std::iter::once(name).chain(target.as_deref().filter(|t| *t != name)) {
                if !scope.reaches(n) {
                    return Err(Status::permission_denied(format!(
                        "the API key does not reach collection {n:?}"
                    )));
                }
            }
        }
        Ok(Caller { client, scope })
    }

    /// A write's body, read after its share of the write budget is taken by its declared
    /// length (`declared`), so many large writes at once hold at most the budget.
    async fn admitted_body(
        &self,
        declared: u64,
        body: axum::body::Body,
    ) -> Result<(crate::admission::PreAdmitted, Body), Status> {
        let share = crate::admission::PreAdmitted::new(
            self.budget
                .take(declared.saturating_mul(REST_UPSERT_SHARE))?,
        );
        let body = axum::body::to_bytes(body, self.max_body)
            .await
            .map_err(|e| {
                invalid(
                    "body",
                    format!("could not be read within {} bytes: {e}", self.max_body),
                )
            })?;
        Ok((share, Body::parse(&body)?))
    }

    /// Refuses queries reading points (`lookup_from`) from a collection the key does not
    /// reach (an alias: nor its collection).
    fn reach_lookups(
        &self,
        scope: Option<&crate::auth::Scope>,
        specs: &[QuerySpec],
    ) -> Result<(), Status> {
        let mut names = Vec::new();
        for q in specs {
            super::api::lookup_collections(q, &mut names);
        }
        self.reach_all(scope, &names)
    }

    /// Refuses a call whose key does not reach every collection of `names` (an alias: nor
    /// its collection).
    fn reach_all(
        &self,
        scope: Option<&crate::auth::Scope>,
        names: &[String],
    ) -> Result<(), Status> {
        let Some(scope) = scope else {
            return Ok(());
        };
        for name in names {
            let target = self.api.collection_of(name);
            for n in std::iter::once(name.as_str()).chain(target.as_deref().filter(|t| t != name)) {
                if !scope.reaches(n) {
                    return Err(Status::permission_denied(format!(
                        "the API key does not reach collection {n:?}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Runs an operation needing `need` on `collection` (`None`: on none) and answers in
    /// Qdrant's envelope.
    async fn run<F, Fut>(
        &self,
        op: &str,
        need: Access,
        headers: &HeaderMap,
        peer: SocketAddr,
        collection: Option<&str>,
        f: F,
    ) -> Response
    where
        F: FnOnce(Caller) -> Fut,
        Fut: std::future::Future<Output = Result<Value, Status>>,
    {
        let start = Instant::now();
        let r = match self.admit(headers, peer, need, collection) {
            Ok(caller) => f(caller).await,
            Err(s) => Err(s),
        };
        let code = match &r {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        };
        self.metrics.request(&format!("qdrant.rest/{op}"), code);
        envelope(r, start)
    }
}

/// Who a REST request comes from: the client its limits count against, and the collections
/// its key reaches (`None`: all).
struct Caller {
    client: Client,
    scope: Option<Arc<crate::auth::Scope>>,
}

/// The client's address, for per-client limits without keys.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for PeerAddr {
    fn connect_info(s: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        PeerAddr(*s.remote_addr())
    }
}

impl Connected<IncomingStream<'_, crate::tls::TlsListener>> for PeerAddr {
    fn connect_info(s: IncomingStream<'_, crate::tls::TlsListener>) -> Self {
        PeerAddr(*s.remote_addr())
    }
}

/// Serves the REST API on `listener` until `shutdown` resolves.
pub async fn serve<L>(
    rest: Rest,
    listener: L,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    for<'a> PeerAddr: Connected<IncomingStream<'a, L>>,
{
    axum::serve(
        listener,
        rest.router()
            .into_make_service_with_connect_info::<PeerAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

fn http_code(c: Code) -> StatusCode {
    match c {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument
        | Code::Unimplemented
        | Code::FailedPrecondition
        | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unavailable | Code::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn envelope(r: Result<Value, Status>, start: Instant) -> Response {
    let time = start.elapsed().as_secs_f64();
    match r {
        Ok(result) => (
            StatusCode::OK,
            axum::Json(json!({"result": result, "status": "ok", "time": time})),
        )
            .into_response(),
        Err(s) => {
            let code = http_code(s.code());
            let mut resp = (
                code,
                axum::Json(json!({"status": {"error": s.message()}, "time": time})),
            )
                .into_response();
            if code == StatusCode::TOO_MANY_REQUESTS {
                // The limiter's status says when to retry; REST clients read Retry-After.
                if let Some(ms) = s
                    .metadata()
                    .get("retry-after-ms")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    let secs = ms.div_ceil(1000).max(1).to_string();
                    if let Ok(v) = secs.parse() {
                        resp.headers_mut().insert("retry-after", v);
                    }
                }
            }
            resp
        }
    }
}

// ---- request bodies ----

/// A request body: a JSON object (an empty body reads as `{}`).
struct Body(Map<String, Value>);

impl Body {
    fn parse(bytes: &[u8]) -> Result<Self, Status> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Body(Map::new()));
        }
        match serde_json::from_slice(bytes) {
            Ok(Value::Object(o)) => Ok(Body(o)),
            Ok(other) => Err(invalid(
                "body",
                format!(
                    "expected a JSON object, got {}",
                    quiver_engine::payload::type_name(&other)
                ),
            )),
            Err(e) => Err(invalid("body", format!("not valid JSON: {e}"))),
        }
    }

    fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }
}

/// Qdrant's `update_mode` of an upsert (`upsert`, `insert_only`, `update_only`; absent: upsert).
#[derive(serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum UpdateMode {
    Upsert,
    InsertOnly,
    UpdateOnly,
}

fn update_mode_in(v: Option<&Value>) -> Result<UpsertMode, Status> {
    let Some(v) = v else {
        return Ok(UpsertMode::Upsert);
    };
    match UpdateMode::deserialize(v) {
        Ok(UpdateMode::Upsert) => Ok(UpsertMode::Upsert),
        Ok(UpdateMode::InsertOnly) => Ok(UpsertMode::InsertOnly),
        Ok(UpdateMode::UpdateOnly) => Ok(UpsertMode::UpdateOnly),
        Err(_) => Err(invalid(
            "update_mode",
            "expected \"upsert\", \"insert_only\" or \"update_only\"",
        )),
    }
}

/// An optional count that fits 32 bits (absent or null: 0).
fn u32_in(field: &str, v: Option<&Value>) -> Result<u32, Status> {
    let n = u64_in(field, v, 0)?;
    u32::try_from(n).map_err(|_| invalid(field, format!("{n} is out of range")))
}

fn u64_in(field: &str, v: Option<&Value>, default: u64) -> Result<u64, Status> {
    match v.filter(|v| !v.is_null()) {
        None => Ok(default),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| invalid(field, "expected an unsigned integer")),
    }
}

fn f32_in(field: &str, v: Option<&Value>) -> Result<Option<f32>, Status> {
    match v.filter(|v| !v.is_null()) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|x| Some(x as f32))
            .ok_or_else(|| invalid(field, "expected a number")),
    }
}

fn bool_in(field: &str, v: Option<&Value>, default: bool) -> Result<bool, Status> {
    match v.filter(|v| !v.is_null()) {
        None => Ok(default),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| invalid(field, "expected true or false")),
    }
}

fn object_in(field: &str, v: Option<&Value>) -> Result<Map<String, Value>, Status> {
    match v.filter(|v| !v.is_null()) {
        None => Ok(Map::new()),
        Some(Value::Object(o)) => Ok(o.clone()),
        Some(_) => Err(invalid(field, "expected a JSON object")),
    }
}

fn strings_in(field: &str, v: Option<&Value>) -> Result<Vec<String>, Status> {
    match v.filter(|v| !v.is_null()) {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| invalid(&format!("{field}[{i}]"), "expected a string"))
            })
            .collect(),
        Some(_) => Err(invalid(field, "expected a list of strings")),
    }
}

fn keys_in(field: &str, v: Option<&Value>) -> Result<Vec<PointKey>, Status> {
    match v.filter(|v| !v.is_null()) {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, x)| PointKey::from_json(&format!("{field}[{i}]"), x))
            .collect(),
        Some(_) => Err(invalid(field, "expected a list of ids")),
    }
}

/// A vector: a list of numbers (dense) or `{"indices": […], "values": […]}` (sparse).
fn vector_in(field: &str, v: Option<&Value>) -> Result<VectorIn, Status> {
    match v.filter(|v| !v.is_null()) {
        None => Err(invalid(field, "missing")),
        // A list of lists: a multi-vector.
        Some(Value::Array(a)) if a.first().is_some_and(Value::is_array) => a
            .iter()
            .enumerate()
            .map(|(i, x)| match x {
                Value::Array(_) => match vector_in(&format!("{field}[{i}]"), Some(x))? {
                    VectorIn::Dense(d) => Ok(d),
                    _ => Err(invalid(
                        &format!("{field}[{i}]"),
                        "expected a list of numbers",
                    )),
                },
                _ => Err(invalid(
                    &format!("{field}[{i}]"),
                    "expected a list of numbers",
                )),
            })
            .collect::<Result<Vec<Vec<f32>>, Status>>()
            .map(VectorIn::Multi),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, x)| match x {
                Value::Number(n) => n
                    .as_f64()
                    .map(|f| f as f32)
                    .ok_or_else(|| invalid(&format!("{field}[{i}]"), "expected a number")),
                _ => Err(invalid(&format!("{field}[{i}]"), "expected a number")),
            })
            .collect::<Result<Vec<f32>, Status>>()
            .map(VectorIn::Dense),
        Some(Value::Object(o)) if o.contains_key("indices") => {
            let indices = o
                .get("indices")
                .and_then(Value::as_array)
                .ok_or_else(|| invalid(&format!("{field}.indices"), "expected a list of indices"))?
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    x.as_u64()
                        .and_then(|x| u32::try_from(x).ok())
                        .ok_or_else(|| {
                            invalid(
                                &format!("{field}.indices[{i}]"),
                                "expected an unsigned 32-bit integer",
                            )
                        })
                })
                .collect::<Result<Vec<u32>, Status>>()?;
            let values = o
                .get("values")
                .and_then(Value::as_array)
                .ok_or_else(|| invalid(&format!("{field}.values"), "expected a list of numbers"))?
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    x.as_f64().map(|f| f as f32).ok_or_else(|| {
                        invalid(&format!("{field}.values[{i}]"), "expected a number")
                    })
                })
                .collect::<Result<Vec<f32>, Status>>()?;
            SparseVector::new(indices, values)
                .map(VectorIn::Sparse)
                .map_err(|e| invalid(field, e))
        }
        Some(Value::Object(o)) if o.contains_key("text") || o.contains_key("image") => {
            Err(unsupported(&format!(
                "{field}: server-side inference (documents, images, objects)"
            )))
        }
        Some(_) => Err(invalid(
            field,
            "expected a list of numbers or {\"indices\": […], \"values\": […]}",
        )),
    }
}

/// A point's vectors: one unnamed list of numbers, or vectors by name.
fn point_vectors_in(field: &str, v: Option<&Value>) -> Result<Vec<(String, VectorIn)>, Status> {
    match v.filter(|v| !v.is_null()) {
        Some(Value::Object(o)) if !o.contains_key("indices") => o
            .iter()
            .map(|(n, x)| Ok((n.clone(), vector_in(&format!("{field}.{n}"), Some(x))?)))
            .collect(),
        v => Ok(vec![(String::new(), vector_in(field, v)?)]),
    }
}

fn payload_sel(field: &str, v: Option<&Value>, default: PayloadSel) -> Result<PayloadSel, Status> {
    match v.filter(|v| !v.is_null()) {
        None => Ok(default),
        Some(Value::Bool(true)) => Ok(PayloadSel::All),
        Some(Value::Bool(false)) => Ok(PayloadSel::None),
        Some(Value::Array(_)) => Ok(PayloadSel::Include(strings_in(field, v)?)),
        Some(Value::Object(o)) if o.contains_key("include") => Ok(PayloadSel::Include(strings_in(
            &format!("{field}.include"),
            o.get("include"),
        )?)),
        Some(Value::Object(o)) if o.contains_key("exclude") => Ok(PayloadSel::Exclude(strings_in(
            &format!("{field}.exclude"),
            o.get("exclude"),
        )?)),
        Some(_) => Err(invalid(
            field,
            "expected true, false, a list of keys, {\"include\": […]} or {\"exclude\": […]}",
        )),
    }
}

fn vector_sel(field: &str, v: Option<&Value>) -> Result<VectorSel, Status> {
    match v.filter(|v| !v.is_null()) {
        None | Some(Value::Bool(false)) => Ok(VectorSel::None),
        Some(Value::Bool(true)) => Ok(VectorSel::All),
        Some(Value::Array(_)) => Ok(VectorSel::Only(strings_in(field, v)?)),
        Some(_) => Err(invalid(
            field,
            "expected true, false or a list of vector names",
        )),
    }
}

fn selector_in(b: &Body) -> Result<Selector, Status> {
    if let Some(f) = b.get("filter") {
        if b.get("points").is_some() {
            return Err(invalid("filter", "give points or a filter, not both"));
        }
        return Ok(Selector::Filter(
            from_rest("filter", Some(f))?.unwrap_or_else(|| "{}".into()),
        ));
    }
    match b.get("points") {
        // `{"points": [ids]}`, or the selector form `{"points": {"filter": …}}`.
        Some(Value::Object(o)) if o.contains_key("filter") => Ok(Selector::Filter(
            from_rest("points.filter", o.get("filter"))?.unwrap_or_else(|| "{}".into()),
        )),
        Some(Value::Object(o)) if o.contains_key("points") => {
            Ok(Selector::Ids(keys_in("points.points", o.get("points"))?))
        }
        Some(v) => Ok(Selector::Ids(keys_in("points", Some(v))?)),
        None => Err(invalid("points", "missing: give point ids or a filter")),
    }
}

fn params_in(field: &str, v: Option<&Value>) -> Result<(u32, u32, bool), Status> {
    let p = object_in(field, v)?;
    let nprobe =
        u64_in(&format!("{field}.hnsw_ef"), p.get("hnsw_ef"), 0)?.min(u32::MAX as u64) as u32;
    let exact = bool_in(&format!("{field}.exact"), p.get("exact"), false)?;
    let q = object_in(&format!("{field}.quantization"), p.get("quantization"))?;
    let over = f32_in(
        &format!("{field}.quantization.oversampling"),
        q.get("oversampling"),
    )?;
    let refine = over
        .filter(|o| o.is_finite() && *o >= 1.0)
        .map_or(0, |o| o.ceil().min(1000.0) as u32);
    Ok((nprobe, refine, exact))
}

fn search_in(field: &str, b: &Map<String, Value>) -> Result<QuerySpec, Status> {
    let f = |k: &str| format!("{field}{k}");
    // `{"name": …, "vector": …}`: a vector by name (a sparse one is always named).
    let (using, vector) = match b.get("vector") {
        Some(Value::Object(o)) if o.contains_key("vector") => (
            o.get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            vector_in(&f("vector.vector"), o.get("vector"))?,
        ),
        v => (String::new(), vector_in(&f("vector"), v)?),
    };
    let (nprobe, refine_factor, exact) = params_in(&f("params"), b.get("params"))?;
    Ok(QuerySpec {
        vector: vector.into(),
        lookup_from: None,
        using,
        prefetch: Vec::new(),
        mmr: None,
        filter: from_rest(&f("filter"), b.get("filter"))?,
        limit: u64_in(&f("limit"), b.get("limit"), 10)? as usize,
        offset: u64_in(&f("offset"), b.get("offset"), 0)? as usize,
        score_threshold: f32_in(&f("score_threshold"), b.get("score_threshold"))?,
        nprobe,
        refine_factor,
        exact,
        with_payload: payload_sel(&f("with_payload"), b.get("with_payload"), PayloadSel::None)?,
        with_vector: vector_sel(
            &f("with_vector"),
            b.get("with_vector").or(b.get("with_vectors")),
        )?,
    })
}

/// A `recommend` query: `{"positive": […], "negative": […], "strategy": …}`, each example a
/// vector or a point id.
fn recommend_in(field: &str, v: &Value) -> Result<QueryVector, Status> {
    let Value::Object(o) = v else {
        return Err(invalid(
            field,
            "expected {\"positive\": […], \"negative\": […]}",
        ));
    };
    let strategy = match o.get("strategy") {
        None | Some(Value::Null) => Strategy::AverageVector,
        Some(Value::String(s)) if Strategy::named(s).is_some() => {
            Strategy::named(s).unwrap_or_default()
        }
        Some(_) => {
            return Err(invalid(
                &format!("{field}.strategy"),
                "expected average_vector, best_score or sum_scores",
            ))
        }
    };
    let examples = |name: &str| -> Result<Vec<Example>, Status> {
        match o.get(name) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(list)) => list
                .iter()
                .enumerate()
                .map(|(i, e)| example_in(&format!("{field}.{name}[{i}]"), e))
                .collect(),
            Some(_) => Err(invalid(&format!("{field}.{name}"), "expected a list")),
        }
    };
    Ok(QueryVector::Recommend {
        positive: examples("positive")?,
        negative: examples("negative")?,
        strategy,
    })
}

/// An example: a point id, a dense vector or a sparse one (`{"indices": …, "values": …}`).
fn example_in(at: &str, e: &Value) -> Result<Example, Status> {
    match e {
        Value::Number(_) | Value::String(_) => Ok(Example::Point(PointKey::from_json(at, e)?)),
        Value::Array(_) => Ok(vector_in(at, Some(e))?.into()),
        Value::Object(o) if o.contains_key("indices") => Ok(vector_in(at, Some(e))?.into()),
        Value::Object(_) => Err(unsupported(&format!(
            "{at}: inferred (document, image, object) examples"
        ))),
        _ => Err(invalid(at, "expected a vector or a point id")),
    }
}

/// Context pairs: `[{"positive": …, "negative": …}, …]`, or one pair alone.
fn context_in(field: &str, v: Option<&Value>) -> Result<Vec<ContextPair>, Status> {
    let pair = |at: &str, p: &Value| -> Result<ContextPair, Status> {
        let Value::Object(o) = p else {
            return Err(invalid(at, "expected {\"positive\": …, \"negative\": …}"));
        };
        let side = |name: &str| match o.get(name) {
            Some(e) if !e.is_null() => example_in(&format!("{at}.{name}"), e),
            _ => Err(invalid(&format!("{at}.{name}"), "missing")),
        };
        Ok(ContextPair {
            positive: side("positive")?,
            negative: side("negative")?,
        })
    };
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, p)| pair(&format!("{field}[{i}]"), p))
            .collect(),
        Some(p @ Value::Object(_)) => Ok(vec![pair(field, p)?]),
        Some(_) => Err(invalid(field, "expected a list of context pairs")),
    }
}

/// A `discover` query: `{"target": …, "context": [pairs]}`.
fn discover_in(field: &str, v: &Value) -> Result<QueryVector, Status> {
    let Value::Object(o) = v else {
        return Err(invalid(field, "expected {\"target\": …, \"context\": […]}"));
    };
    let target = match o.get("target") {
        Some(t) if !t.is_null() => example_in(&format!("{field}.target"), t)?,
        _ => return Err(invalid(&format!("{field}.target"), "missing")),
    };
    Ok(QueryVector::Discover {
        target,
        context: context_in(&format!("{field}.context"), o.get("context"))?,
    })
}

/// The vector of a `query`: a vector, a point id, or `{"nearest": …}` of either.
fn query_vector(field: &str, v: Option<&Value>) -> Result<QueryVector, Status> {
    match v.filter(|v| !v.is_null()) {
        None => Ok(QueryVector::None),
        Some(Value::Number(_) | Value::String(_)) => Ok(QueryVector::Point(PointKey::from_json(
            field,
            v.unwrap_or(&Value::Null),
        )?)),
        Some(Value::Array(_)) => Ok(vector_in(field, v)?.into()),
        Some(Value::Object(o)) => {
            if let Some(n) = o.get("nearest") {
                return query_vector(&format!("{field}.nearest"), Some(n));
            }
            if o.contains_key("indices") {
                return Ok(vector_in(field, v)?.into());
            }
            if let Some(r) = o.get("recommend") {
                return recommend_in(&format!("{field}.recommend"), r);
            }
            if let Some(d) = o.get("discover") {
                return discover_in(&format!("{field}.discover"), d);
            }
            if let Some(c) = o.get("context") {
                let pairs = context_in(&format!("{field}.context"), Some(c))?;
                if pairs.is_empty() {
                    return Err(invalid(
                        &format!("{field}.context"),
                        "a context query needs at least one pair",
                    ));
                }
                return Ok(QueryVector::Context { pairs });
            }
            if let Some(f) = o.get("fusion") {
                return match f.as_str() {
                    Some("rrf") => Ok(QueryVector::Fusion(Fusion::Rrf)),
                    Some("dbsf") => Ok(QueryVector::Fusion(Fusion::Dbsf)),
                    _ => Err(invalid(
                        &format!("{field}.fusion"),
                        "expected \"rrf\" or \"dbsf\"",
                    )),
                };
            }
            let kind = o.keys().next().cloned().unwrap_or_default();
            Err(unsupported(&format!("{field}: `{kind}` queries")))
        }
        Some(_) => Err(invalid(
            field,
            "expected a vector, a point id or {\"nearest\": …}",
        )),
    }
}

/// The `mmr` of a `{"nearest": …, "mmr": {"diversity": …, "candidates_limit": …}}` query.
fn mmr_in(field: &str, query: Option<&Value>) -> Result<Option<Mmr>, Status> {
    let Some(Value::Object(q)) = query else {
        return Ok(None);
    };
    match q.get("mmr") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => {
            if !q.contains_key("nearest") {
                return Err(invalid(field, "mmr re-ranks a `nearest` query"));
            }
            let candidates = match m.get("candidates_limit") {
                None | Some(Value::Null) => None,
                v => Some(u64_in(&format!("{field}.candidates_limit"), v, 0)? as usize),
            };
            Ok(Some(Mmr::new(
                field,
                f32_in(&format!("{field}.diversity"), m.get("diversity"))?,
                candidates,
            )?))
        }
        Some(_) => Err(invalid(
            field,
            "expected {\"diversity\": …, \"candidates_limit\": …}",
        )),
    }
}

/// Most levels of nested prefetches.
const MAX_PREFETCH_DEPTH: usize = 8;

fn query_in(field: &str, b: &Map<String, Value>) -> Result<QuerySpec, Status> {
    query_at(field, b, 0)
}

fn query_at(field: &str, b: &Map<String, Value>, depth: usize) -> Result<QuerySpec, Status> {
    let f = |k: &str| format!("{field}{k}");
    if depth > MAX_PREFETCH_DEPTH {
        return Err(invalid(
            &f("prefetch"),
            format!("more than {MAX_PREFETCH_DEPTH} levels of prefetch"),
        ));
    }
    let lookup_from = match b.get("lookup_from") {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) => Some(LookupFrom {
            collection: match o.get("collection") {
                Some(Value::String(c)) => c.clone(),
                _ => {
                    return Err(invalid(
                        &f("lookup_from.collection"),
                        "expected a collection name",
                    ))
                }
            },
            vector: match o.get("vector") {
                None | Some(Value::Null) => None,
                Some(Value::String(v)) => Some(v.clone()),
                Some(_) => return Err(invalid(&f("lookup_from.vector"), "expected a vector name")),
            },
        }),
        Some(_) => return Err(invalid(&f("lookup_from"), "expected {\"collection\": …}")),
    };
    // One prefetch or a list of them.
    let prefetch = match b.get("prefetch") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(o)) => vec![query_at(&f("prefetch."), o, depth + 1)?],
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, p)| match p {
                Value::Object(o) => query_at(&format!("{field}prefetch[{i}]."), o, depth + 1),
                _ => Err(invalid(
                    &format!("{field}prefetch[{i}]"),
                    "expected a JSON object",
                )),
            })
            .collect::<Result<_, Status>>()?,
        Some(_) => {
            return Err(invalid(
                &f("prefetch"),
                "expected a query or a list of queries",
            ))
        }
    };
    let using = match b.get("using") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(u)) => u.clone(),
        Some(_) => return Err(invalid(&f("using"), "expected a vector name")),
    };
    let (nprobe, refine_factor, exact) = params_in(&f("params"), b.get("params"))?;
    Ok(QuerySpec {
        vector: query_vector(&f("query"), b.get("query"))?,
        mmr: mmr_in(&f("query.mmr"), b.get("query"))?,
        lookup_from,
        using,
        prefetch,
        filter: from_rest(&f("filter"), b.get("filter"))?,
        limit: u64_in(&f("limit"), b.get("limit"), 10)? as usize,
        offset: u64_in(&f("offset"), b.get("offset"), 0)? as usize,
        score_threshold: f32_in(&f("score_threshold"), b.get("score_threshold"))?,
        nprobe,
        refine_factor,
        exact,
        with_payload: payload_sel(&f("with_payload"), b.get("with_payload"), PayloadSel::None)?,
        with_vector: vector_sel(
            &f("with_vector"),
            b.get("with_vector").or(b.get("with_vectors")),
        )?,
    })
}

/// The sparse vectors of a create body (`sparse_vectors`: name → `{"modifier", "index"}`).
fn sparse_in(
    v: Option<&Value>,
) -> Result<std::collections::BTreeMap<String, SparseParams>, Status> {
    let mut out = std::collections::BTreeMap::new();
    for (name, p) in object_in("sparse_vectors", v)? {
        let field = format!("sparse_vectors.{name}");
        let p = object_in(&field, Some(&p))?;
        let idf = match p.get("modifier") {
            None | Some(Value::Null) => false,
            Some(Value::String(m)) if m == "none" => false,
            Some(Value::String(m)) if m == "idf" => true,
            Some(_) => {
                return Err(invalid(
                    &format!("{field}.modifier"),
                    "expected \"none\" or \"idf\"",
                ))
            }
        };
        let index = p.get("index").filter(|i| !i.is_null()).cloned();
        out.insert(name, SparseParams { idf, index });
    }
    Ok(out)
}

/// The client's settings from a create or update body (the keys [`super::api`] keeps).
fn settings_in(
    b: &Body,
    vectors: Option<&Map<String, Value>>,
) -> Result<Map<String, Value>, Status> {
    let mut s = Map::new();
    for key in ["hnsw_config", "wal_config", "optimizers_config", "metadata"] {
        if let Some(v) = b.get(key) {
            s.insert(key.into(), Value::Object(object_in(key, Some(v))?));
        }
    }
    if let (false, Some(h)) = (
        s.contains_key("hnsw_config"),
        vectors.and_then(|v| v.get("hnsw_config")),
    ) {
        if !h.is_null() {
            s.insert(
                "hnsw_config".into(),
                Value::Object(object_in("vectors.hnsw_config", Some(h))?),
            );
        }
    }
    let quantization = b.get("quantization_config").or(vectors
        .and_then(|v| v.get("quantization_config"))
        .filter(|v| !v.is_null()));
    if let Some(q) = quantization {
        s.insert("quantization_config".into(), q.clone());
    }
    Ok(s)
}

fn field_type_in(v: Option<&Value>) -> Result<FieldType, Status> {
    let name = match v.filter(|v| !v.is_null()) {
        None => {
            return Err(invalid(
                "field_schema",
                "missing (keyword, integer, float or bool)",
            ))
        }
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => match o.get("type").and_then(Value::as_str) {
            Some(t) => t.to_string(),
            None => return Err(invalid("field_schema.type", "missing")),
        },
        Some(_) => {
            return Err(invalid(
                "field_schema",
                "expected a type name or {\"type\": …}",
            ))
        }
    };
    match name.as_str() {
        "keyword" => Ok(FieldType::Keyword),
        "integer" => Ok(FieldType::Integer),
        "float" => Ok(FieldType::Float),
        "bool" => Ok(FieldType::Bool),
        "geo" | "text" | "datetime" | "uuid" => {
            Err(unsupported(&format!("field_schema: {name} field indexes")))
        }
        other => Err(invalid(
            "field_schema",
            format!("unknown type `{other}` (keyword, integer, float or bool)"),
        )),
    }
}

// ---- answers ----

/// A dense vector space's parameters as `GetCollectionInfo` shows them.
fn space_json(p: &SpaceParams) -> Value {
    let mut o = json!({"size": p.size, "distance": p.distance.name()});
    if let Some(on_disk) = p.on_disk {
        o["on_disk"] = json!(on_disk);
    }
    if let Some(d) = p.datatype {
        o["datatype"] = json!(d);
    }
    if p.multi {
        o["multivector_config"] = json!({"comparator": "max_sim"});
    }
    o
}

fn vectors_out_json(v: Option<VectorsOut>) -> Value {
    let one = |v: VectorOut| match v {
        VectorOut::Dense(d) => json!(d),
        VectorOut::Sparse(s) => s.to_json(),
        VectorOut::Multi(m) => json!(m),
    };
    match v {
        None => Value::Null,
        Some(VectorsOut::Unnamed(v)) => one(v),
        Some(VectorsOut::Named(n)) => {
            Value::Object(n.into_iter().map(|(k, v)| (k, one(v))).collect())
        }
    }
}

fn record_json(r: Record) -> Value {
    json!({
        "id": r.key.to_json(),
        "payload": r.payload.map(Value::Object),
        "vector": vectors_out_json(r.vector),
    })
}

fn scored_json(s: Scored) -> Value {
    json!({
        "id": s.record.key.to_json(),
        "version": 0,
        "score": s.score,
        "payload": s.record.payload.map(Value::Object),
        "vector": vectors_out_json(s.record.vector),
    })
}

/// The collection's vector parameters in the form they were given (unnamed, or as the vector
/// named `""`), with `on_disk` and `datatype` when given.
fn vectors_json(v: &InfoView) -> Value {
    let mut params = json!({"size": v.dim, "distance": v.distance.name()});
    if let Some(on_disk) = v.form.on_disk {
        params["on_disk"] = json!(on_disk);
    }
    if let Some(d) = v.form.datatype {
        params["datatype"] = json!(d);
    }
    if let Some(p) = v.form.unnamed_space() {
        space_json(p)
    } else if !v.form.spaces.is_empty() {
        Value::Object(
            v.form
                .spaces
                .iter()
                .map(|(n, p)| (n.clone(), space_json(p)))
                .collect(),
        )
    } else if v.form.no_dense {
        json!({})
    } else if v.form.named {
        json!({ v.form.name.clone(): params })
    } else {
        params
    }
}

/// The sparse vectors' parameters (none without sparse vectors).
fn sparse_vectors_json(form: &VectorForm) -> Value {
    if form.sparse.is_empty() {
        return Value::Null;
    }
    Value::Object(
        form.sparse
            .iter()
            .map(|(n, p)| {
                let mut o = Map::new();
                if let Some(i) = &p.index {
                    o.insert("index".into(), i.clone());
                }
                if p.idf {
                    o.insert("modifier".into(), json!("idf"));
                }
                (n.clone(), Value::Object(o))
            })
            .collect(),
    )
}

fn info_json(v: InfoView) -> Value {
    let schema: Map<String, Value> = v
        .fields
        .iter()
        .map(|(k, t)| {
            let name = match t {
                FieldType::Keyword => "keyword",
                FieldType::Integer => "integer",
                FieldType::Float => "float",
                FieldType::Bool => "bool",
            };
            (k.clone(), json!({"data_type": name, "points": 0}))
        })
        .collect();
    json!({
        "status": v.status,
        "optimizer_status": match &v.error {
            None => json!("ok"),
            Some(e) => json!({"error": e}),
        },
        "segments_count": v.segments,
        "points_count": v.points,
        "indexed_vectors_count": v.indexed,
        "config": {
            "params": {
                "vectors": vectors_json(&v),
                "sparse_vectors": sparse_vectors_json(&v.form),
                "shard_number": v.shards,
                "replication_factor": v.replication,
                "write_consistency_factor": 1,
                "on_disk_payload": true,
            },
            "hnsw_config": v.hnsw,
            "optimizer_config": v.optimizers,
            "wal_config": v.wal,
            "quantization_config": v.quantization,
            "metadata": if v.metadata.is_empty() { Value::Null } else { Value::Object(v.metadata) },
        },
        "payload_schema": schema,
    })
}

// ---- handlers ----

type Peer = ConnectInfo<PeerAddr>;

async fn root() -> Response {
    axum::Json(json!({
        // Qdrant's own title: clients (LangChain among them) recognise a Qdrant server by it.
        "title": "qdrant - vector search engine",
        "version": super::API_VERSION,
        "engine": format!("quiver {}", env!("CARGO_PKG_VERSION")),
    }))
    .into_response()
}

async fn health() -> &'static str {
    "healthz check passed"
}

async fn not_supported(method: Method, uri: Uri) -> Response {
    envelope(
        Err(Status::not_found(format!(
            "{method} {} is not part of Quiver's Qdrant API (see docs/QDRANT.md)",
            uri.path()
        ))),
        Instant::now(),
    )
}

async fn list(State(s): State<Rest>, ConnectInfo(PeerAddr(peer)): Peer, h: HeaderMap) -> Response {
    let api = &s.api;
    s.run("list", Access::ReadOnly, &h, peer, None, |c| async move {
        let names: Vec<Value> = api
            .list()
            .await
            .into_iter()
            .filter(|n| c.scope.as_ref().is_none_or(|sc| sc.reaches(n)))
            .map(|n| json!({ "name": n }))
            .collect();
        Ok(json!({ "collections": names }))
    })
    .await
}

/// `POST /collections/aliases`'s body.
#[derive(Deserialize)]
struct ChangeAliases {
    actions: Vec<AliasActionIn>,
}

/// One alias action as Qdrant's REST API writes it.
#[derive(Deserialize)]
enum AliasActionIn {
    #[serde(rename = "create_alias")]
    Create {
        collection_name: String,
        alias_name: String,
    },
    #[serde(rename = "delete_alias")]
    Delete { alias_name: String },
    #[serde(rename = "rename_alias")]
    Rename {
        old_alias_name: String,
        new_alias_name: String,
    },
}

impl From<AliasActionIn> for AliasAction {
    fn from(a: AliasActionIn) -> Self {
        match a {
            AliasActionIn::Create {
                collection_name,
                alias_name,
            } => AliasAction::Create {
                alias: alias_name,
                collection: collection_name,
            },
            AliasActionIn::Delete { alias_name } => AliasAction::Delete { alias: alias_name },
            AliasActionIn::Rename {
                old_alias_name,
                new_alias_name,
            } => AliasAction::Rename {
                from: old_alias_name,
                to: new_alias_name,
            },
        }
    }
}

fn aliases_json(aliases: Vec<(String, String)>) -> Value {
    let list: Vec<Value> = aliases
        .into_iter()
        .map(|(a, c)| json!({"alias_name": a, "collection_name": c}))
        .collect();
    json!({ "aliases": list })
}

async fn update_aliases(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    let api = &s.api;
    s.run(
        "update_aliases",
        Access::ReadWrite,
        &h,
        peer,
        None,
        |c| async move {
            // An alias reaches a collection by another name: only a key reaching every
            // collection changes them.
            if c.scope.is_some() {
                return Err(Status::permission_denied(
                    "aliases are changed with a key that reaches every collection",
                ));
            }
            let b: ChangeAliases =
                serde_json::from_slice(&body).map_err(|e| invalid("actions", e))?;
            api.update_aliases(b.actions.into_iter().map(AliasAction::from).collect())
                .await?;
            Ok(json!(true))
        },
    )
    .await
}

async fn list_aliases(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    h: HeaderMap,
) -> Response {
    let api = &s.api;
    s.run(
        "list_aliases",
        Access::ReadOnly,
        &h,
        peer,
        None,
        |c| async move {
            let all = api.aliases(None).await?;
            let seen = all
                .into_iter()
                .filter(|(a, col)| {
                    c.scope
                        .as_ref()
                        .is_none_or(|sc| sc.reaches(a) && sc.reaches(col))
                })
                .collect();
            Ok(aliases_json(seen))
        },
    )
    .await
}

async fn list_collection_aliases(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path(name): Path<String>,
    h: HeaderMap,
) -> Response {
    s.run(
        "list_collection_aliases",
        Access::ReadOnly,
        &h,
        peer,
        Some(&name),
        |_| async { Ok(aliases_json(s.api.aliases(Some(&name)).await?)) },
    )
    .await
}

async fn info(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path(name): Path<String>,
    h: HeaderMap,
) -> Response {
    s.run(
        "get_collection",
        Access::ReadOnly,
        &h,
        peer,
        Some(&name),
        |_| async { s.api.info(&name).await.map(info_json) },
    )
    .await
}

async fn exists(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path(name): Path<String>,
    h: HeaderMap,
) -> Response {
    s.run(
        "collection_exists",
        Access::ReadOnly,
        &h,
        peer,
        Some(&name),
        |_| async { Ok(json!({ "exists": s.api.exists(&name).await? })) },
    )
    .await
}

async fn create(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path(name): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    s.run(
        "create_collection",
        Access::ReadWrite,
        &h,
        peer,
        Some(&name),
        |_| async {
            let b = Body::parse(&body)?;
            if b.get("strict_mode_config").is_some() {
                return Err(unsupported("strict_mode_config"));
            }
            let sparse = sparse_in(b.get("sparse_vectors"))?;
            let vectors = object_in("vectors", b.get("vectors"))?;
            let named = !vectors.contains_key("size");
            let mut spaces = std::collections::BTreeMap::new();
            let multi =
                |p: &Map<String, Value>| p.get("multivector_config").is_some_and(|v| !v.is_null());
            let (vname, params) = if !named && multi(&vectors) {
                // An unnamed multi-vector: kept in the payload as a space named "".
                spaces.insert(String::new(), space_in("vectors", &Value::Object(vectors))?);
                (None, Map::new())
            } else if !named {
                (Some(String::new()), vectors)
            } else if vectors.is_empty() {
                // No dense vector (sparse vectors only, or none at all).
                (None, Map::new())
            } else if vectors.len() == 1
                && vectors
                    .values()
                    .all(|p| p.as_object().is_none_or(|p| !multi(p)))
            {
                let (n, p) = vectors.iter().next().expect("one entry");
                match p {
                    Value::Object(p) => (Some(n.clone()), p.clone()),
                    _ => return Err(invalid(&format!("vectors.{n}"), "expected a JSON object")),
                }
            } else {
                for (n, p) in &vectors {
                    spaces.insert(n.clone(), space_in(&format!("vectors.{n}"), p)?);
                }
                (None, Map::new())
            };
            let no_dense = vname.is_none();
            let dim = u64_in("vectors.size", params.get("size"), 0)?;
            let distance = match params.get("distance").and_then(Value::as_str) {
                Some(d) => Distance::parse("vectors.distance", d)?,
                None if no_dense => Distance::Euclid,
                None => {
                    return Err(invalid(
                        "vectors.distance",
                        "missing (Cosine, Euclid or Dot)",
                    ))
                }
            };
            let datatype = Datatype::parse(
                "vectors.datatype",
                params.get("datatype").and_then(Value::as_str),
            )?;
            let on_disk = match params.get("on_disk") {
                None | Some(Value::Null) => None,
                Some(Value::Bool(b)) => Some(*b),
                Some(_) => return Err(invalid("vectors.on_disk", "expected true or false")),
            };
            let form = VectorForm {
                named,
                name: vname.unwrap_or_default(),
                no_dense,
                spaces,
                sparse,
                on_disk,
                datatype: params
                    .get("datatype")
                    .filter(|d| !d.is_null())
                    .map(|_| datatype.into()),
            };
            let settings = settings_in(&b, Some(&params))?;
            let shards = u32_in("shard_number", b.get("shard_number"))?;
            let replication = u32_in("replication_factor", b.get("replication_factor"))?;
            s.api
                .create(CreateSpec {
                    name: name.clone(),
                    dim,
                    distance,
                    datatype,
                    settings,
                    shards,
                    replication,
                    form,
                })
                .await?;
            Ok(json!(true))
        },
    )
    .await
}

/// One of several named dense vectors' parameters.
fn space_in(field: &str, v: &Value) -> Result<SpaceParams, Status> {
    let Value::Object(p) = v else {
        return Err(invalid(field, "expected a JSON object"));
    };
    let multi = match p.get("multivector_config") {
        None | Some(Value::Null) => false,
        Some(Value::Object(m)) => match m.get("comparator").and_then(Value::as_str) {
            Some("max_sim") => true,
            _ => {
                return Err(invalid(
                    &format!("{field}.multivector_config.comparator"),
                    "expected \"max_sim\"",
                ))
            }
        },
        Some(_) => {
            return Err(invalid(
                &format!("{field}.multivector_config"),
                "expected {\"comparator\": \"max_sim\"}",
            ))
        }
    };
    let distance = match p.get("distance").and_then(Value::as_str) {
        Some(d) => Distance::parse(&format!("{field}.distance"), d)?,
        None => {
            return Err(invalid(
                &format!("{field}.distance"),
                "missing (Cosine, Euclid or Dot)",
            ))
        }
    };
    let datatype = p.get("datatype").filter(|d| !d.is_null());
    Ok(SpaceParams {
        size: u64_in(&format!("{field}.size"), p.get("size"), 0)?,
        distance,
        on_disk: match p.get("on_disk") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                return Err(invalid(
                    &format!("{field}.on_disk"),
                    "expected true or false",
                ))
            }
        },
        datatype: match datatype {
            None => None,
            Some(d) => Some(Datatype::parse(&format!("{field}.datatype"), d.as_str())?.into()),
        },
        multi,
    })
}

async fn update(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path(name): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    s.run(
        "update_collection",
        Access::ReadWrite,
        &h,
        peer,
        Some(&name),
        |_| async {
            let b = Body::parse(&body)?;
            if b.get("sparse_vectors")
                .is_some_and(|v| v.as_object().is_some_and(|o| !o.is_empty()))
            {
                return Err(unsupported("sparse_vectors: sparse vectors"));
            }
            if b.get("strict_mode_config").is_some() {
                return Err(unsupported("strict_mode_config"));
            }
            let settings = settings_in(&b, None)?;
            s.api.update(&name, settings).await?;
            Ok(json!(true))
        },
    )
    .await
}

async fn drop(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path(name): Path<String>,
    h: HeaderMap,
) -> Response {
    s.run(
        "delete_collection",
        Access::ReadWrite,
        &h,
        peer,
        Some(&name),
        |_| async { Ok(json!(s.api.delete(&name).await?)) },
    )
    .await
}

fn update_result() -> Value {
    json!({"operation_id": 0, "status": "completed"})
}

/// A payload taken out of a request (null: none).
fn payload_owned(field: &str, v: Value) -> Result<Map<String, Value>, Status> {
    match v {
        Value::Null => Ok(Map::new()),
        Value::Object(o) => Ok(o),
        _ => Err(invalid(field, "expected a JSON object")),
    }
}

/// The points of an upsert body, taken out of it (a large body is not copied).
fn points_in(mut b: Body) -> Result<Vec<PointIn>, Status> {
    if let Some(batch) = b.0.remove("batch").filter(|v| !v.is_null()) {
        let Value::Object(mut batch) = batch else {
            return Err(invalid("batch", "expected a JSON object"));
        };
        let ids = keys_in("batch.ids", batch.get("ids"))?;
        let vectors = match batch.remove("vectors") {
            Some(Value::Array(a)) => a,
            // By name: each name's list, one vector per id, zipped into one object per id.
            Some(Value::Object(o)) => {
                let mut rows: Vec<Map<String, Value>> = vec![Map::new(); ids.len()];
                for (n, list) in o {
                    let Value::Array(list) = list else {
                        return Err(invalid(
                            &format!("batch.vectors.{n}"),
                            "expected a list of vectors",
                        ));
                    };
                    if list.len() != ids.len() {
                        return Err(invalid(
                            &format!("batch.vectors.{n}"),
                            format!("{} vectors for {} ids", list.len(), ids.len()),
                        ));
                    }
                    for (row, v) in rows.iter_mut().zip(list) {
                        if !v.is_null() {
                            row.insert(n.clone(), v);
                        }
                    }
                }
                rows.into_iter().map(Value::Object).collect()
            }
            _ => return Err(invalid("batch.vectors", "missing: a list of vectors")),
        };
        if vectors.len() != ids.len() {
            return Err(invalid(
                "batch.vectors",
                format!("{} vectors for {} ids", vectors.len(), ids.len()),
            ));
        }
        let payloads = match batch.remove("payloads") {
            None | Some(Value::Null) => vec![Value::Null; ids.len()],
            Some(Value::Array(a)) if a.len() == ids.len() => a,
            Some(_) => {
                return Err(invalid(
                    "batch.payloads",
                    "expected one payload (or null) per id",
                ))
            }
        };
        return ids
            .into_iter()
            .zip(vectors)
            .zip(payloads)
            .enumerate()
            .map(|(i, ((key, v), p))| {
                Ok(PointIn {
                    key,
                    vectors: point_vectors_in(&format!("batch.vectors[{i}]"), Some(&v))?,
                    payload: payload_owned(&format!("batch.payloads[{i}]"), p)?,
                })
            })
            .collect();
    }
    match b.0.remove("points") {
        Some(Value::Array(points)) => points
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let field = format!("points[{i}]");
                let Value::Object(mut p) = p else {
                    return Err(invalid(&field, "expected a JSON object"));
                };
                Ok(PointIn {
                    key: PointKey::from_json(
                        &format!("{field}.id"),
                        p.get("id").unwrap_or(&Value::Null),
                    )?,
                    vectors: point_vectors_in(&format!("{field}.vector"), p.get("vector"))?,
                    payload: payload_owned(
                        &format!("{field}.payload"),
                        p.remove("payload").unwrap_or(Value::Null),
                    )?,
                })
            })
            .collect(),
        _ => Err(invalid("points", "missing: a list of points (or a batch)")),
    }
}

/// How many times its body's size an upsert's share of the write budget is: the body, the
/// parsed JSON (several times the text), the points converted twice, their log record.
const REST_UPSERT_SHARE: u64 = 8;

async fn upsert(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path(name): Path<String>,
    h: HeaderMap,
    body: axum::body::Body,
) -> Response {
    // The write's share is taken before the body is read, by its declared length (the most
    // a body may be without one), so many large upserts at once hold at most the budget.
    let declared = h
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(s.max_body as u64)
        .min(s.max_body as u64);
    s.clone()
        .run(
            "upsert_points",
            Access::ReadWrite,
            &h,
            peer,
            Some(&name.clone()),
            |Caller { client, .. }| async move {
                let (share, b) = s.admitted_body(declared, body).await?;
                if b.get("update_filter").is_some() {
                    return Err(unsupported("update_filter: conditional upserts"));
                }
                let mode = update_mode_in(b.get("update_mode"))?;
                let points = points_in(b)?;
                s.api
                    .upsert(client, &name, points, mode, Some(share))
                    .await?;
                Ok(update_result())
            },
        )
        .await
}

async fn retrieve(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path(name): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    s.run(
        "get_points",
        Access::ReadOnly,
        &h,
        peer,
        Some(&name),
        |_| async {
            let b = Body::parse(&body)?;
            let records = s
                .api
                .get(
                    &name,
                    keys_in("ids", b.get("ids"))?,
                    payload_sel("with_payload", b.get("with_payload"), PayloadSel::All)?,
                    vector_sel(
                        "with_vector",
                        b.get("with_vector").or(b.get("with_vectors")),
                    )?,
                )
                .await?;
            Ok(Value::Array(records.into_iter().map(record_json).collect()))
        },
    )
    .await
}

async fn retrieve_one(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path((name, id)): Path<(String, String)>,
    h: HeaderMap,
) -> Response {
    s.run(
        "get_point",
        Access::ReadOnly,
        &h,
        peer,
        Some(&name),
        |_| async {
            let key = match id.parse::<u64>() {
                Ok(n) => PointKey::num("id", n)?,
                Err(_) => PointKey::uuid("id", &id)?,
            };
            let mut records = s
                .api
                .get(&name, vec![key], PayloadSel::All, VectorSel::All)
                .await?;
            match records.pop() {
                Some(r) => Ok(record_json(r)),
                None => Err(Status::not_found(format!("no point with id {id}"))),
            }
        },
    )
    .await
}

async fn delete_points(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path(name): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    s.clone()
        .run(
            "delete_points",
            Access::ReadWrite,
            &h,
            peer,
            Some(&name.clone()),
            |Caller { client, .. }| async move {
                let b = Body::parse(&body)?;
                s.api.delete_points(client, &name, selector_in(&b)?).await?;
                Ok(update_result())
            },
        )
        .await
}

async fn set_or_overwrite(
    s: &Rest,
    name: &str,
    body: &[u8],
    overwrite: bool,
) -> Result<Value, Status> {
    let b = Body::parse(body)?;
    let payload = object_in("payload", b.get("payload"))?;
    let key = b.get("key").and_then(Value::as_str).map(str::to_string);
    s.api
        .set_payload(name, selector_in(&b)?, payload, key, overwrite)
        .await?;
    Ok(update_result())
}

async fn set_payload(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path(name): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    s.run(
        "set_payload",
        Access::ReadWrite,
        &h,
        peer,
        Some(&name),
        |_| set_or_overwrite(&s, &name, &body, false),
    )
    .await
}

async fn overwrite_payload(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path(name): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    s.run(
        "overwrite_payload",
        Access::ReadWrite,
        &h,
        peer,
        Some(&name),
        |_| set_or_overwrite(&s, &name, &body, true),
    )
    .await
}

async fn update_vectors(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path(name): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    s.clone()
        .run(
            "update_vectors",
            Access::ReadWrite,
            &h,
            peer,
            Some(&name.clone()),
            |Caller { client, .. }| async move {
                let b = Body::parse(&body)?;
                if b.get("update_filter").is_some_and(|v| !v.is_null()) {
                    return Err(unsupported("update_filter: conditional updates"));
                }
                let points = point_vectors_list(&b)?;
                s.api.update_vectors(client, &name, points).await?;
                Ok(update_result())
            },
        )
        .await
}

/// The points of an `update_vectors` body: ids and their vectors.
fn point_vectors_list(b: &Body) -> Result<Vec<PointVectorsIn>, Status> {
    let Some(Value::Array(list)) = b.get("points") else {
        return Err(invalid("points", "expected a list of points"));
    };
    let mut points = Vec::with_capacity(list.len());
    for (i, p) in list.iter().enumerate() {
        let field = format!("points[{i}]");
        let Value::Object(p) = p else {
            return Err(invalid(&field, "expected {\"id\": …, \"vector\": …}"));
        };
        let key = keys_in(&format!("{field}.id"), Some(&json!([p.get("id")])))?
            .pop()
            .ok_or_else(|| invalid(&format!("{field}.id"), "missing"))?;
        let vectors = point_vectors_in(&format!("{field}.vector"), p.get("vector"))?;
        points.push((key, vectors));
    }
    Ok(points)
}

/// One operation of a batch: `{"upsert": {…}}`, `{"delete": {…}}`, `{"set_payload": {…}}`,
/// `{"overwrite_payload": {…}}`, `{"delete_payload": {…}}`, `{"clear_payload": {…}}`,
/// `{"update_vectors": {…}}` or `{"delete_vectors": {…}}`, each body as its own endpoint's.
fn update_op_in(field: &str, v: &Value) -> Result<UpdateOp, Status> {
    let Some((kind, body)) = v
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.iter().next())
    else {
        return Err(invalid(
            field,
            "expected one operation, e.g. {\"upsert\": {…}}",
        ));
    };
    let Value::Object(body) = body else {
        return Err(invalid(
            &format!("{field}.{kind}"),
            "expected a JSON object",
        ));
    };
    let b = Body(body.clone());
    let op = match kind.as_str() {
        "upsert" => match b.get("update_filter").is_some_and(|v| !v.is_null()) {
            true => Err(unsupported("update_filter: conditional upserts")),
            false => update_mode_in(b.get("update_mode")).and_then(|mode| {
                Ok(UpdateOp::Upsert {
                    points: points_in(Body(body.clone()))?,
                    mode,
                })
            }),
        },
        "delete" => selector_in(&b).map(UpdateOp::Delete),
        "set_payload" | "overwrite_payload" => (|| {
            Ok(UpdateOp::SetPayload {
                selector: selector_in(&b)?,
                payload: object_in("payload", b.get("payload"))?,
                key: b.get("key").and_then(Value::as_str).map(str::to_string),
                overwrite: kind == "overwrite_payload",
            })
        })(),
        "delete_payload" => (|| {
            Ok(UpdateOp::DeletePayload {
                selector: selector_in(&b)?,
                keys: strings_in("keys", b.get("keys"))?,
            })
        })(),
        "clear_payload" => selector_in(&b).map(UpdateOp::ClearPayload),
        "update_vectors" => match b.get("update_filter").is_some_and(|v| !v.is_null()) {
            true => Err(unsupported("update_filter: conditional updates")),
            false => point_vectors_list(&b).map(UpdateOp::UpdateVectors),
        },
        "delete_vectors" => (|| {
            Ok(UpdateOp::DeleteVectors {
                selector: selector_in(&b)?,
                names: strings_in("vector", b.get("vector"))?,
            })
        })(),
        other => return Err(invalid(
            field,
            format!("unknown operation `{other}` (upsert, delete, set_payload, overwrite_payload, delete_payload, clear_payload, update_vectors or delete_vectors)"),
        )),
    };
    // Errors name the operation (refusals name what is refused, as everywhere).
    op.map_err(|e| match e.code() {
        tonic::Code::Unimplemented => e,
        _ => Status::new(e.code(), format!("{field}.{kind}.{}", e.message())),
    })
}

async fn update_batch(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path(name): Path<String>,
    h: HeaderMap,
    body: axum::body::Body,
) -> Response {
    // Admitted as an upsert is: its share of the write budget taken by its declared length
    // before the body is read.
    let declared = h
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(s.max_body as u64)
        .min(s.max_body as u64);
    s.clone()
        .run(
            "batch_update",
            Access::ReadWrite,
            &h,
            peer,
            Some(&name.clone()),
            |Caller { client, .. }| async move {
                let (share, b) = s.admitted_body(declared, body).await?;
                let Some(Value::Array(list)) = b.get("operations") else {
                    return Err(invalid("operations", "expected a list of operations"));
                };
                let ops = list
                    .iter()
                    .enumerate()
                    .map(|(i, v)| update_op_in(&format!("operations[{i}]"), v))
                    .collect::<Result<Vec<_>, _>>()?;
                let n = s.api.update_batch(client, &name, ops, Some(share)).await?;
                Ok(Value::Array(vec![update_result(); n]))
            },
        )
        .await
}

async fn delete_vectors(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path(name): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    s.run(
        "delete_vectors",
        Access::ReadWrite,
        &h,
        peer,
        Some(&name),
        |_| async {
            let b = Body::parse(&body)?;
            let names = strings_in("vector", b.get("vector"))?;
            s.api.delete_vectors(&name, selector_in(&b)?, names).await?;
            Ok(update_result())
        },
    )
    .await
}

async fn delete_payload(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path(name): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    s.run(
        "delete_payload",
        Access::ReadWrite,
        &h,
        peer,
        Some(&name),
        |_| async {
            let b = Body::parse(&body)?;
            let keys = strings_in("keys", b.get("keys"))?;
            s.api.delete_payload(&name, selector_in(&b)?, keys).await?;
            Ok(update_result())
        },
    )
    .await
}

async fn clear_payload(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path(name): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    s.run(
        "clear_payload",
        Access::ReadWrite,
        &h,
        peer,
        Some(&name),
        |_| async {
            let b = Body::parse(&body)?;
            s.api.clear_payload(&name, selector_in(&b)?).await?;
            Ok(update_result())
        },
    )
    .await
}

async fn create_index(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path(name): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    s.run(
        "create_field_index",
        Access::ReadWrite,
        &h,
        peer,
        Some(&name),
        |_| async {
            let b = Body::parse(&body)?;
            let Some(field) = b.get("field_name").and_then(Value::as_str) else {
                return Err(invalid("field_name", "missing"));
            };
            let kind = field_type_in(b.get("field_schema"))?;
            s.api.create_field_index(&name, field, kind).await?;
            Ok(update_result())
        },
    )
    .await
}

async fn delete_index(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path((name, field)): Path<(String, String)>,
    h: HeaderMap,
) -> Response {
    s.run(
        "delete_field_index",
        Access::ReadWrite,
        &h,
        peer,
        Some(&name),
        |_| async {
            s.api.delete_field_index(&name, &field).await?;
            Ok(update_result())
        },
    )
    .await
}

async fn search(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path(name): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    s.clone()
        .run(
            "search_points",
            Access::ReadOnly,
            &h,
            peer,
            Some(&name.clone()),
            |Caller { client, .. }| async move {
                let b = Body::parse(&body)?;
                let spec = search_in("", &b.0)?;
                let mut hits = s.api.query(client, &name, vec![spec], None).await?;
                Ok(Value::Array(
                    hits.pop()
                        .unwrap_or_default()
                        .into_iter()
                        .map(scored_json)
                        .collect(),
                ))
            },
        )
        .await
}

/// The grouping of a `…/groups` body: `group_by`, `group_size` (default 3), `with_lookup`
/// (a collection name, or `{"collection", "with_payload", "with_vectors"}`).
fn group_in(b: &Map<String, Value>) -> Result<GroupSpec, Status> {
    let group_by = match b.get("group_by") {
        Some(Value::String(k)) if !k.is_empty() => k.clone(),
        _ => return Err(invalid("group_by", "expected a payload key")),
    };
    let group_size = u64_in("group_size", b.get("group_size"), 3)? as usize;
    let with_lookup = match b.get("with_lookup") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) => Some(WithLookup {
            collection: c.clone(),
            with_payload: PayloadSel::All,
            with_vector: VectorSel::None,
        }),
        Some(Value::Object(o)) => Some(WithLookup {
            collection: match o.get("collection") {
                Some(Value::String(c)) => c.clone(),
                _ => {
                    return Err(invalid(
                        "with_lookup.collection",
                        "expected a collection name",
                    ))
                }
            },
            with_payload: payload_sel(
                "with_lookup.with_payload",
                o.get("with_payload"),
                PayloadSel::All,
            )?,
            with_vector: vector_sel(
                "with_lookup.with_vectors",
                o.get("with_vectors").or(o.get("with_vector")),
            )?,
        }),
        Some(_) => {
            return Err(invalid(
                "with_lookup",
                "expected a collection name or {\"collection\": …}",
            ))
        }
    };
    Ok(GroupSpec {
        group_by,
        group_size,
        with_lookup,
    })
}

fn groups_json(groups: Vec<Group>) -> Value {
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|g| {
            let mut o = json!({
                "id": g.id,
                "hits": g.hits.into_iter().map(scored_json).collect::<Vec<_>>(),
            });
            if let Some(l) = g.lookup {
                o["lookup"] = record_json(l);
            }
            o
        })
        .collect();
    json!({ "groups": groups })
}

async fn query_groups(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path(name): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    grouped(s, peer, name, h, body, "query_points_groups", query_in).await
}

async fn search_groups(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path(name): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    grouped(s, peer, name, h, body, "search_point_groups", search_in).await
}

/// A grouped query whose body `parse` reads (a query's or a search's), grouped as
/// [`group_in`] reads.
async fn grouped(
    s: Rest,
    peer: SocketAddr,
    name: String,
    h: HeaderMap,
    body: Bytes,
    method: &'static str,
    parse: fn(&str, &Map<String, Value>) -> Result<QuerySpec, Status>,
) -> Response {
    s.clone()
        .run(
            method,
            Access::ReadOnly,
            &h,
            peer,
            Some(&name.clone()),
            |Caller { client, scope }| async move {
                let b = Body::parse(&body)?;
                let spec = parse("", &b.0)?;
                let group = group_in(&b.0)?;
                s.reach_lookups(scope.as_deref(), std::slice::from_ref(&spec))?;
                let lookup: Vec<String> = group
                    .with_lookup
                    .iter()
                    .map(|l| l.collection.clone())
                    .collect();
                s.reach_all(scope.as_deref(), &lookup)?;
                let groups = s.api.query_groups(client, &name, spec, group, None).await?;
                Ok(groups_json(groups))
            },
        )
        .await
}

fn batch_of(b: &Body) -> Result<Vec<Map<String, Value>>, Status> {
    match b.get("searches") {
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, x)| object_in(&format!("searches[{i}]"), Some(x)))
            .collect(),
        _ => Err(invalid("searches", "missing: a list of requests")),
    }
}

async fn search_batch(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path(name): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    s.clone()
        .run(
            "search_batch_points",
            Access::ReadOnly,
            &h,
            peer,
            Some(&name.clone()),
            |Caller { client, .. }| async move {
                let b = Body::parse(&body)?;
                let specs = batch_of(&b)?
                    .iter()
                    .enumerate()
                    .map(|(i, x)| search_in(&format!("searches[{i}]."), x))
                    .collect::<Result<Vec<_>, _>>()?;
                let hits = s.api.query(client, &name, specs, None).await?;
                Ok(Value::Array(
                    hits.into_iter()
                        .map(|h| Value::Array(h.into_iter().map(scored_json).collect()))
                        .collect(),
                ))
            },
        )
        .await
}

async fn query(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path(name): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    s.clone()
        .run(
            "query_points",
            Access::ReadOnly,
            &h,
            peer,
            Some(&name.clone()),
            |Caller { client, scope }| async move {
                let b = Body::parse(&body)?;
                let spec = query_in("", &b.0)?;
                s.reach_lookups(scope.as_deref(), std::slice::from_ref(&spec))?;
                let mut hits = s.api.query(client, &name, vec![spec], None).await?;
                let points: Vec<Value> = hits
                    .pop()
                    .unwrap_or_default()
                    .into_iter()
                    .map(scored_json)
                    .collect();
                Ok(json!({ "points": points }))
            },
        )
        .await
}

async fn query_batch(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path(name): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    s.clone()
        .run(
            "query_batch_points",
            Access::ReadOnly,
            &h,
            peer,
            Some(&name.clone()),
            |Caller { client, scope }| async move {
                let b = Body::parse(&body)?;
                let specs = batch_of(&b)?
                    .iter()
                    .enumerate()
                    .map(|(i, x)| query_in(&format!("searches[{i}]."), x))
                    .collect::<Result<Vec<_>, _>>()?;
                s.reach_lookups(scope.as_deref(), &specs)?;
                let hits = s.api.query(client, &name, specs, None).await?;
                Ok(Value::Array(
                    hits.into_iter()
                        .map(|h| {
                            let points: Vec<Value> = h.into_iter().map(scored_json).collect();
                            json!({ "points": points })
                        })
                        .collect(),
                ))
            },
        )
        .await
}

async fn scroll(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path(name): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    s.run(
        "scroll_points",
        Access::ReadOnly,
        &h,
        peer,
        Some(&name),
        |_| async {
            let b = Body::parse(&body)?;
            if b.get("order_by").is_some() {
                return Err(unsupported("order_by: scrolling in payload order"));
            }
            let offset = b
                .get("offset")
                .map(|o| PointKey::from_json("offset", o))
                .transpose()?;
            let (records, next) = s
                .api
                .scroll(
                    &name,
                    from_rest("filter", b.get("filter"))?,
                    offset,
                    u64_in("limit", b.get("limit"), 10)? as usize,
                    payload_sel("with_payload", b.get("with_payload"), PayloadSel::All)?,
                    vector_sel(
                        "with_vector",
                        b.get("with_vector").or(b.get("with_vectors")),
                    )?,
                )
                .await?;
            let points: Vec<Value> = records.into_iter().map(record_json).collect();
            Ok(json!({
                "points": points,
                "next_page_offset": next.map(PointKey::to_json),
            }))
        },
    )
    .await
}

async fn count(
    State(s): State<Rest>,
    ConnectInfo(PeerAddr(peer)): Peer,
    Path(name): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    s.run(
        "count_points",
        Access::ReadOnly,
        &h,
        peer,
        Some(&name),
        |_| async {
            let b = Body::parse(&body)?;
            let count = s
                .api
                .count(&name, from_rest("filter", b.get("filter"))?)
                .await?;
            Ok(json!({ "count": count }))
        },
    )
    .await
}
