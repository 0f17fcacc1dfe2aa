//! Leases: a key in the `QUIVER_LEASES` key-value bucket that one node at a time holds, so
//! that one node decides something for everyone (which node trains a shard). A node takes a
//! lease by creating its key (compare-and-set: it fails while another holds it), renews it
//! every [`RENEW`] by updating the revision it wrote, and deletes it when done; the bucket
//! forgets a key [`TTL`] after its last write, so the lease of a node that died frees
//! itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use tokio::sync::watch;

use crate::error::{ClusterError, Result};

/// The bucket's name.
pub const BUCKET: &str = "QUIVER_LEASES";
/// A lease not renewed for this long is free.
pub const TTL: Duration = Duration::from_secs(30);
/// How often a holder renews its lease.
pub const RENEW: Duration = Duration::from_secs(5);

/// The leases bucket.
#[derive(Clone)]
pub struct Leases {
    kv: kv::Store,
}

/// A lease held by this node, renewed until [`Lease::release`] (or dropped: renewing stops
/// with its stop channel, and it lapses after [`TTL`]).
pub struct Lease {
    kv: kv::Store,
    key: String,
    held: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    renewing: tokio::task::JoinHandle<u64>,
}

impl Leases {
    /// Opens the bucket, creating it (`replicas` copies) if missing.
    pub async fn open(js: &async_nats::jetstream::Context, replicas: usize) -> Result<Leases> {
        let cfg = kv::Config {
            bucket: BUCKET.into(),
            description: "Quiver leases: which node decides for a shard".into(),
            history: 1,
            max_age: TTL,
            num_replicas: replicas.max(1),
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        };
        let kv = crate::bucket::key_value(js, cfg, "opening the leases bucket").await?;
        Ok(Leases { kv })
    }

    /// Takes the lease `key` for `holder`; `Err(holder)` names the node holding it already.
    pub async fn acquire(
        &self,
        key: &str,
        holder: &str,
    ) -> Result<std::result::Result<Lease, String>> {
        match self.kv.create(key, holder.to_string().into()).await {
            Ok(revision) => {
                let held = Arc::new(AtomicBool::new(true));
                let (stop, stop_rx) = watch::channel(false);
                let renewing = tokio::spawn(renew(
                    self.kv.clone(),
                    key.to_string(),
                    holder.to_string(),
                    revision,
                    held.clone(),
                    stop_rx,
                ));
                Ok(Ok(Lease {
                    kv: self.kv.clone(),
                    key: key.to_string(),
                    held,
                    stop,
                    renewing,
                }))
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let holder = match self.kv.get(key).await {
                    Ok(Some(v)) => String::from_utf8_lossy(&v).into_owned(),
                    _ => "another node".into(),
                };
                Ok(Err(holder))
            }
            Err(e) => Err(ClusterError::broker("taking a lease", e)),
        }
    }
}

impl Lease {
    /// Whether the lease is still held (every renewal so far succeeded).
    pub fn held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    /// Gives the lease up (if it is still this node's).
    pub async fn release(self) {
        let _ = self.stop.send(true);
        let revision = self.renewing.await.unwrap_or(0);
        if revision > 0 && self.held.load(Ordering::Acquire) {
            if let Err(e) = self
                .kv
                .delete_expect_revision(&self.key, Some(revision))
                .await
            {
                tracing::debug!(key = %self.key, error = %e, "releasing a lease failed; it lapses by itself");
            }
        }
    }
}

/// Renews the lease every [`RENEW`] until stopped; returns the last revision written (0 once
/// the lease was lost: another node wrote the key, or no renewal got through for nearly
/// [`TTL`], so it may lapse and be another's). A renewal that fails (a broker electing a
/// leader) is tried again every second until then.
async fn renew(
    kv: kv::Store,
    key: String,
    holder: String,
    mut revision: u64,
    held: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) -> u64 {
    let mut renewed = tokio::time::Instant::now();
    let mut next = RENEW;
    loop {
        tokio::select! {
            _ = stop.changed() => return revision,
            _ = tokio::time::sleep(next) => {}
        }
        match kv.update(&key, holder.clone().into(), revision).await {
            Ok(r) => {
                revision = r;
                renewed = tokio::time::Instant::now();
                next = RENEW;
            }
            Err(e) => {
                let taken = e.kind() == kv::UpdateErrorKind::WrongLastRevision;
                if taken || renewed.elapsed() + RENEW >= TTL {
                    tracing::warn!(key = %key, error = %e, "a lease was lost");
                    held.store(false, Ordering::Release);
                    return 0;
                }
                tracing::debug!(key = %key, error = %e, "renewing a lease failed; retrying");
                next = Duration::from_secs(1);
            }
        }
    }
}
