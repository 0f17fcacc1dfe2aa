//! The backend boundary: every search stage of an IVF-PQ index behind one batch-first trait.
//!
//! An index is prepared once for a backend ([`Backend::prepare`]: an upload to a device, or
//! precomputed tables on the CPU) and searched many times with per-call [`SearchParams`]. The
//! stages are, in order:
//! 1. [`Backend::coarse_search`]: the nprobe nearest coarse centroids of each query;
//! 2. [`Backend::lookup_tables`]: per query, `M × ksub` PQ lookup tables;
//! 3. [`Backend::scan`]: the probed lists' codes scored through the tables, keeping each
//!    query's best `keep` candidates (the per-query top-k);
//! 4. [`Backend::refine`]: candidates re-ranked by exact distance on raw vectors (or, without
//!    raw vectors, the best k approximate candidates), giving ids and reported distances.
//!
//! [`Backend::search`] validates the batch, tiles it and runs the stages; a backend may
//! override it to fuse stages. The CPU backend is the reference the others must match.

pub mod allow;
pub mod counters;
pub mod cpu;
pub mod planner;

pub use allow::{AllowSet, QueryFilters, NO_FILTER};
pub use counters::DeviceCounters;

use std::sync::Arc;

use crate::error::EngineError;
use crate::index::IvfPqIndex;
use crate::metric::Metric;

/// Largest k a search may ask for.
pub const MAX_K: usize = 16_384;
/// Largest number of candidates (`k × refine_factor`) a search may keep per query.
pub const MAX_CANDIDATES: usize = 1 << 20;

/// Per-call search parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchParams {
    /// Neighbours returned per query.
    pub k: usize,
    /// Lists probed per query.
    pub nprobe: usize,
    /// With raw vectors, `k × refine_factor` PQ candidates are re-ranked exactly. Must be 1
    /// for an index without raw vectors.
    pub refine_factor: usize,
}

impl SearchParams {
    /// Checks the parameters against an index.
    pub fn validate(&self, index: &IvfPqIndex) -> Result<(), EngineError> {
        if self.k == 0 || self.k > MAX_K {
            return Err(EngineError::KOutOfRange {
                k: self.k,
                max: MAX_K,
            });
        }
        if self.nprobe == 0 || self.nprobe > index.nlist() {
            return Err(EngineError::NprobeOutOfRange {
                nprobe: self.nprobe,
                nlist: index.nlist(),
            });
        }
        if self.refine_factor == 0 {
            return Err(EngineError::InvalidParameter {
                name: "refine_factor",
                reason: "must be at least 1".into(),
            });
        }
        if self.refine_factor > 1 && index.params().refine == crate::RefineKind::None {
            return Err(EngineError::RefineUnavailable {
                refine_factor: self.refine_factor,
            });
        }
        if self.k.saturating_mul(self.refine_factor) > MAX_CANDIDATES {
            return Err(EngineError::InvalidParameter {
                name: "refine_factor",
                reason: format!(
                    "k × refine_factor = {} exceeds {MAX_CANDIDATES}",
                    self.k.saturating_mul(self.refine_factor)
                ),
            });
        }
        Ok(())
    }

    /// Candidates the scan keeps per query.
    pub fn candidates(&self) -> usize {
        self.k * self.refine_factor
    }
}

/// Output of the coarse stage: the probed lists of each query, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct Probes {
    /// Lists per query.
    pub nprobe: usize,
    /// `nq × nprobe` list numbers.
    pub lists: Vec<u32>,
    /// `nq × nprobe` coarse scores: `-<q, c>` for inner-product metrics, `‖q − c‖²` for L2.
    pub scores: Vec<f32>,
}

/// Output of the table stage.
#[derive(Debug, Clone, PartialEq)]
pub struct LookupTables {
    /// Sub-quantizers.
    pub m: usize,
    /// Entries per sub-quantizer table.
    pub ksub: usize,
    /// `nq × M × ksub` values: `-<q_m, C_mj>` for inner-product metrics, `-2 <q_m, C_mj>`
    /// for L2 (where the per-list term `‖C_mj‖² + 2 <c_m, C_mj>` is added by the scan).
    pub values: Vec<f32>,
}

/// A candidate's place in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot {
    /// List number.
    pub list: u32,
    /// Position in the list.
    pub offset: u32,
}

impl Slot {
    /// Marks a padding entry (fewer candidates than asked for).
    pub const NONE: Slot = Slot {
        list: u32::MAX,
        offset: u32::MAX,
    };
}

/// Output of the scan stage: each query's best candidates by approximate score.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidates {
    /// Candidates per query (padded with [`Slot::NONE`] and infinite scores).
    pub per_query: usize,
    /// `nq × per_query` slots, best first within each query.
    pub slots: Vec<Slot>,
    /// `nq × per_query` approximate scores (lower is better).
    pub scores: Vec<f32>,
}

/// Final search results.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbors {
    /// Neighbours per query.
    pub k: usize,
    /// `nq × k` ids, best first; `-1` pads queries with fewer than k results.
    pub ids: Vec<i64>,
    /// `nq × k` distances in the metric's reported direction (see [`Metric`]); padding is
    /// `+∞` for L2 and `-∞` for inner-product metrics.
    pub distances: Vec<f32>,
}

impl Neighbors {
    /// Empty results for `k` neighbours.
    pub fn new(k: usize) -> Self {
        Neighbors {
            k,
            ids: Vec::new(),
            distances: Vec::new(),
        }
    }
    /// Number of queries.
    pub fn len(&self) -> usize {
        self.ids.len().checked_div(self.k).unwrap_or(0)
    }
    /// True when there are no queries.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    /// Ids of query `q`.
    pub fn ids_of(&self, q: usize) -> &[i64] {
        &self.ids[q * self.k..(q + 1) * self.k]
    }
    /// Distances of query `q`.
    pub fn distances_of(&self, q: usize) -> &[f32] {
        &self.distances[q * self.k..(q + 1) * self.k]
    }
    /// Appends another batch's results (same k).
    pub fn extend(&mut self, other: Neighbors) {
        debug_assert_eq!(self.k, other.k);
        self.ids.extend(other.ids);
        self.distances.extend(other.distances);
    }
    /// The padding distance of a metric.
    pub fn padding_distance(metric: Metric) -> f32 {
        if metric.is_inner_product() {
            f32::NEG_INFINITY
        } else {
            f32::INFINITY
        }
    }
}

/// An index prepared for one backend.
pub trait PreparedIndex: Send + Sync {
    /// The index it was prepared from.
    fn index(&self) -> &IvfPqIndex;
}

/// A search backend (CPU, wgpu, CUDA). Every method takes a batch of queries: row-major,
/// `nq × dim`, already validated and normalised by [`Backend::search`].
pub trait Backend: Send + Sync {
    /// The backend's form of a prepared index (device buffers, precomputed tables).
    type Prepared: PreparedIndex;

    /// Short name (`cpu`, `wgpu`, `cuda`).
    fn name(&self) -> &'static str;

    /// Prepares an index for repeated searches.
    fn prepare(&self, index: Arc<IvfPqIndex>) -> Result<Self::Prepared, EngineError>;

    /// Prepares a later version of an already prepared index (after adds or deletes), reusing
    /// what did not change. The default prepares from scratch.
    fn refresh(
        &self,
        prepared: &Self::Prepared,
        index: Arc<IvfPqIndex>,
    ) -> Result<Self::Prepared, EngineError> {
        let _ = prepared;
        self.prepare(index)
    }

    /// Stage 1: the `nprobe` best lists per query.
    fn coarse_search(
        &self,
        prepared: &Self::Prepared,
        queries: &[f32],
        nprobe: usize,
    ) -> Result<Probes, EngineError>;

    /// Stage 2: the PQ lookup tables of each query.
    fn lookup_tables(
        &self,
        prepared: &Self::Prepared,
        queries: &[f32],
    ) -> Result<LookupTables, EngineError>;

    /// Stage 3: scan the probed lists, keeping each query's best `keep` candidates.
    fn scan(
        &self,
        prepared: &Self::Prepared,
        probes: &Probes,
        tables: &LookupTables,
        keep: usize,
    ) -> Result<Candidates, EngineError>;

    /// Stage 3 under per-query allow-sets: an entry a query's set excludes is never offered
    /// to its selection (checked inside the scan loop, like a tombstone); queries without a
    /// set scan as in [`Backend::scan`]. Backends without it report so.
    fn scan_filtered(
        &self,
        prepared: &Self::Prepared,
        probes: &Probes,
        tables: &LookupTables,
        keep: usize,
        filters: QueryFilters<'_>,
    ) -> Result<Candidates, EngineError> {
        let _ = (prepared, probes, tables, keep, filters);
        Err(EngineError::BackendUnavailable {
            backend: self.name(),
            reason: "filtered search is not supported by this backend".into(),
        })
    }

    /// Stage 4: the final `k` neighbours of each query from its candidates.
    fn refine(
        &self,
        prepared: &Self::Prepared,
        queries: &[f32],
        candidates: &Candidates,
        k: usize,
    ) -> Result<Neighbors, EngineError>;

    /// What the backend has asked of its device so far (see [`counters`]), where it counts;
    /// `None` by default (the CPU).
    fn counters(&self) -> Option<DeviceCounters> {
        None
    }

    /// Queries per tile of [`Backend::search`] (bounds the lookup tables' memory).
    fn max_batch(&self, prepared: &Self::Prepared) -> usize {
        let per_query = prepared.index().pq().m() * prepared.index().pq().ksub() * 4;
        ((64 << 20) / per_query.max(1)).clamp(1, 1024)
    }

    /// Searches a batch: validates, normalises (cosine), tiles and runs the four stages.
    fn search(
        &self,
        prepared: &Self::Prepared,
        queries: &[f32],
        params: &SearchParams,
    ) -> Result<Neighbors, EngineError> {
        run_stages(self, prepared, queries, params)
    }

    /// Searches a batch in which each query may have an allow-set (see [`planner`]: exact
    /// search over few allowed entries, else the IVF scan with nprobe widened until enough
    /// allowed entries were seen). Queries with different filters share the batch.
    fn search_filtered(
        &self,
        prepared: &Self::Prepared,
        queries: &[f32],
        params: &SearchParams,
        filters: QueryFilters<'_>,
    ) -> Result<Neighbors, EngineError> {
        planner::search_filtered(self, prepared, queries, params, filters)
    }

    /// Searches one batch against several indexes (a collection's sealed segments): each
    /// index's own best `params.k` per query, in the order given. The device backends run
    /// it as one batch when the indexes share their quantizers (one upload of the queries,
    /// one coarse search and one set of tables for all, one download of every result); the
    /// default searches each in turn.
    fn search_many(
        &self,
        prepared: &[&Self::Prepared],
        queries: &[f32],
        params: &SearchParams,
    ) -> Result<Vec<Neighbors>, EngineError> {
        search_each(self, prepared, queries, params)
    }
}

/// [`Backend::search_many`]'s default: each index searched in turn.
pub fn search_each<B: Backend + ?Sized>(
    backend: &B,
    prepared: &[&B::Prepared],
    queries: &[f32],
    params: &SearchParams,
) -> Result<Vec<Neighbors>, EngineError> {
    prepared
        .iter()
        .map(|p| backend.search(p, queries, params))
        .collect()
}

/// A shared backend is a backend: every method goes to the one behind the `Arc` (how a
/// server hands one device to many collections).
impl<B: Backend + ?Sized> Backend for Arc<B> {
    type Prepared = B::Prepared;

    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn prepare(&self, index: Arc<IvfPqIndex>) -> Result<Self::Prepared, EngineError> {
        (**self).prepare(index)
    }

    fn refresh(
        &self,
        prepared: &Self::Prepared,
        index: Arc<IvfPqIndex>,
    ) -> Result<Self::Prepared, EngineError> {
        (**self).refresh(prepared, index)
    }

    fn coarse_search(
        &self,
        prepared: &Self::Prepared,
        queries: &[f32],
        nprobe: usize,
    ) -> Result<Probes, EngineError> {
        (**self).coarse_search(prepared, queries, nprobe)
    }

    fn lookup_tables(
        &self,
        prepared: &Self::Prepared,
        queries: &[f32],
    ) -> Result<LookupTables, EngineError> {
        (**self).lookup_tables(prepared, queries)
    }

    fn scan(
        &self,
        prepared: &Self::Prepared,
        probes: &Probes,
        tables: &LookupTables,
        keep: usize,
    ) -> Result<Candidates, EngineError> {
        (**self).scan(prepared, probes, tables, keep)
    }

    fn scan_filtered(
        &self,
        prepared: &Self::Prepared,
        probes: &Probes,
        tables: &LookupTables,
        keep: usize,
        filters: QueryFilters<'_>,
    ) -> Result<Candidates, EngineError> {
        (**self).scan_filtered(prepared, probes, tables, keep, filters)
    }

    fn refine(
        &self,
        prepared: &Self::Prepared,
        queries: &[f32],
        candidates: &Candidates,
        k: usize,
    ) -> Result<Neighbors, EngineError> {
        (**self).refine(prepared, queries, candidates, k)
    }

    fn search_filtered(
        &self,
        prepared: &Self::Prepared,
        queries: &[f32],
        params: &SearchParams,
        filters: QueryFilters<'_>,
    ) -> Result<Neighbors, EngineError> {
        (**self).search_filtered(prepared, queries, params, filters)
    }

    fn counters(&self) -> Option<DeviceCounters> {
        (**self).counters()
    }

    fn max_batch(&self, prepared: &Self::Prepared) -> usize {
        (**self).max_batch(prepared)
    }

    fn search(
        &self,
        prepared: &Self::Prepared,
        queries: &[f32],
        params: &SearchParams,
    ) -> Result<Neighbors, EngineError> {
        (**self).search(prepared, queries, params)
    }

    fn search_many(
        &self,
        prepared: &[&Self::Prepared],
        queries: &[f32],
        params: &SearchParams,
    ) -> Result<Vec<Neighbors>, EngineError> {
        (**self).search_many(prepared, queries, params)
    }
}

/// Work items one block (workgroup) of the GPU backends' 8-bit scan takes in turn: a query's
/// items are consecutive, so a block stages its table once for the group instead of once per
/// item. From 1 (small batches: every item its own block, to fill the device) to 8 (from
/// 16,384 items on).
pub fn scan_items_per_block(items: usize) -> usize {
    (items / 2048).clamp(1, 8)
}

/// The largest `keep` (`k × refine_factor`) the GPU backends select inside the scan (each
/// block's warps keep their best in shared-memory queues of up to 256 entries and write only
/// those); above it the scan writes every score and top-k rounds select.
pub const FUSED_SELECT_MAX_KEEP: usize = 256;

/// Blocks the fused scan + selection aims at for a batch: enough (≈ 31 per SM of an H100) for
/// lists of unequal lengths to even out across the device.
const FUSED_TARGET_BLOCKS: usize = 4096;

/// Probes one block of the fused scan + selection takes in turn, for `rows` queries of
/// `nprobe` probes each: as many as keep about [`FUSED_TARGET_BLOCKS`] blocks (at least 1,
/// at most `nprobe`). A query's probes are cut into `nprobe.div_ceil(group)` parts, and each
/// part writes `keep` candidates.
pub fn fused_scan_group(rows: usize, nprobe: usize) -> usize {
    (rows * nprobe)
        .div_ceil(FUSED_TARGET_BLOCKS)
        .clamp(1, nprobe.max(1))
}

/// The largest `nprobe` the CUDA backend selects inside the coarse product
/// (`coarse_select`: each block keeps 128 queries' queues of up to 64 probes in shared memory
/// and writes only those); above it the coarse scores are written and top-k rounds select.
pub const COARSE_SELECT_MAX_KEEP: usize = 64;

/// Queries, and centroids, of one tile of the GPU backends' coarse product.
pub const COARSE_TILE: usize = 128;

/// Blocks the coarse product + selection aims at for a batch: two per SM of an H100 (its
/// shared memory holds one or two), so a block's span of centroids stays long and its output
/// — `nprobe` probes per query and span — small.
const COARSE_SELECT_TARGET_BLOCKS: usize = 256;

/// Centroids one block of the coarse product + selection scores in turn for `rows` queries
/// and `nlist` lists: a multiple of [`COARSE_TILE`], as many tiles as leave about
/// [`COARSE_SELECT_TARGET_BLOCKS`] blocks in the batch (the whole of `nlist` when the batch
/// alone fills them). A query's lists are cut into `nlist.div_ceil(span)` spans, each writing
/// its best `nprobe`.
pub fn coarse_select_span(rows: usize, nlist: usize) -> usize {
    let query_tiles = rows.div_ceil(COARSE_TILE).max(1);
    let list_tiles = nlist.div_ceil(COARSE_TILE).max(1);
    let parts = COARSE_SELECT_TARGET_BLOCKS
        .div_ceil(query_tiles)
        .clamp(1, list_tiles);
    list_tiles.div_ceil(parts) * COARSE_TILE
}

/// The coarse term a list adds to every score of its entries: the list's coarse score when
/// codes are residuals (the score then splits into query–centroid and query–residual parts),
/// zero when codes encode the vectors themselves (inner-product metrics only). Every backend
/// uses this, so their scans agree.
#[inline]
pub fn list_bias(index: &IvfPqIndex, coarse_score: f32) -> f32 {
    if index.params().by_residual() {
        coarse_score
    } else {
        0.0
    }
}

/// One bit per global slot (the entries in list order), set where the entry is deleted: the
/// tombstone bitmap the device backends upload.
pub fn tombstone_bitmap(index: &IvfPqIndex) -> Vec<u32> {
    let lists = index.lists();
    let total: usize = lists.iter().map(|l| l.len()).sum();
    let mut dead = vec![0u32; total.div_ceil(32).max(1)];
    let mut gslot = 0usize;
    for list in lists {
        if list.tombstones().is_some() {
            for i in 0..list.len() {
                if list.is_deleted(i) {
                    let s = gslot + i;
                    dead[s / 32] |= 1 << (s % 32);
                }
            }
        }
        gslot += list.len();
    }
    dead
}

/// L2 metrics: the per-list table terms `‖C_mj‖² + 2 <c_l,m, C_mj>` (`nlist × M × ksub`)
/// that the scan adds to a query's `-2 <q_m, C_mj>` table for list `l`; `None` for
/// inner-product metrics. Every backend uses these very values, so their scans agree.
pub fn l2_list_terms(index: &IvfPqIndex) -> Option<Vec<f32>> {
    use rayon::prelude::*;
    if index.metric().is_inner_product() {
        return None;
    }
    let pq = index.pq();
    let (m, ksub) = (pq.m(), pq.ksub());
    let mut terms = vec![0f32; index.nlist() * m * ksub];
    pq.inner_product_tables(index.centroids(), &mut terms);
    let norms = pq.centroid_norms();
    terms.par_chunks_mut(m * ksub).for_each(|t| {
        t.iter_mut().zip(norms).for_each(|(v, n)| *v = n + 2.0 * *v);
    });
    Some(terms)
}

/// The default search: validation, normalisation, tiling to [`Backend::max_batch`] and the
/// four stages in order.
pub fn run_stages<B: Backend + ?Sized>(
    backend: &B,
    prepared: &B::Prepared,
    queries: &[f32],
    params: &SearchParams,
) -> Result<Neighbors, EngineError> {
    let index = prepared.index();
    params.validate(index)?;
    let queries = index.prepare_queries(queries)?;
    let dim = index.dim();
    let tile = backend.max_batch(prepared);
    let mut out = Neighbors::new(params.k);
    for chunk in queries.chunks(tile * dim) {
        let probes = backend.coarse_search(prepared, chunk, params.nprobe)?;
        let tables = backend.lookup_tables(prepared, chunk)?;
        let candidates = backend.scan(prepared, &probes, &tables, params.candidates())?;
        out.extend(backend.refine(prepared, chunk, &candidates, params.k)?);
    }
    Ok(out)
}
