//! A served collection: the store's collection (durable state, segments, search) and the
//! micro-batcher that feeds it searches. Everything about files and segments is the store's
//! (`quiver_store`); this adds only what the service needs.

use std::sync::Arc;

use parking_lot::Mutex;
use tonic::Status;

use crate::backend::AnyBackend;
use crate::batcher::{Batcher, Job};

/// The store's collection, on the server's backend.
pub type StoreCollection = quiver_store::Collection<AnyBackend>;

/// One collection of the server.
pub struct Collection {
    /// Its durable state.
    pub store: Arc<StoreCollection>,
    batcher: Mutex<Option<Batcher>>,
}

impl Collection {
    /// Wraps a store collection (its batcher starts with [`Collection::start`]).
    pub fn new(store: StoreCollection) -> Self {
        Collection {
            store: Arc::new(store),
            batcher: Mutex::new(None),
        }
    }

    /// Starts the collection's batcher (needs a Tokio runtime).
    pub fn start(
        &self,
        name: &str,
        cfg: crate::config::BatchingConfig,
        metrics: crate::metrics::Metrics,
    ) {
        metrics
            .vectors
            .with_label_values(&[name])
            .set(self.store.version().len() as i64);
        *self.batcher.lock() = Some(Batcher::spawn(
            name.to_string(),
            self.store.clone(),
            cfg,
            metrics,
        ));
    }

    /// Queues a search.
    pub fn submit(&self, job: Job) -> Result<(), Status> {
        match self.batcher.lock().as_ref() {
            Some(b) => b.submit(job),
            None => Err(Status::unavailable("the collection is shutting down")),
        }
    }

    /// Stops the batcher after answering what is queued.
    pub async fn drain(&self) {
        let batcher = self.batcher.lock().take();
        if let Some(b) = batcher {
            b.drain().await;
        }
    }
}
