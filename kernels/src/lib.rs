//! Quiver's CUDA path: CUDA C kernels (`cuda/*.cu`), one per search stage and each the twin of
//! a WGSL shader in `shaders/wgsl/` (same algorithm, stage for stage), compiled at run time by
//! NVRTC through cudarc's dynamic loading, so building needs no CUDA installation.
//!
//! [`sources`] lists the kernels; [`compile`] turns one into a cubin or PTX for a GPU
//! generation (CI compiles every kernel for `compute_80` and `compute_90` and assembles the
//! PTX with ptxas); `load` picks the form this driver loads (a cubin, else PTX at an ISA the
//! driver reads) and caches it;
//! [`probe`] says whether a CUDA driver and device exist, without cudarc's panic when the
//! driver library is missing; [`backend`] runs the stages, with copies overlapping compute on
//! a second stream (`transfer`), device-resident batches on lanes that keep their working
//! memory (`scratch`). `emu/` (outside the crate) is a `libcuda.so` that runs these
//! kernels on the CPU, so CI executes the whole backend (`emu/README.md`).

pub mod backend;
pub mod compile;
pub mod counters;
mod load;
pub mod probe;
mod resident;
mod scratch;
pub mod sources;
mod transfer;

pub use backend::{CudaBackend, CudaError, CudaPrepared};
pub use compile::{compile_cubin, compile_ptx, CompileError, CudaVersion, PtxIsa};
pub use counters::{emulator_bank_counts, emulator_counters, BankCounts, DeviceCounters};
pub use load::{CodeForm, LoadedCode};
pub use sources::{Kernel, KERNELS};
