//! Shared-memory bank conflicts of the kernels, measured by the CUDA emulator built with
//! `--banks` (`kernels/emu/README.md`): every shared-memory load and store of every thread is
//! logged, a warp's i-th accesses between two synchronisations form one request, and a
//! request costs as many wavefronts as its worst bank holds distinct words. Searches run on
//! the resident path (probes selected in the coarse product and in rounds; scan fused and
//! not) and the staged stages, and each kernel's wavefronts per request ("ways") is held to
//! what its layout was designed for (docs/GPU.md). Skips unless the loaded driver is that
//! emulator; `QUIVER_REQUIRE_BANKS=1` makes that a failure (`scripts/test` sets it).

use std::sync::Arc;

use quiver_engine::backend::{Backend, SearchParams};
use quiver_engine::progress::NoProgress;
use quiver_engine::synth::ClusteredGaussian;
use quiver_engine::{IndexParams, IvfPqIndex, Metric, RefineKind};
use quiver_kernels::probe::{cuda_availability, CudaAvailability};
use quiver_kernels::{emulator_bank_counts, BankCounts, CudaBackend};

/// Every entry point that touches shared memory, with the most wavefronts per request its
/// layout allows (conflict-free: 1.0, plus the warp queue's flushes where it selects) and
/// what the figure is made of.
const BUDGETS: [(&str, f64, &str); 8] = [
    (
        "coarse_distances",
        1.0,
        "operands staged with stride 132: conflict-free",
    ),
    (
        "coarse_select",
        1.1,
        "the product and half tiles (stride 144) conflict-free; queues",
    ),
    (
        "scan8",
        2.5,
        "random 8-bit codes gather from 256-word table rows",
    ),
    (
        "scan8_select",
        1.5,
        "the same gathers, the table built in place, the queues",
    ),
    (
        "scan4_quantized",
        1.1,
        "table rows loaded whole into registers; min / max by shuffles",
    ),
    ("scan4_select", 1.1, "the same, and the swizzled queues"),
    (
        "select_strided",
        1.1,
        "the warp queue: swizzled (sw4 / sw8), conflict-free steps",
    ),
    ("warp_select", 1.1, "the same queue"),
];

fn backend() -> Option<CudaBackend> {
    let require = std::env::var("QUIVER_REQUIRE_BANKS").is_ok_and(|v| v == "1");
    match cuda_availability() {
        CudaAvailability::Devices(_) => {}
        other => {
            assert!(!require, "QUIVER_REQUIRE_BANKS=1 but {other}");
            eprintln!("skipped: no CUDA driver ({other})");
            return None;
        }
    }
    let b = CudaBackend::open(0).expect("open CUDA device 0");
    if !tracing() {
        assert!(
            !require,
            "QUIVER_REQUIRE_BANKS=1 but the driver is not the emulator built with --banks"
        );
        eprintln!("skipped: the driver is not the CUDA emulator built with --banks");
        return None;
    }
    Some(b)
}

/// Whether the loaded driver traces bank conflicts (it exports `quiver_emu_banks`).
fn tracing() -> bool {
    // SAFETY: only opens the library (present: a device was found) and looks a symbol up.
    unsafe {
        cudarc::driver::sys::culib()
            .get::<unsafe extern "C" fn()>(b"quiver_emu_banks\0")
            .is_ok()
    }
}

fn search(b: &CudaBackend, idx: &Arc<IvfPqIndex>, q: &[f32], nprobe: usize) {
    let params = SearchParams {
        k: 10,
        nprobe,
        refine_factor: 4,
    };
    let p = b.prepare(idx.clone()).expect("prepare");
    b.search(&p, q, &params).expect("search");
    // The staged stages too (their own coarse, tables, scans and selections).
    let q = idx.prepare_queries(q).expect("queries").into_owned();
    let probes = b.coarse_search(&p, &q, nprobe).expect("coarse");
    b.lookup_tables(&p, &q).expect("tables");
    drop(probes);
}

#[test]
fn shared_memory_requests_stay_within_their_bank_ways() {
    let Some(b) = backend() else { return };
    let unfused = CudaBackend::open(0).expect("open").without_fused_select();
    let (dim, n) = (64, 12_000);
    let g = ClusteredGaussian::new(dim, 64, 0.5, 31);
    let x = g.rows(0, n);
    let q = g.rows(n, 200);
    for (metric, m, bits) in [(Metric::InnerProduct, 16, 8), (Metric::L2, 16, 4)] {
        let mut p = IndexParams::new(metric, dim, 256, m);
        p.pq_bits = bits;
        p.refine = RefineKind::F16;
        let mut idx = IvfPqIndex::train(p, &x, &NoProgress).expect("train");
        idx.add(&x, None, &NoProgress).expect("add");
        let idx = Arc::new(idx);
        // nprobe 16: probes selected in the coarse product; 100: in rounds.
        for nprobe in [16, 100] {
            search(&b, &idx, &q, nprobe);
            search(&unfused, &idx, &q, nprobe);
        }
    }
    println!("| kernel | requests | wavefronts | ways | worst | budget |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut over = Vec::new();
    for (entry, budget, why) in BUDGETS {
        let Some(c) = emulator_bank_counts(entry) else {
            over.push(format!("{entry}: no shared-memory requests counted"));
            continue;
        };
        let BankCounts {
            requests,
            wavefronts,
            worst,
            ..
        } = c;
        println!(
            "| {entry} | {requests} | {wavefronts} | {:.2} | {worst} | {budget:.1} ({why}) |",
            c.ways()
        );
        if c.ways() > budget {
            over.push(format!("{entry}: {:.2} ways, budget {budget}", c.ways()));
        }
    }
    assert!(over.is_empty(), "{}", over.join("\n"));
}
