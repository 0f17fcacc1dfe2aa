//! The folder that holds a server's collections (`DATA_DIR/collections/`), one sub-folder per
//! collection named after it, and the catalog log that says which exist ([`Catalog`]): the
//! lifecycle of those folders on disk.
//!
//! A create or drop is first a numbered catalog entry, fsynced, then folder work: a create
//! writes the new folder through a temporary one; a drop moves the folder aside, fsyncs the
//! parent and deletes it. At start, what a crash left behind is finished from the catalog:
//! temporaries and trash are removed, a created collection with no folder (none at all at its
//! path) gets its empty folder, and a folder whose collection's last entry is a drop is
//! removed. Nothing else is deleted: a collection folder the catalog does not list (put there
//! by hand, or by an older version, which wrote no catalog) is adopted, and so is a whole data
//! folder from before the catalog existed. A live collection whose path holds something other
//! than a collection folder is listed, and fails to open with the reason. One process at a
//! time holds the folder (a lock on `.lock`). A cluster replica applies its leader's entries
//! with their numbers ([`CollectionsFolder::apply`]), so replicas hold the same collections.
//!
//! Which names are being created or dropped is the caller's (the service reserves a name from
//! the moment a create or drop starts until its files are in place or gone).
//! [`checkpoint_and_close`] is a collection's shutdown.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use quiver_engine::backend::Backend;

use crate::catalog::{Catalog, CatalogOp};
use crate::collection::{valid_folder_name, Collection};
use crate::error::{Result, StoreError};
use crate::fsutil::{sync_dir, TEMP_PREFIX};
use crate::manifest::{CollectionMeta, Manifest};
use crate::StoreConfig;

/// Prefix of a dropped collection's folder once moved aside.
const TRASH_PREFIX: &str = ".dropped-";

/// A folder of collections and its catalog.
#[derive(Debug, Clone)]
pub struct CollectionsFolder {
    root: PathBuf,
    catalog: Arc<Mutex<Catalog>>,
    /// Holds the folder's lock while any clone lives.
    _lock: Arc<std::fs::File>,
}

/// What applying a leader's catalog entry did ([`CollectionsFolder::apply`]).
pub enum CatalogApplied<B: Backend + Clone + 'static> {
    /// Applied before (its number is not above the last one applied): nothing was done.
    Skipped,
    /// The collection was created; here it is, open.
    Created(Box<Collection<B>>),
    /// The collection was dropped.
    Dropped,
}

impl CollectionsFolder {
    /// Opens (creating it if needed) the folder at `root` with its catalog, and finishes what
    /// a crash left: trash and temporaries are removed, creations without a folder get one,
    /// dropped collections' folders go. A folder with collections and no catalog (written
    /// before the catalog existed) is adopted.
    pub fn open(root: &Path) -> Result<CollectionsFolder> {
        if !root.exists() {
            std::fs::create_dir_all(root).map_err(|e| StoreError::io("creating", root, e))?;
            // The new folder's entry in its parent is durable before anything is created in it.
            if let Some(parent) = root.parent() {
                sync_dir(parent).map_err(|e| StoreError::io("syncing", parent, e))?;
            }
        }
        let lock = lock_folder(root)?;
        let entries = std::fs::read_dir(root).map_err(|e| StoreError::io("listing", root, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io("listing", root, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TRASH_PREFIX) || name.starts_with(TEMP_PREFIX) {
                // Folders (a drop's trash, a create's half-made folder) or files (an import's
                // copy, a catalog's rewrite).
                if std::fs::remove_dir_all(entry.path()).is_err() {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let path = Catalog::path_in(root);
        let exists = path
            .try_exists()
            .map_err(|e| StoreError::io("looking for", &path, e))?;
        let catalog = if exists {
            Catalog::open(&path)?
        } else {
            let found = collection_folders(root)?;
            if !found.is_empty() {
                tracing::info!(folder = %root.display(), collections = found.len(), "adopting the collections of a data folder written before the catalog");
            }
            let ops = found.into_iter().map(|name| adoption(root, name)).collect();
            Catalog::create(&path, ops)?
        };
        let folder = CollectionsFolder {
            root: root.to_path_buf(),
            catalog: Arc::new(Mutex::new(catalog)),
            _lock: Arc::new(lock),
        };
        folder.finish_interrupted()?;
        folder.catalog.lock().compact_if_due();
        Ok(folder)
    }

    /// Makes the folders what the catalog says: the last step of a create or drop a crash
    /// interrupted; collection folders it does not list are adopted.
    fn finish_interrupted(&self) -> Result<()> {
        let mut catalog = self.catalog.lock();
        let on_disk = collection_folders(&self.root)?;
        for name in &on_disk {
            if catalog.live().contains_key(name) {
                continue;
            }
            if catalog.dropped().contains_key(name) {
                tracing::warn!(collection = %name, "finishing an interrupted drop");
                self.remove_files(name)?;
            } else {
                if catalog.aliases().contains_key(name) {
                    // Left as it is (not served) rather than stopping the start.
                    tracing::error!(collection = %name, "a collection folder the catalog does not list has an alias's name: not adopted (rename it, or delete the alias)");
                    continue;
                }
                tracing::warn!(collection = %name, "adopting a collection folder the catalog does not list");
                catalog.append(None, adoption(&self.root, name.clone()))?;
            }
        }
        let missing: Vec<(String, crate::catalog::LiveCollection)> = catalog
            .live()
            .iter()
            .filter(|(name, _)| !on_disk.contains(*name))
            .map(|(n, l)| (n.clone(), l.clone()))
            .collect();
        for (name, live) in missing {
            let dir = self.path(&name);
            match std::fs::symlink_metadata(&dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("looking for", &dir, e)),
                Ok(_) => {
                    // Not a collection folder (a link to a volume not mounted, a folder
                    // emptied by hand): left as it is; opening it reports why.
                    tracing::error!(collection = %name, path = %dir.display(), "a collection's path holds no collection; left as it is");
                    continue;
                }
            }
            match live.meta {
                Some(meta) => {
                    tracing::warn!(collection = %name, "finishing an interrupted create");
                    crate::collection::write_empty(&dir, meta, live.replica)?;
                }
                None => {
                    // Adopted without a description and gone since: nothing to create it from.
                    tracing::warn!(collection = %name, "an adopted collection's folder is gone; recording it as dropped");
                    catalog.append(None, CatalogOp::Drop { name })?;
                }
            }
        }
        Ok(())
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the collection `name` lives.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The collections, sorted (what the catalog says exists; each has its folder).
    pub fn names(&self) -> Result<Vec<String>> {
        Ok(self.catalog.lock().live().keys().cloned().collect())
    }

    /// Whether the catalog lists `name` (a collection that failed half-way through its create
    /// is listed until dropped).
    pub fn is_live(&self, name: &str) -> bool {
        self.catalog.lock().live().contains_key(name)
    }

    /// What the catalog says of the collection `name`, if it exists (the number of its
    /// creation tells its incarnations apart).
    pub fn live(&self, name: &str) -> Option<crate::catalog::LiveCollection> {
        self.catalog.lock().live().get(name).cloned()
    }

    /// The aliases: alias → collection.
    pub fn aliases(&self) -> std::collections::BTreeMap<String, String> {
        self.catalog.lock().aliases().clone()
    }

    /// The collection `name` stands for: itself when it is a collection, the collection an
    /// alias of that name names, else `None`.
    pub fn resolve(&self, name: &str) -> Option<String> {
        let catalog = self.catalog.lock();
        if catalog.live().contains_key(name) {
            return Some(name.to_string());
        }
        catalog.aliases().get(name).cloned()
    }

    /// Changes the aliases: `actions` in order, all or none, durable when it returns (one
    /// catalog entry). Refused, with nothing written, when an action does not fit (an alias
    /// that exists already or not at all, a collection that does not exist, a name taken by a
    /// collection).
    pub fn update_aliases(&self, actions: Vec<crate::catalog::AliasAction>) -> Result<u64> {
        let mut catalog = self.catalog.lock();
        let seq = catalog.append(None, CatalogOp::Aliases { actions })?;
        Ok(seq.unwrap_or_else(|| catalog.last_seq()))
    }

    /// The number of the last catalog entry (0 for none): where a replica goes on from.
    pub fn catalog_seq(&self) -> u64 {
        self.catalog.lock().last_seq()
    }

    /// A temporary file for an import into `name` (removed at the next start if left).
    pub fn import_path(&self, name: &str) -> PathBuf {
        self.root.join(format!("{TEMP_PREFIX}import-{name}.qvr"))
    }

    /// A scratch folder for a snapshot of `name` (written or read; removed at the next start
    /// if left). On the folder's file system, so a snapshot's files are linked, not copied.
    pub fn snapshot_path(&self, name: &str) -> PathBuf {
        self.root.join(format!("{TEMP_PREFIX}snapshot-{name}"))
    }

    /// Creates the collection `meta.name` (the caller has reserved the name): a catalog entry,
    /// then its folder (a folder left there without a manifest is replaced). Refused when the
    /// collection exists. If the folder cannot be written, the entry is undone by a drop entry.
    pub fn create<B: Backend + Clone + 'static>(
        &self,
        meta: CollectionMeta,
        backend: B,
        cfg: StoreConfig,
    ) -> Result<Collection<B>> {
        self.create_as(meta, false, backend, cfg)
    }

    /// [`Self::create`] for a replica ([`Collection::create_replica`]: it applies another
    /// log's numbered ops).
    pub fn create_replica<B: Backend + Clone + 'static>(
        &self,
        meta: CollectionMeta,
        backend: B,
        cfg: StoreConfig,
    ) -> Result<Collection<B>> {
        self.create_as(meta, true, backend, cfg)
    }

    /// [`Self::create_replica`] from a snapshot folder written by
    /// [`Collection::export_snapshot`] (of this process or another): the replica `name` holds
    /// what the snapshot holds and goes on with the log after the op it covers
    /// ([`Collection::last_seq`]). A leftover folder `name` without a catalog entry is replaced;
    /// if the folder cannot be written, the entry is undone by a drop entry.
    pub fn create_replica_from_snapshot<B: Backend + Clone + 'static>(
        &self,
        name: &str,
        snapshot: &Path,
        backend: B,
        cfg: StoreConfig,
    ) -> Result<Collection<B>> {
        self.check_new(name)?;
        let mut meta = Manifest::read(snapshot)?.meta;
        meta.name = name.to_string();
        self.catalog.lock().append(
            None,
            CatalogOp::Create {
                name: name.to_string(),
                meta: Some(meta),
                replica: true,
            },
        )?;
        let dir = self.path(name);
        let made = (|| {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .map_err(|e| StoreError::io("removing the leftover", &dir, e))?;
            }
            Collection::create_from_snapshot(snapshot, &dir, backend, cfg)
        })();
        if made.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
            if let Err(e) = self.catalog.lock().append(
                None,
                CatalogOp::Drop {
                    name: name.to_string(),
                },
            ) {
                tracing::warn!(collection = %name, error = %e, "undoing a failed create in the catalog failed; the next start creates it empty");
            }
        }
        made
    }

    fn create_as<B: Backend + Clone + 'static>(
        &self,
        meta: CollectionMeta,
        replica: bool,
        backend: B,
        cfg: StoreConfig,
    ) -> Result<Collection<B>> {
        let name = meta.name.clone();
        self.check_new(&name)?;
        self.catalog.lock().append(
            None,
            CatalogOp::Create {
                name: name.clone(),
                meta: Some(meta.clone()),
                replica,
            },
        )?;
        let made = self.make(meta, replica, backend, cfg);
        if made.is_err() {
            let _ = std::fs::remove_dir_all(self.path(&name));
            if let Err(e) = self
                .catalog
                .lock()
                .append(None, CatalogOp::Drop { name: name.clone() })
            {
                tracing::warn!(collection = %name, error = %e, "undoing a failed create in the catalog failed; the next start creates it empty");
            }
        }
        made
    }

    /// Removes the collection `name`: closes `open` (its handle, if it was open: after that it
    /// writes nothing), writes a catalog entry (unless a failed drop already wrote it), moves
    /// the folder aside, fsyncs the parent and deletes it. A folder already gone is not an
    /// error.
    pub fn remove<B: Backend + Clone + 'static>(
        &self,
        name: &str,
        open: Option<&Collection<B>>,
    ) -> Result<()> {
        // Closed first: whatever happens next, the old handle writes nothing more. A drop that
        // fails before its entry is written leaves the collection as it was (it opens again
        // after a restart); one that fails after it is finished at the next start.
        if let Some(c) = open {
            c.close();
        }
        {
            let mut catalog = self.catalog.lock();
            if catalog.live().contains_key(name) {
                catalog.append(None, CatalogOp::Drop { name: name.into() })?;
            }
        }
        self.remove_files(name)
    }

    /// Applies a leader's catalog entry numbered `seq` (gap-free; one applied before is
    /// skipped): a creation makes the collection (a replica when the entry says so) and
    /// returns it; a drop closes `open` (the collection's handle, if open) and removes it. The
    /// entry is durable before the folder work; if that fails, the error is returned and the
    /// next [`Self::open`] finishes it.
    pub fn apply<B: Backend + Clone + 'static>(
        &self,
        seq: u64,
        op: CatalogOp,
        open: Option<&Collection<B>>,
        backend: B,
        cfg: StoreConfig,
    ) -> Result<CatalogApplied<B>> {
        if let CatalogOp::Create {
            name,
            meta: Some(meta),
            ..
        } = &op
        {
            if name != &meta.name {
                return Err(StoreError::Invalid {
                    field: "meta",
                    reason: format!("creates {name:?} with a description named {:?}", meta.name),
                });
            }
        }
        if let Some(name) = op.name() {
            if !valid_folder_name(name) {
                return Err(StoreError::Invalid {
                    field: "name",
                    reason: format!("{name:?} is not a collection name"),
                });
            }
        }
        let create = match &op {
            CatalogOp::Create {
                meta: None, name, ..
            } => {
                return Err(StoreError::Invalid {
                    field: "meta",
                    reason: format!("the creation of {name:?} has no description"),
                })
            }
            CatalogOp::Create {
                meta: Some(meta),
                replica,
                ..
            } => Some((meta.clone(), *replica)),
            _ => None,
        };
        if let Some((meta, _)) = &create {
            if seq == self.catalog_seq() + 1 {
                self.check_new(&meta.name)?;
            }
        }
        let name = op.name().map(str::to_string);
        let last = self.catalog_seq();
        if seq == last + 1 {
            if let (None, Some(c)) = (&create, open) {
                // As a local drop: the old handle writes nothing more, whatever happens next.
                c.close();
            }
        }
        if self.catalog.lock().append(Some(seq), op)?.is_none() {
            // Applied before. If it was the last entry, its folder work may have failed
            // half-way: done again now (it is idempotent).
            if seq == last {
                return self.redo_last(seq, create, name.as_deref(), open, backend, cfg);
            }
            return Ok(CatalogApplied::Skipped);
        }
        match (create, name) {
            (Some((meta, replica)), _) => Ok(CatalogApplied::Created(Box::new(
                self.make(meta, replica, backend, cfg)?,
            ))),
            (None, Some(name)) => {
                self.remove_files(&name)?;
                Ok(CatalogApplied::Dropped)
            }
            (None, None) => Ok(CatalogApplied::Skipped),
        }
    }

    /// The folder work of the last applied entry, if it is not done.
    fn redo_last<B: Backend + Clone + 'static>(
        &self,
        seq: u64,
        create: Option<(CollectionMeta, bool)>,
        name: Option<&str>,
        open: Option<&Collection<B>>,
        backend: B,
        cfg: StoreConfig,
    ) -> Result<CatalogApplied<B>> {
        let Some(name) = name else {
            return Ok(CatalogApplied::Skipped);
        };
        let dir = self.path(name);
        let present = dir.join("manifest.json").exists();
        let live = self
            .catalog
            .lock()
            .live()
            .get(name)
            .is_some_and(|l| l.created_at == seq);
        match create {
            Some((meta, replica)) if live && !present => Ok(CatalogApplied::Created(Box::new(
                self.make(meta, replica, backend, cfg)?,
            ))),
            None if !self.is_live(name) && dir.exists() => {
                if let Some(c) = open {
                    c.close();
                }
                self.remove_files(name)?;
                Ok(CatalogApplied::Dropped)
            }
            _ => Ok(CatalogApplied::Skipped),
        }
    }

    /// Refuses a create of `name`: not a valid name, or a collection is there.
    fn check_new(&self, name: &str) -> Result<()> {
        if !valid_folder_name(name) {
            return Err(StoreError::Invalid {
                field: "name",
                reason: format!("{name:?} is not a collection name"),
            });
        }
        let dir = self.path(name);
        if self.catalog.lock().live().contains_key(name)
            || dir.join("manifest.json").exists()
            || dir.join("meta.json").exists()
        {
            return Err(StoreError::Precondition(format!(
                "collection {name:?} already exists"
            )));
        }
        Ok(())
    }

    /// Writes a new collection's folder (replacing a leftover without a manifest) and opens it.
    fn make<B: Backend + Clone + 'static>(
        &self,
        meta: CollectionMeta,
        replica: bool,
        backend: B,
        cfg: StoreConfig,
    ) -> Result<Collection<B>> {
        let dir = self.path(&meta.name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| StoreError::io("removing the leftover", &dir, e))?;
        }
        Collection::create_as(&dir, meta, replica, backend, cfg)
    }

    /// Moves `name`'s folder aside, fsyncs the parent (from here its removal is durable) and
    /// deletes it (left behind, the trash goes at the next start).
    fn remove_files(&self, name: &str) -> Result<()> {
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
        if let Err(e) = std::fs::remove_dir_all(&trash) {
            tracing::warn!(path = %trash.display(), error = %e, "removing a dropped collection's files failed; they go at the next start");
        }
        Ok(())
    }
}

/// The catalog entry adopting the collection folder `name`: its description and role from its
/// manifest when it reads and names it (none otherwise, e.g. the earlier layout's).
fn adoption(root: &Path, name: String) -> CatalogOp {
    let manifest = Manifest::read(&root.join(&name))
        .ok()
        .filter(|m| m.meta.name == name);
    CatalogOp::Create {
        replica: manifest.as_ref().is_some_and(|m| m.replica),
        meta: manifest.map(|m| m.meta),
        name,
    }
}

/// Takes the folder's lock (`.lock`, held while the returned file is open): one process at a
/// time.
fn lock_folder(root: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = root.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::io("opening", &path, e))?;
    // SAFETY: flock on a descriptor this function owns; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            return Err(StoreError::Precondition(format!(
                "{} is in use by another Quiver process (or another open of it in this one)",
                root.display()
            )));
        }
        return Err(StoreError::io("locking", &path, e));
    }
    Ok(file)
}

/// The collection folders under `root` (valid names with a manifest, or the earlier layout's
/// description), sorted.
fn collection_folders(root: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(root).map_err(|e| StoreError::io("listing", root, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("listing", root, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let p = entry.path();
        if valid_folder_name(&name)
            && (p.join("manifest.json").exists() || p.join("meta.json").exists())
        {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
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
        // One open at a time.
        assert!(matches!(
            CollectionsFolder::open(&root),
            Err(StoreError::Precondition(_))
        ));
        drop(folder);
        let folder = CollectionsFolder::open(&root).unwrap();
        assert_eq!(folder.names().unwrap(), vec!["a", "b"]);
        let mut left: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec![".catalog.log", ".lock", "a", "b", "empty"]);
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

    #[test]
    fn a_crash_between_catalog_entry_and_folder_work_is_finished_at_start() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("collections");
        let folder = CollectionsFolder::open(&root).unwrap();
        let a = folder
            .create(meta("a"), CpuBackend, StoreConfig::default())
            .unwrap();
        a.upsert(vec![1], vec![0.5, 0.5]).unwrap();
        drop(a);
        // A create whose entry is durable but whose folder was not written, and a drop whose
        // entry is durable but whose folder was not moved: what a crash between the two
        // leaves.
        {
            let mut catalog = folder.catalog.lock();
            catalog
                .append(
                    None,
                    CatalogOp::Create {
                        name: "b".into(),
                        meta: Some(meta("b")),
                        replica: false,
                    },
                )
                .unwrap();
            catalog
                .append(None, CatalogOp::Drop { name: "a".into() })
                .unwrap();
        }
        drop(folder);
        let folder = CollectionsFolder::open(&root).unwrap();
        assert_eq!(folder.names().unwrap(), vec!["b"]);
        assert!(!root.join("a").exists());
        let b = Collection::open(&folder.path("b"), CpuBackend, StoreConfig::default()).unwrap();
        assert_eq!(b.meta(), meta("b"));
        assert_eq!(folder.catalog_seq(), 3);
    }

    #[test]
    fn a_data_folder_from_before_the_catalog_is_adopted() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("collections");
        let folder = CollectionsFolder::open(&root).unwrap();
        for n in ["x", "y"] {
            folder
                .create(meta(n), CpuBackend, StoreConfig::default())
                .unwrap()
                .upsert(vec![7], vec![1.0, 2.0])
                .unwrap();
        }
        drop(folder);
        std::fs::remove_file(Catalog::path_in(&root)).unwrap();
        let folder = CollectionsFolder::open(&root).unwrap();
        assert_eq!(folder.names().unwrap(), vec!["x", "y"]);
        assert_eq!(folder.catalog_seq(), 2);
        let live = folder.catalog.lock().live().clone();
        assert_eq!(live["y"].meta, Some(meta("y")));
        let x = Collection::open(&folder.path("x"), CpuBackend, StoreConfig::default()).unwrap();
        assert_eq!(x.version().len(), 1);
    }

    #[test]
    fn replicas_fed_the_same_entries_hold_the_same_collections() {
        let tmp = tempfile::tempdir().unwrap();
        let leader = CollectionsFolder::open(&tmp.path().join("leader")).unwrap();
        let mut log = Vec::new();
        for (name, drop_it) in [("a", false), ("b", true), ("c", false)] {
            leader
                .create(meta(name), CpuBackend, StoreConfig::default())
                .unwrap();
            log.push(CatalogOp::Create {
                name: name.into(),
                meta: Some(meta(name)),
                replica: true,
            });
            if drop_it {
                leader.remove::<CpuBackend>(name, None).unwrap();
                log.push(CatalogOp::Drop { name: name.into() });
            }
        }
        let replica = CollectionsFolder::open(&tmp.path().join("replica")).unwrap();
        let apply = |seq: usize| {
            replica.apply::<CpuBackend>(
                seq as u64 + 1,
                log[seq].clone(),
                None,
                CpuBackend,
                StoreConfig::default(),
            )
        };
        // In order, with one entry delivered twice and one ahead of its turn.
        assert!(matches!(apply(0).unwrap(), CatalogApplied::Created(_)));
        assert!(matches!(apply(0).unwrap(), CatalogApplied::Skipped));
        assert!(matches!(apply(2), Err(StoreError::Precondition(_))));
        for (i, op) in log.iter().enumerate().skip(1) {
            let r = apply(i).unwrap();
            assert!(matches!(
                (op, r),
                (CatalogOp::Create { .. }, CatalogApplied::Created(_))
                    | (CatalogOp::Drop { .. }, CatalogApplied::Dropped)
            ));
        }
        assert_eq!(replica.names().unwrap(), leader.names().unwrap());
        assert_eq!(replica.catalog_seq(), leader.catalog_seq());
        // Created as the entries say: replicas.
        let c = Collection::open(&replica.path("c"), CpuBackend, StoreConfig::default()).unwrap();
        assert!(c.upsert(vec![1], vec![0.0, 0.0]).is_err());
        // A creation must carry its description, under its own name.
        let bad = CatalogOp::Create {
            name: "d".into(),
            meta: Some(meta("e")),
            replica: true,
        };
        assert!(matches!(
            replica.apply::<CpuBackend>(5, bad, None, CpuBackend, StoreConfig::default()),
            Err(StoreError::Invalid { field: "meta", .. })
        ));
        // After a restart it goes on from the same number.
        drop(replica);
        let replica = CollectionsFolder::open(&tmp.path().join("replica")).unwrap();
        assert_eq!(replica.catalog_seq(), 4);
        assert_eq!(replica.names().unwrap(), vec!["a", "c"]);
    }

    #[test]
    fn only_dropped_collections_folders_are_removed_at_start() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("collections");
        let folder = CollectionsFolder::open(&root).unwrap();
        for n in ["kept", "gone"] {
            folder
                .create(meta(n), CpuBackend, StoreConfig::default())
                .unwrap()
                .upsert(vec![3], vec![0.25, 0.75])
                .unwrap();
        }
        drop(folder);
        // A collection folder copied in by hand (restored from a backup, or written by an
        // older version): adopted, never deleted.
        let elsewhere = tmp.path().join("other");
        let other = CollectionsFolder::open(&elsewhere).unwrap();
        other
            .create(meta("restored"), CpuBackend, StoreConfig::default())
            .unwrap()
            .upsert(vec![5], vec![1.0, 0.0])
            .unwrap();
        drop(other);
        std::fs::rename(elsewhere.join("restored"), root.join("restored")).unwrap();
        // A live collection's folder replaced by something that is not one (a volume not
        // mounted): left as it is, not re-created empty over it.
        std::fs::rename(root.join("kept"), tmp.path().join("kept-away")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("not-mounted"), root.join("kept")).unwrap();
        let folder = CollectionsFolder::open(&root).unwrap();
        assert_eq!(folder.names().unwrap(), vec!["gone", "kept", "restored"]);
        assert!(std::fs::symlink_metadata(root.join("kept"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(
            Collection::open(&folder.path("kept"), CpuBackend, StoreConfig::default()).is_err()
        );
        let r =
            Collection::open(&folder.path("restored"), CpuBackend, StoreConfig::default()).unwrap();
        assert_eq!(r.get(&[5]).len(), 1);
        assert_eq!(
            folder.catalog.lock().live()["restored"].meta,
            Some(meta("restored"))
        );
        // The volume back: the collection opens with its points.
        std::fs::remove_file(root.join("kept")).unwrap();
        std::fs::rename(tmp.path().join("kept-away"), root.join("kept")).unwrap();
        let k = Collection::open(&folder.path("kept"), CpuBackend, StoreConfig::default()).unwrap();
        assert_eq!(k.get(&[3]).len(), 1);
        // A drop whose folder work was cut short (the folder back in place, as if the rename
        // had not happened) is finished.
        drop((r, k));
        folder.remove::<CpuBackend>("gone", None).unwrap();
        let again = tmp.path().join("gone-copy");
        drop(folder);
        let src = CollectionsFolder::open(&tmp.path().join("src")).unwrap();
        src.create(meta("gone"), CpuBackend, StoreConfig::default())
            .unwrap();
        drop(src);
        std::fs::rename(tmp.path().join("src/gone"), &again).unwrap();
        std::fs::rename(&again, root.join("gone")).unwrap();
        let folder = CollectionsFolder::open(&root).unwrap();
        assert_eq!(folder.names().unwrap(), vec!["kept", "restored"]);
        assert!(!root.join("gone").exists());
    }
}
