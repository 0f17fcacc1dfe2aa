//! A version of a collection: its sealed segments, its appendable segment and (once trained)
//! its quantizers. Versions are immutable and published whole; searches hold one for as long as
//! they run, so they never wait for writers or for the optimizer.

use std::sync::Arc;

use quiver_engine::backend::cpu::{CpuBackend, CpuPrepared};
use quiver_engine::backend::{Backend, Candidates, Neighbors, PreparedIndex, Slot};
use quiver_engine::{EngineError, IvfPqIndex, Metric};

use crate::cpucache::CpuCache;
use crate::segment::{merge_results, Rows, SearchKey, Segment, SegmentIndex};
use crate::wal::Op;
use quiver_engine::payload::fields::FieldSpec;
use quiver_engine::payload::filter::Filter;
use quiver_engine::sparse::SparseVector;

/// Which of a segment's gathered rows a search keeps: ids not deleted since the rows were
/// gathered (`dead`) and passing the filter (every id without one).
struct Kept {
    dead: std::collections::HashSet<u64>,
    allowed: Option<std::collections::HashSet<u64>>,
}

impl Kept {
    fn new<B: Backend>(
        s: &Segment<B>,
        dead: Vec<u64>,
        filter: Option<&Filter>,
        fields: &[FieldSpec],
    ) -> Kept {
        Kept {
            dead: dead.into_iter().collect(),
            allowed: filter.map(|f| {
                s.matching(f, s.field_indexes(fields).as_deref())
                    .into_iter()
                    .collect()
            }),
        }
    }

    fn keeps(&self, id: u64) -> bool {
        !self.dead.contains(&id) && self.allowed.as_ref().is_none_or(|a| a.contains(&id))
    }
}

/// The vectors an example-scored query ([`Version::search_examples`]) scores, with its
/// examples.
pub enum ExampleQuery<'a> {
    /// The collection's own dense vectors (those its index holds).
    Own(&'a quiver_engine::example_query::DenseExamples),
    /// A named dense space's, kept in payloads under `key`.
    Named {
        /// The payload key.
        key: &'a str,
        /// The space's metric.
        metric: Metric,
        /// The examples (of the space's size).
        query: &'a quiver_engine::example_query::DenseExamples,
    },
    /// Sparse vectors kept in payloads under `key`.
    Sparse {
        /// The payload key.
        key: &'a str,
        /// How the similarities make a score.
        scoring: quiver_engine::example_query::Scoring,
        /// The examples, in the scoring's order.
        examples: &'a [SparseVector],
    },
}

/// One published state of a collection.
pub struct Version<B: Backend> {
    /// Sealed segments, oldest first.
    pub segments: Vec<Arc<Segment<B>>>,
    /// The segment new points go to.
    pub appendable: Arc<Segment<B>>,
    /// An empty index holding the trained quantizers (`None` before training).
    pub quantizers: Option<Arc<IvfPqIndex>>,
    /// The last write-ahead log record applied.
    pub lsn: u64,
}

impl<B: Backend> Clone for Version<B> {
    fn clone(&self) -> Self {
        Version {
            segments: self.segments.clone(),
            appendable: self.appendable.clone(),
            quantizers: self.quantizers.clone(),
            lsn: self.lsn,
        }
    }
}

impl<B: Backend> Version<B> {
    /// Every segment, sealed first, the appendable last.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Segment<B>>> {
        self.segments
            .iter()
            .chain(std::iter::once(&self.appendable))
    }

    /// Live points.
    pub fn len(&self) -> usize {
        self.all().map(|s| s.len()).sum()
    }

    /// True when no point is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of vectors, codes and centroids.
    pub fn data_bytes(&self) -> usize {
        let centroids = self.quantizers.as_ref().map_or(0, |q| {
            q.centroids().len() * 4 + q.pq().centroids().len() * 4
        });
        let per_segment: usize = self.all().map(|s| s.data_bytes()).sum();
        let shared = if self.quantizers.is_some() {
            // Each IVF segment counts the shared quantizers once in its data_bytes.
            self.all()
                .filter(|s| s.ivf().is_some())
                .count()
                .saturating_sub(1)
                * centroids
        } else {
            0
        };
        per_segment.saturating_sub(shared)
    }

    /// The stored vector of a live id.
    pub fn vector(&self, id: u64) -> Option<Vec<f32>> {
        self.all().find_map(|s| s.vector(id))
    }

    /// Applies one logged write in place: deletes from sealed segments make new versions of
    /// the segments they touch; the appendable segment is copied once (cheaply) if shared and
    /// then changed in place, so a group of writes copies each touched list once. Returns the
    /// number of points upserted or deleted.
    pub fn apply(
        &mut self,
        op: &Op,
        rows: Option<Rows>,
        cache: &CpuCache,
        device: &B,
    ) -> Result<usize, EngineError> {
        match op {
            // The description is the collection's, not the version's (see `Collection`).
            Op::Describe(_) => Ok(0),
            Op::Upsert {
                ids,
                vectors,
                payloads,
                ..
            } => {
                self.delete_sealed(ids, cache, device)?;
                // Rows made for another kind of appendable segment (encoded just before a
                // retraining made it flat) are made again.
                let rows = match rows {
                    Some(r) if r.fits(&self.appendable.index) => r,
                    _ => self.rows_for(vectors, cache)?,
                };
                self.appendable_mut(cache)?
                    .upsert_in_place(ids, rows, payloads)?;
                Ok(ids.len())
            }
            Op::Delete { ids } => self.delete(ids, cache, device),
            // Written by older versions, which logged the filter: evaluated at replay.
            Op::DeleteFilter { filter } => {
                let ids = self.resolve_filter(filter)?;
                self.delete(&ids, cache, device)
            }
            Op::SetPayload { ids, edit } => {
                // An edited point is written again (its stored vector, its new payload) into
                // the appendable segment: sealed segments only ever lose points, and every
                // path that carries deletes (checkpoints, merges, trainings) carries this.
                let mut found = Vec::new();
                let mut vectors = Vec::new();
                let mut payloads = Vec::new();
                let mut seen = std::collections::HashSet::new();
                for &id in ids {
                    if !seen.insert(id) {
                        continue;
                    }
                    let Some(s) = self.all().find(|s| s.contains(id)) else {
                        continue;
                    };
                    let (Some(v), Some(old)) = (s.vector(id), s.payload(id)) else {
                        continue;
                    };
                    // An edit the payload cannot take (too large) leaves the point as it is (the
                    // writer was refused before logging; replay decides alike).
                    let Ok(new) = edit.apply(old) else {
                        continue;
                    };
                    found.push(id);
                    vectors.extend_from_slice(&v);
                    payloads.push(new);
                }
                if found.is_empty() {
                    return Ok(0);
                }
                let rows = self.rows_keeping_codes(&found, &vectors, cache)?;
                self.delete_sealed(&found, cache, device)?;
                self.appendable_mut(cache)?
                    .upsert_in_place(&found, rows, &payloads)?;
                Ok(found.len())
            }
        }
    }

    /// The ids of the live points passing the filter `text` now, ascending: what a delete by
    /// filter deletes (the log records these ids, so a replica applies the very same delete).
    pub fn resolve_filter(&self, text: &str) -> Result<Vec<u64>, EngineError> {
        let filter = Filter::parse_text(text).map_err(|e| EngineError::InvalidParameter {
            name: "filter",
            reason: e.to_string(),
        })?;
        // Through the field indexes at hand (the result is the same without them).
        let mut ids: Vec<u64> = self
            .all()
            .flat_map(|s| s.matching(&filter, s.kept_field_indexes().as_deref()))
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Deletes ids from every segment; returns how many were live.
    fn delete(&mut self, ids: &[u64], cache: &CpuCache, device: &B) -> Result<usize, EngineError> {
        let mut n = self.delete_sealed(ids, cache, device)?;
        if ids.iter().any(|&i| self.appendable.contains(i)) {
            n += self.appendable_mut(cache)?.delete_in_place(ids)?;
        }
        Ok(n)
    }

    /// Deletes ids from the sealed segments (new versions of those they touch); returns how
    /// many were live there.
    fn delete_sealed(
        &mut self,
        ids: &[u64],
        cache: &CpuCache,
        device: &B,
    ) -> Result<usize, EngineError> {
        let cpu = cache.backend();
        let mut n = 0;
        for s in self.segments.iter_mut() {
            if let Some((seg, k)) = s.with_delete(ids, true, cpu, device)? {
                *s = Arc::new(seg);
                n += k;
            }
        }
        Ok(n)
    }

    /// Whether `id` is a live point.
    pub fn contains(&self, id: u64) -> bool {
        self.all().any(|s| s.contains(id))
    }

    /// The stored payload of a live id (empty: none).
    pub fn payload(&self, id: u64) -> Option<&[u8]> {
        self.all().find_map(|s| s.payload(id))
    }

    /// How many live points pass `filter` (every live point without one), through the field
    /// indexes of `fields`; no id list is built.
    pub fn count_matching(&self, filter: Option<&Filter>, fields: &[FieldSpec]) -> usize {
        let all = Filter::default();
        self.all()
            .map(|s| match filter {
                None => s.count_matching(&all, None),
                Some(f) => s.count_matching(f, s.field_indexes(fields).as_deref()),
            })
            .sum()
    }

    /// The `k` live points passing `filter` whose sparse vector under the payload key `key`
    /// has the highest dot product with `query` (points sharing no term with it left out),
    /// best first, ties by ascending id: exact, through each segment's inverted index.
    pub fn search_sparse(
        &self,
        key: &str,
        query: &SparseVector,
        k: usize,
        filter: Option<&Filter>,
        fields: &[FieldSpec],
    ) -> Vec<(u64, f32)> {
        let parts = self
            .all()
            .map(|s| {
                let index = s.sparse_index(key).index;
                let allowed: Option<std::collections::HashSet<u64>> = filter.map(|f| {
                    s.matching(f, s.field_indexes(fields).as_deref())
                        .into_iter()
                        .collect()
                });
                let keep =
                    |id: u64| s.contains(id) && allowed.as_ref().is_none_or(|a| a.contains(&id));
                index.search(query, k, &keep)
            })
            .collect();
        quiver_engine::sparse::merge_hits(parts, k)
    }

    /// The `k` nearest neighbours of each query (row-major) among the live points passing
    /// `filter` that hold a dense vector of the named space kept under the payload key `key`
    /// (`metric`, `dim`), best first, padded with -1: exact, through each segment's
    /// [`DenseSet`](quiver_engine::dense_set::DenseSet), the segments' answers merged.
    #[allow(clippy::too_many_arguments)]
    pub fn search_dense(
        &self,
        key: &str,
        metric: quiver_engine::Metric,
        dim: usize,
        queries: &[f32],
        k: usize,
        filter: Option<&Filter>,
        fields: &[FieldSpec],
    ) -> Result<Neighbors, EngineError> {
        let mut parts = Vec::with_capacity(self.len());
        for s in self.all() {
            let (set, dead) = s.dense_set(key, metric, dim);
            if set.is_empty() {
                continue;
            }
            // The set holds the points live when it was gathered; those deleted since are
            // `dead` (the appendable segment's set is dropped by any write to it).
            let kept = Kept::new(s, dead, filter, fields);
            let keep = |id: u64| kept.keeps(id);
            parts.push(set.search(queries, k, &keep)?);
        }
        let nq = queries.len() / dim.max(1);
        Ok(merge_results(parts, nq, k, metric))
    }

    /// The `k` live points passing `filter` that score best against the examples of
    /// `query` (Qdrant's `discover`, `context` and recommendation strategies other than the
    /// average vector), best first, ties by ascending id: exact, every such point scored.
    pub fn search_examples(
        &self,
        query: &ExampleQuery<'_>,
        k: usize,
        filter: Option<&Filter>,
        fields: &[FieldSpec],
    ) -> Result<Vec<(u64, f32)>, EngineError> {
        use quiver_engine::example_query::{sparse_example_search, BestScores};
        let mut best = BestScores::new(k);
        let all = Filter::default();
        for s in self.all() {
            match query {
                ExampleQuery::Own(q) => {
                    let mut sims = Vec::new();
                    let field_indexes = s.field_indexes(fields);
                    for id in s.matching(filter.unwrap_or(&all), field_indexes.as_deref()) {
                        if let Some(v) = s.vector(id) {
                            best.push(id, q.score(&v, &mut sims));
                        }
                    }
                }
                ExampleQuery::Named {
                    key,
                    metric,
                    query: q,
                } => {
                    let (set, dead) = match q.is_multi() {
                        true => s.multi_set(key, *metric, q.dim()),
                        false => s.dense_set(key, *metric, q.dim()),
                    };
                    if set.is_empty() {
                        continue;
                    }
                    let kept = Kept::new(s, dead, filter, fields);
                    set.offer_examples(q, &|id| kept.keeps(id), &mut best);
                }
                ExampleQuery::Sparse {
                    key,
                    scoring,
                    examples,
                } => {
                    let view = s.sparse_index(key);
                    if view.index.is_empty() {
                        continue;
                    }
                    let kept = Kept::new(s, view.dead, filter, fields);
                    let keep = |id: u64| kept.keeps(id);
                    sparse_example_search(&view.index, *scoring, examples, &keep, &mut best)?;
                }
            }
        }
        Ok(best.finish())
    }

    /// The `k` live points passing `filter` whose multi-vector under the payload key `key`
    /// (`metric`, `dim` values per vector) scores highest by MaxSim against `query` (its
    /// vectors row-major; cosine: unit vectors), best first, ties by ascending id, with their
    /// MaxSim: exact, through each segment's gathered multi-vectors.
    #[allow(clippy::too_many_arguments)]
    pub fn search_multi(
        &self,
        key: &str,
        metric: Metric,
        dim: usize,
        query: &[f32],
        k: usize,
        filter: Option<&Filter>,
        fields: &[FieldSpec],
    ) -> Vec<(u64, f32)> {
        let mut parts = Vec::with_capacity(self.len());
        for s in self.all() {
            let (set, dead) = s.multi_set(key, metric, dim);
            if set.is_empty() {
                continue;
            }
            let kept = Kept::new(s, dead, filter, fields);
            let keep = |id: u64| kept.keeps(id);
            parts.push(set.max_sim(query, k, &keep));
        }
        quiver_engine::sparse::merge_hits(parts, k)
    }

    /// How many live points hold a sparse vector under `key`, and how many of them hold
    /// each of `terms`.
    pub fn sparse_doc_freqs(&self, key: &str, terms: &[u32]) -> (usize, Vec<usize>) {
        let mut n = 0;
        let mut df = vec![0; terms.len()];
        for s in self.all() {
            let view = s.sparse_index(key);
            let index = &view.index;
            let dead: Vec<u32> = view
                .dead
                .iter()
                .filter_map(|&id| index.row_of(id))
                .collect();
            n += index.len().saturating_sub(dead.len());
            for (d, &t) in df.iter_mut().zip(terms) {
                let gone = dead.iter().filter(|&&r| index.holds(r, t)).count();
                *d += index.postings_len(t).saturating_sub(gone);
            }
        }
        (n, df)
    }

    /// The `n` smallest ids at least `from` of live points passing `filter`, ascending (a
    /// page of a scroll): each segment keeps its `n` smallest, so memory follows `n`, not the
    /// collection's size.
    pub fn page_matching(
        &self,
        filter: Option<&Filter>,
        fields: &[FieldSpec],
        from: u64,
        n: usize,
    ) -> Vec<u64> {
        let all = Filter::default();
        let mut ids: Vec<u64> = Vec::new();
        for s in self.all() {
            let part = match filter {
                None => s.smallest_matching(&all, None, from, n),
                Some(f) => s.smallest_matching(f, s.field_indexes(fields).as_deref(), from, n),
            };
            ids.extend(part);
            ids.sort_unstable();
            ids.truncate(n);
        }
        ids
    }

    /// The ids of the live points passing `filter` (every live point without one), ascending;
    /// evaluated through the field indexes of `fields` (the collection's indexed fields).
    pub fn matching(&self, filter: Option<&Filter>, fields: &[FieldSpec]) -> Vec<u64> {
        let all = Filter::default();
        let mut ids: Vec<u64> = match filter {
            None => self.all().flat_map(|s| s.matching(&all, None)).collect(),
            Some(f) => self
                .all()
                .flat_map(|s| s.matching(f, s.field_indexes(fields).as_deref()))
                .collect(),
        };
        ids.sort_unstable();
        ids
    }

    /// Rows of `vectors` for the appendable segment: checked and normalised for a flat one
    /// (before training, and while a training runs), else encoded with the quantizers.
    pub fn rows_for(&self, vectors: &[f32], cache: &CpuCache) -> Result<Rows, EngineError> {
        Ok(match (&self.quantizers, &self.appendable.index) {
            (_, SegmentIndex::Flat(f)) => Rows::Raw(
                quiver_engine::index::prepare_vectors(f.metric(), f.dim(), vectors)?.into_owned(),
            ),
            (Some(q), _) => Rows::Encoded(cache.encode(q, q.metric(), vectors)?),
            (None, _) => {
                return Err(EngineError::InvalidParameter {
                    name: "segment",
                    reason: "an untrained collection's appendable segment is flat".into(),
                })
            }
        })
    }

    /// Rows for the live points `ids` (their stored `vectors`) written again unchanged (a
    /// payload edit): a point already encoded with the appendable segment's quantizers keeps
    /// its list and PQ code bit for bit, instead of the encoding of its stored vector (for an
    /// index without raw vectors that is its PQ reconstruction, which re-encoding would move).
    fn rows_keeping_codes(
        &self,
        ids: &[u64],
        vectors: &[f32],
        cache: &CpuCache,
    ) -> Result<Rows, EngineError> {
        let mut rows = self.rows_for(vectors, cache)?;
        let (Rows::Encoded(r), Some(q)) = (&mut rows, &self.quantizers) else {
            return Ok(rows);
        };
        let size = q.pq().code_size();
        for (i, &id) in ids.iter().enumerate() {
            let kept = self
                .all()
                .filter_map(|s| s.ivf())
                .filter(|ivf| ivf.shares_quantizers_with(q))
                .find_map(|ivf| ivf.encoded(id));
            if let Some((list, code)) = kept {
                r.lists[i] = list;
                r.codes[i * size..(i + 1) * size].copy_from_slice(&code);
            }
        }
        Ok(rows)
    }

    fn appendable_mut(&mut self, cache: &CpuCache) -> Result<&mut Segment<B>, EngineError> {
        if Arc::get_mut(&mut self.appendable).is_none() {
            let a = &self.appendable;
            let index = match &a.index {
                SegmentIndex::Flat(f) => SegmentIndex::Flat(f.clone()),
                SegmentIndex::Cpu(p) => SegmentIndex::Cpu(cache.prepare(p.index_arc().clone())?),
                SegmentIndex::Device(_) => {
                    return Err(EngineError::InvalidParameter {
                        name: "segment",
                        reason: "a device segment is never appendable".into(),
                    })
                }
            };
            self.appendable = Arc::new(a.with_index(index, a.deleted.clone()));
        }
        Ok(Arc::get_mut(&mut self.appendable).expect("unique after the copy above"))
    }

    /// Searches prepared queries over every segment and merges the results.
    pub fn search(
        &self,
        queries: &[f32],
        nq: usize,
        key: SearchKey,
        metric: Metric,
        cpu: &CpuBackend,
        device: &B,
    ) -> Result<Neighbors, EngineError> {
        let mut parts = Vec::new();
        let live: Vec<&Arc<Segment<B>>> = self.all().filter(|s| !s.is_empty()).collect();
        // CPU segments of one set of quantizers (all of them but in a retraining's switch).
        let mut on_cpu: Vec<&CpuPrepared> = live
            .iter()
            .filter_map(|s| match &s.index {
                SegmentIndex::Cpu(p) => Some(p),
                _ => None,
            })
            .collect();
        if let Some(first) = on_cpu.first().map(|p| p.index_arc().clone()) {
            on_cpu.retain(|p| p.index().shares_quantizers_with(&first));
        }
        if on_cpu.len() >= 2 {
            // Segments with one set of quantizers share the coarse search and the tables.
            let run = || search_shared(&on_cpu, queries, key, metric, cpu);
            let shared = if rayon::current_thread_index().is_some() || nq <= 1 {
                run()
            } else {
                let mut r = None;
                rayon::scope(|_| r = Some(run()));
                r.unwrap_or_else(|| Ok(Vec::new()))
            };
            parts.extend(shared?);
        }
        // Device segments of one set of quantizers, each holding at least k points: one
        // device batch for all (one upload of the queries, one coarse search and one set of
        // tables, one download of every segment's results).
        let mut on_device: Vec<(&B::Prepared, &IvfPqIndex)> = live
            .iter()
            .filter(|s| s.len() >= key.k)
            .filter_map(|s| match &s.index {
                SegmentIndex::Device(p) => Some((p, p.index())),
                _ => None,
            })
            .collect();
        if let Some(first) = on_device.first().map(|(_, i)| *i) {
            on_device.retain(|(_, i)| i.shares_quantizers_with(first));
        }
        if on_device.len() >= 2 {
            let index = on_device[0].1;
            let params = crate::segment::resolve(key, index.nlist(), index.params().refine);
            let prepared: Vec<&B::Prepared> = on_device.iter().map(|(p, _)| *p).collect();
            parts.extend(device.search_many(&prepared, queries, &params)?);
        }
        for s in live {
            if on_cpu.len() >= 2
                && matches!(&s.index, SegmentIndex::Cpu(p) if on_cpu.iter().any(|x| std::ptr::eq(*x, p)))
            {
                continue;
            }
            if on_device.len() >= 2
                && matches!(&s.index, SegmentIndex::Device(p) if on_device.iter().any(|(x, _)| std::ptr::eq(*x, p)))
            {
                continue;
            }
            parts.push(s.search(queries, key, cpu, device)?);
        }
        if parts.is_empty() {
            return Ok(Neighbors {
                k: key.k,
                ids: vec![-1; nq * key.k],
                distances: vec![Neighbors::padding_distance(metric); nq * key.k],
            });
        }
        Ok(merge_results(parts, nq, key.k, metric))
    }
}

impl<B: Backend> Version<B> {
    /// Searches prepared queries over every segment, each query under its filter
    /// (`of_query[q]` indexes `filters`, [`quiver_engine::backend::NO_FILTER`]: none), and
    /// merges the results. Each segment runs the filtered planner on its own.
    #[allow(clippy::too_many_arguments)]
    pub fn search_filtered(
        &self,
        queries: &[f32],
        nq: usize,
        key: SearchKey,
        filters: &[Filter],
        of_query: &[u32],
        fields: &[FieldSpec],
        metric: Metric,
        cpu: &CpuBackend,
        device: &B,
    ) -> Result<Neighbors, EngineError> {
        let parts = self
            .all()
            .filter(|s| !s.is_empty())
            .map(|s| s.search_filtered(queries, key, filters, of_query, fields, cpu, device))
            .collect::<Result<Vec<_>, _>>()?;
        if parts.is_empty() {
            return Ok(Neighbors {
                k: key.k,
                ids: vec![-1; nq * key.k],
                distances: vec![Neighbors::padding_distance(metric); nq * key.k],
            });
        }
        Ok(merge_results(parts, nq, key.k, metric))
    }
}

/// Searches IVF-PQ segments prepared on the CPU with one set of quantizers as one index would
/// be searched: per tile of queries, one coarse search and one set of lookup tables; the
/// probed lists of all segments scanned together (one list table for all); then, per query, the best `k × refine_factor` candidates
/// across all segments (their approximate scores come from the same tables, so they compare)
/// are the only ones refined. Refine work is that of one index, whatever the segment count.
fn search_shared(
    segs: &[&CpuPrepared],
    queries: &[f32],
    key: SearchKey,
    metric: Metric,
    cpu: &CpuBackend,
) -> Result<Vec<Neighbors>, EngineError> {
    let first = segs[0];
    let index = first.index();
    let params = crate::segment::resolve(key, index.nlist(), index.params().refine);
    params.validate(index)?;
    let queries = index.prepare_queries(queries)?;
    let dim = index.dim();
    let tile = cpu.max_batch(first).max(1);
    let keep = key.k.saturating_mul(params.refine_factor).max(1);
    let mut outs: Vec<Neighbors> = segs.iter().map(|_| Neighbors::new(key.k)).collect();
    for chunk in queries.chunks(tile * dim) {
        let probes = cpu.coarse_search(first, chunk, params.nprobe)?;
        let tables = cpu.lookup_tables(first, chunk)?;
        // Each (query, list) table built once for all segments.
        let scanned = cpu.scan_segments(segs, &probes, &tables, keep)?;
        let chosen = best_across(&scanned, chunk.len() / dim, keep);
        for ((s, out), c) in segs.iter().zip(outs.iter_mut()).zip(&chosen) {
            let k = key.k.min(s.index().len()).max(1);
            let r = cpu.refine(s, chunk, c, k)?;
            out.extend(if k < key.k {
                crate::segment::pad(r, key.k, metric)
            } else {
                r
            });
        }
    }
    Ok(outs)
}

/// Per query, the `keep` best candidates over every segment's scan (each best first), split
/// back per segment, best first, padded with [`Slot::NONE`].
fn best_across(scanned: &[Candidates], nq: usize, keep: usize) -> Vec<Candidates> {
    let mut chosen: Vec<Candidates> = scanned
        .iter()
        .map(|_| Candidates {
            per_query: keep,
            slots: vec![Slot::NONE; nq * keep],
            scores: vec![f32::INFINITY; nq * keep],
        })
        .collect();
    let mut all: Vec<(f32, usize, usize)> = Vec::new();
    let mut filled = vec![0usize; scanned.len()];
    for q in 0..nq {
        all.clear();
        for (s, c) in scanned.iter().enumerate() {
            let per = c.per_query;
            for j in 0..per {
                let slot = c.slots[q * per + j];
                if slot == Slot::NONE {
                    break;
                }
                all.push((c.scores[q * per + j], s, j));
            }
        }
        // Ties broken by segment then position, so the choice does not depend on sort order.
        let order = |a: &(f32, usize, usize), b: &(f32, usize, usize)| {
            a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
        };
        if all.len() > keep {
            all.select_nth_unstable_by(keep - 1, order);
            all.truncate(keep);
        }
        // Back in each segment's own order (best first), per segment.
        all.sort_unstable_by_key(|&(_, s, j)| (s, j));
        filled.iter_mut().for_each(|f| *f = 0);
        for &(score, s, j) in &all {
            let per = scanned[s].per_query;
            let at = q * keep + filled[s];
            chosen[s].slots[at] = scanned[s].slots[q * per + j];
            chosen[s].scores[at] = score;
            filled[s] += 1;
        }
    }
    chosen
}
