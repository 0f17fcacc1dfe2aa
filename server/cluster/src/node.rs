//! A node of the cluster. It reads the whole catalog log into its [`Topology`] at start and
//! follows it, holds a replica of every shard placed on it (a store collection in its folder,
//! named `NAME.INCARNATION.SHARD`, following that shard's log: [`Follower`]), answers other
//! nodes' requests about those replicas ([`crate::rpc`]), and routes its own callers':
//!
//! - creates and drops are catalog entries appended by compare-and-set against the last entry
//!   this node has read (so the log never holds a create of an existing name), a create
//!   carrying its placement, decided from the nodes up at that moment ([`place`]);
//! - a write is checked as every replica will check it, split by shard ([`split_op`]) and
//!   appended to each shard's log; its [`WriteToken`] (each shard's op number) lets a later
//!   read wait for it;
//! - a search goes to one replica of every shard (this node's own first, then nodes that are
//!   up), each shard's answer within the caller's deadline, another replica tried when one
//!   fails; the shards' neighbours are merged exactly (by distance, then id).
//!
//! At start the folder is made what the catalog says: replicas of collections dropped (or of
//! an older incarnation) are removed; missing ones, and those the trimmed log no longer
//! covers, are made from their shard's snapshot ([`crate::snapshots`]) or, when it has none,
//! created empty; each then catches up from the log. A folder holding a replica of a
//! collection the log has not created yet is refused: the log was lost or belongs to another
//! cluster. One node at a time exports each shard's snapshot ([`Node::snapshot`], and
//! [`Node::snapshot_every`] in the background) and trims the shard's log below it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use quiver_engine::backend::Backend;
use quiver_engine::payload::filter::Filter;
use quiver_store::manifest::Description;
use quiver_store::wal::Op;
use quiver_store::{
    Collection, CollectionMeta, CollectionsFolder, IndexConfig, SearchKey, StoreConfig, StoreError,
};
use tokio::sync::{watch, Mutex};
use tokio::time::Instant;
use tracing::Instrument;

use crate::artifacts::Artifacts;
use crate::catalog_log::{CatalogEntry, CatalogLog};
use crate::error::{ClusterError, Result};
use crate::follower::Follower;
use crate::lease::{Lease, Leases};
use crate::membership::{valid_node_id, Membership};
use crate::placement::{place, shard_of, split_op};
use crate::rpc::{self, Point, ShardRef, ShardRequest, ShardResponse, ShardState};
use crate::shard_log::{ShardLog, TrainEntry};
use crate::snapshots::Snapshots;
use crate::tail::{follow, Entries, Target};
use crate::topology::{ClusterCollection, Topology};

/// A collection's name and one of its shards.
type ShardKey = (String, u32);

/// Where a write landed: each shard's op number. A read given it waits until the replica it
/// asks has applied that op (read-your-writes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteToken {
    /// The incarnation of the collection written (0: any): a token of a collection dropped
    /// since is not waited for by reads of the one created after it.
    pub incarnation: u64,
    /// (shard, op number) of every shard the write went to.
    pub shards: Vec<(u32, u64)>,
}

impl WriteToken {
    /// Whether it is about incarnation `incarnation` of its collection.
    pub fn is_for(&self, incarnation: u64) -> bool {
        self.incarnation == 0 || self.incarnation == incarnation
    }

    /// The op number shard `shard` must have applied (0: none).
    pub fn seq_of(&self, shard: u32) -> u64 {
        self.shards
            .iter()
            .filter(|(s, _)| *s == shard)
            .map(|(_, q)| *q)
            .max()
            .unwrap_or(0)
    }
}

/// How far a replica has applied its shard's log ([`Node::replication`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaProgress {
    /// The collection.
    pub collection: String,
    /// The shard.
    pub shard: u32,
    /// The number of the last op applied.
    pub applied: u64,
    /// The number of the log's last entry (`None`: the broker did not say in time).
    pub log_last: Option<u64>,
}

/// A snapshot exported by [`Node::snapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotDone {
    /// The last op it covers.
    pub seq: u64,
    /// The shard's log was trimmed: it holds no entry below this number now (`None`: not
    /// trimmed, as a replica on a node that is up did not say how far it has applied).
    pub trimmed_below: Option<u64>,
}

/// A search through the cluster.
#[derive(Debug, Clone, Default)]
pub struct SearchRequest {
    /// Row-major queries, `nq × dim`.
    pub queries: Vec<f32>,
    /// Number of queries.
    pub nq: usize,
    /// Neighbours per query.
    pub k: usize,
    /// Lists probed per shard (0: the collection's default).
    pub nprobe: usize,
    /// Refine factor (0: the collection's default).
    pub refine_factor: usize,
    /// Only points passing this filter (its JSON text).
    pub filter: Option<String>,
    /// Answer only from replicas that have applied this write.
    pub after: Option<WriteToken>,
}

/// A page of points through the cluster, by ascending id.
#[derive(Debug, Clone, Default)]
pub struct ScrollRequest {
    /// Only points passing this filter (its JSON text).
    pub filter: Option<String>,
    /// The first id.
    pub from: u64,
    /// Points at most.
    pub limit: usize,
    /// Answer the stored vectors too.
    pub with_vectors: bool,
    /// Answer only from replicas that have applied this write.
    pub after: Option<WriteToken>,
}

/// A shard replica held by this node.
struct Replica<B: Backend + Clone + Send + Sync + 'static> {
    collection: Arc<Collection<B>>,
    incarnation: u64,
    log: ShardLog,
    follower: Follower,
    /// Its folder's name.
    local: String,
    /// The log's last op when the replica was placed: until it has applied that far (caught
    /// up after a restart or a wipe) it answers no read, as its points are older than its
    /// peers'.
    ready_at: u64,
}

struct Shared<B: Backend + Clone + Send + Sync + 'static> {
    js: async_nats::jetstream::Context,
    client: async_nats::Client,
    catalog: CatalogLog,
    /// Trained quantizers, shared.
    artifacts: Artifacts,
    /// Which node leads each shard's training, and exports its snapshot.
    leases: Leases,
    /// The shards' snapshots.
    snapshots: Snapshots,
    /// The replicas this node started from a snapshot since it started: (incarnation, the
    /// op the snapshot covered).
    restored: std::sync::Mutex<HashMap<ShardKey, (u64, u64)>>,
    /// Held while replicas are placed or removed (the catalog's entries, and the restarts
    /// and retries of [`Shared::supervise`]), so those never interleave.
    placing: Mutex<()>,
    folder: CollectionsFolder,
    backend: B,
    cfg: StoreConfig,
    /// Copies of each stream on a JetStream cluster.
    replicas: usize,
    node_id: String,
    next_id: AtomicU64,
    topology: std::sync::RwLock<Topology>,
    held: Mutex<HashMap<ShardKey, Replica<B>>>,
    /// Replicas placed here that cannot serve, with their folder's name and why (failed to
    /// open, or their log could not be opened).
    failed: std::sync::Mutex<HashMap<ShardKey, (String, String)>>,
    /// Logs of shards this node writes to but does not hold.
    logs: Mutex<HashMap<(String, u64, u32), ShardLog>>,
    /// Requests this node routed, per (collection, shard, node that answered).
    routed: std::sync::Mutex<HashMap<(String, u32, String), u64>>,
    /// Shard logs whose training this node started by itself ([`Shared::train_due`]):
    /// `None` while it runs; after one that did not happen, when to try again.
    auto_training: std::sync::Mutex<HashMap<String, Option<Instant>>>,
    members: Membership,
    /// The number of the last catalog entry applied here.
    applied: watch::Sender<u64>,
    /// Why the catalog follower stopped, once it has.
    catalog_stopped: watch::Sender<Option<String>>,
}

/// A running node; [`Node::stop`] stops its followers (a second stop does nothing).
pub struct Node<B: Backend + Clone + Send + Sync + 'static> {
    shared: Arc<Shared<B>>,
    stop: watch::Sender<bool>,
    catalog_task: std::sync::Mutex<Option<tokio::task::JoinHandle<Result<()>>>>,
    /// The task answering other nodes (it holds the folder: awaited by [`Node::stop`]).
    answering: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The task exporting snapshots ([`Node::snapshot_every`]; it holds the folder too).
    exporting: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The task starting replicas again ([`supervise`]; it holds the folder too).
    supervising: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The folder name of a shard replica.
fn local_name(collection: &str, incarnation: u64, shard: u32) -> String {
    format!("{collection}.{incarnation}.{shard}")
}

/// The collection, incarnation and shard of a replica's folder name.
fn parse_local(local: &str) -> Option<(String, u64, u32)> {
    let mut parts = local.rsplitn(3, '.');
    let shard = parts.next()?.parse().ok()?;
    let incarnation = parts.next()?.parse().ok()?;
    let name = parts.next()?;
    quiver_store::valid_name(name).then(|| (name.to_string(), incarnation, shard))
}

fn invalid(field: &'static str, reason: String) -> ClusterError {
    ClusterError::Store(StoreError::Invalid { field, reason })
}

impl<B: Backend + Clone + Send + Sync + 'static> Node<B> {
    /// Starts a node named `node_id` over `folder` (opened by the caller, which holds its
    /// lock), with streams of `replicas` copies: reads the catalog, makes the folder hold the
    /// replicas placed here, starts their followers, the catalog's, the heartbeat and the
    /// answering of other nodes.
    pub async fn start(
        js: async_nats::jetstream::Context,
        folder: CollectionsFolder,
        backend: B,
        cfg: StoreConfig,
        replicas: usize,
        node_id: &str,
    ) -> Result<Node<B>> {
        if !valid_node_id(node_id) {
            return Err(invalid(
                "node_id",
                format!("{node_id:?}: 1 to 64 of [A-Za-z0-9_-]"),
            ));
        }
        let catalog = CatalogLog::open(&js, replicas).await?;
        let artifacts = Artifacts::open(&js, replicas).await?;
        let leases = Leases::open(&js, replicas).await?;
        let snapshots = Snapshots::open(&js, replicas, artifacts.clone()).await?;
        let (stop, stop_rx) = watch::channel(false);
        let members = Membership::start(&js, node_id, replicas, stop_rx.clone()).await?;
        let last = catalog.last_seq().await?;
        let topology = read_catalog(&catalog, last).await?;
        let shared = Arc::new(Shared {
            client: js.client(),
            js,
            catalog,
            artifacts,
            leases,
            snapshots,
            restored: std::sync::Mutex::new(HashMap::new()),
            placing: Mutex::new(()),
            applied: watch::channel(last).0,
            folder,
            backend,
            cfg,
            replicas,
            node_id: node_id.to_string(),
            next_id: AtomicU64::new(0),
            topology: std::sync::RwLock::new(topology),
            held: Mutex::new(HashMap::new()),
            failed: std::sync::Mutex::new(HashMap::new()),
            auto_training: std::sync::Mutex::new(HashMap::new()),
            logs: Mutex::new(HashMap::new()),
            routed: std::sync::Mutex::new(HashMap::new()),
            members,
            catalog_stopped: watch::channel(None).0,
        });
        shared.check_identity().await?;
        shared.reconcile(last).await?;
        let placed: Vec<(ClusterCollection, u32)> = shared
            .topology()
            .collections()
            .flat_map(|c| c.shards_on(node_id).into_iter().map(|s| (c.clone(), s)))
            .collect();
        for (c, s) in placed {
            shared.place_replica(&c, s).await;
        }
        let subscription = shared
            .client
            .subscribe(rpc::subject(node_id))
            .await
            .map_err(|e| ClusterError::broker("answering other nodes", e))?;
        let answering = tokio::spawn(answer_requests(
            shared.clone(),
            subscription,
            stop_rx.clone(),
        ));
        let supervising = tokio::spawn(supervise(shared.clone(), stop_rx.clone()));
        let follower = shared.clone();
        let catalog_task = tokio::spawn(async move {
            let r = follow(CatalogTarget(follower.clone()), stop_rx).await;
            if let Err(e) = &r {
                tracing::error!(error = %e, "the catalog follower stopped: this node creates and drops nothing more until restarted");
                follower.catalog_stopped.send_replace(Some(e.to_string()));
            }
            r
        });
        Ok(Node {
            shared,
            stop,
            catalog_task: std::sync::Mutex::new(Some(catalog_task)),
            answering: std::sync::Mutex::new(Some(answering)),
            exporting: std::sync::Mutex::new(None),
            supervising: std::sync::Mutex::new(Some(supervising)),
        })
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.shared.node_id
    }

    /// A message id for a new write, unique to this node (a retry of that write reuses it).
    pub fn new_write_id(&self) -> String {
        self.shared.message_id()
    }

    /// Creates `meta.name` across the cluster with `shards` shards of `replication` replicas
    /// each, placed on the nodes up now; returns once this node has read the entry (its own
    /// replicas are created then; they are empty until written).
    pub async fn create_collection(
        &self,
        meta: CollectionMeta,
        shards: u32,
        replication: u32,
    ) -> Result<ClusterCollection> {
        let name = meta.name.clone();
        if !quiver_store::valid_name(&name) {
            return Err(invalid(
                "name",
                format!("{name:?} is not a collection name"),
            ));
        }
        // Every node opens what the entry describes: refused here, before it is in the log.
        meta.check()?;
        let members = self.shared.members.clone();
        let seq = self
            .shared
            .append_catalog(|t| {
                if t.get(&name).is_some() {
                    return Err(ClusterError::Exists(name.clone()));
                }
                Ok(CatalogEntry::Create {
                    meta: meta.clone(),
                    placement: place(&members.live(), shards, replication)?,
                })
            })
            .await?;
        let c = self
            .shared
            .topology()
            .get(&name)
            .filter(|c| c.incarnation == seq)
            .cloned()
            .ok_or(ClusterError::NotFound(name))?;
        // Every shard's log exists once the create is answered (writers never create one).
        for shard in 0..c.shards() {
            ShardLog::open(
                &self.shared.js,
                &c.meta.name,
                c.incarnation,
                shard,
                self.shared.replicas,
            )
            .await?;
        }
        Ok(c)
    }

    /// Drops `name` across the cluster; returns once this node has removed its replicas.
    pub async fn drop_collection(&self, name: &str) -> Result<()> {
        let dropped = std::sync::Mutex::new(None);
        self.shared
            .append_catalog(|t| match t.get(name) {
                Some(c) => {
                    if let Ok(mut d) = dropped.lock() {
                        *d = Some(c.clone());
                    }
                    Ok(CatalogEntry::Drop { name: name.into() })
                }
                None => Err(ClusterError::NotFound(name.into())),
            })
            .await?;
        // Every shard's log goes before the drop is answered (not only where a replica is
        // held, whenever its node gets there): a node that has not read the drop yet then
        // fails a write to the old collection instead of acknowledging it into a log no one
        // reads.
        let dropped = dropped.lock().ok().and_then(|mut d| d.take());
        if let Some(c) = dropped {
            // Its trained quantizers (named after its shards' logs) go too.
            let prefix = ShardLog::incarnation_prefix(name, c.incarnation);
            if let Err(e) = self.shared.artifacts.delete_prefix(&prefix).await {
                tracing::warn!(collection = %name, error = %e, "deleting a dropped collection's quantizers failed");
            }
            for shard in 0..c.shards() {
                let log = ShardLog::stream_name(name, c.incarnation, shard);
                if let Err(e) = self.shared.snapshots.forget(&log).await {
                    tracing::warn!(log = %log, error = %e, "deleting a dropped shard's snapshot record failed");
                }
                match ShardLog::open_existing(&self.shared.js, name, c.incarnation, shard).await {
                    Ok(Some(log)) => {
                        if let Err(e) = log.delete().await {
                            tracing::warn!(log = log.stream(), error = %e, "deleting a dropped shard's log failed");
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(collection = %name, shard, error = %e, "finding a dropped shard's log failed")
                    }
                }
            }
        }
        Ok(())
    }

    /// Changes `name`'s description (indexed payload fields, settings, the size at which it
    /// trains by itself) with `edit` (false: the catalog's value has it already), applied to
    /// the current one: the catalog takes the new value (every node checks requests and
    /// filters against it), then every shard's log, so that each replica indexes the fields
    /// at a number of its log (a value unchanged goes to the shards' logs again, so that a
    /// change cut off between the two appends is completed by its retry). Changes of one
    /// collection take its description lease in turn, so their log entries never cross, and
    /// each runs as a task of its own: a caller that goes away leaves neither the lease held
    /// nor the change half made. Returns the shard logs' numbers (wait with
    /// [`Self::wait_applied`]).
    pub async fn describe_collection(
        &self,
        name: &str,
        edit: impl Fn(&mut Description) -> Result<bool> + Send + Sync + 'static,
    ) -> Result<WriteToken> {
        let (shared, name) = (self.shared.clone(), name.to_string());
        tokio::spawn(async move { shared.describe_collection(&name, edit).await })
            .await
            .map_err(|e| ClusterError::Broker {
                context: "changing a collection's description",
                reason: e.to_string(),
            })?
    }

    /// Waits until this node has applied every catalog entry appended so far; returns the
    /// last one's number.
    pub async fn sync_catalog(&self) -> Result<u64> {
        self.shared.sync_catalog().await
    }

    /// Appends the write `op` to `collection`'s shard logs under the message id `id` (a retry
    /// with the same id is applied once), after checking it as every replica will: each shard
    /// gets its part ([`split_op`]). Returns once every part is stored by the broker.
    pub async fn write(&self, collection: &str, id: &str, op: Op) -> Result<WriteToken> {
        let c = self.shared.cluster_collection(collection)?;
        quiver_store::check_ops(c.meta.dim, std::slice::from_ref(&op))?;
        let parts = split_op(op, c.shards());
        // Every part's log found and every part checked before any is appended: a write
        // refused for one shard is refused whole.
        let mut ready = Vec::with_capacity(parts.len());
        for (shard, part) in parts {
            let log = self.shared.shard_log(&c, shard).await?;
            log.check_op(&part)?;
            ready.push((shard, part, log));
        }
        let appends = ready.into_iter().map(|(shard, part, log)| async move {
            let a = log.append(&format!("{id}.{shard}"), &part).await?;
            Ok::<_, ClusterError>((shard, a.seq))
        });
        let shards = futures_util::future::try_join_all(appends).await?;
        Ok(WriteToken {
            incarnation: c.incarnation,
            shards,
        })
    }

    /// Waits (up to `timeout`) until a replica of every shard `token` names has applied it.
    pub async fn wait_applied(
        &self,
        collection: &str,
        token: &WriteToken,
        timeout: Duration,
    ) -> Result<()> {
        let c = self.shared.cluster_collection(collection)?;
        if !token.is_for(c.incarnation) {
            // Written to a collection of that name dropped since.
            return Err(ClusterError::NotFound(collection.into()));
        }
        let deadline = deadline_in(timeout);
        let waits = token.shards.iter().map(|&(shard, seq)| {
            let r = shard_ref_at(&c, shard, seq);
            self.shared.ask_shard(
                &c,
                shard,
                ShardRequest::Count {
                    shard: r,
                    filter: None,
                },
                deadline,
            )
        });
        futures_util::future::try_join_all(waits).await.map(|_| ())
    }

    /// The `k` nearest neighbours of each query among `collection`'s points: (id, distance),
    /// best first.
    pub async fn search(
        &self,
        collection: &str,
        req: SearchRequest,
        timeout: Duration,
    ) -> Result<Vec<Vec<(u64, f32)>>> {
        let c = self.shared.cluster_collection(collection)?;
        let dim = c.meta.dim;
        if req.queries.len() != req.nq * dim {
            return Err(invalid(
                "queries",
                format!(
                    "{} values for {} queries of dimension {dim}",
                    req.queries.len(),
                    req.nq
                ),
            ));
        }
        if req.queries.iter().any(|x| !x.is_finite()) {
            return Err(invalid("queries", "a value is not finite".into()));
        }
        if req.k == 0 || req.k > MAX_K {
            return Err(invalid("k", format!("{}: 1 to {MAX_K}", req.k)));
        }
        if let Some(f) = &req.filter {
            Filter::parse_text(f).map_err(|e| invalid("filter", e.to_string()))?;
        }
        let deadline = deadline_in(timeout);
        let asks = (0..c.shards()).map(|shard| {
            let r = shard_ref(&c, shard, req.after.as_ref());
            let ask = ShardRequest::Search {
                shard: r,
                queries: req.queries.clone(),
                nq: req.nq,
                k: req.k,
                nprobe: req.nprobe,
                refine_factor: req.refine_factor,
                filter: req.filter.clone(),
            };
            self.shared.ask_shard(&c, shard, ask, deadline)
        });
        let answers = futures_util::future::try_join_all(asks).await?;
        let mut parts = Vec::with_capacity(answers.len());
        for a in answers {
            match a {
                ShardResponse::Neighbors(n) if n.len() == req.nq => parts.push(n),
                other => return Err(unexpected(other)),
            }
        }
        Ok(merge(
            parts,
            req.nq,
            req.k,
            c.meta.metric().is_inner_product(),
        ))
    }

    /// The stored points of `ids` that exist, in the order asked.
    pub async fn get(
        &self,
        collection: &str,
        ids: &[u64],
        after: Option<&WriteToken>,
        timeout: Duration,
    ) -> Result<Vec<Point>> {
        let c = self.shared.cluster_collection(collection)?;
        let deadline = deadline_in(timeout);
        let mut by_shard: Vec<Vec<u64>> = vec![Vec::new(); c.shards() as usize];
        for &id in ids {
            by_shard[shard_of(id, c.shards()) as usize].push(id);
        }
        let asks = by_shard
            .into_iter()
            .enumerate()
            .flat_map(|(shard, ids)| {
                ids.chunks(GET_CHUNK)
                    .map(|chunk| (shard, chunk.to_vec()))
                    .collect::<Vec<_>>()
            })
            .map(|(shard, ids)| {
                let shard = shard as u32;
                let r = shard_ref(&c, shard, after);
                self.shared
                    .ask_shard(&c, shard, ShardRequest::Get { shard: r, ids }, deadline)
            });
        let mut found: HashMap<u64, Point> = HashMap::new();
        for a in futures_util::future::try_join_all(asks).await? {
            match a {
                ShardResponse::Points(p) => found.extend(p.into_iter().map(|p| (p.id, p))),
                other => return Err(unexpected(other)),
            }
        }
        Ok(ids.iter().filter_map(|id| found.get(id).cloned()).collect())
    }

    /// Live points of `collection` passing `filter` (all without one).
    pub async fn count(
        &self,
        collection: &str,
        filter: Option<&str>,
        after: Option<&WriteToken>,
        timeout: Duration,
    ) -> Result<u64> {
        let c = self.shared.cluster_collection(collection)?;
        if let Some(f) = filter {
            Filter::parse_text(f).map_err(|e| invalid("filter", e.to_string()))?;
        }
        let deadline = deadline_in(timeout);
        let asks = (0..c.shards()).map(|shard| {
            let r = shard_ref(&c, shard, after);
            let ask = ShardRequest::Count {
                shard: r,
                filter: filter.map(str::to_string),
            };
            self.shared.ask_shard(&c, shard, ask, deadline)
        });
        let mut total = 0;
        for a in futures_util::future::try_join_all(asks).await? {
            match a {
                ShardResponse::Count(n) => total += n,
                other => return Err(unexpected(other)),
            }
        }
        Ok(total)
    }

    /// Up to `req.limit` live points of `collection` passing its filter (all without one), by
    /// ascending id from `req.from`, merged from a replica of each shard (each read a chunk at
    /// a time, only as far as the page needs).
    pub async fn scroll(
        &self,
        collection: &str,
        req: ScrollRequest,
        timeout: Duration,
    ) -> Result<Vec<Point>> {
        let c = self.shared.cluster_collection(collection)?;
        if let Some(f) = &req.filter {
            Filter::parse_text(f).map_err(|e| invalid("filter", e.to_string()))?;
        }
        let ScrollRequest {
            filter,
            from,
            limit,
            with_vectors,
            after,
        } = req;
        let after = after.as_ref();
        if limit == 0 {
            return Ok(Vec::new());
        }
        let deadline = deadline_in(timeout);
        /// A shard's points read and not merged yet, and where its next chunk starts (none:
        /// it has no more).
        struct Cursor {
            read: std::collections::VecDeque<Point>,
            next: Option<u64>,
        }
        let mut cursors: Vec<Cursor> = (0..c.shards())
            .map(|_| Cursor {
                read: Default::default(),
                next: Some(from),
            })
            .collect();
        let mut page = Vec::with_capacity(limit.min(MAX_SCROLL));
        loop {
            // Every shard with more to read and none read gets its next chunk.
            let want = (limit - page.len()).clamp(1, SCROLL_CHUNK);
            let asks = cursors
                .iter()
                .enumerate()
                .filter(|(_, k)| k.read.is_empty())
                .filter_map(|(shard, k)| Some((shard as u32, k.next?)))
                .map(|(shard, from)| {
                    let ask = ShardRequest::Scroll {
                        shard: shard_ref(&c, shard, after),
                        filter: filter.clone(),
                        from,
                        limit: want,
                        with_vectors,
                    };
                    let (shared, c) = (&self.shared, &c);
                    async move {
                        Ok::<_, ClusterError>((
                            shard,
                            shared.ask_shard(c, shard, ask, deadline).await?,
                        ))
                    }
                });
            for (shard, a) in futures_util::future::try_join_all(asks).await? {
                let ShardResponse::Points(points) = a else {
                    return Err(unexpected(a));
                };
                let k = &mut cursors[shard as usize];
                k.next = match points.last() {
                    Some(p) if points.len() >= want && p.id < u64::MAX => Some(p.id + 1),
                    _ => None,
                };
                // A replica answers ascending ids of its shard from where it was asked;
                // anything else is dropped rather than merged out of order.
                let mut last: Option<u64> = None;
                for p in points {
                    if shard_of(p.id, c.shards()) == shard && last.is_none_or(|l| p.id > l) {
                        last = Some(p.id);
                        k.read.push_back(p);
                    }
                }
            }
            // The smallest head is next while every shard with more to read has some read.
            loop {
                if page.len() == limit {
                    return Ok(page);
                }
                if cursors
                    .iter()
                    .any(|k| k.read.is_empty() && k.next.is_some())
                {
                    break;
                }
                let next = cursors
                    .iter_mut()
                    .filter_map(|k| Some((k.read.front()?.id, k)))
                    .min_by_key(|(id, _)| *id)
                    .and_then(|(_, k)| k.read.pop_front());
                match next {
                    Some(p) => page.push(p),
                    // Every shard read to its end.
                    None => return Ok(page),
                }
            }
        }
    }

    /// Trains every shard of `collection` (with `index` overriding its parameters where
    /// non-zero): a replica of each shard, leading that shard's training while it holds the
    /// shard's lease, trains quantizers on its points, stores them as an artifact and logs
    /// the switch, which every replica applies at that number. Returns the switches' numbers
    /// (wait for them with [`Self::wait_applied`]). Each shard trains on its own points.
    pub async fn train(
        &self,
        collection: &str,
        index: Option<IndexConfig>,
        timeout: Duration,
    ) -> Result<WriteToken> {
        let c = self.shared.cluster_collection(collection)?;
        let deadline = deadline_in(timeout);
        let asks = (0..c.shards()).map(|shard| {
            let ask = ShardRequest::Train {
                shard: shard_ref(&c, shard, None),
                index: index.clone(),
            };
            let shared = &self.shared;
            let c = &c;
            async move {
                Ok::<_, ClusterError>((shard, shared.ask_shard(c, shard, ask, deadline).await?))
            }
        });
        let mut shards = Vec::with_capacity(c.shards() as usize);
        for (shard, a) in futures_util::future::try_join_all(asks).await? {
            match a {
                ShardResponse::Trained(seq) => shards.push((shard, seq)),
                other => return Err(unexpected(other)),
            }
        }
        Ok(WriteToken {
            incarnation: c.incarnation,
            shards,
        })
    }

    /// What a replica of each shard of `collection` holds, in shard order.
    pub async fn describe(
        &self,
        collection: &str,
        after: Option<&WriteToken>,
        timeout: Duration,
    ) -> Result<Vec<ShardState>> {
        let c = self.shared.cluster_collection(collection)?;
        let deadline = deadline_in(timeout);
        let asks = (0..c.shards()).map(|shard| {
            let ask = ShardRequest::Describe {
                shard: shard_ref(&c, shard, after),
            };
            self.shared.ask_shard(&c, shard, ask, deadline)
        });
        futures_util::future::try_join_all(asks)
            .await?
            .into_iter()
            .map(|a| match a {
                ShardResponse::Described(s) => Ok(s),
                other => Err(unexpected(other)),
            })
            .collect()
    }

    /// The collections of the cluster, as this node has read the catalog.
    pub fn topology(&self) -> Topology {
        self.shared.topology()
    }

    /// The nodes this node takes as up, sorted.
    pub fn live_nodes(&self) -> Vec<String> {
        self.shared.members.live()
    }

    /// This node's replica of shard `shard` of `collection`.
    pub async fn replica(&self, collection: &str, shard: u32) -> Option<Arc<Collection<B>>> {
        self.shared
            .held
            .lock()
            .await
            .get(&(collection.to_string(), shard))
            .map(|r| r.collection.clone())
    }

    /// The op number this node's replica of shard `shard` of `collection` has applied.
    pub async fn applied(&self, collection: &str, shard: u32) -> Option<u64> {
        self.shared
            .held
            .lock()
            .await
            .get(&(collection.to_string(), shard))
            .map(|r| r.follower.applied())
    }

    /// The shard replicas this node holds, as (collection, shard), sorted.
    pub async fn held(&self) -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = self.shared.held.lock().await.keys().cloned().collect();
        v.sort();
        v
    }

    /// Replicas placed here that cannot serve, as (collection, shard, why), sorted: those
    /// that failed to open and those whose log follower stopped.
    pub async fn failed(&self) -> Vec<(String, u32, String)> {
        let stopped: Vec<(String, u32, String)> = self
            .shared
            .held
            .lock()
            .await
            .iter()
            .filter(|(_, r)| r.follower.has_stopped())
            .map(|((c, s), _)| {
                (
                    c.clone(),
                    *s,
                    "its log follower stopped (see the node's log)".into(),
                )
            })
            .collect();
        let mut v: Vec<(String, u32, String)> = self
            .shared
            .failed
            .lock()
            .map(|f| {
                f.iter()
                    .map(|((c, s), (_, why))| (c.clone(), *s, why.clone()))
                    .collect()
            })
            .unwrap_or_default();
        v.extend(stopped);
        v.sort();
        v
    }

    /// How far each replica held here has applied its shard's log, and where that log ends,
    /// sorted by collection and shard.
    pub async fn replication(&self) -> Vec<ReplicaProgress> {
        let held: Vec<(ShardKey, u64, ShardLog)> = self
            .shared
            .held
            .lock()
            .await
            .iter()
            .map(|(k, r)| (k.clone(), r.follower.applied(), r.log.clone()))
            .collect();
        let asks = held
            .into_iter()
            .map(|((collection, shard), applied, log)| async move {
                let last = tokio::time::timeout(Duration::from_secs(2), log.bounds())
                    .await
                    .ok()
                    .and_then(|b| b.ok())
                    .map(|(_, last)| last);
                ReplicaProgress {
                    collection,
                    shard,
                    applied,
                    log_last: last,
                }
            });
        let mut v = futures_util::future::join_all(asks).await;
        v.sort_by(|a, b| (&a.collection, a.shard).cmp(&(&b.collection, b.shard)));
        v
    }

    /// Requests this node routed, as ((collection, shard, answering node), count), sorted.
    pub fn routed(&self) -> Vec<((String, u32, String), u64)> {
        let mut v: Vec<_> = self
            .shared
            .routed
            .lock()
            .map(|r| r.iter().map(|(k, n)| (k.clone(), *n)).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The number of the last catalog entry applied here.
    pub fn catalog_applied(&self) -> u64 {
        *self.shared.applied.borrow()
    }

    /// The op number of the snapshot this node started its replica of shard `shard` of
    /// `collection` from, if it did since it started.
    pub fn restored_from(&self, collection: &str, shard: u32) -> Option<u64> {
        let incarnation = self.shared.cluster_collection(collection).ok()?.incarnation;
        self.shared
            .restored
            .lock()
            .ok()
            .and_then(|r| r.get(&(collection.to_string(), shard)).copied())
            .filter(|(inc, _)| *inc == incarnation)
            .map(|(_, seq)| seq)
    }

    /// Exports this node's replica of shard `shard` of `collection` as the shard's snapshot
    /// (unless another node is exporting it now, or the current one covers as much), then
    /// trims the shard's log below the ops the snapshot covers and every replica that answers
    /// has applied. Returns what was done; `None` when nothing was.
    pub async fn snapshot(&self, collection: &str, shard: u32) -> Result<Option<SnapshotDone>> {
        self.shared.snapshot_shard(collection, shard).await
    }

    /// Exports a snapshot of every shard replica held here that has applied at least
    /// `min_ops` ops past its shard's snapshot, every `every`, until the node stops (logs are
    /// trimmed below them). A second call while it runs does nothing.
    pub fn snapshot_every(&self, every: Duration, min_ops: u64) {
        let Ok(mut exporting) = self.exporting.lock() else {
            return;
        };
        if exporting.is_some() {
            return;
        }
        let shared = self.shared.clone();
        let mut stop = self.stop.subscribe();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let held: Vec<(ShardKey, u64)> = shared
                    .held
                    .lock()
                    .await
                    .iter()
                    .map(|(k, r)| (k.clone(), r.follower.applied()))
                    .collect();
                for ((name, shard), applied) in held {
                    if *stop.borrow() {
                        return;
                    }
                    let log = match shared.cluster_collection(&name) {
                        Ok(c) => ShardLog::stream_name(&name, c.incarnation, shard),
                        Err(_) => continue,
                    };
                    let covered = match shared.snapshots.latest(&log).await {
                        Ok(r) => r.map_or(0, |r| r.seq),
                        Err(e) => {
                            tracing::debug!(log = %log, error = %e, "reading a shard's snapshot record");
                            continue;
                        }
                    };
                    if applied < covered.saturating_add(min_ops.max(1)) {
                        continue;
                    }
                    match shared.snapshot_shard(&name, shard).await {
                        Ok(Some(done)) => {
                            tracing::info!(collection = %name, shard, seq = done.seq, trimmed_below = ?done.trimmed_below, "exported the shard's snapshot")
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(collection = %name, shard, error = %e, "exporting the shard's snapshot failed")
                        }
                    }
                }
            }
        });
        *exporting = Some(task);
    }

    /// Stops following the logs, heartbeating, answering and exporting snapshots (each
    /// replica holds what it has applied; nothing is checkpointed: the next start replays
    /// its own log).
    pub async fn stop(&self) -> Result<()> {
        let _ = self.stop.send(true);
        let task = self.catalog_task.lock().ok().and_then(|mut t| t.take());
        let r = match task {
            Some(t) => match t.await {
                Ok(r) => r,
                Err(e) => Err(ClusterError::broker("following the catalog", e)),
            },
            None => Ok(()),
        };
        let answering = self.answering.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = answering {
            let _ = t.await;
        }
        let exporting = self.exporting.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = exporting {
            let _ = t.await;
        }
        let supervising = self.supervising.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = supervising {
            let _ = t.await;
        }
        let held: Vec<Replica<B>> = self
            .shared
            .held
            .lock()
            .await
            .drain()
            .map(|(_, r)| r)
            .collect();
        for rep in held {
            // A training being applied stops at once (it is applied again after a restart).
            rep.collection.stop_training();
            if let Err(e) = rep.follower.stop().await {
                tracing::warn!(error = %e, "a replica's follower had stopped");
            }
        }
        r
    }
}

/// How long a create or drop waits for this node to apply its catalog entry.
const CATALOG_WAIT: Duration = Duration::from_secs(60);

/// Largest k a search through the cluster may ask for.
pub const MAX_K: usize = 16_384;

/// Ids asked of one replica per request (answers stay well below NATS's message limit).
const GET_CHUNK: usize = 64;

/// Points a scroll asks of one replica at a time (as [`GET_CHUNK`]: messages stay small).
const SCROLL_CHUNK: usize = 64;

/// Points a replica answers to one scroll request at most.
const MAX_SCROLL: usize = 1024;

/// How often [`supervise`] looks for replicas to start again.
const SUPERVISE_EVERY: Duration = Duration::from_secs(2);

/// How often [`supervise`] places again the replicas that failed to be placed.
const RETRY_FAILED_EVERY: Duration = Duration::from_secs(30);

/// Until `stop`: starts again the replicas whose log was trimmed past them, starts the
/// trainings that are due, and places again the replicas that failed to be placed, now and
/// then.
async fn supervise<B: Backend + Clone + Send + Sync + 'static>(
    shared: Arc<Shared<B>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut retried = Instant::now();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(SUPERVISE_EVERY) => {}
        }
        shared.restart_stopped().await;
        shared.train_due().await;
        if retried.elapsed() >= RETRY_FAILED_EVERY {
            retried = Instant::now();
            shared.retry_failed().await;
        }
    }
}

/// Removes a scratch folder, if there is one (what is left goes at the folder's next open).
async fn remove_scratch(path: &std::path::Path) {
    let p = path.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::debug!(path = %p.display(), error = %e, "removing a scratch folder")
        }
        _ => {}
    })
    .await;
}

/// The instant `timeout` from now (a day at most).
fn deadline_in(timeout: Duration) -> Instant {
    Instant::now() + timeout.min(Duration::from_secs(86_400))
}

/// Reads catalog entries 1 to `last` (the whole log when this node starts).
async fn read_catalog(catalog: &CatalogLog, last: u64) -> Result<Topology> {
    let mut topology = Topology::default();
    if last == 0 {
        return Ok(topology);
    }
    let read = async {
        let mut entries = Box::pin(catalog.read_from(1).await?);
        while topology.applied() < last {
            match entries.next().await {
                Some(Ok((seq, entry))) if seq == topology.applied() + 1 => {
                    topology.apply(seq, entry);
                }
                Some(Ok((seq, _))) if seq <= topology.applied() => {}
                Some(Ok((seq, _))) => {
                    return Err(ClusterError::Gap {
                        stream: crate::catalog_log::STREAM.into(),
                        expected: topology.applied() + 1,
                        got: seq,
                    })
                }
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(ClusterError::broker(
                        "reading the catalog",
                        "the log ended early",
                    ))
                }
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .map_err(|_| ClusterError::broker("reading the catalog", "not read within 60 s"))??;
    Ok(topology)
}

/// Per query, the best `k` of every shard's neighbours: by distance (larger first for inner
/// products), then by id.
fn merge(
    parts: Vec<Vec<Vec<(u64, f32)>>>,
    nq: usize,
    k: usize,
    larger_is_better: bool,
) -> Vec<Vec<(u64, f32)>> {
    (0..nq)
        .map(|q| {
            let mut all: Vec<(u64, f32)> =
                parts.iter().flat_map(|p| p[q].iter().copied()).collect();
            all.sort_by(|a, b| {
                let by_distance = if larger_is_better {
                    b.1.total_cmp(&a.1)
                } else {
                    a.1.total_cmp(&b.1)
                };
                by_distance.then(a.0.cmp(&b.0))
            });
            all.truncate(k);
            all
        })
        .collect()
}

/// Shard `shard` of `c`, read once it has applied what `after` says of it (a token of
/// another incarnation is ignored).
fn shard_ref(c: &ClusterCollection, shard: u32, after: Option<&WriteToken>) -> ShardRef {
    let min_seq = after
        .filter(|t| t.is_for(c.incarnation))
        .map_or(0, |t| t.seq_of(shard));
    shard_ref_at(c, shard, min_seq)
}

/// Shard `shard` of `c`, read once it has applied op `min_seq`.
fn shard_ref_at(c: &ClusterCollection, shard: u32, min_seq: u64) -> ShardRef {
    ShardRef {
        collection: c.meta.name.clone(),
        incarnation: c.incarnation,
        shard,
        min_seq,
        wait_ms: 0,
        request_id: crate::request_id::current().unwrap_or_default(),
    }
}

fn unexpected(r: ShardResponse) -> ClusterError {
    ClusterError::broker("asking a replica", format!("unexpected answer {r:?}"))
}

impl<B: Backend + Clone + Send + Sync + 'static> Shared<B> {
    /// A message id unique to this node and write.
    fn message_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{}-{nanos}-{n}", self.node_id)
    }

    fn topology(&self) -> Topology {
        match self.topology.read() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn cluster_collection(&self, name: &str) -> Result<ClusterCollection> {
        let t = match self.topology.read() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        t.get(name)
            .cloned()
            .ok_or_else(|| ClusterError::NotFound(name.into()))
    }

    /// Records that a replica placed here cannot serve.
    fn fail(&self, key: ShardKey, local: String, reason: String) {
        tracing::error!(collection = %key.0, shard = key.1, reason = %reason, "replica not available on this node");
        if let Ok(mut f) = self.failed.lock() {
            f.insert(key, (local, reason));
        }
    }

    /// Refuses a folder written for another catalog (the file `cluster.identity` in it names
    /// the catalog stream's creation; written on the first start).
    async fn check_identity(&self) -> Result<()> {
        let catalog = self.catalog.identity().await?;
        let file = self.folder.root().join("cluster.identity");
        match std::fs::read_to_string(&file) {
            Ok(folder) if folder.trim() == catalog => Ok(()),
            Ok(folder) => Err(ClusterError::Foreign {
                folder: folder.trim().to_string(),
                catalog,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let body = catalog.clone();
                tokio::task::spawn_blocking(move || {
                    quiver_store::fsutil::write_atomic(&file, &[body.as_bytes()])
                })
                .await
                .map_err(|e| ClusterError::broker("writing the folder's identity", e))??;
                Ok(())
            }
            Err(e) => Err(ClusterError::Store(quiver_store::StoreError::io(
                "reading", &file, e,
            ))),
        }
    }

    /// Removes what this node holds of collections the catalog (read to `last`) does not
    /// place here: replicas of dropped collections, older incarnations, shards placed
    /// elsewhere. Refuses a folder holding a replica of an incarnation past `last`.
    async fn reconcile(&self, last: u64) -> Result<()> {
        let topology = self.topology();
        for local in self.folder.names()? {
            let Some((name, incarnation, shard)) = parse_local(&local) else {
                tracing::warn!(folder = %local, "not a shard replica's folder; left alone");
                continue;
            };
            if incarnation > last {
                return Err(ClusterError::Behind {
                    stream: crate::catalog_log::STREAM.into(),
                    last,
                    wanted: incarnation,
                });
            }
            let placed = topology.get(&name).is_some_and(|c| {
                c.incarnation == incarnation && c.shards_on(&self.node_id).contains(&shard)
            });
            if !placed {
                tracing::info!(folder = %local, "replica no longer placed here; removing it");
                self.remove_folder(local).await;
            }
        }
        Ok(())
    }

    async fn remove_folder(&self, local: String) {
        let f = self.folder.clone();
        let l = local.clone();
        let r = tokio::task::spawn_blocking(move || f.remove::<B>(&l, None)).await;
        if !matches!(r, Ok(Ok(()))) {
            tracing::warn!(folder = %local, "removing a replica's folder failed; the next start tries again");
        }
    }

    /// Opens this node's replica of shard `shard` of `c` ([`Self::open_replica`]) and starts
    /// following its log; a failure marks it failed here.
    async fn place_replica(&self, c: &ClusterCollection, shard: u32) {
        let key = (c.meta.name.clone(), shard);
        if self.held.lock().await.contains_key(&key) {
            return;
        }
        let local = local_name(&c.meta.name, c.incarnation, shard);
        let mut tries = 0;
        let log = loop {
            match ShardLog::open(&self.js, &c.meta.name, c.incarnation, shard, self.replicas).await
            {
                Ok(log) => break log,
                Err(e) if tries < 6 => {
                    tries += 1;
                    tracing::warn!(collection = %c.meta.name, shard, error = %e, "opening the shard's log failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 << tries)).await;
                }
                Err(e) => return self.fail(key, local, format!("its log does not open: {e}")),
            }
        };
        // Unknown bounds: the folder's replica is taken as covered, and reads are answered
        // (as before the restart) rather than refused.
        let (first, ready_at) = log.bounds().await.unwrap_or((0, 0));
        let collection = match self.open_replica(c, &local, &log, first).await {
            Ok(coll) => Arc::new(coll),
            Err(why) => return self.fail(key, local, why),
        };
        let follower = Follower::start(log.clone(), collection.clone(), self.artifacts.clone());
        if let Ok(mut f) = self.failed.lock() {
            f.remove(&key);
        }
        self.held.lock().await.insert(
            key,
            Replica {
                collection,
                incarnation: c.incarnation,
                log,
                follower,
                local,
                ready_at,
            },
        );
    }

    /// This node's replica `local` of a shard of `c` whose log `log` starts at entry `first`:
    /// the one in the folder if the log still holds the ops after it; otherwise one made from
    /// the shard's snapshot (it then applies the log after it); empty when the shard has no
    /// snapshot (its log was never trimmed).
    async fn open_replica(
        &self,
        c: &ClusterCollection,
        local: &str,
        log: &ShardLog,
        first: u64,
    ) -> std::result::Result<Collection<B>, String> {
        if self.folder.is_live(local) {
            let (f, b, cfg, l) = (
                self.folder.clone(),
                self.backend.clone(),
                self.cfg.clone(),
                local.to_string(),
            );
            let coll = tokio::task::spawn_blocking(move || Collection::open(&f.path(&l), b, cfg))
                .await
                .map_err(|e| format!("opening it failed: {e}"))?
                .map_err(|e| format!("it does not open: {e}"))?;
            if coll.last_seq() + 1 >= first {
                return Ok(coll);
            }
            tracing::warn!(replica = %local, applied = coll.last_seq(), first, "the log was trimmed past this replica: starting it again from the shard's snapshot");
            let (f, l) = (self.folder.clone(), local.to_string());
            tokio::task::spawn_blocking(move || f.remove(&l, Some(&coll)))
                .await
                .map_err(|e| format!("removing it failed: {e}"))?
                .map_err(|e| format!("removing it failed: {e}"))?;
        }
        if let Some(coll) = self.restore(local, log).await? {
            return Ok(coll);
        }
        if first > 1 {
            return Err(format!(
                "its log starts at op {first} and the shard has no snapshot to start from"
            ));
        }
        let (f, b, cfg) = (self.folder.clone(), self.backend.clone(), self.cfg.clone());
        let mut meta = c.meta.clone();
        meta.name = local.to_string();
        tokio::task::spawn_blocking(move || f.create_replica(meta, b, cfg))
            .await
            .map_err(|e| format!("creating it failed: {e}"))?
            .map_err(|e| format!("it cannot be created: {e}"))
    }

    /// The replica `local` made from the current snapshot of its shard's log (`None`: the
    /// shard has none). A snapshot replaced while it is read is read again.
    async fn restore(
        &self,
        local: &str,
        log: &ShardLog,
    ) -> std::result::Result<Option<Collection<B>>, String> {
        let scratch = self.folder.snapshot_path(local);
        let mut why = String::new();
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            remove_scratch(&scratch).await;
            let record = match self.snapshots.download(log.stream(), &scratch).await {
                Ok(None) => return Ok(None),
                Ok(Some(record)) => record,
                Err(e) => {
                    tracing::warn!(replica = %local, error = %e, "reading the shard's snapshot failed; trying again");
                    why = e.to_string();
                    continue;
                }
            };
            let (f, b, cfg, l, s) = (
                self.folder.clone(),
                self.backend.clone(),
                self.cfg.clone(),
                local.to_string(),
                scratch.clone(),
            );
            let made =
                tokio::task::spawn_blocking(move || f.create_replica_from_snapshot(&l, &s, b, cfg))
                    .await;
            remove_scratch(&scratch).await;
            return match made {
                Ok(Ok(coll)) => {
                    tracing::info!(replica = %local, seq = record.seq, bytes = record.bytes(), from = %record.node, "started the replica from the shard's snapshot");
                    if let Ok(mut r) = self.restored.lock() {
                        if let Some((name, incarnation, shard)) = parse_local(local) {
                            r.insert((name, shard), (incarnation, record.seq));
                        }
                    }
                    Ok(Some(coll))
                }
                Ok(Err(e)) => Err(format!("its snapshot does not open: {e}")),
                Err(e) => Err(format!("opening its snapshot failed: {e}")),
            };
        }
        Err(format!("its snapshot could not be read: {why}"))
    }

    /// [`Node::snapshot`].
    async fn snapshot_shard(&self, name: &str, shard: u32) -> Result<Option<SnapshotDone>> {
        let c = self.cluster_collection(name)?;
        let (replica, log, local) = {
            let held = self.held.lock().await;
            match held.get(&(name.to_string(), shard)) {
                Some(r) if r.incarnation == c.incarnation && !r.follower.has_stopped() => {
                    (r.collection.clone(), r.log.clone(), r.local.clone())
                }
                _ => {
                    return Err(ClusterError::Unavailable {
                        name: name.to_string(),
                        reason: format!("this node holds no working replica of shard {shard}"),
                    })
                }
            }
        };
        // One node at a time exports a shard's snapshot.
        let lease = match self
            .leases
            .acquire(&format!("snapshot.{}", log.stream()), &self.node_id)
            .await?
        {
            Ok(lease) => lease,
            Err(_) => return Ok(None),
        };
        let done = async {
            let scratch = self.folder.snapshot_path(&format!("{local}-export"));
            remove_scratch(&scratch).await;
            let (r, s) = (replica.clone(), scratch.clone());
            let exported = tokio::task::spawn_blocking(move || r.export_snapshot(&s))
                .await
                .map_err(|e| ClusterError::broker("exporting a snapshot", e));
            let published = match exported {
                Ok(Ok(seq)) => self
                    .snapshots
                    .publish(log.stream(), &self.node_id, seq, &scratch)
                    .await
                    .map(|p| p.then_some(seq)),
                Ok(Err(e)) => Err(e.into()),
                Err(e) => Err(e),
            };
            remove_scratch(&scratch).await;
            let Some(seq) = published? else {
                return Ok(None);
            };
            // Dropped meanwhile: the drop deleted what it found; what was published after
            // it goes too.
            if self.cluster_collection(name).map(|now| now.incarnation).ok() != Some(c.incarnation)
            {
                let _ = self.snapshots.forget(log.stream()).await;
                let _ = self.artifacts.delete_prefix(&format!("{}/", log.stream())).await;
                return Err(ClusterError::NotFound(name.to_string()));
            }
            // Below what every replica that answers has applied. One on a node that is down
            // (or whose replica failed) starts again from the snapshot if the log has gone past
            // it; while one on a node that is up does not say (busy, placing it, catching up),
            // the log is not trimmed.
            let mut below = Some(seq + 1);
            let placed = c.placement.get(shard as usize).cloned().unwrap_or_default();
            for node in placed.iter().filter(|n| **n != self.node_id) {
                let ask = ShardRequest::Progress {
                    shard: shard_ref_at(&c, shard, 0),
                };
                match rpc::call(&self.client, node, &ask, Duration::from_secs(2)).await {
                    Ok(ShardResponse::Progress(applied)) => {
                        below = below.map(|b| b.min(applied + 1))
                    }
                    Ok(ShardResponse::Failed(why)) => {
                        tracing::debug!(node = %node, why = %why, "a replica failed there; the log may be trimmed past it")
                    }
                    _ if !self.members.is_live(node) => {
                        tracing::debug!(node = %node, "a replica's node is down; the log may be trimmed past it")
                    }
                    answer => {
                        tracing::info!(node = %node, ?answer, "a replica on a node that is up did not say how far it has applied: the log is not trimmed now");
                        below = None;
                    }
                }
            }
            // Only while this node still holds the lease (no other export raced past it).
            let trimmed_below = match below {
                Some(b) if lease.held() && b > 1 => {
                    log.trim_below(b).await?;
                    Some(b)
                }
                _ => None,
            };
            Ok(Some(SnapshotDone { seq, trimmed_below }))
        }
        .await;
        lease.release().await;
        done
    }

    /// Starts again the replicas whose followers stopped because entries they needed are
    /// no longer in the log (trimmed past them: `Trimmed`, or skipped by a reader that was
    /// open across the trim: `Gap`): removed, then placed again, from the shard's snapshot.
    /// Others whose followers stopped are marked failed. Under [`Shared::placing`].
    async fn restart_stopped(&self) {
        let _placing = self.placing.lock().await;
        let stopped: Vec<(ShardKey, Replica<B>)> = {
            let mut held = self.held.lock().await;
            let keys: Vec<ShardKey> = held
                .iter()
                .filter(|(_, r)| r.follower.has_stopped())
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| held.remove(&k).map(|r| (k, r)))
                .collect()
        };
        for (key, rep) in stopped {
            match rep.follower.stop().await {
                Err(e @ (ClusterError::Trimmed { .. } | ClusterError::Gap { .. })) => {
                    tracing::warn!(replica = %rep.local, error = %e, "the log no longer holds what this replica needs: starting it again from the shard's snapshot");
                    let (f, l, coll) = (self.folder.clone(), rep.local.clone(), rep.collection);
                    let removed =
                        tokio::task::spawn_blocking(move || f.remove(&l, Some(&coll))).await;
                    if !matches!(removed, Ok(Ok(()))) {
                        self.fail(
                            key,
                            rep.local,
                            "removing it to start it again failed".into(),
                        );
                        continue;
                    }
                    let placed = self
                        .cluster_collection(&key.0)
                        .ok()
                        .filter(|c| c.incarnation == rep.incarnation);
                    if let Some(c) = placed {
                        self.place_replica(&c, key.1).await;
                    }
                }
                r => {
                    let why = match r {
                        Err(e) => format!("its log follower stopped: {e}"),
                        Ok(()) => "its log follower stopped".to_string(),
                    };
                    self.fail(key, rep.local, why);
                }
            }
        }
    }

    /// [`Node::describe_collection`], in its own task.
    async fn describe_collection(
        &self,
        name: &str,
        edit: impl Fn(&mut Description) -> Result<bool>,
    ) -> Result<WriteToken> {
        let key = format!("describe.{}", crate::stream::escape(name));
        let deadline = Instant::now() + DESCRIBE_WAIT;
        let lease = loop {
            match self.leases.acquire(&key, &self.node_id).await? {
                Ok(lease) => break lease,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(holder) => {
                    return Err(ClusterError::Unavailable {
                        name: name.into(),
                        reason: format!(
                            "another change of its description (led by node {holder}) has not ended in {} s; retry",
                            DESCRIBE_WAIT.as_secs()
                        ),
                    })
                }
            }
        };
        let done = self.describe_holding(name, edit, &lease).await;
        lease.release().await;
        done
    }

    /// [`Self::describe_collection`] under the collection's description lease: no other
    /// change of it runs, so the new value is made once, from the catalog read to its end (an
    /// append finding the catalog's value changed meanwhile, the lease having lapsed, is
    /// refused rather than undo that change).
    async fn describe_holding(
        &self,
        name: &str,
        edit: impl Fn(&mut Description) -> Result<bool>,
        lease: &Lease,
    ) -> Result<WriteToken> {
        self.sync_catalog().await?;
        let c = self.cluster_collection(name)?;
        let before = c.meta.description();
        let mut d = before.clone();
        let changed = edit(&mut d)?;
        let op = Op::Describe(d.clone());
        quiver_store::check_ops(c.meta.dim, std::slice::from_ref(&op))?;
        // Every shard's log found and the entry checked before the catalog takes it.
        let mut logs = Vec::with_capacity(c.shards() as usize);
        for shard in 0..c.shards() {
            let log = self.shard_log(&c, shard).await?;
            log.check_op(&op)?;
            logs.push(log);
        }
        let lost = || ClusterError::Broker {
            context: "changing a collection's description",
            reason: "its lease was lost (the broker was unreachable); make the change again".into(),
        };
        // A change goes to the catalog first. A value the catalog has already (a repeat, or a
        // retry of a change whose shard entries were not all appended) goes to the shards'
        // logs only: applying it again changes nothing there either.
        let tag = if changed {
            if !lease.held() {
                return Err(lost());
            }
            let seq = self
                .append_catalog(|t| match t.get(name) {
                    Some(now)
                        if now.incarnation == c.incarnation && now.meta.description() == before =>
                    {
                        Ok(CatalogEntry::Describe {
                            name: name.into(),
                            incarnation: c.incarnation,
                            description: d.clone(),
                        })
                    }
                    Some(now) if now.incarnation == c.incarnation => Err(ClusterError::Broker {
                        context: "changing a collection's description",
                        reason: "another change of it came first; retry".into(),
                    }),
                    _ => Err(ClusterError::NotFound(name.into())),
                })
                .await?;
            format!("describe.{seq}")
        } else {
            format!("describe.{}", self.message_id())
        };
        if !lease.held() {
            return Err(lost());
        }
        let appends = logs.iter().enumerate().map(|(shard, log)| {
            let (op, tag) = (&op, &tag);
            async move {
                let a = log.append(&format!("{tag}.{shard}"), op).await?;
                Ok::<_, ClusterError>((shard as u32, a.seq))
            }
        });
        let shards = futures_util::future::try_join_all(appends).await?;
        Ok(WriteToken {
            incarnation: c.incarnation,
            shards,
        })
    }

    /// Appends the entry `make` builds from the catalog as read so far (after this node has
    /// read all of it), if no other entry came first, and waits until this node has applied
    /// it; returns its number. An append whose answer was lost is sent again with the same id
    /// and expected last entry; if the broker refuses that because the entry after it is the
    /// first one's (it checks the expected entry before repeats), the append is done.
    async fn append_catalog(
        &self,
        make: impl Fn(&Topology) -> Result<CatalogEntry>,
    ) -> Result<u64> {
        let id = self.message_id();
        for _ in 0..100 {
            let last = self.sync_catalog().await?;
            let entry = make(&self.topology())?;
            let mut tries = 0;
            let appended = loop {
                match self.catalog.append_after(last, &id, &entry).await {
                    Err(ClusterError::Broker { .. }) if tries < 5 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(100 << tries)).await;
                    }
                    r => break r?,
                }
            };
            if let Some(a) = appended {
                self.wait_catalog(a.seq).await?;
                return Ok(a.seq);
            }
            if tries > 0 && self.catalog.is_entry(last + 1, &id).await? {
                self.wait_catalog(last + 1).await?;
                return Ok(last + 1);
            }
        }
        Err(ClusterError::Broker {
            context: "appending to the catalog",
            reason: "other entries kept coming first; retry".into(),
        })
    }

    /// Waits until this node has applied every catalog entry appended so far; returns the
    /// last one's number.
    async fn sync_catalog(&self) -> Result<u64> {
        let last = self.catalog.last_seq().await?;
        self.wait_catalog(last).await?;
        Ok(last)
    }

    /// Waits until this node has applied catalog entry `seq` (an error once its catalog
    /// follower has stopped).
    async fn wait_catalog(&self, seq: u64) -> Result<()> {
        let mut applied = self.applied.subscribe();
        let mut stopped = self.catalog_stopped.subscribe();
        let deadline = Instant::now() + CATALOG_WAIT;
        loop {
            if *applied.borrow_and_update() >= seq {
                return Ok(());
            }
            if let Some(why) = stopped.borrow_and_update().clone() {
                return Err(ClusterError::Broker {
                    context: "following the catalog",
                    reason: format!("this node's catalog follower stopped: {why}"),
                });
            }
            tokio::select! {
                _ = applied.changed() => {}
                _ = stopped.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(ClusterError::Broker {
                        context: "following the catalog",
                        reason: format!("entry {seq} not applied here within {} s; retry", CATALOG_WAIT.as_secs()),
                    });
                }
            }
        }
    }

    /// Starts the training of each shard held here whose collection trains by itself (its
    /// `train_at` size, Qdrant's indexing threshold, shared evenly by its shards) once a
    /// caught-up replica here holds its shard's share of points untrained (and as many as a
    /// training needs): as [`Node::train`] does for one shard, led by whichever node
    /// gets the shard's training lease (the others find it held, or the replica trained when
    /// they have it, and pass). One that did not happen is
    /// tried again after [`AUTO_TRAIN_RETRY`] (after [`AUTO_TRAIN_BUSY`] when another node
    /// leads it).
    async fn train_due(self: &Arc<Self>) {
        let topology = self.topology();
        let due: Vec<(String, TrainingLead<B>)> = {
            let held = self.held.lock().await;
            let Ok(mut auto) = self.auto_training.lock() else {
                return;
            };
            let now = Instant::now();
            held.iter()
                .filter_map(|((name, shard), rep)| {
                    if rep.follower.has_stopped() || rep.follower.applied() < rep.ready_at {
                        return None;
                    }
                    // Each shard trains at its share of the collection's training size.
                    let shards = topology
                        .get(name)
                        .filter(|c| c.incarnation == rep.incarnation)
                        .map_or(1, |c| u64::from(c.shards()).max(1));
                    // Never below what a training needs (as a single server: a list per
                    // point at least, and a PQ code book's 256 entries).
                    let index = rep.collection.meta().index;
                    let at = index.train_at.div_ceil(shards);
                    let v = rep.collection.version();
                    let enough = at.max(u64::from(index.nlist)).max(256);
                    if at == 0 || v.quantizers.is_some() || (v.len() as u64) < enough {
                        return None;
                    }
                    let log = rep.log.stream().to_string();
                    match auto.get(&log) {
                        Some(None) => return None,
                        Some(Some(not_before)) if *not_before > now => return None,
                        _ => {}
                    }
                    auto.insert(log.clone(), None);
                    let lead = TrainingLead {
                        leases: self.leases.clone(),
                        artifacts: self.artifacts.clone(),
                        node_id: self.node_id.clone(),
                        collection: rep.collection.clone(),
                        log: rep.log.clone(),
                        progress: rep.follower.progress(),
                        shard: ShardRef {
                            collection: name.clone(),
                            incarnation: rep.incarnation,
                            shard: *shard,
                            min_seq: 0,
                            wait_ms: TRAIN_CATCH_UP.as_millis() as u64,
                            request_id: String::new(),
                        },
                        index: None,
                        only_untrained: true,
                        id: self.message_id(),
                    };
                    Some((log, lead))
                })
                .collect()
        };
        for (log, lead) in due {
            let shared = self.clone();
            tokio::spawn(async move {
                tracing::debug!(log = %log, "a replica here reached its collection's training size: training the shard");
                let answer = lead.run().await;
                let retry = match &answer {
                    ShardResponse::Trained(seq) => {
                        tracing::info!(log = %log, seq, "the shard trained by itself");
                        None
                    }
                    ShardResponse::Precondition(why) => {
                        tracing::debug!(log = %log, why = %why, "the shard's training is not led here");
                        Some(AUTO_TRAIN_BUSY)
                    }
                    other => {
                        tracing::warn!(log = %log, answer = ?other, "the shard's training by itself did not happen; tried again later");
                        Some(AUTO_TRAIN_RETRY)
                    }
                };
                if let Ok(mut auto) = shared.auto_training.lock() {
                    match retry {
                        Some(after) => auto.insert(log, Some(Instant::now() + after)),
                        None => auto.remove(&log),
                    };
                }
            });
        }
    }

    /// Places again the replicas that failed to be placed here (a snapshot that could not be
    /// read, a log that did not open) and are still placed here. Under [`Shared::placing`].
    async fn retry_failed(&self) {
        let _placing = self.placing.lock().await;
        let failed: Vec<ShardKey> = match self.failed.lock() {
            Ok(f) => f.keys().cloned().collect(),
            Err(_) => return,
        };
        for (name, shard) in failed {
            let Ok(c) = self.cluster_collection(&name) else {
                continue;
            };
            let local = local_name(&name, c.incarnation, shard);
            let same = self
                .failed
                .lock()
                .ok()
                .and_then(|f| f.get(&(name.clone(), shard)).map(|(l, _)| *l == local))
                .unwrap_or(false);
            if same && c.shards_on(&self.node_id).contains(&shard) {
                tracing::info!(replica = %local, "placing a replica that failed here again");
                self.place_replica(&c, shard).await;
            }
        }
    }

    /// Removes every replica of `name` this node holds (or failed to), and their logs.
    async fn remove_replicas(&self, name: &str) {
        let removed: Vec<Replica<B>> = {
            let mut held = self.held.lock().await;
            let keys: Vec<ShardKey> = held.keys().filter(|k| k.0 == name).cloned().collect();
            keys.into_iter().filter_map(|k| held.remove(&k)).collect()
        };
        for r in removed {
            // A training being applied stops at once: the replica is going.
            r.collection.stop_training();
            if let Err(e) = r.follower.stop().await {
                tracing::debug!(error = %e, "a dropped replica's follower had stopped");
            }
            let (f, l, c) = (self.folder.clone(), r.local.clone(), r.collection.clone());
            let done = tokio::task::spawn_blocking(move || f.remove(&l, Some(&c))).await;
            if !matches!(done, Ok(Ok(()))) {
                tracing::warn!(folder = %r.local, "removing a dropped replica failed; the next start removes it");
            }
            // Its log goes with it (any node holding a replica may get there first).
            if let Err(e) = r.log.delete().await {
                tracing::debug!(log = r.log.stream(), error = %e, "deleting a dropped shard's log");
            }
        }
        let failed: Vec<String> = match self.failed.lock() {
            Ok(mut f) => {
                let keys: Vec<ShardKey> = f.keys().filter(|k| k.0 == name).cloned().collect();
                keys.into_iter()
                    .filter_map(|k| f.remove(&k).map(|v| v.0))
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        for local in failed {
            self.remove_folder(local).await;
        }
        self.logs.lock().await.retain(|k, _| k.0 != name);
    }

    /// The log of shard `shard` of `c` (opened once).
    async fn shard_log(&self, c: &ClusterCollection, shard: u32) -> Result<ShardLog> {
        if let Some(r) = self.held.lock().await.get(&(c.meta.name.clone(), shard)) {
            if r.incarnation == c.incarnation {
                return Ok(r.log.clone());
            }
        }
        let key = (c.meta.name.clone(), c.incarnation, shard);
        if let Some(log) = self.logs.lock().await.get(&key) {
            return Ok(log.clone());
        }
        // Never created here: a write must not bring back the log of a dropped collection.
        let log = ShardLog::open_existing(&self.js, &c.meta.name, c.incarnation, shard)
            .await?
            .ok_or_else(|| ClusterError::Unavailable {
                name: c.meta.name.clone(),
                reason: format!("the log of shard {shard} does not exist (the collection is being created or dropped); retry"),
            })?;
        // Still the same collection (not dropped meanwhile).
        if self
            .cluster_collection(&c.meta.name)
            .map(|now| now.incarnation)
            .ok()
            != Some(c.incarnation)
        {
            return Err(ClusterError::NotFound(c.meta.name.clone()));
        }
        self.logs.lock().await.insert(key, log.clone());
        Ok(log)
    }

    /// Asks a replica of shard `shard` of `c`: this node's first, then those on nodes that
    /// are up, then the others; the next one when one fails, until `deadline`.
    async fn ask_shard(
        &self,
        c: &ClusterCollection,
        shard: u32,
        request: ShardRequest,
        deadline: Instant,
    ) -> Result<ShardResponse> {
        let Some(placed) = c.placement.get(shard as usize) else {
            return Err(invalid(
                "shard",
                format!(
                    "{} has {} shards; there is no shard {shard}",
                    c.meta.name,
                    c.shards()
                ),
            ));
        };
        let request_id = request.shard().request_id.clone();
        let mut nodes: Vec<&String> = placed.iter().collect();
        // Stable: this node first, then those up, each group in placement order.
        nodes.sort_by_key(|n| (**n != self.node_id, !self.members.is_live(n)));
        let tries = nodes.len();
        let mut why = Vec::new();
        let mut backoff = Duration::from_millis(50);
        // Rounds over the replicas while one says it is not ready yet (the collection's
        // creation not yet read there, or catching up) and time is left.
        loop {
            let mut not_ready = false;
            why.clear();
            for (i, node) in nodes.iter().copied().enumerate() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    why.push("deadline reached".to_string());
                    break;
                }
                // Each replica but the last gets a share of the time left, so one that does not
                // answer (down but not yet known to be) leaves time for the others.
                // A training takes as long as it takes: its leader gets all of it.
                let is_training = matches!(request, ShardRequest::Train { .. });
                let left = if i + 1 < tries && !is_training {
                    (left / (tries - i) as u32).max(left.min(Duration::from_millis(500)))
                } else {
                    left
                };
                let mut request = request.clone();
                request.shard_mut().wait_ms = left.as_millis() as u64;
                let answer = if *node == self.node_id {
                    Ok(self.answer(request).await)
                } else if is_training {
                    // A leader that dies mid-training never answers: given up once it is down,
                    // and the next replica asked.
                    let call = rpc::call(&self.client, node, &request, left);
                    tokio::pin!(call);
                    loop {
                        tokio::select! {
                            a = &mut call => break a,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                                if !self.members.is_live(node) {
                                    break Err(ClusterError::broker(
                                        "leading a training",
                                        format!("node {node} went down"),
                                    ));
                                }
                            }
                        }
                    }
                } else {
                    rpc::call(&self.client, node, &request, left).await
                };
                match answer {
                    // The request itself is wrong: every replica would say so.
                    Ok(ShardResponse::Refused(e)) => {
                        return Err(invalid("request", e));
                    }
                    // Not possible now, whichever replica is asked.
                    Ok(ShardResponse::Precondition(e)) => {
                        return Err(ClusterError::Store(StoreError::Precondition(e)));
                    }
                    Ok(ShardResponse::NotReady(e)) => {
                        not_ready = true;
                        why.push(format!("{node}: {e}"))
                    }
                    Ok(ShardResponse::Failed(e)) => {
                        tracing::debug!(request_id = %request_id, node = %node, shard, why = %e, "a replica could not answer; asking the next");
                        why.push(format!("{node}: {e}"))
                    }
                    Ok(a) => {
                        if let Ok(mut r) = self.routed.lock() {
                            *r.entry((c.meta.name.clone(), shard, node.clone()))
                                .or_default() += 1;
                        }
                        return Ok(a);
                    }
                    // Too large for any node.
                    Err(e @ ClusterError::TooLarge { .. }) => return Err(e),
                    Err(e) => why.push(format!("{node}: {e}")),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if !not_ready || left <= backoff {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
        Err(ClusterError::Unavailable {
            name: c.meta.name.clone(),
            reason: format!("no replica of shard {shard} answered ({})", why.join("; ")),
        })
    }

    /// The answer for a replica this node does not hold: failed here (another replica may
    /// answer), or not there yet (this node has not read its creation, or is placing it:
    /// asked again shortly, it may answer).
    fn not_held(&self, r: &ShardRef) -> ShardResponse {
        let failed = self.failed.lock().ok().and_then(|f| {
            f.get(&(r.collection.clone(), r.shard))
                .filter(|(local, _)| *local == local_name(&r.collection, r.incarnation, r.shard))
                .map(|(_, why)| why.clone())
        });
        match failed {
            Some(why) => ShardResponse::Failed(format!("this replica failed here: {why}")),
            None => ShardResponse::NotReady("no such replica here (yet)".into()),
        }
    }

    /// Answers a request about a replica this node holds.
    async fn answer(&self, request: ShardRequest) -> ShardResponse {
        let r = request.shard().clone();
        let (collection, log, mut progress) = {
            let held = self.held.lock().await;
            if let ShardRequest::Progress { .. } = request {
                return match held.get(&(r.collection.clone(), r.shard)) {
                    Some(rep)
                        if rep.incarnation == r.incarnation && !rep.follower.has_stopped() =>
                    {
                        ShardResponse::Progress(rep.follower.applied())
                    }
                    _ => self.not_held(&r),
                };
            }
            match held.get(&(r.collection.clone(), r.shard)) {
                Some(rep) if rep.incarnation == r.incarnation && rep.follower.has_stopped() => {
                    // Its data is as old as when it stopped: never answered from.
                    return ShardResponse::Failed(
                        "this replica's log follower stopped (see the node's log)".into(),
                    );
                }
                Some(rep)
                    if rep.incarnation == r.incarnation
                        && r.min_seq == 0
                        && rep.follower.applied() < rep.ready_at =>
                {
                    return ShardResponse::NotReady(format!(
                        "this replica is catching up (op {} of {})",
                        rep.follower.applied(),
                        rep.ready_at
                    ));
                }
                Some(rep) if rep.incarnation == r.incarnation => (
                    rep.collection.clone(),
                    rep.log.clone(),
                    rep.follower.progress(),
                ),
                _ => return self.not_held(&r),
            }
        };
        if r.min_seq > 0 {
            let wait = async {
                loop {
                    if *progress.borrow_and_update() >= r.min_seq {
                        return true;
                    }
                    if progress.changed().await.is_err() {
                        return false;
                    }
                }
            };
            let in_time = tokio::time::timeout(Duration::from_millis(r.wait_ms.max(1)), wait).await;
            if in_time != Ok(true) {
                return ShardResponse::Failed(format!(
                    "behind: op {} not applied here in time",
                    r.min_seq
                ));
            }
        }
        if let ShardRequest::Train { index, .. } = request {
            let lead = TrainingLead {
                leases: self.leases.clone(),
                artifacts: self.artifacts.clone(),
                node_id: self.node_id.clone(),
                collection,
                log,
                progress,
                shard: r,
                index,
                only_untrained: false,
                id: self.message_id(),
            };
            // Its own task: it ends (and gives the lease back) even if this caller goes.
            return match tokio::spawn(lead.run()).await {
                Ok(a) => a,
                Err(e) => ShardResponse::Failed(format!("leading the training failed: {e}")),
            };
        }
        let done = tokio::task::spawn_blocking(move || answer_locally(&collection, request)).await;
        match done {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => store_refusal(&e).unwrap_or_else(|| ShardResponse::Failed(e.to_string())),
            Err(e) => ShardResponse::Failed(format!("the request failed: {e}")),
        }
    }
}

/// The longest a training's leader waits for its replica to reach the log's end before
/// leaving the training to another replica.
const TRAIN_CATCH_UP: Duration = Duration::from_secs(60);

/// How long a change of a collection's description waits for another one to end.
const DESCRIBE_WAIT: Duration = Duration::from_secs(30);

/// How long after a training by itself failed it is tried again.
const AUTO_TRAIN_RETRY: Duration = Duration::from_secs(60);

/// How long after finding a shard's training led by another node this node looks again.
const AUTO_TRAIN_BUSY: Duration = Duration::from_secs(10);

/// What leading one shard's training needs, owned: it runs as a task of its own, so a caller
/// that goes away (a deadline, a cancelled request) neither leaves the lease held nor a
/// training half done.
struct TrainingLead<B: Backend + Clone + Send + Sync + 'static> {
    leases: Leases,
    artifacts: Artifacts,
    node_id: String,
    collection: Arc<Collection<B>>,
    log: ShardLog,
    progress: watch::Receiver<u64>,
    shard: ShardRef,
    index: Option<IndexConfig>,
    /// Train only a replica not trained yet (a training by itself: once the replica has
    /// caught up, one logged meanwhile may have trained it).
    only_untrained: bool,
    /// Unique to this training (the artifact's name and the log entry's message id).
    id: String,
}

impl<B: Backend + Clone + Send + Sync + 'static> TrainingLead<B> {
    /// Leads the training if no other node leads it now.
    async fn run(mut self) -> ShardResponse {
        // Trained on every write acknowledged before the request: the replica catches up to
        // the log's end first.
        if let Err(why) = self.catch_up().await {
            return ShardResponse::Failed(why);
        }
        let key = format!("train.{}", self.log.stream());
        let lease = match self.leases.acquire(&key, &self.node_id).await {
            Ok(Ok(lease)) => lease,
            Ok(Err(holder)) => {
                return ShardResponse::Precondition(format!(
                    "shard {} of {:?} is being trained already (led by node {holder})",
                    self.shard.shard, self.shard.collection
                ))
            }
            Err(e) => return ShardResponse::Failed(e.to_string()),
        };
        // A training by itself: one another node led may have been logged while this one
        // waited, so the replica catches up again under the lease before looking.
        let caught_up = if self.only_untrained {
            self.catch_up().await
        } else {
            Ok(())
        };
        if let Err(why) = caught_up {
            lease.release().await;
            return ShardResponse::Failed(why);
        }
        if self.only_untrained && self.collection.version().quantizers.is_some() {
            lease.release().await;
            return ShardResponse::Precondition(format!(
                "shard {} of {:?} is trained already",
                self.shard.shard, self.shard.collection
            ));
        }
        let done = self.train_and_log(&lease).await;
        lease.release().await;
        match done {
            Ok(seq) => ShardResponse::Trained(seq),
            Err(ClusterError::Store(e)) => match store_refusal(&e) {
                Some(refusal) => refusal,
                None => ShardResponse::Failed(e.to_string()),
            },
            Err(e) => ShardResponse::Failed(e.to_string()),
        }
    }

    /// Waits until the replica has applied its log's end as of now (the request's wait, at
    /// most [`TRAIN_CATCH_UP`]).
    async fn catch_up(&mut self) -> std::result::Result<(), String> {
        let last = self.log.bounds().await.map_err(|e| e.to_string())?.1;
        let wait = Duration::from_millis(self.shard.wait_ms.max(1)).min(TRAIN_CATCH_UP);
        let progress = &mut self.progress;
        let caught_up = tokio::time::timeout(wait, async {
            loop {
                if *progress.borrow_and_update() >= last {
                    return true;
                }
                if progress.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await;
        match caught_up {
            Ok(true) => Ok(()),
            _ => Err(format!(
                "behind: op {last} not applied here in time to train"
            )),
        }
    }

    /// Trains quantizers on the replica's points, stores them as an artifact and logs the
    /// switch to them; returns its number in the log.
    async fn train_and_log(&self, lease: &Lease) -> Result<u64> {
        let scratch = tempfile::Builder::new()
            .prefix("quiver-quantizers-")
            .tempfile()
            .map_err(|e| StoreError::Failed(format!("a scratch file for the quantizers: {e}")))?;
        let path = scratch.path().to_owned();
        let collection = self.collection.clone();
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || {
            let quantizers = collection.train_quantizers(index)?;
            quiver_engine::persist::save(&quantizers, &path)
                .map_err(|e| StoreError::Failed(format!("writing the quantizers: {e}")))
        })
        .await
        .map_err(|e| StoreError::Failed(format!("the training failed: {e}")))??;
        let lost = || ClusterError::Broker {
            context: "leading a training",
            reason: "the shard's training lease was lost (the broker was unreachable); train again"
                .into(),
        };
        if !lease.held() {
            return Err(lost());
        }
        let object = format!("{}.{}", self.log.stream(), self.id);
        let bytes = self.artifacts.put_file(&object, scratch.path()).await?;
        if !lease.held() {
            let _ = self.artifacts.delete(&object).await;
            return Err(lost());
        }
        let entry = TrainEntry {
            object: object.clone(),
            bytes,
        };
        // An acknowledgement lost on the way is asked for again under the same message id:
        // the entry is logged once.
        let msg_id = format!("train.{}", self.id);
        let mut tries = 0;
        loop {
            match self.log.append_train(&msg_id, &entry).await {
                Ok(a) => return Ok(a.seq),
                Err(ClusterError::Broker { .. }) if tries < 5 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(200 << tries)).await;
                }
                Err(e) => {
                    let _ = self.artifacts.delete(&object).await;
                    return Err(e);
                }
            }
        }
    }
}

/// How a replica answers a store error that every replica would meet alike: a request that is
/// not valid, or not possible in the collection's state (`None`: another replica may do it).
fn store_refusal(e: &StoreError) -> Option<ShardResponse> {
    use quiver_engine::error::EngineError as E;
    match e {
        StoreError::Invalid { .. } | StoreError::TooLarge { .. } => {
            Some(ShardResponse::Refused(e.to_string()))
        }
        StoreError::Precondition(_) => Some(ShardResponse::Precondition(e.to_string())),
        StoreError::Engine(E::TooFewTrainingVectors { .. }) => {
            Some(ShardResponse::Precondition(e.to_string()))
        }
        StoreError::Engine(
            E::DimensionMismatch { .. }
            | E::NonFinite { .. }
            | E::ZeroVector { .. }
            | E::InvalidParameter { .. }
            | E::KOutOfRange { .. }
            | E::NprobeOutOfRange { .. }
            | E::PqDoesNotDivide { .. }
            | E::IdCountMismatch { .. }
            | E::InvalidId { .. }
            | E::DuplicateId { .. }
            | E::RefineUnavailable { .. },
        ) => Some(ShardResponse::Refused(e.to_string())),
        _ => None,
    }
}

/// Runs a request on a replica (blocking).
fn answer_locally<B: Backend + Clone + Send + Sync + 'static>(
    c: &Collection<B>,
    request: ShardRequest,
) -> std::result::Result<ShardResponse, StoreError> {
    let parse = |f: &str| {
        Filter::parse_text(f).map_err(|e| StoreError::Invalid {
            field: "filter",
            reason: e.to_string(),
        })
    };
    Ok(match request {
        ShardRequest::Search {
            queries,
            nq,
            k,
            nprobe,
            refine_factor,
            filter,
            ..
        } => {
            // Each shard trains its own quantizers, with as many lists as its points call
            // for: a search visits at most this replica's lists (looked at again if a
            // training switched them in between).
            let filters = filter.as_deref().map(parse).transpose()?;
            let search = |nprobe: usize| {
                let nprobe = match &c.version().quantizers {
                    Some(q) => nprobe.min(q.nlist()),
                    None => nprobe,
                };
                let key = SearchKey {
                    k,
                    nprobe,
                    refine_factor,
                };
                match &filters {
                    Some(f) => {
                        c.search_filtered(&queries, nq, key, std::slice::from_ref(f), &vec![0; nq])
                    }
                    None => c.search(&queries, nq, key),
                }
            };
            let n = match search(nprobe) {
                Err(StoreError::Engine(quiver_engine::error::EngineError::NprobeOutOfRange {
                    ..
                })) => search(nprobe)?,
                r => r?,
            };
            let per = n.k;
            ShardResponse::Neighbors(
                (0..nq)
                    .map(|q| {
                        (q * per..(q + 1) * per)
                            .filter(|&i| n.ids[i] >= 0)
                            // JSON has no infinities: an overflowed inner product ranks as the
                            // largest finite one.
                            .map(|i| (n.ids[i] as u64, n.distances[i].clamp(f32::MIN, f32::MAX)))
                            .collect()
                    })
                    .collect(),
            )
        }
        ShardRequest::Get { ids, .. } => ShardResponse::Points(
            c.get_points(&ids)
                .into_iter()
                .map(|(id, vector, payload)| Point {
                    id,
                    vector,
                    payload,
                })
                .collect(),
        ),
        ShardRequest::Count { filter, .. } => {
            let f = filter.as_deref().map(parse).transpose()?;
            ShardResponse::Count(c.count(f.as_ref()) as u64)
        }
        ShardRequest::Scroll {
            filter,
            from,
            limit,
            with_vectors,
            ..
        } => {
            let f = filter.as_deref().map(parse).transpose()?;
            let (page, _) = c.scroll(f.as_ref(), Some(from), limit.min(MAX_SCROLL));
            let mut vectors: HashMap<u64, Vec<f32>> = if with_vectors {
                let ids: Vec<u64> = page.iter().map(|(id, _)| *id).collect();
                c.get(&ids).into_iter().collect()
            } else {
                HashMap::new()
            };
            ShardResponse::Points(
                page.into_iter()
                    .map(|(id, payload)| Point {
                        id,
                        vector: vectors.remove(&id).unwrap_or_default(),
                        payload,
                    })
                    .collect(),
            )
        }
        ShardRequest::Describe { .. } => {
            let v = c.version();
            ShardResponse::Described(ShardState {
                count: v.len() as u64,
                trained: v.quantizers.is_some(),
                index: c.meta().index,
                segments: v.segments.len() as u32 + 1,
                memory_bytes: v.data_bytes() as u64,
                drift: c.drift().ratio().unwrap_or(0.0),
                applied: c.last_seq(),
            })
        }
        ShardRequest::Progress { .. } => ShardResponse::Progress(c.last_seq()),
        // Led by the node ([`TrainingLead`]), never answered here.
        ShardRequest::Train { .. } => {
            ShardResponse::Failed("a training is not answered here".into())
        }
    })
}

/// Answers other nodes' requests on this node's subject until `stop` turns true.
async fn answer_requests<B: Backend + Clone + Send + Sync + 'static>(
    shared: Arc<Shared<B>>,
    mut requests: async_nats::Subscriber,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let msg = tokio::select! {
            _ = stop.changed() => return,
            m = requests.next() => m,
        };
        let Some(msg) = msg else { return };
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let answer = match serde_json::from_slice::<ShardRequest>(&msg.payload) {
                Ok(r) => {
                    // Every log line of the answer names the caller's request.
                    let s = r.shard();
                    let span = tracing::info_span!(
                        "shard_request",
                        request_id = %s.request_id,
                        collection = %s.collection,
                        shard = s.shard,
                    );
                    let kind = r.kind();
                    let started = Instant::now();
                    let answer = shared.answer(r).instrument(span.clone()).await;
                    span.in_scope(|| match &answer {
                        ShardResponse::Failed(why) => {
                            tracing::info!(kind, why = %why, "a replica request failed here")
                        }
                        _ => tracing::debug!(
                            kind,
                            ms = started.elapsed().as_millis() as u64,
                            "answered a replica request"
                        ),
                    });
                    answer
                }
                Err(e) => ShardResponse::Failed(format!("not a request: {e}")),
            };
            let mut body = serde_json::to_vec(&answer).unwrap_or_default();
            let limit = shared.client.server_info().max_payload;
            if limit > 0 && body.len() > limit {
                let too_large = ShardResponse::Failed(format!(
                    "the answer takes {} bytes, above the {limit} a NATS message may hold; ask for fewer points",
                    body.len()
                ));
                body = serde_json::to_vec(&too_large).unwrap_or_default();
            }
            if let Err(e) = shared.client.publish(reply, body.into()).await {
                tracing::debug!(error = %e, "answering a node failed");
            }
        });
    }
}

/// A node as the target of the catalog log.
struct CatalogTarget<B: Backend + Clone + Send + Sync + 'static>(Arc<Shared<B>>);

impl<B: Backend + Clone + Send + Sync + 'static> Target for CatalogTarget<B> {
    type Entry = CatalogEntry;

    fn log_name(&self) -> String {
        crate::catalog_log::STREAM.into()
    }

    fn next_seq(&self) -> u64 {
        *self.0.applied.borrow() + 1
    }

    async fn read(&self, start: u64) -> Result<Entries<CatalogEntry>> {
        Ok(self.0.catalog.read_from(start).await?.boxed())
    }

    async fn last_seq(&self) -> Result<u64> {
        self.0.catalog.last_seq().await
    }

    async fn apply(&self, seq: u64, entry: CatalogEntry) -> Result<()> {
        let shared = &self.0;
        let _placing = shared.placing.lock().await;
        let dropped = match &entry {
            CatalogEntry::Drop { name } => Some(name.clone()),
            CatalogEntry::Create { .. } | CatalogEntry::Describe { .. } => None,
        };
        let changed = match shared.topology.write() {
            Ok(mut t) => t.apply(seq, entry),
            Err(p) => p.into_inner().apply(seq, entry),
        };
        match (changed, dropped) {
            (Some(_), Some(name)) => shared.remove_replicas(&name).await,
            (Some(c), None) => {
                for s in c.shards_on(&shared.node_id) {
                    shared.place_replica(&c, s).await;
                }
            }
            (None, _) => {}
        }
        shared.applied.send_replace(seq);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_folder_names_round_trip() {
        for (name, inc, shard) in [
            ("docs", 1u64, 0u32),
            ("a.b.c", 77, 1023),
            ("x-1_y", u64::MAX, 5),
        ] {
            let local = local_name(name, inc, shard);
            assert!(quiver_store::valid_folder_name(&local) || local.len() > 128);
            assert_eq!(parse_local(&local), Some((name.to_string(), inc, shard)));
        }
        assert_eq!(parse_local("docs"), None);
        assert_eq!(parse_local("docs.x.1"), None);
        assert_eq!(parse_local(".1.2"), None);
    }

    #[test]
    fn merge_orders_by_distance_then_id_in_the_metric_direction() {
        let a = vec![vec![(1, 0.5), (4, 2.0)], vec![]];
        let b = vec![vec![(3, 0.5), (2, 1.0)], vec![(9, 1.0)]];
        let m = merge(vec![a.clone(), b.clone()], 2, 3, false);
        assert_eq!(m[0], vec![(1, 0.5), (3, 0.5), (2, 1.0)]);
        assert_eq!(m[1], vec![(9, 1.0)]);
        let m = merge(vec![a, b], 2, 2, true);
        assert_eq!(m[0], vec![(4, 2.0), (2, 1.0)]);
    }

    #[test]
    fn a_write_token_names_each_shards_op() {
        let t = WriteToken {
            incarnation: 4,
            shards: vec![(0, 5), (2, 9)],
        };
        assert_eq!((t.seq_of(0), t.seq_of(1), t.seq_of(2)), (5, 0, 9));
        assert!(t.is_for(4) && !t.is_for(5));
        assert!(WriteToken::default().is_for(5));
    }
}
