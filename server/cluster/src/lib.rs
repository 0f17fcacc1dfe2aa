//! Quiver's cluster layer: a collection's writes as a replicated log on NATS JetStream, and
//! replicas that apply it. It stands beside the store (it uses [`quiver_store::Collection`]'s
//! replica API: `apply` with externally numbered ops) and knows nothing of gRPC or REST.
//!
//! - [`shard_log`]: one JetStream stream per shard of a collection; a write is one message
//!   per shard (one store op, framed and checksummed as in the store's log), de-duplicated by
//!   a message id so a retried write is applied once; the stream sequence is the op's number
//!   in every replica.
//! - [`follower`]: applies a shard's log to a replica from its last applied op on, through
//!   broker restarts, and reports how far it has applied.
//! - [`catalog_log`] and [`topology`]: which collections exist, their shards and where each
//!   shard's replicas are, as a log of creates and drops appended by compare-and-set and read
//!   by every node.
//! - [`placement`]: a point's shard (a fixed hash of its id) and a shard's nodes.
//! - [`membership`]: which nodes are up (heartbeats in a key-value bucket).
//! - [`lease`]: one node at a time decides for a shard (its training), by a lease in a
//!   key-value bucket; [`artifacts`]: the trained quantizers every replica switches to, in an
//!   object store bucket.
//! - [`snapshots`]: checkpoint exports of shard replicas in the object store, which a new or
//!   wiped node starts from (then the log after them); logs are trimmed below them.
//! - [`request_id`]: the caller's request id, carried to every replica asked for it and named
//!   in the logs of both nodes.
//! - [`rpc`]: what a node asks another about a replica it holds (NATS request/reply).
//! - [`node`]: a node: holds the replicas placed on it, answers other nodes, and routes its
//!   callers' creates, drops, writes (split by shard) and reads (one replica per shard, the
//!   answers merged).
//! - [`stream`]: a JetStream stream used as a log, under the logs; `tail` follows one.
#![warn(missing_docs)]

pub mod artifacts;
mod bucket;
pub mod catalog_log;
pub mod error;
pub mod follower;
pub mod lease;
pub mod membership;
pub mod node;
pub mod placement;
pub mod request_id;
pub mod rpc;
pub mod shard_log;
pub mod snapshots;
pub mod stream;
mod tail;
pub mod topology;

pub use catalog_log::{CatalogEntry, CatalogLog};
pub use error::{ClusterError, Result};
pub use follower::Follower;
pub use node::{Node, ReplicaProgress, ScrollRequest, SearchRequest, SnapshotDone, WriteToken};
pub use rpc::ShardState;
pub use shard_log::{ShardEntry, ShardLog, TrainEntry};
pub use stream::Appended;
pub use topology::{ClusterCollection, Topology};
