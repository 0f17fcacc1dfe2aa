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
use crate::payload::fields::{FieldIndexes, FieldSpec};
use crate::payload::filter::Rows;
use roaring::RoaringBitmap;

/// Rows per chunk.
const CHUNK_ROWS: usize = 256;

#[derive(Debug, Clone, Default)]
struct Chunk {
    ids: Vec<u64>,
    vectors: Vec<f32>,
    /// Stored payload of each row (empty: none).
    payloads: Vec<Vec<u8>>,
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
        self.upsert_with_payloads(vectors, ids, &[])
    }

    /// [`FlatIndex::upsert`] with each row's stored payload ([`crate::payload::encode`]);
    /// `payloads` is empty (none) or holds one per id.
    pub fn upsert_with_payloads(
        &mut self,
        vectors: &[f32],
        ids: &[u64],
        payloads: &[Vec<u8>],
    ) -> Result<(), EngineError> {
        let dim = self.dim;
        if vectors.len() != ids.len() * dim {
            return Err(EngineError::IdCountMismatch {
                ids: ids.len(),
                vectors: vectors.len() / dim,
            });
        }
        if !payloads.is_empty() && payloads.len() != ids.len() {
            return Err(EngineError::InvalidParameter {
                name: "payloads",
                reason: format!("{} payloads for {} ids", payloads.len(), ids.len()),
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
            chunk
                .payloads
                .push(payloads.get(row).cloned().unwrap_or_default());
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
        self.for_each_live_with_payloads(|ids, vectors, _| f(ids, vectors));
    }

    /// [`FlatIndex::for_each_live`] with the rows' stored payloads.
    pub fn for_each_live_with_payloads(&self, mut f: impl FnMut(&[u64], &[f32], &[Vec<u8>])) {
        let dim = self.dim;
        for chunk in &self.chunks {
            let mut start = 0;
            for s in 0..=chunk.ids.len() {
                let dead = s == chunk.ids.len() || chunk.deleted[s / 64] >> (s % 64) & 1 == 1;
                if dead {
                    if s > start {
                        f(
                            &chunk.ids[start..s],
                            &chunk.vectors[start * dim..s * dim],
                            &chunk.payloads[start..s],
                        );
                    }
                    start = s + 1;
                }
            }
        }
    }

    /// The stored payload of a live id (empty: none).
    pub fn payload(&self, id: u64) -> Option<&[u8]> {
        let &(c, s) = self.locations.get(&id)?;
        Some(&self.chunks[c as usize].payloads[s as usize])
    }

    /// Replaces the stored payload of a live id; false when absent.
    pub fn set_payload(&mut self, id: u64, payload: &[u8]) -> bool {
        let Some(&(c, s)) = self.locations.get(&id) else {
            return false;
        };
        Arc::make_mut(&mut self.chunks[c as usize]).payloads[s as usize] = payload.to_vec();
        true
    }

    /// Rows (every slot, deleted ones included, chunk after chunk): what a filter is evaluated
    /// over.
    pub fn rows<'a>(&'a self, fields: Option<&'a FieldIndexes>) -> FlatRows<'a> {
        FlatRows {
            index: self,
            fields,
        }
    }

    /// Field indexes over the rows, for the given fields.
    pub fn field_indexes(&self, specs: &[FieldSpec]) -> FieldIndexes {
        let rows = self.rows(None);
        FieldIndexes::build(specs, rows.len(), || {
            self.chunks
                .iter()
                .flat_map(|c| c.payloads.iter().map(|p| p.as_slice()))
        })
    }

    /// Exact k nearest neighbours of each query among the live rows in its allow-set (rows
    /// from [`FlatIndex::rows`]; `of_query[q]` indexes `sets`, [`crate::backend::NO_FILTER`]:
    /// every row), best first, padded with -1.
    pub fn search_filtered(
        &self,
        queries: &[f32],
        k: usize,
        sets: &[RoaringBitmap],
        of_query: &[u32],
    ) -> Result<Neighbors, EngineError> {
        let dim = self.dim;
        let nq = queries.len() / dim.max(1);
        if of_query.len() != nq {
            return Err(EngineError::InvalidParameter {
                name: "filters",
                reason: format!("{} filter choices for {nq} queries", of_query.len()),
            });
        }
        let mut out = Neighbors {
            k,
            ids: vec![-1; nq * k],
            distances: vec![Neighbors::padding_distance(self.metric); nq * k],
        };
        let mut choices: Vec<u32> = of_query.to_vec();
        choices.sort_unstable();
        choices.dedup();
        for f in choices {
            let members: Vec<usize> = (0..nq).filter(|&q| of_query[q] == f).collect();
            let q: Vec<f32> = members
                .iter()
                .flat_map(|&m| &queries[m * dim..(m + 1) * dim])
                .copied()
                .collect();
            let part = match sets.get(f as usize) {
                None => self.search(&q, k)?,
                Some(allowed) => {
                    let mut search = ExactSearch::new(self.metric, dim, &q, k)?;
                    let (mut ids, mut vectors) = (Vec::new(), Vec::new());
                    for row in allowed.iter() {
                        let (c, s) = (row as usize / CHUNK_ROWS, row as usize % CHUNK_ROWS);
                        let Some(chunk) = self.chunks.get(c) else {
                            break;
                        };
                        if s >= chunk.ids.len() || chunk.deleted[s / 64] >> (s % 64) & 1 == 1 {
                            continue;
                        }
                        ids.push(chunk.ids[s]);
                        vectors.extend_from_slice(&chunk.vectors[s * dim..(s + 1) * dim]);
                        if ids.len() == 4096 {
                            search.add_rows(&vectors, &ids);
                            ids.clear();
                            vectors.clear();
                        }
                    }
                    search.add_rows(&vectors, &ids);
                    search.finish()
                }
            };
            for (i, &m) in members.iter().enumerate() {
                out.ids[m * k..(m + 1) * k].copy_from_slice(part.ids_of(i));
                out.distances[m * k..(m + 1) * k].copy_from_slice(part.distances_of(i));
            }
        }
        Ok(out)
    }

    /// Exact k nearest neighbours of each query (row-major), best first, padded with -1.
    pub fn search(&self, queries: &[f32], k: usize) -> Result<Neighbors, EngineError> {
        let mut search = ExactSearch::new(self.metric, self.dim, queries, k)?;
        self.for_each_live(|ids, vectors| search.add_rows(vectors, ids));
        Ok(search.finish())
    }
}

/// A flat index's rows (slot `s` of chunk `c` is row `c × 256 + s`), for filters.
pub struct FlatRows<'a> {
    index: &'a FlatIndex,
    fields: Option<&'a FieldIndexes>,
}

impl FlatRows<'_> {
    fn at(&self, row: u32) -> Option<(&Chunk, usize)> {
        let (c, s) = (row as usize / CHUNK_ROWS, row as usize % CHUNK_ROWS);
        let chunk = self.index.chunks.get(c)?;
        (s < chunk.ids.len()).then_some((&**chunk, s))
    }

    /// True when the row's point is deleted (or the row is past the end).
    pub fn is_deleted(&self, row: u32) -> bool {
        self.at(row)
            .is_none_or(|(c, s)| c.deleted[s / 64] >> (s % 64) & 1 == 1)
    }
}

impl Rows for FlatRows<'_> {
    fn len(&self) -> u32 {
        match self.index.chunks.last() {
            None => 0,
            Some(last) => ((self.index.chunks.len() - 1) * CHUNK_ROWS + last.ids.len()) as u32,
        }
    }
    fn payload(&self, row: u32) -> &[u8] {
        self.at(row).map_or(&[], |(c, s)| c.payloads[s].as_slice())
    }
    fn id(&self, row: u32) -> u64 {
        self.at(row).map_or(u64::MAX, |(c, s)| c.ids[s])
    }
    fn row_of(&self, id: u64) -> Option<u32> {
        let &(c, s) = self.index.locations.get(&id)?;
        Some((c as usize * CHUNK_ROWS + s as usize) as u32)
    }
    fn fields(&self) -> Option<&FieldIndexes> {
        self.fields
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

    #[test]
    fn payloads_filters_and_filtered_search() {
        use crate::payload::filter::Filter;
        let mut f = FlatIndex::new(Metric::L2, 2);
        let n = 1000u64;
        let ids: Vec<u64> = (0..n).collect();
        let v: Vec<f32> = (0..2 * n).map(|i| (i / 2) as f32).collect();
        let payloads: Vec<Vec<u8>> = (0..n)
            .map(|i| crate::payload::encode_text(&format!(r#"{{"g":{}}}"#, i % 4)).unwrap())
            .collect();
        f.upsert_with_payloads(&v, &ids, &payloads).unwrap();
        f.delete(&[2, 6]);
        assert_eq!(f.payload(5), Some(&br#"{"g":1}"#[..]));
        assert!(f.set_payload(5, br#"{"g":2}"#));
        assert_eq!(f.payload(2), None);
        let spec = [FieldSpec::parse("g:integer").unwrap()];
        let fields = f.field_indexes(&spec);
        let filter = Filter::parse_text(r#"{"must":[{"key":"g","match":{"value":2}}]}"#).unwrap();
        let with = filter.evaluate(&f.rows(Some(&fields)));
        let without = filter.evaluate(&f.rows(None));
        assert_eq!(with, without);
        // Nearest to (4, 4) with g = 2: 5 (set above), then 10 (2 and 6 are deleted).
        let r = f
            .search_filtered(
                &[4.0, 4.0, 4.0, 4.0],
                3,
                &[with],
                &[0, crate::backend::NO_FILTER],
            )
            .unwrap();
        assert_eq!(r.ids_of(0), &[5, 10, 14]);
        assert_eq!(r.ids_of(1), &[4, 3, 5]);
        let mut seen = 0;
        f.for_each_live_with_payloads(|ids, _, p| {
            seen += ids.len();
            assert_eq!(ids.len(), p.len());
        });
        assert_eq!(seen, 998);
    }
}
