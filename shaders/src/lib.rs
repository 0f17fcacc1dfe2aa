//! Quiver's wgpu backend (placeholder crate).
//!
//! Will hold the WGSL compute shaders for every search stage and the pipelines that implement
//! `quiver_engine::backend::Backend` on wgpu. Empty on purpose until the wgpu backend issue.
