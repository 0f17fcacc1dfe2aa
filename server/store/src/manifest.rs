//! The manifest: which files make up a collection at its last checkpoint, and from which
//! write-ahead log record on the log must be replayed over them. It is the one file that
//! switches a collection from one checkpoint to the next (written atomically), so a crash
//! leaves either the old set or the new one, never a mix.
//!
//! Folder of a collection: `manifest.json`, `segments/<id>.qvr` (IVF-PQ segments, the engine's
//! index format), `segments/<id>.flat` (flat segments), `segments/<id>-<n>.del` (the n ids
//! deleted from a segment since it was written), `segments/quantizers-<id>.qvr` (an empty
//! index holding the trained quantizers), `wal/<first lsn>.log`.

use std::path::Path;

use quiver_engine::payload::fields::FieldSpec;
use quiver_engine::{Metric, RefineKind};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::fsutil::write_atomic;

/// Current manifest format.
pub const FORMAT: u32 = 2;

/// Index parameters of a collection; zeros are chosen at training.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexConfig {
    /// Inverted lists (0: about 4·√n, at least 39 vectors per list).
    pub nlist: u32,
    /// PQ sub-quantizers (0: dim / 8, or the largest divisor of dim up to that).
    pub pq_m: u32,
    /// Raw vectors kept beside the codes: "f32" (the vectors as written; the default of new
    /// collections), "f16", or "none" (codes only: `Get` returns PQ reconstructions and a
    /// retraining trains on them).
    pub refine: String,
    /// The refine factor a search without one uses (0: 10 when raw vectors are kept, else 1;
    /// 1: the collection was created with refine "none", so results rank by PQ codes and only
    /// the `k` returned are scored on their vectors). Absent in older manifests.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub refine_factor: u32,
    /// Training seed.
    pub seed: u64,
    /// Train by itself (in the background) once this many vectors are live and no index is
    /// trained yet; 0: only when asked (absent in older manifests).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub train_at: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

impl IndexConfig {
    /// The configuration an index file was built with (a loaded or served index).
    pub fn of_index(p: &quiver_engine::IndexParams) -> Self {
        IndexConfig {
            nlist: p.nlist as u32,
            pq_m: p.pq_m as u32,
            refine: p.refine.name().to_string(),
            refine_factor: 0,
            seed: p.seed,
            train_at: 0,
        }
    }

    /// The refine kind.
    pub fn refine_kind(&self) -> RefineKind {
        self.refine.parse().unwrap_or(RefineKind::F16)
    }
}

/// What a collection is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionMeta {
    /// Name.
    pub name: String,
    /// Dimension.
    pub dim: usize,
    /// Metric name (`l2`, `ip`, `cosine`).
    pub metric: String,
    /// Index parameters.
    pub index: IndexConfig,
    /// Indexed payload fields (`NAME:TYPE` in the file; absent in older manifests).
    #[serde(default, with = "field_specs", skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldSpec>,
    /// Settings a front end keeps for the collection and reports back (the Qdrant API's
    /// HNSW, WAL and optimizer settings and metadata): opaque JSON to the store, `null` when
    /// none (absent in older manifests).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub settings: serde_json::Value,
}

/// Field specs as their `NAME:TYPE` strings.
mod field_specs {
    use quiver_engine::payload::fields::FieldSpec;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(specs: &[FieldSpec], s: S) -> Result<S::Ok, S::Error> {
        let names: Vec<String> = specs.iter().map(|f| f.to_string()).collect();
        names.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<FieldSpec>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|n| FieldSpec::parse(n).map_err(serde::de::Error::custom))
            .collect()
    }
}

impl CollectionMeta {
    /// Refuses a description no collection can be opened with: a dimension outside
    /// 1..=`MAX_DIM` (`dim`), an unknown metric (`metric`).
    pub fn check(&self) -> Result<()> {
        let max = quiver_engine::index::MAX_DIM;
        if self.dim == 0 || self.dim > max {
            return Err(StoreError::Invalid {
                field: "dim",
                reason: format!("dimension {} is outside 1..={max}", self.dim),
            });
        }
        if self.metric.parse::<Metric>().is_err() {
            return Err(StoreError::Invalid {
                field: "metric",
                reason: format!("unknown metric {:?}", self.metric),
            });
        }
        Ok(())
    }

    /// The metric.
    pub fn metric(&self) -> Metric {
        self.metric.parse().unwrap_or(Metric::L2)
    }

    /// The parts of the description that change after creation.
    pub fn description(&self) -> Description {
        Description {
            fields: self.fields.clone(),
            settings: self.settings.clone(),
            train_at: self.index.train_at,
        }
    }

    /// Takes the changeable parts from `d`.
    pub fn describe(&mut self, d: &Description) {
        self.fields = d.fields.clone();
        self.settings = d.settings.clone();
        self.index.train_at = d.train_at;
    }
}

/// The parts of a collection's description that change after it is created: its indexed
/// payload fields, the front end's settings and the size at which it trains by itself. A
/// change is logged as the whole new value ([`crate::wal::Op::Describe`]), so applying it
/// twice is applying it once.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Description {
    /// Indexed payload fields (`NAME:TYPE`).
    #[serde(default, with = "field_specs")]
    pub fields: Vec<FieldSpec>,
    /// The front end's settings (see [`CollectionMeta::settings`]).
    #[serde(default)]
    pub settings: serde_json::Value,
    /// See [`IndexConfig::train_at`].
    #[serde(default)]
    pub train_at: u64,
}

/// One segment's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentEntry {
    /// Segment number.
    pub id: u64,
    /// Its file in `segments/`.
    pub file: String,
    /// Its deletions file in `segments/`, if any id was deleted since it was written.
    pub deletes: Option<String>,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version.
    pub format: u32,
    /// The collection.
    pub meta: CollectionMeta,
    /// The quantizers file once trained.
    pub quantizers: Option<String>,
    /// Sealed segments, oldest first.
    pub segments: Vec<SegmentEntry>,
    /// The first write-ahead log record not in the segments.
    pub wal_from: u64,
    /// The next segment number.
    pub next_segment_id: u64,
    /// A replica: fed only by an external log ([`crate::Collection::apply`]), from its
    /// creation on (absent in older manifests: false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replica: bool,
    /// Drift statistics of the quantizers (absent before training, and in older manifests).
    #[serde(default)]
    pub drift: Option<crate::drift::Drift>,
}

impl Manifest {
    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join("manifest.json");
        let raw = std::fs::read(&path).map_err(|e| StoreError::io("reading", &path, e))?;
        let m: Manifest = serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            offset: e.column() as u64,
            reason: format!("not a valid manifest: {e}"),
        })?;
        if m.format != FORMAT {
            return Err(StoreError::Corrupt {
                path,
                offset: 0,
                reason: format!("unsupported manifest format {}", m.format),
            });
        }
        m.check().map_err(|reason| StoreError::Corrupt {
            path,
            offset: 0,
            reason,
        })?;
        Ok(m)
    }

    /// What a manifest read from disk must hold before anything is opened from it.
    fn check(&self) -> std::result::Result<(), String> {
        self.meta.check().map_err(|e| e.to_string())?;
        if self.wal_from >= crate::wal::MAX_LSN || self.next_segment_id >= crate::wal::MAX_LSN {
            return Err("counters out of range".into());
        }
        // Files the manifest names are plain names inside the collection's `segments/`.
        let plain =
            |f: &String| !f.is_empty() && f != "." && f != ".." && !f.contains(['/', '\\', '\0']);
        let files = self.quantizers.iter().chain(
            self.segments
                .iter()
                .flat_map(|s| std::iter::once(&s.file).chain(s.deletes.iter())),
        );
        for f in files {
            if !plain(f) {
                return Err(format!("file name {f:?} is not a plain name"));
            }
        }
        Ok(())
    }

    /// Writes `dir/manifest.json` atomically and durably.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| StoreError::Invalid {
            field: "manifest",
            reason: e.to_string(),
        })?;
        write_atomic(&dir.join("manifest.json"), &[&json])
    }
}

const DEL_MAGIC: &[u8; 8] = b"QVRDEL01";

/// Writes a deletions file: magic, count u64, ids u64 × count, CRC32C u32 of all before.
pub fn write_deletes(path: &Path, ids: &[u64]) -> Result<()> {
    let mut b = Vec::with_capacity(20 + ids.len() * 8);
    b.extend_from_slice(DEL_MAGIC);
    b.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    b.extend(ids.iter().flat_map(|i| i.to_le_bytes()));
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    write_atomic(path, &[&b])
}

/// Reads a deletions file.
pub fn read_deletes(path: &Path) -> Result<Vec<u64>> {
    let b = std::fs::read(path).map_err(|e| StoreError::io("reading", path, e))?;
    let corrupt = |reason: &str| StoreError::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        reason: reason.into(),
    };
    if b.len() < 20 || &b[..8] != DEL_MAGIC {
        return Err(corrupt("not a Quiver deletions file"));
    }
    let n = u64::from_le_bytes(b[8..16].try_into().map_err(|_| corrupt("short"))?) as usize;
    if n.checked_mul(8).and_then(|x| x.checked_add(20)) != Some(b.len()) {
        return Err(corrupt("size does not match the count"));
    }
    let body = &b[..b.len() - 4];
    let crc = u32::from_le_bytes(b[b.len() - 4..].try_into().map_err(|_| corrupt("short"))?);
    if !quiver_engine::checksum::crc32c_matches(body, crc) {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(body[16..]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletes_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("1-2.del");
        write_deletes(&p, &[5, 9]).unwrap();
        assert_eq!(read_deletes(&p).unwrap(), vec![5, 9]);
        let mut b = std::fs::read(&p).unwrap();
        b[17] ^= 1;
        std::fs::write(&p, &b).unwrap();
        assert!(matches!(read_deletes(&p), Err(StoreError::Corrupt { .. })));
    }
}
