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
#[cfg(target_arch = "x86_64")]
mod avx512vbmi;
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
        self.quantize_at(crate::simd::level(), table, bias);
    }

    /// [`QuantizedTable::quantize`] at a given SIMD level (bit-exact at every level).
    pub fn quantize_at(&mut self, level: Level, table: &[f32], bias: f32) {
        assert_eq!(table.len(), self.values.len(), "table size");
        #[cfg(target_arch = "x86_64")]
        if level >= Level::Avx512 {
            // SAFETY: the level comes from `simd::level()`/`available()`: the CPU has
            // AVX-512F/BW; the lengths are equal multiples of 16 (`M × 16`).
            let (base, scale) = unsafe { avx512::quantize(table, bias, &mut self.values) };
            self.base = base;
            self.scale = scale;
            return;
        }
        let _ = level;
        let mut base = bias;
        let mut max_range = 0f32;
        for t in table.chunks_exact(16) {
            let (lo, hi) = min_max16(t);
            base += lo;
            max_range = max_range.max(hi - lo);
        }
        let scale = scale_for_range(max_range);
        for (t, q) in table.chunks_exact(16).zip(self.values.chunks_exact_mut(16)) {
            let lo = min_max16(t).0;
            let mut v = [0i32; 16];
            for (x, o) in t.iter().zip(&mut v) {
                // Non-negative, so adding 0.5 and truncating rounds (without a libm call).
                let y = (x - lo) * scale + 0.5;
                // Written with comparisons (NaN → 0) so that the compiler vectorises it.
                let y = if y >= 0.0 { y } else { 0.0 };
                let y = if y <= 255.0 { y } else { 255.0 };
                // SAFETY: `y` is finite and within 0..=255.
                *o = unsafe { y.to_int_unchecked::<i32>() };
            }
            for (o, &x) in q.iter_mut().zip(&v) {
                *o = x as u8;
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

    /// A quantized sum above which the score cannot reach `threshold`: every sum whose score
    /// is `<= threshold` is at most this. One unit above the rounded-down quotient, so that
    /// float rounding never filters out a tie with the k-th entry (the selection then does not
    /// depend on the order in which lists are scanned).
    #[inline]
    pub fn qthreshold(&self, threshold: f32) -> u16 {
        if !threshold.is_finite() {
            return u16::MAX;
        }
        // Truncation is the floor for non-negative values (no libm call on the hot path).
        let q = (threshold - self.base) * self.scale;
        if q < 0.0 {
            0
        } else if q >= (u16::MAX - 1) as f32 {
            u16::MAX
        } else {
            q as u16 + 1
        }
    }
}

/// The quantization scale for the widest table row's range: 255 units across it.
#[inline]
fn scale_for_range(max_range: f32) -> f32 {
    if max_range > 0.0 {
        255.0 / max_range
    } else {
        1.0
    }
}

/// Minimum and maximum of 16 values, as a tree the compiler turns into a few vector
/// instructions (a left-to-right fold would be a chain of 16 dependent scalar steps).
#[inline]
fn min_max16(t: &[f32]) -> (f32, f32) {
    let t: &[f32; 16] = t.try_into().expect("chunks of 16");
    let mut lo = [0f32; 8];
    let mut hi = [0f32; 8];
    // `if` rather than `f32::min`: the latter's NaN rule blocks `minps` (inputs are finite).
    let min = |a: f32, b: f32| if a < b { a } else { b };
    let max = |a: f32, b: f32| if a > b { a } else { b };
    for i in 0..8 {
        lo[i] = min(t[i], t[i + 8]);
        hi[i] = max(t[i], t[i + 8]);
    }
    for w in [4, 2, 1] {
        for i in 0..w {
            lo[i] = min(lo[i], lo[i + w]);
            hi[i] = max(hi[i], hi[i + w]);
        }
    }
    (lo[0], hi[0])
}

/// The quantized sums of one block (32 vectors) at a level, and the mask of the vectors whose
/// sum is at most `qthr` (bit `v` for vector `v`); the SIMD and scalar paths are bit-exact
/// (integer arithmetic).
#[inline]
pub fn block_sums_at(
    level: Level,
    block: &[u8],
    table: &[u8],
    out: &mut [u16; BLOCK],
    qthr: u16,
) -> u32 {
    let m = table.len() / 16;
    assert!(block.len() >= block_bytes(m), "block too short");
    match level {
        // SAFETY: the level comes from `simd::level()`/`available()`: the CPU has
        // AVX-512F/BW/VBMI/VNNI; the table is `m × 16` bytes, a multiple of 64.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512Vbmi if m.is_multiple_of(4) && m <= 256 => unsafe {
            let [mask] =
                avx512vbmi::block_sums::<1>(block, [table], std::array::from_mut(out), [qthr]);
            mask
        },
        // SAFETY: as above, the CPU has AVX-512F/BW.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 | Level::Avx512Vbmi if m.is_multiple_of(4) && m <= 256 => unsafe {
            avx512::block_sums(block, table, out, qthr)
        },
        // SAFETY: as above, the CPU has AVX2.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 | Level::Avx512 | Level::Avx512Vbmi if m.is_multiple_of(2) => unsafe {
            avx2::block_sums(block, table, out, qthr)
        },
        _ => scalar::block_sums(block, table, out, qthr),
    }
}

/// [`block_sums_at`] for `Q` queries (tables of equal length) over the same block: on
/// AVX-512 VBMI the block's codes are loaded and unpacked once for all of them; elsewhere it
/// is one call per query. Results are identical either way.
#[inline]
pub fn block_sums_for<const Q: usize>(
    level: Level,
    block: &[u8],
    tables: [&[u8]; Q],
    out: &mut [[u16; BLOCK]; Q],
    qthr: [u16; Q],
) -> [u32; Q] {
    let len = tables[0].len();
    assert!(
        tables.iter().all(|t| t.len() == len),
        "tables of different lengths"
    );
    assert!(block.len() >= len, "block too short");
    let m = len / 16;
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512Vbmi && len.is_multiple_of(16) && m.is_multiple_of(4) && m <= 256 {
        // SAFETY: the level comes from `simd::level()`/`available()`; lengths checked above.
        return unsafe { avx512vbmi::block_sums::<Q>(block, tables, out, qthr) };
    }
    std::array::from_fn(|q| block_sums_at(level, block, tables[q], &mut out[q], qthr[q]))
}

/// One query's part in a list scan: its quantized table, the list's share of its scores
/// (`offset`, when the table is shared by all lists) and its selection.
pub struct ScanQuery<'a> {
    /// The query's quantized table for this list.
    pub table: &'a QuantizedTable,
    /// Added to every approximate score.
    pub offset: f32,
    /// Receives the candidates.
    pub top: &'a mut TopK<u64>,
    /// This query's exclusion bits for the list (an allow-set's, tombstones included), in
    /// place of the list's tombstones; `None`: the list's tombstones.
    pub excluded: Option<&'a [u64]>,
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
    scan_list_for(
        level,
        packed,
        n,
        [ScanQuery {
            table,
            offset,
            top,
            excluded: None,
        }],
        tombstones,
        item,
    );
}

/// [`scan_list`] for `Q` queries probing the same list, the list read once for all of them.
/// Each query's selection ends exactly as if its scan had run alone.
///
/// The kernel compares a block's 32 sums with each query's current threshold in SIMD; only the
/// vectors of a mask are looked at one by one (after the first blocks, most blocks have none).
pub fn scan_list_for<const Q: usize>(
    level: Level,
    packed: &[u8],
    n: usize,
    mut queries: [ScanQuery<'_>; Q],
    tombstones: Option<&[u64]>,
    item: impl Fn(usize) -> u64,
) {
    let m = queries[0].table.values.len() / 16;
    let bb = block_bytes(m);
    let mut sums = [[0u16; BLOCK]; Q];
    let blocks = n.div_ceil(BLOCK);
    let mut qthr: [u16; Q] = std::array::from_fn(|q| {
        queries[q]
            .table
            .qthreshold(queries[q].top.threshold() - queries[q].offset)
    });
    let tables: [&[u8]; Q] = std::array::from_fn(|q| &queries[q].table.values[..]);
    for (b, block) in packed.chunks_exact(bb).take(blocks).enumerate() {
        let masks = block_sums_for(level, block, tables, &mut sums, qthr);
        let valid = n - b * BLOCK;
        let tail = if valid < BLOCK {
            (1u32 << valid) - 1
        } else {
            u32::MAX
        };
        for (q, sq) in queries.iter_mut().enumerate() {
            let mut mask = masks[q] & tail;
            while mask != 0 {
                let v = mask.trailing_zeros() as usize;
                mask &= mask - 1;
                let s = sums[q][v];
                if s > qthr[q] {
                    continue; // the threshold fell since the block was compared
                }
                let slot = b * BLOCK + v;
                if let Some(bits) = sq.excluded.or(tombstones) {
                    if bits[slot / 64] >> (slot % 64) & 1 == 1 {
                        continue;
                    }
                }
                sq.top.push(sq.table.score(s) + sq.offset, item(slot));
                qthr[q] = sq.table.qthreshold(sq.top.threshold() - sq.offset);
            }
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
            let qthr = rng.random_range(0..(m as u16 * 255));
            let want_mask = scalar::block_sums(&block, &table, &mut want, qthr);
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
                assert_eq!(want_mask >> v & 1 == 1, *w <= qthr, "mask bit {v}");
            }
            for level in crate::simd::available() {
                let mut got = [0u16; BLOCK];
                let mask = block_sums_at(level, &block, &table, &mut got, qthr);
                assert_eq!(got, want, "{level:?} m = {m}");
                assert_eq!(mask, want_mask, "{level:?} m = {m}");
            }
        }
    }

    /// The multi-query kernel equals one scalar call per query, at every level and for one to
    /// four queries (each with its own table and threshold).
    #[test]
    fn multi_query_block_sums_equal_one_query_at_a_time() {
        fn check<const Q: usize>(rng: &mut ChaCha8Rng, m: usize) {
            let block: Vec<u8> = (0..block_bytes(m)).map(|_| rng.random()).collect();
            let tables: Vec<Vec<u8>> = (0..Q)
                .map(|_| (0..m * 16).map(|_| rng.random()).collect())
                .collect();
            let qthr: [u16; Q] = std::array::from_fn(|_| rng.random_range(0..(m as u16 * 255)));
            for level in crate::simd::available() {
                let mut got = [[0u16; BLOCK]; Q];
                let refs: [&[u8]; Q] = std::array::from_fn(|q| &tables[q][..]);
                let masks = block_sums_for(level, &block, refs, &mut got, qthr);
                for q in 0..Q {
                    let mut want = [0u16; BLOCK];
                    let want_mask = scalar::block_sums(&block, &tables[q], &mut want, qthr[q]);
                    assert_eq!(got[q], want, "{level:?} Q = {Q} q = {q} m = {m}");
                    assert_eq!(masks[q], want_mask, "{level:?} Q = {Q} q = {q} m = {m}");
                }
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for m in [4, 8, 12, 96, 256, 6, 7] {
            check::<1>(&mut rng, m);
            check::<2>(&mut rng, m);
            check::<3>(&mut rng, m);
            check::<4>(&mut rng, m);
        }
    }

    /// Scanning a list for several queries at once leaves each selection as a scan of its own.
    #[test]
    fn multi_query_scan_equals_separate_scans() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (m, n) = (16, 300);
        let mut packed = Vec::new();
        for slot in 0..n {
            let codes: Vec<u8> = (0..m).map(|_| rng.random_range(0..16u8)).collect();
            set_codes(&mut packed, slot, &codes);
        }
        let tombstones = vec![0x0000_0F00_0000_0001u64; n.div_ceil(64)];
        let tables: Vec<QuantizedTable> = (0..3)
            .map(|_| {
                let t: Vec<f32> = (0..m * 16)
                    .map(|_| rng.random_range(-1.0f32..1.0))
                    .collect();
                let mut q = QuantizedTable::new(m);
                q.quantize(&t, 0.25);
                q
            })
            .collect();
        for level in crate::simd::available() {
            let mut alone: Vec<TopK<u64>> = (0..3).map(|_| TopK::new(17)).collect();
            for (q, top) in alone.iter_mut().enumerate() {
                scan_list(
                    level,
                    &packed,
                    n,
                    &tables[q],
                    0.5 * q as f32,
                    Some(&tombstones),
                    top,
                    |s| s as u64,
                );
            }
            let mut together: Vec<TopK<u64>> = (0..3).map(|_| TopK::new(17)).collect();
            let [a, b, c] = &mut together[..] else {
                unreachable!()
            };
            scan_list_for(
                level,
                &packed,
                n,
                [
                    ScanQuery {
                        table: &tables[0],
                        offset: 0.0,
                        top: a,
                        excluded: None,
                    },
                    ScanQuery {
                        table: &tables[1],
                        offset: 0.5,
                        top: b,
                        excluded: None,
                    },
                    ScanQuery {
                        table: &tables[2],
                        offset: 1.0,
                        top: c,
                        excluded: None,
                    },
                ],
                Some(&tombstones),
                |s| s as u64,
            );
            for (x, y) in alone.iter_mut().zip(&mut together) {
                assert_eq!(x.sorted(), y.sorted(), "{level:?}");
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

    /// Table quantization gives the same bytes, base and scale at every SIMD level, including
    /// constant rows and non-finite entries.
    #[test]
    fn quantization_is_bit_exact_at_every_level() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        for m in [1, 2, 8, 96] {
            let mut table: Vec<f32> = (0..m * 16)
                .map(|_| rng.random_range(-3.0f32..3.0))
                .collect();
            if m > 2 {
                table[..16].fill(0.25); // a constant row
                table[20] = f32::NAN;
            }
            let mut want = QuantizedTable::new(m);
            want.quantize_at(Level::Scalar, &table, -0.75);
            for level in crate::simd::available() {
                let mut got = QuantizedTable::new(m);
                got.quantize_at(level, &table, -0.75);
                assert_eq!(got.values, want.values, "{level:?} m = {m}");
                assert_eq!(got.base.to_bits(), want.base.to_bits(), "{level:?} m = {m}");
                assert_eq!(
                    got.scale.to_bits(),
                    want.scale.to_bits(),
                    "{level:?} m = {m}"
                );
            }
        }
    }
}
