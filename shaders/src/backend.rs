//! The wgpu backend: every search stage on a device through WGSL compute shaders.
//!
//! `prepare` uploads the index once (coarse centroids, PQ codebook, codes and raw vectors split
//! over bindings, tombstones, L2 list terms) and builds every pipeline. Each stage then runs a
//! batch as tiles that fit the storage-binding limit:
//! 1. coarse: tiled distances + top-k kernel (`coarse.wgsl`, `topk.wgsl`);
//! 2. tables: `tables.wgsl`;
//! 3. scan: `scan8.wgsl` (8-bit codes, float tables) or `scan4.wgsl` (4-bit fast-scan codes,
//!    tables quantized to u8 on the host by the CPU code), one workgroup per (query, list),
//!    then the top-k kernel over each query's row of scores;
//! 4. refine: `refine.wgsl` (exact distances on f16/f32 raw vectors), then the top-k kernel by
//!    (distance, id).
//!
//! Results equal the CPU reference's up to float rounding (the scan's scores exactly: same
//! additions in the same order; the scan's integer sums in the 4-bit case).

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};
use quiver_engine::backend::counters::Count;
use quiver_engine::backend::{
    run_stages, Backend, Candidates, LookupTables, Neighbors, PreparedIndex, Probes, QueryFilters,
    SearchParams, Slot,
};
use quiver_engine::fastscan::QuantizedTable;
use quiver_engine::list::CodeLayout;
use quiver_engine::{EngineError, IvfPqIndex, RefineKind};

use crate::coarse::GpuCoarse;
use crate::device::GpuDevice;
use crate::error::WgpuError;
use crate::index::GpuIndex;
use crate::kernel::{check_binding, checked, grid, output, storage, uniform, Kernel};
use crate::tables::GpuTables;
use crate::topk::{GpuTopK, PendingSelect, Rows, Selected};

/// The wgpu backend on one device.
pub struct WgpuBackend {
    pub(crate) gpu: Arc<GpuDevice>,
    pub(crate) scan8: Kernel,
    /// `scan8.wgsl`'s `fused` entry: the scan selecting as it scores.
    pub(crate) scan8_fused: Kernel,
    /// Whether the resident search selects inside the 8-bit scan where it can.
    pub(crate) fused_select: bool,
    scan4: Kernel,
    /// `scan4.wgsl`'s `quantized` entry: the device-resident 4-bit scan.
    pub(crate) scan4_quantized: Kernel,
    pub(crate) scan4_fused: Kernel,
    refine: Kernel,
    pub(crate) topk: GpuTopK,
    /// The device-resident search's work items (`items.wgsl`) and refine
    /// (`refine_candidates.wgsl`).
    pub(crate) items: Kernel,
    pub(crate) refine_candidates: Kernel,
}

impl std::fmt::Debug for WgpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuBackend")
            .field("adapter", &self.gpu.adapter().name)
            .finish()
    }
}

/// An index uploaded to the device.
pub struct WgpuPrepared {
    /// Coarse quantizer, codebooks and L2 terms: shared by the versions of one index that
    /// differ only in deletions (see [`Backend::refresh`]).
    pub(crate) coarse: Arc<GpuCoarse>,
    pub(crate) tables: Arc<GpuTables>,
    pub(crate) data: GpuIndex,
    /// L2 only: `nlist × M × ksub` list terms (host copy for 4-bit quantization; for the
    /// 8-bit scan also device buffers, split like the codes, and each list's (buffer, first
    /// value) in them).
    pub(crate) l2_terms: Option<Arc<L2Terms>>,
    /// Placeholder binding where no terms are needed.
    pub(crate) no_terms: wgpu::Buffer,
}

impl std::fmt::Debug for WgpuPrepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuPrepared")
            .field("lists", &self.data.places.len())
            .field("code_buffers", &self.data.code_bufs.len())
            .field("raw_buffers", &self.data.raw_bufs.len())
            .finish()
    }
}

/// L2 list terms `‖C_mj‖² + 2 <c_l,m, C_mj>`: the host copy, and for the 8-bit scan the
/// device buffers (split like the codes) with each list's (buffer, first value).
type L2Terms = (Vec<f32>, Vec<wgpu::Buffer>, Vec<(usize, u32)>);

impl WgpuPrepared {
    /// The shared index this was prepared from.
    pub fn index_arc(&self) -> &Arc<IvfPqIndex> {
        &self.data.index
    }

    /// True when `other` holds the same device copy of the codes and quantizers (it was made
    /// from this one by a tombstone-only [`Backend::refresh`]), not an upload of its own.
    pub fn shares_device_data_with(&self, other: &WgpuPrepared) -> bool {
        Arc::ptr_eq(&self.coarse, &other.coarse)
    }

    /// Whether the codes and raw vectors live on the device (else they are streamed per batch).
    pub fn is_resident(&self) -> bool {
        self.data.resident
    }

    /// How many device buffers hold the codes and the raw vectors.
    pub fn buffer_counts(&self) -> (usize, usize) {
        (self.data.code_bufs.len(), self.data.raw_bufs.len())
    }
}

impl PreparedIndex for WgpuPrepared {
    fn index(&self) -> &IvfPqIndex {
        &self.data.index
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
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

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RefineItem {
    query: u32,
    elem: u32,
    out: u32,
    pad: u32,
}

fn engine_err(e: WgpuError) -> EngineError {
    match e {
        WgpuError::NoAdapter(_) | WgpuError::Device { .. } => EngineError::BackendUnavailable {
            backend: "wgpu",
            reason: e.to_string(),
        },
        WgpuError::TooLarge { .. } | WgpuError::Invalid(_) | WgpuError::Runtime(_) => {
            EngineError::BackendFailed {
                backend: "wgpu",
                reason: e.to_string(),
            }
        }
    }
}

impl WgpuBackend {
    /// A backend on an open device; builds the pipelines.
    pub fn new(gpu: Arc<GpuDevice>) -> WgpuBackend {
        WgpuBackend {
            scan8: Kernel::new(&gpu, "scan8", &crate::topk::scan8_source()),
            scan8_fused: Kernel::entry(&gpu, "scan8-fused", &crate::topk::scan8_source(), "fused"),
            scan4: Kernel::new(&gpu, "scan4", &crate::topk::scan4_source()),
            scan4_quantized: Kernel::entry(
                &gpu,
                "scan4-quantized",
                &crate::topk::scan4_source(),
                "quantized",
            ),
            scan4_fused: Kernel::entry(&gpu, "scan4-fused", &crate::topk::scan4_source(), "fused"),
            refine: Kernel::new(&gpu, "refine", include_str!("../wgsl/refine.wgsl")),
            items: Kernel::new(&gpu, "items", include_str!("../wgsl/items.wgsl")),
            refine_candidates: Kernel::new(
                &gpu,
                "refine_candidates",
                include_str!("../wgsl/refine_candidates.wgsl"),
            ),
            topk: GpuTopK::new(&gpu),
            fused_select: true,
            gpu,
        }
    }

    /// Turns off the fused scan + selection: the resident search then writes every score
    /// into rows and selects in rounds (for A/B counts and timings).
    pub fn without_fused_select(mut self) -> Self {
        self.fused_select = false;
        self
    }

    /// The device it runs on.
    pub fn device(&self) -> &GpuDevice {
        &self.gpu
    }

    pub(crate) fn new_encoder(&self) -> wgpu::CommandEncoder {
        self.encoder()
    }

    fn encoder(&self) -> wgpu::CommandEncoder {
        self.gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
    }

    /// Queries per scan tile: each query's row of (score, payload) and its tables fit.
    fn scan_tiles(
        &self,
        p: &WgpuPrepared,
        probes: &Probes,
        table_bytes: usize,
    ) -> Result<Vec<std::ops::Range<usize>>, WgpuError> {
        let nq = probes.lists.len() / probes.nprobe.max(1);
        let limit = self.gpu.max_binding() as usize;
        let mut tiles = Vec::new();
        let (mut start, mut entries, mut tables, mut codes) = (0, 0usize, 0usize, 0usize);
        for q in 0..nq {
            let probed = &probes.lists[q * probes.nprobe..(q + 1) * probes.nprobe];
            let row: usize = probed
                .iter()
                .map(|&l| p.data.places[l as usize].len as usize)
                .sum();
            // Streaming: the tile's lists are uploaded with it (bounded here, counting a list
            // once per query that probes it).
            let code_bytes: usize = if p.data.resident {
                0
            } else {
                probed
                    .iter()
                    .map(|&l| {
                        quiver_engine::interleave::device_code_bytes(&p.data.index, l as usize)
                    })
                    .sum()
            };
            if row * 8 > limit || table_bytes > limit {
                return Err(WgpuError::TooLarge {
                    what: "one query's scan (bytes)",
                    got: (row * 8).max(table_bytes) as u64,
                    max: limit as u64,
                });
            }
            if q > start
                && ((entries + row) * 8 > limit
                    || tables + table_bytes > limit
                    || codes + code_bytes > limit)
            {
                tiles.push(start..q);
                (start, entries, tables, codes) = (q, 0, 0, 0);
            }
            entries += row;
            tables += table_bytes;
            codes += code_bytes;
        }
        if nq > start {
            tiles.push(start..nq);
        }
        Ok(tiles)
    }

    /// Records and submits one tile's scan and selection (queries `qs`), without waiting.
    #[allow(clippy::too_many_arguments)]
    fn scan_tile(
        &self,
        p: &WgpuPrepared,
        probes: &Probes,
        tables: &LookupTables,
        keep: usize,
        qs: std::ops::Range<usize>,
        dead: &wgpu::Buffer,
        dead_off: &[u32],
    ) -> Result<PendingSelect, WgpuError> {
        let index = &p.data.index;
        let nprobe = probes.nprobe;
        let (m, ksub) = (tables.m, tables.ksub);
        let tl = m * ksub;
        let fast = index.layout() == CodeLayout::Packed4x32;
        // Streaming: this tile's probed lists, uploaded now.
        let (streamed_bufs, streamed_segs) = if p.data.resident {
            (Vec::new(), std::collections::HashMap::new())
        } else {
            let mut seen = std::collections::HashSet::new();
            let probed: Vec<usize> = qs
                .clone()
                .flat_map(|q| probes.lists[q * nprobe..(q + 1) * nprobe].iter())
                .map(|&l| l as usize)
                .filter(|l| seen.insert(*l))
                .collect();
            let (bufs, segs) = crate::index::pack_codes(
                &self.gpu,
                index,
                probed.iter().copied(),
                self.gpu.max_binding(),
            )?;
            (bufs, probed.into_iter().zip(segs).collect())
        };
        let code_bufs = if p.data.resident {
            &p.data.code_bufs
        } else {
            &streamed_bufs
        };
        // Work items per (code buffer, L2 terms buffer), and each query's row.
        let mut items: std::collections::BTreeMap<(usize, usize), Vec<ScanItem>> =
            Default::default();
        let mut spans = Vec::with_capacity(qs.len());
        let mut out = 0usize;
        // 4-bit: quantized tables (u8, as words) and their (base, scale).
        let mut qwords: Vec<u32> = Vec::new();
        let mut qparams: Vec<[f32; 2]> = Vec::new();
        let mut quantized = QuantizedTable::new(m);
        let mut combined = vec![0f32; tl];
        let shared = fast && p.l2_terms.is_none();
        let push_table =
            |q: &QuantizedTable, qwords: &mut Vec<u32>, qparams: &mut Vec<[f32; 2]>| {
                let n = qparams.len() as u32;
                qwords.extend(q.values.chunks(4).map(|c| {
                    c.iter()
                        .enumerate()
                        .fold(0u32, |w, (i, &b)| w | u32::from(b) << (8 * i))
                }));
                qparams.push([q.base, q.scale]);
                n
            };
        for (local, q) in qs.clone().enumerate() {
            let q_table = &tables.values[q * tl..(q + 1) * tl];
            let mut shared_table = 0;
            if shared {
                quantized.quantize(q_table, 0.0);
                shared_table = push_table(&quantized, &mut qwords, &mut qparams);
            }
            let row_start = out;
            for j in 0..nprobe {
                let l = probes.lists[q * nprobe + j] as usize;
                let bias = quiver_engine::backend::list_bias(index, probes.scores[q * nprobe + j]);
                let place = &p.data.places[l];
                let (table, offset) = if !fast {
                    (local as u32, bias)
                } else if shared {
                    (shared_table, bias)
                } else {
                    let terms = &p.l2_terms.as_ref().map(|t| &t.0[..]).unwrap_or(&[]);
                    let t = &terms[l * tl..(l + 1) * tl];
                    combined
                        .iter_mut()
                        .zip(t.iter().zip(q_table))
                        .for_each(|(o, (a, b))| *o = a + b);
                    quantized.quantize(&combined, bias);
                    (push_table(&quantized, &mut qwords, &mut qparams), 0.0)
                };
                let (terms_buf, terms) = match p.l2_terms.as_deref() {
                    Some((_, _, places)) if !fast => places[l],
                    _ => (0, 0),
                };
                let segments = if p.data.resident {
                    &place.segments
                } else {
                    &streamed_segs[&l]
                };
                for seg in segments {
                    items
                        .entry((seg.buf, terms_buf))
                        .or_default()
                        .push(ScanItem {
                            table,
                            byte_off: seg.byte,
                            len: seg.len,
                            gslot: place.gslot + seg.first,
                            terms,
                            out: (out + seg.first as usize) as u32,
                            bias: offset,
                            dead_off: dead_off.get(q).copied().unwrap_or(0),
                        });
                }
                out += place.len as usize;
            }
            spans.push((row_start, out - row_start));
        }
        let entries = out.max(1);
        let row_scores = output(&self.gpu, "scan scores", (entries * 4) as u64);
        let row_payloads = output(&self.gpu, "scan payloads", (entries * 8) as u64);
        let mut enc = self.encoder();
        let table_buf = if fast {
            check_binding(
                &self.gpu,
                "quantized tables (bytes)",
                (qwords.len() * 4) as u64,
            )?;
            (
                storage(&self.gpu, "quantized tables", &qwords),
                storage(&self.gpu, "table params", &qparams),
            )
        } else {
            let t = &tables.values[qs.start * tl..qs.end * tl];
            (
                storage(&self.gpu, "tables", t),
                storage(&self.gpu, "unused", &[0u32]),
            )
        };
        for (&(b, tb), its) in &items {
            check_binding(
                &self.gpu,
                "scan work items (bytes)",
                (its.len() * 32) as u64,
            )?;
            let item_buf = storage(&self.gpu, "scan items", its);
            let group8 = quiver_engine::backend::scan_items_per_block(its.len());
            let groups = if fast {
                grid(its.len() as u64)?
            } else {
                grid(its.len().div_ceil(group8) as u64)?
            };
            if fast {
                let params = uniform(&self.gpu, &[m as u32, its.len() as u32, 0, 0]);
                self.scan4.dispatch(
                    &self.gpu,
                    &mut enc,
                    &[
                        &code_bufs[b],
                        &item_buf,
                        &table_buf.0,
                        &table_buf.1,
                        dead,
                        &row_scores,
                        &row_payloads,
                        &params,
                    ],
                    groups,
                );
            } else {
                let terms = p.l2_terms.as_ref().map(|t| &t.1[tb]).unwrap_or(&p.no_terms);
                let params = uniform(
                    &self.gpu,
                    &[
                        m as u32,
                        u32::from(p.l2_terms.is_some()),
                        its.len() as u32,
                        group8 as u32,
                    ],
                );
                self.scan8.dispatch(
                    &self.gpu,
                    &mut enc,
                    &[
                        &code_bufs[b],
                        &item_buf,
                        &table_buf.0,
                        terms,
                        dead,
                        &row_scores,
                        &row_payloads,
                        &params,
                    ],
                    groups,
                );
            }
        }
        self.topk.submit(
            &self.gpu,
            enc,
            Rows {
                scores: row_scores,
                payloads: row_payloads,
                spans,
            },
            keep,
        )
    }
}

/// Writes a scan tile's selections (queries `qs`) as candidates.
fn write_candidates(
    p: &WgpuPrepared,
    qs: std::ops::Range<usize>,
    selected: Vec<Selected>,
    keep: usize,
    slots: &mut [Slot],
    scores: &mut [f32],
) {
    for (local, (s, pay)) in selected.into_iter().enumerate() {
        let q = qs.start + local;
        for (i, (score, pl)) in s.iter().zip(&pay).enumerate() {
            if *score == f32::INFINITY || pl[0] != 0 {
                break;
            }
            let (list, offset) = p.data.locate(pl[1]);
            slots[q * keep + i] = Slot { list, offset };
            scores[q * keep + i] = *score;
        }
    }
}

impl WgpuBackend {
    fn upload(&self, index: Arc<IvfPqIndex>) -> Result<WgpuPrepared, WgpuError> {
        let gpu = &self.gpu;

        let l2_terms = if let Some(terms) = quiver_engine::backend::l2_list_terms(&index) {
            let pq = index.pq();
            let (m, ksub) = (pq.m(), pq.ksub());
            // 4-bit codes read them on the device only in the device-resident search (the
            // staged scan quantizes them into the tables on the host).
            let (bufs, places) = if index.layout() == CodeLayout::Flat
                || (terms.len() * 4) as u64 <= gpu.max_binding()
            {
                let (bufs, places) = crate::index::pack(
                    gpu,
                    "L2 terms",
                    terms.chunks(m * ksub).map(bytemuck::cast_slice),
                    gpu.max_binding(),
                )?;
                let places = places
                    .into_iter()
                    .map(|(b, off)| (b, (off / 4) as u32))
                    .collect();
                (bufs, places)
            } else {
                (Vec::new(), Vec::new())
            };
            Some((terms, bufs, places))
        } else {
            None
        };
        Ok(WgpuPrepared {
            coarse: Arc::new(GpuCoarse::new(gpu, &index)?),
            tables: Arc::new(GpuTables::new(gpu, &index)?),
            no_terms: storage(gpu, "unused", &[0u32]),
            data: GpuIndex::upload(gpu, index)?,
            l2_terms: l2_terms.map(Arc::new),
        })
    }
}

impl Backend for WgpuBackend {
    type Prepared = WgpuPrepared;

    fn name(&self) -> &'static str {
        "wgpu"
    }

    /// Dispatches, uploads (not the dispatches' uniform parameters: their arguments),
    /// read-backs and buffers created on this backend's device so far.
    fn counters(&self) -> Option<quiver_engine::backend::DeviceCounters> {
        Some(self.gpu.counters.read())
    }

    fn prepare(&self, index: Arc<IvfPqIndex>) -> Result<WgpuPrepared, EngineError> {
        checked(&self.gpu, "uploading the index", || self.upload(index)).map_err(engine_err)
    }

    /// After deletes only, keeps every buffer and uploads a new tombstone bitmap; with the
    /// same quantizers (another segment of the collection, a merge), uploads the lists only;
    /// otherwise uploads the index again.
    fn refresh(
        &self,
        p: &WgpuPrepared,
        index: Arc<IvfPqIndex>,
    ) -> Result<WgpuPrepared, EngineError> {
        let data = checked(&self.gpu, "uploading tombstones", || {
            Ok(p.data.with_tombstones(&self.gpu, index.clone()))
        })
        .map_err(engine_err)?;
        let data = match data {
            Some(data) => data,
            None if p.data.index.shares_quantizers_with(&index) => {
                checked(&self.gpu, "uploading the index's lists", || {
                    GpuIndex::upload(&self.gpu, index)
                })
                .map_err(engine_err)?
            }
            None => return self.prepare(index),
        };
        Ok(WgpuPrepared {
            coarse: p.coarse.clone(),
            tables: p.tables.clone(),
            data,
            l2_terms: p.l2_terms.clone(),
            no_terms: p.no_terms.clone(),
        })
    }

    /// The whole batch on the device when the index allows (`resident.rs`: one upload of
    /// the queries, one read-back of the results); otherwise the staged stages.
    fn search(
        &self,
        p: &WgpuPrepared,
        queries: &[f32],
        params: &SearchParams,
    ) -> Result<Neighbors, EngineError> {
        if self.resident_eligible(p, params) {
            params.validate(&p.data.index)?;
            let q = p.data.index.prepare_queries(queries)?;
            let done = checked(&self.gpu, "search", || self.resident_search(p, &q, params))
                .map_err(engine_err)?;
            if let Some(n) = done {
                return Ok(n);
            }
        }
        run_stages(self, p, queries, params)
    }

    /// One device-resident batch for all of `prepared` when they share their quantizers
    /// (the coarse kernel's and the tables' buffers) and each could take the resident path
    /// alone; otherwise each in turn.
    fn search_many(
        &self,
        prepared: &[&WgpuPrepared],
        queries: &[f32],
        params: &SearchParams,
    ) -> Result<Vec<Neighbors>, EngineError> {
        let together = prepared.len() >= 2
            && prepared.iter().all(|p| {
                self.resident_eligible(p, params)
                    && Arc::ptr_eq(&p.coarse, &prepared[0].coarse)
                    && Arc::ptr_eq(&p.tables, &prepared[0].tables)
                    && p.data.index.shares_quantizers_with(&prepared[0].data.index)
            });
        if together {
            let index = &prepared[0].data.index;
            params.validate(index)?;
            let q = index.prepare_queries(queries)?;
            let done = checked(&self.gpu, "search", || {
                self.resident_search_many(prepared, &q, params)
            })
            .map_err(engine_err)?;
            if let Some(n) = done {
                return Ok(n);
            }
        }
        quiver_engine::backend::search_each(self, prepared, queries, params)
    }

    fn coarse_search(
        &self,
        p: &WgpuPrepared,
        queries: &[f32],
        nprobe: usize,
    ) -> Result<Probes, EngineError> {
        checked(&self.gpu, "coarse search", || {
            p.coarse.search(&self.gpu, queries, nprobe)
        })
        .map_err(engine_err)
    }

    fn lookup_tables(
        &self,
        p: &WgpuPrepared,
        queries: &[f32],
    ) -> Result<LookupTables, EngineError> {
        checked(&self.gpu, "lookup tables", || {
            p.tables.compute(&self.gpu, queries)
        })
        .map_err(engine_err)
    }

    fn scan(
        &self,
        p: &WgpuPrepared,
        probes: &Probes,
        tables: &LookupTables,
        keep: usize,
    ) -> Result<Candidates, EngineError> {
        self.scan_with(p, probes, tables, keep, None)
    }

    fn scan_filtered(
        &self,
        p: &WgpuPrepared,
        probes: &Probes,
        tables: &LookupTables,
        keep: usize,
        filters: QueryFilters<'_>,
    ) -> Result<Candidates, EngineError> {
        self.scan_with(p, probes, tables, keep, Some(filters))
    }

    fn refine(
        &self,
        p: &WgpuPrepared,
        queries: &[f32],
        candidates: &Candidates,
        k: usize,
    ) -> Result<Neighbors, EngineError> {
        checked(&self.gpu, "refine", || {
            self.refine_all(p, queries, candidates, k)
        })
        .map_err(engine_err)
    }
}

impl WgpuBackend {
    /// The scan stage; with allow-sets, each query skips its set's excluded entries: the
    /// tombstone bitmap and one exclusion bitmap per set go up in one buffer (once per call),
    /// and each work item names its query's bitmap.
    fn scan_with(
        &self,
        p: &WgpuPrepared,
        probes: &Probes,
        tables: &LookupTables,
        keep: usize,
        filters: Option<QueryFilters<'_>>,
    ) -> Result<Candidates, EngineError> {
        let nq = probes.lists.len() / probes.nprobe.max(1);
        let (filter_dead, dead_off) = match filters {
            Some(f) => {
                let (words, offsets) =
                    quiver_engine::backend::allow::exclusion_bitmaps(&p.data.index, f, nq);
                check_binding(
                    &self.gpu,
                    "filter bitmaps (bytes)",
                    (words.len() * 4) as u64,
                )
                .map_err(engine_err)?;
                (Some(storage(&self.gpu, "filter bitmaps", &words)), offsets)
            }
            None => (None, Vec::new()),
        };
        let dead = filter_dead.as_ref().unwrap_or(&p.data.dead);
        let mut slots = vec![Slot::NONE; nq * keep];
        let mut scores = vec![f32::INFINITY; nq * keep];
        let fast = p.data.index.layout() == CodeLayout::Packed4x32;
        let table_bytes = if fast {
            tables.m
                * 16
                * if p.l2_terms.is_some() {
                    probes.nprobe
                } else {
                    1
                }
        } else {
            tables.m * tables.ksub * 4
        };
        // Tile t + 1 is prepared and submitted before tile t is read back, so the host's
        // work (items, quantized tables) overlaps the device's.
        checked(&self.gpu, "list scan", || {
            let mut in_flight: Option<(std::ops::Range<usize>, PendingSelect)> = None;
            for qs in self.scan_tiles(p, probes, table_bytes)? {
                let pending =
                    self.scan_tile(p, probes, tables, keep, qs.clone(), dead, &dead_off)?;
                if let Some((prev, done)) = in_flight.replace((qs, pending)) {
                    let selected = done.finish(&self.gpu)?;
                    write_candidates(p, prev, selected, keep, &mut slots, &mut scores);
                }
            }
            if let Some((prev, done)) = in_flight {
                let selected = done.finish(&self.gpu)?;
                write_candidates(p, prev, selected, keep, &mut slots, &mut scores);
            }
            Ok(())
        })
        .map_err(engine_err)?;
        Ok(Candidates {
            per_query: keep,
            slots,
            scores,
        })
    }

    fn refine_all(
        &self,
        p: &WgpuPrepared,
        queries: &[f32],
        candidates: &Candidates,
        k: usize,
    ) -> Result<Neighbors, WgpuError> {
        let index = &p.data.index;
        let dim = index.dim();
        let metric = index.metric();
        let nq = queries.len() / dim;
        let per = candidates.per_query.max(1);
        let pad = Neighbors::padding_distance(metric);
        let mut ids = vec![-1i64; nq * k];
        let mut distances = vec![pad; nq * k];
        let has_raw = index.params().refine != RefineKind::None;
        // Tiles: the candidates' scores and payloads, and the queries, fit one binding.
        let limit = self.gpu.max_binding() as usize;
        let rows_per_tile = (limit / (per * 8).max(dim * 4)).max(1);
        let mut in_flight: Option<(usize, PendingSelect)> = None;
        for start in (0..nq).step_by(rows_per_tile) {
            let end = (start + rows_per_tile).min(nq);
            let n = (end - start) * per;
            let mut score = vec![f32::INFINITY; n];
            let mut payload = vec![[u32::MAX; 2]; n];
            // Streaming: this tile's candidate vectors, uploaded now.
            let (streamed_raw, streamed_places) = if has_raw && !p.data.resident {
                let slots: Vec<(u32, u32)> = (start * per..end * per)
                    .map(|i| candidates.slots[i])
                    .filter(|s| *s != Slot::NONE)
                    .map(|s| (s.list, s.offset))
                    .collect();
                p.data.stream_raw(&self.gpu, &slots)
            } else {
                (Vec::new(), Vec::new())
            };
            let raw_bufs = if p.data.resident {
                &p.data.raw_bufs
            } else {
                &streamed_raw
            };
            let mut streamed_at = 0;
            let mut items: Vec<Vec<RefineItem>> = vec![Vec::new(); raw_bufs.len()];
            for q in start..end {
                for j in 0..per {
                    let slot = candidates.slots[q * per + j];
                    if slot == Slot::NONE {
                        break;
                    }
                    let list = &index.lists()[slot.list as usize];
                    let id = list.ids.as_slice()[slot.offset as usize];
                    let at = (q - start) * per + j;
                    payload[at] = [(id >> 32) as u32, id as u32];
                    if has_raw {
                        let (buf, elem) = if p.data.resident {
                            let gslot = p.data.places[slot.list as usize].gslot + slot.offset;
                            p.data.raw_place(gslot)
                        } else {
                            streamed_at += 1;
                            streamed_places[streamed_at - 1]
                        };
                        items[buf].push(RefineItem {
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
            let scores_buf = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("refine scores"),
                size: (n * 4).max(4) as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            self.gpu
                .queue
                .write_buffer(&scores_buf, 0, bytemuck::cast_slice(&score));
            self.gpu.counters.add(Count::Alloc, (n * 4).max(4) as u64);
            self.gpu
                .counters
                .add(Count::HostToDevice, (score.len() * 4) as u64);
            let payload_buf = storage(&self.gpu, "refine ids", &payload);
            let query_buf = storage(&self.gpu, "queries", &queries[start * dim..end * dim]);
            let mut enc = self.encoder();
            for (b, its) in items.iter().enumerate() {
                if its.is_empty() {
                    continue;
                }
                check_binding(
                    &self.gpu,
                    "refine work items (bytes)",
                    (its.len() * 16) as u64,
                )?;
                let item_buf = storage(&self.gpu, "refine items", its);
                let params = uniform(
                    &self.gpu,
                    &[
                        dim as u32,
                        u32::from(p.data.raw_f16),
                        u32::from(metric.is_inner_product()),
                        its.len() as u32,
                    ],
                );
                // One 32-lane warp per item, four per workgroup (as cuda/refine.cu).
                let groups = grid(its.len().div_ceil(4) as u64)?;
                self.refine.dispatch(
                    &self.gpu,
                    &mut enc,
                    &[&raw_bufs[b], &item_buf, &query_buf, &scores_buf, &params],
                    groups,
                );
            }
            let spans = (0..end - start).map(|r| (r * per, per)).collect();
            let pending = self.topk.submit(
                &self.gpu,
                enc,
                Rows {
                    scores: scores_buf,
                    payloads: payload_buf,
                    spans,
                },
                k,
            )?;
            // Read the previous tile back while this one runs.
            if let Some((prev, done)) = in_flight.replace((start, pending)) {
                write_neighbors(
                    metric,
                    prev,
                    done.finish(&self.gpu)?,
                    k,
                    &mut ids,
                    &mut distances,
                );
            }
        }
        if let Some((prev, done)) = in_flight {
            write_neighbors(
                metric,
                prev,
                done.finish(&self.gpu)?,
                k,
                &mut ids,
                &mut distances,
            );
        }
        Ok(Neighbors { k, ids, distances })
    }
}

/// Writes a refine tile's selections (queries from `start`) as ids and reported distances.
fn write_neighbors(
    metric: quiver_engine::Metric,
    start: usize,
    selected: Vec<Selected>,
    k: usize,
    ids: &mut [i64],
    distances: &mut [f32],
) {
    for (r, (s, pay)) in selected.into_iter().enumerate() {
        let q = start + r;
        for (i, (score, pl)) in s.iter().zip(&pay).enumerate() {
            if *pl == [u32::MAX; 2] && *score == f32::INFINITY {
                break;
            }
            ids[q * k + i] = (u64::from(pl[0]) << 32 | u64::from(pl[1])) as i64;
            distances[q * k + i] = metric.reported(*score);
        }
    }
}
