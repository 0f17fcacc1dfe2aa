//! The layout of collections written before the store layer (one snapshot and one log per
//! collection), and its migration: `meta.json`, `state.flat` or `state.qvr`, `wal.log` are
//! read, replayed and written as the first checkpoint of the current layout, then removed.
//!
//! Old log record: `length u32 | CRC32C u32 | payload`, payload `kind u8 (1 upsert, 2 delete) |
//! count u32 | dim u32 | ids u64 × count | vectors f32 × count × dim`. A torn record at the
//! tail (a crash mid-append, never acknowledged) ends the replay and is cut off; replay is
//! idempotent, so a log already folded into a snapshot may be replayed again safely.

use std::path::Path;
use std::sync::Arc;

use quiver_engine::{FlatIndex, IvfPqIndex};
use serde::Deserialize;

use crate::error::{Result, StoreError};
use crate::manifest::{CollectionMeta, IndexConfig, Manifest, SegmentEntry};

/// A logged write.
#[derive(Debug, Clone, PartialEq)]
enum WalRecord {
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

const MAX_RECORD: usize = 1 << 30;

fn parse(data: &[u8], pos: usize) -> Option<(WalRecord, usize)> {
    let header = data.get(pos..pos + 8)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    if !(9..=MAX_RECORD).contains(&len) {
        return None;
    }
    let payload = data.get(pos + 8..pos + 8 + len)?;
    if !quiver_engine::checksum::crc32c_matches(payload, crc) {
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

#[derive(Deserialize)]
struct OldMeta {
    name: String,
    dim: usize,
    metric: String,
    index: IndexConfig,
    trained: bool,
}

const OLD_FILES: [&str; 4] = ["state.flat", "state.qvr", "wal.log", "meta.json"];

/// Converts a collection folder of the old layout, or finishes a conversion a crash cut short
/// (a manifest is written before any old file is removed).
pub fn migrate(dir: &Path) -> Result<()> {
    if dir.join("manifest.json").exists() {
        return remove_old(dir);
    }
    let meta_path = dir.join("meta.json");
    let raw = std::fs::read(&meta_path).map_err(|e| StoreError::io("reading", &meta_path, e))?;
    let old: OldMeta = serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt {
        path: meta_path.clone(),
        offset: 0,
        reason: e.to_string(),
    })?;
    let meta = CollectionMeta {
        name: old.name,
        dim: old.dim,
        metric: old.metric,
        index: old.index,
        fields: Vec::new(),
        settings: serde_json::Value::Null,
    };
    tracing::info!(collection = %meta.name, "converting the collection to the segment layout");
    enum State {
        Flat(FlatIndex),
        Ivf(IvfPqIndex),
    }
    let mut state = if old.trained {
        State::Ivf(quiver_engine::persist::load(&dir.join("state.qvr"))?)
    } else if dir.join("state.flat").exists() {
        State::Flat(crate::flatfile::load_flat(&dir.join("state.flat"))?)
    } else {
        State::Flat(FlatIndex::new(meta.metric(), meta.dim))
    };
    let wal_path = dir.join("wal.log");
    if wal_path.exists() {
        let data = std::fs::read(&wal_path).map_err(|e| StoreError::io("reading", &wal_path, e))?;
        let mut pos = 0;
        while let Some((record, next)) = parse(&data, pos) {
            let r = match (&mut state, record) {
                (State::Flat(f), WalRecord::Upsert { ids, vectors, .. }) => {
                    f.upsert(&vectors, &ids)
                }
                (State::Ivf(i), WalRecord::Upsert { ids, vectors, .. }) => {
                    i.upsert(&vectors, &ids, &quiver_engine::progress::NoProgress)
                }
                (State::Flat(f), WalRecord::Delete { ids }) => {
                    f.delete(&ids);
                    Ok(())
                }
                (State::Ivf(i), WalRecord::Delete { ids }) => {
                    i.delete(&ids);
                    Ok(())
                }
            };
            r.map_err(|e| StoreError::Corrupt {
                path: wal_path.clone(),
                offset: pos as u64,
                reason: e.to_string(),
            })?;
            pos = next;
        }
    }
    let segdir = dir.join("segments");
    let waldir = dir.join("wal");
    for d in [&segdir, &waldir] {
        std::fs::create_dir_all(d).map_err(|e| StoreError::io("creating", d, e))?;
    }
    let (file, quantizers) = match &state {
        State::Flat(f) => {
            crate::flatfile::save_flat(f, &segdir.join("1.flat"))?;
            ("1.flat".to_string(), None)
        }
        State::Ivf(i) => {
            quiver_engine::persist::save(i, &segdir.join("1.qvr"))?;
            let q = Arc::new(i.empty_like());
            quiver_engine::persist::save(&q, &segdir.join("quantizers-1.qvr"))?;
            ("1.qvr".to_string(), Some("quantizers-1.qvr".to_string()))
        }
    };
    crate::wal::WalWriter::create(&waldir, 1)?;
    Manifest {
        format: crate::manifest::FORMAT,
        meta,
        quantizers,
        segments: vec![SegmentEntry {
            id: 1,
            file,
            deletes: None,
        }],
        wal_from: 1,
        next_segment_id: 2,
        replica: false,
        drift: None,
    }
    .write(dir)?;
    remove_old(dir)
}

fn remove_old(dir: &Path) -> Result<()> {
    for f in OLD_FILES {
        let p = dir.join(f);
        if p.exists() {
            std::fs::remove_file(&p).map_err(|e| StoreError::io("removing", &p, e))?;
        }
    }
    crate::fsutil::sync_dir(dir).map_err(|e| StoreError::io("syncing", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_engine::backend::cpu::CpuBackend;
    use quiver_engine::progress::NoProgress;
    use quiver_engine::{IndexParams, Metric, RefineKind};

    /// An old log record, framed as the old server wrote it.
    fn old_record(kind: u8, ids: &[u64], vectors: &[f32], dim: u32) -> Vec<u8> {
        let mut p = vec![kind];
        p.extend_from_slice(&(ids.len() as u32).to_le_bytes());
        p.extend_from_slice(&dim.to_le_bytes());
        ids.iter()
            .for_each(|i| p.extend_from_slice(&i.to_le_bytes()));
        vectors
            .iter()
            .for_each(|v| p.extend_from_slice(&v.to_le_bytes()));
        let mut r = (p.len() as u32).to_le_bytes().to_vec();
        r.extend_from_slice(&crc32c::crc32c(&p).to_le_bytes());
        r.extend(p);
        r
    }

    fn old_meta(dir: &Path, trained: bool) {
        let json = format!(
            r#"{{"format":1,"name":"old","dim":4,"metric":"l2","index":{{"nlist":2,"pq_m":2,"refine":"f32","seed":3}},"trained":{trained}}}"#
        );
        std::fs::write(dir.join("meta.json"), json).unwrap();
    }

    fn v(id: u64) -> Vec<f32> {
        (0..4).map(|j| ((id * 13 + j * 5) % 31) as f32).collect()
    }

    #[test]
    fn old_flat_and_trained_collections_open_with_every_write() {
        for trained in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("old");
            std::fs::create_dir_all(&dir).unwrap();
            old_meta(&dir, trained);
            let ids: Vec<u64> = (0..300).collect();
            let vectors: Vec<f32> = ids.iter().flat_map(|&i| v(i)).collect();
            if trained {
                let mut p = IndexParams::new(Metric::L2, 4, 2, 2);
                p.refine = RefineKind::F32;
                let mut index = IvfPqIndex::train(p, &vectors, &NoProgress).unwrap();
                index.add(&vectors, Some(&ids), &NoProgress).unwrap();
                quiver_engine::persist::save(&index, &dir.join("state.qvr")).unwrap();
            } else {
                let mut f = FlatIndex::new(Metric::L2, 4);
                f.upsert(&vectors, &ids).unwrap();
                crate::flatfile::save_flat(&f, &dir.join("state.flat")).unwrap();
            }
            let mut wal = old_record(1, &[1000, 1001], &[v(1000), v(1001)].concat(), 4);
            wal.extend(old_record(2, &[5, 1001], &[], 0));
            wal.extend([9, 0, 0]); // a torn tail
            std::fs::write(dir.join("wal.log"), wal).unwrap();

            let c =
                crate::Collection::open(&dir, CpuBackend, crate::StoreConfig::default()).unwrap();
            assert_eq!(c.trained(), trained);
            assert_eq!(c.version().len(), 300, "trained {trained}");
            assert_eq!(c.get(&[1000])[0].1, v(1000));
            assert!(c.get(&[5]).is_empty() && c.get(&[1001]).is_empty());
            assert_eq!(c.get(&[299])[0].1, v(299));
            for f in OLD_FILES {
                assert!(!dir.join(f).exists(), "{f} left behind");
            }
            drop(c);
            let c =
                crate::Collection::open(&dir, CpuBackend, crate::StoreConfig::default()).unwrap();
            assert_eq!(c.version().len(), 300);
        }
    }
}
