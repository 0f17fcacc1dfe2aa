//! The operations of Quiver's Qdrant API, in terms neutral to the wire: the gRPC ([`super::grpc`])
//! and REST ([`super::rest`]) front ends decode a request into these types, call one
//! operation, and encode its answer. Every operation is made of the internal request layer's
//! requests ([`crate::requests`]: its validation, rate limits and micro-batcher, local or
//! through the cluster), as the native API's are, so a Qdrant client is served exactly as a
//! native one, on a single server or a cluster node alike.
//!
//! Mapping (docs/QDRANT.md): a collection holds one unnamed dense vector; `Cosine`, `Dot` and
//! `Euclid` are Quiver's cosine, inner-product and L2 metrics (Euclid scores are distances, the
//! square root of Quiver's squared L2); ids map as [`super::ids`] says; HNSW, WAL and optimizer
//! settings are kept and reported; `metadata.quiver` sets Quiver's own index parameters; the
//! index is trained by itself once the vectors pass `optimizers_config.indexing_threshold`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use quiver_engine::payload;
use quiver_engine::payload::fields::{FieldSpec, FieldType};
use quiver_engine::payload::selector::Selection;
use quiver_engine::Metric;
use quiver_store::wal::PayloadEdit;
pub use quiver_store::AliasAction;
use quiver_store::{IndexConfig, UpsertMode};
use serde_json::{json, Map, Value};
use tonic::Status;

use super::fusion::{fuse, Fusion};
use super::ids::{key_of, key_of_stored, PointKey, UUID_KEY};
use super::unsupported;
use super::vectors::{split_point, VectorIn, VectorKind, VectorSel, VectorsOut};
pub use super::vectors::{DatatypeName, VectorForm};
use crate::payloads::encode_payloads;
use crate::ratelimit::Client;
use crate::registry::Registry;
use crate::requests::local::blocking;
use crate::requests::{
    collection_meta, Caller, CollectionStatus, Count, CreateCollection, Delete, DeleteTarget,
    EditPayload, Get, Probes, QueryFilters, Router, Scroll, Search, SettingsEdit, StoredPoint,
    Upsert,
};
use crate::requests::{ExampleSearch, ExampleSpace, ExampleVectors, SpaceSearch, SparseSearch};
use crate::status::invalid;
use quiver_engine::example_query::{average_vector, Scoring};
use quiver_engine::sparse::SparseVector;
use quiver_store::wal::RESERVED_KEY_PREFIX;

/// Qdrant's distance of a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Distance {
    /// Cosine similarity (Quiver's cosine metric).
    Cosine,
    /// Euclidean distance (Quiver's L2 metric; scores are distances).
    Euclid,
    /// Dot product (Quiver's inner product).
    Dot,
}

impl Distance {
    /// Its name in Qdrant's REST API.
    pub fn name(self) -> &'static str {
        match self {
            Distance::Cosine => "Cosine",
            Distance::Euclid => "Euclid",
            Distance::Dot => "Dot",
        }
    }

    /// From a REST name.
    pub fn parse(field: &str, name: &str) -> Result<Self, Status> {
        match name {
            "Cosine" => Ok(Distance::Cosine),
            "Euclid" => Ok(Distance::Euclid),
            "Dot" => Ok(Distance::Dot),
            "Manhattan" => Err(unsupported(&format!("{field}: the Manhattan distance"))),
            other => Err(invalid(
                field,
                format!("unknown distance `{other}` (Cosine, Euclid or Dot)"),
            )),
        }
    }

    /// Quiver's metric for it.
    pub fn metric(self) -> Metric {
        match self {
            Distance::Cosine => Metric::Cosine,
            Distance::Euclid => Metric::L2,
            Distance::Dot => Metric::InnerProduct,
        }
    }

    fn of(m: Metric) -> Self {
        match m {
            Metric::Cosine => Distance::Cosine,
            Metric::L2 => Distance::Euclid,
            Metric::InnerProduct => Distance::Dot,
        }
    }

    /// Qdrant's score of a Quiver distance.
    fn score(self, distance: f32) -> f32 {
        match self {
            Distance::Euclid => distance.max(0.0).sqrt(),
            _ => distance,
        }
    }
}

/// The element type a collection's vectors are kept in (Qdrant's `datatype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Datatype {
    /// f32: the vectors as written (Qdrant's default).
    #[default]
    Float32,
    /// f16.
    Float16,
}

impl Datatype {
    /// From a REST name (absent: the default).
    pub fn parse(field: &str, name: Option<&str>) -> Result<Self, Status> {
        match name {
            None | Some("float32") => Ok(Datatype::Float32),
            Some("float16") => Ok(Datatype::Float16),
            Some("uint8") => Err(unsupported(&format!("{field}: uint8 vectors"))),
            Some(other) => Err(invalid(
                field,
                format!("unknown datatype `{other}` (float32 or float16)"),
            )),
        }
    }

    /// From a gRPC value (Qdrant's `Datatype` enum: 0 default, 1 float32, 2 uint8, 3 float16).
    pub fn from_grpc(field: &str, value: Option<i32>) -> Result<Self, Status> {
        match value {
            None | Some(0) | Some(1) => Ok(Datatype::Float32),
            Some(3) => Ok(Datatype::Float16),
            Some(2) => Err(unsupported(&format!("{field}: uint8 vectors"))),
            Some(other) => Err(invalid(field, format!("unknown datatype {other}"))),
        }
    }
}

/// What both ports answer to a collection created without a dense vector (Qdrant allows
/// sparse-only and vector-less collections).
pub const NO_DENSE_VECTOR: &str =
    "vectors: a collection without a dense vector (give `size` and `distance`)";

impl From<Datatype> for DatatypeName {
    fn from(d: Datatype) -> Self {
        match d {
            Datatype::Float32 => DatatypeName::Float32,
            Datatype::Float16 => DatatypeName::Float16,
        }
    }
}

/// A collection to create. `settings` holds, in REST form, what the client gave of
/// `hnsw_config`, `wal_config`, `optimizers_config`, `quantization_config` and `metadata`.
#[derive(Debug, Clone)]
pub struct CreateSpec {
    /// Name.
    pub name: String,
    /// Vector size.
    pub dim: u64,
    /// Distance.
    pub distance: Distance,
    /// What the vectors are kept in.
    pub datatype: Datatype,
    /// The client's settings.
    pub settings: Map<String, Value>,
    /// Shards (`shard_number`; 0: 1).
    pub shards: u32,
    /// Replicas of each shard (`replication_factor`; 0: 1).
    pub replication: u32,
    /// How the vector's parameters were written.
    pub form: VectorForm,
}

/// What a collection is, for `GetCollectionInfo`.
#[derive(Debug, Clone)]
pub struct InfoView {
    /// "green" (serving), "yellow" (training its index) or "red" (the last job failed).
    pub status: &'static str,
    /// Why the last background job failed.
    pub error: Option<String>,
    /// Live points.
    pub points: u64,
    /// Points in the trained IVF-PQ index (0 until trained).
    pub indexed: u64,
    /// Segments, the appendable one included.
    pub segments: u64,
    /// Vector size.
    pub dim: u64,
    /// Distance.
    pub distance: Distance,
    /// HNSW, WAL and optimizer settings: the client's over Qdrant's defaults.
    pub hnsw: Map<String, Value>,
    /// WAL settings.
    pub wal: Map<String, Value>,
    /// Optimizer settings.
    pub optimizers: Map<String, Value>,
    /// The client's quantization settings (REST form), if any.
    pub quantization: Option<Value>,
    /// The client's metadata.
    pub metadata: Map<String, Value>,
    /// Indexed payload fields.
    pub fields: Vec<(String, FieldType)>,
    /// Shards.
    pub shards: u32,
    /// Replicas of each shard.
    pub replication: u32,
    /// How the vector's parameters were written at creation.
    pub form: VectorForm,
}

/// A point to upsert.
#[derive(Debug, Clone)]
pub struct PointIn {
    /// Its id.
    pub key: PointKey,
    /// Its vectors by name (`""`: the unnamed dense vector).
    pub vectors: Vec<(String, VectorIn)>,
    /// Its payload.
    pub payload: Map<String, Value>,
}

/// Which points an operation applies to.
#[derive(Debug, Clone)]
pub enum Selector {
    /// These ids.
    Ids(Vec<PointKey>),
    /// Those passing this filter (Quiver's filter text).
    Filter(String),
}

/// Which payload keys an answer carries.
#[derive(Debug, Clone, PartialEq)]
pub enum PayloadSel {
    /// None.
    None,
    /// All.
    All,
    /// Only these top-level keys.
    Include(Vec<String>),
    /// All but these top-level keys.
    Exclude(Vec<String>),
}

impl PayloadSel {
    /// The payload to answer (`None`: not asked for), the reserved UUID key removed.
    fn apply(&self, mut map: Map<String, Value>) -> Option<Map<String, Value>> {
        map.retain(|k, _| !super::vectors::is_reserved(k));
        match self {
            PayloadSel::None => None,
            PayloadSel::All => Some(map),
            // Key paths (`a.b`, `l[].c`) as Qdrant reads them; a key that is no path is taken
            // as a top-level key.
            PayloadSel::Include(keys) => Some(match Selection::parse(keys) {
                Ok(s) => s.include(map),
                Err(_) => payload::select(map, Some(keys)),
            }),
            PayloadSel::Exclude(keys) => Some(match Selection::parse(keys) {
                Ok(s) => s.exclude(map),
                Err(_) => {
                    for k in keys {
                        map.remove(k);
                    }
                    map
                }
            }),
        }
    }
}

/// A point's id and the vectors a vector update gives it, by name.
pub type PointVectorsIn = (PointKey, Vec<(String, VectorIn)>);

/// One operation of a batch of updates (`UpdateBatch`, `POST …/points/batch`).
#[derive(Debug, Clone)]
pub enum UpdateOp {
    /// Upsert points.
    Upsert {
        /// The points.
        points: Vec<PointIn>,
        /// Which of them are written.
        mode: UpsertMode,
    },
    /// Delete points.
    Delete(Selector),
    /// Set payload keys (`overwrite`: replace the payload).
    SetPayload {
        /// The points.
        selector: Selector,
        /// The keys.
        payload: Map<String, Value>,
        /// A nested key to set them under (refused).
        key: Option<String>,
        /// Replace the whole payload.
        overwrite: bool,
    },
    /// Remove payload keys.
    DeletePayload {
        /// The points.
        selector: Selector,
        /// The keys.
        keys: Vec<String>,
    },
    /// Remove the payload.
    ClearPayload(Selector),
    /// Set vectors of points.
    UpdateVectors(Vec<PointVectorsIn>),
    /// Remove named vectors of points.
    DeleteVectors {
        /// The points.
        selector: Selector,
        /// The vectors' names.
        names: Vec<String>,
    },
}

/// A point read back.
#[derive(Debug, Clone)]
pub struct Record {
    /// Its id.
    pub key: PointKey,
    /// Its payload, when asked for.
    pub payload: Option<Map<String, Value>>,
    /// Its vectors, when asked for.
    pub vector: Option<VectorsOut>,
}

/// A search hit.
#[derive(Debug, Clone)]
pub struct Scored {
    /// The point.
    pub record: Record,
    /// Qdrant's score.
    pub score: f32,
}

/// What a query searches with.
#[derive(Debug, Clone)]
pub enum QueryVector {
    /// This vector.
    Dense(Vec<f32>),
    /// A sparse vector.
    Sparse(SparseVector),
    /// A multi-vector (several dense vectors; MaxSim).
    Multi(Vec<Vec<f32>>),
    /// The stored vector of this point (which is left out of the answer).
    Point(PointKey),
    /// The fusion of the prefetches' rankings.
    Fusion(Fusion),
    /// None: the points passing the filter by ascending id, each scored 1.
    None,
    /// Recommend by examples; examples given by id are left out.
    Recommend {
        /// Liked examples.
        positive: Vec<Example>,
        /// Disliked examples.
        negative: Vec<Example>,
        /// How the examples make a ranking.
        strategy: Strategy,
    },
    /// Qdrant's discovery: points on the positive side of more context pairs first, among
    /// equals those nearer the target; examples given by id are left out.
    Discover {
        /// The target.
        target: Example,
        /// The context pairs (may be none).
        context: Vec<ContextPair>,
    },
    /// Qdrant's context search: points scored by how far they lie on the negative side of
    /// each pair (0: on the positive side of all); examples given by id are left out.
    Context {
        /// The pairs (at least one).
        pairs: Vec<ContextPair>,
    },
}

impl QueryVector {
    /// The examples it names (recommendation, discovery and context queries).
    fn examples(&self) -> Vec<&Example> {
        match self {
            QueryVector::Recommend {
                positive, negative, ..
            } => positive.iter().chain(negative).collect(),
            QueryVector::Discover { target, context } => std::iter::once(target)
                .chain(context.iter().flat_map(|p| [&p.positive, &p.negative]))
                .collect(),
            QueryVector::Context { pairs } => pairs
                .iter()
                .flat_map(|p| [&p.positive, &p.negative])
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// How a recommendation ranks points (Qdrant's `RecommendStrategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Nearest to the mean of the positive examples moved away from the mean of the negative
    /// ones (`2·mean(positive) − mean(negative)`); needs a positive example.
    #[default]
    AverageVector,
    /// By the best similarity to a positive example against the best to a negative one
    /// ([`Scoring::BestScore`]).
    BestScore,
    /// By the summed similarities to the positive examples less those to the negative ones
    /// ([`Scoring::SumScores`]).
    SumScores,
}

impl Strategy {
    /// The strategy Qdrant names `name` (REST's snake case).
    pub fn named(name: &str) -> Option<Strategy> {
        match name {
            "average_vector" => Some(Strategy::AverageVector),
            "best_score" => Some(Strategy::BestScore),
            "sum_scores" => Some(Strategy::SumScores),
            _ => None,
        }
    }
}

/// A context pair of a discovery or context query.
#[derive(Debug, Clone)]
pub struct ContextPair {
    /// The example a point should be more similar to.
    pub positive: Example,
    /// The example it should be less similar to.
    pub negative: Example,
}

/// An example of a recommendation, discovery or context query: a vector, or a stored point's.
#[derive(Debug, Clone)]
pub enum Example {
    /// These values.
    Dense(Vec<f32>),
    /// This sparse vector.
    Sparse(SparseVector),
    /// This multi-vector.
    Multi(Vec<Vec<f32>>),
    /// The vector of this point.
    Point(PointKey),
}

impl From<VectorIn> for Example {
    fn from(v: VectorIn) -> Example {
        match v {
            VectorIn::Dense(d) => Example::Dense(d),
            VectorIn::Sparse(s) => Example::Sparse(s),
            VectorIn::Multi(m) => Example::Multi(m),
        }
    }
}

impl From<VectorIn> for QueryVector {
    fn from(v: VectorIn) -> QueryVector {
        match v {
            VectorIn::Dense(d) => QueryVector::Dense(d),
            VectorIn::Sparse(s) => QueryVector::Sparse(s),
            VectorIn::Multi(m) => QueryVector::Multi(m),
        }
    }
}

/// How a query's hits are grouped ([`QdrantApi::query_groups`]).
#[derive(Debug, Clone)]
pub struct GroupSpec {
    /// The payload key whose values name the groups.
    pub group_by: String,
    /// Most hits per group.
    pub group_size: usize,
    /// The collection holding each group's point (its id the group's value).
    pub with_lookup: Option<WithLookup>,
}

/// Where groups find their points.
#[derive(Debug, Clone)]
pub struct WithLookup {
    /// The collection (or alias).
    pub collection: String,
    /// The payload keys to answer.
    pub with_payload: PayloadSel,
    /// The vectors to answer.
    pub with_vector: VectorSel,
}

/// Hits sharing one value of the grouping key.
#[derive(Debug, Clone)]
pub struct Group {
    /// The value (an integer or a string).
    pub id: Value,
    /// Its hits, best first.
    pub hits: Vec<Scored>,
    /// The point whose id is the value, from `with_lookup`'s collection.
    pub lookup: Option<Record>,
}

/// Sets the limit of every prefetch under `q` to `limit` (grouping ranks every point).
fn widen_prefetches(q: &mut QuerySpec, limit: usize) {
    for p in &mut q.prefetch {
        p.limit = limit;
        p.offset = 0;
        widen_prefetches(p, limit);
    }
}

/// Maximal marginal relevance over a nearest query's candidates ([`quiver_engine::mmr`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mmr {
    /// 0 (by relevance alone) to 1 (by difference from the points picked before).
    pub diversity: f32,
    /// Nearest candidates re-ranked (`None`: the query's limit).
    pub candidates: Option<usize>,
}

impl Mmr {
    /// Qdrant's defaults for what a request leaves out: diversity 0.5, the limit's
    /// candidates; `diversity` checked to lie in [0, 1].
    pub fn new(
        field: &str,
        diversity: Option<f32>,
        candidates: Option<usize>,
    ) -> Result<Mmr, Status> {
        let diversity = diversity.unwrap_or(0.5);
        if !(0.0..=1.0).contains(&diversity) {
            return Err(invalid(
                &format!("{field}.diversity"),
                format!("{diversity} is out of range: it must be between 0 and 1"),
            ));
        }
        if candidates == Some(0) {
            return Err(invalid(
                &format!("{field}.candidates_limit"),
                "0: at least one candidate",
            ));
        }
        Ok(Mmr {
            diversity,
            candidates,
        })
    }
}

/// Where a query by point id takes the point's vector from (Qdrant's `lookup_from`).
#[derive(Debug, Clone, PartialEq)]
pub struct LookupFrom {
    /// The collection (or alias) holding the point.
    pub collection: String,
    /// The vector of it (`None`: the query's `using`).
    pub vector: Option<String>,
}

/// One nearest-neighbour query.
#[derive(Debug, Clone)]
pub struct QuerySpec {
    /// What it searches with.
    pub vector: QueryVector,
    /// A point id's vector is read from this collection, not the one searched.
    pub lookup_from: Option<LookupFrom>,
    /// The vector it searches (`""`: the unnamed dense vector).
    pub using: String,
    /// Queries whose results this one ranks (fuses, or scores again with its vector).
    pub prefetch: Vec<QuerySpec>,
    /// Re-rank the nearest candidates for diversity (a nearest query's `mmr`).
    pub mmr: Option<Mmr>,
    /// Only points passing this filter (Quiver's filter text).
    pub filter: Option<String>,
    /// Hits to answer.
    pub limit: usize,
    /// Hits to skip first.
    pub offset: usize,
    /// Only hits scoring at least this (Euclid: at most).
    pub score_threshold: Option<f32>,
    /// Inverted lists to visit (0: the server's default); from `params.hnsw_ef`.
    pub nprobe: u32,
    /// Refine factor (0: the server's default); from `params.quantization.oversampling`.
    pub refine_factor: u32,
    /// Visit every list (`params.exact`).
    pub exact: bool,
    /// Payload keys to answer.
    pub with_payload: PayloadSel,
    /// The vectors to answer.
    pub with_vector: VectorSel,
}

/// Quiver's own index parameters, given as `metadata.quiver` (an extension Qdrant clients can
/// send unchanged).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct QuiverParams {
    nlist: Option<u32>,
    pq_m: Option<u32>,
    refine: Option<String>,
    seed: Option<u64>,
    train_at: Option<u64>,
}

/// Qdrant's default `optimizers_config.indexing_threshold`, in KiB of vectors.
const DEFAULT_INDEXING_THRESHOLD_KB: u64 = 10_000;
/// Fewest vectors a collection trains by itself on.
const MIN_TRAIN_AT: u64 = 1_024;

/// Qdrant's reported defaults.
fn default_hnsw() -> Map<String, Value> {
    obj(
        json!({"m": 16, "ef_construct": 100, "full_scan_threshold": 10000,
               "max_indexing_threads": 0, "on_disk": false}),
    )
}
fn default_wal() -> Map<String, Value> {
    obj(json!({"wal_capacity_mb": 32, "wal_segments_ahead": 0, "wal_retain_closed": 1}))
}
fn default_optimizers() -> Map<String, Value> {
    obj(
        json!({"deleted_threshold": 0.2, "vacuum_min_vector_number": 1000,
               "default_segment_number": 0, "indexing_threshold": DEFAULT_INDEXING_THRESHOLD_KB,
               "flush_interval_sec": 5}),
    )
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(o) => o,
        _ => Map::new(),
    }
}

/// `base` with `over`'s keys set (nulls skipped).
fn merged(mut base: Map<String, Value>, over: Option<&Value>) -> Map<String, Value> {
    if let Some(Value::Object(o)) = over {
        for (k, v) in o {
            if !v.is_null() {
                base.insert(k.clone(), v.clone());
            }
        }
    }
    base
}

/// The client's settings, the same keys as a create or update request.
const SETTINGS: [&str; 5] = [
    "hnsw_config",
    "wal_config",
    "optimizers_config",
    "quantization_config",
    "metadata",
];

/// The operations, over the request layer.
#[derive(Clone)]
pub struct QdrantApi {
    router: Router,
}

impl QdrantApi {
    /// The operations over `registry`'s request layer.
    pub fn new(registry: Arc<Registry>) -> Self {
        QdrantApi {
            router: Router::new(registry),
        }
    }

    fn limits(&self) -> &crate::config::Limits {
        self.router.limits()
    }

    // ---- collections ----

    /// Creates a collection.
    pub async fn create(&self, spec: CreateSpec) -> Result<(), Status> {
        let dense_names = (!spec.form.no_dense)
            .then_some(&spec.form.name)
            .into_iter()
            .chain(spec.form.spaces.keys());
        for name in dense_names {
            if spec.form.sparse.contains_key(name) {
                return Err(invalid(
                    "sparse_vectors",
                    format!("`{name}` names both a dense and a sparse vector"),
                ));
            }
        }
        // A name is part of a payload key path (`has_vector`): one quoted path step.
        for name in spec.form.names() {
            if name.contains('"') || name.len() > MAX_VECTOR_NAME_BYTES {
                return Err(invalid(
                    "vectors",
                    format!(
                        "vector name `{name}`: at most {MAX_VECTOR_NAME_BYTES} bytes, without `\"`"
                    ),
                ));
            }
        }
        let max_dim = self.limits().max_dim as u64;
        for (name, p) in &spec.form.spaces {
            if p.size == 0 || p.size > max_dim {
                return Err(invalid(
                    &format!("vectors.{name}.size"),
                    format!(
                        "{} is out of range: it must be between 1 and {max_dim}",
                        p.size
                    ),
                ));
            }
        }
        let quiver = quiver_params(&spec.settings)?;
        let (refine, refine_factor) = match quiver.refine.as_deref() {
            None | Some("") if spec.datatype == Datatype::Float16 => ("f16", 0),
            None | Some("") => ("f32", 0),
            Some("none") => ("f32", 1),
            Some("f16") => ("f16", 0),
            Some("f32") => ("f32", 0),
            Some("codes") => ("none", 0),
            Some(other) => {
                return Err(invalid(
                    "metadata.quiver.refine",
                    format!("unknown value `{other}` (none, f16, f32 or codes)"),
                ))
            }
        };
        let index = IndexConfig {
            nlist: quiver.nlist.unwrap_or(0),
            pq_m: quiver.pq_m.unwrap_or(0),
            refine: refine.into(),
            refine_factor,
            seed: quiver.seed.unwrap_or(0),
            train_at: 0,
        };
        let metric = match spec.distance {
            Distance::Cosine => Metric::Cosine,
            Distance::Euclid => Metric::L2,
            Distance::Dot => Metric::InnerProduct,
        };
        // Without a dense vector: a one-dimension placeholder, never trained.
        let (dim, metric) = match spec.form.no_dense {
            true => (1, Metric::L2),
            false => (spec.dim, metric),
        };
        let mut meta = collection_meta(self.limits(), &spec.name, dim, metric, index, Vec::new())
            .map_err(|s| rename_field(s, "dim", "vectors.size"))?;
        meta.index.train_at = match spec.form.no_dense {
            true => 0,
            false => train_at(&spec.settings, dim, &quiver)?,
        };
        check_settings(&spec.settings)?;
        let mut settings = spec.settings;
        let form = serde_json::to_value(&spec.form)
            .map_err(|e| Status::internal(format!("the vector form: {e}")))?;
        settings.insert(VectorForm::KEY.into(), form);
        meta.settings = Value::Object(settings);
        // A single server holds one shard of one replica whatever is asked (as a single
        // Qdrant node does); a cluster node makes what is asked.
        let (shards, replication) = match self.router.is_cluster() {
            true => (spec.shards, spec.replication),
            false => (0, 0),
        };
        let create = CreateCollection {
            meta,
            shards,
            replication,
        };
        self.router.create(create).await?;
        Ok(())
    }

    /// Changes a collection's settings (merged into those it has; an update's
    /// `quantization_config` is ignored). The size at which it trains by itself changes only
    /// when the update gives `optimizers_config.indexing_threshold` or `metadata.quiver`.
    pub async fn update(&self, name: &str, update: Map<String, Value>) -> Result<(), Status> {
        let meta = self.router.meta(name).await?;
        let dim = meta.dim as u64;
        // Checked against the settings now; applied below to the settings current then, under
        // the store's lock, so that concurrent updates do not undo each other.
        let settings = with_update(obj(meta.settings.clone()), &update);
        check_settings(&settings)?;
        let quiver = quiver_params(&settings)?;
        train_at(&settings, dim, &quiver)?;
        // A collection without a dense vector never trains (its vectors are placeholders).
        let no_dense = VectorForm::of(&obj(meta.settings.clone())).no_dense;
        let asked = update
            .get("optimizers_config")
            .is_some_and(|o| o.get("indexing_threshold").is_some())
            || update
                .get("metadata")
                .is_some_and(|m| m.get("quiver").is_some());
        let retrain = asked && !no_dense;
        let edit: SettingsEdit = Arc::new(move |settings, at| {
            let now = with_update(obj(settings.take()), &update);
            if retrain {
                if let Ok(n) = quiver_params(&now).and_then(|q| train_at(&now, dim, &q)) {
                    *at = n;
                }
            }
            *settings = Value::Object(now);
        });
        self.router.update_settings(name, edit).await
    }

    /// Drops a collection; false when there was none.
    pub async fn delete(&self, name: &str) -> Result<bool, Status> {
        match self.router.drop_collection(name).await {
            Ok(()) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(s),
        }
    }

    /// Whether a collection exists (or is being loaded).
    pub async fn exists(&self, name: &str) -> Result<bool, Status> {
        self.router.exists(name).await
    }

    /// The collections' names (those being loaded included; those that failed to open left
    /// out).
    pub async fn list(&self) -> Vec<String> {
        self.router.names().await
    }

    /// What a collection is.
    pub async fn info(&self, name: &str) -> Result<InfoView, Status> {
        let state = self.router.describe(name, &Caller::default()).await?;
        let Some(meta) = state.meta else {
            return Err(Status::unavailable(format!(
                "collection {name:?} is {}; retry when GetCollection says ready",
                state.status.describe()
            )));
        };
        let settings = obj(meta.settings.clone());
        let (status, error) = match state.status {
            CollectionStatus::Ready => ("green", None),
            CollectionStatus::Training | CollectionStatus::Loading => ("yellow", None),
            CollectionStatus::Failed(m) => ("red", Some(m)),
        };
        Ok(InfoView {
            status,
            error,
            points: state.count,
            indexed: if state.trained { state.count } else { 0 },
            segments: u64::from(state.segments),
            dim: meta.dim as u64,
            distance: Distance::of(meta.metric()),
            hnsw: merged(default_hnsw(), settings.get("hnsw_config")),
            wal: merged(default_wal(), settings.get("wal_config")),
            optimizers: merged(default_optimizers(), settings.get("optimizers_config")),
            quantization: settings
                .get("quantization_config")
                .filter(|q| q.as_object().is_some_and(|o| !o.is_empty()))
                .cloned(),
            metadata: obj(settings.get("metadata").cloned().unwrap_or_default()),
            fields: meta
                .fields
                .iter()
                .map(|f| (f.key.clone(), f.kind))
                .collect(),
            shards: state.shards,
            replication: state.replication,
            form: VectorForm::of(&settings),
        })
    }

    // ---- aliases ----

    /// Changes the aliases: `actions` in order, all or none.
    pub async fn update_aliases(&self, actions: Vec<AliasAction>) -> Result<(), Status> {
        if actions.is_empty() {
            return Err(invalid("actions", "empty: give at least one action"));
        }
        self.router.update_aliases(actions).await
    }

    /// The aliases (alias, collection), by alias; only those of `collection` when given.
    pub async fn aliases(&self, collection: Option<&str>) -> Result<Vec<(String, String)>, Status> {
        self.router.aliases(collection).await
    }

    /// The collection `name` stands for (itself, or an alias's collection), if any, on this
    /// server (none in cluster mode: no aliases there yet).
    pub fn collection_of(&self, name: &str) -> Option<String> {
        match self.router.is_cluster() {
            true => None,
            false => self.router.registry().resolve(name),
        }
    }

    /// `filter` bound to the collection's vectors (its `has_vector` conditions).
    async fn bound(&self, name: &str, field: &str, filter: String) -> Result<String, Status> {
        match filter.contains("has_vector") {
            true => self.form(name).await?.bind_filter(field, &filter),
            false => Ok(filter),
        }
    }

    /// How a collection's vectors are named.
    async fn form(&self, name: &str) -> Result<VectorForm, Status> {
        let meta = self.router.meta(name).await?;
        Ok(VectorForm::of(&obj(meta.settings)))
    }

    // ---- points: writes ----

    /// Adds or replaces points; durable and visible when it returns. An id given twice keeps
    /// its last point (as Qdrant does). `admitted`: the request's share of the write budget,
    /// taken already ([`crate::admission`]).
    pub async fn upsert(
        &self,
        client: Client,
        name: &str,
        points: Vec<PointIn>,
        mode: UpsertMode,
        admitted: Option<crate::admission::PreAdmitted>,
    ) -> Result<(), Status> {
        let meta = self.router.meta(name).await?;
        if points.is_empty() {
            return Err(invalid("points", "empty: at least one point is required"));
        }
        let max = self.limits().max_upsert_points;
        if points.len() > max {
            return Err(invalid(
                "points",
                format!(
                    "{} points exceed the limit of {max} per request",
                    points.len()
                ),
            ));
        }
        let caller = Caller::new(client, None);
        // The points UUIDs map to now: a UUID is refused where another id holds its point.
        let mut uuid_ids: Vec<u64> = points
            .iter()
            .filter(|p| p.key.as_uuid().is_some())
            .map(|p| p.key.internal())
            .collect();
        uuid_ids.sort_unstable();
        uuid_ids.dedup();
        let stored: HashMap<u64, Vec<u8>> = self
            .get_many(name, uuid_ids, false, &caller)
            .await?
            .into_iter()
            .map(|(id, p)| (id, p.payload))
            .collect();
        let dim = meta.dim;
        let form = VectorForm::of(&obj(meta.settings.clone()));
        // Rendering and encoding payloads runs off the async threads.
        let (ids, vectors, payloads) = blocking(move || {
            let (ids, vectors, texts) = prepare_upsert(&form, dim, &stored, points)?;
            let payloads = encode_payloads(&texts, ids.len())?;
            Ok((ids, vectors, payloads))
        })
        .await?;
        let upsert = Upsert {
            collection: name.to_string(),
            ids,
            vectors,
            payloads,
            mode,
            // Qdrant's answer means applied (a single server applies a write before it
            // answers; a cluster node waits until a replica of each shard has).
            wait: true,
        };
        self.router
            .upsert(upsert, &caller, admitted)
            .await
            .map_err(|s| {
                rename_field(rename_field(s, "vectors", "points.vector"), "ids", "points")
            })?;
        Ok(())
    }

    /// Deletes points (a UUID only deletes the point holding that UUID).
    pub async fn delete_points(
        &self,
        client: Client,
        name: &str,
        selector: Selector,
    ) -> Result<(), Status> {
        let target = match selector {
            Selector::Ids(keys) => {
                let ids: Vec<u64> = self
                    .resolve(name, Selector::Ids(keys))
                    .await?
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect();
                if ids.is_empty() {
                    return Ok(());
                }
                DeleteTarget::Ids(ids)
            }
            Selector::Filter(filter) => {
                DeleteTarget::Filter(self.bound(name, "filter", filter).await?)
            }
        };
        let delete = Delete {
            collection: name.to_string(),
            target,
            wait: true,
        };
        self.router
            .delete(delete, &Caller::new(client, None))
            .await?;
        Ok(())
    }

    /// The stored points of `ids` that exist, by id, read a request's worth at a time.
    async fn get_many(
        &self,
        name: &str,
        ids: Vec<u64>,
        with_vectors: bool,
        caller: &Caller,
    ) -> Result<HashMap<u64, StoredPoint>, Status> {
        let mut found = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(self.limits().max_queries_per_request.max(1)) {
            let get = Get {
                collection: name.to_string(),
                ids: chunk.to_vec(),
                with_vectors,
            };
            found.extend(
                self.router
                    .get(get, caller)
                    .await?
                    .into_iter()
                    .map(|p| (p.id, p)),
            );
        }
        Ok(found)
    }

    /// The internal ids and keys of the points a selector names that exist, each once; at
    /// most `--max-upsert-points` of them (one logged write edits them all).
    async fn resolve(
        &self,
        name: &str,
        selector: Selector,
    ) -> Result<Vec<(u64, PointKey)>, Status> {
        // An unknown collection is one even when the selector names nothing.
        self.router.meta(name).await?;
        let max = self.limits().max_upsert_points;
        let page = self.limits().max_queries_per_request.max(1);
        let caller = Caller::default();
        let mut found: Vec<(u64, PointKey)> = Vec::new();
        match selector {
            Selector::Ids(keys) => {
                if keys.len() > max {
                    return Err(invalid(
                        "points",
                        format!("{} ids exceed the limit of {max} per request", keys.len()),
                    ));
                }
                let ids = keys.iter().map(|k| k.internal()).collect();
                let stored = self.get_many(name, ids, false, &caller).await?;
                // A UUID's key is in its payload: parsed off the async threads.
                found = blocking(move || {
                    Ok(keys
                        .into_iter()
                        .filter_map(|k| {
                            let id = k.internal();
                            let p = stored.get(&id)?;
                            (key_of_stored(id, &p.payload) == Some(k)).then_some((id, k))
                        })
                        .collect())
                })
                .await?;
            }
            Selector::Filter(filter) => {
                let filter = self.bound(name, "filter", filter).await?;
                let mut from = None;
                loop {
                    let scroll = Scroll {
                        collection: name.to_string(),
                        filter: filter.clone(),
                        from,
                        limit: page,
                        with_vectors: false,
                    };
                    let got = self.router.scroll(scroll, &caller).await?;
                    let keyed: Vec<(u64, PointKey)> = blocking(move || {
                        Ok(got
                            .points
                            .iter()
                            .filter_map(|p| Some((p.id, key_of_stored(p.id, &p.payload)?)))
                            .collect())
                    })
                    .await?;
                    found.extend(keyed);
                    if found.len() > max {
                        return Err(invalid(
                            "filter",
                            format!("selects more than the limit of {max} points per request"),
                        ));
                    }
                    match got.next {
                        Some(next) => from = Some(next),
                        None => break,
                    }
                }
            }
        }
        found.sort_unstable_by_key(|(id, _)| *id);
        found.dedup_by_key(|(id, _)| *id);
        Ok(found)
    }

    /// Applies one logged payload edit to `ids`.
    async fn edit(&self, name: &str, ids: Vec<u64>, edit: PayloadEdit) -> Result<(), Status> {
        if ids.is_empty() {
            return Ok(());
        }
        let edit = EditPayload {
            collection: name.to_string(),
            ids,
            edit,
            wait: true,
        };
        self.router.edit_payload(edit, &Caller::default()).await?;
        Ok(())
    }

    /// Sets payload keys (`overwrite`: replaces the whole payload) of the selected points.
    pub async fn set_payload(
        &self,
        name: &str,
        selector: Selector,
        payload: Map<String, Value>,
        key: Option<String>,
        overwrite: bool,
    ) -> Result<(), Status> {
        if key.as_deref().is_some_and(|k| !k.is_empty()) {
            return Err(unsupported("key: setting a payload at a nested key"));
        }
        if payload.keys().any(|k| k.starts_with(RESERVED_KEY_PREFIX)) {
            return Err(reserved("payload"));
        }
        let encoded =
            payload::encode(&Value::Object(payload)).map_err(|e| invalid("payload", e))?;
        let ids = self.resolve(name, selector).await?;
        // A replaced payload keeps a UUID point's UUID.
        let edit = if overwrite {
            PayloadEdit::ReplaceKeepingReserved(encoded)
        } else {
            PayloadEdit::Merge(encoded)
        };
        self.edit(name, ids.into_iter().map(|(id, _)| id).collect(), edit)
            .await
    }

    /// Removes payload keys of the selected points.
    pub async fn delete_payload(
        &self,
        name: &str,
        selector: Selector,
        keys: Vec<String>,
    ) -> Result<(), Status> {
        let keys: Vec<String> = keys
            .into_iter()
            .filter(|k| !k.starts_with(RESERVED_KEY_PREFIX))
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let ids = self.resolve(name, selector).await?;
        self.edit(
            name,
            ids.into_iter().map(|(id, _)| id).collect(),
            PayloadEdit::DeleteKeys(keys),
        )
        .await
    }

    /// Removes the whole payload of the selected points (a UUID point keeps its UUID).
    pub async fn clear_payload(&self, name: &str, selector: Selector) -> Result<(), Status> {
        let ids = self.resolve(name, selector).await?;
        self.edit(
            name,
            ids.into_iter().map(|(id, _)| id).collect(),
            PayloadEdit::ReplaceKeepingReserved(Vec::new()),
        )
        .await
    }

    /// Sets vectors of existing points (Qdrant's `UpdateVectors`): each point keeps its
    /// payload and the vectors not given. A point that does not exist is NOT_FOUND, and then
    /// nothing is written.
    pub async fn update_vectors(
        &self,
        client: Client,
        name: &str,
        points: Vec<PointVectorsIn>,
    ) -> Result<(), Status> {
        let meta = self.router.meta(name).await?;
        if points.is_empty() {
            return Err(invalid("points", "empty: at least one point is required"));
        }
        let max = self.limits().max_upsert_points;
        if points.len() > max {
            return Err(invalid(
                "points",
                format!(
                    "{} points exceed the limit of {max} per request",
                    points.len()
                ),
            ));
        }
        let form = VectorForm::of(&obj(meta.settings.clone()));
        let dim = meta.dim;
        let keys: Vec<PointKey> = points.iter().map(|p| p.0).collect();
        let live: std::collections::HashSet<u64> = self
            .resolve(name, Selector::Ids(keys))
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        // Each point once (a later entry's vectors over an earlier one's): its store vector
        // if given, and the vectors its payload keeps.
        let mut order: Vec<u64> = Vec::new();
        type Split = (Option<Vec<f32>>, Map<String, Value>);
        let mut split: HashMap<u64, Split> = HashMap::new();
        for (i, (key, vectors)) in points.into_iter().enumerate() {
            let field = format!("points[{i}].vector");
            if vectors.is_empty() {
                return Err(invalid(&field, "no vector to update"));
            }
            let id = key.internal();
            if !live.contains(&id) {
                return Err(Status::not_found(format!(
                    "No point with id {} found",
                    key.to_json()
                )));
            }
            let mut kept = Map::new();
            let dense = super::vectors::split_vectors(&form, dim, &field, vectors, &mut kept)?;
            let entry = split.entry(id).or_insert_with(|| {
                order.push(id);
                (None, Map::new())
            });
            if dense.is_some() {
                entry.0 = dense;
            }
            entry.1.extend(kept);
        }
        // Points whose store vector is written (or is the placeholder): one conditional
        // upsert keeping their payloads; the others: their payload keys set.
        let caller = Caller::new(client, None);
        let (mut ids, mut vectors, mut texts) = (Vec::new(), Vec::new(), Vec::new());
        let mut edits = Vec::new();
        for id in order {
            let (dense, kept) = split.remove(&id).unwrap_or_default();
            let text = Value::Object(kept).to_string();
            match (dense, form.no_dense) {
                (Some(d), _) => vectors.extend(d),
                (None, true) => vectors.extend(super::vectors::PLACEHOLDER),
                (None, false) => {
                    edits.push((id, text));
                    continue;
                }
            }
            ids.push(id);
            texts.push(text);
        }
        if !ids.is_empty() {
            let payloads = encode_payloads(&texts, ids.len())?;
            let upsert = Upsert {
                collection: name.to_string(),
                ids,
                vectors,
                payloads,
                mode: UpsertMode::UpdateVectors,
                wait: true,
            };
            self.router
                .upsert(upsert, &caller, None)
                .await
                .map_err(|s| {
                    rename_field(
                        rename_field(s, "vectors", "points.vector"),
                        "payloads",
                        "points",
                    )
                })?;
        }
        for (id, text) in edits {
            let encoded = payload::encode_text(&text).map_err(|e| invalid("points", e))?;
            self.edit(name, vec![id], PayloadEdit::Merge(encoded))
                .await?;
        }
        Ok(())
    }

    /// Applies a batch of updates in order, each as its own operation (durable and visible
    /// before the next starts, as Qdrant applies a batch); the first that fails stops the
    /// batch, its error naming it (`operations[i]`), the ones before it staying applied.
    /// Answers how many were applied. `admitted`: the batch's share of the write budget,
    /// taken already (its first upsert holds it; later ones take their own).
    pub async fn update_batch(
        &self,
        client: Client,
        name: &str,
        ops: Vec<UpdateOp>,
        admitted: Option<crate::admission::PreAdmitted>,
    ) -> Result<usize, Status> {
        self.router.meta(name).await?;
        let max = self.limits().max_queries_per_request;
        if ops.len() > max {
            return Err(invalid(
                "operations",
                format!(
                    "{} operations exceed the limit of {max} per request",
                    ops.len()
                ),
            ));
        }
        let n = ops.len();
        for (i, op) in ops.into_iter().enumerate() {
            let r = match op {
                UpdateOp::Upsert { points, mode } => {
                    self.upsert(client, name, points, mode, admitted.clone())
                        .await
                }
                UpdateOp::Delete(sel) => self.delete_points(client, name, sel).await,
                UpdateOp::SetPayload {
                    selector,
                    payload,
                    key,
                    overwrite,
                } => {
                    self.set_payload(name, selector, payload, key, overwrite)
                        .await
                }
                UpdateOp::DeletePayload { selector, keys } => {
                    self.delete_payload(name, selector, keys).await
                }
                UpdateOp::ClearPayload(sel) => self.clear_payload(name, sel).await,
                UpdateOp::UpdateVectors(points) => self.update_vectors(client, name, points).await,
                UpdateOp::DeleteVectors { selector, names } => {
                    self.delete_vectors(name, selector, names).await
                }
            };
            r.map_err(|e| Status::new(e.code(), format!("operations[{i}]: {}", e.message())))?;
        }
        Ok(n)
    }

    /// Removes named vectors of the selected points (Qdrant's `DeleteVectors`): the points
    /// stay, with their other vectors and payload. The dense vector a collection indexes
    /// cannot be removed (Quiver keeps one for every point).
    pub async fn delete_vectors(
        &self,
        name: &str,
        selector: Selector,
        names: Vec<String>,
    ) -> Result<(), Status> {
        let form = self.form(name).await?;
        let mut keys = Vec::with_capacity(names.len());
        for (i, n) in names.iter().enumerate() {
            let key = match form.kind_of(&format!("vector[{i}]"), n)? {
                VectorKind::Space { .. } => quiver_store::wal::dense_key(n),
                VectorKind::Sparse { .. } => quiver_store::wal::sparse_key(n),
                VectorKind::Dense => {
                    return Err(unsupported(&format!(
                        "vector[{i}]: deleting `{n}`, the dense vector the collection's IVF-PQ index holds (Quiver keeps one for every point; upsert the point to change it)"
                    )))
                }
            };
            keys.push(key);
        }
        if keys.is_empty() {
            return Ok(());
        }
        let ids = self.resolve(name, selector).await?;
        self.edit(
            name,
            ids.into_iter().map(|(id, _)| id).collect(),
            PayloadEdit::DeleteKeys(keys),
        )
        .await
    }

    /// Indexes a payload field.
    pub async fn create_field_index(
        &self,
        name: &str,
        field: &str,
        kind: FieldType,
    ) -> Result<(), Status> {
        let given = crate::payloads::field_to_proto(&FieldSpec {
            key: field.to_string(),
            kind,
        });
        let spec = crate::payloads::field_spec("field", &given)
            .map_err(|s| rename_field(s, "field.key", "field_name"))?;
        self.router
            .create_field_index(name, spec, &Caller::default())
            .await?;
        Ok(())
    }

    /// Drops a payload field's index.
    pub async fn delete_field_index(&self, name: &str, field: &str) -> Result<(), Status> {
        self.router
            .delete_field_index(name, field, &Caller::default())
            .await
            .map_err(|s| rename_field(s, "key", "field_name"))?;
        Ok(())
    }

    // ---- points: reads ----

    /// Reads points back by id, in request order (absent ones left out).
    pub async fn get(
        &self,
        name: &str,
        keys: Vec<PointKey>,
        with_payload: PayloadSel,
        with_vector: VectorSel,
    ) -> Result<Vec<Record>, Status> {
        // An unknown collection is one even when no id is asked for.
        let form = self.form(name).await?;
        let max = self.limits().max_queries_per_request;
        if keys.len() > max {
            return Err(invalid(
                "ids",
                format!("{} ids exceed the limit of {max} per request", keys.len()),
            ));
        }
        let ids = keys.iter().map(|k| k.internal()).collect();
        let found = self
            .get_many(
                name,
                ids,
                with_vector.wants_dense(&form),
                &Caller::default(),
            )
            .await?;
        // Parsing payloads runs off the async threads.
        blocking(move || {
            Ok(keys
                .into_iter()
                .filter_map(|k| {
                    let p = found.get(&k.internal())?;
                    let map = payload::decode(&p.payload);
                    (key_of(k.internal(), Some(&map)) == Some(k)).then(|| Record {
                        key: k,
                        vector: with_vector.select(&form, &p.vector, &map),
                        payload: with_payload.apply(map),
                    })
                })
                .collect())
        })
        .await
    }

    /// A page of points by ascending id, from `offset`; and the id the next page starts at.
    pub async fn scroll(
        &self,
        name: &str,
        filter: Option<String>,
        offset: Option<PointKey>,
        limit: usize,
        with_payload: PayloadSel,
        with_vector: VectorSel,
    ) -> Result<(Vec<Record>, Option<PointKey>), Status> {
        let form = self.form(name).await?;
        let filter = filter.map(|f| form.bind_filter("filter", &f)).transpose()?;
        let max = self.limits().max_queries_per_request;
        if limit == 0 || limit > max {
            return Err(invalid(
                "limit",
                format!("{limit} is out of range: it must be between 1 and {max}"),
            ));
        }
        // Ids no key maps to (written in the UUID range by Quiver's own API) are passed
        // over, so the next page's first id is always a key. Read in batches of the page's
        // size (and one more), never every matching id.
        let caller = Caller::default();
        let mut from = offset.map(|o| o.internal());
        let mut page: Vec<(StoredPoint, PointKey, Map<String, Value>)> = Vec::with_capacity(limit);
        let mut next = None;
        'batches: loop {
            let scroll = Scroll {
                collection: name.to_string(),
                filter: filter.clone().unwrap_or_default(),
                from,
                limit: (limit + 1).min(max),
                with_vectors: with_vector.wants_dense(&form),
            };
            let got = self.router.scroll(scroll, &caller).await?;
            // Parsing payloads runs off the async threads.
            let points = got.points;
            let decoded = blocking(move || {
                Ok(points
                    .into_iter()
                    .map(|p| {
                        let map = payload::decode(&p.payload);
                        (p, map)
                    })
                    .collect::<Vec<_>>())
            })
            .await?;
            for (p, map) in decoded {
                let Some(key) = key_of(p.id, Some(&map)) else {
                    continue;
                };
                if page.len() == limit {
                    next = Some(key);
                    break 'batches;
                }
                page.push((p, key, map));
            }
            match got.next {
                Some(n) => from = Some(n),
                None => break,
            }
        }
        let records = page
            .into_iter()
            .map(|(p, key, map)| Record {
                key,
                vector: with_vector.select(&form, &p.vector, &map),
                payload: with_payload.apply(map),
            })
            .collect();
        Ok((records, next))
    }

    /// How many points pass a filter.
    pub async fn count(&self, name: &str, filter: Option<String>) -> Result<u64, Status> {
        let count = Count {
            collection: name.to_string(),
            filter: self
                .bound(name, "filter", filter.unwrap_or_default())
                .await?,
        };
        self.router.count(count, &Caller::default()).await
    }

    /// Answers queries (one batch: the same collection): nearest neighbours by a dense or
    /// sparse vector or a point's, and the Query API's prefetches, fused (RRF, DBSF) or scored
    /// again by the query's vector.
    pub async fn query(
        &self,
        client: Client,
        name: &str,
        queries: Vec<QuerySpec>,
        timeout: Option<Duration>,
    ) -> Result<Vec<Vec<Scored>>, Status> {
        let meta = self.router.meta(name).await?;
        let target = Target {
            name,
            form: VectorForm::of(&obj(meta.settings.clone())),
            distance: Distance::of(meta.metric()),
        };
        let n = queries.len();
        let max = self.limits().max_queries_per_request;
        if n > max {
            return Err(invalid(
                "searches",
                format!("{n} queries exceed the limit of {max} per request"),
            ));
        }
        let caller = Caller::new(client, timeout);
        let mut out = Vec::with_capacity(n);
        for (qi, q) in queries.into_iter().enumerate() {
            let field = if n == 1 {
                String::new()
            } else {
                format!("searches[{qi}].")
            };
            let prefetches = count_prefetches(&q);
            if prefetches > MAX_PREFETCHES {
                return Err(invalid(
                    &format!("{field}prefetch"),
                    format!(
                        "{prefetches} prefetches exceed the limit of {MAX_PREFETCHES} per query"
                    ),
                ));
            }
            // The points a query names by id are left out of every ranking of it, as Qdrant
            // leaves them out: a filter every level of prefetch inherits.
            if let Some(n) = examples_over(&q, MAX_EXAMPLES) {
                return Err(invalid(
                    &format!("{field}query"),
                    format!("{n} examples exceed the limit of {MAX_EXAMPLES}"),
                ));
            }
            // A lookup in this very collection (or an alias of it) names its own points.
            let this = self.collection_of(name).unwrap_or_else(|| name.to_string());
            let own = |l: &LookupFrom| {
                l.collection == name
                    || self
                        .collection_of(&l.collection)
                        .unwrap_or_else(|| l.collection.clone())
                        == this
            };
            let mut referenced = Vec::new();
            referenced_ids(&q, &own, &mut referenced);
            let root =
                (!referenced.is_empty()).then(|| json!({"must_not": [{"has_id": referenced}]}));
            let ranked = self.rank(&target, &q, &field, &caller, root).await?;
            out.push(self.scored(&target, ranked, &q, &caller).await?);
        }
        Ok(out)
    }

    /// A query's hits in groups by a payload key's value (Qdrant's `query_points_groups`):
    /// the query ranks up to the server's `max_k` points (its prefetches likewise); each hit
    /// joins the group of every distinct value (an integer or a string) the key holds, up to
    /// `group_size` hits per group, groups in the order of their best hit; a hit whose key
    /// is missing or holds another kind of value joins none. The first `limit` groups are
    /// answered, each with the point of its id in `with_lookup`'s collection.
    pub async fn query_groups(
        &self,
        client: Client,
        name: &str,
        q: QuerySpec,
        g: GroupSpec,
        timeout: Option<Duration>,
    ) -> Result<Vec<Group>, Status> {
        let path =
            payload::path::KeyPath::parse(&g.group_by).map_err(|e| invalid("group_by", e))?;
        if g.group_size == 0 {
            return Err(invalid("group_size", "0: at least 1"));
        }
        if q.limit == 0 {
            return Err(invalid("limit", "0: at least one group"));
        }
        let max_k = self.limits().max_k;
        let mut wide = q.clone();
        wide.limit = max_k;
        wide.offset = 0;
        wide.with_payload = PayloadSel::All;
        widen_prefetches(&mut wide, max_k);
        let hits = self
            .query(client, name, vec![wide], timeout)
            .await?
            .pop()
            .unwrap_or_default();
        let mut groups: Vec<Group> = Vec::new();
        let mut at: HashMap<String, usize> = HashMap::new();
        for hit in hits {
            let map = hit.record.payload.clone().unwrap_or_default();
            let values = path.values(&map);
            let ids: Option<Vec<Value>> = values
                .iter()
                .map(|v| match v {
                    Value::Number(n) if n.is_i64() || n.is_u64() => Some((*v).clone()),
                    Value::String(_) => Some((*v).clone()),
                    _ => None,
                })
                .collect();
            let Some(ids) = ids.filter(|ids| !ids.is_empty()) else {
                continue;
            };
            let shown = Scored {
                record: Record {
                    payload: q.with_payload.clone().apply(map),
                    ..hit.record
                },
                score: hit.score,
            };
            let mut seen = std::collections::HashSet::new();
            for id in ids {
                let key = id.to_string();
                if !seen.insert(key.clone()) {
                    continue;
                }
                let i = *at.entry(key).or_insert_with(|| {
                    groups.push(Group {
                        id: id.clone(),
                        hits: Vec::new(),
                        lookup: None,
                    });
                    groups.len() - 1
                });
                if groups[i].hits.len() < g.group_size {
                    groups[i].hits.push(shown.clone());
                }
            }
        }
        groups.truncate(q.limit);
        if let Some(l) = &g.with_lookup {
            for group in &mut groups {
                let Ok(key) = PointKey::from_json("group id", &group.id) else {
                    continue;
                };
                group.lookup = self
                    .get(
                        &l.collection,
                        vec![key],
                        l.with_payload.clone(),
                        l.with_vector.clone(),
                    )
                    .await?
                    .pop();
            }
        }
        Ok(groups)
    }

    /// The best `limit + offset` points of one query (and its prefetches), best first.
    fn rank<'a>(
        &'a self,
        t: &'a Target<'a>,
        q: &'a QuerySpec,
        field: &'a str,
        caller: &'a Caller,
        inherited: Option<Value>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Ranked, Status>> + Send + 'a>>
    {
        Box::pin(async move {
            // This query's filter and its ancestors' (Qdrant passes a query's filter down to
            // every prefetch under it).
            let own: Option<Value> = match q.filter.as_deref().filter(|f| !f.is_empty()) {
                Some(f) => Some(
                    serde_json::from_str(&t.form.bind_filter(&format!("{field}filter"), f)?)
                        .map_err(|e| Status::internal(format!("a filter's text: {e}")))?,
                ),
                None => None,
            };
            let filter = match (inherited, own) {
                (None, f) | (f, None) => f,
                (Some(a), Some(b)) => Some(json!({"must": [a, b]})),
            };
            let max_k = self.limits().max_k;
            let k = q.limit.saturating_add(q.offset);
            if q.limit == 0 || k > max_k {
                return Err(invalid(
                    &format!("{field}limit"),
                    format!(
                        "limit {} with offset {} is out of range: limit must be at least 1 and limit + offset at most {max_k}",
                        q.limit, q.offset
                    ),
                ));
            }
            if let QueryVector::None = q.vector {
                if !q.prefetch.is_empty() {
                    return Err(unsupported(&format!(
                        "{field}query: prefetches without a query to rank them"
                    )));
                }
                // Points by ascending id, each scored 1 (as Qdrant answers a query without
                // a vector).
                let (records, _) = self
                    .scroll(
                        t.name,
                        filter.map(|f| f.to_string()),
                        None,
                        k,
                        PayloadSel::None,
                        VectorSel::None,
                    )
                    .await?;
                return Ok(Ranked {
                    hits: records.iter().map(|r| (r.key.internal(), 1.0)).collect(),
                    higher_better: true,
                });
            }
            // The prefetches' rankings, each as its own query.
            let mut rankings = Vec::with_capacity(q.prefetch.len());
            for (i, p) in q.prefetch.iter().enumerate() {
                let at = format!("{field}prefetch[{i}].");
                rankings.push(self.rank(t, p, &at, caller, filter.clone()).await?.hits);
            }
            if let QueryVector::Fusion(f) = q.vector {
                if rankings.is_empty() {
                    return Err(invalid(
                        &format!("{field}query"),
                        "a fusion query needs prefetch queries to fuse",
                    ));
                }
                let mut hits = fuse(f, &rankings, k);
                if let Some(threshold) = q.score_threshold {
                    hits.retain(|h| h.1 >= threshold);
                }
                return Ok(Ranked {
                    hits,
                    higher_better: true,
                });
            }
            // Scored again by this query's vector: only the prefetches' points.
            let filter = match rankings.is_empty() {
                true => filter.map(|f| f.to_string()),
                false => {
                    let mut ids: Vec<u64> = rankings.iter().flatten().map(|h| h.0).collect();
                    ids.sort_unstable();
                    ids.dedup();
                    if ids.is_empty() {
                        return Ok(Ranked::default());
                    }
                    Some(with_ids(filter, &ids))
                }
            };
            let kind = t.form.kind_of(&format!("{field}using"), &q.using)?;
            if let Some(scoring) = example_scoring(&q.vector) {
                return self
                    .rank_by_examples(t, q, field, caller, kind, scoring, filter)
                    .await;
            }
            let vector = match &q.vector {
                QueryVector::Point(key) => self.point_vector(t, q, field, *key).await?,
                QueryVector::Recommend {
                    positive, negative, ..
                } => {
                    if positive.is_empty() {
                        return Err(invalid(
                            &format!("{field}query.recommend.positive"),
                            "empty: the average_vector strategy needs a positive example",
                        ));
                    }
                    let mut dense = (Vec::new(), Vec::new());
                    let mut sparse = (Vec::new(), Vec::new());
                    let mut multi: Vec<Vec<f32>> = Vec::new();
                    for (e, liked) in positive
                        .iter()
                        .map(|e| (e, true))
                        .chain(negative.iter().map(|e| (e, false)))
                    {
                        match (self.example_vector(t, q, field, e).await?, liked) {
                            (VectorIn::Dense(d), true) => dense.0.push(d),
                            (VectorIn::Dense(d), false) => dense.1.push(d),
                            (VectorIn::Sparse(v), true) => sparse.0.push(v),
                            (VectorIn::Sparse(v), false) => sparse.1.push(v),
                            (VectorIn::Multi(m), true) => multi.extend(m),
                            // A negative multi-vector's vectors join negated (local mode's
                            // average for multi-vectors).
                            (VectorIn::Multi(m), false) => multi.extend(
                                m.into_iter()
                                    .map(|v| v.into_iter().map(|x| -x).collect::<Vec<f32>>()),
                            ),
                        }
                    }
                    let at = format!("{field}query.recommend");
                    let no_dense = dense.0.is_empty() && dense.1.is_empty();
                    let no_sparse = sparse.0.is_empty() && sparse.1.is_empty();
                    match (no_dense, no_sparse) {
                        _ if !multi.is_empty() && (!no_dense || !no_sparse) => {
                            return Err(invalid(&at, "multi-vector and other examples mixed"))
                        }
                        _ if !multi.is_empty() => VectorIn::Multi(multi),
                        (false, true) => VectorIn::Dense(
                            average_vector(&dense.0, &dense.1)
                                .map_err(|e| invalid(&at, e.to_string()))?,
                        ),
                        (true, false) => VectorIn::Sparse(
                            quiver_engine::sparse::average_vector(&sparse.0, &sparse.1)
                                .map_err(|e| invalid(&at, e.to_string()))?,
                        ),
                        _ => return Err(invalid(&at, "dense and sparse examples mixed")),
                    }
                }
                QueryVector::Dense(v) => VectorIn::Dense(v.clone()),
                QueryVector::Sparse(v) => VectorIn::Sparse(v.clone()),
                QueryVector::Multi(m) => VectorIn::Multi(m.clone()),
                QueryVector::Fusion(_)
                | QueryVector::None
                | QueryVector::Discover { .. }
                | QueryVector::Context { .. } => unreachable!("answered above"),
            };
            // MMR re-ranks the nearest candidates (the query's limit of them unless it says).
            let mmr = q.mmr.map(|m| (m, vector.clone()));
            let k = match q.mmr {
                Some(Mmr {
                    candidates: Some(c),
                    ..
                }) if c > max_k => {
                    return Err(invalid(
                        &format!("{field}query.mmr.candidates_limit"),
                        format!("{c} is out of range: at most {max_k}"),
                    ))
                }
                Some(m) => m.candidates.unwrap_or(q.limit),
                None => k,
            };
            let mut ranked = match (kind, vector) {
                (VectorKind::Dense, VectorIn::Dense(v)) => {
                    let search = Search {
                        collection: t.name.to_string(),
                        queries: v,
                        batch_field: None,
                        k,
                        probes: match (q.exact, q.nprobe) {
                            (true, _) => Probes::All,
                            (false, 0) => Probes::Default,
                            (false, n) => Probes::AtMost(n as usize),
                        },
                        refine_factor: q.refine_factor as usize,
                        filters: QueryFilters::One(filter.unwrap_or_default()),
                        with_payload: false,
                    };
                    let hits = self
                        .router
                        .search(search, caller)
                        .await
                        .map_err(|s| rename_field(s, "vector", &format!("{field}query")))?
                        .pop()
                        .unwrap_or_default();
                    Ranked {
                        hits: hits
                            .into_iter()
                            .map(|h| (h.id, t.distance.score(h.distance)))
                            .collect(),
                        higher_better: t.distance != Distance::Euclid,
                    }
                }
                (VectorKind::Sparse { idf }, VectorIn::Sparse(v)) => {
                    let search = SparseSearch {
                        collection: t.name.to_string(),
                        name: q.using.clone(),
                        query: v,
                        k,
                        idf,
                        filter: filter.unwrap_or_default(),
                    };
                    let hits = self.router.sparse_search(search, caller).await?;
                    Ranked {
                        hits: hits.into_iter().map(|h| (h.id, -h.distance)).collect(),
                        higher_better: true,
                    }
                }
                (
                    VectorKind::Space {
                        dim,
                        distance,
                        multi,
                    },
                    v @ (VectorIn::Dense(_) | VectorIn::Multi(_)),
                ) => {
                    // A dense query on a multi-vector space is a multi-vector of one.
                    let rows = match v {
                        VectorIn::Multi(m) if multi => m,
                        VectorIn::Dense(d) => vec![d],
                        _ => return Err(not_multi(field, &q.using)),
                    };
                    if let Some(r) = rows.iter().find(|r| r.len() != dim) {
                        return Err(invalid(
                            &format!("{field}query"),
                            format!("dimension mismatch: expected {dim}, got {}", r.len()),
                        ));
                    }
                    let query = rows.concat();
                    let search = SpaceSearch {
                        collection: t.name.to_string(),
                        name: q.using.clone(),
                        metric: distance.metric(),
                        dim,
                        multi,
                        query,
                        k,
                        filter: filter.unwrap_or_default(),
                    };
                    let hits = self
                        .router
                        .space_search(search, caller)
                        .await
                        .map_err(|s| rename_field(s, "vector", &format!("{field}query")))?;
                    // MaxSim as Qdrant shows it: the sum itself, for Euclid the square root
                    // of its magnitude (a distance).
                    let score = |d: f32| match (multi, distance) {
                        (true, Distance::Euclid) => d.abs().sqrt(),
                        (true, _) => -d,
                        (false, _) => distance.score(d),
                    };
                    Ranked {
                        hits: hits
                            .into_iter()
                            .map(|h| (h.id, score(h.distance)))
                            .collect(),
                        higher_better: distance != Distance::Euclid,
                    }
                }
                (VectorKind::Dense | VectorKind::Space { .. }, VectorIn::Sparse(_)) => {
                    return Err(invalid(
                        &format!("{field}query"),
                        format!("a sparse vector for `{}`, a dense vector", q.using),
                    ))
                }
                (VectorKind::Sparse { .. }, VectorIn::Dense(_) | VectorIn::Multi(_)) => {
                    return Err(invalid(
                        &format!("{field}query"),
                        format!("a dense vector for `{}`, a sparse vector", q.using),
                    ))
                }
                (VectorKind::Dense, VectorIn::Multi(_)) => return Err(not_multi(field, &q.using)),
            };
            if let Some(threshold) = q.score_threshold {
                let higher = ranked.higher_better;
                ranked.hits.retain(|h| {
                    if higher {
                        h.1 >= threshold
                    } else {
                        h.1 <= threshold
                    }
                });
            }
            if let Some((m, query)) = mmr {
                ranked.hits = self
                    .diversify(t, q, caller, kind, query, ranked.hits, m)
                    .await?;
            }
            Ok(ranked)
        })
    }

    /// Where a query's point ids take their vectors from: the collection (its own, or
    /// `lookup_from`'s) and the vector's name, checked to exist there.
    async fn lookup_source<'q>(
        &self,
        t: &'q Target<'_>,
        q: &'q QuerySpec,
        field: &str,
    ) -> Result<(&'q str, &'q String), Status> {
        let Some(l) = &q.lookup_from else {
            return Ok((t.name, &q.using));
        };
        let name = l.vector.as_ref().unwrap_or(&q.using);
        let form = self.form(&l.collection).await.map_err(|s| match s.code() {
            tonic::Code::NotFound => Status::not_found(format!(
                "{field}lookup_from: Not found: Collection `{}` doesn't exist!",
                l.collection
            )),
            _ => s,
        })?;
        form.kind_of(&format!("{field}lookup_from.vector"), name)?;
        Ok((l.collection.as_str(), name))
    }

    /// The vector of the point `key` a query names: from `lookup_from`'s collection when the
    /// query has one, else its own; the query's `using` (or `lookup_from`'s vector).
    async fn point_vector(
        &self,
        t: &Target<'_>,
        q: &QuerySpec,
        field: &str,
        key: PointKey,
    ) -> Result<VectorIn, Status> {
        let (from, name) = self.lookup_source(t, q, field).await?;
        let sel = VectorSel::Only(vec![name.clone()]);
        let found = self.get(from, vec![key], PayloadSel::None, sel).await?;
        let v = found
            .into_iter()
            .next()
            .and_then(|r| r.vector)
            .and_then(only_vector);
        v.ok_or_else(|| {
            Status::not_found(format!(
                "{field}query: no point with id {} holding the vector `{name}` in `{from}`",
                key.to_json(),
            ))
        })
    }

    /// The nearest candidates `hits` in the order maximal marginal relevance picks them
    /// ([`quiver_engine::mmr`]), up to the query's limit and offset, scores as they were:
    /// similarities of the query's space (`kind`) between the query and the candidates' stored
    /// vectors, and among the candidates.
    #[allow(clippy::too_many_arguments)]
    async fn diversify(
        &self,
        t: &Target<'_>,
        q: &QuerySpec,
        caller: &Caller,
        kind: VectorKind,
        query: VectorIn,
        hits: Vec<(u64, f32)>,
        m: Mmr,
    ) -> Result<Vec<(u64, f32)>, Status> {
        let ids = hits.iter().map(|h| h.0).collect();
        let form = t.form.clone();
        let sel = VectorSel::Only(vec![q.using.clone()]);
        let stored = self
            .get_many(t.name, ids, sel.wants_dense(&form), caller)
            .await?;
        let limit = q.limit.saturating_add(q.offset);
        let metric = match kind {
            VectorKind::Dense => t.distance.metric(),
            VectorKind::Space { distance, .. } => distance.metric(),
            VectorKind::Sparse { .. } => Metric::InnerProduct,
        };
        blocking(move || {
            // The candidates still stored, with their vectors of the space.
            let mut kept = Vec::with_capacity(hits.len());
            let mut vectors = Vec::with_capacity(hits.len());
            for h in hits {
                let Some(p) = stored.get(&h.0) else { continue };
                // Vectors other than the store's are in the payload.
                let map = match kind {
                    VectorKind::Dense => Map::new(),
                    _ => payload::decode(&p.payload),
                };
                if let Some(v) = sel.select(&form, &p.vector, &map).and_then(only_vector) {
                    kept.push(h);
                    vectors.push(v);
                }
            }
            let order = match query {
                q @ (VectorIn::Dense(_) | VectorIn::Multi(_)) => {
                    // Vectors and multi-vectors alike as rows of `dim` values, compared by
                    // MaxSim (of single vectors: their similarity).
                    let flat = |v: VectorIn| match v {
                        VectorIn::Dense(d) => d,
                        VectorIn::Multi(m) => m.concat(),
                        VectorIn::Sparse(_) => Vec::new(),
                    };
                    let dim = match &q {
                        VectorIn::Dense(d) => d.len(),
                        VectorIn::Multi(m) => m.first().map_or(0, Vec::len),
                        VectorIn::Sparse(_) => 0,
                    }
                    .max(1);
                    let mut qv = flat(q);
                    let mut dense: Vec<Vec<f32>> = vectors.into_iter().map(flat).collect();
                    if metric == Metric::Cosine {
                        for v in dense.iter_mut().chain(std::iter::once(&mut qv)) {
                            if v.len().is_multiple_of(dim) {
                                quiver_engine::linalg::normalize_rows(v, dim);
                            }
                        }
                    }
                    let score = |a: &[f32], b: &[f32]| {
                        let whole = |v: &[f32]| !v.is_empty() && v.len().is_multiple_of(dim);
                        match whole(a) && whole(b) {
                            true => quiver_engine::dense_set::max_sim(metric, dim, a, b),
                            false => f32::NEG_INFINITY,
                        }
                    };
                    let relevance: Vec<f32> = dense.iter().map(|v| score(&qv, v)).collect();
                    quiver_engine::mmr::mmr_order(
                        &relevance,
                        &|a, b| score(&dense[a], &dense[b]),
                        m.diversity,
                        limit,
                    )
                }
                VectorIn::Sparse(qv) => {
                    let sparse: Vec<SparseVector> = vectors
                        .into_iter()
                        .map(|v| match v {
                            VectorIn::Sparse(s) => s,
                            VectorIn::Dense(_) | VectorIn::Multi(_) => SparseVector::default(),
                        })
                        .collect();
                    let dot = |a: &SparseVector, b: &SparseVector| a.dot(b).unwrap_or(0.0);
                    let relevance: Vec<f32> = sparse.iter().map(|v| dot(&qv, v)).collect();
                    quiver_engine::mmr::mmr_order(
                        &relevance,
                        &|a, b| dot(&sparse[a], &sparse[b]),
                        m.diversity,
                        limit,
                    )
                }
            };
            Ok(order.into_iter().map(|i| kept[i]).collect())
        })
        .await
    }

    /// An example's vector: its own, or its point's ([`Self::point_vector`]).
    async fn example_vector(
        &self,
        t: &Target<'_>,
        q: &QuerySpec,
        field: &str,
        e: &Example,
    ) -> Result<VectorIn, Status> {
        match e {
            Example::Dense(d) => Ok(VectorIn::Dense(d.clone())),
            Example::Sparse(v) => Ok(VectorIn::Sparse(v.clone())),
            Example::Multi(m) => Ok(VectorIn::Multi(m.clone())),
            Example::Point(key) => self.point_vector(t, q, field, *key).await,
        }
    }

    /// The ranking of a query scored against examples (discovery, context, and the
    /// best_score and sum_scores recommendations): exact, over the space `kind` of the
    /// query's `using`.
    #[allow(clippy::too_many_arguments)]
    async fn rank_by_examples(
        &self,
        t: &Target<'_>,
        q: &QuerySpec,
        field: &str,
        caller: &Caller,
        kind: VectorKind,
        scoring: Scoring,
        filter: Option<String>,
    ) -> Result<Ranked, Status> {
        let at = format!("{field}query");
        // The examples in the scoring's order, each of the space's kind.
        let mut vectors = Vec::new();
        for e in q.vector.examples() {
            vectors.push(self.example_vector(t, q, field, e).await?);
        }
        let wrong =
            |what: &str, is: &str| invalid(&at, format!("{what} example for `{}`, {is}", q.using));
        let (space, examples) = match kind {
            VectorKind::Sparse { idf } => (
                ExampleSpace::Sparse {
                    name: q.using.clone(),
                    idf,
                },
                ExampleVectors::Sparse(
                    vectors
                        .into_iter()
                        .map(|v| match v {
                            VectorIn::Sparse(s) => Ok(s),
                            _ => Err(wrong("a dense", "a sparse vector")),
                        })
                        .collect::<Result<_, _>>()?,
                ),
            ),
            VectorKind::Space {
                dim,
                distance,
                multi: true,
            } => (
                ExampleSpace::Named {
                    name: q.using.clone(),
                    metric: distance.metric(),
                    dim,
                    multi: true,
                },
                // A plain example is a multi-vector of one.
                ExampleVectors::Multi(
                    vectors
                        .into_iter()
                        .map(|v| match v {
                            VectorIn::Multi(m) => Ok(m),
                            VectorIn::Dense(d) => Ok(vec![d]),
                            VectorIn::Sparse(_) => Err(wrong("a sparse", "a multi-vector")),
                        })
                        .collect::<Result<_, _>>()?,
                ),
            ),
            VectorKind::Dense | VectorKind::Space { .. } => {
                let dense = vectors
                    .into_iter()
                    .map(|v| match v {
                        VectorIn::Dense(d) => Ok(d),
                        VectorIn::Sparse(_) => Err(wrong("a sparse", "a dense vector")),
                        VectorIn::Multi(_) => Err(wrong("a multi-vector", "a dense vector")),
                    })
                    .collect::<Result<_, _>>()?;
                let space = match kind {
                    VectorKind::Space { dim, distance, .. } => ExampleSpace::Named {
                        name: q.using.clone(),
                        metric: distance.metric(),
                        dim,
                        multi: false,
                    },
                    _ => ExampleSpace::Own,
                };
                (space, ExampleVectors::Dense(dense))
            }
        };
        let search = ExampleSearch {
            collection: t.name.to_string(),
            space,
            scoring,
            examples,
            k: q.limit.saturating_add(q.offset),
            filter: filter.unwrap_or_default(),
        };
        let mut hits = self
            .router
            .example_search(search, caller)
            .await
            .map_err(|s| rename_field(s, "query", &at))?;
        if let Some(threshold) = q.score_threshold {
            hits.retain(|h| h.1 >= threshold);
        }
        Ok(Ranked {
            hits,
            higher_better: true,
        })
    }

    /// A query's ranking as Qdrant's scored points: the offset skipped, ids, payloads and
    /// vectors from the stored points.
    async fn scored(
        &self,
        t: &Target<'_>,
        ranked: Ranked,
        q: &QuerySpec,
        caller: &Caller,
    ) -> Result<Vec<Scored>, Status> {
        let (offset, limit) = (q.offset, q.limit);
        let hits: Vec<(u64, f32)> = ranked.hits.into_iter().skip(offset).collect();
        let uuid_hits = hits.iter().any(|&(id, _)| id >= super::ids::UUID_BASE);
        let (with_payload, with_vector) = (q.with_payload.clone(), q.with_vector.clone());
        if with_payload == PayloadSel::None && !with_vector.any() && !uuid_hits {
            // Plain integer ids and scores (the common answer) are made here.
            return Ok(hits
                .into_iter()
                .take(limit)
                .map(|(id, score)| Scored {
                    record: Record {
                        key: PointKey::Num(id),
                        payload: None,
                        vector: None,
                    },
                    score,
                })
                .collect());
        }
        // The hits' points, read once.
        let ids = hits.iter().map(|&(id, _)| id).collect();
        let form = t.form.clone();
        let stored = self
            .get_many(t.name, ids, with_vector.wants_dense(&form), caller)
            .await?;
        // Parsing payloads runs off the async threads.
        blocking(move || {
            let mut out = Vec::with_capacity(hits.len().min(limit));
            for (id, score) in hits {
                let Some(p) = stored.get(&id) else {
                    // Deleted since the search.
                    continue;
                };
                let map = if with_payload != PayloadSel::None
                    || with_vector.any()
                    || id >= super::ids::UUID_BASE
                {
                    payload::decode(&p.payload)
                } else {
                    Map::new()
                };
                let Some(key) = key_of(id, Some(&map)) else {
                    continue;
                };
                out.push(Scored {
                    record: Record {
                        key,
                        vector: with_vector.select(&form, &p.vector, &map),
                        payload: with_payload.apply(map),
                    },
                    score,
                });
                if out.len() == limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }
}

/// The collection a query runs on.
struct Target<'a> {
    name: &'a str,
    form: VectorForm,
    distance: Distance,
}

/// A query's points, best first, with Qdrant's scores.
#[derive(Debug, Default)]
struct Ranked {
    hits: Vec<(u64, f32)>,
    /// Scores are similarities (else distances).
    higher_better: bool,
}

/// A multi-vector query on a vector without `multivector_config`.
fn not_multi(field: &str, using: &str) -> Status {
    invalid(
        &format!("{field}query"),
        format!("a multi-vector for `{using}`, a dense vector without multivector_config"),
    )
}

/// The one vector of a point read back with one name selected.
fn only_vector(v: VectorsOut) -> Option<VectorIn> {
    match v {
        VectorsOut::Unnamed(v) => Some(v.into()),
        VectorsOut::Named(mut n) => Some(n.pop()?.1.into()),
    }
}

/// How a query scored against examples makes its scores (`None`: not such a query).
fn example_scoring(v: &QueryVector) -> Option<Scoring> {
    match v {
        QueryVector::Recommend {
            positive,
            negative,
            strategy,
        } => {
            let (positive, negative) = (positive.len(), negative.len());
            match strategy {
                Strategy::AverageVector => None,
                Strategy::BestScore => Some(Scoring::BestScore { positive, negative }),
                Strategy::SumScores => Some(Scoring::SumScores { positive, negative }),
            }
        }
        QueryVector::Discover { context, .. } => Some(Scoring::Discover {
            pairs: context.len(),
        }),
        QueryVector::Context { pairs } => Some(Scoring::Context { pairs: pairs.len() }),
        _ => None,
    }
}

/// Most examples (positive and negative) in one recommendation (those named by id are read
/// one by one and left out of the answer by a filter).
pub const MAX_EXAMPLES: usize = 256;

/// Longest vector name.
pub const MAX_VECTOR_NAME_BYTES: usize = 256;

/// Most prefetches in one query, nested ones included (their candidates, at most `max_k`
/// each, make one `has_id` list).
pub const MAX_PREFETCHES: usize = 64;

/// How many prefetches a query holds, nested ones included.
fn count_prefetches(q: &QuerySpec) -> usize {
    q.prefetch.iter().map(|p| 1 + count_prefetches(p)).sum()
}

/// The internal ids of the points a query and its prefetches query by.
/// (`own`: a `lookup_from` naming the queried collection itself; a point looked up in another
/// collection is not one of this one's.)
fn referenced_ids(q: &QuerySpec, own: &dyn Fn(&LookupFrom) -> bool, out: &mut Vec<u64>) {
    if q.lookup_from.as_ref().is_none_or(own) {
        if let QueryVector::Point(k) = &q.vector {
            out.push(k.internal());
        }
        out.extend(q.vector.examples().into_iter().filter_map(|e| match e {
            Example::Point(k) => Some(k.internal()),
            Example::Dense(_) | Example::Sparse(_) | Example::Multi(_) => None,
        }));
    }
    for p in &q.prefetch {
        referenced_ids(p, own, out);
    }
}

/// The count of a query's (or one of its prefetches') recommendation examples when over
/// `max`.
fn examples_over(q: &QuerySpec, max: usize) -> Option<usize> {
    let n = q.vector.examples().len();
    if n > max {
        return Some(n);
    }
    q.prefetch.iter().find_map(|p| examples_over(p, max))
}

/// The collections a query (and its prefetches) reads points from besides its own
/// (`lookup_from`): a key must reach them too.
pub fn lookup_collections(q: &QuerySpec, out: &mut Vec<String>) {
    if let Some(l) = &q.lookup_from {
        out.push(l.collection.clone());
    }
    for p in &q.prefetch {
        lookup_collections(p, out);
    }
}

/// `filter` (none: all) narrowed to the points `ids`, as Quiver's filter text.
fn with_ids(filter: Option<Value>, ids: &[u64]) -> String {
    let only = json!({"has_id": ids});
    match filter {
        None => json!({"must": [only]}),
        Some(f) => json!({"must": [f, only]}),
    }
    .to_string()
}

/// An upsert's ids, vectors and payload texts: each id once (its last point), every UUID
/// checked against the point its id holds now (`stored`: the payloads of the UUIDs' ids that
/// exist) and written into its payload.
#[allow(clippy::type_complexity)]
fn prepare_upsert(
    form: &VectorForm,
    dim: usize,
    stored: &HashMap<u64, Vec<u8>>,
    points: Vec<PointIn>,
) -> Result<(Vec<u64>, Vec<f32>, Vec<String>), Status> {
    let mut row_of: HashMap<u64, (usize, PointKey)> = HashMap::with_capacity(points.len());
    let mut ids = Vec::with_capacity(points.len());
    let mut vectors = Vec::with_capacity(points.len() * dim);
    let mut payloads = Vec::with_capacity(points.len());
    for (i, p) in points.into_iter().enumerate() {
        let field = format!("points[{i}]");
        let id = p.key.internal();
        let mut payload = p.payload;
        if payload.keys().any(|k| k.starts_with(RESERVED_KEY_PREFIX)) {
            return Err(reserved(&format!("{field}.payload")));
        }
        let vector = split_point(
            form,
            dim,
            &format!("{field}.vector"),
            p.vectors,
            &mut payload,
        )?;
        if let Some(u) = p.key.as_uuid() {
            payload.insert(UUID_KEY.into(), Value::String(u.hyphenated().to_string()));
        }
        let text = if payload.is_empty() {
            String::new()
        } else {
            Value::Object(payload).to_string()
        };
        match row_of.get(&id) {
            // The same id again: its last point wins.
            Some(&(row, key)) if key == p.key => {
                vectors[row * dim..(row + 1) * dim].copy_from_slice(&vector);
                payloads[row] = text;
                continue;
            }
            Some(&(_, other)) => return Err(collision(&format!("{field}.id"), p.key, other)),
            None => {}
        }
        if let Some(u) = p.key.as_uuid() {
            if let Some(stored) = stored.get(&id) {
                match key_of_stored(id, stored) {
                    Some(k) if k == p.key => {}
                    Some(k) => return Err(collision(&format!("{field}.id"), p.key, k)),
                    None => {
                        return Err(invalid(
                            &format!("{field}.id"),
                            format!(
                            "UUID {u} maps to id {id}, which a point written without a UUID holds"
                        ),
                        ))
                    }
                }
            }
        }
        row_of.insert(id, (ids.len(), p.key));
        ids.push(id);
        vectors.extend_from_slice(&vector);
        payloads.push(text);
    }
    Ok((ids, vectors, payloads))
}

/// `settings` with an update's keys merged in (`quantization_config` excepted).
fn with_update(
    mut settings: Map<String, Value>,
    update: &Map<String, Value>,
) -> Map<String, Value> {
    for key in SETTINGS.iter().filter(|k| **k != "quantization_config") {
        let Some(v) = update.get(*key).filter(|v| !v.is_null()) else {
            continue;
        };
        let now = merged(
            obj(settings.get(*key).cloned().unwrap_or_default()),
            Some(v),
        );
        settings.insert((*key).into(), Value::Object(now));
    }
    settings
}

/// Settings are kept in the collection's manifest: held to a payload's limits (64 KiB of
/// JSON, 32 levels).
fn check_settings(settings: &Map<String, Value>) -> Result<(), Status> {
    payload::encode(&Value::Object(settings.clone()))
        .map(|_| ())
        .map_err(|e| {
            invalid(
            "settings (hnsw_config, wal_config, optimizers_config, quantization_config, metadata)",
            e.to_string().replacen("payload", "the settings", 1),
        )
        })
}

/// Quiver's index parameters from `metadata.quiver`.
fn quiver_params(settings: &Map<String, Value>) -> Result<QuiverParams, Status> {
    match settings.get("metadata").and_then(|m| m.get("quiver")) {
        None | Some(Value::Null) => Ok(QuiverParams::default()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
            invalid(
                "metadata.quiver",
                format!("{e} (keys: nlist, pq_m, refine, seed, train_at)"),
            )
        }),
    }
}

/// The size at which the collection trains by itself: `metadata.quiver.train_at`, else
/// `optimizers_config.indexing_threshold` (KiB of vectors; 0: never) in vectors, at least
/// [`MIN_TRAIN_AT`].
fn train_at(settings: &Map<String, Value>, dim: u64, quiver: &QuiverParams) -> Result<u64, Status> {
    if let Some(n) = quiver.train_at {
        return Ok(n);
    }
    let kb = match settings
        .get("optimizers_config")
        .and_then(|o| o.get("indexing_threshold"))
    {
        None | Some(Value::Null) => DEFAULT_INDEXING_THRESHOLD_KB,
        Some(v) => v.as_u64().ok_or_else(|| {
            invalid(
                "optimizers_config.indexing_threshold",
                "expected an unsigned integer (KiB)",
            )
        })?,
    };
    if kb == 0 {
        return Ok(0);
    }
    Ok((kb.saturating_mul(1024) / (dim.max(1) * 4)).max(MIN_TRAIN_AT))
}

/// A status whose message names `from` renamed to `to` (the native field's Qdrant name).
fn rename_field(s: Status, from: &str, to: &str) -> Status {
    match s.message().strip_prefix(&format!("{from}:")) {
        Some(rest) => Status::new(s.code(), format!("{to}:{rest}")),
        None => s,
    }
}

fn collision(field: &str, a: PointKey, b: PointKey) -> Status {
    invalid(
        field,
        format!(
            "ids {} and {} map to the same internal id {}; give one of them another UUID",
            a.to_json(),
            b.to_json(),
            a.internal()
        ),
    )
}

fn reserved(field: &str) -> Status {
    invalid(
        field,
        format!("keys starting with `{RESERVED_KEY_PREFIX}` are reserved (`{UUID_KEY}` holds a UUID point's id)"),
    )
}
