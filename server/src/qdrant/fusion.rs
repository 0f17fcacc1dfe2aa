//! Fusion of several rankings into one (the Query API's `fusion` over its `prefetch`es), as
//! Qdrant defines them:
//! - RRF, reciprocal rank fusion: a point's score is the sum over the rankings holding it of
//!   `1 / (2 + position)` (position from 0);
//! - DBSF, distribution-based score fusion: each ranking's scores are mapped to `[0, 1]` over
//!   mean ± 3 standard deviations (sample deviation; one score, or all equal: 0.5), then
//!   summed per point.
//!
//! Points of equal fused score keep the order they were first seen in (rankings in order,
//! each best first), as qdrant-client's local mode orders them.

use std::collections::HashMap;

/// How rankings are fused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fusion {
    /// Reciprocal rank fusion.
    Rrf,
    /// Distribution-based score fusion.
    Dbsf,
}

/// The constant of RRF's `1 / (k + position)`.
const RRF_K: f64 = 2.0;

/// Fuses `rankings` (each a list of (id, score), best first) into the best `limit`, best
/// first.
pub fn fuse(fusion: Fusion, rankings: &[Vec<(u64, f32)>], limit: usize) -> Vec<(u64, f32)> {
    let mut order: Vec<u64> = Vec::new();
    let mut score: HashMap<u64, f64> = HashMap::new();
    let mut add = |id: u64, s: f64| {
        let e = score.entry(id).or_insert_with(|| {
            order.push(id);
            0.0
        });
        *e += s;
    };
    for ranking in rankings {
        match fusion {
            Fusion::Rrf => {
                for (pos, &(id, _)) in ranking.iter().enumerate() {
                    add(id, 1.0 / (RRF_K + pos as f64));
                }
            }
            Fusion::Dbsf => {
                for (id, s) in normalized(ranking) {
                    add(id, s);
                }
            }
        }
    }
    let mut fused: Vec<(u64, f64)> = order.into_iter().map(|id| (id, score[&id])).collect();
    // Stable: equal scores keep the order first seen.
    fused.sort_by(|a, b| b.1.total_cmp(&a.1));
    fused.truncate(limit);
    fused.into_iter().map(|(id, s)| (id, s as f32)).collect()
}

/// A ranking's scores mapped to `[0, 1]` over mean ± 3 sample standard deviations.
fn normalized(ranking: &[(u64, f32)]) -> Vec<(u64, f64)> {
    let n = ranking.len();
    if n == 0 {
        return Vec::new();
    }
    if n == 1 {
        return vec![(ranking[0].0, 0.5)];
    }
    let scores: Vec<f64> = ranking.iter().map(|&(_, s)| f64::from(s)).collect();
    let mean = scores.iter().sum::<f64>() / n as f64;
    let var = scores.iter().map(|s| (s - mean) * (s - mean)).sum::<f64>() / (n - 1) as f64;
    if var == 0.0 {
        return ranking.iter().map(|&(id, _)| (id, 0.5)).collect();
    }
    let sd = var.sqrt();
    let (low, high) = (mean - 3.0 * sd, mean + 3.0 * sd);
    ranking
        .iter()
        .zip(scores)
        .map(|(&(id, _), s)| (id, (s - low) / (high - low)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rrf_sums_reciprocal_ranks() {
        let a = vec![(1, 0.9), (2, 0.8), (3, 0.1)];
        let b = vec![(3, 10.0), (1, 5.0)];
        let got = fuse(Fusion::Rrf, &[a, b], 10);
        // 1: 1/2 + 1/3; 3: 1/4 + 1/2; 2: 1/3.
        assert_eq!(got.iter().map(|h| h.0).collect::<Vec<_>>(), vec![1, 3, 2]);
        assert!((got[0].1 - (0.5 + 1.0 / 3.0) as f32).abs() < 1e-6);
        assert!((got[1].1 - 0.75).abs() < 1e-6);
        assert_eq!(fuse(Fusion::Rrf, &[vec![(1, 1.0), (2, 1.0)]], 1).len(), 1);
    }

    #[test]
    fn dbsf_normalizes_each_ranking() {
        let got = fuse(
            Fusion::Dbsf,
            &[vec![(7, 3.0)], vec![(8, 1.0), (9, 1.0)]],
            10,
        );
        // One score: 0.5; equal scores: 0.5 each; ties keep the order first seen.
        assert_eq!(got, vec![(7, 0.5), (8, 0.5), (9, 0.5)]);
        let got = fuse(Fusion::Dbsf, &[vec![(1, 2.0), (2, 0.0)]], 10);
        // mean 1, sd √2: (2 - (1 - 3√2)) / 6√2 and its mirror.
        let sd = 2f64.sqrt();
        assert!((f64::from(got[0].1) - (1.0 + 3.0 * sd) / (6.0 * sd)).abs() < 1e-6);
        assert!((f64::from(got[1].1) - (3.0 * sd - 1.0) / (6.0 * sd)).abs() < 1e-6);
    }
}
