//! The folder that holds a server's collections (`DATA_DIR/collections/`), one sub-folder per
//! collection named after it: the lifecycle of those folders on disk. At start it removes what
//! a crash left behind (a drop's trash, a create's or an import's half-made temporary), lists
//! the collections to open, creates new ones (replacing a leftover with no manifest), and
//! removes dropped ones durably: the folder is moved aside and the parent fsynced before the
//! drop is acknowledged, then deleted (a crash before that leaves trash, removed at the next
//! start). [`checkpoint_and_close`] is a collection's shutdown.
//!
//! Which names are taken, being created or being dropped is the caller's (the service
//! reserves a name from the moment a create or drop starts until its files are in place or
//! gone); this module only touches the files.

use std::path::{Path, PathBuf};

use quiver_engine::backend::Backend;

use crate::collection::{valid_name, Collection};
use crate::error::{Result, StoreError};
use crate::fsutil::{sync_dir, TEMP_PREFIX};
use crate::manifest::CollectionMeta;
use crate::StoreConfig;

/// Prefix of a dropped collection's folder once moved aside.
const TRASH_PREFIX: &str = ".dropped-";

/// A folder of collections.
#[derive(Debug, Clone)]
pub struct CollectionsFolder {
    root: PathBuf,
}

impl CollectionsFolder {
    /// Opens (creating it if needed) the folder at `root` and removes the leftovers of a crash:
    /// trash and temporary folders or files.
    pub fn open(root: &Path) -> Result<CollectionsFolder> {
        std::fs::create_dir_all(root).map_err(|e| StoreError::io("creating", root, e))?;
        let entries = std::fs::read_dir(root).map_err(|e| StoreError::io("listing", root, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io("listing", root, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TRASH_PREFIX) || name.starts_with(TEMP_PREFIX) {
                // Folders (a drop's trash, a create's half-made folder) or files (an import's
                // copy).
                if std::fs::remove_dir_all(entry.path()).is_err() {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(CollectionsFolder {
            root: root.to_path_buf(),
        })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the collection `name` lives.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The collections in the folder (valid names with a manifest, or the earlier layout's
    /// description), sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        let entries =
            std::fs::read_dir(&self.root).map_err(|e| StoreError::io("listing", &self.root, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io("listing", &self.root, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let p = entry.path();
            if valid_name(&name)
                && (p.join("manifest.json").exists() || p.join("meta.json").exists())
            {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// A temporary file for an import into `name` (removed at the next start if left).
    pub fn import_path(&self, name: &str) -> PathBuf {
        self.root.join(format!("{TEMP_PREFIX}import-{name}.qvr"))
    }

    /// Creates the collection `meta.name` (the caller has reserved the name and knows no
    /// collection has it): a folder left there without a manifest is replaced.
    pub fn create<B: Backend + Clone + 'static>(
        &self,
        meta: CollectionMeta,
        backend: B,
        cfg: StoreConfig,
    ) -> Result<Collection<B>> {
        if !valid_name(&meta.name) {
            return Err(StoreError::Invalid {
                field: "name",
                reason: format!("{:?} is not a collection name", meta.name),
            });
        }
        let dir = self.path(&meta.name);
        if dir.join("manifest.json").exists() || dir.join("meta.json").exists() {
            return Err(StoreError::Precondition(format!(
                "collection {:?} already exists",
                meta.name
            )));
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| StoreError::io("removing the leftover", &dir, e))?;
        }
        Collection::create(&dir, meta, backend, cfg)
    }

    /// Removes the collection `name`: closes `open` (its handle, if it was open: after that it
    /// writes nothing), moves the folder aside, fsyncs the parent (from here the drop is
    /// durable) and deletes it. A folder already gone is not an error.
    pub fn remove<B: Backend + Clone + 'static>(
        &self,
        name: &str,
        open: Option<&Collection<B>>,
    ) -> Result<()> {
        if let Some(c) = open {
            c.close();
        }
        let dir = self.path(name);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let trash = self.root.join(format!("{TRASH_PREFIX}{name}-{nanos}"));
        match std::fs::rename(&dir, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io("moving aside", &dir, e)),
        }
        sync_dir(&self.root).map_err(|e| StoreError::io("syncing", &self.root, e))?;
        // Left behind, the trash is removed at the next start.
        if let Err(e) = std::fs::remove_dir_all(&trash) {
            tracing::warn!(path = %trash.display(), error = %e, "removing a dropped collection's files failed; they go at the next start");
        }
        Ok(())
    }
}

/// A collection's shutdown: a checkpoint (so the next start replays little), then closed
/// (it writes nothing more). Returns the checkpoint's bytes written, or its error (the log
/// still holds every write).
pub fn checkpoint_and_close<B: Backend + Clone + 'static>(c: &Collection<B>) -> Result<u64> {
    let r = c.checkpoint();
    c.close();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_engine::backend::cpu::CpuBackend;

    fn meta(name: &str) -> CollectionMeta {
        CollectionMeta {
            name: name.into(),
            dim: 2,
            metric: "l2".into(),
            ..CollectionMeta::default()
        }
    }

    #[test]
    fn leftovers_go_collections_stay_and_drops_are_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("collections");
        let folder = CollectionsFolder::open(&root).unwrap();
        let c = folder
            .create(meta("a"), CpuBackend, StoreConfig::default())
            .unwrap();
        c.upsert(vec![1], vec![0.5, 0.5]).unwrap();
        folder
            .create(meta("b"), CpuBackend, StoreConfig::default())
            .unwrap();
        // What a crash leaves: trash, a half-made folder, an import's copy, and a folder
        // with no manifest (not a collection).
        std::fs::create_dir_all(root.join(".dropped-x-1/segments")).unwrap();
        std::fs::create_dir_all(root.join(".tmp-y/wal")).unwrap();
        std::fs::write(folder.import_path("z"), b"partial").unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        let folder = CollectionsFolder::open(&root).unwrap();
        assert_eq!(folder.names().unwrap(), vec!["a", "b"]);
        let mut left: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec!["a", "b", "empty"]);
        // A create over the leftover folder replaces it.
        folder
            .create(meta("empty"), CpuBackend, StoreConfig::default())
            .unwrap();
        assert_eq!(folder.names().unwrap(), vec!["a", "b", "empty"]);
        // Never over a collection.
        assert!(matches!(
            folder.create(meta("b"), CpuBackend, StoreConfig::default()),
            Err(StoreError::Precondition(_))
        ));
        // A drop closes the handle (it writes nothing more) and the folder is gone.
        folder.remove("a", Some(&c)).unwrap();
        assert!(c.upsert(vec![2], vec![0.1, 0.1]).is_err());
        assert_eq!(folder.names().unwrap(), vec!["b", "empty"]);
        assert!(!root.join("a").exists());
        // Dropping what is not there is not an error.
        folder.remove::<CpuBackend>("a", None).unwrap();
        assert!(matches!(
            folder.create(meta("../x"), CpuBackend, StoreConfig::default()),
            Err(StoreError::Invalid { .. })
        ));
    }
}
