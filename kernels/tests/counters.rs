//! What one search batch asks of the device, counted by the CUDA emulator's driver
//! (`Backend::counters`, `quiver_kernels::emulator_counters`): the device-resident search
//! uploads the queries once and downloads the results once, with a bounded number of launches
//! and no memsets (the shared bodies of `shaders/tests/parity/`). Its own test binary: the
//! counters are the process's, so nothing else may run meanwhile (its tests take turns). Skips (passes) on NVIDIA's
//! driver, which has no counters, and without a driver unless `QUIVER_REQUIRE_CUDA=1`.

#[path = "../../shaders/tests/parity/mod.rs"]
mod parity;

use std::sync::Arc;

use quiver_engine::backend::{Backend, DeviceCounters, SearchParams};
use quiver_engine::progress::NoProgress;
use quiver_engine::synth::ClusteredGaussian;
use quiver_engine::{IndexParams, IvfPqIndex, Metric, RefineKind};
use quiver_kernels::probe::{cuda_availability, CudaAvailability};
use quiver_kernels::CudaBackend;

/// The process's counters see every test's work: each test holds this while it counts.
static COUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn counting() -> std::sync::MutexGuard<'static, ()> {
    COUNTING.lock().unwrap_or_else(|e| e.into_inner())
}

fn backend() -> Option<CudaBackend> {
    match cuda_availability() {
        CudaAvailability::Devices(_) => Some(CudaBackend::open(0).expect("open CUDA device 0")),
        other => {
            if std::env::var("QUIVER_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
                panic!("QUIVER_REQUIRE_CUDA=1 but {other}");
            }
            eprintln!("skipped: no CUDA device ({other})");
            None
        }
    }
}

/// The backend for a test that counts, with the process's counters to itself; `None`
/// (skipped) without a device, or on NVIDIA's driver, which has no counters.
fn counted_backend() -> Option<(std::sync::MutexGuard<'static, ()>, CudaBackend)> {
    let alone = counting();
    let b = backend()?;
    if b.counters().is_none() {
        eprintln!("skipped: NVIDIA's driver has no counters");
        return None;
    }
    Some((alone, b))
}

/// One test: the process's counters must see no other test's work. Then several segments
/// searched as one batch: one upload, one download.
#[test]
fn a_resident_batch_crosses_the_bus_once_each_way() {
    let _alone = counting();
    let Some(b) = backend() else { return };
    parity::a_resident_batch_crosses_the_bus_once_each_way(
        &b,
        6000,
        true,
        parity::ResultBytes::Exact,
    );
    parity::one_batch_over_segments_equals_each_search(&b, true);
}

/// One batch's shape: data, index and search.
struct Shape {
    n: usize,
    dim: usize,
    nlist: usize,
    nq: usize,
    nprobe: usize,
}

/// The fused scan + selection (`scan8_select` / `scan4_select`) against the unfused path on
/// the same prepared index and batch: the same ids and distance bits, one upload, one
/// download, no memsets, at most 7 launches, one tile; prints both paths' counts and the
/// device bytes each allocates per query (every buffer is written whole, so this bounds what
/// a query writes) as docs/GPU.md's table rows, and returns (fused, unfused).
fn fused_against_unfused(
    b: &CudaBackend,
    s: &Shape,
    metric: Metric,
    m: usize,
    bits: u32,
) -> (DeviceCounters, DeviceCounters) {
    let g = ClusteredGaussian::new(s.dim, s.nlist.min(1000), 0.5, 7);
    let x = g.rows(0, s.n);
    let q = g.rows(s.n, s.nq);
    let mut p = IndexParams::new(metric, s.dim, s.nlist, m);
    p.pq_bits = bits;
    p.refine = RefineKind::F16;
    let train = s.n.min(50_000);
    let mut idx = IvfPqIndex::train(p, &x[..train * s.dim], &NoProgress).expect("train");
    idx.add(&x, None, &NoProgress).expect("add");
    let idx = Arc::new(idx);
    let params = SearchParams {
        k: 10,
        nprobe: s.nprobe,
        refine_factor: 10,
    };
    let unfused_backend = CudaBackend::open(0).expect("open").without_fused_select();
    let mut counted = Vec::new();
    let mut results = Vec::new();
    for backend in [b, &unfused_backend] {
        let prepared = backend.prepare(idx.clone()).expect("prepare");
        let before = backend.counters().expect("counts");
        results.push(backend.search(&prepared, &q, &params).expect("search"));
        counted.push(backend.counters().expect("counts").since(&before));
    }
    let label = format!(
        "{} × {}, IVF{}, PQ{m}x{bits} {metric}, {} queries, nprobe {}",
        s.n, s.dim, s.nlist, s.nq, s.nprobe
    );
    let (fused, unfused) = (counted[0], counted[1]);
    for (path, c) in [("fused", fused), ("unfused", unfused)] {
        println!(
            "| {label} | {path} | {} | {} | {} | {} | {:.0} | {:.0} |",
            c.launches,
            c.h2d_copies,
            c.d2h_copies,
            c.allocs,
            c.alloc_bytes as f64 / s.nq as f64,
            c.bus_bytes() as f64 / s.nq as f64
        );
    }
    assert_eq!(results[0].ids, results[1].ids, "{label}: ids");
    let bits_of = |d: &[f32]| d.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits_of(&results[0].distances),
        bits_of(&results[1].distances),
        "{label}: distances"
    );
    assert_eq!(fused.h2d_copies, 1, "{label}: one upload");
    assert_eq!(fused.d2h_copies, 1, "{label}: one download");
    assert_eq!(fused.memsets, 0, "{label}: no memsets");
    assert!(fused.launches <= 7, "{label}: {} launches", fused.launches);
    (fused, unfused)
}

/// The fused path on a batch of the issue's per-query shape at a size the emulator runs in
/// seconds: 1,024 queries at nprobe 32 over lists of ≈ 600 entries (the issue's 10M /
/// IVF16384 list length), 8- and 4-bit. Held to ≤ 7 launches, one tile, and far fewer
/// device bytes than the unfused path.
#[test]
fn the_fused_scan_writes_candidates_not_score_rows() {
    let Some((_alone, b)) = counted_backend() else {
        return;
    };
    let s = Shape {
        n: 40_000,
        dim: 32,
        nlist: 64,
        nq: 1024,
        nprobe: 32,
    };
    for (metric, m, bits) in [(Metric::InnerProduct, 16, 8), (Metric::L2, 16, 4)] {
        let (fused, unfused) = fused_against_unfused(&b, &s, metric, m, bits);
        assert!(
            fused.alloc_bytes * 5 <= unfused.alloc_bytes,
            "{metric} {bits}-bit: {} device bytes fused, {} unfused",
            fused.alloc_bytes,
            unfused.alloc_bytes
        );
    }
}

/// The issue's per-query shapes (#32: nprobe 32 and 128 over lists of ≈ 610 entries, PQ48
/// and PQ96x4 on 384 dimensions, k 10, refine ×10, 1,024 queries) at 1M vectors and
/// IVF1638 (the 10M × IVF16384 list length): `--ignored`, long on the emulator.
#[test]
#[ignore = "long on the emulator: the issue's per-query shapes at 1M vectors"]
fn the_issue_shapes_fused_and_unfused() {
    let Some((_alone, b)) = counted_backend() else {
        return;
    };
    for nprobe in [32, 128] {
        let s = Shape {
            n: 1_000_000,
            dim: 384,
            nlist: 1638,
            nq: 1024,
            nprobe,
        };
        for (metric, m, bits) in [(Metric::InnerProduct, 48, 8), (Metric::InnerProduct, 96, 4)] {
            fused_against_unfused(&b, &s, metric, m, bits);
        }
    }
}

/// The issue's list count (#32: IVF16384, nprobe 32, PQ48, 384 dimensions, k 10, refine ×10,
/// 1,024 queries) at 200k vectors: the coarse product selects each query's probes on chip
/// (`coarse_select`), so what a query writes does not grow with nlist (its lists are short
/// here; what the fused path writes does not depend on their length). `--ignored`: training
/// 16,384 centroids takes minutes.
#[test]
#[ignore = "minutes: trains 16,384 centroids"]
fn the_issue_lists_fused_and_unfused() {
    let Some((_alone, b)) = counted_backend() else {
        return;
    };
    let s = Shape {
        n: 200_000,
        dim: 384,
        nlist: 16384,
        nq: 1024,
        nprobe: 32,
    };
    let (fused, unfused) = fused_against_unfused(&b, &s, Metric::InnerProduct, 48, 8);
    // The coarse scores alone are 64 KiB a query unfused.
    assert!(
        fused.alloc_bytes * 4 <= unfused.alloc_bytes,
        "{} device bytes fused, {} unfused",
        fused.alloc_bytes,
        unfused.alloc_bytes
    );
}

/// The issue's batch (#13) on the emulator: `--ignored` (about five minutes).
#[test]
#[ignore = "minutes on the emulator: the issue's 100k-vector batch"]
fn the_issue_batch_at_100k() {
    let _alone = counting();
    let Some(b) = backend() else { return };
    parity::the_issue_batch_at_100k(&b, true);
}

/// A lane keeps its batches' working memory (item 6 of #32): once each lane has run a batch,
/// a batch of the same shape, or a smaller one, allocates no device memory (nor, with it, the
/// two events cudarc creates for every allocation), and answers as the first did. Fused and
/// unfused paths, 8- and 4-bit.
#[test]
fn later_batches_reuse_their_lanes_memory() {
    let Some((_alone, b)) = counted_backend() else {
        return;
    };
    let (n, dim, nq) = (6000, 32, 64);
    let g = ClusteredGaussian::new(dim, 12, 0.5, 5);
    let x = g.rows(0, n);
    let q = g.rows(n, nq);
    let unfused = CudaBackend::open(0).expect("open").without_fused_select();
    for (backend, path) in [(&b, "fused"), (&unfused, "unfused")] {
        for (metric, bits) in [(Metric::InnerProduct, 8), (Metric::L2, 4)] {
            let mut p = IndexParams::new(metric, dim, 32, 8);
            p.pq_bits = bits;
            p.refine = RefineKind::F16;
            let mut idx = IvfPqIndex::train(p, &x, &NoProgress).expect("train");
            idx.add(&x, None, &NoProgress).expect("add");
            let prepared = backend.prepare(Arc::new(idx)).expect("prepare");
            let params = SearchParams {
                k: 10,
                nprobe: 8,
                refine_factor: 10,
            };
            let label = format!("{path} {metric} {bits}-bit");
            let before = backend.counters().expect("counts");
            // One batch on each of the two lanes.
            let first = backend.search(&prepared, &q, &params).expect("search");
            backend.search(&prepared, &q, &params).expect("search");
            let warm = backend.counters().expect("counts").since(&before);
            assert!(warm.allocs > 0, "{label}: the first batches allocate");
            let before = backend.counters().expect("counts");
            for _ in 0..3 {
                let again = backend.search(&prepared, &q, &params).expect("search");
                assert_eq!(again.ids, first.ids, "{label}: ids");
                let bits_of = |d: &[f32]| d.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits_of(&again.distances),
                    bits_of(&first.distances),
                    "{label}"
                );
            }
            let half = backend
                .search(&prepared, &q[..nq / 2 * dim], &params)
                .expect("search");
            assert_eq!(
                half.ids,
                first.ids[..nq / 2 * 10],
                "{label}: half the batch"
            );
            let later = backend.counters().expect("counts").since(&before);
            println!("{label}: first two batches {warm:?}; four later ones {later:?}");
            assert_eq!(later.allocs, 0, "{label}: later batches allocate nothing");
            assert_eq!(later.h2d_copies, 4, "{label}: one upload a batch");
            assert_eq!(later.d2h_copies, 4, "{label}: one download a batch");
        }
    }
}
