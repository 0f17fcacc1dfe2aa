//! A replica following its shard's log: applies each op with its log number
//! ([`quiver_store::Collection::apply`]), and each training by fetching its quantizers from
//! the artifacts bucket and switching to them at that number
//! ([`quiver_store::Collection::apply_train`]), from the replica's last applied op on, so a restarted
//! replica catches up from where its store says it is, and an op delivered twice is applied
//! once. A broker that goes away (restart, failover) is waited for and reading resumes; a
//! damaged entry, missing entries, a log trimmed past the replica or ending before it, or a
//! store failure stops it with that error.

use std::sync::Arc;

use futures_util::StreamExt;
use quiver_engine::backend::Backend;
use quiver_store::Collection;
use tokio::sync::watch;

use crate::artifacts::Artifacts;
use crate::error::{ClusterError, Result};
use crate::shard_log::{ShardEntry, ShardLog, TrainEntry};
use crate::tail::{follow, Entries, Target};

/// A running follower; stopped by [`Follower::stop`] (or when dropped: its stop channel closes).
pub struct Follower {
    applied: watch::Receiver<u64>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Follower {
    /// Starts applying `log` to `replica` (a collection created as a replica) on the current
    /// tokio runtime, with trainings' quantizers read from `artifacts`.
    pub fn start<B: Backend + Clone + Send + Sync + 'static>(
        log: ShardLog,
        replica: Arc<Collection<B>>,
        artifacts: Artifacts,
    ) -> Follower {
        let (applied_tx, applied) = watch::channel(replica.last_seq());
        let (stop, stop_rx) = watch::channel(false);
        let target = ShardTarget {
            log,
            replica,
            artifacts,
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
    artifacts: Artifacts,
    applied: watch::Sender<u64>,
}

impl<B: Backend + Clone + Send + Sync + 'static> ShardTarget<B> {
    /// A task applying an entry failed (panicked): the follower stops (retrying would not
    /// help).
    fn failed_task(&self, what: &str, e: tokio::task::JoinError) -> ClusterError {
        ClusterError::Unavailable {
            name: self.log.stream().to_string(),
            reason: format!("{what} failed: {e}"),
        }
    }

    /// Switches the replica to the quantizers of training entry `seq`.
    async fn apply_train(&self, seq: u64, train: &TrainEntry) -> Result<quiver_store::Applied> {
        let scratch = tempfile::Builder::new()
            .prefix("quiver-quantizers-")
            .tempfile()
            .map_err(|e| ClusterError::Unavailable {
                name: self.log.stream().to_string(),
                reason: format!("a scratch file for a training's quantizers: {e}"),
            })?;
        // The broker not answering is retried by the reader; a missing or damaged artifact
        // stops the follower (the replica then answers no read).
        self.artifacts
            .get_file(&train.object, scratch.path())
            .await?;
        let r = self.replica.clone();
        let stream = self.log.stream().to_string();
        let done = tokio::task::spawn_blocking(move || {
            let quantizers = quiver_engine::persist::load(scratch.path()).map_err(|e| {
                ClusterError::BadEntry {
                    stream,
                    seq,
                    reason: format!("the training's quantizers: {e}"),
                }
            })?;
            Ok::<_, ClusterError>(r.apply_train(seq, &quantizers)?)
        })
        .await
        .map_err(|e| self.failed_task("applying a training", e))??;
        Ok(done)
    }
}

impl<B: Backend + Clone + Send + Sync + 'static> Target for ShardTarget<B> {
    type Entry = ShardEntry;

    fn log_name(&self) -> String {
        self.log.stream().to_string()
    }

    fn next_seq(&self) -> u64 {
        self.replica.last_seq() + 1
    }

    async fn read(&self, start: u64) -> Result<Entries<ShardEntry>> {
        Ok(self.log.read_from(start).await?.boxed())
    }

    async fn last_seq(&self) -> Result<u64> {
        Ok(self.log.bounds().await?.1)
    }

    async fn apply(&self, seq: u64, entry: ShardEntry) -> Result<()> {
        let done = match entry {
            ShardEntry::Op(op) => {
                let r = self.replica.clone();
                tokio::task::spawn_blocking(move || r.apply(seq, vec![op]))
                    .await
                    .map_err(|e| self.failed_task("applying an op", e))??
            }
            ShardEntry::Train(t) => self.apply_train(seq, &t).await?,
        };
        self.applied.send_replace(done.last_seq);
        Ok(())
    }
}
