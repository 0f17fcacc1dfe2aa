//! Snapshots of shard replicas (checkpoint exports, [`quiver_store::Collection::export_snapshot`])
//! shared through the object store, so that a new or wiped node, or one the trimmed log has
//! left behind, starts its replica from one and goes on with the log after it; and the shard
//! logs are trimmed below them.
//!
//! A snapshot's files are objects of the artifacts bucket named after the shard's log (so a
//! dropped collection's go with its prefix). A record in the `QUIVER_SNAPSHOTS` key-value
//! bucket, one key per shard log, names the current snapshot: it is written by
//! compare-and-set once every file is stored (a reader never sees half a snapshot), only
//! forward (to a snapshot covering more of the log); the files of the one it replaces are
//! kept one generation more (a node may be reading them) and deleted when the next one is
//! published. A log is trimmed only below the op its current snapshot covers.

use std::path::{Component, Path, PathBuf};

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};

use crate::artifacts::Artifacts;
use crate::error::{ClusterError, Result};

/// The bucket's name.
pub const BUCKET: &str = "QUIVER_SNAPSHOTS";

/// The current snapshot of a shard's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// The last op it covers: a replica made from it applies the log from the next one.
    pub seq: u64,
    /// The node that exported it.
    pub node: String,
    /// Its files.
    pub files: Vec<SnapshotFile>,
    /// The objects of the snapshot it replaced, kept until it is replaced in turn (a node
    /// still reading that one has until then), and deleted then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<String>,
}

/// One file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFile {
    /// Its path in the snapshot folder (`manifest.json`, `segments/…`).
    pub path: String,
    /// The object holding it.
    pub object: String,
    /// Its size.
    pub bytes: u64,
}

impl SnapshotRecord {
    /// Its files' total size.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// What [`Snapshots::replace`] did.
enum Replaced {
    /// The record is the current one; it replaced this one, if any.
    Yes(Option<SnapshotRecord>),
    /// The current one covers as much already: the record was not written.
    NewerThere,
}

/// The snapshots of every shard's log.
#[derive(Clone)]
pub struct Snapshots {
    kv: kv::Store,
    artifacts: Artifacts,
}

/// The record's key for a shard's log.
fn key(log: &str) -> String {
    format!("snapshot.{log}")
}

/// A snapshot file's path as a relative path of plain names (a record is read from the
/// broker: it must not reach outside the folder it is downloaded into).
fn relative(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    let plain = !path.is_empty()
        && p.components()
            .all(|c| matches!(c, Component::Normal(n) if !n.to_string_lossy().starts_with('.')));
    plain.then(|| p.to_path_buf())
}

/// The files under `dir`, as paths relative to it with `/` separators, sorted.
fn files_under(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        for entry in std::fs::read_dir(dir.join(&rel))? {
            let entry = entry?;
            let path = rel.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                pending.push(path);
            } else {
                out.push(path.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    Ok(out)
}

impl Snapshots {
    /// Opens the bucket, creating it (`replicas` copies) if missing; the files go to
    /// `artifacts`.
    pub async fn open(
        js: &async_nats::jetstream::Context,
        replicas: usize,
        artifacts: Artifacts,
    ) -> Result<Snapshots> {
        let cfg = kv::Config {
            bucket: BUCKET.into(),
            description: "Quiver: the current snapshot of each shard's log".into(),
            history: 1,
            num_replicas: replicas.max(1),
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        };
        let kv = crate::bucket::key_value(js, cfg, "opening the snapshots bucket").await?;
        Ok(Snapshots { kv, artifacts })
    }

    /// The current snapshot of `log` and its record's revision.
    async fn entry(&self, log: &str) -> Result<Option<(SnapshotRecord, u64)>> {
        let entry = self
            .kv
            .entry(key(log))
            .await
            .map_err(|e| ClusterError::broker("reading a snapshot record", e))?;
        let Some(entry) = entry else { return Ok(None) };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let record: SnapshotRecord =
            serde_json::from_slice(&entry.value).map_err(|e| ClusterError::Unavailable {
                name: log.to_string(),
                reason: format!("its snapshot record is not valid: {e}"),
            })?;
        Ok(Some((record, entry.revision)))
    }

    /// The current snapshot of `log`, if any.
    pub async fn latest(&self, log: &str) -> Result<Option<SnapshotRecord>> {
        Ok(self.entry(log).await?.map(|(r, _)| r))
    }

    /// Publishes the snapshot folder `dir` (written by `export_snapshot`, covering op `seq`
    /// of `log`) as `node`'s: stores its files, then the record. Returns false, and deletes
    /// what it stored, when the current snapshot covers `seq` already.
    pub async fn publish(&self, log: &str, node: &str, seq: u64, dir: &Path) -> Result<bool> {
        if self.entry(log).await?.is_some_and(|(r, _)| r.seq >= seq) {
            return Ok(false);
        }
        let d = dir.to_path_buf();
        let paths = tokio::task::spawn_blocking(move || files_under(&d))
            .await
            .map_err(|e| ClusterError::broker("listing a snapshot's files", e))?
            .map_err(|e| ClusterError::Unavailable {
                name: log.to_string(),
                reason: format!("listing the snapshot {}: {e}", dir.display()),
            })?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let prefix = format!("{log}/snapshot-{seq}-{node}-{nanos}/");
        let mut record = SnapshotRecord {
            seq,
            node: node.to_string(),
            files: Vec::with_capacity(paths.len()),
            retired: Vec::new(),
        };
        let stored = async {
            for path in paths {
                let object = format!("{prefix}{path}");
                let bytes = self.artifacts.put_file(&object, &dir.join(&path)).await?;
                record.files.push(SnapshotFile {
                    path,
                    object,
                    bytes,
                });
            }
            self.replace(log, &mut record).await
        }
        .await;
        match stored {
            Ok(Replaced::Yes(old)) => {
                // The files of the snapshot before the replaced one.
                for object in old.iter().flat_map(|o| &o.retired) {
                    if let Err(e) = self.artifacts.delete(object).await {
                        tracing::debug!(object = %object, error = %e, "deleting a retired snapshot's file");
                    }
                }
                Ok(true)
            }
            Ok(Replaced::NewerThere) => {
                self.delete_files(&prefix).await;
                Ok(false)
            }
            // The record may have been written though its answer was lost: its files are
            // deleted only once the record is known not to name them.
            Err(e) => match self.latest(log).await {
                Ok(Some(now)) if now.files.iter().any(|f| f.object.starts_with(&prefix)) => {
                    Ok(true)
                }
                Ok(_) => {
                    self.delete_files(&prefix).await;
                    Err(e)
                }
                Err(_) => Err(e),
            },
        }
    }

    /// Makes `record` the current snapshot of `log` unless the current one covers as much
    /// (the replaced one's files become `record`'s retired ones).
    async fn replace(&self, log: &str, record: &mut SnapshotRecord) -> Result<Replaced> {
        let encode = |r: &SnapshotRecord| {
            serde_json::to_vec(r).map_err(|e| ClusterError::broker("writing a snapshot record", e))
        };
        for _ in 0..8 {
            let written = match self.entry(log).await? {
                Some((current, _)) if current.seq >= record.seq => return Ok(Replaced::NewerThere),
                Some((current, revision)) => {
                    record.retired = current.files.iter().map(|f| f.object.clone()).collect();
                    match self
                        .kv
                        .update(key(log), encode(record)?.into(), revision)
                        .await
                    {
                        Ok(_) => Some(Some(current)),
                        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => None,
                        Err(e) => return Err(ClusterError::broker("writing a snapshot record", e)),
                    }
                }
                None => {
                    record.retired.clear();
                    match self.kv.create(key(log), encode(record)?.into()).await {
                        Ok(_) => Some(None),
                        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => None,
                        Err(e) => return Err(ClusterError::broker("writing a snapshot record", e)),
                    }
                }
            };
            if let Some(replaced) = written {
                return Ok(Replaced::Yes(replaced));
            }
        }
        Err(ClusterError::broker(
            "writing a snapshot record",
            "other nodes kept writing it",
        ))
    }

    async fn delete_files(&self, prefix: &str) {
        if let Err(e) = self.artifacts.delete_prefix(prefix).await {
            tracing::debug!(prefix, error = %e, "deleting an unpublished snapshot's files");
        }
    }

    /// Downloads the current snapshot of `log` into the folder `dest` (created; it must not
    /// exist) and returns its record; `None` when there is none. A file missing (the
    /// snapshot replaced meanwhile) or damaged is [`ClusterError::Unavailable`]: read the
    /// record again.
    pub async fn download(&self, log: &str, dest: &Path) -> Result<Option<SnapshotRecord>> {
        let Some((record, _)) = self.entry(log).await? else {
            return Ok(None);
        };
        let local = |reason: String| ClusterError::Unavailable {
            name: log.to_string(),
            reason,
        };
        tokio::fs::create_dir(dest)
            .await
            .map_err(|e| local(format!("{}: {e}", dest.display())))?;
        for f in &record.files {
            let rel = relative(&f.path)
                .ok_or_else(|| local(format!("its snapshot names the file {:?}", f.path)))?;
            let path = dest.join(rel);
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| local(format!("{}: {e}", parent.display())))?;
            }
            self.artifacts.get_file(&f.object, &path).await?;
        }
        Ok(Some(record))
    }

    /// Forgets the snapshot record of `log` (its collection was dropped; the files go with
    /// the collection's prefix).
    pub async fn forget(&self, log: &str) -> Result<()> {
        self.kv
            .purge(key(log))
            .await
            .map_err(|e| ClusterError::broker("deleting a snapshot record", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_downloaded() {
        assert_eq!(
            relative("segments/1.qvr"),
            Some(PathBuf::from("segments/1.qvr"))
        );
        assert_eq!(
            relative("manifest.json"),
            Some(PathBuf::from("manifest.json"))
        );
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "segments/../../x",
            "./x",
            ".tmp-x",
            "a/.b",
        ] {
            assert_eq!(relative(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_folder_lists_its_files_recursively() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("segments")).unwrap();
        std::fs::create_dir_all(tmp.path().join("wal")).unwrap();
        std::fs::write(tmp.path().join("manifest.json"), b"{}").unwrap();
        std::fs::write(tmp.path().join("segments/2.qvr"), b"x").unwrap();
        std::fs::write(tmp.path().join("segments/1.qvr"), b"y").unwrap();
        assert_eq!(
            files_under(tmp.path()).unwrap(),
            vec!["manifest.json", "segments/1.qvr", "segments/2.qvr"]
        );
    }
}
