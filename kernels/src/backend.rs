//! The CUDA backend: the engine's `Backend` trait on an NVIDIA GPU through cudarc.
//!
//! The design is the wgpu backend's (docs/GPU.md), stage for stage, with the kernels in
//! `cuda/`: `prepare` uploads the index once (explicit device allocations, never managed
//! memory), its codes and raw vectors only when they fit the memory budget — else each tile
//! stages the codes and rows it reads; coarse search is a tiled distance kernel then the
//! top-k kernel; tables are one thread per entry; the scan is one block per (query, probed
//! list) — 8-bit codes with float tables in shared memory, or 4-bit fast-scan codes with the
//! CPU's own u8 tables — followed by top-k rounds; refine is one warp per candidate, then top-k by (distance, id). Batches are
//! cut into tiles of at most 64 MiB of score rows (an eighth of the device memory free at
//! start when that is less); two tiles are in flight, so one tile's copies (on a copy
//! stream, through pinned host memory: `transfer.rs`) overlap the other's kernels.
//! NVRTC compiles the kernels at first use for the device's compute capability, to a cubin
//! or to PTX the driver reads (`load.rs`), cached on disk.
//!
//! There is no CUDA device on the machines this is developed on: this code is compiled in CI,
//! and `scripts/gpu-check` runs its tests (the wgpu backend's test bodies) on a GPU machine.

use std::ops::Range;
use std::sync::Arc;

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, DeviceRepr, LaunchConfig, PinnedHostSlice, PushKernelArg,
    ValidAsZeroBits,
};
use quiver_engine::backend::{
    run_stages, Backend, Candidates, LookupTables, Neighbors, PreparedIndex, Probes, QueryFilters,
    SearchParams, Slot,
};
use quiver_engine::fastscan::QuantizedTable;
use quiver_engine::interleave::{append_device_codes, device_code_bytes};
use quiver_engine::list::{CodeLayout, RawVectors};
use quiver_engine::topk::{plan_round, select_rows, WarpSelectShape};
use quiver_engine::{EngineError, IvfPqIndex, RefineKind};

use crate::compile::CompileError;
use crate::load::{load_kernels, LoadedCode};
use crate::probe::{cuda_availability, CudaAvailability};
use crate::transfer::{Fetched, MemPool, Transfers};

/// Queries and centroids of one `coarse_distances` block's tile (`cuda/coarse.cu`: 16 × 16
/// threads, 8 × 8 outputs each).
pub(crate) const COARSE_TILE: usize = quiver_engine::backend::COARSE_TILE;

/// Static shared memory of the coarse kernels (two operand stages of 8 × 132 words).
pub(crate) const COARSE_STATIC_SHARED: usize = 2 * 8 * 132 * 4;

/// Largest `keep` the WarpSelect-style kernel selects on the device (a 2,048-entry warp
/// queue, 27 KiB of shared memory); above it the host selects (see `cuda/topk.cu`).
pub const MAX_GPU_KEEP: usize = 2048;

/// Bytes of score rows (and tables) a tile of a stage aims at: enough to fill the device,
/// small enough that a large batch is several tiles, whose copies overlap each other's
/// compute (two tiles are in flight; see `transfer.rs`).
const PIPELINE_TILE_BYTES: usize = 64 << 20;

/// Why the CUDA backend is not available or failed.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No driver or no device.
    #[error("CUDA backend unavailable: {0}")]
    Unavailable(String),
    /// A kernel did not compile.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// The driver reported an error.
    #[error("CUDA driver error: {0}")]
    Driver(String),
    /// Arguments that do not fit together.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A size beyond what this backend addresses.
    #[error("{what} is {got}, beyond the CUDA backend's limit of {max}")]
    TooLarge {
        /// What.
        what: &'static str,
        /// Its size.
        got: u64,
        /// The limit.
        max: u64,
    },
}

/// A driver error, as this crate reports it.
pub(crate) fn driver<E: std::fmt::Display>(e: E) -> CudaError {
    CudaError::Driver(e.to_string())
}

fn engine_err(e: CudaError) -> EngineError {
    match e {
        CudaError::Unavailable(_) | CudaError::Compile(_) => EngineError::BackendUnavailable {
            backend: "cuda",
            reason: e.to_string(),
        },
        CudaError::Driver(_) | CudaError::Invalid(_) | CudaError::TooLarge { .. } => {
            EngineError::BackendFailed {
                backend: "cuda",
                reason: e.to_string(),
            }
        }
    }
}

/// A (high, low) payload word pair: `uint2` in the kernels.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
struct Pay {
    hi: u32,
    lo: u32,
}

/// One (query, list) work item of the scans: `struct ScanItem` in cuda/scan8.cu and
/// cuda/scan4.cu (staged as plain words).
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ScanItem {
    table: u32,
    byte_off: u32,
    len: u32,
    gslot: u32,
    terms: u32,
    out: u32,
    bias: f32,
    /// First word of the query's exclusion bitmap in the scan's `dead` buffer (0: the
    /// tombstones; a filtered scan appends one bitmap per allow-set).
    dead_off: u32,
}

/// One candidate of refine: `struct RefineItem` in cuda/refine.cu (staged as plain words).
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RefineItem {
    query: u32,
    elem: u32,
    out: u32,
    pad: u32,
}

/// Bytes a kernel reads: the prepared index's resident buffer, or what a tile staged.
enum DeviceBytes<'a> {
    Resident(&'a CudaSlice<u8>),
    Staged(&'a CudaSlice<u32>),
}

impl<'a> DeviceBytes<'a> {
    fn of(
        resident: &'a Option<CudaSlice<u8>>,
        staged: &'a Option<CudaSlice<u32>>,
    ) -> Result<DeviceBytes<'a>, CudaError> {
        match (resident, staged) {
            (Some(r), _) => Ok(DeviceBytes::Resident(r)),
            (None, Some(s)) => Ok(DeviceBytes::Staged(s)),
            (None, None) => Err(CudaError::Driver(
                "internal: neither resident nor staged bytes".into(),
            )),
        }
    }

    /// Pushes the buffer as the next kernel argument (a pointer to bytes either way).
    fn push(&self, b: &mut cudarc::driver::LaunchArgs<'a>) {
        match self {
            DeviceBytes::Resident(r) => b.arg(*r),
            DeviceBytes::Staged(s) => b.arg(*s),
        };
    }
}

/// One row's selection, best first: scores and payloads.
type Selected = (Vec<f32>, Vec<Pay>);

/// The CUDA backend on one device.
pub struct CudaBackend {
    /// The compute and copy streams (they keep the context alive) and pinned buffers.
    pub(crate) io: Transfers,
    name: String,
    pub(crate) coarse: CudaFunction,
    warp_select: CudaFunction,
    pub(crate) select_strided: CudaFunction,
    pub(crate) tables: CudaFunction,
    pub(crate) scan8: CudaFunction,
    pub(crate) scan_items: CudaFunction,
    scan4: CudaFunction,
    pub(crate) scan4_quantized: CudaFunction,
    pub(crate) scan8_select: CudaFunction,
    pub(crate) scan4_select: CudaFunction,
    pub(crate) coarse_select: CudaFunction,
    refine: CudaFunction,
    pub(crate) refine_candidates: CudaFunction,
    /// Bytes of score rows and tables a batch tile aims at (two tiles are in flight).
    pub(crate) tile_bytes: usize,
    /// Dynamic shared memory one block of `scan8` may use (the device's opt-in maximum,
    /// enabled for it at open).
    pub(crate) scan8_shared: usize,
    /// Device memory an index's codes and raw vectors may take (`None`: what is free at
    /// prepare, less room for the tiles); beyond it they are streamed.
    memory_budget: Option<usize>,
    /// The form the kernels were loaded in.
    code: LoadedCode,
    /// Whether the resident search selects inside the coarse product and the scan where it
    /// can (`coarse_select`, `scan8_select`).
    pub(crate) fused_select: bool,
    /// Whether the probes are selected inside the coarse product (`coarse_select`) where
    /// `fused_select` allows; `QUIVER_CUDA_COARSE_SELECT=off` writes the coarse score rows
    /// and selects in rounds instead (an A/B for a GPU: the model puts the two close).
    pub(crate) select_probes: bool,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.name)
            .finish()
    }
}

/// `QUIVER_CUDA_COARSE_SELECT`: `on` (the default) or `off`.
fn coarse_select_wanted() -> Result<bool, CudaError> {
    parse_coarse_select(std::env::var("QUIVER_CUDA_COARSE_SELECT").ok().as_deref())
}

/// [`coarse_select_wanted`]'s reading of the variable's value (`None`: unset).
fn parse_coarse_select(value: Option<&str>) -> Result<bool, CudaError> {
    match value {
        None | Some("") | Some("on") => Ok(true),
        Some("off") => Ok(false),
        Some(other) => Err(CudaError::Invalid(format!(
            "QUIVER_CUDA_COARSE_SELECT is {other:?}: expected on or off"
        ))),
    }
}

/// Keeps freed device memory in the device's default pool (its release threshold at the
/// maximum): the resident search allocates its buffers with `cuMemAllocAsync` and frees them
/// after each batch, and with the default threshold (0) the pool would give that memory back
/// to the driver at every synchronisation and map it again for the next batch. `None` where
/// the device has no memory pools (cudarc then allocates with `cuMemAlloc`).
fn keep_pool_memory(ctx: &Arc<CudaContext>) -> Result<Option<MemPool>, CudaError> {
    use cudarc::driver::sys;
    let pools = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED)
        .map_err(driver)?;
    if pools == 0 {
        return Ok(None);
    }
    ctx.bind_to_thread().map_err(driver)?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: `pool` receives the device's default pool handle.
    unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) }
        .result()
        .map_err(driver)?;
    let mut threshold = u64::MAX;
    // SAFETY: the release threshold attribute takes a u64, read through the pointer.
    unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
    }
    .result()
    .map_err(driver)?;
    Ok(Some(MemPool(pool)))
}

/// One dimension of blocks for `n` independent blocks: x up to 65,535, the rest in y.
pub(crate) fn grid(n: usize) -> (u32, u32, u32) {
    let n = n.max(1);
    if n <= 65_535 {
        (n as u32, 1, 1)
    } else {
        (65_535, n.div_ceil(65_535) as u32, 1)
    }
}

impl CudaBackend {
    /// Opens device `ordinal`: checks for a driver and a device first (cudarc would panic
    /// without `libcuda`), then compiles (or loads from the cache) every kernel.
    pub fn open(ordinal: usize) -> Result<CudaBackend, CudaError> {
        match cuda_availability() {
            CudaAvailability::Devices(n) if ordinal < n => {}
            CudaAvailability::Devices(n) => {
                return Err(CudaError::Unavailable(format!(
                    "device {ordinal} asked for, {n} present"
                )))
            }
            other => return Err(CudaError::Unavailable(other.to_string())),
        }
        let ctx = CudaContext::new(ordinal).map_err(driver)?;
        let pool = keep_pool_memory(&ctx)?;
        let (major, minor) = ctx.compute_capability().map_err(driver)?;
        let name = ctx.name().map_err(driver)?;
        let (mut funcs, code) = load_kernels(&ctx)?;
        let (free, _) = ctx.mem_get_info().map_err(driver)?;
        // Opt in to the device's largest shared memory per block for scan8's tables (48 KiB
        // without opting in; 163 KiB on an A100, 227 KiB on an H100).
        let optin = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(driver)?
            .max(48 << 10);
        let mut take = |n: &str| {
            funcs
                .remove(n)
                .ok_or_else(|| CudaError::Driver(format!("kernel {n} missing")))
        };
        Ok(CudaBackend {
            io: Transfers::new(&ctx, pool)?,
            coarse: take("coarse_distances")?,
            warp_select: take("warp_select")?,
            select_strided: take("select_strided")?,
            tables: take("lookup_tables")?,
            scan_items: take("scan_items")?,
            refine_candidates: take("refine_candidates")?,
            scan8: {
                let f = take("scan8")?;
                f.set_attribute(
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    optin,
                )
                .map_err(driver)?;
                f
            },
            scan8_shared: optin as usize,
            memory_budget: None,
            fused_select: true,
            select_probes: coarse_select_wanted()?,
            scan4: take("scan4")?,
            scan8_select: {
                let f = take("scan8_select")?;
                f.set_attribute(
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    optin,
                )
                .map_err(driver)?;
                f
            },
            scan4_select: {
                let f = take("scan4_select")?;
                f.set_attribute(
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    optin,
                )
                .map_err(driver)?;
                f
            },
            scan4_quantized: {
                let f = take("scan4_quantized")?;
                f.set_attribute(
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    optin,
                )
                .map_err(driver)?;
                f
            },
            coarse_select: {
                let f = take("coarse_select")?;
                let dynamic = (optin as usize).saturating_sub(COARSE_STATIC_SHARED);
                f.set_attribute(
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    dynamic as i32,
                )
                .map_err(driver)?;
                f
            },
            refine: take("refine")?,
            tile_bytes: (free / 8).clamp(1 << 20, PIPELINE_TILE_BYTES),
            name: format!("{name} (sm_{major}{minor})"),
            code,
        })
    }

    /// Caps the bytes of a batch tile (to exercise tiling and the copy/compute pipeline in
    /// tests: many small tiles, two in flight).
    pub fn with_tile_bytes(mut self, bytes: usize) -> Self {
        self.tile_bytes = bytes.max(1);
        self
    }

    /// Sets the device memory an index's codes and raw vectors may take; an index above it
    /// keeps them on the host, and each tile stages the codes of the lists it probes and the
    /// rows of the candidates it refines (0: always stream).
    pub fn with_memory_budget(mut self, bytes: usize) -> Self {
        self.memory_budget = Some(bytes);
        self
    }

    /// Turns off the fused selections (in the coarse product and in the scan): the resident
    /// search then writes every score into rows and selects in rounds, as before they
    /// existed (for A/B counts and timings).
    pub fn without_fused_select(mut self) -> Self {
        self.fused_select = false;
        self
    }

    /// The device's name and compute capability.
    pub fn device_name(&self) -> &str {
        &self.name
    }

    /// Which code the kernels were loaded as (cubin or PTX, and at which ISA), with NVRTC's
    /// and the driver's versions.
    pub fn loaded_code(&self) -> LoadedCode {
        self.code
    }

    pub(crate) fn upload<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        data: &[T],
    ) -> Result<CudaSlice<T>, CudaError> {
        if data.is_empty() {
            // No zero-byte allocations: one zeroed element.
            return self.zeros(1);
        }
        self.io.compute.clone_htod(data).map_err(driver)
    }

    fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, n: usize) -> Result<CudaSlice<T>, CudaError> {
        self.io.compute.alloc_zeros::<T>(n.max(1)).map_err(driver)
    }

    pub(crate) fn download<T: DeviceRepr + Default + Clone>(
        &self,
        s: &CudaSlice<T>,
    ) -> Result<Vec<T>, CudaError> {
        self.io.compute.clone_dtoh(s).map_err(driver)
    }

    /// Each row's best `keep` (score, payload) entries selected by the top-k kernel, best
    /// first: the selection alone, as a search runs it (device rounds up to
    /// [`MAX_GPU_KEEP`], the host above), for tests and benchmarks. Rows are (first entry,
    /// length) spans of `scores` and `payloads`.
    pub fn select_rows(
        &self,
        scores: &[f32],
        payloads: &[u64],
        spans: &[(usize, usize)],
        keep: usize,
    ) -> Result<Vec<Vec<(f32, u64)>>, CudaError> {
        let bad = |what: String| CudaError::Invalid(what);
        if scores.len() != payloads.len() {
            return Err(bad(format!(
                "{} scores but {} payloads",
                scores.len(),
                payloads.len()
            )));
        }
        if let Some(&(s, n)) = spans.iter().find(|&&(s, n)| s + n > scores.len()) {
            return Err(bad(format!(
                "row ({s}, {n}) past the {} entries",
                scores.len()
            )));
        }
        if scores.len() > u32::MAX as usize {
            return Err(CudaError::TooLarge {
                what: "top-k entries",
                got: scores.len() as u64,
                max: u64::from(u32::MAX),
            });
        }
        if keep == 0 {
            return Ok(vec![Vec::new(); spans.len()]);
        }
        let pays: Vec<Pay> = payloads
            .iter()
            .map(|&p| Pay {
                hi: (p >> 32) as u32,
                lo: p as u32,
            })
            .collect();
        let s = self.upload(bytemuck::cast_slice::<f32, u32>(scores))?;
        let p = self.upload(bytemuck::cast_slice::<Pay, u32>(&pays))?;
        let mut held = Vec::new();
        let pending = self.select_submit(s, p, spans.to_vec(), keep, &mut held)?;
        let selected = pending.finish()?;
        pending.release(&self.io, held);
        Ok(selected
            .into_iter()
            .map(|(s, p)| {
                s.into_iter()
                    .zip(p)
                    .map(|(s, p)| (s, u64::from(p.hi) << 32 | u64::from(p.lo)))
                    .collect()
            })
            .collect())
    }

    /// Records each row's selection of its best `keep` (score, payload) entries on the
    /// compute stream and starts copying the result back: top-k rounds on the device while
    /// `keep ≤ 2,048`; above that the whole rows come back, for the engine's top-k on the
    /// host. `scores` holds one f32 word per entry, `payloads` two words (`uint2`).
    fn select_submit(
        &self,
        scores: CudaSlice<u32>,
        payloads: CudaSlice<u32>,
        spans: Vec<(usize, usize)>,
        keep: usize,
        held: &mut Vec<PinnedHostSlice<u32>>,
    ) -> Result<PendingSelect, CudaError> {
        if keep > MAX_GPU_KEEP {
            return Ok(PendingSelect {
                scores: self.io.fetch(&scores)?,
                payloads: self.io.fetch(&payloads)?,
                spans,
                host_keep: Some(keep),
            });
        }
        let keep = keep.max(1);
        let shape = WarpSelectShape::for_keep(keep);
        let (mut cur_s, mut cur_p, mut cur_spans) = (scores, payloads, spans);
        loop {
            let last = cur_spans.iter().all(|&(_, len)| len <= shape.chunk);
            let (chunks, spans) = plan_round(&cur_spans, keep, shape.chunk);
            let dst: usize = spans.last().map_or(0, |&(s, n)| s + n);
            let mut out_s = self.zeros::<u32>(dst)?;
            let mut out_p = self.zeros::<u32>(2 * dst)?;
            if !chunks.is_empty() {
                let table = self.io.stage(&chunks, held)?;
                let (n, k, t) = (
                    chunks.len() as u32,
                    shape.queue as u32,
                    shape.thread_queue as u32,
                );
                // One warp per block: the warp queue and staging area in shared memory.
                let cfg = LaunchConfig {
                    grid_dim: grid(chunks.len()),
                    block_dim: (WarpSelectShape::LANES as u32, 1, 1),
                    shared_mem_bytes: shape.shared_bytes() as u32,
                };
                let mut b = self.io.compute.launch_builder(&self.warp_select);
                b.arg(&cur_s)
                    .arg(&cur_p)
                    .arg(&table)
                    .arg(&mut out_s)
                    .arg(&mut out_p)
                    .arg(&n)
                    .arg(&k)
                    .arg(&t);
                // SAFETY: argument types and order match `warp_select` (`Chunk` is four u32
                // words); every chunk reads inside its input row and writes inside its
                // output span; the shared memory holds the queue and staging area of `shape`.
                unsafe { b.launch(cfg) }.map_err(driver)?;
            }
            (cur_s, cur_p, cur_spans) = (out_s, out_p, spans);
            if last {
                break;
            }
        }
        Ok(PendingSelect {
            scores: self.io.fetch(&cur_s)?,
            payloads: self.io.fetch(&cur_p)?,
            spans: cur_spans,
            host_keep: None,
        })
    }
}

/// A selection whose rows are on their way back to the host.
struct PendingSelect {
    scores: Fetched,
    payloads: Fetched,
    spans: Vec<(usize, usize)>,
    /// `Some(keep)`: the rows come back whole and are selected on the host.
    host_keep: Option<usize>,
}

impl PendingSelect {
    /// Waits for the copies and returns each row's entries, best first.
    fn finish(&self) -> Result<Vec<Selected>, CudaError> {
        let s: &[f32] = bytemuck::cast_slice(self.scores.wait()?);
        let p: &[Pay] = bytemuck::cast_slice(self.payloads.wait()?);
        Ok(match self.host_keep {
            None => self
                .spans
                .iter()
                .map(|&(start, n)| (s[start..start + n].to_vec(), p[start..start + n].to_vec()))
                .collect(),
            Some(keep) => {
                let payload = |i: usize| u64::from(p[i].hi) << 32 | u64::from(p[i].lo);
                select_rows(s, payload, &self.spans, keep)
                    .into_iter()
                    .map(|row| {
                        (
                            row.iter().map(|e| e.score).collect(),
                            row.iter()
                                .map(|e| Pay {
                                    hi: (e.item >> 32) as u32,
                                    lo: e.item as u32,
                                })
                                .collect(),
                        )
                    })
                    .collect()
            }
        })
    }

    fn release(self, io: &Transfers, held: Vec<PinnedHostSlice<u32>>) {
        io.release(held, vec![self.scores, self.payloads]);
    }
}

/// An index on the device.
pub struct CudaPrepared {
    index: Arc<IvfPqIndex>,
    /// What deletes do not change, shared by the versions of one index that differ only in
    /// tombstones (see [`Backend::refresh`]).
    pub(crate) dev: Arc<DeviceData>,
    pub(crate) raw_f16: bool,
    pub(crate) dead: CudaSlice<u32>,
    /// Per list: first code byte (in `codes`), global slot of its first entry, entries.
    places: Vec<(u32, u32, u32)>,
}

/// The device copy of an index's trained quantizers and what derives from them alone: shared
/// by every index (segment) encoded with the same quantizers (see [`Backend::refresh`]).
pub(crate) struct DeviceQuantizers {
    pub(crate) centroids: CudaSlice<f32>,
    pub(crate) norms: CudaSlice<f32>,
    pub(crate) codebook: CudaSlice<f32>,
    /// L2: host terms (4-bit quantization) and device terms (8-bit scan).
    pub(crate) l2_terms: Option<(Vec<f32>, CudaSlice<f32>)>,
}

impl DeviceQuantizers {
    /// Device bytes the quantizers take.
    fn bytes(index: &IvfPqIndex) -> usize {
        let terms = if index.metric().is_inner_product() {
            0
        } else {
            index.nlist() * index.pq().m() * index.pq().ksub()
        };
        (2 * index.centroids().len() + index.pq().centroids().len() + terms) * 4
    }
}

/// The device copy of an index's quantizers (shared), codes and raw vectors.
pub(crate) struct DeviceData {
    pub(crate) quant: Arc<DeviceQuantizers>,
    /// All codes, list after list; `None`: streamed (each scan tile stages its lists).
    pub(crate) codes: Option<CudaSlice<u8>>,
    /// All raw vectors in global-slot order; `None`: streamed (each refine tile stages its
    /// candidates' rows), or none kept.
    pub(crate) raw: Option<CudaSlice<u8>>,
    /// Per list (first code byte, global slot of its first entry, entries, 0): the
    /// device-resident search builds its work items from these.
    pub(crate) places: CudaSlice<u32>,
    /// Every entry's id as (high, low) words, in global-slot order; with resident codes.
    pub(crate) ids: Option<CudaSlice<u32>>,
    /// `row_bound[n]`: the most entries any n lists hold together (the n longest), the
    /// stride of the device-resident scan's rows at nprobe n.
    pub(crate) row_bound: Vec<usize>,
}

impl std::fmt::Debug for CudaPrepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaPrepared")
            .field("lists", &self.places.len())
            .finish()
    }
}

impl CudaPrepared {
    /// True when `other` holds the same device copy of the quantizers, codes and raw vectors
    /// (it was made from this one by a tombstone-only [`Backend::refresh`]).
    pub fn shares_device_data_with(&self, other: &CudaPrepared) -> bool {
        Arc::ptr_eq(&self.dev, &other.dev)
    }
}

impl PreparedIndex for CudaPrepared {
    fn index(&self) -> &IvfPqIndex {
        &self.index
    }
}

impl CudaPrepared {
    /// The shared index this was prepared from.
    pub fn index_arc(&self) -> &Arc<IvfPqIndex> {
        &self.index
    }

    /// (list, offset) of a global slot.
    fn locate(&self, gslot: u32) -> (u32, u32) {
        let mut l = self
            .places
            .partition_point(|p| p.1 <= gslot)
            .saturating_sub(1);
        while l > 0 && (self.places[l].2 == 0 || gslot - self.places[l].1 >= self.places[l].2) {
            l -= 1;
        }
        (l as u32, gslot - self.places[l].1)
    }
}

impl CudaBackend {
    /// Uploads an index's coarse centroids (and their norms), codebook and L2 list terms.
    fn upload_quantizers(&self, index: &IvfPqIndex) -> Result<DeviceQuantizers, CudaError> {
        let norms: Vec<f32> = index
            .centroids()
            .chunks_exact(index.dim())
            .map(|c| c.iter().map(|x| x * x).sum())
            .collect();
        let l2_terms = match quiver_engine::backend::l2_list_terms(index) {
            Some(terms) => {
                let device = self.upload(&terms)?;
                Some((terms, device))
            }
            None => None,
        };
        Ok(DeviceQuantizers {
            centroids: self.upload(index.centroids())?,
            norms: self.upload(&norms)?,
            codebook: self.upload(index.pq().centroids())?,
            l2_terms,
        })
    }

    /// Uploads `index`: its lists, and its quantizers unless `quant` holds them already (an
    /// index encoded with the same quantizers was uploaded before).
    fn prepare_inner(
        &self,
        index: Arc<IvfPqIndex>,
        quant: Option<Arc<DeviceQuantizers>>,
    ) -> Result<CudaPrepared, CudaError> {
        let lists = index.lists();
        let total: usize = lists.iter().map(|l| l.len()).sum();
        if total >= u32::MAX as usize {
            return Err(CudaError::TooLarge {
                what: "entries in one index",
                got: total as u64,
                max: u32::MAX as u64 - 1,
            });
        }
        let code_bytes: usize = (0..lists.len()).map(|l| device_code_bytes(&index, l)).sum();
        let raw_f16 = matches!(lists.first().map(|l| &l.raw), Some(RawVectors::F16(_)));
        let value_bytes = if raw_f16 { 2 } else { 4 };
        let raw_bytes: usize = lists.iter().map(|l| l.raw.as_bytes().len()).sum();
        let dead = quiver_engine::backend::tombstone_bitmap(&index);
        let mut places = Vec::with_capacity(lists.len());
        let mut gslot = 0usize;
        let mut byte_off = 0usize;
        for (l, list) in lists.iter().enumerate() {
            places.push((byte_off as u32, gslot as u32, list.len() as u32));
            gslot += list.len();
            byte_off = (byte_off + device_code_bytes(&index, l)).min(u32::MAX as usize);
        }
        // Always on the device: centroids, their norms, the codebook, the tombstones, the L2
        // terms. Codes and raw vectors too when they fit the budget; else they stay on the
        // host and each tile stages what it reads (codes of the lists it probes, rows of the
        // candidates it refines), as the wgpu backend streams them.
        let fixed = dead.len() * 4
            + if quant.is_some() {
                0
            } else {
                DeviceQuantizers::bytes(&index)
            };
        // The lanes' kept working memory goes back first: the index may need it.
        self.io.trim_scratch()?;
        let free = self.io.free_memory()?;
        if fixed > free {
            return Err(CudaError::TooLarge {
                what: "index bytes that must stay on the device (centroids, codebook, tombstones)",
                got: fixed as u64,
                max: free as u64,
            });
        }
        let budget = self
            .memory_budget
            // Room for two tiles in flight and their selection rounds.
            .unwrap_or_else(|| (free - fixed).saturating_sub(4 * self.tile_bytes));
        let codes_resident = code_bytes <= budget && code_bytes < u32::MAX as usize;
        let raw_resident = codes_resident
            && code_bytes + raw_bytes <= budget
            && raw_bytes / value_bytes < u32::MAX as usize;
        let codes = if codes_resident {
            let mut codes = Vec::with_capacity(code_bytes);
            for l in 0..lists.len() {
                append_device_codes(&index, l, &mut codes);
            }
            Some(self.upload(&codes)?)
        } else {
            None
        };
        let raw = if raw_resident {
            let mut raw: Vec<u8> = Vec::with_capacity(raw_bytes);
            for list in lists {
                raw.extend_from_slice(list.raw.as_bytes());
            }
            Some(self.upload(&raw)?)
        } else {
            None
        };
        let ids = if codes_resident {
            let mut ids: Vec<u32> = Vec::with_capacity(2 * total);
            for list in lists {
                for &id in list.ids.as_slice() {
                    ids.push((id >> 32) as u32);
                    ids.push(id as u32);
                }
            }
            Some(self.upload(&ids)?)
        } else {
            None
        };
        let place_words: Vec<u32> = places
            .iter()
            .flat_map(|&(byte_off, gslot, len)| [byte_off, gslot, len, 0])
            .collect();
        let mut sizes: Vec<usize> = lists.iter().map(|l| l.len()).collect();
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        let mut row_bound = Vec::with_capacity(sizes.len() + 1);
        row_bound.push(0);
        for s in sizes {
            row_bound.push(row_bound.last().copied().unwrap_or(0) + s);
        }
        let quant = match quant {
            Some(q) => q,
            None => Arc::new(self.upload_quantizers(&index)?),
        };
        Ok(CudaPrepared {
            dev: Arc::new(DeviceData {
                quant,
                codes,
                raw,
                places: self.upload(&place_words)?,
                ids,
                row_bound,
            }),
            raw_f16,
            dead: self.upload(&dead)?,
            places,
            index,
        })
    }
}

impl Backend for CudaBackend {
    type Prepared = CudaPrepared;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn prepare(&self, index: Arc<IvfPqIndex>) -> Result<CudaPrepared, EngineError> {
        self.prepare_inner(index, None).map_err(engine_err)
    }

    /// After deletes only, keeps the device copy and uploads a new tombstone bitmap; with the
    /// same quantizers (another segment of the collection, a merge), uploads the lists only;
    /// otherwise uploads the index again.
    fn refresh(
        &self,
        p: &CudaPrepared,
        index: Arc<IvfPqIndex>,
    ) -> Result<CudaPrepared, EngineError> {
        if !p.index.differs_only_in_tombstones(&index) {
            let quant = p
                .index
                .shares_quantizers_with(&index)
                .then(|| p.dev.quant.clone());
            return self.prepare_inner(index, quant).map_err(engine_err);
        }
        let dead = self
            .upload(&quiver_engine::backend::tombstone_bitmap(&index))
            .map_err(engine_err)?;
        Ok(CudaPrepared {
            index,
            dev: p.dev.clone(),
            raw_f16: p.raw_f16,
            dead,
            places: p.places.clone(),
        })
    }

    /// The whole batch on the device when the index allows (`resident.rs`: one upload of
    /// the queries, one download of the results); otherwise the staged stages.
    fn search(
        &self,
        p: &CudaPrepared,
        queries: &[f32],
        params: &SearchParams,
    ) -> Result<Neighbors, EngineError> {
        if !self.resident_eligible(p, params) {
            return run_stages(self, p, queries, params);
        }
        params.validate(&p.index)?;
        let queries = p.index.prepare_queries(queries)?;
        self.resident_search(p, &queries, params)
            .map_err(engine_err)
    }

    /// One device-resident batch for all of `prepared` when they share their quantizers and
    /// each could take the resident path alone; otherwise each in turn.
    fn search_many(
        &self,
        prepared: &[&CudaPrepared],
        queries: &[f32],
        params: &SearchParams,
    ) -> Result<Vec<Neighbors>, EngineError> {
        let together = prepared.len() >= 2
            && prepared.iter().all(|p| {
                self.resident_eligible(p, params)
                    && Arc::ptr_eq(&p.dev.quant, &prepared[0].dev.quant)
            });
        if !together {
            return quiver_engine::backend::search_each(self, prepared, queries, params);
        }
        let first = &prepared[0].index;
        params.validate(first)?;
        let queries = first.prepare_queries(queries)?;
        self.resident_search_many(prepared, &queries, params)
            .map_err(engine_err)
    }

    /// The emulator's counters (the whole process's); `None` on NVIDIA's driver.
    fn counters(&self) -> Option<quiver_engine::backend::DeviceCounters> {
        crate::counters::emulator_counters()
    }

    fn coarse_search(
        &self,
        p: &CudaPrepared,
        queries: &[f32],
        nprobe: usize,
    ) -> Result<Probes, EngineError> {
        self.coarse_inner(p, queries, nprobe).map_err(engine_err)
    }

    fn lookup_tables(
        &self,
        p: &CudaPrepared,
        queries: &[f32],
    ) -> Result<LookupTables, EngineError> {
        self.tables_inner(p, queries).map_err(engine_err)
    }

    fn scan(
        &self,
        p: &CudaPrepared,
        probes: &Probes,
        tables: &LookupTables,
        keep: usize,
    ) -> Result<Candidates, EngineError> {
        self.scan_inner(p, probes, tables, keep, None)
            .map_err(engine_err)
    }

    fn scan_filtered(
        &self,
        p: &CudaPrepared,
        probes: &Probes,
        tables: &LookupTables,
        keep: usize,
        filters: QueryFilters<'_>,
    ) -> Result<Candidates, EngineError> {
        self.scan_inner(p, probes, tables, keep, Some(filters))
            .map_err(engine_err)
    }

    fn refine(
        &self,
        p: &CudaPrepared,
        queries: &[f32],
        candidates: &Candidates,
        k: usize,
    ) -> Result<Neighbors, EngineError> {
        self.refine_inner(p, queries, candidates, k)
            .map_err(engine_err)
    }
}

impl CudaBackend {
    fn coarse_inner(
        &self,
        p: &CudaPrepared,
        queries: &[f32],
        nprobe: usize,
    ) -> Result<Probes, CudaError> {
        let (dim, nlist) = (p.index.dim(), p.index.nlist());
        let nq = queries.len() / dim;
        let nprobe = nprobe.min(nlist);
        let tile_bytes = self.tile_bytes;
        let rows_per_tile = (tile_bytes / (nlist * 12 + dim * 4)).clamp(1, 65_535 * 16);
        let mut lists = Vec::with_capacity(nq * nprobe);
        let mut scores = Vec::with_capacity(nq * nprobe);
        let tiles: Vec<_> = (0..nq)
            .step_by(rows_per_tile)
            .map(|s| s..(s + rows_per_tile).min(nq))
            .collect();
        let submit = |qs: Range<usize>, held: &mut Vec<PinnedHostSlice<u32>>| {
            let rows = qs.len();
            let q = self
                .io
                .stage(&queries[qs.start * dim..qs.end * dim], held)?;
            let mut s = self.zeros::<u32>(rows * nlist)?;
            let mut pl = self.zeros::<u32>(2 * rows * nlist)?;
            let cfg = LaunchConfig {
                grid_dim: (
                    nlist.div_ceil(COARSE_TILE) as u32,
                    rows.div_ceil(COARSE_TILE) as u32,
                    1,
                ),
                block_dim: (16, 16, 1),
                shared_mem_bytes: 0,
            };
            let (nq_u, nl_u, d_u, l2) = (
                rows as u32,
                nlist as u32,
                dim as u32,
                u32::from(!p.index.metric().is_inner_product()),
            );
            let mut b = self.io.compute.launch_builder(&self.coarse);
            b.arg(&q)
                .arg(&p.dev.quant.centroids)
                .arg(&p.dev.quant.norms)
                .arg(&mut s)
                .arg(&mut pl);
            let with_payloads = 1u32;
            b.arg(&nq_u)
                .arg(&nl_u)
                .arg(&d_u)
                .arg(&l2)
                .arg(&with_payloads);
            // SAFETY: argument types and order match `coarse_distances`; the grid covers the
            // rows × nlist matrix, which `s` (f32) and `pl` (uint2) hold.
            unsafe { b.launch(cfg) }.map_err(driver)?;
            let spans = (0..rows).map(|r| (r * nlist, nlist)).collect();
            self.select_submit(s, pl, spans, nprobe, held)
        };
        let finish = |_: usize, selected: Vec<Selected>| {
            for (sc, pay) in selected {
                lists.extend(pay.iter().map(|x| x.lo));
                scores.extend(sc);
            }
        };
        self.pipelined(&tiles, submit, finish)?;
        Ok(Probes {
            nprobe,
            lists,
            scores,
        })
    }

    fn tables_inner(&self, p: &CudaPrepared, queries: &[f32]) -> Result<LookupTables, CudaError> {
        let pq = p.index.pq();
        let (m, ksub, dsub) = (pq.m(), pq.ksub(), pq.dsub());
        let dim = p.index.dim();
        let nq = queries.len() / dim;
        let q = self.upload(queries)?;
        let n = nq * m * ksub;
        let mut out = self.zeros::<f32>(n)?;
        let factor: f32 = if p.index.metric().is_inner_product() {
            -1.0
        } else {
            -2.0
        };
        let cfg = LaunchConfig {
            grid_dim: grid(n.div_ceil(256)),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (nq_u, m_u, k_u, d_u) = (nq as u32, m as u32, ksub as u32, dsub as u32);
        let mut b = self.io.compute.launch_builder(&self.tables);
        b.arg(&q).arg(&p.dev.quant.codebook).arg(&mut out);
        b.arg(&nq_u).arg(&m_u).arg(&k_u).arg(&d_u).arg(&factor);
        // SAFETY: argument types and order match `lookup_tables`; threads past n return.
        unsafe { b.launch(cfg) }.map_err(driver)?;
        Ok(LookupTables {
            m,
            ksub,
            values: self.download(&out)?,
        })
    }

    /// The scan stage; with allow-sets, each query skips its set's excluded entries: the
    /// tombstone bitmap and one exclusion bitmap per set go up in one buffer (once per call),
    /// and each work item names its query's bitmap.
    fn scan_inner(
        &self,
        p: &CudaPrepared,
        probes: &Probes,
        tables: &LookupTables,
        keep: usize,
        filters: Option<QueryFilters<'_>>,
    ) -> Result<Candidates, CudaError> {
        let nprobe = probes.nprobe;
        let nq = probes.lists.len() / nprobe.max(1);
        let (filter_dead, dead_off) = match filters {
            Some(f) => {
                let (words, offsets) =
                    quiver_engine::backend::allow::exclusion_bitmaps(&p.index, f, nq);
                (Some(self.upload(&words)?), offsets)
            }
            None => (None, Vec::new()),
        };
        let dead = filter_dead.as_ref().unwrap_or(&p.dead);
        let (m, ksub) = (tables.m, tables.ksub);
        let tl = m * ksub;
        let fast = p.index.layout() == CodeLayout::Packed4x32;
        let shared = fast && p.dev.quant.l2_terms.is_none();
        let mut slots = vec![Slot::NONE; nq * keep];
        let mut scores = vec![f32::INFINITY; nq * keep];
        // Tiles: each query's row of (score, payload) and its tables (and its entries' codes
        // when they are streamed); two tiles in flight.
        let tile_bytes = self.tile_bytes;
        // Per entry, with a list's last block padded to 32 entries (counted as one more
        // block per probed list).
        let streamed_code_bytes = match (p.dev.codes.is_none(), fast) {
            (false, _) => 0,
            (true, false) => quiver_engine::interleave::padded_m(p.index.pq().code_size()),
            (true, true) => quiver_engine::interleave::quad_block_bytes(p.index.pq().m()) / 32,
        };
        let row_of = |q: usize| -> usize {
            probes.lists[q * nprobe..(q + 1) * nprobe]
                .iter()
                .map(|&l| p.places[l as usize].2 as usize)
                .sum()
        };
        let finish = |start: usize, selected: Vec<Selected>| {
            for (local, (s, pay)) in selected.into_iter().enumerate() {
                let q = start + local;
                for (i, (score, pl)) in s.iter().zip(&pay).enumerate() {
                    if *score == f32::INFINITY || pl.hi != 0 {
                        break;
                    }
                    let (list, offset) = p.locate(pl.lo);
                    slots[q * keep + i] = Slot { list, offset };
                    scores[q * keep + i] = *score;
                }
            }
        };
        let mut tiles = Vec::new();
        let mut q0 = 0;
        while q0 < nq {
            let (mut q1, mut bytes) = (q0, 0usize);
            while q1 < nq {
                let b = row_of(q1) * (12 + streamed_code_bytes)
                    + nprobe * 32 * streamed_code_bytes
                    + tl * 4
                    + nprobe * m * 16;
                if q1 > q0 && bytes + b > tile_bytes {
                    break;
                }
                bytes += b;
                q1 += 1;
            }
            tiles.push(q0..q1);
            q0 = q1;
        }
        let submit = |qs: Range<usize>, held: &mut Vec<PinnedHostSlice<u32>>| {
            self.scan_submit(
                p,
                probes,
                tables,
                keep,
                qs,
                fast,
                shared,
                (dead, &dead_off),
                held,
            )
        };
        self.pipelined(&tiles, submit, finish)?;
        Ok(Candidates {
            per_query: keep,
            slots,
            scores,
        })
    }

    /// Builds one scan tile (queries `qs`) on the host, stages its inputs (their pinned
    /// buffers go to `held`), records its scan and selection, and starts the read-back;
    /// returns without waiting.
    #[allow(clippy::too_many_arguments)]
    fn scan_submit(
        &self,
        p: &CudaPrepared,
        probes: &Probes,
        tables: &LookupTables,
        keep: usize,
        qs: std::ops::Range<usize>,
        fast: bool,
        shared: bool,
        (dead, dead_off): (&CudaSlice<u32>, &[u32]),
        held: &mut Vec<PinnedHostSlice<u32>>,
    ) -> Result<PendingSelect, CudaError> {
        let nprobe = probes.nprobe;
        let (m, ksub) = (tables.m, tables.ksub);
        let tl = m * ksub;
        let mut items = Vec::new();
        let mut spans = Vec::with_capacity(qs.len());
        let mut out = 0usize;
        let mut qbytes: Vec<u8> = Vec::new();
        let mut qparams: Vec<[f32; 2]> = Vec::new();
        let mut quantized = QuantizedTable::new(m);
        let mut combined = vec![0f32; tl];
        // Streamed codes: the lists this tile probes, packed in order of first use.
        let mut packed: Vec<u8> = Vec::new();
        let mut packed_at: Vec<u32> = Vec::new();
        if p.dev.codes.is_none() {
            packed_at = vec![u32::MAX; p.places.len()];
        }
        for (local, q) in qs.clone().enumerate() {
            let q_table = &tables.values[q * tl..(q + 1) * tl];
            let mut shared_table = 0u32;
            if shared {
                quantized.quantize(q_table, 0.0);
                shared_table = qparams.len() as u32;
                qbytes.extend_from_slice(&quantized.values);
                qparams.push([quantized.base, quantized.scale]);
            }
            let row_start = out;
            for j in 0..nprobe {
                let l = probes.lists[q * nprobe + j] as usize;
                let bias =
                    quiver_engine::backend::list_bias(&p.index, probes.scores[q * nprobe + j]);
                let (mut byte_off, gslot, len) = p.places[l];
                if p.dev.codes.is_none() {
                    if packed_at[l] == u32::MAX {
                        let bytes = device_code_bytes(&p.index, l);
                        if packed.len() + bytes > u32::MAX as usize {
                            return Err(CudaError::TooLarge {
                                what: "code bytes one scan tile stages",
                                got: (packed.len() + bytes) as u64,
                                max: u64::from(u32::MAX),
                            });
                        }
                        packed_at[l] = packed.len() as u32;
                        append_device_codes(&p.index, l, &mut packed);
                    }
                    byte_off = packed_at[l];
                }
                let (table, offset) = if !fast {
                    (local as u32, bias)
                } else if shared {
                    (shared_table, bias)
                } else {
                    let terms = &p
                        .dev
                        .quant
                        .l2_terms
                        .as_ref()
                        .map(|t| &t.0[..])
                        .unwrap_or(&[]);
                    combined
                        .iter_mut()
                        .zip(terms[l * tl..(l + 1) * tl].iter().zip(q_table))
                        .for_each(|(o, (a, b))| *o = a + b);
                    quantized.quantize(&combined, bias);
                    qbytes.extend_from_slice(&quantized.values);
                    qparams.push([quantized.base, quantized.scale]);
                    ((qparams.len() - 1) as u32, 0.0)
                };
                if len > 0 {
                    items.push(ScanItem {
                        table,
                        byte_off,
                        len,
                        gslot,
                        terms: (l * tl) as u32,
                        out: out as u32,
                        bias: offset,
                        dead_off: dead_off.get(q).copied().unwrap_or(0),
                    });
                }
                out += len as usize;
            }
            spans.push((row_start, out - row_start));
        }
        let mut row_s = self.zeros::<u32>(out)?;
        let mut row_p = self.zeros::<u32>(2 * out)?;
        if !items.is_empty() {
            let item_buf = self.io.stage(&items, held)?;
            let staged_codes = match p.dev.codes {
                Some(_) => None,
                None => Some(self.io.stage(&packed, held)?),
            };
            let codes = DeviceBytes::of(&p.dev.codes, &staged_codes)?;
            let n = items.len() as u32;
            let m_u = m as u32;
            if fast {
                let qt = self.io.stage(&qbytes, held)?;
                let qp = self.io.stage(&qparams, held)?;
                let cfg = LaunchConfig {
                    grid_dim: grid(items.len()),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: (m * 16) as u32,
                };
                let mut b = self.io.compute.launch_builder(&self.scan4);
                codes.push(&mut b);
                b.arg(&item_buf).arg(&qt).arg(&qp).arg(dead);
                b.arg(&mut row_s).arg(&mut row_p).arg(&m_u).arg(&n);
                // SAFETY: argument types and order match `scan4` (the staged buffers hold
                // `ScanItem`s, u8 tables and (base, scale) pairs); items address codes and
                // output rows built above.
                unsafe { b.launch(cfg) }.map_err(driver)?;
            } else {
                let t = self
                    .io
                    .stage(&tables.values[qs.start * tl..qs.end * tl], held)?;
                let no_terms;
                let terms = match &p.dev.quant.l2_terms {
                    Some((_, d)) => d,
                    None => {
                        no_terms = self.zeros::<f32>(1)?;
                        &no_terms
                    }
                };
                let l2 = u32::from(p.dev.quant.l2_terms.is_some());
                let staged = m * 256 * 4 <= self.scan8_shared;
                let smem = if staged { (m * 256 * 4) as u32 } else { 0 };
                let staged = u32::from(staged);
                let group = quiver_engine::backend::scan_items_per_block(items.len());
                let cfg = LaunchConfig {
                    grid_dim: grid(items.len().div_ceil(group)),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: smem,
                };
                let group = group as u32;
                let mut b = self.io.compute.launch_builder(&self.scan8);
                codes.push(&mut b);
                b.arg(&item_buf).arg(&t).arg(terms).arg(dead);
                b.arg(&mut row_s).arg(&mut row_p).arg(&m_u).arg(&l2);
                b.arg(&staged).arg(&n).arg(&group);
                // SAFETY: argument types and order match `scan8` (the staged buffers hold
                // `ScanItem`s and f32 tables); items address codes and output rows built
                // above; shared memory holds one table when `staged`.
                unsafe { b.launch(cfg) }.map_err(driver)?;
            }
        }
        self.select_submit(row_s, row_p, spans, keep, held)
    }

    fn refine_inner(
        &self,
        p: &CudaPrepared,
        queries: &[f32],
        candidates: &Candidates,
        k: usize,
    ) -> Result<Neighbors, CudaError> {
        let index = &p.index;
        let dim = index.dim();
        let metric = index.metric();
        let nq = queries.len() / dim;
        let per = candidates.per_query.max(1);
        let pad = Neighbors::padding_distance(metric);
        let mut ids = vec![-1i64; nq * k];
        let mut distances = vec![pad; nq * k];
        let has_raw = index.params().refine != RefineKind::None;
        let tile_bytes = self.tile_bytes;
        let value_bytes = if p.raw_f16 { 2 } else { 4 };
        let streamed_rows = has_raw && p.dev.raw.is_none();
        let row_bytes = if streamed_rows { dim * value_bytes } else { 0 };
        let rows_per_tile = (tile_bytes / (per * (28 + row_bytes) + dim * 4)).max(1);
        let finish = |start: usize, selected: Vec<Selected>| {
            for (r, (sc, pay)) in selected.into_iter().enumerate() {
                let q = start + r;
                for (i, (d, id)) in sc.iter().zip(&pay).enumerate() {
                    if id.hi == u32::MAX && id.lo == u32::MAX && *d == f32::INFINITY {
                        break;
                    }
                    ids[q * k + i] = (u64::from(id.hi) << 32 | u64::from(id.lo)) as i64;
                    distances[q * k + i] = metric.reported(*d);
                }
            }
        };
        let tiles: Vec<_> = (0..nq)
            .step_by(rows_per_tile)
            .map(|s| s..(s + rows_per_tile).min(nq))
            .collect();
        let submit = |qs: Range<usize>, held: &mut Vec<PinnedHostSlice<u32>>| {
            let (start, end) = (qs.start, qs.end);
            let n = (end - start) * per;
            let mut score = vec![f32::INFINITY; n];
            let mut payload = vec![
                Pay {
                    hi: u32::MAX,
                    lo: u32::MAX
                };
                n
            ];
            let mut items = Vec::new();
            let mut rows: Vec<u8> = Vec::new();
            for q in start..end {
                for j in 0..per {
                    let slot = candidates.slots[q * per + j];
                    if slot == Slot::NONE {
                        break;
                    }
                    let id = index.lists()[slot.list as usize].ids.as_slice()[slot.offset as usize];
                    let at = (q - start) * per + j;
                    payload[at] = Pay {
                        hi: (id >> 32) as u32,
                        lo: id as u32,
                    };
                    if has_raw {
                        let elem = if streamed_rows {
                            // Streamed raw vectors: this tile's candidates' rows, in order.
                            let row = rows.len() / (dim * value_bytes);
                            let raw = index.lists()[slot.list as usize].raw.as_bytes();
                            let at = slot.offset as usize * dim * value_bytes;
                            rows.extend_from_slice(&raw[at..at + dim * value_bytes]);
                            (row * dim) as u32
                        } else {
                            (p.places[slot.list as usize].1 + slot.offset) * dim as u32
                        };
                        items.push(RefineItem {
                            query: (q - start) as u32,
                            elem,
                            out: at as u32,
                            pad: 0,
                        });
                    } else {
                        score[at] = candidates.scores[q * per + j];
                    }
                }
            }
            let mut s = self.io.stage(&score, held)?;
            let pl = self.io.stage(&payload, held)?;
            if !items.is_empty() {
                let item_buf = self.io.stage(&items, held)?;
                let staged_rows = match p.dev.raw {
                    Some(_) => None,
                    None => Some(self.io.stage(&rows, held)?),
                };
                let raw = DeviceBytes::of(&p.dev.raw, &staged_rows)?;
                let qbuf = self.io.stage(&queries[start * dim..end * dim], held)?;
                let (d_u, f16, ip, n_u) = (
                    dim as u32,
                    u32::from(p.raw_f16),
                    u32::from(metric.is_inner_product()),
                    items.len() as u32,
                );
                // One warp per item, four warps per block.
                let cfg = LaunchConfig {
                    grid_dim: grid(items.len().div_ceil(4)),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: 0,
                };
                let mut b = self.io.compute.launch_builder(&self.refine);
                raw.push(&mut b);
                b.arg(&item_buf).arg(&qbuf).arg(&mut s);
                b.arg(&d_u).arg(&f16).arg(&ip).arg(&n_u);
                // SAFETY: argument types and order match `refine` (the staged buffers hold
                // `RefineItem`s, f32 queries and f32 scores); each item's vector lies in
                // `raw` (global slot × dim values) and its output inside `s`.
                unsafe { b.launch(cfg) }.map_err(driver)?;
            }
            let spans = (0..end - start).map(|r| (r * per, per)).collect();
            self.select_submit(s, pl, spans, k, held)
        };
        self.pipelined(&tiles, submit, finish)?;
        Ok(Neighbors { k, ids, distances })
    }

    /// Runs a stage's tiles (query ranges) two in flight: `submit` records a tile without
    /// waiting (staging its inputs in the pinned buffers it is given); the previous tile's
    /// selection is then waited for and handed to `finish` with its first query, so the host
    /// builds tile t + 1 while the device computes tile t.
    fn pipelined(
        &self,
        tiles: &[Range<usize>],
        mut submit: impl FnMut(
            Range<usize>,
            &mut Vec<PinnedHostSlice<u32>>,
        ) -> Result<PendingSelect, CudaError>,
        mut finish: impl FnMut(usize, Vec<Selected>),
    ) -> Result<(), CudaError> {
        let mut in_flight: Option<(usize, PendingSelect, Vec<PinnedHostSlice<u32>>)> = None;
        let mut complete = |(start, select, held): (usize, PendingSelect, _)| {
            finish(start, select.finish()?);
            select.release(&self.io, held);
            Ok::<(), CudaError>(())
        };
        for qs in tiles {
            let mut held = Vec::new();
            let select = submit(qs.clone(), &mut held)?;
            if let Some(prev) = in_flight.replace((qs.start, select, held)) {
                complete(prev)?;
            }
        }
        match in_flight {
            Some(last) => complete(last),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The coarse selection's switch: on unless `off`; anything else is refused, naming the
    /// variable and the value.
    #[test]
    fn the_coarse_select_switch_reads_on_and_off_only() {
        assert!(parse_coarse_select(None).expect("unset"));
        assert!(parse_coarse_select(Some("")).expect("empty"));
        assert!(parse_coarse_select(Some("on")).expect("on"));
        assert!(!parse_coarse_select(Some("off")).expect("off"));
        let err = parse_coarse_select(Some("0")).expect_err("0").to_string();
        assert!(
            err.contains("QUIVER_CUDA_COARSE_SELECT") && err.contains("\"0\""),
            "{err}"
        );
    }
}
