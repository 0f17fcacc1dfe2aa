//! Qdrant's gRPC services on Quiver (the port Qdrant serves gRPC on: 6334): each call decodes
//! its message into [`super::api`]'s terms, runs the operation and encodes the answer in
//! Qdrant's messages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quiver_engine::payload::fields::FieldType;
use quiver_store::UpsertMode;
use serde_json::{Map, Value};
use tonic::{Request, Response, Status};

use super::api::{
    AliasAction, ContextPair, CreateSpec, Datatype, DatatypeName, Distance, Example, Group,
    GroupSpec, InfoView, LookupFrom, Mmr, PayloadSel, PointIn, PointVectorsIn, QdrantApi,
    QuerySpec, QueryVector, Record, Scored, Selector, Strategy, UpdateOp, VectorForm, WithLookup,
};
use super::filter::{from_grpc, point_id, point_key};
use super::fusion::Fusion;
use super::proto::{
    self, collections_server::Collections, points_server::Points, qdrant_server::Qdrant,
};
use super::unsupported;
use super::values;
use super::vectors::SpaceParams;
use super::vectors::{SparseParams, VectorIn, VectorOut, VectorSel, VectorsOut};
use crate::auth::{check_reach, in_reach};
use crate::registry::Registry;
use crate::service::{client_of, grpc_timeout};
use crate::status::invalid;
use quiver_engine::sparse::SparseVector;

/// The three services, over one set of operations.
#[derive(Clone)]
pub struct QdrantGrpc {
    api: QdrantApi,
    registry: Arc<Registry>,
}

impl QdrantGrpc {
    /// The services over `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        QdrantGrpc {
            api: QdrantApi::new(registry.clone()),
            registry,
        }
    }

    /// Refuses a key whose scope does not reach `collection`, nor the collection it stands
    /// for when it is an alias.
    fn reach<T>(&self, req: &Request<T>, collection: &str) -> Result<(), Status> {
        check_reach(req.extensions(), "collection_name", collection)?;
        if let Some(target) = self
            .api
            .collection_of(collection)
            .filter(|t| t != collection)
        {
            check_reach(req.extensions(), "collection_name", &target)?;
        }
        Ok(())
    }

    /// Refuses queries reading points (`lookup_from`) from a collection the call's key does
    /// not reach (an alias: nor its collection).
    fn reach_lookups<T>(&self, req: &Request<T>, specs: &[QuerySpec]) -> Result<(), Status> {
        let mut names = Vec::new();
        for q in specs {
            super::api::lookup_collections(q, &mut names);
        }
        names
            .iter()
            .try_for_each(|n| self.reach(req, n))
            .map_err(|s| rename_status(s, "collection_name", "lookup_from.collection_name"))
    }

    fn record<T>(&self, method: &str, r: Result<T, Status>) -> Result<T, Status> {
        let code = match &r {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        self.registry.metrics().request(method, code);
        r
    }
}

/// `s` with its message's field `from` named `to`.
fn rename_status(s: Status, from: &str, to: &str) -> Status {
    match s.message().strip_prefix(from) {
        Some(rest) => Status::new(s.code(), format!("{to}{rest}")),
        None => s,
    }
}

/// The shorter of the call's `grpc-timeout` and a request's `timeout` field (seconds).
fn timeout_of<T>(req: &Request<T>, field: Option<u64>) -> Option<Duration> {
    let field = field.filter(|&s| s > 0).map(Duration::from_secs);
    match (grpc_timeout(req), field) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn secs(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

fn done(wait: Option<bool>) -> proto::PointsOperationResponse {
    proto::PointsOperationResponse {
        result: Some(proto::UpdateResult {
            operation_id: Some(0),
            // Every write is durable and visible when answered; Qdrant answers "acknowledged"
            // to a call that did not ask to wait.
            status: if wait == Some(false) {
                proto::UpdateStatus::Acknowledged
            } else {
                proto::UpdateStatus::Completed
            } as i32,
        }),
        time: 0.0,
    }
}

fn timed(mut r: proto::PointsOperationResponse, start: Instant) -> proto::PointsOperationResponse {
    r.time = secs(start);
    r
}

// ---- decoding ----

fn payload_sel(s: Option<&proto::WithPayloadSelector>, default: PayloadSel) -> PayloadSel {
    use proto::with_payload_selector::SelectorOptions;
    match s.and_then(|s| s.selector_options.as_ref()) {
        None => default,
        Some(SelectorOptions::Enable(true)) => PayloadSel::All,
        Some(SelectorOptions::Enable(false)) => PayloadSel::None,
        Some(SelectorOptions::Include(i)) => PayloadSel::Include(i.fields.clone()),
        Some(SelectorOptions::Exclude(e)) => PayloadSel::Exclude(e.fields.clone()),
    }
}

fn vector_sel(s: Option<&proto::WithVectorsSelector>) -> VectorSel {
    use proto::with_vectors_selector::SelectorOptions;
    match s.and_then(|s| s.selector_options.as_ref()) {
        None | Some(SelectorOptions::Enable(false)) => VectorSel::None,
        Some(SelectorOptions::Enable(true)) => VectorSel::All,
        Some(SelectorOptions::Include(names)) => VectorSel::Only(names.names.clone()),
    }
}

fn sparse(field: &str, indices: &[u32], values: &[f32]) -> Result<SparseVector, Status> {
    SparseVector::new(indices.to_vec(), values.to_vec()).map_err(|e| invalid(field, e))
}

fn vector_in(field: &str, v: &proto::Vector) -> Result<VectorIn, Status> {
    use proto::vector::Vector as V;
    match &v.vector {
        Some(V::Dense(d)) => Ok(VectorIn::Dense(d.data.clone())),
        Some(V::Sparse(sv)) => Ok(VectorIn::Sparse(sparse(field, &sv.indices, &sv.values)?)),
        Some(V::MultiDense(m)) => Ok(VectorIn::Multi(multi(m))),
        Some(V::Document(_) | V::Image(_) | V::Object(_)) => Err(unsupported(&format!(
            "{field}: server-side inference (documents, images, objects)"
        ))),
        None => match (&v.indices, v.vectors_count) {
            (Some(i), _) => Ok(VectorIn::Sparse(sparse(field, &i.data, &v.data)?)),
            // The older form of a multi-vector: its values one after the other.
            (None, Some(n)) if n > 1 => {
                let n = n as usize;
                if v.data.len() < n || !v.data.len().is_multiple_of(n) {
                    return Err(invalid(
                        field,
                        format!(
                            "{} values do not make {n} vectors of one size",
                            v.data.len()
                        ),
                    ));
                }
                Ok(VectorIn::Multi(
                    v.data
                        .chunks(v.data.len() / n)
                        .map(<[f32]>::to_vec)
                        .collect(),
                ))
            }
            (None, _) => Ok(VectorIn::Dense(v.data.clone())),
        },
    }
}

/// A multi-vector's vectors.
fn multi(m: &proto::MultiDenseVector) -> Vec<Vec<f32>> {
    m.vectors.iter().map(|v| v.data.clone()).collect()
}

fn point_vectors(
    field: &str,
    v: Option<&proto::Vectors>,
) -> Result<Vec<(String, VectorIn)>, Status> {
    use proto::vectors::VectorsOptions;
    match v.and_then(|v| v.vectors_options.as_ref()) {
        None => Err(invalid(field, "missing: every point needs a vector")),
        Some(VectorsOptions::Vector(v)) => Ok(vec![(String::new(), vector_in(field, v)?)]),
        Some(VectorsOptions::Vectors(named)) => {
            let mut out: Vec<(String, VectorIn)> = named
                .vectors
                .iter()
                .map(|(n, v)| Ok((n.clone(), vector_in(&format!("{field}.{n}"), v)?)))
                .collect::<Result<_, Status>>()?;
            out.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(out)
        }
    }
}

/// An upsert's `update_mode`.
fn upsert_mode(mode: Option<i32>) -> Result<UpsertMode, Status> {
    match mode.unwrap_or(0) {
        0 => Ok(UpsertMode::Upsert),
        1 => Ok(UpsertMode::InsertOnly),
        2 => Ok(UpsertMode::UpdateOnly),
        m => Err(invalid(
            "update_mode",
            format!("unknown mode {m} (0 upsert, 1 insert only, 2 update only)"),
        )),
    }
}

/// The points of an upsert (`field`: the list's name in errors).
fn points_in(field: &str, points: &[proto::PointStruct]) -> Result<Vec<PointIn>, Status> {
    points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let field = format!("{field}[{i}]");
            let id =
                p.id.as_ref()
                    .ok_or_else(|| invalid(&format!("{field}.id"), "missing"))?;
            Ok(PointIn {
                key: point_key(&format!("{field}.id"), id)?,
                vectors: point_vectors(&format!("{field}.vectors"), p.vectors.as_ref())?,
                payload: values::map_to_json(&format!("{field}.payload"), &p.payload)?,
            })
        })
        .collect()
}

/// The points of a vector update.
fn point_vectors_in(
    field: &str,
    points: &[proto::PointVectors],
) -> Result<Vec<PointVectorsIn>, Status> {
    points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let field = format!("{field}[{i}]");
            let id =
                p.id.as_ref()
                    .ok_or_else(|| invalid(&format!("{field}.id"), "missing"))?;
            Ok((
                point_key(&format!("{field}.id"), id)?,
                point_vectors(&format!("{field}.vectors"), p.vectors.as_ref())?,
            ))
        })
        .collect()
}

/// One operation of a batch.
fn update_op(field: &str, op: &proto::PointsUpdateOperation) -> Result<UpdateOp, Status> {
    use proto::points_update_operation::Operation as O;
    let at = |name: &str| format!("{field}.{name}");
    Ok(match &op.operation {
        None => return Err(invalid(field, "empty operation")),
        Some(O::Upsert(u)) => {
            if u.update_filter.is_some() {
                return Err(unsupported("update_filter: conditional upserts"));
            }
            UpdateOp::Upsert {
                points: points_in(&at("upsert.points"), &u.points)?,
                mode: upsert_mode(u.update_mode)?,
            }
        }
        Some(O::DeleteDeprecated(sel)) => UpdateOp::Delete(selector(&at("delete"), Some(sel))?),
        Some(O::DeletePoints(d)) => {
            UpdateOp::Delete(selector(&at("delete_points.points"), d.points.as_ref())?)
        }
        Some(O::SetPayload(p)) => UpdateOp::SetPayload {
            selector: selector(
                &at("set_payload.points_selector"),
                p.points_selector.as_ref(),
            )?,
            payload: values::map_to_json(&at("set_payload.payload"), &p.payload)?,
            key: p.key.clone(),
            overwrite: false,
        },
        Some(O::OverwritePayload(p)) => UpdateOp::SetPayload {
            selector: selector(
                &at("overwrite_payload.points_selector"),
                p.points_selector.as_ref(),
            )?,
            payload: values::map_to_json(&at("overwrite_payload.payload"), &p.payload)?,
            key: p.key.clone(),
            overwrite: true,
        },
        Some(O::DeletePayload(p)) => UpdateOp::DeletePayload {
            selector: selector(
                &at("delete_payload.points_selector"),
                p.points_selector.as_ref(),
            )?,
            keys: p.keys.clone(),
        },
        Some(O::ClearPayloadDeprecated(sel)) => {
            UpdateOp::ClearPayload(selector(&at("clear_payload"), Some(sel))?)
        }
        Some(O::ClearPayload(c)) => {
            UpdateOp::ClearPayload(selector(&at("clear_payload.points"), c.points.as_ref())?)
        }
        Some(O::UpdateVectors(u)) => {
            if u.update_filter.is_some() {
                return Err(unsupported("update_filter: conditional updates"));
            }
            UpdateOp::UpdateVectors(point_vectors_in(&at("update_vectors.points"), &u.points)?)
        }
        Some(O::DeleteVectors(d)) => UpdateOp::DeleteVectors {
            selector: selector(
                &at("delete_vectors.points_selector"),
                d.points_selector.as_ref(),
            )?,
            names: d
                .vectors
                .as_ref()
                .map(|v| v.names.clone())
                .unwrap_or_default(),
        },
    })
}

fn selector(field: &str, s: Option<&proto::PointsSelector>) -> Result<Selector, Status> {
    use proto::points_selector::PointsSelectorOneOf;
    match s.and_then(|s| s.points_selector_one_of.as_ref()) {
        None => Err(invalid(field, "missing: give point ids or a filter")),
        Some(PointsSelectorOneOf::Points(list)) => Ok(Selector::Ids(
            list.ids
                .iter()
                .enumerate()
                .map(|(i, id)| point_key(&format!("{field}.ids[{i}]"), id))
                .collect::<Result<_, _>>()?,
        )),
        Some(PointsSelectorOneOf::Filter(f)) => {
            match from_grpc(&format!("{field}.filter"), Some(f))? {
                Some(text) => Ok(Selector::Filter(text)),
                // An empty filter selects every point.
                None => Ok(Selector::Filter("{}".into())),
            }
        }
    }
}

fn field_type(t: Option<i32>) -> Result<FieldType, Status> {
    match proto::FieldType::try_from(t.unwrap_or(0)) {
        Ok(proto::FieldType::Keyword) => Ok(FieldType::Keyword),
        Ok(proto::FieldType::Integer) => Ok(FieldType::Integer),
        Ok(proto::FieldType::Float) => Ok(FieldType::Float),
        Ok(proto::FieldType::Bool) => Ok(FieldType::Bool),
        Ok(other) => Err(unsupported(&format!(
            "field_type: {} field indexes",
            other.as_str_name()
        ))),
        Err(_) => Err(invalid("field_type", "unknown value")),
    }
}

fn distance(d: i32) -> Result<Distance, Status> {
    match proto::Distance::try_from(d) {
        Ok(proto::Distance::Cosine) => Ok(Distance::Cosine),
        Ok(proto::Distance::Euclid) => Ok(Distance::Euclid),
        Ok(proto::Distance::Dot) => Ok(Distance::Dot),
        Ok(proto::Distance::Manhattan) => Err(unsupported(
            "vectors_config.params.distance: the Manhattan distance",
        )),
        _ => Err(invalid(
            "vectors_config.params.distance",
            "must be Cosine, Euclid or Dot",
        )),
    }
}

fn put(o: &mut Map<String, Value>, key: &str, v: Option<impl Into<Value>>) {
    if let Some(v) = v {
        o.insert(key.into(), v.into());
    }
}

fn hnsw_json(h: &proto::HnswConfigDiff) -> Value {
    let mut o = Map::new();
    put(&mut o, "m", h.m);
    put(&mut o, "ef_construct", h.ef_construct);
    put(&mut o, "full_scan_threshold", h.full_scan_threshold);
    put(&mut o, "max_indexing_threads", h.max_indexing_threads);
    put(&mut o, "on_disk", h.on_disk);
    put(&mut o, "payload_m", h.payload_m);
    Value::Object(o)
}

fn wal_json(w: &proto::WalConfigDiff) -> Value {
    let mut o = Map::new();
    put(&mut o, "wal_capacity_mb", w.wal_capacity_mb);
    put(&mut o, "wal_segments_ahead", w.wal_segments_ahead);
    put(&mut o, "wal_retain_closed", w.wal_retain_closed);
    Value::Object(o)
}

fn optimizers_json(c: &proto::OptimizersConfigDiff) -> Result<Value, Status> {
    let mut o = Map::new();
    if let Some(t) = c.deleted_threshold {
        let n = serde_json::Number::from_f64(t)
            .ok_or_else(|| invalid("optimizers_config.deleted_threshold", "not a finite number"))?;
        o.insert("deleted_threshold".into(), Value::Number(n));
    }
    put(
        &mut o,
        "vacuum_min_vector_number",
        c.vacuum_min_vector_number,
    );
    put(&mut o, "default_segment_number", c.default_segment_number);
    put(&mut o, "max_segment_size", c.max_segment_size);
    put(&mut o, "memmap_threshold", c.memmap_threshold);
    put(&mut o, "indexing_threshold", c.indexing_threshold);
    put(&mut o, "flush_interval_sec", c.flush_interval_sec);
    Ok(Value::Object(o))
}

fn settings(
    hnsw: Option<&proto::HnswConfigDiff>,
    wal: Option<&proto::WalConfigDiff>,
    optimizers: Option<&proto::OptimizersConfigDiff>,
    quantization: Option<Value>,
    metadata: &std::collections::HashMap<String, proto::Value>,
) -> Result<Map<String, Value>, Status> {
    let mut s = Map::new();
    if let Some(h) = hnsw {
        s.insert("hnsw_config".into(), hnsw_json(h));
    }
    if let Some(w) = wal {
        s.insert("wal_config".into(), wal_json(w));
    }
    if let Some(o) = optimizers {
        s.insert("optimizers_config".into(), optimizers_json(o)?);
    }
    if let Some(q) = quantization {
        // Kept and reported; Quiver's own quantization (IVF-PQ) is set with metadata.quiver.
        s.insert("quantization_config".into(), q);
    }
    if !metadata.is_empty() {
        s.insert(
            "metadata".into(),
            Value::Object(values::map_to_json("metadata", metadata)?),
        );
    }
    Ok(s)
}

const COMPRESSION: [&str; 5] = ["x4", "x8", "x16", "x32", "x64"];

/// Quantization settings in REST form (how they are kept).
fn quantization_json(q: Option<&proto::QuantizationConfig>) -> Result<Option<Value>, Status> {
    use proto::quantization_config::Quantization as Q;
    let Some(q) = q.and_then(|q| q.quantization.as_ref()) else {
        return Ok(None);
    };
    let mut o = Map::new();
    let kind = match q {
        Q::Scalar(sq) => {
            if sq.r#type != 1 {
                return Err(invalid("quantization_config.scalar.type", "must be Int8"));
            }
            o.insert("type".into(), "int8".into());
            if let Some(x) = sq
                .quantile
                .and_then(|x| serde_json::Number::from_f64(x.into()))
            {
                o.insert("quantile".into(), Value::Number(x));
            }
            put(&mut o, "always_ram", sq.always_ram);
            "scalar"
        }
        Q::Product(pq) => {
            let Some(c) = usize::try_from(pq.compression)
                .ok()
                .and_then(|c| COMPRESSION.get(c))
            else {
                return Err(invalid(
                    "quantization_config.product.compression",
                    "unknown ratio",
                ));
            };
            o.insert("compression".into(), (*c).into());
            put(&mut o, "always_ram", pq.always_ram);
            "product"
        }
        Q::Binary(bq) => {
            put(&mut o, "always_ram", bq.always_ram);
            "binary"
        }
        Q::Turboquant(_) => return Err(unsupported("quantization_config: turbo quantization")),
    };
    Ok(Some(serde_json::json!({ kind: o })))
}

/// Kept quantization settings (REST form) as gRPC's; `None` for a form it cannot read.
fn quantization_proto(v: &Value) -> Option<proto::QuantizationConfig> {
    use proto::quantization_config::Quantization as Q;
    let o = v.as_object()?;
    let q = if let Some(sq) = o.get("scalar") {
        Q::Scalar(proto::ScalarQuantization {
            r#type: 1,
            quantile: sq.get("quantile").and_then(Value::as_f64).map(|x| x as f32),
            always_ram: sq.get("always_ram").and_then(Value::as_bool),
        })
    } else if let Some(pq) = o.get("product") {
        let c = pq.get("compression").and_then(Value::as_str)?;
        Q::Product(proto::ProductQuantization {
            compression: COMPRESSION.iter().position(|x| *x == c)? as i32,
            always_ram: pq.get("always_ram").and_then(Value::as_bool),
        })
    } else if let Some(bq) = o.get("binary") {
        Q::Binary(proto::BinaryQuantization {
            always_ram: bq.get("always_ram").and_then(Value::as_bool),
        })
    } else {
        return None;
    };
    Some(proto::QuantizationConfig {
        quantization: Some(q),
    })
}

/// The parts a query and a prefetch share.
struct QueryParts<'a> {
    prefetch: &'a [proto::PrefetchQuery],
    query: Option<&'a proto::Query>,
    using: Option<&'a str>,
    filter: Option<&'a proto::Filter>,
    params: Option<&'a proto::SearchParams>,
    score_threshold: Option<f32>,
    limit: Option<u64>,
    lookup_from: Option<&'a proto::LookupLocation>,
}

fn query_spec(field: &str, q: &proto::QueryPoints) -> Result<QuerySpec, Status> {
    let mut spec = query_parts(
        field,
        QueryParts {
            prefetch: &q.prefetch,
            query: q.query.as_ref(),
            using: q.using.as_deref(),
            filter: q.filter.as_ref(),
            params: q.params.as_ref(),
            score_threshold: q.score_threshold,
            limit: q.limit,
            lookup_from: q.lookup_from.as_ref(),
        },
        0,
    )?;
    spec.offset = q.offset.unwrap_or(0) as usize;
    spec.with_payload = payload_sel(q.with_payload.as_ref(), PayloadSel::None);
    spec.with_vector = vector_sel(q.with_vectors.as_ref());
    Ok(spec)
}

/// Most levels of nested prefetches.
const MAX_PREFETCH_DEPTH: usize = 8;

fn query_parts(field: &str, q: QueryParts<'_>, depth: usize) -> Result<QuerySpec, Status> {
    use proto::query::Variant;
    use proto::vector_input::Variant as Input;
    if depth > MAX_PREFETCH_DEPTH {
        return Err(invalid(
            &format!("{field}prefetch"),
            format!("more than {MAX_PREFETCH_DEPTH} levels of prefetch"),
        ));
    }
    let prefetch = q
        .prefetch
        .iter()
        .enumerate()
        .map(|(i, p)| {
            query_parts(
                &format!("{field}prefetch[{i}]."),
                QueryParts {
                    prefetch: &p.prefetch,
                    query: p.query.as_ref(),
                    using: p.using.as_deref(),
                    filter: p.filter.as_ref(),
                    params: p.params.as_ref(),
                    score_threshold: p.score_threshold,
                    limit: p.limit,
                    lookup_from: p.lookup_from.as_ref(),
                },
                depth + 1,
            )
        })
        .collect::<Result<Vec<_>, Status>>()?;
    let mut mmr = None;
    let nearest = match q.query.and_then(|q| q.variant.as_ref()) {
        Some(Variant::NearestWithMmr(n)) => {
            let at = format!("{field}query.nearest_with_mmr.mmr");
            let m = n.mmr.as_ref();
            mmr = Some(Mmr::new(
                &at,
                m.and_then(|m| m.diversity),
                m.and_then(|m| m.candidates_limit).map(|c| c as usize),
            )?);
            match &n.nearest {
                Some(input) => Some(input),
                None => {
                    return Err(invalid(
                        &format!("{field}query.nearest_with_mmr.nearest"),
                        "missing",
                    ))
                }
            }
        }
        Some(Variant::Nearest(input)) => Some(input),
        _ => None,
    };
    let vector = match q.query.and_then(|q| q.variant.as_ref()) {
        None => QueryVector::None,
        Some(Variant::Nearest(_) | Variant::NearestWithMmr(_)) => {
            match nearest.and_then(|input| input.variant.as_ref()) {
                Some(Input::Dense(d)) => QueryVector::Dense(d.data.clone()),
                Some(Input::Sparse(v)) => QueryVector::Sparse(sparse(
                    &format!("{field}query.nearest.sparse"),
                    &v.indices,
                    &v.values,
                )?),
                Some(Input::Id(id)) => {
                    QueryVector::Point(point_key(&format!("{field}query.nearest.id"), id)?)
                }
                Some(Input::MultiDense(m)) => QueryVector::Multi(multi(m)),
                Some(_) => {
                    return Err(unsupported(&format!(
                        "{field}query: server-side inference (documents, images, objects)"
                    )))
                }
                None => return Err(invalid(&format!("{field}query.nearest"), "empty")),
            }
        }
        Some(Variant::Recommend(r)) => {
            // Qdrant's `RecommendStrategy` enum: 0 average_vector, 1 best_score, 2 sum_scores.
            let strategy = match r.strategy.unwrap_or(0) {
                0 => Strategy::AverageVector,
                1 => Strategy::BestScore,
                2 => Strategy::SumScores,
                other => {
                    return Err(invalid(
                        &format!("{field}query.recommend.strategy"),
                        format!(
                        "unknown strategy {other} (0 average_vector, 1 best_score, 2 sum_scores)"
                    ),
                    ))
                }
            };
            let examples = |name: &str, list: &[proto::VectorInput]| {
                list.iter()
                    .enumerate()
                    .map(|(i, e)| example(&format!("{field}query.recommend.{name}[{i}]"), e))
                    .collect::<Result<Vec<_>, Status>>()
            };
            QueryVector::Recommend {
                positive: examples("positive", &r.positive)?,
                negative: examples("negative", &r.negative)?,
                strategy,
            }
        }
        Some(Variant::Discover(d)) => {
            let at = format!("{field}query.discover");
            let target = match &d.target {
                Some(t) => example(&format!("{at}.target"), t)?,
                None => return Err(invalid(&format!("{at}.target"), "missing")),
            };
            QueryVector::Discover {
                target,
                context: context_pairs(&format!("{at}.context"), d.context.as_ref())?,
            }
        }
        Some(Variant::Context(c)) => {
            let at = format!("{field}query.context");
            let pairs = context_pairs(&at, Some(c))?;
            if pairs.is_empty() {
                return Err(invalid(&at, "a context query needs at least one pair"));
            }
            QueryVector::Context { pairs }
        }
        // Qdrant's `Fusion` enum: 0 RRF, 1 DBSF.
        Some(Variant::Fusion(0)) => QueryVector::Fusion(Fusion::Rrf),
        Some(Variant::Fusion(1)) => QueryVector::Fusion(Fusion::Dbsf),
        Some(Variant::Fusion(other)) => {
            return Err(invalid(
                &format!("{field}query.fusion"),
                format!("unknown fusion {other} (0 RRF, 1 DBSF)"),
            ))
        }
        Some(other) => {
            let name = match other {
                Variant::Recommend(_) => "recommend",
                Variant::Discover(_) => "discover",
                Variant::Context(_) => "context",
                Variant::OrderBy(_) => "order_by",
                Variant::Fusion(_) => "fusion",
                Variant::Sample(_) => "sample",
                Variant::Formula(_) => "formula",
                Variant::NearestWithMmr(_) => "nearest_with_mmr",
                Variant::Rrf(_) => "rrf",
                Variant::RelevanceFeedback(_) => "relevance_feedback",
                Variant::Text(_) => "text",
                Variant::Nearest(_) => "nearest",
            };
            return Err(unsupported(&format!("{field}query: `{name}` queries")));
        }
    };
    let (nprobe, refine_factor, exact) = params(q.params);
    Ok(QuerySpec {
        vector,
        mmr,
        lookup_from: q.lookup_from.map(|l| LookupFrom {
            collection: l.collection_name.clone(),
            vector: l.vector_name.clone(),
        }),
        using: q.using.unwrap_or_default().to_string(),
        prefetch,
        filter: from_grpc(&format!("{field}filter"), q.filter)?,
        limit: q.limit.unwrap_or(10) as usize,
        offset: 0,
        score_threshold: q.score_threshold,
        nprobe,
        refine_factor,
        exact,
        with_payload: PayloadSel::None,
        with_vector: VectorSel::None,
    })
}

/// An example of a recommendation, discovery or context query: a point id, a dense or a
/// sparse vector.
fn example(at: &str, e: &proto::VectorInput) -> Result<Example, Status> {
    use proto::vector_input::Variant as Input;
    match &e.variant {
        Some(Input::Dense(d)) => Ok(Example::Dense(d.data.clone())),
        Some(Input::Sparse(v)) => Ok(Example::Sparse(sparse(
            &format!("{at}.sparse"),
            &v.indices,
            &v.values,
        )?)),
        Some(Input::Id(id)) => Ok(Example::Point(point_key(at, id)?)),
        Some(Input::MultiDense(m)) => Ok(Example::Multi(multi(m))),
        Some(_) => Err(unsupported(&format!(
            "{at}: inferred (document, image, object) examples"
        ))),
        None => Err(invalid(at, "empty")),
    }
}

/// The pairs of a `ContextInput` (none when absent).
fn context_pairs(at: &str, c: Option<&proto::ContextInput>) -> Result<Vec<ContextPair>, Status> {
    let Some(c) = c else { return Ok(Vec::new()) };
    c.pairs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let side = |name: &str, e: Option<&proto::VectorInput>| match e {
                Some(e) => example(&format!("{at}.pairs[{i}].{name}"), e),
                None => Err(invalid(&format!("{at}.pairs[{i}].{name}"), "missing")),
            };
            Ok(ContextPair {
                positive: side("positive", p.positive.as_ref())?,
                negative: side("negative", p.negative.as_ref())?,
            })
        })
        .collect()
}

/// `hnsw_ef` as nprobe, `quantization.oversampling` as the refine factor, `exact`.
fn params(p: Option<&proto::SearchParams>) -> (u32, u32, bool) {
    let Some(p) = p else { return (0, 0, false) };
    let nprobe = p.hnsw_ef.map_or(0, |e| e.min(u32::MAX as u64) as u32);
    let refine = p
        .quantization
        .as_ref()
        .and_then(|q| q.oversampling)
        .filter(|o| o.is_finite() && *o >= 1.0)
        .map_or(0, |o| o.ceil().min(1000.0) as u32);
    (nprobe, refine, p.exact.unwrap_or(false))
}

fn search_spec(field: &str, s: &proto::SearchPoints) -> Result<QuerySpec, Status> {
    let vector = match &s.sparse_indices {
        Some(i) => QueryVector::Sparse(sparse(&format!("{field}vector"), &i.data, &s.vector)?),
        None => QueryVector::Dense(s.vector.clone()),
    };
    let (nprobe, refine_factor, exact) = params(s.params.as_ref());
    Ok(QuerySpec {
        vector,
        lookup_from: None,
        using: s.vector_name.clone().unwrap_or_default(),
        prefetch: Vec::new(),
        mmr: None,
        filter: from_grpc(&format!("{field}filter"), s.filter.as_ref())?,
        limit: s.limit as usize,
        offset: s.offset.unwrap_or(0) as usize,
        score_threshold: s.score_threshold,
        nprobe,
        refine_factor,
        exact,
        with_payload: payload_sel(s.with_payload.as_ref(), PayloadSel::None),
        with_vector: vector_sel(s.with_vectors.as_ref()),
    })
}

// ---- encoding ----

fn vector_out(v: VectorOut) -> proto::VectorOutput {
    use proto::vector_output::Vector;
    proto::VectorOutput {
        vector: Some(match v {
            VectorOut::Dense(data) => Vector::Dense(proto::DenseVector { data }),
            VectorOut::Sparse(s) => Vector::Sparse(proto::SparseVector {
                values: s.values,
                indices: s.indices,
            }),
            VectorOut::Multi(m) => Vector::MultiDense(proto::MultiDenseVector {
                vectors: m
                    .into_iter()
                    .map(|data| proto::DenseVector { data })
                    .collect(),
            }),
        }),
    }
}

fn vectors_out(v: Option<VectorsOut>) -> Option<proto::VectorsOutput> {
    use proto::vectors_output::VectorsOptions;
    v.map(|v| proto::VectorsOutput {
        vectors_options: Some(match v {
            VectorsOut::Unnamed(v) => VectorsOptions::Vector(vector_out(v)),
            VectorsOut::Named(named) => VectorsOptions::Vectors(proto::NamedVectorsOutput {
                vectors: named.into_iter().map(|(n, v)| (n, vector_out(v))).collect(),
            }),
        }),
    })
}

fn retrieved(r: Record) -> proto::RetrievedPoint {
    proto::RetrievedPoint {
        id: Some(point_id(r.key)),
        payload: r
            .payload
            .as_ref()
            .map(values::map_from_json)
            .unwrap_or_default(),
        vectors: vectors_out(r.vector),
    }
}

fn point_group(g: Group) -> proto::PointGroup {
    use proto::group_id::Kind;
    let kind = match &g.id {
        Value::Number(n) if n.is_u64() => n.as_u64().map(Kind::UnsignedValue),
        Value::Number(n) => n.as_i64().map(Kind::IntegerValue),
        Value::String(t) => Some(Kind::StringValue(t.clone())),
        _ => None,
    };
    proto::PointGroup {
        id: Some(proto::GroupId { kind }),
        hits: g.hits.into_iter().map(scored).collect(),
        lookup: g.lookup.map(retrieved),
    }
}

fn scored(s: Scored) -> proto::ScoredPoint {
    proto::ScoredPoint {
        id: Some(point_id(s.record.key)),
        payload: s
            .record
            .payload
            .as_ref()
            .map(values::map_from_json)
            .unwrap_or_default(),
        score: s.score,
        version: 0,
        vectors: vectors_out(s.record.vector),
    }
}

fn u64_of(o: &Map<String, Value>, k: &str) -> Option<u64> {
    o.get(k).and_then(Value::as_u64)
}

/// The collection's vector parameters in the form they were given (unnamed, or as the vector
/// named `""`), with `on_disk` and `datatype` when given.
fn vectors_proto(v: &InfoView) -> proto::VectorsConfig {
    use proto::vectors_config::Config;
    let params_of = |size: u64,
                     distance: Distance,
                     on_disk: Option<bool>,
                     datatype: Option<DatatypeName>| proto::VectorParams {
        size,
        distance: match distance {
            Distance::Cosine => proto::Distance::Cosine,
            Distance::Euclid => proto::Distance::Euclid,
            Distance::Dot => proto::Distance::Dot,
        } as i32,
        on_disk,
        // Qdrant's `Datatype` enum: 1 float32, 3 float16.
        datatype: datatype.map(|d| match d {
            DatatypeName::Float32 => 1,
            DatatypeName::Float16 => 3,
        }),
        ..Default::default()
    };
    let params = params_of(v.dim, v.distance, v.form.on_disk, v.form.datatype);
    let space = |p: &SpaceParams| {
        let mut params = params_of(p.size, p.distance, p.on_disk, p.datatype);
        if p.multi {
            params.multivector_config = Some(proto::MultiVectorConfig { comparator: 0 });
        }
        params
    };
    let config = if let Some(p) = v.form.unnamed_space() {
        Config::Params(space(p))
    } else if !v.form.spaces.is_empty() {
        Config::ParamsMap(proto::VectorParamsMap {
            map: v
                .form
                .spaces
                .iter()
                .map(|(n, p)| (n.clone(), space(p)))
                .collect(),
        })
    } else if v.form.no_dense {
        Config::ParamsMap(proto::VectorParamsMap::default())
    } else if v.form.named {
        Config::ParamsMap(proto::VectorParamsMap {
            map: [(v.form.name.clone(), params)].into_iter().collect(),
        })
    } else {
        Config::Params(params)
    };
    proto::VectorsConfig {
        config: Some(config),
    }
}

/// The sparse vectors' parameters (none without sparse vectors).
fn sparse_proto(form: &VectorForm) -> Option<proto::SparseVectorConfig> {
    (!form.sparse.is_empty()).then(|| proto::SparseVectorConfig {
        map: form
            .sparse
            .iter()
            .map(|(n, p)| {
                let index =
                    p.index
                        .as_ref()
                        .and_then(Value::as_object)
                        .map(|o| proto::SparseIndexConfig {
                            full_scan_threshold: u64_of(o, "full_scan_threshold"),
                            on_disk: o.get("on_disk").and_then(Value::as_bool),
                            datatype: None,
                        });
                let params = proto::SparseVectorParams {
                    index,
                    modifier: p.idf.then_some(1),
                };
                (n.clone(), params)
            })
            .collect(),
    })
}

/// One of several named dense vectors' parameters.
fn space_params(name: &str, p: &proto::VectorParams) -> Result<SpaceParams, Status> {
    let field = format!("vectors_config.{name}");
    // Qdrant's `MultiVectorComparator`: 0 MaxSim, the only one.
    if let Some(c) = p.multivector_config.as_ref().filter(|c| c.comparator != 0) {
        return Err(invalid(
            &format!("{field}.multivector_config.comparator"),
            format!("unknown comparator {} (0: max_sim)", c.comparator),
        ));
    }
    let datatype = Datatype::from_grpc(&format!("{field}.datatype"), p.datatype)?;
    Ok(SpaceParams {
        size: p.size,
        distance: distance(p.distance).map_err(|e| {
            let m = e.message().replace(
                "vectors_config.params.distance",
                &format!("{field}.distance"),
            );
            Status::new(e.code(), m)
        })?,
        on_disk: p.on_disk,
        datatype: p.datatype.filter(|&d| d != 0).map(|_| datatype.into()),
        multi: p.multivector_config.is_some(),
    })
}

/// The sparse vectors a create request names, in the form kept.
fn sparse_params(
    c: Option<&proto::SparseVectorConfig>,
) -> Result<std::collections::BTreeMap<String, SparseParams>, Status> {
    let mut out = std::collections::BTreeMap::new();
    for (name, p) in c.map(|c| c.map.iter()).into_iter().flatten() {
        let idf = match p.modifier {
            None | Some(0) => false,
            Some(1) => true,
            Some(other) => {
                return Err(invalid(
                    &format!("sparse_vectors_config.{name}.modifier"),
                    format!("unknown modifier {other} (0 none, 1 idf)"),
                ))
            }
        };
        let index = p.index.as_ref().map(|i| {
            let mut o = Map::new();
            put(&mut o, "full_scan_threshold", i.full_scan_threshold);
            put(&mut o, "on_disk", i.on_disk);
            Value::Object(o)
        });
        out.insert(name.clone(), SparseParams { idf, index });
    }
    Ok(out)
}

fn info_proto(v: InfoView) -> proto::CollectionInfo {
    let h = &v.hnsw;
    let w = &v.wal;
    let o = &v.optimizers;
    proto::CollectionInfo {
        status: match v.status {
            "green" => proto::CollectionStatus::Green,
            "yellow" => proto::CollectionStatus::Yellow,
            _ => proto::CollectionStatus::Red,
        } as i32,
        optimizer_status: Some(proto::OptimizerStatus {
            ok: v.error.is_none(),
            error: v.error.clone().unwrap_or_default(),
        }),
        segments_count: v.segments,
        config: Some(proto::CollectionConfig {
            params: Some(proto::CollectionParams {
                shard_number: v.shards,
                on_disk_payload: true,
                vectors_config: Some(vectors_proto(&v)),
                replication_factor: Some(v.replication),
                write_consistency_factor: Some(1),
                sparse_vectors_config: sparse_proto(&v.form),
            }),
            hnsw_config: Some(proto::HnswConfigDiff {
                m: u64_of(h, "m"),
                ef_construct: u64_of(h, "ef_construct"),
                full_scan_threshold: u64_of(h, "full_scan_threshold"),
                max_indexing_threads: u64_of(h, "max_indexing_threads"),
                on_disk: h.get("on_disk").and_then(Value::as_bool),
                payload_m: u64_of(h, "payload_m"),
            }),
            optimizer_config: Some(proto::OptimizersConfigDiff {
                deleted_threshold: o.get("deleted_threshold").and_then(Value::as_f64),
                vacuum_min_vector_number: u64_of(o, "vacuum_min_vector_number"),
                default_segment_number: u64_of(o, "default_segment_number"),
                max_segment_size: u64_of(o, "max_segment_size"),
                memmap_threshold: u64_of(o, "memmap_threshold"),
                indexing_threshold: u64_of(o, "indexing_threshold"),
                flush_interval_sec: u64_of(o, "flush_interval_sec"),
            }),
            wal_config: Some(proto::WalConfigDiff {
                wal_capacity_mb: u64_of(w, "wal_capacity_mb"),
                wal_segments_ahead: u64_of(w, "wal_segments_ahead"),
                wal_retain_closed: u64_of(w, "wal_retain_closed"),
            }),
            quantization_config: v.quantization.as_ref().and_then(quantization_proto),
            metadata: values::map_from_json(&v.metadata),
        }),
        payload_schema: v
            .fields
            .iter()
            .map(|(k, t)| {
                let data_type = match t {
                    FieldType::Keyword => proto::PayloadSchemaType::Keyword,
                    FieldType::Integer => proto::PayloadSchemaType::Integer,
                    FieldType::Float => proto::PayloadSchemaType::Float,
                    FieldType::Bool => proto::PayloadSchemaType::Bool,
                };
                (
                    k.clone(),
                    proto::PayloadSchemaInfo {
                        data_type: data_type as i32,
                        points: Some(0),
                    },
                )
            })
            .collect(),
        points_count: Some(v.points),
        indexed_vectors_count: Some(v.indexed),
        warnings: Vec::new(),
    }
}

// ---- services ----

#[tonic::async_trait]
impl Qdrant for QdrantGrpc {
    async fn health_check(
        &self,
        _req: Request<proto::HealthCheckRequest>,
    ) -> Result<Response<proto::HealthCheckReply>, Status> {
        Ok(Response::new(proto::HealthCheckReply {
            // Qdrant's own title, as `GET /` answers it (clients recognise a server by it).
            title: "qdrant - vector search engine".into(),
            version: super::API_VERSION.into(),
            commit: None,
        }))
    }
}

/// Refuses a request whose API key does not reach its collection (see [`crate::auth::Reach`]).

#[tonic::async_trait]
impl Collections for QdrantGrpc {
    async fn get(
        &self,
        req: Request<proto::GetCollectionInfoRequest>,
    ) -> Result<Response<proto::GetCollectionInfoResponse>, Status> {
        let start = Instant::now();
        let name = &req.get_ref().collection_name;
        let r = async {
            self.reach(&req, name)?;
            let v = self.api.info(name).await?;
            Ok(Response::new(proto::GetCollectionInfoResponse {
                result: Some(info_proto(v)),
                time: secs(start),
            }))
        }
        .await;
        self.record("qdrant.Collections/Get", r)
    }

    async fn list(
        &self,
        req: Request<proto::ListCollectionsRequest>,
    ) -> Result<Response<proto::ListCollectionsResponse>, Status> {
        let start = Instant::now();
        let collections = self
            .api
            .list()
            .await
            .into_iter()
            .filter(|name| in_reach(req.extensions(), name))
            .map(|name| proto::CollectionDescription { name })
            .collect();
        self.record(
            "qdrant.Collections/List",
            Ok(Response::new(proto::ListCollectionsResponse {
                collections,
                time: secs(start),
            })),
        )
    }

    async fn create(
        &self,
        req: Request<proto::CreateCollection>,
    ) -> Result<Response<proto::CollectionOperationResponse>, Status> {
        let start = Instant::now();
        let r = async {
            self.reach(&req, &req.get_ref().collection_name)?;
            let r = req.into_inner();
            if r.strict_mode_config.is_some() {
                return Err(unsupported("strict_mode_config"));
            }
            let sparse = sparse_params(r.sparse_vectors_config.as_ref())?;
            use proto::vectors_config::Config;
            let named = matches!(
                r.vectors_config.as_ref().and_then(|v| v.config.as_ref()),
                Some(Config::ParamsMap(_))
            );
            let mut spaces = std::collections::BTreeMap::new();
            let (name, params) = match r.vectors_config.as_ref().and_then(|v| v.config.as_ref()) {
                // No dense vector (sparse vectors only, or none at all).
                None => (None, proto::VectorParams::default()),
                Some(Config::ParamsMap(m)) if m.map.is_empty() => {
                    (None, proto::VectorParams::default())
                }
                Some(Config::Params(p)) if p.multivector_config.is_some() => {
                    // An unnamed multi-vector: kept in the payload as a space named "".
                    spaces.insert(String::new(), space_params("", p)?);
                    (None, proto::VectorParams::default())
                }
                Some(Config::Params(p)) => (Some(String::new()), *p),
                Some(Config::ParamsMap(m))
                    if m.map.len() == 1
                        && m.map.values().all(|p| p.multivector_config.is_none()) =>
                {
                    let (n, p) = m.map.iter().next().expect("one entry");
                    (Some(n.clone()), *p)
                }
                Some(Config::ParamsMap(m)) => {
                    for (n, p) in &m.map {
                        spaces.insert(n.clone(), space_params(n, p)?);
                    }
                    (None, proto::VectorParams::default())
                }
            };
            let no_dense = name.is_none();
            let s = settings(
                r.hnsw_config.as_ref().or(params.hnsw_config.as_ref()),
                r.wal_config.as_ref(),
                r.optimizers_config.as_ref(),
                quantization_json(
                    r.quantization_config
                        .as_ref()
                        .or(params.quantization_config.as_ref()),
                )?,
                &r.metadata,
            )?;
            let datatype = Datatype::from_grpc("vectors_config.datatype", params.datatype)?;
            let form = VectorForm {
                named,
                name: name.unwrap_or_default(),
                no_dense,
                spaces,
                on_disk: params.on_disk,
                // 0 is the enum's default: not a datatype the client named.
                datatype: params.datatype.filter(|&d| d != 0).map(|_| datatype.into()),
                sparse,
            };
            self.api
                .create(CreateSpec {
                    name: r.collection_name,
                    dim: params.size,
                    distance: match no_dense {
                        true => Distance::Euclid,
                        false => distance(params.distance)?,
                    },
                    datatype,
                    settings: s,
                    shards: r.shard_number.unwrap_or(0),
                    replication: r.replication_factor.unwrap_or(0),
                    form,
                })
                .await?;
            Ok(Response::new(proto::CollectionOperationResponse {
                result: true,
                time: secs(start),
            }))
        }
        .await;
        self.record("qdrant.Collections/Create", r)
    }

    async fn update(
        &self,
        req: Request<proto::UpdateCollection>,
    ) -> Result<Response<proto::CollectionOperationResponse>, Status> {
        let start = Instant::now();
        let r = async {
            self.reach(&req, &req.get_ref().collection_name)?;
            let r = req.into_inner();
            if r.sparse_vectors_config
                .as_ref()
                .is_some_and(|s| !s.map.is_empty())
            {
                return Err(unsupported("sparse_vectors_config: sparse vectors"));
            }
            if r.strict_mode_config.is_some() {
                return Err(unsupported("strict_mode_config"));
            }
            let s = settings(
                r.hnsw_config.as_ref(),
                None,
                r.optimizers_config.as_ref(),
                None,
                &r.metadata,
            )?;
            self.api.update(&r.collection_name, s).await?;
            Ok(Response::new(proto::CollectionOperationResponse {
                result: true,
                time: secs(start),
            }))
        }
        .await;
        self.record("qdrant.Collections/Update", r)
    }

    async fn delete(
        &self,
        req: Request<proto::DeleteCollection>,
    ) -> Result<Response<proto::CollectionOperationResponse>, Status> {
        let start = Instant::now();
        let r = async {
            let name = &req.get_ref().collection_name;
            self.reach(&req, name)?;
            let result = self.api.delete(name).await?;
            Ok(Response::new(proto::CollectionOperationResponse {
                result,
                time: secs(start),
            }))
        }
        .await;
        self.record("qdrant.Collections/Delete", r)
    }

    async fn collection_exists(
        &self,
        req: Request<proto::CollectionExistsRequest>,
    ) -> Result<Response<proto::CollectionExistsResponse>, Status> {
        let start = Instant::now();
        let name = &req.get_ref().collection_name;
        let r = async {
            self.reach(&req, name)?;
            Ok(Response::new(proto::CollectionExistsResponse {
                result: Some(proto::CollectionExists {
                    exists: self.api.exists(name).await?,
                }),
                time: secs(start),
            }))
        }
        .await;
        self.record("qdrant.Collections/CollectionExists", r)
    }

    async fn update_aliases(
        &self,
        req: Request<proto::ChangeAliases>,
    ) -> Result<Response<proto::CollectionOperationResponse>, Status> {
        use proto::alias_operations::Action;
        let start = Instant::now();
        let r = async {
            // An alias reaches a collection by another name: only a key reaching every
            // collection changes them.
            crate::auth::check_unscoped(req.extensions(), "changing aliases")?;
            let actions = req
                .into_inner()
                .actions
                .into_iter()
                .enumerate()
                .map(|(i, a)| match a.action {
                    Some(Action::CreateAlias(c)) => Ok(AliasAction::Create {
                        alias: c.alias_name,
                        collection: c.collection_name,
                    }),
                    Some(Action::RenameAlias(r)) => Ok(AliasAction::Rename {
                        from: r.old_alias_name,
                        to: r.new_alias_name,
                    }),
                    Some(Action::DeleteAlias(d)) => Ok(AliasAction::Delete {
                        alias: d.alias_name,
                    }),
                    None => Err(invalid(&format!("actions[{i}]"), "empty action")),
                })
                .collect::<Result<Vec<_>, Status>>()?;
            self.api.update_aliases(actions).await?;
            Ok(Response::new(proto::CollectionOperationResponse {
                result: true,
                time: secs(start),
            }))
        }
        .await;
        self.record("qdrant.Collections/UpdateAliases", r)
    }

    async fn list_collection_aliases(
        &self,
        req: Request<proto::ListCollectionAliasesRequest>,
    ) -> Result<Response<proto::ListAliasesResponse>, Status> {
        let start = Instant::now();
        let name = &req.get_ref().collection_name;
        let r = async {
            self.reach(&req, name)?;
            let aliases = self.api.aliases(Some(name)).await?;
            Ok(Response::new(aliases_proto(aliases, start)))
        }
        .await;
        self.record("qdrant.Collections/ListCollectionAliases", r)
    }

    async fn list_aliases(
        &self,
        req: Request<proto::ListAliasesRequest>,
    ) -> Result<Response<proto::ListAliasesResponse>, Status> {
        let start = Instant::now();
        let r = async {
            let aliases = self
                .api
                .aliases(None)
                .await?
                .into_iter()
                .filter(|(a, c)| in_reach(req.extensions(), a) && in_reach(req.extensions(), c))
                .collect();
            Ok(Response::new(aliases_proto(aliases, start)))
        }
        .await;
        self.record("qdrant.Collections/ListAliases", r)
    }
}

fn aliases_proto(aliases: Vec<(String, String)>, start: Instant) -> proto::ListAliasesResponse {
    proto::ListAliasesResponse {
        aliases: aliases
            .into_iter()
            .map(|(alias_name, collection_name)| proto::AliasDescription {
                alias_name,
                collection_name,
            })
            .collect(),
        time: secs(start),
    }
}

#[tonic::async_trait]
impl Points for QdrantGrpc {
    async fn upsert(
        &self,
        req: Request<proto::UpsertPoints>,
    ) -> Result<Response<proto::PointsOperationResponse>, Status> {
        let start = Instant::now();
        let client = client_of(&req);
        let admitted = req
            .extensions()
            .get::<crate::admission::PreAdmitted>()
            .cloned();
        let r = async {
            self.reach(&req, &req.get_ref().collection_name)?;
            let r = req.into_inner();
            if r.update_filter.is_some() {
                return Err(unsupported("update_filter: conditional upserts"));
            }
            let mode = upsert_mode(r.update_mode)?;
            let points = points_in("points", &r.points)?;
            self.api
                .upsert(client, &r.collection_name, points, mode, admitted)
                .await?;
            Ok(Response::new(timed(done(r.wait), start)))
        }
        .await;
        self.record("qdrant.Points/Upsert", r)
    }

    async fn delete(
        &self,
        req: Request<proto::DeletePoints>,
    ) -> Result<Response<proto::PointsOperationResponse>, Status> {
        let start = Instant::now();
        let client = client_of(&req);
        let r = async {
            self.reach(&req, &req.get_ref().collection_name)?;
            let r = req.into_inner();
            let sel = selector("points", r.points.as_ref())?;
            self.api
                .delete_points(client, &r.collection_name, sel)
                .await?;
            Ok(Response::new(timed(done(r.wait), start)))
        }
        .await;
        self.record("qdrant.Points/Delete", r)
    }

    async fn get(
        &self,
        req: Request<proto::GetPoints>,
    ) -> Result<Response<proto::GetResponse>, Status> {
        let start = Instant::now();
        let r = async {
            self.reach(&req, &req.get_ref().collection_name)?;
            let r = req.into_inner();
            let keys = r
                .ids
                .iter()
                .enumerate()
                .map(|(i, id)| point_key(&format!("ids[{i}]"), id))
                .collect::<Result<Vec<_>, _>>()?;
            let records = self
                .api
                .get(
                    &r.collection_name,
                    keys,
                    payload_sel(r.with_payload.as_ref(), PayloadSel::All),
                    vector_sel(r.with_vectors.as_ref()),
                )
                .await?;
            Ok(Response::new(proto::GetResponse {
                result: records.into_iter().map(retrieved).collect(),
                time: secs(start),
            }))
        }
        .await;
        self.record("qdrant.Points/Get", r)
    }

    async fn set_payload(
        &self,
        req: Request<proto::SetPayloadPoints>,
    ) -> Result<Response<proto::PointsOperationResponse>, Status> {
        let start = Instant::now();
        let r = match self.reach(&req, &req.get_ref().collection_name) {
            Ok(()) => self.set_or_overwrite(req.into_inner(), false).await,
            Err(s) => Err(s),
        };
        self.record(
            "qdrant.Points/SetPayload",
            r.map(|x| Response::new(timed(x, start))),
        )
    }

    async fn overwrite_payload(
        &self,
        req: Request<proto::SetPayloadPoints>,
    ) -> Result<Response<proto::PointsOperationResponse>, Status> {
        let start = Instant::now();
        let r = match self.reach(&req, &req.get_ref().collection_name) {
            Ok(()) => self.set_or_overwrite(req.into_inner(), true).await,
            Err(s) => Err(s),
        };
        self.record(
            "qdrant.Points/OverwritePayload",
            r.map(|x| Response::new(timed(x, start))),
        )
    }

    async fn delete_payload(
        &self,
        req: Request<proto::DeletePayloadPoints>,
    ) -> Result<Response<proto::PointsOperationResponse>, Status> {
        let start = Instant::now();
        let r = async {
            self.reach(&req, &req.get_ref().collection_name)?;
            let r = req.into_inner();
            let sel = selector("points_selector", r.points_selector.as_ref())?;
            self.api
                .delete_payload(&r.collection_name, sel, r.keys)
                .await?;
            Ok(Response::new(timed(done(r.wait), start)))
        }
        .await;
        self.record("qdrant.Points/DeletePayload", r)
    }

    async fn update_vectors(
        &self,
        req: Request<proto::UpdatePointVectors>,
    ) -> Result<Response<proto::PointsOperationResponse>, Status> {
        let start = Instant::now();
        let client = client_of(&req);
        let r = async {
            self.reach(&req, &req.get_ref().collection_name)?;
            let r = req.into_inner();
            if r.update_filter.is_some() {
                return Err(unsupported("update_filter: conditional updates"));
            }
            let points = point_vectors_in("points", &r.points)?;
            self.api
                .update_vectors(client, &r.collection_name, points)
                .await?;
            Ok(Response::new(timed(done(r.wait), start)))
        }
        .await;
        self.record("qdrant.Points/UpdateVectors", r)
    }

    async fn update_batch(
        &self,
        req: Request<proto::UpdateBatchPoints>,
    ) -> Result<Response<proto::UpdateBatchResponse>, Status> {
        let start = Instant::now();
        let client = client_of(&req);
        let admitted = req
            .extensions()
            .get::<crate::admission::PreAdmitted>()
            .cloned();
        let r = async {
            self.reach(&req, &req.get_ref().collection_name)?;
            let r = req.into_inner();
            let ops = r
                .operations
                .iter()
                .enumerate()
                .map(|(i, op)| update_op(&format!("operations[{i}]"), op))
                .collect::<Result<Vec<_>, _>>()?;
            let n = self
                .api
                .update_batch(client, &r.collection_name, ops, admitted)
                .await?;
            let one = done(r.wait).result.unwrap_or_default();
            Ok(Response::new(proto::UpdateBatchResponse {
                result: vec![one; n],
                time: secs(start),
            }))
        }
        .await;
        self.record("qdrant.Points/UpdateBatch", r)
    }

    async fn delete_vectors(
        &self,
        req: Request<proto::DeletePointVectors>,
    ) -> Result<Response<proto::PointsOperationResponse>, Status> {
        let start = Instant::now();
        let r = async {
            self.reach(&req, &req.get_ref().collection_name)?;
            let r = req.into_inner();
            let sel = selector("points_selector", r.points_selector.as_ref())?;
            let names = r.vectors.map(|v| v.names).unwrap_or_default();
            self.api
                .delete_vectors(&r.collection_name, sel, names)
                .await?;
            Ok(Response::new(timed(done(r.wait), start)))
        }
        .await;
        self.record("qdrant.Points/DeleteVectors", r)
    }

    async fn clear_payload(
        &self,
        req: Request<proto::ClearPayloadPoints>,
    ) -> Result<Response<proto::PointsOperationResponse>, Status> {
        let start = Instant::now();
        let r = async {
            self.reach(&req, &req.get_ref().collection_name)?;
            let r = req.into_inner();
            let sel = selector("points", r.points.as_ref())?;
            self.api.clear_payload(&r.collection_name, sel).await?;
            Ok(Response::new(timed(done(r.wait), start)))
        }
        .await;
        self.record("qdrant.Points/ClearPayload", r)
    }

    async fn create_field_index(
        &self,
        req: Request<proto::CreateFieldIndexCollection>,
    ) -> Result<Response<proto::PointsOperationResponse>, Status> {
        let start = Instant::now();
        let r = async {
            self.reach(&req, &req.get_ref().collection_name)?;
            let r = req.into_inner();
            let kind = field_type(r.field_type)?;
            self.api
                .create_field_index(&r.collection_name, &r.field_name, kind)
                .await?;
            Ok(Response::new(timed(done(r.wait), start)))
        }
        .await;
        self.record("qdrant.Points/CreateFieldIndex", r)
    }

    async fn delete_field_index(
        &self,
        req: Request<proto::DeleteFieldIndexCollection>,
    ) -> Result<Response<proto::PointsOperationResponse>, Status> {
        let start = Instant::now();
        let r = async {
            self.reach(&req, &req.get_ref().collection_name)?;
            let r = req.into_inner();
            self.api
                .delete_field_index(&r.collection_name, &r.field_name)
                .await?;
            Ok(Response::new(timed(done(r.wait), start)))
        }
        .await;
        self.record("qdrant.Points/DeleteFieldIndex", r)
    }

    async fn search(
        &self,
        req: Request<proto::SearchPoints>,
    ) -> Result<Response<proto::SearchResponse>, Status> {
        let start = Instant::now();
        let client = client_of(&req);
        let timeout = timeout_of(&req, req.get_ref().timeout);
        let r = async {
            self.reach(&req, &req.get_ref().collection_name)?;
            let r = req.into_inner();
            let spec = search_spec("", &r)?;
            let mut hits = self
                .api
                .query(client, &r.collection_name, vec![spec], timeout)
                .await?;
            Ok(Response::new(proto::SearchResponse {
                result: hits
                    .pop()
                    .unwrap_or_default()
                    .into_iter()
                    .map(scored)
                    .collect(),
                time: secs(start),
            }))
        }
        .await;
        self.record("qdrant.Points/Search", r)
    }

    async fn search_batch(
        &self,
        req: Request<proto::SearchBatchPoints>,
    ) -> Result<Response<proto::SearchBatchResponse>, Status> {
        let start = Instant::now();
        let client = client_of(&req);
        let timeout = timeout_of(&req, req.get_ref().timeout);
        let r = async {
            self.reach(&req, &req.get_ref().collection_name)?;
            let r = req.into_inner();
            let mut specs = Vec::with_capacity(r.search_points.len());
            for (i, s) in r.search_points.iter().enumerate() {
                if !s.collection_name.is_empty() && s.collection_name != r.collection_name {
                    return Err(invalid(
                        &format!("search_points[{i}].collection_name"),
                        "differs from the batch's collection",
                    ));
                }
                specs.push(search_spec(&format!("search_points[{i}]."), s)?);
            }
            let hits = self
                .api
                .query(client, &r.collection_name, specs, timeout)
                .await?;
            Ok(Response::new(proto::SearchBatchResponse {
                result: hits
                    .into_iter()
                    .map(|h| proto::BatchResult {
                        result: h.into_iter().map(scored).collect(),
                    })
                    .collect(),
                time: secs(start),
            }))
        }
        .await;
        self.record("qdrant.Points/SearchBatch", r)
    }

    async fn scroll(
        &self,
        req: Request<proto::ScrollPoints>,
    ) -> Result<Response<proto::ScrollResponse>, Status> {
        let start = Instant::now();
        let r = async {
            self.reach(&req, &req.get_ref().collection_name)?;
            let r = req.into_inner();
            if r.order_by.is_some() {
                return Err(unsupported("order_by: scrolling in payload order"));
            }
            let offset = r
                .offset
                .as_ref()
                .map(|o| point_key("offset", o))
                .transpose()?;
            let (records, next) = self
                .api
                .scroll(
                    &r.collection_name,
                    from_grpc("filter", r.filter.as_ref())?,
                    offset,
                    r.limit.unwrap_or(10) as usize,
                    payload_sel(r.with_payload.as_ref(), PayloadSel::All),
                    vector_sel(r.with_vectors.as_ref()),
                )
                .await?;
            Ok(Response::new(proto::ScrollResponse {
                next_page_offset: next.map(point_id),
                result: records.into_iter().map(retrieved).collect(),
                time: secs(start),
            }))
        }
        .await;
        self.record("qdrant.Points/Scroll", r)
    }

    async fn count(
        &self,
        req: Request<proto::CountPoints>,
    ) -> Result<Response<proto::CountResponse>, Status> {
        let start = Instant::now();
        let r = async {
            self.reach(&req, &req.get_ref().collection_name)?;
            let r = req.into_inner();
            let count = self
                .api
                .count(&r.collection_name, from_grpc("filter", r.filter.as_ref())?)
                .await?;
            Ok(Response::new(proto::CountResponse {
                result: Some(proto::CountResult { count }),
                time: secs(start),
            }))
        }
        .await;
        self.record("qdrant.Points/Count", r)
    }

    async fn query(
        &self,
        req: Request<proto::QueryPoints>,
    ) -> Result<Response<proto::QueryResponse>, Status> {
        let start = Instant::now();
        let client = client_of(&req);
        let timeout = timeout_of(&req, req.get_ref().timeout);
        let r = async {
            self.reach(&req, &req.get_ref().collection_name)?;
            let spec = query_spec("", req.get_ref())?;
            self.reach_lookups(&req, std::slice::from_ref(&spec))?;
            let r = req.into_inner();
            let mut hits = self
                .api
                .query(client, &r.collection_name, vec![spec], timeout)
                .await?;
            Ok(Response::new(proto::QueryResponse {
                result: hits
                    .pop()
                    .unwrap_or_default()
                    .into_iter()
                    .map(scored)
                    .collect(),
                time: secs(start),
            }))
        }
        .await;
        self.record("qdrant.Points/Query", r)
    }

    async fn query_groups(
        &self,
        req: Request<proto::QueryPointGroups>,
    ) -> Result<Response<proto::QueryGroupsResponse>, Status> {
        let start = Instant::now();
        let client = client_of(&req);
        let timeout = timeout_of(&req, req.get_ref().timeout);
        let r = async {
            self.reach(&req, &req.get_ref().collection_name)?;
            let q = req.get_ref();
            // The same fields as a query's, less the offset.
            let as_query = proto::QueryPoints {
                collection_name: String::new(),
                prefetch: q.prefetch.clone(),
                query: q.query.clone(),
                using: q.using.clone(),
                filter: q.filter.clone(),
                params: q.params,
                score_threshold: q.score_threshold,
                limit: q.limit,
                offset: None,
                with_vectors: q.with_vectors.clone(),
                with_payload: q.with_payload.clone(),
                lookup_from: q.lookup_from.clone(),
                timeout: None,
            };
            let spec = query_spec("", &as_query)?;
            if q.group_by.is_empty() {
                return Err(invalid("group_by", "expected a payload key"));
            }
            let group = GroupSpec {
                group_by: q.group_by.clone(),
                group_size: q.group_size.unwrap_or(3) as usize,
                with_lookup: q.with_lookup.as_ref().map(|l| WithLookup {
                    collection: l.collection.clone(),
                    with_payload: payload_sel(l.with_payload.as_ref(), PayloadSel::All),
                    with_vector: vector_sel(l.with_vectors.as_ref()),
                }),
            };
            self.reach_lookups(&req, std::slice::from_ref(&spec))?;
            if let Some(l) = &group.with_lookup {
                self.reach(&req, &l.collection)
                    .map_err(|s| rename_status(s, "collection_name", "with_lookup.collection"))?;
            }
            let name = req.get_ref().collection_name.clone();
            let groups = self
                .api
                .query_groups(client, &name, spec, group, timeout)
                .await?;
            Ok(Response::new(proto::QueryGroupsResponse {
                result: Some(proto::GroupsResult {
                    groups: groups.into_iter().map(point_group).collect(),
                }),
                time: secs(start),
            }))
        }
        .await;
        self.record("qdrant.Points/QueryGroups", r)
    }

    async fn query_batch(
        &self,
        req: Request<proto::QueryBatchPoints>,
    ) -> Result<Response<proto::QueryBatchResponse>, Status> {
        let start = Instant::now();
        let client = client_of(&req);
        let timeout = timeout_of(&req, req.get_ref().timeout);
        let r = async {
            self.reach(&req, &req.get_ref().collection_name)?;
            let mut specs = Vec::with_capacity(req.get_ref().query_points.len());
            for (i, q) in req.get_ref().query_points.iter().enumerate() {
                if !q.collection_name.is_empty()
                    && q.collection_name != req.get_ref().collection_name
                {
                    return Err(invalid(
                        &format!("query_points[{i}].collection_name"),
                        "differs from the batch's collection",
                    ));
                }
                specs.push(query_spec(&format!("query_points[{i}]."), q)?);
            }
            self.reach_lookups(&req, &specs)?;
            let r = req.into_inner();
            let hits = self
                .api
                .query(client, &r.collection_name, specs, timeout)
                .await?;
            Ok(Response::new(proto::QueryBatchResponse {
                result: hits
                    .into_iter()
                    .map(|h| proto::BatchResult {
                        result: h.into_iter().map(scored).collect(),
                    })
                    .collect(),
                time: secs(start),
            }))
        }
        .await;
        self.record("qdrant.Points/QueryBatch", r)
    }
}

impl QdrantGrpc {
    async fn set_or_overwrite(
        &self,
        r: proto::SetPayloadPoints,
        overwrite: bool,
    ) -> Result<proto::PointsOperationResponse, Status> {
        let sel = selector("points_selector", r.points_selector.as_ref())?;
        let payload = values::map_to_json("payload", &r.payload)?;
        self.api
            .set_payload(&r.collection_name, sel, payload, r.key, overwrite)
            .await?;
        Ok(done(r.wait))
    }
}
