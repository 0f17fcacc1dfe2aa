//! One shard's op log: a [`LogStream`] (`QUIVER_<collection>_<incarnation>_<shard>`) whose
//! messages are the shard's writes, each one store op ([`quiver_store::wal::encode_op`]). The
//! stream numbers them 1, 2, … with no gaps (its messages may not be deleted or purged); that
//! number is the op's in every replica
//! ([`quiver_store::Collection::apply`]). A publish carries a message id: JetStream drops a
//! repeat within the duplicate window and answers with the first one's number, so a client or
//! node retrying a write after a lost acknowledgement applies it once. The incarnation (the
//! catalog number of the collection's creation) keeps a re-created collection from reading
//! the log of the one dropped before it.

use futures_util::{Stream, StreamExt};
use quiver_store::wal::{decode_op, encode_op, Op};

use crate::error::{ClusterError, Result};
use crate::stream::{escape, Appended, LogStream};

/// A shard's log on a JetStream server or cluster.
#[derive(Clone)]
pub struct ShardLog {
    stream: LogStream,
}

impl ShardLog {
    /// The stream holding shard `shard` of `collection`'s incarnation `incarnation`.
    pub fn stream_name(collection: &str, incarnation: u64, shard: u32) -> String {
        format!("QUIVER_{}_{incarnation}_{shard}", escape(collection))
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
            stream: LogStream::open(js, name, subject, replicas).await?,
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
        self.stream
            .append(id, encode_op(op), None)
            .await?
            .ok_or_else(|| ClusterError::broker("publishing a write", "refused"))
    }

    /// The first and last numbers the log holds (`(n + 1, n)` when it holds none).
    pub async fn bounds(&self) -> Result<(u64, u64)> {
        self.stream.bounds().await
    }

    /// The ops from number `start` on, in order, as they are appended.
    pub async fn read_from(
        &self,
        start: u64,
    ) -> Result<impl Stream<Item = Result<(u64, Op)>> + Send + 'static> {
        let name = self.stream.name().to_string();
        Ok(self.stream.read_from(start).await?.map(move |e| {
            let (seq, body) = e?;
            let op = decode_op(&body).map_err(|e| ClusterError::BadEntry {
                stream: name.clone(),
                seq,
                reason: e.to_string(),
            })?;
            Ok((seq, op))
        }))
    }

    /// Deletes the log (its collection was dropped).
    pub async fn delete(&self) -> Result<()> {
        self.stream.delete().await
    }
}
