//! What a collection searches: a flat (exact) index before training, an IVF-PQ index prepared
//! on a backend after. A segment is immutable once published; writers build the next version
//! (cheap copy-on-write clones) and swap it in, so searches never wait for writes.

use std::sync::Arc;

use crate::backend::{AnyBackend, AnyPrepared};
use parking_lot::RwLock;
use quiver_engine::backend::{Backend, Neighbors, PreparedIndex, SearchParams};
use quiver_engine::progress::NoProgress;
use quiver_engine::{EngineError, FlatIndex, IvfPqIndex, RefineKind};

/// Search parameters as a client sent them; zeros mean "the server's default", resolved against
/// the segment that runs the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SearchKey {
    /// Neighbours per query.
    pub k: usize,
    /// Lists probed (0: default).
    pub nprobe: usize,
    /// Refine factor (0: default).
    pub refine_factor: usize,
}

/// Default nprobe: min(32, nlist).
pub const DEFAULT_NPROBE: usize = 32;
/// Default refine factor when raw vectors are kept.
pub const DEFAULT_REFINE_FACTOR: usize = 10;

/// A searchable version of a collection's data.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per collection version, never in bulk
pub enum Segment {
    /// Exact search over raw vectors (untrained collection).
    Flat(FlatIndex),
    /// IVF-PQ index prepared on the server's backend.
    Ivf(AnyBackend, AnyPrepared),
}

impl Segment {
    /// Live vectors.
    pub fn len(&self) -> usize {
        match self {
            Segment::Flat(f) => f.len(),
            Segment::Ivf(_, p) => p.index().len(),
        }
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// True for a trained (IVF-PQ) segment.
    pub fn trained(&self) -> bool {
        matches!(self, Segment::Ivf(..))
    }
    /// Bytes of vectors, codes and centroids.
    pub fn data_bytes(&self) -> usize {
        match self {
            Segment::Flat(f) => f.data_bytes(),
            Segment::Ivf(_, p) => p.index().data_bytes(),
        }
    }
    /// nlist of a trained segment.
    pub fn nlist(&self) -> Option<usize> {
        match self {
            Segment::Flat(_) => None,
            Segment::Ivf(_, p) => Some(p.index().nlist()),
        }
    }

    /// The engine parameters a key resolves to on this segment.
    pub fn resolve(&self, key: SearchKey) -> SearchParams {
        match self {
            Segment::Flat(_) => SearchParams {
                k: key.k,
                nprobe: 1,
                refine_factor: 1,
            },
            Segment::Ivf(_, p) => {
                let index = p.index();
                let nprobe = if key.nprobe == 0 {
                    DEFAULT_NPROBE.min(index.nlist())
                } else {
                    key.nprobe
                };
                let refine_factor = match (key.refine_factor, index.params().refine) {
                    (0, RefineKind::None) => 1,
                    (0, _) => DEFAULT_REFINE_FACTOR,
                    (r, _) => r,
                };
                SearchParams {
                    k: key.k,
                    nprobe,
                    refine_factor,
                }
            }
        }
    }

    /// Searches a batch of valid queries.
    pub fn search(&self, queries: &[f32], key: SearchKey) -> Result<Neighbors, EngineError> {
        let params = self.resolve(key);
        match self {
            Segment::Flat(f) => f.search(queries, params.k),
            Segment::Ivf(b, p) => b.search(p, queries, &params),
        }
    }

    /// The next version with vectors upserted.
    pub fn with_upsert(&self, ids: &[u64], vectors: &[f32]) -> Result<Segment, EngineError> {
        match self {
            Segment::Flat(f) => {
                let mut f = f.clone();
                f.upsert(vectors, ids)?;
                Ok(Segment::Flat(f))
            }
            Segment::Ivf(b, p) => {
                let mut index: IvfPqIndex = (**p.index_arc()).clone();
                index.upsert(vectors, ids, &NoProgress)?;
                Ok(Segment::Ivf(b.clone(), b.refresh(p, Arc::new(index))?))
            }
        }
    }

    /// The next version with ids deleted, and how many were present.
    pub fn with_delete(&self, ids: &[u64]) -> Result<(Segment, usize), EngineError> {
        match self {
            Segment::Flat(f) => {
                let mut f = f.clone();
                let n = f.delete(ids);
                Ok((Segment::Flat(f), n))
            }
            Segment::Ivf(b, p) => {
                let mut index: IvfPqIndex = (**p.index_arc()).clone();
                let n = index.delete(ids);
                Ok((Segment::Ivf(b.clone(), b.refresh(p, Arc::new(index))?), n))
            }
        }
    }
}

/// The published segment of a collection.
#[derive(Debug)]
pub struct SegmentCell(RwLock<Arc<Segment>>);

impl SegmentCell {
    /// A cell holding `segment`.
    pub fn new(segment: Segment) -> Self {
        SegmentCell(RwLock::new(Arc::new(segment)))
    }
    /// The current version (the lock is held only to clone the `Arc`).
    pub fn load(&self) -> Arc<Segment> {
        self.0.read().clone()
    }
    /// Publishes a new version.
    pub fn store(&self, segment: Segment) {
        *self.0.write() = Arc::new(segment);
    }
}
