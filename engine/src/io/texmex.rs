//! TEXMEX `.fvecs` / `.ivecs` / `.bvecs`: each record is a little-endian `i32`
//! dimension `d` followed by `d` elements (`f32`, `i32` or `u8`). All records
//! of a file must share `d`; the first record's header sets it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::file::{Layout, VectorFile};
use super::{check_dim, ElementType, FileFormat, IoError};

/// Bytes of a record's dimension header.
pub(super) const HEADER_BYTES: usize = 4;

/// The element type a TEXMEX format stores.
pub(super) fn element_of(format: FileFormat) -> ElementType {
    match format {
        FileFormat::Fvecs => ElementType::F32,
        FileFormat::Ivecs => ElementType::I32,
        // .npy never comes here; u8 for .bvecs.
        FileFormat::Bvecs | FileFormat::Npy => ElementType::U8,
    }
}

fn read_header_at(path: &Path, file: &File, offset: u64) -> Result<i32, IoError> {
    let mut hdr = [0u8; HEADER_BYTES];
    file.read_exact_at(&mut hdr, offset)
        .map_err(|e| IoError::os(path, e))?;
    Ok(i32::from_le_bytes(hdr))
}

/// Validates a TEXMEX file of `file_len` bytes: first record's dimension,
/// whole number of records, and the last record's header (cheap early check).
pub(super) fn probe(
    path: &Path,
    file: &File,
    file_len: u64,
    format: FileFormat,
) -> Result<Layout, IoError> {
    let element = element_of(format);
    if file_len == 0 {
        return Err(IoError::Empty {
            path: path.to_path_buf(),
        });
    }
    if file_len < HEADER_BYTES as u64 {
        return Err(IoError::Truncated {
            path: path.to_path_buf(),
            record: 0,
            record_bytes: HEADER_BYTES as u64,
            present: file_len,
        });
    }
    let dim = check_dim(path, read_header_at(path, file, 0)? as i64)?;
    let record_bytes = HEADER_BYTES + dim * element.size_bytes();
    let rb = record_bytes as u64;
    let (rows, rem) = (file_len / rb, file_len % rb);
    if rem != 0 {
        return Err(IoError::Truncated {
            path: path.to_path_buf(),
            record: rows,
            record_bytes: rb,
            present: rem,
        });
    }
    let len = usize::try_from(rows).map_err(|_| {
        IoError::os(
            path,
            std::io::Error::other("too many records for this platform"),
        )
    })?;
    if len > 1 {
        let last = read_header_at(path, file, (rows - 1) * rb)?;
        if last as i64 != dim as i64 {
            return Err(IoError::InconsistentDimension {
                path: path.to_path_buf(),
                record: rows - 1,
                expected: dim,
                got: last as i64,
            });
        }
    }
    Ok(Layout {
        element,
        dim,
        len,
        data_offset: 0,
        record_bytes,
    })
}

/// Reads whole `[header, d x 4-byte word]` records with one positioned read
/// into an aligned word buffer.
fn read_words(vf: &VectorFile, start: usize, count: usize) -> Result<Vec<u32>, IoError> {
    let (offset, nbytes) = vf.byte_span(start, count)?;
    let mut buf = vec![0u32; nbytes / 4];
    vf.read_exact_at(bytemuck::cast_slice_mut(&mut buf), offset)?;
    Ok(buf)
}

pub(super) fn read_f32(
    vf: &VectorFile,
    start: usize,
    count: usize,
    out: &mut Vec<f32>,
) -> Result<(), IoError> {
    let dim = vf.layout.dim;
    out.reserve(count * dim);
    match vf.layout.element {
        ElementType::F32 | ElementType::I32 => {
            let is_f32 = vf.layout.element == ElementType::F32;
            let buf = read_words(vf, start, count)?;
            for (i, rec) in buf.chunks_exact(dim + 1).enumerate() {
                let (hdr, payload) = rec.split_at(1);
                vf.check_record_dim(start + i, u32::from_le(hdr[0]) as i32)?;
                if is_f32 {
                    out.extend(payload.iter().map(|&w| f32::from_bits(u32::from_le(w))));
                } else {
                    out.extend(payload.iter().map(|&w| u32::from_le(w) as i32 as f32));
                }
            }
        }
        ElementType::U8 => {
            let (offset, nbytes) = vf.byte_span(start, count)?;
            let mut buf = vec![0u8; nbytes];
            vf.read_exact_at(&mut buf, offset)?;
            for (i, rec) in buf.chunks_exact(HEADER_BYTES + dim).enumerate() {
                let (hdr, payload) = rec.split_at(HEADER_BYTES);
                let d = i32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
                vf.check_record_dim(start + i, d)?;
                out.extend(payload.iter().map(|&b| f32::from(b)));
            }
        }
        ElementType::F16 => {
            return Err(IoError::UnsupportedDtype {
                path: vf.path.clone(),
                dtype: "f16".to_string(),
                reason: "TEXMEX files do not hold f16".to_string(),
            })
        }
    }
    Ok(())
}

/// `.ivecs` only (the caller checked the element type).
pub(super) fn read_i32(
    vf: &VectorFile,
    start: usize,
    count: usize,
    out: &mut Vec<i32>,
) -> Result<(), IoError> {
    let dim = vf.layout.dim;
    out.reserve(count * dim);
    let buf = read_words(vf, start, count)?;
    for (i, rec) in buf.chunks_exact(dim + 1).enumerate() {
        let (hdr, payload) = rec.split_at(1);
        vf.check_record_dim(start + i, u32::from_le(hdr[0]) as i32)?;
        out.extend(payload.iter().map(|&w| u32::from_le(w) as i32));
    }
    Ok(())
}

/// The header every record of a `dim`-dimensional file starts with.
pub(super) fn record_header(dim: usize) -> [u8; HEADER_BYTES] {
    // dim <= MAX_DIM was checked at writer creation, so it fits an i32.
    (dim as i32).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::*;
    use proptest::prelude::*;
    use std::path::Path;

    /// Raw TEXMEX bytes with per-record dims `dims` and element size `es`.
    fn raw(dims: &[i32], es: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for &d in dims {
            v.extend_from_slice(&d.to_le_bytes());
            v.extend(std::iter::repeat_n(0u8, d.max(0) as usize * es));
        }
        v
    }

    fn open_err(path: &Path, bytes: &[u8]) -> IoError {
        std::fs::write(path, bytes).unwrap();
        let e = VectorFile::open(path).unwrap_err();
        assert_names(&e, path);
        e
    }

    #[test]
    fn fvecs_round_trip_and_layout() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("base.fvecs");
        let data = synth_f32(4 * 3, 5);
        write_f32(&p, 3, ElementType::F32, &data).unwrap();
        // Exact on-disk layout.
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes.len(), 4 * (4 + 12));
        assert_eq!(&bytes[0..4], &3i32.to_le_bytes());
        assert_eq!(&bytes[4..8], &data[0].to_le_bytes());
        assert_eq!(&bytes[16..20], &3i32.to_le_bytes());
        let f = VectorFile::open(&p).unwrap();
        assert_eq!(
            (f.format(), f.element_type(), f.dim(), f.len()),
            (FileFormat::Fvecs, ElementType::F32, 3, 4)
        );
        assert!(!f.is_empty());
        assert_eq!(f.path(), p.as_path());
        assert_eq!(read_all_f32(&p).unwrap(), (3, data));
    }

    #[test]
    fn ivecs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gt.ivecs");
        let ids: Vec<i32> = vec![0, 1, i32::MAX, -1, i32::MIN, 77];
        write_i32(&p, 2, &ids).unwrap();
        assert_eq!(read_all_i32(&p).unwrap(), (2, ids.clone()));
        let (_, f) = read_all_f32(&p).unwrap();
        assert_eq!(f, ids.iter().map(|&i| i as f32).collect::<Vec<_>>());
        // write_f32 to ivecs: integral values convert; others are out of range.
        let p2 = dir.path().join("gt2.ivecs");
        write_f32(&p2, 1, ElementType::I32, &[3.0, -4.0]).unwrap();
        assert_eq!(read_all_i32(&p2).unwrap(), (1, vec![3, -4]));
        for bad in [0.5f32, 3e9, f32::NAN, f32::INFINITY] {
            let e = write_f32(&p2, 1, ElementType::I32, &[1.0, bad]).unwrap_err();
            assert!(
                matches!(e, IoError::ValueOutOfRange { record: 1, .. }),
                "{e}"
            );
        }
    }

    #[test]
    fn bvecs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.bvecs");
        let data: Vec<f32> = (0..=255).map(|v| v as f32).collect();
        write_f32(&p, 16, ElementType::U8, &data).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 16 * (4 + 16));
        assert_eq!(read_all_f32(&p).unwrap(), (16, data));
    }

    #[test]
    fn bvecs_rejects_out_of_range_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.bvecs");
        let mut w = VectorWriter::create(&p, 2, ElementType::U8).unwrap();
        w.write_f32(&[1.0, 2.0]).unwrap();
        let e = w.write_f32(&[3.0, 4.0, 5.0, 300.0]).unwrap_err();
        assert!(
            matches!(
                e,
                IoError::ValueOutOfRange {
                    record: 2,
                    element: ElementType::U8,
                    ..
                }
            ),
            "{e}"
        );
        assert_names(&e, &p);
        assert!(e.to_string().contains("300"), "{e}");
        for bad in [-1.0f32, 1.5, f32::NAN] {
            assert!(matches!(
                w.write_f32(&[bad, 0.0]),
                Err(IoError::ValueOutOfRange { .. })
            ));
        }
        drop(w);
        assert!(!p.exists());
    }

    #[test]
    fn writer_element_must_match_format() {
        let dir = tempfile::tempdir().unwrap();
        for (name, el) in [
            ("a.fvecs", ElementType::U8),
            ("a.ivecs", ElementType::F32),
            ("a.bvecs", ElementType::F16),
        ] {
            let p = dir.path().join(name);
            let e = VectorWriter::create(&p, 4, el).unwrap_err();
            assert!(matches!(e, IoError::UnsupportedDtype { .. }), "{e}");
            assert_names(&e, &p);
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn truncated_mid_record() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.fvecs");
        let mut bytes = raw(&[4, 4, 4], 4);
        bytes.truncate(2 * 20 + 9);
        let e = open_err(&p, &bytes);
        match &e {
            IoError::Truncated {
                record,
                record_bytes,
                present,
                ..
            } => {
                assert_eq!((*record, *record_bytes, *present), (2, 20, 9));
            }
            _ => panic!("wrong error {e}"),
        }
        assert!(e.to_string().contains("record 2"), "{e}");
        // Shorter than one header.
        let e = open_err(&p, &[4, 0]);
        assert!(matches!(e, IoError::Truncated { record: 0, .. }), "{e}");
    }

    #[test]
    fn inconsistent_dimension_reported_with_record() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.fvecs");
        // Record 1 claims dim 2 but has 3 floats of room: size stays a multiple.
        let mut bytes = raw(&[3, 3, 3, 3], 4);
        bytes[16..20].copy_from_slice(&2i32.to_le_bytes());
        std::fs::write(&p, &bytes).unwrap();
        let f = VectorFile::open(&p).unwrap();
        let mut out = vec![9.0];
        let e = f.read_f32(0, 4, &mut out).unwrap_err();
        match &e {
            IoError::InconsistentDimension {
                record,
                expected,
                got,
                ..
            } => {
                assert_eq!((*record, *expected, *got), (1, 3, 2));
            }
            _ => panic!("wrong error {e}"),
        }
        assert_names(&e, &p);
        assert_eq!(out, vec![9.0], "out restored on error");
        f.read_f32(0, 1, &mut out).unwrap();
        f.read_f32(2, 2, &mut out).unwrap();
        // Chunk iteration stops at the error.
        let items: Vec<_> = f.chunks_f32(1).collect();
        assert_eq!(items.len(), 2);
        assert!(items[1].is_err());

        // Last record differs: caught at open.
        let mut bytes = raw(&[3, 3, 3], 4);
        bytes[32..36].copy_from_slice(&(-3i32).to_le_bytes());
        let e = open_err(&p, &bytes);
        assert!(
            matches!(
                e,
                IoError::InconsistentDimension {
                    record: 2,
                    got: -3,
                    ..
                }
            ),
            "{e}"
        );

        // bvecs and ivecs too.
        let pb = dir.path().join("d.bvecs");
        let mut bytes = raw(&[2, 2, 2], 1);
        bytes[6..10].copy_from_slice(&7i32.to_le_bytes());
        std::fs::write(&pb, &bytes).unwrap();
        let e = VectorFile::open(&pb)
            .unwrap()
            .read_f32(0, 3, &mut Vec::new())
            .unwrap_err();
        assert!(
            matches!(
                e,
                IoError::InconsistentDimension {
                    record: 1,
                    got: 7,
                    ..
                }
            ),
            "{e}"
        );
        let pi = dir.path().join("d.ivecs");
        let mut bytes = raw(&[1, 1, 1], 4);
        bytes[8..12].copy_from_slice(&5i32.to_le_bytes());
        std::fs::write(&pi, &bytes).unwrap();
        let e = VectorFile::open(&pi)
            .unwrap()
            .read_i32(0, 3, &mut Vec::new())
            .unwrap_err();
        assert!(
            matches!(
                e,
                IoError::InconsistentDimension {
                    record: 1,
                    got: 5,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn zero_negative_and_huge_dim() {
        let dir = tempfile::tempdir().unwrap();
        for (i, d) in [0i32, -5, (1 << 20) + 1, i32::MIN].into_iter().enumerate() {
            let p = dir.path().join(format!("z{i}.fvecs"));
            let e = open_err(&p, &raw(&[d], 0));
            assert!(
                matches!(e, IoError::InvalidDimension { dim, .. } if dim == d as i64),
                "{e}"
            );
        }
        let p = dir.path().join("w.fvecs");
        let e = VectorWriter::create(&p, 0, ElementType::F32).unwrap_err();
        assert!(matches!(e, IoError::InvalidDimension { dim: 0, .. }), "{e}");
    }

    #[test]
    fn empty_file() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["e.fvecs", "e.ivecs", "e.bvecs"] {
            let p = dir.path().join(name);
            let e = open_err(&p, &[]);
            assert!(matches!(e, IoError::Empty { .. }), "{e}");
            assert!(e.to_string().contains("empty"), "{e}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn fvecs_round_trip_prop(dim in 1usize..40, rows in 1usize..60, seed in any::<u64>(), chunk in 1usize..20) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("p.fvecs");
            let data = synth_f32(dim * rows, seed);
            write_f32(&p, dim, ElementType::F32, &data).unwrap();
            let f = VectorFile::open(&p).unwrap();
            prop_assert_eq!((f.dim(), f.len()), (dim, rows));
            let mut cat = Vec::new();
            for c in f.chunks_f32(chunk) {
                cat.extend(c.unwrap().1);
            }
            prop_assert_eq!(cat, data);
        }
    }
}
