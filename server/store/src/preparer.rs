//! Prepares a collection's segments on one backend so that they share what derives from the
//! quantizers alone: every IVF-PQ segment of a collection is encoded with the same trained
//! quantizers, so their prepared tables (CPU: centroid norms, packed centroids, L2 list terms;
//! a device: the uploaded centroids, codebook and L2 terms) are made once and each new or
//! merged segment adds only its own lists (on a device: uploads only its own bytes).

use std::sync::Arc;

use parking_lot::Mutex;
use quiver_engine::backend::{Backend, PreparedIndex};
use quiver_engine::{EngineError, IvfPqIndex};

/// Prepares segments on `B`, keeping one template per set of quantizers.
pub struct Preparer<B: Backend> {
    backend: B,
    /// An empty index of the current quantizers, prepared: what segments share. Replaced
    /// when an index with other quantizers arrives (a retrained collection).
    template: Mutex<Option<B::Prepared>>,
}

impl<B: Backend> Preparer<B> {
    /// A preparer on `backend`.
    pub fn new(backend: B) -> Self {
        Preparer {
            backend,
            template: Mutex::new(None),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Prepares `index`, sharing the quantizers' prepared data with every earlier index of
    /// the same quantizers ([`Backend::refresh`] from the template).
    pub fn prepare(&self, index: Arc<IvfPqIndex>) -> Result<B::Prepared, EngineError> {
        let mut t = self.template.lock();
        if let Some(tp) = t.as_ref() {
            if tp.index().shares_quantizers_with(&index) {
                return self.backend.refresh(tp, index);
            }
        }
        let empty = Arc::new(index.empty_like());
        let p = self.backend.prepare(index)?;
        *t = Some(self.backend.refresh(&p, empty)?);
        Ok(p)
    }
}

impl<B: Backend + Default> Default for Preparer<B> {
    fn default() -> Self {
        Preparer::new(B::default())
    }
}
