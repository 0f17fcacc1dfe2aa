//! The internal request layer: the typed requests every front end (native gRPC, Qdrant gRPC,
//! Qdrant REST) converts its wire models into, and the [`Router`] that serves them: from this
//! server's own collections ([`local`]), or, in cluster mode, through the cluster node
//! ([`crate::cluster::ClusterFront`]), which fans them out to the shards' replicas.
//!
//! A front end keeps only what is its own: decoding and encoding its wire format, naming
//! fields as its clients know them, and its own conventions (Qdrant's UUID ids and scores).
//! Validation against the server's limits, rate limits, the write budget, the micro-batcher,
//! metrics of collections and the choice of local or cluster happen here, once for all of them.

pub mod local;

use std::sync::Arc;
use std::time::{Duration, Instant};

use quiver_engine::payload::fields::FieldSpec;
use quiver_store::wal::PayloadEdit;
use quiver_store::{CollectionMeta, IndexConfig, UpsertMode};
use tonic::Status;

use crate::admission::PreAdmitted;
use crate::ratelimit::{Client, Limit};
use crate::registry::Registry;

/// Who asks, and until when: what every request carries besides its own fields.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The client (rate limits).
    pub client: Client,
    /// When the client stops waiting (`grpc-timeout`, Qdrant's `timeout`), if it said.
    pub deadline: Option<Instant>,
}

impl Default for Caller {
    /// An unknown client without a deadline.
    fn default() -> Self {
        Caller {
            client: Client::Unknown,
            deadline: None,
        }
    }
}

impl Caller {
    /// A caller with a deadline `timeout` from now (none without one).
    pub fn new(client: Client, timeout: Option<Duration>) -> Caller {
        Caller {
            client,
            deadline: timeout.and_then(|t| Instant::now().checked_add(t)),
        }
    }

    /// The time left until the deadline, if there is one.
    pub fn time_left(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }
}

/// Creates a collection of `shards` shards × `replication` replicas (0: 1; above 1 only in
/// cluster mode).
#[derive(Debug, Clone)]
pub struct CreateCollection {
    /// The collection (checked by the front end: name, dimension, index parameters).
    pub meta: CollectionMeta,
    /// Shards (Qdrant's `shard_number`).
    pub shards: u32,
    /// Replicas of each shard (Qdrant's `replication_factor`).
    pub replication: u32,
}

/// What a collection is doing.
#[derive(Debug, Clone, PartialEq)]
pub enum CollectionStatus {
    /// Serving.
    Ready,
    /// Training its IVF-PQ index.
    Training,
    /// Being opened or loaded (not served yet).
    Loading,
    /// Its last background job, or its opening, failed.
    Failed(String),
}

impl CollectionStatus {
    /// "ready", "training", "loading" or "failed: …" (the native API's `state`).
    pub fn describe(&self) -> String {
        match self {
            CollectionStatus::Ready => "ready".into(),
            CollectionStatus::Training => "training".into(),
            CollectionStatus::Loading => "loading".into(),
            CollectionStatus::Failed(why) => format!("failed: {why}"),
        }
    }
}

/// A collection as it is now.
#[derive(Debug, Clone)]
pub struct CollectionState {
    /// Its name.
    pub name: String,
    /// Its description (absent while it is loading or when it failed to open).
    pub meta: Option<CollectionMeta>,
    /// What it is doing.
    pub status: CollectionStatus,
    /// Live points.
    pub count: u64,
    /// Whether its IVF-PQ index is trained (every shard's, in a cluster).
    pub trained: bool,
    /// The index parameters in effect (in a cluster, shard 0's: each shard trains its own).
    pub index: IndexConfig,
    /// Bytes of its data in memory.
    pub memory_bytes: u64,
    /// Segments, the appendable one included.
    pub segments: u32,
    /// How far the data has drifted from the trained quantizers (0: none measured).
    pub drift: f64,
    /// Whether it refuses writes.
    pub read_only: bool,
    /// Shards.
    pub shards: u32,
    /// Replicas of each shard.
    pub replication: u32,
}

impl CollectionState {
    /// The state of a collection only known by name: loading, or failed to open.
    pub fn unopened(name: &str, status: CollectionStatus) -> CollectionState {
        CollectionState {
            name: name.to_string(),
            meta: None,
            status,
            count: 0,
            trained: false,
            index: IndexConfig::default(),
            memory_bytes: 0,
            segments: 0,
            drift: 0.0,
            read_only: false,
            shards: 0,
            replication: 0,
        }
    }
}

/// Adds or replaces points.
#[derive(Debug, Clone)]
pub struct Upsert {
    /// The collection.
    pub collection: String,
    /// Ids (each at most 2^63-1).
    pub ids: Vec<u64>,
    /// Row-major vectors, one per id.
    pub vectors: Vec<f32>,
    /// Encoded payloads, one per id (empty: none has one).
    pub payloads: Vec<Vec<u8>>,
    /// Insert, update or both.
    pub mode: UpsertMode,
    /// Return only once the write is applied (in a cluster: by a replica of each shard; a
    /// single server's writes are applied when acknowledged).
    pub wait: bool,
}

/// Which points a delete removes.
#[derive(Debug, Clone)]
pub enum DeleteTarget {
    /// These ids.
    Ids(Vec<u64>),
    /// Those passing this filter (Quiver's filter text).
    Filter(String),
}

/// Deletes points.
#[derive(Debug, Clone)]
pub struct Delete {
    /// The collection.
    pub collection: String,
    /// Which points.
    pub target: DeleteTarget,
    /// See [`Upsert::wait`].
    pub wait: bool,
}

/// Edits the payloads of points.
#[derive(Debug, Clone)]
pub struct EditPayload {
    /// The collection.
    pub collection: String,
    /// The points (those not live are passed over).
    pub ids: Vec<u64>,
    /// The edit.
    pub edit: PayloadEdit,
    /// See [`Upsert::wait`].
    pub wait: bool,
}

/// Reads points back by id.
#[derive(Debug, Clone)]
pub struct Get {
    /// The collection.
    pub collection: String,
    /// The ids, in the order the answer keeps (absent ones left out).
    pub ids: Vec<u64>,
    /// Answer the stored vectors.
    pub with_vectors: bool,
}

/// A stored point read back.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPoint {
    /// Its id.
    pub id: u64,
    /// Its stored vector (when asked for; see [`quiver_store::Collection::get`]).
    pub vector: Vec<f32>,
    /// Its encoded payload (empty: none).
    pub payload: Vec<u8>,
}

/// A page of points by ascending id.
#[derive(Debug, Clone)]
pub struct Scroll {
    /// The collection.
    pub collection: String,
    /// Only points passing this filter (empty: all).
    pub filter: String,
    /// The first id of the page (none: the start).
    pub from: Option<u64>,
    /// Points in the page (1 up to the server's limit of queries per request).
    pub limit: usize,
    /// Answer the stored vectors.
    pub with_vectors: bool,
}

/// A page of points and where the next one starts.
#[derive(Debug, Clone, Default)]
pub struct ScrollPage {
    /// The points, by ascending id (payloads included).
    pub points: Vec<StoredPoint>,
    /// The first id of the next page (none: this was the last).
    pub next: Option<u64>,
}

/// Counts points.
#[derive(Debug, Clone)]
pub struct Count {
    /// The collection.
    pub collection: String,
    /// Only points passing this filter (empty: all).
    pub filter: String,
}

/// Which filter each query of a search has.
#[derive(Debug, Clone)]
pub enum QueryFilters {
    /// One filter text for every query (empty: none).
    One(String),
    /// One filter text per query (an empty one: none).
    PerQuery(Vec<String>),
}

/// How many inverted lists a search visits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probes {
    /// The collection's default.
    Default,
    /// These many (refused above the index's list count on a single server; in a cluster
    /// each shard visits at most its own list count).
    Lists(usize),
    /// These many, or every list when the index has fewer.
    AtMost(usize),
    /// Every list: exact over the codes, the refine step re-ranking.
    All,
}

/// Nearest-neighbour queries on one collection.
#[derive(Debug, Clone)]
pub struct Search {
    /// The collection.
    pub collection: String,
    /// Row-major queries.
    pub queries: Vec<f32>,
    /// How the queries came: `Some(field)` for a batch named so (errors name it), `None` for
    /// one query given as `vector` (its dimension must match).
    pub batch_field: Option<&'static str>,
    /// Neighbours per query.
    pub k: usize,
    /// Lists visited.
    pub probes: Probes,
    /// Refine factor (0: the collection's default).
    pub refine_factor: usize,
    /// Filters.
    pub filters: QueryFilters,
    /// Answer each hit's payload.
    pub with_payload: bool,
}

/// One neighbour found.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// Its id.
    pub id: u64,
    /// Its distance (Quiver's: squared L2, or the negated similarity for ip/cosine).
    pub distance: f32,
    /// Its encoded payload (when asked for; empty: none).
    pub payload: Vec<u8>,
}

/// A query on a collection's sparse vectors of one name: exact, by dot product.
#[derive(Debug, Clone)]
pub struct SparseSearch {
    /// The collection.
    pub collection: String,
    /// The sparse vectors' name.
    pub name: String,
    /// The query.
    pub query: quiver_engine::sparse::SparseVector,
    /// Neighbours.
    pub k: usize,
    /// Weigh the query's terms by their inverse document frequency (Qdrant's `idf` modifier).
    pub idf: bool,
    /// Only points passing this filter (empty: all).
    pub filter: String,
}

/// A query on one of a collection's named dense spaces kept in its points' payloads (a
/// collection with several named dense vectors): exact.
#[derive(Debug, Clone)]
pub struct SpaceSearch {
    /// The collection.
    pub collection: String,
    /// The space's name.
    pub name: String,
    /// Its metric.
    pub metric: quiver_engine::Metric,
    /// Its size.
    pub dim: usize,
    /// A multi-vector space: `query` holds one or more vectors, scored by MaxSim (hits'
    /// distances: the MaxSim negated).
    pub multi: bool,
    /// The query vector (several, one after the other, for a multi-vector space).
    pub query: Vec<f32>,
    /// Neighbours.
    pub k: usize,
    /// Only points passing this filter (empty: all).
    pub filter: String,
}

/// A query scoring points against several examples rather than by nearness to one vector
/// (Qdrant's `discover` and `context` queries, the `best_score` and `sum_scores`
/// recommendation strategies): exact, every point holding a vector of the space scored.
#[derive(Debug, Clone)]
pub struct ExampleSearch {
    /// The collection.
    pub collection: String,
    /// The vectors scored.
    pub space: ExampleSpace,
    /// How a point's similarities to the examples make its score.
    pub scoring: quiver_engine::example_query::Scoring,
    /// The examples, in the scoring's order (dense for a dense space, sparse for a sparse one).
    pub examples: ExampleVectors,
    /// Points answered.
    pub k: usize,
    /// Only points passing this filter (empty: all).
    pub filter: String,
}

/// The vectors an [`ExampleSearch`] scores.
#[derive(Debug, Clone)]
pub enum ExampleSpace {
    /// The collection's own dense vectors (those its index holds).
    Own,
    /// A named dense space kept in payloads.
    Named {
        /// Its name.
        name: String,
        /// Its metric.
        metric: quiver_engine::Metric,
        /// Its size.
        dim: usize,
        /// A multi-vector space (examples are multi-vectors, compared by MaxSim).
        multi: bool,
    },
    /// Sparse vectors of one name.
    Sparse {
        /// Their name.
        name: String,
        /// Weigh the examples' terms by inverse document frequency (Qdrant's `idf` modifier).
        idf: bool,
    },
}

/// The examples of an [`ExampleSearch`].
#[derive(Debug, Clone)]
pub enum ExampleVectors {
    /// Dense vectors.
    Dense(Vec<Vec<f32>>),
    /// Sparse vectors.
    Sparse(Vec<quiver_engine::sparse::SparseVector>),
    /// Multi-vectors (each several dense vectors of the space's size).
    Multi(Vec<Vec<Vec<f32>>>),
}

/// Trains a collection's IVF-PQ index.
#[derive(Debug, Clone)]
pub struct Train {
    /// The collection.
    pub collection: String,
    /// Parameters overriding the collection's (zero fields keep them).
    pub overrides: Option<IndexConfig>,
    /// Answer at once; the training runs on (its state shows in the collection's status).
    pub background: bool,
}

/// An edit of a collection's settings and training size: applied to the current value, under
/// the collection's lock (in a cluster, its description lease), so that concurrent edits do
/// not undo each other; it may run more than once (a cluster's catalog append retried).
pub type SettingsEdit = Arc<dyn Fn(&mut serde_json::Value, &mut u64) + Send + Sync>;

/// Serves the typed requests: from the local registry, or through the cluster in cluster
/// mode.
#[derive(Clone)]
pub struct Router {
    registry: Arc<Registry>,
}

impl Router {
    /// The router of a server.
    pub fn new(registry: Arc<Registry>) -> Router {
        Router { registry }
    }

    /// The server's collections and configuration.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    fn local(&self) -> local::Local<'_> {
        local::Local::new(&self.registry)
    }

    /// The server's limits.
    pub fn limits(&self) -> &crate::config::Limits {
        &self.registry.config().limits
    }

    /// Whether this server is a cluster node.
    pub fn is_cluster(&self) -> bool {
        self.registry.cluster().is_some()
    }

    /// Refuses a call that cluster mode does not serve (yet), naming it.
    pub fn not_in_cluster(&self, call: &str) -> Result<(), Status> {
        match self.registry.cluster() {
            Some(_) => Err(Status::unimplemented(format!(
                "{call} is not available in cluster mode yet"
            ))),
            None => Ok(()),
        }
    }

    /// Counts `n` vectors (written or searched) against the client's rate limit.
    pub(crate) fn take_vectors(&self, client: Client, n: usize) -> Result<(), Status> {
        self.registry
            .limiter()
            .check(client, Limit::Vectors, n, self.registry.metrics())
    }

    /// Creates a collection.
    pub async fn create(&self, r: CreateCollection) -> Result<CollectionState, Status> {
        match self.registry.cluster() {
            Some(c) => c.create(r).await,
            None => self.local().create(r).await,
        }
    }

    /// Drops a collection.
    pub async fn drop_collection(&self, name: &str) -> Result<(), Status> {
        match self.registry.cluster() {
            Some(c) => c.drop_collection(name).await,
            None => self.registry.drop_collection(name).await,
        }
    }

    /// A collection's state.
    pub async fn describe(&self, name: &str, caller: &Caller) -> Result<CollectionState, Status> {
        match self.registry.cluster() {
            Some(c) => c.describe(name, caller).await,
            None => self.local().describe(name),
        }
    }

    /// Every collection (those loading, or failed, included).
    pub async fn list(&self) -> Vec<CollectionState> {
        match self.registry.cluster() {
            Some(c) => c.list().await,
            None => self.local().list(),
        }
    }

    /// The collections' names (those being loaded included; those that failed to open on a
    /// single server left out), sorted.
    pub async fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = match self.registry.cluster() {
            Some(c) => c.names(),
            None => {
                let mut n: Vec<String> = self.registry.list().into_iter().map(|(n, _)| n).collect();
                n.extend(self.registry.loading());
                n
            }
        };
        names.sort();
        // A collection whose background load just ended is briefly in both.
        names.dedup();
        names
    }

    /// Whether a collection exists (or is being loaded).
    pub async fn exists(&self, name: &str) -> Result<bool, Status> {
        match self.registry.cluster() {
            Some(c) => c.exists(name).await,
            None => Ok(self.registry.is_loading(name) || self.registry.get(name).is_ok()),
        }
    }

    /// A collection's description (dimension, metric, indexed fields, settings).
    pub async fn meta(&self, name: &str) -> Result<CollectionMeta, Status> {
        match self.registry.cluster() {
            Some(c) => c.meta(name).await,
            None => Ok(self.registry.get(name)?.store.meta()),
        }
    }

    /// Edits a collection's settings (and the size at which it trains by itself).
    pub async fn update_settings(&self, name: &str, edit: SettingsEdit) -> Result<(), Status> {
        match self.registry.cluster() {
            Some(c) => c.update_settings(name, edit).await,
            None => self.local().update_settings(name, edit).await,
        }
    }

    /// Indexes a payload field; answers the collection's state after.
    pub async fn create_field_index(
        &self,
        collection: &str,
        spec: FieldSpec,
        caller: &Caller,
    ) -> Result<CollectionState, Status> {
        match self.registry.cluster() {
            Some(c) => c.create_field_index(collection, spec, caller).await,
            None => self.local().create_field_index(collection, spec).await,
        }
    }

    /// Drops a payload field's index; answers the collection's state after.
    pub async fn delete_field_index(
        &self,
        collection: &str,
        key: &str,
        caller: &Caller,
    ) -> Result<CollectionState, Status> {
        if key.is_empty() {
            return Err(crate::status::invalid("key", "empty"));
        }
        match self.registry.cluster() {
            Some(c) => c.delete_field_index(collection, key, caller).await,
            None => self.local().delete_field_index(collection, key).await,
        }
    }

    /// Writes an upsert; answers the points written. `admitted`: its share of the write
    /// budget, taken already ([`crate::admission`], before the body was read).
    pub async fn upsert(
        &self,
        r: Upsert,
        caller: &Caller,
        admitted: Option<PreAdmitted>,
    ) -> Result<u64, Status> {
        match self.registry.cluster() {
            Some(c) => {
                c.check_upsert(&r, self.limits().max_upsert_points).await?;
                self.take_vectors(caller.client, r.ids.len())?;
                c.upsert(r, caller).await
            }
            None => self.local().upsert(r, caller, admitted, self).await,
        }
    }

    /// Deletes points; answers how many of them were live.
    pub async fn delete(&self, r: Delete, caller: &Caller) -> Result<u64, Status> {
        match self.registry.cluster() {
            Some(c) => c.delete(r, caller).await,
            None => self.local().delete(r).await,
        }
    }

    /// Edits payloads; answers how many of the points were live.
    pub async fn edit_payload(&self, r: EditPayload, caller: &Caller) -> Result<u64, Status> {
        if r.ids.is_empty() {
            return Err(crate::status::invalid(
                "ids",
                "empty: at least one id is required",
            ));
        }
        let max = self.limits().max_upsert_points;
        if r.ids.len() > max {
            return Err(crate::status::invalid(
                "ids",
                format!("{} ids exceed the limit of {max} per message", r.ids.len()),
            ));
        }
        match self.registry.cluster() {
            Some(c) => c.edit_payload(r, caller).await,
            None => self.local().edit_payload(r).await,
        }
    }

    /// Stored points by id, in the order asked (absent ones left out).
    pub async fn get(&self, r: Get, caller: &Caller) -> Result<Vec<StoredPoint>, Status> {
        let max = self.limits().max_queries_per_request;
        if r.ids.len() > max {
            return Err(crate::status::invalid(
                "ids",
                format!("{} ids exceed the limit of {max} per request", r.ids.len()),
            ));
        }
        match self.registry.cluster() {
            Some(c) => c.get(r, caller).await,
            None => self.local().get(r).await,
        }
    }

    /// Whether vectors read back from `collection` are PQ reconstructions (a trained
    /// collection that keeps no vectors).
    pub async fn approximate_vectors(&self, collection: &str) -> bool {
        match self.registry.cluster() {
            Some(_) => false,
            None => self
                .registry
                .get(collection)
                .is_ok_and(|c| !c.store.keeps_vectors() && c.store.trained()),
        }
    }

    /// A page of points by ascending id.
    pub async fn scroll(&self, r: Scroll, caller: &Caller) -> Result<ScrollPage, Status> {
        let max = self.limits().max_queries_per_request;
        if r.limit == 0 || r.limit > max {
            return Err(crate::status::invalid(
                "limit",
                format!(
                    "{} is out of range: it must be between 1 and {max}",
                    r.limit
                ),
            ));
        }
        match self.registry.cluster() {
            Some(c) => c.scroll(r, caller).await,
            None => self.local().scroll(r).await,
        }
    }

    /// Live points passing a filter.
    pub async fn count(&self, r: Count, caller: &Caller) -> Result<u64, Status> {
        match self.registry.cluster() {
            Some(c) => c.count(r, caller).await,
            None => self.local().count(r).await,
        }
    }

    /// Searches; answers each query's neighbours, best first.
    pub async fn search(&self, r: Search, caller: &Caller) -> Result<Vec<Vec<Hit>>, Status> {
        let max_k = self.limits().max_k;
        if r.k == 0 || r.k > max_k {
            return Err(crate::status::invalid(
                "k",
                format!("{} is out of range: it must be between 1 and {max_k}", r.k),
            ));
        }
        match self.registry.cluster() {
            Some(c) => c.search(r, caller, self).await,
            None => self.local().search(r, caller, self).await,
        }
    }

    /// Changes the aliases: `actions` in order, all or none.
    pub async fn update_aliases(
        &self,
        actions: Vec<quiver_store::AliasAction>,
    ) -> Result<(), Status> {
        self.not_in_cluster("aliases")?;
        let registry = self.registry.clone();
        local::blocking(move || registry.update_aliases(actions)).await
    }

    /// The aliases (alias, collection), by alias; only those of `collection` when given (an
    /// unknown collection is NOT_FOUND).
    pub async fn aliases(&self, collection: Option<&str>) -> Result<Vec<(String, String)>, Status> {
        if self.registry.cluster().is_some() {
            // No aliases in cluster mode (yet): none to list.
            if let Some(c) = collection {
                self.meta(c).await?;
            }
            return Ok(Vec::new());
        }
        if let Some(c) = collection {
            self.registry.get(c)?;
        }
        Ok(self
            .registry
            .aliases()
            .into_iter()
            .filter(|(_, c)| collection.is_none_or(|want| want == c))
            .collect())
    }

    /// Searches sparse vectors; answers the neighbours (points sharing a term with the
    /// query), best first, with their dot products as distances negated (Quiver's order:
    /// smaller is better).
    pub async fn sparse_search(
        &self,
        r: SparseSearch,
        caller: &Caller,
    ) -> Result<Vec<Hit>, Status> {
        let max_k = self.limits().max_k;
        if r.k == 0 || r.k > max_k {
            return Err(crate::status::invalid(
                "k",
                format!("{} is out of range: it must be between 1 and {max_k}", r.k),
            ));
        }
        self.not_in_cluster("sparse vector search")?;
        self.take_vectors(caller.client, 1)?;
        self.local().sparse_search(r).await
    }

    /// Searches one of a collection's named dense spaces kept in payloads; answers the
    /// neighbours best first, distances as the native search reports them.
    pub async fn space_search(&self, r: SpaceSearch, caller: &Caller) -> Result<Vec<Hit>, Status> {
        let max_k = self.limits().max_k;
        if r.k == 0 || r.k > max_k {
            return Err(crate::status::invalid(
                "k",
                format!("{} is out of range: it must be between 1 and {max_k}", r.k),
            ));
        }
        self.not_in_cluster("named dense vector search")?;
        self.take_vectors(caller.client, 1)?;
        self.local().space_search(r).await
    }

    /// Scores points against examples; answers the best, highest score first.
    pub async fn example_search(
        &self,
        r: ExampleSearch,
        caller: &Caller,
    ) -> Result<Vec<(u64, f32)>, Status> {
        let max_k = self.limits().max_k;
        if r.k == 0 || r.k > max_k {
            return Err(crate::status::invalid(
                "k",
                format!("{} is out of range: it must be between 1 and {max_k}", r.k),
            ));
        }
        self.not_in_cluster("discovery, context and example-scored recommendation queries")?;
        self.take_vectors(caller.client, 1)?;
        self.local().example_search(r).await
    }

    /// Trains a collection's index; answers its state (training, when in the background).
    pub async fn train(&self, r: Train, caller: &Caller) -> Result<CollectionState, Status> {
        match self.registry.cluster() {
            Some(c) => c.train(r, caller).await,
            None => self.local().train(r).await,
        }
    }
}

/// Refuses a collection name that is not one, or a dimension out of the server's range.
pub fn check_name_and_dim(
    limits: &crate::config::Limits,
    name: &str,
    dim: u64,
) -> Result<(), Status> {
    use crate::status::invalid;
    if !quiver_store::valid_name(name) {
        return Err(invalid(
            "name",
            "must be 1 to 64 characters of A-Z a-z 0-9 _ - . and not start with a dot",
        ));
    }
    if dim == 0 || dim > limits.max_dim as u64 {
        return Err(invalid(
            "dim",
            format!(
                "{dim} is out of range: it must be between 1 and {}",
                limits.max_dim
            ),
        ));
    }
    Ok(())
}

/// A new collection's description, checked against the server's limits: its name, its
/// dimension, the index parameters (`index.refine` empty: f32; seed 0: 1234; `pq_m` must
/// divide the dimension) and its indexed fields (each key once).
pub fn collection_meta(
    limits: &crate::config::Limits,
    name: &str,
    dim: u64,
    metric: quiver_engine::Metric,
    mut index: IndexConfig,
    fields: Vec<FieldSpec>,
) -> Result<CollectionMeta, Status> {
    use crate::status::invalid;
    check_name_and_dim(limits, name, dim)?;
    if index.refine.is_empty() {
        index.refine = "f32".into();
    }
    if index.seed == 0 {
        index.seed = 1234;
    }
    if index.pq_m != 0 && !dim.is_multiple_of(u64::from(index.pq_m)) {
        return Err(invalid(
            "index.pq_m",
            format!("{} does not divide dim = {dim}", index.pq_m),
        ));
    }
    for (i, f) in fields.iter().enumerate() {
        if fields[..i].iter().any(|x| x.key == f.key) {
            return Err(invalid(
                &format!("field_indexes[{i}].key"),
                format!("`{}` is given twice", f.key),
            ));
        }
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
        name: name.to_string(),
        dim: dim as usize,
        metric: metric.name().into(),
        index,
        fields,
        settings: serde_json::Value::Null,
    })
}

/// Checks the shape of a search's queries against a `dim`-dimensional collection of
/// `metric` and the server's limits; answers how many there are.
pub(crate) fn check_queries(
    r: &Search,
    dim: usize,
    metric: quiver_engine::Metric,
    limits: &crate::config::Limits,
) -> Result<usize, Status> {
    let field = r.batch_field.unwrap_or("vector");
    if r.queries.is_empty() {
        return Err(crate::status::invalid(
            field,
            "empty: at least one query vector is required",
        ));
    }
    if r.batch_field.is_none() && r.queries.len() != dim {
        return Err(crate::status::invalid(
            "vector",
            format!(
                "dimension mismatch: expected {dim}, got {}",
                r.queries.len()
            ),
        ));
    }
    let nq = check_vectors(field, &r.queries, dim, metric)?;
    if nq > limits.max_queries_per_request {
        return Err(crate::status::invalid(
            field,
            format!(
                "{nq} queries exceed the limit of {} per request",
                limits.max_queries_per_request
            ),
        ));
    }
    if let QueryFilters::PerQuery(f) = &r.filters {
        if !f.is_empty() && f.len() != nq {
            return Err(crate::status::invalid(
                "filters",
                format!(
                    "{} filters for {nq} queries (one per query, or none)",
                    f.len()
                ),
            ));
        }
    }
    Ok(nq)
}

/// Checks `values` hold whole rows of `dim` finite values (non-zero rows for cosine);
/// answers how many rows.
pub(crate) fn check_vectors(
    field: &str,
    values: &[f32],
    dim: usize,
    metric: quiver_engine::Metric,
) -> Result<usize, Status> {
    use crate::status::invalid;
    if dim == 0 || !values.len().is_multiple_of(dim) {
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

/// Refuses an upsert whose shape does not fit a `dim`-dimensional collection of `metric`, or
/// that holds more than `max` points.
pub(crate) fn check_upsert_shape(
    r: &Upsert,
    dim: usize,
    metric: quiver_engine::Metric,
    max: usize,
) -> Result<(), Status> {
    use crate::status::invalid;
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
    if !r.payloads.is_empty() && r.payloads.len() != r.ids.len() {
        return Err(invalid(
            "payloads",
            format!("{} payloads for {} ids", r.payloads.len(), r.ids.len()),
        ));
    }
    check_vectors("vectors", &r.vectors, dim, metric)?;
    if let Some(id) = r.ids.iter().find(|&&id| id > i64::MAX as u64) {
        return Err(invalid("ids", format!("{id} is above 2^63-1")));
    }
    Ok(())
}
