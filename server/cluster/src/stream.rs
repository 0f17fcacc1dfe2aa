//! A log on JetStream, whatever it carries: one stream with one subject, file storage, R
//! copies, message ids de-duplicated within [`DUPLICATE_WINDOW`]. Publishing waits for the
//! stream's acknowledgement (on a JetStream cluster, a quorum of its copies); reading yields
//! `(sequence, payload)` in order from a given sequence through an ordered consumer. The shard
//! and catalog logs are this with their codecs.

use std::time::Duration;

use async_nats::jetstream::{
    self, consumer, context::PublishErrorKind, message::PublishMessage, stream,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::error::{ClusterError, Result};

/// Longest pull a log reader waits on (its idle heartbeat is half of it).
const READ_EXPIRES: Duration = Duration::from_secs(2);

/// How long an append is retried while the stream answers "no stream found" (a stream just
/// created, or electing a leader).
const NOT_FOUND_RETRY: Duration = Duration::from_secs(10);

/// How long JetStream remembers message ids to drop repeats.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Where an appended message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Its number in the log.
    pub seq: u64,
    /// The message id was seen before: this is the first publish's number, nothing new was
    /// written.
    pub duplicate: bool,
}

/// A name as it may stand in a stream name or subject token: letters, digits and `-` as they
/// are, every other byte as `_` and two hex digits (so distinct names stay distinct).
pub fn escape(name: &str) -> String {
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

/// One JetStream stream used as a log.
#[derive(Clone)]
pub struct LogStream {
    js: jetstream::Context,
    name: String,
    subject: String,
}

impl LogStream {
    /// Opens the stream `name` (subject `subject`), creating it with `replicas` copies if it
    /// does not exist; `trimmable`: entries below a number may be removed
    /// ([`Self::trim_below`]; the broker refuses it otherwise).
    pub async fn open(
        js: &jetstream::Context,
        name: String,
        subject: String,
        replicas: usize,
        trimmable: bool,
    ) -> Result<LogStream> {
        js.get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            num_replicas: replicas.max(1),
            duplicate_window: DUPLICATE_WINDOW,
            // Numbers are ops' numbers in every replica: no single entry may leave; a shard's
            // entries leave only by trimming (a purge below a number) below a published
            // snapshot ([`Self::trim_below`]); the catalog's never.
            deny_delete: true,
            deny_purge: !trimmable,
            ..Default::default()
        })
        .await
        .map_err(|e| ClusterError::broker("creating a log stream", e))?;
        Ok(LogStream {
            js: js.clone(),
            name,
            subject,
        })
    }

    /// Opens the stream `name` (subject `subject`) only if it exists: `None` when it does
    /// not (never created, or deleted with its collection).
    pub async fn open_existing(
        js: &jetstream::Context,
        name: String,
        subject: String,
    ) -> Result<Option<LogStream>> {
        match js.get_stream(&name).await {
            Ok(_) => Ok(Some(LogStream {
                js: js.clone(),
                name,
                subject,
            })),
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(ClusterError::broker("opening a log stream", e)),
        }
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Refuses a body the broker would refuse (above its largest message).
    pub fn check_size(&self, len: usize) -> Result<()> {
        let limit = self.js.client().server_info().max_payload;
        if limit > 0 && len > limit {
            return Err(ClusterError::TooLarge { bytes: len, limit });
        }
        Ok(())
    }

    /// Appends `body` under the message id `id`; with `after`, only if the log's last entry
    /// is still that number (compare-and-set: `None` when another entry came first).
    pub async fn append(
        &self,
        id: &str,
        body: Vec<u8>,
        after: Option<u64>,
    ) -> Result<Option<Appended>> {
        self.check_size(body.len())?;
        let body = Bytes::from(body);
        // A stream just created on a JetStream cluster answers no publish until its group
        // has a leader ("no stream found"), nor does one whose leader is being re-elected:
        // sent again (the same message id: stored once) for a while.
        let mut wait = Duration::from_millis(50);
        let give_up = tokio::time::Instant::now() + NOT_FOUND_RETRY;
        loop {
            let mut msg = PublishMessage::build().payload(body.clone()).message_id(id);
            if let Some(seq) = after {
                msg = msg.expected_last_sequence(seq);
            }
            let pending = self
                .js
                .send_publish(self.subject.clone(), msg)
                .await
                .map_err(|e| ClusterError::broker("publishing", e))?;
            match pending.await {
                Ok(ack) => {
                    return Ok(Some(Appended {
                        seq: ack.sequence,
                        duplicate: ack.duplicate,
                    }))
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => return Ok(None),
                Err(e)
                    if e.kind() == PublishErrorKind::StreamNotFound
                        && tokio::time::Instant::now() + wait < give_up =>
                {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(ClusterError::broker("waiting for an acknowledgement", e)),
            }
        }
    }

    /// The first and last numbers the log holds (`(0, 0)` when it never held any; after
    /// trimming everything, `(n + 1, n)`).
    pub async fn bounds(&self) -> Result<(u64, u64)> {
        let stream = self
            .js
            .get_stream(&self.name)
            .await
            .map_err(|e| ClusterError::broker("reading a log's state", e))?;
        let info = stream
            .get_info()
            .await
            .map_err(|e| ClusterError::broker("reading a log's state", e))?;
        Ok((info.state.first_sequence, info.state.last_sequence))
    }

    /// Removes the entries numbered below `below` (a snapshot covers them); returns how many
    /// were removed. The numbers of the others stay as they were.
    pub async fn trim_below(&self, below: u64) -> Result<u64> {
        let stream = self
            .js
            .get_stream(&self.name)
            .await
            .map_err(|e| ClusterError::broker("trimming a log", e))?;
        let r = stream
            .purge()
            .sequence(below)
            .await
            .map_err(|e| ClusterError::broker("trimming a log", e))?;
        Ok(r.purged)
    }

    /// When the stream was created, as the broker says (RFC 3339): a stream deleted and
    /// created again under the same name has another.
    pub async fn created(&self) -> Result<String> {
        let mut stream = self
            .js
            .get_stream(&self.name)
            .await
            .map_err(|e| ClusterError::broker("reading a log's state", e))?;
        let info = stream
            .info()
            .await
            .map_err(|e| ClusterError::broker("reading a log's state", e))?;
        Ok(info.created.to_string())
    }

    /// The entries from number `start` on, in order, as they are appended (the stream never
    /// ends by itself). Refused with [`ClusterError::Trimmed`] when the log no longer holds
    /// `start`, and with [`ClusterError::Behind`] when it ends before `start - 1` (it was
    /// lost or re-created: its next entries are not the reader's next ones).
    pub async fn read_from(
        &self,
        start: u64,
    ) -> Result<impl Stream<Item = Result<(u64, Bytes)>> + Send + 'static> {
        let (first, last) = self.bounds().await?;
        if start > last + 1 {
            return Err(ClusterError::Behind {
                stream: self.name.clone(),
                last,
                wanted: start,
            });
        }
        if start < first {
            return Err(ClusterError::Trimmed {
                stream: self.name.clone(),
                first,
                wanted: start,
            });
        }
        let stream = self
            .js
            .get_stream(&self.name)
            .await
            .map_err(|e| ClusterError::broker("opening a log", e))?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start.max(1),
                },
                // Pulls of at most this long carry idle heartbeats of half of it: a consumer
                // lost with its server (a stream leader killed) is noticed after two missed
                // ones and made again from the next entry, in seconds rather than the
                // client's default half-minute.
                max_expires: READ_EXPIRES,
                ..Default::default()
            })
            .await
            .map_err(|e| ClusterError::broker("starting to read a log", e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| ClusterError::broker("starting to read a log", e))?;
        Ok(messages.map(move |m| {
            let m = m.map_err(|e| ClusterError::broker("reading a log", e))?;
            let seq = m
                .info()
                .map_err(|e| ClusterError::broker("reading a log entry's number", e))?
                .stream_sequence;
            Ok((seq, m.payload.clone()))
        }))
    }

    /// The message id entry `seq` was appended under (`None`: no such entry, or none given).
    pub async fn message_id_at(&self, seq: u64) -> Result<Option<String>> {
        let stream = self
            .js
            .get_stream(&self.name)
            .await
            .map_err(|e| ClusterError::broker("opening a log", e))?;
        match stream.get_raw_message(seq).await {
            Ok(m) => Ok(m
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str().to_string())),
            Err(e)
                if e.kind()
                    == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound =>
            {
                Ok(None)
            }
            Err(e) => Err(ClusterError::broker("reading a log entry", e)),
        }
    }

    /// Deletes the stream (a dropped collection's log).
    pub async fn delete(&self) -> Result<()> {
        self.js
            .delete_stream(&self.name)
            .await
            .map_err(|e| ClusterError::broker("deleting a log", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_escape_distinctly() {
        assert_eq!(escape("docs"), "docs");
        assert_eq!(escape("a.b"), "a_2eb");
        assert_ne!(escape("a_2eb"), escape("a.b"));
        assert_eq!(escape("x-y_z"), "x-y_5fz");
    }
}
