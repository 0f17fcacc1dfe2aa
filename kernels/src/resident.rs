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
//! stream of its own (two lanes taken in turn: two callers' batches overlap), its queries up
//! and its results down through pinned buffers, its device buffers the ones its lane kept
//! from earlier batches (`scratch`: a batch of a shape seen before allocates nothing). Where the fused scan
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

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};
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
use crate::scratch::{Buffer, Pair, Work};

/// Warps in a block of the fused scan + selection (each with its own queue).
const FUSED_WARPS: usize = 8;

/// The fused scan's dynamic shared memory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FusedShared {
    bytes: usize,
}

/// Where a selection's last round writes: views of scores and payloads.
type Out<'a, 'b> = (&'a mut CudaViewMut<'b, u32>, &'a mut CudaViewMut<'b, u32>);

/// The unfused scan's buffers (work items, row lengths, score rows), its selection's
/// output and rounds.
struct UnfusedBufs<'a> {
    items: &'a mut Buffer,
    row_len: &'a mut Buffer,
    rows: &'a mut Pair,
    candidates: &'a mut Pair,
    rounds: &'a mut [Pair; 2],
}

/// What the fused scan reads besides the index and the probes.
struct FusedArgs<'a, 'b> {
    queries: &'a CudaView<'b, f32>,
    factor: f32,
    smem: FusedShared,
    /// Bound where the kernel takes L2 terms and the index has none.
    unused: &'a CudaView<'b, u32>,
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
        // The batch's lane: its stream (two batches from two callers overlap) and the working
        // memory it keeps between batches; the queries go up through a pinned buffer and the
        // results come back through another: asynchronous copies, one each.
        let (lane, stream) = self.io.lane();
        let mut scratch = self.io.take_scratch(lane);
        let mut held = Vec::new();
        // One buffer for the results: segments × nq × k scores, then (8-byte aligned) as
        // many payloads; segment s's part is at s × nq × k.
        let total = segs.len() * nq * k;
        let s_words = total.next_multiple_of(2);
        let fetched = {
            let sc = &mut scratch;
            {
                let mut q_words = sc.queries.words(&stream, nq * dim)?;
                self.io
                    .stage_into(&stream, queries, &mut q_words, &mut held)?;
            }
            let q_words = sc.queries.view(nq * dim)?;
            // SAFETY: `q_words` holds the queries' f32 bits, nq × dim words.
            let q_dev = unsafe { q_words.transmute::<f32>(nq * dim) }
                .ok_or_else(|| CudaError::Driver("internal: query buffer too short".into()))?;
            // The final selections write every score and payload word of every row of every
            // segment.
            let mut result = sc.result.words(&stream, s_words + 2 * total)?;
            {
                let (mut res_s, mut res_p) = result.split_at_mut(s_words);
                let mut a = 0;
                while a < nq {
                    let b = (a + rows_per_tile).min(nq);
                    let q_view = q_dev.slice(a * dim..b * dim);
                    let rows = (a, b, nq);
                    let out = (&mut res_s, &mut res_p);
                    self.resident_tile(&stream, segs, &q_view, rows, params, out, &mut sc.work)?;
                    a = b;
                }
            }
            self.io.fetch_on(&stream, &result)?
        };
        let out = Self::read_results(index.metric(), segs.len(), (nq, k), fetched.wait()?);
        self.io.release(held, vec![fetched]);
        // Every kernel of the batch has finished (its results are here): the lane keeps the
        // memory for its next batch. (On an error above it is freed instead, in stream order.)
        self.io.give_scratch(lane, scratch);
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
    /// its part of the result (`res_s` / `res_p`: segment s's rows at s × nq × k). Its
    /// buffers are `work`'s.
    #[allow(clippy::too_many_arguments)]
    fn resident_tile(
        &self,
        stream: &Arc<CudaStream>,
        segs: &[&CudaPrepared],
        queries: &CudaView<'_, f32>,
        (a, b, nq): (usize, usize, usize),
        params: &SearchParams,
        (res_s, res_p): Out<'_, '_>,
        work: &mut Work,
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
        work.unused.words(stream, 1)?;
        let unused = work.unused.view(1)?;

        // 1–2. The probes: each row's best nprobe lists, rows × nprobe.
        let probes = (&mut work.coarse, &mut work.probes);
        self.coarse_probes(stream, p, queries, rows, nprobe, probes, &mut work.rounds)?;
        let ps = work.probes.scores.view(rows * nprobe)?;
        let pp = work.probes.payloads.view(2 * rows * nprobe)?;
        // 3. Lookup tables, rows × M × ksub, for the indexes that scan unfused (the fused
        // scan builds each query's table in shared memory).
        let unfused = segs
            .iter()
            .any(|p| self.fused_shared_bytes(p, params.candidates()).is_none());
        let factor: f32 = if ip { -1.0 } else { -2.0 };
        if unfused {
            let n = rows * tl;
            let mut words = work.tables.words(stream, n)?;
            // SAFETY: `words` is n u32s; the tables kernel writes each as an f32.
            let mut tables = unsafe { words.transmute_mut::<f32>(n) }
                .ok_or_else(|| CudaError::Driver("internal: table buffer too short".into()))?;
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
            let probes = (&pp, &ps);
            match self.fused_shared_bytes(p, keep) {
                Some(smem) => {
                    let bufs = (&mut work.scanned, &mut work.candidates, &mut work.rounds);
                    let fused = FusedArgs {
                        queries,
                        factor,
                        smem,
                        unused: &unused,
                    };
                    self.fused_scan_select(stream, p, probes, &fused, rows, params, bufs)?;
                }
                None => {
                    let words = work.tables.view(rows * tl)?;
                    // SAFETY: the tables kernel wrote rows × M × ksub f32s there.
                    let tables = unsafe { words.transmute::<f32>(rows * tl) }.ok_or_else(|| {
                        CudaError::Driver("internal: table buffer too short".into())
                    })?;
                    let bufs = UnfusedBufs {
                        items: &mut work.items,
                        row_len: &mut work.row_len,
                        rows: &mut work.scanned,
                        candidates: &mut work.candidates,
                        rounds: &mut work.rounds,
                    };
                    self.scan_then_select(
                        stream,
                        p,
                        probes,
                        (&tables, &unused),
                        rows,
                        params,
                        bufs,
                    )?;
                }
            }
            let n = rows * keep;
            let ks = work.candidates.scores.view(n)?;
            let kp = work.candidates.payloads.view(2 * n)?;
            // 7. Refine at the candidates' global slots; payloads become ids.
            {
                let mut rs = work.refined.scores.words(stream, n)?;
                let mut rp = work.refined.payloads.words(stream, 2 * n)?;
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
            let rs = work.refined.scores.view(n)?;
            let rp = work.refined.payloads.view(2 * n)?;
            let at = seg * nq * k;
            let mut out_s = res_s.slice_mut(at + a * k..at + b * k);
            let mut out_p = res_p.slice_mut(2 * (at + a * k)..2 * (at + b * k));
            let rounds = &mut work.rounds;
            let input = (&rs, Some(&rp));
            self.select_strided_rounds(
                stream,
                input,
                rows,
                keep,
                None,
                k,
                (&mut out_s, &mut out_p),
                rounds,
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
    /// rows × nprobe, into `probes`. `coarse_select` scores the centroids and keeps each
    /// query's best of a span in shared memory (one round then merges a query's spans, read
    /// from `coarse`; with one span it writes `probes` itself); otherwise `coarse_distances`
    /// writes every score into `coarse`, 4 bytes a list, and top-k rounds select (each
    /// entry's place in its row as its payload).
    #[allow(clippy::too_many_arguments)]
    fn coarse_probes(
        &self,
        stream: &Arc<CudaStream>,
        p: &CudaPrepared,
        queries: &CudaView<'_, f32>,
        rows: usize,
        nprobe: usize,
        (coarse, probes): (&mut Pair, &mut Pair),
        rounds: &mut [Pair; 2],
    ) -> Result<(), CudaError> {
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
        let direct = select.is_some() && parts == 1;
        {
            let into = if direct { &mut *probes } else { &mut *coarse };
            // The kernel writes every entry of `cs` (and of `cp` when it selects).
            let mut cs = into.scores.words(stream, entries)?;
            let mut cp = into.payloads.words(stream, payload_words)?;
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
            // SAFETY: argument types and order match `coarse_select` (block (p, y) reads
            // queries 128y.. below `rows` and the centroids of its span, and writes `nprobe`
            // entries at (q · parts + p) · nprobe for its queries, inside rows × parts ×
            // nprobe; `smem` holds the half tile, 128 queues and 8 staging areas of `shape`)
            // or `coarse_distances` (the grid covers the rows × nlist matrix; without
            // payloads the payload pointer is not used).
            unsafe { b.launch(cfg) }.map_err(driver)?;
        }
        if direct {
            return Ok(());
        }
        let cs = coarse.scores.view(entries)?;
        let mut out_s = probes.scores.words(stream, rows * nprobe)?;
        let mut out_p = probes.payloads.words(stream, 2 * rows * nprobe)?;
        let out = (&mut out_s, &mut out_p);
        match select {
            Some(_) => {
                let cp = coarse.payloads.view(payload_words)?;
                let stride = parts * nprobe;
                self.select_strided_rounds(
                    stream,
                    (&cs, Some(&cp)),
                    rows,
                    stride,
                    None,
                    nprobe,
                    out,
                    rounds,
                )
            }
            None => self.select_strided_rounds(
                stream,
                (&cs, None),
                rows,
                nlist,
                None,
                nprobe,
                out,
                rounds,
            ),
        }
    }

    /// Steps 4–6 of a tile, unfused: work items from the probes, the scan into rows `stride`
    /// apart (each row's length written by the items kernel), then top-k rounds over them
    /// into `bufs.candidates`.
    #[allow(clippy::too_many_arguments)]
    fn scan_then_select(
        &self,
        stream: &Arc<CudaStream>,
        p: &CudaPrepared,
        (pp, ps): (&CudaView<'_, u32>, &CudaView<'_, u32>),
        (tables, unused): (&CudaView<'_, f32>, &CudaView<'_, u32>),
        rows: usize,
        params: &SearchParams,
        bufs: UnfusedBufs<'_>,
    ) -> Result<(), CudaError> {
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
        {
            let mut items = bufs.items.words(stream, nitems * 8)?;
            let mut row_len = bufs.row_len.words(stream, rows)?;
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
            // list, `items` eight words an item); each thread writes its query's items and
            // its row's length.
            unsafe { b.launch(cfg) }.map_err(driver)?;
        }
        let items = bufs.items.view(nitems * 8)?;
        let row_len = bufs.row_len.view(rows)?;
        // 5. The scan into rows `stride` apart (4-bit: each item's table quantized there).
        {
            // Each row is written below its length, which is all the selection reads.
            let mut ss = bufs.rows.scores.words(stream, rows * stride)?;
            let mut sp = bufs.rows.payloads.words(stream, 2 * rows * stride)?;
            let codes = dev
                .codes
                .as_ref()
                .ok_or_else(|| CudaError::Driver("internal: codes not resident".into()))?;
            let l2 = u32::from(dev.quant.l2_terms.is_some());
            let four_bit = index.layout() == CodeLayout::Packed4x32;
            let staged = m * 256 * 4 <= self.scan8_shared;
            let group = quiver_engine::backend::scan_items_per_block(nitems);
            let cfg = LaunchConfig {
                grid_dim: grid(if four_bit {
                    nitems
                } else {
                    nitems.div_ceil(group)
                }),
                block_dim: (256, 1, 1),
                shared_mem_bytes: match (four_bit, staged) {
                    (true, _) => (m * (16 * 5 + 8) + 8) as u32,
                    (false, true) => (m * 256 * 4) as u32,
                    (false, false) => 0,
                },
            };
            let mut b = stream.launch_builder(if four_bit {
                &self.scan4_quantized
            } else {
                &self.scan8
            });
            b.arg(codes).arg(&items).arg(tables);
            match &dev.quant.l2_terms {
                Some((_, d)) => b.arg(d),
                // Never read without L2 terms.
                None => b.arg(unused),
            };
            b.arg(&p.dead).arg(&mut ss).arg(&mut sp);
            let (m_u, n_u, staged_u, g_u) =
                (m as u32, nitems as u32, u32::from(staged), group as u32);
            if four_bit {
                b.arg(&m_u).arg(&l2).arg(&n_u);
            } else {
                b.arg(&m_u).arg(&l2).arg(&staged_u).arg(&n_u).arg(&g_u);
            }
            // SAFETY: argument types and order match `scan4_quantized` (shared memory holds
            // the item's float table, ranges and u8 table) or `scan8`; the items address
            // resident codes and rows of `ss` / `sp` below each row's length.
            unsafe { b.launch(cfg) }.map_err(driver)?;
        }
        // 6. Each query's best `keep` candidates.
        let ss = bufs.rows.scores.view(rows * stride)?;
        let sp = bufs.rows.payloads.view(2 * rows * stride)?;
        let mut ks = bufs.candidates.scores.words(stream, rows * keep)?;
        let mut kp = bufs.candidates.payloads.words(stream, 2 * rows * keep)?;
        self.select_strided_rounds(
            stream,
            (&ss, Some(&sp)),
            rows,
            stride,
            Some(&row_len),
            keep,
            (&mut ks, &mut kp),
            bufs.rounds,
        )
    }

    /// Steps 3–6 of a tile, fused: `scan8_select` / `scan4_select` build each query's table
    /// in shared memory and score its probed lists in parts of `fused_scan_group` probes, each
    /// part's block writing its best `keep` (no tables or score rows in device memory); one
    /// `select_strided` round merges a query's parts (none when it has one: the kernel writes
    /// the candidates itself). `fused.smem`: the kernel's dynamic shared memory
    /// ([`Self::fused_shared_bytes`]).
    #[allow(clippy::too_many_arguments)]
    fn fused_scan_select(
        &self,
        stream: &Arc<CudaStream>,
        p: &CudaPrepared,
        (pp, ps): (&CudaView<'_, u32>, &CudaView<'_, u32>),
        fused: &FusedArgs<'_, '_>,
        rows: usize,
        params: &SearchParams,
        (parts_buf, candidates, rounds): (&mut Pair, &mut Pair, &mut [Pair; 2]),
    ) -> Result<(), CudaError> {
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
        {
            // Every block writes its `keep` entries (padding where a part has fewer).
            let into = if parts == 1 {
                &mut *candidates
            } else {
                &mut *parts_buf
            };
            let mut fs = into.scores.words(stream, blocks * keep)?;
            let mut fp = into.payloads.words(stream, 2 * blocks * keep)?;
            let l2 = u32::from(dev.quant.l2_terms.is_some());
            let four_bit = index.layout() == CodeLayout::Packed4x32;
            let (m_u, rows_u, np_u, g_u) = (m as u32, rows as u32, nprobe as u32, group as u32);
            let dsub_u = index.pq().dsub() as u32;
            let by_residual = u32::from(index.params().by_residual());
            let (keep_u, k_u, t_u) = (keep as u32, shape.queue as u32, shape.thread_queue as u32);
            let cfg = LaunchConfig {
                grid_dim: grid(blocks),
                block_dim: ((FUSED_WARPS * WarpSelectShape::LANES) as u32, 1, 1),
                shared_mem_bytes: fused.smem.bytes as u32,
            };
            let mut b = stream.launch_builder(if four_bit {
                &self.scan4_select
            } else {
                &self.scan8_select
            });
            b.arg(codes).arg(pp).arg(ps).arg(&dev.places);
            b.arg(fused.queries).arg(&dev.quant.codebook);
            match &dev.quant.l2_terms {
                Some((_, d)) => b.arg(d),
                // Never read without L2 terms.
                None => b.arg(fused.unused),
            };
            b.arg(&p.dead).arg(&mut fs).arg(&mut fp);
            b.arg(&m_u).arg(&dsub_u).arg(&fused.factor).arg(&l2);
            b.arg(&rows_u).arg(&np_u).arg(&g_u).arg(&by_residual);
            b.arg(&keep_u).arg(&k_u).arg(&t_u);
            // SAFETY: argument types and order match `scan8_select` and `scan4_select`; each
            // block reads its query (rows × M · dsub floats), the codebook, its probes and the
            // lists' resident codes, and writes `keep` entries at its block number × keep,
            // inside `blocks × keep`; `smem` holds its tables and eight queues of `shape`.
            unsafe { b.launch(cfg) }.map_err(driver)?;
        }
        if parts == 1 {
            return Ok(());
        }
        let fs = parts_buf.scores.view(blocks * keep)?;
        let fp = parts_buf.payloads.view(2 * blocks * keep)?;
        let mut ks = candidates.scores.words(stream, rows * keep)?;
        let mut kp = candidates.payloads.words(stream, 2 * rows * keep)?;
        let out = (&mut ks, &mut kp);
        self.select_strided_rounds(
            stream,
            (&fs, Some(&fp)),
            rows,
            parts * keep,
            None,
            keep,
            out,
            rounds,
        )
    }

    /// Top-k rounds over `rows` rows `stride` apart (of `row_len` entries each when given;
    /// without payloads, each entry's payload is (0, its place in its row)), keeping `keep`
    /// per row; the last round writes `out`, the ones before it `rounds` in turn.
    #[allow(clippy::too_many_arguments)]
    fn select_strided_rounds(
        &self,
        stream: &Arc<CudaStream>,
        (scores, payloads): (&CudaView<'_, u32>, Option<&CudaView<'_, u32>>),
        rows: usize,
        stride: usize,
        row_len: Option<&CudaView<'_, u32>>,
        keep: usize,
        (out_s, out_p): Out<'_, '_>,
        rounds: &mut [Pair; 2],
    ) -> Result<(), CudaError> {
        let shape = WarpSelectShape::for_keep(keep.max(1));
        let (k, t) = (shape.queue as u32, shape.thread_queue as u32);
        let [even, odd] = rounds;
        let mut stride = stride.max(1);
        let mut lens = row_len;
        // Long rows' first round is cut finer, to fill the device (`spread_chunk`).
        let mut chunk = shape.spread_chunk(rows, stride);
        // Round r (not the last) writes `even` when r is even, `odd` when odd; round r ≥ 1
        // reads what round r − 1 wrote (`prev` entries).
        let (mut round, mut prev) = (0usize, 0usize);
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
            let (src, dst) = if round % 2 == 0 {
                (&*odd, &mut *even)
            } else {
                (&*even, &mut *odd)
            };
            let (in_s, in_p) = if round == 0 {
                (scores.slice(..), payloads.map(|p| p.slice(..)))
            } else {
                (src.scores.view(prev)?, Some(src.payloads.view(2 * prev)?))
            };
            let implicit = u32::from(in_p.is_none());
            // Every chunk writes its `keep` entries: into `out` in the last round.
            let mut next = match last {
                true => None,
                false => Some((
                    dst.scores.words(stream, blocks * keep)?,
                    dst.payloads.words(stream, 2 * blocks * keep)?,
                )),
            };
            let mut b = stream.launch_builder(&self.select_strided);
            b.arg(&in_s);
            match &in_p {
                Some(p) => b.arg(p),
                // Never read with `implicit` payloads.
                None => b.arg(&in_s),
            };
            match lens {
                Some(l) => b.arg(l),
                // Never read without `use_len`.
                None => b.arg(&in_s),
            };
            match next.as_mut() {
                Some((s, p)) => b.arg(s).arg(p),
                None => b.arg(&mut *out_s).arg(&mut *out_p),
            };
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
            if last {
                return Ok(());
            }
            (stride, prev) = (parts * keep, blocks * keep);
            lens = None;
            chunk = shape.chunk;
            round += 1;
        }
    }
}
