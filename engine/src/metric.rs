//! Distance metrics and the direction of the distances Quiver reports.
//!
//! Internally every stage ranks by a *score* where lower is better: squared L2 distance for
//! [`Metric::L2`], the negated inner product for [`Metric::InnerProduct`] and [`Metric::Cosine`].
//! What users see is [`Metric::reported`]:
//! - `L2`: the squared Euclidean distance (smaller is closer), as FAISS reports it;
//! - `InnerProduct`: the inner product (larger is closer);
//! - `Cosine`: the cosine similarity in [-1, 1] (larger is closer). Vectors are normalised to
//!   unit length when added and when queried, so cosine is inner product on unit vectors.

use std::fmt;
use std::str::FromStr;

use crate::error::EngineError;

/// How closeness between two vectors is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Squared Euclidean distance; smaller is closer.
    L2,
    /// Inner product; larger is closer.
    InnerProduct,
    /// Cosine similarity (inner product of unit vectors); larger is closer.
    Cosine,
}

impl Metric {
    /// Stable code used in index files.
    pub fn code(self) -> u8 {
        match self {
            Metric::L2 => 0,
            Metric::InnerProduct => 1,
            Metric::Cosine => 2,
        }
    }

    /// Inverse of [`Metric::code`].
    pub fn from_code(code: u8) -> Option<Metric> {
        match code {
            0 => Some(Metric::L2),
            1 => Some(Metric::InnerProduct),
            2 => Some(Metric::Cosine),
            _ => None,
        }
    }

    /// True when ranking uses inner products (IP and cosine).
    pub fn is_inner_product(self) -> bool {
        !matches!(self, Metric::L2)
    }

    /// True when vectors are normalised to unit length on add and on query.
    pub fn normalizes(self) -> bool {
        matches!(self, Metric::Cosine)
    }

    /// Converts an internal score (lower is better) to the distance reported to users.
    #[inline]
    pub fn reported(self, score: f32) -> f32 {
        if self.is_inner_product() {
            -score
        } else {
            score
        }
    }

    /// Converts a reported distance back to the internal score.
    #[inline]
    pub fn score_of_reported(self, reported: f32) -> f32 {
        self.reported(reported)
    }

    /// Exact internal score of two vectors (lower is better).
    #[inline]
    pub fn score(self, a: &[f32], b: &[f32]) -> f32 {
        if self.is_inner_product() {
            -crate::linalg::dot(a, b)
        } else {
            crate::linalg::l2_sq(a, b)
        }
    }

    /// The name used on the command line and in files (`l2`, `ip`, `cosine`).
    pub fn name(self) -> &'static str {
        match self {
            Metric::L2 => "l2",
            Metric::InnerProduct => "ip",
            Metric::Cosine => "cosine",
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Metric {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "l2" | "euclidean" => Ok(Metric::L2),
            "ip" | "inner_product" | "dot" => Ok(Metric::InnerProduct),
            "cosine" | "cos" => Ok(Metric::Cosine),
            _ => Err(EngineError::InvalidParameter {
                name: "metric",
                reason: format!("unknown metric {s:?} (expected l2, ip or cosine)"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_names_parse() {
        for m in [Metric::L2, Metric::InnerProduct, Metric::Cosine] {
            assert_eq!(Metric::from_code(m.code()), Some(m));
            assert_eq!(m.name().parse::<Metric>().ok(), Some(m));
        }
        assert!(Metric::from_code(9).is_none());
        assert!("manhattan".parse::<Metric>().is_err());
    }

    #[test]
    fn reported_direction() {
        let a = [1.0, 2.0];
        let b = [3.0, 1.0];
        assert_eq!(Metric::L2.reported(Metric::L2.score(&a, &b)), 5.0);
        assert_eq!(
            Metric::InnerProduct.reported(Metric::InnerProduct.score(&a, &b)),
            5.0
        );
        // Lower score is better for both.
        assert!(Metric::InnerProduct.score(&a, &a) < Metric::InnerProduct.score(&a, &[0.0, 0.0]));
    }
}
