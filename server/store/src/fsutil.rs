//! Durable file operations: every file is written to a temporary name, fsynced, renamed into
//! place and its folder fsynced, so a crash leaves either the old file or the new one. Each
//! step has a fault-injection point (`failpoints` feature) for the tests.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};

/// Prefix of temporary files; leftovers are removed at start.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Turns an injected failure into an I/O error.
macro_rules! inject {
    ($name:expr) => {
        fail::fail_point!($name, |_| Err(std::io::Error::other(concat!(
            "injected failure at ",
            $name
        ))))
    };
}
pub(crate) use inject;

/// Fsyncs a folder, so entries created, renamed or removed in it are durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    inject!("fs::sync_dir");
    quiver_engine::io::sync::dir(dir)
}

/// The temporary name `write_atomic` uses for `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{TEMP_PREFIX}{name}"))
}

/// Writes `parts` (concatenated) to `path` atomically and durably.
pub fn write_atomic(path: &Path, parts: &[&[u8]]) -> Result<()> {
    let tmp = temp_path(path);
    let run = || -> std::io::Result<()> {
        inject!("fs::write_atomic::create");
        let mut f = File::create(&tmp)?;
        for p in parts {
            inject!("fs::write_atomic::write");
            f.write_all(p)?;
        }
        inject!("fs::write_atomic::fsync");
        quiver_engine::io::sync::file(&f)?;
        drop(f);
        inject!("fs::write_atomic::rename");
        std::fs::rename(&tmp, path)?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))
    };
    run().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        StoreError::io("writing", path, e)
    })
}

/// Removes temporary files left in `dir` by a crash.
pub fn remove_temp_files(dir: &Path) -> Result<usize> {
    let mut n = 0;
    let entries = std::fs::read_dir(dir).map_err(|e| StoreError::io("listing", dir, e))?;
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            let p = entry.path();
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            r.map_err(|e| StoreError::io("removing the leftover", &p, e))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Builds a collection or snapshot folder at `dest` (which must not exist) through a
/// temporary folder beside it: `fill` gets that folder, with `segments/` and `wal/` made;
/// then it is fsynced and renamed into place, and the parent fsynced.
pub fn build_folder(dest: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if dest.exists() {
        return Err(StoreError::Precondition(format!(
            "{} already exists",
            dest.display()
        )));
    }
    let parent = dest.parent().unwrap_or(Path::new("."));
    // Unique to this build (two builds of one destination never share it).
    static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = parent.join(format!(
        "{}{}-{}-{}",
        TEMP_PREFIX,
        dest.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id(),
        BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    for d in [tmp.join("segments"), tmp.join("wal")] {
        std::fs::create_dir_all(&d).map_err(|e| StoreError::io("creating", &d, e))?;
    }
    let built = fill(&tmp).and_then(|()| {
        for d in [tmp.join("segments"), tmp.join("wal"), tmp.clone()] {
            sync_dir(&d).map_err(|e| StoreError::io("syncing", &d, e))?;
        }
        std::fs::rename(&tmp, dest).map_err(|e| StoreError::io("renaming into place", dest, e))?;
        sync_dir(parent).map_err(|e| StoreError::io("syncing", parent, e))
    });
    if built.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    built
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_and_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, &[b"{", b"}"]).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{}");
        std::fs::write(temp_path(&p), b"half").unwrap();
        assert_eq!(remove_temp_files(dir.path()).unwrap(), 1);
        assert!(!temp_path(&p).exists() && p.exists());
    }
}
