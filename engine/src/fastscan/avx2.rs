//! AVX2 fast-scan kernel: two sub-quantizers per 256-bit register, table lookups by
//! `vpshufb`, sums widened to u16. Callers guarantee AVX2 and an even number of
//! sub-quantizers.

use std::arch::x86_64::*;

use super::BLOCK;

/// Quantized sums of the 32 vectors of one block, and the mask of those `<= qthr` (bit `v` for
/// vector `v`). # Safety: the CPU must support AVX2; `table.len() / 16` is even and `block`
/// holds at least `table.len()` bytes.
#[target_feature(enable = "avx2")]
pub unsafe fn block_sums(block: &[u8], table: &[u8], out: &mut [u16; BLOCK], qthr: u16) -> u32 {
    let m = table.len() / 16;
    debug_assert!(m.is_multiple_of(2) && block.len() >= m * 16);
    let low = _mm256_set1_epi8(0x0F);
    let (mut acc_lo, mut acc_hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
    let (pb, pt) = (block.as_ptr(), table.as_ptr());
    for pair in 0..m / 2 {
        // SAFETY: 32 bytes at pair·32 lie inside both `block` and `table` (length ≥ m·16).
        let (codes, lut) = unsafe {
            (
                _mm256_loadu_si256(pb.add(pair * 32) as *const __m256i),
                _mm256_loadu_si256(pt.add(pair * 32) as *const __m256i),
            )
        };
        let lo = _mm256_and_si256(codes, low);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(codes), low);
        // Lane 0: sub-quantizer 2·pair, lane 1: 2·pair + 1; bytes j = vectors j (lo) / j + 16 (hi).
        let v_lo = _mm256_shuffle_epi8(lut, lo);
        let v_hi = _mm256_shuffle_epi8(lut, hi);
        acc_lo = _mm256_add_epi16(acc_lo, _mm256_cvtepu8_epi16(_mm256_castsi256_si128(v_lo)));
        acc_lo = _mm256_add_epi16(
            acc_lo,
            _mm256_cvtepu8_epi16(_mm256_extracti128_si256::<1>(v_lo)),
        );
        acc_hi = _mm256_add_epi16(acc_hi, _mm256_cvtepu8_epi16(_mm256_castsi256_si128(v_hi)));
        acc_hi = _mm256_add_epi16(
            acc_hi,
            _mm256_cvtepu8_epi16(_mm256_extracti128_si256::<1>(v_hi)),
        );
    }
    let p = out.as_mut_ptr() as *mut __m256i;
    // SAFETY: `out` holds 32 u16 = two 256-bit stores.
    unsafe {
        _mm256_storeu_si256(p, acc_lo);
        _mm256_storeu_si256(p.add(1), acc_hi);
    }
    // Unsigned `s <= t` is `max(s, t) == t`; the byte mask has two bits per u16 lane.
    let t = _mm256_set1_epi16(qthr as i16);
    let le_lo = _mm256_cmpeq_epi16(_mm256_max_epu16(acc_lo, t), t);
    let le_hi = _mm256_cmpeq_epi16(_mm256_max_epu16(acc_hi, t), t);
    // Packing with signed saturation keeps 0 / -1, but interleaves the 128-bit lanes:
    // bytes 0..8 = lo[0..8], 8..16 = hi[0..8], 16..24 = lo[8..16], 24..32 = hi[8..16].
    let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi16(le_lo, le_hi));
    _mm256_movemask_epi8(packed) as u32
}
