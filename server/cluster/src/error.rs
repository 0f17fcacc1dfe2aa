//! The cluster layer's errors.

use quiver_store::StoreError;

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The broker could not be reached or refused the request. A write retried with the same
    /// message id is applied once.
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
    /// The log holds fewer entries than a replica has applied: it was lost or re-created
    /// under the same name (e.g. a single broker's unsynced tail lost to a power cut). The
    /// replica must not take the new entries as its next ones.
    #[error("log {stream} ends at {last}, before this replica's next op {wanted}: the log was lost or re-created; start the replica from a snapshot")]
    Behind {
        /// The stream.
        stream: String,
        /// Its last entry.
        last: u64,
        /// The replica's next op.
        wanted: u64,
    },
    /// The log skipped entries (deleted from it): the replica cannot go on.
    #[error("log {stream} has no entry {expected} (the next one is {got}): entries were deleted from it")]
    Gap {
        /// The stream.
        stream: String,
        /// The entry wanted.
        expected: u64,
        /// The entry delivered.
        got: u64,
    },
    /// A collection's replica on this node is not usable (it failed to open, or its log
    /// stopped); what it holds is kept for inspection.
    #[error("collection {name:?} is not available on this node: {reason}")]
    Unavailable {
        /// The collection.
        name: String,
        /// Why.
        reason: String,
    },
    /// The node's folder belongs to another cluster, or to this one before its catalog was
    /// lost: its replicas' numbers are not this catalog's.
    #[error("this node's folder was written for the catalog created at {folder}, not this cluster's (created at {catalog}): give the node an empty folder")]
    Foreign {
        /// The catalog the folder was written for.
        folder: String,
        /// This cluster's catalog.
        catalog: String,
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
    /// Whether following a log must stop on this error (retrying cannot help).
    pub fn ends_following(&self) -> bool {
        matches!(
            self,
            ClusterError::BadEntry { .. }
                | ClusterError::Trimmed { .. }
                | ClusterError::Behind { .. }
                | ClusterError::Gap { .. }
        )
    }

    pub(crate) fn broker(context: &'static str, e: impl std::fmt::Display) -> Self {
        ClusterError::Broker {
            context,
            reason: e.to_string(),
        }
    }
}

/// Result of cluster operations.
pub type Result<T> = std::result::Result<T, ClusterError>;
