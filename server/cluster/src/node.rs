//! A node of the cluster: its collections folder kept equal to the catalog log (every entry
//! applied with its number, [`quiver_store::CollectionsFolder::apply`]), and for every
//! collection a replica following that collection's log ([`Follower`]). Creates and drops are
//! catalog entries appended by compare-and-set against the last entry this node has applied
//! (so the log never holds a create of an existing name); writes are checked against the
//! collection and appended to its log, and every replica applies them with the same numbers.
//! Today every node holds every collection, one shard each; placement and routing come next.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use quiver_engine::backend::Backend;
use quiver_store::wal::Op;
use quiver_store::{
    CatalogApplied, CatalogOp, Collection, CollectionMeta, CollectionsFolder, StoreConfig,
};
use tokio::sync::{watch, Mutex};

use crate::catalog_log::CatalogLog;
use crate::error::{ClusterError, Result};
use crate::follower::Follower;
use crate::shard_log::ShardLog;
use crate::tail::{follow, Entries, Target};

/// A collection held by this node.
struct Replica<B: Backend + Clone + Send + Sync + 'static> {
    collection: Arc<Collection<B>>,
    log: ShardLog,
    follower: Follower,
}

struct Shared<B: Backend + Clone + Send + Sync + 'static> {
    js: async_nats::jetstream::Context,
    catalog: CatalogLog,
    folder: CollectionsFolder,
    backend: B,
    cfg: StoreConfig,
    /// Copies of each stream on a JetStream cluster.
    replicas: usize,
    node_id: String,
    next_id: AtomicU64,
    held: Mutex<HashMap<String, Replica<B>>>,
    /// Collections this node lists but cannot serve, with why (failed to open, or their log
    /// could not be opened).
    failed: std::sync::Mutex<HashMap<String, String>>,
    /// The number of the last catalog entry applied here.
    applied: watch::Sender<u64>,
    /// Why the catalog follower stopped, once it has.
    catalog_stopped: watch::Sender<Option<String>>,
}

/// A running node; [`Node::stop`] stops its followers.
pub struct Node<B: Backend + Clone + Send + Sync + 'static> {
    shared: Arc<Shared<B>>,
    stop: watch::Sender<bool>,
    catalog_task: tokio::task::JoinHandle<Result<()>>,
}

impl<B: Backend + Clone + Send + Sync + 'static> Node<B> {
    /// Starts a node named `node_id` over `folder` (opened by the caller, which holds its
    /// lock), with streams of `replicas` copies: opens the collections it holds, starts their
    /// followers and the catalog's.
    pub async fn start(
        js: async_nats::jetstream::Context,
        folder: CollectionsFolder,
        backend: B,
        cfg: StoreConfig,
        replicas: usize,
        node_id: &str,
    ) -> Result<Node<B>> {
        let catalog = CatalogLog::open(&js, replicas).await?;
        let shared = Arc::new(Shared {
            js,
            catalog,
            applied: watch::channel(folder.catalog_seq()).0,
            folder,
            backend,
            cfg,
            replicas,
            node_id: node_id.to_string(),
            next_id: AtomicU64::new(0),
            held: Mutex::new(HashMap::new()),
            failed: std::sync::Mutex::new(HashMap::new()),
            catalog_stopped: watch::channel(None).0,
        });
        // A folder that has applied more of the catalog than the cluster's log holds is not
        // this cluster's (or the log was lost): its numbers would not be the log's.
        let last = shared.catalog.last_seq().await?;
        if shared.folder.catalog_seq() > last {
            return Err(ClusterError::Behind {
                stream: crate::catalog_log::STREAM.into(),
                last,
                wanted: shared.folder.catalog_seq() + 1,
            });
        }
        for name in shared.folder.names()? {
            let f = shared.folder.clone();
            let (b, cfg) = (shared.backend.clone(), shared.cfg.clone());
            let path = f.path(&name);
            let opened = tokio::task::spawn_blocking(move || Collection::open(&path, b, cfg))
                .await
                .map_err(|e| ClusterError::broker("opening a collection", e))?;
            match opened {
                Ok(c) => shared.hold(&name, Arc::new(c)).await,
                Err(e) => shared.fail(&name, format!("it does not open: {e}")),
            }
        }
        let (stop, stop_rx) = watch::channel(false);
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
            catalog_task,
        })
    }

    /// Creates `meta.name` across the cluster; returns once this node holds it. Refused when
    /// the name exists.
    pub async fn create_collection(&self, meta: CollectionMeta) -> Result<()> {
        let name = meta.name.clone();
        if !quiver_store::valid_name(&name) {
            return Err(ClusterError::Store(quiver_store::StoreError::Invalid {
                field: "name",
                reason: format!("{name:?} is not a collection name"),
            }));
        }
        // Every node opens what the entry describes: refused here, before it is in the log.
        meta.check()?;
        let op = CatalogOp::Create {
            name: name.clone(),
            meta: Some(meta),
            replica: true,
        };
        self.append_catalog(op, |f| {
            if f.is_live(&name) {
                Err(ClusterError::Exists(name.clone()))
            } else {
                Ok(())
            }
        })
        .await
    }

    /// Drops `name` across the cluster; returns once this node has removed it.
    pub async fn drop_collection(&self, name: &str) -> Result<()> {
        let op = CatalogOp::Drop { name: name.into() };
        self.append_catalog(op, |f| {
            if f.is_live(name) {
                Ok(())
            } else {
                Err(ClusterError::NotFound(name.into()))
            }
        })
        .await
    }

    /// Appends `op` to the catalog once `check` passes against every entry so far (applied
    /// here first), and waits until this node has applied it. An append whose answer was
    /// lost is sent again with the same id and the same expected last entry; if that is
    /// refused because the entry after it is the first one's (the broker checks the expected
    /// entry before repeats), the append is done.
    async fn append_catalog(
        &self,
        op: CatalogOp,
        check: impl Fn(&CollectionsFolder) -> Result<()>,
    ) -> Result<()> {
        let id = self.shared.message_id();
        for _ in 0..100 {
            let last = self.sync_catalog().await?;
            check(&self.shared.folder)?;
            let mut tries = 0;
            let appended = loop {
                match self.shared.catalog.append_after(last, &id, &op).await {
                    Err(ClusterError::Broker { .. }) if tries < 5 => {
                        tries += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(100 << tries)).await;
                    }
                    r => break r?,
                }
            };
            if let Some(a) = appended {
                return self.wait_catalog(a.seq).await;
            }
            if tries > 0 && self.shared.catalog.is_entry(last + 1, &id).await? {
                return self.wait_catalog(last + 1).await;
            }
        }
        Err(ClusterError::Broker {
            context: "appending to the catalog",
            reason: "other entries kept coming first; retry".into(),
        })
    }

    /// Waits until this node has applied every catalog entry appended so far; returns the
    /// last one's number.
    pub async fn sync_catalog(&self) -> Result<u64> {
        let last = self.shared.catalog.last_seq().await?;
        self.wait_catalog(last).await?;
        Ok(last)
    }

    /// Waits until this node has applied catalog entry `seq` (an error once its catalog
    /// follower has stopped).
    async fn wait_catalog(&self, seq: u64) -> Result<()> {
        let mut applied = self.shared.applied.subscribe();
        let mut stopped = self.shared.catalog_stopped.subscribe();
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
            }
        }
    }

    /// Appends the write `op` to `collection`'s log under the message id `id` (a retry with
    /// the same id is applied once) after checking it as every replica will; returns its
    /// number.
    pub async fn write(&self, collection: &str, id: &str, op: Op) -> Result<u64> {
        let (c, log) = {
            let held = self.shared.held.lock().await;
            let Some(r) = held.get(collection) else {
                return Err(match self.shared.failed(collection) {
                    Some(reason) => ClusterError::Unavailable {
                        name: collection.into(),
                        reason,
                    },
                    None => ClusterError::NotFound(collection.into()),
                });
            };
            // Writes its replica here would never apply are not taken.
            if r.follower.has_stopped() {
                return Err(ClusterError::Unavailable {
                    name: collection.into(),
                    reason: "its log follower stopped (see the node's log)".into(),
                });
            }
            (r.collection.clone(), r.log.clone())
        };
        c.check_ops(std::slice::from_ref(&op))?;
        Ok(log.append(id, &op).await?.seq)
    }

    /// Collections this node lists but cannot serve, with why, sorted.
    pub fn failed(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .shared
            .failed
            .lock()
            .map(|f| f.iter().map(|(a, b)| (a.clone(), b.clone())).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Waits until this node's replica of `collection` has applied op `seq` (read-your-writes).
    pub async fn wait_applied(&self, collection: &str, seq: u64) -> Result<()> {
        let mut rx = {
            let held = self.shared.held.lock().await;
            held.get(collection)
                .ok_or_else(|| ClusterError::NotFound(collection.into()))?
                .follower
                .progress()
        };
        loop {
            if *rx.borrow_and_update() >= seq {
                return Ok(());
            }
            if rx.changed().await.is_err() {
                return Err(ClusterError::Broker {
                    context: "following a collection's log",
                    reason: format!("the follower of {collection:?} stopped"),
                });
            }
        }
    }

    /// This node's replica of `collection`.
    pub async fn collection(&self, collection: &str) -> Option<Arc<Collection<B>>> {
        self.shared
            .held
            .lock()
            .await
            .get(collection)
            .map(|r| r.collection.clone())
    }

    /// The collections this node holds, sorted.
    pub async fn collections(&self) -> Vec<String> {
        let mut v: Vec<String> = self.shared.held.lock().await.keys().cloned().collect();
        v.sort();
        v
    }

    /// The number of the last catalog entry applied here.
    pub fn catalog_applied(&self) -> u64 {
        *self.shared.applied.borrow()
    }

    /// Stops following the logs (each collection holds what it has applied; nothing is
    /// checkpointed: the next start replays its own log).
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        let r = match self.catalog_task.await {
            Ok(r) => r,
            Err(e) => Err(ClusterError::broker("following the catalog", e)),
        };
        let held: Vec<Replica<B>> = self
            .shared
            .held
            .lock()
            .await
            .drain()
            .map(|(_, r)| r)
            .collect();
        for rep in held {
            if let Err(e) = rep.follower.stop().await {
                tracing::warn!(error = %e, "a collection's follower had stopped");
            }
        }
        r
    }
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

    /// Records that `name` cannot be served here.
    fn fail(&self, name: &str, reason: String) {
        tracing::error!(collection = %name, reason = %reason, "collection not available on this node");
        if let Ok(mut f) = self.failed.lock() {
            f.insert(name.to_string(), reason);
        }
    }

    /// Why `name` cannot be served here, if it cannot.
    fn failed(&self, name: &str) -> Option<String> {
        self.failed.lock().ok().and_then(|f| f.get(name).cloned())
    }

    /// Starts following `name`'s log into `c` (its log opened with a few retries: a broker
    /// electing a leader answers late); a failure marks the collection failed here.
    async fn hold(&self, name: &str, c: Arc<Collection<B>>) {
        let Some(incarnation) = self.folder.live(name).map(|l| l.created_at) else {
            return;
        };
        let mut tries = 0;
        let log = loop {
            match ShardLog::open(&self.js, name, incarnation, 0, self.replicas).await {
                Ok(log) => break log,
                Err(e) if tries < 6 => {
                    tries += 1;
                    tracing::warn!(collection = %name, error = %e, "opening the collection's log failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(100 << tries)).await;
                }
                Err(e) => {
                    self.fail(name, format!("its log does not open: {e}"));
                    return;
                }
            }
        };
        let follower = Follower::start(log.clone(), c.clone());
        self.held.lock().await.insert(
            name.to_string(),
            Replica {
                collection: c,
                log,
                follower,
            },
        );
    }

    /// Applies catalog entry `seq` here.
    async fn apply_catalog(&self, seq: u64, op: CatalogOp) -> Result<()> {
        let dropping = match &op {
            CatalogOp::Drop { name } => self.held.lock().await.remove(name),
            _ => None,
        };
        let (handle, log) = match dropping {
            Some(r) => {
                if let Err(e) = r.follower.stop().await {
                    tracing::warn!(error = %e, "a dropped collection's follower had stopped");
                }
                (Some(r.collection), Some(r.log))
            }
            None => (None, None),
        };
        let (f, b, cfg) = (self.folder.clone(), self.backend.clone(), self.cfg.clone());
        let name = op.name().map(str::to_string);
        let applied =
            tokio::task::spawn_blocking(move || f.apply(seq, op, handle.as_deref(), b, cfg))
                .await
                .map_err(|e| ClusterError::broker("applying a catalog entry", e))?;
        match (applied, name) {
            (Ok(CatalogApplied::Created(c)), Some(name)) => {
                if let Ok(mut f) = self.failed.lock() {
                    f.remove(&name);
                }
                self.hold(&name, Arc::new(*c)).await
            }
            (Ok(CatalogApplied::Dropped), Some(name)) => {
                if let Ok(mut f) = self.failed.lock() {
                    f.remove(&name);
                }
                // Its log goes with it (any node may get there first).
                if let Some(log) = log {
                    if let Err(e) = log.delete().await {
                        tracing::debug!(log = log.stream(), error = %e, "deleting a dropped collection's log");
                    }
                }
            }
            (Ok(_), _) => {}
            // The entry is applied here (its number is the folder's) but its folder work
            // failed: the collection is reported, the catalog goes on.
            (Err(e), Some(name)) if self.folder.catalog_seq() >= seq => {
                self.fail(&name, format!("applying catalog entry {seq} failed: {e}"));
            }
            (Err(e), _) => return Err(e.into()),
        }
        self.applied.send_replace(seq);
        Ok(())
    }
}

/// A node as the target of the catalog log.
struct CatalogTarget<B: Backend + Clone + Send + Sync + 'static>(Arc<Shared<B>>);

impl<B: Backend + Clone + Send + Sync + 'static> Target for CatalogTarget<B> {
    type Entry = CatalogOp;

    fn log_name(&self) -> String {
        crate::catalog_log::STREAM.into()
    }

    fn next_seq(&self) -> u64 {
        self.0.folder.catalog_seq() + 1
    }

    async fn read(&self, start: u64) -> Result<Entries<CatalogOp>> {
        Ok(self.0.catalog.read_from(start).await?.boxed())
    }

    async fn apply(&self, seq: u64, op: CatalogOp) -> Result<()> {
        self.0.apply_catalog(seq, op).await
    }
}
