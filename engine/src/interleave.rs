//! The GPU backends' layout of 8-bit PQ codes, written when a list is uploaded (the index's own
//! lists stay row-major, one entry's M code bytes after another).
//!
//! Entries go in blocks of [`BLOCK`] (32: one warp); within a block the codes are cut into
//! chunks of [`CHUNK`] (16) bytes, chunk after chunk, and within a chunk the block's entries'
//! 16 bytes follow one another. With `Mp` = M rounded up to a multiple of 16 (the padding
//! bytes are zero and never scored) and `nb` the entries in entry i's block (32, or fewer in a
//! list's last block), entry `i` reads chunk `c` at byte
//! `(i / 32) · 32 · Mp + c · 16 · nb + (i % 32) · 16`. A warp scanning 32 consecutive entries
//! therefore reads 512 contiguous bytes per chunk, one 16-byte load per thread, where the
//! row-major layout has each thread read single bytes M apart (M wavefronts per chunk). A
//! list of n entries takes n · Mp bytes: the last block is as long as its entries.
//!
//! 4-bit fast-scan blocks (`crate::fastscan`: 32 entries, sub-quantizer s's 16 bytes holding
//! entry j's code in byte j's low nibble and entry j + 16's in its high one) are regrouped
//! within each block by quads of sub-quantizers ([`quad_m`]: M rounded up to a multiple of 4,
//! the padding bytes zero): quad `Q`'s 64 bytes are four 16-byte chunks, chunk `g` holding, for
//! each of the quad's four sub-quantizers in turn, its bytes `4g … 4g + 3` (byte j of
//! sub-quantizer s lands at [`quad_byte`]`(s, j)`). A GPU thread scoring entries
//! `4u … 4u + 3` of a block (u = 0 … 7; chunk `u % 4`, nibble `u / 4`) reads its codes for four
//! sub-quantizers in one 16-byte load, where the fast-scan layout has it read M single bytes.

use crate::list::CodeLayout;
use crate::IvfPqIndex;

/// Entries per block (one warp).
pub const BLOCK: usize = 32;
/// Code bytes an entry reads per load.
pub const CHUNK: usize = 16;

/// M rounded up to a whole number of chunks.
pub fn padded_m(m: usize) -> usize {
    m.next_multiple_of(CHUNK)
}

/// Bytes `n` entries of M-byte codes take interleaved.
pub fn interleaved_bytes(n: usize, m: usize) -> usize {
    n * padded_m(m)
}

/// Entries in the block holding entry `i` of a list of `n`.
fn block_entries(i: usize, n: usize) -> usize {
    (n - i / BLOCK * BLOCK).min(BLOCK)
}

/// Byte of chunk `c` of entry `i` (of a list of `n`) in the interleaved run.
fn chunk_at(i: usize, n: usize, mp: usize, c: usize) -> usize {
    (i / BLOCK) * BLOCK * mp + c * CHUNK * block_entries(i, n) + (i % BLOCK) * CHUNK
}

/// Appends `codes` (row-major, `m` bytes per entry, a whole number of entries) interleaved to
/// `out`: [`interleaved_bytes`]`(codes.len() / m, m)` bytes.
pub fn interleave(codes: &[u8], m: usize, out: &mut Vec<u8>) {
    if m == 0 {
        return;
    }
    let n = codes.len() / m;
    let mp = padded_m(m);
    let start = out.len();
    out.resize(start + interleaved_bytes(n, m), 0);
    let dst = &mut out[start..];
    for (i, code) in codes.chunks_exact(m).enumerate() {
        for (c, part) in code.chunks(CHUNK).enumerate() {
            let at = chunk_at(i, n, mp, c);
            dst[at..at + part.len()].copy_from_slice(part);
        }
    }
}

/// 4-bit codes: M rounded up to whole quads of sub-quantizers.
pub fn quad_m(m: usize) -> usize {
    m.next_multiple_of(4)
}

/// 4-bit codes: bytes of one block of 32 entries in the GPU layout.
pub fn quad_block_bytes(m: usize) -> usize {
    quad_m(m) * 16
}

/// 4-bit codes: where byte `j` (0 … 15) of sub-quantizer `s`'s fast-scan row lands in a block
/// of the GPU layout.
pub fn quad_byte(s: usize, j: usize) -> usize {
    (s / 4) * 64 + (j / 4) * 16 + (s % 4) * 4 + j % 4
}

/// Appends whole fast-scan blocks of `m` sub-quantizers (`blocks`: a multiple of
/// `fastscan::block_bytes(m)` bytes) regrouped in quads to `out`: [`quad_block_bytes`]`(m)`
/// bytes a block.
pub fn append_quad_blocks(blocks: &[u8], m: usize, out: &mut Vec<u8>) {
    if m == 0 {
        return;
    }
    let (from, to) = (crate::fastscan::block_bytes(m), quad_block_bytes(m));
    for block in blocks.chunks_exact(from) {
        let start = out.len();
        out.resize(start + to, 0);
        let dst = &mut out[start..];
        for (s, row) in block.chunks_exact(16).enumerate() {
            for (j, &b) in row.iter().enumerate() {
                dst[quad_byte(s, j)] = b;
            }
        }
    }
}

/// Bytes list `l`'s codes take on a GPU: interleaved 8-bit codes, or 4-bit fast-scan blocks
/// regrouped in quads.
pub fn device_code_bytes(index: &IvfPqIndex, l: usize) -> usize {
    let list = &index.lists()[l];
    match index.layout() {
        CodeLayout::Flat => interleaved_bytes(list.len(), index.pq().code_size()),
        CodeLayout::Packed4x32 => list.len().div_ceil(BLOCK) * quad_block_bytes(index.pq().m()),
    }
}

/// Appends list `l`'s codes in their GPU layout to `out` ([`device_code_bytes`] bytes).
pub fn append_device_codes(index: &IvfPqIndex, l: usize, out: &mut Vec<u8>) {
    let codes = index.lists()[l].codes.as_slice();
    match index.layout() {
        CodeLayout::Flat => interleave(codes, index.pq().code_size(), out),
        CodeLayout::Packed4x32 => append_quad_blocks(codes, index.pq().m(), out),
    }
}

/// Entry `i`'s code read back from an interleaved run of `n` entries (for tests and checks).
pub fn code_at(interleaved: &[u8], m: usize, n: usize, i: usize) -> Vec<u8> {
    let mp = padded_m(m);
    (0..m)
        .map(|s| interleaved[chunk_at(i, n, mp, s / CHUNK) + s % CHUNK])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_reads_back_its_code_and_padding_is_zero() {
        for (n, m) in [
            (0, 8),
            (1, 8),
            (31, 16),
            (32, 48),
            (33, 48),
            (100, 20),
            (70, 96),
        ] {
            let codes: Vec<u8> = (0..n * m).map(|i| (i * 7 + 3) as u8).collect();
            let mut out = vec![9u8; 5];
            interleave(&codes, m, &mut out);
            assert_eq!(out.len(), 5 + interleaved_bytes(n, m), "n {n} m {m}");
            assert_eq!(&out[..5], &[9; 5], "what was there stays");
            let run = &out[5..];
            for i in 0..n {
                assert_eq!(
                    code_at(run, m, n, i),
                    &codes[i * m..(i + 1) * m],
                    "n {n} m {m} i {i}"
                );
            }
            let written: usize = codes.iter().filter(|&&b| b != 0).count();
            let nonzero = run.iter().filter(|&&b| b != 0).count();
            assert_eq!(nonzero, written, "padding is zero (n {n} m {m})");
        }
    }

    #[test]
    fn a_short_last_block_is_as_long_as_its_entries() {
        // 40 entries of M = 20 (Mp 32): a full block, then 8 entries whose chunks are 8 × 16
        // bytes apart.
        let (n, m) = (40, 20);
        let codes: Vec<u8> = (0..n * m).map(|i| (i % 253 + 1) as u8).collect();
        let mut out = Vec::new();
        interleave(&codes, m, &mut out);
        assert_eq!(out.len(), n * 32);
        let second = 32 * 32;
        for lane in 0..8 {
            let i = 32 + lane;
            assert_eq!(
                &out[second + lane * 16..second + lane * 16 + 16],
                &codes[i * m..i * m + 16]
            );
            let c1 = second + 8 * 16 + lane * 16;
            assert_eq!(&out[c1..c1 + 4], &codes[i * m + 16..i * m + 20]);
        }
    }

    #[test]
    fn quad_blocks_hold_every_fast_scan_byte_once_and_pad_with_zero() {
        for m in [1, 4, 6, 48, 97] {
            let fs = crate::fastscan::block_bytes(m);
            let blocks: Vec<u8> = (0..2 * fs).map(|i| (i % 255 + 1) as u8).collect();
            let mut out = vec![7u8; 3];
            append_quad_blocks(&blocks, m, &mut out);
            assert_eq!(out.len(), 3 + 2 * quad_block_bytes(m), "m {m}");
            let run = &out[3..];
            for b in 0..2 {
                let (src, dst) = (&blocks[b * fs..], &run[b * quad_block_bytes(m)..]);
                for s in 0..m {
                    for j in 0..16 {
                        assert_eq!(dst[quad_byte(s, j)], src[s * 16 + j], "m {m} s {s} j {j}");
                    }
                }
            }
            let padding = run.iter().filter(|&&b| b == 0).count();
            assert_eq!(padding, 2 * (quad_m(m) - m) * 16, "m {m}");
        }
    }

    #[test]
    fn a_quad_reads_its_four_sub_quantizers_in_one_chunk() {
        // Entries 4u … 4u + 3 (u = 5: chunk 1, high nibbles) of sub-quantizers 8 … 11 are the
        // 16 bytes at quad 2 · 64 + chunk 1 · 16.
        let m = 12;
        let mut block = Vec::new();
        for i in 0..32 {
            let code: Vec<u8> = (0..m).map(|s| ((i + 3 * s) % 16) as u8).collect();
            crate::fastscan::set_codes(&mut block, i, &code);
        }
        let mut out = Vec::new();
        append_quad_blocks(&block, m, &mut out);
        let chunk = &out[2 * 64 + 16..2 * 64 + 32];
        for (k, &b) in chunk.iter().enumerate() {
            let (s, r) = (8 + k / 4, k % 4);
            assert_eq!(
                usize::from(b >> 4),
                (20 + r + 3 * s) % 16,
                "s {s} entry {}",
                20 + r
            );
        }
    }

    #[test]
    fn a_warp_reads_one_contiguous_run_per_chunk() {
        let m = 48;
        let mp = padded_m(m);
        // Entries 32..64 (block 1), chunk 2: bytes 32·48 + 2·512 + lane·16 for lanes 0..32.
        let first = BLOCK * mp + 2 * BLOCK * CHUNK;
        let codes: Vec<u8> = (0..64 * m).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        interleave(&codes, m, &mut out);
        for lane in 0..BLOCK {
            let i = BLOCK + lane;
            assert_eq!(
                &out[first + lane * CHUNK..first + (lane + 1) * CHUNK],
                &codes[i * m + 32..i * m + 48]
            );
        }
    }
}
