//! [`VectorWriter`]: streams rows into a vector file through an [`AtomicFile`].

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::atomic::AtomicFile;
use super::{check_dim, npy, texmex, ElementType, FileFormat, IoError};

/// Bytes of encoded rows buffered before each write.
const BLOCK_BYTES: usize = 1 << 20;

/// Streaming writer; data is written to `<path>.tmp-<pid>-<seq>` and on
/// [`VectorWriter::finish`] flushed, fsynced, renamed onto `path`, and the
/// parent directory fsynced. Dropping without `finish()` removes the temp file.
///
/// A failed `write_*` call writes none of the rows of the block it failed in
/// (earlier blocks of the same call may have been written); the writer stays
/// usable, but the usual response is to drop it.
#[derive(Debug)]
pub struct VectorWriter {
    out: AtomicFile,
    format: FileFormat,
    element: ElementType,
    dim: usize,
    rows: u64,
    scratch: Vec<u8>,
}

impl VectorWriter {
    /// Format from the extension; `element` must be valid for it (fvecs: F32,
    /// ivecs: I32, bvecs: U8, npy: any); `dim` in `1..=MAX_DIM`.
    pub fn create(
        path: impl AsRef<Path>,
        dim: usize,
        element: ElementType,
    ) -> Result<Self, IoError> {
        let path = path.as_ref();
        let format = FileFormat::from_path(path)?;
        if !format.supports(element) {
            let holds = texmex::element_of(format);
            return Err(IoError::UnsupportedDtype {
                path: path.to_path_buf(),
                dtype: element.name().to_string(),
                reason: format!("{format} files hold {holds} elements"),
            });
        }
        let dim = check_dim(path, i64::try_from(dim).unwrap_or(i64::MAX))?;
        let mut out = AtomicFile::create(path)?;
        if format == FileFormat::Npy {
            // Placeholder; rewritten with the real row count by finish().
            let header = npy::header_bytes(path, element, 0, dim)?;
            out.writer()
                .write_all(&header)
                .map_err(|e| IoError::os(path, e))?;
        }
        Ok(VectorWriter {
            out,
            format,
            element,
            dim,
            rows: 0,
            scratch: Vec::new(),
        })
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        self.out.path()
    }

    /// The container format.
    pub fn format(&self) -> FileFormat {
        self.format
    }

    /// The element type written.
    pub fn element_type(&self) -> ElementType {
        self.element
    }

    /// The vector dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Rows written so far.
    pub fn rows_written(&self) -> u64 {
        self.rows
    }

    /// Appends rows (row-major, `rows.len()` a multiple of `dim`), converted to
    /// the element type: u8 / i32 need integral values in range, f16 needs
    /// finite values to stay finite; otherwise [`IoError::ValueOutOfRange`].
    pub fn write_f32(&mut self, rows: &[f32]) -> Result<(), IoError> {
        self.write_rows(rows, encode_f32)
    }

    /// Appends rows of an `I32` file (ids, ground truth).
    pub fn write_i32(&mut self, rows: &[i32]) -> Result<(), IoError> {
        if self.element != ElementType::I32 {
            return Err(IoError::UnsupportedDtype {
                path: self.path().to_path_buf(),
                dtype: "i32".to_string(),
                reason: format!(
                    "write_i32 needs an i32 file, this one holds {}",
                    self.element
                ),
            });
        }
        self.write_rows(rows, |row, _, out| {
            for v in row {
                out.extend_from_slice(&v.to_le_bytes());
            }
            Ok(())
        })
    }

    /// Encodes whole blocks into `scratch`, writing each block only once it
    /// converted completely. `encode(row, element, out)` fails with the
    /// offending value.
    fn write_rows<T>(
        &mut self,
        rows: &[T],
        encode: impl Fn(&[T], ElementType, &mut Vec<u8>) -> Result<(), f64>,
    ) -> Result<(), IoError> {
        let dim = self.dim;
        if !rows.len().is_multiple_of(dim) {
            return Err(IoError::RaggedRows {
                path: self.path().to_path_buf(),
                len: rows.len(),
                dim,
            });
        }
        let texmex = self.format != FileFormat::Npy;
        let row_bytes =
            dim * self.element.size_bytes() + if texmex { texmex::HEADER_BYTES } else { 0 };
        let block_rows = (BLOCK_BYTES / row_bytes).max(1);
        for block in rows.chunks(block_rows * dim) {
            self.scratch.clear();
            for (i, row) in block.chunks_exact(dim).enumerate() {
                let record = self.rows + i as u64;
                if texmex {
                    self.scratch.extend_from_slice(&texmex::record_header(dim));
                }
                encode(row, self.element, &mut self.scratch).map_err(|value| {
                    IoError::ValueOutOfRange {
                        path: self.out.path().to_path_buf(),
                        record,
                        value,
                        element: self.element,
                    }
                })?;
            }
            let path = self.out.path().to_path_buf();
            self.out
                .writer()
                .write_all(&self.scratch)
                .map_err(|e| IoError::os(path, e))?;
            self.rows += (block.len() / dim) as u64;
        }
        Ok(())
    }

    /// Completes the file (npy: writes the real shape into the header) and
    /// atomically moves it onto the target path.
    pub fn finish(self) -> Result<(), IoError> {
        let VectorWriter {
            mut out,
            format,
            element,
            dim,
            rows,
            ..
        } = self;
        if format == FileFormat::Npy {
            let path = out.path().to_path_buf();
            let header = npy::header_bytes(&path, element, rows, dim)?;
            let os = |e| IoError::os(&path, e);
            let w = out.writer();
            w.flush().map_err(os)?;
            w.get_ref().write_all_at(&header, 0).map_err(os)?;
        }
        out.commit()
    }
}

/// f32 -> element bytes, little-endian; `Err(value)` if a value does not fit.
fn encode_f32(row: &[f32], element: ElementType, out: &mut Vec<u8>) -> Result<(), f64> {
    match element {
        ElementType::F32 => {
            #[cfg(target_endian = "little")]
            out.extend_from_slice(bytemuck::cast_slice(row));
            #[cfg(not(target_endian = "little"))]
            for v in row {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        ElementType::F16 => {
            for &v in row {
                let h = half::f16::from_f32(v);
                if h.is_infinite() && v.is_finite() {
                    return Err(f64::from(v));
                }
                out.extend_from_slice(&h.to_le_bytes());
            }
        }
        ElementType::U8 => {
            for &v in row {
                if !((0.0..=255.0).contains(&v) && v.fract() == 0.0) {
                    return Err(f64::from(v));
                }
                out.push(v as u8);
            }
        }
        ElementType::I32 => {
            for &v in row {
                // 2^31 is exactly representable; i32::MAX is not (rounds to 2^31).
                if !((-2_147_483_648.0..2_147_483_648.0).contains(&v) && v.fract() == 0.0) {
                    return Err(f64::from(v));
                }
                out.extend_from_slice(&(v as i32).to_le_bytes());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::*;

    fn entries(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        for (name, el) in [
            ("a.fvecs", ElementType::F32),
            ("a.npy", ElementType::F16),
            ("a.bvecs", ElementType::U8),
        ] {
            let p = dir.path().join(name);
            let mut w = VectorWriter::create(&p, 3, el).unwrap();
            w.write_f32(&[1.0, 2.0, 3.0]).unwrap();
            assert_eq!(
                entries(dir.path()).len(),
                1,
                "temp file exists while writing"
            );
            drop(w);
            assert!(!p.exists());
            assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
        }
    }

    #[test]
    fn finish_replaces_existing_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.fvecs");
        write_f32(&p, 2, ElementType::F32, &[1.0; 8]).unwrap();
        let mut w = VectorWriter::create(&p, 2, ElementType::F32).unwrap();
        w.write_f32(&[5.0, 6.0]).unwrap();
        // The old file stays readable until finish.
        assert_eq!(VectorFile::open(&p).unwrap().len(), 4);
        assert_eq!(w.rows_written(), 1);
        assert_eq!(
            (w.dim(), w.format(), w.element_type(), w.path()),
            (2, FileFormat::Fvecs, ElementType::F32, p.as_path())
        );
        w.finish().unwrap();
        assert_eq!(read_all_f32(&p).unwrap(), (2, vec![5.0, 6.0]));
        assert_eq!(entries(dir.path()), vec!["a.fvecs".to_string()]);
    }

    #[test]
    fn ragged_rows_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let mut w = VectorWriter::create(&p, 3, ElementType::F32).unwrap();
        let e = w.write_f32(&[1.0; 4]).unwrap_err();
        assert!(
            matches!(e, IoError::RaggedRows { len: 4, dim: 3, .. }),
            "{e}"
        );
        assert_names(&e, &p);
        assert_eq!(w.rows_written(), 0);
    }

    #[test]
    fn write_i32_needs_i32_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let mut w = VectorWriter::create(&p, 1, ElementType::F32).unwrap();
        let e = w.write_i32(&[1]).unwrap_err();
        assert!(matches!(e, IoError::UnsupportedDtype { .. }), "{e}");
        let e = write_i32(dir.path().join("a.fvecs"), 1, &[1]).unwrap_err();
        assert!(matches!(e, IoError::UnsupportedDtype { .. }), "{e}");
    }

    #[test]
    fn failed_block_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bvecs");
        let mut w = VectorWriter::create(&p, 2, ElementType::U8).unwrap();
        w.write_f32(&[1.0, 2.0]).unwrap();
        assert!(w.write_f32(&[3.0, 4.0, -1.0, 0.0]).is_err());
        w.write_f32(&[9.0, 9.0]).unwrap();
        assert_eq!(w.rows_written(), 2);
        w.finish().unwrap();
        assert_eq!(read_all_f32(&p).unwrap(), (2, vec![1.0, 2.0, 9.0, 9.0]));
    }

    #[test]
    fn many_blocks_stream_correctly() {
        // Larger than one 1 MiB block, to cover block boundaries.
        let dir = tempfile::tempdir().unwrap();
        let dim = 100;
        let data = synth_f32(dim * 3000, 77);
        for name in ["big.fvecs", "big.npy"] {
            let p = dir.path().join(name);
            write_f32(&p, dim, ElementType::F32, &data).unwrap();
            assert_eq!(read_all_f32(&p).unwrap(), (dim, data.clone()));
        }
    }
}
