//! The set of collections a server holds: created, dropped, listed and looked up by name,
//! opened from the data directory at start and drained and flushed at shutdown.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;
use tonic::Status;

use crate::collection::{valid_name, Collection, Meta};
use crate::config::ServerConfig;
use crate::metrics::Metrics;

/// All collections of a server.
pub struct Registry {
    root: PathBuf,
    cfg: ServerConfig,
    metrics: Metrics,
    collections: RwLock<HashMap<String, Arc<Collection>>>,
}

/// Why the server could not open its data.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory cannot be used.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A collection failed to open.
    #[error("collection {name}: {message}")]
    Collection {
        /// Its name.
        name: String,
        /// Why.
        message: String,
    },
}

impl Registry {
    /// Opens every collection under `DATA_DIR/collections/` and the configured index files.
    pub fn open(cfg: ServerConfig, metrics: Metrics) -> Result<Registry, OpenError> {
        let root = cfg.data_dir.join("collections");
        std::fs::create_dir_all(&root).map_err(|source| OpenError::DataDir {
            path: root.clone(),
            source,
        })?;
        let mut map = HashMap::new();
        let entries = std::fs::read_dir(&root).map_err(|source| OpenError::DataDir {
            path: root.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| OpenError::DataDir {
                path: root.clone(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".dropped-") {
                let _ = std::fs::remove_dir_all(entry.path());
                continue;
            }
            if !valid_name(&name) || !entry.path().join("meta.json").exists() {
                continue;
            }
            let c = Collection::open(entry.path(), cfg.wal_snapshot_bytes, &cfg.backend).map_err(
                |s| OpenError::Collection {
                    name: name.clone(),
                    message: s.message().to_string(),
                },
            )?;
            tracing::info!(collection = %name, vectors = c.segment().len(), trained = c.segment().trained(), "opened");
            map.insert(name, Arc::new(c));
        }
        for s in &cfg.static_collections {
            let fail = |message: String| OpenError::Collection {
                name: s.name.clone(),
                message,
            };
            if !valid_name(&s.name) {
                return Err(fail("invalid name".into()));
            }
            let c = if s.writable {
                if map.contains_key(&s.name) {
                    tracing::info!(collection = %s.name, "already in the data directory; not importing {} again", s.path.display());
                    continue;
                }
                Collection::import(
                    &s.name,
                    &s.path,
                    root.join(&s.name),
                    cfg.wal_snapshot_bytes,
                    &cfg.backend,
                )
                .map_err(|st| fail(st.message().to_string()))?
            } else {
                if map.contains_key(&s.name) {
                    return Err(fail(
                        "a collection of that name is already in the data directory".into(),
                    ));
                }
                Collection::read_only(&s.name, &s.path, &cfg.backend)
                    .map_err(|e| fail(e.to_string()))?
            };
            map.insert(s.name.clone(), Arc::new(c));
        }
        Ok(Registry {
            root,
            cfg,
            metrics,
            collections: RwLock::new(map),
        })
    }

    /// Starts every collection's batcher (inside a Tokio runtime).
    pub fn start(&self) {
        for (name, c) in self.collections.read().iter() {
            c.start(name, self.cfg.batching.clone(), self.metrics.clone());
        }
    }

    /// A collection by name.
    pub fn get(&self, name: &str) -> Result<Arc<Collection>, Status> {
        self.collections
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("collection {name:?} does not exist")))
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

    /// Creates an empty collection (blocking: writes its folder).
    pub fn create(&self, meta: Meta) -> Result<Arc<Collection>, Status> {
        let mut map = self.collections.write();
        if map.contains_key(&meta.name) {
            return Err(Status::already_exists(format!(
                "collection {:?} already exists",
                meta.name
            )));
        }
        let name = meta.name.clone();
        let dir = self.root.join(&name);
        if dir.exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        let c = Arc::new(Collection::create(
            dir,
            meta,
            self.cfg.wal_snapshot_bytes,
            &self.cfg.backend,
        )?);
        c.start(&name, self.cfg.batching.clone(), self.metrics.clone());
        map.insert(name, c.clone());
        Ok(c)
    }

    /// Creates a collection from an index file (blocking).
    pub fn load_index(
        &self,
        name: &str,
        path: &std::path::Path,
    ) -> Result<Arc<Collection>, Status> {
        let mut map = self.collections.write();
        if map.contains_key(name) {
            return Err(Status::already_exists(format!(
                "collection {name:?} already exists"
            )));
        }
        let c = Arc::new(Collection::import(
            name,
            path,
            self.root.join(name),
            self.cfg.wal_snapshot_bytes,
            &self.cfg.backend,
        )?);
        c.start(name, self.cfg.batching.clone(), self.metrics.clone());
        map.insert(name.to_string(), c.clone());
        Ok(c)
    }

    /// Removes a collection and its files.
    pub async fn drop_collection(&self, name: &str) -> Result<(), Status> {
        let c = self
            .collections
            .write()
            .remove(name)
            .ok_or_else(|| Status::not_found(format!("collection {name:?} does not exist")))?;
        c.drain().await;
        self.metrics.vectors.with_label_values(&[name]).set(0);
        if let Some(dir) = c.dir() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let trash = self.root.join(format!(".dropped-{name}-{nanos}"));
            tokio::task::spawn_blocking(move || {
                if std::fs::rename(&dir, &trash).is_ok() {
                    let _ = crate::wal::sync_dir(&trash);
                    let _ = std::fs::remove_dir_all(&trash);
                }
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        }
        Ok(())
    }

    /// Answers every queued search, then snapshots every writable collection.
    pub async fn shutdown(&self) {
        let all = self.list();
        for (_, c) in &all {
            c.drain().await;
        }
        for (name, c) in all {
            if c.is_read_only() {
                continue;
            }
            match tokio::task::spawn_blocking(move || c.flush()).await {
                Ok(Ok(bytes)) => tracing::info!(collection = %name, bytes, "flushed"),
                Ok(Err(e)) => {
                    tracing::error!(collection = %name, error = %e.message(), "flush failed")
                }
                Err(e) => tracing::error!(collection = %name, error = %e, "flush failed"),
            }
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The server configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }
}
