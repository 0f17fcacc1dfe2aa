//! [`VectorSet`]: several vector files read as one concatenated row space.

use std::path::PathBuf;

use super::file::{chunk_iter, VectorFile};
use super::IoError;

/// Upper bound on the bytes one coalesced read of [`VectorSet::gather_f32`] fetches.
const GATHER_RUN_BYTES: usize = 4 << 20;

/// Opens several files as one concatenated set of rows (ids run on: file 2's
/// row 0 is global row `file1.len()`). All files share one dimension.
#[derive(Debug)]
pub struct VectorSet {
    files: Vec<VectorFile>,
    /// Global index of each file's row 0; strictly increasing (files are non-empty).
    starts: Vec<usize>,
    dim: usize,
    len: usize,
}

impl VectorSet {
    /// Opens every path; an empty list, or a file whose dimension differs from
    /// the first file's, is an error.
    pub fn open(paths: &[PathBuf]) -> Result<Self, IoError> {
        let Some(first_path) = paths.first() else {
            return Err(IoError::NoFiles);
        };
        let mut files: Vec<VectorFile> = Vec::with_capacity(paths.len());
        let mut starts = Vec::with_capacity(paths.len());
        let mut len = 0usize;
        let mut dim = 0;
        for p in paths {
            let f = VectorFile::open(p)?;
            if files.is_empty() {
                dim = f.dim();
            } else if f.dim() != dim {
                return Err(IoError::DimensionMismatch {
                    path: p.clone(),
                    expected: dim,
                    got: f.dim(),
                    first: first_path.clone(),
                });
            }
            starts.push(len);
            len = len.checked_add(f.len()).ok_or_else(|| {
                IoError::os(p, std::io::Error::other("total row count overflows"))
            })?;
            files.push(f);
        }
        Ok(VectorSet {
            files,
            starts,
            dim,
            len,
        })
    }

    /// The files, in order.
    pub fn files(&self) -> &[VectorFile] {
        &self.files
    }

    /// The shared vector dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Total rows over all files.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the set has no rows (never true for a successfully opened set).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Which file holds global `row` (< len), and the row's index inside it.
    fn locate(&self, row: usize) -> (usize, usize) {
        let fi = self.starts.partition_point(|&s| s <= row).saturating_sub(1);
        (fi, row - self.starts[fi])
    }

    /// A path naming the set in errors that concern no single file.
    fn label(&self) -> PathBuf {
        let first = self.files.first().map(|f| f.path().display().to_string());
        match (first, self.files.len()) {
            (Some(p), 1) => PathBuf::from(p),
            (Some(p), n) => PathBuf::from(format!("{p} (+{} more files)", n - 1)),
            (None, _) => PathBuf::new(),
        }
    }

    fn out_of_range(&self, start: usize, count: usize) -> IoError {
        IoError::OutOfRange {
            path: self.label(),
            start: start as u64,
            count: count as u64,
            len: self.len as u64,
        }
    }

    /// Appends global rows `[start, start+count)` as `f32` to `out`; the range
    /// may span files. On error `out` is left as it was.
    pub fn read_f32(&self, start: usize, count: usize, out: &mut Vec<f32>) -> Result<(), IoError> {
        match start.checked_add(count) {
            Some(end) if end <= self.len => {}
            _ => return Err(self.out_of_range(start, count)),
        }
        let old = out.len();
        let mut row = start;
        let end = start + count;
        while row < end {
            let (fi, local) = self.locate(row);
            let f = &self.files[fi];
            let n = (end - row).min(f.len() - local);
            if let Err(e) = f.read_f32(local, n, out) {
                out.truncate(old);
                return Err(e);
            }
            row += n;
        }
        Ok(())
    }

    /// Chunks of at most `rows_per_chunk` rows (0 is taken as 1) over the whole
    /// set: yields `(global_start_row, rows)`; stops after the first error.
    pub fn chunks_f32(
        &self,
        rows_per_chunk: usize,
    ) -> impl Iterator<Item = Result<(usize, Vec<f32>), IoError>> + '_ {
        chunk_iter(self.len, self.dim, rows_per_chunk, move |s, c, out| {
            self.read_f32(s, c, out)
        })
    }

    /// Appends the rows with global indices `rows` (any order, repeats allowed)
    /// to `out`, in the given order. Runs of consecutive indices are fetched
    /// with one read each. On error `out` is left as it was.
    pub fn gather_f32(&self, rows: &[usize], out: &mut Vec<f32>) -> Result<(), IoError> {
        if let Some(&bad) = rows.iter().find(|&&r| r >= self.len) {
            return Err(self.out_of_range(bad, 1));
        }
        let dim = self.dim;
        let old = out.len();
        out.resize(old + rows.len() * dim, 0.0);
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_unstable_by_key(|&i| rows[i]);
        let max_run = (GATHER_RUN_BYTES / (dim * 4)).max(1);
        let mut tmp = Vec::new();
        let mut i = 0;
        while i < order.len() {
            let first = rows[order[i]];
            let mut last = first;
            let mut j = i + 1;
            while j < order.len() {
                let r = rows[order[j]];
                if r > last + 1 || r - first >= max_run {
                    break;
                }
                last = r;
                j += 1;
            }
            tmp.clear();
            if let Err(e) = self.read_f32(first, last - first + 1, &mut tmp) {
                out.truncate(old);
                return Err(e);
            }
            for &k in &order[i..j] {
                let src = (rows[k] - first) * dim;
                let dst = old + k * dim;
                out[dst..dst + dim].copy_from_slice(&tmp[src..src + dim]);
            }
            i = j;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::*;

    fn three_files(dir: &std::path::Path) -> (Vec<PathBuf>, Vec<f32>, usize) {
        let dim = 6;
        let a = synth_f32(dim * 10, 1);
        let b: Vec<f32> = synth_f32(dim * 7, 2)
            .iter()
            .map(|v| ((v + 8.0) * 10.0).floor())
            .collect();
        let c = synth_f32(dim * 3, 3);
        let pa = dir.join("a.fvecs");
        let pb = dir.join("b.bvecs");
        let pc = dir.join("c.npy");
        write_f32(&pa, dim, ElementType::F32, &a).unwrap();
        write_f32(&pb, dim, ElementType::U8, &b).unwrap();
        write_f32(&pc, dim, ElementType::F32, &c).unwrap();
        let all = [a, b, c].concat();
        (vec![pa, pb, pc], all, dim)
    }

    #[test]
    fn set_equals_concatenation() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, all, dim) = three_files(dir.path());
        let set = VectorSet::open(&paths).unwrap();
        assert_eq!((set.dim(), set.len(), set.is_empty()), (dim, 20, false));
        assert_eq!(set.files().len(), 3);
        let mut whole = Vec::new();
        set.read_f32(0, 20, &mut whole).unwrap();
        assert_eq!(whole, all);
        // Ranges spanning file boundaries.
        for (s, c) in [(8, 4), (9, 9), (0, 20), (17, 3), (10, 0), (20, 0)] {
            let mut v = Vec::new();
            set.read_f32(s, c, &mut v).unwrap();
            assert_eq!(v, all[s * dim..(s + c) * dim], "{s} {c}");
        }
        for rows in [1, 4, 9, 100] {
            let mut cat = Vec::new();
            let mut next = 0;
            for ch in set.chunks_f32(rows) {
                let (s, v) = ch.unwrap();
                assert_eq!(s, next);
                next += v.len() / dim;
                cat.extend(v);
            }
            assert_eq!(cat, all);
        }
        let e = set.read_f32(15, 6, &mut whole).unwrap_err();
        assert!(matches!(e, IoError::OutOfRange { .. }), "{e}");
        assert!(e.to_string().contains("a.fvecs"), "{e}");
    }

    #[test]
    fn gather_returns_requested_rows_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, all, dim) = three_files(dir.path());
        let set = VectorSet::open(&paths).unwrap();
        let rows = [19usize, 0, 9, 10, 11, 11, 3, 17, 16, 5, 4, 19];
        let mut out = vec![-1.0];
        set.gather_f32(&rows, &mut out).unwrap();
        assert_eq!(out.len(), 1 + rows.len() * dim);
        for (k, &r) in rows.iter().enumerate() {
            assert_eq!(
                &out[1 + k * dim..1 + (k + 1) * dim],
                &all[r * dim..(r + 1) * dim],
                "row {r}"
            );
        }
        set.gather_f32(&[], &mut out).unwrap();
        assert_eq!(out.len(), 1 + rows.len() * dim);
        let before = out.clone();
        let e = set.gather_f32(&[1, 20], &mut out).unwrap_err();
        assert!(matches!(e, IoError::OutOfRange { start: 20, .. }), "{e}");
        assert_eq!(out, before);
    }

    #[test]
    fn mismatched_dims_and_empty_list() {
        let dir = tempfile::tempdir().unwrap();
        let pa = dir.path().join("a.fvecs");
        let pb = dir.path().join("b.npy");
        write_f32(&pa, 4, ElementType::F32, &[0.0; 8]).unwrap();
        write_f32(&pb, 5, ElementType::F32, &[0.0; 10]).unwrap();
        let e = VectorSet::open(&[pa.clone(), pb.clone()]).unwrap_err();
        assert!(
            matches!(
                e,
                IoError::DimensionMismatch {
                    expected: 4,
                    got: 5,
                    ..
                }
            ),
            "{e}"
        );
        assert_names(&e, &pb);
        assert!(matches!(VectorSet::open(&[]), Err(IoError::NoFiles)));
        // A bad file in the list is reported with its own path.
        let pc = dir.path().join("c.fvecs");
        std::fs::write(&pc, []).unwrap();
        let e = VectorSet::open(&[pa, pc.clone()]).unwrap_err();
        assert!(matches!(e, IoError::Empty { .. }), "{e}");
        assert_names(&e, &pc);
    }
}
