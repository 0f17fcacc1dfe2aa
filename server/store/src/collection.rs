//! One collection's durable state: its published version, its write path (validate, stage,
//! log with group commit, publish), checkpoints, training and the optimizer's steps.
//!
//! Write path: a writer validates and encodes its points without any lock, then, under the
//! writer lock, builds the next *staged* version and appends its record to the pending group.
//! Outside the lock it waits for the group commit: one writer at a time writes the whole pending
//! group and fsyncs it; then the staged version it wrote becomes the published one and every
//! writer of the group is acknowledged. A failed group is cut from the log and every write
//! staged since the last durable one is refused and rolled back, so searches only ever see
//! acknowledged writes and no acknowledgement follows garbage.
//!
//! Structural changes (seal, checkpoint, training's switch, merges) close a gate that holds new
//! writers back, let the pending group commit, change the version under the writer lock, and
//! reopen the gate; their long parts (k-means, encoding, merging, file writes) run outside
//! every lock.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::cpucache::CpuCache;
use crate::preparer::Preparer;
use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};
use quiver_engine::backend::{Backend, Neighbors, PreparedIndex};
use quiver_engine::payload::fields::FieldSpec;
use quiver_engine::payload::filter::Filter;
use quiver_engine::progress::NoProgress;
use quiver_engine::sparse::SparseVector;
use quiver_engine::{FlatIndex, IndexParams, IvfPqIndex, Metric, RefineKind};

use crate::drift::Drift;
use crate::error::{Result, StoreError};
use crate::fsutil::{remove_temp_files, sync_dir};
use crate::manifest::{CollectionMeta, IndexConfig, Manifest, SegmentEntry};
use crate::segment::{Rows, SearchKey, Segment, SegmentIndex};
use crate::version::{ExampleQuery, Version};
use crate::wal::{self, Op, PayloadEdit, WalWriter};
use crate::StoreConfig;

/// The examples of an example-scored query ([`Collection::search_examples`]), by the
/// vectors they score.
pub enum Examples {
    /// The collection's own dense vectors (those its index holds).
    Own(quiver_engine::example_query::DenseExamples),
    /// The named dense space `name`'s vectors.
    Named {
        /// The space.
        name: String,
        /// Its metric.
        metric: Metric,
        /// The examples, of the space's size.
        query: quiver_engine::example_query::DenseExamples,
    },
    /// The sparse vectors named `name`.
    Sparse {
        /// Their name.
        name: String,
        /// Weigh the examples' terms by inverse document frequency.
        idf: bool,
        /// How the similarities make a score.
        scoring: quiver_engine::example_query::Scoring,
        /// The examples, in the scoring's order.
        examples: Vec<SparseVector>,
    },
}

/// Most payload fields a collection indexes.
pub const MAX_FIELD_INDEXES: usize = 64;

/// What a collection is doing in the background.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Nothing: serving.
    Ready,
    /// Training its IVF-PQ index.
    Training,
    /// The last background job failed (the collection is as it was before it).
    Failed(String),
}

impl JobState {
    /// "ready", "training", or "failed: …".
    pub fn describe(&self) -> String {
        match self {
            JobState::Ready => "ready".into(),
            JobState::Training => "training".into(),
            JobState::Failed(m) => format!("failed: {m}"),
        }
    }
}

#[derive(Debug, Clone)]
enum Failure {
    Wal(PathBuf, String),
    Stopped(String),
    Apply(String),
    /// One write of a group refused when its turn came (the others go on).
    Invalid(&'static str, String),
}

impl From<Failure> for StoreError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Wal(path, reason) => StoreError::WalFailed { path, reason },
            Failure::Stopped(m) => StoreError::WritesStopped(m),
            Failure::Apply(m) => StoreError::Failed(m),
            Failure::Invalid(field, reason) => StoreError::Invalid { field, reason },
        }
    }
}

/// Where a queued write stands, as its writer waits for it.
enum Standing {
    /// In the queue, or in the group being committed.
    Waiting,
    /// The committing role was handed to this writer: it commits the queue next.
    Turn,
    /// Its group was committed (the points upserted or deleted) or refused.
    Done(std::result::Result<usize, Failure>),
}

/// A queued write's standing, with its own condition variable: a group's end wakes its own
/// writers and the one writer it hands the role to, never every writer waiting.
struct TicketState {
    standing: Mutex<Standing>,
    changed: Condvar,
}

impl TicketState {
    fn set(&self, s: Standing) {
        *self.standing.lock() = s;
        self.changed.notify_one();
    }
}

type Ticket = Arc<TicketState>;

/// A group applied to a copy of the committed version: the version, each write's count (or its
/// refusal, for a write refused alone), the next log number and the group's records.
type GroupApplied<B> = (
    Version<B>,
    Vec<std::result::Result<usize, Failure>>,
    u64,
    Vec<u8>,
);

/// A validated write waiting for the next group commit.
/// Which points of an upsert are written, decided against the collection's state at the
/// moment the write is applied (in its group, after the writes queued before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpsertMode {
    /// Every point: added, or replacing the point of that id.
    #[default]
    Upsert,
    /// Only points whose id is not live; the others are left as they are.
    InsertOnly,
    /// Only points whose id is live; the others are not created.
    UpdateOnly,
    /// Only points whose id is live, each keeping its stored payload with the write's
    /// payload keys set over it (Qdrant's `UpdateVectors`: new vectors, and the vectors a
    /// payload carries, for points that stay otherwise as they are). Resolved against the
    /// stored payloads in the same step of the group commit as the write, so no concurrent
    /// payload edit is lost; the log records the payloads as written.
    UpdateVectors,
}

struct QueuedWrite {
    op: Op,
    /// For an upsert, which of its points are written.
    mode: UpsertMode,
    /// Its rows, encoded by the writer (with `encoded_with`) before it queued.
    rows: Option<Rows>,
    encoded_with: Option<Arc<IvfPqIndex>>,
    /// Logged under its own number even when it changes nothing (an op of an external log,
    /// [`Collection::apply`]).
    log_always: bool,
    ticket: Ticket,
}

struct Writer<B: Backend> {
    /// The last committed version (published), or during a structural change the next one.
    staged: Arc<Version<B>>,
    next_lsn: u64,
    queue: Vec<QueuedWrite>,
    gate_closed: bool,
    stopped: Option<String>,
    next_segment_id: u64,
    /// Some writer holds the committing role (it commits the queue as one group).
    flushing: bool,
    /// A replica's training switch is published but not yet durable: writes wait (their
    /// numbers would follow one the log does not hold).
    held: bool,
}

struct Files {
    /// Segments whose file is on disk, with the number of deletions recorded beside it.
    written: HashMap<u64, (String, Option<String>, usize)>,
    /// The quantizers on disk: their file and the index they hold.
    quantizers: Option<(String, Arc<IvfPqIndex>)>,
}

/// One collection.
pub struct Collection<B: Backend> {
    dir: PathBuf,
    meta: RwLock<CollectionMeta>,
    backend: B,
    /// Prepares sealed segments on the device backend, sharing the quantizers' device copy.
    prep: Preparer<B>,
    cpu: CpuCache,
    device: bool,
    cfg: StoreConfig,
    published: RwLock<Arc<Version<B>>>,
    writer: Mutex<Writer<B>>,
    gate: Condvar,
    /// Signalled (with the writer lock) at the end of every group, for `quiesce`.
    flushed: Condvar,
    wal: Mutex<Option<WalWriter>>,
    files: Mutex<Files>,
    structural: Mutex<()>,
    job: Mutex<JobState>,
    /// How far the data has drifted from the quantizers (see [`crate::drift`]).
    drift: Mutex<Drift>,
    dropped: AtomicBool,
    /// Set when the server stops: a running training ends at its next step (see
    /// [`Collection::stop_training`]).
    training_stopped: AtomicBool,
    /// A training was running when the process last stopped (killed, out of memory, power
    /// cut: its marker file was left): trainings by size or drift wait for a `Train` call, so a
    /// training that kills the process is not started again at every start.
    interrupted: AtomicBool,
    /// A replica ([`Collection::create_replica`], from its manifest): fed only by
    /// [`Collection::apply`], its log numbered by an external one; it takes no other writes
    /// and never trains by itself.
    follower: AtomicBool,
    /// Held by a description change from reading the description to logging the new one.
    describing: Mutex<()>,
    read_only: bool,
}

/// The file a running training keeps in its collection's folder (see `interrupted`).
const TRAINING_MARKER: &str = "training.running";

/// Checks a collection name: 1 to 64 of `[A-Za-z0-9_.-]`, not starting with a dot.
pub fn valid_name(name: &str) -> bool {
    name.len() <= 64 && valid_folder_name(name)
}

/// Checks the name of a collection's folder: a collection name, or one up to 128 characters
/// (a cluster node names its shard replicas' folders `NAME.INCARNATION.SHARD`).
pub fn valid_folder_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// Refuses what [`Collection::apply`] would refuse of `ops` in a `dim`-dimensional
/// collection whatever its points (see [`Collection::check_ops`]).
pub fn check_ops(dim: usize, ops: &[Op]) -> Result<()> {
    for op in ops {
        match op {
            Op::Upsert {
                ids,
                vectors,
                dim: d,
                payloads,
            } => {
                if *d != dim || vectors.len() != ids.len() * dim {
                    return Err(StoreError::Invalid {
                        field: "vectors",
                        reason: format!(
                            "{} values of dimension {d} for {} ids; the collection is {dim}-d",
                            vectors.len(),
                            ids.len()
                        ),
                    });
                }
                if !payloads.is_empty() && payloads.len() != ids.len() {
                    return Err(StoreError::Invalid {
                        field: "payloads",
                        reason: format!("{} payloads for {} ids", payloads.len(), ids.len()),
                    });
                }
                check_ids(ids)?;
            }
            Op::Delete { ids } | Op::SetPayload { ids, .. } => check_ids(ids)?,
            Op::DeleteFilter { filter } => {
                Filter::parse_text(filter).map_err(|e| StoreError::Invalid {
                    field: "filter",
                    reason: e.to_string(),
                })?;
            }
            Op::Describe(d) => {
                if d.fields.len() > MAX_FIELD_INDEXES {
                    return Err(StoreError::Invalid {
                        field: "fields",
                        reason: format!(
                            "{} indexed fields; at most {MAX_FIELD_INDEXES} are allowed",
                            d.fields.len()
                        ),
                    });
                }
            }
        }
        wal::check_size(op)?;
    }
    Ok(())
}

/// Writes the folder of a new, empty collection at `dir` (which must not exist), durably.
pub(crate) fn write_empty(dir: &Path, meta: CollectionMeta, replica: bool) -> Result<()> {
    crate::fsutil::build_folder(dir, |tmp| {
        WalWriter::create(&tmp.join("wal"), 1)?;
        Manifest {
            format: crate::manifest::FORMAT,
            meta,
            quantizers: None,
            segments: Vec::new(),
            wal_from: 1,
            next_segment_id: 1,
            replica,
            drift: None,
        }
        .write(tmp)
    })
}

fn empty_appendable<B: Backend>(
    id: u64,
    meta: &CollectionMeta,
    quantizers: Option<&Arc<IvfPqIndex>>,
    cpu: &CpuCache,
) -> Result<Segment<B>> {
    Ok(Segment::new(
        id,
        match quantizers {
            Some(q) => SegmentIndex::Cpu(cpu.prepare(Arc::new(q.empty_like()))?),
            None => SegmentIndex::Flat(FlatIndex::new(meta.metric(), meta.dim)),
        },
    ))
}

impl<B: Backend + Clone + 'static> Collection<B> {
    /// Creates a new, empty collection in `dir` (which must not exist).
    pub fn create(dir: &Path, meta: CollectionMeta, backend: B, cfg: StoreConfig) -> Result<Self> {
        Self::create_as(dir, meta, false, backend, cfg)
    }

    /// Creates a new, empty replica in `dir` (which must not exist): a collection fed only by
    /// an external log ([`Self::apply`], [`Self::apply_train`]) from its first op on. It takes
    /// no other writes and never trains by itself, whatever its description says; the role is
    /// kept in its manifest.
    pub fn create_replica(
        dir: &Path,
        meta: CollectionMeta,
        backend: B,
        cfg: StoreConfig,
    ) -> Result<Self> {
        Self::create_as(dir, meta, true, backend, cfg)
    }

    pub(crate) fn create_as(
        dir: &Path,
        meta: CollectionMeta,
        replica: bool,
        backend: B,
        cfg: StoreConfig,
    ) -> Result<Self> {
        write_empty(dir, meta, replica)?;
        Self::open(dir, backend, cfg)
    }

    /// Creates a collection in `dir` (which must not exist) from a snapshot folder written by
    /// [`Self::export_snapshot`] (of this or another process): its files are linked or copied,
    /// and the collection's log starts after the last op the snapshot covers, so a new replica
    /// goes on from there with [`Self::apply`] ([`Self::last_seq`] says from where).
    pub fn create_from_snapshot(
        snapshot: &Path,
        dir: &Path,
        backend: B,
        cfg: StoreConfig,
    ) -> Result<Self> {
        let mut manifest = Manifest::read(snapshot)?;
        // A collection started from a snapshot goes on with the log: a replica.
        manifest.replica = true;
        crate::fsutil::build_folder(dir, |tmp| {
            crate::snapshot::place_files(
                &snapshot.join("segments"),
                &tmp.join("segments"),
                &crate::snapshot::files_of(&manifest),
            )?;
            WalWriter::create(&tmp.join("wal"), manifest.wal_from)?;
            manifest.write(tmp)
        })?;
        Self::open(dir, backend, cfg)
    }

    /// Writes a snapshot of the collection into the folder `dest` (which must not exist): a
    /// checkpoint is made, and its files and manifest are linked or copied there. Returns the
    /// number of the last op it covers ([`Self::last_seq`] at the checkpoint): a replica
    /// created from it ([`Self::create_from_snapshot`]) applies the log from the next one.
    /// Writes go on meanwhile; merges and trainings wait.
    pub fn export_snapshot(&self, dest: &Path) -> Result<u64> {
        self.refuse_read_only()?;
        let _one = self.structural.lock();
        self.refuse_dropped()?;
        self.checkpoint_locked()?;
        // No checkpoint removes the files while they are placed.
        let _files = self.files.lock();
        let manifest = Manifest::read(&self.dir)?;
        crate::fsutil::build_folder(dest, |tmp| {
            crate::snapshot::place_files(
                &self.dir.join("segments"),
                &tmp.join("segments"),
                &crate::snapshot::files_of(&manifest),
            )?;
            manifest.write(tmp)
        })?;
        Ok(manifest.wal_from - 1)
    }

    /// Opens a collection folder: the manifest's segments, then the write-ahead log replayed
    /// over them. Leftover temporary files and files no manifest names are removed.
    pub fn open(dir: &Path, backend: B, cfg: StoreConfig) -> Result<Self> {
        if !dir.join("manifest.json").exists() && dir.join("meta.json").exists() {
            crate::legacy::migrate(dir)?;
        }
        let manifest = Manifest::read(dir)?;
        let segdir = dir.join("segments");
        let waldir = dir.join("wal");
        for d in [dir, segdir.as_path(), waldir.as_path()] {
            let n = remove_temp_files(d)?;
            if n > 0 {
                tracing::info!(folder = %d.display(), files = n, "removed leftover temporary files");
            }
        }
        let cpu = CpuCache::default();
        let prep = Preparer::new(backend.clone());
        let device = backend.name() != "cpu";
        let meta = manifest.meta.clone();
        let quantizers = match &manifest.quantizers {
            Some(f) => {
                let path = segdir.join(f);
                let q = quiver_engine::persist::load(&path)?;
                check_shape(&path, q.dim(), q.metric(), &meta)?;
                Some(Arc::new(q))
            }
            None => None,
        };
        let mut files = Files {
            written: HashMap::new(),
            quantizers: manifest.quantizers.clone().zip(quantizers.clone()),
        };
        let mut segments = Vec::new();
        for e in &manifest.segments {
            let path = segdir.join(&e.file);
            let mut index = if e.file.ends_with(".flat") {
                let f = crate::flatfile::load_flat(&path)?;
                check_shape(&path, f.dim(), f.metric(), &meta)?;
                SegmentIndex::Flat(f)
            } else {
                let mut i = quiver_engine::persist::load(&path)?;
                check_shape(&path, i.dim(), i.metric(), &meta)?;
                // Each file holds its own copy of the collection's quantizers: share one, so
                // that segments merge and search together as after a write.
                if let Some(q) = &quantizers {
                    i.adopt_quantizers(q).map_err(|e| StoreError::Invalid {
                        field: "segment file",
                        reason: format!("{}: {e}", path.display()),
                    })?;
                }
                let i = Arc::new(i);
                if device {
                    SegmentIndex::Device(prep.prepare(i)?)
                } else {
                    SegmentIndex::Cpu(cpu.prepare(i)?)
                }
            };
            let mut deleted = imbl::Vector::new();
            if let Some(d) = &e.deletes {
                let ids = crate::manifest::read_deletes(&segdir.join(d))?;
                let seg = Segment::<B>::new(e.id, index);
                index = match seg.with_delete(&ids, true, cpu.backend(), &backend)? {
                    Some((s, _)) => s.index,
                    None => seg.index,
                };
                deleted = ids.into_iter().collect();
            }
            files
                .written
                .insert(e.id, (e.file.clone(), e.deletes.clone(), deleted.len()));
            let mut segment = Segment::new(e.id, index);
            segment.deleted = deleted;
            segments.push(Arc::new(segment));
        }
        let mut next_segment_id = manifest.next_segment_id;
        let appendable = empty_appendable(next_segment_id, &meta, quantizers.as_ref(), &cpu)?;
        next_segment_id += 1;
        let mut version = Version {
            segments,
            appendable: Arc::new(appendable),
            quantizers,
            lsn: manifest.wal_from.saturating_sub(1),
        };
        let mut meta = meta;
        let replayed = wal::replay(&waldir, manifest.wal_from, cfg.wal_recover, |lsn, op| {
            if let Op::Describe(d) = &op {
                meta.describe(d);
            }
            version
                .apply(&op, None, &cpu, &backend)
                .map_err(|e| StoreError::Invalid {
                    field: "write-ahead log record",
                    reason: e.to_string(),
                })?;
            version.lsn = lsn;
            Ok(())
        })?;
        let next_lsn = replayed.last_lsn.max(manifest.wal_from.saturating_sub(1)) + 1;
        let writer = match replayed.tail {
            // A file of the earlier format is not appended to (its readers do not know every
            // record kind written now): the next records start a file of their own.
            Some((first, path, len)) if !wal::is_earlier_format(&path)? => {
                WalWriter::open(&waldir, &path, first, len)?
            }
            _ => WalWriter::create(&waldir, next_lsn)?,
        };
        if replayed.applied > 0 {
            tracing::info!(collection = %meta.name, records = replayed.applied, "replayed the write-ahead log");
        }
        let interrupted = std::fs::read_to_string(dir.join(TRAINING_MARKER)).ok();
        let c = Collection {
            dir: dir.to_path_buf(),
            meta: RwLock::new(meta),
            backend,
            prep,
            cpu,
            device,
            cfg,
            published: RwLock::new(Arc::new(version.clone())),
            writer: Mutex::new(Writer {
                staged: Arc::new(version),
                next_lsn,
                queue: Vec::new(),
                gate_closed: false,
                stopped: None,
                next_segment_id,
                flushing: false,
                held: false,
            }),
            gate: Condvar::new(),
            flushed: Condvar::new(),
            wal: Mutex::new(Some(writer)),
            files: Mutex::new(files),
            structural: Mutex::new(()),
            job: Mutex::new(JobState::Ready),
            drift: Mutex::new(manifest.drift.clone().unwrap_or_default()),
            dropped: AtomicBool::new(false),
            training_stopped: AtomicBool::new(false),
            interrupted: AtomicBool::new(interrupted.is_some()),
            follower: AtomicBool::new(manifest.replica),
            describing: Mutex::new(()),
            read_only: false,
        };
        if let Some(since) = interrupted {
            let why = format!(
                "a training started {since} was interrupted (the server stopped while it ran, e.g. killed for memory); automatic training waits for a Train call"
            );
            tracing::warn!(collection = %c.meta.read().name, "{why}");
            *c.job.lock() = JobState::Failed(why);
        }
        c.remove_unreferenced(&manifest)?;
        Ok(c)
    }

    /// A read-only collection serving an index file (no folder, no log).
    pub fn read_only(name: &str, index: IvfPqIndex, backend: B) -> Result<Self> {
        let p = index.params().clone();
        let meta = CollectionMeta {
            name: name.to_string(),
            dim: p.dim,
            metric: p.metric.name().to_string(),
            index: IndexConfig::of_index(&p),
            fields: index.field_specs().to_vec(),
            settings: serde_json::Value::Null,
        };
        let cpu = CpuCache::default();
        let prep = Preparer::new(backend.clone());
        let device = backend.name() != "cpu";
        let quantizers = Arc::new(index.empty_like());
        let index = Arc::new(index);
        let sealed = if device {
            SegmentIndex::Device(prep.prepare(index)?)
        } else {
            SegmentIndex::Cpu(cpu.prepare(index)?)
        };
        let version = Version {
            segments: vec![Arc::new(Segment::new(1, sealed))],
            appendable: Arc::new(empty_appendable(2, &meta, Some(&quantizers), &cpu)?),
            quantizers: Some(quantizers),
            lsn: 0,
        };
        Ok(Collection {
            dir: PathBuf::new(),
            meta: RwLock::new(meta),
            backend,
            prep,
            cpu,
            device,
            cfg: StoreConfig::default(),
            published: RwLock::new(Arc::new(version.clone())),
            writer: Mutex::new(Writer {
                staged: Arc::new(version),
                next_lsn: 1,
                queue: Vec::new(),
                gate_closed: false,
                stopped: None,
                next_segment_id: 3,
                flushing: false,
                held: false,
            }),
            gate: Condvar::new(),
            flushed: Condvar::new(),
            wal: Mutex::new(None),
            files: Mutex::new(Files {
                written: HashMap::new(),
                quantizers: None,
            }),
            structural: Mutex::new(()),
            job: Mutex::new(JobState::Ready),
            drift: Mutex::new(Drift::default()),
            dropped: AtomicBool::new(false),
            training_stopped: AtomicBool::new(false),
            interrupted: AtomicBool::new(false),
            follower: AtomicBool::new(false),
            describing: Mutex::new(()),
            read_only: true,
        })
    }

    /// True when writes are refused (served from an index file).
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Refuses work on a closed (dropped) collection. Checked under the lock a step publishes
    /// or writes files with (the structural lock, the files lock, the writer lock): `close`
    /// sets the flag and then takes those locks, so a step either ends before `close` returns
    /// or sees the flag and touches nothing (the folder may hold a new collection by then).
    fn refuse_dropped(&self) -> Result<()> {
        if self.dropped.load(Ordering::Acquire) {
            return Err(StoreError::Precondition(
                "the collection was dropped".into(),
            ));
        }
        Ok(())
    }

    fn refuse_not_replica(&self) -> Result<()> {
        if !self.follower.load(Ordering::Acquire) {
            return Err(StoreError::Precondition(
                "only a replica (created as one, or from a snapshot) applies an external log"
                    .into(),
            ));
        }
        Ok(())
    }

    fn refuse_follower(&self) -> Result<()> {
        if self.follower.load(Ordering::Acquire) {
            return Err(StoreError::Precondition(
                "the collection follows an external log (apply): write through that log".into(),
            ));
        }
        Ok(())
    }

    fn refuse_read_only(&self) -> Result<()> {
        if self.read_only {
            return Err(StoreError::Precondition(
                "the collection is read-only (served from an index file)".into(),
            ));
        }
        Ok(())
    }

    /// The collection's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its metadata.
    pub fn meta(&self) -> CollectionMeta {
        self.meta.read().clone()
    }

    /// The published version (what searches see).
    pub fn version(&self) -> Arc<Version<B>> {
        self.published.read().clone()
    }

    /// Background job state.
    pub fn job(&self) -> JobState {
        self.job.lock().clone()
    }

    /// True once trained.
    pub fn trained(&self) -> bool {
        self.version().quantizers.is_some()
    }

    /// Why writes are refused, if they are.
    pub fn writes_stopped(&self) -> Option<String> {
        self.writer.lock().stopped.clone()
    }

    /// Searches valid queries (`nq × dim`) over the published version.
    pub fn search(&self, queries: &[f32], nq: usize, key: SearchKey) -> Result<Neighbors> {
        let v = self.version();
        let key = self.with_default_refine(key);
        let metric = self.meta.read().metric();
        Ok(v.search(queries, nq, key, metric, self.cpu.backend(), &self.backend)?)
    }

    /// `key` with the collection's default refine factor where it asks for the default.
    pub fn with_default_refine(&self, key: SearchKey) -> SearchKey {
        match key.refine_factor {
            0 => SearchKey {
                refine_factor: self.meta.read().index.refine_factor as usize,
                ..key
            },
            _ => key,
        }
    }

    /// Whether `Get` returns the vectors as written (normalised for cosine; f16-rounded when
    /// the collection keeps f16): false for a codes-only collection, whose points are PQ
    /// reconstructions once it is trained.
    pub fn keeps_vectors(&self) -> bool {
        self.meta.read().index.refine_kind() != RefineKind::None
    }

    /// The stored vectors of the given ids that are live (normalised for cosine; f16-rounded
    /// with f16 refine; PQ reconstructions in a trained codes-only collection).
    pub fn get(&self, ids: &[u64]) -> Vec<(u64, Vec<f32>)> {
        let v = self.version();
        ids.iter()
            .filter_map(|&id| v.vector(id).map(|x| (id, x)))
            .collect()
    }

    /// The stored vectors and payloads of the given ids that are live (see [`Self::get`]).
    pub fn get_points(&self, ids: &[u64]) -> Vec<(u64, Vec<f32>, Vec<u8>)> {
        let v = self.version();
        ids.iter()
            .filter_map(|&id| {
                let s = v.all().find(|s| s.contains(id))?;
                Some((id, s.vector(id)?, s.payload(id)?.to_vec()))
            })
            .collect()
    }

    /// Searches valid queries (`nq × dim`), query `q` among the points passing
    /// `filters[of_query[q]]` ([`quiver_engine::backend::NO_FILTER`]: all).
    pub fn search_filtered(
        &self,
        queries: &[f32],
        nq: usize,
        key: SearchKey,
        filters: &[Filter],
        of_query: &[u32],
    ) -> Result<Neighbors> {
        if of_query.len() != nq {
            return Err(StoreError::Invalid {
                field: "filters",
                reason: format!("{} filter choices for {nq} queries", of_query.len()),
            });
        }
        let v = self.version();
        let key = self.with_default_refine(key);
        let (metric, fields) = {
            let m = self.meta.read();
            (m.metric(), m.fields.clone())
        };
        Ok(v.search_filtered(
            queries,
            nq,
            key,
            filters,
            of_query,
            &fields,
            metric,
            self.cpu.backend(),
            &self.backend,
        )?)
    }

    /// The `k` live points passing `filter` whose sparse vector named `name` has the highest
    /// dot product with `query` (points sharing no term with it left out), best first: exact.
    /// With `idf`, the query's weights are first multiplied by each term's inverse document
    /// frequency among the live points holding a sparse vector of that name
    /// ([`quiver_engine::sparse::idf`]).
    pub fn search_sparse(
        &self,
        name: &str,
        query: &SparseVector,
        k: usize,
        filter: Option<&Filter>,
        idf: bool,
    ) -> Vec<(u64, f32)> {
        let v = self.version();
        let key = crate::wal::sparse_key(name);
        let fields = self.field_specs();
        let weighted;
        let query = if idf {
            let (n, df) = v.sparse_doc_freqs(&key, &query.indices);
            weighted = SparseVector {
                indices: query.indices.clone(),
                values: query
                    .values
                    .iter()
                    .zip(df)
                    .map(|(w, d)| w * quiver_engine::sparse::idf(d, n))
                    .collect(),
            };
            &weighted
        } else {
            query
        };
        v.search_sparse(&key, query, k, filter, &fields)
    }

    /// The `k` nearest neighbours of each query (row-major, `dim` values each) among the
    /// live points passing `filter` that hold a vector of the named space `name` (`metric`;
    /// kept in their payloads under [`crate::wal::dense_key`]), best first, padded with -1:
    /// exact (brute force over each segment's vectors of that space).
    pub fn search_dense(
        &self,
        name: &str,
        metric: Metric,
        dim: usize,
        queries: &[f32],
        k: usize,
        filter: Option<&Filter>,
    ) -> Result<Neighbors> {
        let key = crate::wal::dense_key(name);
        let fields = self.field_specs();
        Ok(self
            .version()
            .search_dense(&key, metric, dim, queries, k, filter, &fields)?)
    }

    /// The `k` live points passing `filter` that score best against `examples` (Qdrant's
    /// `discover` and `context` queries, the `best_score` and `sum_scores` recommendation
    /// strategies), best first, ties by ascending id: exact, every point holding a vector of
    /// the space scored ([`quiver_engine::example_query`]). Sparse examples of a space with
    /// `idf` have their weights multiplied by each term's inverse document frequency, as a
    /// sparse search's query.
    pub fn search_examples(
        &self,
        examples: &Examples,
        k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<(u64, f32)>> {
        let v = self.version();
        let fields = self.field_specs();
        let (key, weighted);
        let query = match examples {
            Examples::Own(q) => ExampleQuery::Own(q),
            Examples::Named {
                name,
                metric,
                query,
            } => {
                key = crate::wal::dense_key(name);
                ExampleQuery::Named {
                    key: &key,
                    metric: *metric,
                    query,
                }
            }
            Examples::Sparse {
                name,
                idf,
                scoring,
                examples,
            } => {
                key = crate::wal::sparse_key(name);
                let examples = if *idf {
                    weighted = examples
                        .iter()
                        .map(|e| {
                            let (n, df) = v.sparse_doc_freqs(&key, &e.indices);
                            SparseVector {
                                indices: e.indices.clone(),
                                values: e
                                    .values
                                    .iter()
                                    .zip(df)
                                    .map(|(w, d)| w * quiver_engine::sparse::idf(d, n))
                                    .collect(),
                            }
                        })
                        .collect::<Vec<_>>();
                    &weighted[..]
                } else {
                    &examples[..]
                };
                ExampleQuery::Sparse {
                    key: &key,
                    scoring: *scoring,
                    examples,
                }
            }
        };
        Ok(v.search_examples(&query, k, filter, &fields)?)
    }

    /// The `k` live points passing `filter` whose multi-vector of the space `name` (`metric`,
    /// `dim` values per vector; kept in their payloads under [`crate::wal::dense_key`]) scores
    /// highest by MaxSim against `query` (row-major), best first, with their MaxSim: exact.
    pub fn search_multi(
        &self,
        name: &str,
        metric: Metric,
        dim: usize,
        query: &[f32],
        k: usize,
        filter: Option<&Filter>,
    ) -> Vec<(u64, f32)> {
        let key = crate::wal::dense_key(name);
        let fields = self.field_specs();
        self.version()
            .search_multi(&key, metric, dim, query, k, filter, &fields)
    }

    /// Live points passing `filter` (all without one).
    pub fn count(&self, filter: Option<&Filter>) -> usize {
        match filter {
            None => self.version().len(),
            Some(f) => self.version().count_matching(Some(f), &self.field_specs()),
        }
    }

    /// Up to `limit` live points passing `filter`, by ascending id from `offset` (an id, or
    /// the start): their ids and payloads, and the id to continue from (`None` at the end).
    pub fn scroll(
        &self,
        filter: Option<&Filter>,
        offset: Option<u64>,
        limit: usize,
    ) -> (Vec<(u64, Vec<u8>)>, Option<u64>) {
        let v = self.version();
        // One more than the page: the id to continue from.
        let mut ids = v.page_matching(
            filter,
            &self.field_specs(),
            offset.unwrap_or(0),
            limit.saturating_add(1),
        );
        let next = (ids.len() > limit).then(|| ids[limit]);
        ids.truncate(limit);
        let page = ids
            .into_iter()
            .map(|id| (id, v.payload(id).unwrap_or_default().to_vec()))
            .collect();
        (page, next)
    }

    /// The indexed payload fields.
    pub fn field_specs(&self) -> Vec<FieldSpec> {
        self.meta.read().fields.clone()
    }

    /// Indexes a payload field for filters (the key's index is replaced if it had another
    /// type); returns false when the field was indexed so already. Durable when it returns,
    /// and every sealed segment's index is built by then.
    pub fn create_field_index(&self, spec: FieldSpec) -> Result<bool> {
        self.refuse_read_only()?;
        let changed = self.change_fields(|fields| {
            let count = fields.len();
            match fields.iter_mut().find(|f| f.key == spec.key) {
                Some(f) if *f == spec => return Ok(false),
                Some(f) => *f = spec,
                None if count >= MAX_FIELD_INDEXES => {
                    return Err(StoreError::Invalid {
                        field: "field",
                        reason: format!(
                            "the collection already indexes {MAX_FIELD_INDEXES} fields, the most allowed"
                        ),
                    })
                }
                None => fields.push(spec),
            }
            Ok(true)
        })?;
        self.build_field_indexes(usize::MAX);
        Ok(changed)
    }

    /// Drops the index of a payload field (filters on it are then evaluated point by point);
    /// returns false when the key had none. Durable when it returns.
    pub fn delete_field_index(&self, key: &str) -> Result<bool> {
        self.refuse_read_only()?;
        self.change_fields(|fields| {
            let before = fields.len();
            fields.retain(|f| f.key != key);
            Ok(fields.len() != before)
        })
    }

    /// Changes the indexed fields with `edit` (false: nothing changed) and writes them into the
    /// manifest. The manifest's other contents stay as the last checkpoint wrote them: holding
    /// the files lock, no checkpoint runs meanwhile, and the next one writes the new fields.
    fn change_fields(
        &self,
        edit: impl FnOnce(&mut Vec<FieldSpec>) -> Result<bool>,
    ) -> Result<bool> {
        self.change_meta(|meta| edit(&mut meta.fields))
    }

    /// Changes the front end's settings ([`CollectionMeta::settings`]) and the size at which
    /// the collection trains by itself ([`IndexConfig::train_at`]) with `edit`, given the
    /// current ones (no other change of the description runs meanwhile). Durable when it
    /// returns.
    pub fn update_settings(
        &self,
        edit: impl FnOnce(&mut serde_json::Value, &mut u64),
    ) -> Result<()> {
        self.refuse_read_only()?;
        self.change_meta(|meta| {
            let before = (meta.settings.clone(), meta.index.train_at);
            edit(&mut meta.settings, &mut meta.index.train_at);
            Ok(before != (meta.settings.clone(), meta.index.train_at))
        })?;
        Ok(())
    }

    /// Changes the collection's description with `edit` (false: nothing changed): the new
    /// description is an op of the log ([`Op::Describe`]), in order with the writes, durable
    /// when this returns and in effect from its group on; checkpoints write it into the
    /// manifest. One change at a time, so none is lost to another's.
    fn change_meta(&self, edit: impl FnOnce(&mut CollectionMeta) -> Result<bool>) -> Result<bool> {
        let _one = self.describing.lock();
        self.refuse_dropped()?;
        let mut meta = self.meta.read().clone();
        if !edit(&mut meta)? {
            return Ok(false);
        }
        self.write(Op::Describe(meta.description()), None, None)?;
        Ok(true)
    }

    /// Builds the field indexes of up to `limit` sealed segments that lack them; returns how
    /// many it built.
    fn build_field_indexes(&self, limit: usize) -> usize {
        let fields = self.field_specs();
        let mut built = 0;
        for s in self.version().segments.iter() {
            if built == limit {
                break;
            }
            if !s.has_field_indexes(&fields) {
                s.field_indexes(&fields);
                built += 1;
            }
        }
        built
    }

    /// Adds or replaces points by id; returns when the write is durable (fsynced) and visible.
    pub fn upsert(&self, ids: Vec<u64>, vectors: Vec<f32>) -> Result<usize> {
        self.upsert_with_payloads(ids, vectors, Vec::new())
    }

    /// [`Self::upsert`] with each point's stored payload (`quiver_engine::payload::encode`;
    /// empty: none for any point).
    pub fn upsert_with_payloads(
        &self,
        ids: Vec<u64>,
        vectors: Vec<f32>,
        payloads: Vec<Vec<u8>>,
    ) -> Result<usize> {
        self.upsert_with_mode(ids, vectors, payloads, UpsertMode::Upsert)
    }

    /// [`Self::upsert_with_payloads`], writing only the points `mode` lets through; returns how
    /// many were written. The check and the write are one step of the group commit, so two
    /// concurrent insert-only writes of one id cannot both insert it. The log records a plain
    /// upsert of the points written (none: no record), so replay needs no mode.
    pub fn upsert_with_mode(
        &self,
        ids: Vec<u64>,
        vectors: Vec<f32>,
        payloads: Vec<Vec<u8>>,
        mode: UpsertMode,
    ) -> Result<usize> {
        if !payloads.is_empty() && payloads.len() != ids.len() {
            return Err(StoreError::Invalid {
                field: "payloads",
                reason: format!("{} payloads for {} ids", payloads.len(), ids.len()),
            });
        }
        let dim = self.meta.read().dim;
        if vectors.len() != ids.len() * dim {
            return Err(StoreError::Invalid {
                field: "vectors",
                reason: format!(
                    "{} values for {} ids of dimension {dim}",
                    vectors.len(),
                    ids.len()
                ),
            });
        }
        check_ids(&ids)?;
        // Validate and encode before taking any lock (writers encode in parallel).
        let v = self.version();
        // On the calling thread (a writer, already at background priority in the service), not
        // on the background pool: a training's long tasks there would hold it up.
        let rows = v.rows_for(&vectors, &self.cpu)?;
        let drift = match (&rows, &v.quantizers) {
            (Rows::Encoded(r), Some(q)) if !r.is_empty() => {
                Some((r.len(), crate::drift::coarse_error(q, &r.vectors, &r.lists)))
            }
            _ => None,
        };
        let op = Op::Upsert {
            ids,
            vectors,
            dim,
            payloads,
        };
        let written = self.write_queued(op, mode, Some(rows), v.quantizers.clone())?;
        // The points written count towards the drift (a conditional write may skip some:
        // their share of the batch's error is left out).
        if let Some((n, error)) = drift.filter(|_| written > 0) {
            // Not when a training switched the quantizers meanwhile: the error was measured
            // against the replaced ones.
            let current = self.version().quantizers.clone();
            if current
                .zip(v.quantizers.as_ref())
                .is_some_and(|(a, b)| Arc::ptr_eq(&a, b))
            {
                self.drift
                    .lock()
                    .record(written, error * written as f64 / n as f64);
            }
        }
        Ok(written)
    }

    /// Deletes ids; returns how many were live. Durable when it returns.
    pub fn delete(&self, ids: Vec<u64>) -> Result<usize> {
        self.write(Op::Delete { ids }, None, None)
    }

    /// Deletes the points passing a filter (JSON text); returns how many. The filter is
    /// evaluated in the write group, in log order, and the log records the ids it deleted, so
    /// replay and replicas delete those very points. Durable when it returns.
    pub fn delete_filter(&self, filter: &str) -> Result<usize> {
        Filter::parse_text(filter).map_err(|e| StoreError::Invalid {
            field: "filter",
            reason: e.to_string(),
        })?;
        self.write(
            Op::DeleteFilter {
                filter: filter.to_string(),
            },
            None,
            None,
        )
    }

    /// Edits the payloads of the given ids (those live); returns how many. Refused, changing
    /// nothing, when the result would not be a valid payload for one of them. Durable when it
    /// returns.
    pub fn set_payload(&self, ids: Vec<u64>, edit: PayloadEdit) -> Result<usize> {
        check_ids(&ids)?;
        let v = self.version();
        for &id in &ids {
            if let Some(old) = v.payload(id) {
                edit.apply(old).map_err(|e| StoreError::Invalid {
                    field: "payload",
                    reason: format!("point {id}: {e}"),
                })?;
            }
        }
        self.write(Op::SetPayload { ids, edit }, None, None)
    }

    /// The number of the last op in the log (0: none yet): where a replica fed by
    /// [`Self::apply`] resumes its source log (after it).
    pub fn last_seq(&self) -> u64 {
        self.writer.lock().next_lsn - 1
    }

    /// Refuses what [`Self::apply`] would refuse of `ops` whatever the collection's points:
    /// a wrong dimension or payload count, bad ids, an unparsable filter, too many indexed
    /// fields, a record too large. A cluster checks a write with it before the write enters
    /// the log every replica applies.
    pub fn check_ops(&self, ops: &[Op]) -> Result<()> {
        check_ops(self.meta.read().dim, ops)
    }

    /// Applies the ops numbered `first_seq`, `first_seq + 1`, … of an external, gap-free log
    /// (a replica's source), as one group: durable (one fsync) and visible when it returns.
    /// Each op is logged under its own number, even one that changes nothing, so this
    /// collection's log numbers are the source's and [`Self::last_seq`] says where to resume
    /// after a restart. Ops numbered at or below `last_seq` were applied before (a redelivery)
    /// and are skipped (they are not compared); a first number past `last_seq + 1` is a gap
    /// and refused. Only a replica applies ([`Self::create_replica`],
    /// [`Self::create_from_snapshot`]): every op in its log is its source's.
    ///
    /// A delete by filter is evaluated here, in log order, and logged as the ids it deleted.
    /// Training and retraining are not started by `apply` (a replica never trains by itself):
    /// its source logs them ([`Self::apply_train`]). A delete by filter resolving to more ids
    /// than one record holds fails (the source splits such deletes into ids).
    pub fn apply(&self, first_seq: u64, ops: Vec<Op>) -> Result<Applied> {
        self.refuse_read_only()?;
        if first_seq == 0 {
            return Err(StoreError::Invalid {
                field: "seq",
                reason: "log numbers start at 1".into(),
            });
        }
        self.check_ops(&ops)?;
        self.refuse_not_replica()?;
        // Rows encoded before any lock, as a writer does.
        let v = self.version();
        let mut prepared = Vec::with_capacity(ops.len());
        for op in ops {
            let rows = match &op {
                Op::Upsert { vectors, .. } => Some(v.rows_for(vectors, &self.cpu)?),
                _ => None,
            };
            prepared.push((op, rows));
        }
        let mut tickets = Vec::new();
        let (last, skipped) = {
            let mut w = self.writer.lock();
            // Alone in its group: wait until no group commits and nothing is queued.
            loop {
                if w.gate_closed || w.held {
                    self.gate.wait(&mut w);
                } else if w.flushing || !w.queue.is_empty() {
                    self.flushed.wait(&mut w);
                } else {
                    break;
                }
            }
            if let Some(m) = &w.stopped {
                return Err(StoreError::WritesStopped(m.clone()));
            }
            self.refuse_dropped()?;
            let next = w.next_lsn;
            if first_seq > next {
                return Err(StoreError::Precondition(format!(
                    "op {first_seq} does not follow the last one applied, {}: ops {next}..{} are missing",
                    next - 1,
                    first_seq - 1
                )));
            }
            let skip = ((next - first_seq) as usize).min(prepared.len());
            for (op, rows) in prepared.into_iter().skip(skip) {
                let ticket: Ticket = Arc::new(TicketState {
                    standing: Mutex::new(Standing::Waiting),
                    changed: Condvar::new(),
                });
                w.queue.push(QueuedWrite {
                    op,
                    mode: UpsertMode::Upsert,
                    rows,
                    encoded_with: v.quantizers.clone(),
                    log_always: true,
                    ticket: ticket.clone(),
                });
                tickets.push(ticket);
            }
            if tickets.is_empty() {
                return Ok(Applied {
                    changed: Vec::new(),
                    skipped: skip,
                    last_seq: next - 1,
                });
            }
            w.flushing = true;
            (next - 1 + tickets.len() as u64, skip)
        };
        self.flush_group();
        let mut changed = Vec::with_capacity(tickets.len());
        for t in &tickets {
            changed.push(self.commit(t)?);
        }
        Ok(Applied {
            changed,
            skipped,
            last_seq: last,
        })
    }

    fn write(
        &self,
        op: Op,
        rows: Option<Rows>,
        encoded_with: Option<Arc<IvfPqIndex>>,
    ) -> Result<usize> {
        self.write_queued(op, UpsertMode::Upsert, rows, encoded_with)
    }

    fn write_queued(
        &self,
        op: Op,
        mode: UpsertMode,
        rows: Option<Rows>,
        encoded_with: Option<Arc<IvfPqIndex>>,
    ) -> Result<usize> {
        self.refuse_read_only()?;
        self.refuse_follower()?;
        wal::check_size(&op)?;
        let ticket: Ticket = Arc::new(TicketState {
            standing: Mutex::new(Standing::Waiting),
            changed: Condvar::new(),
        });
        let lead = {
            let mut w = self.writer.lock();
            while w.gate_closed || w.held {
                self.gate.wait(&mut w);
            }
            if let Some(m) = &w.stopped {
                return Err(StoreError::WritesStopped(m.clone()));
            }
            self.refuse_dropped()?;
            w.queue.push(QueuedWrite {
                op,
                mode,
                rows,
                encoded_with,
                log_always: false,
                ticket: ticket.clone(),
            });
            // No group being committed: this writer commits the queue now.
            !std::mem::replace(&mut w.flushing, true)
        };
        if lead {
            self.flush_group();
        }
        self.commit(&ticket)
    }

    /// Waits until `ticket`'s group is committed, committing the queue (with `ticket` in it)
    /// when the role is handed to this writer.
    fn commit(&self, ticket: &Ticket) -> Result<usize> {
        loop {
            {
                let mut s = ticket.standing.lock();
                loop {
                    match &*s {
                        Standing::Done(r) => return r.clone().map_err(Into::into),
                        Standing::Turn => break,
                        Standing::Waiting => ticket.changed.wait(&mut s),
                    }
                }
                *s = Standing::Waiting;
            }
            self.flush_group();
        }
    }

    /// Commits the queued writes as one group; the caller holds the committing role. They are
    /// applied in order to a copy of the committed version (each touched list copied once for
    /// the group), their records written and fsynced together, and only then is the result
    /// published and every writer answered. On failure nothing is published: the committed
    /// version never held the group. At the end the role passes to the first writer queued
    /// meanwhile (or is given up): only the group's own writers and that one successor wake.
    fn flush_group(&self) {
        let (base, mut queue, first_lsn) = {
            let mut w = self.writer.lock();
            (w.staged.clone(), std::mem::take(&mut w.queue), w.next_lsn)
        };
        // A panic while applying fails the group like an error (nothing of it is published and
        // the committing role passes on), instead of leaving every writer waiting.
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut v = (*base).clone();
            let mut buf = Vec::new();
            let mut lsn = first_lsn;
            let mut counts = Vec::with_capacity(queue.len());
            for q in queue.iter_mut() {
                let same = match (&q.encoded_with, &v.quantizers) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                };
                fail::fail_point!("write::apply");
                // A delete by filter is resolved here, in log order, and logged as the ids it
                // deleted: replay and replicas apply ids, never evaluate the filter again.
                if let Op::DeleteFilter { filter } = &q.op {
                    let ids = v
                        .resolve_filter(filter)
                        .map_err(|e| Failure::Apply(e.to_string()))?;
                    q.op = Op::Delete { ids };
                }
                // Rows encoded before a training switch are encoded again.
                let mut rows = if same { q.rows.take() } else { None };
                if q.mode != UpsertMode::Upsert {
                    // A vector update whose merged payloads no longer fit is refused alone,
                    // before anything of it is applied or logged.
                    let fits = retain_for_mode(&v, &mut q.op, &mut rows, q.mode)
                        .and_then(|()| wal::check_size(&q.op));
                    if let Err(e) = fits {
                        let (field, reason) = match e {
                            StoreError::Invalid { field, reason } => (field, reason),
                            other => ("points", other.to_string()),
                        };
                        counts.push(Err(Failure::Invalid(field, reason)));
                        continue;
                    }
                    if matches!(&q.op, Op::Upsert { ids, .. } if ids.is_empty()) {
                        counts.push(Ok(0));
                        continue;
                    }
                }
                let n = v
                    .apply(&q.op, rows, &self.cpu, &self.backend)
                    .map_err(|e| Failure::Apply(e.to_string()))?;
                if q.log_always {
                    // One op, one number: the external log's.
                    wal::check_size(&q.op).map_err(|e| Failure::Apply(e.to_string()))?;
                    wal::encode(lsn, &q.op, &mut buf);
                    v.lsn = lsn;
                    lsn += 1;
                } else if n > 0 || matches!(q.op, Op::Upsert { .. } | Op::Describe(_)) {
                    // (A delete by filter may resolve to more ids than one record holds.)
                    for part in wal::records_of(&q.op) {
                        wal::encode(lsn, part.as_ref(), &mut buf);
                        v.lsn = lsn;
                        lsn += 1;
                    }
                }
                counts.push(Ok(n));
            }
            Ok((v, counts, lsn, buf))
        }));
        let mut outcome: std::result::Result<GroupApplied<B>, Failure> =
            applied.unwrap_or_else(|p| {
                Err(Failure::Apply(format!(
                    "applying the writes panicked: {}",
                    panic_message(&*p)
                )))
            });
        if let Ok((_, _, _, buf)) = &outcome {
            if !buf.is_empty() {
                let r = match self.wal.lock().as_mut() {
                    Some(wal) => wal.write_group(buf),
                    None => Err(StoreError::WritesStopped("the log is closed".into())),
                };
                if let Err(e) = r {
                    outcome = Err(match e {
                        StoreError::WalFailed { path, reason } => Failure::Wal(path, reason),
                        StoreError::WritesStopped(m) => Failure::Stopped(m),
                        other => Failure::Stopped(other.to_string()),
                    });
                }
            }
        }
        let (answers, next) = {
            let mut w = self.writer.lock();
            let answers: Vec<std::result::Result<usize, Failure>> = match outcome {
                Ok((mut v, counts, next_lsn, _)) => {
                    // A full appendable segment is sealed at once, in memory: the next group
                    // copies the lists it touches, and those must not grow while a merge or
                    // a checkpoint keeps the optimizer from sealing it with its files.
                    if v.appendable.len() >= self.cfg.seal_rows {
                        self.seal_in_memory(&mut w, &mut v);
                    }
                    let v = Arc::new(v);
                    w.staged = v.clone();
                    w.next_lsn = next_lsn;
                    *self.published.write() = v;
                    // Description changes take effect with their group (a checkpoint, which
                    // quiesces the writer first, writes them into the manifest).
                    for q in queue.iter() {
                        if let Op::Describe(d) = &q.op {
                            self.meta.write().describe(d);
                        }
                    }
                    counts
                }
                Err(failure) => {
                    if let Failure::Stopped(m) = &failure {
                        w.stopped = Some(m.clone());
                    }
                    // A failed append was cut back: nothing of the group is in the log, and
                    // its numbers go to the next group, so the log's numbers have no gaps (a
                    // replica's log is numbered by its source). When cutting back failed too,
                    // writes stop and the group's records may or may not be in the file: no
                    // checkpoint runs after that (it could cover numbers the segments lack),
                    // and the next start replays whatever the file holds.
                    w.next_lsn = first_lsn;
                    tracing::error!(collection = %self.meta.read().name, error = ?failure, "a group of writes failed; none of them was applied");
                    queue.iter().map(|_| Err(failure.clone())).collect()
                }
            };
            // The role passes to the first writer queued meanwhile, or is given up.
            let next = w.queue.first().map(|q| q.ticket.clone());
            w.flushing = next.is_some();
            self.flushed.notify_all();
            (answers, next)
        };
        for (q, a) in queue.iter().zip(answers) {
            q.ticket.set(Standing::Done(a));
        }
        if let Some(t) = next {
            t.set(Standing::Turn);
        }
    }

    /// Closes the gate, commits what is pending and returns the writer lock with nothing
    /// pending: the caller may change the version; [`Collection::open_gate`] ends it.
    fn quiesce(&self) -> MutexGuard<'_, Writer<B>> {
        let mut w = self.writer.lock();
        while w.gate_closed {
            self.gate.wait(&mut w);
        }
        w.gate_closed = true;
        loop {
            if w.queue.is_empty() && !w.flushing {
                return w;
            }
            if w.flushing {
                // A writer commits a group (and hands the role on while writes are queued).
                self.flushed.wait(&mut w);
                continue;
            }
            w.flushing = true;
            drop(w);
            self.flush_group();
            w = self.writer.lock();
        }
    }

    /// Runs `f` on the writer state with the gate closed and nothing pending (a structural
    /// change), then reopens the gate.
    fn switch<T>(&self, f: impl FnOnce(&mut Writer<B>) -> Result<T>) -> Result<T> {
        let mut w = self.quiesce();
        // The gate reopens whatever `f` does, a panic included.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut w)));
        self.open_gate(w);
        r.unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    fn open_gate(&self, mut w: MutexGuard<'_, Writer<B>>) {
        w.gate_closed = false;
        drop(w);
        self.gate.notify_all();
    }

    /// Publishes `v` as both staged and published (nothing pending: under [`Self::quiesce`]).
    fn publish(&self, w: &mut Writer<B>, v: Version<B>) {
        let v = Arc::new(v);
        w.staged = v.clone();
        *self.published.write() = v;
    }

    /// Bytes in the current log file.
    pub fn wal_bytes(&self) -> u64 {
        self.wal.lock().as_ref().map_or(0, |w| w.bytes())
    }

    /// Seals the appendable segment (if it holds points), starts a new log file, writes every
    /// segment not yet on disk, the deletions since, and a new manifest; then removes the log
    /// files and segment files the manifest no longer needs. Writers wait only for the seal.
    /// Returns the bytes of segment files written.
    pub fn checkpoint(&self) -> Result<u64> {
        self.refuse_read_only()?;
        let _one = self.structural.lock();
        self.refuse_dropped()?;
        self.checkpoint_locked()
    }

    fn checkpoint_locked(&self) -> Result<u64> {
        let (version, wal_from, next_segment_id) = {
            self.switch(|w| -> Result<_> {
                // After a failure the log could not undo, what it holds is known only to a
                // replay: a checkpoint now could cover numbers whose ops are not applied.
                if let Some(m) = &w.stopped {
                    return Err(StoreError::WritesStopped(m.clone()));
                }
                let mut v = (*w.staged).clone();
                if !v.appendable.is_empty() {
                    let id = w.next_segment_id;
                    w.next_segment_id += 1;
                    // While a training runs the appendable segment stays flat: its points
                    // are encoded with the new quantizers after the switch, never with the
                    // ones the switch replaces.
                    let flat = matches!(v.appendable.index, SegmentIndex::Flat(_))
                        && self.job() == JobState::Training;
                    let quantizers = if flat { None } else { v.quantizers.as_ref() };
                    v.segments.push(v.appendable.clone());
                    v.appendable = Arc::new(empty_appendable(
                        id,
                        &self.meta.read(),
                        quantizers,
                        &self.cpu,
                    )?);
                }
                let from = w.next_lsn;
                if let Some(wal) = self.wal.lock().as_mut() {
                    if wal.bytes() > wal::HEADER {
                        wal.rotate(from)?;
                    }
                }
                self.publish(w, v.clone());
                Ok((Arc::new(v), from, w.next_segment_id))
            })?
        };
        self.write_checkpoint(&version, wal_from, next_segment_id)
    }

    fn write_checkpoint(
        &self,
        version: &Version<B>,
        wal_from: u64,
        next_segment_id: u64,
    ) -> Result<u64> {
        fail::fail_point!("checkpoint::before", |_| Err(StoreError::io(
            "checkpoint",
            &self.dir,
            std::io::Error::other("injected failure at checkpoint::before")
        )));
        let segdir = self.dir.join("segments");
        let mut bytes = 0u64;
        let mut files = self.files.lock();
        let mut quantizers = files.quantizers.clone();
        if let Some(q) = &version.quantizers {
            // First trained, or retrained: the new quantizers get a file of their own (the old
            // one goes once the manifest no longer names it).
            if !quantizers
                .as_ref()
                .is_some_and(|(_, on_disk)| Arc::ptr_eq(q, on_disk))
            {
                let name = format!("quantizers-{}.qvr", version.appendable.id);
                quiver_engine::persist::save(q, &segdir.join(&name))?;
                quantizers = Some((name, q.clone()));
            }
        }
        let mut entries = Vec::new();
        let mut written = HashMap::new();
        for s in &version.segments {
            let (file, mut deletes, mut recorded) = match files.written.get(&s.id) {
                Some(x) => x.clone(),
                None => {
                    let (name, b) = self.write_segment(s)?;
                    bytes += b;
                    // The file holds the points live now: deletions so far are in it.
                    (name, None, s.deleted.len())
                }
            };
            if s.deleted.len() > recorded {
                let name = format!("{}-{}.del", s.id, s.deleted.len());
                let ids: Vec<u64> = s.deleted.iter().copied().collect();
                crate::manifest::write_deletes(&segdir.join(&name), &ids)?;
                deletes = Some(name);
                recorded = s.deleted.len();
            }
            written.insert(s.id, (file.clone(), deletes.clone(), recorded));
            entries.push(SegmentEntry {
                id: s.id,
                file,
                deletes,
            });
        }
        let manifest = Manifest {
            format: crate::manifest::FORMAT,
            meta: self.meta.read().clone(),
            quantizers: quantizers.as_ref().map(|(name, _)| name.clone()),
            segments: entries,
            wal_from,
            next_segment_id,
            replica: self.follower.load(Ordering::Acquire),
            drift: version
                .quantizers
                .as_ref()
                .map(|_| self.drift.lock().clone()),
        };
        manifest.write(&self.dir)?;
        files.written = written;
        files.quantizers = quantizers;
        drop(files);
        wal::remove_covered(&self.dir.join("wal"), wal_from)?;
        self.remove_unreferenced(&manifest)?;
        Ok(bytes)
    }

    fn write_segment(&self, s: &Segment<B>) -> Result<(String, u64)> {
        let segdir = self.dir.join("segments");
        match &s.index {
            SegmentIndex::Flat(f) => {
                let name = format!("{}.flat", s.id);
                let b = crate::flatfile::save_flat(f, &segdir.join(&name))?;
                Ok((name, b))
            }
            _ => {
                let name = format!("{}.qvr", s.id);
                let path = segdir.join(&name);
                let index = s.ivf().expect("an IVF segment");
                quiver_engine::persist::save(index, &path)?;
                let b = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                Ok((name, b))
            }
        }
    }

    fn remove_unreferenced(&self, m: &Manifest) -> Result<()> {
        let segdir = self.dir.join("segments");
        let mut keep: HashSet<String> = HashSet::new();
        keep.extend(m.quantizers.iter().cloned());
        for e in &m.segments {
            keep.insert(e.file.clone());
            keep.extend(e.deletes.iter().cloned());
        }
        let entries =
            std::fs::read_dir(&segdir).map_err(|e| StoreError::io("listing", &segdir, e))?;
        let mut removed = false;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) && !name.starts_with(crate::fsutil::TEMP_PREFIX) {
                std::fs::remove_file(e.path())
                    .map_err(|err| StoreError::io("removing", e.path(), err))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&segdir).map_err(|e| StoreError::io("syncing", &segdir, e))?;
        }
        Ok(())
    }

    /// Starts training in the background: the first, or a retraining of a trained collection
    /// (new quantizers from the points stored now, every segment encoded again). Fails at once
    /// if a training runs.
    pub fn start_train(self: &Arc<Self>, overrides: Option<IndexConfig>) -> Result<()> {
        self.refuse_read_only()?;
        self.refuse_follower()?;
        {
            let mut job = self.job.lock();
            if *job == JobState::Training {
                return Err(StoreError::Precondition(
                    "the collection is already training".into(),
                ));
            }
            *job = JobState::Training;
        }
        // Asked for: trainings by size or drift may run again after this one.
        self.interrupted.store(false, Ordering::Release);
        self.spawn_training(overrides, Trigger::Asked)
    }

    /// Runs [`Self::run_training`] on a thread of its own (the job state already says
    /// training): a training never holds up the optimizer's visits to other collections.
    fn spawn_training(
        self: &Arc<Self>,
        overrides: Option<IndexConfig>,
        trigger: Trigger,
    ) -> Result<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("quiver-train".into())
            .spawn(move || {
                crate::priority::lower_current_thread(me.cfg.write_nice);
                let min_points = (trigger == Trigger::Size).then(|| me.training_size());
                let r = me.run_training(overrides, min_points);
                if r.is_err() && trigger == Trigger::Drift && !me.training_cancelled() {
                    // A failed retraining waits for as many new points again. One stopped
                    // by a shutdown or a drop says nothing about the data: the trigger
                    // stays, so it is due again after a restart.
                    let mut d = me.drift.lock();
                    d.added = 0;
                    d.added_error = 0.0;
                }
            })
            .map_err(|e| {
                *self.job.lock() = JobState::Failed(format!("starting the training thread: {e}"));
                StoreError::io("starting the training thread", &self.dir, e)
            })?;
        Ok(())
    }

    /// Runs a training whose job state the caller set to training, and records the outcome.
    /// `min_points` (a training started by the collection's size): fewer live points than
    /// that when the training takes its inputs — deletes landed between the optimizer's look
    /// and the snapshot — is not a failure: the collection stays untrained and ready, and
    /// the optimizer starts again once it holds enough.
    fn run_training(
        &self,
        overrides: Option<IndexConfig>,
        min_points: Option<usize>,
    ) -> Result<()> {
        // A panic fails the training like an error: the job state is not left at training.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.train_now(overrides, min_points)
        }))
        .unwrap_or_else(|p| {
            Err(StoreError::Precondition(format!(
                "training panicked: {}",
                panic_message(&*p)
            )))
        });
        // Ended, however it ended (only a stopped process leaves the marker). Under the
        // structural lock and only while the folder is still this collection's.
        {
            let _one = self.structural.lock();
            if !self.dropped.load(Ordering::Acquire) {
                let _ = std::fs::remove_file(self.dir.join(TRAINING_MARKER));
            }
        }
        let state = match &r {
            Ok(TrainOutcome::Trained) => JobState::Ready,
            Ok(TrainOutcome::TooFew(n)) => {
                tracing::info!(collection = %self.meta.read().name, live = n, "fewer points than the training size when the training took its inputs: waiting for more");
                JobState::Ready
            }
            Err(e) => {
                tracing::error!(collection = %self.meta.read().name, error = %e, "training failed; the collection is unchanged");
                JobState::Failed(e.to_string())
            }
        };
        *self.job.lock() = state;
        r.map(|_| ())
    }

    /// The live points at which an untrained collection trains by itself: its `train_at`,
    /// never below what a training needs (a list per point, 256 for the PQ code book); 0
    /// when it does not train by itself.
    fn training_size(&self) -> usize {
        let m = self.meta.read();
        if m.index.train_at == 0 {
            return 0;
        }
        m.index.train_at.max(u64::from(m.index.nlist)).max(256) as usize
    }

    /// Starts training an untrained collection that reached its `train_at` size (on a thread
    /// of its own); false when a training runs already or the last one failed.
    fn train_by_itself(self: &Arc<Self>, live: usize) -> Result<bool> {
        // A replica trains only when its log says so (`apply_train`).
        if self.follower.load(Ordering::Acquire) {
            return Ok(false);
        }
        {
            let mut job = self.job.lock();
            if *job != JobState::Ready {
                return Ok(false);
            }
            *job = JobState::Training;
        }
        tracing::info!(collection = %self.meta.read().name, live, "the collection reached its training size: training its index");
        self.spawn_training(None, Trigger::Size)?;
        Ok(true)
    }

    /// Starts a retraining (on a thread of its own) when the data has drifted from the
    /// quantizers (see [`crate::drift`]) and no other training runs. Returns whether it
    /// started. After a failure, the count of new points starts again (the next try waits
    /// for as many new points again).
    fn retrain_if_drifted(self: &Arc<Self>) -> Result<bool> {
        let (due, ratio, added) = {
            let d = self.drift.lock();
            (
                d.due(self.cfg.retrain_share, self.cfg.retrain_factor),
                d.ratio(),
                d.added,
            )
        };
        if !due || self.interrupted.load(Ordering::Acquire) || self.follower.load(Ordering::Acquire)
        {
            return Ok(false);
        }
        {
            let mut job = self.job.lock();
            if *job == JobState::Training {
                return Ok(false);
            }
            *job = JobState::Training;
        }
        tracing::info!(collection = %self.meta.read().name, ratio = ratio.unwrap_or(0.0), added, "the data has drifted from the quantizers: retraining");
        self.spawn_training(None, Trigger::Drift)?;
        Ok(true)
    }

    /// While a training holds checkpoints back (it holds the structural lock for minutes on a
    /// large collection), seals a full appendable segment in memory only, so that writes keep
    /// copying at most `seal_rows` points of it: the log still holds its records (nothing is
    /// removed before a checkpoint), and the checkpoint after the training writes it. Returns
    /// whether it sealed.
    fn seal_held_back(&self) -> Result<bool> {
        if self.version().appendable.len() < self.cfg.seal_rows {
            return Ok(false);
        }
        if self.structural.try_lock().is_some() {
            // Nothing holds checkpoints back: the next step checkpoints.
            return Ok(false);
        }
        self.switch(|w| -> Result<bool> {
            let mut v = (*w.staged).clone();
            if v.appendable.len() < self.cfg.seal_rows || !self.seal_in_memory(w, &mut v) {
                return Ok(false);
            }
            self.publish(w, v);
            Ok(true)
        })
    }

    /// Moves `v`'s appendable segment to its sealed segments and gives it a new, empty one
    /// of the same kind (flat while a training runs). No file is written: the log keeps the
    /// records until the next checkpoint writes the segment. Returns false (and leaves `v`)
    /// when the new segment could not be made.
    fn seal_in_memory(&self, w: &mut Writer<B>, v: &mut Version<B>) -> bool {
        let flat = matches!(v.appendable.index, SegmentIndex::Flat(_));
        let quantizers = if flat { None } else { v.quantizers.clone() };
        let next = empty_appendable(
            w.next_segment_id,
            &self.meta.read(),
            quantizers.as_ref(),
            &self.cpu,
        );
        match next {
            Ok(next) => {
                w.next_segment_id += 1;
                let full = std::mem::replace(&mut v.appendable, Arc::new(next));
                v.segments.push(full);
                true
            }
            Err(e) => {
                tracing::warn!(collection = %self.meta.read().name, error = %e, "sealing the appendable segment in memory failed; it goes on growing until the next checkpoint");
                false
            }
        }
    }

    /// True when a sealed segment has no file yet (sealed in memory by a write).
    fn has_unwritten_segments(&self) -> bool {
        let v = self.version();
        let files = self.files.lock();
        v.segments
            .iter()
            .any(|s| !files.written.contains_key(&s.id))
    }

    /// Measures the drift baseline of quantizers that came without one (an index loaded from
    /// a file, a collection trained by an earlier version) over an even spread of the points
    /// in its sealed segments. Returns whether it did.
    fn measure_missing_baseline(&self, v: &Version<B>, q: &Arc<IvfPqIndex>) -> bool {
        if self.drift.lock().baseline > 0.0 {
            return false;
        }
        let total: usize = v
            .segments
            .iter()
            .filter_map(|s| s.ivf())
            .map(|i| i.len())
            .sum();
        if total == 0 {
            return false;
        }
        let step = total.div_ceil(crate::drift::BASELINE_SAMPLE).max(1);
        let mut sample = Vec::new();
        let mut i = 0usize;
        for index in v.segments.iter().filter_map(|s| s.ivf()) {
            index.for_each_live(|_, x| {
                if i.is_multiple_of(step) {
                    sample.extend_from_slice(x);
                }
                i += 1;
            });
        }
        let baseline = crate::priority::in_background(self.cfg.write_nice, || {
            crate::drift::mean_error(q, &sample)
        });
        let mut d = self.drift.lock();
        if d.baseline == 0.0 {
            *d = Drift::after_training(baseline, total as u64);
        }
        true
    }

    /// Where the data stands against the quantizers (see [`crate::drift`]).
    pub fn drift(&self) -> Drift {
        self.drift.lock().clone()
    }

    /// Waits until no background job runs; returns the last job's failure, if any.
    pub fn wait_job(&self) -> Result<()> {
        loop {
            match self.job() {
                JobState::Training => std::thread::sleep(std::time::Duration::from_millis(5)),
                JobState::Ready => return Ok(()),
                JobState::Failed(m) => return Err(StoreError::Precondition(m)),
            }
        }
    }

    /// Trains the IVF-PQ quantizers on the points present (again, for a trained collection)
    /// and switches the collection to IVF-PQ segments encoded with them. Writes go on meanwhile (into flat segments, indexed later by the
    /// optimizer); the switch is published whole and made durable by a checkpoint.
    ///
    /// The structural lock is held to pick the inputs and to switch, not in between: while it
    /// trains, checkpoints go on (the log stays bounded) and a drop or shutdown closes the
    /// collection without waiting (the training stops at its next step and publishes nothing).
    /// Merges, purges and indexing wait (they are refused while the job is training), so the
    /// inputs stay the segments the switch replaces.
    /// The description a training with `overrides` gives the collection, and its engine
    /// parameters for `n` points (refused below what a training needs).
    fn training_plan(
        &self,
        overrides: Option<IndexConfig>,
        n: usize,
    ) -> Result<(CollectionMeta, IndexParams)> {
        let mut meta = self.meta.read().clone();
        if let Some(o) = overrides {
            if o.nlist != 0 {
                meta.index.nlist = o.nlist;
            }
            if o.pq_m != 0 {
                meta.index.pq_m = o.pq_m;
            }
            if !o.refine.is_empty() {
                meta.index.refine = o.refine;
                meta.index.refine_factor = o.refine_factor;
            }
            if o.seed != 0 {
                meta.index.seed = o.seed;
            }
        }
        let dim = meta.dim;
        let nlist = if meta.index.nlist == 0 {
            auto_nlist(n)
        } else {
            meta.index.nlist as usize
        };
        let pq_m = if meta.index.pq_m == 0 {
            auto_pq_m(dim)
        } else {
            meta.index.pq_m as usize
        };
        let mut params = IndexParams::new(meta.metric(), dim, nlist, pq_m);
        params.refine = meta.index.refine_kind();
        params.seed = meta.index.seed;
        params.validate()?;
        if n < nlist.max(256) {
            return Err(StoreError::Precondition(format!(
                "training needs at least {} vectors (nlist = {nlist}, and 256 for the PQ); the collection has {n}",
                nlist.max(256)
            )));
        }
        Ok((meta, params))
    }

    /// Trains quantizers on the points present now (the sample drawn in id order, as
    /// [`Self::start_train`] does) without switching to them: what the leader of a replicated
    /// collection does before it logs a training that every replica applies
    /// ([`Self::apply_train`]). Returns the trained, empty index.
    pub fn train_quantizers(&self, overrides: Option<IndexConfig>) -> Result<IvfPqIndex> {
        self.refuse_read_only()?;
        let v = self.version();
        let mut inputs = v.segments.clone();
        inputs.push(v.appendable.clone());
        let n = v.len();
        let (_, params) = self.training_plan(overrides, n)?;
        let sample = crate::training_input::sample_in_id_order(
            &inputs,
            params.dim,
            params.default_train_sample(),
            params.seed,
        )?;
        let stop = TrainingStop {
            dropped: &self.dropped,
            stopped: &self.training_stopped,
        };
        crate::priority::in_background(self.cfg.write_nice, || {
            Ok(IvfPqIndex::train(params, &sample, &stop)?)
        })
    }

    /// Applies a training entry of an external log (numbered `seq`, see [`Self::apply`]) to a
    /// replica: it switches to `quantizers` (trained by the log's leader,
    /// [`Self::train_quantizers`]) with every point encoded with them, as of this number. The
    /// points are encoded while ops wait (they follow this number); a checkpoint makes the
    /// switch durable before any later op is logged and before this returns, so a replica
    /// that stops before that applies the entry again, and one that stops after it never
    /// does. A number at or below [`Self::last_seq`] is skipped; a gap is refused.
    pub fn apply_train(&self, seq: u64, quantizers: &IvfPqIndex) -> Result<Applied> {
        self.refuse_read_only()?;
        if seq == 0 {
            return Err(StoreError::Invalid {
                field: "seq",
                reason: "log numbers start at 1".into(),
            });
        }
        self.refuse_not_replica()?;
        let dim = self.meta.read().dim;
        check_shape(
            &self.dir,
            quantizers.dim(),
            quantizers.metric(),
            &self.meta.read(),
        )?;
        let _one = self.structural.lock();
        self.refuse_dropped()?;
        // Where the log stands: every op before `seq` applied.
        let base = {
            let w = self.writer.lock();
            if let Some(m) = &w.stopped {
                return Err(StoreError::WritesStopped(m.clone()));
            }
            let next = w.next_lsn;
            if seq < next {
                return Ok(Applied {
                    changed: Vec::new(),
                    skipped: 1,
                    last_seq: next - 1,
                });
            }
            if seq > next {
                return Err(StoreError::Precondition(format!(
                    "op {seq} does not follow the last one applied, {}: ops {next}..{} are missing",
                    next - 1,
                    seq - 1
                )));
            }
            w.staged.clone()
        };
        // Encoded under the structural lock only (no other switch runs; an op numbered after
        // this one is refused as a gap meanwhile).
        let q = Arc::new(quantizers.empty_like());
        let stop = TrainingStop {
            dropped: &self.dropped,
            stopped: &self.training_stopped,
        };
        let mut inputs = base.segments.clone();
        inputs.push(base.appendable.clone());
        let n = base.len();
        let (index, baseline) = crate::priority::in_background(self.cfg.write_nice, || {
            let mut index = q.empty_like();
            crate::training_input::for_each_block(&inputs, dim, |i, v, p| {
                index.add_with_payloads(v, Some(i), p, &stop)?;
                Ok(())
            })?;
            // The drift baseline over an even spread of the points, as a training's.
            let sample = crate::training_input::sample_in_id_order(
                &inputs,
                dim,
                crate::drift::BASELINE_SAMPLE,
                q.params().seed,
            )?;
            let sample = quiver_engine::index::prepare_vectors(q.metric(), dim, &sample)?;
            Ok::<_, StoreError>((index, crate::drift::mean_error(&q, &sample)))
        })?;
        let sealed = if index.is_empty() {
            None
        } else {
            Some(self.seal_index(Arc::new(index))?)
        };
        self.switch(|w| -> Result<()> {
            if w.next_lsn != seq || !Arc::ptr_eq(&w.staged, &base) {
                return Err(StoreError::Precondition(format!(
                    "ops were applied while the training entry {seq} was; apply it again"
                )));
            }
            let mut next_version = (*base).clone();
            next_version.segments = Vec::new();
            if let Some(sealed) = sealed {
                let id = w.next_segment_id;
                w.next_segment_id += 1;
                next_version
                    .segments
                    .push(Arc::new(Segment::new(id, sealed)));
            }
            let app = w.next_segment_id;
            w.next_segment_id += 1;
            let meta = {
                let _files = self.files.lock();
                let mut live = self.meta.write();
                // The index the quantizers are (their lists, PQ, refine kind and seed); the
                // training size and, for an unchanged refine kind, the refine factor stay.
                let trained = IndexConfig::of_index(q.params());
                let refine_factor = if live.index.refine_kind() == q.params().refine {
                    live.index.refine_factor
                } else {
                    trained.refine_factor
                };
                live.index = IndexConfig {
                    train_at: live.index.train_at,
                    refine_factor,
                    ..trained
                };
                live.clone()
            };
            next_version.appendable = Arc::new(empty_appendable(app, &meta, Some(&q), &self.cpu)?);
            next_version.quantizers = Some(q.clone());
            next_version.lsn = seq;
            *self.drift.lock() = Drift::after_training(baseline, n as u64);
            w.next_lsn = seq + 1;
            // No op is logged after this number until the switch is durable.
            w.held = true;
            self.publish(w, next_version);
            Ok(())
        })?;
        // A panic in the checkpoint must not leave ops waiting forever: it fails like an error.
        let checkpointed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.checkpoint_locked()))
                .unwrap_or_else(|p| {
                    Err(StoreError::Precondition(format!(
                        "the checkpoint panicked: {}",
                        panic_message(&*p)
                    )))
                });
        {
            let mut w = self.writer.lock();
            w.held = false;
            if let Err(e) = &checkpointed {
                // The switch took number `seq` but is not durable: writes stop, so no later
                // op is logged after a number the log does not hold; a restart applies the
                // entry again.
                w.stopped = Some(format!(
                    "the checkpoint of the training applied at {seq} failed: {e}; restart the collection"
                ));
            }
        }
        self.gate.notify_all();
        checkpointed?;
        Ok(Applied {
            changed: vec![self.version().len()],
            skipped: 0,
            last_seq: seq,
        })
    }

    fn train_now(
        &self,
        overrides: Option<IndexConfig>,
        min_points: Option<usize>,
    ) -> Result<TrainOutcome> {
        fail::fail_point!("train::start");
        let one = self.structural.lock();
        self.refuse_dropped()?;
        if let Some(min) = min_points {
            let live = self.version().len();
            if live < min {
                return Ok(TrainOutcome::TooFew(live));
            }
        }
        // Seal what is appendable, so the inputs are immutable but for deletes. Writes go on
        // into a flat appendable segment (of a trained collection too: its rows are encoded
        // after the switch, with the new quantizers).
        let inputs = {
            self.switch(|w| -> Result<Version<B>> {
                fail::fail_point!("train::switch");
                let mut v = (*w.staged).clone();
                let flat = matches!(v.appendable.index, SegmentIndex::Flat(_));
                if !v.appendable.is_empty() || !flat {
                    let id = w.next_segment_id;
                    w.next_segment_id += 1;
                    v.segments.push(v.appendable.clone());
                    v.appendable =
                        Arc::new(empty_appendable(id, &self.meta.read(), None, &self.cpu)?);
                    self.publish(w, v.clone());
                }
                Ok(v)
            })?
        };
        // Left behind only if the process stops while this trains (see `interrupted`).
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        crate::fsutil::write_atomic(
            &self.dir.join(TRAINING_MARKER),
            &[format!("at unix time {since}").as_bytes()],
        )?;
        drop(one);
        let n: usize = inputs.segments.iter().map(|s| s.len()).sum();
        let (mut meta, params) = self.training_plan(overrides, n)?;
        let (nlist, pq_m, dim) = (params.nlist, params.pq_m, params.dim);
        let name = self.meta.read().name.clone();
        let started = std::time::Instant::now();
        let stop = TrainingStop {
            dropped: &self.dropped,
            stopped: &self.training_stopped,
        };
        let phase = |what: &str| {
            tracing::info!(collection = %name, points = n, seconds = started.elapsed().as_secs_f32(), "training: {what}");
        };
        // The sample is drawn from the points in id order, so the quantizers depend on the
        // points alone, not on how edits, seals and merges happened to lay them out (a
        // retraining of unchanged points, or a replica, trains the same quantizers).
        let sample = crate::training_input::sample_in_id_order(
            &inputs.segments,
            dim,
            params.default_train_sample(),
            params.seed,
        )?;
        phase("sample gathered");
        // The heavy part at background priority: searches keep the cores they need.
        let (quantizers, prepared, baseline) =
            crate::priority::in_background(self.cfg.write_nice, || -> Result<_> {
                let quantizers = Arc::new(IvfPqIndex::train(params, &sample, &stop)?);
                // The drift baseline: the coarse error over (an even spread of) the sample.
                let rows = sample.len() / dim;
                let step = rows.div_ceil(crate::drift::BASELINE_SAMPLE).max(1);
                let part: Vec<f32> = sample
                    .chunks_exact(dim)
                    .step_by(step)
                    .flatten()
                    .copied()
                    .collect();
                let part = quiver_engine::index::prepare_vectors(quantizers.metric(), dim, &part)?;
                let baseline = crate::drift::mean_error(&quantizers, &part);
                drop(sample);
                phase("quantizers trained");
                // Encoded block by block from the inputs: no copy of every vector.
                let mut index = quantizers.empty_like();
                crate::training_input::for_each_block(&inputs.segments, dim, |i, v, p| {
                    index.add_with_payloads(v, Some(i), p, &stop)?;
                    Ok(())
                })?;
                phase("points encoded");
                let prepared = self.seal_index(Arc::new(index))?;
                phase("segment prepared");
                Ok((quantizers, prepared, baseline))
            })?;
        let _one = self.structural.lock();
        fail::fail_point!("train::before_publish", |_| Err(StoreError::Precondition(
            "injected failure at train::before_publish".into()
        )));
        // Dropped while it trained: nothing to publish into a folder about to go.
        self.refuse_dropped()?;
        // Switch: the trained segment replaces the inputs, carrying deletions made meanwhile.
        {
            self.switch(|w| -> Result<()> {
                let cur = (*w.staged).clone();
                let id = w.next_segment_id;
                w.next_segment_id += 1;
                let mut seg = Segment::new(id, prepared);
                let input_ids: HashSet<u64> = inputs.segments.iter().map(|s| s.id).collect();
                let mut late = Vec::new();
                for s in cur.segments.iter().filter(|s| input_ids.contains(&s.id)) {
                    let before = inputs
                        .segments
                        .iter()
                        .find(|x| x.id == s.id)
                        .map_or(0, |x| x.deleted.len());
                    late.extend(s.deleted.iter().skip(before).copied());
                }
                if let Some((s, _)) =
                    seg.with_delete(&late, false, self.cpu.backend(), &self.backend)?
                {
                    seg = s;
                }
                let mut next = cur.clone();
                next.segments = std::iter::once(Arc::new(seg))
                    .chain(
                        cur.segments
                            .iter()
                            .filter(|s| !input_ids.contains(&s.id))
                            .cloned(),
                    )
                    .collect();
                if !cur.appendable.is_empty() {
                    next.segments.push(cur.appendable.clone());
                }
                let app = w.next_segment_id;
                w.next_segment_id += 1;
                next.appendable =
                    Arc::new(empty_appendable(app, &meta, Some(&quantizers), &self.cpu)?);
                next.quantizers = Some(quantizers.clone());
                meta.index.nlist = nlist as u32;
                meta.index.pq_m = pq_m as u32;
                // Only what the training chose (the index parameters but `train_at`, which a
                // settings change may have set meanwhile: a description change logs and sets
                // only fields, settings and `train_at`); under the files lock, so a
                // checkpoint writes the description whole.
                {
                    let _files = self.files.lock();
                    let mut live = self.meta.write();
                    let train_at = live.index.train_at;
                    live.index = IndexConfig {
                        train_at,
                        ..meta.index.clone()
                    };
                }
                *self.drift.lock() = Drift::after_training(baseline, n as u64);
                self.publish(w, next);
                Ok(())
            })?;
        }
        phase("published");
        self.checkpoint_locked()?;
        phase("checkpointed");
        Ok(TrainOutcome::Trained)
    }

    /// Makes an index file's contents the starting state of this empty, untrained collection
    /// (LoadIndex): its quantizers become the collection's and its points one sealed segment;
    /// a checkpoint makes it durable before this returns.
    pub fn load_index(&self, index: IvfPqIndex) -> Result<()> {
        self.refuse_read_only()?;
        self.refuse_follower()?;
        let _one = self.structural.lock();
        self.refuse_dropped()?;
        let p = index.params().clone();
        {
            let m = self.meta.read();
            if p.dim != m.dim || p.metric != m.metric() {
                return Err(StoreError::Invalid {
                    field: "path",
                    reason: format!(
                        "the index is {}-d {}, the collection {}-d {}",
                        p.dim,
                        p.metric.name(),
                        m.dim,
                        m.metric
                    ),
                });
            }
        }
        let quantizers = Arc::new(index.empty_like());
        let from_file = index.field_specs().to_vec();
        let prepared = self.seal_index(Arc::new(index))?;
        {
            self.switch(|w| -> Result<()> {
                let cur = (*w.staged).clone();
                if cur.quantizers.is_some() || !cur.is_empty() {
                    return Err(StoreError::Precondition(
                        "an index can only be loaded into an empty collection".into(),
                    ));
                }
                let id = w.next_segment_id;
                let app = id + 1;
                w.next_segment_id += 2;
                let mut meta = self.meta.read().clone();
                meta.index = IndexConfig::of_index(&p);
                let next = Version {
                    segments: vec![Arc::new(Segment::new(id, prepared))],
                    appendable: Arc::new(empty_appendable(
                        app,
                        &meta,
                        Some(&quantizers),
                        &self.cpu,
                    )?),
                    quantizers: Some(quantizers),
                    lsn: cur.lsn,
                };
                {
                    let mut m = self.meta.write();
                    m.index = meta.index.clone();
                    // The fields the file indexes join the collection's.
                    for f in from_file {
                        match m.fields.iter_mut().find(|x| x.key == f.key) {
                            Some(have) => *have = f,
                            None => m.fields.push(f),
                        }
                    }
                }
                self.publish(w, next);
                Ok(())
            })?;
        }
        self.checkpoint_locked()?;
        Ok(())
    }

    /// Prepares a sealed IVF-PQ index for searching (uploads it once on a device backend).
    fn seal_index(&self, index: Arc<IvfPqIndex>) -> Result<SegmentIndex<B>> {
        Ok(if self.device {
            SegmentIndex::Device(self.prep.prepare(index)?)
        } else {
            SegmentIndex::Cpu(self.cpu.prepare(index)?)
        })
    }

    /// One step of background work, if any is due: a checkpoint when the log or the appendable
    /// segment is large, indexing flat segments of a trained collection, uploading sealed
    /// segments to the device, merging segments and purging deleted rows. Returns true when
    /// it did something.
    pub fn optimize_step(self: &Arc<Self>) -> Result<bool> {
        // A step that takes long (tests pause it to hold a pool thread).
        fail::fail_point!(
            "optimizer::step::held",
            self.meta.read().name.starts_with("held"),
            |_| Ok(false)
        );
        if self.read_only || self.dropped.load(Ordering::Acquire) {
            return Ok(false);
        }
        if self.job() == JobState::Training {
            // A training's inputs stay as they are until it switches (no merge, purge or
            // indexing), but checkpoints go on, so the log stays bounded however long it
            // trains; while the training holds the structural lock (its first and last
            // steps), full appendable segments are sealed in memory instead.
            if self.checkpoint_due() {
                if let Some(_one) = self.structural.try_lock() {
                    self.refuse_dropped()?;
                    self.checkpoint_locked()?;
                    return Ok(true);
                }
            }
            return self.seal_held_back();
        }
        let mut did = false;
        // Field indexes of segments sealed or loaded without them (one per step).
        if self.build_field_indexes(1) > 0 {
            return Ok(true);
        }
        if self.checkpoint_due() {
            self.checkpoint()?;
            did = true;
        }
        let v = self.version();
        let Some(q) = v.quantizers.clone() else {
            // Untrained: train by itself once large enough (when asked to, and not after a
            // failed training: that waits for a Train call).
            // Never below what a training needs (a list per point at least, and a PQ code
            // book's 256 entries): a training started earlier would fail, and a failed one
            // waits for a Train call.
            let size = self.training_size();
            if size > 0 && v.len() >= size {
                return self.train_by_itself(v.len());
            }
            return Ok(did);
        };
        // Flat segments of a trained collection, and sealed segments still on the CPU.
        if let Some(s) = v.segments.iter().find(|s| {
            matches!(s.index, SegmentIndex::Flat(_))
                || (self.device && matches!(s.index, SegmentIndex::Cpu(_)))
        }) {
            let s = s.clone();
            self.replace_segments(std::slice::from_ref(&s), &q, || {
                Ok(match &s.index {
                    SegmentIndex::Flat(f) => encode_flat(&q, f)?,
                    SegmentIndex::Cpu(p) => p.index().clone(),
                    SegmentIndex::Device(p) => p.index().clone(),
                })
            })?;
            return Ok(true);
        }
        if self.measure_missing_baseline(&v, &q) {
            return Ok(true);
        }
        if self.retrain_if_drifted()? {
            return Ok(true);
        }
        // Purge a segment with many deleted rows.
        if let Some(s) = v.segments.iter().find(|s| {
            let slots = s.slots();
            slots > 0 && (slots - s.len()) as f64 > self.cfg.purge_ratio * slots as f64
        }) {
            let s = s.clone();
            self.replace_segments(std::slice::from_ref(&s), &q, || {
                merge_ivf(&q, std::slice::from_ref(&s))
            })?;
            return Ok(true);
        }
        // Merge: tiers of sizes (a factor of 4 apart); merge a tier holding `merge_factor`
        // segments, or the smallest ones when there are too many.
        let mut tiers: HashMap<u32, Vec<Arc<Segment<B>>>> = HashMap::new();
        for s in &v.segments {
            let t = (s.slots().max(1) as f64 / self.cfg.seal_rows.max(1) as f64)
                .log(4.0)
                .max(0.0) as u32;
            tiers.entry(t).or_default().push(s.clone());
        }
        let mut pick = tiers
            .into_values()
            .find(|t| t.len() >= self.cfg.merge_factor);
        if pick.is_none() && v.segments.len() > self.cfg.max_segments {
            let mut by_size = v.segments.clone();
            by_size.sort_by_key(|s| s.slots());
            pick = Some(by_size[..v.segments.len() - self.cfg.max_segments + 1].to_vec());
        }
        if let Some(group) = pick {
            self.replace_segments(&group, &q, || merge_ivf(&q, &group))?;
            return Ok(true);
        }
        Ok(did)
    }

    /// Whether the log or the appendable segment is large enough for a checkpoint, or a
    /// sealed segment is not yet on disk.
    fn checkpoint_due(&self) -> bool {
        self.wal_bytes() > wal::HEADER + self.cfg.checkpoint_wal_bytes
            || self.version().appendable.len() >= self.cfg.seal_rows
            || self.has_unwritten_segments()
    }

    /// Merges every segment into one (after a checkpoint seals the appendable one): the layout
    /// `quiver build` gives, for the fastest searches. Trained collections only.
    pub fn compact(&self) -> Result<()> {
        self.checkpoint()?;
        if self.job() == JobState::Training {
            // The training's switch leaves one segment in place of its inputs; merging them
            // now would be undone by it.
            return Ok(());
        }
        loop {
            let v = self.version();
            let Some(q) = v.quantizers.clone() else {
                return Ok(());
            };
            let all = v.segments.clone();
            let clean = all.len() == 1
                && all[0].slots() == all[0].len()
                && !matches!(all[0].index, SegmentIndex::Flat(_));
            if all.is_empty() || clean {
                return Ok(());
            }
            self.replace_segments(&all, &q, || merge_ivf(&q, &all))?;
        }
    }

    /// Builds a segment from `inputs` with the quantizers `encoder` (those of the version the
    /// step was planned on) outside every lock, then swaps it in for them, carrying over the
    /// ids deleted from them meanwhile, and checkpoints. A step planned before a training
    /// switched the quantizers is refused before it builds (its inputs may outlive the switch:
    /// flat segments written during the training), so no segment encoded with replaced
    /// quantizers is ever published. Returns false, doing nothing, when another step (the
    /// optimizer's, a compaction's) replaced one of the inputs since they were picked: the
    /// caller plans again.
    fn replace_segments(
        &self,
        inputs: &[Arc<Segment<B>>],
        encoder: &Arc<IvfPqIndex>,
        build: impl FnOnce() -> Result<IvfPqIndex> + Send,
    ) -> Result<bool> {
        fail::fail_point!("optimize::before_replace");
        let _one = self.structural.lock();
        self.refuse_dropped()?;
        // Segments are replaced only under the structural lock: inputs present now stay until
        // the switch below.
        let current = self.version();
        if !inputs
            .iter()
            .all(|i| current.segments.iter().any(|s| s.id == i.id))
        {
            return Ok(false);
        }
        // A training's inputs are not merged under it (its switch replaces them); checked
        // under the structural lock, which a training takes before it picks its inputs.
        if self.job() == JobState::Training {
            return Err(StoreError::Precondition(
                "a training runs; segments are merged after it".into(),
            ));
        }
        // Under the structural lock no training can switch until this step ends.
        if !self
            .version()
            .quantizers
            .as_ref()
            .is_some_and(|q| Arc::ptr_eq(q, encoder))
        {
            return Err(StoreError::Precondition(
                "the quantizers changed (a training) since this step was planned".into(),
            ));
        }
        let fields = self.field_specs();
        let built = crate::priority::in_background(self.cfg.write_nice, || {
            let s = Segment::new(0, self.seal_index(Arc::new(build()?))?);
            // Its field indexes too, before it is published.
            s.field_indexes(&fields);
            Ok::<_, StoreError>(s)
        })?;
        {
            self.switch(|w| -> Result<()> {
                let cur = (*w.staged).clone();
                let ids: HashSet<u64> = inputs.iter().map(|s| s.id).collect();
                let mut late = Vec::new();
                for s in cur.segments.iter().filter(|s| ids.contains(&s.id)) {
                    let before = inputs
                        .iter()
                        .find(|x| x.id == s.id)
                        .map_or(0, |x| x.deleted.len());
                    late.extend(s.deleted.iter().skip(before).copied());
                }
                if cur.segments.iter().filter(|s| ids.contains(&s.id)).count() != inputs.len() {
                    return Err(StoreError::Precondition(
                        "the segments changed during the merge".into(),
                    ));
                }
                let id = w.next_segment_id;
                w.next_segment_id += 1;
                let mut seg = built;
                seg.id = id;
                if let Some((s, _)) =
                    seg.with_delete(&late, true, self.cpu.backend(), &self.backend)?
                {
                    seg = s;
                }
                let pos = cur
                    .segments
                    .iter()
                    .position(|s| ids.contains(&s.id))
                    .unwrap_or(0);
                let mut next = cur.clone();
                next.segments.retain(|s| !ids.contains(&s.id));
                next.segments
                    .insert(pos.min(next.segments.len()), Arc::new(seg));
                self.publish(w, next);
                Ok(())
            })?;
        }
        self.checkpoint_locked()?;
        Ok(true)
    }

    /// Stops a running training at its next step (a k-means iteration, a sub-quantizer, a
    /// block of points encoded: the job then reads "failed: … cancelled") and every later one,
    /// so a shutdown's checkpoint does not wait for a whole training. Nothing of the training
    /// was published; the collection stays as it was.
    pub fn stop_training(&self) {
        self.training_stopped.store(true, Ordering::Release);
    }

    /// Whether trainings are being stopped (a shutdown) or the collection was closed.
    fn training_cancelled(&self) -> bool {
        self.training_stopped.load(Ordering::Acquire) || self.dropped.load(Ordering::Acquire)
    }

    /// Stops writes and background work for good (the collection is being dropped or the
    /// server stops); waits for a running structural step to end (a training ends at its
    /// next step).
    pub fn close(&self) {
        self.dropped.store(true, Ordering::Release);
        let _one = self.structural.lock();
        // A training stopped by a close (a shutdown, a drop) was not interrupted: its marker
        // goes now, while the folder is still this collection's (a training writes it only
        // under this lock, and not once closed).
        if !self.read_only {
            let _ = std::fs::remove_file(self.dir.join(TRAINING_MARKER));
        }
        // A description change in flight is a write: the quiesce below waits for it.
        drop(self.files.lock());
        let w = self.quiesce();
        self.open_gate(w);
    }
}

/// What [`Collection::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// For each op applied (those not skipped), the points it changed.
    pub changed: Vec<usize>,
    /// Ops skipped at the start: applied before (numbered at or below the last one).
    pub skipped: usize,
    /// The number of the last op now applied.
    pub last_seq: u64,
}

/// How a training ended that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrainOutcome {
    /// Trained and published.
    Trained,
    /// Not started: the collection held fewer live points (this many) than the size that
    /// triggered it.
    TooFew(usize),
}

/// What started a training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// A `Train` call.
    Asked,
    /// The collection reached its `train_at` size.
    Size,
    /// The data drifted from the quantizers.
    Drift,
}

/// Refuses a segment or quantizers file whose dimension or metric is not the collection's.
fn check_shape(path: &Path, dim: usize, metric: Metric, meta: &CollectionMeta) -> Result<()> {
    if dim != meta.dim || metric != meta.metric() {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason: format!(
                "holds {dim}-d {metric} vectors; the collection is {}-d {}",
                meta.dim,
                meta.metric()
            ),
        });
    }
    Ok(())
}

/// One IVF-PQ index holding the live points of `parts`. Flat segments (written before the
/// collection was trained, or while it trained) are encoded with the quantizers `q` first:
/// none of their points may be left out.
fn merge_ivf<B: Backend>(q: &IvfPqIndex, parts: &[Arc<Segment<B>>]) -> Result<IvfPqIndex> {
    let mut encoded = Vec::new();
    for s in parts {
        if let SegmentIndex::Flat(f) = &s.index {
            encoded.push(encode_flat(q, f)?);
        }
    }
    let mut indexes: Vec<&IvfPqIndex> = parts.iter().filter_map(|s| s.ivf()).collect();
    indexes.extend(encoded.iter());
    Ok(q.merged(&indexes)?)
}

/// The live points of a flat segment encoded with the trained quantizers `q`.
fn encode_flat(q: &IvfPqIndex, f: &FlatIndex) -> Result<IvfPqIndex> {
    let mut index = q.empty_like();
    let mut ids = Vec::new();
    let mut vectors = Vec::new();
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    f.for_each_live_with_payloads(|a, b, p| {
        ids.extend_from_slice(a);
        vectors.extend_from_slice(b);
        payloads.extend_from_slice(p);
    });
    if payloads.iter().all(|p| p.is_empty()) {
        payloads.clear();
    }
    index.add_with_payloads(&vectors, Some(&ids), &payloads, &NoProgress)?;
    Ok(index)
}

fn check_ids(ids: &[u64]) -> Result<()> {
    let mut seen = HashSet::with_capacity(ids.len());
    for &id in ids {
        if id > i64::MAX as u64 {
            return Err(StoreError::Invalid {
                field: "ids",
                reason: format!("{id} is above 2^63-1"),
            });
        }
        if !seen.insert(id) {
            return Err(StoreError::Invalid {
                field: "ids",
                reason: format!("{id} appears twice in one request"),
            });
        }
    }
    Ok(())
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

/// Keeps the points of an upsert that `mode` lets through against `v` (the version its group
/// has built so far). Rows encoded for the whole upsert are dropped when some points go: the
/// apply encodes the kept ones.
fn retain_for_mode<B: Backend>(
    v: &Version<B>,
    op: &mut Op,
    rows: &mut Option<Rows>,
    mode: UpsertMode,
) -> Result<()> {
    let Op::Upsert {
        ids,
        vectors,
        dim,
        payloads,
    } = op
    else {
        return Ok(());
    };
    let live_only = matches!(mode, UpsertMode::UpdateOnly | UpsertMode::UpdateVectors);
    let keep: Vec<bool> = ids.iter().map(|&id| v.contains(id) == live_only).collect();
    if mode == UpsertMode::UpdateVectors {
        merge_stored_payloads(v, ids, &keep, payloads)?;
    }
    if keep.iter().all(|&k| k) {
        return Ok(());
    }
    // The rows already encoded are kept as they are, the skipped ones left out (no point is
    // encoded again).
    let dim = (*dim).max(1);
    match rows {
        Some(Rows::Encoded(r)) => {
            let size = (r.codes.len() / r.lists.len().max(1)).max(1);
            r.lists = kept_rows(&r.lists, 1, &keep);
            r.codes = kept_rows(&r.codes, size, &keep);
            r.vectors = kept_rows(&r.vectors, dim, &keep);
            if !r.payloads.is_empty() {
                r.payloads = kept_rows(&r.payloads, 1, &keep);
            }
        }
        Some(Rows::Raw(x)) => *x = kept_rows(x, dim, &keep),
        None => {}
    }
    *ids = kept_rows(ids, 1, &keep);
    *vectors = kept_rows(vectors, dim, &keep);
    if !payloads.is_empty() {
        *payloads = kept_rows(payloads, 1, &keep);
    }
    Ok(())
}

/// Each kept point's payload (`payloads[i]` of `ids[i]`; empty: none for any) set over its
/// stored one: the keys written replace those stored, the others are kept. A point whose
/// merged payload is over the limit refuses the write.
fn merge_stored_payloads<B: Backend>(
    v: &Version<B>,
    ids: &[u64],
    keep: &[bool],
    payloads: &mut Vec<Vec<u8>>,
) -> Result<()> {
    let mut merged = Vec::with_capacity(ids.len());
    for (i, &id) in ids.iter().enumerate() {
        let stored = v.payload(id).unwrap_or_default();
        let written = payloads.get(i).map_or(&[][..], |p| p.as_slice());
        if !keep[i] || written.is_empty() {
            merged.push(stored.to_vec());
            continue;
        }
        let m = PayloadEdit::Merge(written.to_vec())
            .apply(stored)
            .map_err(|e| StoreError::Invalid {
                field: "payloads",
                reason: format!("point {id}: its payload with the vectors written: {e}"),
            })?;
        merged.push(m);
    }
    *payloads = merged;
    Ok(())
}

/// The rows of `values` (`width` values each) whose `keep` is true, in order.
fn kept_rows<T: Clone>(values: &[T], width: usize, keep: &[bool]) -> Vec<T> {
    values
        .chunks_exact(width)
        .zip(keep)
        .filter(|(_, &k)| k)
        .flat_map(|(row, _)| row.iter().cloned())
        .collect()
}

/// The message of a caught panic.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

/// A training's cancellation: the collection was closed (dropped, or the server stops) or its
/// training was stopped. The engine checks it between steps.
struct TrainingStop<'a> {
    dropped: &'a AtomicBool,
    stopped: &'a AtomicBool,
}

impl quiver_engine::progress::Progress for TrainingStop<'_> {
    fn stage(&self, _name: &str, _total: u64) {}
    fn advance(&self, _n: u64) {}
    fn cancelled(&self) -> bool {
        self.dropped.load(Ordering::Acquire) || self.stopped.load(Ordering::Acquire)
    }
}
