//! Product quantizer: splits a vector into `M` sub-vectors and codes each by the nearest of
//! `2^nbits` sub-centroids trained by k-means on that sub-space.
//!
//! Codes are stored vector-major, `code_size()` bytes per vector. With 8-bit codes each byte is
//! one sub-quantizer's index; the `nbits` field and [`crate::list::CodeLayout`] leave room for
//! the 4-bit fast-scan layout (two codes per byte, blocks of 32 vectors) without a format change.
//! This module does not know about inverted lists or coarse centroids: it codes whatever
//! vectors it is given (the index gives it residuals).

use rayon::prelude::*;

use crate::error::EngineError;
use crate::kmeans::{self, Assignment, KMeansParams};
use crate::linalg::{gemm_abt, row_norms_sq};
use crate::progress::Progress;

/// A trained product quantizer.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductQuantizer {
    dim: usize,
    m: usize,
    nbits: u32,
    /// `m × ksub × dsub` sub-centroids.
    centroids: Vec<f32>,
    /// `m × ksub` squared norms of the sub-centroids.
    norms: Vec<f32>,
    /// The sub-centroids transposed per sub-quantizer, `m × dsub × ksub`: a query's table is
    /// then `dsub` vectorised multiply-adds over `ksub` entries.
    transposed: Vec<f32>,
}

/// Below this many queries, lookup tables are built from the transposed codebook rather than
/// with SGEMM (which would repack the codebook for little work).
const SMALL_TABLE_BATCH: usize = 16;

const ENCODE_BLOCK: usize = 256;

impl ProductQuantizer {
    /// Checks that `m` sub-quantizers of `nbits` bits can code vectors of dimension `dim`.
    pub fn validate(dim: usize, m: usize, nbits: u32) -> Result<(), EngineError> {
        if m == 0 {
            return Err(EngineError::InvalidParameter {
                name: "pq",
                reason: "M must be at least 1".into(),
            });
        }
        if !dim.is_multiple_of(m) {
            return Err(EngineError::PqDoesNotDivide { dim, m });
        }
        if nbits != 8 && nbits != 4 {
            return Err(EngineError::InvalidParameter {
                name: "pq",
                reason: format!("{nbits}-bit codes are not supported (use 8, or 4 for fast-scan)"),
            });
        }
        if nbits == 4 && !m.is_multiple_of(2) {
            return Err(EngineError::InvalidParameter {
                name: "pq",
                reason: format!(
                    "4-bit fast-scan needs an even number of sub-quantizers, got M = {m}"
                ),
            });
        }
        Ok(())
    }

    /// Trains on row-major `data` (`n × dim`; typically residuals to coarse centroids).
    pub fn train(
        data: &[f32],
        dim: usize,
        m: usize,
        nbits: u32,
        seed: u64,
        progress: &dyn Progress,
    ) -> Result<Self, EngineError> {
        Self::validate(dim, m, nbits)?;
        let n = data.len() / dim;
        let ksub = 1usize << nbits;
        if n < ksub {
            return Err(EngineError::TooFewTrainingVectors {
                clusters: ksub,
                points: n,
            });
        }
        let dsub = dim / m;
        let mut centroids = Vec::with_capacity(m * ksub * dsub);
        progress.stage("PQ training", m as u64);
        for sub in 0..m {
            if progress.cancelled() {
                return Err(EngineError::Cancelled {
                    what: "PQ training",
                });
            }
            let mut slice = Vec::with_capacity(n * dsub);
            for row in data.chunks_exact(dim) {
                slice.extend_from_slice(&row[sub * dsub..(sub + 1) * dsub]);
            }
            let params = KMeansParams {
                clusters: ksub,
                iterations: 25,
                seed: seed.wrapping_add(sub as u64 * 0x9E37_79B9),
                max_points_per_centroid: 256,
                assignment: Assignment::L2,
                init: kmeans::Init::Random,
            };
            let km = kmeans::train(&slice, dsub, &params, &crate::progress::NoProgress)?;
            centroids.extend_from_slice(&km.centroids);
            progress.advance(1);
        }
        progress.finish_stage();
        Ok(Self::from_parts(dim, m, nbits, centroids))
    }

    /// Rebuilds a quantizer from its stored parts (used when loading an index).
    pub fn from_parts(dim: usize, m: usize, nbits: u32, centroids: Vec<f32>) -> Self {
        let dsub = dim / m;
        let norms = row_norms_sq(&centroids, dsub);
        let ksub = 1usize << nbits;
        let mut transposed = vec![0f32; centroids.len()];
        for sub in 0..m {
            for j in 0..ksub {
                for t in 0..dsub {
                    transposed[(sub * dsub + t) * ksub + j] =
                        centroids[(sub * ksub + j) * dsub + t];
                }
            }
        }
        ProductQuantizer {
            dim,
            m,
            nbits,
            centroids,
            norms,
            transposed,
        }
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Number of sub-quantizers `M`.
    pub fn m(&self) -> usize {
        self.m
    }
    /// Bits per sub-quantizer code.
    pub fn nbits(&self) -> u32 {
        self.nbits
    }
    /// Sub-vector dimension `dim / M`.
    pub fn dsub(&self) -> usize {
        self.dim / self.m
    }
    /// Centroids per sub-quantizer, `2^nbits`.
    pub fn ksub(&self) -> usize {
        1 << self.nbits
    }
    /// Bytes per coded vector.
    pub fn code_size(&self) -> usize {
        (self.m * self.nbits as usize).div_ceil(8)
    }
    /// The `M × ksub × dsub` sub-centroids.
    pub fn centroids(&self) -> &[f32] {
        &self.centroids
    }
    /// Sub-centroid `j` of sub-quantizer `sub`.
    pub fn centroid(&self, sub: usize, j: usize) -> &[f32] {
        let dsub = self.dsub();
        let o = (sub * self.ksub() + j) * dsub;
        &self.centroids[o..o + dsub]
    }
    /// Squared norms of the sub-centroids, `M × ksub`.
    pub fn centroid_norms(&self) -> &[f32] {
        &self.norms
    }

    /// Codes the row-major vectors `data` into `codes` (`code_size()` bytes per vector).
    pub fn encode(&self, data: &[f32], codes: &mut [u8]) {
        let (dim, ksub, cs) = (self.dim, self.ksub(), self.code_size());
        assert_eq!(data.len() / dim * cs, codes.len(), "encode: output size");
        let level = crate::simd::level();
        let block = |(block, out): (&[f32], &mut [u8])| {
            let mut best = vec![0u32; block.len() / dim * self.m];
            let cb = nearest::Codebook {
                tr: &self.transposed,
                norms: &self.norms,
                dsub: self.dsub(),
                ksub,
            };
            nearest::block(level, block, dim, cb, &mut best);
            for (code, best) in out.chunks_exact_mut(cs).zip(best.chunks_exact(self.m)) {
                if self.nbits == 8 {
                    code.iter_mut().zip(best).for_each(|(c, &b)| *c = b as u8);
                } else {
                    for (byte, pair) in code.iter_mut().zip(best.chunks(2)) {
                        *byte = pair[0] as u8 | (pair.get(1).copied().unwrap_or(0) as u8) << 4;
                    }
                }
            }
        };
        if data.len() <= ENCODE_BLOCK * dim {
            // One block: in the caller's thread (no hand-off to the pool and back).
            block((data, codes));
        } else {
            data.par_chunks(ENCODE_BLOCK * dim)
                .zip(codes.par_chunks_mut(ENCODE_BLOCK * cs))
                .for_each(block);
        }
    }

    /// Reconstructs vectors from their codes into `out` (row-major).
    pub fn decode(&self, codes: &[u8], out: &mut [f32]) {
        let (dim, dsub, cs) = (self.dim, self.dsub(), self.code_size());
        for (code, row) in codes.chunks_exact(cs).zip(out.chunks_exact_mut(dim)) {
            for sub in 0..self.m {
                let c = self.code_of(code, sub);
                row[sub * dsub..(sub + 1) * dsub].copy_from_slice(self.centroid(sub, c));
            }
        }
    }

    /// Sub-quantizer `sub`'s entry of one vector's code (`code_size()` bytes; 4-bit codes are
    /// two per byte, low nibble first).
    #[inline]
    pub fn code_of(&self, code: &[u8], sub: usize) -> usize {
        if self.nbits == 8 {
            code[sub] as usize
        } else {
            (code[sub / 2] >> (4 * (sub % 2)) & 0x0F) as usize
        }
    }

    /// Inner-product lookup tables: `out[q][sub][j] = <query_q[sub], centroid(sub, j)>`, for
    /// row-major queries (`nq × dim`); `out` holds `nq × M × ksub` values.
    pub fn inner_product_tables(&self, queries: &[f32], out: &mut [f32]) {
        self.scaled_inner_product_tables(queries, 1.0, out);
    }

    /// [`ProductQuantizer::inner_product_tables`] times `factor` (exact when `factor` is a power
    /// of two, such as the −1 and −2 of the metrics' tables). Small codebooks (4-bit) and small
    /// batches are built per query from the transposed codebook (parallel over queries, in the
    /// CPU's widest vectors); large 8-bit batches by SGEMM.
    pub fn scaled_inner_product_tables(&self, queries: &[f32], factor: f32, out: &mut [f32]) {
        let (dim, dsub, ksub, m) = (self.dim, self.dsub(), self.ksub(), self.m);
        let nq = queries.len() / dim;
        assert_eq!(
            out.len(),
            nq * m * ksub,
            "inner_product_tables: output size"
        );
        if nq < SMALL_TABLE_BATCH || ksub <= 16 {
            let level = crate::simd::level();
            let one = |(q, table): (&[f32], &mut [f32])| {
                tables::one_query(level, q, &self.transposed, dsub, ksub, factor, table)
            };
            if nq < SMALL_TABLE_BATCH {
                queries
                    .chunks_exact(dim)
                    .zip(out.chunks_exact_mut(m * ksub))
                    .for_each(one);
            } else {
                queries
                    .par_chunks_exact(dim)
                    .zip(out.par_chunks_exact_mut(m * ksub))
                    .for_each(one);
            }
            return;
        }
        for sub in 0..m {
            let cents = &self.centroids[sub * ksub * dsub..(sub + 1) * ksub * dsub];
            gemm_abt(
                &queries[sub * dsub..],
                dim,
                nq,
                cents,
                dsub,
                ksub,
                dsub,
                &mut out[sub * ksub..],
                m * ksub,
            );
        }
        if factor != 1.0 {
            out.par_iter_mut().for_each(|v| *v *= factor);
        }
    }
}

/// The encoder's inner loop: for a block of rows, the first nearest sub-centroid in every
/// sub-quantizer, `‖c‖² − 2⟨x, c⟩` computed from the transposed codebook and reduced in SIMD
/// lanes as it is produced (no table is stored). Sub-quantizers are the outer loop, so one
/// sub-codebook (`dsub × ksub` floats) stays in L1 across the block's rows.
///
/// Each lane keeps a running minimum with a strict compare (the first index wins within a
/// lane); lanes are then reduced taking the smallest value and, among equals, the smallest
/// index: exactly the first position of the minimum. NaN distances are never taken; a row
/// whose distances are all NaN gets 0.
mod nearest {
    use crate::simd::Level;

    const LANES: usize = 16;

    /// The transposed codebook (`m × dsub × ksub`) and the squared sub-centroid norms
    /// (`m × ksub`).
    #[derive(Clone, Copy)]
    pub struct Codebook<'a> {
        pub tr: &'a [f32],
        pub norms: &'a [f32],
        pub dsub: usize,
        pub ksub: usize,
    }

    /// Reduces per-lane minima and their indices to the first position of the minimum.
    #[inline(always)]
    fn reduce(min: &[f32; LANES], idx: &[u32; LANES]) -> (f32, u32) {
        let (mut bv, mut bi) = (f32::INFINITY, 0u32);
        for l in 0..LANES {
            if min[l] < bv || (min[l] == bv && idx[l] < bi) {
                (bv, bi) = (min[l], idx[l]);
            }
        }
        (bv, bi)
    }

    /// Portable body (auto-vectorised for whatever the wrapper enables).
    #[inline(always)]
    fn body(rows: &[f32], dim: usize, cb: Codebook, best: &mut [u32]) {
        let Codebook {
            tr,
            norms,
            dsub,
            ksub,
        } = cb;
        let m = dim / dsub;
        let n = rows.len() / dim;
        for sub in 0..m {
            let tr = &tr[sub * dsub * ksub..(sub + 1) * dsub * ksub];
            let norms = &norms[sub * ksub..(sub + 1) * ksub];
            for r in 0..n {
                let x = &rows[r * dim + sub * dsub..r * dim + (sub + 1) * dsub];
                let mut min = [f32::INFINITY; LANES];
                let mut idx = [0u32; LANES];
                let mut j = 0;
                while j + LANES <= ksub {
                    let mut acc = [0f32; LANES];
                    acc.copy_from_slice(&norms[j..j + LANES]);
                    for (t, &xt) in x.iter().enumerate() {
                        let xt = -2.0 * xt;
                        let c = &tr[t * ksub + j..t * ksub + j + LANES];
                        acc.iter_mut().zip(c).for_each(|(a, c)| *a += xt * c);
                    }
                    for l in 0..LANES {
                        if acc[l] < min[l] {
                            min[l] = acc[l];
                            idx[l] = (j + l) as u32;
                        }
                    }
                    j += LANES;
                }
                let (mut bv, mut bi) = reduce(&min, &idx);
                for jj in j..ksub {
                    let d = x
                        .iter()
                        .enumerate()
                        .fold(norms[jj], |a, (t, &xt)| a + -2.0 * xt * tr[t * ksub + jj]);
                    if d < bv {
                        (bv, bi) = (d, jj as u32);
                    }
                }
                best[r * m + sub] = bi;
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    fn body_avx512(rows: &[f32], dim: usize, cb: Codebook, best: &mut [u32]) {
        use std::arch::x86_64::*;
        let Codebook {
            tr,
            norms,
            dsub,
            ksub,
        } = cb;
        if !ksub.is_multiple_of(LANES) {
            return body(rows, dim, cb, best);
        }
        let m = dim / dsub;
        let n = rows.len() / dim;
        assert!(
            tr.len() >= m * dsub * ksub && norms.len() >= m * ksub && best.len() >= n * m,
            "encode sizes"
        );
        for sub in 0..m {
            let trs = &tr[sub * dsub * ksub..(sub + 1) * dsub * ksub];
            let ns = &norms[sub * ksub..(sub + 1) * ksub];
            for r in 0..n {
                let x = &rows[r * dim + sub * dsub..r * dim + (sub + 1) * dsub];
                let (min, idx) = if ksub.is_multiple_of(8 * LANES) {
                    // SAFETY: as this function (AVX-512F); sizes checked above.
                    unsafe { row_min::<8>(x, trs, ns, ksub) }
                } else {
                    // SAFETY: as above.
                    unsafe { row_min::<1>(x, trs, ns, ksub) }
                };
                // The smallest lane value, then the smallest index among the lanes holding
                // it (each lane kept its first minimum): the first position of the minimum,
                // as `reduce` finds it, without leaving the registers. Lanes that never took
                // a value (all NaN) hold infinity and index 0.
                let mv = _mm512_reduce_min_ps(min);
                let at = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(min, _mm512_set1_ps(mv));
                best[r * m + sub] = _mm512_mask_reduce_min_epu32(at, idx);
            }
        }
    }

    /// One row's sub-vector `x` against one sub-codebook: per-lane minima and their indices.
    /// `G` blocks of 16 are summed at once (`ksub` a multiple of `G · 16`): with `G` = 8, eight
    /// independent multiply-add chains in registers hide the FMA latency.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    #[inline]
    unsafe fn row_min<const G: usize>(
        x: &[f32],
        trs: &[f32],
        ns: &[f32],
        ksub: usize,
    ) -> (std::arch::x86_64::__m512, std::arch::x86_64::__m512i) {
        use std::arch::x86_64::*;
        debug_assert!(ksub.is_multiple_of(G * LANES) && trs.len() >= x.len() * ksub);
        let lane_ids = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let mut min = _mm512_set1_ps(f32::INFINITY);
        let mut idx = _mm512_setzero_si512();
        for jg in (0..ksub).step_by(G * LANES) {
            let mut acc = [_mm512_setzero_ps(); G];
            for (g, a) in acc.iter_mut().enumerate() {
                // SAFETY: `jg + g·16 + 16 <= ksub = ns.len()`.
                *a = unsafe { _mm512_loadu_ps(ns.as_ptr().add(jg + g * LANES)) };
            }
            for (t, &xt) in x.iter().enumerate() {
                let xv = _mm512_set1_ps(-2.0 * xt);
                for (g, a) in acc.iter_mut().enumerate() {
                    // SAFETY: `t · ksub + jg + g·16 + 16 <= dsub · ksub <= trs.len()`.
                    let c = unsafe { _mm512_loadu_ps(trs.as_ptr().add(t * ksub + jg + g * LANES)) };
                    *a = _mm512_fmadd_ps(xv, c, *a);
                }
            }
            // In index order, so a strict compare keeps the first of equal values.
            for (g, &a) in acc.iter().enumerate() {
                let less = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, min);
                min = _mm512_mask_mov_ps(min, less, a);
                let ids = _mm512_add_epi32(lane_ids, _mm512_set1_epi32((jg + g * LANES) as i32));
                idx = _mm512_mask_mov_epi32(idx, less, ids);
            }
        }
        (min, idx)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn body_avx2(rows: &[f32], dim: usize, cb: Codebook, best: &mut [u32]) {
        body(rows, dim, cb, best)
    }

    /// `best[r · m + sub]` = the first `j` minimising `norms[sub][j] − 2⟨rows[r][sub], c_j⟩`,
    /// with `tr` the transposed codebook (`m × dsub × ksub`).
    pub fn block(level: Level, rows: &[f32], dim: usize, cb: Codebook, best: &mut [u32]) {
        match level {
            // SAFETY: the level comes from `simd::level()`: the CPU has these features.
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 | Level::Avx512Vbmi => unsafe { body_avx512(rows, dim, cb, best) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { body_avx2(rows, dim, cb, best) },
            _ => body(rows, dim, cb, best),
        }
    }
}

/// One query's lookup tables from the transposed codebook, compiled once per instruction set
/// (the same additions in the same order at every level: bit-exact across levels).
mod tables {
    use crate::simd::Level;

    /// `out[sub][j] = Σ_t (factor · q[sub·dsub + t]) · transposed[sub][t][j]`.
    #[inline(always)]
    fn body(q: &[f32], transposed: &[f32], dsub: usize, ksub: usize, factor: f32, out: &mut [f32]) {
        const W: usize = 16;
        for (sub, row) in out.chunks_exact_mut(ksub).enumerate() {
            let tr = &transposed[sub * dsub * ksub..(sub + 1) * dsub * ksub];
            let xs = &q[sub * dsub..(sub + 1) * dsub];
            // Blocks of W entries summed in registers over t (loads, no stores, per step);
            // each entry still sums t = 0, 1, … in order, so every level gives the same bits.
            let mut j = 0;
            while j + W <= ksub {
                let mut acc = [0f32; W];
                for (t, &x) in xs.iter().enumerate() {
                    let x = factor * x;
                    let ct = &tr[t * ksub + j..t * ksub + j + W];
                    acc.iter_mut().zip(ct).for_each(|(o, c)| *o += x * c);
                }
                row[j..j + W].copy_from_slice(&acc);
                j += W;
            }
            for (jj, o) in row.iter_mut().enumerate().skip(j) {
                *o = xs
                    .iter()
                    .enumerate()
                    .fold(0.0, |a, (t, &x)| a + factor * x * tr[t * ksub + jj]);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    fn body_avx512(q: &[f32], tr: &[f32], dsub: usize, ksub: usize, f: f32, out: &mut [f32]) {
        use std::arch::x86_64::*;
        if ksub != 16 {
            return body(q, tr, dsub, ksub, f, out);
        }
        // 4-bit codebooks: one sub-quantizer's 16 entries are one register, summed in it.
        let m = out.len() / 16;
        assert!(
            q.len() >= m * dsub && tr.len() >= m * dsub * 16,
            "table sizes"
        );
        for sub in 0..m {
            let mut acc = _mm512_setzero_ps();
            for t in 0..dsub {
                let at = (sub * dsub + t) * 16;
                // SAFETY: `at + 16 <= m · dsub · 16 <= tr.len()` (asserted above).
                let c = unsafe { _mm512_loadu_ps(tr.as_ptr().add(at)) };
                // Multiply, then add (not fused): the same rounding as the portable path.
                let x = _mm512_set1_ps(f * q[sub * dsub + t]);
                acc = _mm512_add_ps(acc, _mm512_mul_ps(x, c));
            }
            // SAFETY: `sub · 16 + 16 <= out.len()`.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(sub * 16), acc) };
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn body_avx2(q: &[f32], tr: &[f32], dsub: usize, ksub: usize, f: f32, out: &mut [f32]) {
        body(q, tr, dsub, ksub, f, out)
    }

    /// The tables of one query (`out`: `M × ksub`) at a SIMD level the CPU has.
    pub fn one_query(
        level: Level,
        q: &[f32],
        transposed: &[f32],
        dsub: usize,
        ksub: usize,
        factor: f32,
        out: &mut [f32],
    ) {
        match level {
            // SAFETY: the level comes from `simd::level()`: the CPU has these features.
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 | Level::Avx512Vbmi => unsafe {
                body_avx512(q, transposed, dsub, ksub, factor, out)
            },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { body_avx2(q, transposed, dsub, ksub, factor, out) },
            _ => body(q, transposed, dsub, ksub, factor, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;
    use proptest::prelude::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn data(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n * dim)
            .map(|i| rng.random_range(-1.0f32..1.0) + (i % dim) as f32 * 0.05)
            .collect()
    }

    fn mse(pq: &ProductQuantizer, x: &[f32]) -> f64 {
        let n = x.len() / pq.dim();
        let mut codes = vec![0u8; n * pq.code_size()];
        pq.encode(x, &mut codes);
        let mut y = vec![0f32; x.len()];
        pq.decode(&codes, &mut y);
        x.iter()
            .zip(&y)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            / n as f64
    }

    #[test]
    fn reconstruction_error_falls_as_m_grows() {
        let dim = 16;
        let x = data(2000, dim, 3);
        let errs: Vec<f64> = [1, 2, 4, 8, 16]
            .iter()
            .map(|&m| {
                mse(
                    &ProductQuantizer::train(&x, dim, m, 8, 5, &NoProgress).unwrap(),
                    &x,
                )
            })
            .collect();
        for w in errs.windows(2) {
            assert!(w[1] < w[0], "error did not fall with M: {errs:?}");
        }
    }

    #[test]
    fn four_bit_codes_reconstruct_and_improve_with_m() {
        let dim = 16;
        let x = data(1500, dim, 5);
        let errs: Vec<f64> = [2, 4, 8, 16]
            .iter()
            .map(|&m| {
                mse(
                    &ProductQuantizer::train(&x, dim, m, 4, 5, &NoProgress).unwrap(),
                    &x,
                )
            })
            .collect();
        for w in errs.windows(2) {
            assert!(w[1] < w[0], "error did not fall with M: {errs:?}");
        }
        let pq = ProductQuantizer::train(&x, dim, 8, 4, 1, &NoProgress).unwrap();
        assert_eq!((pq.ksub(), pq.code_size()), (16, 4));
    }

    /// Every sub-quantizer's code (8-bit, and 4-bit nibbles) is its nearest sub-centroid.
    #[test]
    fn encode_picks_the_nearest_sub_centroid() {
        for (dim, m, nbits) in [(8usize, 4usize, 8u32), (12, 6, 4)] {
            let x = data(600, dim, 9);
            let pq = ProductQuantizer::train(&x, dim, m, nbits, 1, &NoProgress).unwrap();
            let mut codes = vec![0u8; 600 * pq.code_size()];
            pq.encode(&x, &mut codes);
            for (row, code) in x.chunks(dim).zip(codes.chunks(pq.code_size())).take(80) {
                for sub in 0..m {
                    let xs = &row[sub * 2..sub * 2 + 2];
                    let d = |j: usize| crate::linalg::l2_sq(xs, pq.centroid(sub, j));
                    let d_best = (0..pq.ksub()).map(d).fold(f32::INFINITY, f32::min);
                    let d_got = d(pq.code_of(code, sub));
                    assert!(d_got <= d_best + 1e-5, "{nbits} bits, sub {sub}");
                }
            }
        }
    }

    #[test]
    fn nearest_is_the_first_minimum_at_every_level() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for ksub in [16usize, 256, 21] {
            let (m, dsub, n) = (3, 2, 7);
            let dim = m * dsub;
            // Small integers: exact arithmetic, so ties are common and equal at every level.
            let rows: Vec<f32> = (0..n * dim)
                .map(|_| rng.random_range(-2..3) as f32)
                .collect();
            let tr: Vec<f32> = (0..m * dsub * ksub)
                .map(|_| rng.random_range(-2..3) as f32)
                .collect();
            let norms: Vec<f32> = (0..m * ksub)
                .map(|_| rng.random_range(0..4) as f32)
                .collect();
            for level in crate::simd::available() {
                let mut best = vec![0u32; n * m];
                let cb = nearest::Codebook {
                    tr: &tr,
                    norms: &norms,
                    dsub,
                    ksub,
                };
                nearest::block(level, &rows, dim, cb, &mut best);
                for r in 0..n {
                    for sub in 0..m {
                        let d: Vec<f32> = (0..ksub)
                            .map(|j| {
                                let ip: f32 = (0..dsub)
                                    .map(|t| {
                                        rows[r * dim + sub * dsub + t]
                                            * tr[(sub * dsub + t) * ksub + j]
                                    })
                                    .sum();
                                norms[sub * ksub + j] - 2.0 * ip
                            })
                            .collect();
                        let min = d.iter().cloned().fold(f32::INFINITY, f32::min);
                        let first = d.iter().position(|&x| x == min).unwrap();
                        assert_eq!(
                            best[r * m + sub] as usize,
                            first,
                            "{level:?} ksub {ksub} row {r} sub {sub}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn query_tables_are_bit_exact_across_levels() {
        let dim = 16;
        let x = data(300, dim, 5);
        let pq = ProductQuantizer::train(&x, dim, 4, 4, 2, &NoProgress).unwrap();
        let q = data(3, dim, 9);
        let mut want = vec![0f32; 3 * 4 * 16];
        pq.inner_product_tables(&q, &mut want);
        for level in crate::simd::available() {
            for row in 0..3 {
                let mut got = vec![0f32; 4 * 16];
                let query = &q[row * dim..(row + 1) * dim];
                tables::one_query(level, query, &pq.transposed, 4, 16, -2.0, &mut got);
                let want_row = &want[row * 64..(row + 1) * 64];
                for (g, w) in got.iter().zip(want_row) {
                    assert_eq!(g.to_bits(), (-2.0 * w).to_bits(), "{level:?}");
                }
            }
        }
    }

    #[test]
    fn tables_equal_direct_inner_products() {
        let dim = 12;
        let x = data(400, dim, 4);
        let pq = ProductQuantizer::train(&x, dim, 3, 8, 2, &NoProgress).unwrap();
        // Both paths: few queries (transposed codebook) and many (SGEMM).
        let q = data(40, dim, 8);
        let mut t = vec![0f32; 40 * 3 * 256];
        pq.inner_product_tables(&q, &mut t);
        let mut t3 = vec![0f32; 3 * 3 * 256];
        pq.inner_product_tables(&q[..3 * dim], &mut t3);
        for (a, b) in t3.iter().zip(&t) {
            approx::assert_relative_eq!(a, b, epsilon = 1e-5, max_relative = 1e-5);
        }
        for qi in 0..3 {
            for sub in 0..3 {
                for j in [0, 17, 255] {
                    let want = crate::linalg::dot(
                        &q[qi * dim + sub * 4..qi * dim + sub * 4 + 4],
                        pq.centroid(sub, j),
                    );
                    approx::assert_relative_eq!(t[(qi * 3 + sub) * 256 + j], want, epsilon = 1e-5);
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let x = data(300, 10, 1);
        assert!(matches!(
            ProductQuantizer::train(&x, 10, 3, 8, 0, &NoProgress),
            Err(EngineError::PqDoesNotDivide { dim: 10, m: 3 })
        ));
        assert!(matches!(
            ProductQuantizer::train(&x[..100 * 10], 10, 5, 8, 0, &NoProgress),
            Err(EngineError::TooFewTrainingVectors {
                clusters: 256,
                points: 100
            })
        ));
        assert!(ProductQuantizer::validate(10, 0, 8).is_err());
        assert!(
            ProductQuantizer::validate(10, 5, 4).is_err(),
            "odd M with 4 bits"
        );
        assert!(ProductQuantizer::validate(10, 5, 6).is_err());
        assert!(ProductQuantizer::validate(10, 10, 4).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn decode_of_encode_is_a_fixed_point(seed in 0u64..1000) {
            // Decoded vectors lie on the codebook, so re-encoding them gives the same codes.
            let dim = 8;
            let x = data(300, dim, seed);
            let pq = ProductQuantizer::train(&x, dim, 2, 8, seed, &NoProgress).unwrap();
            let mut c1 = vec![0u8; 300 * 2];
            pq.encode(&x, &mut c1);
            let mut y = vec![0f32; x.len()];
            pq.decode(&c1, &mut y);
            let mut c2 = vec![0u8; 300 * 2];
            pq.encode(&y, &mut c2);
            let mut y2 = vec![0f32; x.len()];
            pq.decode(&c2, &mut y2);
            prop_assert_eq!(y, y2);
        }
    }
}
