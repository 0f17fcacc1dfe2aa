//! The wgpu backend against the CPU reference, whole searches and the scan stage alone, on
//! whatever adapter exists (lavapipe in CI; see tests/stages.rs for the skip rule).

use std::sync::Arc;

use quiver_engine::backend::cpu::CpuBackend;
use quiver_engine::backend::{Backend, Neighbors, SearchParams};
use quiver_engine::progress::NoProgress;
use quiver_engine::synth::ClusteredGaussian;
use quiver_engine::{IndexParams, IvfPqIndex, Metric, RefineKind};
use quiver_shaders::{AdapterChoice, GpuDevice, WgpuBackend};

fn device() -> Option<GpuDevice> {
    match GpuDevice::open(AdapterChoice::AnyIncludingCpu) {
        Ok(d) => Some(d),
        Err(e) => {
            if std::env::var("QUIVER_REQUIRE_WGPU").is_ok_and(|v| v == "1") {
                panic!("QUIVER_REQUIRE_WGPU=1 but {e}");
            }
            eprintln!("skipped: no wgpu adapter ({e})");
            None
        }
    }
}

struct Case {
    metric: Metric,
    bits: u32,
    m: usize,
    refine: RefineKind,
}

fn build(c: &Case, deletes: &[u64]) -> (Arc<IvfPqIndex>, Vec<f32>) {
    let dim = 32;
    let g = ClusteredGaussian::new(dim, 12, 0.5, 11);
    let x = g.rows(0, 4000);
    let mut p = IndexParams::new(c.metric, dim, 16, c.m);
    p.pq_bits = c.bits;
    p.refine = c.refine;
    let mut idx = IvfPqIndex::train(p, &x, &NoProgress).expect("train");
    idx.add(&x, None, &NoProgress).expect("add");
    idx.delete(deletes);
    (Arc::new(idx), g.rows(4000, 40))
}

/// Same ids for at least 99% of (query, rank) positions; distances within 1e-4 relative
/// where the ids agree.
fn assert_parity(label: &str, want: &Neighbors, got: &Neighbors) {
    assert_eq!(want.ids.len(), got.ids.len(), "{label}");
    let same = want
        .ids
        .iter()
        .zip(&got.ids)
        .filter(|(a, b)| a == b)
        .count();
    assert!(
        same * 100 >= want.ids.len() * 99,
        "{label}: {same} of {} ids agree",
        want.ids.len()
    );
    for ((a, b), (ia, ib)) in want
        .distances
        .iter()
        .zip(&got.distances)
        .zip(want.ids.iter().zip(&got.ids))
    {
        if ia == ib && a.is_finite() {
            assert!(
                (a - b).abs() <= 1e-4 * a.abs().max(1.0),
                "{label}: distance {a} vs {b}"
            );
        }
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            metric: Metric::L2,
            bits: 8,
            m: 8,
            refine: RefineKind::None,
        },
        Case {
            metric: Metric::InnerProduct,
            bits: 8,
            m: 16,
            refine: RefineKind::F16,
        },
        Case {
            metric: Metric::Cosine,
            bits: 8,
            m: 8,
            refine: RefineKind::F32,
        },
        Case {
            metric: Metric::L2,
            bits: 4,
            m: 16,
            refine: RefineKind::F32,
        },
        Case {
            metric: Metric::InnerProduct,
            bits: 4,
            m: 32,
            refine: RefineKind::F16,
        },
        Case {
            metric: Metric::InnerProduct,
            bits: 4,
            m: 16,
            refine: RefineKind::None,
        },
    ]
}

#[test]
fn searches_match_the_cpu_reference() {
    let Some(gpu) = device() else { return };
    let wgpu = WgpuBackend::new(Arc::new(gpu));
    let cpu = CpuBackend;
    for c in cases() {
        let (idx, q) = build(&c, &[3, 4, 5, 1000, 2500]);
        let label = format!("{} {}-bit {:?}", c.metric, c.bits, c.refine);
        let rf = if c.refine == RefineKind::None { 1 } else { 8 };
        // nprobe 8 of 16: rows of about 2,000 entries, two top-k rounds.
        for (k, nprobe) in [(10, 8), (1, 1), (70, 16)] {
            let params = SearchParams {
                k,
                nprobe,
                refine_factor: rf,
            };
            let want = cpu
                .search(&cpu.prepare(idx.clone()).unwrap(), &q, &params)
                .unwrap();
            let got = wgpu
                .search(&wgpu.prepare(idx.clone()).unwrap(), &q, &params)
                .unwrap();
            assert_parity(&format!("{label} k {k} nprobe {nprobe}"), &want, &got);
            // Deleted ids never come back.
            assert!(
                got.ids.iter().all(|id| ![3, 4, 5, 1000, 2500].contains(id)),
                "{label}"
            );
        }
    }
}

/// Given the same probes and tables, the GPU scan selects the CPU scan's candidates.
#[test]
fn scan_stage_selects_the_cpu_candidates() {
    let Some(gpu) = device() else { return };
    let wgpu = WgpuBackend::new(Arc::new(gpu));
    let cpu = CpuBackend;
    for c in cases() {
        let (idx, q) = build(&c, &[7, 8]);
        let cp = cpu.prepare(idx.clone()).unwrap();
        let gp = wgpu.prepare(idx.clone()).unwrap();
        let q = idx.prepare_queries(&q).unwrap().into_owned();
        let probes = cpu.coarse_search(&cp, &q, 6).unwrap();
        let tables = cpu.lookup_tables(&cp, &q).unwrap();
        let want = cpu.scan(&cp, &probes, &tables, 50).unwrap();
        let got = wgpu.scan(&gp, &probes, &tables, 50).unwrap();
        let same = want
            .slots
            .iter()
            .zip(&got.slots)
            .filter(|(a, b)| a == b)
            .count();
        assert!(
            same * 100 >= want.slots.len() * 99,
            "{} {}-bit: {same} of {} candidates agree",
            c.metric,
            c.bits,
            want.slots.len()
        );
    }
}

/// A storage-binding limit of 32 KiB splits the codes and raw vectors over many buffers and
/// the batches over many tiles; a keep above the GPU selection limit takes the host path.
/// Results do not change.
#[test]
fn an_index_larger_than_one_binding_searches_correctly() {
    let Some(gpu) = device() else { return };
    let gpu = Arc::new(gpu);
    let small = Arc::new(
        GpuDevice::open(AdapterChoice::AnyIncludingCpu)
            .unwrap()
            .with_max_binding(32 << 10),
    );
    let (whole, split) = (WgpuBackend::new(gpu), WgpuBackend::new(small));
    for c in [
        Case {
            metric: Metric::L2,
            bits: 8,
            m: 8,
            refine: RefineKind::F32,
        },
        Case {
            metric: Metric::InnerProduct,
            bits: 4,
            m: 16,
            refine: RefineKind::F16,
        },
    ] {
        let (idx, q) = build(&c, &[9]);
        let sp = split.prepare(idx.clone()).unwrap();
        let (codes, raw) = sp.buffer_counts();
        assert!(codes >= 1 && raw > 4, "{codes} code and {raw} raw buffers");
        for (k, rf) in [(10, 4), (60, 10)] {
            let params = SearchParams {
                k,
                nprobe: 4,
                refine_factor: rf,
            };
            let a = whole
                .search(&whole.prepare(idx.clone()).unwrap(), &q, &params)
                .unwrap();
            let b = split.search(&sp, &q, &params).unwrap();
            assert_eq!(a.ids, b.ids, "{} {}-bit k {k}", c.metric, c.bits);
        }
    }
}

/// An index above the device memory budget stays on the host: each batch uploads the lists it
/// probes and the vectors it refines (here with a 32 KiB binding limit too, so those uploads
/// are split and the batch tiled). Results do not change.
#[test]
fn an_index_above_the_memory_budget_is_streamed() {
    let Some(gpu) = device() else { return };
    let whole = WgpuBackend::new(Arc::new(gpu));
    let streamed = WgpuBackend::new(Arc::new(
        GpuDevice::open(AdapterChoice::AnyIncludingCpu)
            .unwrap()
            .with_max_binding(32 << 10)
            .with_memory_budget(0),
    ));
    for c in [
        Case {
            metric: Metric::L2,
            bits: 8,
            m: 8,
            refine: RefineKind::F32,
        },
        Case {
            metric: Metric::InnerProduct,
            bits: 4,
            m: 16,
            refine: RefineKind::F16,
        },
        Case {
            metric: Metric::Cosine,
            bits: 8,
            m: 8,
            refine: RefineKind::None,
        },
    ] {
        let (idx, q) = build(&c, &[9, 10]);
        let sp = streamed.prepare(idx.clone()).unwrap();
        assert!(!sp.is_resident());
        let wp = whole.prepare(idx.clone()).unwrap();
        assert!(wp.is_resident());
        let rf = if c.refine == RefineKind::None { 1 } else { 6 };
        let params = SearchParams {
            k: 10,
            nprobe: 5,
            refine_factor: rf,
        };
        let a = whole.search(&wp, &q, &params).unwrap();
        let b = streamed.search(&sp, &q, &params).unwrap();
        assert_eq!(a.ids, b.ids, "{} {}-bit", c.metric, c.bits);
        assert_eq!(a.distances, b.distances, "{} {}-bit", c.metric, c.bits);
    }
}
