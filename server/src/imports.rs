//! Safe imports: the files `LoadIndex` may read. Only regular files inside the import
//! directory (`--import-dir`; without it `LoadIndex` is off) are taken: a path is resolved
//! (symlinks followed) and must stay inside the folder, and the file is opened without
//! blocking and without following a last symlink, then checked to be a regular file, so a
//! FIFO, a device or a directory is refused at once instead of hanging or reading forever.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tonic::Status;

/// The import directory, resolved once at start.
#[derive(Debug, Clone)]
pub struct ImportDir {
    root: PathBuf,
}

impl ImportDir {
    /// The folder `dir` (it must exist).
    pub fn new(dir: &Path) -> std::io::Result<ImportDir> {
        let root = dir.canonicalize()?;
        if !root.is_dir() {
            return Err(std::io::Error::other(format!(
                "{} is not a directory",
                root.display()
            )));
        }
        Ok(ImportDir { root })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file a request names (relative to the folder, or absolute inside it), opened and
    /// checked: INVALID_ARGUMENT or PERMISSION_DENIED naming `field` when it may not be read.
    pub fn open(&self, field: &str, requested: &str) -> Result<(PathBuf, File), Status> {
        if requested.is_empty() {
            return Err(crate::status::invalid(field, "empty"));
        }
        let joined = self.root.join(requested);
        let denied = |why: &str| Status::permission_denied(format!("{field}: {why}"));
        let resolved = joined.canonicalize().map_err(|e| {
            crate::status::invalid(field, format!("cannot be opened: {}", io_reason(&e)))
        })?;
        if !resolved.starts_with(&self.root) {
            return Err(denied("outside the import directory (--import-dir)"));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&resolved)
            .map_err(|e| {
                crate::status::invalid(field, format!("cannot be opened: {}", io_reason(&e)))
            })?;
        let meta = file
            .metadata()
            .map_err(|e| crate::status::invalid(field, io_reason(&e)))?;
        if !meta.is_file() {
            let kind = {
                use std::os::unix::fs::FileTypeExt;
                let t = meta.file_type();
                if t.is_fifo() {
                    "a FIFO"
                } else if t.is_dir() {
                    "a directory"
                } else if t.is_block_device() || t.is_char_device() {
                    "a device"
                } else if t.is_socket() {
                    "a socket"
                } else {
                    "not a regular file"
                }
            };
            return Err(crate::status::invalid(
                field,
                format!("is {kind}: only regular files are imported"),
            ));
        }
        Ok((resolved, file))
    }
}

/// The reason of an I/O error without the path (the caller names the field).
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_inside_the_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("imports");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("a.qvr"), b"x").unwrap();
        std::fs::write(tmp.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), dir.join("out")).unwrap();
        std::os::unix::fs::symlink(dir.join("a.qvr"), dir.join("in")).unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        let fifo = std::ffi::CString::new(dir.join("fifo").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let d = ImportDir::new(&dir).unwrap();
        let code = |p: &str| d.open("path", p).map(|_| ()).map_err(|s| s.code());
        assert_eq!(code("a.qvr"), Ok(()));
        assert_eq!(code("in"), Ok(()));
        assert_eq!(
            code(dir.join("a.qvr").to_str().unwrap()),
            Ok(()),
            "absolute, inside"
        );
        assert_eq!(code("out"), Err(tonic::Code::PermissionDenied));
        assert_eq!(code("../secret"), Err(tonic::Code::PermissionDenied));
        assert_eq!(
            code(tmp.path().join("secret").to_str().unwrap()),
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(code("fifo"), Err(tonic::Code::InvalidArgument));
        assert!(d
            .open("path", "fifo")
            .unwrap_err()
            .message()
            .contains("FIFO"));
        assert_eq!(code("sub"), Err(tonic::Code::InvalidArgument));
        assert_eq!(code("missing"), Err(tonic::Code::InvalidArgument));
        assert_eq!(code(""), Err(tonic::Code::InvalidArgument));
    }
}
