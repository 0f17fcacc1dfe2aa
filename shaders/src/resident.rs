//! The device-resident search on wgpu: a whole batch from one upload of its queries to one
//! read-back of its results, the twin of `kernels/src/resident.rs` (docs/GPU.md).
//!
//! Coarse distances, scores alone (`coarse.wgsl`) → strided top-k rounds (`topk.wgsl`
//! `strided`, each entry's place in its row as its payload: the probes) → lookup tables
//! (`tables.wgsl`) → for 8-bit codes with `keep` ≤ 256, the scan selecting as it scores
//! (`scan8.wgsl` `fused`: one workgroup per (query, part of its probes), `keep` candidates a
//! part) and one round merging a query's parts; otherwise work items built on the device
//! from the probes and the lists' places (`items.wgsl`) → the scan (`scan8.wgsl`, or
//! `scan4.wgsl` `quantized`) into rows a fixed stride apart → strided rounds reading each
//! row's length. Then refine at the candidates' global slots with ids read on the device
//! (`refine_candidates.wgsl`) → the final round into one result buffer, read back in one
//! copy. A batch whose bindings would exceed the device's storage-binding limit runs as tiles
//! (each submitted on its own, so its buffers go when it is done), every tile binding its
//! range of the one query buffer and of the one result buffer (tile sizes keep those ranges
//! on the device's offset alignment).
//!
//! Taken with 8-bit codes, or 4-bit codes of M ≤ 128 (each item's table quantized on the
//! device, `scan4.wgsl` `quantized`), when the codes and raw vectors are resident in one
//! buffer each, the ids and places fit a binding, L2 terms sit in one buffer, and the
//! selections fit the device's top-k; otherwise the staged stages run.

use quiver_engine::backend::{fused_scan_group, Neighbors, SearchParams, FUSED_SELECT_MAX_KEEP};
use quiver_engine::list::CodeLayout;
use quiver_engine::topk::WarpSelectShape;
use quiver_engine::RefineKind;

use crate::backend::{WgpuBackend, WgpuPrepared};
use crate::coarse::{DistanceParams, COARSE_TILE};
use crate::error::WgpuError;
use crate::kernel::{grid, output, range, storage, submit, uniform};

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl WgpuBackend {
    /// True when the index and parameters allow the device-resident search (module doc).
    pub(crate) fn resident_eligible(&self, p: &WgpuPrepared, params: &SearchParams) -> bool {
        let index = &p.data.index;
        p.data.resident_search.is_some()
            // 4-bit: the float table and the u8 table of M ≤ 128 in workgroup memory.
            && (index.layout() != CodeLayout::Packed4x32 || index.pq().m() <= 128)
            && params.candidates() <= self.topk.max_keep()
            && params.nprobe <= self.topk.max_keep()
            && p.l2_terms.as_ref().is_none_or(|t| t.1.len() == 1)
    }

    /// Queries per tile for `nq` queries, or `None` when not even one aligned tile fits the
    /// binding limit.
    fn resident_tile_rows(
        &self,
        segs: &[&WgpuPrepared],
        params: &SearchParams,
        nq: usize,
    ) -> Option<usize> {
        let index = &segs.first()?.data.index;
        let (nlist, dim) = (index.nlist(), index.dim());
        let tl = index.pq().m() * index.pq().ksub();
        let nprobe = params.nprobe.min(nlist);
        let keep = params.candidates();
        // The widest per-query binding of the scan: its rows (`stride` entries) unfused, its
        // parts' candidates fused (a part per probe at most).
        let mut stride = 1;
        for p in segs {
            let row = if self.fused_eligible(p, keep) {
                nprobe * keep
            } else {
                p.data.resident_search.as_ref()?.row_bound[nprobe]
            };
            stride = stride.max(row);
        }
        let widest = [
            nlist * 4,
            tl * 4,
            nprobe * 32,
            stride * 8,
            keep * 8,
            dim * 4,
        ]
        .into_iter()
        .max()
        .unwrap_or(1);
        let limit = self.gpu.max_binding() as usize;
        // Coarse tiles address 65,535 workgroups of 128 queries; indexes are 32-bit.
        let most = (limit / widest)
            .min(65_535 * 128)
            .min(u32::MAX as usize / stride.max(nlist).max(keep));
        if nq <= most {
            return Some(nq);
        }
        let align = self.gpu.device.limits().min_storage_buffer_offset_alignment as usize;
        let unit = |bytes: usize| align / gcd(bytes, align);
        let (a, b) = (unit(dim * 4), unit(params.k * 4));
        let unit = a / gcd(a, b) * b;
        let rows = most / unit * unit;
        (rows > 0).then_some(rows)
    }

    /// Runs the batch (queries validated and normalised) on the device; `None` when its tiles
    /// cannot be laid out (the caller runs the staged stages).
    pub(crate) fn resident_search(
        &self,
        p: &WgpuPrepared,
        queries: &[f32],
        params: &SearchParams,
    ) -> Result<Option<Neighbors>, WgpuError> {
        Ok(self
            .resident_search_many(&[p], queries, params)?
            .and_then(|mut r| r.pop()))
    }

    /// Runs the batch (queries validated and normalised) on the device against every index
    /// of `segs` (all eligible, all with the same quantizers): one upload of the queries, the
    /// coarse search and tables once per tile for all, each index's best k into its part of
    /// one result buffer, one read-back. Results in the order of `segs`; `None` when the
    /// tiles cannot be laid out.
    pub(crate) fn resident_search_many(
        &self,
        segs: &[&WgpuPrepared],
        queries: &[f32],
        params: &SearchParams,
    ) -> Result<Option<Vec<Neighbors>>, WgpuError> {
        let Some(first) = segs.first() else {
            return Ok(Some(Vec::new()));
        };
        let index = &first.data.index;
        let dim = index.dim();
        let nq = queries.len() / dim;
        let k = params.k;
        if nq == 0 {
            return Ok(Some(segs.iter().map(|_| Neighbors::new(k)).collect()));
        }
        let Some(rows_per_tile) = self.resident_tile_rows(segs, params, nq) else {
            return Ok(None);
        };
        let gpu = &self.gpu;
        let align = gpu.device.limits().min_storage_buffer_offset_alignment as usize;
        let q_buf = storage(gpu, "queries", queries);
        // Per index nq × k scores (each index's block aligned), then as many payloads.
        let s_block = (nq * k * 4).next_multiple_of(align.max(8));
        let p_block = (nq * k * 8).next_multiple_of(align.max(8));
        let layout = ResultLayout {
            s_block,
            p_base: segs.len() * s_block,
            p_block,
        };
        let total = (segs.len() * (s_block + p_block)) as u64;
        let result = output(gpu, "results", total);
        let mut a = 0;
        while a < nq {
            let b = (a + rows_per_tile).min(nq);
            let mut enc = self.new_encoder();
            self.resident_tile(segs, &mut enc, &q_buf, a, b, params, &result, &layout)?;
            gpu.queue.submit([enc.finish()]);
            a = b;
        }
        let words = submit(gpu, self.new_encoder(), &[(&result, total)], Vec::new())
            .read::<u32>(gpu)?
            .pop()
            .unwrap_or_default();
        let metric = index.metric();
        let mut out = Vec::with_capacity(segs.len());
        for seg in 0..segs.len() {
            let s0 = seg * s_block / 4;
            let p0 = (layout.p_base + seg * p_block) / 4;
            let scores: &[f32] = bytemuck::cast_slice(&words[s0..s0 + nq * k]);
            let mut ids = vec![-1i64; nq * k];
            let mut distances = vec![Neighbors::padding_distance(metric); nq * k];
            for i in 0..nq * k {
                let (hi, lo) = (words[p0 + 2 * i], words[p0 + 2 * i + 1]);
                if hi == u32::MAX && lo == u32::MAX && scores[i] == f32::INFINITY {
                    continue;
                }
                ids[i] = (u64::from(hi) << 32 | u64::from(lo)) as i64;
                distances[i] = metric.reported(scores[i]);
            }
            out.push(Neighbors { k, ids, distances });
        }
        Ok(Some(out))
    }

    /// Records every stage for queries `a..b` into `enc`: the coarse search and tables once
    /// (the indexes share their quantizers), then for each index of `segs` its items, scan,
    /// selections and refine, its best k of each query written into its ranges of `result`
    /// (`layout`).
    #[allow(clippy::too_many_arguments)]
    fn resident_tile(
        &self,
        segs: &[&WgpuPrepared],
        enc: &mut wgpu::CommandEncoder,
        q_buf: &wgpu::Buffer,
        a: usize,
        b: usize,
        params: &SearchParams,
        result: &wgpu::Buffer,
        layout: &ResultLayout,
    ) -> Result<(), WgpuError> {
        let gpu = &self.gpu;
        let p = segs
            .first()
            .ok_or_else(|| WgpuError::Invalid("internal: no index".into()))?;
        let index = &p.data.index;
        let (dim, nlist) = (index.dim(), index.nlist());
        let t = &p.tables;
        let tl = t.m * t.ksub;
        let rows = b - a;
        let nprobe = params.nprobe.min(nlist);
        let keep = params.candidates();
        let k = params.k;
        let q = || range(q_buf, (a * dim * 4) as u64, (rows * dim * 4) as u64);

        // 1. Coarse distances, rows × nlist.
        let c = &p.coarse;
        // Scores alone (the selection takes a list's place in its row as its payload); the
        // payload binding gets a placeholder the kernel does not write.
        let cs = output(gpu, "coarse scores", (rows * nlist * 4) as u64);
        let cp = output(gpu, "no coarse payloads", 8);
        let cparams = uniform(
            gpu,
            &DistanceParams {
                nq: rows as u32,
                nlist: nlist as u32,
                dim: dim as u32,
                l2: u32::from(c.l2),
                payloads: 0,
                pad: [0; 3],
            },
        );
        c.distances.dispatch_bound(
            gpu,
            enc,
            &[
                (0, q()),
                (1, c.centroids.as_entire_binding()),
                (2, c.norms.as_entire_binding()),
                (3, cs.as_entire_binding()),
                (4, cp.as_entire_binding()),
                (5, cparams.as_entire_binding()),
            ],
            (
                nlist.div_ceil(COARSE_TILE) as u32,
                rows.div_ceil(COARSE_TILE) as u32,
            ),
        );
        // 2. The probes, rows × nprobe.
        let (ps, pp) = self
            .topk
            .record_strided(gpu, enc, cs, None, rows, nlist, None, nprobe, None)?
            .ok_or_else(|| WgpuError::Invalid("internal: no probes".into()))?;
        // 3. Lookup tables, rows × M × ksub.
        let tables = output(gpu, "tables", (rows * tl * 4) as u64);
        let tparams = uniform(
            gpu,
            &crate::tables::Params {
                nq: rows as u32,
                m: t.m as u32,
                ksub: t.ksub as u32,
                dsub: t.dsub as u32,
                factor: t.factor,
                pad: [0; 3],
            },
        );
        t.kernel.dispatch_bound(
            gpu,
            enc,
            &[
                (0, q()),
                (1, t.codebook.as_entire_binding()),
                (2, tables.as_entire_binding()),
                (3, tparams.as_entire_binding()),
            ],
            grid((rows * tl).div_ceil(256) as u64)?,
        );
        for (seg, p) in segs.iter().enumerate() {
            let index = &p.data.index;
            let data = resident_data(p)?;
            // 4–6. Each query's best `keep` candidates: scored and selected in one kernel
            // (8-bit; then one round merging its parts), or scored into rows and selected in
            // rounds.
            let input = ScanInputs {
                pp: &pp,
                ps: &ps,
                tables: &tables,
                rows,
            };
            let (ks, kp) = if self.fused_eligible(p, keep) {
                self.fused_scan_select(p, enc, input, params)?
            } else {
                self.scan_then_select(p, enc, input, params)?
            };
            // 7. Refine at the candidates' global slots; payloads become ids.
            let n = rows * keep;
            let rs = output(gpu, "refine scores", (n * 4) as u64);
            let rp = output(gpu, "refine payloads", (n * 8) as u64);
            let has_raw = index.params().refine != RefineKind::None;
            let rparams = uniform(
                gpu,
                &[
                    dim as u32,
                    u32::from(p.data.raw_f16),
                    u32::from(index.metric().is_inner_product()),
                    u32::from(has_raw),
                    keep as u32,
                    n as u32,
                    0,
                    0,
                ],
            );
            // Without raw vectors the raw binding is never read.
            let raw = if has_raw {
                &p.data.raw_bufs[0]
            } else {
                &data.ids
            };
            self.refine_candidates.dispatch_bound(
                gpu,
                enc,
                &[
                    (0, raw.as_entire_binding()),
                    (1, ks.as_entire_binding()),
                    (2, kp.as_entire_binding()),
                    (3, data.ids.as_entire_binding()),
                    (4, q()),
                    (5, rs.as_entire_binding()),
                    (6, rp.as_entire_binding()),
                    (7, rparams.as_entire_binding()),
                ],
                grid(n.div_ceil(4) as u64)?,
            );
            // 8. The best k by (distance, id), into this index's part of the batch's result.
            let out = (
                range(
                    result,
                    (seg * layout.s_block + a * k * 4) as u64,
                    (rows * k * 4) as u64,
                ),
                range(
                    result,
                    (layout.p_base + seg * layout.p_block + a * k * 8) as u64,
                    (rows * k * 8) as u64,
                ),
            );
            self.topk
                .record_strided(gpu, enc, rs, Some(rp), rows, keep, None, k, Some(out))?;
        }
        Ok(())
    }

    /// True when the scan selects as it scores (`scan8.wgsl` / `scan4.wgsl` `fused`) for
    /// this index and `keep` (4-bit: M ≤ 128, what the workgroup's arrays hold).
    pub(crate) fn fused_eligible(&self, p: &WgpuPrepared, keep: usize) -> bool {
        self.fused_select
            && keep <= FUSED_SELECT_MAX_KEEP
            && (p.data.index.layout() != CodeLayout::Packed4x32 || p.tables.m <= SCAN4_FUSED_MAX_M)
    }

    /// Steps 4–6 of a tile, fused: `scan8.wgsl`'s or `scan4.wgsl`'s `fused` entry scores
    /// each query's probed lists in parts of `fused_scan_group` probes (4-bit: each item's u8
    /// table quantized in the workgroup), each part's workgroup writing its best `keep` (no
    /// score rows); one strided round merges a query's parts (none when it has one).
    fn fused_scan_select(
        &self,
        p: &WgpuPrepared,
        enc: &mut wgpu::CommandEncoder,
        input: ScanInputs<'_>,
        params: &SearchParams,
    ) -> Result<(wgpu::Buffer, wgpu::Buffer), WgpuError> {
        let gpu = &self.gpu;
        let index = &p.data.index;
        let data = resident_data(p)?;
        let (pp, ps, tables, rows) = (input.pp, input.ps, input.tables, input.rows);
        let nprobe = params.nprobe.min(index.nlist());
        let keep = params.candidates();
        let group = fused_scan_group(rows, nprobe);
        let parts = nprobe.div_ceil(group);
        let blocks = rows * parts;
        let shape = WarpSelectShape::for_keep(keep.max(1));
        let fs = output(gpu, "fused scores", (blocks * keep * 4) as u64);
        let fp = output(gpu, "fused payloads", (blocks * keep * 8) as u64);
        let terms = p.l2_terms.as_ref().map(|t| &t.1[0]).unwrap_or(&p.no_terms);
        let fparams = uniform(
            gpu,
            &[
                p.tables.m as u32,
                u32::from(p.l2_terms.is_some()),
                rows as u32,
                nprobe as u32,
                group as u32,
                u32::from(index.params().by_residual()),
                keep as u32,
                shape.queue as u32,
                shape.thread_queue as u32,
                0,
                0,
                0,
            ],
        );
        // 8-bit: tables and terms at 2 and 3, probes, places and parameters at 8 to 11;
        // 4-bit: tables and terms at 8 and 9, the rest at 11 to 14.
        let (scan, at) = if index.layout() == CodeLayout::Packed4x32 {
            (&self.scan4_fused, [8, 9, 11])
        } else {
            (&self.scan8_fused, [2, 3, 8])
        };
        scan.dispatch_bound(
            gpu,
            enc,
            &[
                (0, p.data.code_bufs[0].as_entire_binding()),
                (at[0], tables.as_entire_binding()),
                (at[1], terms.as_entire_binding()),
                (4, p.data.dead.as_entire_binding()),
                (5, fs.as_entire_binding()),
                (6, fp.as_entire_binding()),
                (at[2], pp.as_entire_binding()),
                (at[2] + 1, ps.as_entire_binding()),
                (at[2] + 2, data.places.as_entire_binding()),
                (at[2] + 3, fparams.as_entire_binding()),
            ],
            grid(blocks as u64)?,
        );
        if parts == 1 {
            return Ok((fs, fp));
        }
        self.topk
            .record_strided(gpu, enc, fs, Some(fp), rows, parts * keep, None, keep, None)?
            .ok_or_else(|| WgpuError::Invalid("internal: no candidates".into()))
    }

    /// Steps 4–6 of a tile, unfused: work items and row lengths from the probes, the scan
    /// into rows `stride` apart, then strided rounds reading each row's length.
    fn scan_then_select(
        &self,
        p: &WgpuPrepared,
        enc: &mut wgpu::CommandEncoder,
        input: ScanInputs<'_>,
        params: &SearchParams,
    ) -> Result<(wgpu::Buffer, wgpu::Buffer), WgpuError> {
        let gpu = &self.gpu;
        let index = &p.data.index;
        let data = resident_data(p)?;
        let (pp, ps, tables, rows) = (input.pp, input.ps, input.tables, input.rows);
        let t = &p.tables;
        let tl = t.m * t.ksub;
        let nprobe = params.nprobe.min(index.nlist());
        let keep = params.candidates();
        // 4. Work items and row lengths.
        let stride = data.row_bound[nprobe].max(1);
        let nitems = rows * nprobe;
        let items = output(gpu, "scan items", (nitems * 32) as u64);
        let row_len = output(gpu, "row lengths", (rows * 4) as u64);
        let by_residual = u32::from(index.params().by_residual());
        let iparams = uniform(
            gpu,
            &[
                rows as u32,
                nprobe as u32,
                stride as u32,
                tl as u32,
                by_residual,
                0,
                0,
                0,
            ],
        );
        self.items.dispatch_bound(
            gpu,
            enc,
            &[
                (0, pp.as_entire_binding()),
                (1, ps.as_entire_binding()),
                (2, data.places.as_entire_binding()),
                (3, items.as_entire_binding()),
                (4, row_len.as_entire_binding()),
                (5, iparams.as_entire_binding()),
            ],
            grid(rows.div_ceil(128) as u64)?,
        );
        // 5. The scan into rows `stride` apart.
        let ss = output(gpu, "scan scores", (rows * stride * 4) as u64);
        let sp = output(gpu, "scan payloads", (rows * stride * 8) as u64);
        let terms = p.l2_terms.as_ref().map(|t| &t.1[0]).unwrap_or(&p.no_terms);
        // 4-bit: `scan4.wgsl`'s `quantized` entry (one item a workgroup), its tables, terms
        // and parameters at bindings 8 to 10; 8-bit: `group` items a workgroup.
        let (scan, tables_at, params_at, group) = if index.layout() == CodeLayout::Packed4x32 {
            (&self.scan4_quantized, 8, 10, 1)
        } else {
            (
                &self.scan8,
                2,
                7,
                quiver_engine::backend::scan_items_per_block(nitems),
            )
        };
        let sparams = uniform(
            gpu,
            &[
                t.m as u32,
                u32::from(p.l2_terms.is_some()),
                nitems as u32,
                group as u32,
            ],
        );
        scan.dispatch_bound(
            gpu,
            enc,
            &[
                (0, p.data.code_bufs[0].as_entire_binding()),
                (1, items.as_entire_binding()),
                (tables_at, tables.as_entire_binding()),
                (tables_at + 1, terms.as_entire_binding()),
                (4, p.data.dead.as_entire_binding()),
                (5, ss.as_entire_binding()),
                (6, sp.as_entire_binding()),
                (params_at, sparams.as_entire_binding()),
            ],
            grid(nitems.div_ceil(group) as u64)?,
        );
        // 6. Each query's best `keep` candidates.
        let (ks, kp) = self
            .topk
            .record_strided(
                gpu,
                enc,
                ss,
                Some(sp),
                rows,
                stride,
                Some(&row_len),
                keep,
                None,
            )?
            .ok_or_else(|| WgpuError::Invalid("internal: no candidates".into()))?;
        Ok((ks, kp))
    }
}

/// Sub-quantizers the 4-bit fused scan's workgroup arrays hold (`scan4.wgsl` `QM_MAX`).
const SCAN4_FUSED_MAX_M: usize = 128;

/// What steps 4–6 of a tile read: the probes (payloads, scores), the lookup tables, and how
/// many queries the tile holds.
#[derive(Clone, Copy)]
struct ScanInputs<'a> {
    pp: &'a wgpu::Buffer,
    ps: &'a wgpu::Buffer,
    tables: &'a wgpu::Buffer,
    rows: usize,
}

/// The device-resident search's data of an eligible index.
fn resident_data(p: &WgpuPrepared) -> Result<&crate::index::ResidentData, WgpuError> {
    p.data
        .resident_search
        .as_ref()
        .ok_or_else(|| WgpuError::Invalid("internal: no resident search data".into()))
}

/// Where each index's results go in a batch's result buffer: index s's scores at
/// s × `s_block` bytes, its payloads at `p_base` + s × `p_block` (blocks aligned to the
/// device's storage offset alignment).
struct ResultLayout {
    s_block: usize,
    p_base: usize,
    p_block: usize,
}
