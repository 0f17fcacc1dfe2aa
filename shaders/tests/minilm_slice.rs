//! The wgpu backend against the CPU backend on a slice of the real data set
//! (`../shared/data/minilm-pydocs`: MiniLM embeddings, inner product): the first 10,000 base
//! vectors, the first 100 queries, 8-bit and 4-bit codes with f16 refine. Skips, saying so,
//! when the data or an adapter is absent (see tests/stages.rs for the adapter rule).

mod parity;

use std::path::PathBuf;
use std::sync::Arc;

use quiver_engine::backend::cpu::CpuBackend;
use quiver_engine::backend::{Backend, SearchParams};
use quiver_engine::io::read_all_f32;
use quiver_engine::progress::NoProgress;
use quiver_engine::{IndexParams, IvfPqIndex, Metric, RefineKind};
use quiver_shaders::{AdapterChoice, GpuDevice, WgpuBackend};

fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("QUIVER_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/minilm-pydocs")
        });
    if dir.join("base-00.fvecs").exists() {
        Some(dir)
    } else {
        eprintln!("skipped: {} not found", dir.display());
        None
    }
}

#[test]
fn wgpu_matches_cpu_on_a_slice_of_minilm() {
    let Some(dir) = data_dir() else { return };
    let gpu = match GpuDevice::open(AdapterChoice::AnyIncludingCpu) {
        Ok(g) => g,
        Err(e) => {
            if std::env::var("QUIVER_REQUIRE_WGPU").is_ok_and(|v| v == "1") {
                panic!("QUIVER_REQUIRE_WGPU=1 but {e}");
            }
            eprintln!("skipped: no wgpu adapter ({e})");
            return;
        }
    };
    eprintln!("adapter: {}", gpu.adapter().name);
    let (dim, base) = read_all_f32(dir.join("base-00.fvecs")).unwrap();
    let base = &base[..10_000 * dim];
    let (_, queries) = read_all_f32(dir.join("query.fvecs")).unwrap();
    let queries = &queries[..100 * dim];
    let wgpu = WgpuBackend::new(Arc::new(gpu));
    let cpu = CpuBackend;
    for (m, bits) in [(48, 8), (96, 4)] {
        let mut p = IndexParams::new(Metric::InnerProduct, dim, 32, m);
        p.pq_bits = bits;
        p.refine = RefineKind::F16;
        let mut idx = IvfPqIndex::train(p, base, &NoProgress).unwrap();
        idx.add(base, None, &NoProgress).unwrap();
        let idx = Arc::new(idx);
        let (cp, gp) = (
            cpu.prepare(idx.clone()).unwrap(),
            wgpu.prepare(idx).unwrap(),
        );
        for nprobe in [1, 4, 16] {
            let params = SearchParams {
                k: 10,
                nprobe,
                refine_factor: 10,
            };
            let want = cpu.search(&cp, queries, &params).unwrap();
            let got = wgpu.search(&gp, queries, &params).unwrap();
            let same = want
                .ids
                .iter()
                .zip(&got.ids)
                .filter(|(a, b)| a == b)
                .count();
            eprintln!(
                "PQ{m}x{bits} nprobe {nprobe}: {same} of {} ids agree",
                want.ids.len()
            );
            parity::assert_parity(&format!("PQ{m}x{bits} nprobe {nprobe}"), &want, &got);
        }
    }
}
