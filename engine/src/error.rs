//! The engine's error type: one enum, with the numbers that explain each failure.
//!
//! Front ends map these once: the CLI to a message and a non-zero exit, the server to a gRPC
//! status. Nothing in the engine panics on user input; it returns one of these.

use std::path::PathBuf;

use crate::io::IoError;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Reading or writing a vector file failed.
    #[error(transparent)]
    Io(#[from] IoError),

    /// A vector's dimension differs from the index's.
    #[error("dimension mismatch: expected {expected}, got {got}")]
    DimensionMismatch {
        /// The index's dimension.
        expected: usize,
        /// The dimension supplied.
        got: usize,
    },

    /// A vector holds NaN or an infinity.
    #[error("vector {row} holds a non-finite value ({value}) at component {component}")]
    NonFinite {
        /// Row of the vector within its batch or file.
        row: usize,
        /// Component index within the vector.
        component: usize,
        /// The offending value.
        value: f32,
    },

    /// A zero vector cannot be normalised for the cosine metric.
    #[error("vector {row} has zero length and cannot be normalised for the cosine metric")]
    ZeroVector {
        /// Row of the vector within its batch or file.
        row: usize,
    },

    /// A parameter is outside its valid range.
    #[error("invalid {name}: {reason}")]
    InvalidParameter {
        /// The parameter's name as users know it.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// k is zero or larger than supported.
    #[error("k = {k} is out of range: it must be between 1 and {max}")]
    KOutOfRange {
        /// Requested k.
        k: usize,
        /// Largest k allowed.
        max: usize,
    },

    /// nprobe is zero or larger than nlist.
    #[error("nprobe = {nprobe} is out of range: it must be between 1 and nlist = {nlist}")]
    NprobeOutOfRange {
        /// Requested nprobe.
        nprobe: usize,
        /// Number of inverted lists of the index.
        nlist: usize,
    },

    /// The PQ's sub-quantizer count does not divide the dimension.
    #[error("PQ with M = {m} sub-quantizers does not divide dimension {dim}; choose M among the divisors of {dim}")]
    PqDoesNotDivide {
        /// The vector dimension.
        dim: usize,
        /// Requested number of sub-quantizers.
        m: usize,
    },

    /// Fewer training vectors than centroids.
    #[error("cannot train {clusters} clusters on {points} training vectors: need at least as many vectors as clusters")]
    TooFewTrainingVectors {
        /// Number of clusters requested (nlist, or 256 for PQ).
        clusters: usize,
        /// Training vectors available.
        points: usize,
    },

    /// The ids file does not match the vectors.
    #[error("{ids} ids given for {vectors} vectors")]
    IdCountMismatch {
        /// Number of ids.
        ids: usize,
        /// Number of vectors.
        vectors: usize,
    },

    /// An id is negative or otherwise unusable.
    #[error("invalid id {id} at row {row}: ids must be between 0 and 2^63-1")]
    InvalidId {
        /// The id as read.
        id: i64,
        /// Row where it was found.
        row: usize,
    },

    /// An id is already present in the index.
    #[error("id {id} is already in the index (delete it first to replace it)")]
    DuplicateId {
        /// The duplicate id.
        id: u64,
    },

    /// A refine factor was asked for but the index keeps no raw vectors.
    #[error("refine factor {refine_factor} needs raw vectors, but this index was built with --refine none")]
    RefineUnavailable {
        /// The requested factor.
        refine_factor: usize,
    },

    /// An index file is not an index, is corrupt, truncated or from an unknown version.
    #[error("{path}: {reason}")]
    CorruptIndex {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// An index file's section failed its checksum.
    #[error(
        "{path}: section {section} is corrupt (CRC32C {actual:#010x}, expected {expected:#010x})"
    )]
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// The section's name.
        section: &'static str,
        /// Checksum stored in the file.
        expected: u32,
        /// Checksum of the bytes read.
        actual: u32,
    },

    /// The file was written by a newer or unknown format version.
    #[error("{path}: index format version {version} is not supported (this build reads versions {supported})")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Version found.
        version: u32,
        /// Versions this build reads.
        supported: &'static str,
    },

    /// A backend cannot be used on this machine or build.
    #[error("backend {backend} is unavailable: {reason}")]
    BackendUnavailable {
        /// The backend's name.
        backend: &'static str,
        /// Why.
        reason: String,
    },
    /// A long operation (training, adding) was stopped by its caller
    /// ([`crate::progress::Progress::cancelled`]).
    #[error("{what} was cancelled")]
    Cancelled {
        /// The operation.
        what: &'static str,
    },
    /// A backend that opened failed at its work: a device error, or an index or batch beyond
    /// what the device holds.
    #[error("backend {backend} failed: {reason}")]
    BackendFailed {
        /// The backend's name.
        backend: &'static str,
        /// Why.
        reason: String,
    },
}
