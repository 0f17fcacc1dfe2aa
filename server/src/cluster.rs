//! Cluster mode of the request layer (`quiver serve --nats URL --node-id ID`): this server is
//! a node of a Quiver cluster ([`quiver_cluster::Node`]) and the [`crate::requests::Router`]
//! serves every front end's requests through it instead of the local registry: creates and drops
//! through the catalog log, writes split by shard into the shards' logs, reads to one replica
//! of each shard, merged. The node's replicas live in `DATA_DIR/cluster/`.
//!
//! A read on this server waits until the replicas it asks have applied every write this
//! server acknowledged (read-your-writes through one server); `wait` on a write (and
//! [`quiver_cluster::Node::wait_applied`]) waits until a replica of each shard has applied it.
//! Train trains every shard (each on its own points) and switches every replica at one number
//! of its shard's log. Scroll merges the shards' pages by id; payload edits are split by shard
//! like deletes; field indexes and settings change the collection's description through the
//! catalog and every shard's log. LoadIndex and Flush are not routed: they answer
//! UNIMPLEMENTED in cluster mode.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use parking_lot::Mutex;
use quiver_cluster::{
    ClusterCollection, ClusterError, Node, ScrollRequest, SearchRequest, ShardState, WriteToken,
};
use quiver_store::wal::Op;
use quiver_store::{CollectionMeta, CollectionsFolder, StoreConfig, UpsertMode};
use tonic::Status;

use crate::backend::AnyBackend;
use crate::payloads::parse_filter;
use crate::requests::{
    check_queries, check_upsert_shape, Caller, CollectionState, CollectionStatus, Count,
    CreateCollection, Delete, DeleteTarget, EditPayload, Get, Hit, Probes, QueryFilters, Router,
    Scroll, ScrollPage, Search, SettingsEdit, StoredPoint, Train, Upsert,
};
use crate::status::{from_store, invalid};
use quiver_engine::payload::fields::FieldSpec;

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

/// The cluster node behind the request layer.
pub struct ClusterFront {
    node: std::sync::Arc<Node<AnyBackend>>,
    /// Per collection (and incarnation), the writes this server acknowledged: what its reads
    /// wait for.
    written: Mutex<HashMap<(String, u64), WriteToken>>,
    /// Trainings started here in the background (their state shows in [`Self::describe`]).
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

    /// Creates a collection (0 shards or replicas: 1).
    pub async fn create(&self, r: CreateCollection) -> Result<CollectionState, Status> {
        let c = self
            .node
            .create_collection(r.meta, r.shards.max(1), r.replication.max(1))
            .await
            .map_err(from_cluster)?;
        Ok(state(&c, &[]))
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

    /// The collections' names, as this node has read the catalog.
    pub fn names(&self) -> Vec<String> {
        self.node
            .topology()
            .collections()
            .map(|c| c.meta.name.clone())
            .collect()
    }

    /// Whether a collection exists (after reading the catalog to its end).
    pub async fn exists(&self, name: &str) -> Result<bool, Status> {
        match self.collection(name).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(s),
        }
    }

    /// A collection's description, as the catalog has it.
    pub async fn meta(&self, name: &str) -> Result<CollectionMeta, Status> {
        Ok(self.collection(name).await?.meta)
    }

    /// A collection's state, from a replica of each shard (and the catalog read to its end:
    /// a change of its description through another node a moment ago is in it).
    pub async fn describe(&self, name: &str, caller: &Caller) -> Result<CollectionState, Status> {
        self.node.sync_catalog().await.map_err(from_cluster)?;
        let c = self.collection(name).await?;
        let shards = self
            .node
            .describe(name, self.read_after(&c).as_ref(), timeout_of(caller))
            .await
            .map_err(from_cluster)?;
        Ok(self.with_job(&c, state(&c, &shards)))
    }

    /// Every collection (described where a replica of each shard answers).
    pub async fn list(&self) -> Vec<CollectionState> {
        let all: Vec<ClusterCollection> = self.node.topology().collections().cloned().collect();
        let asks = all.iter().map(|c| async move {
            match self
                .node
                .describe(&c.meta.name, None, Duration::from_secs(5))
                .await
            {
                Ok(shards) => self.with_job(c, state(c, &shards)),
                Err(e) => CollectionState {
                    status: CollectionStatus::Failed(e.to_string()),
                    ..state(c, &[])
                },
            }
        });
        futures_util::future::join_all(asks).await
    }

    /// `state` with the state of a training this server runs in the background, if any.
    fn with_job(&self, c: &ClusterCollection, state: CollectionState) -> CollectionState {
        let status = match self
            .trainings
            .lock()
            .get(&(c.meta.name.clone(), c.incarnation))
        {
            Some(TrainJob::Running) => CollectionStatus::Training,
            Some(TrainJob::Failed(why)) => CollectionStatus::Failed(why.clone()),
            None => return state,
        };
        CollectionState { status, ..state }
    }

    /// Trains every shard (`overrides` over its parameters); in the background (answering at
    /// once) or waiting until a replica of each shard has switched.
    pub async fn train(&self, r: Train, caller: &Caller) -> Result<CollectionState, Status> {
        let name = r.collection.as_str();
        let c = self.collection(name).await?;
        let key = (c.meta.name.clone(), c.incarnation);
        if r.background {
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
            let index = r.overrides;
            tokio::spawn(async move {
                let done = node.train(&name, index, TRAIN_TIMEOUT).await;
                let mut jobs = jobs.lock();
                match done {
                    Ok(_) => jobs.remove(&key),
                    Err(e) => jobs.insert(key, TrainJob::Failed(e.to_string())),
                };
            });
            return Ok(CollectionState {
                status: CollectionStatus::Training,
                ..state(&c, &[])
            });
        }
        let timeout = caller.time_left().unwrap_or(TRAIN_TIMEOUT);
        let started = tokio::time::Instant::now();
        let token = self
            .node
            .train(name, r.overrides, timeout)
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
        self.describe(name, caller).await
    }

    /// Indexes a payload field (its type replaced when indexed already) on every shard;
    /// answers once a replica of each shard has it.
    pub async fn create_field_index(
        &self,
        name: &str,
        spec: FieldSpec,
        caller: &Caller,
    ) -> Result<CollectionState, Status> {
        self.describe_collection(
            name,
            move |d| {
                match d.fields.iter_mut().find(|f| f.key == spec.key) {
                    Some(f) if *f == spec => return Ok(false),
                    Some(f) => *f = spec.clone(),
                    None => d.fields.push(spec.clone()),
                }
                Ok(true)
            },
            caller,
        )
        .await?;
        self.describe(name, caller).await
    }

    /// Drops a payload field's index on every shard (none: nothing changes).
    pub async fn delete_field_index(
        &self,
        name: &str,
        key: &str,
        caller: &Caller,
    ) -> Result<CollectionState, Status> {
        let key = key.to_string();
        self.describe_collection(
            name,
            move |d| {
                let before = d.fields.len();
                d.fields.retain(|f| f.key != key);
                Ok(d.fields.len() != before)
            },
            caller,
        )
        .await?;
        self.describe(name, caller).await
    }

    /// Edits a collection's settings and training size across the cluster.
    pub async fn update_settings(&self, name: &str, edit: SettingsEdit) -> Result<(), Status> {
        self.describe_collection(
            name,
            move |d| {
                let before = (d.settings.clone(), d.train_at);
                edit(&mut d.settings, &mut d.train_at);
                Ok(before != (d.settings.clone(), d.train_at))
            },
            &Caller::default(),
        )
        .await
    }

    /// Changes a collection's description with `edit` ([`Node::describe_collection`]) and
    /// waits until a replica of each shard has applied it.
    async fn describe_collection(
        &self,
        name: &str,
        edit: impl Fn(&mut quiver_store::manifest::Description) -> quiver_cluster::Result<bool>
            + Send
            + Sync
            + 'static,
        caller: &Caller,
    ) -> Result<(), Status> {
        let c = self.collection(name).await?;
        let token = self
            .node
            .describe_collection(name, edit)
            .await
            .map_err(from_cluster)?;
        self.wrote(&c, &token);
        self.node
            .wait_applied(name, &token, timeout_of(caller))
            .await
            .map_err(from_cluster)
    }

    /// Refuses an upsert that does not fit its collection, or of more than `max` points, or
    /// in a mode not routed (only the plain upsert is).
    pub async fn check_upsert(&self, r: &Upsert, max: usize) -> Result<(), Status> {
        if r.mode != UpsertMode::Upsert {
            return Err(Status::unimplemented(
                "insert-only and update-only upserts are not available in cluster mode yet",
            ));
        }
        let c = self.collection(&r.collection).await?;
        check_upsert_shape(r, c.meta.dim, c.meta.metric(), max)
    }

    /// Writes an upsert checked by [`Self::check_upsert`]; returns the points written.
    pub async fn upsert(&self, r: Upsert, caller: &Caller) -> Result<u64, Status> {
        let c = self.collection(&r.collection).await?;
        let n = r.ids.len() as u64;
        let op = Op::Upsert {
            ids: r.ids,
            vectors: r.vectors,
            dim: c.meta.dim,
            payloads: r.payloads,
        };
        self.write(&c, op, r.wait, caller).await?;
        Ok(n)
    }

    /// Deletes ids, or the points passing a filter; returns how many of the (distinct) ids
    /// were live just before the delete was taken (for a filter: how many passed it then),
    /// as this server read them: a write through another server in between is not counted.
    pub async fn delete(&self, r: Delete, caller: &Caller) -> Result<u64, Status> {
        let c = self.collection(&r.collection).await?;
        let t = timeout_of(caller);
        let after = self.read_after(&c);
        let (op, live) = match r.target {
            DeleteTarget::Filter(filter) => {
                parse_filter("filter", &filter, &c.meta.fields)?;
                let live = self
                    .node
                    .count(&c.meta.name, Some(&filter), after.as_ref(), t)
                    .await
                    .map_err(from_cluster)?;
                (Op::DeleteFilter { filter }, live)
            }
            DeleteTarget::Ids(ids) => {
                if ids.is_empty() {
                    return Err(invalid(
                        "ids",
                        "empty: at least one id (or a filter) is required",
                    ));
                }
                let live = self.live(&c, &ids, caller).await?.len() as u64;
                (Op::Delete { ids }, live)
            }
        };
        self.write(&c, op, r.wait, caller).await?;
        Ok(live)
    }

    /// Edits the payloads of points; returns how many of the (distinct) ids were live just
    /// before (as [`Self::delete`] counts them).
    pub async fn edit_payload(&self, r: EditPayload, caller: &Caller) -> Result<u64, Status> {
        let c = self.collection(&r.collection).await?;
        // The ids checked first, as a single server checks them.
        let op = Op::SetPayload {
            ids: r.ids,
            edit: r.edit,
        };
        quiver_store::check_ops(c.meta.dim, std::slice::from_ref(&op)).map_err(from_store)?;
        let Op::SetPayload { ids, edit } = op else {
            return Err(Status::internal("a payload edit changed kind"));
        };
        let r = EditPayload { ids, edit, ..r };
        let points = self.live(&c, &r.ids, caller).await?;
        let live = points.len() as u64;
        // Refused as a single server refuses it: an edit one of the points cannot take (a
        // payload past its limit) changes none (a replica would pass over that point).
        let edit = r.edit.clone();
        crate::requests::local::blocking(move || {
            for p in &points {
                edit.apply(&p.payload).map_err(|e| {
                    from_store(quiver_store::StoreError::Invalid {
                        field: "payload",
                        reason: format!("point {}: {e}", p.id),
                    })
                })?;
            }
            Ok(())
        })
        .await?;
        let op = Op::SetPayload {
            ids: r.ids,
            edit: r.edit,
        };
        self.write(&c, op, r.wait, caller).await?;
        Ok(live)
    }

    /// The live points of the distinct `ids`, as this server reads them.
    async fn live(
        &self,
        c: &ClusterCollection,
        ids: &[u64],
        caller: &Caller,
    ) -> Result<Vec<quiver_cluster::rpc::Point>, Status> {
        let mut distinct = ids.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        self.node
            .get(
                &c.meta.name,
                &distinct,
                self.read_after(c).as_ref(),
                timeout_of(caller),
            )
            .await
            .map_err(from_cluster)
    }

    async fn write(
        &self,
        c: &ClusterCollection,
        op: Op,
        wait: bool,
        caller: &Caller,
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
                .wait_applied(&c.meta.name, &token, timeout_of(caller))
                .await
                .map_err(from_cluster)?;
        }
        Ok(())
    }

    /// Stored points by id, in request order.
    pub async fn get(&self, r: Get, caller: &Caller) -> Result<Vec<StoredPoint>, Status> {
        let c = self.collection(&r.collection).await?;
        let points = self
            .node
            .get(
                &r.collection,
                &r.ids,
                self.read_after(&c).as_ref(),
                timeout_of(caller),
            )
            .await
            .map_err(from_cluster)?;
        Ok(points
            .into_iter()
            .map(|p| StoredPoint {
                id: p.id,
                vector: if r.with_vectors { p.vector } else { Vec::new() },
                payload: p.payload,
            })
            .collect())
    }

    /// A page of points by ascending id, merged from a replica of each shard.
    pub async fn scroll(&self, r: Scroll, caller: &Caller) -> Result<ScrollPage, Status> {
        let c = self.collection(&r.collection).await?;
        parse_filter("filter", &r.filter, &c.meta.fields)?;
        // One more than the page: the id the next one starts at.
        let req = ScrollRequest {
            filter: (!r.filter.trim().is_empty()).then(|| r.filter.clone()),
            from: r.from.unwrap_or(0),
            limit: r.limit.saturating_add(1),
            with_vectors: r.with_vectors,
            after: self.read_after(&c),
        };
        let mut points = self
            .node
            .scroll(&r.collection, req, timeout_of(caller))
            .await
            .map_err(from_cluster)?;
        let next = (points.len() > r.limit).then(|| points[r.limit].id);
        points.truncate(r.limit);
        Ok(ScrollPage {
            points: points
                .into_iter()
                .map(|p| StoredPoint {
                    id: p.id,
                    vector: p.vector,
                    payload: p.payload,
                })
                .collect(),
            next,
        })
    }

    /// Searches a batch of queries (those sharing a filter together), merged from a replica of
    /// each shard.
    pub async fn search(
        &self,
        r: Search,
        caller: &Caller,
        router: &Router,
    ) -> Result<Vec<Vec<Hit>>, Status> {
        let c = self.collection(&r.collection).await?;
        let dim = c.meta.dim;
        let nq = check_queries(&r, dim, c.meta.metric(), router.limits())?;
        let text_of = |q: usize| -> &str {
            match &r.filters {
                QueryFilters::One(f) => f,
                QueryFilters::PerQuery(f) if f.is_empty() => "",
                QueryFilters::PerQuery(f) => &f[q],
            }
        };
        // Queries sharing a filter go together.
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for q in 0..nq {
            let f = text_of(q).trim().to_string();
            match groups.iter_mut().find(|g| g.0 == f) {
                Some(g) => g.1.push(q),
                None => {
                    let field = match &r.filters {
                        QueryFilters::One(_) => "filter".to_string(),
                        QueryFilters::PerQuery(_) => format!("filters[{q}]"),
                    };
                    parse_filter(&field, &f, &c.meta.fields)?;
                    groups.push((f, vec![q]));
                }
            }
        }
        router.take_vectors(caller.client, nq)?;
        let nprobe = match r.probes {
            Probes::Default => 0,
            Probes::Lists(n) | Probes::AtMost(n) => n,
            // Each replica visits at most its own lists.
            Probes::All => usize::MAX,
        };
        let after = self.read_after(&c);
        let timeout = timeout_of(caller);
        let mut results = vec![Vec::new(); nq];
        let searches = groups.iter().map(|(f, qs)| {
            let req = SearchRequest {
                queries: qs
                    .iter()
                    .flat_map(|&q| r.queries[q * dim..(q + 1) * dim].iter().copied())
                    .collect(),
                nq: qs.len(),
                k: r.k,
                nprobe,
                refine_factor: r.refine_factor,
                filter: (!f.is_empty()).then(|| f.clone()),
                after: after.clone(),
            };
            self.node.search(&r.collection, req, timeout)
        });
        let answers = futures_util::future::try_join_all(searches)
            .await
            .map_err(from_cluster)?;
        for ((_, qs), found) in groups.iter().zip(answers) {
            for (&q, n) in qs.iter().zip(found) {
                results[q] = n
                    .into_iter()
                    .map(|(id, distance)| Hit {
                        id,
                        distance,
                        payload: Vec::new(),
                    })
                    .collect();
            }
        }
        if r.with_payload {
            let mut ids: Vec<u64> = results.iter().flatten().map(|h| h.id).collect();
            ids.sort_unstable();
            ids.dedup();
            let points = self
                .node
                .get(&r.collection, &ids, after.as_ref(), timeout)
                .await
                .map_err(from_cluster)?;
            let payloads: HashMap<u64, Vec<u8>> =
                points.into_iter().map(|p| (p.id, p.payload)).collect();
            for h in results.iter_mut().flatten() {
                h.payload = payloads.get(&h.id).cloned().unwrap_or_default();
            }
        }
        Ok(results)
    }

    /// Live points passing a filter (all when empty).
    pub async fn count(&self, r: Count, caller: &Caller) -> Result<u64, Status> {
        let c = self.collection(&r.collection).await?;
        parse_filter("filter", &r.filter, &c.meta.fields)?;
        let f = (!r.filter.trim().is_empty()).then_some(r.filter.as_str());
        self.node
            .count(
                &r.collection,
                f,
                self.read_after(&c).as_ref(),
                timeout_of(caller),
            )
            .await
            .map_err(from_cluster)
    }
}

/// How long a call may take: until its caller's deadline, or [`DEFAULT_TIMEOUT`].
fn timeout_of(caller: &Caller) -> Duration {
    caller.time_left().unwrap_or(DEFAULT_TIMEOUT)
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

/// A cluster collection's state from what a replica of each shard holds (none: only what
/// the catalog says): counts, memory and segments summed; trained once every shard is; the
/// index parameters shard 0's (each shard trains its own quantizers); drift the largest.
fn state(c: &ClusterCollection, shards: &[ShardState]) -> CollectionState {
    CollectionState {
        name: c.meta.name.clone(),
        status: CollectionStatus::Ready,
        count: shards.iter().map(|s| s.count).sum(),
        trained: !shards.is_empty() && shards.iter().all(|s| s.trained),
        index: shards.first().map_or(&c.meta.index, |s| &s.index).clone(),
        memory_bytes: shards.iter().map(|s| s.memory_bytes).sum(),
        segments: shards.iter().map(|s| s.segments).sum(),
        drift: shards.iter().map(|s| s.drift).fold(0.0, f64::max),
        read_only: false,
        shards: c.shards(),
        replication: c.replication(),
        meta: Some(c.meta.clone()),
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
