//! Quiver's engine: the IVF-PQ index and everything it is made of.
//!
//! The data path of a search is one way: a batch of queries → coarse search (top-nprobe lists)
//! → lookup tables → list scan with per-query top-k → exact refine → results. Each stage sits
//! behind [`backend::Backend`]; [`backend::cpu::CpuBackend`] is the reference the GPU backends
//! (crates `quiver-shaders`, `quiver-kernels`) must agree with.
//!
//! This crate does no terminal or network I/O: callers report progress through
//! [`progress::Progress`] and handle errors typed as [`EngineError`].
#![warn(missing_docs)]

pub mod backend;
pub mod bruteforce;
pub mod checksum;
pub mod dense_set;
pub mod error;
pub mod example_query;
pub mod fastscan;
pub mod flat;
pub mod i8panels;
pub mod index;
pub mod interleave;
pub mod io;
pub mod kmeans;
pub mod linalg;
pub mod list;
pub mod metric;
pub mod mmr;
pub mod panels;
pub mod payload;
pub mod persist;
pub mod pq;
pub mod progress;
pub mod simd;
pub mod sparse;
pub mod storage;
pub mod synth;
pub mod topk;

pub use error::EngineError;
pub use flat::FlatIndex;
pub use index::{IndexParams, IvfPqIndex, RefineKind};
pub use metric::Metric;

/// Result type of the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
