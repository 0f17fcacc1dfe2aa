//! Sparse vectors (term → weight, as BM25 or SPLADE models make them) and the inverted index
//! that searches them exactly: one posting list per term, a query scored term at a time into
//! an accumulator per row, the best `k` rows by dot product kept.
//!
//! Scores follow Qdrant's: the dot product over the terms both vectors hold; a row sharing no
//! term with the query has no score and is never a result. With the `idf` modifier a query's
//! weights are multiplied by each term's inverse document frequency ([`idf`]) before scoring.

use std::collections::HashMap;

/// Most non-zero entries a sparse vector may hold.
pub const MAX_SPARSE_ENTRIES: usize = 65_536;

/// Why a sparse vector is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SparseError {
    /// `indices` and `values` differ in length.
    #[error("{indices} indices but {values} values: give one value per index")]
    Lengths {
        /// Indices given.
        indices: usize,
        /// Values given.
        values: usize,
    },
    /// An index given twice.
    #[error("index {0} is given more than once")]
    Duplicate(u32),
    /// A value that is NaN or infinite.
    #[error("the value of index {0} is not a finite number")]
    NotFinite(u32),
    /// Too many entries.
    #[error("{given} entries exceed the limit of {max}")]
    TooLarge {
        /// Entries given.
        given: usize,
        /// The limit.
        max: usize,
    },
}

/// A sparse vector: its terms ascending, each with its weight.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SparseVector {
    /// Terms, ascending, each once.
    pub indices: Vec<u32>,
    /// The weight of each term.
    pub values: Vec<f32>,
}

impl SparseVector {
    /// Checks and sorts `indices` (with their `values`): equal lengths, each index once,
    /// finite values, at most [`MAX_SPARSE_ENTRIES`].
    pub fn new(indices: Vec<u32>, values: Vec<f32>) -> Result<SparseVector, SparseError> {
        if indices.len() != values.len() {
            return Err(SparseError::Lengths {
                indices: indices.len(),
                values: values.len(),
            });
        }
        if indices.len() > MAX_SPARSE_ENTRIES {
            return Err(SparseError::TooLarge {
                given: indices.len(),
                max: MAX_SPARSE_ENTRIES,
            });
        }
        if let Some(i) = indices
            .iter()
            .zip(&values)
            .find(|(_, v)| !v.is_finite())
            .map(|(i, _)| *i)
        {
            return Err(SparseError::NotFinite(i));
        }
        let mut pairs: Vec<(u32, f32)> = indices.into_iter().zip(values).collect();
        if !pairs.windows(2).all(|w| w[0].0 < w[1].0) {
            pairs.sort_by_key(|p| p.0);
            if let Some(w) = pairs.windows(2).find(|w| w[0].0 == w[1].0) {
                return Err(SparseError::Duplicate(w[0].0));
            }
        }
        Ok(SparseVector {
            indices: pairs.iter().map(|p| p.0).collect(),
            values: pairs.iter().map(|p| p.1).collect(),
        })
    }

    /// The JSON form Qdrant's REST API uses: `{"indices": [...], "values": [...]}`.
    /// Values are written in their shortest f32 form (`0.1`, not f64's widening of it), which
    /// reads back to the same f32.
    pub fn to_json(&self) -> serde_json::Value {
        let values: Vec<serde_json::Value> = self
            .values
            .iter()
            .map(|v| {
                v.to_string()
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number)
            })
            .collect();
        serde_json::json!({"indices": self.indices, "values": values})
    }

    /// Reads [`Self::to_json`]'s form (checked as [`Self::new`] checks); `None` when it is not
    /// that form.
    pub fn from_json(v: &serde_json::Value) -> Option<SparseVector> {
        let o = v.as_object()?;
        let indices = o
            .get("indices")?
            .as_array()?
            .iter()
            .map(|x| x.as_u64().and_then(|i| u32::try_from(i).ok()))
            .collect::<Option<Vec<u32>>>()?;
        let values = o
            .get("values")?
            .as_array()?
            .iter()
            .map(|x| x.as_f64().map(|f| f as f32))
            .collect::<Option<Vec<f32>>>()?;
        SparseVector::new(indices, values).ok()
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// True when it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The dot product with `other` over the terms both hold; `None` when they share none.
    pub fn dot(&self, other: &SparseVector) -> Option<f32> {
        let (mut i, mut j) = (0, 0);
        let mut sum = 0.0f32;
        let mut shared = false;
        while i < self.indices.len() && j < other.indices.len() {
            match self.indices[i].cmp(&other.indices[j]) {
                std::cmp::Ordering::Equal => {
                    sum += self.values[i] * other.values[j];
                    shared = true;
                    i += 1;
                    j += 1;
                }
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
            }
        }
        shared.then_some(sum)
    }
}

/// Inverse document frequency of a term found in `df` of `n` points (Qdrant's:
/// `ln((n - df + 0.5) / (df + 0.5) + 1)`).
pub fn idf(df: usize, n: usize) -> f32 {
    let (df, n) = (df as f64, n as f64);
    ((n - df + 0.5) / (df + 0.5) + 1.0).ln() as f32
}

/// An inverted index over the sparse vectors of a set of rows (a segment's points).
#[derive(Debug, Default)]
pub struct SparseIndex {
    /// The id of each row.
    ids: Vec<u64>,
    /// (id, row), by id: which row holds an id.
    rows_by_id: Vec<(u64, u32)>,
    /// Term → (row, weight), rows ascending.
    postings: HashMap<u32, Vec<(u32, f32)>>,
}

impl SparseIndex {
    /// The index of `rows`: each an id and its sparse vector.
    pub fn build(rows: impl IntoIterator<Item = (u64, SparseVector)>) -> SparseIndex {
        let mut index = SparseIndex::default();
        for (id, v) in rows {
            let row = index.ids.len() as u32;
            index.ids.push(id);
            for (&t, &w) in v.indices.iter().zip(&v.values) {
                index.postings.entry(t).or_default().push((row, w));
            }
        }
        index.rows_by_id = index
            .ids
            .iter()
            .enumerate()
            .map(|(r, &id)| (id, r as u32))
            .collect();
        index.rows_by_id.sort_unstable();
        index
    }

    /// The row holding `id`, if any.
    pub fn row_of(&self, id: u64) -> Option<u32> {
        self.rows_by_id
            .binary_search_by_key(&id, |p| p.0)
            .ok()
            .map(|i| self.rows_by_id[i].1)
    }

    /// True when row `row` holds `term`.
    pub fn holds(&self, row: u32, term: u32) -> bool {
        self.postings
            .get(&term)
            .is_some_and(|p| p.binary_search_by_key(&row, |e| e.0).is_ok())
    }

    /// The id of row `row`.
    pub fn id(&self, row: u32) -> u64 {
        self.ids[row as usize]
    }

    /// Adds the dot product with `query` of each row in `rows` to `out[row − rows.start]`
    /// (`out`: one value per row of the range).
    pub fn accumulate_rows(
        &self,
        query: &SparseVector,
        rows: std::ops::Range<u32>,
        out: &mut [f32],
    ) {
        for (t, &q) in query.indices.iter().zip(&query.values) {
            if let Some(list) = self.postings.get(t) {
                // Postings are by ascending row: the range's part of the list.
                let from = list.partition_point(|e| e.0 < rows.start);
                for &(row, w) in list[from..].iter().take_while(|e| e.0 < rows.end) {
                    out[(row - rows.start) as usize] += q * w;
                }
            }
        }
    }

    /// How many rows hold `term`.
    pub fn postings_len(&self, term: u32) -> usize {
        self.postings.get(&term).map_or(0, Vec::len)
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when it holds no row.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// How many rows passing `keep` hold `term`.
    pub fn doc_freq(&self, term: u32, keep: &dyn Fn(u64) -> bool) -> usize {
        self.postings.get(&term).map_or(0, |p| {
            p.iter()
                .filter(|(r, _)| keep(self.ids[*r as usize]))
                .count()
        })
    }

    /// The `k` rows passing `keep` with the highest dot product with `query` (those sharing
    /// at least one term with it), best first, ties by ascending id: exact.
    pub fn search(
        &self,
        query: &SparseVector,
        k: usize,
        keep: &dyn Fn(u64) -> bool,
    ) -> Vec<(u64, f32)> {
        if k == 0 || self.ids.is_empty() {
            return Vec::new();
        }
        // Term at a time into one accumulator per row; `touched` lists the rows scored.
        let mut scores = vec![0.0f32; self.ids.len()];
        let mut seen = vec![false; self.ids.len()];
        let mut touched: Vec<u32> = Vec::new();
        for (t, &q) in query.indices.iter().zip(&query.values) {
            let Some(list) = self.postings.get(t) else {
                continue;
            };
            for &(row, w) in list {
                let r = row as usize;
                if !seen[r] {
                    seen[r] = true;
                    touched.push(row);
                }
                scores[r] += q * w;
            }
        }
        let mut hits: Vec<(u64, f32)> = touched
            .into_iter()
            .map(|r| (self.ids[r as usize], scores[r as usize]))
            .collect();
        let by_score = |a: &(u64, f32), b: &(u64, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        // The best few first (most rows pass `keep`); all of them only when too few of those
        // pass.
        let few = k.saturating_mul(4).max(64);
        if hits.len() > few {
            hits.select_nth_unstable_by(few, by_score);
            let mut head: Vec<(u64, f32)> = hits[..few].to_vec();
            head.sort_unstable_by(by_score);
            let kept: Vec<(u64, f32)> = head
                .into_iter()
                .filter(|(id, _)| keep(*id))
                .take(k)
                .collect();
            if kept.len() == k {
                return kept;
            }
        }
        hits.sort_unstable_by(by_score);
        hits.into_iter()
            .filter(|(id, _)| keep(*id))
            .take(k)
            .collect()
    }
}

/// The query of Qdrant's `average_vector` recommendation over sparse vectors: the mean of
/// the positive examples (each term's weights summed over the examples, divided by their
/// count), and with negative examples `2·mean(positive) − mean(negative)` over the union of
/// their terms.
pub fn average_vector(
    positive: &[SparseVector],
    negative: &[SparseVector],
) -> Result<SparseVector, SparseError> {
    let mean = |examples: &[SparseVector]| -> std::collections::BTreeMap<u32, f64> {
        let mut sum = std::collections::BTreeMap::new();
        for e in examples {
            for (&t, &w) in e.indices.iter().zip(&e.values) {
                *sum.entry(t).or_insert(0.0f64) += f64::from(w);
            }
        }
        let n = examples.len().max(1) as f64;
        sum.values_mut().for_each(|w| *w /= n);
        sum
    };
    let mut p = mean(positive);
    if !negative.is_empty() {
        let n = mean(negative);
        for w in p.values_mut() {
            *w *= 2.0;
        }
        for (t, w) in n {
            *p.entry(t).or_insert(0.0) -= w;
        }
    }
    let (indices, values) = p.into_iter().map(|(t, w)| (t, w as f32)).unzip();
    SparseVector::new(indices, values)
}

/// The best `k` of several parts' hits (each best first), best first, ties by ascending id.
pub fn merge_hits(parts: Vec<Vec<(u64, f32)>>, k: usize) -> Vec<(u64, f32)> {
    let mut all: Vec<(u64, f32)> = parts.into_iter().flatten().collect();
    all.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all.truncate(k);
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt as _, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn sv(i: &[u32], v: &[f32]) -> SparseVector {
        SparseVector::new(i.to_vec(), v.to_vec()).unwrap()
    }

    #[test]
    fn vectors_are_sorted_and_checked() {
        let v = sv(&[5, 1, 3], &[0.5, 0.1, 0.3]);
        assert_eq!(v.indices, vec![1, 3, 5]);
        assert_eq!(v.values, vec![0.1, 0.3, 0.5]);
        assert_eq!(
            SparseVector::new(vec![1, 1], vec![1.0, 2.0]),
            Err(SparseError::Duplicate(1))
        );
        assert!(matches!(
            SparseVector::new(vec![1], vec![]),
            Err(SparseError::Lengths { .. })
        ));
        assert_eq!(
            SparseVector::new(vec![7], vec![f32::NAN]),
            Err(SparseError::NotFinite(7))
        );
    }

    #[test]
    fn dot_is_over_shared_terms_and_none_without_one() {
        let a = sv(&[1, 2, 9], &[1.0, 2.0, 3.0]);
        assert_eq!(a.dot(&sv(&[2, 9], &[10.0, 1.0])), Some(23.0));
        assert_eq!(a.dot(&sv(&[3], &[1.0])), None);
        // A shared term of weight 0 still scores (0), as Qdrant's does.
        assert_eq!(a.dot(&sv(&[1], &[0.0])), Some(0.0));
    }

    #[test]
    fn json_keeps_the_shortest_form_and_reads_back() {
        let v = sv(&[1, 4_000_000_000], &[0.1, 1.0e-7]);
        let j = v.to_json();
        assert_eq!(
            j.to_string(),
            r#"{"indices":[1,4000000000],"values":[0.1,1e-7]}"#
        );
        assert_eq!(SparseVector::from_json(&j), Some(v));
    }

    #[test]
    fn idf_is_qdrants() {
        assert!((idf(1, 10) - ((9.5f64 / 1.5 + 1.0).ln() as f32)).abs() < 1e-6);
        assert!(idf(10, 10) > 0.0);
    }

    /// The index's top-k equals brute force over random vectors, with rows left out.
    #[test]
    fn search_equals_brute_force() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let rows: Vec<(u64, SparseVector)> = (0..500u64)
            .map(|id| {
                let n = rng.random_range(0..12);
                let mut terms: Vec<u32> = (0..n).map(|_| rng.random_range(0..60)).collect();
                terms.sort_unstable();
                terms.dedup();
                let vals = terms.iter().map(|_| rng.random_range(-1.0..2.0)).collect();
                (id * 3, SparseVector::new(terms, vals).unwrap())
            })
            .collect();
        let index = SparseIndex::build(rows.clone());
        let keep = |id: u64| !id.is_multiple_of(7);
        for _ in 0..50 {
            let mut terms: Vec<u32> = (0..rng.random_range(1..6))
                .map(|_| rng.random_range(0..70))
                .collect();
            terms.sort_unstable();
            terms.dedup();
            let q = SparseVector::new(
                terms.clone(),
                terms.iter().map(|_| rng.random_range(0.1..1.0)).collect(),
            )
            .unwrap();
            let got = index.search(&q, 10, &keep);
            let mut want: Vec<(u64, f32)> = rows
                .iter()
                .filter(|(id, _)| keep(*id))
                .filter_map(|(id, v)| Some((*id, q.dot(v)?)))
                .collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            want.truncate(10);
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.0, w.0);
                assert!((g.1 - w.1).abs() < 1e-5);
            }
        }
        let df = index.doc_freq(5, &keep);
        let want = rows
            .iter()
            .filter(|(id, v)| keep(*id) && v.indices.contains(&5))
            .count();
        assert_eq!(df, want);
        for (id, v) in rows.iter().take(50) {
            let row = index.row_of(*id).unwrap();
            assert_eq!(index.holds(row, 5), v.indices.contains(&5));
        }
        assert_eq!(index.row_of(1), None);
        assert_eq!(
            index.postings_len(5),
            rows.iter().filter(|(_, v)| v.indices.contains(&5)).count()
        );
    }
}
