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
    /// The number of the last catalog entry applied here.
    applied: watch::Sender<u64>,
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
        });
        for name in shared.folder.names()? {
            let f = shared.folder.clone();
            let (b, cfg) = (shared.backend.clone(), shared.cfg.clone());
            let path = f.path(&name);
            let c = tokio::task::spawn_blocking(move || Collection::open(&path, b, cfg))
                .await
                .map_err(|e| ClusterError::broker("opening a collection", e))??;
            shared.hold(&name, Arc::new(c)).await?;
        }
        let (stop, stop_rx) = watch::channel(false);
        let catalog_task = tokio::spawn(follow(CatalogTarget(shared.clone()), stop_rx));
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
    /// here first), and waits until this node has applied it.
    async fn append_catalog(
        &self,
        op: CatalogOp,
        check: impl Fn(&CollectionsFolder) -> Result<()>,
    ) -> Result<()> {
        let id = self.shared.message_id();
        loop {
            let last = self.sync_catalog().await?;
            check(&self.shared.folder)?;
            if let Some(a) = self.shared.catalog.append_after(last, &id, &op).await? {
                return self.wait_catalog(a.seq).await;
            }
        }
    }

    /// Waits until this node has applied every catalog entry appended so far; returns the
    /// last one's number.
    pub async fn sync_catalog(&self) -> Result<u64> {
        let last = self.shared.catalog.last_seq().await?;
        self.wait_catalog(last).await?;
        Ok(last)
    }

    /// Waits until this node has applied catalog entry `seq`.
    async fn wait_catalog(&self, seq: u64) -> Result<()> {
        let mut rx = self.shared.applied.subscribe();
        loop {
            if *rx.borrow_and_update() >= seq {
                return Ok(());
            }
            if self.catalog_task.is_finished() || rx.changed().await.is_err() {
                return Err(ClusterError::Broker {
                    context: "following the catalog",
                    reason: "the node's catalog follower stopped".into(),
                });
            }
        }
    }

    /// Appends the write `op` to `collection`'s log under the message id `id` (a retry with
    /// the same id is applied once) after checking it as every replica will; returns its
    /// number.
    pub async fn write(&self, collection: &str, id: &str, op: Op) -> Result<u64> {
        let (c, log) = {
            let held = self.shared.held.lock().await;
            let r = held
                .get(collection)
                .ok_or_else(|| ClusterError::NotFound(collection.into()))?;
            (r.collection.clone(), r.log.clone())
        };
        c.check_ops(std::slice::from_ref(&op))?;
        Ok(log.append(id, &op).await?.seq)
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

    /// Stops following the logs (every collection is left closed cleanly, as it was applied).
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

    /// Starts following `name`'s log into `c`.
    async fn hold(&self, name: &str, c: Arc<Collection<B>>) -> Result<()> {
        let incarnation = self
            .folder
            .live(name)
            .ok_or_else(|| ClusterError::NotFound(name.into()))?
            .created_at;
        let log = ShardLog::open(&self.js, name, incarnation, 0, self.replicas).await?;
        let follower = Follower::start(log.clone(), c.clone());
        self.held.lock().await.insert(
            name.to_string(),
            Replica {
                collection: c,
                log,
                follower,
            },
        );
        Ok(())
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
                .map_err(|e| ClusterError::broker("applying a catalog entry", e))??;
        match (applied, name) {
            (CatalogApplied::Created(c), Some(name)) => self.hold(&name, Arc::new(*c)).await?,
            (CatalogApplied::Dropped, _) => {
                // Its log goes with it (any node may get there first).
                if let Some(log) = log {
                    let _ = log.delete().await;
                }
            }
            _ => {}
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
