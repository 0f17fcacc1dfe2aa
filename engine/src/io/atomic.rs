//! Atomic file replacement: write to a temp file in the target's directory,
//! flush, fsync, rename onto the target, fsync the directory. A reader of the
//! target path sees either the old file or the complete new one, never a
//! partial write; the temp file is removed on any error or early drop.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::IoError;

/// Buffer size of the writer handed out by [`AtomicFile`].
const BUF_BYTES: usize = 1 << 20;

/// Distinguishes temp files of several writers in one process.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// A file being written under a temp name (`<name>.tmp-<pid>-<seq>`, same
/// directory), renamed onto its target by [`AtomicFile::commit`]. Dropping it
/// uncommitted removes the temp file.
#[derive(Debug)]
pub struct AtomicFile {
    target: PathBuf,
    tmp: PathBuf,
    writer: BufWriter<File>,
    committed: bool,
}

impl AtomicFile {
    /// Creates the temp file for an eventual `path`.
    pub fn create(path: &Path) -> Result<AtomicFile, IoError> {
        let name = path.file_name().ok_or_else(|| {
            IoError::os(
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
            )
        })?;
        let mut tmp_name = name.to_os_string();
        tmp_name.push(format!(
            ".tmp-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = path.with_file_name(tmp_name);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| IoError::os(path, e))?;
        Ok(AtomicFile {
            target: path.to_path_buf(),
            tmp,
            writer: BufWriter::with_capacity(BUF_BYTES, file),
            committed: false,
        })
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// The temp path being written.
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// The buffered writer over the temp file.
    pub fn writer(&mut self) -> &mut BufWriter<File> {
        &mut self.writer
    }

    /// Flushes, fsyncs, renames onto the target and fsyncs the directory.
    /// On error the temp file is removed and the target is left as it was
    /// (unless the failure is the final directory fsync, after the rename).
    pub fn commit(mut self) -> Result<(), IoError> {
        let target = self.target.clone();
        let os = |e| IoError::os(&target, e);
        self.writer.flush().map_err(os)?;
        super::sync::file(self.writer.get_ref()).map_err(os)?;
        std::fs::rename(&self.tmp, &self.target).map_err(os)?;
        self.committed = true;
        sync_parent_dir(&self.target)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: nothing useful can be done with a failure here.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Fsyncs the directory holding `path`, so a rename into it is durable.
fn sync_parent_dir(path: &Path) -> Result<(), IoError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    super::sync::dir(dir).map_err(|e| IoError::os(dir, e))
}

/// Atomically replaces `path` with what `write` produces: temp name in the
/// same directory, write, flush, fsync file, rename, fsync directory. The temp
/// file is removed if `write` (or any later step) fails.
pub fn atomic_write_file(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<(), IoError> {
    let mut f = AtomicFile::create(path)?;
    write(f.writer()).map_err(|e| IoError::os(path, e))?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("meta.bin");
        atomic_write_file(&p, |w| w.write_all(b"first")).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        atomic_write_file(&p, |w| w.write_all(b"second, longer")).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second, longer");
        assert_eq!(entries(dir.path()), vec!["meta.bin".to_string()]);
    }

    #[test]
    fn failed_write_leaves_target_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("meta.bin");
        std::fs::write(&p, b"old").unwrap();
        let e = atomic_write_file(&p, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("boom"))
        })
        .unwrap_err();
        assert!(matches!(e, IoError::Os { .. }));
        assert!(e.to_string().contains("meta.bin") && e.to_string().contains("boom"));
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(entries(dir.path()), vec!["meta.bin".to_string()]);
    }

    #[test]
    fn dropped_uncommitted_removes_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.bin");
        let mut f = AtomicFile::create(&p).unwrap();
        f.writer().write_all(&[1, 2, 3]).unwrap();
        f.writer().flush().unwrap();
        assert!(f.temp_path().exists());
        drop(f);
        assert!(entries(dir.path()).is_empty());
    }

    #[test]
    fn missing_directory_is_os_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("no/such/dir/x.bin");
        let e = atomic_write_file(&p, |_| Ok(())).unwrap_err();
        assert!(matches!(e, IoError::Os { .. }));
        assert!(e.to_string().contains("x.bin"));
    }
}
