//! Quiver's wgpu path: WGSL compute shaders for the search stages and the code that runs them.
//!
//! Built so far (the wgpu backend issue is in progress): adapter discovery and selection
//! ([`device`]), and the first two stages of a search, each checked against the CPU reference
//! on Mesa's lavapipe in CI: coarse search ([`coarse`]: tiled distances, then a per-query
//! top-nprobe by the top-k kernel) and PQ lookup tables ([`tables`]). The list scan, the per-query top-k
//! and refine follow, after which this crate implements `quiver_engine::backend::Backend`.
//! Shader sources live in `wgsl/`, one file per kernel, each with its algorithm at the top.

pub mod backend;
pub mod coarse;
pub mod device;
mod error;
mod index;
mod kernel;
pub mod tables;
mod topk;

pub use backend::{WgpuBackend, WgpuPrepared};
pub use device::{list_adapters, AdapterChoice, AdapterSummary, GpuDevice};
pub use error::WgpuError;
