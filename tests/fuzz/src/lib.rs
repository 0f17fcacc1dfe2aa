//! Quiver's fuzz targets: each takes arbitrary bytes and drives one of the places where
//! hostile input meets the code — the index file loader, the vector file readers, payload and
//! filter parsing, a collection's files (write-ahead log and checkpoint replay), every gRPC
//! handler, and Qdrant's API (its gRPC methods and REST routes). A target returns normally for every input: errors are the expected answer to bad
//! input, while a panic, an abort, a hang or runaway memory is a finding.
//!
//! `scripts/fuzz` builds the targets for libFuzzer (`targets/`), with Quiver's crates
//! instrumented for coverage, and runs them over the committed seed corpus (`corpus/`, written
//! by [`seeds`]). `cargo test -p quiver-fuzz` replays that corpus and every saved finding
//! (`regressions/`) through the same functions without a fuzzer.

pub mod archive;
pub mod collection_files;
pub mod filter;
pub mod grpc;
pub mod index_file;
pub mod qdrant;
pub mod seeds;
pub mod vector_file;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A target: runs one input.
pub type Target = fn(&[u8]);

/// The targets, by name, as `scripts/fuzz` and the corpus folders know them.
pub const TARGETS: &[(&str, Target)] = &[
    ("index_file", index_file::run),
    ("vector_file", vector_file::run),
    ("filter", filter::run),
    ("collection_files", collection_files::run),
    ("grpc", grpc::run),
    ("qdrant", qdrant::run),
];

/// A folder of this process's own under the temporary directory (`TMPDIR`; scripts/fuzz
/// points it at memory), emptied at first use.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("quiver-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the fuzz scratch folder");
        dir
    })
}

/// Writes `data` to `name` in the scratch folder and returns its path.
pub fn scratch_file(name: &str, data: &[u8]) -> PathBuf {
    let path = scratch().join(name);
    std::fs::write(&path, data).expect("writing a fuzz input to the scratch folder");
    path
}
