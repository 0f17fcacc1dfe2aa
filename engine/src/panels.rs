//! A matrix packed once in panels of 16 rows for the coarse stage's AVX-512 GEMM.
//!
//! `C = A · Bᵀ` with `B` (the coarse centroids, `n × dim`) fixed for the life of an index:
//! SGEMM libraries re-pack `B` on every call (matrixmultiply did, at 5% of a search), so the
//! CPU backend packs it at `prepare` into panels `[dim][16]` (the last one zero-padded) and
//! multiplies with a kernel of 4 rows of `A` × 2 panels: 8 independent accumulators (enough to
//! hide the FMA latency on two FMA ports), 2 panel loads and 4 broadcasts per 8 FMAs. Panels
//! are the outer loop, so a panel pair (2 × 16 × dim floats, 48 KiB at dim 384) stays in L1/L2
//! while every row of `A` streams past it.

/// `B` packed in panels of 16 rows, transposed: panel `p` holds `B[16p..16p+16]` as `[dim][16]`.
#[derive(Debug, Clone)]
pub struct PackedPanels {
    dim: usize,
    n: usize,
    data: Vec<f32>,
}

/// Rows per panel.
pub const PANEL: usize = 16;

impl PackedPanels {
    /// Packs `b` (`n × dim`, row-major).
    pub fn pack(b: &[f32], n: usize, dim: usize) -> PackedPanels {
        let panels = n.div_ceil(PANEL);
        let mut data = vec![0f32; panels * dim * PANEL];
        for (j, row) in b.chunks_exact(dim).take(n).enumerate() {
            let (p, lane) = (j / PANEL, j % PANEL);
            for (d, &v) in row.iter().enumerate() {
                data[(p * dim + d) * PANEL + lane] = v;
            }
        }
        PackedPanels { dim, n, data }
    }

    /// Rows of `B`.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// `c[i][j] = <a_i, b_j>` for the `rows` rows of `a` (`rows × dim`); `c` is `rows × n`.
    /// Returns false (and leaves `c`) when the CPU lacks AVX-512: the caller falls back.
    pub fn mul(&self, a: &[f32], rows: usize, c: &mut [f32]) -> bool {
        assert!(a.len() >= rows * self.dim, "panels: A too short");
        assert!(c.len() >= rows * self.n, "panels: C too short");
        #[cfg(target_arch = "x86_64")]
        if crate::simd::level() >= crate::simd::Level::Avx512 {
            // SAFETY: the level check guarantees AVX-512F; the asserts bound every access.
            unsafe { avx512::mul(self, a, rows, c) };
            return true;
        }
        let _ = (a, rows, c);
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{PackedPanels, PANEL};

    /// Stores 16 lanes into `c[..n]` (fewer at the last panel).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn store(v: __m512, c: &mut [f32], col: usize, n: usize) {
        let valid = (n - col).min(PANEL);
        let mask: __mmask16 = if valid == PANEL {
            0xFFFF
        } else {
            (1u16 << valid) - 1
        };
        // SAFETY: the mask limits the store to columns col..col+valid < n, inside `c`.
        unsafe { _mm512_mask_storeu_ps(c.as_mut_ptr().add(col), mask, v) };
    }

    /// One row (a single query): 8 panels at a time, one accumulator each, so the 8 FMA
    /// chains are independent. # Safety: AVX-512F; `a` holds `dim`, `c` `n` floats.
    #[target_feature(enable = "avx512f")]
    unsafe fn mul_row(p: &PackedPanels, a: &[f32], c: &mut [f32]) {
        let (dim, n) = (p.dim, p.n);
        let panels = n.div_ceil(PANEL);
        let pd = p.data.as_ptr();
        let mut p0 = 0;
        while p0 < panels {
            let count = (panels - p0).min(8);
            let mut acc = [_mm512_setzero_ps(); 8];
            for (d, &ad) in a.iter().enumerate().take(dim) {
                let x = _mm512_set1_ps(ad);
                for (k, acc) in acc.iter_mut().enumerate().take(count) {
                    // SAFETY: panel p0 + k < panels and d < dim: inside `data`.
                    let b = unsafe { _mm512_loadu_ps(pd.add(((p0 + k) * dim + d) * PANEL)) };
                    *acc = _mm512_fmadd_ps(x, b, *acc);
                }
            }
            for (k, v) in acc.iter().enumerate().take(count) {
                store(*v, c, (p0 + k) * PANEL, n);
            }
            p0 += count;
        }
    }

    /// # Safety: AVX-512F; `a` holds `rows × dim` and `c` `rows × n` floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn mul(p: &PackedPanels, a: &[f32], rows: usize, c: &mut [f32]) {
        if rows == 1 {
            // SAFETY: as for this function.
            unsafe { mul_row(p, a, c) };
            return;
        }
        let (dim, n) = (p.dim, p.n);
        let panels = n.div_ceil(PANEL);
        let pd = p.data.as_ptr();
        let mut pp = 0;
        while pp < panels {
            let two = pp + 1 < panels;
            // SAFETY: panel pp (and pp + 1 when `two`) lie inside `data`.
            let (b0, b1) = unsafe {
                (
                    pd.add(pp * dim * PANEL),
                    pd.add((pp + usize::from(two)) * dim * PANEL),
                )
            };
            let mut r = 0;
            while r < rows {
                let nr = (rows - r).min(4);
                let mut acc = [_mm512_setzero_ps(); 8];
                // Rows past `rows` repeat the last one (results discarded).
                let row = |i: usize| &a[(r + i.min(nr - 1)) * dim..(r + i.min(nr - 1) + 1) * dim];
                let (a0, a1, a2, a3) = (row(0), row(1), row(2), row(3));
                for d in 0..dim {
                    // SAFETY: d < dim: inside both panels.
                    let (c0, c1) = unsafe {
                        (
                            _mm512_loadu_ps(b0.add(d * PANEL)),
                            _mm512_loadu_ps(b1.add(d * PANEL)),
                        )
                    };
                    let (x0, x1, x2, x3) = (
                        _mm512_set1_ps(a0[d]),
                        _mm512_set1_ps(a1[d]),
                        _mm512_set1_ps(a2[d]),
                        _mm512_set1_ps(a3[d]),
                    );
                    acc[0] = _mm512_fmadd_ps(x0, c0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(x0, c1, acc[1]);
                    acc[2] = _mm512_fmadd_ps(x1, c0, acc[2]);
                    acc[3] = _mm512_fmadd_ps(x1, c1, acc[3]);
                    acc[4] = _mm512_fmadd_ps(x2, c0, acc[4]);
                    acc[5] = _mm512_fmadd_ps(x2, c1, acc[5]);
                    acc[6] = _mm512_fmadd_ps(x3, c0, acc[6]);
                    acc[7] = _mm512_fmadd_ps(x3, c1, acc[7]);
                }
                for i in 0..nr {
                    let out = &mut c[(r + i) * n..(r + i + 1) * n];
                    store(acc[2 * i], out, pp * PANEL, n);
                    if two {
                        store(acc[2 * i + 1], out, (pp + 1) * PANEL, n);
                    }
                }
                r += nr;
            }
            pp += 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::ClusteredGaussian;

    /// Against plain dot products, for shapes with partial panels and row remainders.
    #[test]
    fn packed_product_equals_dot_products() {
        for (rows, n, dim) in [
            (1, 1, 1),
            (3, 17, 5),
            (9, 33, 24),
            (4, 64, 384),
            (7, 100, 31),
        ] {
            let a = ClusteredGaussian::new(dim, 3, 0.5, 1).rows(0, rows);
            let b = ClusteredGaussian::new(dim, 3, 0.5, 2).rows(0, n);
            let p = PackedPanels::pack(&b, n, dim);
            let mut c = vec![f32::NAN; rows * n];
            if !p.mul(&a, rows, &mut c) {
                eprintln!("skipped: no AVX-512 on this CPU");
                return;
            }
            for i in 0..rows {
                for j in 0..n {
                    let want: f32 = (0..dim).map(|d| a[i * dim + d] * b[j * dim + d]).sum();
                    let got = c[i * n + j];
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{rows}x{n}x{dim} [{i}][{j}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}
