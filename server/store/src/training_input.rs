//! A training's input points, read from its (immutable) input segments block by block, so a
//! training holds a sample and one block of points beside the index it builds, never a copy
//! of every vector. Every pass visits the points in the same order (segment by segment, then
//! as each segment stores them), so positions found in one pass name the same points in the
//! next.

use std::sync::Arc;

use quiver_engine::backend::Backend;

use crate::error::Result;
use crate::segment::{Segment, SegmentIndex};

/// Rows per block handed to a pass.
pub const BLOCK_ROWS: usize = 65_536;

/// Calls `f` with the live points of `segments` in blocks of at most [`BLOCK_ROWS`] rows:
/// their ids, vectors (`ids.len() × dim`; the stored ones, or PQ reconstructions in a
/// codes-only segment) and payloads (empty: none). Stops at `f`'s first error.
pub fn for_each_block<B: Backend>(
    segments: &[Arc<Segment<B>>],
    dim: usize,
    mut f: impl FnMut(&[u64], &[f32], &[Vec<u8>]) -> Result<()>,
) -> Result<()> {
    let mut block = Block::new(dim);
    let mut failed: Option<crate::StoreError> = None;
    let mut push = |ids: &[u64], vectors: &[f32], payloads: &mut dyn Iterator<Item = &[u8]>| {
        if failed.is_some() {
            return;
        }
        block.ids.extend_from_slice(ids);
        block.vectors.extend_from_slice(vectors);
        block.payloads.extend(payloads.map(<[u8]>::to_vec));
        if block.ids.len() >= BLOCK_ROWS {
            if let Err(e) = block.flush(&mut f) {
                failed = Some(e);
            }
        }
    };
    for s in segments {
        match (&s.index, s.ivf()) {
            (SegmentIndex::Flat(flat), _) => flat.for_each_live_with_payloads(|i, v, p| {
                // A flat run can be long: hand it on in blocks.
                for (r, ids) in i.chunks(BLOCK_ROWS).enumerate() {
                    let at = r * BLOCK_ROWS;
                    push(
                        ids,
                        &v[at * dim..(at + ids.len()) * dim],
                        &mut p[at..at + ids.len()].iter().map(Vec::as_slice),
                    );
                }
            }),
            (_, Some(index)) => index.for_each_live_with_payload(|i, v, p| {
                push(&[i], v, &mut std::iter::once(p));
            }),
            (_, None) => {}
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    block.flush(&mut f)
}

/// The rows gathered for the next call.
struct Block {
    ids: Vec<u64>,
    vectors: Vec<f32>,
    payloads: Vec<Vec<u8>>,
}

impl Block {
    fn new(dim: usize) -> Self {
        Block {
            ids: Vec::with_capacity(BLOCK_ROWS),
            vectors: Vec::with_capacity(BLOCK_ROWS * dim),
            payloads: Vec::with_capacity(BLOCK_ROWS),
        }
    }

    fn flush(
        &mut self,
        f: &mut impl FnMut(&[u64], &[f32], &[Vec<u8>]) -> Result<()>,
    ) -> Result<()> {
        if self.ids.is_empty() {
            return Ok(());
        }
        let payloads: &[Vec<u8>] = if self.payloads.iter().all(Vec::is_empty) {
            &[]
        } else {
            &self.payloads
        };
        let r = f(&self.ids, &self.vectors, payloads);
        self.ids.clear();
        self.vectors.clear();
        self.payloads.clear();
        r
    }
}

/// A training sample: the vectors of `amount` points drawn with `seed` by
/// [`quiver_engine::kmeans::sample_rows`] from the points in id order, in id order, so what a
/// training samples depends on the points alone, not on how the segments lay them out. Two
/// passes over the input: the ids, then the sampled vectors.
pub fn sample_in_id_order<B: Backend>(
    segments: &[Arc<Segment<B>>],
    dim: usize,
    amount: usize,
    seed: u64,
) -> Result<Vec<f32>> {
    let mut ids = Vec::new();
    for_each_block(segments, dim, |i, _, _| {
        ids.extend_from_slice(i);
        Ok(())
    })?;
    let rows = quiver_engine::kmeans::sample_rows(ids.len(), amount, seed);
    let mut by_id: Vec<u32> = (0..ids.len() as u32).collect();
    by_id.sort_unstable_by_key(|&r| ids[r as usize]);
    drop(ids);
    // (position in the visiting order, slot in the sample), by position.
    let mut wanted: Vec<(u32, u32)> = rows
        .iter()
        .enumerate()
        .map(|(slot, &r)| (by_id[r], slot as u32))
        .collect();
    drop(by_id);
    wanted.sort_unstable();
    let mut sample = vec![0f32; rows.len() * dim];
    let (mut at, mut next) = (0usize, 0usize);
    for_each_block(segments, dim, |i, v, _| {
        while let Some(&(pos, slot)) = wanted.get(next) {
            let pos = pos as usize;
            if pos >= at + i.len() {
                break;
            }
            let r = pos - at;
            sample[slot as usize * dim..(slot as usize + 1) * dim]
                .copy_from_slice(&v[r * dim..(r + 1) * dim]);
            next += 1;
        }
        at += i.len();
        Ok(())
    })?;
    Ok(sample)
}
