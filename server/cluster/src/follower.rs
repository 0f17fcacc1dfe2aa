//! A replica following its shard's log: applies each op with its log number
//! ([`quiver_store::Collection::apply`]) from the replica's last applied op on, so a restarted
//! replica catches up from where its store says it is, and an op delivered twice is applied
//! once. A broker that goes away (restart, failover) is waited for and reading resumes; a
//! damaged entry, a log trimmed past the replica, or a store failure stops it with that error.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use quiver_engine::backend::Backend;
use quiver_store::Collection;
use tokio::sync::watch;

use crate::error::{ClusterError, Result};
use crate::shard_log::ShardLog;

/// Longest wait between attempts to read a log that is not reachable.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A running follower; stopped by [`Follower::stop`] (or when dropped: its stop channel closes).
pub struct Follower {
    applied: watch::Receiver<u64>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Follower {
    /// Starts applying `log` to `replica` (a collection created as a replica) on the current
    /// tokio runtime.
    pub fn start<B: Backend + Clone + Send + Sync + 'static>(
        log: ShardLog,
        replica: Arc<Collection<B>>,
    ) -> Follower {
        let (applied_tx, applied) = watch::channel(replica.last_seq());
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(log, replica, applied_tx, stop_rx));
        Follower {
            applied,
            stop,
            task,
        }
    }

    /// The number of the last op applied.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Waits until the op numbered `seq` is applied; an error if the follower stopped first
    /// ([`Self::stop`] says why).
    pub async fn wait_for(&mut self, seq: u64) -> Result<()> {
        loop {
            if *self.applied.borrow_and_update() >= seq {
                return Ok(());
            }
            if self.applied.changed().await.is_err() {
                return Err(ClusterError::Broker {
                    context: "following the log",
                    reason: format!(
                        "the follower stopped at {} before {seq}",
                        *self.applied.borrow()
                    ),
                });
            }
        }
    }

    /// Stops following (after the op being applied, if any) and returns why it had stopped
    /// by itself, if it had.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(ClusterError::Broker {
                context: "following the log",
                reason: format!("the follower's task failed: {e}"),
            }),
        }
    }
}

async fn run<B: Backend + Clone + Send + Sync + 'static>(
    log: ShardLog,
    replica: Arc<Collection<B>>,
    applied: watch::Sender<u64>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let mut backoff = Duration::from_millis(50);
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let next = replica.last_seq() + 1;
        match log.read_from(next).await {
            Ok(entries) => {
                let mut entries = std::pin::pin!(entries);
                loop {
                    let entry = tokio::select! {
                        _ = stop.changed() => return Ok(()),
                        e = entries.next() => e,
                    };
                    let (seq, op) = match entry {
                        None => break,
                        Some(Ok(e)) => e,
                        Some(Err(e @ ClusterError::BadEntry { .. })) => return Err(e),
                        Some(Err(e)) => {
                            tracing::warn!(log = log.stream(), error = %e, "reading the log failed; resuming");
                            break;
                        }
                    };
                    let expected = replica.last_seq() + 1;
                    if seq < expected {
                        continue;
                    }
                    if seq > expected {
                        tracing::warn!(
                            log = log.stream(),
                            seq,
                            expected,
                            "the log skipped entries; reading again from the next one"
                        );
                        break;
                    }
                    let r = replica.clone();
                    let done = tokio::task::spawn_blocking(move || r.apply(seq, vec![op]))
                        .await
                        .map_err(|e| ClusterError::Broker {
                            context: "applying an op",
                            reason: e.to_string(),
                        })??;
                    applied.send_replace(done.last_seq);
                    backoff = Duration::from_millis(50);
                }
            }
            Err(e @ ClusterError::Trimmed { .. }) => return Err(e),
            Err(e) => {
                tracing::warn!(log = log.stream(), error = %e, "the log is not reachable; retrying");
            }
        }
        tokio::select! {
            _ = stop.changed() => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
