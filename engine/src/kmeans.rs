//! k-means clustering: trains the coarse quantizer (nlist centroids) and each PQ sub-quantizer.
//!
//! - Initialisation is FAISS-style: `k` distinct training points drawn at random with the seed.
//! - Training runs on a sample of at most `max_points_per_centroid × k` points (256 by default).
//! - Each iteration assigns points by a blocked SGEMM (multi-threaded with rayon) and recomputes
//!   centroids per cluster in a fixed order, so results depend on the seed only, not on the
//!   number of threads.
//! - Empty clusters are repaired as FAISS does: a large cluster is split in two by copying its
//!   centroid with a tiny symmetric perturbation.

use rand::seq::index::sample;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::error::EngineError;
use crate::linalg::{gemm_abt, row_norms_sq};
use crate::progress::Progress;

/// How points are assigned to centroids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// Nearest centroid by Euclidean distance.
    L2,
    /// Centroid with the largest inner product (FAISS's clustering with an IP quantizer).
    InnerProduct,
}

/// How the first centroids are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// `k` distinct training points drawn uniformly (FAISS's default; cheap).
    Random,
    /// k-means++ (Arthur & Vassilvitskii 2007): each next centroid drawn with probability
    /// proportional to its squared distance to the nearest one chosen so far. Costs `k` passes
    /// over the sample; spreads centroids over well-separated clusters.
    PlusPlus,
}

/// Parameters of a k-means run.
#[derive(Debug, Clone)]
pub struct KMeansParams {
    /// Number of clusters.
    pub clusters: usize,
    /// Lloyd iterations.
    pub iterations: usize,
    /// Seed of the sampling and initialisation.
    pub seed: u64,
    /// Training uses at most this many points per centroid (a random sample beyond).
    pub max_points_per_centroid: usize,
    /// Assignment rule.
    pub assignment: Assignment,
    /// Initialisation.
    pub init: Init,
}

impl KMeansParams {
    /// Defaults: 20 iterations, seed 1234, 256 points per centroid, L2 assignment.
    pub fn new(clusters: usize) -> Self {
        KMeansParams {
            clusters,
            iterations: 20,
            seed: 1234,
            max_points_per_centroid: 256,
            assignment: Assignment::L2,
            init: Init::Random,
        }
    }
}

/// A trained clustering.
#[derive(Debug, Clone)]
pub struct KMeans {
    /// Row-major `clusters × dim` centroids.
    pub centroids: Vec<f32>,
    /// Dimension of the points.
    pub dim: usize,
    /// Sum over training points of the distance to their centroid (L2) or of the negated
    /// inner product (IP), after each iteration.
    pub objective: Vec<f64>,
}

/// Rows per assignment block (one SGEMM against the centroids).
const ASSIGN_BLOCK: usize = 256;
/// Centroids per SGEMM tile, so that the distance buffer stays small for large k.
const CENTROID_TILE: usize = 4096;

/// `amount` distinct row numbers out of `n`, drawn with `seed`, in increasing order (all rows
/// when `amount >= n`). Used to pick training samples from a file without reading it whole.
pub fn sample_rows(n: usize, amount: usize, seed: u64) -> Vec<usize> {
    if amount >= n {
        return (0..n).collect();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut v = sample(&mut rng, n, amount).into_vec();
    v.sort_unstable();
    v
}

/// Trains k-means on the row-major `points` (`n × dim`).
pub fn train(
    points: &[f32],
    dim: usize,
    params: &KMeansParams,
    progress: &dyn Progress,
) -> Result<KMeans, EngineError> {
    let k = params.clusters;
    if dim == 0 || !points.len().is_multiple_of(dim) {
        return Err(EngineError::InvalidParameter {
            name: "dimension",
            reason: format!(
                "{} values do not form rows of dimension {dim}",
                points.len()
            ),
        });
    }
    let n = points.len() / dim;
    if k == 0 {
        return Err(EngineError::InvalidParameter {
            name: "clusters",
            reason: "must be at least 1".into(),
        });
    }
    if n < k {
        return Err(EngineError::TooFewTrainingVectors {
            clusters: k,
            points: n,
        });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);

    // Subsample.
    let max_points = k.saturating_mul(params.max_points_per_centroid.max(1));
    let sampled: Vec<f32>;
    let (data, n) = if n > max_points {
        let mut idx = sample(&mut rng, n, max_points).into_vec();
        idx.sort_unstable();
        let mut v = Vec::with_capacity(max_points * dim);
        for i in idx {
            v.extend_from_slice(&points[i * dim..(i + 1) * dim]);
        }
        sampled = v;
        (&sampled[..], max_points)
    } else {
        (points, n)
    };

    let mut centroids = match params.init {
        Init::Random => {
            let mut init = sample(&mut rng, n, k).into_vec();
            init.sort_unstable();
            let mut c = Vec::with_capacity(k * dim);
            for i in init {
                c.extend_from_slice(&data[i * dim..(i + 1) * dim]);
            }
            c
        }
        Init::PlusPlus => plus_plus_init(data, dim, k, &mut rng),
    };

    let mut objective = Vec::with_capacity(params.iterations);
    let mut assign = vec![0u32; n];
    let mut dist = vec![0f32; n];
    progress.stage("k-means", params.iterations as u64);
    for _ in 0..params.iterations {
        if progress.cancelled() {
            return Err(EngineError::Cancelled { what: "k-means" });
        }
        assign_nearest(
            data,
            dim,
            &centroids,
            params.assignment,
            &mut assign,
            &mut dist,
        );
        objective.push(dist.iter().map(|&d| d as f64).sum());
        let sizes = update_centroids(data, dim, &assign, k, &mut centroids);
        repair_empty_clusters(&mut centroids, dim, sizes, n, &mut rng);
        progress.advance(1);
    }
    progress.finish_stage();
    Ok(KMeans {
        centroids,
        dim,
        objective,
    })
}

/// k-means++ seeding (D² sampling); squared L2 distances whatever the assignment rule.
fn plus_plus_init(data: &[f32], dim: usize, k: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let n = data.len() / dim;
    let mut centroids = Vec::with_capacity(k * dim);
    let first = rng.random_range(0..n);
    centroids.extend_from_slice(&data[first * dim..(first + 1) * dim]);
    let mut d2: Vec<f64> = data
        .par_chunks(dim)
        .map(|x| crate::linalg::l2_sq(x, &centroids[..dim]) as f64)
        .collect();
    for _ in 1..k {
        let total: f64 = d2.iter().sum();
        let next = if total > 0.0 {
            let mut r = rng.random::<f64>() * total;
            let mut pick = n - 1;
            for (i, &d) in d2.iter().enumerate() {
                if r < d {
                    pick = i;
                    break;
                }
                r -= d;
            }
            pick
        } else {
            rng.random_range(0..n)
        };
        let c = data[next * dim..(next + 1) * dim].to_vec();
        d2.par_iter_mut()
            .zip(data.par_chunks(dim))
            .for_each(|(d, x)| {
                *d = d.min(crate::linalg::l2_sq(x, &c) as f64);
            });
        centroids.extend_from_slice(&c);
    }
    centroids
}

/// For each row of `points`, the nearest centroid and its score (squared L2 distance, or the
/// negated inner product for [`Assignment::InnerProduct`]). Blocked and multi-threaded.
pub fn assign_nearest(
    points: &[f32],
    dim: usize,
    centroids: &[f32],
    rule: Assignment,
    assign: &mut [u32],
    score: &mut [f32],
) {
    let k = centroids.len() / dim;
    let c_norms = row_norms_sq(centroids, dim);
    // Short vectors (PQ sub-spaces) gain nothing: their f32 products are cheap already.
    let packed = (dim >= 64)
        .then(|| crate::i8panels::I8Panels::pack(centroids, k, dim))
        .flatten();
    let i8_rule = match rule {
        Assignment::L2 => crate::i8panels::Rule::L2,
        Assignment::InnerProduct => crate::i8panels::Rule::InnerProduct,
    };
    points
        .par_chunks(ASSIGN_BLOCK * dim)
        .zip(assign.par_chunks_mut(ASSIGN_BLOCK))
        .zip(score.par_chunks_mut(ASSIGN_BLOCK))
        .for_each(|((block, a_out), s_out)| {
            let rows = block.len() / dim;
            if let Some(p8) = &packed {
                // Int8 first, then exact f32 over the centroids it cannot rule out: the same
                // answer as the GEMM below.
                p8.nearest(block, rows, 1, i8_rule, centroids, &c_norms, a_out, s_out);
                return;
            }
            let tile = k.min(CENTROID_TILE);
            let mut ip = vec![0f32; rows * tile];
            let mut best = vec![(f32::INFINITY, 0u32); rows];
            for c0 in (0..k).step_by(CENTROID_TILE) {
                let kc = (k - c0).min(CENTROID_TILE);
                gemm_abt(
                    block,
                    dim,
                    rows,
                    &centroids[c0 * dim..],
                    dim,
                    kc,
                    dim,
                    &mut ip,
                    tile,
                );
                for r in 0..rows {
                    let row = &ip[r * tile..r * tile + kc];
                    let b = &mut best[r];
                    for (j, &v) in row.iter().enumerate() {
                        // Score without the row's own norm: ranks the same as the full distance.
                        let s = match rule {
                            Assignment::L2 => c_norms[c0 + j] - 2.0 * v,
                            Assignment::InnerProduct => -v,
                        };
                        if s < b.0 {
                            *b = (s, (c0 + j) as u32);
                        }
                    }
                }
            }
            for r in 0..rows {
                a_out[r] = best[r].1;
                s_out[r] = match rule {
                    Assignment::L2 => {
                        let x = &block[r * dim..(r + 1) * dim];
                        (best[r].0 + crate::linalg::norm_sq(x)).max(0.0)
                    }
                    Assignment::InnerProduct => best[r].0,
                };
            }
        });
}

/// Recomputes each centroid as the mean of its points, summing in row order per cluster so
/// the result is independent of the thread count. Returns the cluster sizes. Empty clusters
/// keep their old centroid (they are repaired afterwards).
fn update_centroids(
    points: &[f32],
    dim: usize,
    assign: &[u32],
    k: usize,
    centroids: &mut [f32],
) -> Vec<usize> {
    // Counting sort of the rows by cluster.
    let mut sizes = vec![0usize; k];
    for &a in assign {
        sizes[a as usize] += 1;
    }
    let mut start = vec![0usize; k + 1];
    for c in 0..k {
        start[c + 1] = start[c] + sizes[c];
    }
    let mut members = vec![0u32; assign.len()];
    let mut fill = start.clone();
    for (i, &a) in assign.iter().enumerate() {
        members[fill[a as usize]] = i as u32;
        fill[a as usize] += 1;
    }
    centroids
        .par_chunks_mut(dim)
        .enumerate()
        .for_each(|(c, centroid)| {
            let rows = &members[start[c]..start[c + 1]];
            if rows.is_empty() {
                return;
            }
            let mut sum = vec![0f64; dim];
            for &r in rows {
                let x = &points[r as usize * dim..(r as usize + 1) * dim];
                for (s, v) in sum.iter_mut().zip(x) {
                    *s += *v as f64;
                }
            }
            let inv = 1.0 / rows.len() as f64;
            for (c, s) in centroid.iter_mut().zip(&sum) {
                *c = (*s * inv) as f32;
            }
        });
    sizes
}

/// FAISS's repair: each empty cluster takes over half of a cluster chosen with probability
/// proportional to its size, by copying its centroid with a symmetric perturbation.
fn repair_empty_clusters(
    centroids: &mut [f32],
    dim: usize,
    mut sizes: Vec<usize>,
    n: usize,
    rng: &mut ChaCha8Rng,
) {
    const EPS: f32 = 1.0 / 1024.0;
    let k = sizes.len();
    if n <= k {
        return;
    }
    for ci in 0..k {
        if sizes[ci] != 0 {
            continue;
        }
        let mut cj = 0;
        loop {
            let p = (sizes[cj] as f64 - 1.0) / (n - k) as f64;
            if rng.random::<f64>() < p {
                break;
            }
            cj = (cj + 1) % k;
        }
        let src: Vec<f32> = centroids[cj * dim..(cj + 1) * dim].to_vec();
        for (j, &v) in src.iter().enumerate() {
            let (a, b) = if j % 2 == 0 {
                (1.0 + EPS, 1.0 - EPS)
            } else {
                (1.0 - EPS, 1.0 + EPS)
            };
            centroids[ci * dim + j] = v * a;
            centroids[cj * dim + j] = v * b;
        }
        sizes[ci] = sizes[cj] / 2;
        sizes[cj] -= sizes[ci];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;

    /// Points around `k` well-separated centres.
    fn blobs(k: usize, per: usize, dim: usize) -> (Vec<f32>, Vec<f32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let centres: Vec<f32> = (0..k * dim)
            .map(|_| rng.random_range(-100.0..100.0))
            .collect();
        let mut pts = Vec::new();
        for c in 0..k {
            for _ in 0..per {
                for t in 0..dim {
                    pts.push(centres[c * dim + t] + rng.random_range(-1.0..1.0));
                }
            }
        }
        (pts, centres)
    }

    #[test]
    fn finds_separated_blobs() {
        let (pts, centres) = blobs(8, 50, 4);
        let mut p = KMeansParams::new(8);
        p.iterations = 25;
        p.init = Init::PlusPlus;
        let km = train(&pts, 4, &p, &NoProgress).unwrap();
        // Every true centre has a learned centroid within the blob radius.
        for c in centres.chunks(4) {
            let best = km
                .centroids
                .chunks(4)
                .map(|x| crate::linalg::l2_sq(x, c))
                .fold(f32::INFINITY, f32::min);
            assert!(best < 4.0, "centre not found, best distance {best}");
        }
    }

    #[test]
    fn objective_never_increases_much_and_is_deterministic() {
        let (pts, _) = blobs(5, 40, 6);
        let mut p = KMeansParams::new(12);
        p.iterations = 10;
        let a = train(&pts, 6, &p, &NoProgress).unwrap();
        for w in a.objective.windows(2) {
            assert!(
                w[1] <= w[0] * 1.0001 + 1e-3,
                "objective rose: {:?}",
                a.objective
            );
        }
        let b = train(&pts, 6, &p, &NoProgress).unwrap();
        assert_eq!(a.centroids, b.centroids);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let c = pool.install(|| train(&pts, 6, &p, &NoProgress).unwrap());
        assert_eq!(a.centroids, c.centroids, "result depends on thread count");
    }

    #[test]
    fn repairs_empty_clusters() {
        // 3 distinct points repeated: 6 clusters must all end up non-degenerate copies.
        let mut pts = Vec::new();
        for i in 0..60 {
            pts.extend_from_slice(&[(i % 3) as f32 * 10.0, 1.0]);
        }
        let mut p = KMeansParams::new(6);
        p.iterations = 5;
        let km = train(&pts, 2, &p, &NoProgress).unwrap();
        assert!(km.centroids.iter().all(|v| v.is_finite()));
        let mut assign = vec![0; 60];
        let mut d = vec![0.0; 60];
        assign_nearest(&pts, 2, &km.centroids, Assignment::L2, &mut assign, &mut d);
        assert!(d.iter().all(|&x| x < 1.0));
    }

    #[test]
    fn too_few_points_is_an_error() {
        let pts = vec![0.0f32; 10 * 2];
        let e = train(&pts, 2, &KMeansParams::new(11), &NoProgress).unwrap_err();
        assert!(matches!(
            e,
            EngineError::TooFewTrainingVectors {
                clusters: 11,
                points: 10
            }
        ));
    }

    #[test]
    fn subsamples_large_inputs() {
        let (pts, _) = blobs(4, 300, 3);
        let mut p = KMeansParams::new(4);
        p.max_points_per_centroid = 39;
        let km = train(&pts, 3, &p, &NoProgress).unwrap();
        assert_eq!(km.centroids.len(), 12);
    }
}
