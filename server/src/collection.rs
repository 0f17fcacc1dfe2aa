//! A collection: its parameters, its published segment, its write path (write-ahead log and
//! snapshots under `DATA_DIR/collections/NAME/`) and its batcher.
//!
//! Files of a collection: `meta.json` (parameters, trained or not), `state.flat` or
//! `state.qvr` (the last snapshot), `wal.log` (writes since). Every method that touches files
//! blocks: the service calls them from `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::AnyBackend;
use parking_lot::Mutex;
use quiver_engine::backend::Backend;
use quiver_engine::io::AtomicFile;
use quiver_engine::progress::NoProgress;
use quiver_engine::{EngineError, FlatIndex, IndexParams, IvfPqIndex, Metric, RefineKind};
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::batcher::Batcher;
use crate::segment::{Segment, SegmentCell};
use crate::status::{from_engine, from_io};
use crate::wal::{sync_dir, Wal, WalRecord};

/// Index parameters of a collection; zeros are chosen at training.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexConfig {
    /// Inverted lists (0: about 4·√n, at least 39 vectors per list).
    pub nlist: u32,
    /// PQ sub-quantizers (0: dim / 8, or the largest divisor of dim up to that).
    pub pq_m: u32,
    /// Raw vectors kept: "none", "f16", "f32".
    pub refine: String,
    /// Training seed.
    pub seed: u64,
}

impl IndexConfig {
    /// The refine kind.
    pub fn refine_kind(&self) -> RefineKind {
        self.refine.parse().unwrap_or(RefineKind::F16)
    }
}

/// `meta.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// Version of this file's layout.
    pub format: u32,
    /// Collection name.
    pub name: String,
    /// Dimension.
    pub dim: usize,
    /// Metric name (`l2`, `ip`, `cosine`).
    pub metric: String,
    /// Index parameters.
    pub index: IndexConfig,
    /// Whether `state.qvr` (trained) or `state.flat` holds the snapshot.
    pub trained: bool,
}

impl Meta {
    /// The metric.
    pub fn metric(&self) -> Metric {
        self.metric.parse().unwrap_or(Metric::L2)
    }
}

struct Writer {
    dir: PathBuf,
    wal: Wal,
}

/// One collection.
pub struct Collection {
    meta: Mutex<Meta>,
    cell: Arc<SegmentCell>,
    writer: Mutex<Option<Writer>>,
    batcher: Mutex<Option<Batcher>>,
    wal_snapshot_bytes: u64,
    backend: AnyBackend,
}

/// Checks a collection name: 1 to 64 of `[A-Za-z0-9_.-]`, not starting with a dot.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

fn write_meta(dir: &Path, meta: &Meta) -> Result<(), Status> {
    let path = dir.join("meta.json");
    let json = serde_json::to_vec_pretty(meta).map_err(|e| Status::internal(e.to_string()))?;
    let mut f = AtomicFile::create(&path).map_err(|e| from_engine(e.into()))?;
    std::io::Write::write_all(f.writer(), &json).map_err(|e| from_io("writing meta.json", e))?;
    f.commit().map_err(|e| from_engine(e.into()))
}

impl Collection {
    /// Creates a new, empty collection in `dir` (which must not exist).
    pub fn create(
        dir: PathBuf,
        meta: Meta,
        wal_snapshot_bytes: u64,
        backend: &AnyBackend,
    ) -> Result<Collection, Status> {
        std::fs::create_dir_all(&dir).map_err(|e| from_io("creating the collection folder", e))?;
        sync_dir(&dir).map_err(|e| from_io("syncing the data folder", e))?;
        write_meta(&dir, &meta)?;
        Self::open(dir, wal_snapshot_bytes, backend)
    }

    /// Opens a collection folder: meta, snapshot, then the write-ahead log replayed on top.
    pub fn open(
        dir: PathBuf,
        wal_snapshot_bytes: u64,
        backend: &AnyBackend,
    ) -> Result<Collection, Status> {
        let raw =
            std::fs::read(dir.join("meta.json")).map_err(|e| from_io("reading meta.json", e))?;
        let meta: Meta = serde_json::from_slice(&raw)
            .map_err(|e| Status::internal(format!("{}: {e}", dir.display())))?;
        let mut segment = if meta.trained {
            let index =
                quiver_engine::persist::load(&dir.join("state.qvr")).map_err(from_engine)?;
            Segment::Ivf(
                backend.clone(),
                backend.prepare(Arc::new(index)).map_err(from_engine)?,
            )
        } else if dir.join("state.flat").exists() {
            Segment::Flat(crate::snapshot::load_flat(&dir.join("state.flat")).map_err(from_engine)?)
        } else {
            Segment::Flat(FlatIndex::new(meta.metric(), meta.dim))
        };
        let wal = Wal::open(&dir.join("wal.log"), |record| {
            let next = match &record {
                WalRecord::Upsert { ids, vectors, .. } => segment.with_upsert(ids, vectors),
                WalRecord::Delete { ids } => segment.with_delete(ids).map(|(s, _)| s),
            };
            segment = next
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            Ok(())
        })
        .map_err(|e| from_io(&format!("replaying {}", dir.join("wal.log").display()), e))?;
        Ok(Collection {
            meta: Mutex::new(meta),
            cell: Arc::new(SegmentCell::new(segment)),
            writer: Mutex::new(Some(Writer { dir, wal })),
            batcher: Mutex::new(None),
            wal_snapshot_bytes,
            backend: backend.clone(),
        })
    }

    /// A read-only collection served from an index file.
    pub fn read_only(
        name: &str,
        path: &Path,
        backend: &AnyBackend,
    ) -> Result<Collection, EngineError> {
        let index = quiver_engine::persist::load(path)?;
        let meta = meta_of(name, &index);
        Ok(Collection {
            meta: Mutex::new(meta),
            cell: Arc::new(SegmentCell::new(Segment::Ivf(
                backend.clone(),
                backend.prepare(Arc::new(index))?,
            ))),
            writer: Mutex::new(None),
            batcher: Mutex::new(None),
            wal_snapshot_bytes: u64::MAX,
            backend: backend.clone(),
        })
    }

    /// Creates a writable collection in `dir` whose starting state is a copy of an index file.
    pub fn import(
        name: &str,
        path: &Path,
        dir: PathBuf,
        wal_snapshot_bytes: u64,
        backend: &AnyBackend,
    ) -> Result<Collection, Status> {
        let index = quiver_engine::persist::load(path).map_err(crate::status::from_client_file)?;
        std::fs::create_dir_all(&dir).map_err(|e| from_io("creating the collection folder", e))?;
        quiver_engine::persist::save(&index, &dir.join("state.qvr")).map_err(from_engine)?;
        write_meta(&dir, &meta_of(name, &index))?;
        sync_dir(&dir).map_err(|e| from_io("syncing the collection folder", e))?;
        Self::open(dir, wal_snapshot_bytes, backend)
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
            .set(self.cell.load().len() as i64);
        *self.batcher.lock() = Some(Batcher::spawn(
            name.to_string(),
            self.cell.clone(),
            cfg,
            metrics,
        ));
    }

    /// Queues a search.
    pub fn submit(&self, job: crate::batcher::Job) -> Result<(), Status> {
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

    /// A copy of the metadata.
    pub fn meta(&self) -> Meta {
        self.meta.lock().clone()
    }
    /// The current segment.
    pub fn segment(&self) -> Arc<Segment> {
        self.cell.load()
    }
    /// True when writes are refused.
    pub fn is_read_only(&self) -> bool {
        self.writer.lock().is_none()
    }
    /// The folder, for a writable collection.
    pub fn dir(&self) -> Option<PathBuf> {
        self.writer.lock().as_ref().map(|w| w.dir.clone())
    }

    fn with_writer<T>(
        &self,
        f: impl FnOnce(&mut Writer) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let mut guard = self.writer.lock();
        match guard.as_mut() {
            Some(w) => f(w),
            None => Err(Status::failed_precondition(
                "the collection is read-only (served from an index file)",
            )),
        }
    }

    /// Upserts valid vectors durably: validated on the next version, logged and fsynced, then
    /// published. Returns the live count.
    pub fn upsert(&self, ids: Vec<u64>, vectors: Vec<f32>) -> Result<usize, Status> {
        self.with_writer(|w| {
            let next = self
                .cell
                .load()
                .with_upsert(&ids, &vectors)
                .map_err(from_engine)?;
            let dim = self.meta.lock().dim;
            w.wal
                .append(&WalRecord::Upsert { ids, vectors, dim })
                .map_err(|e| from_io("write-ahead log", e))?;
            let n = next.len();
            self.cell.store(next);
            self.maybe_snapshot(w)?;
            Ok(n)
        })
    }

    /// Deletes ids durably; returns how many were present.
    pub fn delete(&self, ids: Vec<u64>) -> Result<usize, Status> {
        self.with_writer(|w| {
            let (next, n) = self.cell.load().with_delete(&ids).map_err(from_engine)?;
            if n > 0 {
                w.wal
                    .append(&WalRecord::Delete { ids })
                    .map_err(|e| from_io("write-ahead log", e))?;
                self.cell.store(next);
                self.maybe_snapshot(w)?;
            }
            Ok(n)
        })
    }

    fn maybe_snapshot(&self, w: &mut Writer) -> Result<(), Status> {
        if w.wal.bytes() > self.wal_snapshot_bytes {
            self.snapshot(w)?;
        }
        Ok(())
    }

    fn snapshot(&self, w: &mut Writer) -> Result<u64, Status> {
        let segment = self.cell.load();
        let bytes = match segment.as_ref() {
            Segment::Flat(f) => {
                crate::snapshot::save_flat(f, &w.dir.join("state.flat")).map_err(from_engine)?
            }
            Segment::Ivf(_, p) => {
                let path = w.dir.join("state.qvr");
                quiver_engine::persist::save(
                    quiver_engine::backend::PreparedIndex::index(p),
                    &path,
                )
                .map_err(from_engine)?;
                std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
            }
        };
        w.wal
            .reset()
            .map_err(|e| from_io("truncating the write-ahead log", e))?;
        Ok(bytes)
    }

    /// Writes a snapshot and empties the log; returns the snapshot's size.
    pub fn flush(&self) -> Result<u64, Status> {
        self.with_writer(|w| self.snapshot(w))
    }

    /// Trains an IVF-PQ index on the vectors present and switches the collection to it.
    pub fn train(&self, overrides: Option<IndexConfig>) -> Result<(), Status> {
        self.with_writer(|w| {
            let segment = self.cell.load();
            let Segment::Flat(flat) = segment.as_ref() else {
                return Err(Status::failed_precondition("the collection is already trained"));
            };
            let mut meta = self.meta.lock().clone();
            if let Some(o) = overrides {
                if o.nlist != 0 {
                    meta.index.nlist = o.nlist;
                }
                if o.pq_m != 0 {
                    meta.index.pq_m = o.pq_m;
                }
                if !o.refine.is_empty() {
                    meta.index.refine = o.refine;
                }
                if o.seed != 0 {
                    meta.index.seed = o.seed;
                }
            }
            let n = flat.len();
            let nlist = if meta.index.nlist == 0 { auto_nlist(n) } else { meta.index.nlist as usize };
            let pq_m = if meta.index.pq_m == 0 { auto_pq_m(meta.dim) } else { meta.index.pq_m as usize };
            let mut params = IndexParams::new(meta.metric(), meta.dim, nlist, pq_m);
            params.refine = meta.index.refine_kind();
            params.seed = meta.index.seed;
            params.validate().map_err(from_engine)?;
            if n < nlist.max(256) {
                return Err(Status::failed_precondition(format!(
                    "training needs at least {} vectors (nlist = {nlist}, and 256 for the PQ); the collection has {n}",
                    nlist.max(256)
                )));
            }
            let mut ids = Vec::with_capacity(n);
            let mut vectors = Vec::with_capacity(n * meta.dim);
            flat.for_each_live(|i, v| {
                ids.extend_from_slice(i);
                vectors.extend_from_slice(v);
            });
            let rows = quiver_engine::kmeans::sample_rows(n, params.default_train_sample(), params.seed);
            let mut sample = Vec::with_capacity(rows.len() * meta.dim);
            for r in rows {
                sample.extend_from_slice(&vectors[r * meta.dim..(r + 1) * meta.dim]);
            }
            let mut index = IvfPqIndex::train(params, &sample, &NoProgress).map_err(from_engine)?;
            index.add(&vectors, Some(&ids), &NoProgress).map_err(from_engine)?;
            quiver_engine::persist::save(&index, &w.dir.join("state.qvr")).map_err(from_engine)?;
            meta.index.nlist = nlist as u32;
            meta.index.pq_m = pq_m as u32;
            meta.trained = true;
            write_meta(&w.dir, &meta)?;
            w.wal.reset().map_err(|e| from_io("truncating the write-ahead log", e))?;
            let _ = std::fs::remove_file(w.dir.join("state.flat"));
            let prepared = self
                .backend
                .prepare(Arc::new(index))
                .map_err(from_engine)?;
            self.cell
                .store(Segment::Ivf(self.backend.clone(), prepared));
            *self.meta.lock() = meta;
            Ok(())
        })
    }
}

/// About 4·√n lists (the power of two at or below), with at least 39 vectors per list.
pub fn auto_nlist(n: usize) -> usize {
    let target = ((4.0 * (n as f64).sqrt()) as usize).max(1);
    let mut nlist = 1usize << (usize::BITS - 1 - target.leading_zeros());
    while nlist > 1 && nlist * 39 > n {
        nlist /= 2;
    }
    nlist
}

/// `dim / 8` sub-quantizers when 8 divides the dimension, else the largest divisor of `dim`
/// not above `dim / 4` (at least 1).
pub fn auto_pq_m(dim: usize) -> usize {
    if dim.is_multiple_of(8) {
        return dim / 8;
    }
    (1..=(dim / 4).max(1))
        .rev()
        .find(|m| dim.is_multiple_of(*m))
        .unwrap_or(1)
}

fn meta_of(name: &str, index: &IvfPqIndex) -> Meta {
    let p = index.params();
    Meta {
        format: 1,
        name: name.to_string(),
        dim: p.dim,
        metric: p.metric.name().to_string(),
        index: IndexConfig {
            nlist: p.nlist as u32,
            pq_m: p.pq_m as u32,
            refine: p.refine.name().to_string(),
            seed: p.seed,
        },
        trained: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_parameters() {
        assert_eq!(auto_nlist(100_000), 1024);
        assert_eq!(auto_nlist(1000), 16);
        assert_eq!(auto_nlist(10), 1);
        assert_eq!(auto_pq_m(384), 48);
        assert_eq!(auto_pq_m(30), 6);
        assert_eq!(auto_pq_m(7), 1);
        assert!(
            valid_name("docs-v2_1.0") && !valid_name("") && !valid_name("a/b") && !valid_name("..")
        );
    }
}
