//! Target `vector_file`: the `.fvecs`, `.ivecs`, `.bvecs` and `.npy` readers
//! ([`quiver_engine::io::VectorFile`]). The first byte picks the extension, the rest is the
//! file; a file that opens is read whole, in chunks, as the tools read it.

use quiver_engine::io::{ElementType, VectorFile};

use crate::scratch_file;

const EXTENSIONS: [&str; 4] = ["fvecs", "ivecs", "bvecs", "npy"];

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&which, file)) = data.split_first() else {
        return;
    };
    let name = format!("vectors.{}", EXTENSIONS[which as usize % EXTENSIONS.len()]);
    let path = scratch_file(&name, file);
    let Ok(vf) = VectorFile::open(&path) else {
        return;
    };
    let (n, dim) = (vf.len(), vf.dim());
    assert!(dim > 0 || n == 0, "a file with rows of dimension 0 opened");
    let rows = n.min(64);
    if vf.element_type() == ElementType::I32 {
        let mut out = Vec::new();
        if vf.read_i32(0, rows, &mut out).is_ok() {
            assert_eq!(out.len(), rows * dim);
        }
    }
    let mut out = Vec::new();
    if vf.read_f32(0, rows, &mut out).is_ok() {
        assert_eq!(out.len(), rows * dim);
    }
    // Past the end is an error, never a panic.
    let _ = vf.read_f32(n, 1, &mut out);
    let _ = vf.read_f32(n.saturating_sub(1), 2, &mut out);
}
