//! The `quiver.v1.Quiver` gRPC service: Quiver's native front end. Each call converts its
//! protobuf request into the internal request layer's ([`crate::requests`]), whose
//! [`Router`] serves it (from this server's collections, or through the cluster), and the
//! answer back; access scopes and per-call metrics are checked and recorded here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quiver_engine::payload;
use quiver_engine::Metric;
use quiver_store::valid_name;
use quiver_store::wal::PayloadEdit;
use quiver_store::{CollectionMeta, IndexConfig, UpsertMode};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{check_reach, check_unscoped, in_reach};
use crate::payloads::{encode_payloads, field_spec, field_to_proto, render};
use crate::proto::{self, quiver_server::Quiver};
use crate::ratelimit::Client;
use crate::registry::Registry;
use crate::requests::local::{blocking, state_of};
use crate::requests::{
    check_name_and_dim, collection_meta, Caller, CollectionState, Count, CreateCollection, Delete,
    DeleteTarget, EditPayload, Get, Probes, QueryFilters, Router, Scroll, Search, Train, Upsert,
};
use crate::status::{from_store, invalid};

/// The service.
#[derive(Clone)]
pub struct QuiverService {
    registry: Arc<Registry>,
    router: Router,
}

impl QuiverService {
    /// A service over a registry.
    pub fn new(registry: Arc<Registry>) -> Self {
        QuiverService {
            router: Router::new(registry.clone()),
            registry,
        }
    }

    fn record<T>(&self, method: &str, r: Result<T, Status>) -> Result<T, Status> {
        let code = match &r {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        self.registry.metrics().request(method, code);
        r
    }

    fn limits(&self) -> &crate::config::Limits {
        &self.registry.config().limits
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

/// A collection's state as the native API describes it.
fn info(s: CollectionState) -> proto::CollectionInfo {
    let Some(meta) = &s.meta else {
        return proto::CollectionInfo {
            name: s.name,
            state: s.status.describe(),
            ..Default::default()
        };
    };
    proto::CollectionInfo {
        dim: meta.dim as u32,
        metric: metric_to_proto(meta.metric()) as i32,
        index: Some(index_params(&s.index)),
        count: s.count,
        trained: s.trained,
        memory_bytes: s.memory_bytes,
        read_only: s.read_only,
        state: s.status.describe(),
        segments: s.segments,
        drift: s.drift,
        field_indexes: meta.fields.iter().map(field_to_proto).collect(),
        shard_number: s.shards,
        replication_factor: s.replication,
        name: s.name,
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

/// Who asks and until when, from a request's extensions and `grpc-timeout`.
fn caller_of<T>(req: &Request<T>) -> Caller {
    Caller {
        client: client_of(req),
        deadline: deadline_of(req, Instant::now()),
    }
}

/// An upsert mode from the wire.
fn upsert_mode(mode: i32) -> Result<UpsertMode, Status> {
    match proto::UpsertMode::try_from(mode) {
        Ok(proto::UpsertMode::Upsert) => Ok(UpsertMode::Upsert),
        Ok(proto::UpsertMode::InsertOnly) => Ok(UpsertMode::InsertOnly),
        Ok(proto::UpsertMode::UpdateOnly) => Ok(UpsertMode::UpdateOnly),
        Err(_) => Err(invalid(
            "mode",
            format!("unknown upsert mode {mode} (0, 1 or 2)"),
        )),
    }
}

impl QuiverService {
    /// A new collection's description from a create request, checked against the limits.
    pub(crate) fn write_meta(
        &self,
        r: &proto::CreateCollectionRequest,
    ) -> Result<CollectionMeta, Status> {
        check_name_and_dim(self.limits(), &r.name, u64::from(r.dim))?;
        let metric = metric_from_proto(r.metric)?;
        let index = index_config(r.index.as_ref())?;
        let mut fields = Vec::with_capacity(r.field_indexes.len());
        for (i, f) in r.field_indexes.iter().enumerate() {
            fields.push(field_spec(&format!("field_indexes[{i}]"), f)?);
        }
        collection_meta(
            self.limits(),
            &r.name,
            u64::from(r.dim),
            metric,
            index,
            fields,
        )
    }

    /// Writes one upsert message; `admitted`: its share of the write budget, taken already
    /// (by [`crate::admission`] before the body was read).
    async fn upsert_one(
        &self,
        caller: &Caller,
        r: proto::UpsertRequest,
        admitted: Option<crate::admission::PreAdmitted>,
    ) -> Result<u64, Status> {
        let mode = upsert_mode(r.mode)?;
        let payloads = encode_payloads(&r.payloads, r.ids.len())?;
        let upsert = Upsert {
            collection: r.collection,
            ids: r.ids,
            vectors: r.vectors,
            payloads,
            mode,
            wait: r.wait,
        };
        self.router.upsert(upsert, caller, admitted).await
    }

    /// A payload edit of ids (a logged write); answers how many were live.
    async fn edit_payloads(
        &self,
        caller: &Caller,
        collection: String,
        ids: Vec<u64>,
        edit: PayloadEdit,
    ) -> Result<Response<proto::SetPayloadResponse>, Status> {
        let edit = EditPayload {
            collection,
            ids,
            edit,
            wait: false,
        };
        let updated = self.router.edit_payload(edit, caller).await?;
        Ok(Response::new(proto::SetPayloadResponse { updated }))
    }

    /// Searches and answers each query's neighbours (with their payloads when asked).
    async fn search_and_render(
        &self,
        search: Search,
        caller: &Caller,
        payload_keys: &[String],
    ) -> Result<Vec<proto::SearchResponse>, Status> {
        let with_payload = search.with_payload;
        let found = self.router.search(search, caller).await?;
        Ok(found
            .into_iter()
            .map(|hits| proto::SearchResponse {
                neighbors: hits
                    .into_iter()
                    .map(|h| proto::Neighbor {
                        id: h.id,
                        distance: h.distance,
                        payload: if with_payload {
                            render(&h.payload, payload_keys)
                        } else {
                            String::new()
                        },
                    })
                    .collect(),
            })
            .collect())
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
            let r = req.get_ref();
            let create = CreateCollection {
                meta,
                shards: r.shard_number,
                replication: r.replication_factor,
            };
            Ok(Response::new(info(self.router.create(create).await?)))
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
            self.router.drop_collection(&req.get_ref().name).await?;
            Ok(Response::new(proto::DropCollectionResponse {}))
        }
        .await;
        self.record("DropCollection", r)
    }

    async fn list_collections(
        &self,
        req: Request<proto::ListCollectionsRequest>,
    ) -> Result<Response<proto::ListCollectionsResponse>, Status> {
        let mut collections: Vec<proto::CollectionInfo> =
            self.router.list().await.into_iter().map(info).collect();
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
        let r = async {
            let name = &req.get_ref().name;
            check_reach(req.extensions(), "name", name)?;
            let state = self.router.describe(name, &caller_of(&req)).await?;
            Ok(Response::new(info(state)))
        }
        .await;
        self.record("GetCollection", r)
    }

    async fn upsert(
        &self,
        req: Request<proto::UpsertRequest>,
    ) -> Result<Response<proto::UpsertResponse>, Status> {
        let caller = caller_of(&req);
        let admitted = req
            .extensions()
            .get::<crate::admission::PreAdmitted>()
            .cloned();
        let r = async {
            check_reach(req.extensions(), "collection", &req.get_ref().collection)?;
            let upserted = self.upsert_one(&caller, req.into_inner(), admitted).await?;
            Ok(Response::new(proto::UpsertResponse { upserted }))
        }
        .await;
        self.record("Upsert", r)
    }

    async fn upsert_stream(
        &self,
        req: Request<Streaming<proto::UpsertRequest>>,
    ) -> Result<Response<proto::UpsertResponse>, Status> {
        let caller = caller_of(&req);
        let r = async {
            let ext = req.extensions().clone();
            let mut stream = req.into_inner();
            let mut total = 0;
            while let Some(msg) = stream.next().await {
                let msg = msg?;
                check_reach(&ext, "collection", &msg.collection)?;
                total += self.upsert_one(&caller, msg, None).await?;
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
            let caller = caller_of(&req);
            let r = req.into_inner();
            let by_filter = !r.filter.trim().is_empty();
            if by_filter && !r.ids.is_empty() {
                return Err(invalid("filter", "give ids or a filter, not both"));
            }
            let delete = Delete {
                collection: r.collection,
                target: if by_filter {
                    DeleteTarget::Filter(r.filter)
                } else {
                    DeleteTarget::Ids(r.ids)
                },
                wait: r.wait,
            };
            let deleted = self.router.delete(delete, &caller).await?;
            Ok(Response::new(proto::DeleteResponse { deleted }))
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
            let caller = caller_of(&req);
            let r = req.into_inner();
            let overrides = match r.index.as_ref() {
                Some(p) => Some(index_config(Some(p))?),
                None => None,
            };
            let train = Train {
                collection: r.collection,
                overrides,
                background: r.background,
            };
            Ok(Response::new(info(
                self.router.train(train, &caller).await?,
            )))
        }
        .await;
        self.record("Train", r)
    }

    async fn load_index(
        &self,
        req: Request<proto::LoadIndexRequest>,
    ) -> Result<Response<proto::CollectionInfo>, Status> {
        let r = async {
            self.router.not_in_cluster("LoadIndex")?;
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
                return Ok(Response::new(info(CollectionState::unopened(
                    &r.collection,
                    crate::requests::CollectionStatus::Loading,
                ))));
            }
            let c = blocking(move || registry.load_index(&name, &path, file)).await?;
            Ok(Response::new(info(state_of(&r.collection, &c))))
        }
        .await;
        self.record("LoadIndex", r)
    }

    async fn flush(
        &self,
        req: Request<proto::FlushRequest>,
    ) -> Result<Response<proto::FlushResponse>, Status> {
        let r = async {
            self.router.not_in_cluster("Flush")?;
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
            let caller = caller_of(&req);
            let r = req.into_inner();
            let (with_vectors, with_payload) = (r.with_vectors, r.with_payload);
            let approximate = with_vectors && self.router.approximate_vectors(&r.collection).await;
            let get = Get {
                collection: r.collection,
                ids: r.ids,
                with_vectors,
            };
            let keys = r.payload_keys;
            let points = self.router.get(get, &caller).await?;
            let render_all = move || {
                points
                    .into_iter()
                    .map(|p| proto::Point {
                        id: p.id,
                        approximate,
                        vector: p.vector,
                        payload: if with_payload {
                            render(&p.payload, &keys)
                        } else {
                            String::new()
                        },
                    })
                    .collect()
            };
            // Rendering payloads parses them: off the async threads.
            let points = if with_payload {
                blocking(move || Ok(render_all())).await?
            } else {
                render_all()
            };
            Ok(Response::new(proto::GetResponse { points }))
        }
        .await;
        self.record("Get", r)
    }

    async fn search(
        &self,
        req: Request<proto::SearchRequest>,
    ) -> Result<Response<proto::SearchResponse>, Status> {
        let caller = caller_of(&req);
        let reach = check_reach(req.extensions(), "collection", &req.get_ref().collection);
        let r = req.into_inner();
        let res = async {
            reach?;
            let search = Search {
                collection: r.collection,
                queries: r.vector,
                batch_field: None,
                k: r.k as usize,
                probes: probes(r.nprobe),
                refine_factor: r.refine_factor as usize,
                filters: QueryFilters::One(r.filter),
                with_payload: r.with_payload,
            };
            let mut found = self
                .search_and_render(search, &caller, &r.payload_keys)
                .await?;
            Ok(Response::new(found.pop().unwrap_or_default()))
        }
        .await;
        self.record("Search", res)
    }

    async fn search_batch(
        &self,
        req: Request<proto::SearchBatchRequest>,
    ) -> Result<Response<proto::SearchBatchResponse>, Status> {
        let caller = caller_of(&req);
        let reach = check_reach(req.extensions(), "collection", &req.get_ref().collection);
        let r = req.into_inner();
        let res = async {
            reach?;
            if !r.filters.is_empty() && !r.filter.is_empty() {
                return Err(invalid("filters", "give filter or filters, not both"));
            }
            let search = Search {
                collection: r.collection,
                queries: r.vectors,
                batch_field: Some("vectors"),
                k: r.k as usize,
                probes: probes(r.nprobe),
                refine_factor: r.refine_factor as usize,
                filters: if r.filters.is_empty() {
                    QueryFilters::One(r.filter)
                } else {
                    QueryFilters::PerQuery(r.filters)
                },
                with_payload: r.with_payload,
            };
            let results = self
                .search_and_render(search, &caller, &r.payload_keys)
                .await?;
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
            let caller = caller_of(&req);
            let r = req.into_inner();
            let count = Count {
                collection: r.collection,
                filter: r.filter,
            };
            let count = self.router.count(count, &caller).await?;
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
            check_reach(req.extensions(), "collection", &req.get_ref().collection)?;
            let caller = caller_of(&req);
            let r = req.into_inner();
            let max = self.limits().max_queries_per_request;
            let limit = if r.limit == 0 { 10 } else { r.limit as usize };
            if limit > max {
                return Err(invalid(
                    "limit",
                    format!("{limit} exceeds the limit of {max} points per request"),
                ));
            }
            let (with_payload, with_vectors) = (r.with_payload, r.with_vectors);
            let approximate = with_vectors && self.router.approximate_vectors(&r.collection).await;
            let scroll = Scroll {
                collection: r.collection,
                filter: r.filter,
                from: r.offset,
                limit,
                with_vectors,
            };
            let page = self.router.scroll(scroll, &caller).await?;
            let keys = r.payload_keys;
            let points = blocking(move || {
                Ok(page
                    .points
                    .into_iter()
                    .map(|p| proto::Point {
                        id: p.id,
                        approximate,
                        vector: p.vector,
                        payload: if with_payload {
                            render(&p.payload, &keys)
                        } else {
                            String::new()
                        },
                    })
                    .collect())
            })
            .await?;
            Ok(Response::new(proto::ScrollResponse {
                points,
                next_offset: page.next,
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
            check_reach(req.extensions(), "collection", &req.get_ref().collection)?;
            let caller = caller_of(&req);
            let r = req.into_inner();
            let payload = payload::encode_text(&r.payload).map_err(|e| invalid("payload", e))?;
            let edit = if r.replace {
                PayloadEdit::Replace(payload)
            } else {
                PayloadEdit::Merge(payload)
            };
            self.edit_payloads(&caller, r.collection, r.ids, edit).await
        }
        .await;
        self.record("SetPayload", r)
    }

    async fn delete_payload(
        &self,
        req: Request<proto::DeletePayloadRequest>,
    ) -> Result<Response<proto::SetPayloadResponse>, Status> {
        let r = async {
            check_reach(req.extensions(), "collection", &req.get_ref().collection)?;
            let caller = caller_of(&req);
            let r = req.into_inner();
            let edit = if r.keys.is_empty() {
                PayloadEdit::Clear
            } else {
                PayloadEdit::DeleteKeys(r.keys)
            };
            self.edit_payloads(&caller, r.collection, r.ids, edit).await
        }
        .await;
        self.record("DeletePayload", r)
    }

    async fn create_field_index(
        &self,
        req: Request<proto::CreateFieldIndexRequest>,
    ) -> Result<Response<proto::CollectionInfo>, Status> {
        let r = async {
            check_reach(req.extensions(), "collection", &req.get_ref().collection)?;
            let caller = caller_of(&req);
            let r = req.into_inner();
            let Some(field) = r.field.as_ref() else {
                return Err(invalid("field", "missing"));
            };
            let spec = field_spec("field", field)?;
            let state = self
                .router
                .create_field_index(&r.collection, spec, &caller)
                .await?;
            Ok(Response::new(info(state)))
        }
        .await;
        self.record("CreateFieldIndex", r)
    }

    async fn delete_field_index(
        &self,
        req: Request<proto::DeleteFieldIndexRequest>,
    ) -> Result<Response<proto::CollectionInfo>, Status> {
        let r = async {
            check_reach(req.extensions(), "collection", &req.get_ref().collection)?;
            let caller = caller_of(&req);
            let r = req.into_inner();
            let state = self
                .router
                .delete_field_index(&r.collection, &r.key, &caller)
                .await?;
            Ok(Response::new(info(state)))
        }
        .await;
        self.record("DeleteFieldIndex", r)
    }
}

/// The lists a native search visits (0: the collection's default).
fn probes(nprobe: u32) -> Probes {
    match nprobe {
        0 => Probes::Default,
        n => Probes::Lists(n as usize),
    }
}
