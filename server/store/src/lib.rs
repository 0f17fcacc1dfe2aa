//! Quiver's store layer: one collection's durable state — segments, write-ahead log,
//! manifest and checkpoints, background work — with no knowledge of gRPC, REST or the command
//! line. The service (and later a Qdrant-compatible front-end or a cluster replica) is a thin
//! front over [`Collection`].
//!
//! A collection is a set of segments ([`segment`]): one appendable segment that takes new
//! points and sealed segments that change only by deletes, published together as an immutable
//! [`version::Version`]. Writes go through a group-committed log ([`wal`]); checkpoints write
//! new segment files and a manifest ([`manifest`]) and then drop the log they cover; the
//! [`optimizer`]'s pool of threads merges segments and purges deleted rows in the background;
//! the collections folder and its catalog log ([`folder`], [`catalog`]) hold which collections
//! exist.
#![warn(missing_docs)]

pub mod catalog;
pub mod collection;
pub mod cpucache;
pub mod drift;
pub mod error;
pub mod flatfile;
pub mod folder;
pub mod fsutil;
pub mod legacy;
pub mod manifest;
pub mod optimizer;
pub mod preparer;
pub mod priority;
pub mod segment;
pub mod snapshot;
pub mod training_input;
pub mod version;
pub mod wal;

pub use catalog::{AliasAction, CatalogEntry, CatalogOp};
pub use collection::{
    check_ops, valid_folder_name, valid_name, Applied, Collection, JobState, UpsertMode,
};
pub use error::{Result, StoreError};
pub use folder::{CatalogApplied, CollectionsFolder};
pub use manifest::{CollectionMeta, IndexConfig};
pub use optimizer::Optimizer;
pub use segment::SearchKey;

/// How a collection manages its files and segments.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// A checkpoint runs when the current log file passes this size.
    pub checkpoint_wal_bytes: u64,
    /// ... or when the appendable segment holds this many points (it is then sealed).
    pub seal_rows: usize,
    /// Segments of one size tier (a factor of 4) merged together.
    pub merge_factor: usize,
    /// Most sealed segments before the smallest are merged.
    pub max_segments: usize,
    /// A segment is rewritten without its deleted rows when more than this share is deleted.
    pub purge_ratio: f64,
    /// The optimizer retrains the quantizers when the points added since training are at least
    /// this share of the points trained on ...
    pub retrain_share: f64,
    /// ... and their mean coarse error is above this multiple of the training points' (0:
    /// never; see [`drift`]).
    pub retrain_factor: f64,
    /// Nice value (0–19) of the threads that write and optimize, above searches' (0: same).
    pub write_nice: i32,
    /// At start, a damaged log record followed by valid ones keeps what precedes it (and drops
    /// the rest) instead of stopping.
    pub wal_recover: bool,
    /// Threads of the background optimizer's pool, shared by every collection
    /// ([`Optimizer`]).
    pub background_threads: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            checkpoint_wal_bytes: 256 << 20,
            seal_rows: 8_192,
            merge_factor: 4,
            max_segments: 8,
            purge_ratio: 0.2,
            retrain_share: 0.1,
            retrain_factor: 1.5,
            write_nice: 10,
            wal_recover: false,
            background_threads: optimizer::default_threads(),
        }
    }
}
