//! AVX-512 VBMI + VNNI fast-scan kernel (Ice Lake, Sapphire Rapids, Zen 4 and later): one block
//! of codes scored for up to four queries at once, each 64-byte quad of codes (four
//! sub-quantizers × 32 vectors) read and unpacked once for all of them.
//!
//! Per quad the codes are transposed in-register (`vpermb`) so that the four bytes of each
//! 32-bit word belong to one vector and four sub-quantizers; a second `vpermb` looks every byte
//! up in the quad's 64-entry table (four sub-quantizers × 16), and `vpdpbusd` adds each word's
//! four looked-up bytes into that vector's 32-bit sum. Per query and quad that is two permutes
//! and two dot-products (the AVX-512BW kernel needs eleven operations), plus four shared ones
//! (transpose, two nibble masks, one shift). Sums are exact integers: bit-exact with the scalar
//! path. Callers guarantee AVX-512F/BW/VBMI/VNNI and a multiple of four sub-quantizers.

use std::arch::x86_64::*;

use super::BLOCK;

/// Transposes a quad: byte `i` of the result is byte `(i % 4) · 16 + i / 4` of the packed
/// quad, i.e. sub-quantizer `i % 4` of vectors `i / 4` (low nibble) and `i / 4 + 16` (high).
const TRANSPOSE: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        t[i] = ((i % 4) * 16 + i / 4) as u8;
        i += 1;
    }
    t
};

/// The table offset of byte `i`'s sub-quantizer within the quad's 64-entry table.
const SUB_OFFSET: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        t[i] = ((i % 4) * 16) as u8;
        i += 1;
    }
    t
};

/// `(a & b) | c` as a `vpternlog` immediate.
const AND_OR: i32 = 0xEA;

/// The shared constants of the kernel.
struct Consts {
    transpose: __m512i,
    sub_offset: __m512i,
    low: __m512i,
    ones: __m512i,
}

/// Adds one quad (at byte `at` of the block and of every table) into the accumulators:
/// `lo[q]` for vectors 0..16, `hi[q]` for vectors 16..32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
fn quad<const Q: usize>(
    c: &Consts,
    block: *const u8,
    tables: &[*const u8; Q],
    at: usize,
    lo: &mut [__m512i; Q],
    hi: &mut [__m512i; Q],
) {
    // SAFETY: the caller guarantees 64 bytes at `at` in the block and in every table.
    let codes = unsafe { _mm512_loadu_si512(block.add(at) as *const _) };
    let t = _mm512_permutexvar_epi8(c.transpose, codes);
    let lo_idx = _mm512_ternarylogic_epi32::<AND_OR>(t, c.low, c.sub_offset);
    let hi_idx =
        _mm512_ternarylogic_epi32::<AND_OR>(_mm512_srli_epi16::<4>(t), c.low, c.sub_offset);
    for q in 0..Q {
        // SAFETY: as above.
        let lut = unsafe { _mm512_loadu_si512(tables[q].add(at) as *const _) };
        lo[q] = _mm512_dpbusd_epi32(lo[q], _mm512_permutexvar_epi8(lo_idx, lut), c.ones);
        hi[q] = _mm512_dpbusd_epi32(hi[q], _mm512_permutexvar_epi8(hi_idx, lut), c.ones);
    }
}

/// Quantized sums of the 32 vectors of one block for each of `Q` queries, and per query the
/// mask of the vectors whose sum is at most its `qthr` (bit `v` for vector `v`).
///
/// # Safety
/// The CPU must support AVX-512F, BW, VBMI and VNNI; every table holds `M × 16` bytes with `M` a
/// multiple of 4 (at most 256), all tables the same length, and `block` at least that many.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
pub unsafe fn block_sums<const Q: usize>(
    block: &[u8],
    tables: [&[u8]; Q],
    out: &mut [[u16; BLOCK]; Q],
    qthr: [u16; Q],
) -> [u32; Q] {
    let len = tables[0].len();
    debug_assert!(len.is_multiple_of(64) && len <= 256 * 16 && block.len() >= len);
    debug_assert!(tables.iter().all(|t| t.len() == len));
    // SAFETY: 64-byte unaligned loads of 64-byte arrays.
    let c = unsafe {
        Consts {
            transpose: _mm512_loadu_si512(TRANSPOSE.as_ptr() as *const _),
            sub_offset: _mm512_loadu_si512(SUB_OFFSET.as_ptr() as *const _),
            low: _mm512_set1_epi8(0x0F),
            ones: _mm512_set1_epi8(1),
        }
    };
    let ptrs: [*const u8; Q] = std::array::from_fn(|q| tables[q].as_ptr());
    let zero = _mm512_setzero_si512();
    // Two accumulator sets (even and odd quads): one set alone would be a chain of dependent
    // `vpdpbusd`s, bound by their latency rather than by the permute port.
    let (mut lo0, mut hi0, mut lo1, mut hi1) = ([zero; Q], [zero; Q], [zero; Q], [zero; Q]);
    let quads = len / 64;
    let mut at = 0;
    for _ in 0..quads / 2 {
        quad(&c, block.as_ptr(), &ptrs, at, &mut lo0, &mut hi0);
        quad(&c, block.as_ptr(), &ptrs, at + 64, &mut lo1, &mut hi1);
        at += 128;
    }
    if quads % 2 == 1 {
        quad(&c, block.as_ptr(), &ptrs, at, &mut lo0, &mut hi0);
    }
    let mut masks = [0u32; Q];
    for q in 0..Q {
        // Every sum is below 2¹⁶ (at most 256 × 255): narrowing to u16 is exact.
        let lo = _mm512_cvtepi32_epi16(_mm512_add_epi32(lo0[q], lo1[q]));
        let hi = _mm512_cvtepi32_epi16(_mm512_add_epi32(hi0[q], hi1[q]));
        let sums = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
        // SAFETY: `out[q]` holds 32 u16 = one 512-bit store.
        unsafe { _mm512_storeu_si512(out[q].as_mut_ptr() as *mut _, sums) };
        masks[q] = _mm512_cmple_epu16_mask(sums, _mm512_set1_epi16(qthr[q] as i16));
    }
    masks
}
