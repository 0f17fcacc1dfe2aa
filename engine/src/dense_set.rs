//! A set of dense vectors searched exactly: the vectors of one named vector space that a
//! segment's points carry beside its index (Qdrant's named vectors, when a collection has
//! more than one), and their text form inside a payload.
//!
//! A point's vector of such a space is kept in its payload as base64 of its little-endian
//! `f32` values ([`encode`]; a 384-d vector is 2,048 bytes of text), so it is logged,
//! checkpointed and replayed with the payload. A segment gathers the vectors of one space
//! into a [`DenseSet`] on first use and answers queries over it by brute force
//! ([`crate::bruteforce::ExactSearch`]: a blocked matrix product), so results are exact.

use base64::Engine as _;

use crate::backend::Neighbors;
use crate::bruteforce::ExactSearch;
use crate::linalg::normalize_rows;
use crate::{EngineError, Metric};

/// Rows scored per matrix product.
const BLOCK_ROWS: usize = 4096;

/// The payload text of a vector: base64 of its little-endian `f32` values.
pub fn encode(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The vector a payload text holds (`None`: not a vector's text).
pub fn decode(text: &str) -> Option<Vec<f32>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .ok()?;
    if bytes.len() % 4 != 0 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// The form a vector of a space with `metric` is kept in: checked (finite, `dim` values)
/// and, for cosine, scaled to unit length (as Qdrant keeps them).
pub fn prepare(metric: Metric, dim: usize, vector: &[f32]) -> Result<Vec<f32>, EngineError> {
    if dim == 0 {
        return Err(EngineError::InvalidParameter {
            name: "dim",
            reason: "a vector space has at least one dimension".into(),
        });
    }
    if vector.len() != dim {
        return Err(EngineError::DimensionMismatch {
            expected: dim,
            got: vector.len(),
        });
    }
    if let Some(c) = vector.iter().position(|x| !x.is_finite()) {
        return Err(EngineError::NonFinite {
            row: 0,
            component: c,
            value: vector[c],
        });
    }
    let mut v = vector.to_vec();
    if metric == Metric::Cosine && normalize_rows(&mut v, dim).is_some() {
        return Err(EngineError::ZeroVector { row: 0 });
    }
    Ok(v)
}

/// Dense vectors of one space with their ids, searched exactly.
#[derive(Debug, Clone)]
pub struct DenseSet {
    metric: Metric,
    dim: usize,
    ids: Vec<u64>,
    vectors: Vec<f32>,
}

impl DenseSet {
    /// The set of `rows` (id, vector in its kept form); rows whose vector has another
    /// length, or is not finite, are left out (a damaged payload cannot stop a search).
    pub fn build(
        metric: Metric,
        dim: usize,
        rows: impl IntoIterator<Item = (u64, Vec<f32>)>,
    ) -> Self {
        let mut set = DenseSet {
            metric,
            dim,
            ids: Vec::new(),
            vectors: Vec::new(),
        };
        for (id, v) in rows {
            if v.len() == dim && v.iter().all(|x| x.is_finite()) {
                set.ids.push(id);
                set.vectors.extend_from_slice(&v);
            }
        }
        set
    }

    /// The set of multi-vectors `rows` (id, its vectors' values one after the other, in their
    /// kept form): each point's vectors held as consecutive rows of the same id; points whose
    /// values are not a whole number (at least one) of `dim`-long vectors, or not finite, are
    /// left out.
    pub fn build_multi(
        metric: Metric,
        dim: usize,
        rows: impl IntoIterator<Item = (u64, Vec<f32>)>,
    ) -> Self {
        let mut set = DenseSet {
            metric,
            dim,
            ids: Vec::new(),
            vectors: Vec::new(),
        };
        for (id, v) in rows {
            let whole = dim > 0 && !v.is_empty() && v.len().is_multiple_of(dim);
            if whole && v.iter().all(|x| x.is_finite()) {
                set.ids.extend(std::iter::repeat_n(id, v.len() / dim));
                set.vectors.extend_from_slice(&v);
            }
        }
        set
    }

    /// The `k` points whose vectors (consecutive rows of one id, [`DenseSet::build_multi`])
    /// score highest by MaxSim against the multi-vector `query` (row-major, `dim` values per
    /// vector; cosine: unit vectors): the sum over the query's vectors of the greatest
    /// similarity to one of the point's ([`crate::example_query::similarity`]); best first,
    /// ties by ascending id; only points `keep` accepts.
    pub fn max_sim(&self, query: &[f32], k: usize, keep: &dyn Fn(u64) -> bool) -> Vec<(u64, f32)> {
        let mut best = crate::example_query::BestScores::new(k);
        for (id, rows) in self.points() {
            if keep(id) {
                best.push(id, max_sim(self.metric, self.dim, query, rows));
            }
        }
        best.finish()
    }

    /// Each point with its rows (consecutive rows of one id: a multi-vector's vectors).
    fn points(&self) -> impl Iterator<Item = (u64, &[f32])> {
        let dim = self.dim.max(1);
        let mut at = 0;
        std::iter::from_fn(move || {
            let id = *self.ids.get(at)?;
            let end = at + self.ids[at..].iter().take_while(|&&x| x == id).count();
            let rows = &self.vectors[at * dim..end * dim];
            at = end;
            Some((id, rows))
        })
    }

    /// Vectors held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when it holds none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Bytes of vectors and ids held.
    pub fn data_bytes(&self) -> usize {
        self.ids.len() * 8 + self.vectors.len() * 4
    }

    /// Offers every row whose id `keep` accepts to `best`, scored against `query`'s examples
    /// ([`crate::example_query`]).
    pub fn offer_examples(
        &self,
        query: &crate::example_query::DenseExamples,
        keep: &dyn Fn(u64) -> bool,
        best: &mut crate::example_query::BestScores,
    ) {
        if query.dim() != self.dim {
            return;
        }
        if !query.is_multi() {
            query.offer(&self.vectors, &self.ids, keep, best);
            return;
        }
        let mut sims = Vec::new();
        for (id, rows) in self.points() {
            if keep(id) {
                best.push(id, query.score_multi(rows, &mut sims));
            }
        }
    }

    /// The exact `k` nearest neighbours of each query (row-major) among the rows whose id
    /// `keep` accepts, best first, padded with -1; distances as [`Metric::reported`] gives.
    pub fn search(
        &self,
        queries: &[f32],
        k: usize,
        keep: &(dyn Fn(u64) -> bool + Sync),
    ) -> Result<Neighbors, EngineError> {
        let mut search = ExactSearch::new(self.metric, self.dim, queries, k)?;
        // Contiguous blocks scored in place; `keep` is asked only of rows good enough to
        // enter a query's best.
        for (ids, rows) in self
            .ids
            .chunks(BLOCK_ROWS)
            .zip(self.vectors.chunks(BLOCK_ROWS * self.dim))
        {
            search.add_rows_where(rows, ids, keep);
        }
        Ok(search.finish())
    }
}

/// MaxSim of two multi-vectors (row-major, `dim` values per vector): the sum over `query`'s
/// vectors of the greatest similarity to one of `rows`' ([`crate::example_query::similarity`]).
pub fn max_sim(metric: Metric, dim: usize, query: &[f32], rows: &[f32]) -> f32 {
    let dim = dim.max(1);
    query
        .chunks_exact(dim)
        .map(|q| {
            rows.chunks_exact(dim)
                .map(|r| crate::example_query::similarity(metric, q, r))
                .fold(f32::NEG_INFINITY, f32::max)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bruteforce::ExactSearch;
    use rand::{RngExt as _, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn payload_text_keeps_every_bit() {
        let v = vec![1.5, -0.0, f32::MIN_POSITIVE, 3.0e38, 1.0 / 3.0];
        assert_eq!(decode(&encode(&v)), Some(v));
        assert_eq!(decode("not base64!"), None);
        assert_eq!(decode("AAA="), None, "two bytes are no f32");
        assert_eq!(decode(""), Some(vec![]));
    }

    #[test]
    fn vectors_are_checked_and_cosine_ones_scaled() {
        assert!(matches!(
            prepare(Metric::L2, 3, &[1.0, 2.0]),
            Err(EngineError::DimensionMismatch {
                expected: 3,
                got: 2
            })
        ));
        assert!(matches!(
            prepare(Metric::L2, 2, &[1.0, f32::NAN]),
            Err(EngineError::NonFinite { component: 1, .. })
        ));
        assert!(matches!(
            prepare(Metric::Cosine, 2, &[0.0, 0.0]),
            Err(EngineError::ZeroVector { .. })
        ));
        assert_eq!(
            prepare(Metric::Cosine, 2, &[3.0, 4.0]).unwrap(),
            vec![0.6, 0.8]
        );
        assert_eq!(prepare(Metric::L2, 2, &[3.0, 4.0]).unwrap(), vec![3.0, 4.0]);
    }

    /// MaxSim written out for two points; points of partial vectors are left out.
    #[test]
    fn multi_vectors_are_scored_by_max_sim() {
        let set = DenseSet::build_multi(
            Metric::InnerProduct,
            2,
            vec![
                (7, vec![1.0, 0.0, 0.0, 1.0]),
                (3, vec![0.5, 0.5]),
                (9, vec![1.0, 2.0, 3.0]),
            ],
        );
        assert_eq!(set.len(), 3, "two rows of 7, one of 3");
        // Query vectors (1, 0) and (0, 2): point 7 scores 1 + 2, point 3 0.5 + 1.
        let got = set.max_sim(&[1.0, 0.0, 0.0, 2.0], 5, &|_| true);
        assert_eq!(got, vec![(7, 3.0), (3, 1.5)]);
        assert_eq!(set.max_sim(&[1.0, 0.0], 5, &|id| id != 7), vec![(3, 0.5)]);
        let l2 = max_sim(Metric::L2, 2, &[0.0, 0.0], &[1.0, 1.0, 3.0, 0.0]);
        assert_eq!(l2, -2.0);
    }

    /// Equal to an exact search over the kept rows, for every metric, with and without a
    /// filter, across several blocks.
    #[test]
    fn search_equals_brute_force_over_the_kept_rows() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (n, dim, nq, k) = (BLOCK_ROWS + 777, 12, 5, 10);
        for metric in [Metric::L2, Metric::InnerProduct, Metric::Cosine] {
            let rows: Vec<(u64, Vec<f32>)> = (0..n as u64)
                .map(|i| {
                    let v: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() - 0.5).collect();
                    (i * 3 + 1, prepare(metric, dim, &v).unwrap())
                })
                .collect();
            let set = DenseSet::build(metric, dim, rows.clone());
            assert_eq!(set.len(), n);
            let queries: Vec<f32> = (0..nq * dim).map(|_| rng.random::<f32>() - 0.5).collect();
            let keep = |id: u64| id.is_multiple_of(2);
            let got = set.search(&queries, k, &keep).unwrap();
            let mut want = ExactSearch::new(metric, dim, &queries, k).unwrap();
            let kept: Vec<&(u64, Vec<f32>)> = rows.iter().filter(|r| keep(r.0)).collect();
            let ids: Vec<u64> = kept.iter().map(|r| r.0).collect();
            let flat: Vec<f32> = kept.iter().flat_map(|r| r.1.clone()).collect();
            want.add_rows(&flat, &ids);
            let want = want.finish();
            assert_eq!(got.ids, want.ids, "{metric:?}");
            assert!(
                got.ids.iter().all(|&id| id >= 0 && id % 2 == 0),
                "only kept rows"
            );
        }
    }

    #[test]
    fn rows_of_another_length_are_left_out() {
        let set = DenseSet::build(
            Metric::L2,
            2,
            vec![
                (1, vec![1.0, 0.0]),
                (2, vec![1.0]),
                (3, vec![f32::NAN, 0.0]),
            ],
        );
        assert_eq!(set.len(), 1);
        let got = set.search(&[1.0, 0.0], 2, &|_| true).unwrap();
        assert_eq!(got.ids, vec![1, -1]);
    }
}
