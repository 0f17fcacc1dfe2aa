//! A device-resident batch's working memory, kept between batches (item 6 of #32).
//!
//! Each buffer a batch writes (its queries, the coarse stage's entries, the probes, the work
//! items, score rows, candidates, the selection rounds' ping-pong, the result) has a role
//! here, and a role's device buffer is reused by the next batch while it is long enough; a
//! longer one replaces it when not. A batch of a shape seen before therefore allocates
//! nothing, and creates none of the two events cudarc gives every new allocation. Views of
//! exactly the words asked for go to the kernels, so a kernel argument is never longer than
//! what the stage writes.
//!
//! A batch takes a [`Scratch`] of its lane ([`crate::transfer::Transfers::take_scratch`]) and
//! gives it back once its results have arrived: every kernel that used it has finished, and
//! the next batch on the lane's stream runs after them anyway. Two batches never share one.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut};

use crate::backend::{driver, CudaError};

/// One role's device buffer (none until first used).
#[derive(Default)]
pub(crate) struct Buffer(Option<CudaSlice<u32>>);

impl Buffer {
    /// Its first `words` words (at least one), for writing: a new buffer of that length
    /// (allocated on `stream`, the batch's) when this one is shorter.
    pub(crate) fn words(
        &mut self,
        stream: &Arc<CudaStream>,
        words: usize,
    ) -> Result<CudaViewMut<'_, u32>, CudaError> {
        let words = words.max(1);
        if self.0.as_ref().is_none_or(|b| b.len() < words) {
            // Dropped (freed on its own stream, after the work that used it) before the
            // new one is made, so the pool can hand its memory back at once.
            self.0 = None;
            // SAFETY: every stage writes the words it later reads (each kernel's safety
            // note says which); nothing reads a buffer's stale contents.
            self.0 = Some(unsafe { stream.alloc::<u32>(words) }.map_err(driver)?);
        }
        let buf = self
            .0
            .as_mut()
            .ok_or_else(|| CudaError::Driver("internal: scratch buffer missing".into()))?;
        Ok(buf.slice_mut(..words))
    }

    /// Its first `words` words (at least one), for reading what a stage wrote there.
    pub(crate) fn view(&self, words: usize) -> Result<CudaView<'_, u32>, CudaError> {
        let words = words.max(1);
        self.0
            .as_ref()
            .and_then(|b| b.try_slice(..words))
            .ok_or_else(|| CudaError::Driver("internal: scratch buffer read before written".into()))
    }
}

/// A (scores, payloads) pair of buffers: one word and two words an entry.
#[derive(Default)]
pub(crate) struct Pair {
    pub(crate) scores: Buffer,
    pub(crate) payloads: Buffer,
}

/// Every buffer of a device-resident batch, by role.
#[derive(Default)]
pub(crate) struct Scratch {
    /// The batch's queries (f32 bits).
    pub(crate) queries: Buffer,
    /// The batch's results: scores, then payloads.
    pub(crate) result: Buffer,
    /// What its tiles write and read between the queries and the result.
    pub(crate) work: Work,
}

/// A tile's buffers between the queries and the result, by role.
#[derive(Default)]
pub(crate) struct Work {
    /// The coarse stage's entries when a round merges them (`coarse_select`'s spans, or
    /// every list's score).
    pub(crate) coarse: Pair,
    /// Each query's probes, best first.
    pub(crate) probes: Pair,
    /// The unfused path's lookup tables (f32).
    pub(crate) tables: Buffer,
    /// The unfused path's work items and row lengths.
    pub(crate) items: Buffer,
    pub(crate) row_len: Buffer,
    /// The unfused scan's rows, or the fused scan's parts when a round merges them.
    pub(crate) scanned: Pair,
    /// Each query's `keep` candidates.
    pub(crate) candidates: Pair,
    /// The refined candidates.
    pub(crate) refined: Pair,
    /// Selection rounds between a first and a last: written and read in turn.
    pub(crate) rounds: [Pair; 2],
    /// One word, bound where a kernel takes a buffer it does not read (no L2 terms).
    pub(crate) unused: Buffer,
}
