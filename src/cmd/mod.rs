//! The sub-commands of `quiver`, one module each.

pub mod bench;
pub mod build;
pub mod devices;
pub mod gt;
pub mod info;
pub mod loadgen;
pub mod rerank;
pub mod search;
pub mod serve;
pub mod synth;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use quiver_engine::backend::cpu::{CpuBackend, CpuPrepared};
use quiver_engine::backend::Backend;
use quiver_engine::IvfPqIndex;

/// Which backend runs a search.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// The best available backend (the CPU in this build).
    Auto,
    /// The CPU reference backend.
    Cpu,
}

/// Loads an index and prepares it on the chosen backend.
pub fn open_index(
    path: &Path,
    backend: BackendChoice,
) -> anyhow::Result<(CpuBackend, CpuPrepared)> {
    let index = quiver_engine::persist::load(path)
        .with_context(|| format!("loading index {}", path.display()))?;
    let backend = match backend {
        BackendChoice::Auto | BackendChoice::Cpu => CpuBackend,
    };
    let prepared = backend.prepare(Arc::new(index))?;
    Ok((backend, prepared))
}

/// Loads an index file without preparing it.
pub fn load_index(path: &Path) -> anyhow::Result<IvfPqIndex> {
    quiver_engine::persist::load(path).with_context(|| format!("loading index {}", path.display()))
}
