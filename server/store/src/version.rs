//! A version of a collection: its sealed segments, its appendable segment and (once trained)
//! its quantizers. Versions are immutable and published whole; searches hold one for as long as
//! they run, so they never wait for writers or for the optimizer.

use std::sync::Arc;

use quiver_engine::backend::cpu::CpuBackend;
use quiver_engine::backend::{Backend, Neighbors};
use quiver_engine::{EngineError, IvfPqIndex, Metric};

use crate::segment::{merge_results, Rows, SearchKey, Segment};

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

    /// The next version with `ids` removed wherever they live; returns it and how many were
    /// present.
    pub fn with_delete(
        &self,
        ids: &[u64],
        cpu: &CpuBackend,
        device: &B,
    ) -> Result<(Version<B>, usize), EngineError> {
        let mut next = self.clone();
        let mut n = 0;
        for s in next.segments.iter_mut() {
            if let Some((seg, k)) = s.with_delete(ids, true, cpu, device)? {
                *s = Arc::new(seg);
                n += k;
            }
        }
        if let Some((seg, k)) = next.appendable.with_delete(ids, false, cpu, device)? {
            next.appendable = Arc::new(seg);
            n += k;
        }
        Ok((next, n))
    }

    /// The next version with rows added or replaced by id (valid ids, unique in the batch).
    pub fn with_upsert(
        &self,
        ids: &[u64],
        rows: &Rows,
        cpu: &CpuBackend,
        device: &B,
    ) -> Result<Version<B>, EngineError> {
        let (mut next, _) = self.with_delete(ids, cpu, device)?;
        next.appendable = Arc::new(next.appendable.with_append(ids, rows, cpu)?);
        Ok(next)
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
        for s in self.all().filter(|s| !s.is_empty()) {
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
