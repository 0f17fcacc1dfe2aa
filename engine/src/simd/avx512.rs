//! AVX-512F kernels: 16 lanes, two accumulators, masked tails, f16 widened with
//! `vcvtph2ps`. Callers guarantee the CPU has AVX-512F (see `simd::level`).

use std::arch::x86_64::*;

use half::f16;

#[inline]
fn tail_mask(rem: usize) -> __mmask16 {
    ((1u32 << rem) - 1) as __mmask16
}

/// Inner product. # Safety: the CPU must support AVX-512F; lengths are equal.
#[target_feature(enable = "avx512f")]
pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut i = 0;
    // SAFETY: full loads stay below n; the tail load is masked to the remaining lanes.
    unsafe {
        while i + 32 <= n {
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), s0);
            s1 = _mm512_fmadd_ps(
                _mm512_loadu_ps(pa.add(i + 16)),
                _mm512_loadu_ps(pb.add(i + 16)),
                s1,
            );
            i += 32;
        }
        while i + 16 <= n {
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), s0);
            i += 16;
        }
        if i < n {
            let m = tail_mask(n - i);
            s1 = _mm512_fmadd_ps(
                _mm512_maskz_loadu_ps(m, pa.add(i)),
                _mm512_maskz_loadu_ps(m, pb.add(i)),
                s1,
            );
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(s0, s1))
}

/// Squared L2 distance. # Safety: as [`dot`].
#[target_feature(enable = "avx512f")]
pub unsafe fn l2_sq(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut i = 0;
    // SAFETY: as in `dot`.
    unsafe {
        while i + 32 <= n {
            let d0 = _mm512_sub_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)));
            let d1 = _mm512_sub_ps(
                _mm512_loadu_ps(pa.add(i + 16)),
                _mm512_loadu_ps(pb.add(i + 16)),
            );
            s0 = _mm512_fmadd_ps(d0, d0, s0);
            s1 = _mm512_fmadd_ps(d1, d1, s1);
            i += 32;
        }
        while i + 16 <= n {
            let d0 = _mm512_sub_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)));
            s0 = _mm512_fmadd_ps(d0, d0, s0);
            i += 16;
        }
        if i < n {
            let m = tail_mask(n - i);
            let d = _mm512_sub_ps(
                _mm512_maskz_loadu_ps(m, pa.add(i)),
                _mm512_maskz_loadu_ps(m, pb.add(i)),
            );
            s1 = _mm512_fmadd_ps(d, d, s1);
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(s0, s1))
}

/// f32 · f16 inner product. # Safety: the CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub unsafe fn dot_f16(q: &[f32], v: &[f16]) -> f32 {
    let n = q.len();
    let (pq, pv) = (q.as_ptr(), v.as_ptr());
    let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut i = 0;
    // SAFETY: each step reads 16 floats and 16 halves (32 bytes) below n; the tail is masked
    // (halves are loaded 16 bits at a time under the same mask).
    unsafe {
        while i + 32 <= n {
            let h0 = _mm512_cvtph_ps(_mm256_loadu_si256(pv.add(i) as *const __m256i));
            let h1 = _mm512_cvtph_ps(_mm256_loadu_si256(pv.add(i + 16) as *const __m256i));
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(pq.add(i)), h0, s0);
            s1 = _mm512_fmadd_ps(_mm512_loadu_ps(pq.add(i + 16)), h1, s1);
            i += 32;
        }
        while i + 16 <= n {
            let h0 = _mm512_cvtph_ps(_mm256_loadu_si256(pv.add(i) as *const __m256i));
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(pq.add(i)), h0, s0);
            i += 16;
        }
    }
    let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
    for j in i..n {
        sum += q[j] * v[j].to_f32();
    }
    sum
}

/// f32 − f16 squared L2 distance. # Safety: as [`dot_f16`].
#[target_feature(enable = "avx512f")]
pub unsafe fn l2_sq_f16(q: &[f32], v: &[f16]) -> f32 {
    let n = q.len();
    let (pq, pv) = (q.as_ptr(), v.as_ptr());
    let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut i = 0;
    // SAFETY: as in `dot_f16`.
    unsafe {
        while i + 32 <= n {
            let h0 = _mm512_cvtph_ps(_mm256_loadu_si256(pv.add(i) as *const __m256i));
            let h1 = _mm512_cvtph_ps(_mm256_loadu_si256(pv.add(i + 16) as *const __m256i));
            let d0 = _mm512_sub_ps(_mm512_loadu_ps(pq.add(i)), h0);
            let d1 = _mm512_sub_ps(_mm512_loadu_ps(pq.add(i + 16)), h1);
            s0 = _mm512_fmadd_ps(d0, d0, s0);
            s1 = _mm512_fmadd_ps(d1, d1, s1);
            i += 32;
        }
        while i + 16 <= n {
            let h0 = _mm512_cvtph_ps(_mm256_loadu_si256(pv.add(i) as *const __m256i));
            let d0 = _mm512_sub_ps(_mm512_loadu_ps(pq.add(i)), h0);
            s0 = _mm512_fmadd_ps(d0, d0, s0);
            i += 16;
        }
    }
    let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
    for j in i..n {
        let d = q[j] - v[j].to_f32();
        sum += d * d;
    }
    sum
}
