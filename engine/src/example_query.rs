//! Queries scored against several example vectors rather than by nearness to one: Qdrant's
//! recommendation strategies `best_score` and `sum_scores`, `discover` (a target and context
//! pairs) and `context` (pairs alone).
//!
//! Each scores a point by a function of its similarities to the examples ([`Scoring::score`]),
//! higher better. A similarity is what Qdrant's core compares: the dot product for inner
//! product and cosine (unit vectors), the squared Euclidean distance negated for L2. No index
//! orders points by such a function, so these queries are answered exactly, over every point
//! a filter lets through ([`DenseExamples`] for dense vectors, [`sparse_example_search`] for
//! sparse ones through their inverted index).

use crate::sparse::{SparseIndex, SparseVector};
use crate::topk::TopK;
use crate::{EngineError, Metric};

/// A difference smaller than this counts as none (`f32::EPSILON`, as Qdrant's context score).
const EPSILON: f32 = f32::EPSILON;

/// Most examples one query scores against.
pub const MAX_EXAMPLES: usize = 256;

/// Most vectors in all of a query's multi-vector examples together.
pub const MAX_EXAMPLE_VECTORS: usize = 4096;

/// Sparse index rows whose dot products with the examples are held at once.
const SPARSE_BLOCK_ROWS: u32 = 4096;

/// `x / (1 + |x|)`: a sigmoid into (-1, 1) without an exponential.
fn fast_sigmoid(x: f32) -> f32 {
    if !x.is_finite() {
        return x;
    }
    x / (1.0 + x.abs())
}

/// [`fast_sigmoid`] moved into (0, 1).
fn scaled_fast_sigmoid(x: f32) -> f32 {
    0.5 * (fast_sigmoid(x) + 1.0)
}

/// How a point's similarities to the examples make its score. The examples come in one list
/// ([`Scoring::examples`] long) in the order each variant states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scoring {
    /// The best similarity to a positive example, squashed into (0, 1), when it beats the
    /// best to a negative one; else that negative similarity squashed and negated. Examples:
    /// `positive` positive ones, then the negative ones.
    BestScore {
        /// Positive examples (the first ones).
        positive: usize,
        /// Negative examples (the rest).
        negative: usize,
    },
    /// The sum of the similarities to the positive examples less the sum to the negative
    /// ones. Examples as [`Scoring::BestScore`].
    SumScores {
        /// Positive examples (the first ones).
        positive: usize,
        /// Negative examples (the rest).
        negative: usize,
    },
    /// For each context pair +1 when the point is more similar to its positive example than
    /// to its negative one, −1 when less, 0 when equal; plus the similarity to the target
    /// squashed into (0, 1). Examples: the target, then each pair's positive and negative.
    Discover {
        /// Context pairs.
        pairs: usize,
    },
    /// The sum over context pairs of `min(0, sim(positive) − sim(negative))`, squashed: 0
    /// for a point on the positive side of every pair. Examples: each pair's positive and
    /// negative.
    Context {
        /// Context pairs.
        pairs: usize,
    },
}

impl Scoring {
    /// How many examples it scores against.
    pub fn examples(&self) -> usize {
        match *self {
            Scoring::BestScore { positive, negative }
            | Scoring::SumScores { positive, negative } => positive + negative,
            Scoring::Discover { pairs } => 1 + 2 * pairs,
            Scoring::Context { pairs } => 2 * pairs,
        }
    }

    /// Checks that it has examples to score against, and not too many.
    pub fn check(&self) -> Result<(), EngineError> {
        let n = self.examples();
        if n == 0 {
            return Err(EngineError::InvalidParameter {
                name: "examples",
                reason: "no examples to score against".into(),
            });
        }
        if n > MAX_EXAMPLES {
            return Err(EngineError::InvalidParameter {
                name: "examples",
                reason: format!("{n} examples; at most {MAX_EXAMPLES}"),
            });
        }
        Ok(())
    }

    /// A point's score from its similarities to the examples (`sims`, in the examples'
    /// order; [`Scoring::examples`] long).
    pub fn score(&self, sims: &[f32]) -> f32 {
        match *self {
            Scoring::BestScore { positive, .. } => {
                let best = |s: &[f32]| s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let (pos, neg) = (best(&sims[..positive]), best(&sims[positive..]));
                if pos > neg {
                    scaled_fast_sigmoid(pos)
                } else {
                    -scaled_fast_sigmoid(neg)
                }
            }
            Scoring::SumScores { positive, .. } => {
                let pos: f32 = sims[..positive].iter().sum();
                let neg: f32 = sims[positive..].iter().sum();
                pos - neg
            }
            Scoring::Discover { .. } => {
                let rank: i32 = sims[1..]
                    .chunks_exact(2)
                    .map(|p| match p[0].partial_cmp(&p[1]) {
                        Some(std::cmp::Ordering::Greater) => 1,
                        Some(std::cmp::Ordering::Less) => -1,
                        _ => 0,
                    })
                    .sum();
                rank as f32 + scaled_fast_sigmoid(sims[0])
            }
            Scoring::Context { .. } => sims
                .chunks_exact(2)
                .map(|p| fast_sigmoid((p[0] - p[1] - EPSILON).min(0.0)))
                .sum(),
        }
    }
}

/// The similarity Qdrant's scoring compares for `metric`: the dot product (cosine: of unit
/// vectors), or the squared Euclidean distance negated.
pub fn similarity(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
    match metric {
        Metric::L2 => -crate::linalg::l2_sq(a, b),
        Metric::InnerProduct | Metric::Cosine => crate::linalg::dot(a, b),
    }
}

/// The query vector of Qdrant's `average_vector` recommendation: the mean of the positive
/// examples moved away from the mean of the negative ones, `2·mean(positive) −
/// mean(negative)` (the positive mean alone without negative examples), in `f64`.
pub fn average_vector(
    positive: &[Vec<f32>],
    negative: &[Vec<f32>],
) -> Result<Vec<f32>, EngineError> {
    let mean = |examples: &[Vec<f32>]| -> Result<Vec<f64>, EngineError> {
        let dim = examples.first().map_or(0, Vec::len);
        let mut sum = vec![0.0f64; dim];
        for e in examples {
            if e.len() != dim {
                return Err(EngineError::DimensionMismatch {
                    expected: dim,
                    got: e.len(),
                });
            }
            sum.iter_mut().zip(e).for_each(|(s, &x)| *s += f64::from(x));
        }
        let n = examples.len().max(1) as f64;
        Ok(sum.into_iter().map(|s| s / n).collect())
    };
    if positive.is_empty() || positive[0].is_empty() {
        return Err(EngineError::InvalidParameter {
            name: "positive",
            reason: "the average needs a positive example with values".into(),
        });
    }
    let p = mean(positive)?;
    if negative.is_empty() {
        return Ok(p.into_iter().map(|x| x as f32).collect());
    }
    let n = mean(negative)?;
    if n.len() != p.len() {
        return Err(EngineError::DimensionMismatch {
            expected: p.len(),
            got: n.len(),
        });
    }
    Ok(p.iter()
        .zip(&n)
        .map(|(a, b)| (2.0 * a - b) as f32)
        .collect())
}

/// The `k` best-scoring of the points offered, best first, ties by ascending id.
pub struct BestScores {
    top: TopK<u64>,
}

impl BestScores {
    /// An empty selection of at most `k`.
    pub fn new(k: usize) -> Self {
        BestScores { top: TopK::new(k) }
    }

    /// Offers point `id` scoring `score` (higher better).
    pub fn push(&mut self, id: u64, score: f32) {
        self.top.push(-score, id);
    }

    /// The best ones: (id, score), best first.
    pub fn finish(self) -> Vec<(u64, f32)> {
        self.top
            .into_sorted()
            .into_iter()
            .map(|s| (s.item, -s.score))
            .collect()
    }
}

/// A query scoring dense vectors (or multi-vectors) against examples.
#[derive(Debug, Clone)]
pub struct DenseExamples {
    scoring: Scoring,
    metric: Metric,
    dim: usize,
    /// The examples' vectors, row-major (cosine: scaled to unit length).
    examples: Vec<f32>,
    /// Multi-vectors: where each example's vectors start in `examples` (in rows), and the
    /// end; points and examples compared by MaxSim.
    multi: Option<Vec<usize>>,
}

impl DenseExamples {
    /// The query scoring by `scoring` against `examples` (in its order), vectors of a space
    /// with `metric` and `dim` values; each checked (length, finite values), cosine ones
    /// scaled to unit length (a zero vector stays zero, as similar to nothing).
    pub fn new(
        scoring: Scoring,
        metric: Metric,
        dim: usize,
        examples: &[Vec<f32>],
    ) -> Result<Self, EngineError> {
        check_count(scoring, examples.len())?;
        Ok(DenseExamples {
            scoring,
            metric,
            dim,
            examples: kept_rows(metric, dim, examples.iter())?,
            multi: None,
        })
    }

    /// The query over multi-vectors: each example several vectors of `dim` values (at least
    /// one), a point's similarity to an example their MaxSim with the example's vectors as
    /// the query ([`crate::dense_set::max_sim`]); checked and scaled as [`DenseExamples::new`].
    pub fn new_multi(
        scoring: Scoring,
        metric: Metric,
        dim: usize,
        examples: &[Vec<Vec<f32>>],
    ) -> Result<Self, EngineError> {
        check_count(scoring, examples.len())?;
        if let Some(i) = examples.iter().position(Vec::is_empty) {
            return Err(EngineError::InvalidParameter {
                name: "examples",
                reason: format!("example {i} holds no vector"),
            });
        }
        let total: usize = examples.iter().map(Vec::len).sum();
        if total > MAX_EXAMPLE_VECTORS {
            return Err(EngineError::InvalidParameter {
                name: "examples",
                reason: format!("{total} vectors in the examples; at most {MAX_EXAMPLE_VECTORS}"),
            });
        }
        let mut starts = Vec::with_capacity(examples.len() + 1);
        let mut at = 0;
        for e in examples {
            starts.push(at);
            at += e.len();
        }
        starts.push(at);
        Ok(DenseExamples {
            scoring,
            metric,
            dim,
            examples: kept_rows(metric, dim, examples.iter().flatten())?,
            multi: Some(starts),
        })
    }

    /// Values per vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// True for a query over multi-vectors ([`DenseExamples::new_multi`]).
    pub fn is_multi(&self) -> bool {
        self.multi.is_some()
    }

    /// The score of a point whose multi-vector is `rows` (its vectors one after the other, in
    /// their kept form), for a query over multi-vectors (`sims`: scratch space).
    pub fn score_multi(&self, rows: &[f32], sims: &mut Vec<f32>) -> f32 {
        sims.clear();
        let dim = self.dim.max(1);
        if let Some(starts) = &self.multi {
            sims.extend(starts.windows(2).map(|w| {
                let example = &self.examples[w[0] * dim..w[1] * dim];
                crate::dense_set::max_sim(self.metric, dim, example, rows)
            }));
        }
        self.scoring.score(sims)
    }

    /// The score of a point whose vector is `row` (`sims`: scratch space).
    pub fn score(&self, row: &[f32], sims: &mut Vec<f32>) -> f32 {
        if self.multi.is_some() {
            return self.score_multi(row, sims);
        }
        sims.clear();
        let scaled;
        let row = if self.metric == Metric::Cosine {
            // Stored cosine vectors are unit already; one scaled here costs a norm.
            let n = crate::linalg::norm_sq(row);
            if (n - 1.0).abs() > 1e-4 && n > 0.0 {
                let mut r = row.to_vec();
                unit(&mut r);
                scaled = r;
                &scaled[..]
            } else {
                row
            }
        } else {
            row
        };
        sims.extend(
            self.examples
                .chunks_exact(self.dim.max(1))
                .map(|e| similarity(self.metric, row, e)),
        );
        self.scoring.score(sims)
    }

    /// Offers every row (`ids[i]` holds `rows[i·dim..]`) whose id `keep` accepts to `best`.
    pub fn offer(
        &self,
        rows: &[f32],
        ids: &[u64],
        keep: &dyn Fn(u64) -> bool,
        best: &mut BestScores,
    ) {
        let mut sims = Vec::with_capacity(self.scoring.examples());
        for (row, &id) in rows.chunks_exact(self.dim.max(1)).zip(ids) {
            if keep(id) {
                best.push(id, self.score(row, &mut sims));
            }
        }
    }
}

/// Checks that `scoring` is valid and takes `n` examples.
fn check_count(scoring: Scoring, n: usize) -> Result<(), EngineError> {
    scoring.check()?;
    if n != scoring.examples() {
        return Err(EngineError::InvalidParameter {
            name: "examples",
            reason: format!(
                "{n} examples where the scoring takes {}",
                scoring.examples()
            ),
        });
    }
    Ok(())
}

/// `rows` checked (`dim` values, finite) and one after the other; cosine ones scaled to unit
/// length.
fn kept_rows<'a>(
    metric: Metric,
    dim: usize,
    rows: impl Iterator<Item = &'a Vec<f32>>,
) -> Result<Vec<f32>, EngineError> {
    let mut flat = Vec::new();
    for (row, e) in rows.enumerate() {
        if e.len() != dim {
            return Err(EngineError::DimensionMismatch {
                expected: dim,
                got: e.len(),
            });
        }
        if let Some(c) = e.iter().position(|x| !x.is_finite()) {
            return Err(EngineError::NonFinite {
                row,
                component: c,
                value: e[c],
            });
        }
        let start = flat.len();
        flat.extend_from_slice(e);
        if metric == Metric::Cosine {
            unit(&mut flat[start..]);
        }
    }
    Ok(flat)
}

/// Scales `v` to unit length (a zero vector is left as it is).
fn unit(v: &mut [f32]) {
    let n = crate::linalg::norm_sq(v).sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// Offers to `best` every row of a sparse index whose id `keep` accepts, scored by `scoring`
/// against the sparse `examples` (the similarity: the dot product, 0 for no shared term).
pub fn sparse_example_search(
    index: &SparseIndex,
    scoring: Scoring,
    examples: &[SparseVector],
    keep: &dyn Fn(u64) -> bool,
    best: &mut BestScores,
) -> Result<(), EngineError> {
    scoring.check()?;
    if examples.len() != scoring.examples() {
        return Err(EngineError::InvalidParameter {
            name: "examples",
            reason: format!(
                "{} examples where the scoring takes {}",
                examples.len(),
                scoring.examples()
            ),
        });
    }
    let rows = index.len() as u32;
    // One dot product per (example, row), a block of rows at a time (memory bounded by the
    // block, not the segment).
    let mut dots = vec![0.0f32; SPARSE_BLOCK_ROWS as usize * examples.len()];
    let mut sims = vec![0.0f32; examples.len()];
    let mut start = 0;
    while start < rows {
        let end = (start + SPARSE_BLOCK_ROWS).min(rows);
        let n = (end - start) as usize;
        dots.iter_mut().for_each(|d| *d = 0.0);
        for (e, acc) in examples
            .iter()
            .zip(dots.chunks_exact_mut(SPARSE_BLOCK_ROWS as usize))
        {
            index.accumulate_rows(e, start..end, &mut acc[..n]);
        }
        for r in 0..n {
            let id = index.id(start + r as u32);
            if !keep(id) {
                continue;
            }
            for (e, s) in sims.iter_mut().enumerate() {
                *s = dots[e * SPARSE_BLOCK_ROWS as usize + r];
            }
            best.push(id, scoring.score(&sims));
        }
        start = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt as _, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Scores as Qdrant's reference (qdrant-client's local mode) computes them, written out
    /// for one point.
    #[test]
    fn scores_follow_the_reference_formulas() {
        let s = |x: f32| x / (1.0 + x.abs());
        let scaled = |x: f32| 0.5 * (s(x) + 1.0);
        let best = Scoring::BestScore {
            positive: 2,
            negative: 1,
        };
        assert_eq!(best.score(&[0.2, 0.5, 0.4]), scaled(0.5));
        assert_eq!(best.score(&[0.2, 0.3, 0.4]), -scaled(0.4));
        let no_negative = Scoring::BestScore {
            positive: 1,
            negative: 0,
        };
        assert_eq!(no_negative.score(&[-3.0]), scaled(-3.0));
        let no_positive = Scoring::BestScore {
            positive: 0,
            negative: 1,
        };
        assert_eq!(no_positive.score(&[0.7]), -scaled(0.7));
        let sum = Scoring::SumScores {
            positive: 2,
            negative: 1,
        };
        assert!((sum.score(&[0.2, 0.5, 0.4]) - 0.3).abs() < 1e-6);
        let discover = Scoring::Discover { pairs: 3 };
        // Target 0.1; pairs: better, worse, equal.
        let d = discover.score(&[0.1, 0.9, 0.2, 0.1, 0.3, 0.5, 0.5]);
        assert_eq!(d, scaled(0.1));
        let context = Scoring::Context { pairs: 2 };
        let c = context.score(&[0.9, 0.2, 0.1, 0.3]);
        assert_eq!(c, s(0.1 - 0.3 - f32::EPSILON));
        assert_eq!(Scoring::Discover { pairs: 0 }.examples(), 1);
    }

    #[test]
    fn bad_examples_are_refused() {
        let none = Scoring::Context { pairs: 0 };
        assert!(DenseExamples::new(none, Metric::L2, 2, &[]).is_err());
        let one = Scoring::Discover { pairs: 0 };
        assert!(matches!(
            DenseExamples::new(one, Metric::L2, 2, &[vec![1.0]]),
            Err(EngineError::DimensionMismatch {
                expected: 2,
                got: 1
            })
        ));
        assert!(matches!(
            DenseExamples::new(one, Metric::L2, 2, &[vec![1.0, f32::NAN]]),
            Err(EngineError::NonFinite { component: 1, .. })
        ));
        assert!(DenseExamples::new(one, Metric::L2, 2, &[vec![1.0, 1.0], vec![0.0, 0.0]]).is_err());
        let many = Scoring::SumScores {
            positive: MAX_EXAMPLES + 1,
            negative: 0,
        };
        assert!(many.check().is_err());
    }

    /// The dense scan equals scoring each kept point alone, sorted; cosine rows and examples
    /// are compared as unit vectors.
    #[test]
    fn dense_scan_keeps_the_best_scores() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (n, dim, k) = (500, 8, 20);
        let rows: Vec<f32> = (0..n * dim).map(|_| rng.random::<f32>() - 0.5).collect();
        let ids: Vec<u64> = (0..n as u64).map(|i| 1000 - i).collect();
        for metric in [Metric::L2, Metric::InnerProduct, Metric::Cosine] {
            for scoring in [
                Scoring::BestScore {
                    positive: 2,
                    negative: 2,
                },
                Scoring::SumScores {
                    positive: 1,
                    negative: 2,
                },
                Scoring::Discover { pairs: 2 },
                Scoring::Context { pairs: 2 },
            ] {
                let examples: Vec<Vec<f32>> = (0..scoring.examples())
                    .map(|_| (0..dim).map(|_| rng.random::<f32>() - 0.5).collect())
                    .collect();
                let q = DenseExamples::new(scoring, metric, dim, &examples).unwrap();
                let keep = |id: u64| !id.is_multiple_of(3);
                let mut best = BestScores::new(k);
                q.offer(&rows, &ids, &keep, &mut best);
                let got = best.finish();
                let unitv = |v: &[f32]| {
                    let mut v = v.to_vec();
                    if metric == Metric::Cosine {
                        unit(&mut v);
                    }
                    v
                };
                let mut want: Vec<(u64, f32)> = rows
                    .chunks_exact(dim)
                    .zip(&ids)
                    .filter(|(_, &id)| keep(id))
                    .map(|(r, &id)| {
                        let r = unitv(r);
                        let sims: Vec<f32> = examples
                            .iter()
                            .map(|e| similarity(metric, &r, &unitv(e)))
                            .collect();
                        (id, scoring.score(&sims))
                    })
                    .collect();
                want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                want.truncate(k);
                assert_eq!(got.len(), k);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g.1 - w.1).abs() < 1e-5,
                        "{metric:?} {scoring:?}: {g:?} vs {w:?}"
                    );
                }
            }
        }
    }

    /// Across several blocks of rows, each row scored as its own dot products give.
    #[test]
    fn sparse_scan_spans_blocks() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let n = SPARSE_BLOCK_ROWS as usize * 2 + 123;
        let rows: Vec<(u64, SparseVector)> = (0..n as u64)
            .map(|i| {
                let mut terms: Vec<u32> = (0..3).map(|_| rng.random_range(0..50)).collect();
                terms.sort_unstable();
                terms.dedup();
                let values = terms.iter().map(|_| rng.random::<f32>()).collect();
                (i * 2, SparseVector::new(terms, values).unwrap())
            })
            .collect();
        let index = SparseIndex::build(rows.clone());
        let examples = [
            SparseVector::new(vec![1, 7, 30], vec![1.0, 0.5, 2.0]).unwrap(),
            SparseVector::new(vec![2, 7], vec![1.5, 1.0]).unwrap(),
            SparseVector::new(vec![40], vec![1.0]).unwrap(),
        ];
        let scoring = Scoring::Discover { pairs: 1 };
        let mut best = BestScores::new(50);
        sparse_example_search(&index, scoring, &examples, &|_| true, &mut best).unwrap();
        let mut want: Vec<(u64, f32)> = rows
            .iter()
            .map(|(id, v)| {
                let sims: Vec<f32> = examples.iter().map(|e| e.dot(v).unwrap_or(0.0)).collect();
                (*id, scoring.score(&sims))
            })
            .collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        want.truncate(50);
        let got = best.finish();
        for (g, w) in got.iter().zip(&want) {
            assert!((g.1 - w.1).abs() < 1e-5, "{g:?} vs {w:?}");
        }
    }

    /// The sparse scan scores with dot products, 0 where no term is shared.
    #[test]
    fn sparse_scan_scores_every_row() {
        let sv = |i: Vec<u32>, v: Vec<f32>| SparseVector::new(i, v).unwrap();
        let index = SparseIndex::build([
            (10, sv(vec![1, 2], vec![1.0, 1.0])),
            (11, sv(vec![3], vec![2.0])),
            (12, sv(vec![2, 3], vec![0.5, 0.5])),
        ]);
        let examples = [sv(vec![1], vec![1.0]), sv(vec![3], vec![1.0])];
        let mut best = BestScores::new(10);
        let scoring = Scoring::SumScores {
            positive: 1,
            negative: 1,
        };
        sparse_example_search(&index, scoring, &examples, &|id| id != 12, &mut best).unwrap();
        assert_eq!(best.finish(), vec![(10, 1.0), (11, -2.0)]);
    }
}
