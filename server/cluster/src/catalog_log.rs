//! The cluster's catalog log: which collections exist, their shards and where their replicas
//! are, as a [`LogStream`] (`QUIVER_CATALOG`) of [`CatalogEntry`]s in JSON, which every node
//! reads into its [`crate::topology::Topology`]. An entry is appended only if the log's last
//! entry is the one its writer checked it against (compare-and-set), so the log never holds a
//! create of an existing name or a drop of a missing one (as long as every writer appends this
//! way: a deployment restricts publishing on `quiver.catalog` to its nodes): every node reads
//! every entry, and all end with the same collections and placement. A collection's
//! incarnation is the number of the entry that created it.

use futures_util::{Stream, StreamExt};
use quiver_store::CollectionMeta;
use serde::{Deserialize, Serialize};

use crate::error::{ClusterError, Result};
use crate::stream::{Appended, LogStream};

/// The stream's name.
pub const STREAM: &str = "QUIVER_CATALOG";

/// An entry of the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatalogEntry {
    /// A collection is created empty.
    Create {
        /// Its description (name, dimension, metric, index, fields, settings).
        meta: CollectionMeta,
        /// Per shard, the nodes holding its replicas (the first is where its trains are
        /// decided).
        placement: Vec<Vec<String>>,
    },
    /// A collection and its logs are removed.
    Drop {
        /// Its name.
        name: String,
    },
    /// A collection's description changes (indexed payload fields, settings, the size at
    /// which it trains by itself): the whole new value.
    Describe {
        /// Its name.
        name: String,
        /// The incarnation it is for (one dropped since is left as it was).
        incarnation: u64,
        /// The new value.
        description: quiver_store::manifest::Description,
    },
}

/// The catalog log on a JetStream server or cluster.
#[derive(Clone)]
pub struct CatalogLog {
    stream: LogStream,
}

impl CatalogLog {
    /// Opens the catalog log, creating its stream (`replicas` copies) if needed.
    pub async fn open(js: &async_nats::jetstream::Context, replicas: usize) -> Result<CatalogLog> {
        Ok(CatalogLog {
            stream: LogStream::open(js, STREAM.into(), "quiver.catalog".into(), replicas, false)
                .await?,
        })
    }

    /// The log's identity: when its stream was created (a lost and re-created catalog has
    /// another, whatever it holds).
    pub async fn identity(&self) -> Result<String> {
        self.stream.created().await
    }

    /// The number of the last entry (0 for none).
    pub async fn last_seq(&self) -> Result<u64> {
        Ok(self.stream.bounds().await?.1)
    }

    /// Appends `op` if the log's last entry is still number `after`: `None` when another
    /// entry came first (check again against it and retry).
    pub async fn append_after(
        &self,
        after: u64,
        id: &str,
        op: &CatalogEntry,
    ) -> Result<Option<Appended>> {
        let body = serde_json::to_vec(op).map_err(|e| ClusterError::broker("encoding", e))?;
        self.stream.append(id, body, Some(after)).await
    }

    /// Whether entry `seq` was appended under the message id `id` (a write whose answer was
    /// lost: the broker refuses its repeat against an expected last entry that is now its
    /// own).
    pub async fn is_entry(&self, seq: u64, id: &str) -> Result<bool> {
        Ok(self.stream.message_id_at(seq).await?.as_deref() == Some(id))
    }

    /// The entries from number `start` on, in order, as they are appended.
    pub async fn read_from(
        &self,
        start: u64,
    ) -> Result<impl Stream<Item = Result<(u64, CatalogEntry)>> + Send + 'static> {
        Ok(self.stream.read_from(start).await?.map(|e| {
            let (seq, body) = e?;
            let op = serde_json::from_slice(&body).map_err(|e| ClusterError::BadEntry {
                stream: STREAM.into(),
                seq,
                reason: e.to_string(),
            })?;
            Ok((seq, op))
        }))
    }
}
