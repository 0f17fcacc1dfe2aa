//! The device-resident search: a whole batch on the device, from one upload of its queries
//! to one download of its results (issues #13, #32).
//!
//! The staged stages of `backend.rs` hand probes, tables and candidates back to the host
//! between stages (the engine's `run_stages`); here they stay where they are made: the
//! probes selected inside the coarse product (`coarse_select`: each query's best `nprobe` of
//! a span of centroids kept in shared memory, then one round merging the spans; above
//! nprobe 64, coarse scores alone → strided top-k rounds, each entry's place in its row as
//! its payload) → the fused scan (`scan8_select` / `scan4_select`: one block per
//! (query, part of its probes) builds the query's table in shared memory, scores the probed
//! lists and selects as it scores, `keep` candidates a part) → one round merging a query's
//! parts → refine of the candidates at their global slots, ids read on the device → the
//! final top-k into one result buffer, which comes back in one copy. A batch runs on a
//! stream of its own (two taken in turn: two callers' batches overlap), its queries up and
//! its results down through pinned buffers. Where the fused scan
//! does not apply (`keep` above 256, its tables and queues beyond the opt-in shared memory,
//! or `without_fused_select`), the unfused stages run instead: lookup tables → work items
//! built on the device (`scan_items`) → the scan into rows a fixed stride apart → top-k
//! rounds reading each row's length. A batch whose working memory exceeds the tile budget
//! runs as several tiles, all reading the one uploaded query buffer and writing the one
//! result buffer. Buffers every kernel overwrites are never cleared.
//!
//! Taken when the index's codes, raw vectors and ids are resident and the selection fits the
//! device top-k (`keep ≤ 2,048`, `nprobe ≤ 2,048`); otherwise the staged path runs.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, CudaViewMut, LaunchConfig, PushKernelArg};
use quiver_engine::backend::{
    coarse_select_span, fused_scan_group, Neighbors, SearchParams, COARSE_SELECT_MAX_KEEP,
    FUSED_SELECT_MAX_KEEP,
};
use quiver_engine::list::CodeLayout;
use quiver_engine::topk::WarpSelectShape;
use quiver_engine::RefineKind;

use crate::backend::{
    driver, grid, CudaBackend, CudaError, CudaPrepared, COARSE_STATIC_SHARED, COARSE_TILE,
    MAX_GPU_KEEP,
};

/// Warps in a block of the fused scan + selection (each with its own queue).
const FUSED_WARPS: usize = 8;

/// The fused scan's dynamic shared memory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FusedShared {
    bytes: usize,
}

/// A selection's scores and payloads on the device (one word, two words an entry).
type Rows = (CudaSlice<u32>, CudaSlice<u32>);

/// Where the last round of a selection writes: new buffers, or views of the batch's result.
enum SelectOut<'a, 'b> {
    New,
    Into(&'a mut CudaViewMut<'b, u32>, &'a mut CudaViewMut<'b, u32>),
}

impl CudaBackend {
    /// True when `search` can run on the device from end to end for this index and these
    /// parameters (see the module doc).
    pub(crate) fn resident_eligible(&self, p: &CudaPrepared, params: &SearchParams) -> bool {
        let index = p.index_arc();
        let m = index.pq().m();
        // 4-bit: the item's float table, ranges and u8 table in shared memory.
        let fits =
            index.layout() != CodeLayout::Packed4x32 || m * (16 * 5 + 8) + 8 <= self.scan8_shared;
        fits && p.dev.codes.is_some()
            && p.dev.ids.is_some()
            && (index.params().refine == RefineKind::None || p.dev.raw.is_some())
            && params.candidates() <= MAX_GPU_KEEP
            && params.nprobe <= MAX_GPU_KEEP
    }

    /// The dynamic shared memory of the fused scan + selection (`scan8_select` /
    /// `scan4_select`) for this index and `keep`, when it runs: `keep` within
    /// [`FUSED_SELECT_MAX_KEEP`] and the block's tables (it builds its query's table itself)
    /// and eight warp queues within the device's opt-in shared memory.
    pub(crate) fn fused_shared_bytes(&self, p: &CudaPrepared, keep: usize) -> Option<FusedShared> {
        if keep > FUSED_SELECT_MAX_KEEP || !self.fused_select {
            return None;
        }
        let index = p.index_arc();
        let m = index.pq().m();
        let queues = FUSED_WARPS * WarpSelectShape::for_keep(keep.max(1)).shared_bytes();
        // The query's table built in the block, and with 8-bit L2 the list-folded copy; with
        // 4-bit codes the item's quantized tables.
        let tables = if index.layout() == CodeLayout::Packed4x32 {
            m * 16 * 4 + (m * (16 * 5 + 8) + 8).next_multiple_of(8)
        } else {
            m * 256 * 4 * if p.dev.quant.l2_terms.is_some() { 2 } else { 1 }
        };
        let bytes = tables + queues;
        (bytes <= self.scan8_shared).then_some(FusedShared { bytes })
    }

    /// Bytes of device memory one query of a batch needs across the resident stages.
    fn resident_bytes_per_query(&self, p: &CudaPrepared, params: &SearchParams) -> usize {
        let index = p.index_arc();
        let (nlist, tl) = (index.nlist(), index.pq().m() * index.pq().ksub());
        let nprobe = params.nprobe.min(nlist);
        let keep = params.candidates();
        // The coarse stage's output at the largest span count (a one-query tile's).
        let coarse = self.coarse_bytes_per_query(1, nlist, nprobe);
        let common = coarse + tl * 4 + nprobe * 12 + keep * 24;
        if self.fused_shared_bytes(p, keep).is_some() {
            // Each part's candidates (a part per probe at most), then the merged ones.
            common + nprobe * keep * 12
        } else {
            let stride = p.dev.row_bound[nprobe].max(1);
            common + nprobe * 32 + 4 + stride * 12
        }
    }

    /// Runs the batch (queries already validated and normalised) on the device.
    pub(crate) fn resident_search(
        &self,
        p: &CudaPrepared,
        queries: &[f32],
        params: &SearchParams,
    ) -> Result<Neighbors, CudaError> {
        self.resident_search_many(&[p], queries, params)?
            .pop()
            .ok_or_else(|| CudaError::Driver("internal: no result".into()))
    }

    /// Runs the batch (queries already validated and normalised) on the device against every
    /// index of `segs` (all eligible, all with the same quantizers): one upload of the
    /// queries, one coarse search and one set of tables per tile for all of them, each
    /// index's best k into its part of one result buffer, one download. Results in the order
    /// of `segs`.
    pub(crate) fn resident_search_many(
        &self,
        segs: &[&CudaPrepared],
        queries: &[f32],
        params: &SearchParams,
    ) -> Result<Vec<Neighbors>, CudaError> {
        let Some(first) = segs.first() else {
            return Ok(Vec::new());
        };
        let index = first.index_arc();
        let dim = index.dim();
        let nq = queries.len() / dim;
        let k = params.k;
        if nq == 0 {
            return Ok(segs.iter().map(|_| Neighbors::new(k)).collect());
        }
        let nprobe = params.nprobe.min(index.nlist());
        let per_query = segs
            .iter()
            .map(|p| self.resident_bytes_per_query(p, params))
            .max()
            .unwrap_or(1);
        // Tiles as large as the memory a batch may take (eight pipeline tiles: 512 MiB on a
        // device with 4 GiB free), so a usual batch is one tile; rows × stride must index
        // in 32 bits.
        let stride = segs
            .iter()
            .filter(|p| self.fused_shared_bytes(p, params.candidates()).is_none())
            .map(|p| p.dev.row_bound[nprobe].max(1))
            .max()
            .unwrap_or(1);
        let rows_per_tile = ((self.tile_bytes * 8) / per_query)
            .min((u32::MAX as usize) / stride.max(index.nlist()).max(params.candidates()))
            .clamp(1, nq);
        // The batch's stream (two batches from two callers overlap), its queries up through a
        // pinned buffer and its results back through another: asynchronous copies, one each.
        let stream = &self.io.lane();
        let mut held = Vec::new();
        let q_words = self.io.stage_on(stream, queries, &mut held)?;
        // SAFETY: `q_words` holds the queries' f32 bits, nq × dim words.
        let q_dev = unsafe { q_words.transmute::<f32>(nq * dim) }
            .ok_or_else(|| CudaError::Driver("internal: query buffer too short".into()))?;
        // One buffer for the results: segments × nq × k scores, then (8-byte aligned) as
        // many payloads; segment s's part is at s × nq × k.
        let total = segs.len() * nq * k;
        let s_words = total.next_multiple_of(2);
        // SAFETY: the final selections write every score and payload word of every row of
        // every segment.
        let mut result = unsafe { stream.alloc::<u32>(s_words + 2 * total) }.map_err(driver)?;
        {
            let (mut res_s, mut res_p) = result.split_at_mut(s_words);
            let mut a = 0;
            while a < nq {
                let b = (a + rows_per_tile).min(nq);
                let q_view = q_dev.slice(a * dim..b * dim);
                let rows = (a, b, nq);
                self.resident_tile(stream, segs, &q_view, rows, params, &mut res_s, &mut res_p)?;
                a = b;
            }
        }
        let fetched = self.io.fetch_on(stream, &result)?;
        let out = Self::read_results(index.metric(), segs.len(), (nq, k), fetched.wait()?);
        self.io.release(held, vec![fetched]);
        Ok(out)
    }

    /// The batch's results from the words of its result buffer: `segments` × nq × k scores,
    /// then (8-byte aligned) their payloads (ids); padding entries (+inf, all ones) become −1.
    fn read_results(
        metric: quiver_engine::Metric,
        segments: usize,
        (nq, k): (usize, usize),
        words: &[u32],
    ) -> Vec<Neighbors> {
        let total = segments * nq * k;
        let s_words = total.next_multiple_of(2);
        let scores: &[f32] = bytemuck::cast_slice(&words[..total]);
        let pad = Neighbors::padding_distance(metric);
        let mut out = Vec::with_capacity(segments);
        for s in 0..segments {
            let mut ids = vec![-1i64; nq * k];
            let mut distances = vec![pad; nq * k];
            for i in 0..nq * k {
                let at = s * nq * k + i;
                let (hi, lo) = (words[s_words + 2 * at], words[s_words + 2 * at + 1]);
                if hi == u32::MAX && lo == u32::MAX && scores[at] == f32::INFINITY {
                    continue;
                }
                ids[i] = (u64::from(hi) << 32 | u64::from(lo)) as i64;
                distances[i] = metric.reported(scores[at]);
            }
            out.push(Neighbors { k, ids, distances });
        }
        out
    }

    /// Every stage for the queries `a..b` of `nq` (`queries`, on the device): the coarse
    /// search and tables once (the indexes share their quantizers), then for each index of
    /// `segs` its items, scan, selections and refine, its best k of each query written to
    /// its part of the result (`res_s` / `res_p`: segment s's rows at s × nq × k).
    #[allow(clippy::too_many_arguments)]
    fn resident_tile<'v>(
        &self,
        stream: &Arc<CudaStream>,
        segs: &[&CudaPrepared],
        queries: &cudarc::driver::CudaView<'_, f32>,
        (a, b, nq): (usize, usize, usize),
        params: &SearchParams,
        res_s: &mut CudaViewMut<'v, u32>,
        res_p: &mut CudaViewMut<'v, u32>,
    ) -> Result<(), CudaError> {
        let rows = b - a;
        let p = segs
            .first()
            .ok_or_else(|| CudaError::Driver("internal: no index".into()))?;
        let index = p.index_arc();
        let (dim, nlist) = (index.dim(), index.nlist());
        let pq = index.pq();
        let (m, ksub, dsub) = (pq.m(), pq.ksub(), pq.dsub());
        let tl = m * ksub;
        let nprobe = params.nprobe.min(nlist);
        let keep = params.candidates();
        let ip = index.metric().is_inner_product();
        let dev = &p.dev;
        let (rows_u, dim_u) = (rows as u32, dim as u32);

        // 1–2. The probes: each row's best nprobe lists, rows × nprobe.
        let (ps, pp) = self.coarse_probes(stream, p, queries, rows, nprobe)?;
        // 3. Lookup tables, rows × M × ksub, for the indexes that scan unfused (the fused
        // scan builds each query's table in shared memory).
        let unfused = segs
            .iter()
            .any(|p| self.fused_shared_bytes(p, params.candidates()).is_none());
        let factor: f32 = if ip { -1.0 } else { -2.0 };
        let mut tables =
            unsafe { stream.alloc::<f32>(if unfused { rows * tl } else { 1 }) }.map_err(driver)?;
        if unfused {
            let n = rows * tl;
            let cfg = LaunchConfig {
                grid_dim: grid(n.div_ceil(256)),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let (m_u, k_u, d_u) = (m as u32, ksub as u32, dsub as u32);
            let mut b = stream.launch_builder(&self.tables);
            b.arg(queries).arg(&dev.quant.codebook).arg(&mut tables);
            b.arg(&rows_u).arg(&m_u).arg(&k_u).arg(&d_u).arg(&factor);
            // SAFETY: argument types and order match `lookup_tables`; threads past n return.
            unsafe { b.launch(cfg) }.map_err(driver)?;
        }
        let k = params.k;
        for (seg, p) in segs.iter().enumerate() {
            let index = p.index_arc();
            let dev = &p.dev;
            // 4–6. Each query's best `keep` candidates: scored and selected in one kernel
            // (then one round merging its parts), or scored into rows and selected in rounds.
            let (ks, kp) = match self.fused_shared_bytes(p, keep) {
                Some(smem) => {
                    let probes = (&pp, &ps);
                    self.fused_scan_select(stream, p, probes, queries, factor, rows, params, smem)?
                }
                None => self.scan_then_select(stream, p, (&pp, &ps), &tables, rows, params)?,
            };
            // 7. Refine at the candidates' global slots; payloads become ids.
            let n = rows * keep;
            let mut rs = unsafe { stream.alloc::<u32>(n) }.map_err(driver)?;
            let mut rp = unsafe { stream.alloc::<u32>(2 * n) }.map_err(driver)?;
            {
                let ids = dev
                    .ids
                    .as_ref()
                    .ok_or_else(|| CudaError::Driver("internal: ids not resident".into()))?;
                let has_raw = index.params().refine != RefineKind::None;
                let f16 = u32::from(p.raw_f16);
                let (ip_u, has_raw_u, per_u, n_u) =
                    (u32::from(ip), u32::from(has_raw), keep as u32, n as u32);
                let cfg = LaunchConfig {
                    grid_dim: grid(n.div_ceil(4)),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: 0,
                };
                let mut b = stream.launch_builder(&self.refine_candidates);
                match &dev.raw {
                    Some(raw) => b.arg(raw),
                    // Never read without raw vectors.
                    None => b.arg(ids),
                };
                b.arg(&ks)
                    .arg(&kp)
                    .arg(ids)
                    .arg(queries)
                    .arg(&mut rs)
                    .arg(&mut rp);
                b.arg(&dim_u)
                    .arg(&f16)
                    .arg(&ip_u)
                    .arg(&has_raw_u)
                    .arg(&per_u)
                    .arg(&n_u);
                // SAFETY: argument types and order match `refine_candidates`; one warp per
                // candidate, each reading its raw vector at its global slot × dim.
                unsafe { b.launch(cfg) }.map_err(driver)?;
            }
            // 8. The best k by (distance, id), into this index's part of the batch's result.
            let at = seg * nq * k;
            let mut out_s = res_s.slice_mut(at + a * k..at + b * k);
            let mut out_p = res_p.slice_mut(2 * (at + a * k)..2 * (at + b * k));
            self.select_strided_rounds(
                stream,
                rs,
                Some(rp),
                rows,
                keep,
                None,
                k,
                SelectOut::Into(&mut out_s, &mut out_p),
            )?;
        }
        Ok(())
    }

    /// The coarse selection's dynamic shared memory (`coarse_select`) for `nprobe`, when it
    /// runs: `nprobe` within [`COARSE_SELECT_MAX_KEEP`] and half a tile's scores, 128 queues
    /// and 8 staging areas within the device's opt-in shared memory.
    fn coarse_select_shared(&self, nprobe: usize) -> Option<usize> {
        if nprobe > COARSE_SELECT_MAX_KEEP || !self.fused_select || !self.select_probes {
            return None;
        }
        let shape = WarpSelectShape::for_passes(nprobe);
        let bytes = 64 * 144 * 4
            + COARSE_TILE * shape.queue * 12
            + 8 * WarpSelectShape::LANES * shape.thread_queue * 12;
        (bytes + COARSE_STATIC_SHARED <= self.scan8_shared).then_some(bytes)
    }

    /// Bytes a query's coarse stage writes: its best `nprobe` of each span
    /// (`coarse_select`), or its score for every list.
    fn coarse_bytes_per_query(&self, rows: usize, nlist: usize, nprobe: usize) -> usize {
        match self.coarse_select_shared(nprobe) {
            Some(_) => nlist.div_ceil(coarse_select_span(rows, nlist)) * nprobe * 12,
            None => nlist * 4,
        }
    }

    /// Steps 1–2 of a tile: each query's best `nprobe` lists (scores, payloads (0, list)),
    /// rows × nprobe. `coarse_select` scores the centroids and keeps each query's best of a
    /// span in shared memory (one round then merges a query's spans); otherwise
    /// `coarse_distances` writes every score, 4 bytes a list, and top-k rounds select (each
    /// entry's place in its row as its payload).
    fn coarse_probes(
        &self,
        stream: &Arc<CudaStream>,
        p: &CudaPrepared,
        queries: &cudarc::driver::CudaView<'_, f32>,
        rows: usize,
        nprobe: usize,
    ) -> Result<Rows, CudaError> {
        let index = p.index_arc();
        let dev = &p.dev;
        let (dim, nlist) = (index.dim(), index.nlist());
        let l2 = u32::from(!index.metric().is_inner_product());
        let (rows_u, nlist_u, dim_u) = (rows as u32, nlist as u32, dim as u32);
        let query_tiles = rows.div_ceil(COARSE_TILE) as u32;
        let select = self.coarse_select_shared(nprobe);
        let span = coarse_select_span(rows, nlist);
        let parts = nlist.div_ceil(span);
        let shape = WarpSelectShape::for_passes(nprobe);
        // `coarse_select`: `nprobe` entries (scores, payloads) per query and span;
        // `coarse_distances`: every score, and a payload buffer it never touches.
        let (entries, payload_words) = match select {
            Some(_) => (rows * parts * nprobe, 2 * rows * parts * nprobe),
            None => (rows * nlist, 2),
        };
        // SAFETY: the kernel writes every entry of `cs` (and of `cp` when it selects).
        let mut cs = unsafe { stream.alloc::<u32>(entries) }.map_err(driver)?;
        let mut cp = unsafe { stream.alloc::<u32>(payload_words) }.map_err(driver)?;
        let cfg = LaunchConfig {
            grid_dim: match select {
                Some(_) => (parts as u32, query_tiles, 1),
                None => (nlist.div_ceil(COARSE_TILE) as u32, query_tiles, 1),
            },
            block_dim: (16, 16, 1),
            shared_mem_bytes: select.unwrap_or(0) as u32,
        };
        let (span_u, keep_u, with_payloads) = (span as u32, nprobe as u32, 0u32);
        let (k_u, t_u) = (shape.queue as u32, shape.thread_queue as u32);
        let mut b = stream.launch_builder(match select {
            Some(_) => &self.coarse_select,
            None => &self.coarse,
        });
        b.arg(queries)
            .arg(&dev.quant.centroids)
            .arg(&dev.quant.norms)
            .arg(&mut cs)
            .arg(&mut cp);
        b.arg(&rows_u).arg(&nlist_u).arg(&dim_u).arg(&l2);
        match select {
            Some(_) => b.arg(&span_u).arg(&keep_u).arg(&k_u).arg(&t_u),
            None => b.arg(&with_payloads),
        };
        // SAFETY: argument types and order match `coarse_select` (block (p, y) reads queries
        // 128y.. below `rows` and the centroids of its span, and writes `nprobe` entries at
        // (q · parts + p) · nprobe for its queries, inside rows × parts × nprobe; `smem`
        // holds the half tile, 128 queues and 8 staging areas of `shape`) or
        // `coarse_distances` (the grid covers the rows × nlist matrix; without payloads the
        // payload pointer is not used).
        unsafe { b.launch(cfg) }.map_err(driver)?;
        let probes = match select {
            Some(_) if parts == 1 => return Ok((cs, cp)),
            Some(_) => self.select_strided_rounds(
                stream,
                cs,
                Some(cp),
                rows,
                parts * nprobe,
                None,
                nprobe,
                SelectOut::New,
            )?,
            None => self.select_strided_rounds(
                stream,
                cs,
                None,
                rows,
                nlist,
                None,
                nprobe,
                SelectOut::New,
            )?,
        };
        probes.ok_or_else(|| CudaError::Driver("internal: no probes".into()))
    }

    /// Steps 4–6 of a tile, unfused: work items from the probes, the scan into rows `stride`
    /// apart (each row's length written by the items kernel), then top-k rounds over them.
    fn scan_then_select(
        &self,
        stream: &Arc<CudaStream>,
        p: &CudaPrepared,
        (pp, ps): (&CudaSlice<u32>, &CudaSlice<u32>),
        tables: &CudaSlice<f32>,
        rows: usize,
        params: &SearchParams,
    ) -> Result<Rows, CudaError> {
        let index = p.index_arc();
        let dev = &p.dev;
        let nlist = index.nlist();
        let (m, ksub) = (index.pq().m(), index.pq().ksub());
        let tl = m * ksub;
        let nprobe = params.nprobe.min(nlist);
        let keep = params.candidates();
        let rows_u = rows as u32;
        // 4. Work items and row lengths from the probes.
        let stride = dev.row_bound[nprobe].max(1);
        let nitems = rows * nprobe;
        let mut items = unsafe { stream.alloc::<u32>(nitems * 8) }.map_err(driver)?;
        let mut row_len = unsafe { stream.alloc::<u32>(rows) }.map_err(driver)?;
        {
            let cfg = LaunchConfig {
                grid_dim: grid(rows.div_ceil(128)),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            let (np_u, st_u, tl_u) = (nprobe as u32, stride as u32, tl as u32);
            let by_residual = u32::from(index.params().by_residual());
            let mut b = stream.launch_builder(&self.scan_items);
            b.arg(pp)
                .arg(ps)
                .arg(&dev.places)
                .arg(&mut items)
                .arg(&mut row_len);
            b.arg(&rows_u)
                .arg(&np_u)
                .arg(&st_u)
                .arg(&tl_u)
                .arg(&by_residual);
            // SAFETY: argument types and order match `scan_items` (`places` is four words a
            // list, `items` eight words an item); each thread writes its query's items.
            unsafe { b.launch(cfg) }.map_err(driver)?;
        }
        // 5. The scan into rows `stride` apart (4-bit: each item's table quantized there).
        let mut ss = unsafe { stream.alloc::<u32>(rows * stride) }.map_err(driver)?;
        let mut sp = unsafe { stream.alloc::<u32>(2 * rows * stride) }.map_err(driver)?;
        {
            let codes = dev
                .codes
                .as_ref()
                .ok_or_else(|| CudaError::Driver("internal: codes not resident".into()))?;
            let no_terms;
            let terms = match &dev.quant.l2_terms {
                Some((_, d)) => d,
                None => {
                    no_terms = unsafe { stream.alloc::<f32>(1) }.map_err(driver)?;
                    &no_terms
                }
            };
            let l2 = u32::from(dev.quant.l2_terms.is_some());
            if index.layout() == CodeLayout::Packed4x32 {
                let (m_u, n_u) = (m as u32, nitems as u32);
                let cfg = LaunchConfig {
                    grid_dim: grid(nitems),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: (m * (16 * 5 + 8) + 8) as u32,
                };
                let mut b = stream.launch_builder(&self.scan4_quantized);
                b.arg(codes).arg(&items).arg(tables).arg(terms).arg(&p.dead);
                b.arg(&mut ss).arg(&mut sp).arg(&m_u).arg(&l2).arg(&n_u);
                // SAFETY: argument types and order match `scan4_quantized`; the items
                // address resident codes and rows of `ss` / `sp` below each row's length;
                // shared memory holds the item's float table, ranges and u8 table.
                unsafe { b.launch(cfg) }.map_err(driver)?;
            } else {
                let staged = m * 256 * 4 <= self.scan8_shared;
                let smem = if staged { (m * 256 * 4) as u32 } else { 0 };
                let staged = u32::from(staged);
                let group = quiver_engine::backend::scan_items_per_block(nitems);
                let (m_u, n_u, g_u) = (m as u32, nitems as u32, group as u32);
                let cfg = LaunchConfig {
                    grid_dim: grid(nitems.div_ceil(group)),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: smem,
                };
                let mut b = stream.launch_builder(&self.scan8);
                b.arg(codes).arg(&items).arg(tables).arg(terms).arg(&p.dead);
                b.arg(&mut ss)
                    .arg(&mut sp)
                    .arg(&m_u)
                    .arg(&l2)
                    .arg(&staged)
                    .arg(&n_u)
                    .arg(&g_u);
                // SAFETY: argument types and order match `scan8`; the items address resident
                // codes and rows of `ss` / `sp` below each row's length.
                unsafe { b.launch(cfg) }.map_err(driver)?;
            }
        }
        // 6. Each query's best `keep` candidates.
        let (ks, kp) = self
            .select_strided_rounds(
                stream,
                ss,
                Some(sp),
                rows,
                stride,
                Some(&row_len),
                keep,
                SelectOut::New,
            )?
            .ok_or_else(|| CudaError::Driver("internal: no candidates".into()))?;
        Ok((ks, kp))
    }

    /// Steps 3–6 of a tile, fused: `scan8_select` / `scan4_select` build each query's table
    /// in shared memory and score its probed lists in parts of `fused_scan_group` probes, each
    /// part's block writing its best `keep` (no tables or score rows in device memory); one
    /// `select_strided` round merges a query's parts (none when it has one). `smem`: the
    /// kernel's dynamic shared memory ([`Self::fused_shared_bytes`]).
    #[allow(clippy::too_many_arguments)]
    fn fused_scan_select(
        &self,
        stream: &Arc<CudaStream>,
        p: &CudaPrepared,
        (pp, ps): (&CudaSlice<u32>, &CudaSlice<u32>),
        queries: &cudarc::driver::CudaView<'_, f32>,
        factor: f32,
        rows: usize,
        params: &SearchParams,
        smem: FusedShared,
    ) -> Result<Rows, CudaError> {
        let index = p.index_arc();
        let dev = &p.dev;
        let m = index.pq().m();
        let nprobe = params.nprobe.min(index.nlist());
        let keep = params.candidates();
        let group = fused_scan_group(rows, nprobe);
        let parts = nprobe.div_ceil(group);
        let blocks = rows * parts;
        let shape = WarpSelectShape::for_keep(keep.max(1));
        let codes = dev
            .codes
            .as_ref()
            .ok_or_else(|| CudaError::Driver("internal: codes not resident".into()))?;
        let no_terms;
        let terms = match &dev.quant.l2_terms {
            Some((_, d)) => d,
            None => {
                no_terms = unsafe { stream.alloc::<f32>(1) }.map_err(driver)?;
                &no_terms
            }
        };
        // SAFETY: every block writes its `keep` entries (padding where a part has fewer).
        let mut fs = unsafe { stream.alloc::<u32>(blocks * keep) }.map_err(driver)?;
        let mut fp = unsafe { stream.alloc::<u32>(2 * blocks * keep) }.map_err(driver)?;
        let l2 = u32::from(dev.quant.l2_terms.is_some());
        let four_bit = index.layout() == CodeLayout::Packed4x32;
        let (m_u, rows_u, np_u, g_u) = (m as u32, rows as u32, nprobe as u32, group as u32);
        let dsub_u = index.pq().dsub() as u32;
        let by_residual = u32::from(index.params().by_residual());
        let (keep_u, k_u, t_u) = (keep as u32, shape.queue as u32, shape.thread_queue as u32);
        let cfg = LaunchConfig {
            grid_dim: grid(blocks),
            block_dim: ((FUSED_WARPS * WarpSelectShape::LANES) as u32, 1, 1),
            shared_mem_bytes: smem.bytes as u32,
        };
        let mut b = stream.launch_builder(if four_bit {
            &self.scan4_select
        } else {
            &self.scan8_select
        });
        b.arg(codes).arg(pp).arg(ps).arg(&dev.places);
        b.arg(queries).arg(&dev.quant.codebook).arg(terms);
        b.arg(&p.dead).arg(&mut fs).arg(&mut fp);
        b.arg(&m_u).arg(&dsub_u).arg(&factor).arg(&l2);
        b.arg(&rows_u).arg(&np_u).arg(&g_u).arg(&by_residual);
        b.arg(&keep_u).arg(&k_u).arg(&t_u);
        // SAFETY: argument types and order match `scan8_select` and `scan4_select`; each block
        // reads its query (rows × M · dsub floats), the codebook, its probes and the lists'
        // resident codes, and writes `keep` entries at its block number × keep, inside
        // `blocks × keep`; `smem` holds its tables and eight queues of `shape`.
        unsafe { b.launch(cfg) }.map_err(driver)?;
        if parts == 1 {
            return Ok((fs, fp));
        }
        self.select_strided_rounds(
            stream,
            fs,
            Some(fp),
            rows,
            parts * keep,
            None,
            keep,
            SelectOut::New,
        )?
        .ok_or_else(|| CudaError::Driver("internal: no candidates".into()))
    }

    /// Top-k rounds over `rows` rows `stride` apart (of `row_len` entries each when given;
    /// without `payloads`, each entry's payload is (0, its place in its row)), keeping `keep`
    /// per row; the last round writes to `out` (new buffers, returned, or the
    /// views given).
    #[allow(clippy::too_many_arguments)]
    fn select_strided_rounds(
        &self,
        stream: &Arc<CudaStream>,
        scores: CudaSlice<u32>,
        payloads: Option<CudaSlice<u32>>,
        rows: usize,
        stride: usize,
        row_len: Option<&CudaSlice<u32>>,
        keep: usize,
        out: SelectOut<'_, '_>,
    ) -> Result<Option<Rows>, CudaError> {
        let shape = WarpSelectShape::for_keep(keep.max(1));
        let (k, t) = (shape.queue as u32, shape.thread_queue as u32);
        let (mut cur_s, mut cur_p, mut stride) = (scores, payloads, stride.max(1));
        let mut lens = row_len;
        let mut out = Some(out);
        // Long rows' first round is cut finer, to fill the device (`spread_chunk`).
        let mut chunk = shape.spread_chunk(rows, stride);
        loop {
            let parts = stride.div_ceil(chunk);
            let last = parts == 1;
            let blocks = rows * parts;
            let cfg = LaunchConfig {
                grid_dim: grid(blocks),
                block_dim: (WarpSelectShape::LANES as u32, 1, 1),
                shared_mem_bytes: shape.shared_bytes() as u32,
            };
            let (rows_u, stride_u, parts_u, chunk_u, keep_u, use_len) = (
                rows as u32,
                stride as u32,
                parts as u32,
                chunk as u32,
                keep as u32,
                u32::from(lens.is_some()),
            );
            let implicit = u32::from(cur_p.is_none());
            let mut b = stream.launch_builder(&self.select_strided);
            b.arg(&cur_s);
            match &cur_p {
                Some(p) => b.arg(p),
                // Never read with `implicit` payloads.
                None => b.arg(&cur_s),
            };
            match lens {
                Some(l) => b.arg(l),
                // Never read without `use_len`.
                None => b.arg(&cur_s),
            };
            let mut fresh = None;
            match (last, out.take()) {
                (true, Some(SelectOut::Into(s, p))) => {
                    b.arg(s).arg(p);
                }
                (_, o) => {
                    out = o;
                    // SAFETY: every chunk writes its `keep` entries.
                    let s = unsafe { stream.alloc::<u32>(blocks * keep) }.map_err(driver)?;
                    let p = unsafe { stream.alloc::<u32>(2 * blocks * keep) }.map_err(driver)?;
                    fresh = Some((s, p));
                }
            }
            if let Some((s, p)) = fresh.as_mut() {
                b.arg(s).arg(p);
            }
            b.arg(&rows_u)
                .arg(&stride_u)
                .arg(&parts_u)
                .arg(&chunk_u)
                .arg(&keep_u);
            b.arg(&use_len).arg(&k).arg(&t).arg(&implicit);
            // SAFETY: argument types and order match `select_strided`; chunk (r, p) reads
            // row r's entries below its length and writes `keep` entries at (r·parts+p)·keep,
            // inside the output of `blocks × keep` entries.
            unsafe { b.launch(cfg) }.map_err(driver)?;
            match fresh {
                Some((s, p)) if !last => {
                    (cur_s, cur_p, stride) = (s, Some(p), parts * keep);
                    lens = None;
                    chunk = shape.chunk;
                }
                Some(done) => return Ok(Some(done)),
                None => return Ok(None),
            }
        }
    }
}
