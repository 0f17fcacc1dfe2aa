//! Opening the key-value buckets the nodes share (leases, heartbeats, snapshot records): the
//! bucket if it exists, else created with its configuration; a node that loses the race to
//! create it opens the one the winner made.

use async_nats::jetstream::kv;

use crate::error::{ClusterError, Result};

/// Opens the key-value bucket `cfg.bucket`, creating it with `cfg` if missing; `what` names it
/// in errors ("the leases bucket").
pub(crate) async fn key_value(
    js: &async_nats::jetstream::Context,
    cfg: kv::Config,
    what: &'static str,
) -> Result<kv::Store> {
    if let Ok(store) = js.get_key_value(&cfg.bucket).await {
        return Ok(store);
    }
    let bucket = cfg.bucket.clone();
    match js.create_key_value(cfg).await {
        Ok(store) => Ok(store),
        // Another node created it meanwhile.
        Err(create) => js
            .get_key_value(&bucket)
            .await
            .map_err(|e| ClusterError::broker(what, format!("{create}; {e}"))),
    }
}
