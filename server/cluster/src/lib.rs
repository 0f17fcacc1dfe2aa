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
//! - [`catalog_log`]: which collections exist, as a log of creates and drops appended by
//!   compare-and-set and applied by every node to its collections folder.
//! - [`node`]: a node of the cluster: its collections folder kept equal to the catalog log,
//!   a replica of every collection following its log; creates, drops and writes go through
//!   the logs. (Today every node holds every collection, one shard each; placement and
//!   routing come next.)
//! - [`stream`]: a JetStream stream used as a log, under both; `tail` follows one.
#![warn(missing_docs)]

pub mod catalog_log;
pub mod error;
pub mod follower;
pub mod node;
pub mod shard_log;
pub mod stream;
mod tail;

pub use catalog_log::CatalogLog;
pub use error::{ClusterError, Result};
pub use follower::Follower;
pub use node::Node;
pub use shard_log::ShardLog;
pub use stream::Appended;
