//! The `quiver.v1.Quiver` gRPC service: validates every request against the limits, runs
//! writes on blocking threads and sends searches through the collection's micro-batcher.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quiver_engine::backend::Neighbors;
use quiver_engine::Metric;
use quiver_store::segment::resolve;
use quiver_store::{CollectionMeta, IndexConfig, SearchKey, UpsertMode};
use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{check_reach, check_unscoped, in_reach};
use crate::batcher::Job;
use crate::collection::Collection;
use crate::payloads::{
    encode_payloads, field_spec, field_to_proto, parse_filter, query_filters, render,
};
use crate::proto::{self, quiver_server::Quiver};
use crate::ratelimit::{Client, Limit};
use crate::registry::Registry;
use crate::status::{from_store, invalid};
use quiver_engine::payload::{self, filter::Filter};
use quiver_store::valid_name;
use quiver_store::wal::PayloadEdit;

/// The service.
#[derive(Clone)]
pub struct QuiverService {
    registry: Arc<Registry>,
}

impl QuiverService {
    /// A service over a registry.
    pub fn new(registry: Arc<Registry>) -> Self {
        QuiverService { registry }
    }

    fn record<T>(&self, method: &str, r: Result<T, Status>) -> Result<T, Status> {
        let code = match &r {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        self.registry.metrics().request(method, code);
        r
    }

    /// Refuses a k out of range (cluster mode; a single server checks it with the memory
    /// estimate).
    fn check_k(&self, k: usize) -> Result<(), Status> {
        let max_k = self.limits().max_k;
        if k == 0 || k > max_k {
            return Err(invalid(
                "k",
                format!("{k} is out of range: it must be between 1 and {max_k}"),
            ));
        }
        Ok(())
    }

    /// Refuses a call cluster mode does not route yet.
    fn not_in_cluster(&self, call: &str) -> Result<(), Status> {
        match self.registry.cluster() {
            Some(_) => Err(Status::unimplemented(format!(
                "{call} is not available in cluster mode yet"
            ))),
            None => Ok(()),
        }
    }

    fn limits(&self) -> &crate::config::Limits {
        &self.registry.config().limits
    }

    /// Counts `n` vectors (written or searched) against the client's rate limit.
    fn take_vectors(&self, client: Client, n: usize) -> Result<(), Status> {
        self.registry
            .limiter()
            .check(client, Limit::Vectors, n, self.registry.metrics())
    }
}

/// Who sent a request (set by [`crate::auth::AuthLayer`]).
pub(crate) fn client_of<T>(req: &Request<T>) -> Client {
    req.extensions()
        .get::<Client>()
        .copied()
        .unwrap_or(Client::Unknown)
}

fn metric_from_proto(m: i32) -> Result<Metric, Status> {
    match proto::Metric::try_from(m) {
        Ok(proto::Metric::L2) => Ok(Metric::L2),
        Ok(proto::Metric::InnerProduct) => Ok(Metric::InnerProduct),
        Ok(proto::Metric::Cosine) => Ok(Metric::Cosine),
        _ => Err(invalid(
            "metric",
            "must be METRIC_L2, METRIC_INNER_PRODUCT or METRIC_COSINE",
        )),
    }
}

pub(crate) fn metric_to_proto(m: Metric) -> proto::Metric {
    match m {
        Metric::L2 => proto::Metric::L2,
        Metric::InnerProduct => proto::Metric::InnerProduct,
        Metric::Cosine => proto::Metric::Cosine,
    }
}

/// The stored raw-vector kind and default refine factor a `Refine` choice means (kind "" for
/// the server's default: f32, the vectors as written).
fn refine_from_proto(r: i32) -> Result<(String, u32), Status> {
    match proto::Refine::try_from(r) {
        Ok(proto::Refine::Unspecified) => Ok((String::new(), 0)),
        Ok(proto::Refine::None) => Ok(("f32".into(), 1)),
        Ok(proto::Refine::F16) => Ok(("f16".into(), 0)),
        Ok(proto::Refine::F32) => Ok(("f32".into(), 0)),
        Ok(proto::Refine::Codes) => Ok(("none".into(), 0)),
        Err(_) => Err(invalid("index.refine", format!("unknown value {r}"))),
    }
}

fn refine_to_proto(c: &IndexConfig) -> proto::Refine {
    match (c.refine.as_str(), c.refine_factor) {
        ("none", _) => proto::Refine::Codes,
        ("f32", 1) => proto::Refine::None,
        ("f32", _) => proto::Refine::F32,
        _ => proto::Refine::F16,
    }
}

fn index_config(p: Option<&proto::IndexParams>) -> Result<IndexConfig, Status> {
    let p = p.cloned().unwrap_or_default();
    let (refine, refine_factor) = refine_from_proto(p.refine)?;
    Ok(IndexConfig {
        nlist: p.nlist,
        pq_m: p.pq_m,
        refine,
        refine_factor,
        seed: p.seed,
        train_at: p.train_at,
    })
}

fn info(name: &str, c: &Collection) -> proto::CollectionInfo {
    let meta = c.store.meta();
    let seg = c.store.version();
    proto::CollectionInfo {
        name: name.to_string(),
        dim: meta.dim as u32,
        metric: metric_to_proto(meta.metric()) as i32,
        index: Some(index_params(&meta.index)),
        count: seg.len() as u64,
        trained: seg.quantizers.is_some(),
        memory_bytes: seg.data_bytes() as u64,
        read_only: c.store.is_read_only(),
        state: c.store.job().describe(),
        segments: seg.segments.len() as u32 + 1,
        drift: c.store.drift().ratio().unwrap_or(0.0),
        field_indexes: meta.fields.iter().map(field_to_proto).collect(),
        shard_number: 1,
        replication_factor: 1,
    }
}

/// A collection's index parameters as the API describes them.
pub(crate) fn index_params(c: &IndexConfig) -> proto::IndexParams {
    proto::IndexParams {
        nlist: c.nlist,
        pq_m: c.pq_m,
        refine: refine_to_proto(c) as i32,
        seed: c.seed,
        train_at: c.train_at,
    }
}

fn loading_info(name: &str) -> proto::CollectionInfo {
    proto::CollectionInfo {
        name: name.to_string(),
        state: "loading".into(),
        ..Default::default()
    }
}

fn failed_info(name: &str, why: &str) -> proto::CollectionInfo {
    proto::CollectionInfo {
        name: name.to_string(),
        state: format!("failed: {why}"),
        ..Default::default()
    }
}

/// Checks `values` hold whole rows of `dim` finite values (non-zero rows for cosine).
pub(crate) fn check_vectors(
    field: &str,
    values: &[f32],
    dim: usize,
    metric: Metric,
) -> Result<usize, Status> {
    if !values.len().is_multiple_of(dim) {
        return Err(invalid(
            field,
            format!(
                "{} values is not a whole number of vectors of dimension {dim}",
                values.len()
            ),
        ));
    }
    if let Some(p) = values.iter().position(|v| !v.is_finite()) {
        return Err(invalid(
            field,
            format!(
                "vector {} holds a non-finite value ({}) at component {}",
                p / dim,
                values[p],
                p % dim
            ),
        ));
    }
    if metric.normalizes() {
        if let Some(row) = values
            .chunks_exact(dim)
            .position(|r| r.iter().all(|&x| x == 0.0))
        {
            return Err(invalid(
                field,
                format!(
                    "vector {row} has zero length and cannot be normalised for the cosine metric"
                ),
            ));
        }
    }
    Ok(values.len() / dim)
}

fn check_key(
    c: &Collection,
    key: SearchKey,
    nq: usize,
    limits: &crate::config::Limits,
) -> Result<(), Status> {
    let max_k = limits.max_k;
    if key.k == 0 || key.k > max_k {
        return Err(invalid(
            "k",
            format!(
                "{} is out of range: it must be between 1 and {max_k}",
                key.k
            ),
        ));
    }
    let v = c.store.version();
    let meta = c.store.meta();
    let segments = v.all().filter(|s| !s.is_empty()).count().max(1) as u64;
    let (nq64, k) = (nq as u64, key.k as u64);
    // Working memory: each segment's candidates (slot, score) and results, the merge, the
    // queries, and (IVF) one tile's lookup tables.
    let estimate = match &v.quantizers {
        Some(q) => {
            let nlist = q.nlist();
            if key.nprobe > nlist {
                return Err(invalid(
                    "nprobe",
                    format!(
                        "{} is out of range: it must be between 1 and nlist = {nlist} (0 = default)",
                        key.nprobe
                    ),
                ));
            }
            let params = resolve(c.store.with_default_refine(key), nlist, q.params().refine);
            params.validate(q).map_err(|e| invalid("refine_factor", e))?;
            let candidates = k.saturating_mul(params.refine_factor as u64);
            let tables = nq64.min(1024) * (q.pq().m() * q.pq().ksub() * 4) as u64;
            nq64.saturating_mul(candidates.saturating_mul(16))
                .saturating_add(tables)
                .saturating_add(nq64 * k * 12 * (segments + 1))
        }
        None => nq64 * k * 12 * (segments + 1),
    }
    .saturating_add(nq64 * meta.dim as u64 * 8);
    if estimate > limits.max_request_bytes {
        return Err(from_store(quiver_store::StoreError::TooLarge {
            estimate,
            limit: limits.max_request_bytes,
        }));
    }
    Ok(())
}

/// Refuses an upsert whose shape does not fit a `dim`-dimensional collection of `metric`, or
/// that holds more than `max` points.
pub(crate) fn check_upsert_shape(
    r: &proto::UpsertRequest,
    dim: usize,
    metric: Metric,
    max: usize,
) -> Result<(), Status> {
    if r.ids.is_empty() {
        return Err(invalid("ids", "empty: at least one vector is required"));
    }
    if r.ids.len() > max {
        return Err(invalid(
            "ids",
            format!(
                "{} vectors exceed the limit of {max} per message (--max-upsert-points)",
                r.ids.len()
            ),
        ));
    }
    if r.vectors.len() != r.ids.len() * dim {
        return Err(invalid(
            "vectors",
            format!(
                "{} values for {} ids of dimension {dim} (expected {})",
                r.vectors.len(),
                r.ids.len(),
                r.ids.len() * dim
            ),
        ));
    }
    check_vectors("vectors", &r.vectors, dim, metric)?;
    if let Some(id) = r.ids.iter().find(|&&id| id > i64::MAX as u64) {
        return Err(invalid("ids", format!("{id} is above 2^63-1")));
    }
    Ok(())
}

/// The deadline a client set with `grpc-timeout`, if any.
fn deadline_of<T>(req: &Request<T>, start: Instant) -> Option<Instant> {
    start.checked_add(grpc_timeout(req)?)
}

/// The time a client gave a call with `grpc-timeout`, if any.
pub(crate) fn grpc_timeout<T>(req: &Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Some(d)
}

fn to_response(n: &Neighbors, q: usize) -> proto::SearchResponse {
    let neighbors = n
        .ids_of(q)
        .iter()
        .zip(n.distances_of(q))
        .filter(|(id, _)| **id >= 0)
        .map(|(&id, &distance)| proto::Neighbor {
            id: id as u64,
            distance,
            payload: String::new(),
        })
        .collect();
    proto::SearchResponse { neighbors }
}

/// Runs `f` on a blocking thread.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))?
}

impl QuiverService {
    async fn search_inner(
        &self,
        collection: &str,
        values: Vec<f32>,
        key: SearchKey,
        deadline: Option<Instant>,
        batch_field: Option<&str>,
        (filters, of_query): (Vec<Arc<Filter>>, Vec<u32>),
    ) -> Result<Neighbors, Status> {
        let c = self.registry.get(collection)?;
        let meta = c.store.meta();
        let field = batch_field.unwrap_or("vector");
        if values.is_empty() {
            return Err(invalid(
                field,
                "empty: at least one query vector is required",
            ));
        }
        if batch_field.is_none() && values.len() != meta.dim {
            return Err(invalid(
                "vector",
                format!(
                    "dimension mismatch: expected {}, got {}",
                    meta.dim,
                    values.len()
                ),
            ));
        }
        let nq = check_vectors(field, &values, meta.dim, meta.metric())?;
        if nq > self.limits().max_queries_per_request {
            return Err(invalid(
                field,
                format!(
                    "{nq} queries exceed the limit of {} per request",
                    self.limits().max_queries_per_request
                ),
            ));
        }
        check_key(&c, key, nq, self.limits())?;
        let (tx, rx) = oneshot::channel();
        c.submit(Job {
            queries: values,
            nq,
            key,
            enqueued: Instant::now(),
            deadline,
            reply: tx,
            filters,
            of_query,
        })?;
        let answer = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), rx).await.map_err(|_| {
                Status::deadline_exceeded("deadline passed before the search finished")
            })?,
            None => rx.await,
        };
        answer.map_err(|_| Status::unavailable("the search was dropped during shutdown"))?
    }

    /// Fills each neighbour's payload (only `keys` when given) from the collection's current
    /// version.
    fn attach_payloads(
        &self,
        collection: &str,
        results: &mut [proto::SearchResponse],
        keys: &[String],
    ) -> Result<(), Status> {
        let c = self.registry.get(collection)?;
        let v = c.store.version();
        for n in results.iter_mut().flat_map(|r| r.neighbors.iter_mut()) {
            n.payload = render(v.payload(n.id).unwrap_or_default(), keys);
        }
        Ok(())
    }

    /// Applies a payload edit to ids (a logged write); answers how many were live.
    async fn edit_payloads(
        &self,
        collection: &str,
        ids: Vec<u64>,
        edit: PayloadEdit,
    ) -> Result<Response<proto::SetPayloadResponse>, Status> {
        let c = self.registry.get(collection)?;
        if ids.is_empty() {
            return Err(invalid("ids", "empty: at least one id is required"));
        }
        let max = self.limits().max_upsert_points;
        if ids.len() > max {
            return Err(invalid(
                "ids",
                format!("{} ids exceed the limit of {max} per message", ids.len()),
            ));
        }
        let store = c.store.clone();
        let updated = self
            .registry
            .writes()
            .run(move || store.set_payload(ids, edit).map_err(from_store))
            .await?;
        Ok(Response::new(proto::SetPayloadResponse {
            updated: updated as u64,
        }))
    }

    /// A new collection's description from a create request, checked against the limits.
    pub(crate) fn write_meta(
        &self,
        r: &proto::CreateCollectionRequest,
    ) -> Result<CollectionMeta, Status> {
        if !valid_name(&r.name) {
            return Err(invalid(
                "name",
                "must be 1 to 64 characters of A-Z a-z 0-9 _ - . and not start with a dot",
            ));
        }
        if r.dim == 0 || r.dim as usize > self.limits().max_dim {
            return Err(invalid(
                "dim",
                format!(
                    "{} is out of range: it must be between 1 and {}",
                    r.dim,
                    self.limits().max_dim
                ),
            ));
        }
        let metric = metric_from_proto(r.metric)?;
        let mut index = index_config(r.index.as_ref())?;
        if index.refine.is_empty() {
            index.refine = "f32".into();
        }
        if index.seed == 0 {
            index.seed = 1234;
        }
        if index.pq_m != 0 && !r.dim.is_multiple_of(index.pq_m) {
            return Err(invalid(
                "index.pq_m",
                format!("{} does not divide dim = {}", index.pq_m, r.dim),
            ));
        }
        let mut fields: Vec<quiver_engine::payload::fields::FieldSpec> = Vec::new();
        for (i, f) in r.field_indexes.iter().enumerate() {
            let spec = field_spec(&format!("field_indexes[{i}]"), f)?;
            if fields.iter().any(|x| x.key == spec.key) {
                return Err(invalid(
                    &format!("field_indexes[{i}].key"),
                    format!("`{}` is given twice", spec.key),
                ));
            }
            fields.push(spec);
        }
        if fields.len() > quiver_store::collection::MAX_FIELD_INDEXES {
            return Err(invalid(
                "field_indexes",
                format!(
                    "{} fields exceed the limit of {}",
                    fields.len(),
                    quiver_store::collection::MAX_FIELD_INDEXES
                ),
            ));
        }
        Ok(CollectionMeta {
            name: r.name.clone(),
            dim: r.dim as usize,
            metric: metric.name().into(),
            index,
            fields,
            settings: serde_json::Value::Null,
        })
    }

    fn check_upsert(&self, c: &Collection, r: &proto::UpsertRequest) -> Result<(), Status> {
        let meta = c.store.meta();
        check_upsert_shape(r, meta.dim, meta.metric(), self.limits().max_upsert_points)
    }

    /// Writes one upsert; `admitted`: its share of the write budget, taken already (by
    /// [`crate::admission`] before the body was read).
    async fn upsert_one(
        &self,
        client: Client,
        r: proto::UpsertRequest,
        admitted: Option<crate::admission::PreAdmitted>,
    ) -> Result<u64, Status> {
        if let Some(cluster) = self.registry.cluster() {
            cluster
                .check_upsert(&r, self.limits().max_upsert_points)
                .await?;
            self.take_vectors(client, r.ids.len())?;
            let wait = r.wait;
            return cluster.upsert(r, wait, None).await;
        }
        let c = self.registry.get(&r.collection)?;
        self.check_upsert(&c, &r)?;
        let mode = match proto::UpsertMode::try_from(r.mode) {
            Ok(proto::UpsertMode::Upsert) => UpsertMode::Upsert,
            Ok(proto::UpsertMode::InsertOnly) => UpsertMode::InsertOnly,
            Ok(proto::UpsertMode::UpdateOnly) => UpsertMode::UpdateOnly,
            Err(_) => {
                return Err(invalid(
                    "mode",
                    format!("unknown upsert mode {} (0, 1 or 2)", r.mode),
                ))
            }
        };
        let payloads = encode_payloads(&r.payloads, r.ids.len())?;
        let bytes = (r.ids.len() * 8
            + r.vectors.len() * 4
            + payloads.iter().map(Vec::len).sum::<usize>()) as u64;
        let share = match admitted.and_then(|a| a.take()) {
            Some(share) => share,
            None => self.registry.write_budget().take(bytes)?,
        };
        // Rate tokens only for a write that will run (a refused one spends none).
        self.take_vectors(client, r.ids.len())?;
        let (name, metrics) = (r.collection.clone(), self.registry.metrics().clone());
        let store = c.store.clone();
        let n = self
            .registry
            .writes()
            .run(move || {
                // Held until the write ends, even when the client gave up before.
                let _share = share;
                store
                    .upsert_with_mode(r.ids, r.vectors, payloads, mode)
                    .map_err(from_store)
            })
            .await? as u64;
        metrics
            .vectors
            .with_label_values(&[&name])
            .set(c.store.version().len() as i64);
        Ok(n)
    }
}

#[tonic::async_trait]
impl Quiver for QuiverService {
    async fn create_collection(
        &self,
        req: Request<proto::CreateCollectionRequest>,
    ) -> Result<Response<proto::CollectionInfo>, Status> {
        let r = async {
            check_reach(req.extensions(), "name", &req.get_ref().name)?;
            let meta = self.write_meta(req.get_ref())?;
            let (shards, replication) = (req.get_ref().shard_number, req.get_ref().replication_factor);
            if let Some(cluster) = self.registry.cluster() {
                return Ok(Response::new(cluster.create(meta, shards, replication).await?));
            }
            if shards > 1 || replication > 1 {
                return Err(invalid(
                    if shards > 1 { "shard_number" } else { "replication_factor" },
                    "a single server holds 1 shard of 1 replica: start it in cluster mode (serve --nats) for more",
                ));
            }
            let name = meta.name.clone();
            let registry = self.registry.clone();
            let c = blocking(move || registry.create(meta)).await?;
            Ok(Response::new(info(&name, &c)))
        }
        .await;
        self.record("CreateCollection", r)
    }

    async fn drop_collection(
        &self,
        req: Request<proto::DropCollectionRequest>,
    ) -> Result<Response<proto::DropCollectionResponse>, Status> {
        let r = async {
            check_reach(req.extensions(), "name", &req.get_ref().name)?;
            match self.registry.cluster() {
                Some(cluster) => cluster.drop_collection(&req.get_ref().name).await?,
                None => self.registry.drop_collection(&req.get_ref().name).await?,
            }
            Ok(Response::new(proto::DropCollectionResponse {}))
        }
        .await;
        self.record("DropCollection", r)
    }

    async fn list_collections(
        &self,
        req: Request<proto::ListCollectionsRequest>,
    ) -> Result<Response<proto::ListCollectionsResponse>, Status> {
        let mut collections: Vec<_> = self
            .registry
            .list()
            .iter()
            .map(|(n, c)| info(n, c))
            .collect();
        if let Some(cluster) = self.registry.cluster() {
            let mut collections = cluster.list().await;
            collections.retain(|c| in_reach(req.extensions(), &c.name));
            return self.record(
                "ListCollections",
                Ok(Response::new(proto::ListCollectionsResponse {
                    collections,
                })),
            );
        }
        collections.extend(
            self.registry
                .failed()
                .iter()
                .map(|(n, w)| failed_info(n, w)),
        );
        collections.extend(self.registry.loading().iter().map(|n| loading_info(n)));
        // A scoped key lists only the collections it reaches.
        collections.retain(|c| in_reach(req.extensions(), &c.name));
        self.record(
            "ListCollections",
            Ok(Response::new(proto::ListCollectionsResponse {
                collections,
            })),
        )
    }

    async fn get_collection(
        &self,
        req: Request<proto::GetCollectionRequest>,
    ) -> Result<Response<proto::CollectionInfo>, Status> {
        let name = &req.get_ref().name;
        let r = if let Err(s) = check_reach(req.extensions(), "name", name) {
            Err(s)
        } else if let Some(cluster) = self.registry.cluster() {
            cluster.info(name).await.map(Response::new)
        } else if self.registry.is_loading(name) {
            Ok(Response::new(loading_info(name)))
        } else {
            self.registry
                .get(name)
                .map(|c| Response::new(info(name, &c)))
        };
        self.record("GetCollection", r)
    }

    async fn upsert(
        &self,
        req: Request<proto::UpsertRequest>,
    ) -> Result<Response<proto::UpsertResponse>, Status> {
        let client = client_of(&req);
        let admitted = req
            .extensions()
            .get::<crate::admission::PreAdmitted>()
            .cloned();
        let r = async {
            check_reach(req.extensions(), "collection", &req.get_ref().collection)?;
            let upserted = self.upsert_one(client, req.into_inner(), admitted).await?;
            Ok(Response::new(proto::UpsertResponse { upserted }))
        }
        .await;
        self.record("Upsert", r)
    }

    async fn upsert_stream(
        &self,
        req: Request<Streaming<proto::UpsertRequest>>,
    ) -> Result<Response<proto::UpsertResponse>, Status> {
        let client = client_of(&req);
        let r = async {
            let ext = req.extensions().clone();
            let mut stream = req.into_inner();
            let mut total = 0;
            while let Some(msg) = stream.next().await {
                let msg = msg?;
                check_reach(&ext, "collection", &msg.collection)?;
                total += self.upsert_one(client, msg, None).await?;
            }
            Ok(Response::new(proto::UpsertResponse { upserted: total }))
        }
        .await;
        self.record("UpsertStream", r)
    }

    async fn delete(
        &self,
        req: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        let r = async {
            check_reach(req.extensions(), "collection", &req.get_ref().collection)?;
            let timeout = grpc_timeout(&req);
            let r = req.into_inner();
            if let Some(cluster) = self.registry.cluster() {
                let wait = r.wait;
                let deleted = cluster.delete(r, wait, timeout).await?;
                return Ok(Response::new(proto::DeleteResponse { deleted }));
            }
            let c = self.registry.get(&r.collection)?;
            let by_filter = !r.filter.trim().is_empty();
            if by_filter && !r.ids.is_empty() {
                return Err(invalid("filter", "give ids or a filter, not both"));
            }
            if by_filter {
                parse_filter("filter", &r.filter, &c.store.field_specs())?;
            } else if r.ids.is_empty() {
                return Err(invalid(
                    "ids",
                    "empty: at least one id (or a filter) is required",
                ));
            }
            let (name, metrics) = (r.collection.clone(), self.registry.metrics().clone());
            let store = c.store.clone();
            let deleted = self
                .registry
                .writes()
                .run(move || {
                    if by_filter {
                        store.delete_filter(&r.filter).map_err(from_store)
                    } else {
                        store.delete(r.ids).map_err(from_store)
                    }
                })
                .await?;
            metrics
                .vectors
                .with_label_values(&[&name])
                .set(c.store.version().len() as i64);
            Ok(Response::new(proto::DeleteResponse {
                deleted: deleted as u64,
            }))
        }
        .await;
        self.record("Delete", r)
    }

    async fn train(
        &self,
        req: Request<proto::TrainRequest>,
    ) -> Result<Response<proto::CollectionInfo>, Status> {
        let r = async {
            check_reach(req.extensions(), "collection", &req.get_ref().collection)?;
            let timeout = grpc_timeout(&req);
            let r = req.into_inner();
            let overrides = match r.index.as_ref() {
                Some(p) => Some(index_config(Some(p))?),
                None => None,
            };
            if let Some(cluster) = self.registry.cluster() {
                let info = cluster
                    .train(&r.collection, overrides, r.background, timeout)
                    .await?;
                return Ok(Response::new(info));
            }
            let c = self.registry.get(&r.collection)?;
            c.store.start_train(overrides).map_err(from_store)?;
            if !r.background {
                let store = c.store.clone();
                blocking(move || store.wait_job().map_err(from_store)).await?;
            }
            Ok(Response::new(info(&r.collection, &c)))
        }
        .await;
        self.record("Train", r)
    }

    async fn load_index(
        &self,
        req: Request<proto::LoadIndexRequest>,
    ) -> Result<Response<proto::CollectionInfo>, Status> {
        let r = async {
            self.not_in_cluster("LoadIndex")?;
            check_unscoped(req.extensions(), "LoadIndex (it reads the server's import folder)")?;
            let r = req.into_inner();
            if !valid_name(&r.collection) {
                return Err(invalid(
                    "collection",
                    "must be 1 to 64 characters of A-Z a-z 0-9 _ - . and not start with a dot",
                ));
            }
            let Some(imports) = &self.registry.config().import_dir else {
                return Err(Status::permission_denied(
                    "LoadIndex is off: start the server with --import-dir DIR to load index files from DIR",
                ));
            };
            // Checked now, on this thread: a FIFO or a path outside the folder is refused at
            // once (the file is opened without blocking). The load reads that open file, not
            // the path again, so swapping the path afterwards changes nothing.
            let (path, file) = imports.open("path", &r.path)?;
            let registry = self.registry.clone();
            let name = r.collection.clone();
            if r.background {
                registry.load_index_in_background(&name, &path, file)?;
                return Ok(Response::new(loading_info(&r.collection)));
            }
            let c = blocking(move || registry.load_index(&name, &path, file)).await?;
            Ok(Response::new(info(&r.collection, &c)))
        }
        .await;
        self.record("LoadIndex", r)
    }

    async fn flush(
        &self,
        req: Request<proto::FlushRequest>,
    ) -> Result<Response<proto::FlushResponse>, Status> {
        let r = async {
            self.not_in_cluster("Flush")?;
            check_reach(req.extensions(), "collection", &req.get_ref().collection)?;
            let c = self.registry.get(&req.get_ref().collection)?;
            let compact = req.get_ref().compact;
            let store = c.store.clone();
            let snapshot_bytes = blocking(move || {
                if compact {
                    store.compact().map_err(from_store)?;
                }
                store.checkpoint().map_err(from_store)
            })
            .await?;
            Ok(Response::new(proto::FlushResponse { snapshot_bytes }))
        }
        .await;
        self.record("Flush", r)
    }

    async fn get(
        &self,
        req: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetResponse>, Status> {
        let r = async {
            check_reach(req.extensions(), "collection", &req.get_ref().collection)?;
            let timeout = grpc_timeout(&req);
            let r = req.into_inner();
            let max = self.limits().max_queries_per_request;
            if r.ids.len() > max {
                return Err(invalid(
                    "ids",
                    format!("{} ids exceed the limit of {max} per request", r.ids.len()),
                ));
            }
            if let Some(cluster) = self.registry.cluster() {
                return Ok(Response::new(cluster.get(r, timeout).await?));
            }
            let c = self.registry.get(&r.collection)?;
            let store = c.store.clone();
            let (with_vectors, with_payload) = (r.with_vectors, r.with_payload);
            let keys = r.payload_keys;
            let points = blocking(move || {
                let approximate = with_vectors && !store.keeps_vectors() && store.trained();
                Ok(store
                    .get_points(&r.ids)
                    .into_iter()
                    .map(|(id, v, p)| proto::Point {
                        id,
                        approximate,
                        vector: if with_vectors { v } else { Vec::new() },
                        payload: if with_payload {
                            render(&p, &keys)
                        } else {
                            String::new()
                        },
                    })
                    .collect())
            })
            .await?;
            Ok(Response::new(proto::GetResponse { points }))
        }
        .await;
        self.record("Get", r)
    }

    async fn search(
        &self,
        req: Request<proto::SearchRequest>,
    ) -> Result<Response<proto::SearchResponse>, Status> {
        let deadline = deadline_of(&req, Instant::now());
        let client = client_of(&req);
        let reach = check_reach(req.extensions(), "collection", &req.get_ref().collection);
        let r = req.into_inner();
        let key = SearchKey {
            k: r.k as usize,
            nprobe: r.nprobe as usize,
            refine_factor: r.refine_factor as usize,
        };
        let res = async {
            reach?;
            self.take_vectors(client, 1)?;
            if let Some(cluster) = self.registry.cluster() {
                self.check_k(key.k)?;
                let mut found = cluster
                    .search(
                        &r.collection,
                        r.vector,
                        key,
                        (&r.filter, &[]),
                        (r.with_payload, &r.payload_keys),
                        deadline.map(|d| d.saturating_duration_since(Instant::now())),
                    )
                    .await?;
                return Ok(Response::new(found.pop().unwrap_or_default()));
            }
            // (An unknown collection is reported by the search.)
            let fields = self
                .registry
                .get(&r.collection)
                .map(|c| c.store.field_specs())
                .unwrap_or_default();
            let filters = query_filters(&r.filter, &[], 1, &fields)?;
            let n = self
                .search_inner(&r.collection, r.vector, key, deadline, None, filters)
                .await?;
            let mut out = [to_response(&n, 0)];
            if r.with_payload {
                self.attach_payloads(&r.collection, &mut out, &r.payload_keys)?;
            }
            let [out] = out;
            Ok(Response::new(out))
        }
        .await;
        self.record("Search", res)
    }

    async fn search_batch(
        &self,
        req: Request<proto::SearchBatchRequest>,
    ) -> Result<Response<proto::SearchBatchResponse>, Status> {
        let deadline = deadline_of(&req, Instant::now());
        let client = client_of(&req);
        let reach = check_reach(req.extensions(), "collection", &req.get_ref().collection);
        let r = req.into_inner();
        let key = SearchKey {
            k: r.k as usize,
            nprobe: r.nprobe as usize,
            refine_factor: r.refine_factor as usize,
        };
        let res = async {
            reach?;
            if let Some(cluster) = self.registry.cluster() {
                self.check_k(key.k)?;
                let dim = cluster.dim_of(&r.collection).await?;
                let nq = r.vectors.len() / dim.max(1);
                if nq > self.limits().max_queries_per_request {
                    return Err(invalid(
                        "vectors",
                        format!(
                            "{nq} queries exceed the limit of {} per request",
                            self.limits().max_queries_per_request
                        ),
                    ));
                }
                self.take_vectors(client, nq)?;
                let results = cluster
                    .search(
                        &r.collection,
                        r.vectors,
                        key,
                        (&r.filter, &r.filters),
                        (r.with_payload, &r.payload_keys),
                        deadline.map(|d| d.saturating_duration_since(Instant::now())),
                    )
                    .await?;
                return Ok(Response::new(proto::SearchBatchResponse { results }));
            }
            let meta = self.registry.get(&r.collection)?.store.meta();
            let dim = meta.dim.max(1);
            self.take_vectors(client, r.vectors.len() / dim)?;
            let filters =
                query_filters(&r.filter, &r.filters, r.vectors.len() / dim, &meta.fields)?;
            let n = self
                .search_inner(
                    &r.collection,
                    r.vectors,
                    key,
                    deadline,
                    Some("vectors"),
                    filters,
                )
                .await?;
            let mut results: Vec<proto::SearchResponse> =
                (0..n.len()).map(|q| to_response(&n, q)).collect();
            if r.with_payload {
                self.attach_payloads(&r.collection, &mut results, &r.payload_keys)?;
            }
            Ok(Response::new(proto::SearchBatchResponse { results }))
        }
        .await;
        self.record("SearchBatch", res)
    }

    async fn count(
        &self,
        req: Request<proto::CountRequest>,
    ) -> Result<Response<proto::CountResponse>, Status> {
        let r = async {
            check_reach(req.extensions(), "collection", &req.get_ref().collection)?;
            let timeout = grpc_timeout(&req);
            let r = req.into_inner();
            if let Some(cluster) = self.registry.cluster() {
                let count = cluster.count(&r.collection, &r.filter, timeout).await?;
                return Ok(Response::new(proto::CountResponse { count }));
            }
            let c = self.registry.get(&r.collection)?;
            let filter = parse_filter("filter", &r.filter, &c.store.field_specs())?;
            let store = c.store.clone();
            let count = blocking(move || Ok(store.count(filter.as_ref()) as u64)).await?;
            Ok(Response::new(proto::CountResponse { count }))
        }
        .await;
        self.record("Count", r)
    }

    async fn scroll(
        &self,
        req: Request<proto::ScrollRequest>,
    ) -> Result<Response<proto::ScrollResponse>, Status> {
        let r = async {
            self.not_in_cluster("Scroll")?;
            check_reach(req.extensions(), "collection", &req.get_ref().collection)?;
            let r = req.into_inner();
            let c = self.registry.get(&r.collection)?;
            let filter = parse_filter("filter", &r.filter, &c.store.field_specs())?;
            let max = self.limits().max_queries_per_request;
            let limit = if r.limit == 0 { 10 } else { r.limit as usize };
            if limit > max {
                return Err(invalid(
                    "limit",
                    format!("{limit} exceeds the limit of {max} points per request"),
                ));
            }
            let store = c.store.clone();
            let (with_payload, with_vectors) = (r.with_payload, r.with_vectors);
            let keys = r.payload_keys;
            let offset = r.offset;
            let (points, next_offset) = blocking(move || {
                let (page, next) = store.scroll(filter.as_ref(), offset, limit);
                let ids: Vec<u64> = page.iter().map(|(id, _)| *id).collect();
                let vectors: std::collections::HashMap<u64, Vec<f32>> = if with_vectors {
                    store.get(&ids).into_iter().collect()
                } else {
                    Default::default()
                };
                let approximate = with_vectors && !store.keeps_vectors() && store.trained();
                let points = page
                    .into_iter()
                    .map(|(id, p)| proto::Point {
                        id,
                        approximate,
                        vector: vectors.get(&id).cloned().unwrap_or_default(),
                        payload: if with_payload {
                            render(&p, &keys)
                        } else {
                            String::new()
                        },
                    })
                    .collect();
                Ok((points, next))
            })
            .await?;
            Ok(Response::new(proto::ScrollResponse {
                points,
                next_offset,
            }))
        }
        .await;
        self.record("Scroll", r)
    }

    async fn set_payload(
        &self,
        req: Request<proto::SetPayloadRequest>,
    ) -> Result<Response<proto::SetPayloadResponse>, Status> {
        let r = async {
            self.not_in_cluster("SetPayload")?;
            check_reach(req.extensions(), "collection", &req.get_ref().collection)?;
            let r = req.into_inner();
            let payload = payload::encode_text(&r.payload).map_err(|e| invalid("payload", e))?;
            let edit = if r.replace {
                PayloadEdit::Replace(payload)
            } else {
                PayloadEdit::Merge(payload)
            };
            self.edit_payloads(&r.collection, r.ids, edit).await
        }
        .await;
        self.record("SetPayload", r)
    }

    async fn delete_payload(
        &self,
        req: Request<proto::DeletePayloadRequest>,
    ) -> Result<Response<proto::SetPayloadResponse>, Status> {
        let r = async {
            self.not_in_cluster("DeletePayload")?;
            check_reach(req.extensions(), "collection", &req.get_ref().collection)?;
            let r = req.into_inner();
            let edit = if r.keys.is_empty() {
                PayloadEdit::Clear
            } else {
                PayloadEdit::DeleteKeys(r.keys)
            };
            self.edit_payloads(&r.collection, r.ids, edit).await
        }
        .await;
        self.record("DeletePayload", r)
    }

    async fn create_field_index(
        &self,
        req: Request<proto::CreateFieldIndexRequest>,
    ) -> Result<Response<proto::CollectionInfo>, Status> {
        let r = async {
            self.not_in_cluster("CreateFieldIndex")?;
            check_reach(req.extensions(), "collection", &req.get_ref().collection)?;
            let r = req.into_inner();
            let c = self.registry.get(&r.collection)?;
            let Some(field) = r.field.as_ref() else {
                return Err(invalid("field", "missing"));
            };
            let spec = field_spec("field", field)?;
            let store = c.store.clone();
            blocking(move || store.create_field_index(spec).map_err(from_store)).await?;
            Ok(Response::new(info(&r.collection, &c)))
        }
        .await;
        self.record("CreateFieldIndex", r)
    }

    async fn delete_field_index(
        &self,
        req: Request<proto::DeleteFieldIndexRequest>,
    ) -> Result<Response<proto::CollectionInfo>, Status> {
        let r = async {
            self.not_in_cluster("DeleteFieldIndex")?;
            check_reach(req.extensions(), "collection", &req.get_ref().collection)?;
            let r = req.into_inner();
            let c = self.registry.get(&r.collection)?;
            if r.key.is_empty() {
                return Err(invalid("key", "empty"));
            }
            let store = c.store.clone();
            let key = r.key.clone();
            blocking(move || store.delete_field_index(&key).map_err(from_store)).await?;
            Ok(Response::new(info(&r.collection, &c)))
        }
        .await;
        self.record("DeleteFieldIndex", r)
    }
}
