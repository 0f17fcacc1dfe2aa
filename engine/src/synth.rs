//! Synthetic vectors for tests, examples and scaling runs: a seeded mixture of Gaussian
//! clusters, generated in any order and any amount without holding the set in memory.
//!
//! Row `i` depends only on (seed, i), so a file of 4M rows can be written chunk by chunk and
//! a test can regenerate any slice.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Rows generated from one RNG stream.
const BLOCK: usize = 1024;

/// A mixture of `clusters` isotropic Gaussians in `dim` dimensions with centres uniform in
/// [-1, 1]^dim and standard deviation `spread`.
#[derive(Debug, Clone)]
pub struct ClusteredGaussian {
    dim: usize,
    spread: f32,
    seed: u64,
    centres: Vec<f32>,
}

impl ClusteredGaussian {
    /// A generator; `clusters` and `dim` are at least 1.
    pub fn new(dim: usize, clusters: usize, spread: f32, seed: u64) -> Self {
        let (dim, clusters) = (dim.max(1), clusters.max(1));
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let centres = (0..dim * clusters)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        ClusteredGaussian {
            dim,
            spread,
            seed,
            centres,
        }
    }

    /// The dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Rows `start .. start + count`, row-major.
    pub fn rows(&self, start: usize, count: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(count * self.dim);
        let clusters = self.centres.len() / self.dim;
        let end = start + count;
        let mut row = start;
        while row < end {
            let block = row / BLOCK;
            let mut rng = ChaCha8Rng::seed_from_u64(
                self.seed ^ (block as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            // Skip to `row` inside the block, drawing the same numbers a full block would.
            let first = block * BLOCK;
            for r in first..(first + BLOCK).min(end) {
                let c = rng.random_range(0..clusters);
                let centre = &self.centres[c * self.dim..(c + 1) * self.dim];
                for &mu in centre {
                    let z = gaussian(&mut rng);
                    if r >= row {
                        out.push(mu + self.spread * z);
                    }
                }
            }
            row = (first + BLOCK).min(end);
        }
        out
    }
}

/// A standard normal draw (Box–Muller).
fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_slice_equals_the_same_rows_of_the_whole() {
        let g = ClusteredGaussian::new(5, 3, 0.1, 42);
        let all = g.rows(0, 3000);
        assert_eq!(all.len(), 15_000);
        assert_eq!(g.rows(1000, 1100), all[1000 * 5..2100 * 5].to_vec());
        assert_eq!(g.rows(17, 5), all[17 * 5..22 * 5].to_vec());
        assert_ne!(
            ClusteredGaussian::new(5, 3, 0.1, 43).rows(0, 10),
            all[..50].to_vec()
        );
        assert!(all.iter().all(|x| x.is_finite()));
    }
}
