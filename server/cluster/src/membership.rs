//! Which nodes are up: every node puts its id into the `QUIVER_NODES` key-value bucket every
//! [`HEARTBEAT`] and watches the bucket; a node not heard from for [`LIVE_FOR`] is taken as
//! down (its replicas are asked last), and one that stops cleanly deletes its key. The bucket
//! keeps a key for [`KEEP`], so a node killed without a goodbye leaves it soon after. Liveness
//! is judged by when this node received a heartbeat, never by another machine's clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::error::Result;

/// The bucket's name.
pub const BUCKET: &str = "QUIVER_NODES";
/// How often a node says it is up.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// A node not heard from for this long is taken as down.
pub const LIVE_FOR: Duration = Duration::from_secs(3);
/// How long the bucket keeps a heartbeat.
pub const KEEP: Duration = Duration::from_secs(10);

/// Checks a node id: 1 to 64 of `[A-Za-z0-9_-]` (it is a NATS subject token and a key).
pub fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// This node's view of which nodes are up.
#[derive(Clone)]
pub struct Membership {
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    me: String,
}

impl Membership {
    /// Opens the bucket (created with `replicas` copies if missing) and starts heartbeating
    /// as `me` and watching the others until `stop` turns true.
    pub async fn start(
        js: &async_nats::jetstream::Context,
        me: &str,
        replicas: usize,
        stop: watch::Receiver<bool>,
    ) -> Result<Membership> {
        let cfg = kv::Config {
            bucket: BUCKET.into(),
            description: "Quiver nodes that are up (heartbeats)".into(),
            history: 1,
            max_age: KEEP,
            num_replicas: replicas.max(1),
            storage: async_nats::jetstream::stream::StorageType::Memory,
            ..Default::default()
        };
        let store = crate::bucket::key_value(js, cfg, "opening the nodes bucket").await?;
        let m = Membership {
            seen: Arc::new(Mutex::new(HashMap::new())),
            me: me.to_string(),
        };
        m.mark(me);
        tokio::spawn(heartbeat(store.clone(), me.to_string(), stop.clone()));
        tokio::spawn(watch_nodes(store, m.clone(), stop));
        Ok(m)
    }

    fn mark(&self, node: &str) {
        if let Ok(mut s) = self.seen.lock() {
            s.insert(node.to_string(), Instant::now());
        }
    }

    fn forget(&self, node: &str) {
        if let Ok(mut s) = self.seen.lock() {
            s.remove(node);
        }
    }

    /// Whether `node` was heard from within [`LIVE_FOR`] (this node always is).
    pub fn is_live(&self, node: &str) -> bool {
        node == self.me
            || self
                .seen
                .lock()
                .ok()
                .and_then(|s| s.get(node).map(|t| t.elapsed() < LIVE_FOR))
                .unwrap_or(false)
    }

    /// The nodes that are up, sorted.
    pub fn live(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .seen
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|(n, t)| *n == &self.me || t.elapsed() < LIVE_FOR)
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// Puts `me` into the bucket every [`HEARTBEAT`]; deletes it when stopped.
async fn heartbeat(store: kv::Store, me: String, mut stop: watch::Receiver<bool>) {
    loop {
        if let Err(e) = store.put(&me, bytes::Bytes::from_static(b"up")).await {
            tracing::debug!(error = %e, "heartbeat not stored; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = stop.changed() => {
                let _ = store.delete(&me).await;
                return;
            }
        }
        if *stop.borrow() {
            let _ = store.delete(&me).await;
            return;
        }
    }
}

/// Whether a heartbeat stored at `created` is younger than [`LIVE_FOR`].
fn recent(created: impl Into<std::time::SystemTime>) -> bool {
    std::time::SystemTime::now()
        .duration_since(created.into())
        .map_or(true, |age| age < LIVE_FOR)
}

/// Follows the bucket into `m` (watching again after a broker failover).
async fn watch_nodes(store: kv::Store, m: Membership, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        match store.watch_with_history(">").await {
            Ok(mut entries) => loop {
                let e = tokio::select! {
                    _ = stop.changed() => return,
                    e = entries.next() => e,
                };
                match e {
                    Some(Ok(e)) => match e.operation {
                        // A heartbeat replayed from the bucket's history may be a node's
                        // last before it died: only a recent one counts (by the broker's
                        // clock against this machine's: skew shortens or lengthens it).
                        kv::Operation::Put if recent(e.created) => m.mark(&e.key),
                        kv::Operation::Put => {}
                        kv::Operation::Delete | kv::Operation::Purge => m.forget(&e.key),
                    },
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "watching the nodes bucket failed; watching again");
                        break;
                    }
                    None => break,
                }
            },
            Err(e) => tracing::debug!(error = %e, "watching the nodes bucket failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_subject_tokens() {
        assert!(valid_node_id("node-1_a"));
        for bad in ["", "a.b", "a b", "a*", "a>", &"x".repeat(65)] {
            assert!(!valid_node_id(bad), "{bad:?}");
        }
    }
}
