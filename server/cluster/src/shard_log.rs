//! One shard's op log: a JetStream stream (`QUIVER_<collection>_<shard>`, one subject) whose
//! messages are the shard's writes, each one store op ([`quiver_store::wal::encode_op`]). The
//! stream assigns numbers 1, 2, … with no gaps; that number is the op's in every replica
//! ([`quiver_store::Collection::apply`]). A publish carries a message id: JetStream drops a
//! repeat within the duplicate window and answers with the first one's number, so a client or
//! node retrying a write after a lost acknowledgement applies it once.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use futures_util::{Stream, StreamExt};
use quiver_store::wal::{decode_op, encode_op, Op};

use crate::error::{ClusterError, Result};

/// How long JetStream remembers message ids to drop repeats.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// A shard's log on a JetStream server or cluster.
#[derive(Clone)]
pub struct ShardLog {
    js: jetstream::Context,
    stream: String,
    subject: String,
}

/// Where an appended op landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Its number in the log.
    pub seq: u64,
    /// The message id was seen before: this is the first publish's number, nothing new was
    /// written.
    pub duplicate: bool,
}

/// A collection name as it may stand in a stream name or subject token: letters, digits and
/// `-` as they are, every other byte as `_` and two hex digits (so distinct names stay
/// distinct).
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

impl ShardLog {
    /// The stream holding `collection`'s shard `shard`.
    pub fn stream_name(collection: &str, shard: u32) -> String {
        format!("QUIVER_{}_{shard}", escape(collection))
    }

    /// Opens the log of `collection`'s shard `shard`, creating its stream (file storage,
    /// `replicas` copies on a JetStream cluster) if it does not exist.
    pub async fn open(
        js: &jetstream::Context,
        collection: &str,
        shard: u32,
        replicas: usize,
    ) -> Result<ShardLog> {
        let stream = Self::stream_name(collection, shard);
        let subject = format!("quiver.log.{}.{shard}", escape(collection));
        js.get_or_create_stream(stream::Config {
            name: stream.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            num_replicas: replicas.max(1),
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await
        .map_err(|e| ClusterError::broker("creating the log stream", e))?;
        Ok(ShardLog {
            js: js.clone(),
            stream,
            subject,
        })
    }

    /// The stream's name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Appends `op` under the message id `id` (unique per write: a repeat within
    /// [`DUPLICATE_WINDOW`] is dropped) and waits until the stream has stored it (on a
    /// JetStream cluster, a quorum of its copies).
    pub async fn append(&self, id: &str, op: &Op) -> Result<Appended> {
        let body = encode_op(op);
        let limit = self.js.client().server_info().max_payload;
        if limit > 0 && body.len() > limit {
            return Err(ClusterError::TooLarge {
                bytes: body.len(),
                limit,
            });
        }
        let ack = self
            .js
            .send_publish(
                self.subject.clone(),
                PublishMessage::build().payload(body.into()).message_id(id),
            )
            .await
            .map_err(|e| ClusterError::broker("publishing a write", e))?
            .await
            .map_err(|e| ClusterError::broker("waiting for a write's acknowledgement", e))?;
        Ok(Appended {
            seq: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// The first and last numbers the log holds (`(0, 0)` or `(n + 1, n)` when it holds none).
    pub async fn bounds(&self) -> Result<(u64, u64)> {
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| ClusterError::broker("reading the log's state", e))?;
        let info = stream
            .get_info()
            .await
            .map_err(|e| ClusterError::broker("reading the log's state", e))?;
        Ok((info.state.first_sequence, info.state.last_sequence))
    }

    /// The ops from number `start` on, in order, as they are appended (the stream never ends
    /// by itself). Refused with [`ClusterError::Trimmed`] when the log no longer starts at or
    /// before `start`.
    pub async fn read_from(
        &self,
        start: u64,
    ) -> Result<impl Stream<Item = Result<(u64, Op)>> + Send + 'static> {
        let (first, last) = self.bounds().await?;
        if start < first && last >= first {
            return Err(ClusterError::Trimmed {
                stream: self.stream.clone(),
                first,
                wanted: start,
            });
        }
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| ClusterError::broker("opening the log", e))?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start.max(1),
                },
                ..Default::default()
            })
            .await
            .map_err(|e| ClusterError::broker("starting to read the log", e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| ClusterError::broker("starting to read the log", e))?;
        let name = self.stream.clone();
        Ok(messages.map(move |m| {
            let m = m.map_err(|e| ClusterError::broker("reading the log", e))?;
            let seq = m
                .info()
                .map_err(|e| ClusterError::broker("reading a log entry's number", e))?
                .stream_sequence;
            let op = decode_op(&m.payload).map_err(|e| ClusterError::BadEntry {
                stream: name.clone(),
                seq,
                reason: e.to_string(),
            })?;
            Ok((seq, op))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_escape_to_distinct_stream_names() {
        assert_eq!(ShardLog::stream_name("docs", 0), "QUIVER_docs_0");
        assert_eq!(ShardLog::stream_name("a.b", 1), "QUIVER_a_2eb_1");
        assert_ne!(
            ShardLog::stream_name("a_2eb", 1),
            ShardLog::stream_name("a.b", 1)
        );
        assert_eq!(escape("x-y_z"), "x-y_5fz");
    }
}
