//! The CPU backend: the reference implementation of every search stage (rayon over queries).
//!
//! Its results define what the wgpu and CUDA backends must return. It favours clarity with
//! SGEMM for the dense stages; hand-written SIMD belongs in separate per-instruction-set files.

use std::sync::Arc;

use rayon::prelude::*;

use super::{
    run_stages, AllowSet, Backend, Candidates, LookupTables, Neighbors, PreparedIndex, Probes,
    QueryFilters, SearchParams, Slot,
};
use crate::error::EngineError;
use crate::fastscan::{self, QuantizedTable};
use crate::i8panels::{self, I8Panels};
use crate::index::IvfPqIndex;
use crate::linalg::{dot, gemm_abt, row_norms_sq};
use crate::list::CodeLayout;
use crate::topk::TopK;

/// The CPU reference backend.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend;

/// An index prepared for the CPU: the index plus precomputed per-list tables for L2.
#[derive(Debug)]
pub struct CpuPrepared {
    index: Arc<IvfPqIndex>,
    centroid_norms: Arc<Vec<f32>>,
    /// L2 only: `nlist × M × ksub` values `‖C_mj‖² + 2 <c_l,m, C_mj>`.
    l2_list_terms: Option<Arc<Vec<f32>>>,
    /// The centroids packed for the AVX-512 coarse GEMM.
    centroid_panels: Arc<crate::panels::PackedPanels>,
    /// The centroids as int8 panels for few probes (`None` without AVX-512 VNNI).
    centroid_i8: Option<Arc<I8Panels>>,
}

impl CpuPrepared {
    /// The shared index this was prepared from.
    pub fn index_arc(&self) -> &Arc<IvfPqIndex> {
        &self.index
    }

    /// The index, to add or delete entries in place (copied first if shared: a cheap clone).
    /// What was precomputed depends only on the quantizers, which no write changes, so it
    /// stays valid.
    pub fn index_mut(&mut self) -> &mut IvfPqIndex {
        Arc::make_mut(&mut self.index)
    }
}

impl PreparedIndex for CpuPrepared {
    fn index(&self) -> &IvfPqIndex {
        &self.index
    }
}

/// Queries per parallel task of the coarse stage.
const COARSE_BLOCK: usize = 128;

/// Up to this many probes the coarse stage scores in int8 first ([`I8Panels`]: the same
/// answer, ≈ 3× faster at one probe); above it the exact pass admits too many centroids
/// and the f32 GEMM is faster (measured at 1,024 centroids × 384 dims: even at 16 probes).
const I8_MAX_PROBES: usize = 8;

/// Runs a whole search inside the rayon pool (one job handed over, not one per parallel
/// stage), or inline when already on a pool thread or for a single query (two thread switches
/// would cost more than its work on one core).
fn in_pool(
    prepared: &CpuPrepared,
    queries: &[f32],
    run: impl FnOnce() -> Result<Neighbors, EngineError> + Send,
) -> Result<Neighbors, EngineError> {
    if rayon::current_thread_index().is_some() || queries.len() <= prepared.index.dim() {
        return run();
    }
    let mut result = None;
    rayon::scope(|_| result = Some(run()));
    result.unwrap_or_else(|| {
        Err(EngineError::BackendUnavailable {
            backend: "cpu",
            reason: "search did not run".into(),
        })
    })
}

#[inline]
fn pack(list: usize, offset: usize) -> u64 {
    (list as u64) << 32 | offset as u64
}

#[inline]
fn unpack(v: u64) -> Slot {
    Slot {
        list: (v >> 32) as u32,
        offset: v as u32,
    }
}

impl Backend for CpuBackend {
    type Prepared = CpuPrepared;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn prepare(&self, index: Arc<IvfPqIndex>) -> Result<CpuPrepared, EngineError> {
        let centroid_norms = row_norms_sq(index.centroids(), index.dim());
        let l2_list_terms = super::l2_list_terms(&index).map(Arc::new);
        let centroid_panels = Arc::new(crate::panels::PackedPanels::pack(
            index.centroids(),
            index.nlist(),
            index.dim(),
        ));
        let centroid_i8 =
            I8Panels::pack(index.centroids(), index.nlist(), index.dim()).map(Arc::new);
        Ok(CpuPrepared {
            index,
            centroid_norms: Arc::new(centroid_norms),
            l2_list_terms,
            centroid_panels,
            centroid_i8,
        })
    }

    /// Runs the stages inside the rayon pool: a caller outside it (a server's blocking thread)
    /// hands the pool one job per search instead of one per parallel stage.
    /// A single query runs on the calling thread, every stage inline: handing it to the pool
    /// would cost two thread switches, more than its work on one core.
    fn search(
        &self,
        prepared: &CpuPrepared,
        queries: &[f32],
        params: &SearchParams,
    ) -> Result<Neighbors, EngineError> {
        in_pool(prepared, queries, || {
            run_stages(self, prepared, queries, params)
        })
    }

    fn refresh(
        &self,
        prepared: &CpuPrepared,
        index: Arc<IvfPqIndex>,
    ) -> Result<CpuPrepared, EngineError> {
        if !prepared.index.shares_quantizers_with(&index) {
            return self.prepare(index);
        }
        Ok(CpuPrepared {
            index,
            centroid_norms: prepared.centroid_norms.clone(),
            l2_list_terms: prepared.l2_list_terms.clone(),
            centroid_panels: prepared.centroid_panels.clone(),
            centroid_i8: prepared.centroid_i8.clone(),
        })
    }

    fn coarse_search(
        &self,
        p: &CpuPrepared,
        queries: &[f32],
        nprobe: usize,
    ) -> Result<Probes, EngineError> {
        let index = &p.index;
        let (dim, nlist) = (index.dim(), index.nlist());
        let nq = queries.len() / dim;
        let ip_metric = index.metric().is_inner_product();
        let mut lists = vec![0u32; nq * nprobe];
        let mut scores = vec![0f32; nq * nprobe];
        let block = |((qs, l_out), s_out): ((&[f32], &mut [u32]), &mut [f32])| {
            let rows = qs.len() / dim;
            if let Some(p8) = p
                .centroid_i8
                .as_ref()
                .filter(|_| (1..=I8_MAX_PROBES.min(nlist)).contains(&nprobe))
            {
                let rule = if ip_metric {
                    i8panels::Rule::InnerProduct
                } else {
                    i8panels::Rule::L2
                };
                p8.nearest(
                    qs,
                    rows,
                    nprobe,
                    rule,
                    index.centroids(),
                    &p.centroid_norms,
                    l_out,
                    s_out,
                );
                return;
            }
            let mut ip = vec![0f32; rows * nlist];
            if !p.centroid_panels.mul(qs, rows, &mut ip) {
                gemm_abt(
                    qs,
                    dim,
                    rows,
                    index.centroids(),
                    dim,
                    nlist,
                    dim,
                    &mut ip,
                    nlist,
                );
            }
            let mut top = TopK::new(nprobe);
            for r in 0..rows {
                let q_norm = if ip_metric {
                    0.0
                } else {
                    dot(&qs[r * dim..(r + 1) * dim], &qs[r * dim..(r + 1) * dim])
                };
                top.clear();
                for (c, &v) in ip[r * nlist..(r + 1) * nlist].iter().enumerate() {
                    let s = if ip_metric {
                        -v
                    } else {
                        (q_norm + p.centroid_norms[c] - 2.0 * v).max(0.0)
                    };
                    if s <= top.threshold() {
                        top.push(s, c as u32);
                    }
                }
                for (j, e) in top.sorted().iter().enumerate() {
                    l_out[r * nprobe + j] = e.item;
                    s_out[r * nprobe + j] = e.score;
                }
            }
        };
        if nq <= COARSE_BLOCK {
            block(((queries, &mut lists[..]), &mut scores[..]));
        } else {
            queries
                .par_chunks(COARSE_BLOCK * dim)
                .zip(lists.par_chunks_mut(COARSE_BLOCK * nprobe))
                .zip(scores.par_chunks_mut(COARSE_BLOCK * nprobe))
                .for_each(block);
        }
        Ok(Probes {
            nprobe,
            lists,
            scores,
        })
    }

    fn lookup_tables(&self, p: &CpuPrepared, queries: &[f32]) -> Result<LookupTables, EngineError> {
        let pq = p.index.pq();
        let nq = queries.len() / p.index.dim();
        let (m, ksub) = (pq.m(), pq.ksub());
        let mut values = vec![0f32; nq * m * ksub];
        let factor = if p.index.metric().is_inner_product() {
            -1.0
        } else {
            -2.0
        };
        pq.scaled_inner_product_tables(queries, factor, &mut values);
        Ok(LookupTables { m, ksub, values })
    }

    fn scan(
        &self,
        p: &CpuPrepared,
        probes: &Probes,
        tables: &LookupTables,
        keep: usize,
    ) -> Result<Candidates, EngineError> {
        self.scan_with(p, probes, tables, keep, None)
    }

    fn scan_filtered(
        &self,
        p: &CpuPrepared,
        probes: &Probes,
        tables: &LookupTables,
        keep: usize,
        filters: QueryFilters<'_>,
    ) -> Result<Candidates, EngineError> {
        self.scan_with(p, probes, tables, keep, Some(filters))
    }

    fn search_filtered(
        &self,
        prepared: &CpuPrepared,
        queries: &[f32],
        params: &SearchParams,
        filters: QueryFilters<'_>,
    ) -> Result<Neighbors, EngineError> {
        in_pool(prepared, queries, || {
            super::planner::search_filtered(self, prepared, queries, params, filters)
        })
    }

    fn refine(
        &self,
        p: &CpuPrepared,
        queries: &[f32],
        candidates: &Candidates,
        k: usize,
    ) -> Result<Neighbors, EngineError> {
        let index = &p.index;
        let dim = index.dim();
        let metric = index.metric();
        let nq = queries.len() / dim;
        let per = candidates.per_query;
        let has_raw = index.params().refine != crate::RefineKind::None;
        let pad = Neighbors::padding_distance(metric);
        let mut ids = vec![-1i64; nq * k];
        let mut distances = vec![pad; nq * k];
        let body = |top: &mut TopK<u64>,
                    (q, (id_out, d_out)): (usize, (&mut [i64], &mut [f32]))| {
            top.clear();
            let query = &queries[q * dim..(q + 1) * dim];
            let slots = &candidates.slots[q * per..(q + 1) * per];
            let approx = &candidates.scores[q * per..(q + 1) * per];
            const AHEAD: usize = 8;
            let prefetch = |j: usize| {
                if let Some(s) = slots.get(j).filter(|s| has_raw && **s != Slot::NONE) {
                    index.lists()[s.list as usize].prefetch_raw(s.offset as usize, dim);
                }
            };
            (0..AHEAD).for_each(prefetch);
            for (j, (slot, &approx_score)) in slots.iter().zip(approx).enumerate() {
                if *slot == Slot::NONE {
                    break;
                }
                prefetch(j + AHEAD);
                let list = &index.lists()[slot.list as usize];
                let id = list.ids.as_slice()[slot.offset as usize];
                let score = if has_raw {
                    list.raw_score(slot.offset as usize, query, metric)
                        .unwrap_or(approx_score)
                } else {
                    approx_score
                };
                top.push(score, id);
            }
            for (i, e) in top.sorted().iter().enumerate() {
                id_out[i] = e.item as i64;
                d_out[i] = metric.reported(e.score);
            }
        };
        if nq == 1 {
            body(&mut TopK::new(k), (0, (&mut ids[..], &mut distances[..])));
        } else {
            ids.par_chunks_mut(k)
                .zip(distances.par_chunks_mut(k))
                .enumerate()
                .for_each_init(|| TopK::new(k), body);
        }
        Ok(Neighbors { k, ids, distances })
    }
}

impl CpuBackend {
    /// The scan stage, with per-query allow-sets or without.
    fn scan_with(
        &self,
        p: &CpuPrepared,
        probes: &Probes,
        tables: &LookupTables,
        keep: usize,
        filters: Option<QueryFilters<'_>>,
    ) -> Result<Candidates, EngineError> {
        let nq = probes.lists.len() / probes.nprobe.max(1);
        let mut slots = vec![Slot::NONE; nq * keep];
        let mut scores = vec![f32::INFINITY; nq * keep];
        let scanner = ListScanner::new(p, tables, filters);
        if nq == 1 {
            let mut state = scanner.state(keep);
            scanner.scan_query(&mut state, probes, 0, &mut slots, &mut scores);
        } else if p.index.layout() == CodeLayout::Packed4x32 {
            // List-major within chunks of queries: each list is streamed from memory once for
            // every query of the chunk probing it; tops stay private to the chunk's task.
            let chunk = list_major_chunk(nq);
            slots
                .par_chunks_mut(chunk * keep)
                .zip(scores.par_chunks_mut(chunk * keep))
                .enumerate()
                .for_each(|(c, (slot_out, score_out))| {
                    scanner.scan_chunk_list_major(probes, c * chunk, keep, slot_out, score_out);
                });
        } else {
            // 8-bit tables are 64 KiB-class per query: keep one query's table hot instead.
            slots
                .par_chunks_mut(keep)
                .zip(scores.par_chunks_mut(keep))
                .enumerate()
                .for_each_init(
                    || scanner.state(keep),
                    |state, (q, (slot_out, score_out))| {
                        scanner.scan_query(state, probes, q, slot_out, score_out)
                    },
                );
        }
        Ok(Candidates {
            per_query: keep,
            slots,
            scores,
        })
    }

    /// Scans the probed lists of several indexes that share one set of quantizers (segments
    /// of one collection) with one query's tables: for each (query, list) the combined L2
    /// table is built once and every segment's list `l` is scanned with it. Returns each
    /// segment's own best `keep` candidates, exactly what [`Backend::scan`] returns for it.
    /// Only 8-bit codes in the flat layout share this way; other layouts scan one by one.
    pub fn scan_segments(
        &self,
        segs: &[&CpuPrepared],
        probes: &Probes,
        tables: &LookupTables,
        keep: usize,
    ) -> Result<Vec<Candidates>, EngineError> {
        let Some(first) = segs.first() else {
            return Ok(Vec::new());
        };
        if segs.len() == 1 || segs.iter().any(|p| p.index.layout() != CodeLayout::Flat) {
            return segs
                .iter()
                .map(|p| self.scan(p, probes, tables, keep))
                .collect();
        }
        let nq = probes.lists.len() / probes.nprobe.max(1);
        let scanner = ListScanner::new(first, tables, None);
        let (m, ksub, n) = (tables.m, tables.ksub, scanner.table_len());
        let per_query: Vec<Vec<(Vec<Slot>, Vec<f32>)>> = (0..nq)
            .into_par_iter()
            .map_init(
                || vec![0f32; n],
                |combined, q| {
                    let mut tops: Vec<TopK<u64>> = segs.iter().map(|_| TopK::new(keep)).collect();
                    for j in 0..probes.nprobe {
                        let l = probes.lists[q * probes.nprobe + j] as usize;
                        let bias =
                            super::list_bias(&first.index, probes.scores[q * probes.nprobe + j]);
                        let terms = first.l2_list_terms.as_deref();
                        let long = segs.iter().any(|p| p.index.lists()[l].len() >= DIRECT_MAX);
                        // Built once for every segment's list l (when one of them is long).
                        let table = if long {
                            scanner.list_table(q, l, combined)
                        } else {
                            &[][..]
                        };
                        for (p, top) in segs.iter().zip(tops.iter_mut()) {
                            let list = &p.index.lists()[l];
                            let codes = list.codes.as_slice();
                            match terms {
                                _ if list.is_empty() => {}
                                Some(t) if list.len() < DIRECT_MAX => {
                                    let (t, qt) = (&t[l * n..(l + 1) * n], scanner.query_table(q));
                                    let dead = list.tombstones();
                                    scan_flat_codes_two(codes, m, t, qt, bias, l, dead, top);
                                }
                                _ => {
                                    let table = if long { table } else { scanner.query_table(q) };
                                    let dead = list.tombstones();
                                    scan_flat_codes(codes, m, ksub, table, bias, l, dead, top);
                                }
                            }
                        }
                    }
                    tops.iter_mut()
                        .map(|top| {
                            let mut slots = vec![Slot::NONE; keep];
                            let mut scores = vec![f32::INFINITY; keep];
                            write_candidates(top, &mut slots, &mut scores);
                            (slots, scores)
                        })
                        .collect()
                },
            )
            .collect();
        let mut out: Vec<Candidates> = segs
            .iter()
            .map(|_| Candidates {
                per_query: keep,
                slots: Vec::with_capacity(nq * keep),
                scores: Vec::with_capacity(nq * keep),
            })
            .collect();
        for q in per_query {
            for (c, (slots, scores)) in out.iter_mut().zip(q) {
                c.slots.extend(slots);
                c.scores.extend(scores);
            }
        }
        Ok(out)
    }
}

/// Queries per task of the list-major scan: enough tasks for the pool, as many queries per
/// task as that allows (more sharing of each list).
fn list_major_chunk(nq: usize) -> usize {
    let tasks = 4 * rayon::current_num_threads().max(1);
    nq.div_ceil(tasks).clamp(8, 256)
}

/// Queries scanned together over one list by the list-major scan.
const GROUP: usize = 4;

/// What a group scan of the list-major scan works on: the chunk's selections and tables.
struct GroupScan<'s> {
    /// The chunk's first query.
    first: usize,
    /// The list scanned.
    list: usize,
    /// The chunk's selections, by local index.
    tops: &'s mut [TopK<u64>],
    /// Shared (inner-product) tables, by local index; empty otherwise.
    shared_tables: &'s [QuantizedTable],
    /// Per-list tables of the group's members (L2), `GROUP` of them; empty otherwise.
    scratch: &'s mut [QuantizedTable],
    /// Scratch for one float table.
    combined: &'s mut [f32],
}

/// Per-thread scratch of the scan: a query's selection, its L2 table and its quantized table.
struct ScanState {
    top: TopK<u64>,
    combined: Vec<f32>,
    quantized: QuantizedTable,
}

/// The scan stage of one search: scans inverted lists with a query's lookup table.
struct ListScanner<'a> {
    p: &'a CpuPrepared,
    tables: &'a LookupTables,
    /// Per-query allow-sets (a filtered scan).
    filters: Option<QueryFilters<'a>>,
    level: crate::simd::Level,
    /// Fast-scan with an inner-product metric: one quantized table per query serves every
    /// list (the list enters through the bias), so it is quantized once per query.
    shared: bool,
}

impl<'a> ListScanner<'a> {
    fn new(
        p: &'a CpuPrepared,
        tables: &'a LookupTables,
        filters: Option<QueryFilters<'a>>,
    ) -> Self {
        ListScanner {
            p,
            tables,
            filters,
            level: crate::simd::level(),
            shared: p.index.layout() == CodeLayout::Packed4x32 && p.l2_list_terms.is_none(),
        }
    }

    fn table_len(&self) -> usize {
        self.tables.m * self.tables.ksub
    }

    /// Query `q`'s allow-set, in a filtered scan.
    #[inline]
    fn set_of(&self, q: usize) -> Option<&'a AllowSet> {
        self.filters.and_then(|f| f.set_of(q))
    }

    /// What query `q` must skip in list `l`: its allow-set's exclusions, else the tombstones.
    #[inline]
    fn excluded(&self, q: usize, l: usize) -> Option<&'a [u64]> {
        match self.set_of(q) {
            Some(set) => Some(set.excluded(l)),
            None => self.p.index.lists()[l].tombstones(),
        }
    }

    fn state(&self, keep: usize) -> ScanState {
        ScanState {
            top: TopK::new(keep),
            combined: vec![0f32; self.table_len()],
            quantized: QuantizedTable::new(self.tables.m),
        }
    }

    fn query_table(&self, q: usize) -> &'a [f32] {
        let n = self.table_len();
        &self.tables.values[q * n..(q + 1) * n]
    }

    /// Query `q`'s float table for list `l`: its own table, plus the list's terms for L2
    /// (written into `combined`).
    fn list_table<'c>(&self, q: usize, l: usize, combined: &'c mut [f32]) -> &'c [f32]
    where
        'a: 'c,
    {
        let q_table = self.query_table(q);
        match self.p.l2_list_terms.as_deref() {
            None => q_table,
            Some(terms) => {
                let n = self.table_len();
                let t = &terms[l * n..(l + 1) * n];
                combined
                    .iter_mut()
                    .zip(t.iter().zip(q_table))
                    .for_each(|(o, (a, b))| *o = a + b);
                combined
            }
        }
    }

    /// Offers list `l` (coarse score `bias`) to query `q`'s selection. With a shared table,
    /// `quantized` must already hold query `q`'s quantized table.
    fn scan_list(
        &self,
        q: usize,
        l: usize,
        bias: f32,
        top: &mut TopK<u64>,
        combined: &mut [f32],
        quantized: &mut QuantizedTable,
    ) {
        let index = &self.p.index;
        let (m, ksub) = (self.tables.m, self.tables.ksub);
        let list = &index.lists()[l];
        if list.is_empty() || self.set_of(q).is_some_and(|s| s.in_list(l) == 0) {
            return;
        }
        let dead = self.excluded(q, l);
        if index.layout() == CodeLayout::Flat && list.len() < DIRECT_MAX {
            if let Some(terms) = self.p.l2_list_terms.as_deref() {
                // A short list (a small segment's): two lookups per sub-quantizer and code cost
                // less than adding the list's terms into a whole table first.
                let n = self.table_len();
                let (t, qt) = (&terms[l * n..(l + 1) * n], self.query_table(q));
                scan_flat_codes_two(list.codes.as_slice(), m, t, qt, bias, l, dead, top);
                return;
            }
        }
        let table = self.list_table(q, l, combined);
        match index.layout() {
            CodeLayout::Flat => match (self.set_of(q), dead) {
                // Few allowed entries: score only those, not every code then check.
                (Some(set), Some(dead)) if (set.in_list(l) as usize) * 2 < list.len() => {
                    scan_allowed_codes(list.codes.as_slice(), m, table, bias, l, dead, top)
                }
                _ => scan_flat_codes(list.codes.as_slice(), m, ksub, table, bias, l, dead, top),
            },
            CodeLayout::Packed4x32 => {
                let offset = if self.shared {
                    bias
                } else {
                    quantized.quantize(table, bias);
                    0.0
                };
                fastscan::scan_list(
                    self.level,
                    list.codes.as_slice(),
                    list.len(),
                    quantized,
                    offset,
                    dead,
                    top,
                    |s| pack(l, s),
                );
            }
        }
    }

    /// Scans list `ctx.list` for `Q` queries of a list-major chunk (`(local index, coarse
    /// score)`), each with its own table, together; the same selections as one at a time.
    fn scan_group<const Q: usize>(&self, ctx: &mut GroupScan<'_>, members: [(usize, f32); Q]) {
        let index = &self.p.index;
        let list = &index.lists()[ctx.list];
        let locals: [usize; Q] = std::array::from_fn(|k| members[k].0);
        if !self.shared {
            // Per-list tables: each member's is built and quantized into its scratch slot.
            for (k, &(local, bias)) in members.iter().enumerate() {
                let table = self.list_table(ctx.first + local, ctx.list, ctx.combined);
                ctx.scratch[k].quantize(table, bias);
            }
        }
        let Ok(tops) = ctx.tops.get_disjoint_mut(locals) else {
            // A query listed twice for one list (probes not from this backend): one by one.
            // (A single member is always disjoint: local indices are below the chunk size.)
            if Q > 1 {
                for member in members {
                    self.scan_group::<1>(ctx, [member]);
                }
            }
            return;
        };
        let mut tops = tops.into_iter();
        let queries: [fastscan::ScanQuery<'_>; Q] = std::array::from_fn(|k| {
            let top = tops.next().expect("Q selections");
            if self.shared {
                fastscan::ScanQuery {
                    table: &ctx.shared_tables[locals[k]],
                    offset: members[k].1,
                    top,
                    excluded: self
                        .set_of(ctx.first + locals[k])
                        .map(|s| s.excluded(ctx.list)),
                }
            } else {
                fastscan::ScanQuery {
                    table: &ctx.scratch[k],
                    offset: 0.0,
                    top,
                    excluded: self
                        .set_of(ctx.first + locals[k])
                        .map(|s| s.excluded(ctx.list)),
                }
            }
        });
        let l = ctx.list;
        fastscan::scan_list_for(
            self.level,
            list.codes.as_slice(),
            list.len(),
            queries,
            list.tombstones(),
            |s| pack(l, s),
        );
    }

    /// Query-major: scans query `q`'s lists in probe order into `slot_out`/`score_out`.
    fn scan_query(
        &self,
        state: &mut ScanState,
        probes: &Probes,
        q: usize,
        slot_out: &mut [Slot],
        score_out: &mut [f32],
    ) {
        let ScanState {
            top,
            combined,
            quantized,
        } = state;
        top.clear();
        if self.shared {
            quantized.quantize(self.query_table(q), 0.0);
        }
        for j in 0..probes.nprobe {
            let l = probes.lists[q * probes.nprobe + j] as usize;
            let bias = super::list_bias(&self.p.index, probes.scores[q * probes.nprobe + j]);
            self.scan_list(q, l, bias, top, combined, quantized);
        }
        write_candidates(top, slot_out, score_out);
    }

    /// List-major over the queries `first..` whose outputs are the chunks of `keep` in
    /// `slot_out`/`score_out`: after each query's best list, the (list, query) pairs are
    /// visited in list order, so a list is read from memory once and then from cache for the
    /// other queries probing it.
    /// The result equals the query-major scan's (the selection does not depend on order).
    fn scan_chunk_list_major(
        &self,
        probes: &Probes,
        first: usize,
        keep: usize,
        slot_out: &mut [Slot],
        score_out: &mut [f32],
    ) {
        let nq = slot_out.len() / keep;
        let nprobe = probes.nprobe;
        let m = self.tables.m;
        let mut tops: Vec<TopK<u64>> = (0..nq).map(|_| TopK::new(keep)).collect();
        let quantized: Vec<QuantizedTable> = if self.shared {
            (0..nq)
                .map(|i| {
                    let mut t = QuantizedTable::new(m);
                    t.quantize(self.query_table(first + i), 0.0);
                    t
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut combined = vec![0f32; self.table_len()];
        let mut scratch: Vec<QuantizedTable> = if self.shared {
            Vec::new()
        } else {
            (0..GROUP).map(|_| QuantizedTable::new(m)).collect()
        };
        // Each query's best list first (so that its threshold is tight early and few
        // candidates are offered), then the other lists in list order.
        let mut pairs: Vec<(bool, u32, u32)> = (0..nq * nprobe)
            .map(|i| (i % nprobe != 0, probes.lists[first * nprobe + i], i as u32))
            .filter(|&(_, l, i)| {
                self.set_of(first + i as usize / nprobe)
                    .is_none_or(|s| s.in_list(l as usize) > 0)
            })
            .collect();
        pairs.sort_unstable();
        // Up to GROUP queries probing the same list are scanned together (the list's codes
        // read and unpacked once for all of them).
        let member = |&(_, _, i): &(bool, u32, u32)| {
            let i = i as usize;
            (
                i / nprobe,
                super::list_bias(&self.p.index, probes.scores[first * nprobe + i]),
            )
        };
        let mut at = 0;
        while at < pairs.len() {
            let l = pairs[at].1;
            let mut end = at + 1;
            while end < pairs.len() && end - at < GROUP && pairs[end].1 == l {
                end += 1;
            }
            let group = &pairs[at..end];
            let mut ctx = GroupScan {
                first,
                list: l as usize,
                tops: &mut tops,
                shared_tables: &quantized,
                scratch: &mut scratch,
                combined: &mut combined,
            };
            match group.len() {
                4 => self.scan_group::<4>(&mut ctx, std::array::from_fn(|k| member(&group[k]))),
                3 => self.scan_group::<3>(&mut ctx, std::array::from_fn(|k| member(&group[k]))),
                2 => self.scan_group::<2>(&mut ctx, std::array::from_fn(|k| member(&group[k]))),
                _ => self.scan_group::<1>(&mut ctx, [member(&group[0])]),
            }
            at = end;
        }
        for (local, top) in tops.iter_mut().enumerate() {
            write_candidates(
                top,
                &mut slot_out[local * keep..(local + 1) * keep],
                &mut score_out[local * keep..(local + 1) * keep],
            );
        }
    }
}

/// Lists shorter than this are scanned through two tables (the list's L2 terms and the
/// query's) instead of one combined table built for them.
const DIRECT_MAX: usize = 32;

/// [`scan_flat_codes`] with the combined table `terms + q_table` never built: each entry is
/// added where it is used, the same additions in the same order, so the same scores, bit for
/// bit.
#[allow(clippy::too_many_arguments)]
#[inline]
fn scan_flat_codes_two(
    codes: &[u8],
    m: usize,
    terms: &[f32],
    q_table: &[f32],
    bias: f32,
    list_no: usize,
    tombstones: Option<&[u64]>,
    top: &mut TopK<u64>,
) {
    let terms: &[[f32; 256]] = bytemuck::cast_slice(&terms[..m * 256]);
    let q_table: &[[f32; 256]] = bytemuck::cast_slice(&q_table[..m * 256]);
    for (s, code) in codes.chunks_exact(m).enumerate() {
        let mut acc = bias;
        for ((t, q), &c) in terms.iter().zip(q_table).zip(code) {
            acc += t[c as usize] + q[c as usize];
        }
        let live = tombstones.is_none_or(|bits| bits[s / 64] >> (s % 64) & 1 == 0);
        if acc <= top.threshold() && live {
            top.push(acc, pack(list_no, s));
        }
    }
}

/// Scores only the entries of one list whose bit in `excluded` is clear (a selective
/// allow-set), offering each to `top`: the same scores as [`scan_flat_codes`], in entry order.
#[inline]
fn scan_allowed_codes(
    codes: &[u8],
    m: usize,
    table: &[f32],
    bias: f32,
    list_no: usize,
    excluded: &[u64],
    top: &mut TopK<u64>,
) {
    let tables: &[[f32; 256]] = bytemuck::cast_slice(&table[..m * 256]);
    let tables = &tables[..m];
    let n = codes.len() / m;
    for (w, &word) in excluded.iter().enumerate() {
        let mut free = !word;
        while free != 0 {
            let s = w * 64 + free.trailing_zeros() as usize;
            free &= free - 1;
            if s >= n {
                break;
            }
            let code = &codes[s * m..(s + 1) * m];
            let mut acc = bias;
            for (t, &c) in tables.iter().zip(code) {
                acc += t[c as usize];
            }
            if acc <= top.threshold() {
                top.push(acc, pack(list_no, s));
            }
        }
    }
}

/// Writes a selection's entries, best first, as candidate slots and scores.
fn write_candidates(top: &mut TopK<u64>, slot_out: &mut [Slot], score_out: &mut [f32]) {
    for (i, e) in top.sorted().iter().enumerate() {
        slot_out[i] = unpack(e.item);
        score_out[i] = e.score;
    }
}

/// Scores every live code of one list through `table` (`M × ksub`), offering each to `top`.
///
/// Four codes are scored at once, each summed over the sub-quantizers in order: the same
/// result as one at a time, but four independent addition chains instead of one long one (the
/// scan is bound by the latency of those additions, not by memory).
#[allow(clippy::too_many_arguments)]
#[inline]
fn scan_flat_codes(
    codes: &[u8],
    m: usize,
    ksub: usize,
    table: &[f32],
    bias: f32,
    list_no: usize,
    tombstones: Option<&[u64]>,
    top: &mut TopK<u64>,
) {
    debug_assert_eq!(ksub, 256, "flat layout holds 8-bit codes");
    let tables: &[[f32; 256]] = bytemuck::cast_slice(&table[..m * 256]);
    let tables = &tables[..m];
    let live = |s: usize| match tombstones {
        Some(bits) => bits[s / 64] >> (s % 64) & 1 == 0,
        None => true,
    };
    let n = codes.len() / m;
    let mut s = 0;
    while s + 4 <= n {
        let block = &codes[s * m..(s + 4) * m];
        let (c0, rest) = block.split_at(m);
        let (c1, rest) = rest.split_at(m);
        let (c2, c3) = rest.split_at(m);
        let (mut a0, mut a1, mut a2, mut a3) = (bias, bias, bias, bias);
        for j in 0..m {
            let t = &tables[j];
            a0 += t[c0[j] as usize];
            a1 += t[c1[j] as usize];
            a2 += t[c2[j] as usize];
            a3 += t[c3[j] as usize];
        }
        for (i, acc) in [a0, a1, a2, a3].into_iter().enumerate() {
            if acc <= top.threshold() && live(s + i) {
                top.push(acc, pack(list_no, s + i));
            }
        }
        s += 4;
    }
    for s in s..n {
        let code = &codes[s * m..(s + 1) * m];
        let mut acc = bias;
        for (t, &c) in tables.iter().zip(code) {
            acc += t[c as usize];
        }
        if acc <= top.threshold() && live(s) {
            top.push(acc, pack(list_no, s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SearchParams;
    use crate::progress::NoProgress;
    use crate::synth::ClusteredGaussian;
    use crate::{IndexParams, Metric, RefineKind};

    fn index(metric: Metric, refine: RefineKind) -> (Arc<IvfPqIndex>, Vec<f32>) {
        index_bits(metric, refine, 8)
    }

    fn index_bits(metric: Metric, refine: RefineKind, bits: u32) -> (Arc<IvfPqIndex>, Vec<f32>) {
        let g = ClusteredGaussian::new(24, 10, 0.4, 3);
        let x = g.rows(0, 2000);
        let mut p = IndexParams::new(metric, 24, 12, 6);
        p.refine = refine;
        p.pq_bits = bits;
        let mut idx = IvfPqIndex::train(p, &x, &NoProgress).unwrap();
        idx.add(&x, None, &NoProgress).unwrap();
        (Arc::new(idx), g.rows(2000, 25))
    }

    /// A decoded code as a vector: plus its list's centroid when codes are residuals.
    fn with_centroid(idx: &IvfPqIndex, list: u32, decoded: &[f32]) -> Vec<f32> {
        let dim = idx.dim();
        let c = &idx.centroids()[list as usize * dim..][..dim];
        if idx.params().by_residual() {
            decoded.iter().zip(c).map(|(r, c)| r + c).collect()
        } else {
            decoded.to_vec()
        }
    }

    /// The scan's approximate score equals the distance to the PQ reconstruction, computed
    /// directly (this pins the L2 table decomposition and the IP bias term).
    #[test]
    fn scan_scores_equal_distances_to_reconstructions() {
        for metric in [Metric::L2, Metric::InnerProduct, Metric::Cosine] {
            let (idx, q) = index(metric, RefineKind::None);
            let b = CpuBackend;
            let p = b.prepare(idx.clone()).unwrap();
            let q = idx.prepare_queries(&q).unwrap().into_owned();
            let probes = b.coarse_search(&p, &q, 3).unwrap();
            let tables = b.lookup_tables(&p, &q).unwrap();
            let cands = b.scan(&p, &probes, &tables, 20).unwrap();
            let dim = idx.dim();
            let mut recon = vec![0f32; dim];
            for qi in 0..q.len() / dim {
                let query = &q[qi * dim..(qi + 1) * dim];
                for j in 0..20 {
                    let slot = cands.slots[qi * 20 + j];
                    let list = &idx.lists()[slot.list as usize];
                    let cs = idx.pq().code_size();
                    idx.pq().decode(
                        &list.codes.as_slice()[slot.offset as usize * cs..][..cs],
                        &mut recon,
                    );
                    let full = with_centroid(&idx, slot.list, &recon);
                    let want = metric.score(query, &full);
                    let got = cands.scores[qi * 20 + j];
                    assert!(
                        (got - want).abs() <= 1e-3 * (1.0 + want.abs()),
                        "{metric}: {got} vs {want}"
                    );
                    assert!(probes.lists[qi * 3..qi * 3 + 3].contains(&slot.list));
                }
            }
        }
    }

    /// Short lists (scanned through two tables) score each code exactly as long lists
    /// (scanned through the combined table) do: the same points in a small and a large index.
    #[test]
    fn short_lists_score_like_long_ones() {
        let (big, q) = index(Metric::L2, RefineKind::None);
        let g = ClusteredGaussian::new(24, 10, 0.4, 3);
        let x = g.rows(0, 150);
        let ids: Vec<u64> = (0..150).collect();
        let mut small = big.empty_like();
        small.push_encoded(&big.encode(&x).unwrap(), &ids);
        let small = Arc::new(small);
        assert!(small.lists().iter().all(|l| l.len() < DIRECT_MAX));
        assert!(big.lists().iter().any(|l| l.len() >= DIRECT_MAX));
        let b = CpuBackend;
        let scores = |idx: &Arc<IvfPqIndex>, keep: usize| {
            let p = b.prepare(idx.clone()).unwrap();
            let qp = idx.prepare_queries(&q).unwrap().into_owned();
            let probes = b.coarse_search(&p, &qp, 3).unwrap();
            let tables = b.lookup_tables(&p, &qp).unwrap();
            let c = b.scan(&p, &probes, &tables, keep).unwrap();
            let mut out = std::collections::HashMap::new();
            for (i, (slot, score)) in c.slots.iter().zip(&c.scores).enumerate() {
                if *slot != Slot::NONE {
                    let id = idx.lists()[slot.list as usize].ids.as_slice()[slot.offset as usize];
                    out.insert((i / keep, id), score.to_bits());
                }
            }
            out
        };
        let (s, l) = (scores(&small, 150), scores(&big, 2000));
        assert!(s.len() > 100);
        for (key, bits) in &s {
            assert_eq!(l.get(key), Some(bits), "query {} id {}", key.0, key.1);
        }
    }

    /// Scanning segments together gives each exactly what scanning it alone gives, for short
    /// and long lists, L2 and inner product, one query and many.
    #[test]
    fn segments_scanned_together_equal_each_alone() {
        for metric in [Metric::L2, Metric::InnerProduct] {
            let (big, q) = index(metric, RefineKind::None);
            let g = ClusteredGaussian::new(24, 10, 0.4, 3);
            let part = |from: u64, n: usize| {
                let mut i = big.empty_like();
                let ids: Vec<u64> = (from..from + n as u64).collect();
                i.push_encoded(&big.encode(&g.rows(from as usize, n)).unwrap(), &ids);
                Arc::new(i)
            };
            let b = CpuBackend;
            let segs: Vec<CpuPrepared> = [big.clone(), part(5000, 150), part(9000, 700)]
                .into_iter()
                .map(|i| b.prepare(i).unwrap())
                .collect();
            let refs: Vec<&CpuPrepared> = segs.iter().collect();
            let dim = big.dim();
            for nq in [1, q.len() / dim] {
                let qp = big.prepare_queries(&q[..nq * dim]).unwrap().into_owned();
                let probes = b.coarse_search(&segs[0], &qp, 4).unwrap();
                let tables = b.lookup_tables(&segs[0], &qp).unwrap();
                let together = b.scan_segments(&refs, &probes, &tables, 30).unwrap();
                for (p, t) in segs.iter().zip(&together) {
                    let alone = b.scan(p, &probes, &tables, 30).unwrap();
                    assert_eq!(alone.slots, t.slots, "{metric} nq {nq}");
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&alone.scores), bits(&t.scores), "{metric} nq {nq}");
                }
            }
        }
    }

    #[test]
    fn coarse_search_returns_the_best_lists_in_order() {
        let (idx, q) = index(Metric::L2, RefineKind::None);
        let b = CpuBackend;
        let p = b.prepare(idx.clone()).unwrap();
        let probes = b.coarse_search(&p, &q, 5).unwrap();
        let dim = idx.dim();
        for qi in 0..q.len() / dim {
            let query = &q[qi * dim..(qi + 1) * dim];
            let mut all: Vec<(f32, u32)> = idx
                .centroids()
                .chunks(dim)
                .enumerate()
                .map(|(c, x)| (crate::linalg::l2_sq(query, x), c as u32))
                .collect();
            all.sort_by(|a, b| a.0.total_cmp(&b.0));
            let want: Vec<u32> = all[..5].iter().map(|x| x.1).collect();
            assert_eq!(&probes.lists[qi * 5..qi * 5 + 5], &want[..]);
        }
    }

    /// Fast-scan's approximate scores stay within the quantization bound of the float scores.
    #[test]
    fn fast_scan_scores_track_reconstructions() {
        for metric in [Metric::L2, Metric::InnerProduct] {
            let (idx, q) = index_bits(metric, RefineKind::None, 4);
            let b = CpuBackend;
            let p = b.prepare(idx.clone()).unwrap();
            let probes = b.coarse_search(&p, &q, 3).unwrap();
            let tables = b.lookup_tables(&p, &q).unwrap();
            let cands = b.scan(&p, &probes, &tables, 20).unwrap();
            let dim = idx.dim();
            let cs = idx.pq().code_size();
            let mut recon = vec![0f32; dim];
            let mut worst = 0f32;
            for qi in 0..q.len() / dim {
                for j in 0..20 {
                    let slot = cands.slots[qi * 20 + j];
                    let list = &idx.lists()[slot.list as usize];
                    let code = list.code(slot.offset as usize, cs, idx.layout());
                    idx.pq().decode(&code, &mut recon);
                    let full = with_centroid(&idx, slot.list, &recon);
                    let want = metric.score(&q[qi * dim..(qi + 1) * dim], &full);
                    worst =
                        worst.max((cands.scores[qi * 20 + j] - want).abs() / (1.0 + want.abs()));
                }
            }
            assert!(worst < 0.05, "{metric}: fast-scan score off by {worst}");
        }
    }

    #[test]
    fn refined_exhaustive_search_is_exact_and_deletes_are_honoured() {
        for (metric, bits) in [
            (Metric::L2, 8),
            (Metric::InnerProduct, 8),
            (Metric::Cosine, 8),
            (Metric::L2, 4),
            (Metric::InnerProduct, 4),
        ] {
            let (idx, q) = index_bits(metric, RefineKind::F32, bits);
            let mut idx = Arc::try_unwrap(idx).unwrap();
            idx.delete(&[1, 2, 3, 500]);
            let idx = Arc::new(idx);
            let b = CpuBackend;
            let p = b.prepare(idx.clone()).unwrap();
            let res = b
                .search(
                    &p,
                    &q,
                    &SearchParams {
                        k: 10,
                        nprobe: 12,
                        refine_factor: 300,
                    },
                )
                .unwrap();
            // Brute force over the live vectors.
            let g = ClusteredGaussian::new(24, 10, 0.4, 3);
            let mut exact = crate::bruteforce::ExactSearch::new(metric, 24, &q, 10).unwrap();
            let base = g.rows(0, 2000);
            for (i, row) in base.chunks(24).enumerate() {
                if ![1, 2, 3, 500].contains(&i) {
                    exact.add_chunk(row, i as u64).unwrap();
                }
            }
            let want = exact.finish();
            assert_eq!(res.ids, want.ids, "{metric}");
            for (a, b) in res.distances.iter().zip(&want.distances) {
                assert!(
                    (a - b).abs() <= 1e-3 * (1.0 + b.abs()),
                    "{metric}: {a} vs {b}"
                );
            }
        }
    }

    /// The batch scan (list-major for fast-scan) selects exactly what one query at a time
    /// selects: same candidates in the same order, deletes honoured.
    #[test]
    fn batch_scan_equals_one_query_at_a_time() {
        for (metric, bits) in [
            (Metric::L2, 4),
            (Metric::InnerProduct, 4),
            (Metric::Cosine, 4),
            (Metric::InnerProduct, 8),
        ] {
            let (idx, q) = index_bits(metric, RefineKind::None, bits);
            let mut idx = Arc::try_unwrap(idx).unwrap();
            idx.delete(&[5, 6, 7, 900]);
            let b = CpuBackend;
            let p = b.prepare(Arc::new(idx)).unwrap();
            let dim = 24;
            let nq = q.len() / dim;
            let probes = b.coarse_search(&p, &q, 5).unwrap();
            let tables = b.lookup_tables(&p, &q).unwrap();
            let batch = b.scan(&p, &probes, &tables, 37).unwrap();
            for i in 0..nq {
                let one = &q[i * dim..(i + 1) * dim];
                let probes = b.coarse_search(&p, one, 5).unwrap();
                let tables = b.lookup_tables(&p, one).unwrap();
                let single = b.scan(&p, &probes, &tables, 37).unwrap();
                assert_eq!(
                    single.slots,
                    batch.slots[i * 37..(i + 1) * 37],
                    "{metric} q{i}"
                );
                // Tables of a batch come from a GEMM: the last bits may differ.
                for (a, b) in single
                    .scores
                    .iter()
                    .zip(&batch.scores[i * 37..(i + 1) * 37])
                {
                    assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "{metric} q{i}");
                }
            }
        }
    }

    #[test]
    fn small_lists_pad_with_minus_one() {
        let (idx, q) = index(Metric::L2, RefineKind::None);
        let b = CpuBackend;
        let p = b.prepare(idx).unwrap();
        let res = b
            .search(
                &p,
                &q[..24],
                &SearchParams {
                    k: 2000,
                    nprobe: 1,
                    refine_factor: 1,
                },
            )
            .unwrap();
        let found = res.ids.iter().filter(|&&i| i >= 0).count();
        assert!(found < 2000 && res.ids[found..].iter().all(|&i| i == -1));
        assert!(res.distances[found..].iter().all(|d| *d == f32::INFINITY));
        assert!(res.distances[..found].windows(2).all(|w| w[0] <= w[1]));
    }
}
