//! Scalar fast-scan kernel: the reference for the SIMD ones (integer sums, bit-exact).

use super::BLOCK;

/// Quantized sums of the 32 vectors of one block, and the mask of those `<= qthr` (bit `v` for
/// vector `v`).
pub fn block_sums(block: &[u8], table: &[u8], out: &mut [u16; BLOCK], qthr: u16) -> u32 {
    out.fill(0);
    for (codes, t) in block.chunks_exact(16).zip(table.chunks_exact(16)) {
        for j in 0..16 {
            let byte = codes[j];
            out[j] = out[j].wrapping_add(t[(byte & 0x0F) as usize] as u16);
            out[j + 16] = out[j + 16].wrapping_add(t[(byte >> 4) as usize] as u16);
        }
    }
    out.iter()
        .enumerate()
        .fold(0u32, |mask, (v, &s)| mask | u32::from(s <= qthr) << v)
}
