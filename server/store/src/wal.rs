//! The write-ahead log of one collection: numbered records in a sequence of files
//! `wal/<first lsn>.log`, each created atomically with a header, appended in groups (one write
//! and one fsync per group commit) and removed once a durable checkpoint covers them.
//!
//! File: `"QVRWAL03" | first_lsn u64 | CRC32C u32 of the previous 16 bytes | 0 u32`, then
//! records `length u32 | CRC32C u32 of the body | body`, body `lsn u64 | kind u8 | count u32 |
//! dim u32 | ids u64 × count | …`, by kind:
//! - 1 upsert: `vectors f32 × count × dim`;
//! - 2 delete: nothing more;
//! - 3 upsert with payloads: vectors as kind 1, then `payload length u32 × count` and the
//!   payloads (compact JSON) back to back;
//! - 4 payload edit of the ids: `dim` holds the edit (1 merge keys, 2 replace, 3 delete keys,
//!   4 clear, 5 replace keeping reserved keys), then its JSON (the object to merge or set; the
//!   array of keys to delete);
//! - 5 delete by filter: `count` 0, `dim` the filter's length, then the filter's JSON text.
//!   Only older logs hold these (replay evaluates the filter against the state at that
//!   record); a delete by filter is now logged as a kind 2 of the ids it deleted;
//! - 6 description: `count` 0, `dim` the body's length, then the collection's new indexed
//!   fields, settings and training size as JSON ([`crate::manifest::Description`]).
//!
//! Record numbers (LSNs) increase by one from record to record: a failed group's numbers go to
//! the next group, and a collection fed by another's log ([`crate::Collection::apply`]) logs
//! every op under the source's number. (Logs written before this may have gaps; replay
//! accepts any increasing numbers.)
//!
//! Replay: a record cut short or damaged at the end of the last file, with nothing valid after
//! it, is a torn write (never acknowledged) and is cut off. A damaged record followed by valid
//! ones is corruption: start-up stops naming the file and offset, unless recovery is asked for,
//! which keeps the records before it and drops the rest.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};
use crate::fsutil::{inject, sync_dir, write_atomic};

/// The header of files this version writes. `QVRWAL02` files (no kind 6 records) are read as
/// well; an older binary refuses a `QVRWAL03` file by its header instead of reading a record
/// kind it does not know as damage.
const MAGIC: &[u8; 8] = b"QVRWAL03";
const MAGIC_V2: &[u8; 8] = b"QVRWAL02";
/// Bytes of a file header.
pub const HEADER: u64 = 24;
/// Bytes before a record's body.
const RECORD_HEAD: usize = 8;
/// Smallest body: lsn, kind, count, dim.
const MIN_BODY: usize = 17;
/// Largest body accepted on replay.
const MAX_BODY: usize = 1 << 30;

/// A change to the payloads of some points.
#[derive(Debug, Clone, PartialEq)]
pub enum PayloadEdit {
    /// Set these top-level keys (a JSON object), keeping the others.
    Merge(Vec<u8>),
    /// Replace the whole payload (a JSON object).
    Replace(Vec<u8>),
    /// Remove these top-level keys.
    DeleteKeys(Vec<String>),
    /// Remove the payload.
    Clear,
    /// Replace the whole payload (a JSON object; empty: none) but for the keys starting with
    /// [`RESERVED_KEY_PREFIX`], which a front end keeps for itself (the Qdrant API's UUIDs).
    ReplaceKeepingReserved(Vec<u8>),
}

/// Payload keys a front end reserves for itself: [`PayloadEdit::ReplaceKeepingReserved`]
/// keeps them.
pub const RESERVED_KEY_PREFIX: &str = "__quiver_";

/// The payload key a point's sparse vector named `name` is kept under (Qdrant's sparse
/// vectors: `{"indices": […], "values": […]}`), logged, checkpointed and replayed with the
/// payload, and indexed for search by each segment ([`crate::segment::Segment::sparse_index`]).
pub fn sparse_key(name: &str) -> String {
    format!("{RESERVED_KEY_PREFIX}sparse/{name}")
}

/// The payload key a point's dense vector of the named space `name` is kept under (a
/// collection with several named dense vectors: [`quiver_engine::dense_set::encode`]'s text),
/// logged, checkpointed and replayed with the payload, and gathered for search by each
/// segment ([`crate::segment::Segment::dense_set`]).
pub fn dense_key(name: &str) -> String {
    format!("{RESERVED_KEY_PREFIX}dense/{name}")
}

impl PayloadEdit {
    fn code(&self) -> u32 {
        match self {
            PayloadEdit::Merge(_) => 1,
            PayloadEdit::Replace(_) => 2,
            PayloadEdit::DeleteKeys(_) => 3,
            PayloadEdit::Clear => 4,
            PayloadEdit::ReplaceKeepingReserved(_) => 5,
        }
    }

    fn body(&self) -> Vec<u8> {
        match self {
            PayloadEdit::Merge(b)
            | PayloadEdit::Replace(b)
            | PayloadEdit::ReplaceKeepingReserved(b) => b.clone(),
            PayloadEdit::DeleteKeys(k) => serde_json::to_vec(k).unwrap_or_default(),
            PayloadEdit::Clear => Vec::new(),
        }
    }

    fn parse(code: u32, body: &[u8]) -> Option<PayloadEdit> {
        Some(match code {
            1 => PayloadEdit::Merge(body.to_vec()),
            2 => PayloadEdit::Replace(body.to_vec()),
            3 => PayloadEdit::DeleteKeys(serde_json::from_slice(body).ok()?),
            4 if body.is_empty() => PayloadEdit::Clear,
            5 => PayloadEdit::ReplaceKeepingReserved(body.to_vec()),
            _ => return None,
        })
    }

    /// The payload after this edit of `old` (stored bytes; empty: none).
    pub fn apply(
        &self,
        old: &[u8],
    ) -> std::result::Result<Vec<u8>, quiver_engine::payload::PayloadError> {
        use quiver_engine::payload as p;
        match self {
            PayloadEdit::Merge(b) => p::merged(old, &p::decode(b)),
            PayloadEdit::Replace(b) => Ok(b.clone()),
            PayloadEdit::DeleteKeys(k) => p::without_keys(old, k),
            PayloadEdit::Clear => Ok(Vec::new()),
            PayloadEdit::ReplaceKeepingReserved(b) => {
                let mut new = p::decode(b);
                for (k, v) in p::decode(old) {
                    if k.starts_with(RESERVED_KEY_PREFIX) {
                        new.insert(k, v);
                    }
                }
                p::encode(&serde_json::Value::Object(new))
            }
        }
    }
}

/// A logged write.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Vectors upserted (row-major, `ids.len() × dim` values), with their payloads.
    Upsert {
        /// Ids.
        ids: Vec<u64>,
        /// Values.
        vectors: Vec<f32>,
        /// Dimension.
        dim: usize,
        /// Stored payload of each point (empty: no point has one).
        payloads: Vec<Vec<u8>>,
    },
    /// Ids deleted.
    Delete {
        /// Ids.
        ids: Vec<u64>,
    },
    /// Payloads of these ids edited.
    SetPayload {
        /// Ids.
        ids: Vec<u64>,
        /// The edit.
        edit: PayloadEdit,
    },
    /// Points matching a filter deleted (the filter's JSON text).
    DeleteFilter {
        /// The filter.
        filter: String,
    },
    /// The collection's description changed (indexed fields, settings, training size): the
    /// whole new value.
    Describe(crate::manifest::Description),
}

/// Record numbers (and the manifest's counters) stay below this: far beyond any real log, and
/// room to add one without overflow.
pub const MAX_LSN: u64 = 1 << 62;

/// The body size of `op`'s record (what [`encode`] writes after the record head).
pub fn body_len(op: &Op) -> usize {
    let (ids, rest) = match op {
        Op::Upsert {
            ids,
            vectors,
            payloads,
            ..
        } => (
            ids.len(),
            vectors.len() * 4 + payloads.iter().map(|p| 4 + p.len()).sum::<usize>(),
        ),
        Op::Delete { ids } => (ids.len(), 0),
        Op::SetPayload { ids, edit } => (ids.len(), edit.body().len()),
        Op::DeleteFilter { filter } => (0, filter.len()),
        Op::Describe(d) => (0, describe_body(d).len()),
    };
    MIN_BODY + ids * 8 + rest
}

/// Refuses an op whose record replay would refuse (a body above 1 GiB): it is never written.
pub fn check_size(op: &Op) -> Result<()> {
    let len = body_len(op);
    if len > MAX_BODY {
        return Err(StoreError::Invalid {
            field: "points",
            reason: format!(
                "the write's log record would be {len} bytes, above the {MAX_BODY} a record may hold; split it"
            ),
        });
    }
    Ok(())
}

/// Ids a delete record holds at most (its body within the 1 GiB a record may hold).
pub const MAX_DELETE_IDS: usize = (MAX_BODY - MIN_BODY) / 8;

/// The records `op` is logged as: itself, or a delete of more than [`MAX_DELETE_IDS`] ids
/// (a delete by filter, resolved) as several deletes in order.
pub fn records_of(op: &Op) -> Vec<std::borrow::Cow<'_, Op>> {
    match op {
        Op::Delete { ids } if ids.len() > MAX_DELETE_IDS => ids
            .chunks(MAX_DELETE_IDS)
            .map(|part| std::borrow::Cow::Owned(Op::Delete { ids: part.to_vec() }))
            .collect(),
        _ => vec![std::borrow::Cow::Borrowed(op)],
    }
}

/// The body of a description record: its JSON.
fn describe_body(d: &crate::manifest::Description) -> Vec<u8> {
    serde_json::to_vec(d).unwrap_or_default()
}

/// Appends the framed record `lsn: op` to `out`.
pub fn encode(lsn: u64, op: &Op, out: &mut Vec<u8>) {
    let none: &[u64] = &[];
    let described = match op {
        Op::Describe(d) => describe_body(d),
        _ => Vec::new(),
    };
    let (kind, ids, dim): (u8, &[u64], usize) = match op {
        Op::Upsert {
            ids, dim, payloads, ..
        } => (if payloads.is_empty() { 1 } else { 3 }, ids, *dim),
        Op::Delete { ids } => (2, ids, 0),
        Op::SetPayload { ids, edit } => (4, ids, edit.code() as usize),
        Op::DeleteFilter { filter } => (5, none, filter.len()),
        Op::Describe(_) => (6, none, described.len()),
    };
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEAD]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    out.extend_from_slice(&(dim as u32).to_le_bytes());
    out.extend(ids.iter().flat_map(|i| i.to_le_bytes()));
    match op {
        Op::Upsert {
            vectors, payloads, ..
        } => {
            out.extend(vectors.iter().flat_map(|v| v.to_le_bytes()));
            if !payloads.is_empty() {
                out.extend(payloads.iter().flat_map(|p| (p.len() as u32).to_le_bytes()));
                for p in payloads {
                    out.extend_from_slice(p);
                }
            }
        }
        Op::Delete { .. } => {}
        Op::SetPayload { edit, .. } => out.extend_from_slice(&edit.body()),
        Op::DeleteFilter { filter } => out.extend_from_slice(filter.as_bytes()),
        Op::Describe(_) => out.extend_from_slice(&described),
    }
    let body_len = out.len() - start - RECORD_HEAD;
    let crc = crc32c::crc32c(&out[start + RECORD_HEAD..]);
    out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// One op as a framed record (the log files' framing and checksum, numbered 0): how a
/// cluster's log carries an op from the node that took it to every replica, which numbers it
/// by its place in that log.
pub fn encode_op(op: &Op) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEAD + body_len(op));
    encode(0, op, &mut out);
    out
}

/// The op of a record written by [`encode_op`], checked (whole, checksum right, nothing after
/// it).
pub fn decode_op(data: &[u8]) -> Result<Op> {
    let bad = |reason: String| StoreError::Invalid {
        field: "op",
        reason,
    };
    match parse(data, 0) {
        Parsed::Record(_, op, end) if end == data.len() => Ok(op),
        Parsed::Record(_, _, end) => Err(bad(format!(
            "{} bytes follow the op's record",
            data.len() - end
        ))),
        Parsed::Torn => Err(bad(format!("a record cut short ({} bytes)", data.len()))),
        Parsed::Bad(why) => Err(bad(why)),
    }
}

enum Parsed {
    Record(u64, Op, usize),
    Torn,
    Bad(String),
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(x)
}

fn parse(data: &[u8], pos: usize) -> Parsed {
    let Some(head) = data.get(pos..pos + RECORD_HEAD) else {
        return Parsed::Torn;
    };
    let len = u32_at(head, 0) as usize;
    if !(MIN_BODY..=MAX_BODY).contains(&len) {
        return Parsed::Bad(format!("record length {len} is out of range"));
    }
    let Some(body) = data.get(pos + RECORD_HEAD..pos + RECORD_HEAD + len) else {
        return Parsed::Torn;
    };
    if !quiver_engine::checksum::crc32c_matches(body, u32_at(head, 4)) {
        return Parsed::Bad("record checksum mismatch".into());
    }
    let lsn = u64_at(body, 0);
    if lsn >= MAX_LSN {
        return Parsed::Bad(format!("record number {lsn} is out of range"));
    }
    let kind = body[8];
    let count = u32_at(body, 9) as usize;
    let dim = u32_at(body, 13) as usize;
    let ids_end = MIN_BODY + count * 8;
    if ids_end > len {
        return Parsed::Bad("record holds fewer ids than it says".into());
    }
    let ids: Vec<u64> = body[MIN_BODY..ids_end]
        .chunks_exact(8)
        .map(|c| u64_at(c, 0))
        .collect();
    let vec_bytes = count.checked_mul(dim).and_then(|x| x.checked_mul(4));
    let floats = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let wrong = || Parsed::Bad(format!("record of kind {kind} has the wrong size"));
    let op = match kind {
        1 if vec_bytes == Some(len - ids_end) && dim > 0 => Op::Upsert {
            ids,
            vectors: floats(&body[ids_end..]),
            dim,
            payloads: Vec::new(),
        },
        3 if dim > 0 && vec_bytes.is_some_and(|v| ids_end + v + count * 4 <= len) => {
            let vec_end = ids_end + vec_bytes.unwrap_or(0);
            let mut at = vec_end + count * 4;
            let mut payloads = Vec::with_capacity(count);
            for r in 0..count {
                let n = u32_at(body, vec_end + r * 4) as usize;
                let Some(p) = body.get(at..at + n) else {
                    return wrong();
                };
                payloads.push(p.to_vec());
                at += n;
            }
            if at != len {
                return wrong();
            }
            Op::Upsert {
                ids,
                vectors: floats(&body[ids_end..vec_end]),
                dim,
                payloads,
            }
        }
        2 if ids_end == len => Op::Delete { ids },
        4 => match PayloadEdit::parse(dim as u32, &body[ids_end..]) {
            Some(edit) => Op::SetPayload { ids, edit },
            None => return Parsed::Bad("payload edit record does not parse".into()),
        },
        5 if count == 0 && ids_end + dim == len => match std::str::from_utf8(&body[ids_end..]) {
            Ok(f) => Op::DeleteFilter {
                filter: f.to_string(),
            },
            Err(_) => return Parsed::Bad("delete-by-filter record is not UTF-8".into()),
        },
        6 if count == 0 && ids_end + dim == len => match serde_json::from_slice(&body[ids_end..]) {
            Ok(d) => Op::Describe(d),
            Err(e) => return Parsed::Bad(format!("description record does not parse: {e}")),
        },
        _ => return wrong(),
    };
    Parsed::Record(lsn, op, pos + RECORD_HEAD + len)
}

/// True when a valid record with an LSN above `after` starts anywhere in `data[from..]`.
fn valid_record_after(data: &[u8], from: usize, after: u64) -> bool {
    (from..data.len().saturating_sub(RECORD_HEAD + MIN_BODY)).any(|p| {
        let len = u32_at(data, p) as usize;
        if !(MIN_BODY..=MAX_BODY).contains(&len) || p + RECORD_HEAD + len > data.len() {
            return false;
        }
        let lsn = u64_at(data, p + RECORD_HEAD);
        let kind = data[p + RECORD_HEAD + 8];
        if lsn <= after || lsn - after > 1 << 40 || !(1..=6).contains(&kind) {
            return false;
        }
        matches!(parse(data, p), Parsed::Record(..))
    })
}

fn file_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}.log")
}

/// The log files in `dir`, by first LSN.
pub fn list_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| StoreError::io("listing", dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_suffix(".log")
            .and_then(|s| s.parse::<u64>().ok())
        {
            files.push((n, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// What replay found.
#[derive(Debug)]
pub struct Replayed {
    /// The highest LSN seen (0 if none).
    pub last_lsn: u64,
    /// Records applied.
    pub applied: usize,
    /// The last file and its valid length, to append to.
    pub tail: Option<(u64, PathBuf, u64)>,
}

/// Replays the records with an LSN of at least `from_lsn` into `apply`, file by file, cutting a
/// torn tail; see the module doc for damaged records and `recover`.
pub fn replay(
    dir: &Path,
    from_lsn: u64,
    recover: bool,
    mut apply: impl FnMut(u64, Op) -> Result<()>,
) -> Result<Replayed> {
    let files = list_files(dir)?;
    let mut out = Replayed {
        last_lsn: 0,
        applied: 0,
        tail: None,
    };
    for (i, (first, path)) in files.iter().enumerate() {
        let last_file = i + 1 == files.len();
        // Mapped, not read: replaying a large log holds no copy of it (the pages are the
        // file's, dropped as the kernel needs). Only this process writes the log, and it
        // truncates only after the map is gone.
        let file = File::open(path).map_err(|e| StoreError::io("reading", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| StoreError::io("reading", path, e))?
            .len();
        let map = if len == 0 {
            None
        } else {
            // SAFETY: read-only map of a log file no other process writes (see above).
            Some(
                unsafe { memmap2::Mmap::map(&file) }
                    .map_err(|e| StoreError::io("mapping", path, e))?,
            )
        };
        let data: &[u8] = map.as_deref().unwrap_or(&[]);
        let header_ok = data.len() >= HEADER as usize
            && (&data[..8] == MAGIC || &data[..8] == MAGIC_V2)
            && u64_at(data, 8) == *first
            && quiver_engine::checksum::crc32c_matches(&data[..16], u32_at(data, 16));
        if !header_ok {
            return Err(StoreError::Corrupt {
                path: path.clone(),
                offset: 0,
                reason: "not a Quiver write-ahead log file (bad header)".into(),
            });
        }
        let mut pos = HEADER as usize;
        let mut prev = out.last_lsn;
        loop {
            if pos == data.len() {
                break;
            }
            let problem = match parse(data, pos) {
                Parsed::Record(lsn, op, next) if lsn > prev => {
                    if lsn >= from_lsn {
                        apply(lsn, op)?;
                        out.applied += 1;
                    }
                    prev = lsn;
                    pos = next;
                    continue;
                }
                Parsed::Record(lsn, ..) => {
                    format!("record number {lsn} does not follow {prev}")
                }
                Parsed::Torn => "record cut short".to_string(),
                Parsed::Bad(reason) => reason,
            };
            let later = !last_file || valid_record_after(data, pos + 1, prev);
            if later && !recover {
                return Err(StoreError::Corrupt {
                    path: path.clone(),
                    offset: pos as u64,
                    reason: format!(
                        "{problem}, and valid records follow it (not a torn write); opening in \
                         log recovery mode keeps the records before this point and drops the rest"
                    ),
                });
            }
            if later {
                tracing::error!(path = %path.display(), offset = pos, %problem, "write-ahead log damaged: keeping the records before this point, dropping the rest (log recovery mode)");
                for (_, p) in &files[i + 1..] {
                    std::fs::remove_file(p).map_err(|e| StoreError::io("removing", p, e))?;
                }
            } else {
                tracing::warn!(path = %path.display(), offset = pos, torn_bytes = data.len() - pos, %problem, "cutting a torn write-ahead log tail");
            }
            drop(map);
            truncate(path, pos as u64)?;
            out.last_lsn = prev.max(from_lsn.saturating_sub(1));
            out.tail = Some((*first, path.clone(), pos as u64));
            sync_dir(dir).map_err(|e| StoreError::io("syncing", dir, e))?;
            return Ok(out);
        }
        out.last_lsn = prev;
        out.tail = Some((*first, path.clone(), data.len() as u64));
    }
    out.last_lsn = out.last_lsn.max(from_lsn.saturating_sub(1));
    Ok(out)
}

fn truncate(path: &Path, len: u64) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| StoreError::io("opening", path, e))?;
    f.set_len(len)
        .and_then(|_| quiver_engine::io::sync::file(&f))
        .map_err(|e| StoreError::io("truncating", path, e))
}

/// The file being appended to.
#[derive(Debug)]
pub struct WalWriter {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    first_lsn: u64,
    offset: u64,
}

impl WalWriter {
    /// Creates the file for records from `first_lsn` on (atomically: header written to a
    /// temporary name, fsynced, renamed, folder fsynced).
    pub fn create(dir: &Path, first_lsn: u64) -> Result<WalWriter> {
        let path = dir.join(file_name(first_lsn));
        let mut header = Vec::with_capacity(HEADER as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&first_lsn.to_le_bytes());
        header.extend_from_slice(&crc32c::crc32c(&header).to_le_bytes());
        header.extend_from_slice(&[0; 4]);
        write_atomic(&path, &[&header])?;
        Self::open(dir, &path, first_lsn, HEADER)
    }

    /// Opens an existing file to append after its first `len` bytes.
    pub fn open(dir: &Path, path: &Path, first_lsn: u64, len: u64) -> Result<WalWriter> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| StoreError::io("opening", path, e))?;
        Ok(WalWriter {
            dir: dir.to_path_buf(),
            path: path.to_path_buf(),
            file,
            first_lsn,
            offset: len,
        })
    }

    /// Writes a group of framed records and fsyncs them. On failure the file is cut back to
    /// its last good length (so no later record ever follows garbage) and the error says the
    /// group was not applied; if even that fails, writes must stop
    /// ([`StoreError::WritesStopped`]).
    pub fn write_group(&mut self, buf: &[u8]) -> Result<()> {
        let run = || -> std::io::Result<()> {
            inject!("wal::write");
            self.file.write_all_at(buf, self.offset)?;
            inject!("wal::fsync");
            quiver_engine::io::sync::file_data(&self.file)
        };
        match run() {
            Ok(()) => {
                self.offset += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                let undo = || -> std::io::Result<()> {
                    inject!("wal::truncate");
                    self.file.set_len(self.offset)?;
                    quiver_engine::io::sync::file(&self.file)
                };
                match undo() {
                    Ok(()) => Err(StoreError::WalFailed {
                        path: self.path.clone(),
                        reason: e.to_string(),
                    }),
                    Err(u) => Err(StoreError::WritesStopped(format!(
                        "write-ahead log {}: {e}, and cutting it back to {} bytes failed: {u}",
                        self.path.display(),
                        self.offset
                    ))),
                }
            }
        }
    }

    /// Starts a new file for records from `next_lsn` on; the current one is complete.
    pub fn rotate(&mut self, next_lsn: u64) -> Result<()> {
        *self = WalWriter::create(&self.dir, next_lsn)?;
        Ok(())
    }

    /// Bytes in the current file.
    pub fn bytes(&self) -> u64 {
        self.offset
    }

    /// First LSN of the current file.
    pub fn first_lsn(&self) -> u64 {
        self.first_lsn
    }

    /// The current file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether the log file at `path` has the earlier format's header (`QVRWAL02`).
pub fn is_earlier_format(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut magic = [0u8; 8];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(|e| StoreError::io("reading", path, e))?;
    Ok(&magic == MAGIC_V2)
}

/// Removes the files all of whose records are below `lsn` (a checkpoint covering them is
/// durable): every file followed by one that starts at or below `lsn`.
pub fn remove_covered(dir: &Path, lsn: u64) -> Result<usize> {
    let files = list_files(dir)?;
    let mut n = 0;
    for w in files.windows(2) {
        if w[1].0 <= lsn {
            std::fs::remove_file(&w[0].1).map_err(|e| StoreError::io("removing", &w[0].1, e))?;
            n += 1;
        }
    }
    if n > 0 {
        sync_dir(dir).map_err(|e| StoreError::io("syncing", dir, e))?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(id: u64) -> Op {
        Op::Upsert {
            ids: vec![id],
            vectors: vec![id as f32, 0.5],
            dim: 2,
            payloads: Vec::new(),
        }
    }

    #[test]
    fn record_sizes_are_known_before_writing_and_bounded() {
        let ops = [
            up(3),
            Op::Delete { ids: vec![1, 2] },
            Op::DeleteFilter {
                filter: "{}".into(),
            },
        ];
        for op in &ops {
            let mut buf = Vec::new();
            encode(5, op, &mut buf);
            assert_eq!(buf.len() - RECORD_HEAD, body_len(op));
            check_size(op).unwrap();
        }
        let huge = Op::Upsert {
            ids: vec![1],
            vectors: Vec::new(),
            dim: 1,
            payloads: vec![vec![0; MAX_BODY]],
        };
        assert!(matches!(
            check_size(&huge),
            Err(StoreError::Invalid {
                field: "points",
                ..
            })
        ));
    }

    #[test]
    fn every_kind_of_record_round_trips() {
        let ops = [
            up(1),
            Op::Upsert {
                ids: vec![2, 3],
                vectors: vec![1.0, 2.0, 3.0, 4.0],
                dim: 2,
                payloads: vec![b"{\"a\":1}".to_vec(), Vec::new()],
            },
            Op::Delete { ids: vec![1, 9] },
            Op::SetPayload {
                ids: vec![2],
                edit: PayloadEdit::Merge(b"{\"b\":2}".to_vec()),
            },
            Op::SetPayload {
                ids: vec![2, 3],
                edit: PayloadEdit::DeleteKeys(vec!["a".into()]),
            },
            Op::SetPayload {
                ids: vec![3],
                edit: PayloadEdit::Clear,
            },
            Op::SetPayload {
                ids: vec![4],
                edit: PayloadEdit::ReplaceKeepingReserved(b"{\"c\":3}".to_vec()),
            },
            Op::DeleteFilter {
                filter: r#"{"must":[{"key":"a","match":{"value":1}}]}"#.into(),
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::create(dir.path(), 1).unwrap();
        let records: Vec<(u64, Op)> = ops
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, o)| (i as u64 + 1, o))
            .collect();
        w.write_group(&group(&records)).unwrap();
        let (seen, _) = collect(dir.path(), 0, false).unwrap();
        assert_eq!(seen, records);
        let e = PayloadEdit::Merge(b"{\"b\":2}".to_vec());
        assert_eq!(
            e.apply(b"{\"a\":1}").unwrap(),
            b"{\"a\":1,\"b\":2}".to_vec()
        );
        assert!(PayloadEdit::Clear.apply(b"{\"a\":1}").unwrap().is_empty());
        let keep = PayloadEdit::ReplaceKeepingReserved(b"{\"c\":3}".to_vec());
        let kept: serde_json::Value =
            serde_json::from_slice(&keep.apply(b"{\"a\":1,\"__quiver_uuid\":\"u\"}").unwrap())
                .unwrap();
        assert_eq!(kept, serde_json::json!({"__quiver_uuid": "u", "c": 3}));
        assert!(PayloadEdit::ReplaceKeepingReserved(Vec::new())
            .apply(b"{\"a\":1}")
            .unwrap()
            .is_empty());
    }

    fn collect(dir: &Path, from: u64, recover: bool) -> Result<(Vec<(u64, Op)>, Replayed)> {
        let mut seen = Vec::new();
        let r = replay(dir, from, recover, |l, op| {
            seen.push((l, op));
            Ok(())
        })?;
        Ok((seen, r))
    }

    fn group(records: &[(u64, Op)]) -> Vec<u8> {
        let mut buf = Vec::new();
        for (l, op) in records {
            encode(*l, op, &mut buf);
        }
        buf
    }

    #[test]
    fn files_of_the_earlier_format_are_read_and_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::create(dir.path(), 1).unwrap();
        w.write_group(&group(&[(1, up(1)), (2, up(2))])).unwrap();
        let path = w.path().to_path_buf();
        assert!(!is_earlier_format(&path).unwrap());
        // The same file with the earlier header (its checksum covers the magic).
        let mut b = std::fs::read(&path).unwrap();
        b[..8].copy_from_slice(MAGIC_V2);
        let crc = crc32c::crc32c(&b[..16]);
        b[16..20].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &b).unwrap();
        assert!(is_earlier_format(&path).unwrap());
        let (seen, r) = collect(dir.path(), 1, false).unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(r.last_lsn, 2);
        // A description round-trips.
        let d = crate::manifest::Description {
            fields: vec![quiver_engine::payload::fields::FieldSpec::parse("g:integer").unwrap()],
            settings: serde_json::json!({"hnsw": {"m": 16}}),
            train_at: 5000,
        };
        let mut w = WalWriter::create(dir.path(), 3).unwrap();
        w.write_group(&group(&[(3, Op::Describe(d.clone()))]))
            .unwrap();
        let (seen, _) = collect(dir.path(), 3, false).unwrap();
        assert_eq!(seen, vec![(3, Op::Describe(d))]);
    }

    #[test]
    fn replays_across_files_from_a_checkpoint_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::create(dir.path(), 1).unwrap();
        w.write_group(&group(&[(1, up(1)), (2, Op::Delete { ids: vec![1] })]))
            .unwrap();
        w.rotate(3).unwrap();
        w.write_group(&group(&[(3, up(3)), (5, up(5))])).unwrap();
        // A torn record at the end (a crash mid-group).
        let torn = group(&[(6, up(6))]);
        w.write_group(&torn[..torn.len() - 3]).unwrap();
        let (seen, r) = collect(dir.path(), 2, false).unwrap();
        assert_eq!(
            seen.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
            vec![2, 3, 5]
        );
        assert_eq!(r.last_lsn, 5);
        let (first, path, len) = r.tail.unwrap();
        assert_eq!(first, 3);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        // Appending after the cut replays cleanly.
        let mut w = WalWriter::open(dir.path(), &path, first, len).unwrap();
        w.write_group(&group(&[(7, up(7))])).unwrap();
        assert_eq!(collect(dir.path(), 0, false).unwrap().0.len(), 5);
        assert_eq!(remove_covered(dir.path(), 3).unwrap(), 1);
        assert_eq!(collect(dir.path(), 3, false).unwrap().0.len(), 3);
    }

    #[test]
    fn damage_followed_by_valid_records_stops_start_unless_recovering() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::create(dir.path(), 1).unwrap();
        let a = group(&[(1, up(1))]);
        w.write_group(&a).unwrap();
        w.write_group(&group(&[(2, up(2)), (3, up(3))])).unwrap();
        let path = w.path().to_path_buf();
        let mut bytes = std::fs::read(&path).unwrap();
        let bad = HEADER as usize + a.len() + 12;
        bytes[bad] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        match collect(dir.path(), 0, false) {
            Err(StoreError::Corrupt { offset, reason, .. }) => {
                assert_eq!(offset, HEADER + a.len() as u64);
                assert!(reason.contains("recovery mode"), "{reason}");
            }
            other => panic!("expected corruption, got {other:?}"),
        }
        let (seen, r) = collect(dir.path(), 0, true).unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(r.last_lsn, 1);
        assert_eq!(collect(dir.path(), 0, false).unwrap().0.len(), 1);
    }

    #[test]
    fn garbage_tail_of_zeros_is_torn() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::create(dir.path(), 1).unwrap();
        w.write_group(&group(&[(1, up(1))])).unwrap();
        w.write_group(&[0u8; 4096]).unwrap();
        let (seen, _) = collect(dir.path(), 0, false).unwrap();
        assert_eq!(seen.len(), 1);
    }

    #[test]
    fn an_op_travels_as_one_checked_record() {
        let ops = [
            Op::Upsert {
                ids: vec![1, 2],
                vectors: vec![0.5, -1.0, 2.0, 3.5],
                dim: 2,
                payloads: vec![b"{}".to_vec(), b"{\"a\":1}".to_vec()],
            },
            Op::Delete { ids: vec![9] },
            Op::DeleteFilter {
                filter: "{}".into(),
            },
        ];
        for op in &ops {
            let bytes = encode_op(op);
            assert_eq!(&decode_op(&bytes).unwrap(), op);
            // Cut, flipped or followed by more: refused, naming the op.
            for bad in [
                bytes[..bytes.len() - 1].to_vec(),
                [bytes.as_slice(), b"x"].concat(),
                {
                    let mut b = bytes.clone();
                    let last = b.len() - 1;
                    b[last] ^= 1;
                    b
                },
            ] {
                assert!(matches!(
                    decode_op(&bad),
                    Err(StoreError::Invalid { field: "op", .. })
                ));
            }
        }
    }
}
