//! The CPU side of a collection's IVF-PQ segments: one set of precomputed quantizer tables
//! (L2 list terms, packed centroids) shared by every segment prepared on the CPU (the
//! appendable one, and sealed ones on the CPU backend), and the encoding of new points through
//! the packed coarse search.

use std::sync::Arc;

use quiver_engine::backend::cpu::{CpuBackend, CpuPrepared};
use quiver_engine::backend::Backend;
use quiver_engine::index::EncodedRows;
use quiver_engine::{EngineError, IvfPqIndex, Metric};

use crate::preparer::Preparer;

/// Shared CPU preparation of one collection's segments.
#[derive(Default)]
pub struct CpuCache {
    prep: Preparer<CpuBackend>,
}

impl CpuCache {
    /// The CPU backend.
    pub fn backend(&self) -> &CpuBackend {
        self.prep.backend()
    }

    /// Prepares `index` for CPU searches, reusing the tables of earlier segments with the same
    /// quantizers.
    pub fn prepare(&self, index: Arc<IvfPqIndex>) -> Result<CpuPrepared, EngineError> {
        self.prep.prepare(index)
    }

    /// Checks, normalises (cosine) and encodes vectors for `quantizers`: each assigned to its
    /// nearest list by the CPU's packed coarse search, then PQ-encoded.
    pub fn encode(
        &self,
        quantizers: &Arc<IvfPqIndex>,
        metric: Metric,
        vectors: &[f32],
    ) -> Result<EncodedRows, EngineError> {
        let prepared = quiver_engine::index::prepare_vectors(metric, quantizers.dim(), vectors)?;
        let template = self.prepare(quantizers.clone())?;
        let probes = self.backend().coarse_search(&template, &prepared, 1)?;
        Ok(quantizers.encode_assigned(&prepared, probes.lists))
    }
}
