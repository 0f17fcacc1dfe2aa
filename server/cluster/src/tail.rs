//! Following a log: apply its entries in order from the target's next number, through broker
//! restarts and failovers (read again from the next number, with back-off), until stopped.
//! An entry below the next number (a consumer the client rebuilt from the start, or a log
//! re-created) makes it read again from the next number, where the log's bounds are checked;
//! a damaged entry, entries missing, a log trimmed past the target or ending before it stop
//! it with that error, as does a failure to apply (but for one to reach the broker, which is
//! retried). The shard follower and the node's catalog
//! follower are this with their targets.

use std::future::Future;
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::error::{ClusterError, Result};

/// How long a reader may go without an entry before the log's end is checked.
const STALL_CHECK: Duration = Duration::from_secs(2);

/// Longest wait between attempts to read a log that is not reachable.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A log's entries from some number on, with their numbers.
pub(crate) type Entries<E> = BoxStream<'static, Result<(u64, E)>>;

/// What a log is applied to.
pub(crate) trait Target: Send + Sync + 'static {
    /// An entry of the log.
    type Entry: Send + 'static;
    /// The log, for messages.
    fn log_name(&self) -> String;
    /// The number of the next entry to apply.
    fn next_seq(&self) -> u64;
    /// The log's entries from `start` on.
    fn read(&self, start: u64) -> impl Future<Output = Result<Entries<Self::Entry>>> + Send;
    /// The number of the log's last entry.
    fn last_seq(&self) -> impl Future<Output = Result<u64>> + Send;
    /// Applies entry `seq` (the next one).
    fn apply(&self, seq: u64, entry: Self::Entry) -> impl Future<Output = Result<()>> + Send;
}

/// Applies `target`'s log to it until `stop` turns true (or its sender goes).
pub(crate) async fn follow<T: Target>(target: T, mut stop: watch::Receiver<bool>) -> Result<()> {
    let mut backoff = Duration::from_millis(50);
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        match target.read(target.next_seq()).await {
            Ok(mut entries) => loop {
                let entry = tokio::select! {
                    _ = stop.changed() => return Ok(()),
                    e = entries.next() => e,
                    // Nothing came for a while: if the log holds entries not applied, the
                    // reader is stuck (its consumer lost with a server, not yet noticed by
                    // the client): read again.
                    _ = tokio::time::sleep(STALL_CHECK) => {
                        let last = tokio::select! {
                            _ = stop.changed() => return Ok(()),
                            last = target.last_seq() => last,
                        };
                        match last {
                            Ok(last) if last >= target.next_seq() => {
                                tracing::warn!(log = %target.log_name(), last, next = target.next_seq(), "the log's reader stalled; reading again");
                                break;
                            }
                            _ => continue,
                        }
                    }
                };
                let (seq, entry) = match entry {
                    None => break,
                    Some(Ok(e)) => e,
                    Some(Err(e)) if e.ends_following() => return Err(e),
                    Some(Err(e)) => {
                        tracing::warn!(log = %target.log_name(), error = %e, "reading the log failed; resuming");
                        break;
                    }
                };
                let expected = target.next_seq();
                if seq < expected {
                    // Read again from the next number, the log's bounds checked.
                    break;
                }
                if seq > expected {
                    return Err(ClusterError::Gap {
                        stream: target.log_name(),
                        expected,
                        got: seq,
                    });
                }
                match target.apply(seq, entry).await {
                    Ok(()) => {}
                    // What the entry needs from the broker (a training's quantizers) could
                    // not be read: read again from this entry.
                    Err(e @ ClusterError::Broker { .. }) => {
                        tracing::warn!(log = %target.log_name(), seq, error = %e, "applying an entry needs the broker; retrying");
                        break;
                    }
                    Err(e) => return Err(e),
                }
                backoff = Duration::from_millis(50);
            },
            Err(e) if e.ends_following() => return Err(e),
            Err(e) => {
                tracing::warn!(log = %target.log_name(), error = %e, "the log is not reachable; retrying");
            }
        }
        tokio::select! {
            _ = stop.changed() => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
