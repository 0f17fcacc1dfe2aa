//! NVRTC compilation of the kernels: a cubin for one GPU (`sm_XY`) or PTX for a virtual
//! architecture (`compute_XY`), and the PTX ISA rules that decide which of them a driver loads.
//!
//! cudarc loads `libnvrtc` at run time; a missing library is reported as
//! [`CompileError::NvrtcMissing`] (checked first: cudarc itself would panic). Headers such as
//! `cuda_fp16.h` come from `QUIVER_CUDA_INCLUDE` (a path list), else from
//! `$CUDA_HOME/include` or `/usr/local/cuda/include` when present.
//!
//! Every kernel is compiled with `--fmad=false`: NVRTC would otherwise contract a multiply
//! followed by an add into one fused multiply-add wherever it likes, which the CPU reference
//! (and the emulator, built with `-ffp-contract=off`) does not, so near ties could be decided
//! differently on a GPU than in CI. Where a kernel wants the FMA (the coarse product, refine)
//! it says so with `__fmaf_rn`, which the emulator computes as `std::fma` — the same
//! correctly rounded result — so the emulator's arithmetic is the hardware's.
//!
//! Which code a driver loads: a cubin holds the GPU's own machine code and loads on any driver
//! of the toolkit's major version (CUDA's minor-version compatibility), so it is the first
//! choice. PTX is compiled by the driver, which refuses an ISA newer than its own
//! (`CUDA_ERROR_UNSUPPORTED_PTX_VERSION`: NVRTC 12.9 writes ISA 8.8, which drivers before
//! R575 refuse). Quiver's kernels use nothing past ISA 7.0, so their PTX is declared at the
//! driver's ISA when that still covers the architecture ([`ptx_isa_for_driver`],
//! [`min_ptx_isa_for`], [`with_ptx_isa`]); `kernels/tests/compile.rs` assembles such lowered
//! PTX with ptxas to prove the lowering sound.

use std::ffi::{c_char, c_int, CStr, CString};
use std::fmt;

use cudarc::nvrtc::sys;
use thiserror::Error;

use crate::sources::Kernel;

/// Why a kernel did not compile.
#[derive(Debug, Error)]
pub enum CompileError {
    /// No NVRTC library could be loaded.
    #[error("NVRTC (libnvrtc) not found: install the CUDA toolkit or the PyPI wheel nvidia-cuda-nvrtc-cu12 and put its lib folder on LD_LIBRARY_PATH")]
    NvrtcMissing,
    /// NVRTC rejected the source or the architecture.
    #[error("kernel {kernel} for {arch}: {log}")]
    Rejected {
        /// Kernel name.
        kernel: &'static str,
        /// Architecture (`compute_XY` or `sm_XY`).
        arch: String,
        /// NVRTC's log.
        log: String,
    },
}

/// A PTX ISA version (`.version major.minor`), ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PtxIsa {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

impl PtxIsa {
    /// `major.minor`.
    pub const fn new(major: u32, minor: u32) -> PtxIsa {
        PtxIsa { major, minor }
    }
}

impl fmt::Display for PtxIsa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A CUDA version as the driver and NVRTC report it (`1000 · major + 10 · minor`: 12090 is
/// 12.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CudaVersion(pub i32);

impl CudaVersion {
    /// From a major and a minor version.
    pub const fn from_parts(major: i32, minor: i32) -> CudaVersion {
        CudaVersion(major * 1000 + minor * 10)
    }

    /// The major version.
    pub const fn major(self) -> i32 {
        self.0 / 1000
    }

    /// The minor version.
    pub const fn minor(self) -> i32 {
        self.0 % 1000 / 10
    }
}

impl fmt::Display for CudaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major(), self.minor())
    }
}

/// The newest PTX ISA each CUDA release reads and writes (the PTX ISA manual's release
/// history), oldest first.
const ISA_OF_RELEASE: [(i32, PtxIsa); 20] = [
    (11000, PtxIsa::new(7, 0)),
    (11010, PtxIsa::new(7, 1)),
    (11020, PtxIsa::new(7, 2)),
    (11030, PtxIsa::new(7, 3)),
    (11040, PtxIsa::new(7, 4)),
    (11050, PtxIsa::new(7, 5)),
    (11060, PtxIsa::new(7, 6)),
    (11070, PtxIsa::new(7, 7)),
    (11080, PtxIsa::new(7, 8)),
    (12000, PtxIsa::new(8, 0)),
    (12010, PtxIsa::new(8, 1)),
    (12020, PtxIsa::new(8, 2)),
    (12030, PtxIsa::new(8, 3)),
    (12040, PtxIsa::new(8, 4)),
    (12050, PtxIsa::new(8, 5)),
    (12060, PtxIsa::new(8, 5)),
    (12070, PtxIsa::new(8, 6)),
    (12080, PtxIsa::new(8, 7)),
    (12090, PtxIsa::new(8, 8)),
    (13000, PtxIsa::new(9, 0)),
];

/// The newest PTX ISA a driver of CUDA version `driver` compiles (a release after the table's
/// last reads at least what that one does; one before CUDA 11 is taken as ISA 6.0).
pub fn ptx_isa_for_driver(driver: CudaVersion) -> PtxIsa {
    ISA_OF_RELEASE
        .iter()
        .rev()
        .find(|(v, _)| *v <= driver.0)
        .map_or(PtxIsa::new(6, 0), |(_, isa)| *isa)
}

/// The oldest PTX ISA that can target compute capability `major.minor` (`None`: not known
/// here, so only the ISA NVRTC wrote is used).
pub fn min_ptx_isa_for(major: i32, minor: i32) -> Option<PtxIsa> {
    Some(match (major, minor) {
        (7, 0) => PtxIsa::new(6, 0),
        (7, 2) => PtxIsa::new(6, 1),
        (7, 5) => PtxIsa::new(6, 3),
        (8, 0) => PtxIsa::new(7, 0),
        (8, 6) => PtxIsa::new(7, 1),
        (8, 7) => PtxIsa::new(7, 4),
        (8, 9) | (9, 0) => PtxIsa::new(7, 8),
        (10, 0) | (10, 1) => PtxIsa::new(8, 6),
        (12, 0) => PtxIsa::new(8, 7),
        _ => return None,
    })
}

/// The ISA a PTX text declares (its `.version` directive).
pub fn ptx_isa(ptx: &str) -> Option<PtxIsa> {
    let line = ptx
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(".version"))?;
    let (major, minor) = line.trim_start_matches(".version").trim().split_once('.')?;
    Some(PtxIsa::new(major.parse().ok()?, minor.trim().parse().ok()?))
}

/// `ptx` declared at ISA `isa` (its `.version` line rewritten). Sound for Quiver's kernels,
/// which use no instruction or directive newer than ISA 7.0, as long as `isa` still covers
/// the `.target` ([`min_ptx_isa_for`]).
pub fn with_ptx_isa(ptx: &str, isa: PtxIsa) -> String {
    let mut out = String::with_capacity(ptx.len());
    let mut done = false;
    for line in ptx.split_inclusive('\n') {
        if !done && line.trim_start().starts_with(".version") {
            out.push_str(&format!(".version {isa}\n"));
            done = true;
        } else {
            out.push_str(line);
        }
    }
    out
}

/// True when an NVRTC library can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the library with libloading.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// The loaded NVRTC's version.
pub fn nvrtc_version() -> Result<CudaVersion, CompileError> {
    if !nvrtc_present() {
        return Err(CompileError::NvrtcMissing);
    }
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: two out-parameters NVRTC writes.
    let r = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(CompileError::Rejected {
            kernel: "(none)",
            arch: String::new(),
            log: format!("nvrtcVersion failed: {r:?}"),
        });
    }
    Ok(CudaVersion::from_parts(major, minor))
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

/// The options every kernel is compiled with, besides the architecture (see the module doc
/// for `--fmad=false`). Part of the compile cache's key.
pub const COMPILE_FLAGS: [&str; 2] = ["--std=c++17", "--fmad=false"];

/// Compiles one kernel to PTX for `arch` (e.g. `compute_80`).
pub fn compile_ptx(kernel: &Kernel, arch: &str) -> Result<String, CompileError> {
    let bytes = nvrtc_compile(kernel, arch, Output::Ptx)?;
    let text = CStr::from_bytes_until_nul(&bytes)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
    Ok(text)
}

/// Compiles one kernel to a cubin (an ELF image of machine code) for `sm` (e.g. `sm_90`):
/// what the driver loads without compiling anything, whatever PTX ISA it reads.
pub fn compile_cubin(kernel: &Kernel, sm: &str) -> Result<Vec<u8>, CompileError> {
    nvrtc_compile(kernel, sm, Output::Cubin)
}

/// What NVRTC hands back.
#[derive(Clone, Copy)]
enum Output {
    Ptx,
    Cubin,
}

/// One NVRTC compilation of `kernel` (its headers given by name, so `#include "x.cuh"`
/// resolves) for `arch`.
fn nvrtc_compile(kernel: &Kernel, arch: &str, output: Output) -> Result<Vec<u8>, CompileError> {
    if !nvrtc_present() {
        return Err(CompileError::NvrtcMissing);
    }
    let rejected = |log: String| CompileError::Rejected {
        kernel: kernel.name,
        arch: arch.into(),
        log,
    };
    let c = |s: &str| CString::new(s).map_err(|e| rejected(e.to_string()));
    let src = c(kernel.source)?;
    let name = c(&format!("{}.cu", kernel.name))?;
    let headers = kernel
        .headers
        .iter()
        .map(|(_, text)| c(text))
        .collect::<Result<Vec<_>, _>>()?;
    let header_names = kernel
        .headers
        .iter()
        .map(|(n, _)| c(n))
        .collect::<Result<Vec<_>, _>>()?;
    let header_ptrs: Vec<*const c_char> = headers.iter().map(|h| h.as_ptr()).collect();
    let header_name_ptrs: Vec<*const c_char> = header_names.iter().map(|h| h.as_ptr()).collect();
    let options = COMPILE_FLAGS
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--gpu-architecture={arch}")])
        .chain(
            include_paths()
                .into_iter()
                .map(|p| format!("--include-path={p}")),
        )
        .map(|o| c(&o))
        .collect::<Result<Vec<_>, _>>()?;
    let option_ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    let ok = sys::nvrtcResult::NVRTC_SUCCESS;
    // SAFETY: NVRTC's C API with NUL-terminated strings and arrays that outlive the program;
    // the program is destroyed on every path below.
    unsafe {
        let r = sys::nvrtcCreateProgram(
            &mut prog,
            src.as_ptr(),
            name.as_ptr(),
            header_ptrs.len() as c_int,
            header_ptrs.as_ptr(),
            header_name_ptrs.as_ptr(),
        );
        if r != ok {
            return Err(rejected(format!("nvrtcCreateProgram: {r:?}")));
        }
        let result = (|| {
            let r =
                sys::nvrtcCompileProgram(prog, option_ptrs.len() as c_int, option_ptrs.as_ptr());
            if r != ok {
                let mut size = 0usize;
                let mut log = String::new();
                if sys::nvrtcGetProgramLogSize(prog, &mut size) == ok {
                    let mut buf = vec![0 as c_char; size.max(1)];
                    if sys::nvrtcGetProgramLog(prog, buf.as_mut_ptr()) == ok {
                        log = CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned();
                    }
                }
                return Err(rejected(format!("{r:?}: {log}")));
            }
            let mut size = 0usize;
            let r = match output {
                Output::Ptx => sys::nvrtcGetPTXSize(prog, &mut size),
                Output::Cubin => sys::nvrtcGetCUBINSize(prog, &mut size),
            };
            if r != ok || size == 0 {
                return Err(rejected(format!("no output ({r:?}, {size} bytes)")));
            }
            let mut out = vec![0u8; size];
            let r = match output {
                Output::Ptx => sys::nvrtcGetPTX(prog, out.as_mut_ptr() as *mut c_char),
                Output::Cubin => sys::nvrtcGetCUBIN(prog, out.as_mut_ptr() as *mut c_char),
            };
            if r != ok {
                return Err(rejected(format!("reading NVRTC's output: {r:?}")));
            }
            Ok(out)
        })();
        sys::nvrtcDestroyProgram(&mut prog);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_read_the_isa_of_their_release() {
        assert_eq!(ptx_isa_for_driver(CudaVersion(12090)), PtxIsa::new(8, 8));
        assert_eq!(ptx_isa_for_driver(CudaVersion(12020)), PtxIsa::new(8, 2));
        assert_eq!(ptx_isa_for_driver(CudaVersion(12060)), PtxIsa::new(8, 5));
        assert_eq!(ptx_isa_for_driver(CudaVersion(13010)), PtxIsa::new(9, 0));
        assert_eq!(ptx_isa_for_driver(CudaVersion(10020)), PtxIsa::new(6, 0));
        assert_eq!(CudaVersion(12040).to_string(), "12.4");
    }

    #[test]
    fn the_version_line_is_read_and_rewritten() {
        let ptx = "//\n// Generated by NVIDIA NVVM Compiler\n.version 8.8\n.target sm_90\n.address_size 64\n";
        assert_eq!(ptx_isa(ptx), Some(PtxIsa::new(8, 8)));
        let low = with_ptx_isa(ptx, PtxIsa::new(7, 8));
        assert_eq!(ptx_isa(&low), Some(PtxIsa::new(7, 8)));
        assert!(low.contains(".target sm_90\n"));
        assert_eq!(low.len(), ptx.len());
        assert_eq!(ptx_isa("no version"), None);
        assert!(min_ptx_isa_for(9, 0) < Some(PtxIsa::new(8, 2)));
        assert_eq!(min_ptx_isa_for(11, 0), None);
    }
}
