//! A version of a collection: its sealed segments, its appendable segment and (once trained)
//! its quantizers. Versions are immutable and published whole; searches hold one for as long as
//! they run, so they never wait for writers or for the optimizer.

use std::sync::Arc;

use quiver_engine::backend::cpu::{CpuBackend, CpuPrepared};
use quiver_engine::backend::{Backend, Neighbors, PreparedIndex};
use quiver_engine::{EngineError, IvfPqIndex, Metric};

use crate::cpucache::CpuCache;
use crate::segment::{merge_results, Rows, SearchKey, Segment, SegmentIndex};
use crate::wal::Op;

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
        let cpu = cache.backend();
        let ids = match op {
            Op::Upsert { ids, .. } | Op::Delete { ids } => ids,
        };
        let mut n = 0;
        for s in self.segments.iter_mut() {
            if let Some((seg, k)) = s.with_delete(ids, true, cpu, device)? {
                *s = Arc::new(seg);
                n += k;
            }
        }
        match op {
            Op::Upsert { vectors, .. } => {
                let rows = match rows {
                    Some(r) => r,
                    None => self.rows_for(vectors, cache)?,
                };
                self.appendable_mut(cache)?.upsert_in_place(ids, rows)?;
                Ok(ids.len())
            }
            Op::Delete { .. } => {
                if ids.iter().any(|&i| self.appendable.contains(i)) {
                    n += self.appendable_mut(cache)?.delete_in_place(ids)?;
                }
                Ok(n)
            }
        }
    }

    /// Rows of `vectors` for the appendable segment: encoded with the quantizers once trained,
    /// else checked and normalised.
    pub fn rows_for(&self, vectors: &[f32], cache: &CpuCache) -> Result<Rows, EngineError> {
        Ok(match (&self.quantizers, &self.appendable.index) {
            (Some(q), _) => Rows::Encoded(cache.encode(q, q.metric(), vectors)?),
            (None, SegmentIndex::Flat(f)) => Rows::Raw(
                quiver_engine::index::prepare_vectors(f.metric(), f.dim(), vectors)?.into_owned(),
            ),
            (None, _) => {
                return Err(EngineError::InvalidParameter {
                    name: "segment",
                    reason: "an untrained collection's appendable segment is flat".into(),
                })
            }
        })
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
            self.appendable = Arc::new(Segment {
                id: a.id,
                index,
                deleted: a.deleted.clone(),
            });
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
        let on_cpu: Vec<&CpuPrepared> = live
            .iter()
            .filter_map(|s| match &s.index {
                SegmentIndex::Cpu(p) => Some(p),
                _ => None,
            })
            .collect();
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
        for s in live {
            if on_cpu.len() >= 2 && matches!(s.index, SegmentIndex::Cpu(_)) {
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

/// Searches IVF-PQ segments prepared on the CPU with one set of quantizers: per tile of
/// queries, one coarse search and one set of lookup tables, then each segment's probed lists
/// scanned and its candidates refined. Equal to searching each segment alone.
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
    let mut outs: Vec<Neighbors> = segs.iter().map(|_| Neighbors::new(key.k)).collect();
    for chunk in queries.chunks(tile * dim) {
        let probes = cpu.coarse_search(first, chunk, params.nprobe)?;
        let tables = cpu.lookup_tables(first, chunk)?;
        for (s, out) in segs.iter().zip(outs.iter_mut()) {
            let live = s.index().len();
            let k = key.k.min(live).max(1);
            let refine_factor = params.refine_factor.min(live.div_ceil(k)).max(1);
            let candidates = cpu.scan(s, &probes, &tables, k * refine_factor)?;
            let r = cpu.refine(s, chunk, &candidates, k)?;
            out.extend(if k < key.k {
                crate::segment::pad(r, key.k, metric)
            } else {
                r
            });
        }
    }
    Ok(outs)
}
