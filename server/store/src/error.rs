//! The store's errors: what a front-end turns into a client status (see each variant).

use std::path::PathBuf;

use quiver_engine::EngineError;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine refused the input or failed (its own classification applies).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A request's field is out of range (a client error; names the field).
    #[error("{field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The operation does not fit the collection's state (read-only, already trained, a
    /// background job running, too few vectors).
    #[error("{0}")]
    Precondition(String),
    /// The write-ahead log could not take the write; nothing of it was applied. Retry later.
    #[error("write-ahead log {path}: {reason}; the write was not applied")]
    WalFailed {
        /// The log file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// Writes are stopped after a failure the log could not undo; a restart recovers.
    #[error("writes are stopped: {0}; restart the server to recover")]
    WritesStopped(String),
    /// A file of the collection is damaged in a way start-up must not guess about.
    #[error("{path} at byte {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// A file operation failed.
    #[error("{context} {path}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An internal failure (a backend's); nothing of the request was applied.
    #[error("{0}")]
    Failed(String),
    /// A request would need more working memory than allowed.
    #[error("the request needs about {estimate} bytes of working memory, above --max-request-bytes = {limit}; ask for fewer queries, a smaller k or a smaller refine factor")]
    TooLarge {
        /// Estimated bytes.
        estimate: u64,
        /// The limit.
        limit: u64,
    },
}

impl StoreError {
    /// An I/O error with its context and path.
    pub fn io(context: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            context,
            path: path.into(),
            source,
        }
    }
}

/// Result of store operations.
pub type Result<T> = std::result::Result<T, StoreError>;
