//! Target `index_file`: the index file loader (`.qvr`, [`quiver_engine::persist::load`]) and
//! the store's flat segment loader ([`quiver_store::flatfile::load_flat`]). The first byte
//! picks the loader, the rest is the file. An index that loads must also search: a file that
//! passes the loader's checks but breaks a search later is a finding too.

use std::sync::Arc;

use quiver_engine::backend::cpu::CpuBackend;
use quiver_engine::backend::{Backend, SearchParams};
use quiver_engine::{FlatIndex, IvfPqIndex, RefineKind};

use crate::scratch_file;

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&which, file)) = data.split_first() else {
        return;
    };
    if which & 1 == 0 {
        let path = scratch_file("index.qvr", file);
        if let Ok(index) = quiver_engine::persist::load(&path) {
            search_index(index);
        }
    } else {
        let path = scratch_file("flat.seg", file);
        if let Ok(flat) = quiver_store::flatfile::load_flat(&path) {
            search_flat(&flat);
        }
    }
}

/// Two fixed queries of the index's dimension.
pub fn queries(dim: usize) -> Vec<f32> {
    (0..2 * dim)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0)
        .collect()
}

fn search_index(index: IvfPqIndex) {
    let dim = index.dim();
    let nprobe = index.nlist().clamp(1, 4);
    let refine_factor = if index.params().refine == RefineKind::None {
        1
    } else {
        2
    };
    let q = queries(dim);
    let _ = index.vector(0);
    let _ = index.payload(0);
    let backend = CpuBackend;
    if let Ok(prepared) = backend.prepare(Arc::new(index)) {
        let _ = backend.search(
            &prepared,
            &q,
            &SearchParams {
                k: 10,
                nprobe,
                refine_factor,
            },
        );
    }
}

fn search_flat(flat: &FlatIndex) {
    let q = queries(flat.dim());
    let _ = flat.search(&q, 10);
}
