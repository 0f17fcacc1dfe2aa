//! Exact search by brute force: ground truth over a streamed base, and exact re-ranking of
//! given candidate lists.
//!
//! The base arrives in chunks ([`ExactSearch::add_chunk`]) so it never has to fit in memory;
//! each chunk is scored against blocks of queries with SGEMM, in parallel over query blocks.

use rayon::prelude::*;

use crate::backend::Neighbors;
use crate::error::EngineError;
use crate::index::prepare_vectors;
use crate::linalg::{gemm_abt, row_norms_sq};
use crate::metric::Metric;
use crate::topk::TopK;

/// Queries per parallel task.
const QUERY_BLOCK: usize = 32;

/// Running exact top-k of a batch of queries over a base seen chunk by chunk.
#[derive(Debug)]
pub struct ExactSearch {
    metric: Metric,
    dim: usize,
    k: usize,
    queries: Vec<f32>,
    query_norms: Vec<f32>,
    tops: Vec<TopK<u64>>,
    seen: u64,
}

impl ExactSearch {
    /// Starts an exact search of row-major `queries` for their `k` nearest neighbours.
    pub fn new(metric: Metric, dim: usize, queries: &[f32], k: usize) -> Result<Self, EngineError> {
        if k == 0 || k > crate::backend::MAX_K {
            return Err(EngineError::KOutOfRange {
                k,
                max: crate::backend::MAX_K,
            });
        }
        let queries = prepare_vectors(metric, dim, queries)?.into_owned();
        let nq = queries.len() / dim;
        let query_norms = row_norms_sq(&queries, dim);
        Ok(ExactSearch {
            metric,
            dim,
            k,
            queries,
            query_norms,
            tops: (0..nq).map(|_| TopK::new(k)).collect(),
            seen: 0,
        })
    }

    /// Scores the next chunk of the base (row-major); its rows get ids `first_id, first_id+1, …`.
    pub fn add_chunk(&mut self, base: &[f32], first_id: u64) -> Result<(), EngineError> {
        let base = prepare_vectors(self.metric, self.dim, base).map_err(|e| match e {
            EngineError::NonFinite {
                row,
                component,
                value,
            } => EngineError::NonFinite {
                row: row + first_id as usize,
                component,
                value,
            },
            EngineError::ZeroVector { row } => EngineError::ZeroVector {
                row: row + first_id as usize,
            },
            e => e,
        })?;
        let nb = base.len() / self.dim;
        let ids: Vec<u64> = (first_id..first_id + nb as u64).collect();
        self.add_rows(&base, &ids);
        Ok(())
    }

    /// Scores rows with explicit ids (`ids.len()` rows of `base`, already valid and
    /// normalised, as a flat index holds them).
    pub fn add_rows(&mut self, base: &[f32], ids: &[u64]) {
        self.add_rows_where(base, ids, &|_| true);
    }

    /// [`Self::add_rows`], keeping only rows whose id `keep` accepts (asked only of rows that
    /// would enter a query's best, so rows need not be copied out to be left out).
    pub fn add_rows_where(
        &mut self,
        base: &[f32],
        ids: &[u64],
        keep: &(dyn Fn(u64) -> bool + Sync),
    ) {
        let dim = self.dim;
        let nb = ids.len();
        if nb == 0 {
            return;
        }
        let base_norms = row_norms_sq(base, dim);
        let metric = self.metric;
        let queries = &self.queries;
        let query_norms = &self.query_norms;
        self.tops
            .par_chunks_mut(QUERY_BLOCK)
            .enumerate()
            .for_each(|(b, tops)| {
                let q0 = b * QUERY_BLOCK;
                let rows = tops.len();
                let mut ip = vec![0f32; rows * nb];
                gemm_abt(
                    &queries[q0 * dim..],
                    dim,
                    rows,
                    base,
                    dim,
                    nb,
                    dim,
                    &mut ip,
                    nb,
                );
                for (r, top) in tops.iter_mut().enumerate() {
                    for (j, &v) in ip[r * nb..(r + 1) * nb].iter().enumerate() {
                        let s = if metric.is_inner_product() {
                            -v
                        } else {
                            (query_norms[q0 + r] + base_norms[j] - 2.0 * v).max(0.0)
                        };
                        if s <= top.threshold() && keep(ids[j]) {
                            top.push(s, ids[j]);
                        }
                    }
                }
            });
        self.seen += nb as u64;
    }

    /// Base vectors seen so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// The exact neighbours, best first, padded with -1.
    pub fn finish(self) -> Neighbors {
        collect(self.metric, self.k, self.tops)
    }
}

fn collect(metric: Metric, k: usize, tops: Vec<TopK<u64>>) -> Neighbors {
    let nq = tops.len();
    let mut ids = vec![-1i64; nq * k];
    let mut distances = vec![Neighbors::padding_distance(metric); nq * k];
    for (q, top) in tops.into_iter().enumerate() {
        for (i, e) in top.into_sorted().into_iter().enumerate() {
            ids[q * k + i] = e.item as i64;
            distances[q * k + i] = metric.reported(e.score);
        }
    }
    Neighbors { k, ids, distances }
}

/// Re-ranks candidate lists exactly: for query `q`, `candidates[q * per .. (q+1) * per]` are
/// row numbers of the base (negative entries are padding and skipped; repeats count once);
/// `vectors[q * per + j]`'s `dim` values are the candidate's raw vector (ignored for padding).
/// Returns the best `k` of each list.
pub fn rerank(
    metric: Metric,
    dim: usize,
    queries: &[f32],
    candidates: &[i64],
    vectors: &[f32],
    k: usize,
) -> Result<Neighbors, EngineError> {
    if k == 0 || k > crate::backend::MAX_K {
        return Err(EngineError::KOutOfRange {
            k,
            max: crate::backend::MAX_K,
        });
    }
    let queries = prepare_vectors(metric, dim, queries)?;
    let nq = queries.len() / dim;
    if nq == 0 {
        return Ok(Neighbors::new(k));
    }
    let per = candidates.len() / nq;
    if per * nq != candidates.len() || vectors.len() != candidates.len() * dim {
        return Err(EngineError::InvalidParameter {
            name: "candidates",
            reason: format!(
                "{} candidates and {} vector values for {nq} queries",
                candidates.len(),
                vectors.len()
            ),
        });
    }
    let tops: Result<Vec<TopK<u64>>, EngineError> = (0..nq)
        .into_par_iter()
        .map(|q| {
            let query = &queries[q * dim..(q + 1) * dim];
            let mut top = TopK::new(k);
            let mut buf = vec![0f32; dim];
            let mut seen = std::collections::HashSet::new();
            for j in 0..per {
                let id = candidates[q * per + j];
                if id < 0 || !seen.insert(id) {
                    continue;
                }
                let v = &vectors[(q * per + j) * dim..(q * per + j + 1) * dim];
                if let Some(c) = v.iter().position(|x| !x.is_finite()) {
                    return Err(EngineError::NonFinite {
                        row: id as usize,
                        component: c,
                        value: v[c],
                    });
                }
                buf.copy_from_slice(v);
                if metric.normalizes() && crate::linalg::normalize_rows(&mut buf, dim).is_some() {
                    return Err(EngineError::ZeroVector { row: id as usize });
                }
                top.push(metric.score(query, &buf), id as u64);
            }
            Ok(top)
        })
        .collect();
    Ok(collect(metric, k, tops?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn naive(metric: Metric, dim: usize, q: &[f32], base: &[f32], k: usize) -> Vec<Vec<u64>> {
        q.chunks(dim)
            .map(|qq| {
                let mut v: Vec<(f32, u64)> = base
                    .chunks(dim)
                    .enumerate()
                    .map(|(i, b)| (metric.score(qq, b), i as u64))
                    .collect();
                v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                v.into_iter().take(k).map(|x| x.1).collect()
            })
            .collect()
    }

    #[test]
    fn chunked_exact_search_equals_naive() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let dim = 7;
        let base: Vec<f32> = (0..300 * dim)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let q: Vec<f32> = (0..40 * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        for metric in [Metric::L2, Metric::InnerProduct] {
            let mut s = ExactSearch::new(metric, dim, &q, 5).unwrap();
            for (c, chunk) in base.chunks(64 * dim).enumerate() {
                s.add_chunk(chunk, c as u64 * 64).unwrap();
            }
            let got = s.finish();
            let want = naive(metric, dim, &q, &base, 5);
            for (i, w) in want.iter().enumerate() {
                let g: Vec<u64> = got.ids_of(i).iter().map(|&x| x as u64).collect();
                assert_eq!(&g, w, "{metric} query {i}");
            }
        }
    }

    #[test]
    fn pads_when_base_is_small_and_rejects_nan() {
        let mut s = ExactSearch::new(Metric::L2, 2, &[0.0, 0.0], 3).unwrap();
        s.add_chunk(&[1.0, 1.0, 2.0, 2.0], 0).unwrap();
        let r = s.finish();
        assert_eq!(r.ids, vec![0, 1, -1]);
        assert_eq!(r.distances[2], f32::INFINITY);
        let mut s = ExactSearch::new(Metric::L2, 2, &[0.0, 0.0], 3).unwrap();
        assert!(matches!(
            s.add_chunk(&[1.0, 1.0, f32::NAN, 2.0], 10),
            Err(EngineError::NonFinite { row: 11, .. })
        ));
    }

    #[test]
    fn rerank_orders_candidates_and_skips_padding() {
        let q = [1.0, 0.0];
        let cands = [5i64, -1, 7, 5];
        let vecs = [0.5, 0.0, 9.0, 9.0, 0.9, 0.1, 0.5, 0.0];
        let r = rerank(Metric::InnerProduct, 2, &q, &cands, &vecs, 3).unwrap();
        assert_eq!(r.ids, vec![7, 5, -1]);
        approx::assert_relative_eq!(r.distances[0], 0.9);
    }
}
