//! Reading and writing vector files, streamed in chunks.
//!
//! Role: this module is the only place that knows the on-disk layout of the
//! vector formats Quiver consumes and produces:
//!
//! * TEXMEX `.fvecs` / `.ivecs` / `.bvecs`: every record is a little-endian
//!   `i32` dimension `d` followed by `d` elements (`f32`, `i32`, `u8`).
//! * NumPy `.npy` (format versions 1.0, 2.0 and 3.0): a 2-D, C-order array of
//!   little-endian `<f4`, `<f2`, `|u1` or `<i4`.
//!
//! The format is chosen by the file extension ([`FileFormat::from_path`]).
//! [`VectorFile`] gives random access and chunked streaming over one file with
//! positioned reads (one read per chunk); [`VectorSet`] concatenates several
//! files into one row space; [`VectorWriter`] streams rows out atomically
//! (temp file, fsync, rename, fsync directory — see [`atomic_write_file`]).
//!
//! What it must not do:
//! * load a whole file into memory behind the caller's back (only the
//!   `read_all_*` convenience functions do that, on request);
//! * panic, `unwrap` or use `unsafe` on anything that comes from a file: every
//!   problem is an [`IoError`] naming the file and, where it applies, the record;
//! * judge the *values* it reads (NaN/inf checks, normalisation, metric
//!   concerns belong to the callers) — it only converts element types;
//! * leave partial files at a target path: writers go through a temp file.

mod atomic;
mod file;
mod npy;
mod set;
pub mod sync;
mod texmex;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};

pub use atomic::{atomic_write_file, AtomicFile};
pub use file::VectorFile;
pub use set::VectorSet;
pub use writer::VectorWriter;

/// Largest vector dimension accepted in any file (`1 << 20`).
pub const MAX_DIM: usize = 1 << 20;

/// Element type stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    /// 32-bit IEEE float (`.fvecs`, `<f4`).
    F32,
    /// 16-bit IEEE float (`<f2`).
    F16,
    /// Unsigned byte (`.bvecs`, `|u1`).
    U8,
    /// 32-bit signed integer (`.ivecs`, `<i4`): ids, ground truth.
    I32,
}

impl ElementType {
    /// Bytes per element on disk.
    pub fn size_bytes(self) -> usize {
        match self {
            ElementType::F32 | ElementType::I32 => 4,
            ElementType::F16 => 2,
            ElementType::U8 => 1,
        }
    }

    /// Short lower-case name (`"f32"`, `"f16"`, `"u8"`, `"i32"`).
    pub fn name(self) -> &'static str {
        match self {
            ElementType::F32 => "f32",
            ElementType::F16 => "f16",
            ElementType::U8 => "u8",
            ElementType::I32 => "i32",
        }
    }
}

impl fmt::Display for ElementType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// On-disk container format, chosen by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// TEXMEX `.fvecs` (f32 records).
    Fvecs,
    /// TEXMEX `.ivecs` (i32 records).
    Ivecs,
    /// TEXMEX `.bvecs` (u8 records).
    Bvecs,
    /// NumPy `.npy` (2-D, C order, little-endian).
    Npy,
}

impl FileFormat {
    /// Detects the format from the extension (case-insensitive).
    pub fn from_path(path: &Path) -> Result<FileFormat, IoError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase());
        match ext.as_deref() {
            Some("fvecs") => Ok(FileFormat::Fvecs),
            Some("ivecs") => Ok(FileFormat::Ivecs),
            Some("bvecs") => Ok(FileFormat::Bvecs),
            Some("npy") => Ok(FileFormat::Npy),
            _ => Err(IoError::UnknownFormat {
                path: path.to_path_buf(),
            }),
        }
    }

    /// The file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            FileFormat::Fvecs => "fvecs",
            FileFormat::Ivecs => "ivecs",
            FileFormat::Bvecs => "bvecs",
            FileFormat::Npy => "npy",
        }
    }

    /// Whether files of this format can hold elements of type `element`.
    pub fn supports(self, element: ElementType) -> bool {
        match self {
            FileFormat::Fvecs => element == ElementType::F32,
            FileFormat::Ivecs => element == ElementType::I32,
            FileFormat::Bvecs => element == ElementType::U8,
            FileFormat::Npy => true,
        }
    }
}

impl fmt::Display for FileFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, ".{}", self.extension())
    }
}

/// Every failure of this module. Each variant but [`IoError::NoFiles`] names
/// the file; record indices are 0-based row numbers.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The operating system refused an operation on the file.
    #[error("{path}: {source}")]
    Os {
        /// The file concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The extension is none of `.fvecs`, `.ivecs`, `.bvecs`, `.npy`.
    #[error("{path}: unsupported file extension (expected .fvecs, .ivecs, .bvecs or .npy)")]
    UnknownFormat {
        /// The file concerned.
        path: PathBuf,
    },

    /// The file ends part-way through a record.
    #[error(
        "{path}: truncated record {record}: only {present} of its {record_bytes} bytes are present \
         (file size is not a whole number of records)"
    )]
    Truncated {
        /// The file concerned.
        path: PathBuf,
        /// Index of the first incomplete record.
        record: u64,
        /// Bytes a whole record takes.
        record_bytes: u64,
        /// Bytes of that record present in the file.
        present: u64,
    },

    /// A `.npy` file holds more data than its header's shape describes.
    #[error(
        "{path}: data section is {got} bytes, but the header's shape needs exactly {expected}"
    )]
    TrailingBytes {
        /// The file concerned.
        path: PathBuf,
        /// Bytes the shape needs.
        expected: u64,
        /// Bytes present after the header.
        got: u64,
    },

    /// A TEXMEX record's dimension header differs from the file's (record 0's).
    #[error("{path}: record {record} has dimension {got}, expected {expected}")]
    InconsistentDimension {
        /// The file concerned.
        path: PathBuf,
        /// The offending record.
        record: u64,
        /// The file's dimension.
        expected: usize,
        /// The record's header value.
        got: i64,
    },

    /// A dimension outside `1..=MAX_DIM` (first TEXMEX record, `.npy` shape, or writer argument).
    #[error("{path}: invalid dimension {dim} (must be between 1 and {max})", max = MAX_DIM)]
    InvalidDimension {
        /// The file concerned.
        path: PathBuf,
        /// The dimension found.
        dim: i64,
    },

    /// An element type this module does not read or write here.
    #[error("{path}: unsupported dtype {dtype}: {reason}")]
    UnsupportedDtype {
        /// The file concerned.
        path: PathBuf,
        /// The dtype as found (e.g. `>f4`, `<f8`) or the element type asked for.
        dtype: String,
        /// What is supported instead.
        reason: String,
    },

    /// The `.npy` preamble or header dict cannot be parsed.
    #[error("{path}: malformed .npy header: {reason}")]
    BadNpyHeader {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A `.npy` array in Fortran (column-major) order.
    #[error(
        "{path}: Fortran-order (column-major) arrays are not supported; \
         save a C-order array (numpy.ascontiguousarray)"
    )]
    FortranOrder {
        /// The file concerned.
        path: PathBuf,
    },

    /// A `.npy` array that is not 2-D.
    #[error("{path}: expected a 2-D array, shape is {shape:?}")]
    NotTwoDimensional {
        /// The file concerned.
        path: PathBuf,
        /// The shape found.
        shape: Vec<u64>,
    },

    /// The file holds no vectors (0 bytes, or a `.npy` of shape `(0, d)`).
    #[error("{path}: empty file (no vectors)")]
    Empty {
        /// The file concerned.
        path: PathBuf,
    },

    /// A value written does not fit the file's element type.
    #[error("{path}: value {value} at record {record} does not fit the {element} element type")]
    ValueOutOfRange {
        /// The file being written.
        path: PathBuf,
        /// The row (counted over the whole file) holding the value.
        record: u64,
        /// The value.
        value: f64,
        /// The file's element type.
        element: ElementType,
    },

    /// A write whose length is not a multiple of the dimension.
    #[error("{path}: {len} values is not a whole number of rows of dimension {dim}")]
    RaggedRows {
        /// The file being written.
        path: PathBuf,
        /// Number of values passed.
        len: usize,
        /// The file's dimension.
        dim: usize,
    },

    /// A read past the last row.
    #[error("{path}: rows {start}..{end} out of range (it has {len} rows)", end = start.saturating_add(*count))]
    OutOfRange {
        /// The file (or, for a [`VectorSet`], its first file) concerned.
        path: PathBuf,
        /// First row asked for.
        start: u64,
        /// Number of rows asked for.
        count: u64,
        /// Rows available.
        len: u64,
    },

    /// A file of a [`VectorSet`] whose dimension differs from the first file's.
    #[error("{path}: dimension {got} differs from dimension {expected} of {first}")]
    DimensionMismatch {
        /// The offending file.
        path: PathBuf,
        /// The first file's dimension.
        expected: usize,
        /// This file's dimension.
        got: usize,
        /// The first file.
        first: PathBuf,
    },

    /// [`VectorSet::open`] with no paths.
    #[error("no vector files given")]
    NoFiles,
}

impl IoError {
    /// Wraps an OS error with the file it concerns.
    pub fn os(path: impl Into<PathBuf>, source: std::io::Error) -> IoError {
        IoError::Os {
            path: path.into(),
            source,
        }
    }

    /// The file the error concerns, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            IoError::Os { path, .. }
            | IoError::UnknownFormat { path }
            | IoError::Truncated { path, .. }
            | IoError::TrailingBytes { path, .. }
            | IoError::InconsistentDimension { path, .. }
            | IoError::InvalidDimension { path, .. }
            | IoError::UnsupportedDtype { path, .. }
            | IoError::BadNpyHeader { path, .. }
            | IoError::FortranOrder { path }
            | IoError::NotTwoDimensional { path, .. }
            | IoError::Empty { path }
            | IoError::ValueOutOfRange { path, .. }
            | IoError::RaggedRows { path, .. }
            | IoError::OutOfRange { path, .. }
            | IoError::DimensionMismatch { path, .. } => Some(path),
            IoError::NoFiles => None,
        }
    }
}

/// Checks a dimension read from a file or given by a caller.
pub(crate) fn check_dim(path: &Path, dim: i64) -> Result<usize, IoError> {
    if dim >= 1 && dim <= MAX_DIM as i64 {
        Ok(dim as usize)
    } else {
        Err(IoError::InvalidDimension {
            path: path.to_path_buf(),
            dim,
        })
    }
}

/// Writes all `rows` (row-major, `rows.len()` a multiple of `dim`) to `path`
/// as `element`, atomically.
pub fn write_f32(
    path: impl AsRef<Path>,
    dim: usize,
    element: ElementType,
    rows: &[f32],
) -> Result<(), IoError> {
    let mut w = VectorWriter::create(path, dim, element)?;
    w.write_f32(rows)?;
    w.finish()
}

/// Writes all `rows` to an integer file (`.ivecs`, or `.npy` as `<i4`), atomically.
pub fn write_i32(path: impl AsRef<Path>, dim: usize, rows: &[i32]) -> Result<(), IoError> {
    let mut w = VectorWriter::create(path, dim, ElementType::I32)?;
    w.write_i32(rows)?;
    w.finish()
}

/// Reads a whole (small) file as `f32`: returns `(dim, rows)`.
pub fn read_all_f32(path: impl AsRef<Path>) -> Result<(usize, Vec<f32>), IoError> {
    let f = VectorFile::open(path)?;
    let mut out = Vec::new();
    f.read_f32(0, f.len(), &mut out)?;
    Ok((f.dim(), out))
}

/// Reads a whole (small) integer file as `i32`: returns `(dim, rows)`.
pub fn read_all_i32(path: impl AsRef<Path>) -> Result<(usize, Vec<i32>), IoError> {
    let f = VectorFile::open(path)?;
    let mut out = Vec::new();
    f.read_i32(0, f.len(), &mut out)?;
    Ok((f.dim(), out))
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Helpers shared by the io tests.

    /// Deterministic pseudo-random f32 data (xorshift), values in [-8, 8).
    pub fn synth_f32(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 16.0 - 8.0
            })
            .collect()
    }

    pub fn assert_names(err: &super::IoError, path: &std::path::Path) {
        let msg = err.to_string();
        let p = path.display().to_string();
        assert!(msg.contains(&p), "message {msg:?} does not name {p:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;

    #[test]
    fn format_detection() {
        assert_eq!(
            FileFormat::from_path(Path::new("a/b.fvecs")).ok(),
            Some(FileFormat::Fvecs)
        );
        assert_eq!(
            FileFormat::from_path(Path::new("b.IVECS")).ok(),
            Some(FileFormat::Ivecs)
        );
        assert_eq!(
            FileFormat::from_path(Path::new("b.bvecs")).ok(),
            Some(FileFormat::Bvecs)
        );
        assert_eq!(
            FileFormat::from_path(Path::new("b.npy")).ok(),
            Some(FileFormat::Npy)
        );
        for bad in ["b.txt", "b", "b.fvecs.gz", ".npy"] {
            let e = FileFormat::from_path(Path::new(bad)).unwrap_err();
            assert!(matches!(e, IoError::UnknownFormat { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_extension_errors_on_open_and_create() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("data.csv");
        std::fs::write(&p, b"1,2,3\n").unwrap();
        let e = VectorFile::open(&p).unwrap_err();
        assert!(matches!(e, IoError::UnknownFormat { .. }), "{e}");
        assert_names(&e, &p);
        let e = VectorWriter::create(&p, 3, ElementType::F32).unwrap_err();
        assert!(matches!(e, IoError::UnknownFormat { .. }), "{e}");
    }

    #[test]
    fn missing_file_is_os_error_naming_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope.fvecs");
        let e = VectorFile::open(&p).unwrap_err();
        assert!(matches!(e, IoError::Os { .. }), "{e}");
        assert_names(&e, &p);
    }

    #[test]
    fn convenience_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let data = synth_f32(5 * 7, 3);
        let p = dir.path().join("x.fvecs");
        write_f32(&p, 7, ElementType::F32, &data).unwrap();
        let (d, back) = read_all_f32(&p).unwrap();
        assert_eq!(d, 7);
        assert_eq!(back, data);

        let ids: Vec<i32> = (0..30).map(|i| i * 1000 - 7).collect();
        for name in ["gt.ivecs", "gt.npy"] {
            let p = dir.path().join(name);
            write_i32(&p, 10, &ids).unwrap();
            let (d, back) = read_all_i32(&p).unwrap();
            assert_eq!(d, 10);
            assert_eq!(back, ids);
        }
    }

    #[test]
    fn error_path_accessor() {
        let e = IoError::Empty {
            path: PathBuf::from("/x/y.fvecs"),
        };
        assert_eq!(e.path(), Some(Path::new("/x/y.fvecs")));
        assert!(IoError::NoFiles.path().is_none());
    }
}
