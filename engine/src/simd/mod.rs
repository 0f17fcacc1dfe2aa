//! Hand-written SIMD kernels with run-time dispatch: one file per instruction set, the scalar
//! path always compiled and the reference the others are tested against.
//!
//! The level is detected once (`is_x86_feature_detected!`) and can be forced lower with the
//! environment variable `QUIVER_SIMD=scalar|avx2|avx512|avx512vbmi`, so tests exercise every path on one
//! machine; a level the CPU lacks is never used, whatever the variable says. Release builds
//! target baseline x86-64: nothing here assumes AVX at compile time.

use std::sync::OnceLock;

use half::f16;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod scalar;

/// An instruction-set level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Portable Rust (auto-vectorised for the build's baseline).
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512F and AVX-512BW (with AVX2, FMA, F16C).
    Avx512,
    /// AVX-512 as above plus VBMI (byte permutes) and VNNI (byte dot products): Ice Lake,
    /// Sapphire Rapids, Zen 4 and later. Only the fast-scan kernel differs from `Avx512`.
    Avx512Vbmi,
}

impl Level {
    /// Name as `QUIVER_SIMD` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
            Level::Avx512Vbmi => "avx512vbmi",
        }
    }
}

/// The best level this CPU supports.
pub fn detected() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            if is_x86_feature_detected!("avx512vbmi") && is_x86_feature_detected!("avx512vnni") {
                return Level::Avx512Vbmi;
            }
            return Level::Avx512;
        }
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return Level::Avx2;
        }
    }
    Level::Scalar
}

/// Every level this CPU supports, lowest first.
pub fn available() -> Vec<Level> {
    [Level::Scalar, Level::Avx2, Level::Avx512, Level::Avx512Vbmi]
        .into_iter()
        .filter(|l| *l <= detected())
        .collect()
}

/// The level in use: detected, lowered by `QUIVER_SIMD` if set.
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let best = detected();
        match std::env::var("QUIVER_SIMD").ok().as_deref() {
            Some("scalar") => Level::Scalar,
            Some("avx2") => best.min(Level::Avx2),
            Some("avx512") => best.min(Level::Avx512),
            Some("avx512vbmi") | None => best,
            Some(_) => best,
        }
    })
}

/// Inner product at a given level (which must be available).
#[inline]
pub fn dot_at(level: Level, a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: lengths differ");
    match level {
        // SAFETY: callers pass a level from `level()` or `available()`, so the CPU has it.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 | Level::Avx512Vbmi => unsafe { avx512::dot(a, b) },
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { avx2::dot(a, b) },
        _ => scalar::dot(a, b),
    }
}

/// Squared L2 distance at a given level.
#[inline]
pub fn l2_sq_at(level: Level, a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "l2_sq: lengths differ");
    match level {
        // SAFETY: as in `dot_at`.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 | Level::Avx512Vbmi => unsafe { avx512::l2_sq(a, b) },
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { avx2::l2_sq(a, b) },
        _ => scalar::l2_sq(a, b),
    }
}

/// Inner product of an f32 query and an f16 vector at a given level.
#[inline]
pub fn dot_f16_at(level: Level, q: &[f32], v: &[f16]) -> f32 {
    assert_eq!(q.len(), v.len(), "dot_f16: lengths differ");
    match level {
        // SAFETY: as in `dot_at`.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 | Level::Avx512Vbmi => unsafe { avx512::dot_f16(q, v) },
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { avx2::dot_f16(q, v) },
        _ => scalar::dot_f16(q, v),
    }
}

/// Squared L2 distance of an f32 query and an f16 vector at a given level.
#[inline]
pub fn l2_sq_f16_at(level: Level, q: &[f32], v: &[f16]) -> f32 {
    assert_eq!(q.len(), v.len(), "l2_sq_f16: lengths differ");
    match level {
        // SAFETY: as in `dot_at`.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 | Level::Avx512Vbmi => unsafe { avx512::l2_sq_f16(q, v) },
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { avx2::l2_sq_f16(q, v) },
        _ => scalar::l2_sq_f16(q, v),
    }
}

/// Inner product at the current level.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_at(level(), a, b)
}
/// Squared L2 distance at the current level.
#[inline]
pub fn l2_sq(a: &[f32], b: &[f32]) -> f32 {
    l2_sq_at(level(), a, b)
}
/// f32 · f16 inner product at the current level.
#[inline]
pub fn dot_f16(q: &[f32], v: &[f16]) -> f32 {
    dot_f16_at(level(), q, v)
}
/// f32 − f16 squared L2 distance at the current level.
#[inline]
pub fn l2_sq_f16(q: &[f32], v: &[f16]) -> f32 {
    l2_sq_f16_at(level(), q, v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Every available level agrees with the scalar reference within a relative 1e-5 (the
    /// paths sum in different orders), for every tail length.
    #[test]
    fn every_level_matches_scalar() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        eprintln!(
            "SIMD levels tested: {:?} (in use: {:?})",
            available(),
            level()
        );
        for len in (0..70).chain([255, 256, 257, 384, 1000]) {
            let a: Vec<f32> = (0..len).map(|_| rng.random_range(-2.0f32..2.0)).collect();
            let b: Vec<f32> = (0..len).map(|_| rng.random_range(-2.0f32..2.0)).collect();
            let h: Vec<f16> = b.iter().map(|&x| f16::from_f32(x)).collect();
            let scale: f32 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x * y).abs() + (x - y).powi(2))
                .sum::<f32>()
                + 1.0;
            for lvl in available() {
                let pairs = [
                    (dot_at(lvl, &a, &b), scalar::dot(&a, &b)),
                    (l2_sq_at(lvl, &a, &b), scalar::l2_sq(&a, &b)),
                    (dot_f16_at(lvl, &a, &h), scalar::dot_f16(&a, &h)),
                    (l2_sq_f16_at(lvl, &a, &h), scalar::l2_sq_f16(&a, &h)),
                ];
                for (i, (got, want)) in pairs.into_iter().enumerate() {
                    assert!(
                        (got - want).abs() <= 1e-5 * scale,
                        "{lvl:?} kernel {i} len {len}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn forced_level_never_exceeds_the_cpu() {
        assert!(level() <= detected());
        assert_eq!(available()[0], Level::Scalar);
    }
}
