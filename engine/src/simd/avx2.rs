//! AVX2 + FMA + F16C kernels: 8 lanes, two accumulators, f16 widened with `vcvtph2ps`.
//! Callers guarantee the CPU has these features (see `simd::level`).

use std::arch::x86_64::*;

use half::f16;

#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps::<1>(v);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
    _mm_cvtss_f32(s)
}

/// Inner product. # Safety: the CPU must support AVX2 and FMA; lengths are equal.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    // SAFETY: every load reads 8 floats at i < n - 15 (or n - 7) inside both slices.
    unsafe {
        while i + 16 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            s1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                s1,
            );
            i += 16;
        }
        if i + 8 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            i += 8;
        }
    }
    let mut sum = hsum(_mm256_add_ps(s0, s1));
    for j in i..n {
        sum += a[j] * b[j];
    }
    sum
}

/// Squared L2 distance. # Safety: as [`dot`].
#[target_feature(enable = "avx2,fma")]
pub unsafe fn l2_sq(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    // SAFETY: as in `dot`.
    unsafe {
        while i + 16 <= n {
            let d0 = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
            let d1 = _mm256_sub_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
            );
            s0 = _mm256_fmadd_ps(d0, d0, s0);
            s1 = _mm256_fmadd_ps(d1, d1, s1);
            i += 16;
        }
        if i + 8 <= n {
            let d0 = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
            s0 = _mm256_fmadd_ps(d0, d0, s0);
            i += 8;
        }
    }
    let mut sum = hsum(_mm256_add_ps(s0, s1));
    for j in i..n {
        sum += (a[j] - b[j]) * (a[j] - b[j]);
    }
    sum
}

/// f32 · f16 inner product. # Safety: the CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16(q: &[f32], v: &[f16]) -> f32 {
    let n = q.len();
    let (pq, pv) = (q.as_ptr(), v.as_ptr() as *const __m128i);
    let mut s0 = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY: each step reads 8 floats and 8 halves (16 bytes) at i < n - 7.
    unsafe {
        while i + 8 <= n {
            let h = _mm256_cvtph_ps(_mm_loadu_si128(pv.byte_add(i * 2)));
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(i)), h, s0);
            i += 8;
        }
    }
    let mut sum = hsum(s0);
    for j in i..n {
        sum += q[j] * v[j].to_f32();
    }
    sum
}

/// f32 − f16 squared L2 distance. # Safety: as [`dot_f16`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn l2_sq_f16(q: &[f32], v: &[f16]) -> f32 {
    let n = q.len();
    let (pq, pv) = (q.as_ptr(), v.as_ptr() as *const __m128i);
    let mut s0 = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY: as in `dot_f16`.
    unsafe {
        while i + 8 <= n {
            let h = _mm256_cvtph_ps(_mm_loadu_si128(pv.byte_add(i * 2)));
            let d = _mm256_sub_ps(_mm256_loadu_ps(pq.add(i)), h);
            s0 = _mm256_fmadd_ps(d, d, s0);
            i += 8;
        }
    }
    let mut sum = hsum(s0);
    for j in i..n {
        let d = q[j] - v[j].to_f32();
        sum += d * d;
    }
    sum
}
