//! Host↔device copies that overlap compute: a copy stream beside the compute stream, and
//! page-locked (pinned) host buffers reused across tiles.
//!
//! A tile's inputs are written into pinned buffers and copied on the copy stream; its
//! kernels run on the compute stream; its outputs come back on the copy stream into pinned
//! buffers. cudarc orders the streams by the events each `CudaSlice` records (a kernel waits
//! for the copy that wrote its input, a read-back for the kernel that wrote its output), so
//! the host only waits when it reads a result ([`Fetched::wait`]). While tile t computes, the
//! host builds tile t + 1 and its inputs cross PCIe, and tile t − 1's results come back: the
//! schedule of `shaders/src/backend.rs`, where wgpu's queue does the same.
//!
//! A device-resident batch (`resident.rs`) runs its upload, kernels and download on one
//! stream of its own, taken in turn from two ([`Transfers::lane`]), through the same pinned
//! buffers: a second caller's batch uploads and starts while the first one scans. Its device
//! buffers come from a [`Scratch`] kept by its lane between batches.
//!
//! Copies from pageable memory would be staged by the driver and block the host; pinned
//! memory is what lets a copy run asynchronously. Allocating it is slow (pages are locked),
//! so buffers go back to a small pool. Everything moves as 32-bit words: every type the
//! kernels exchange (f32, u32, `uint2`, the work-item structs) is a whole number of them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaSlice, CudaStream, CudaViewMut, DevicePtr, DevicePtrMut, HostSlice,
    PinnedHostSlice,
};

use crate::backend::{driver, CudaError};
use crate::scratch::Scratch;

/// Smallest pinned buffer allocated, words (16 KiB).
const MIN_WORDS: usize = 4096;
/// Buffers kept for reuse.
const POOL_SIZE: usize = 16;

/// Streams a device-resident batch runs on, taken in turn: two callers' batches overlap (one's
/// upload and coarse stage under the other's scan) instead of queueing on one stream.
const LANES: usize = 2;
/// Working memories a lane keeps for its next batches: one per batch it runs at once, up to
/// this many (more callers at once allocate theirs and free them after).
const KEPT_PER_LANE: usize = 2;

/// The device's default memory pool (its handle: a driver object that lives as long as the
/// context).
pub(crate) struct MemPool(pub(crate) cudarc::driver::sys::CUmemoryPool);

// SAFETY: the handle names a driver object, usable from any thread of the process.
unsafe impl Send for MemPool {}
// SAFETY: as above; the driver synchronises calls on it.
unsafe impl Sync for MemPool {}

/// The streams and the pinned-buffer pool of one backend.
pub(crate) struct Transfers {
    ctx: Arc<CudaContext>,
    /// The default memory pool, which keeps what batches free (`None`: no pools).
    mem_pool: Option<MemPool>,
    /// Kernels.
    pub(crate) compute: Arc<CudaStream>,
    /// Host↔device copies of tiles.
    pub(crate) copy: Arc<CudaStream>,
    /// The device-resident batches' streams (copies and kernels of a batch on one).
    lanes: Vec<Arc<CudaStream>>,
    /// Each lane's working memory not in use by a batch (one per batch it has run at once, up
    /// to [`KEPT_PER_LANE`]).
    scratch: Vec<Mutex<Vec<Scratch>>>,
    next_lane: AtomicUsize,
    pool: Mutex<Vec<PinnedHostSlice<u32>>>,
}

/// A device-to-host copy in flight into a pinned buffer.
pub(crate) struct Fetched {
    buffer: PinnedHostSlice<u32>,
    words: usize,
}

impl Fetched {
    /// Waits for the copy and returns its words.
    pub(crate) fn wait(&self) -> Result<&[u32], CudaError> {
        Ok(&self.buffer.as_slice().map_err(driver)?[..self.words])
    }
}

impl Transfers {
    /// Two new non-blocking streams on `ctx` (cudarc then tracks each allocation's reads
    /// and writes with events, so work on one stream waits for the other where it must).
    pub(crate) fn new(
        ctx: &Arc<CudaContext>,
        mem_pool: Option<MemPool>,
    ) -> Result<Transfers, CudaError> {
        Ok(Transfers {
            ctx: ctx.clone(),
            mem_pool,
            compute: ctx.new_stream().map_err(driver)?,
            copy: ctx.new_stream().map_err(driver)?,
            lanes: (0..LANES)
                .map(|_| ctx.new_stream().map_err(driver))
                .collect::<Result<_, _>>()?,
            next_lane: AtomicUsize::new(0),
            scratch: (0..LANES).map(|_| Mutex::new(Vec::new())).collect(),
            pool: Mutex::new(Vec::new()),
        })
    }

    /// The next device-resident batch's lane (the lanes in turn) and its stream.
    pub(crate) fn lane(&self) -> (usize, Arc<CudaStream>) {
        let i = self.next_lane.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        (i, self.lanes[i].clone())
    }

    /// Working memory for a batch on `lane`: one the lane kept, or a new, empty one.
    pub(crate) fn take_scratch(&self, lane: usize) -> Scratch {
        let mut kept = self.scratch[lane].lock().unwrap_or_else(|e| e.into_inner());
        kept.pop().unwrap_or_default()
    }

    /// Keeps `scratch` for the lane's next batch (its batch's results have arrived), unless
    /// the lane keeps [`KEPT_PER_LANE`] already: then it is freed.
    pub(crate) fn give_scratch(&self, lane: usize, scratch: Scratch) {
        let mut kept = self.scratch[lane].lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < KEPT_PER_LANE {
            kept.push(scratch);
        }
    }

    /// Frees what the lanes keep (before an index's memory is counted: its upload may need
    /// it) and waits until the lanes' streams have freed it.
    pub(crate) fn trim_scratch(&self) -> Result<(), CudaError> {
        let mut any = false;
        for k in &self.scratch {
            let dropped = std::mem::take(&mut *k.lock().unwrap_or_else(|e| e.into_inner()));
            any |= !dropped.is_empty();
        }
        if any {
            for lane in &self.lanes {
                lane.synchronize().map_err(driver)?;
            }
        }
        Ok(())
    }

    /// Device memory free now, bytes: the driver's count, plus what the memory pool holds
    /// for reuse (batches' freed buffers, which the driver counts as used, yet any
    /// allocation from the pool takes).
    pub(crate) fn free_memory(&self) -> Result<usize, CudaError> {
        let free = self.ctx.mem_get_info().map_err(driver)?.0;
        Ok(free + self.pool_idle_bytes())
    }

    /// Bytes the memory pool has reserved and no allocation uses (0 without a pool, or when
    /// the driver does not say).
    fn pool_idle_bytes(&self) -> usize {
        use cudarc::driver::sys::{cuMemPoolGetAttribute, CUmemPool_attribute as A};
        let Some(pool) = &self.mem_pool else {
            return 0;
        };
        let read = |attr: A| {
            let mut v = 0u64;
            // SAFETY: both attributes are u64s written through the pointer.
            let r = unsafe { cuMemPoolGetAttribute(pool.0, attr, (&mut v as *mut u64).cast()) };
            r.result().ok().map(|_| v)
        };
        match (
            read(A::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT),
            read(A::CU_MEMPOOL_ATTR_USED_MEM_CURRENT),
        ) {
            (Some(reserved), Some(used)) => reserved.saturating_sub(used) as usize,
            _ => 0,
        }
    }

    /// A pinned buffer of at least `words` words: the smallest pooled one that fits, or a
    /// new one (a power of two, at least 16 KiB).
    fn take(&self, words: usize) -> Result<PinnedHostSlice<u32>, CudaError> {
        {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            let best = pool
                .iter()
                .enumerate()
                .filter(|(_, b)| b.len() >= words)
                .min_by_key(|(_, b)| b.len())
                .map(|(i, _)| i);
            if let Some(i) = best {
                return Ok(pool.swap_remove(i));
            }
        }
        let len = words.max(MIN_WORDS).next_power_of_two();
        // SAFETY: the buffer is zeroed below before anything reads it. Flags 0: cached
        // (not write-combined) memory, which the host reads back at full speed.
        let mut buffer =
            unsafe { self.ctx.alloc_pinned_with_flags::<u32>(len, 0) }.map_err(driver)?;
        buffer.as_mut_slice().map_err(driver)?.fill(0);
        Ok(buffer)
    }

    /// Returns a buffer to the pool (waiting for its last copy first, when its drop would).
    fn give(&self, buffer: PinnedHostSlice<u32>) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL_SIZE {
            pool.push(buffer);
        }
    }

    /// Copies `data` to a new device buffer (of exactly its words) on the copy stream,
    /// through a pinned buffer that `held` keeps until the tile is done.
    pub(crate) fn stage<T: bytemuck::Pod>(
        &self,
        data: &[T],
        held: &mut Vec<PinnedHostSlice<u32>>,
    ) -> Result<CudaSlice<u32>, CudaError> {
        self.stage_on(&self.copy, data, held)
    }

    /// [`Self::stage`] on `stream`.
    pub(crate) fn stage_on<T: bytemuck::Pod>(
        &self,
        stream: &Arc<CudaStream>,
        data: &[T],
        held: &mut Vec<PinnedHostSlice<u32>>,
    ) -> Result<CudaSlice<u32>, CudaError> {
        let words = std::mem::size_of_val(data).div_ceil(4).max(1);
        // SAFETY: the copy below writes every word before any kernel reads it (the stream's
        // write event orders them).
        let mut device = unsafe { stream.alloc::<u32>(words) }.map_err(driver)?;
        self.stage_into(stream, data, &mut device.slice_mut(..), held)?;
        Ok(device)
    }

    /// [`Self::stage_on`] into `device` (its first words: `data`'s, rounded up to whole
    /// words, which it must hold).
    pub(crate) fn stage_into<T: bytemuck::Pod>(
        &self,
        stream: &Arc<CudaStream>,
        data: &[T],
        device: &mut CudaViewMut<'_, u32>,
        held: &mut Vec<PinnedHostSlice<u32>>,
    ) -> Result<(), CudaError> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let words = bytes.len().div_ceil(4).max(1);
        if device.len() < words {
            return Err(CudaError::Driver(
                "internal: staging buffer too short".into(),
            ));
        }
        let mut pinned = self.take(words)?;
        {
            let all = pinned.as_mut_slice().map_err(driver)?;
            let dst = bytemuck::cast_slice_mut::<u32, u8>(&mut all[..words]);
            dst[..bytes.len()].copy_from_slice(bytes);
            dst[bytes.len()..].fill(0);
        }
        {
            let (dst, _record_dst) = device.device_ptr_mut(stream);
            // SAFETY: the slice is used only by the copy below, on `stream`.
            let (src, _record_src) = unsafe { pinned.stream_synced_slice(stream) };
            // SAFETY: `src[..words]` and `device` (at least `words` long) hold `words` u32s;
            // the guards keep both alive and ordered until the copy is recorded.
            unsafe {
                cudarc::driver::result::memcpy_htod_async(dst, &src[..words], stream.cu_stream())
            }
            .map_err(driver)?;
        }
        held.push(pinned);
        Ok(())
    }

    /// Starts copying `device` back on the copy stream (after the kernels that write it).
    pub(crate) fn fetch(&self, device: &CudaSlice<u32>) -> Result<Fetched, CudaError> {
        self.fetch_on(&self.copy, device)
    }

    /// [`Self::fetch`] on `stream`.
    pub(crate) fn fetch_on(
        &self,
        stream: &Arc<CudaStream>,
        device: &impl DevicePtr<u32>,
    ) -> Result<Fetched, CudaError> {
        let words = device.len();
        let mut buffer = self.take(words)?;
        // Not `memcpy_dtoh`: it copies the destination's length, and a pooled buffer may be
        // longer than `device` (the emulator's guard pages caught that read past the end).
        // The same event bookkeeping by hand: the copy waits for the kernels that wrote
        // `device` and for the buffer's previous use, and both record this use.
        let (src, _record_src) = device.device_ptr(stream);
        // SAFETY: the slice is used only by the copy below, on `stream`.
        let (dst, _record_dst) = unsafe { buffer.stream_synced_mut_slice(stream) };
        // SAFETY: `dst[..words]` and `src` both hold `words` u32s; the guards keep both
        // alive and ordered until the copy is recorded.
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(&mut dst[..words], src, stream.cu_stream())
        }
        .map_err(driver)?;
        drop((_record_src, _record_dst));
        Ok(Fetched { buffer, words })
    }

    /// Gives a finished tile's pinned buffers back to the pool.
    pub(crate) fn release(&self, held: Vec<PinnedHostSlice<u32>>, fetched: Vec<Fetched>) {
        for b in held {
            self.give(b);
        }
        for f in fetched {
            self.give(f.buffer);
        }
    }
}
