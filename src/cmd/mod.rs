//! The sub-commands of `quiver`, one module each.

pub mod bench;
pub mod build;
pub mod devices;
pub mod filtering;
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
use quiver_engine::backend::Backend;
use quiver_engine::IvfPqIndex;
use quiver_server::backend::{AnyBackend, AnyPrepared, BackendKind};

/// Which backend runs a search.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// CUDA when a device works, else a hardware GPU through wgpu, else the CPU (says which).
    Auto,
    /// The CPU backend (SIMD, rayon).
    Cpu,
    /// wgpu compute shaders on the best adapter, a CPU adapter such as lavapipe included.
    Wgpu,
    /// CUDA kernels (NVRTC) on device 0.
    Cuda,
}

/// Opens the chosen backend; prints on stderr which one runs.
pub fn open_backend(choice: BackendChoice) -> anyhow::Result<AnyBackend> {
    let kind = match choice {
        BackendChoice::Auto => BackendKind::Auto,
        BackendChoice::Cpu => BackendKind::Cpu,
        BackendChoice::Wgpu => BackendKind::Wgpu,
        BackendChoice::Cuda => BackendKind::Cuda,
    };
    let (backend, line) = AnyBackend::open(kind)?;
    eprintln!("{line}");
    Ok(backend)
}

/// Loads an index and prepares it on the chosen backend.
pub fn open_index(
    path: &Path,
    backend: BackendChoice,
) -> anyhow::Result<(AnyBackend, AnyPrepared)> {
    let index = quiver_engine::persist::load(path)
        .with_context(|| format!("loading index {}", path.display()))?;
    let backend = open_backend(backend)?;
    let prepared = backend
        .prepare(Arc::new(index))
        .with_context(|| format!("preparing the index on the {} backend", backend.name()))?;
    Ok((backend, prepared))
}

/// Loads an index file without preparing it.
pub fn load_index(path: &Path) -> anyhow::Result<IvfPqIndex> {
    quiver_engine::persist::load(path).with_context(|| format!("loading index {}", path.display()))
}
