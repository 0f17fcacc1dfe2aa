//! Quiver's wgpu path: WGSL compute shaders for the search stages and the code that runs them.
//!
//! Adapter discovery and selection ([`device`]); every stage of a search, each checked against
//! the CPU reference on Mesa's lavapipe in CI: coarse search ([`coarse`]: tiled distances,
//! then a per-query top-nprobe), PQ lookup tables ([`tables`]), the list scans, the
//! WarpSelect-style per-row top-k ([`topk`]) and refine; and [`WgpuBackend`], which runs them
//! behind `quiver_engine::backend::Backend`. Shader sources live in `wgsl/`, one file per
//! kernel, each with its algorithm at the top.

pub mod backend;
pub mod coarse;
pub mod device;
mod error;
mod index;
mod kernel;
mod resident;
pub mod tables;
pub mod topk;

pub use backend::{WgpuBackend, WgpuPrepared};
pub use device::{list_adapters, AdapterChoice, AdapterSummary, GpuDevice};
pub use error::WgpuError;
