//! Segments: the parts a collection's points live in. The appendable segment takes new points;
//! sealed segments are immutable but for deletes. Before training every segment is flat (exact
//! search); after, every segment is an IVF-PQ index encoded with the collection's one set of
//! trained quantizers, so segments merge by copying codes, never re-encoding.
//!
//! A segment is never changed in place: a write builds the next version of the segments it
//! touches (cheap clones: shared list data, persistent id maps) and publishes it.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use quiver_engine::backend::allow::{allow_set, field_indexes_for, IndexRows};
use quiver_engine::backend::cpu::{CpuBackend, CpuPrepared};
use quiver_engine::backend::{Backend, Neighbors, PreparedIndex, QueryFilters, SearchParams};
use quiver_engine::dense_set::{self, DenseSet};
use quiver_engine::index::EncodedRows;
use quiver_engine::payload::fields::{FieldIndexes, FieldSpec};
use quiver_engine::payload::filter::{Filter, Rows as _};
use quiver_engine::sparse::{SparseIndex, SparseVector};
use quiver_engine::{EngineError, FlatIndex, IvfPqIndex, Metric, RefineKind};

/// Search parameters as a client sent them; zeros mean "the default", resolved per segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SearchKey {
    /// Neighbours per query.
    pub k: usize,
    /// Lists probed (0: min(32, nlist)).
    pub nprobe: usize,
    /// Refine factor (0: 10 with raw vectors, else 1).
    pub refine_factor: usize,
}

/// Default nprobe: min(32, nlist).
pub const DEFAULT_NPROBE: usize = 32;
/// Default refine factor when raw vectors are kept.
pub const DEFAULT_REFINE_FACTOR: usize = 10;

/// The engine parameters `key` resolves to for an index with `nlist` lists and raw vectors
/// of kind `refine`.
pub fn resolve(key: SearchKey, nlist: usize, refine: RefineKind) -> SearchParams {
    let nprobe = if key.nprobe == 0 {
        DEFAULT_NPROBE.min(nlist)
    } else {
        key.nprobe
    };
    let refine_factor = match (key.refine_factor, refine) {
        (0, RefineKind::None) => 1,
        (0, _) => DEFAULT_REFINE_FACTOR,
        (r, _) => r,
    };
    SearchParams {
        k: key.k,
        nprobe,
        refine_factor,
    }
}

/// True when `needle` occurs in `haystack`.
fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// How a segment is searched.
pub enum SegmentIndex<B: Backend> {
    /// Exact search over raw vectors (untrained collection).
    Flat(FlatIndex),
    /// IVF-PQ searched by the CPU backend: the appendable segment, or a sealed one not yet
    /// uploaded to the device.
    Cpu(CpuPrepared),
    /// IVF-PQ prepared on the device backend (uploaded once, when sealed).
    Device(B::Prepared),
}

/// One segment version.
pub struct Segment<B: Backend> {
    /// Number, unique in the collection (names its files).
    pub id: u64,
    /// Its index.
    pub index: SegmentIndex<B>,
    /// Ids deleted from it since it was sealed, in order (persisted beside its file; carried
    /// over to a merge's result when deleted while the merge ran).
    pub deleted: imbl::Vector<u64>,
    /// Its field indexes, once built.
    fields: FieldCache,
    /// Its sparse vectors' inverted indexes, by payload key, built on first use (see
    /// [`Segment::sparse_index`]).
    sparse: DerivedCache<SparseIndex>,
    /// Its named spaces' dense vectors, by payload key, gathered on first use (see
    /// [`Segment::dense_set`]).
    dense: DerivedCache<DenseSet>,
    /// Its multi-vector spaces' vectors, by payload key, gathered on first use (see
    /// [`Segment::multi_set`]).
    multi: DerivedCache<DenseSet>,
}

/// Structures a segment derives from its points' payloads on first use (sparse vectors'
/// inverted indexes, the dense vectors of named spaces), by the payload key they come from,
/// each with the length of the segment's `deleted` list when it was built: kept while its
/// rows stay as they are (deletes only mark rows: a search passes over rows no longer live,
/// and the ids deleted since it was built are the rest of `deleted`), dropped by any write
/// to the appendable segment.
struct DerivedCache<T>(Mutex<HashMap<String, (Arc<T>, usize)>>);

impl<T> Default for DerivedCache<T> {
    fn default() -> Self {
        DerivedCache(Mutex::new(HashMap::new()))
    }
}

impl<T> DerivedCache<T> {
    fn copy(&self) -> Self {
        DerivedCache(Mutex::new(self.0.lock().clone()))
    }

    fn clear(&mut self) {
        self.0.get_mut().clear();
    }
}

/// A segment's sparse index as of now: the index, and the ids deleted since it was built
/// (rows it holds that are no longer live).
pub struct SparseView {
    /// The index.
    pub index: Arc<SparseIndex>,
    /// Ids of its rows deleted since.
    pub dead: Vec<u64>,
}

/// A segment's field indexes (value → rows, for the collection's indexed fields): built on
/// first use, or ahead of it when the segment is sealed, merged or loaded; kept while the
/// segment's rows stay as they are (deletes only mark rows), rebuilt when the indexed fields
/// change. A write to the appendable segment drops them.
#[derive(Default)]
struct FieldCache(Mutex<Option<Arc<FieldIndexes>>>);

impl FieldCache {
    fn of(f: Option<Arc<FieldIndexes>>) -> FieldCache {
        FieldCache(Mutex::new(f))
    }
}

/// True when `built` indexes exactly the fields `specs`.
fn indexes_exactly(built: &FieldIndexes, specs: &[FieldSpec]) -> bool {
    built.specs().count() == specs.len()
        && specs
            .iter()
            .all(|s| built.get(&s.key).is_some_and(|f| f.spec() == s))
}

impl<B: Backend> std::fmt::Debug for Segment<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.index {
            SegmentIndex::Flat(_) => "flat",
            SegmentIndex::Cpu(_) => "ivf-cpu",
            SegmentIndex::Device(_) => "ivf-device",
        };
        write!(f, "Segment({}, {kind}, {} live)", self.id, self.len())
    }
}

impl<B: Backend> Segment<B> {
    /// A segment over `index`.
    pub fn new(id: u64, index: SegmentIndex<B>) -> Self {
        Segment {
            id,
            index,
            deleted: imbl::Vector::new(),
            fields: FieldCache::default(),
            sparse: DerivedCache::default(),
            dense: DerivedCache::default(),
            multi: DerivedCache::default(),
        }
    }

    /// A copy of this segment (`index` the same rows: a copy of this one's index, or it with
    /// rows marked deleted), keeping its field indexes.
    pub fn with_index(&self, index: SegmentIndex<B>, deleted: imbl::Vector<u64>) -> Self {
        Segment {
            id: self.id,
            index,
            deleted,
            fields: FieldCache::of(self.fields.0.lock().clone()),
            sparse: self.sparse.copy(),
            dense: self.dense.copy(),
            multi: self.multi.copy(),
        }
    }

    /// Rows a filter is evaluated over (deleted ones included).
    fn row_count(&self) -> u32 {
        match &self.index {
            SegmentIndex::Flat(f) => f.rows(None).len(),
            _ => self.ivf().map_or(0, |i| IndexRows::new(i, None).len()),
        }
    }

    /// The field indexes for `specs` (`None` when there are none): the ones kept, or built now
    /// (and kept) when those index other fields or other rows.
    pub fn field_indexes(&self, specs: &[FieldSpec]) -> Option<Arc<FieldIndexes>> {
        if specs.is_empty() {
            return None;
        }
        let mut kept = self.fields.0.lock();
        let rows = self.row_count();
        if let Some(f) = kept.as_ref() {
            if f.rows() == rows && indexes_exactly(f, specs) {
                return Some(f.clone());
            }
        }
        let built = Arc::new(match &self.index {
            SegmentIndex::Flat(f) => f.field_indexes(specs),
            _ => match self.ivf() {
                Some(i) => field_indexes_for(i, specs),
                None => return None,
            },
        });
        *kept = Some(built.clone());
        Some(built)
    }

    /// True when the field indexes kept are those of `specs` over the rows as they are.
    pub fn has_field_indexes(&self, specs: &[FieldSpec]) -> bool {
        specs.is_empty()
            || self
                .fields
                .0
                .lock()
                .as_ref()
                .is_some_and(|f| f.rows() == self.row_count() && indexes_exactly(f, specs))
    }

    /// The field indexes kept, if they cover the segment's rows as they are.
    pub fn kept_field_indexes(&self) -> Option<Arc<FieldIndexes>> {
        let kept = self.fields.0.lock().clone()?;
        (kept.rows() == self.row_count()).then_some(kept)
    }

    /// The inverted index of the sparse vectors its live points hold under the payload key
    /// `key` (points without one left out): the one kept, or built now from the payloads
    /// (and kept). Rows deleted since it was built are still in it, listed in `dead`
    /// ([`Self::contains`] tells too).
    pub fn sparse_index(&self, key: &str) -> SparseView {
        let (index, dead) = self.derived(&self.sparse, key, |rows| {
            SparseIndex::build(rows.filter_map(|(id, v)| Some((id, SparseVector::from_json(&v)?))))
        });
        SparseView { index, dead }
    }

    /// The dense vectors its live points hold under the payload key `key` (a named space's,
    /// [`quiver_engine::dense_set`]; points without one left out), with the ids deleted since
    /// they were gathered: the set kept, or gathered now from the payloads (and kept).
    pub fn dense_set(&self, key: &str, metric: Metric, dim: usize) -> (Arc<DenseSet>, Vec<u64>) {
        self.derived(&self.dense, key, |rows| {
            DenseSet::build(
                metric,
                dim,
                rows.filter_map(|(id, v)| Some((id, dense_set::decode(v.as_str()?)?))),
            )
        })
    }

    /// The multi-vectors its live points hold under the payload key `key` (a multi-vector
    /// space's: each point's vectors as consecutive rows, [`DenseSet::build_multi`]), with the
    /// ids deleted since they were gathered.
    pub fn multi_set(&self, key: &str, metric: Metric, dim: usize) -> (Arc<DenseSet>, Vec<u64>) {
        self.derived(&self.multi, key, |rows| {
            DenseSet::build_multi(
                metric,
                dim,
                rows.filter_map(|(id, v)| Some((id, dense_set::decode(v.as_str()?)?))),
            )
        })
    }

    /// The structure `cache` keeps for the payload key `key`, or `build` of the live points'
    /// values under it (kept), with the ids deleted since it was built.
    fn derived<T>(
        &self,
        cache: &DerivedCache<T>,
        key: &str,
        build: impl FnOnce(&mut dyn Iterator<Item = (u64, serde_json::Value)>) -> T,
    ) -> (Arc<T>, Vec<u64>) {
        if let Some((kept, at)) = cache.0.lock().get(key) {
            return (
                kept.clone(),
                self.deleted.iter().skip(*at).copied().collect(),
            );
        }
        // Built without the lock held: a write copying this segment (`with_index`) does not
        // wait for it; two searches may build it at once, and the later one is kept.
        let mut ids = Vec::new();
        self.for_each_matching(&Filter::default(), None, |id| ids.push(id));
        // The key as JSON writes it (quoted and escaped).
        let needle = serde_json::to_string(key).unwrap_or_default();
        // One payload parsed at a time.
        let mut values = ids.into_iter().filter_map(|id| {
            let bytes = self.payload(id)?;
            // Most payloads without the key are passed over unparsed.
            if !contains_bytes(bytes, needle.as_bytes()) {
                return None;
            }
            let mut map = quiver_engine::payload::decode(bytes);
            Some((id, map.remove(key)?))
        });
        let built = Arc::new(build(&mut values));
        cache
            .0
            .lock()
            .insert(key.to_string(), (built.clone(), self.deleted.len()));
        (built, Vec::new())
    }

    /// Live points.
    pub fn len(&self) -> usize {
        match &self.index {
            SegmentIndex::Flat(f) => f.len(),
            _ => self.ivf().map_or(0, |i| i.len()),
        }
    }

    /// True when no point is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The IVF-PQ index of a trained segment.
    pub fn ivf(&self) -> Option<&IvfPqIndex> {
        match &self.index {
            SegmentIndex::Flat(_) => None,
            SegmentIndex::Cpu(p) => Some(p.index()),
            SegmentIndex::Device(p) => Some(p.index()),
        }
    }

    /// Slots held, deleted ones included (what a scan reads).
    pub fn slots(&self) -> usize {
        match &self.index {
            SegmentIndex::Flat(f) => f.len(),
            _ => self
                .ivf()
                .map_or(0, |i| i.lists().iter().map(|l| l.len()).sum()),
        }
    }

    /// True when `id` is live here.
    pub fn contains(&self, id: u64) -> bool {
        match &self.index {
            SegmentIndex::Flat(f) => f.contains(id),
            _ => self.ivf().is_some_and(|i| i.contains(id)),
        }
    }

    /// The stored vector of a live id.
    pub fn vector(&self, id: u64) -> Option<Vec<f32>> {
        match &self.index {
            SegmentIndex::Flat(f) => f.vector(id),
            _ => self.ivf()?.vector(id),
        }
    }

    /// The stored payload of a live id (empty: none).
    pub fn payload(&self, id: u64) -> Option<&[u8]> {
        match &self.index {
            SegmentIndex::Flat(f) => f.payload(id),
            _ => self.ivf()?.payload(id),
        }
    }

    /// The ids of the live points passing `filter`, evaluated through `fields` where they
    /// index a key (see [`Segment::field_indexes`]).
    pub fn matching(&self, filter: &Filter, fields: Option<&FieldIndexes>) -> Vec<u64> {
        match &self.index {
            SegmentIndex::Flat(f) => {
                let rows = f.rows(fields);
                filter
                    .evaluate(&rows)
                    .iter()
                    .filter(|&r| !rows.is_deleted(r))
                    .map(|r| rows.id(r))
                    .collect()
            }
            _ => match self.ivf() {
                Some(index) => {
                    let rows = IndexRows::new(index, fields);
                    filter
                        .evaluate(&rows)
                        .iter()
                        .filter(|&r| !rows.is_deleted(r))
                        .map(|r| rows.id(r))
                        .collect()
                }
                None => Vec::new(),
            },
        }
    }

    /// How many live points pass `filter` (no id list is built).
    pub fn count_matching(&self, filter: &Filter, fields: Option<&FieldIndexes>) -> usize {
        let mut n = 0;
        self.for_each_matching(filter, fields, |_| n += 1);
        n
    }

    /// The `n` smallest ids of live points passing `filter` that are at least `from`,
    /// ascending: a page of a scroll, in memory bounded by `n` (and the filter's bitmap),
    /// not by the segment's size.
    pub fn smallest_matching(
        &self,
        filter: &Filter,
        fields: Option<&FieldIndexes>,
        from: u64,
        n: usize,
    ) -> Vec<u64> {
        let mut heap = std::collections::BinaryHeap::with_capacity(n.min(1 << 16) + 1);
        if n > 0 {
            self.for_each_matching(filter, fields, |id| {
                if id < from {
                    return;
                }
                if heap.len() < n {
                    heap.push(id);
                } else if heap.peek().is_some_and(|&top| id < top) {
                    heap.pop();
                    heap.push(id);
                }
            });
        }
        heap.into_sorted_vec()
    }

    /// Calls `f` with the id of every live point passing `filter`, in row order.
    fn for_each_matching(
        &self,
        filter: &Filter,
        fields: Option<&FieldIndexes>,
        mut f: impl FnMut(u64),
    ) {
        match &self.index {
            SegmentIndex::Flat(flat) => {
                let rows = flat.rows(fields);
                for r in filter.evaluate(&rows).iter() {
                    if !rows.is_deleted(r) {
                        f(rows.id(r));
                    }
                }
            }
            _ => {
                if let Some(index) = self.ivf() {
                    let rows = IndexRows::new(index, fields);
                    for r in filter.evaluate(&rows).iter() {
                        if !rows.is_deleted(r) {
                            f(rows.id(r));
                        }
                    }
                }
            }
        }
    }

    /// Bytes of vectors, codes and (for the first trained segment) centroids.
    pub fn data_bytes(&self) -> usize {
        match &self.index {
            SegmentIndex::Flat(f) => f.data_bytes(),
            _ => self.ivf().map_or(0, |i| i.data_bytes()),
        }
    }

    /// The next version with `ids` deleted (those present), recording them when `sealed`;
    /// `None` when none is present.
    pub fn with_delete(
        &self,
        ids: &[u64],
        sealed: bool,
        cpu: &CpuBackend,
        device: &B,
    ) -> Result<Option<(Segment<B>, usize)>, EngineError> {
        let present: Vec<u64> = ids.iter().copied().filter(|&i| self.contains(i)).collect();
        if present.is_empty() {
            return Ok(None);
        }
        let index = match &self.index {
            SegmentIndex::Flat(f) => {
                let mut f = f.clone();
                f.delete(&present);
                SegmentIndex::Flat(f)
            }
            SegmentIndex::Cpu(p) => {
                let mut i = p.index().clone();
                i.delete(&present);
                SegmentIndex::Cpu(cpu.refresh(p, Arc::new(i))?)
            }
            SegmentIndex::Device(p) => {
                let mut i = p.index().clone();
                i.delete(&present);
                SegmentIndex::Device(device.refresh(p, Arc::new(i))?)
            }
        };
        let mut deleted = self.deleted.clone();
        if sealed {
            deleted.extend(present.iter().copied());
        }
        // Deletes only mark rows: the field indexes still apply; the sparse indexes too when
        // the deletes are recorded (they tell the rows no longer live).
        let next = self.with_index(index, deleted);
        if !sealed {
            next.sparse.0.lock().clear();
            next.dense.0.lock().clear();
            next.multi.0.lock().clear();
        }
        Ok(Some((next, present.len())))
    }

    /// Appendable segment: replaces or adds rows by id, with their payloads (empty: none),
    /// in place (the caller holds the only reference: see
    /// [`crate::version::Version::apply`]).
    pub fn upsert_in_place(
        &mut self,
        ids: &[u64],
        rows: Rows,
        payloads: &[Vec<u8>],
    ) -> Result<(), EngineError> {
        // Rows move: the field and sparse indexes no longer apply.
        *self.fields.0.get_mut() = None;
        self.sparse.clear();
        self.dense.clear();
        self.multi.clear();
        match (&mut self.index, rows) {
            (SegmentIndex::Flat(f), Rows::Raw(v)) => f.upsert_with_payloads(&v, ids, payloads),
            (SegmentIndex::Cpu(p), Rows::Encoded(mut e)) => {
                e.payloads = payloads.to_vec();
                let i = p.index_mut();
                i.delete(ids);
                i.push_encoded(&e, ids);
                Ok(())
            }
            _ => Err(EngineError::InvalidParameter {
                name: "rows",
                reason: "rows do not match the appendable segment's kind".into(),
            }),
        }
    }

    /// Appendable segment: deletes ids in place; returns how many were live.
    pub fn delete_in_place(&mut self, ids: &[u64]) -> Result<usize, EngineError> {
        // Not recorded in `deleted`: the derived structures would not know these rows are gone.
        self.sparse.clear();
        self.dense.clear();
        self.multi.clear();
        match &mut self.index {
            SegmentIndex::Flat(f) => Ok(f.delete(ids)),
            SegmentIndex::Cpu(p) => Ok(p.index_mut().delete(ids)),
            SegmentIndex::Device(_) => Err(EngineError::InvalidParameter {
                name: "segment",
                reason: "a device segment is never appendable".into(),
            }),
        }
    }

    /// Searches prepared queries (`nq × dim`); results padded to `key.k`.
    pub fn search(
        &self,
        queries: &[f32],
        key: SearchKey,
        cpu: &CpuBackend,
        device: &B,
    ) -> Result<Neighbors, EngineError> {
        let live = self.len();
        // Never ask a segment for more than it holds: buffers follow the real candidates.
        let k = key.k.min(live).max(1);
        let mut out = match &self.index {
            SegmentIndex::Flat(f) => f.search(queries, k)?,
            _ => {
                let index = self.ivf().expect("trained segment");
                let mut params = resolve(key, index.nlist(), index.params().refine);
                params.k = k;
                params.refine_factor = params.refine_factor.min(live.div_ceil(k)).max(1);
                match &self.index {
                    SegmentIndex::Cpu(p) => cpu.search(p, queries, &params)?,
                    SegmentIndex::Device(p) => device.search(p, queries, &params)?,
                    SegmentIndex::Flat(_) => unreachable!("matched above"),
                }
            }
        };
        if k < key.k {
            out = pad(out, key.k, self.metric());
        }
        Ok(out)
    }

    /// [`Segment::search`] with per-query filters (`of_query[q]` indexes `filters`,
    /// [`quiver_engine::backend::NO_FILTER`]: none): the exact search over allowed points of a flat segment, the
    /// filtered planner ([`Backend::search_filtered`]) on an IVF-PQ one. Filters are
    /// evaluated through the field indexes of `fields` (the collection's indexed fields).
    #[allow(clippy::too_many_arguments)]
    pub fn search_filtered(
        &self,
        queries: &[f32],
        key: SearchKey,
        filters: &[Filter],
        of_query: &[u32],
        fields: &[FieldSpec],
        cpu: &CpuBackend,
        device: &B,
    ) -> Result<Neighbors, EngineError> {
        let live = self.len();
        let k = key.k.min(live).max(1);
        let indexes = self.field_indexes(fields);
        let mut out = match &self.index {
            SegmentIndex::Flat(f) => {
                let rows = f.rows(indexes.as_deref());
                let sets: Vec<_> = filters.iter().map(|x| x.evaluate(&rows)).collect();
                f.search_filtered(queries, k, &sets, of_query)?
            }
            _ => {
                let index = self.ivf().expect("trained segment");
                let mut params = resolve(key, index.nlist(), index.params().refine);
                params.k = k;
                params.refine_factor = params.refine_factor.min(live.div_ceil(k)).max(1);
                let sets: Vec<_> = filters
                    .iter()
                    .map(|x| allow_set(index, indexes.as_deref(), x))
                    .collect();
                let qf = QueryFilters {
                    sets: &sets,
                    of_query,
                };
                match &self.index {
                    SegmentIndex::Cpu(p) => cpu.search_filtered(p, queries, &params, qf)?,
                    SegmentIndex::Device(p) => device.search_filtered(p, queries, &params, qf)?,
                    SegmentIndex::Flat(_) => unreachable!("matched above"),
                }
            }
        };
        if k < key.k {
            out = pad(out, key.k, self.metric());
        }
        Ok(out)
    }

    fn metric(&self) -> Metric {
        match &self.index {
            SegmentIndex::Flat(f) => f.metric(),
            _ => self.ivf().map_or(Metric::L2, |i| i.metric()),
        }
    }
}

/// Rows to append: raw (flat segments) or encoded with the collection's quantizers.
#[derive(Debug)]
pub enum Rows {
    /// Row-major vectors.
    Raw(Vec<f32>),
    /// Encoded rows.
    Encoded(EncodedRows),
}

impl Rows {
    /// True when these rows can be appended to a segment of this kind (raw rows to a flat
    /// segment, encoded rows to an IVF-PQ one).
    pub fn fits<B: Backend>(&self, index: &SegmentIndex<B>) -> bool {
        matches!(
            (self, index),
            (Rows::Raw(_), SegmentIndex::Flat(_))
                | (
                    Rows::Encoded(_),
                    SegmentIndex::Cpu(_) | SegmentIndex::Device(_)
                )
        )
    }
}

/// Pads `n` (fewer than `k` per query) to `k` per query.
pub(crate) fn pad(n: Neighbors, k: usize, metric: Metric) -> Neighbors {
    let nq = n.len();
    let mut out = Neighbors {
        k,
        ids: vec![-1; nq * k],
        distances: vec![Neighbors::padding_distance(metric); nq * k],
    };
    for q in 0..nq {
        let m = n.k;
        out.ids[q * k..q * k + m].copy_from_slice(n.ids_of(q));
        out.distances[q * k..q * k + m].copy_from_slice(n.distances_of(q));
    }
    out
}

/// Merges per-segment results (each `nq × k`, best first) into the best `k` per query, in the
/// metric's direction, ties to the lower id, each id once.
pub fn merge_results(parts: Vec<Neighbors>, nq: usize, k: usize, metric: Metric) -> Neighbors {
    if parts.len() == 1 {
        return parts.into_iter().next().expect("one part");
    }
    let mut out = Neighbors {
        k,
        ids: Vec::with_capacity(nq * k),
        distances: Vec::with_capacity(nq * k),
    };
    let ip = metric.is_inner_product();
    let mut all: Vec<(f32, i64)> = Vec::new();
    for q in 0..nq {
        all.clear();
        for p in &parts {
            all.extend(
                p.distances_of(q)
                    .iter()
                    .zip(p.ids_of(q))
                    .filter(|(_, &id)| id >= 0)
                    .map(|(&d, &id)| (d, id)),
            );
        }
        all.sort_by(|a, b| {
            let o = if ip {
                b.0.total_cmp(&a.0)
            } else {
                a.0.total_cmp(&b.0)
            };
            o.then(a.1.cmp(&b.1))
        });
        let mut taken = 0;
        let mut seen = std::collections::HashSet::new();
        for &(d, id) in &all {
            if taken == k {
                break;
            }
            if seen.insert(id) {
                out.ids.push(id);
                out.distances.push(d);
                taken += 1;
            }
        }
        for _ in taken..k {
            out.ids.push(-1);
            out.distances.push(Neighbors::padding_distance(metric));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_the_best_once_and_pads() {
        let a = Neighbors {
            k: 2,
            ids: vec![1, 2],
            distances: vec![0.5, 0.9],
        };
        let b = Neighbors {
            k: 2,
            ids: vec![3, -1],
            distances: vec![0.5, f32::INFINITY],
        };
        let m = merge_results(vec![a.clone(), b], 1, 3, Metric::L2);
        assert_eq!(m.ids, vec![1, 3, 2]);
        let m = merge_results(vec![a.clone(), a], 1, 3, Metric::InnerProduct);
        assert_eq!(m.ids, vec![2, 1, -1]);
        assert_eq!(m.distances[2], f32::NEG_INFINITY);
    }
}
