//! One shard's op log: a [`LogStream`] (`QUIVER_<collection>_<incarnation>_<shard>`) whose
//! messages are the shard's writes, each one store op ([`quiver_store::wal::encode_op`]), and
//! its trainings ([`ShardEntry::Train`]: every replica switches to the quantizers it names at
//! that number). The
//! stream numbers them 1, 2, … with no gaps (its messages may not be deleted or purged); that
//! number is the op's in every replica
//! ([`quiver_store::Collection::apply`]). A publish carries a message id: JetStream drops a
//! repeat within the duplicate window and answers with the first one's number, so a client or
//! node retrying a write after a lost acknowledgement applies it once. The incarnation (the
//! catalog number of the collection's creation) keeps a re-created collection from reading
//! the log of the one dropped before it.

use futures_util::{Stream, StreamExt};
use quiver_store::wal::{decode_op, encode_op, Op};
use serde::{Deserialize, Serialize};

use crate::error::{ClusterError, Result};
use crate::stream::{escape, Appended, LogStream};

/// What a training entry's body starts with. An op's record starts with its length, which
/// these bytes would make about 1.3 GB, far above any message a broker takes: the two never
/// collide.
const TRAIN_MAGIC: &[u8; 8] = b"QVTRAIN1";

/// A training logged for every replica of a shard: the quantizers the shard's training
/// leader trained, stored as an artifact ([`crate::artifacts`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainEntry {
    /// The artifact holding the quantizers (an index file with no points).
    pub object: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// An entry of a shard's log.
#[derive(Debug, Clone, PartialEq)]
pub enum ShardEntry {
    /// A write.
    Op(Op),
    /// A switch to newly trained quantizers.
    Train(TrainEntry),
}

impl ShardEntry {
    /// The message body.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ShardEntry::Op(op) => encode_op(op),
            ShardEntry::Train(t) => {
                let mut out = TRAIN_MAGIC.to_vec();
                // A struct of a string and a number always serializes.
                out.extend(serde_json::to_vec(t).unwrap_or_default());
                out
            }
        }
    }

    /// The entry a message body holds.
    pub fn decode(body: &[u8]) -> std::result::Result<ShardEntry, String> {
        match body.strip_prefix(TRAIN_MAGIC.as_slice()) {
            Some(json) => serde_json::from_slice(json)
                .map(ShardEntry::Train)
                .map_err(|e| format!("a training entry: {e}")),
            None => decode_op(body)
                .map(ShardEntry::Op)
                .map_err(|e| e.to_string()),
        }
    }
}

/// A shard's log on a JetStream server or cluster.
#[derive(Clone)]
pub struct ShardLog {
    stream: LogStream,
}

impl ShardLog {
    /// The stream holding shard `shard` of `collection`'s incarnation `incarnation`.
    pub fn stream_name(collection: &str, incarnation: u64, shard: u32) -> String {
        format!(
            "{}{shard}",
            Self::incarnation_prefix(collection, incarnation)
        )
    }

    /// What the names of every shard's stream of `collection`'s incarnation `incarnation`
    /// start with, and no other's (an escaped name holds no `_` of its own).
    pub fn incarnation_prefix(collection: &str, incarnation: u64) -> String {
        format!("QUIVER_{}_{incarnation}_", escape(collection))
    }

    /// Opens the log of shard `shard` of `collection` created at catalog number
    /// `incarnation`, creating its stream (file storage, `replicas` copies on a JetStream
    /// cluster) if it does not exist.
    pub async fn open(
        js: &async_nats::jetstream::Context,
        collection: &str,
        incarnation: u64,
        shard: u32,
        replicas: usize,
    ) -> Result<ShardLog> {
        let name = Self::stream_name(collection, incarnation, shard);
        let subject = Self::subject(collection, incarnation, shard);
        Ok(ShardLog {
            stream: LogStream::open(js, name, subject, replicas, true).await?,
        })
    }

    /// Opens the log of shard `shard` of `collection`'s incarnation `incarnation` only if its
    /// stream exists (`None`: not created yet, or deleted with its collection): a writer must
    /// never re-create the log of a dropped collection.
    pub async fn open_existing(
        js: &async_nats::jetstream::Context,
        collection: &str,
        incarnation: u64,
        shard: u32,
    ) -> Result<Option<ShardLog>> {
        let name = Self::stream_name(collection, incarnation, shard);
        let subject = Self::subject(collection, incarnation, shard);
        Ok(LogStream::open_existing(js, name, subject)
            .await?
            .map(|stream| ShardLog { stream }))
    }

    fn subject(collection: &str, incarnation: u64, shard: u32) -> String {
        format!("quiver.log.{}.{incarnation}.{shard}", escape(collection))
    }

    /// Refuses `op` if its message would be above the broker's largest.
    pub fn check_op(&self, op: &Op) -> Result<()> {
        self.stream.check_size(encode_op(op).len())
    }

    /// The stream's name.
    pub fn stream(&self) -> &str {
        self.stream.name()
    }

    /// Appends `op` under the message id `id` (unique per write: a repeat within the duplicate
    /// window is dropped) and waits until the stream has stored it.
    pub async fn append(&self, id: &str, op: &Op) -> Result<Appended> {
        self.append_body(id, encode_op(op)).await
    }

    /// Appends a training under the message id `id`, as [`Self::append`].
    pub async fn append_train(&self, id: &str, train: &TrainEntry) -> Result<Appended> {
        self.append_body(id, ShardEntry::Train(train.clone()).encode())
            .await
    }

    async fn append_body(&self, id: &str, body: Vec<u8>) -> Result<Appended> {
        self.stream
            .append(id, body, None)
            .await?
            .ok_or_else(|| ClusterError::broker("publishing a write", "refused"))
    }

    /// The first and last numbers the log holds (`(n + 1, n)` when it holds none).
    pub async fn bounds(&self) -> Result<(u64, u64)> {
        self.stream.bounds().await
    }

    /// The entries from number `start` on, in order, as they are appended.
    pub async fn read_from(
        &self,
        start: u64,
    ) -> Result<impl Stream<Item = Result<(u64, ShardEntry)>> + Send + 'static> {
        let name = self.stream.name().to_string();
        Ok(self.stream.read_from(start).await?.map(move |e| {
            let (seq, body) = e?;
            let entry = ShardEntry::decode(&body).map_err(|reason| ClusterError::BadEntry {
                stream: name.clone(),
                seq,
                reason,
            })?;
            Ok((seq, entry))
        }))
    }

    /// Removes the entries numbered below `below` (a published snapshot covers them); returns
    /// how many were removed.
    pub async fn trim_below(&self, below: u64) -> Result<u64> {
        self.stream.trim_below(below).await
    }

    /// Deletes the log (its collection was dropped).
    pub async fn delete(&self) -> Result<()> {
        self.stream.delete().await
    }
}
