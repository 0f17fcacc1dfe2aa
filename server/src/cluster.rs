//! Cluster mode of the native service (`quiver serve --nats URL --node-id ID`): this server is
//! a node of a Quiver cluster ([`quiver_cluster::Node`]) and the native API's collection,
//! write and read calls go through it instead of the local registry: creates and drops
//! through the catalog log, writes split by shard into the shards' logs, reads to one replica
//! of each shard, merged. The node's replicas live in `DATA_DIR/cluster/`.
//!
//! A read on this server waits until the replicas it asks have applied every write this
//! server acknowledged (read-your-writes through one server); `wait` on a write (and
//! [`ClusterFront::wait_applied`]) waits until a replica of each shard has applied it.
//! Train trains every shard (each on its own points) and switches every replica at one number
//! of its shard's log. LoadIndex, Flush, Scroll and payload edits are not routed yet: they
//! answer UNIMPLEMENTED in cluster mode.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use parking_lot::Mutex;
use quiver_cluster::{
    ClusterCollection, ClusterError, Node, SearchRequest, ShardState, WriteToken,
};
use quiver_store::wal::Op;
use quiver_store::{CollectionMeta, CollectionsFolder, IndexConfig, StoreConfig};
use tonic::Status;

use crate::backend::AnyBackend;
use crate::payloads::{encode_payloads, field_to_proto, parse_filter, render};
use crate::proto;
use crate::status::{from_store, invalid};

/// How a server joins a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS server URLs (any of a JetStream cluster's servers).
    pub urls: Vec<String>,
    /// This node's id: 1 to 64 of `[A-Za-z0-9_-]`, stable across restarts (placement names it).
    pub node_id: String,
    /// Copies of each stream and bucket on the JetStream cluster (3 on a 3-server cluster).
    pub stream_replicas: usize,
    /// How often the node exports snapshots of its shard replicas (zero: never;
    /// [`Node::snapshot_every`]).
    pub snapshot_interval: Duration,
    /// Ops a replica applies past its shard's last snapshot before another is exported.
    pub snapshot_min_ops: u64,
}

/// Why joining the cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The NATS servers could not be reached.
    #[error("connecting to NATS at {urls}: {reason}")]
    Connect {
        /// The URLs.
        urls: String,
        /// Why.
        reason: String,
    },
    /// The node id is not one.
    #[error("node_id {0:?}: 1 to 64 of A-Z a-z 0-9 _ -")]
    NodeId(String),
    /// The node's folder could not be opened.
    #[error("the cluster node's folder: {0}")]
    Folder(quiver_store::StoreError),
    /// The node could not start.
    #[error("joining the cluster: {0}")]
    Node(ClusterError),
}

/// How long a call without a deadline may take.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a training without a deadline may take.
const TRAIN_TIMEOUT: Duration = Duration::from_secs(3600);

/// A training this server started in the background, by collection and incarnation.
#[derive(Debug, Clone)]
enum TrainJob {
    Running,
    Failed(String),
}

/// The cluster node behind the native API.
pub struct ClusterFront {
    node: std::sync::Arc<Node<AnyBackend>>,
    /// Per collection (and incarnation), the writes this server acknowledged: what its reads
    /// wait for.
    written: Mutex<HashMap<(String, u64), WriteToken>>,
    /// Trainings started here in the background (their state shows in [`Self::info`]).
    trainings: std::sync::Arc<Mutex<HashMap<(String, u64), TrainJob>>>,
}

impl ClusterFront {
    /// Connects to NATS and starts this server's node over `DATA_DIR/cluster/`.
    pub async fn join(
        cfg: &ClusterConfig,
        data_dir: &Path,
        backend: AnyBackend,
        store: StoreConfig,
    ) -> Result<ClusterFront, JoinError> {
        if !quiver_cluster::membership::valid_node_id(&cfg.node_id) {
            return Err(JoinError::NodeId(cfg.node_id.clone()));
        }
        let urls = cfg.urls.join(",");
        let client = async_nats::ConnectOptions::new()
            .name(format!("quiver-{}", cfg.node_id))
            .connection_timeout(Duration::from_secs(5))
            .connect(cfg.urls.as_slice())
            .await
            .map_err(|e| JoinError::Connect {
                urls: urls.clone(),
                reason: e.to_string(),
            })?;
        let js = async_nats::jetstream::new(client);
        let root = data_dir.join("cluster");
        let folder = tokio::task::spawn_blocking(move || CollectionsFolder::open(&root))
            .await
            .map_err(|e| JoinError::Folder(quiver_store::StoreError::Failed(e.to_string())))?
            .map_err(JoinError::Folder)?;
        // A JetStream cluster electing its leaders (all servers starting together, one
        // restarting) refuses for a while: tried for up to a minute.
        let mut tries = 0;
        let node = loop {
            let started = Node::start(
                js.clone(),
                folder.clone(),
                backend.clone(),
                store.clone(),
                cfg.stream_replicas,
                &cfg.node_id,
            )
            .await;
            match started {
                Ok(node) => break node,
                Err(e @ ClusterError::Broker { .. }) if tries < 60 => {
                    tries += 1;
                    tracing::warn!(error = %e, "the cluster is not ready; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(JoinError::Node(e)),
            }
        };
        if !cfg.snapshot_interval.is_zero() {
            node.snapshot_every(cfg.snapshot_interval, cfg.snapshot_min_ops);
        }
        Ok(ClusterFront {
            node: std::sync::Arc::new(node),
            written: Mutex::new(HashMap::new()),
            trainings: Default::default(),
        })
    }

    /// Keeps the cluster's figures in `metrics` (replicas' applied ops and lag, requests
    /// routed) up to date: refreshed every [`METRICS_EVERY`] until the node stops.
    pub fn report_metrics(&self, metrics: crate::metrics::Metrics) {
        let node = std::sync::Arc::downgrade(&self.node);
        tokio::spawn(async move {
            loop {
                // Held only while refreshing: a node stopped and dropped ends this.
                let Some(n) = node.upgrade() else { return };
                refresh_metrics(&n, &metrics).await;
                drop(n);
                tokio::time::sleep(METRICS_EVERY).await;
            }
        });
    }

    /// The node.
    pub fn node(&self) -> &Node<AnyBackend> {
        &self.node
    }

    /// Stops the node (its replicas keep what they applied).
    pub async fn stop(&self) {
        if let Err(e) = self.node.stop().await {
            tracing::warn!(error = %e, "the cluster node stopped with an error");
        }
    }

    /// Collection `name`; when this node does not know it, after reading the catalog to its
    /// end (created through another node a moment ago).
    async fn collection(&self, name: &str) -> Result<ClusterCollection, Status> {
        if let Some(c) = self.node.topology().get(name) {
            return Ok(c.clone());
        }
        self.node.sync_catalog().await.map_err(from_cluster)?;
        self.node
            .topology()
            .get(name)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("collection {name:?} does not exist")))
    }

    /// What reads of `c` on this server wait for.
    fn read_after(&self, c: &ClusterCollection) -> Option<WriteToken> {
        self.written
            .lock()
            .get(&(c.meta.name.clone(), c.incarnation))
            .cloned()
    }

    /// Records an acknowledged write to `c` (to the incarnation the token names).
    fn wrote(&self, c: &ClusterCollection, token: &WriteToken) {
        let mut w = self.written.lock();
        let t = w
            .entry((c.meta.name.clone(), token.incarnation))
            .or_insert_with(|| WriteToken {
                incarnation: token.incarnation,
                shards: Vec::new(),
            });
        for &(shard, seq) in &token.shards {
            match t.shards.iter_mut().find(|(s, _)| *s == shard) {
                Some(e) => e.1 = e.1.max(seq),
                None => t.shards.push((shard, seq)),
            }
        }
    }

    /// Creates a collection of `shards` shards × `replication` replicas (0: 1).
    pub async fn create(
        &self,
        meta: CollectionMeta,
        shards: u32,
        replication: u32,
    ) -> Result<proto::CollectionInfo, Status> {
        let c = self
            .node
            .create_collection(meta, shards.max(1), replication.max(1))
            .await
            .map_err(from_cluster)?;
        Ok(info(&c, 0))
    }

    /// Drops a collection.
    pub async fn drop_collection(&self, name: &str) -> Result<(), Status> {
        self.node
            .drop_collection(name)
            .await
            .map_err(from_cluster)?;
        // The dropped one's tokens go (not those of one created again meanwhile).
        let live = self.node.topology().get(name).map(|c| c.incarnation);
        self.written
            .lock()
            .retain(|k, _| k.0 != name || Some(k.1) == live);
        self.trainings
            .lock()
            .retain(|k, _| k.0 != name || Some(k.1) == live);
        Ok(())
    }

    /// A collection's description, from a replica of each shard.
    pub async fn info(&self, name: &str) -> Result<proto::CollectionInfo, Status> {
        let c = self.collection(name).await?;
        let shards = self
            .node
            .describe(name, self.read_after(&c).as_ref(), DEFAULT_TIMEOUT)
            .await
            .map_err(from_cluster)?;
        Ok(self.with_job(&c, described(&c, &shards)))
    }

    /// Every collection (described where a replica of each shard answers).
    pub async fn list(&self) -> Vec<proto::CollectionInfo> {
        let all: Vec<ClusterCollection> = self.node.topology().collections().cloned().collect();
        let asks = all.iter().map(|c| async move {
            match self
                .node
                .describe(&c.meta.name, None, Duration::from_secs(5))
                .await
            {
                Ok(shards) => self.with_job(c, described(c, &shards)),
                Err(e) => proto::CollectionInfo {
                    state: format!("failed: {e}"),
                    ..info(c, 0)
                },
            }
        });
        futures_util::future::join_all(asks).await
    }

    /// `info` with the state of a training this server runs in the background, if any.
    fn with_job(
        &self,
        c: &ClusterCollection,
        info: proto::CollectionInfo,
    ) -> proto::CollectionInfo {
        let state = match self
            .trainings
            .lock()
            .get(&(c.meta.name.clone(), c.incarnation))
        {
            Some(TrainJob::Running) => "training".to_string(),
            Some(TrainJob::Failed(why)) => format!("failed: {why}"),
            None => return info,
        };
        proto::CollectionInfo { state, ..info }
    }

    /// Trains every shard of `name` (`index` overriding its parameters); in the background
    /// (answering at once) or waiting until a replica of each shard has switched.
    pub async fn train(
        &self,
        name: &str,
        index: Option<IndexConfig>,
        background: bool,
        timeout: Option<Duration>,
    ) -> Result<proto::CollectionInfo, Status> {
        let c = self.collection(name).await?;
        let key = (c.meta.name.clone(), c.incarnation);
        if background {
            {
                let mut jobs = self.trainings.lock();
                if matches!(jobs.get(&key), Some(TrainJob::Running)) {
                    return Err(Status::failed_precondition(format!(
                        "collection {name:?} is being trained already"
                    )));
                }
                jobs.insert(key.clone(), TrainJob::Running);
            }
            let (node, jobs, name) = (self.node.clone(), self.trainings.clone(), name.to_string());
            tokio::spawn(async move {
                let done = node.train(&name, index, TRAIN_TIMEOUT).await;
                let mut jobs = jobs.lock();
                match done {
                    Ok(_) => jobs.remove(&key),
                    Err(e) => jobs.insert(key, TrainJob::Failed(e.to_string())),
                };
            });
            return Ok(proto::CollectionInfo {
                state: "training".into(),
                ..info(&c, 0)
            });
        }
        let timeout = timeout.unwrap_or(TRAIN_TIMEOUT);
        let started = tokio::time::Instant::now();
        let token = self
            .node
            .train(name, index, timeout)
            .await
            .map_err(from_cluster)?;
        self.wrote(&c, &token);
        let left = timeout.saturating_sub(started.elapsed());
        self.node
            .wait_applied(name, &token, left)
            .await
            .map_err(from_cluster)?;
        // A failure reported before is over (a background training still running stays).
        {
            let mut jobs = self.trainings.lock();
            if matches!(jobs.get(&key), Some(TrainJob::Failed(_))) {
                jobs.remove(&key);
            }
        }
        self.info(name).await
    }

    /// Refuses an upsert that does not fit its collection, or of more than `max` points, or
    /// in a mode not routed (only the plain upsert is).
    pub async fn check_upsert(&self, r: &proto::UpsertRequest, max: usize) -> Result<(), Status> {
        match proto::UpsertMode::try_from(r.mode) {
            Ok(proto::UpsertMode::Upsert) => {}
            Ok(_) => {
                return Err(Status::unimplemented(
                    "insert-only and update-only upserts are not available in cluster mode yet",
                ))
            }
            Err(_) => {
                return Err(invalid(
                    "mode",
                    format!("unknown upsert mode {} (0, 1 or 2)", r.mode),
                ))
            }
        }
        let c = self.collection(&r.collection).await?;
        crate::service::check_upsert_shape(r, c.meta.dim, c.meta.metric(), max)
    }

    /// Writes an upsert checked by [`Self::check_upsert`]; returns the points written. Only
    /// the plain upsert mode is routed.
    pub async fn upsert(
        &self,
        r: proto::UpsertRequest,
        wait: bool,
        timeout: Option<Duration>,
    ) -> Result<u64, Status> {
        let c = self.collection(&r.collection).await?;
        let dim = c.meta.dim;
        let payloads = encode_payloads(&r.payloads, r.ids.len())?;
        let n = r.ids.len() as u64;
        let op = Op::Upsert {
            ids: r.ids,
            vectors: r.vectors,
            dim,
            payloads,
        };
        self.write(&c, op, wait, timeout).await?;
        Ok(n)
    }

    /// Deletes ids, or the points passing a filter; returns how many of the (distinct) ids
    /// were live just before the delete was taken (for a filter: how many passed it then),
    /// as this server read them: a write through another server in between is not counted.
    pub async fn delete(
        &self,
        r: proto::DeleteRequest,
        wait: bool,
        timeout: Option<Duration>,
    ) -> Result<u64, Status> {
        let c = self.collection(&r.collection).await?;
        let t = timeout.unwrap_or(DEFAULT_TIMEOUT);
        let by_filter = !r.filter.trim().is_empty();
        if by_filter && !r.ids.is_empty() {
            return Err(invalid("filter", "give ids or a filter, not both"));
        }
        let after = self.read_after(&c);
        let (op, live) = if by_filter {
            parse_filter("filter", &r.filter, &c.meta.fields)?;
            let live = self
                .node
                .count(&c.meta.name, Some(&r.filter), after.as_ref(), t)
                .await
                .map_err(from_cluster)?;
            (Op::DeleteFilter { filter: r.filter }, live)
        } else {
            if r.ids.is_empty() {
                return Err(invalid(
                    "ids",
                    "empty: at least one id (or a filter) is required",
                ));
            }
            let mut distinct = r.ids.clone();
            distinct.sort_unstable();
            distinct.dedup();
            let live = self
                .node
                .get(&c.meta.name, &distinct, after.as_ref(), t)
                .await
                .map_err(from_cluster)?
                .len() as u64;
            (Op::Delete { ids: r.ids }, live)
        };
        self.write(&c, op, wait, timeout).await?;
        Ok(live)
    }

    async fn write(
        &self,
        c: &ClusterCollection,
        op: Op,
        wait: bool,
        timeout: Option<Duration>,
    ) -> Result<(), Status> {
        let id = self.node.new_write_id();
        let token = self
            .node
            .write(&c.meta.name, &id, op)
            .await
            .map_err(from_cluster)?;
        self.wrote(c, &token);
        if wait {
            self.node
                .wait_applied(&c.meta.name, &token, timeout.unwrap_or(DEFAULT_TIMEOUT))
                .await
                .map_err(from_cluster)?;
        }
        Ok(())
    }

    /// Stored points by id, in request order.
    pub async fn get(
        &self,
        r: proto::GetRequest,
        timeout: Option<Duration>,
    ) -> Result<proto::GetResponse, Status> {
        let c = self.collection(&r.collection).await?;
        let points = self
            .node
            .get(
                &r.collection,
                &r.ids,
                self.read_after(&c).as_ref(),
                timeout.unwrap_or(DEFAULT_TIMEOUT),
            )
            .await
            .map_err(from_cluster)?;
        Ok(proto::GetResponse {
            points: points
                .into_iter()
                .map(|p| proto::Point {
                    id: p.id,
                    approximate: false,
                    vector: if r.with_vectors { p.vector } else { Vec::new() },
                    payload: if r.with_payload {
                        render(&p.payload, &r.payload_keys)
                    } else {
                        String::new()
                    },
                })
                .collect(),
        })
    }

    /// The dimension of collection `name`.
    pub async fn dim_of(&self, name: &str) -> Result<usize, Status> {
        Ok(self.collection(name).await?.meta.dim)
    }

    /// Searches `nq` queries (`filters`: one per query, or none; `filter`: one for all).
    pub async fn search(
        &self,
        collection: &str,
        queries: Vec<f32>,
        key: quiver_store::SearchKey,
        (filter, filters): (&str, &[String]),
        (with_payload, payload_keys): (bool, &[String]),
        timeout: Option<Duration>,
    ) -> Result<Vec<proto::SearchResponse>, Status> {
        let c = self.collection(collection).await?;
        let dim = c.meta.dim;
        let nq = crate::service::check_vectors("vectors", &queries, dim, c.meta.metric())?;
        if nq == 0 {
            return Err(invalid(
                "vectors",
                "empty: at least one query vector is required",
            ));
        }
        if !filters.is_empty() && !filter.is_empty() {
            return Err(invalid("filters", "give filter or filters, not both"));
        }
        if !filters.is_empty() && filters.len() != nq {
            return Err(invalid(
                "filters",
                format!(
                    "{} filters for {nq} queries (one per query, or none)",
                    filters.len()
                ),
            ));
        }
        let text_of = |q: usize| -> &str {
            if filters.is_empty() {
                filter
            } else {
                &filters[q]
            }
        };
        // Queries sharing a filter go together.
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for q in 0..nq {
            let f = text_of(q).trim().to_string();
            match groups.iter_mut().find(|g| g.0 == f) {
                Some(g) => g.1.push(q),
                None => {
                    let field = if filters.is_empty() {
                        "filter".to_string()
                    } else {
                        format!("filters[{q}]")
                    };
                    parse_filter(&field, &f, &c.meta.fields)?;
                    groups.push((f, vec![q]));
                }
            }
        }
        let after = self.read_after(&c);
        let timeout = timeout.unwrap_or(DEFAULT_TIMEOUT);
        let mut results = vec![proto::SearchResponse::default(); nq];
        let searches = groups.iter().map(|(f, qs)| {
            let req = SearchRequest {
                queries: qs
                    .iter()
                    .flat_map(|&q| queries[q * dim..(q + 1) * dim].iter().copied())
                    .collect(),
                nq: qs.len(),
                k: key.k,
                nprobe: key.nprobe,
                refine_factor: key.refine_factor,
                filter: (!f.is_empty()).then(|| f.clone()),
                after: after.clone(),
            };
            self.node.search(collection, req, timeout)
        });
        let answers = futures_util::future::try_join_all(searches)
            .await
            .map_err(from_cluster)?;
        for ((_, qs), found) in groups.iter().zip(answers) {
            for (&q, n) in qs.iter().zip(found) {
                results[q].neighbors = n
                    .into_iter()
                    .map(|(id, distance)| proto::Neighbor {
                        id,
                        distance,
                        payload: String::new(),
                    })
                    .collect();
            }
        }
        if with_payload {
            let mut ids: Vec<u64> = results
                .iter()
                .flat_map(|r| r.neighbors.iter().map(|n| n.id))
                .collect();
            ids.sort_unstable();
            ids.dedup();
            let points = self
                .node
                .get(collection, &ids, after.as_ref(), timeout)
                .await
                .map_err(from_cluster)?;
            let payloads: HashMap<u64, Vec<u8>> =
                points.into_iter().map(|p| (p.id, p.payload)).collect();
            for n in results.iter_mut().flat_map(|r| r.neighbors.iter_mut()) {
                n.payload = render(
                    payloads.get(&n.id).map(Vec::as_slice).unwrap_or_default(),
                    payload_keys,
                );
            }
        }
        Ok(results)
    }

    /// Live points passing `filter` (all when empty).
    pub async fn count(
        &self,
        collection: &str,
        filter: &str,
        timeout: Option<Duration>,
    ) -> Result<u64, Status> {
        let c = self.collection(collection).await?;
        parse_filter("filter", filter, &c.meta.fields)?;
        let f = (!filter.trim().is_empty()).then_some(filter);
        self.node
            .count(
                collection,
                f,
                self.read_after(&c).as_ref(),
                timeout.unwrap_or(DEFAULT_TIMEOUT),
            )
            .await
            .map_err(from_cluster)
    }
}

/// How often [`ClusterFront::report_metrics`] refreshes the cluster's figures.
pub const METRICS_EVERY: Duration = Duration::from_secs(5);

/// Sets the cluster's figures in `metrics` from what `node` says now.
async fn refresh_metrics(node: &Node<AnyBackend>, metrics: &crate::metrics::Metrics) {
    let replicas = node.replication().await;
    // Replicas no longer held (dropped, moved) leave the figures.
    metrics.cluster_applied.reset();
    metrics.cluster_lag.reset();
    for r in &replicas {
        let shard = r.shard.to_string();
        let labels = [r.collection.as_str(), shard.as_str()];
        metrics
            .cluster_applied
            .with_label_values(&labels)
            .set(i64::try_from(r.applied).unwrap_or(i64::MAX));
        if let Some(last) = r.log_last {
            metrics
                .cluster_lag
                .with_label_values(&labels)
                .set(i64::try_from(last.saturating_sub(r.applied)).unwrap_or(i64::MAX));
        }
    }
    for ((collection, shard, answered_by), n) in node.routed() {
        let shard = shard.to_string();
        let counter = metrics.cluster_routed.with_label_values(&[
            collection.as_str(),
            shard.as_str(),
            answered_by.as_str(),
        ]);
        let seen = counter.get();
        if n > seen {
            counter.inc_by(n - seen);
        }
    }
}

/// A cluster collection as the native API describes it.
fn info(c: &ClusterCollection, count: u64) -> proto::CollectionInfo {
    let meta = &c.meta;
    proto::CollectionInfo {
        name: meta.name.clone(),
        dim: meta.dim as u32,
        metric: crate::service::metric_to_proto(meta.metric()) as i32,
        index: Some(crate::service::index_params(&meta.index)),
        count,
        state: "ready".into(),
        field_indexes: meta.fields.iter().map(field_to_proto).collect(),
        shard_number: c.shards(),
        replication_factor: c.replication(),
        ..Default::default()
    }
}

/// A cluster collection as the native API describes it, from what a replica of each shard
/// holds: counts, memory and segments summed; trained once every shard is; the index
/// parameters are shard 0's (each shard trains its own quantizers); drift the largest.
fn described(c: &ClusterCollection, shards: &[ShardState]) -> proto::CollectionInfo {
    let count = shards.iter().map(|s| s.count).sum();
    let base = info(c, count);
    let index = match shards.first() {
        Some(s) => crate::service::index_params(&s.index),
        None => crate::service::index_params(&c.meta.index),
    };
    proto::CollectionInfo {
        index: Some(index),
        trained: !shards.is_empty() && shards.iter().all(|s| s.trained),
        memory_bytes: shards.iter().map(|s| s.memory_bytes).sum(),
        segments: shards.iter().map(|s| s.segments).sum(),
        drift: shards.iter().map(|s| s.drift).fold(0.0, f64::max),
        ..base
    }
}

/// The status a cluster error answers with.
pub fn from_cluster(e: ClusterError) -> Status {
    match e {
        ClusterError::Store(e) => from_store(e),
        ClusterError::NotFound(name) => {
            Status::not_found(format!("collection {name:?} does not exist"))
        }
        ClusterError::Exists(name) => {
            Status::already_exists(format!("collection {name:?} already exists"))
        }
        e @ ClusterError::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
        e @ (ClusterError::Broker { .. } | ClusterError::Unavailable { .. }) => {
            Status::unavailable(e.to_string())
        }
        e @ (ClusterError::BadEntry { .. }
        | ClusterError::Trimmed { .. }
        | ClusterError::Behind { .. }
        | ClusterError::Gap { .. }
        | ClusterError::Foreign { .. }) => Status::internal(e.to_string()),
    }
}
