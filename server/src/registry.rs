//! The set of collections a server holds: created, dropped, listed and looked up by name,
//! opened from the data directory at start and drained and checkpointed at shutdown.
//!
//! The folders on disk are the store's ([`CollectionsFolder`]: layout, leftovers, durable
//! removal); this module serves them. Long operations (opening files, loading an index) run
//! with no lock held; a name being created or dropped is reserved meanwhile, so a Drop and a
//! Create of one name cannot race.
//! A collection that fails to open is reported (log, GetCollection, ListCollections) and the
//! others serve.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use quiver_store::{valid_name, CollectionMeta, CollectionsFolder, Optimizer};
use tonic::Status;

use crate::backend::AnyBackend;
use crate::collection::{Collection, StoreCollection};
use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::status::from_store;

/// All collections of a server.
pub struct Registry {
    folder: CollectionsFolder,
    cfg: ServerConfig,
    metrics: Metrics,
    collections: RwLock<HashMap<String, Arc<Collection>>>,
    /// Names being created, loaded or dropped.
    busy: Mutex<HashSet<String>>,
    /// Collections that failed to open, with why.
    failed: RwLock<HashMap<String, String>>,
    /// Collections being loaded from an index file in the background.
    loading: RwLock<HashSet<String>>,
    optimizer: Optimizer<AnyBackend>,
    writes: crate::writes::WritePool,
    write_budget: crate::writes::WriteBudget,
    limiter: Arc<crate::ratelimit::RateLimiter>,
    /// In cluster mode, the node collection calls go through.
    cluster: std::sync::OnceLock<Arc<crate::cluster::ClusterFront>>,
}

/// Why the server could not open its data.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory cannot be used.
    #[error("data directory: {0}")]
    DataDir(quiver_store::StoreError),
    /// A background thread could not be started.
    #[error("starting {what}'s thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A collection given on the command line failed to open.
    #[error("collection {name}: {message}")]
    Collection {
        /// Its name.
        name: String,
        /// Why.
        message: String,
    },
}

struct Reservation<'a> {
    registry: &'a Registry,
    name: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.registry.busy.lock().remove(&self.name);
    }
}

impl Registry {
    /// Opens every collection the store's collections folder lists (`DATA_DIR/collections/`)
    /// and the configured index files.
    pub fn open(cfg: ServerConfig, metrics: Metrics) -> Result<Registry, OpenError> {
        let folder = CollectionsFolder::open(&cfg.data_dir.join("collections"))
            .map_err(OpenError::DataDir)?;
        let mut map = HashMap::new();
        let mut failed = HashMap::new();
        for name in folder.names().map_err(OpenError::DataDir)? {
            let p = folder.path(&name);
            match StoreCollection::open(&p, cfg.backend.clone(), cfg.store.clone()) {
                Ok(c) => {
                    let v = c.version();
                    tracing::info!(collection = %name, vectors = v.len(), segments = v.segments.len() + 1, trained = v.quantizers.is_some(), "opened");
                    map.insert(name, Arc::new(Collection::new(c)));
                }
                Err(e) => {
                    let e = match &e {
                        // The store's recovery mode is this server's flag.
                        quiver_store::StoreError::Corrupt { path, .. }
                            if path.extension().is_some_and(|x| x == "log") =>
                        {
                            format!("{e} (start the server with --wal-recover for that)")
                        }
                        _ => e.to_string(),
                    };
                    tracing::error!(collection = %name, error = %e, "collection failed to open; serving the others");
                    failed.insert(name, e);
                }
            }
        }
        let optimizer = Optimizer::start(
            Duration::from_millis(100),
            cfg.store.write_nice,
            cfg.store.background_threads,
        )
        .map_err(|source| OpenError::Thread {
            what: "the optimizer",
            source,
        })?;
        let registry = Registry {
            folder,
            cfg: cfg.clone(),
            metrics,
            collections: RwLock::new(map),
            busy: Mutex::new(HashSet::new()),
            failed: RwLock::new(failed),
            loading: RwLock::new(HashSet::new()),
            optimizer,
            writes: crate::writes::WritePool::start(cfg.store.write_nice),
            write_budget: crate::writes::WriteBudget::new(cfg.limits.max_write_bytes),
            limiter: Arc::new(crate::ratelimit::RateLimiter::new(cfg.rate_limits)),
            cluster: std::sync::OnceLock::new(),
        };
        for s in &cfg.static_collections {
            let fail = |message: String| OpenError::Collection {
                name: s.name.clone(),
                message,
            };
            if !valid_name(&s.name) {
                return Err(fail("invalid name".into()));
            }
            let exists = registry.collections.read().contains_key(&s.name);
            if s.writable {
                if exists {
                    tracing::info!(collection = %s.name, "already in the data directory; not importing {} again", s.path.display());
                    continue;
                }
                let file = std::fs::File::open(&s.path)
                    .map_err(|e| fail(format!("{}: {e}", s.path.display())))?;
                registry
                    .load_index(&s.name, &s.path, file)
                    .map_err(|st| fail(st.message().to_string()))?;
            } else {
                if exists {
                    return Err(fail(
                        "a collection of that name is already in the data directory".into(),
                    ));
                }
                let index =
                    quiver_engine::persist::load(&s.path).map_err(|e| fail(e.to_string()))?;
                let c = StoreCollection::read_only(&s.name, index, cfg.backend.clone())
                    .map_err(|e| fail(e.to_string()))?;
                registry
                    .collections
                    .write()
                    .insert(s.name.clone(), Arc::new(Collection::new(c)));
            }
        }
        for c in registry.collections.read().values() {
            registry.optimizer.register(&c.store);
        }
        Ok(registry)
    }

    /// Starts every collection's batcher (inside a Tokio runtime).
    pub fn start(&self) {
        for (name, c) in self.collections.read().iter() {
            c.start(name, self.cfg.batching.clone(), self.metrics.clone());
        }
    }

    /// A collection by name.
    pub fn get(&self, name: &str) -> Result<Arc<Collection>, Status> {
        if let Some(c) = self.collections.read().get(name) {
            return Ok(c.clone());
        }
        // An alias stands for its collection.
        if let Some(target) = self.folder.resolve(name).filter(|t| t != name) {
            if let Some(c) = self.collections.read().get(&target) {
                return Ok(c.clone());
            }
        }
        if let Some(why) = self.failed.read().get(name) {
            return Err(Status::unavailable(format!(
                "collection {name:?} failed to open: {why}"
            )));
        }
        if self.is_loading(name) {
            return Err(Status::unavailable(format!(
                "collection {name:?} is loading its index; retry when GetCollection says ready"
            )));
        }
        Err(Status::not_found(format!(
            "collection {name:?} does not exist"
        )))
    }

    /// The aliases: alias → collection.
    pub fn aliases(&self) -> std::collections::BTreeMap<String, String> {
        self.folder.aliases()
    }

    /// The collection `name` stands for (itself, or an alias's collection), if any.
    pub fn resolve(&self, name: &str) -> Option<String> {
        self.folder.resolve(name)
    }

    /// Changes the aliases (all or none, durable when it returns; blocks on the catalog's
    /// fsync).
    pub fn update_aliases(&self, actions: Vec<quiver_store::AliasAction>) -> Result<(), Status> {
        self.folder
            .update_aliases(actions)
            .map(|_| ())
            .map_err(|e| match e {
                // A collection or alias an action names that does not exist: 404, as Qdrant.
                quiver_store::StoreError::Precondition(m) if m.contains("does not exist") => {
                    Status::not_found(format!("actions: {m}"))
                }
                quiver_store::StoreError::Precondition(m) => {
                    Status::invalid_argument(format!("actions: {m}"))
                }
                e => from_store(e),
            })
    }

    /// All collections, by name.
    pub fn list(&self) -> Vec<(String, Arc<Collection>)> {
        let mut v: Vec<_> = self
            .collections
            .read()
            .iter()
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Whether `name` is being loaded in the background.
    pub fn is_loading(&self, name: &str) -> bool {
        self.loading.read().contains(name)
    }

    /// Collections being loaded in the background, by name.
    pub fn loading(&self) -> Vec<String> {
        let mut v: Vec<String> = self.loading.read().iter().cloned().collect();
        v.sort();
        v
    }

    /// Collections that failed to open, with why.
    pub fn failed(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .failed
            .read()
            .iter()
            .map(|(a, b)| (a.clone(), b.clone()))
            .collect();
        v.sort();
        v
    }

    fn reserve(&self, name: &str) -> Result<Reservation<'_>, Status> {
        let mut busy = self.busy.lock();
        if busy.contains(name) {
            return Err(Status::unavailable(format!(
                "collection {name:?} is being created, loaded or dropped; retry"
            )));
        }
        if self.collections.read().contains_key(name) || self.failed.read().contains_key(name) {
            return Err(Status::already_exists(format!(
                "collection {name:?} already exists"
            )));
        }
        busy.insert(name.to_string());
        Ok(Reservation {
            registry: self,
            name: name.to_string(),
        })
    }

    fn insert(&self, name: &str, c: StoreCollection) -> Arc<Collection> {
        let c = Arc::new(Collection::new(c));
        c.start(name, self.cfg.batching.clone(), self.metrics.clone());
        self.optimizer.register(&c.store);
        self.collections.write().insert(name.to_string(), c.clone());
        c
    }

    /// Creates an empty collection (blocking: writes its folder).
    pub fn create(&self, meta: CollectionMeta) -> Result<Arc<Collection>, Status> {
        let name = meta.name.clone();
        let _r = self.reserve(&name)?;
        let c = self
            .folder
            .create(meta, self.cfg.backend.clone(), self.cfg.store.clone())
            .map_err(|e| self.failed_half_way(&name, e))?;
        Ok(self.insert(&name, c))
    }

    /// A create that failed: when the store still lists the collection (its folder work and
    /// the undo both failed), the name reports the failure until dropped.
    fn failed_half_way(&self, name: &str, e: quiver_store::StoreError) -> Status {
        if self.folder.is_live(name) {
            self.failed.write().insert(
                name.to_string(),
                format!("creating failed half-way: {e}; drop it"),
            );
        }
        from_store(e)
    }

    /// Creates a collection from an index file, open as `file` (`path` names it; blocking, no
    /// lock held while it loads: the name is reserved).
    pub fn load_index(
        &self,
        name: &str,
        path: &std::path::Path,
        file: std::fs::File,
    ) -> Result<Arc<Collection>, Status> {
        let _r = self.reserve(name)?;
        self.load_index_reserved(name, path, &file)
    }

    /// Starts loading an index file as a new collection on a blocking thread of the current
    /// tokio runtime and returns at once: meanwhile the name is reserved and reported
    /// "loading"; a failure is then reported like a collection that failed to open (until the
    /// name is dropped).
    pub fn load_index_in_background(
        self: &Arc<Self>,
        name: &str,
        path: &std::path::Path,
        file: std::fs::File,
    ) -> Result<(), Status> {
        let r = self.reserve(name)?;
        // The reservation's release is done by the thread (after the outcome is recorded).
        std::mem::forget(r);
        self.loading.write().insert(name.to_string());
        let (registry, name, path) = (self.clone(), name.to_string(), path.to_path_buf());
        // On a blocking thread of the runtime (opening a collection starts its batcher task).
        tokio::task::spawn_blocking(move || {
            // Whatever happens (a panic included), the name stops being "loading" and busy.
            struct Release(Arc<Registry>, String);
            impl Drop for Release {
                fn drop(&mut self) {
                    self.0.loading.write().remove(&self.1);
                    self.0.busy.lock().remove(&self.1);
                }
            }
            let _release = Release(registry.clone(), name.clone());
            if let Err(s) = registry.load_index_reserved(&name, &path, &file) {
                tracing::error!(collection = %name, path = %path.display(), error = %s.message(), "loading the index failed");
                registry.failed.write().insert(
                    name.clone(),
                    format!("loading {}: {}", path.display(), s.message()),
                );
            }
        });
        Ok(())
    }

    /// [`Self::load_index`] with the name already reserved.
    fn load_index_reserved(
        &self,
        name: &str,
        path: &std::path::Path,
        file: &std::fs::File,
    ) -> Result<Arc<Collection>, Status> {
        // Served from a private copy, never from the client's file: a file truncated or
        // rewritten afterwards (or while this runs) cannot fault the server or change codes.
        let copy = self.folder.import_path(name);
        let copied = copy_import(file, path, &copy);
        let index = copied.and_then(|copy_file| {
            quiver_engine::persist::load_file(&copy_file, path)
                .map_err(crate::status::from_client_file)
        });
        // The map keeps the copy's pages; its name is not needed once loaded (or failed).
        let _ = std::fs::remove_file(&copy);
        let index = index?;
        let p = index.params().clone();
        let meta = CollectionMeta {
            name: name.to_string(),
            dim: p.dim,
            metric: p.metric.name().to_string(),
            index: quiver_store::IndexConfig::of_index(&p),
            fields: Vec::new(),
            settings: serde_json::Value::Null,
        };
        let c = self
            .folder
            .create(meta, self.cfg.backend.clone(), self.cfg.store.clone())
            .map_err(|e| self.failed_half_way(name, e))?;
        if let Err(e) = c.load_index(index) {
            if let Err(r) = self.folder.remove(name, Some(&c)) {
                tracing::warn!(collection = %name, error = %r, "removing a failed import's collection failed; drop it");
            }
            return Err(self.failed_half_way(name, e));
        }
        Ok(self.insert(name, c))
    }

    /// Removes a collection and its files. Cancel-safe: the work runs as a task of its own that
    /// keeps the name reserved until the files are gone, so a client giving up (deadline,
    /// disconnect) neither stops it half-way nor lets a Create of that name start while the
    /// old collection is still closing (its training ending) and its folder still to move.
    /// Acknowledged only once the folder's removal is durable (moved aside and the parent
    /// fsynced); a failure is an error, and the name then reports the failure until dropped
    /// again.
    pub async fn drop_collection(self: &Arc<Self>, name: &str) -> Result<(), Status> {
        let c = {
            let mut busy = self.busy.lock();
            if busy.contains(name) {
                return Err(Status::unavailable(format!(
                    "collection {name:?} is being created, loaded or dropped; retry"
                )));
            }
            let removed = self.collections.write().remove(name);
            match removed {
                Some(c) => {
                    busy.insert(name.to_string());
                    Some(c)
                }
                None => {
                    if self.failed.write().remove(name).is_none() {
                        return Err(Status::not_found(format!(
                            "collection {name:?} does not exist"
                        )));
                    }
                    busy.insert(name.to_string());
                    None
                }
            }
        };
        let registry = self.clone();
        let name = name.to_string();
        let name_for_failure = name.clone();
        let task = tokio::spawn(async move {
            let _r = Reservation {
                registry: &registry,
                name: name.clone(),
            };
            let r = registry.remove_files(&name, c).await;
            if let Err(e) = &r {
                tracing::error!(collection = %name, error = %e.message(), "dropping failed");
                registry.failed.write().insert(
                    name.clone(),
                    format!("dropping failed: {}; drop it again", e.message()),
                );
            }
            r
        });
        match task.await {
            Ok(r) => r,
            Err(e) => {
                let m = format!("dropping failed: {e}; drop it again");
                self.failed.write().insert(name_for_failure, m.clone());
                Err(Status::internal(m))
            }
        }
    }

    /// The part of a drop after the name left the map: drains the collection, closes it
    /// (waiting for a running structural step: after it the old handle writes nothing), moves
    /// its folder aside durably, then deletes it.
    async fn remove_files(&self, name: &str, c: Option<Arc<Collection>>) -> Result<(), Status> {
        let read_only = c.as_ref().is_some_and(|c| c.store.is_read_only());
        if let Some(c) = &c {
            c.drain().await;
            self.metrics.vectors.with_label_values(&[name]).set(0);
        }
        if read_only {
            return Ok(());
        }
        let folder = self.folder.clone();
        let name = name.to_string();
        let store = c.map(|c| c.store.clone());
        tokio::task::spawn_blocking(move || folder.remove(&name, store.as_deref()))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::unavailable(e.to_string()))
    }

    /// Answers every queued search, then checkpoints every writable collection (and stops
    /// the cluster node, in cluster mode).
    pub async fn shutdown(&self) {
        if let Some(front) = self.cluster() {
            front.stop().await;
        }
        let all = self.list();
        // A training running now ends at its next step instead of holding the checkpoint back
        // (a supervisor's SIGKILL would otherwise come first).
        for (_, c) in &all {
            c.store.stop_training();
        }
        for (_, c) in &all {
            c.drain().await;
        }
        for (name, c) in all {
            if c.store.is_read_only() {
                continue;
            }
            let store = c.store.clone();
            let r = tokio::task::spawn_blocking(move || {
                quiver_store::folder::checkpoint_and_close(&store)
            })
            .await;
            match r {
                Ok(Ok(bytes)) => tracing::info!(collection = %name, bytes, "checkpointed"),
                Ok(Err(e)) => {
                    tracing::error!(collection = %name, error = %e, "checkpoint failed; the log keeps every write")
                }
                Err(e) => tracing::error!(collection = %name, error = %e, "checkpoint failed"),
            }
        }
    }

    /// Puts the server in cluster mode: collection calls go through `front` from now on.
    pub fn join_cluster(&self, front: Arc<crate::cluster::ClusterFront>) {
        let _ = self.cluster.set(front);
    }

    /// The cluster node collection calls go through, in cluster mode.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::ClusterFront>> {
        self.cluster.get()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The per-client rate limiter.
    pub fn limiter(&self) -> &Arc<crate::ratelimit::RateLimiter> {
        &self.limiter
    }

    /// The threads writes run on.
    pub fn writes(&self) -> &crate::writes::WritePool {
        &self.writes
    }

    /// The bytes of writes the server holds in flight at most.
    pub fn write_budget(&self) -> &crate::writes::WriteBudget {
        &self.write_budget
    }

    /// The server configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }
}

/// Copies an import file (open as `file`, named `path` in errors) to `copy` with reads, not a
/// map (a file truncated meanwhile gives a short copy that fails its checksum, not a fault),
/// and returns the copy opened for reading.
fn copy_import(
    file: &std::fs::File,
    path: &std::path::Path,
    copy: &std::path::Path,
) -> Result<std::fs::File, Status> {
    let failed = |what: &str, e: std::io::Error| {
        Status::internal(format!(
            "{what} {} to {}: {e}",
            path.display(),
            copy.display()
        ))
    };
    let mut out = std::fs::File::create(copy).map_err(|e| failed("copying", e))?;
    let mut src = file;
    std::io::Seek::seek(&mut src, std::io::SeekFrom::Start(0)).map_err(|e| failed("copying", e))?;
    std::io::copy(&mut src, &mut out).map_err(|e| failed("copying", e))?;
    drop(out);
    std::fs::File::open(copy).map_err(|e| failed("opening the copy of", e))
}
