//! The wgpu stages against the CPU reference, on whatever adapter exists (lavapipe in CI).
//!
//! Without an adapter the tests print "skipped: no wgpu adapter" and pass, unless
//! `QUIVER_REQUIRE_WGPU=1` (set by scripts/test in CI), where a missing adapter fails them.

use std::sync::Arc;

use quiver_engine::backend::cpu::CpuBackend;
use quiver_engine::backend::Backend;
use quiver_engine::progress::NoProgress;
use quiver_engine::synth::ClusteredGaussian;
use quiver_engine::{IndexParams, IvfPqIndex, Metric};
use quiver_shaders::coarse::GpuCoarse;
use quiver_shaders::tables::GpuTables;
use quiver_shaders::{AdapterChoice, GpuDevice};

fn device() -> Option<GpuDevice> {
    match GpuDevice::open(AdapterChoice::AnyIncludingCpu) {
        Ok(d) => {
            eprintln!(
                "wgpu adapter: {} ({})",
                d.adapter().name,
                d.adapter().device_type
            );
            Some(d)
        }
        Err(e) => {
            if std::env::var("QUIVER_REQUIRE_WGPU").is_ok_and(|v| v == "1") {
                panic!("QUIVER_REQUIRE_WGPU=1 but {e}");
            }
            eprintln!("skipped: no wgpu adapter ({e})");
            None
        }
    }
}

fn index(
    metric: Metric,
    dim: usize,
    nlist: usize,
    m: usize,
    bits: u32,
) -> (Arc<IvfPqIndex>, Vec<f32>) {
    let g = ClusteredGaussian::new(dim, 12, 0.5, 7);
    let x = g.rows(0, 3000);
    let mut p = IndexParams::new(metric, dim, nlist, m);
    p.pq_bits = bits;
    let mut idx = IvfPqIndex::train(p, &x, &NoProgress).expect("train");
    idx.add(&x, None, &NoProgress).expect("add");
    let q = g.rows(3000, 37);
    let q = idx.prepare_queries(&q).expect("queries").into_owned();
    (Arc::new(idx), q)
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-4 * a.abs().max(b.abs()) + 1e-5
}

#[test]
fn coarse_search_matches_the_cpu_reference() {
    let Some(gpu) = device() else { return };
    for metric in [Metric::L2, Metric::InnerProduct, Metric::Cosine] {
        for (dim, nlist, nprobe) in [(24, 40, 7), (40, 100, 100), (17, 33, 1)] {
            let m = if dim % 8 == 0 { 8 } else { 1 };
            let (idx, q) = index(metric, dim, nlist, m, 8);
            let cpu = CpuBackend;
            let want = cpu
                .coarse_search(&cpu.prepare(idx.clone()).unwrap(), &q, nprobe)
                .unwrap();
            let got = GpuCoarse::new(&gpu, &idx)
                .unwrap()
                .search(&gpu, &q, nprobe)
                .unwrap();
            assert_eq!(got.nprobe, want.nprobe);
            parity::assert_rows_match(
                &format!("{metric} dim {dim} coarse"),
                nprobe,
                (&want.lists, &want.scores),
                (&got.lists, &got.scores),
            );
        }
    }
}

#[test]
fn lookup_tables_match_the_cpu_reference() {
    let Some(gpu) = device() else { return };
    for (metric, bits, m) in [
        (Metric::L2, 8, 8),
        (Metric::InnerProduct, 4, 12),
        (Metric::Cosine, 8, 24),
    ] {
        let (idx, q) = index(metric, 24, 16, m, bits);
        let cpu = CpuBackend;
        let want = cpu
            .lookup_tables(&cpu.prepare(idx.clone()).unwrap(), &q)
            .unwrap();
        let got = GpuTables::new(&gpu, &idx)
            .unwrap()
            .compute(&gpu, &q)
            .unwrap();
        assert_eq!((got.m, got.ksub), (want.m, want.ksub));
        assert_eq!(got.values.len(), want.values.len());
        for (a, b) in got.values.iter().zip(&want.values) {
            assert!(close(*a, *b), "{metric}: table value {a} vs {b}");
        }
    }
}

/// A storage-binding limit far below the batch forces many tiles; results do not change.
#[test]
fn tiled_batches_give_the_same_results() {
    let Some(gpu) = device() else { return };
    let (idx, q) = index(Metric::L2, 32, 64, 8, 8);
    let coarse = GpuCoarse::new(&gpu, &idx).unwrap();
    let tables = GpuTables::new(&gpu, &idx).unwrap();
    let whole = (
        coarse.search(&gpu, &q, 9).unwrap(),
        tables.compute(&gpu, &q).unwrap(),
    );
    let small = gpu.with_max_binding(32 * 256 * 4);
    let coarse = GpuCoarse::new(&small, &idx).unwrap();
    let tables = GpuTables::new(&small, &idx).unwrap();
    let tiled = (
        coarse.search(&small, &q, 9).unwrap(),
        tables.compute(&small, &q).unwrap(),
    );
    assert_eq!(whole, tiled);
}

/// What does not fit a binding is refused with a clear error, not a device failure.
#[test]
fn oversized_operands_are_refused_clearly() {
    let Some(gpu) = device() else { return };
    let (idx, _) = index(Metric::L2, 32, 64, 8, 8);
    let tiny = gpu.with_max_binding(1024);
    let err = GpuCoarse::new(&tiny, &idx).unwrap_err().to_string();
    assert!(err.contains("centroid matrix"), "{err}");
}

#[path = "parity/mod.rs"]
mod parity;

#[test]
fn top_k_selects_the_cpu_rows() {
    let Some(gpu) = device() else { return };
    parity::top_k_selects_the_cpu_rows(&|scores, payloads, spans, keep| {
        quiver_shaders::topk::select_rows_on_device(&gpu, scores, payloads, spans, keep)
            .expect("device top-k")
    });
    let err = quiver_shaders::topk::select_rows_on_device(&gpu, &[1.0], &[], &[(0, 1)], 1);
    assert!(err
        .unwrap_err()
        .to_string()
        .contains("1 scores but 0 payloads"));
    let err = quiver_shaders::topk::select_rows_on_device(&gpu, &[1.0], &[7], &[(0, 2)], 1);
    assert!(err.unwrap_err().to_string().contains("past the 1 entries"));
}
