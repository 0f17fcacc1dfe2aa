//! A flat (exact) index: raw vectors with ids, searched by brute force.
//!
//! It serves collections before an IVF-PQ index is trained on them, as FAISS's `IndexFlat`
//! does. Vectors live in chunks shared by `Arc` and ids in a persistent map, so a clone is cheap and
//! a write copies only the chunk it touches; a server publishes a new version after each write while searches go on
//! over the old one.

use std::sync::Arc;

use crate::backend::Neighbors;
use crate::bruteforce::ExactSearch;
use crate::error::EngineError;
use crate::index::prepare_vectors;
use crate::metric::Metric;

/// Rows per chunk.
const CHUNK_ROWS: usize = 256;

#[derive(Debug, Clone, Default)]
struct Chunk {
    ids: Vec<u64>,
    vectors: Vec<f32>,
    deleted: Vec<u64>,
    deleted_count: usize,
}

/// Raw vectors with ids, searched exactly.
#[derive(Debug, Clone)]
pub struct FlatIndex {
    metric: Metric,
    dim: usize,
    chunks: Vec<Arc<Chunk>>,
    locations: imbl::HashMap<u64, (u32, u32)>,
    /// Above every id ever stored: larger ids need no lookup.
    id_bound: u64,
}

impl FlatIndex {
    /// An empty index.
    pub fn new(metric: Metric, dim: usize) -> Self {
        FlatIndex {
            metric,
            dim,
            chunks: Vec::new(),
            locations: imbl::HashMap::new(),
            id_bound: 0,
        }
    }

    /// Metric.
    pub fn metric(&self) -> Metric {
        self.metric
    }
    /// Dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Live vectors.
    pub fn len(&self) -> usize {
        self.locations.len()
    }
    /// True when no vector is live.
    pub fn is_empty(&self) -> bool {
        self.locations.is_empty()
    }
    /// True when `id` is present.
    pub fn contains(&self, id: u64) -> bool {
        id < self.id_bound && self.locations.contains_key(&id)
    }
    /// Bytes held by vectors and ids.
    pub fn data_bytes(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| c.ids.len() * (8 + self.dim * 4))
            .sum()
    }

    /// Adds or replaces vectors by id. Nothing changes if any vector or id is invalid.
    pub fn upsert(&mut self, vectors: &[f32], ids: &[u64]) -> Result<(), EngineError> {
        let dim = self.dim;
        if vectors.len() != ids.len() * dim {
            return Err(EngineError::IdCountMismatch {
                ids: ids.len(),
                vectors: vectors.len() / dim,
            });
        }
        let vectors = prepare_vectors(self.metric, dim, vectors)?;
        crate::index::check_upsert_ids(ids)?;
        self.delete(ids);
        for (row, &id) in ids.iter().enumerate() {
            if self.chunks.last().is_none_or(|c| c.ids.len() >= CHUNK_ROWS) {
                self.chunks.push(Arc::new(Chunk::default()));
            }
            let c = self.chunks.len() - 1;
            let chunk = Arc::make_mut(&mut self.chunks[c]);
            let slot = chunk.ids.len();
            chunk.ids.push(id);
            chunk
                .vectors
                .extend_from_slice(&vectors[row * dim..(row + 1) * dim]);
            if chunk.deleted.len() < chunk.ids.len().div_ceil(64) {
                chunk.deleted.push(0);
            }
            self.locations.insert(id, (c as u32, slot as u32));
            self.id_bound = self.id_bound.max(id.saturating_add(1));
        }
        Ok(())
    }

    /// Deletes ids; returns how many were present.
    pub fn delete(&mut self, ids: &[u64]) -> usize {
        let mut n = 0;
        for id in ids.iter().filter(|&&id| id < self.id_bound) {
            if let Some((c, s)) = self.locations.remove(id) {
                let chunk = Arc::make_mut(&mut self.chunks[c as usize]);
                chunk.deleted[s as usize / 64] |= 1 << (s % 64);
                chunk.deleted_count += 1;
                n += 1;
            }
        }
        n
    }

    /// The stored vector of a live id (normalised for cosine).
    pub fn vector(&self, id: u64) -> Option<Vec<f32>> {
        let &(c, s) = self.locations.get(&id)?;
        let chunk = &self.chunks[c as usize];
        Some(chunk.vectors[s as usize * self.dim..(s as usize + 1) * self.dim].to_vec())
    }

    /// Calls `f(ids, vectors)` for runs of live vectors, in insertion order (vectors are
    /// normalised for cosine).
    pub fn for_each_live(&self, mut f: impl FnMut(&[u64], &[f32])) {
        let dim = self.dim;
        for chunk in &self.chunks {
            let mut start = 0;
            for s in 0..=chunk.ids.len() {
                let dead = s == chunk.ids.len() || chunk.deleted[s / 64] >> (s % 64) & 1 == 1;
                if dead {
                    if s > start {
                        f(&chunk.ids[start..s], &chunk.vectors[start * dim..s * dim]);
                    }
                    start = s + 1;
                }
            }
        }
    }

    /// Exact k nearest neighbours of each query (row-major), best first, padded with -1.
    pub fn search(&self, queries: &[f32], k: usize) -> Result<Neighbors, EngineError> {
        let mut search = ExactSearch::new(self.metric, self.dim, queries, k)?;
        self.for_each_live(|ids, vectors| search.add_rows(vectors, ids));
        Ok(search.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsert_delete_search() {
        let mut f = FlatIndex::new(Metric::L2, 2);
        let ids: Vec<u64> = (0..3000).collect();
        let v: Vec<f32> = (0..6000).map(|i| (i / 2) as f32).collect();
        f.upsert(&v, &ids).unwrap();
        assert_eq!(f.delete(&[10, 11, 99_999]), 2);
        f.upsert(&[10.4, 10.4], &[12]).unwrap();
        let snapshot = f.clone();
        f.upsert(&[10.0, 10.0], &[77_777]).unwrap();
        let r = snapshot.search(&[10.0, 10.0], 3).unwrap();
        assert_eq!(r.ids, vec![12, 9, 8]);
        let r = f.search(&[10.0, 10.0], 1).unwrap();
        assert_eq!(r.ids, vec![77_777]);
        assert_eq!(f.len(), 2999);
        let mut live = 0;
        f.for_each_live(|ids, v| {
            live += ids.len();
            assert_eq!(v.len(), ids.len() * 2);
        });
        assert_eq!(live, 2999);
        assert!(matches!(
            f.upsert(&[f32::NAN, 0.0], &[1]),
            Err(EngineError::NonFinite { .. })
        ));
        assert!(f.contains(1));
    }
}
