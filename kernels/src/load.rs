//! Which code the kernels are loaded as on this driver and GPU: a cubin for the device's own
//! architecture first, else PTX at an ISA the driver compiles (see `compile.rs`'s module doc),
//! each compiled once and cached on disk.
//!
//! `QUIVER_CUDA_CODE` = `cubin` or `ptx` forces one form (`auto`, the default, tries the
//! cubin, then PTX). When nothing loads, the error names NVRTC's version and PTX ISA, the
//! driver's version and the ISA it reads, and why the cubin was not taken.
//!
//! The cache (`$QUIVER_CACHE_DIR`, else `$XDG_CACHE_HOME/quiver`, else `~/.cache/quiver`) is
//! keyed by the kernel's source, the compile flags, NVRTC's version, the architecture, the
//! driver's version and the form, so an upgraded NVRTC or driver never reuses stale code.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;

use crate::backend::{driver, CudaError};
use crate::compile::{
    compile_cubin, compile_ptx, min_ptx_isa_for, nvrtc_version, ptx_isa, ptx_isa_for_driver,
    with_ptx_isa, CudaVersion, PtxIsa, COMPILE_FLAGS,
};
use crate::sources::{Kernel, KERNELS};

/// The form the kernels were loaded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeForm {
    /// Machine code for the device's architecture.
    Cubin,
    /// PTX compiled by the driver, declared at `isa` (NVRTC wrote `written`).
    Ptx {
        /// The ISA the PTX declares as loaded.
        isa: PtxIsa,
        /// The ISA NVRTC wrote.
        written: PtxIsa,
    },
}

/// What was loaded, and for which driver and GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedCode {
    /// Cubin or PTX.
    pub form: CodeForm,
    /// NVRTC's version.
    pub nvrtc: CudaVersion,
    /// The driver's CUDA version.
    pub driver: CudaVersion,
    /// The device's compute capability.
    pub capability: (i32, i32),
}

impl fmt::Display for LoadedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (ma, mi) = self.capability;
        match self.form {
            CodeForm::Cubin => write!(f, "cubin sm_{ma}{mi}")?,
            CodeForm::Ptx { isa, written } if isa == written => {
                write!(f, "PTX ISA {isa} for compute_{ma}{mi}")?
            }
            CodeForm::Ptx { isa, written } => write!(
                f,
                "PTX for compute_{ma}{mi} declared at ISA {isa} (NVRTC wrote {written})"
            )?,
        }
        write!(f, ", NVRTC {}, driver {}", self.nvrtc, self.driver)
    }
}

/// Which forms to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Preference {
    Auto,
    Cubin,
    Ptx,
}

fn preference() -> Result<Preference, CudaError> {
    match std::env::var("QUIVER_CUDA_CODE").as_deref() {
        Err(_) | Ok("") | Ok("auto") => Ok(Preference::Auto),
        Ok("cubin") => Ok(Preference::Cubin),
        Ok("ptx") => Ok(Preference::Ptx),
        Ok(other) => Err(CudaError::Invalid(format!(
            "QUIVER_CUDA_CODE is {other:?}: expected auto, cubin or ptx"
        ))),
    }
}

/// The driver's CUDA version.
pub(crate) fn driver_version() -> Result<CudaVersion, CudaError> {
    let mut v = 0;
    // SAFETY: one out-parameter; the driver library is loaded (checked before any context).
    let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
    if r != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        return Err(CudaError::Driver(format!("cuDriverGetVersion: {r:?}")));
    }
    Ok(CudaVersion(v))
}

/// Where compiled code is cached.
fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("QUIVER_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("quiver"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/quiver"))
}

/// The cache file of `kernel` in `form` (`cubin` / `ptx`) for `arch`: keyed by everything
/// the compilation reads (the source, its headers, the flags, the include folders and the
/// toolkit headers there that the kernels include) and by NVRTC, the driver and the form.
fn cache_file(kernel: &Kernel, form: &str, arch: &str, code: &LoadedCode) -> Option<PathBuf> {
    let mut h = DefaultHasher::new();
    kernel.source.hash(&mut h);
    kernel.headers.hash(&mut h);
    COMPILE_FLAGS.hash(&mut h);
    for dir in crate::compile::include_paths() {
        let header = std::fs::read(std::path::Path::new(&dir).join("cuda_fp16.h")).ok();
        (dir, header).hash(&mut h);
    }
    (code.nvrtc, code.driver, arch, form).hash(&mut h);
    cache_dir().map(|d| {
        d.join(form).join(format!(
            "{}-{arch}-nvrtc{}-driver{}-{:016x}.{form}",
            kernel.name,
            code.nvrtc,
            code.driver,
            h.finish()
        ))
    })
}

/// `build()` through the cache file `file`; true when the bytes came from the cache.
fn cached<E>(
    file: &Option<PathBuf>,
    build: impl FnOnce() -> Result<Vec<u8>, E>,
) -> Result<(Vec<u8>, bool), E> {
    if let Some(f) = file {
        if let Ok(bytes) = std::fs::read(f) {
            return Ok((bytes, true));
        }
    }
    let bytes = build()?;
    if let Some(f) = file {
        // A cache: failing to write it only costs a compilation next time. Each writer has a
        // temporary file of its own, renamed into place whole.
        if let Some(parent) = f.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = f.with_extension(format!("{}.{n}.tmp", std::process::id()));
        if std::fs::write(&tmp, &bytes).is_ok() && std::fs::rename(&tmp, f).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok((bytes, false))
}

/// A module from the cache or NVRTC; a cached image the driver does not take is dropped from
/// the cache and compiled again, once.
fn load_cached(
    ctx: &Arc<CudaContext>,
    file: Option<PathBuf>,
    build: impl Fn() -> Result<Vec<u8>, CudaError>,
    image: impl Fn(Vec<u8>) -> Result<Ptx, CudaError>,
) -> Result<Arc<CudaModule>, CudaError> {
    let (bytes, from_cache) = cached(&file, &build)?;
    match ctx.load_module(image(bytes)?) {
        Ok(m) => Ok(m),
        Err(_) if from_cache => {
            if let Some(f) = &file {
                let _ = std::fs::remove_file(f);
            }
            let (bytes, _) = cached(&file, &build)?;
            ctx.load_module(image(bytes)?).map_err(driver)
        }
        Err(e) => Err(driver(e)),
    }
}

fn arch_name(prefix: &str, (major, minor): (i32, i32)) -> String {
    format!("{prefix}_{major}{minor}")
}

/// Every kernel's module in the form that loads here.
fn load_modules(
    ctx: &Arc<CudaContext>,
    code: &mut LoadedCode,
) -> Result<Vec<Arc<CudaModule>>, CudaError> {
    let pref = preference()?;
    let mut cubin_failure = None;
    if pref != Preference::Ptx {
        let sm = arch_name("sm", code.capability);
        let attempt = || -> Result<Vec<Arc<CudaModule>>, CudaError> {
            KERNELS
                .iter()
                .map(|k| {
                    load_cached(
                        ctx,
                        cache_file(k, "cubin", &sm, code),
                        || Ok(compile_cubin(k, &sm)?),
                        |bin| Ok(Ptx::from_binary(bin)),
                    )
                })
                .collect()
        };
        match attempt() {
            Ok(modules) => {
                code.form = CodeForm::Cubin;
                return Ok(modules);
            }
            Err(e) if pref == Preference::Cubin => return Err(e),
            Err(e) => cubin_failure = Some(e),
        }
    }
    let compute = arch_name("compute", code.capability);
    let readable = ptx_isa_for_driver(code.driver);
    let floor = min_ptx_isa_for(code.capability.0, code.capability.1);
    let nothing_fits = |written: PtxIsa| {
        let (ma, mi) = code.capability;
        CudaError::Unavailable(format!(
            "no code this driver can load for sm_{ma}{mi}: NVRTC {} writes PTX ISA {written} and \
             the driver (CUDA {}) reads PTX up to ISA {readable}{}; {}",
            code.nvrtc,
            code.driver,
            match floor {
                Some(f) => format!(", while compute_{ma}{mi} needs ISA {f} or later"),
                None => String::new(),
            },
            match &cubin_failure {
                Some(e) => format!("the cubin did not load either ({e})"),
                None => "cubins were not tried (QUIVER_CUDA_CODE=ptx)".into(),
            }
        ))
    };
    let mut modules = Vec::with_capacity(KERNELS.len());
    for k in KERNELS {
        // NVRTC's PTX, whose ISA decides what the driver is given.
        let file = cache_file(k, "ptx", &compute, code);
        let build = || -> Result<Vec<u8>, CudaError> { Ok(compile_ptx(k, &compute)?.into_bytes()) };
        let parse = |bytes: Vec<u8>| ptx_isa(std::str::from_utf8(&bytes).ok()?);
        let (bytes, from_cache) = cached(&file, build)?;
        let written = match parse(bytes) {
            Some(p) => p,
            // A torn cache file: dropped and compiled again.
            None if from_cache => {
                if let Some(f) = &file {
                    let _ = std::fs::remove_file(f);
                }
                parse(cached(&file, build)?.0).ok_or_else(|| {
                    CudaError::Driver(format!("NVRTC's PTX of {} has no .version", k.name))
                })?
            }
            None => {
                return Err(CudaError::Driver(format!(
                    "NVRTC's PTX of {} has no .version",
                    k.name
                )))
            }
        };
        let isa = if written <= readable {
            written
        } else if floor.is_some_and(|f| f <= readable) {
            readable
        } else {
            return Err(nothing_fits(written));
        };
        code.form = CodeForm::Ptx { isa, written };
        let text = |bytes: Vec<u8>| -> Result<Ptx, CudaError> {
            let ptx = String::from_utf8(bytes)
                .map_err(|_| CudaError::Driver(format!("cached PTX of {} is not text", k.name)))?;
            Ok(Ptx::from_src(if isa == written {
                ptx
            } else {
                with_ptx_isa(&ptx, isa)
            }))
        };
        match load_cached(ctx, file, build, text) {
            Ok(m) => modules.push(m),
            Err(CudaError::Driver(e)) if e.contains("CUDA_ERROR_UNSUPPORTED_PTX_VERSION") => {
                return Err(nothing_fits(written))
            }
            Err(CudaError::Driver(e)) if isa != written => {
                return Err(CudaError::Driver(format!(
                    "{e} (PTX of {} declared at ISA {isa}; NVRTC wrote {written})",
                    k.name
                )))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(modules)
}

/// Compiles (or reads from the cache) and loads every kernel for the context's device; its
/// entry points by name, and what was loaded.
pub(crate) fn load_kernels(
    ctx: &Arc<CudaContext>,
) -> Result<(HashMap<&'static str, CudaFunction>, LoadedCode), CudaError> {
    let capability = ctx.compute_capability().map_err(driver)?;
    let mut code = LoadedCode {
        form: CodeForm::Cubin,
        nvrtc: nvrtc_version()?,
        driver: driver_version()?,
        capability,
    };
    let modules = load_modules(ctx, &mut code)?;
    let mut funcs = HashMap::new();
    for (k, module) in KERNELS.iter().zip(&modules) {
        for e in k.entries {
            funcs.insert(*e, module.load_function(e).map_err(driver)?);
        }
    }
    Ok((funcs, code))
}
