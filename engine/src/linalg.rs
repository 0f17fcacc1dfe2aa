//! Dense linear algebra the engine builds on: dot products, squared L2 distances, norms and a
//! blocked `A·Bᵀ` product (through the `matrixmultiply` crate's SGEMM, which dispatches to
//! AVX/FMA at run time).
//!
//! Dot products and distances dispatch to [`crate::simd`] (scalar, AVX2 or AVX-512).

/// Inner product of two equally long slices (SIMD level chosen at run time).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    crate::simd::dot(a, b)
}

/// Squared Euclidean distance of two equally long slices (SIMD level chosen at run time).
#[inline]
pub fn l2_sq(a: &[f32], b: &[f32]) -> f32 {
    crate::simd::l2_sq(a, b)
}

/// Squared L2 norm.
#[inline]
pub fn norm_sq(a: &[f32]) -> f32 {
    dot(a, a)
}

/// Squared norms of the rows of a row-major `n × dim` matrix.
pub fn row_norms_sq(rows: &[f32], dim: usize) -> Vec<f32> {
    rows.chunks_exact(dim).map(norm_sq).collect()
}

/// Up to this many rows of `A`, [`gemm_abt`] uses dot products instead of SGEMM.
const SMALL_GEMM_ROWS: usize = 4;

/// `C[i][j] = Σ_t A[i][t] · B[j][t]` for row-major `A` (`n × dim`, row stride `lda`) and
/// `B` (`m × dim`, row stride `ldb`); `C` is row-major with row stride `ldc`.
///
/// Strides let callers multiply sub-vectors in place (a PQ sub-space is columns
/// `m·dsub .. (m+1)·dsub` of a full-width matrix).
#[allow(clippy::too_many_arguments)]
pub fn gemm_abt(
    a: &[f32],
    lda: usize,
    n: usize,
    b: &[f32],
    ldb: usize,
    m: usize,
    dim: usize,
    c: &mut [f32],
    ldc: usize,
) {
    if n == 0 || m == 0 {
        return;
    }
    assert!(
        dim <= lda && dim <= ldb && m <= ldc,
        "gemm_abt: stride smaller than width"
    );
    assert!(a.len() >= (n - 1) * lda + dim, "gemm_abt: A too short");
    assert!(b.len() >= (m - 1) * ldb + dim, "gemm_abt: B too short");
    assert!(c.len() >= (n - 1) * ldc + m, "gemm_abt: C too short");
    if dim == 0 {
        for row in c.chunks_mut(ldc).take(n) {
            row[..m].fill(0.0);
        }
        return;
    }
    if n <= SMALL_GEMM_ROWS {
        // A few rows (single queries): SGEMM would repack all of B for little work; plain dot
        // products read B once.
        for i in 0..n {
            let a_row = &a[i * lda..i * lda + dim];
            let c_row = &mut c[i * ldc..i * ldc + m];
            for (j, out) in c_row.iter_mut().enumerate() {
                *out = dot(a_row, &b[j * ldb..j * ldb + dim]);
            }
        }
        return;
    }
    // SAFETY: the asserts above guarantee every element addressed through the given
    // dimensions and strides lies inside the slices; `c` is borrowed mutably and cannot alias.
    unsafe {
        matrixmultiply::sgemm(
            n,
            dim,
            m,
            1.0,
            a.as_ptr(),
            lda as isize,
            1,
            b.as_ptr(),
            1,
            ldb as isize,
            0.0,
            c.as_mut_ptr(),
            ldc as isize,
            1,
        );
    }
}

/// Normalises each row of a row-major matrix to unit L2 length in place. Returns the index of
/// the first zero row, if any (it is left untouched).
///
/// The norm is summed in f64 in component order, so the result is the same bits on every
/// CPU and SIMD level (replicas on different machines store the same vectors), and a row
/// whose norm is already within [`UNIT_NORM_TOLERANCE`] of 1 is left as it is: normalising a
/// stored vector again (a payload edit, a retraining) never moves it.
pub fn normalize_rows(rows: &mut [f32], dim: usize) -> Option<usize> {
    let mut first_zero = None;
    for (i, row) in rows.chunks_exact_mut(dim).enumerate() {
        let n = row
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        if n == 0.0 || !n.is_finite() {
            first_zero.get_or_insert(i);
            continue;
        }
        if (n - 1.0).abs() <= UNIT_NORM_TOLERANCE {
            continue;
        }
        let inv = 1.0 / n;
        row.iter_mut()
            .for_each(|x| *x = (f64::from(*x) * inv) as f32);
    }
    first_zero
}

/// How far from 1 a row's norm may be for [`normalize_rows`] to count it as normalised: well
/// above the rounding of a row it normalised itself (about `√dim · 2⁻²⁴`), well below any
/// difference a score could show.
pub const UNIT_NORM_TOLERANCE: f64 = 1e-6;

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    fn naive_dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
    }

    #[test]
    fn dot_and_l2_match_naive_for_all_tail_lengths() {
        for len in 0..40 {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            assert_relative_eq!(dot(&a, &b) as f64, naive_dot(&a, &b), epsilon = 1e-5);
            let l2: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| ((x - y) as f64).powi(2))
                .sum();
            assert_relative_eq!(l2_sq(&a, &b) as f64, l2, epsilon = 1e-5);
        }
    }

    #[test]
    fn gemm_matches_dot_with_strides() {
        let (n, m, dim, lda, ldb, ldc) = (5, 7, 3, 6, 4, 9);
        let a: Vec<f32> = (0..n * lda).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..m * ldb).map(|i| (i as f32).sqrt()).collect();
        let mut c = vec![f32::NAN; n * ldc];
        gemm_abt(&a, lda, n, &b, ldb, m, dim, &mut c, ldc);
        for i in 0..n {
            for j in 0..m {
                let want = dot(&a[i * lda..i * lda + dim], &b[j * ldb..j * ldb + dim]);
                assert_relative_eq!(c[i * ldc + j], want, max_relative = 1e-5);
            }
        }
    }

    #[test]
    fn normalize_reports_zero_rows() {
        let mut v = vec![3.0, 4.0, 0.0, 0.0];
        assert_eq!(normalize_rows(&mut v, 2), Some(1));
        assert_relative_eq!(v[0], 0.6);
        assert_relative_eq!(v[1], 0.8);
    }

    /// Normalising again leaves a normalised row's bits as they are.
    #[test]
    fn normalize_is_idempotent_bit_for_bit() {
        let mut state = 7u64;
        for dim in [3usize, 384, 1536] {
            let mut v: Vec<f32> = (0..dim * 20)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0 + 1e-3
                })
                .collect();
            assert_eq!(normalize_rows(&mut v, dim), None);
            let once = v.clone();
            normalize_rows(&mut v, dim);
            assert!(once.iter().zip(&v).all(|(a, b)| a.to_bits() == b.to_bits()));
            for row in v.chunks_exact(dim) {
                let n: f64 = row.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
                assert!((n.sqrt() - 1.0).abs() <= UNIT_NORM_TOLERANCE);
            }
        }
    }
}
