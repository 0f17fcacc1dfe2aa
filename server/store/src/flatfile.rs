//! Flat segment files (and the snapshots of untrained collections of the old layout): ids and
//! raw vectors in one checksummed file,
//! written to a temporary name, fsynced and renamed. Trained collections are snapshotted in
//! the engine's index format (`quiver_engine::persist`).
//!
//! Layout: magic "QVRFLAT1", version u32 (2), metric u8, 3 zero bytes, dim u32, zero u32,
//! count u64, ids u64 × count, vectors f32 × count × dim, payload lengths u32 × count, the
//! payloads (compact JSON) back to back, CRC32C u32 of all previous bytes, magic "QVRFEND1".
//! Version 1 (no payload lengths or payloads) still loads.

use std::io::Write;
use std::path::Path;

use quiver_engine::io::{AtomicFile, IoError};
use quiver_engine::{EngineError, FlatIndex, Metric};

const MAGIC: &[u8; 8] = b"QVRFLAT1";
const END: &[u8; 8] = b"QVRFEND1";
const HEADER: usize = 32;

/// Writes a flat index atomically.
pub fn save_flat(index: &FlatIndex, path: &Path) -> Result<u64, EngineError> {
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&2u32.to_le_bytes());
    header.extend_from_slice(&[index.metric().code(), 0, 0, 0]);
    header.extend_from_slice(&(index.dim() as u32).to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&(index.len() as u64).to_le_bytes());
    let mut ids = Vec::with_capacity(index.len() * 8);
    let mut vecs = Vec::with_capacity(index.len() * index.dim() * 4);
    let mut lens = Vec::with_capacity(index.len() * 4);
    let mut payloads = Vec::new();
    index.for_each_live_with_payloads(|i, v, p| {
        ids.extend(i.iter().flat_map(|x| x.to_le_bytes()));
        vecs.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        for p in p {
            lens.extend_from_slice(&(p.len() as u32).to_le_bytes());
            payloads.extend_from_slice(p);
        }
    });
    let mut crc = crc32c::crc32c(&header);
    crc = crc32c::crc32c_append(crc, &ids);
    crc = crc32c::crc32c_append(crc, &vecs);
    crc = crc32c::crc32c_append(crc, &lens);
    crc = crc32c::crc32c_append(crc, &payloads);
    let mut file = AtomicFile::create(path)?;
    let io = |e: std::io::Error| EngineError::Io(IoError::os(path, e));
    let w = file.writer();
    w.write_all(&header).map_err(io)?;
    w.write_all(&ids).map_err(io)?;
    w.write_all(&vecs).map_err(io)?;
    w.write_all(&lens).map_err(io)?;
    w.write_all(&payloads).map_err(io)?;
    w.write_all(&crc.to_le_bytes()).map_err(io)?;
    w.write_all(END).map_err(io)?;
    file.commit()?;
    Ok((HEADER + ids.len() + vecs.len() + lens.len() + payloads.len() + 12) as u64)
}

/// Reads a flat snapshot, verifying its checksum and shape.
pub fn load_flat(path: &Path) -> Result<FlatIndex, EngineError> {
    let corrupt = |reason: &str| EngineError::CorruptIndex {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let b = std::fs::read(path).map_err(|e| IoError::os(path, e))?;
    if b.len() < HEADER + 12 || &b[..8] != MAGIC {
        return Err(corrupt("not a Quiver flat snapshot"));
    }
    if &b[b.len() - 8..] != END {
        return Err(corrupt("truncated flat snapshot"));
    }
    let body = &b[..b.len() - 12];
    let stored = u32::from_le_bytes(
        b[b.len() - 12..b.len() - 8]
            .try_into()
            .map_err(|_| corrupt("short"))?,
    );
    if !quiver_engine::checksum::crc32c_matches(body, stored) {
        return Err(corrupt("checksum mismatch"));
    }
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let version = u32_at(8);
    if version != 1 && version != 2 {
        return Err(corrupt("unsupported flat snapshot version"));
    }
    let metric = Metric::from_code(b[12]).ok_or_else(|| corrupt("unknown metric"))?;
    let dim = u32_at(16) as usize;
    let mut c = [0u8; 8];
    c.copy_from_slice(&b[24..32]);
    let count = u64::from_le_bytes(c) as usize;
    let fixed = count
        .checked_mul(8 + dim * 4 + if version == 2 { 4 } else { 0 })
        .and_then(|x| x.checked_add(HEADER));
    let fits = match fixed {
        Some(f) if version == 1 => f == body.len(),
        Some(f) => f <= body.len(),
        None => false,
    };
    if dim == 0 || dim > quiver_engine::index::MAX_DIM || !fits {
        return Err(corrupt("sizes do not match the header"));
    }
    let ids: Vec<u64> = body[HEADER..HEADER + count * 8]
        .chunks_exact(8)
        .map(|x| u64::from_le_bytes([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]]))
        .collect();
    let vec_end = HEADER + count * 8 + count * dim * 4;
    let vectors: Vec<f32> = body[HEADER + count * 8..vec_end]
        .chunks_exact(4)
        .map(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]]))
        .collect();
    let mut payloads = Vec::new();
    if version == 2 {
        let mut at = vec_end + count * 4;
        for r in 0..count {
            let len = u32_at(vec_end + r * 4) as usize;
            let p = body
                .get(at..at + len)
                .ok_or_else(|| corrupt("payloads run past the end"))?;
            payloads.push(p.to_vec());
            at += len;
        }
        if at != body.len() {
            return Err(corrupt("sizes do not match the header"));
        }
    }
    let mut index = FlatIndex::new(metric, dim);
    index
        .upsert_with_payloads(&vectors, &ids, &payloads)
        .map_err(|e| corrupt(&format!("invalid contents: {e}")))?;
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.flat");
        let mut f = FlatIndex::new(Metric::Cosine, 3);
        f.upsert_with_payloads(
            &[1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0],
            &[5, 9, 11],
            &[b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec(), Vec::new()],
        )
        .unwrap();
        f.delete(&[5]);
        save_flat(&f, &p).unwrap();
        let g = load_flat(&p).unwrap();
        assert_eq!(g.len(), 2);
        assert!(g.contains(9) && !g.contains(5));
        assert_eq!(g.payload(9), Some(&b"{\"b\":2}"[..]));
        assert_eq!(g.payload(11), Some(&b""[..]));
        // Every flipped byte is refused.
        let good = std::fs::read(&p).unwrap();
        for pos in 0..good.len() {
            let mut b = good.clone();
            b[pos] ^= 0x10;
            std::fs::write(&p, &b).unwrap();
            assert!(load_flat(&p).is_err(), "flipped byte {pos} accepted");
        }
        std::fs::write(&p, &good).unwrap();
        let mut b = std::fs::read(&p).unwrap();
        b[40] ^= 1;
        std::fs::write(&p, &b).unwrap();
        assert!(load_flat(&p).is_err());
    }
}
