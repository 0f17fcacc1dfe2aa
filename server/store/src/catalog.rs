//! The catalog log: which collections exist, as a numbered, durable sequence of creations and
//! drops (`.catalog.log` in the collections folder). It is to the collections folder what a
//! collection's write-ahead log is to its points: an entry is fsynced before the folder work it
//! describes, so a crash between the two is finished at the next start from the entry
//! ([`crate::folder::CollectionsFolder::open`]), and numbers are gap-free, so a replica fed the
//! same entries ([`Catalog::append`] with the leader's number) holds the same collections.
//!
//! File: the magic `QVRCAT01`, then records of `u32` length, `u32` CRC-32C of the body, and the
//! body: one [`CatalogEntry`] as JSON. A torn last record (a crash while appending: cut short,
//! zeros, or a checksum that fails with nothing after it) is cut off at open, its bytes kept
//! beside the file when they are not zeros; a damaged record followed by others, or a length
//! out of range, is [`StoreError::Corrupt`]. When dropped collections' entries outnumber the
//! live ones, [`Catalog::compact_if_due`] rewrites the file with only the live creations
//! (keeping their numbers) and a [`CatalogOp::Compacted`] mark holding the last number.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::fsutil::{inject, write_atomic};
use crate::manifest::CollectionMeta;

const MAGIC: &[u8; 8] = b"QVRCAT01";
const RECORD_HEAD: usize = 8;
/// Largest entry (a description with its front end's settings).
const MAX_ENTRY_BYTES: usize = 16 << 20;
/// Smallest entry body (`{}`).
const MIN_ENTRY_BYTES: usize = 2;

/// One change of the set of collections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CatalogOp {
    /// A collection is created empty.
    Create {
        /// Its name.
        name: String,
        /// Its description at creation; `None` for a collection adopted from a data folder
        /// written before the catalog existed whose description could not be read then.
        meta: Option<CollectionMeta>,
        /// Created as a replica ([`crate::Collection::create_replica`]).
        #[serde(default)]
        replica: bool,
    },
    /// A collection and its files are removed.
    Drop {
        /// Its name.
        name: String,
    },
    /// The entries before this one were compacted away (only live creations are kept); its
    /// number is the last one they had. It carries the aliases they had made.
    Compacted {
        /// Alias → collection.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        aliases: BTreeMap<String, String>,
    },
    /// Aliases changed: the actions in order, all or none.
    Aliases {
        /// What changes.
        actions: Vec<AliasAction>,
    },
}

/// One change of the aliases (Qdrant's alias actions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum AliasAction {
    /// `alias` names `collection` (an alias of that name must not exist).
    Create {
        /// The alias.
        alias: String,
        /// The collection it names.
        collection: String,
    },
    /// `alias` is removed.
    Delete {
        /// The alias.
        alias: String,
    },
    /// `from` is renamed `to` (which must not exist).
    Rename {
        /// The alias now.
        from: String,
        /// Its new name.
        to: String,
    },
}

impl CatalogOp {
    /// The collection it is about (none for a compaction mark).
    pub fn name(&self) -> Option<&str> {
        match self {
            CatalogOp::Create { name, .. } | CatalogOp::Drop { name } => Some(name),
            CatalogOp::Compacted { .. } | CatalogOp::Aliases { .. } => None,
        }
    }
}

/// An op with its number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// Its number: 1, 2, … with no gaps.
    pub seq: u64,
    /// What it does.
    #[serde(flatten)]
    pub op: CatalogOp,
}

/// A collection the catalog says exists.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveCollection {
    /// The number of its creation (tells incarnations of one name apart).
    pub created_at: u64,
    /// Its description at creation (see [`CatalogOp::Create`]).
    pub meta: Option<CollectionMeta>,
    /// Created as a replica.
    pub replica: bool,
}

/// The open catalog log.
#[derive(Debug)]
pub struct Catalog {
    path: PathBuf,
    file: File,
    /// Bytes of valid records (where the next one goes).
    len: u64,
    last_seq: u64,
    records: usize,
    live: BTreeMap<String, LiveCollection>,
    /// Alias → collection.
    aliases: BTreeMap<String, String>,
    /// Names whose last entry is a drop, with its number (forgotten at compaction).
    dropped: BTreeMap<String, u64>,
    /// Set when a failed append could not be undone: the file's tail is unknown until a restart.
    broken: Option<String>,
}

impl Catalog {
    /// The catalog's file in a collections folder.
    pub fn path_in(root: &Path) -> PathBuf {
        root.join(".catalog.log")
    }

    /// Writes a new catalog at `path` holding `ops` numbered from 1 (atomically and durably).
    pub fn create(path: &Path, ops: Vec<CatalogOp>) -> Result<Catalog> {
        let entries: Vec<CatalogEntry> = ops
            .into_iter()
            .enumerate()
            .map(|(i, op)| CatalogEntry {
                seq: i as u64 + 1,
                op,
            })
            .collect();
        write_file(path, &entries)?;
        Catalog::open(path)
    }

    /// Opens the catalog at `path`: replays it and cuts off a torn last record.
    pub fn open(path: &Path) -> Result<Catalog> {
        let data = std::fs::read(path).map_err(|e| StoreError::io("reading", path, e))?;
        let corrupt = |offset: usize, reason: String| StoreError::Corrupt {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason,
        };
        if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
            return Err(corrupt(
                0,
                "not a Quiver catalog (bad magic); restore it, or remove it to adopt the collection folders as they are".into(),
            ));
        }
        let mut state = State::default();
        let mut at = MAGIC.len();
        let mut torn = false;
        while at < data.len() {
            let rest = &data[at..];
            // A crash while appending leaves a prefix of the record, or zeros where the file
            // grew before its data landed; nothing else.
            if rest.iter().all(|&b| b == 0) || rest.len() < RECORD_HEAD {
                torn = true;
                break;
            }
            let n = u32::from_le_bytes(rest[..4].try_into().unwrap_or_default()) as usize;
            if !(MIN_ENTRY_BYTES..=MAX_ENTRY_BYTES).contains(&n) {
                return Err(corrupt(
                    at,
                    format!("a catalog record's length ({n}) is out of range; restore the file"),
                ));
            }
            if rest.len() < RECORD_HEAD + n {
                torn = true;
                break;
            }
            let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap_or_default());
            let body = &rest[RECORD_HEAD..RECORD_HEAD + n];
            if !quiver_engine::checksum::crc32c_matches(body, crc) {
                if at + RECORD_HEAD + n == data.len() {
                    torn = true;
                    break;
                }
                return Err(corrupt(
                    at,
                    "a damaged catalog record is followed by others; restore the file".into(),
                ));
            }
            let entry: CatalogEntry = serde_json::from_slice(body)
                .map_err(|e| corrupt(at, format!("an unreadable catalog entry: {e}")))?;
            state
                .apply(&entry)
                .map_err(|why| corrupt(at, format!("entry {}: {why}", entry.seq)))?;
            at += RECORD_HEAD + n;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| StoreError::io("opening", path, e))?;
        if torn {
            let cut = &data[at..];
            let kept = if cut.iter().all(|&b| b == 0) {
                None
            } else {
                // Kept for inspection: an append never acknowledged, or damage to the last one.
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let copy = path.with_file_name(format!(".catalog-torn-{nanos}"));
                std::fs::write(&copy, cut).map_err(|e| StoreError::io("saving", &copy, e))?;
                Some(copy)
            };
            tracing::warn!(path = %path.display(), bytes = cut.len(), kept = ?kept, "cutting off a torn last catalog record (a crash while it was written: it was not acknowledged)");
            file.set_len(at as u64)
                .and_then(|()| quiver_engine::io::sync::file(&file))
                .map_err(|e| StoreError::io("truncating", path, e))?;
        }
        Ok(Catalog {
            path: path.to_path_buf(),
            file,
            len: at as u64,
            last_seq: state.last_seq,
            records: state.records,
            live: state.live,
            aliases: state.aliases,
            dropped: state.dropped,
            broken: None,
        })
    }

    /// When dropped collections' entries dominate (and their folders are gone: the caller
    /// has made the folder what the catalog says), rewrites the file with only the live
    /// creations and a mark holding the last number. A failure leaves the file as it was.
    pub fn compact_if_due(&mut self) {
        if self.records <= 64 + 2 * self.live.len() {
            return;
        }
        let mut entries: Vec<CatalogEntry> = self
            .live
            .iter()
            .map(|(name, l)| CatalogEntry {
                seq: l.created_at,
                op: CatalogOp::Create {
                    name: name.clone(),
                    meta: l.meta.clone(),
                    replica: l.replica,
                },
            })
            .collect();
        entries.sort_by_key(|e| e.seq);
        entries.push(CatalogEntry {
            seq: self.last_seq,
            op: CatalogOp::Compacted {
                aliases: self.aliases.clone(),
            },
        });
        let reopened = write_file(&self.path, &entries).and_then(|()| Catalog::open(&self.path));
        match reopened {
            Ok(c) => *self = c,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "compacting the catalog failed; it stays as it is");
            }
        }
    }

    /// The last entry's number (0 for none).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The collections that exist, by name.
    pub fn live(&self) -> &BTreeMap<String, LiveCollection> {
        &self.live
    }

    /// The aliases: alias → collection.
    pub fn aliases(&self) -> &BTreeMap<String, String> {
        &self.aliases
    }

    /// Names whose last entry is a drop, with its number (since the last compaction).
    pub fn dropped(&self) -> &BTreeMap<String, u64> {
        &self.dropped
    }

    /// Appends `op` durably: numbered `last_seq + 1` when `seq` is `None` (a local change),
    /// or `seq` as given (a replica applying its leader's entries: one already applied,
    /// `seq <= last_seq`, is skipped and returns `None`; a gap is refused). Refuses what does
    /// not fit the current set (creating an existing name, dropping a missing one) before
    /// writing anything. Returns the entry's number.
    pub fn append(&mut self, seq: Option<u64>, op: CatalogOp) -> Result<Option<u64>> {
        if let Some(why) = &self.broken {
            return Err(StoreError::WritesStopped(why.clone()));
        }
        let seq = match seq {
            None => self.last_seq + 1,
            Some(0) => {
                return Err(StoreError::Invalid {
                    field: "seq",
                    reason: "catalog entries are numbered from 1".into(),
                })
            }
            Some(s) if s <= self.last_seq => return Ok(None),
            Some(s) if s > self.last_seq + 1 => {
                return Err(StoreError::Precondition(format!(
                    "catalog entry {s} does not follow the last one applied ({}); apply {} first",
                    self.last_seq,
                    self.last_seq + 1
                )))
            }
            Some(s) => s,
        };
        if matches!(op, CatalogOp::Compacted { .. }) {
            return Err(StoreError::Invalid {
                field: "op",
                reason: "a compaction mark is written by the catalog itself".into(),
            });
        }
        let entry = CatalogEntry { seq, op };
        let mut probe = State {
            last_seq: self.last_seq,
            aliases: self.aliases.clone(),
            ..State::default()
        };
        match &entry.op {
            // Aliases are checked against every collection.
            CatalogOp::Aliases { .. } => probe.live = self.live.clone(),
            _ => {
                if let Some(name) = entry.op.name() {
                    if let Some(l) = self.live.get(name) {
                        probe.live.insert(name.to_string(), l.clone());
                    }
                }
            }
        }
        probe.apply(&entry).map_err(StoreError::Precondition)?;
        let body = serde_json::to_vec(&entry).map_err(|e| StoreError::Failed(e.to_string()))?;
        if body.len() > MAX_ENTRY_BYTES {
            return Err(StoreError::Invalid {
                field: "meta",
                reason: format!(
                    "the description takes {} bytes, above the catalog's {MAX_ENTRY_BYTES}",
                    body.len()
                ),
            });
        }
        let record = record(&body);
        let written = (|| -> std::io::Result<()> {
            inject!("catalog::append::write");
            self.file.write_all_at(&record, self.len)?;
            inject!("catalog::append::fsync");
            quiver_engine::io::sync::file_data(&self.file)
        })();
        if let Err(e) = written {
            // Undo: nothing of the entry may stay to be read at the next start.
            let undone = self
                .file
                .set_len(self.len)
                .and_then(|()| quiver_engine::io::sync::file(&self.file));
            if let Err(u) = undone {
                self.broken = Some(format!(
                    "a failed catalog append could not be undone ({u}); collections cannot be created or dropped"
                ));
            }
            return Err(StoreError::io("appending to", &self.path, e));
        }
        self.len += record.len() as u64;
        self.records += 1;
        self.last_seq = seq;
        self.aliases = probe.aliases;
        match &entry.op {
            CatalogOp::Create { name, .. } => {
                self.dropped.remove(name);
                self.live.extend(probe.live);
            }
            CatalogOp::Drop { name } => {
                self.live.remove(name);
                self.dropped.insert(name.clone(), seq);
            }
            CatalogOp::Compacted { .. } | CatalogOp::Aliases { .. } => {}
        }
        Ok(Some(seq))
    }
}

/// What replaying entries builds.
#[derive(Default)]
struct State {
    last_seq: u64,
    records: usize,
    live: BTreeMap<String, LiveCollection>,
    aliases: BTreeMap<String, String>,
    dropped: BTreeMap<String, u64>,
}

impl State {
    /// Applies alias actions in order to a copy; all or none.
    fn apply_aliases(&mut self, actions: &[AliasAction]) -> std::result::Result<(), String> {
        let mut next = self.aliases.clone();
        let usable = |alias: &str| -> std::result::Result<(), String> {
            if !crate::collection::valid_name(alias) {
                return Err(format!(
                    "{alias:?} is not a valid alias name (1 to 64 of A-Z a-z 0-9 _ . -)"
                ));
            }
            if self.live.contains_key(alias) {
                return Err(format!("{alias:?} is a collection's name"));
            }
            Ok(())
        };
        for a in actions {
            match a {
                // As Qdrant: creating an alias that exists points it elsewhere; deleting one
                // that does not exist is no error.
                AliasAction::Create { alias, collection } => {
                    if !self.live.contains_key(collection) {
                        return Err(format!("collection {collection:?} does not exist"));
                    }
                    usable(alias)?;
                    next.insert(alias.clone(), collection.clone());
                }
                AliasAction::Delete { alias } => {
                    next.remove(alias);
                }
                AliasAction::Rename { from, to } => {
                    let Some(c) = next.remove(from) else {
                        return Err(format!("alias {from:?} does not exist"));
                    };
                    usable(to)?;
                    if next.contains_key(to) {
                        return Err(format!("alias {to:?} already exists"));
                    }
                    next.insert(to.clone(), c);
                }
            }
        }
        self.aliases = next;
        Ok(())
    }

    /// Applies one entry read from the file or about to be written.
    fn apply(&mut self, e: &CatalogEntry) -> std::result::Result<(), String> {
        if let Some(name) = e.op.name() {
            if !crate::collection::valid_folder_name(name) {
                return Err(format!("{name:?} is not a collection name"));
            }
        }
        match &e.op {
            CatalogOp::Create {
                name,
                meta,
                replica,
            } => {
                if e.seq <= self.last_seq {
                    return Err(format!("number {} after {}", e.seq, self.last_seq));
                }
                if let Some(m) = meta {
                    if &m.name != name {
                        return Err(format!(
                            "creates {name:?} with a description named {:?}",
                            m.name
                        ));
                    }
                }
                if self.live.contains_key(name) {
                    return Err(format!("collection {name:?} already exists"));
                }
                if self.aliases.contains_key(name) {
                    return Err(format!("{name:?} is an alias's name"));
                }
                self.dropped.remove(name);
                self.live.insert(
                    name.clone(),
                    LiveCollection {
                        created_at: e.seq,
                        meta: meta.clone(),
                        replica: *replica,
                    },
                );
            }
            CatalogOp::Drop { name } => {
                if e.seq <= self.last_seq {
                    return Err(format!("number {} after {}", e.seq, self.last_seq));
                }
                if self.live.remove(name).is_none() {
                    return Err(format!("collection {name:?} does not exist"));
                }
                // A dropped collection's aliases go with it (as in Qdrant).
                self.aliases.retain(|_, c| c != name);
                self.dropped.insert(name.clone(), e.seq);
            }
            // Numbered like the entry it follows; creations before it may be lower.
            CatalogOp::Compacted { aliases } => {
                if e.seq < self.last_seq {
                    return Err(format!("compaction mark {} after {}", e.seq, self.last_seq));
                }
                self.aliases = aliases.clone();
            }
            CatalogOp::Aliases { actions } => {
                if e.seq <= self.last_seq {
                    return Err(format!("number {} after {}", e.seq, self.last_seq));
                }
                self.apply_aliases(actions)?;
            }
        }
        self.last_seq = e.seq;
        self.records += 1;
        Ok(())
    }
}

fn record(body: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(RECORD_HEAD + body.len());
    r.extend_from_slice(&(body.len() as u32).to_le_bytes());
    r.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    r.extend_from_slice(body);
    r
}

/// Writes a whole catalog file atomically and durably.
fn write_file(path: &Path, entries: &[CatalogEntry]) -> Result<()> {
    let mut out = Vec::new();
    out.write_all(MAGIC)
        .map_err(|e| StoreError::io("writing", path, e))?;
    for e in entries {
        let body = serde_json::to_vec(e).map_err(|e| StoreError::Failed(e.to_string()))?;
        out.extend_from_slice(&record(&body));
    }
    write_atomic(path, &[&out])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str) -> CollectionMeta {
        CollectionMeta {
            name: name.into(),
            dim: 4,
            metric: "l2".into(),
            ..CollectionMeta::default()
        }
    }

    fn create(name: &str) -> CatalogOp {
        CatalogOp::Create {
            name: name.into(),
            meta: Some(meta(name)),
            replica: false,
        }
    }

    fn drop_op(name: &str) -> CatalogOp {
        CatalogOp::Drop { name: name.into() }
    }

    fn names(c: &Catalog) -> Vec<String> {
        c.live().keys().cloned().collect()
    }

    #[test]
    fn entries_are_numbered_durable_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = Catalog::path_in(dir.path());
        let mut c = Catalog::create(&path, vec![]).unwrap();
        assert_eq!(c.last_seq(), 0);
        assert_eq!(c.append(None, create("a")).unwrap(), Some(1));
        assert_eq!(c.append(None, create("b")).unwrap(), Some(2));
        assert_eq!(c.append(None, drop_op("a")).unwrap(), Some(3));
        assert_eq!(c.append(None, create("a")).unwrap(), Some(4));
        // Refused before anything is written.
        assert!(matches!(
            c.append(None, create("b")),
            Err(StoreError::Precondition(_))
        ));
        assert!(matches!(
            c.append(None, drop_op("z")),
            Err(StoreError::Precondition(_))
        ));
        assert!(matches!(
            c.append(
                None,
                CatalogOp::Compacted {
                    aliases: BTreeMap::new()
                }
            ),
            Err(StoreError::Invalid { field: "op", .. })
        ));
        let c = Catalog::open(&path).unwrap();
        assert_eq!(c.last_seq(), 4);
        assert_eq!(names(&c), vec!["a", "b"]);
        assert_eq!(c.live()["a"].created_at, 4);
        assert_eq!(c.live()["a"].meta, Some(meta("a")));
    }

    #[test]
    fn a_replica_applies_numbered_entries_once_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::create(&Catalog::path_in(dir.path()), vec![]).unwrap();
        assert_eq!(c.append(Some(1), create("a")).unwrap(), Some(1));
        // Again: skipped.
        assert_eq!(c.append(Some(1), create("a")).unwrap(), None);
        // A gap: refused, naming the next one.
        let gap = c.append(Some(3), drop_op("a")).unwrap_err().to_string();
        assert!(gap.contains("apply 2 first"), "{gap}");
        assert!(matches!(
            c.append(Some(0), drop_op("a")),
            Err(StoreError::Invalid { field: "seq", .. })
        ));
        assert_eq!(c.append(Some(2), drop_op("a")).unwrap(), Some(2));
        assert!(c.live().is_empty());
    }

    #[test]
    fn a_torn_tail_is_cut_and_a_damaged_middle_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = Catalog::path_in(dir.path());
        let mut c = Catalog::create(&path, vec![create("a")]).unwrap();
        c.append(None, create("b")).unwrap();
        drop(c);
        let whole = std::fs::read(&path).unwrap();
        // Every cut inside the last record is a torn append: the first entry stays.
        let second = whole.len() - (whole.len() - MAGIC.len()) / 2;
        for cut in [whole.len() - 1, whole.len() - 10, second + 3] {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let c = Catalog::open(&path).unwrap();
            assert_eq!(names(&c), vec!["a"], "cut at {cut}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), c.len);
        }
        // A cut record's bytes are kept beside the file; zeros (where the file grew before
        // its data landed) are not.
        let kept = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(".catalog-torn-")
                })
                .count()
        };
        assert_eq!(kept(), 3);
        std::fs::write(&path, [whole.as_slice(), &[0u8; 40]].concat()).unwrap();
        assert_eq!(names(&Catalog::open(&path).unwrap()), vec!["a", "b"]);
        assert_eq!(kept(), 3);
        // A flipped byte in the last record: torn too.
        let mut bad = whole.clone();
        *bad.last_mut().unwrap() ^= 0x20;
        std::fs::write(&path, &bad).unwrap();
        assert_eq!(names(&Catalog::open(&path).unwrap()), vec!["a"]);
        assert_eq!(kept(), 4);
        // A length out of range is damage, not a torn append.
        let mut bad = whole.clone();
        bad[MAGIC.len() + 3] = 0x7f;
        std::fs::write(&path, &bad).unwrap();
        assert!(matches!(
            Catalog::open(&path),
            Err(StoreError::Corrupt { .. })
        ));
        // In the first record, with the second after it: corrupt, never guessed past.
        let mut bad = whole.clone();
        bad[MAGIC.len() + RECORD_HEAD + 2] ^= 0x20;
        std::fs::write(&path, &bad).unwrap();
        assert!(matches!(
            Catalog::open(&path),
            Err(StoreError::Corrupt { .. })
        ));
        std::fs::write(&path, b"QVRCAT0").unwrap();
        assert!(matches!(
            Catalog::open(&path),
            Err(StoreError::Corrupt { .. })
        ));
        std::fs::write(&path, b"not a catalog at all").unwrap();
        assert!(matches!(
            Catalog::open(&path),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn compaction_keeps_live_creations_and_the_last_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = Catalog::path_in(dir.path());
        let mut c = Catalog::create(&path, vec![create("keep")]).unwrap();
        for i in 0..100 {
            c.append(None, create(&format!("t{i}"))).unwrap();
            c.append(None, drop_op(&format!("t{i}"))).unwrap();
        }
        c.append(None, create("late")).unwrap();
        c.append(None, create("gone")).unwrap();
        c.append(None, drop_op("gone")).unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        let mut c = Catalog::open(&path).unwrap();
        assert_eq!(c.dropped().len(), 101);
        c.compact_if_due();
        assert!(c.dropped().is_empty());
        assert!(std::fs::metadata(&path).unwrap().len() < before / 10);
        assert_eq!(c.last_seq(), 204);
        assert_eq!(names(&c), vec!["keep", "late"]);
        assert_eq!(c.live()["keep"].created_at, 1);
        assert_eq!(c.live()["late"].created_at, 202);
        // Numbering goes on; a replica's next entry is still 205.
        assert_eq!(c.append(Some(205), drop_op("keep")).unwrap(), Some(205));
        let c = Catalog::open(&path).unwrap();
        assert_eq!((c.last_seq(), names(&c)), (205, vec!["late".to_string()]));
    }

    #[test]
    fn aliases_change_all_or_none_survive_reopening_and_compaction_and_go_with_their_collection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".catalog.log");
        let mut c = Catalog::create(&path, vec![create("a"), create("b")]).unwrap();
        let mk = |alias: &str, collection: &str| AliasAction::Create {
            alias: alias.into(),
            collection: collection.into(),
        };
        c.append(
            None,
            CatalogOp::Aliases {
                actions: vec![mk("x", "a"), mk("y", "b")],
            },
        )
        .unwrap();
        // One action that does not fit refuses them all.
        for bad in [
            vec![mk("z", "a"), mk("z2", "nope")],
            vec![mk("b", "a")],
            vec![AliasAction::Rename {
                from: "q".into(),
                to: "r".into(),
            }],
            vec![AliasAction::Rename {
                from: "x".into(),
                to: "y".into(),
            }],
            vec![mk("bad name", "a")],
        ] {
            assert!(c.append(None, CatalogOp::Aliases { actions: bad }).is_err());
        }
        assert!(
            c.append(None, create("x")).is_err(),
            "a collection may not take an alias's name"
        );
        assert!(!c.aliases().contains_key("z"), "all or none");
        // Switching an alias to another collection in one step; deleting a missing alias is
        // no error, creating an existing one points it elsewhere (as Qdrant).
        c.append(
            None,
            CatalogOp::Aliases {
                actions: vec![
                    AliasAction::Delete { alias: "x".into() },
                    AliasAction::Delete {
                        alias: "never".into(),
                    },
                    mk("x", "a"),
                ],
            },
        )
        .unwrap();
        c.append(
            None,
            CatalogOp::Aliases {
                actions: vec![mk("x", "b")],
            },
        )
        .unwrap();
        c.append(
            None,
            CatalogOp::Aliases {
                actions: vec![AliasAction::Rename {
                    from: "y".into(),
                    to: "w".into(),
                }],
            },
        )
        .unwrap();
        let want: BTreeMap<String, String> = [
            ("w".to_string(), "b".to_string()),
            ("x".to_string(), "b".to_string()),
        ]
        .into();
        assert_eq!(c.aliases(), &want);
        drop(c);
        let mut c = Catalog::open(&path).unwrap();
        assert_eq!(c.aliases(), &want);
        // Compaction (many drops) keeps them.
        for i in 0..80 {
            let n = format!("t{i}");
            c.append(None, create(&n)).unwrap();
            c.append(None, drop_op(&n)).unwrap();
        }
        c.compact_if_due();
        assert!(c.records < 10, "compacted: {}", c.records);
        assert_eq!(c.aliases(), &want);
        drop(c);
        let mut c = Catalog::open(&path).unwrap();
        assert_eq!(c.aliases(), &want);
        c.append(None, drop_op("b")).unwrap();
        assert!(
            c.aliases().is_empty(),
            "a dropped collection's aliases go with it"
        );
        drop(c);
        assert!(Catalog::open(&path).unwrap().aliases().is_empty());
        // A compaction mark written before aliases existed reads as one without aliases.
        let old: CatalogEntry = serde_json::from_str(r#"{"seq":5,"op":"compacted"}"#).unwrap();
        assert_eq!(
            old.op,
            CatalogOp::Compacted {
                aliases: BTreeMap::new()
            }
        );
    }
}
