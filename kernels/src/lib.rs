//! Quiver's CUDA backend (placeholder crate).
//!
//! Will hold the CUDA C kernels (`.cu`, compiled at run time by NVRTC through cudarc's dynamic
//! loading) and the backend that implements `quiver_engine::backend::Backend` with them. Until
//! then this crate is empty on purpose: the workspace layout is fixed, the code arrives with the
//! CUDA backend issue.
