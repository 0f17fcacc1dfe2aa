//! The coarse centroids packed as int8 panels: a VNNI first pass with a proven error bound,
//! then an exact f32 pass over the centroids that bound cannot rule out.
//!
//! The coarse stage, and the assignment of every written vector to its list, scores each row
//! against every centroid: ≈ 0.8 MFLOP a row at 1,024 centroids × 384 dimensions, the largest
//! single cost of ingest. `vpdpbusd` (AVX-512 VNNI) multiplies 64 byte pairs per instruction,
//! four times the 16 of an f32 FMA, at the same rate. So each vector (row or centroid) is
//! scaled by its own `max |value| / 127` and rounded to int8, and the products are summed in
//! int32 (exact). For a row `x = s·q + e` and a centroid `c = t·r + f` (`|e_i| ≤ s/2`,
//! `|f_i| ≤ t/2`):
//!
//! ```text
//! |x·c − s·t·(q·r)| ≤ s·t/2 · (Σ|q_i| + Σ|r_i| + d/2)
//! ```
//!
//! Each centroid's score then lies in an interval around its int8 estimate. The p-th smallest
//! upper end bounds the p-th best exact score, so a centroid whose lower end lies above it
//! cannot be among the p best; the others (usually a few dozen of a thousand) are rescored
//! exactly in f32 and the p best returned. The answer is that of an exact f32 search, up to
//! the rounding of the f32 scores themselves (as between any two f32 summation orders).

/// Lanes (centroids) per panel: one 512-bit register of int32 sums.
const PANEL: usize = 16;

/// Above this many dimensions the int32 sums could overflow (255 · 127 · d < 2³¹).
pub const MAX_DIM: usize = 65_536;

/// How a row scores against a centroid (lower is better).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// `‖x‖² + ‖c‖² − 2⟨x, c⟩`, clamped at 0.
    L2,
    /// `−⟨x, c⟩`.
    InnerProduct,
}

/// Centroids quantized to int8, packed for the VNNI kernel.
#[derive(Debug, Clone)]
pub struct I8Panels {
    dim: usize,
    /// Groups of four dimensions (the dimension padded to a multiple of 4, over 4).
    groups: usize,
    n: usize,
    /// Panel `p`, group `g`: 16 centroids × 4 bytes, `[p][g][lane][4]`.
    data: Vec<i8>,
    /// Per centroid: its scale `t`.
    scale: Vec<f32>,
    /// Per centroid: `Σ r_i`, to remove the +128 offset the rows carry.
    sum: Vec<i32>,
    /// Per centroid: `Σ |r_i| + d/2` (d padded), the centroid's part of the bound.
    bound_part: Vec<f32>,
}

/// Quantizes one vector: `out[i] = round(x[i] / s)` with `s = max |x| / 127` (0 for a zero
/// vector). Returns `s`, `Σ out` and `Σ |out|`.
fn quantize(x: &[f32], out: &mut [i8]) -> (f32, i32, i32) {
    let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if max == 0.0 || !max.is_finite() {
        out.fill(0);
        return (0.0, 0, 0);
    }
    let s = max / 127.0;
    let inv = 127.0 / max;
    let (mut sum, mut l1) = (0i32, 0i32);
    for (o, &v) in out.iter_mut().zip(x) {
        let q = (v * inv).round().clamp(-127.0, 127.0) as i32;
        *o = q as i8;
        sum += q;
        l1 += q.abs();
    }
    (s, sum, l1)
}

/// True when this CPU runs the int8 kernel.
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::simd::level() >= crate::simd::Level::Avx512Vbmi
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl I8Panels {
    /// Packs `b` (`n × dim`, row-major); `None` when this CPU lacks AVX-512 VNNI or `dim` is
    /// above [`MAX_DIM`] (the caller keeps its f32 path).
    pub fn pack(b: &[f32], n: usize, dim: usize) -> Option<I8Panels> {
        if !supported() || dim == 0 || dim > MAX_DIM || n == 0 {
            return None;
        }
        let groups = dim.div_ceil(4);
        let panels = n.div_ceil(PANEL);
        let mut data = vec![0i8; panels * groups * PANEL * 4];
        let (mut scale, mut sum, mut bound_part) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let mut q = vec![0i8; dim];
        for (j, row) in b.chunks_exact(dim).take(n).enumerate() {
            let (s, total, l1) = quantize(row, &mut q);
            scale.push(s);
            sum.push(total);
            bound_part.push(l1 as f32 + (groups * 4) as f32 / 2.0);
            let (p, lane) = (j / PANEL, j % PANEL);
            for (i, &v) in q.iter().enumerate() {
                let (g, k) = (i / 4, i % 4);
                data[((p * groups + g) * PANEL + lane) * 4 + k] = v;
            }
        }
        Some(I8Panels {
            dim,
            groups,
            n,
            data,
            scale,
            sum,
            bound_part,
        })
    }

    /// Rows of `B`.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// For each of the `rows` rows of `a` (`rows × dim`), its `p` best centroids by `rule`,
    /// best first (ties by index), into `lists` and `scores` (`rows × p` each; `p ≤ n`).
    /// `centroids` are the f32 centroids this was packed from, `norms` their squared norms.
    #[allow(clippy::too_many_arguments)]
    pub fn nearest(
        &self,
        a: &[f32],
        rows: usize,
        p: usize,
        rule: Rule,
        centroids: &[f32],
        norms: &[f32],
        lists: &mut [u32],
        scores: &mut [f32],
    ) {
        let (dim, n) = (self.dim, self.n);
        assert!(p >= 1 && p <= n, "i8panels: p out of range");
        assert!(a.len() >= rows * dim, "i8panels: A too short");
        assert!(centroids.len() >= n * dim && norms.len() >= n);
        assert!(lists.len() >= rows * p && scores.len() >= rows * p);
        // Rows at a time: their int32 sums (rows × n) stay within 4 MiB.
        let step = ((1 << 20) / n).clamp(1, 256);
        for r0 in (0..rows).step_by(step) {
            let nr = (rows - r0).min(step);
            let (l, s) = (&mut lists[r0 * p..], &mut scores[r0 * p..]);
            let block = &a[r0 * dim..(r0 + nr) * dim];
            // SAFETY: `pack` returned Some only when this CPU has AVX-512 VNNI; the asserts
            // above bound every buffer as `avx512::nearest` requires.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                avx512::nearest(self, block, nr, p, rule, centroids, norms, l, s)
            };
        }
    }
}

impl I8Panels {
    /// Each centroid's score interval `[lo, hi]` for one row, from its int8 dot products.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn intervals(
        &self,
        rule: Rule,
        s: f32,
        k: f32,
        l1: f32,
        x_norm: f32,
        dots: &[i32],
        norms: &[f32],
        lo: &mut [f32],
        hi: &mut [f32],
    ) {
        let n = self.n;
        let (scale, sum, part) = (&self.scale[..n], &self.sum[..n], &self.bound_part[..n]);
        let (dots, norms, lo, hi) = (&dots[..n], &norms[..n], &mut lo[..n], &mut hi[..n]);
        for j in 0..n {
            let t = scale[j];
            let ip = s * t * (dots[j] - 128 * sum[j]) as f32;
            let b = k * t * (l1 + part[j]);
            let (est, bound) = match rule {
                Rule::L2 => {
                    let est = x_norm + norms[j] - 2.0 * ip;
                    // The rounding of this sum against the exact pass's.
                    let slop = (x_norm + norms[j].abs() + 2.0 * ip.abs()) * 1e-6;
                    (est, 2.0 * b + slop)
                }
                Rule::InnerProduct => (-ip, b + ip.abs() * 1e-6),
            };
            lo[j] = est - bound;
            hi[j] = est + bound;
        }
    }
}

/// The `p`-th smallest of `values` (`p ≥ 1`; infinity when there are fewer): a sorted
/// buffer of the `p` smallest so far, most values rejected by one comparison.
fn pth_smallest(values: &[f32], p: usize, best: &mut Vec<f32>) -> f32 {
    best.clear();
    for &v in values {
        if best.len() == p {
            if v >= best[p - 1] {
                continue;
            }
            best.pop();
        }
        let at = best.partition_point(|&b| b <= v);
        best.insert(at, v);
    }
    if best.len() == p {
        best[p - 1]
    } else {
        f32::INFINITY
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{pth_smallest, I8Panels, Rule, PANEL};
    use crate::linalg::dot;
    use crate::topk::TopK;

    /// Quantizes a row as [`super::quantize`] does (rounding to nearest even, within the
    /// same half-step bound) and writes `q + 128` as bytes, the padding up to `out.len()` as
    /// 128. Returns the scale and `Σ |q|`.
    #[target_feature(enable = "avx512f,avx512bw")]
    fn quantize_row(x: &[f32], out: &mut [u8]) -> (f32, f32) {
        let n = x.len();
        let mask = |i: usize| -> __mmask16 {
            if n - i >= 16 {
                0xFFFF
            } else {
                (1u16 << (n - i)) - 1
            }
        };
        let mut maxv = _mm512_setzero_ps();
        let mut i = 0;
        while i < n {
            // SAFETY: the mask keeps the load inside `x`.
            let v = unsafe { _mm512_maskz_loadu_ps(mask(i), x.as_ptr().add(i)) };
            maxv = _mm512_max_ps(maxv, _mm512_abs_ps(v));
            i += 16;
        }
        let max = _mm512_reduce_max_ps(maxv);
        out.fill(128);
        if max == 0.0 || !max.is_finite() {
            return (0.0, 0.0);
        }
        let inv = _mm512_set1_ps(127.0 / max);
        let (lo, hi) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
        let offset = _mm512_set1_epi32(128);
        let mut l1 = _mm512_setzero_si512();
        let mut i = 0;
        while i < n {
            let m = mask(i);
            // SAFETY: the mask keeps the load inside `x`; the store writes ≤ 16 bytes at i,
            // inside `out` (which is at least as long as `x`).
            unsafe {
                let v = _mm512_maskz_loadu_ps(m, x.as_ptr().add(i));
                let q = _mm512_min_epi32(
                    _mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, inv)), lo),
                    hi,
                );
                l1 = _mm512_add_epi32(l1, _mm512_abs_epi32(q));
                _mm512_mask_cvtepi32_storeu_epi8(
                    out.as_mut_ptr().add(i) as *mut _,
                    m,
                    _mm512_add_epi32(q, offset),
                );
            }
            i += 16;
        }
        (max / 127.0, _mm512_reduce_add_epi32(l1) as f32)
    }

    /// The body of [`I8Panels::nearest`]. # Safety: AVX-512F/BW/VNNI; buffers as asserted
    /// there.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn nearest(
        p8: &I8Panels,
        a: &[f32],
        rows: usize,
        p: usize,
        rule: Rule,
        centroids: &[f32],
        norms: &[f32],
        lists: &mut [u32],
        scores: &mut [f32],
    ) {
        let (dim, n) = (p8.dim, p8.n);
        let width = p8.groups * 4;
        let mut qa = vec![0u8; rows * width];
        let mut row_scale = vec![0f32; rows];
        let mut row_l1 = vec![0f32; rows];
        for r in 0..rows {
            let (s, l1) = quantize_row(
                &a[r * dim..(r + 1) * dim],
                &mut qa[r * width..(r + 1) * width],
            );
            row_scale[r] = s;
            row_l1[r] = l1;
        }
        let mut dots_out = vec![0i32; rows * n];
        // SAFETY: as for this function.
        unsafe { dots(p8, &qa, rows, &mut dots_out) };
        let mut top = TopK::new(p);
        let (mut lo, mut hi) = (vec![0f32; n], vec![0f32; n]);
        let mut best = Vec::with_capacity(p + 1);
        for r in 0..rows {
            let x = &a[r * dim..(r + 1) * dim];
            let s = row_scale[r];
            let x_norm = match rule {
                Rule::L2 => dot(x, x),
                Rule::InnerProduct => 0.0,
            };
            // Half the product of the scales, widened by 0.1% for the f32 arithmetic here.
            let k = 0.5 * s * (1.0 + 1e-3);
            let dr = &dots_out[r * n..(r + 1) * n];
            p8.intervals(rule, s, k, row_l1[r], x_norm, dr, norms, &mut lo, &mut hi);
            // The p-th smallest upper end: at least p centroids score at most this.
            let limit = if p == 1 {
                hi.iter().copied().fold(f32::INFINITY, f32::min)
            } else {
                pth_smallest(&hi, p, &mut best)
            };
            let lim = _mm512_set1_ps(limit);
            top.clear();
            let mut j0 = 0;
            while j0 < n {
                let m: __mmask16 = if n - j0 >= 16 {
                    0xFFFF
                } else {
                    (1u16 << (n - j0)) - 1
                };
                // SAFETY: the mask keeps the load inside `lo`.
                let v = unsafe { _mm512_maskz_loadu_ps(m, lo.as_ptr().add(j0)) };
                let mut hit = _mm512_mask_cmp_ps_mask(m, v, lim, _CMP_LE_OQ);
                while hit != 0 {
                    let j = j0 + hit.trailing_zeros() as usize;
                    hit &= hit - 1;
                    let c = &centroids[j * dim..(j + 1) * dim];
                    let exact = match rule {
                        Rule::L2 => (x_norm + norms[j] - 2.0 * dot(x, c)).max(0.0),
                        Rule::InnerProduct => -dot(x, c),
                    };
                    top.push(exact, j as u32);
                }
                j0 += 16;
            }
            for (i, e) in top.sorted().iter().enumerate() {
                lists[r * p + i] = e.item;
                scores[r * p + i] = e.score;
            }
        }
    }

    /// `c[i][j] = Σ a[i][t] · data_j[t]` (u8 × i8 in i32) for every row and centroid: tiles
    /// of 4 rows × 4 panels (16 accumulators), 4 panel loads and 4 broadcasts per 16
    /// `vpdpbusd`.
    ///
    /// # Safety
    /// AVX-512F/BW/VNNI; `a` holds `rows × groups × 4` bytes, `c` `rows × n` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn dots(p: &I8Panels, a: &[u8], rows: usize, c: &mut [i32]) {
        let (groups, n) = (p.groups, p.n);
        let width = groups * 4;
        assert!(a.len() >= rows * width && c.len() >= rows * n);
        let panels = n.div_ceil(PANEL);
        let pd = p.data.as_ptr();
        let mut pp = 0;
        while pp < panels {
            let np = (panels - pp).min(4);
            // Panels past the last repeat it (their sums are not stored).
            let b: [*const i8; 4] =
                std::array::from_fn(|k| pd.add((pp + k.min(np - 1)) * groups * PANEL * 4));
            let mut r = 0;
            while r < rows {
                let nr = (rows - r).min(4);
                let ar: [*const u8; 4] =
                    std::array::from_fn(|i| a.as_ptr().add((r + i.min(nr - 1)) * width));
                let mut acc = [[_mm512_setzero_si512(); 4]; 4];
                for g in 0..groups {
                    let bv: [__m512i; 4] = std::array::from_fn(|k| {
                        // SAFETY: panel pp + k < panels and g < groups: inside `data`.
                        unsafe { _mm512_loadu_si512(b[k].add(g * PANEL * 4) as *const _) }
                    });
                    for i in 0..4 {
                        // SAFETY: row r + i < rows and 4g + 4 ≤ width: inside `a`.
                        let word = unsafe { (ar[i].add(g * 4) as *const i32).read_unaligned() };
                        let x = _mm512_set1_epi32(word);
                        for k in 0..4 {
                            acc[i][k] = _mm512_dpbusd_epi32(acc[i][k], x, bv[k]);
                        }
                    }
                }
                for (i, row) in acc.iter().enumerate().take(nr) {
                    for (k, v) in row.iter().enumerate().take(np) {
                        let col = (pp + k) * PANEL;
                        let valid = (n - col).min(PANEL);
                        let mask: __mmask16 = if valid == PANEL {
                            0xFFFF
                        } else {
                            (1u16 << valid) - 1
                        };
                        // SAFETY: the mask keeps the store inside row r + i of `c`.
                        unsafe {
                            _mm512_mask_storeu_epi32(
                                c.as_mut_ptr().add((r + i) * n + col) as *mut _,
                                mask,
                                *v,
                            )
                        };
                    }
                }
                r += nr;
            }
            pp += np;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::{dot, row_norms_sq};
    use crate::synth::ClusteredGaussian;

    /// The exact answer: every centroid scored in f32, the p best, ties by index.
    fn exact(a: &[f32], c: &[f32], dim: usize, p: usize, rule: Rule) -> Vec<Vec<u32>> {
        let norms = row_norms_sq(c, dim);
        a.chunks_exact(dim)
            .map(|x| {
                let xn = dot(x, x);
                let mut s: Vec<(f32, u32)> = c
                    .chunks_exact(dim)
                    .enumerate()
                    .map(|(j, cj)| {
                        let v = match rule {
                            Rule::L2 => (xn + norms[j] - 2.0 * dot(x, cj)).max(0.0),
                            Rule::InnerProduct => -dot(x, cj),
                        };
                        (v, j as u32)
                    })
                    .collect();
                s.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                s.into_iter().take(p).map(|e| e.1).collect()
            })
            .collect()
    }

    fn check(rows: usize, n: usize, dim: usize, p: usize, rule: Rule, spread: f32, seed: u64) {
        let a = ClusteredGaussian::new(dim, 8, spread, seed).rows(0, rows);
        let c = ClusteredGaussian::new(dim, 8, spread, seed).rows(1_000, n);
        let Some(packed) = I8Panels::pack(&c, n, dim) else {
            eprintln!("skipped: no AVX-512 VNNI on this CPU");
            return;
        };
        let norms = row_norms_sq(&c, dim);
        let (mut lists, mut scores) = (vec![0u32; rows * p], vec![0f32; rows * p]);
        packed.nearest(&a, rows, p, rule, &c, &norms, &mut lists, &mut scores);
        let want = exact(&a, &c, dim, p, rule);
        for r in 0..rows {
            assert_eq!(
                &lists[r * p..(r + 1) * p],
                &want[r][..],
                "{rows}x{n}x{dim} p {p} {rule:?}: row {r}"
            );
            assert!(scores[r * p..(r + 1) * p].windows(2).all(|w| w[0] <= w[1]));
        }
    }

    /// Equal to the exact f32 answer for shapes with partial panels, row tiles and
    /// dimensions not a multiple of 4, for both rules and several p.
    #[test]
    fn nearest_equals_the_exact_search() {
        for rule in [Rule::L2, Rule::InnerProduct] {
            for (rows, n, dim, p) in [
                (1, 1, 1, 1),
                (3, 17, 5, 2),
                (9, 33, 24, 1),
                (7, 100, 31, 10),
                (130, 1024, 384, 1),
                (64, 1024, 384, 32),
                (5, 300, 1000, 300),
            ] {
                check(rows, n, dim, p, rule, 0.5, 3);
            }
        }
    }

    /// Tight clusters make many centroids nearly tie: the bound must still admit the best.
    #[test]
    fn near_ties_resolve_exactly() {
        for seed in 0..4 {
            check(200, 512, 64, 4, Rule::L2, 0.01, seed);
            check(200, 512, 64, 4, Rule::InnerProduct, 0.01, seed);
        }
    }

    /// Zero rows and zero centroids (scale 0) and wildly different magnitudes.
    #[test]
    fn zero_and_mixed_magnitude_vectors() {
        let dim = 16;
        let mut c = ClusteredGaussian::new(dim, 4, 0.5, 9).rows(0, 40);
        c[..dim].fill(0.0);
        for v in &mut c[dim * 5..dim * 6] {
            *v *= 1e6;
        }
        for v in &mut c[dim * 7..dim * 8] {
            *v *= 1e-6;
        }
        let mut a = ClusteredGaussian::new(dim, 4, 0.5, 10).rows(0, 6);
        a[..dim].fill(0.0);
        let Some(packed) = I8Panels::pack(&c, 40, dim) else {
            return;
        };
        let norms = row_norms_sq(&c, dim);
        for rule in [Rule::L2, Rule::InnerProduct] {
            let (mut lists, mut scores) = (vec![0u32; 6 * 3], vec![0f32; 6 * 3]);
            packed.nearest(&a, 6, 3, rule, &c, &norms, &mut lists, &mut scores);
            let want = exact(&a, &c, dim, 3, rule);
            for r in 0..6 {
                assert_eq!(&lists[r * 3..(r + 1) * 3], &want[r][..], "{rule:?} row {r}");
            }
        }
    }
}
