//! The cluster layer's errors.

use quiver_store::StoreError;

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The broker could not be reached or refused the request (retry: a publish carries its
    /// message id, so a retried write is applied once).
    #[error("NATS {context}: {reason}")]
    Broker {
        /// What was being done.
        context: &'static str,
        /// Why.
        reason: String,
    },
    /// A write does not fit in one log message.
    #[error("the write takes {bytes} bytes, above the {limit} a log message may hold; split it")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The broker's limit.
        limit: usize,
    },
    /// A log message is not a valid op (written by something else, or damaged).
    #[error("log {stream} entry {seq}: {reason}")]
    BadEntry {
        /// The stream.
        stream: String,
        /// The entry's number.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// The log no longer holds the ops a replica needs next (trimmed below them): the replica
    /// must start again from a snapshot.
    #[error("log {stream} starts at {first}; this replica needs {wanted} onward: start it from a snapshot")]
    Trimmed {
        /// The stream.
        stream: String,
        /// Its first entry.
        first: u64,
        /// The replica's next op.
        wanted: u64,
    },
    /// No collection of that name exists in the cluster.
    #[error("collection {0:?} does not exist")]
    NotFound(String),
    /// A collection of that name exists already.
    #[error("collection {0:?} already exists")]
    Exists(String),
    /// The replica's store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ClusterError {
    pub(crate) fn broker(context: &'static str, e: impl std::fmt::Display) -> Self {
        ClusterError::Broker {
            context,
            reason: e.to_string(),
        }
    }
}

/// Result of cluster operations.
pub type Result<T> = std::result::Result<T, ClusterError>;
