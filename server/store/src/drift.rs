//! When the quantizers no longer fit the data: the measure behind the optimizer's retraining.
//!
//! The measure is the coarse quantization error, the mean squared distance from a point to the
//! centroid of the list it is assigned to. It is taken once over the points the quantizers
//! were trained on (the baseline) and then kept as a running sum over every point encoded
//! since (upserts). New data from the distribution the quantizers were trained on scores
//! about the baseline; data from elsewhere (a new topic, a new embedding model's region) lands
//! far from every centroid and scores above it, and its lists grow long and its codes coarse.
//! A retraining is due when the points added since training are at least `share` of those
//! trained on and their mean error exceeds `factor` × the baseline (defaults 10% and 1.5×:
//! [`crate::StoreConfig`]).
//!
//! The running sums are persisted in the manifest at each checkpoint; points replayed from
//! the log after a crash are not counted again (the measure is a statistic, not data).

use quiver_engine::kmeans::{assign_nearest, Assignment};
use quiver_engine::IvfPqIndex;
use serde::{Deserialize, Serialize};

/// Points a baseline is measured on at most.
pub const BASELINE_SAMPLE: usize = 16_384;

/// The drift statistics of a trained collection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    /// Mean coarse error over (a sample of) the points the quantizers were trained on; 0 when
    /// not measured yet.
    pub baseline: f64,
    /// Points the quantizers were trained on.
    pub trained_points: u64,
    /// Points encoded since.
    pub added: u64,
    /// Their summed coarse error.
    pub added_error: f64,
}

impl Drift {
    /// Statistics right after training on `trained_points` points with mean error `baseline`.
    pub fn after_training(baseline: f64, trained_points: u64) -> Drift {
        Drift {
            baseline,
            trained_points,
            added: 0,
            added_error: 0.0,
        }
    }

    /// Counts `n` newly encoded points of summed error `error`.
    pub fn record(&mut self, n: usize, error: f64) {
        self.added += n as u64;
        self.added_error += error;
    }

    /// Mean error of the points added since training over the baseline; `None` until both are
    /// known.
    pub fn ratio(&self) -> Option<f64> {
        (self.added > 0 && self.baseline > 0.0)
            .then(|| self.added_error / self.added as f64 / self.baseline)
    }

    /// True when a retraining is due: at least `share` × the trained points were added and
    /// their mean error is above `factor` × the baseline. A `factor` of 0 never retrains.
    pub fn due(&self, share: f64, factor: f64) -> bool {
        factor > 0.0
            && self.added as f64 >= share * self.trained_points.max(1) as f64
            && self.ratio().is_some_and(|r| r > factor)
    }
}

/// Summed squared distance from each row of `vectors` (as stored: normalised for cosine) to
/// the centroid of its list in `lists`.
pub fn coarse_error(q: &IvfPqIndex, vectors: &[f32], lists: &[u32]) -> f64 {
    let dim = q.dim();
    let centroids = q.centroids();
    vectors
        .chunks_exact(dim)
        .zip(lists)
        .map(|(x, &l)| {
            let c = &centroids[l as usize * dim..(l as usize + 1) * dim];
            // Per row in f32 (SIMD), summed in f64: a statistic, not a score.
            quiver_engine::linalg::l2_sq(x, c) as f64
        })
        .sum()
}

/// Mean coarse error of `vectors` (as stored) under `q`, each assigned to its nearest list by
/// the index's own rule.
pub fn mean_error(q: &IvfPqIndex, vectors: &[f32]) -> f64 {
    let n = vectors.len() / q.dim().max(1);
    if n == 0 {
        return 0.0;
    }
    let rule = if q.metric().is_inner_product() {
        Assignment::InnerProduct
    } else {
        Assignment::L2
    };
    let mut lists = vec![0u32; n];
    let mut score = vec![0f32; n];
    assign_nearest(
        vectors,
        q.dim(),
        q.centroids(),
        rule,
        &mut lists,
        &mut score,
    );
    coarse_error(q, vectors, &lists) / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_needs_enough_new_points_that_score_worse() {
        let mut d = Drift::after_training(2.0, 1000);
        assert_eq!(d.ratio(), None);
        d.record(50, 50.0 * 4.0);
        assert_eq!(d.ratio(), Some(2.0));
        assert!(!d.due(0.1, 1.5), "5% new points are not enough");
        d.record(50, 50.0 * 4.0);
        assert!(d.due(0.1, 1.5));
        assert!(!d.due(0.1, 2.5), "worse, but not by the factor");
        assert!(!d.due(0.1, 0.0), "factor 0 never retrains");
        assert!(!Drift::default().due(0.1, 1.5), "no baseline yet");
    }
}
