//! NVRTC compilation of the kernels to PTX, for a given virtual architecture.
//!
//! cudarc loads `libnvrtc` at run time; a missing library is reported as
//! [`CompileError::NvrtcMissing`] (checked first: cudarc itself would panic). Headers such as
//! `cuda_fp16.h` come from `QUIVER_CUDA_INCLUDE` (a path list), else from
//! `$CUDA_HOME/include` or `/usr/local/cuda/include` when present.

use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use thiserror::Error;

use crate::sources::Kernel;

/// Why a kernel did not compile.
#[derive(Debug, Error)]
pub enum CompileError {
    /// No NVRTC library could be loaded.
    #[error("NVRTC (libnvrtc) not found: install the CUDA toolkit or the PyPI wheel nvidia-cuda-nvrtc-cu12 and put its lib folder on LD_LIBRARY_PATH")]
    NvrtcMissing,
    /// NVRTC rejected the source.
    #[error("kernel {kernel} for {arch}: {log}")]
    Rejected {
        /// Kernel name.
        kernel: &'static str,
        /// Virtual architecture.
        arch: &'static str,
        /// NVRTC's log.
        log: String,
    },
}

/// True when an NVRTC library can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the library with libloading.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Include folders for NVRTC.
pub fn include_paths() -> Vec<String> {
    if let Ok(v) = std::env::var("QUIVER_CUDA_INCLUDE") {
        return std::env::split_paths(&v)
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
    }
    let mut out = Vec::new();
    if let Ok(home) = std::env::var("CUDA_HOME") {
        out.push(format!("{home}/include"));
    }
    out.push("/usr/local/cuda/include".into());
    out.into_iter()
        .filter(|p| std::path::Path::new(p).join("cuda_fp16.h").exists())
        .collect()
}

/// Compiles one kernel to PTX for `arch` (e.g. `compute_80`).
pub fn compile_ptx(kernel: &Kernel, arch: &'static str) -> Result<String, CompileError> {
    if !nvrtc_present() {
        return Err(CompileError::NvrtcMissing);
    }
    let opts = CompileOptions {
        arch: Some(arch),
        include_paths: include_paths(),
        name: Some(format!("{}.cu", kernel.name)),
        options: vec!["--std=c++17".into()],
        ..Default::default()
    };
    compile_ptx_with_opts(kernel.source, opts)
        .map(|ptx| ptx.to_src())
        .map_err(|e| CompileError::Rejected {
            kernel: kernel.name,
            arch,
            log: e.to_string(),
        })
}
