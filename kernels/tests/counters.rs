//! What one search batch asks of the device, counted by the CUDA emulator's driver
//! (`Backend::counters`, `quiver_kernels::emulator_counters`): the device-resident search
//! uploads the queries once and downloads the results once, with a bounded number of launches
//! and no memsets (the shared bodies of `shaders/tests/parity/`). Its own test binary: the
//! counters are the process's, so nothing else may run meanwhile. Skips (passes) on NVIDIA's
//! driver, which has no counters, and without a driver unless `QUIVER_REQUIRE_CUDA=1`.

#[path = "../../shaders/tests/parity/mod.rs"]
mod parity;

use quiver_kernels::probe::{cuda_availability, CudaAvailability};
use quiver_kernels::CudaBackend;

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

/// One test: the process's counters must see no other test's work. Then several segments
/// searched as one batch: one upload, one download.
#[test]
fn a_resident_batch_crosses_the_bus_once_each_way() {
    let Some(b) = backend() else { return };
    parity::a_resident_batch_crosses_the_bus_once_each_way(
        &b,
        6000,
        true,
        parity::ResultBytes::Exact,
    );
    parity::one_batch_over_segments_equals_each_search(&b, true);
}

/// The issue's batch (#13) on the emulator: `--ignored` (about five minutes).
#[test]
#[ignore = "minutes on the emulator: the issue's 100k-vector batch"]
fn the_issue_batch_at_100k() {
    let Some(b) = backend() else { return };
    parity::the_issue_batch_at_100k(&b, true);
}
