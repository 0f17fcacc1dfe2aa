//! Request ids: the id a front-end gave a caller's request (the caller's `x-request-id`, or
//! one made up), carried with every request a node sends a replica on its behalf
//! ([`crate::rpc::ShardRef::request_id`]) and named in both nodes' logs, so one request can be
//! followed from the node that took it to each shard that answered it.
//!
//! The front-end runs the request's handling in [`scope`]; the node reads it back with
//! [`current`] when it builds a replica request.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Runs `f` as the handling of request `id`.
pub async fn scope<F: Future>(id: String, f: F) -> F::Output {
    REQUEST_ID.scope(id, f).await
}

/// The id of the request being handled, if any.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(|id| id.clone()).ok()
}

/// Whether a caller's id is taken as given: 1 to 64 of `A-Z a-z 0-9 - _ . :` (anything else is
/// replaced by one made up, so logs never carry a caller's arbitrary bytes).
pub fn valid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A new id, unique to this process: the time it started (hex nanoseconds) and a counter.
pub fn new_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let start = START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    });
    format!("q{:x}-{}", start, NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_made_up_are_valid_and_distinct() {
        let (a, b) = (new_id(), new_id());
        assert!(valid(&a) && valid(&b));
        assert_ne!(a, b);
        for bad in ["", "a b", "x\ny", "é", &"a".repeat(65)] {
            assert!(!valid(bad), "{bad:?}");
        }
        assert!(valid("req-42_a.b:c"));
    }

    #[tokio::test]
    async fn the_id_is_seen_inside_its_scope_only() {
        assert_eq!(current(), None);
        let inside = scope("r-1".into(), async {
            tokio::task::yield_now().await;
            current()
        })
        .await;
        assert_eq!(inside.as_deref(), Some("r-1"));
        assert_eq!(current(), None);
    }
}
