//! 4-bit fast-scan PQ (André, Kermarrec and Le Scouarnec; FAISS's `PQx4fs`): codes of 16
//! entries per sub-quantizer, packed in blocks of 32 vectors so that one in-register byte
//! shuffle (`pshufb`) looks up 16 vectors' table entries at once, with the tables quantized to
//! u8 and sums accumulated in u16.
//!
//! Block layout (one block = 32 vectors, `M × 16` bytes): for sub-quantizer `m`, byte `j` of its
//! 16 holds the code of vector `j` in the low nibble and of vector `j + 16` in the high nibble.
//! A list of `n` vectors holds `⌈n / 32⌉` blocks; slots past `n` in the last block are zero
//! and never reported.
//!
//! Quantized tables: per sub-quantizer `m`, `q[m][j] = round((t[m][j] − min_m) · scale)` with
//! one `scale = 255 / max_m(max_j t[m][j] − min_m)`, so `Σ_m q` approximates
//! `(Σ_m t − Σ_m min_m) · scale` within `M / 2` units. Scores recovered from it are
//! approximate: exact re-ranking (refine) restores full precision.
//! This module does not choose lists or keep results beyond one list's scan.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod scalar;

use crate::simd::Level;
use crate::topk::TopK;

/// Vectors per block.
pub const BLOCK: usize = 32;

/// Bytes of one block for `m` sub-quantizers.
pub fn block_bytes(m: usize) -> usize {
    m * 16
}

/// Bytes of a list of `n` vectors.
pub fn list_bytes(n: usize, m: usize) -> usize {
    n.div_ceil(BLOCK) * block_bytes(m)
}

/// Writes the 4-bit `codes` (one sub-quantizer code per entry, `m` entries) of slot `slot`
/// into block-packed `packed`, growing it by a zeroed block when `slot` starts one.
pub fn set_codes(packed: &mut Vec<u8>, slot: usize, codes: &[u8]) {
    let m = codes.len();
    let need = (slot / BLOCK + 1) * block_bytes(m);
    if packed.len() < need {
        packed.resize(need, 0);
    }
    let base = (slot / BLOCK) * block_bytes(m);
    let (j, high) = (slot % 16, slot % BLOCK >= 16);
    for (sub, &c) in codes.iter().enumerate() {
        let byte = &mut packed[base + sub * 16 + j];
        if high {
            *byte = (*byte & 0x0F) | (c & 0x0F) << 4;
        } else {
            *byte = (*byte & 0xF0) | (c & 0x0F);
        }
    }
}

/// Reads slot `slot`'s `m` codes back from block-packed `packed`.
pub fn get_codes(packed: &[u8], slot: usize, m: usize, out: &mut [u8]) {
    let base = (slot / BLOCK) * block_bytes(m);
    let (j, high) = (slot % 16, slot % BLOCK >= 16);
    for (sub, o) in out.iter_mut().enumerate().take(m) {
        let byte = packed[base + sub * 16 + j];
        *o = if high { byte >> 4 } else { byte & 0x0F };
    }
}

/// A query's lookup table for one list, quantized to u8.
#[derive(Debug, Clone)]
pub struct QuantizedTable {
    /// `M × 16` entries.
    pub values: Vec<u8>,
    /// Score of a sum of zero: `bias + Σ_m min_m`.
    pub base: f32,
    /// Quantization scale (units per score unit).
    pub scale: f32,
}

impl QuantizedTable {
    /// An empty table, to be filled by [`QuantizedTable::quantize`].
    pub fn new(m: usize) -> Self {
        QuantizedTable {
            values: vec![0; m * 16],
            base: 0.0,
            scale: 1.0,
        }
    }

    /// Quantizes a float table (`M × 16`) whose sums are offset by `bias`.
    pub fn quantize(&mut self, table: &[f32], bias: f32) {
        let mut base = bias;
        let mut max_range = 0f32;
        for t in table.chunks_exact(16) {
            let (lo, hi) = t
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
                    (a.min(x), b.max(x))
                });
            base += lo;
            max_range = max_range.max(hi - lo);
        }
        let scale = if max_range > 0.0 {
            255.0 / max_range
        } else {
            1.0
        };
        for (t, q) in table.chunks_exact(16).zip(self.values.chunks_exact_mut(16)) {
            let lo = t.iter().copied().fold(f32::INFINITY, f32::min);
            for (x, o) in t.iter().zip(q) {
                // Non-negative, so adding 0.5 and truncating rounds (without a libm call).
                *o = ((x - lo) * scale + 0.5).min(255.0) as u8;
            }
        }
        self.base = base;
        self.scale = scale;
    }

    /// The approximate score of a quantized sum.
    #[inline]
    pub fn score(&self, qsum: u16) -> f32 {
        self.base + qsum as f32 / self.scale
    }

    /// The largest quantized sum whose score can still beat `threshold`.
    #[inline]
    pub fn qthreshold(&self, threshold: f32) -> u16 {
        if !threshold.is_finite() {
            return u16::MAX;
        }
        let q = ((threshold - self.base) * self.scale).floor();
        if q < 0.0 {
            0
        } else if q >= u16::MAX as f32 {
            u16::MAX
        } else {
            q as u16
        }
    }
}

/// The quantized sums of one block (32 vectors) at a level; the SIMD and scalar paths are
/// bit-exact (integer arithmetic).
pub fn block_sums_at(level: Level, block: &[u8], table: &[u8], out: &mut [u16; BLOCK]) {
    let m = table.len() / 16;
    assert!(block.len() >= block_bytes(m), "block too short");
    match level {
        // SAFETY: the level comes from `simd::level()`/`available()`: the CPU has AVX-512F/BW.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 if m.is_multiple_of(4) && m <= 256 => unsafe {
            avx512::block_sums(block, table, out)
        },
        // SAFETY: as above, the CPU has AVX2.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 | Level::Avx512 if m.is_multiple_of(2) => unsafe {
            avx2::block_sums(block, table, out)
        },
        _ => scalar::block_sums(block, table, out),
    }
}

/// Scans one list's packed codes (`n` vectors) with a quantized table, offering every live
/// vector whose approximate score (plus `offset`, the list's share of the score when the table
/// is shared by all lists) can enter `top` (payload from `item(slot)`).
#[allow(clippy::too_many_arguments)]
pub fn scan_list(
    level: Level,
    packed: &[u8],
    n: usize,
    table: &QuantizedTable,
    offset: f32,
    tombstones: Option<&[u64]>,
    top: &mut TopK<u64>,
    item: impl Fn(usize) -> u64,
) {
    let m = table.values.len() / 16;
    let bb = block_bytes(m);
    let mut sums = [0u16; BLOCK];
    for b in 0..n.div_ceil(BLOCK) {
        block_sums_at(
            level,
            &packed[b * bb..(b + 1) * bb],
            &table.values,
            &mut sums,
        );
        let mut qthr = table.qthreshold(top.threshold() - offset);
        let valid = (n - b * BLOCK).min(BLOCK);
        for (v, &s) in sums.iter().enumerate().take(valid) {
            if s > qthr {
                continue;
            }
            let slot = b * BLOCK + v;
            if let Some(bits) = tombstones {
                if bits[slot / 64] >> (slot % 64) & 1 == 1 {
                    continue;
                }
            }
            top.push(table.score(s) + offset, item(slot));
            qthr = table.qthreshold(top.threshold() - offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn codes_round_trip_through_the_block_layout() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let m = 6;
        let codes: Vec<Vec<u8>> = (0..77)
            .map(|_| (0..m).map(|_| rng.random_range(0..16u8)).collect())
            .collect();
        let mut packed = Vec::new();
        for (s, c) in codes.iter().enumerate() {
            set_codes(&mut packed, s, c);
        }
        assert_eq!(packed.len(), list_bytes(77, m));
        let mut out = vec![0u8; m];
        for (s, c) in codes.iter().enumerate() {
            get_codes(&packed, s, m, &mut out);
            assert_eq!(&out, c, "slot {s}");
        }
    }

    /// Integer sums: every available SIMD level equals the scalar path exactly.
    #[test]
    fn block_sums_are_bit_exact_at_every_level() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for m in [2, 4, 6, 16, 96, 7] {
            let block: Vec<u8> = (0..block_bytes(m)).map(|_| rng.random()).collect();
            let table: Vec<u8> = (0..m * 16).map(|_| rng.random()).collect();
            let mut want = [0u16; BLOCK];
            scalar::block_sums(&block, &table, &mut want);
            // The scalar path against a direct definition.
            for (v, w) in want.iter().enumerate() {
                let mut codes = vec![0u8; m];
                get_codes(&block, v, m, &mut codes);
                let direct: u32 = codes
                    .iter()
                    .enumerate()
                    .map(|(sub, &c)| table[sub * 16 + c as usize] as u32)
                    .sum();
                assert_eq!(*w as u32, direct);
            }
            for level in crate::simd::available() {
                let mut got = [0u16; BLOCK];
                block_sums_at(level, &block, &table, &mut got);
                assert_eq!(got, want, "{level:?} m = {m}");
            }
        }
    }

    #[test]
    fn quantized_scores_track_float_scores() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let m = 8;
        let table: Vec<f32> = (0..m * 16)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let mut q = QuantizedTable::new(m);
        q.quantize(&table, 0.5);
        let codes: Vec<u8> = (0..m).map(|_| rng.random_range(0..16u8)).collect();
        let exact: f32 = 0.5
            + codes
                .iter()
                .enumerate()
                .map(|(s, &c)| table[s * 16 + c as usize])
                .sum::<f32>();
        let qsum: u16 = codes
            .iter()
            .enumerate()
            .map(|(s, &c)| q.values[s * 16 + c as usize] as u16)
            .sum();
        assert!((q.score(qsum) - exact).abs() <= m as f32 * 0.5 / q.scale + 1e-4);
        assert!(q.qthreshold(q.score(qsum) + 1e-3) >= qsum);
        assert_eq!(q.qthreshold(f32::INFINITY), u16::MAX);
    }
}
