//! Progress reporting for long engine operations (training, adding, brute force).
//!
//! The engine never draws anything itself: a binary passes an implementation (a terminal
//! progress bar, a log line) and library users pass [`NoProgress`].

/// Receives progress of a long operation. Implementations must be cheap and thread-safe:
/// `advance` is called from worker threads.
pub trait Progress: Sync {
    /// A new stage begins, with `total` units of work (0 when unknown).
    fn stage(&self, name: &str, total: u64);
    /// `n` more units of the current stage are done.
    fn advance(&self, n: u64);
    /// The current stage is finished.
    fn finish_stage(&self) {}
    /// True when the caller wants the operation stopped: training and adding check it between
    /// steps (a k-means iteration, a sub-quantizer, a block of rows) and return
    /// [`crate::EngineError::Cancelled`].
    fn cancelled(&self) -> bool {
        false
    }
}

/// Ignores all progress.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn stage(&self, _name: &str, _total: u64) {}
    fn advance(&self, _n: u64) {}
}
