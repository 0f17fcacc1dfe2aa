//! The write-ahead log of one collection: every acknowledged upsert and delete is appended and
//! fsynced before the client hears back, and replayed on start over the last snapshot.
//!
//! Record: `length u32 | CRC32C u32 | payload`, payload `kind u8 (1 upsert, 2 delete) |
//! count u32 | dim u32 | ids u64 × count | vectors f32 × count × dim`. A torn record at the
//! tail (a crash mid-append, never acknowledged) ends the replay and is cut off; replay is
//! idempotent, so a log already folded into a snapshot may be replayed again safely.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// A logged write.
#[derive(Debug, Clone, PartialEq)]
pub enum WalRecord {
    /// Vectors upserted (row-major).
    Upsert {
        /// Ids.
        ids: Vec<u64>,
        /// `ids.len() × dim` values.
        vectors: Vec<f32>,
        /// Dimension.
        dim: usize,
    },
    /// Ids deleted.
    Delete {
        /// Ids.
        ids: Vec<u64>,
    },
}

/// An open log, appending.
#[derive(Debug)]
pub struct Wal {
    path: PathBuf,
    file: File,
    bytes: u64,
}

const MAX_RECORD: usize = 1 << 30;

impl Wal {
    /// Opens (creating if needed) the log at `path`, replays its records into `apply`, cuts
    /// a torn tail, and returns it ready to append.
    pub fn open(
        path: &Path,
        mut apply: impl FnMut(WalRecord) -> std::io::Result<()>,
    ) -> std::io::Result<Wal> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        let mut pos = 0usize;
        while let Some((record, next)) = parse(&data, pos) {
            apply(record)?;
            pos = next;
        }
        if pos < data.len() {
            tracing::warn!(path = %path.display(), torn_bytes = data.len() - pos, "cutting a torn write-ahead log tail");
            file.set_len(pos as u64)?;
            file.sync_all()?;
        }
        sync_dir(path)?;
        Ok(Wal {
            path: path.to_path_buf(),
            file,
            bytes: pos as u64,
        })
    }

    /// Appends a record and fsyncs it.
    pub fn append(&mut self, record: &WalRecord) -> std::io::Result<()> {
        let payload = encode(record);
        let mut buf = Vec::with_capacity(8 + payload.len());
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        buf.extend_from_slice(&payload);
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.bytes += buf.len() as u64;
        Ok(())
    }

    /// Bytes in the log.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Empties the log (after its records are in a durable snapshot).
    pub fn reset(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.sync_all()?;
        self.bytes = 0;
        Ok(())
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Fsyncs the directory holding `path`, so a created or renamed entry is durable.
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

fn encode(record: &WalRecord) -> Vec<u8> {
    let (kind, ids, vectors, dim): (u8, &[u64], &[f32], usize) = match record {
        WalRecord::Upsert { ids, vectors, dim } => (1, ids, vectors, *dim),
        WalRecord::Delete { ids } => (2, ids, &[], 0),
    };
    let mut p = Vec::with_capacity(9 + ids.len() * 8 + vectors.len() * 4);
    p.push(kind);
    p.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    p.extend_from_slice(&(dim as u32).to_le_bytes());
    for id in ids {
        p.extend_from_slice(&id.to_le_bytes());
    }
    for v in vectors {
        p.extend_from_slice(&v.to_le_bytes());
    }
    p
}

fn parse(data: &[u8], pos: usize) -> Option<(WalRecord, usize)> {
    let header = data.get(pos..pos + 8)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    if !(9..=MAX_RECORD).contains(&len) {
        return None;
    }
    let payload = data.get(pos + 8..pos + 8 + len)?;
    if crc32c::crc32c(payload) != crc {
        return None;
    }
    let kind = payload[0];
    let count = u32::from_le_bytes(payload[1..5].try_into().ok()?) as usize;
    let dim = u32::from_le_bytes(payload[5..9].try_into().ok()?) as usize;
    let ids_end = 9usize.checked_add(count.checked_mul(8)?)?;
    let ids: Vec<u64> = payload
        .get(9..ids_end)?
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    let record = match kind {
        1 => {
            let vec_end = ids_end.checked_add(count.checked_mul(dim)?.checked_mul(4)?)?;
            if vec_end != payload.len() {
                return None;
            }
            let vectors = payload[ids_end..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap_or([0; 4])))
                .collect();
            WalRecord::Upsert { ids, vectors, dim }
        }
        2 if ids_end == payload.len() => WalRecord::Delete { ids },
        _ => return None,
    };
    Some((record, pos + 8 + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_records_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let a = WalRecord::Upsert {
            ids: vec![1, 2],
            vectors: vec![0.5, 1.5, 2.5, 3.5],
            dim: 2,
        };
        let b = WalRecord::Delete { ids: vec![2] };
        {
            let mut w = Wal::open(&path, |_| Ok(())).unwrap();
            w.append(&a).unwrap();
            w.append(&b).unwrap();
        }
        // A torn third record.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[40, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);
        let mut seen = Vec::new();
        let mut w = Wal::open(&path, |r| {
            seen.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![a.clone(), b.clone()]);
        w.append(&b).unwrap();
        let mut again = Vec::new();
        Wal::open(&path, |r| {
            again.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(again, vec![a, b.clone(), b]);
    }
}
