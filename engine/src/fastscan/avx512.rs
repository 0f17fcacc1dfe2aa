//! AVX-512BW fast-scan kernel: four sub-quantizers per 512-bit register (one per 128-bit lane),
//! table lookups by `vpshufb`, bytes widened to u16 by unpacking with zero, lanes summed at the
//! end of the block. Callers guarantee AVX-512F/BW and a multiple of four sub-quantizers.

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

/// Quantized sums of the 32 vectors of one block. # Safety: the CPU must support AVX-512F
/// and AVX-512BW; `table.len() / 16` is a multiple of 4 (at most 256) and `block` holds at
/// least `table.len()` bytes.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn block_sums(block: &[u8], table: &[u8], out: &mut [u16; BLOCK]) {
    let m = table.len() / 16;
    debug_assert!(m.is_multiple_of(4) && m <= 256 && block.len() >= m * 16);
    let low = _mm512_set1_epi8(0x0F);
    let zero = _mm512_setzero_si512();
    let (mut a, mut b, mut c, mut d) = (zero, zero, zero, zero);
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
        a = _mm512_add_epi16(a, _mm512_unpacklo_epi8(v_lo, zero)); // vectors 0..8
        b = _mm512_add_epi16(b, _mm512_unpackhi_epi8(v_lo, zero)); // vectors 8..16
        c = _mm512_add_epi16(c, _mm512_unpacklo_epi8(v_hi, zero)); // vectors 16..24
        d = _mm512_add_epi16(d, _mm512_unpackhi_epi8(v_hi, zero)); // vectors 24..32
    }
    let p = out.as_mut_ptr() as *mut __m128i;
    // SAFETY: `out` holds 32 u16 = four 128-bit stores.
    unsafe {
        _mm_storeu_si128(p, lane_sum(a));
        _mm_storeu_si128(p.add(1), lane_sum(b));
        _mm_storeu_si128(p.add(2), lane_sum(c));
        _mm_storeu_si128(p.add(3), lane_sum(d));
    }
}
