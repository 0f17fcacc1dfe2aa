//! Quiver's cluster layer: a collection's writes as a replicated log on NATS JetStream, and
//! replicas that apply it. It stands beside the store (it uses [`quiver_store::Collection`]'s
//! replica API: `apply` with externally numbered ops) and knows nothing of gRPC or REST.
//!
//! - [`shard_log`]: one JetStream stream per shard of a collection; a write is one message
//!   (one store op, framed and checksummed as in the store's log), de-duplicated by a message
//!   id so a retried write is applied once; the stream sequence is the op's number in every
//!   replica.
//! - [`follower`]: applies a shard's log to a replica collection from its last applied op on,
//!   through broker restarts, and reports how far it has applied.
#![warn(missing_docs)]

pub mod error;
pub mod follower;
pub mod shard_log;

pub use error::{ClusterError, Result};
pub use follower::Follower;
pub use shard_log::{Appended, ShardLog};
