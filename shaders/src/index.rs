//! An IVF-PQ index resident on a device: codes, tombstones, raw vectors and L2 terms.
//!
//! Lists are packed, in list order, into as many code buffers as the storage-binding limit
//! requires (each list's codes start on a 4-byte boundary); raw vectors likewise into raw
//! buffers. A kernel binds one buffer at a time, so the scan and refine dispatch once per
//! buffer with the work that lives in it: an index larger than one binding (128 MiB on
//! lavapipe) searches like a small one. Every entry also has a global slot (its rank in list
//! order), which indexes the tombstone bitmap and is the payload the top-k kernel orders by.

use std::sync::Arc;

use quiver_engine::list::{CodeLayout, RawVectors};
use quiver_engine::{interleave, IvfPqIndex};

use crate::device::GpuDevice;
use crate::error::WgpuError;
use crate::kernel::{check_binding, storage};

/// A run of one list's codes inside one code buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CodeSegment {
    /// Code buffer number and first byte in it.
    pub(crate) buf: usize,
    pub(crate) byte: u32,
    /// First entry of the list it holds, and how many.
    pub(crate) first: u32,
    pub(crate) len: u32,
}

/// Where one list lives on the device.
#[derive(Debug, Clone)]
pub(crate) struct ListPlace {
    /// Its codes, in one or more buffers (split on entry or 32-entry block boundaries).
    pub(crate) segments: Vec<CodeSegment>,
    /// Global slot of the list's first entry.
    pub(crate) gslot: u32,
    /// Entries (deleted ones included).
    pub(crate) len: u32,
}

/// The device copy of an index. A clone shares the device buffers.
#[derive(Clone)]
pub(crate) struct GpuIndex {
    pub(crate) index: Arc<IvfPqIndex>,
    pub(crate) code_bufs: Vec<wgpu::Buffer>,
    /// Codes and raw vectors live on the device (else they are streamed per batch: the index
    /// is larger than the device memory budget).
    pub(crate) resident: bool,
    /// Raw vectors in global-slot order, `raw_rows` vectors per buffer.
    pub(crate) raw_bufs: Vec<wgpu::Buffer>,
    pub(crate) raw_rows: usize,
    /// 1 bit per global slot: deleted.
    pub(crate) dead: wgpu::Buffer,
    pub(crate) places: Vec<ListPlace>,
    /// Global slot of each list's first entry, for mapping slots back (sorted).
    pub(crate) starts: Vec<u32>,
    /// Raw vectors are f16 (else f32, or none).
    pub(crate) raw_f16: bool,
    /// What the device-resident search reads (`resident.rs`), when the codes and raw vectors
    /// are resident in one buffer each and the ids fit a binding.
    pub(crate) resident_search: Option<ResidentData>,
}

/// The index data only the device-resident search reads.
#[derive(Clone)]
pub(crate) struct ResidentData {
    /// Per list (first code byte, global slot of its first entry, entries, 0).
    pub(crate) places: wgpu::Buffer,
    /// Every entry's id as (high, low) words, in global-slot order.
    pub(crate) ids: wgpu::Buffer,
    /// `row_bound[n]`: the most entries any n lists hold together (the stride of the scan's
    /// rows at nprobe n).
    pub(crate) row_bound: Vec<usize>,
}

/// Code buffers, and the segments of each packed list.
pub(crate) type PackedCodes = (Vec<wgpu::Buffer>, Vec<Vec<CodeSegment>>);

/// Packs the codes of `lists` into buffers of at most `limit` bytes, splitting a list where
/// it does not fit on a unit boundary (`unit_bytes` bytes holding `unit_entries` entries).
/// Segments come back in the order of `lists`.
pub(crate) fn pack_codes(
    gpu: &GpuDevice,
    index: &IvfPqIndex,
    lists: impl Iterator<Item = usize>,
    limit: u64,
) -> Result<PackedCodes, WgpuError> {
    let m = index.pq().m();
    // Codes go in the GPU layout (`quiver_engine::interleave`): 8-bit ones in blocks of 32
    // entries in 16-byte chunks, 4-bit fast-scan blocks with their sub-quantizers in quads.
    let cs = index.pq().code_size();
    let (unit_bytes, unit_entries) = match index.layout() {
        CodeLayout::Flat => (
            interleave::interleaved_bytes(interleave::BLOCK, cs),
            interleave::BLOCK,
        ),
        CodeLayout::Packed4x32 => (interleave::quad_block_bytes(m), 32),
    };
    let fast_block = quiver_engine::fastscan::block_bytes(m);
    check_binding(
        gpu,
        "one code unit (bytes)",
        unit_bytes.next_multiple_of(4) as u64,
    )?;
    let mut bufs = Vec::new();
    let mut segments = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    for l in lists {
        let list = &index.lists()[l];
        let codes = list.codes.as_slice();
        let n = list.len();
        let units = n.div_ceil(unit_entries);
        let mut segs = Vec::new();
        let mut u = 0;
        while u < units {
            let room = (limit as usize).saturating_sub(cur.len()) / unit_bytes;
            if room == 0 {
                bufs.push(storage(gpu, "codes", &cur));
                cur.clear();
                continue;
            }
            let take = room.min(units - u);
            let first = u * unit_entries;
            let last = ((u + take) * unit_entries).min(n);
            segs.push(CodeSegment {
                buf: bufs.len(),
                byte: cur.len() as u32,
                first: first as u32,
                len: (last - first) as u32,
            });
            match index.layout() {
                CodeLayout::Flat => {
                    interleave::interleave(&codes[first * cs..last * cs], cs, &mut cur)
                }
                CodeLayout::Packed4x32 => interleave::append_quad_blocks(
                    &codes[u * fast_block..(u + take) * fast_block],
                    m,
                    &mut cur,
                ),
            }
            // Keep the next run 4-byte aligned.
            cur.resize(cur.len().next_multiple_of(4), 0);
            u += take;
        }
        segments.push(segs);
    }
    // scan8.wgsl reads 16-byte words: no binding shorter than one.
    cur.resize(cur.len().max(16), 0);
    bufs.push(storage(gpu, "codes", &cur));
    Ok((bufs, segments))
}

/// Buffers, and each run's (buffer, byte offset).
pub(crate) type Packed = (Vec<wgpu::Buffer>, Vec<(usize, u64)>);

/// Packs byte runs into buffers of at most `limit` bytes; returns each run's (buffer, offset).
pub(crate) fn pack<'a>(
    gpu: &GpuDevice,
    label: &str,
    runs: impl Iterator<Item = &'a [u8]>,
    limit: u64,
) -> Result<Packed, WgpuError> {
    let mut bufs = Vec::new();
    let mut places = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    for run in runs {
        let padded = run.len().next_multiple_of(4) as u64;
        check_binding(gpu, "one inverted list's data (bytes)", padded)?;
        if cur.len() as u64 + padded > limit && !cur.is_empty() {
            bufs.push(storage(gpu, label, &cur));
            cur.clear();
        }
        places.push((bufs.len(), cur.len() as u64));
        cur.extend_from_slice(run);
        cur.resize(cur.len().next_multiple_of(4), 0);
    }
    bufs.push(storage(gpu, label, &cur));
    Ok((bufs, places))
}

impl GpuIndex {
    /// Uploads an index.
    pub(crate) fn upload(gpu: &GpuDevice, index: Arc<IvfPqIndex>) -> Result<GpuIndex, WgpuError> {
        let lists = index.lists();
        let total: usize = lists.iter().map(|l| l.len()).sum();
        if total >= u32::MAX as usize {
            return Err(WgpuError::TooLarge {
                what: "entries in one index",
                got: total as u64,
                max: u32::MAX as u64 - 1,
            });
        }
        let limit = gpu.max_binding();
        let dim = index.dim();
        let raw_f16 = matches!(lists.first().map(|l| &l.raw), Some(RawVectors::F16(_)));
        let row_bytes = dim * if raw_f16 { 2 } else { 4 };
        check_binding(
            gpu,
            "one raw vector (bytes)",
            row_bytes.next_multiple_of(4) as u64,
        )?;
        // Rows per buffer, even so that f16 rows of odd dimension start on a word.
        let raw_rows = ((limit as usize / row_bytes) & !1).max(2);
        let data_bytes: u64 = lists
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let raw = match &l.raw {
                    RawVectors::None => 0,
                    RawVectors::F16(s) => s.as_slice().len() * 2,
                    RawVectors::F32(s) => s.as_slice().len() * 4,
                };
                (interleave::device_code_bytes(&index, i) + raw) as u64
            })
            .sum();
        // Above the budget the codes and raw vectors stay on the host and each batch uploads
        // what it touches.
        let resident = data_bytes <= gpu.memory_budget();
        let (code_bufs, segments) = if resident {
            pack_codes(gpu, &index, 0..lists.len(), limit)?
        } else {
            (Vec::new(), vec![Vec::new(); lists.len()])
        };
        // Raw vectors: every list's in global-slot order, cut into buffers of whole rows.
        let mut raw: Vec<u8> = Vec::new();
        for l in lists.iter().filter(|_| resident) {
            match &l.raw {
                RawVectors::None => {}
                RawVectors::F16(s) => raw.extend_from_slice(bytemuck::cast_slice(s.as_slice())),
                RawVectors::F32(s) => raw.extend_from_slice(bytemuck::cast_slice(s.as_slice())),
            }
        }
        let raw_bufs = if raw.is_empty() {
            vec![storage(gpu, "raw vectors", &[0u32])]
        } else {
            raw.chunks(raw_rows * row_bytes)
                .map(|c| {
                    let mut c = c.to_vec();
                    c.resize(c.len().next_multiple_of(4), 0);
                    storage(gpu, "raw vectors", &c)
                })
                .collect()
        };
        let dead = quiver_engine::backend::tombstone_bitmap(&index);
        check_binding(gpu, "tombstone bitmap (bytes)", (dead.len() * 4) as u64)?;
        let mut places = Vec::with_capacity(lists.len());
        let mut starts = Vec::with_capacity(lists.len());
        let mut gslot = 0usize;
        for (list, segments) in lists.iter().zip(segments) {
            places.push(ListPlace {
                segments,
                gslot: gslot as u32,
                len: list.len() as u32,
            });
            starts.push(gslot as u32);
            gslot += list.len();
        }
        let resident_search = if resident
            && code_bufs.len() == 1
            && raw_bufs.len() == 1
            && (total * 8) as u64 <= limit
            && (lists.len() * 16) as u64 <= limit
        {
            let words: Vec<u32> = places
                .iter()
                .flat_map(|p| [p.segments.first().map_or(0, |s| s.byte), p.gslot, p.len, 0])
                .collect();
            let mut ids: Vec<u32> = Vec::with_capacity(2 * total);
            for list in lists {
                for &id in list.ids.as_slice() {
                    ids.push((id >> 32) as u32);
                    ids.push(id as u32);
                }
            }
            let mut sizes: Vec<usize> = lists.iter().map(|l| l.len()).collect();
            sizes.sort_unstable_by(|a, b| b.cmp(a));
            let mut row_bound = Vec::with_capacity(sizes.len() + 1);
            row_bound.push(0);
            for n in sizes {
                row_bound.push(row_bound.last().copied().unwrap_or(0) + n);
            }
            Some(ResidentData {
                places: storage(gpu, "list places", &words),
                ids: storage(gpu, "ids", &ids),
                row_bound,
            })
        } else {
            None
        };
        Ok(GpuIndex {
            resident,
            resident_search,
            dead: storage(gpu, "tombstones", &dead),
            code_bufs,
            raw_bufs,
            raw_rows,
            places,
            starts,
            raw_f16,
            index,
        })
    }

    /// The device copy of `newer` when it is this index after deletes only
    /// ([`IvfPqIndex::differs_only_in_tombstones`]): the same code and raw-vector buffers with
    /// a new tombstone bitmap (the only upload). `None` when more changed.
    pub(crate) fn with_tombstones(
        &self,
        gpu: &GpuDevice,
        newer: Arc<IvfPqIndex>,
    ) -> Option<GpuIndex> {
        if !self.index.differs_only_in_tombstones(&newer) {
            return None;
        }
        let dead = quiver_engine::backend::tombstone_bitmap(&newer);
        Some(GpuIndex {
            dead: storage(gpu, "tombstones", &dead),
            index: newer,
            ..self.clone()
        })
    }

    /// Streaming mode: the raw vectors of `slots` (list, offset), copied into fresh buffers of
    /// whole rows; returns the buffers and each vector's (buffer, first value).
    pub(crate) fn stream_raw(
        &self,
        gpu: &GpuDevice,
        slots: &[(u32, u32)],
    ) -> (Vec<wgpu::Buffer>, Vec<(usize, u32)>) {
        let dim = self.index.dim();
        let mut bufs = Vec::new();
        let mut places = Vec::with_capacity(slots.len());
        let mut cur: Vec<u8> = Vec::new();
        let mut rows = 0;
        for &(l, o) in slots {
            if rows == self.raw_rows {
                cur.resize(cur.len().next_multiple_of(4), 0);
                bufs.push(storage(gpu, "raw vectors (streamed)", &cur));
                cur.clear();
                rows = 0;
            }
            let list = &self.index.lists()[l as usize];
            let (o, d) = (o as usize, dim);
            match &list.raw {
                RawVectors::None => {}
                RawVectors::F16(s) => {
                    cur.extend_from_slice(bytemuck::cast_slice(&s.as_slice()[o * d..(o + 1) * d]))
                }
                RawVectors::F32(s) => {
                    cur.extend_from_slice(bytemuck::cast_slice(&s.as_slice()[o * d..(o + 1) * d]))
                }
            }
            places.push((bufs.len(), (rows * dim) as u32));
            rows += 1;
        }
        cur.resize(cur.len().next_multiple_of(4).max(4), 0);
        bufs.push(storage(gpu, "raw vectors (streamed)", &cur));
        (bufs, places)
    }

    /// The raw buffer and first value of the vector at a global slot.
    pub(crate) fn raw_place(&self, gslot: u32) -> (usize, u32) {
        let g = gslot as usize;
        let dim = self.index.dim();
        (g / self.raw_rows, ((g % self.raw_rows) * dim) as u32)
    }

    /// The (list, offset) of a global slot.
    pub(crate) fn locate(&self, gslot: u32) -> (u32, u32) {
        // The last list starting at or before the slot (empty lists share a start).
        let l = self.starts.partition_point(|&s| s <= gslot) - 1;
        let mut l = l;
        while self.places[l].len == 0 || gslot - self.starts[l] >= self.places[l].len {
            l -= 1;
        }
        (l as u32, gslot - self.starts[l])
    }
}
