//! [`VectorFile`]: one open vector file, read with positioned reads.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{npy, texmex, ElementType, FileFormat, IoError};

/// Where the rows of a file lie, as found by a format's `probe`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    pub element: ElementType,
    pub dim: usize,
    pub len: usize,
    /// Byte offset of row 0.
    pub data_offset: u64,
    /// Bytes per row on disk, including a TEXMEX record's dimension header.
    pub record_bytes: usize,
}

/// An open vector file: random access and chunked streaming over fixed-size records.
/// Reads with positioned reads (`std::os::unix::fs::FileExt::read_exact_at`), never
/// loading the whole file; one read per call of [`VectorFile::read_f32`] / chunk.
///
/// `VectorFile` is `Sync`: several threads may read from one instance at once.
#[derive(Debug)]
pub struct VectorFile {
    pub(super) path: PathBuf,
    pub(super) file: File,
    pub(super) format: FileFormat,
    pub(super) layout: Layout,
}

impl VectorFile {
    /// Opens `path` (format by extension) and validates its header / first
    /// record's dimension and its size: a size that is not a whole number of
    /// records is a [`IoError::Truncated`] naming the partial record.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, IoError> {
        let path = path.as_ref();
        let format = FileFormat::from_path(path)?;
        let os = |e| IoError::os(path, e);
        let file = File::open(path).map_err(os)?;
        let meta = file.metadata().map_err(os)?;
        if meta.is_dir() {
            return Err(os(std::io::Error::other(
                "is a directory, not a vector file",
            )));
        }
        let layout = match format {
            FileFormat::Npy => npy::probe(path, &file, meta.len())?,
            FileFormat::Fvecs | FileFormat::Ivecs | FileFormat::Bvecs => {
                texmex::probe(path, &file, meta.len(), format)?
            }
        };
        Ok(VectorFile {
            path: path.to_path_buf(),
            file,
            format,
            layout,
        })
    }

    /// The path the file was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The container format.
    pub fn format(&self) -> FileFormat {
        self.format
    }

    /// The element type stored on disk.
    pub fn element_type(&self) -> ElementType {
        self.layout.element
    }

    /// Vector dimension (elements per row).
    pub fn dim(&self) -> usize {
        self.layout.dim
    }

    /// Number of vectors (rows).
    pub fn len(&self) -> usize {
        self.layout.len
    }

    /// Always false for a successfully opened file (empty files are an error),
    /// kept for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.layout.len == 0
    }

    /// Appends rows `[start, start+count)` converted to `f32` (from f16 / u8 /
    /// i32 as stored) to `out`, row-major. Checks each TEXMEX record's own
    /// dimension header ([`IoError::InconsistentDimension`] with the record
    /// index). On error `out` is left as it was.
    pub fn read_f32(&self, start: usize, count: usize, out: &mut Vec<f32>) -> Result<(), IoError> {
        self.check_range(start, count)?;
        if count == 0 {
            return Ok(());
        }
        let old = out.len();
        let r = match self.format {
            FileFormat::Npy => npy::read_f32(self, start, count, out),
            _ => texmex::read_f32(self, start, count, out),
        };
        if r.is_err() {
            out.truncate(old);
        }
        r
    }

    /// Like [`VectorFile::read_f32`], as `i32`; only for integer files
    /// (`.ivecs`, `<i4` `.npy`) — ids and ground truth.
    pub fn read_i32(&self, start: usize, count: usize, out: &mut Vec<i32>) -> Result<(), IoError> {
        if self.layout.element != ElementType::I32 {
            return Err(IoError::UnsupportedDtype {
                path: self.path.clone(),
                dtype: self.layout.element.name().to_string(),
                reason: "ids / ground truth need an integer file (.ivecs or an int32 <i4 .npy)"
                    .to_string(),
            });
        }
        self.check_range(start, count)?;
        if count == 0 {
            return Ok(());
        }
        let old = out.len();
        let r = match self.format {
            FileFormat::Npy => npy::read_i32(self, start, count, out),
            _ => texmex::read_i32(self, start, count, out),
        };
        if r.is_err() {
            out.truncate(old);
        }
        r
    }

    /// Iterates over chunks of at most `rows_per_chunk` rows (0 is taken as 1)
    /// as `f32`: yields `(start_row, rows)`. Stops after the first error.
    pub fn chunks_f32(
        &self,
        rows_per_chunk: usize,
    ) -> impl Iterator<Item = Result<(usize, Vec<f32>), IoError>> + '_ {
        chunk_iter(self.len(), self.dim(), rows_per_chunk, move |s, c, out| {
            self.read_f32(s, c, out)
        })
    }

    fn check_range(&self, start: usize, count: usize) -> Result<(), IoError> {
        match start.checked_add(count) {
            Some(end) if end <= self.layout.len => Ok(()),
            _ => Err(IoError::OutOfRange {
                path: self.path.clone(),
                start: start as u64,
                count: count as u64,
                len: self.layout.len as u64,
            }),
        }
    }

    /// Byte offset and length of rows `[start, start+count)` (range already checked).
    pub(super) fn byte_span(&self, start: usize, count: usize) -> Result<(u64, usize), IoError> {
        let rb = self.layout.record_bytes;
        let offset = (start as u64)
            .checked_mul(rb as u64)
            .and_then(|o| o.checked_add(self.layout.data_offset));
        match (offset, count.checked_mul(rb)) {
            (Some(o), Some(n)) => Ok((o, n)),
            _ => Err(IoError::os(
                &self.path,
                std::io::Error::other(format!("read of {count} rows is too large")),
            )),
        }
    }

    /// One positioned read of exactly `buf.len()` bytes at `offset`.
    pub(super) fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                IoError::os(
                    &self.path,
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "file shrank while open: {} bytes at offset {offset} no longer present",
                            buf.len()
                        ),
                    ),
                )
            } else {
                IoError::os(&self.path, e)
            }
        })
    }

    /// The error for a TEXMEX record whose header disagrees with the file's dimension.
    pub(super) fn check_record_dim(&self, record: usize, got: i32) -> Result<(), IoError> {
        if got as i64 == self.layout.dim as i64 {
            Ok(())
        } else {
            Err(IoError::InconsistentDimension {
                path: self.path.clone(),
                record: record as u64,
                expected: self.layout.dim,
                got: got as i64,
            })
        }
    }
}

/// Chunked iteration over `len` rows with a `read(start, count, out)` function.
pub(super) fn chunk_iter<'a>(
    len: usize,
    dim: usize,
    rows_per_chunk: usize,
    read: impl Fn(usize, usize, &mut Vec<f32>) -> Result<(), IoError> + 'a,
) -> impl Iterator<Item = Result<(usize, Vec<f32>), IoError>> + 'a {
    let rows = rows_per_chunk.max(1);
    let mut next = 0usize;
    std::iter::from_fn(move || {
        if next >= len {
            return None;
        }
        let start = next;
        let count = rows.min(len - start);
        let mut buf = Vec::with_capacity(count.saturating_mul(dim));
        match read(start, count, &mut buf) {
            Ok(()) => {
                next = start + count;
                Some(Ok((start, buf)))
            }
            Err(e) => {
                next = len;
                Some(Err(e))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::*;

    fn check_chunks(path: &std::path::Path, dim: usize, data: &[f32]) {
        let f = VectorFile::open(path).unwrap();
        assert_eq!(f.dim(), dim);
        assert_eq!(f.len(), data.len() / dim);
        let mut whole = Vec::new();
        f.read_f32(0, f.len(), &mut whole).unwrap();
        for rows in [1, 3, 7, 64, 1000] {
            let mut cat = Vec::new();
            let mut expect_start = 0;
            for c in f.chunks_f32(rows) {
                let (s, v) = c.unwrap();
                assert_eq!(s, expect_start);
                assert!(v.len() <= rows * dim && !v.is_empty() && v.len() % dim == 0);
                expect_start += v.len() / dim;
                cat.extend_from_slice(&v);
            }
            assert_eq!(cat, whole, "rows_per_chunk {rows}");
        }
        // Random sub-ranges.
        for (s, c) in [(0, 1), (5, 10), (f.len() - 1, 1), (f.len(), 0)] {
            let mut part = vec![42.0];
            f.read_f32(s, c, &mut part).unwrap();
            assert_eq!(part[0], 42.0);
            assert_eq!(&part[1..], &whole[s * dim..(s + c) * dim]);
        }
    }

    #[test]
    fn chunked_equals_whole_all_formats() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 13;
        let n = 101;
        let f = synth_f32(n * dim, 9);
        let bytes: Vec<f32> = f.iter().map(|v| ((v + 8.0) * 15.0).floor()).collect();
        let cases: Vec<(&str, ElementType, Vec<f32>)> = vec![
            ("a.fvecs", ElementType::F32, f.clone()),
            ("a.bvecs", ElementType::U8, bytes.clone()),
            ("a.npy", ElementType::F32, f.clone()),
            ("b.npy", ElementType::U8, bytes.clone()),
            (
                "c.npy",
                ElementType::F16,
                f.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect(),
            ),
            (
                "d.npy",
                ElementType::I32,
                bytes.iter().map(|v| v - 100.0).collect(),
            ),
            (
                "a.ivecs",
                ElementType::I32,
                bytes.iter().map(|v| v * -3.0).collect(),
            ),
        ];
        for (name, el, data) in cases {
            let p = dir.path().join(name);
            write_f32(&p, dim, el, &data).unwrap();
            assert_eq!(VectorFile::open(&p).unwrap().element_type(), el);
            check_chunks(&p, dim, &data);
        }
    }

    #[test]
    fn out_of_range_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.fvecs");
        write_f32(&p, 2, ElementType::F32, &[1.0, 2.0, 3.0, 4.0]).unwrap();
        let f = VectorFile::open(&p).unwrap();
        let mut out = Vec::new();
        for (s, c) in [(0, 3), (2, 1), (usize::MAX, 2)] {
            let e = f.read_f32(s, c, &mut out).unwrap_err();
            assert!(matches!(e, IoError::OutOfRange { .. }), "{e}");
            assert_names(&e, &p);
        }
        assert!(out.is_empty());
    }

    #[test]
    fn read_i32_on_float_file_is_dtype_error() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a.fvecs", "a.npy"] {
            let p = dir.path().join(name);
            write_f32(&p, 2, ElementType::F32, &[1.0, 2.0]).unwrap();
            let f = VectorFile::open(&p).unwrap();
            let e = f.read_i32(0, 1, &mut Vec::new()).unwrap_err();
            assert!(matches!(e, IoError::UnsupportedDtype { .. }), "{e}");
            assert!(e.to_string().contains("integer"), "{e}");
            assert_names(&e, &p);
        }
    }

    #[test]
    fn directory_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.fvecs");
        std::fs::create_dir(&p).unwrap();
        let e = VectorFile::open(&p).unwrap_err();
        assert!(matches!(e, IoError::Os { .. }), "{e}");
    }

    #[test]
    fn concurrent_reads_share_one_file() {
        use rayon::prelude::*;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.fvecs");
        let data = synth_f32(200 * 4, 1);
        write_f32(&p, 4, ElementType::F32, &data).unwrap();
        let f = VectorFile::open(&p).unwrap();
        let ok = (0..200usize).into_par_iter().all(|r| {
            let mut v = Vec::new();
            f.read_f32(r, 1, &mut v).is_ok() && v == data[r * 4..r * 4 + 4]
        });
        assert!(ok);
    }
}
