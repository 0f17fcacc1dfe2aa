//! AVX-512BW fast-scan kernel: four sub-quantizers per 512-bit register (one per 128-bit lane),
//! table lookups by `vpshufb`, u16 accumulation without widening, lanes summed at the end of
//! the block. Callers guarantee AVX-512F/BW and a multiple of four sub-quantizers.

use std::arch::x86_64::*;

use super::BLOCK;

#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn lane_sum(v: __m512i) -> __m128i {
    let a = _mm_add_epi16(
        _mm512_extracti32x4_epi32::<0>(v),
        _mm512_extracti32x4_epi32::<1>(v),
    );
    let b = _mm_add_epi16(
        _mm512_extracti32x4_epi32::<2>(v),
        _mm512_extracti32x4_epi32::<3>(v),
    );
    _mm_add_epi16(a, b)
}

/// Quantized sums of the 32 vectors of one block, and the mask of those `<= qthr` (bit `v` for
/// vector `v`). # Safety: the CPU must support AVX-512F and AVX-512BW; `table.len() / 16` is a
/// multiple of 4 (at most 256) and `block` holds at least `table.len()` bytes.
///
/// The looked-up bytes are added as u16 words without widening (FAISS's trick): a word holds
/// an even vector's byte plus 256 × the next odd vector's byte, so one accumulator sums
/// `even + 256·odd` and a second one, fed the words shifted right by 8, sums `odd`; the even
/// sums are recovered at the end as `a − 256·b`. All of it is exact modulo 2¹⁶ and every true
/// sum is below 2¹⁶ (at most 256 × 255), so the result equals the scalar path bit for bit.
/// This halves the shuffle-port work of widening with unpacks.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn block_sums(block: &[u8], table: &[u8], out: &mut [u16; BLOCK], qthr: u16) -> u32 {
    let m = table.len() / 16;
    debug_assert!(m.is_multiple_of(4) && m <= 256 && block.len() >= m * 16);
    let low = _mm512_set1_epi8(0x0F);
    let zero = _mm512_setzero_si512();
    // a: even + 256·odd words, b: odd bytes; `_lo` for vectors 0..16, `_hi` for 16..32.
    let (mut a_lo, mut b_lo, mut a_hi, mut b_hi) = (zero, zero, zero, zero);
    let (pb, pt) = (block.as_ptr(), table.as_ptr());
    for quad in 0..m / 4 {
        // SAFETY: 64 bytes at quad·64 lie inside both `block` and `table` (length ≥ m·16).
        let (codes, lut) = unsafe {
            (
                _mm512_loadu_si512(pb.add(quad * 64) as *const _),
                _mm512_loadu_si512(pt.add(quad * 64) as *const _),
            )
        };
        let lo = _mm512_and_si512(codes, low);
        let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(codes), low);
        // Lane i: sub-quantizer 4·quad + i; bytes j = vector j (lo) or j + 16 (hi).
        let v_lo = _mm512_shuffle_epi8(lut, lo);
        let v_hi = _mm512_shuffle_epi8(lut, hi);
        a_lo = _mm512_add_epi16(a_lo, v_lo);
        b_lo = _mm512_add_epi16(b_lo, _mm512_srli_epi16::<8>(v_lo));
        a_hi = _mm512_add_epi16(a_hi, v_hi);
        b_hi = _mm512_add_epi16(b_hi, _mm512_srli_epi16::<8>(v_hi));
    }
    // Sum the four lanes (sub-quantizer groups), then split even and odd vectors.
    let (a_lo, b_lo, a_hi, b_hi) = (
        lane_sum(a_lo),
        lane_sum(b_lo),
        lane_sum(a_hi),
        lane_sum(b_hi),
    );
    let even_lo = _mm_sub_epi16(a_lo, _mm_slli_epi16::<8>(b_lo));
    let even_hi = _mm_sub_epi16(a_hi, _mm_slli_epi16::<8>(b_hi));
    // Word t of even/odd is vector 2t/2t + 1: interleaving restores vector order.
    let sums = _mm512_inserti32x4::<3>(
        _mm512_inserti32x4::<2>(
            _mm512_inserti32x4::<1>(
                _mm512_castsi128_si512(_mm_unpacklo_epi16(even_lo, b_lo)),
                _mm_unpackhi_epi16(even_lo, b_lo),
            ),
            _mm_unpacklo_epi16(even_hi, b_hi),
        ),
        _mm_unpackhi_epi16(even_hi, b_hi),
    );
    // SAFETY: `out` holds 32 u16 = one 512-bit store.
    unsafe { _mm512_storeu_si512(out.as_mut_ptr() as *mut _, sums) };
    _mm512_cmple_epu16_mask(sums, _mm512_set1_epi16(qthr as i16))
}

/// [`super::QuantizedTable::quantize`]'s arithmetic, one 16-entry row per register: writes
/// `out` and returns `(base, scale)`. The same operations in the same order as the portable
/// path (min and max are exact in any order): bit-exact with it.
/// # Safety: the CPU must support AVX-512F/BW; `table.len()` is a multiple of 16 and
/// `out.len() >= table.len()`.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn quantize(table: &[f32], bias: f32, out: &mut [u8]) -> (f32, f32) {
    debug_assert!(table.len().is_multiple_of(16) && out.len() >= table.len());
    let rows = table.len() / 16;
    // SAFETY (all loads and stores below): row `r` spans 16 values of `table` and 16 bytes of
    // `out`, inside both for `r < rows`.
    let row = |r: usize| unsafe { _mm512_loadu_ps(table.as_ptr().add(r * 16)) };
    let mut base = bias;
    let mut max_range = 0f32;
    for r in 0..rows {
        let v = row(r);
        let (lo, hi) = (_mm512_reduce_min_ps(v), _mm512_reduce_max_ps(v));
        base += lo;
        max_range = max_range.max(hi - lo);
    }
    let scale = super::scale_for_range(max_range);
    let (vscale, half, zero, top) = (
        _mm512_set1_ps(scale),
        _mm512_set1_ps(0.5),
        _mm512_setzero_ps(),
        _mm512_set1_ps(255.0),
    );
    for r in 0..rows {
        let v = row(r);
        let lo = _mm512_set1_ps(_mm512_reduce_min_ps(v));
        let y = _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(v, lo), vscale), half);
        // max(y, 0) maps NaN to 0 (the second operand), as the portable path does.
        let y = _mm512_min_ps(_mm512_max_ps(y, zero), top);
        let bytes = _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(y));
        unsafe { _mm_storeu_si128(out.as_mut_ptr().add(r * 16) as *mut _, bytes) };
    }
    (base, scale)
}
