//! A replica following its shard's log: applies each op with its log number
//! ([`quiver_store::Collection::apply`]) from the replica's last applied op on, so a restarted
//! replica catches up from where its store says it is, and an op delivered twice is applied
//! once. A broker that goes away (restart, failover) is waited for and reading resumes; a
//! damaged entry, missing entries, a log trimmed past the replica or ending before it, or a
//! store failure stops it with that error.

use std::sync::Arc;

use futures_util::StreamExt;
use quiver_engine::backend::Backend;
use quiver_store::wal::Op;
use quiver_store::Collection;
use tokio::sync::watch;

use crate::error::{ClusterError, Result};
use crate::shard_log::ShardLog;
use crate::tail::{follow, Entries, Target};

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
        let target = ShardTarget {
            log,
            replica,
            applied: applied_tx,
        };
        let task = tokio::spawn(follow(target, stop_rx));
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

    /// Whether it has stopped by itself (an error [`Self::stop`] returns).
    pub fn has_stopped(&self) -> bool {
        self.task.is_finished()
    }

    /// A watch of the number of the last op applied.
    pub fn progress(&self) -> watch::Receiver<u64> {
        self.applied.clone()
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

/// A replica as the target of its shard's log.
struct ShardTarget<B: Backend + Clone + Send + Sync + 'static> {
    log: ShardLog,
    replica: Arc<Collection<B>>,
    applied: watch::Sender<u64>,
}

impl<B: Backend + Clone + Send + Sync + 'static> Target for ShardTarget<B> {
    type Entry = Op;

    fn log_name(&self) -> String {
        self.log.stream().to_string()
    }

    fn next_seq(&self) -> u64 {
        self.replica.last_seq() + 1
    }

    async fn read(&self, start: u64) -> Result<Entries<Op>> {
        Ok(self.log.read_from(start).await?.boxed())
    }

    async fn last_seq(&self) -> Result<u64> {
        Ok(self.log.bounds().await?.1)
    }

    async fn apply(&self, seq: u64, op: Op) -> Result<()> {
        let r = self.replica.clone();
        let done = tokio::task::spawn_blocking(move || r.apply(seq, vec![op]))
            .await
            .map_err(|e| ClusterError::broker("applying an op", e))??;
        self.applied.send_replace(done.last_seq);
        Ok(())
    }
}
