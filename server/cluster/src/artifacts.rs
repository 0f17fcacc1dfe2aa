//! Files the nodes share that are too large for a log entry (trained quantizers), in the
//! `QUIVER_ARTIFACTS` object store bucket (file storage, as many copies as the logs). An
//! object is written whole before any log entry names it, and read back with its SHA-256
//! digest checked (by the client) before it is used. Objects are named after the shard's log
//! they belong to, so a dropped collection's are deleted by prefix.

use std::path::Path;

use async_nats::jetstream::object_store::{self, ObjectStore};
use futures_util::StreamExt;

use crate::error::{ClusterError, Result};

/// The bucket's name.
pub const BUCKET: &str = "QUIVER_ARTIFACTS";

/// The shared files.
#[derive(Clone)]
pub struct Artifacts {
    store: ObjectStore,
}

impl Artifacts {
    /// Opens the bucket, creating it (`replicas` copies) if missing.
    pub async fn open(js: &async_nats::jetstream::Context, replicas: usize) -> Result<Artifacts> {
        let store = match js.get_object_store(BUCKET).await {
            Ok(s) => s,
            Err(_) => match js
                .create_object_store(object_store::Config {
                    bucket: BUCKET.into(),
                    description: Some("Quiver's shared files (trained quantizers)".into()),
                    num_replicas: replicas.max(1),
                    ..Default::default()
                })
                .await
            {
                Ok(s) => s,
                // Another node created it meanwhile.
                Err(create) => js.get_object_store(BUCKET).await.map_err(|e| {
                    ClusterError::broker("opening the artifacts bucket", format!("{create}; {e}"))
                })?,
            },
        };
        Ok(Artifacts { store })
    }

    /// Stores the file at `path` as object `name`; returns its size.
    pub async fn put_file(&self, name: &str, path: &Path) -> Result<u64> {
        let mut file = tokio::fs::File::open(path).await.map_err(|e| {
            ClusterError::broker("storing an artifact", format!("{}: {e}", path.display()))
        })?;
        let info = self
            .store
            .put(name, &mut file)
            .await
            .map_err(|e| ClusterError::broker("storing an artifact", format!("{name}: {e}")))?;
        Ok(info.size as u64)
    }

    /// Writes object `name` to `path` (through a temporary file beside it, renamed once the
    /// whole object is read and its digest checked); returns its size. An object that is
    /// missing or fails its digest, or a local file that cannot be written, is
    /// [`ClusterError::Unavailable`] (retrying cannot help); the broker not answering is
    /// [`ClusterError::Broker`].
    pub async fn get_file(&self, name: &str, path: &Path) -> Result<u64> {
        let partial = path.with_extension("partial");
        let got = self.copy_to(name, &partial, path).await;
        if got.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        got
    }

    async fn copy_to(&self, name: &str, partial: &Path, path: &Path) -> Result<u64> {
        let lost = |reason: String| ClusterError::Unavailable {
            name: name.to_string(),
            reason,
        };
        let broker =
            |e: String| ClusterError::broker("reading an artifact", format!("{name}: {e}"));
        let mut object = match self.store.get(name).await {
            Ok(o) => o,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => {
                return Err(lost(
                    "the artifact does not exist (deleted with its collection?)".into(),
                ))
            }
            Err(e) => return Err(broker(e.to_string())),
        };
        let mut file = tokio::fs::File::create(partial)
            .await
            .map_err(|e| lost(format!("{}: {e}", partial.display())))?;
        let copied = match tokio::io::copy(&mut object, &mut file).await {
            Ok(n) => n,
            // The client checks the object's SHA-256 as it ends.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(lost(format!("the artifact is damaged: {e}")))
            }
            Err(e) => return Err(broker(e.to_string())),
        };
        file.sync_all()
            .await
            .map_err(|e| lost(format!("{}: {e}", partial.display())))?;
        drop(file);
        tokio::fs::rename(partial, path)
            .await
            .map_err(|e| lost(format!("{}: {e}", path.display())))?;
        Ok(copied)
    }

    /// Deletes object `name`.
    pub async fn delete(&self, name: &str) -> Result<()> {
        self.store
            .delete(name)
            .await
            .map_err(|e| ClusterError::broker("deleting an artifact", format!("{name}: {e}")))
    }

    /// Deletes every object whose name starts with `prefix`; returns how many.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize> {
        let mut list = self
            .store
            .list()
            .await
            .map_err(|e| ClusterError::broker("listing artifacts", e))?;
        let mut names = Vec::new();
        while let Some(info) = list.next().await {
            let info = info.map_err(|e| ClusterError::broker("listing artifacts", e))?;
            if info.name.starts_with(prefix) && !info.deleted {
                names.push(info.name);
            }
        }
        for name in &names {
            self.store.delete(name).await.map_err(|e| {
                ClusterError::broker("deleting an artifact", format!("{name}: {e}"))
            })?;
        }
        Ok(names.len())
    }
}
