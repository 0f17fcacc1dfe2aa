//! Durability points: every fsync Quiver's files rely on — a file's contents
//! ([`file`], [`file_data`]) and a folder's entries ([`dir`]) — goes through
//! here, and nothing else makes data durable.
//!
//! That is what a power-cut test needs: a [`SyncObserver`] installed with
//! [`observe`] is told of each durability point once it succeeded, so it can
//! keep, for every file and folder, what a power cut at that moment would
//! leave (what was last fsynced) and build the disk a crash could leave
//! behind. Without an observer each call is the plain system call plus one
//! atomic load.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// Told of every durability point after it succeeded (tests only; see the
/// module doc). Calls come from whichever thread synced, possibly several at
/// once, while that thread holds its own locks: an observer must not call
/// back into the code that synced.
pub trait SyncObserver: Send + Sync {
    /// `file`'s data (and, for [`file`], its metadata) is durable.
    fn file_synced(&self, file: &File);
    /// The entries of the folder at `path` are durable.
    fn dir_synced(&self, path: &Path);
}

static ACTIVE: AtomicBool = AtomicBool::new(false);
static OBSERVER: RwLock<Option<Arc<dyn SyncObserver>>> = RwLock::new(None);

/// Installs `observer` for the whole process (`None` removes it).
pub fn observe(observer: Option<Arc<dyn SyncObserver>>) {
    let mut slot = OBSERVER.write().unwrap_or_else(|p| p.into_inner());
    ACTIVE.store(observer.is_some(), Ordering::SeqCst);
    *slot = observer;
}

fn observer() -> Option<Arc<dyn SyncObserver>> {
    if !ACTIVE.load(Ordering::Acquire) {
        return None;
    }
    OBSERVER.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Fsyncs a file's data and metadata (`fsync`).
pub fn file(f: &File) -> std::io::Result<()> {
    f.sync_all()?;
    if let Some(o) = observer() {
        o.file_synced(f);
    }
    Ok(())
}

/// Fsyncs a file's data and the metadata needed to read it back
/// (`fdatasync`): enough after appending to a file whose entry is durable.
pub fn file_data(f: &File) -> std::io::Result<()> {
    f.sync_data()?;
    if let Some(o) = observer() {
        o.file_synced(f);
    }
    Ok(())
}

/// Fsyncs a folder, so the entries created, renamed or removed in it are
/// durable.
pub fn dir(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()?;
    if let Some(o) = observer() {
        o.dir_synced(path);
    }
    Ok(())
}
