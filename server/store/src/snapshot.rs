//! Snapshots: the files of a checkpoint (segments, deletion files, quantizers and the
//! manifest, which names them and the first log number they do not cover) copied out of a
//! collection's folder, so that a new replica starts from them and goes on with the log from
//! that number ([`crate::Collection::export_snapshot`],
//! [`crate::Collection::create_from_snapshot`]). A snapshot folder is laid out as a collection
//! folder with an empty `wal/`.
//!
//! Segment, deletion and quantizer files never change once written (a checkpoint writes new
//! ones under new names), so they are hard-linked where the file system allows and copied
//! otherwise.

use std::path::Path;

use crate::error::{Result, StoreError};
use crate::fsutil::sync_dir;
use crate::manifest::Manifest;

/// The files in `segments/` that the manifest `m` names.
pub fn files_of(m: &Manifest) -> Vec<String> {
    let mut files: Vec<String> = m.quantizers.iter().cloned().collect();
    for e in &m.segments {
        files.push(e.file.clone());
        files.extend(e.deletes.iter().cloned());
    }
    files
}

/// Places `names` of folder `from` in folder `to` (linked, or copied and fsynced), then
/// fsyncs `to`.
pub fn place_files(from: &Path, to: &Path, names: &[String]) -> Result<()> {
    for name in names {
        // Names come from a manifest: plain file names, never paths.
        if name.contains('/') || name.starts_with('.') {
            return Err(StoreError::Invalid {
                field: "manifest",
                reason: format!("{name:?} is not a segment file name"),
            });
        }
        let (src, dst) = (from.join(name), to.join(name));
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).map_err(|e| StoreError::io("copying", &src, e))?;
            let f = std::fs::File::open(&dst).map_err(|e| StoreError::io("opening", &dst, e))?;
            quiver_engine::io::sync::file(&f).map_err(|e| StoreError::io("syncing", &dst, e))?;
        }
    }
    sync_dir(to).map_err(|e| StoreError::io("syncing", to, e))
}
