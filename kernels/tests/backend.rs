//! The CUDA backend against the CPU reference: the same test bodies as the wgpu backend's
//! (`shaders/tests/parity/`). Without a CUDA device they print "skipped: no CUDA device" and
//! pass (unless `QUIVER_REQUIRE_CUDA=1`); `scripts/gpu-check` runs them on a GPU machine.

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

#[test]
fn searches_match_the_cpu_reference() {
    let Some(b) = backend() else { return };
    parity::searches_match_the_cpu_reference(&b);
}

#[test]
fn filtered_searches_match_the_cpu_reference() {
    let Some(b) = backend() else { return };
    parity::filtered_searches_match_the_cpu_reference(&b);
    parity::filtered_searches_match_the_cpu_reference(&b.with_memory_budget(0));
}

/// Tiny tiles: every stage cuts a batch into many tiles, two in flight (copies on the copy
/// stream, pinned buffers reused from the pool); the results are the same.
#[test]
fn tiled_pipelined_searches_match_the_cpu_reference() {
    let Some(b) = backend() else { return };
    parity::searches_match_the_cpu_reference(&b.with_tile_bytes(16 << 10));
}

/// An index above the memory budget stays on the host: with a zero budget every scan tile
/// stages its lists' codes and every refine tile its candidates' rows; with 200 KB the codes
/// are resident and the raw vectors streamed.
#[test]
fn an_index_above_the_memory_budget_is_streamed() {
    let Some(b) = backend() else { return };
    parity::searches_match_the_cpu_reference(&b.with_memory_budget(0));
    let Some(b) = backend() else { return };
    parity::searches_match_the_cpu_reference(&b.with_memory_budget(200 << 10));
}

/// Deletes after the upload re-upload only the tombstones: the refreshed index shares the
/// device copy of the old one and searches like the CPU (streamed indexes too).
#[test]
fn deletes_upload_only_tombstones() {
    let Some(b) = backend() else { return };
    for (before, after) in parity::deletes_after_prepare_match_the_cpu_reference(&b) {
        assert!(after.shares_device_data_with(&before));
    }
    let Some(b) = backend() else { return };
    parity::deletes_after_prepare_match_the_cpu_reference(&b.with_memory_budget(0));
}

#[test]
fn wide_codes_match_the_cpu_reference() {
    let Some(b) = backend() else { return };
    parity::wide_codes_match_the_cpu_reference(&b);
}

#[test]
fn one_batch_over_segments_equals_each_search() {
    let Some(b) = backend() else { return };
    parity::one_batch_over_segments_equals_each_search(&b, false);
}

#[test]
fn many_lists_and_several_rounds_match_the_cpu_reference() {
    let Some(b) = backend() else { return };
    parity::many_lists_and_several_rounds_match_the_cpu_reference(&b);
}

#[test]
fn scan_stage_selects_the_cpu_candidates() {
    let Some(b) = backend() else { return };
    parity::scan_stage_selects_the_cpu_candidates(&b);
}

#[test]
fn coarse_and_tables_match_the_cpu_reference() {
    let Some(b) = backend() else { return };
    parity::coarse_and_tables_match_the_cpu_reference(&b);
}

/// Without a device, opening the backend is an error that says so (never cudarc's panic).
#[test]
fn no_device_is_a_clear_error() {
    if matches!(cuda_availability(), CudaAvailability::Devices(_)) {
        eprintln!("skipped: a CUDA device is present");
        return;
    }
    let err = CudaBackend::open(0).unwrap_err().to_string();
    assert!(err.contains("CUDA backend unavailable"), "{err}");
}

#[test]
fn top_k_selects_the_cpu_rows() {
    let Some(b) = backend() else { return };
    parity::top_k_selects_the_cpu_rows(&|scores, payloads, spans, keep| {
        b.select_rows(scores, payloads, spans, keep)
            .expect("device top-k")
    });
    let err = b.select_rows(&[1.0], &[], &[(0, 1)], 1).unwrap_err();
    assert!(err.to_string().contains("1 scores but 0 payloads"), "{err}");
    let err = b.select_rows(&[1.0], &[7], &[(0, 2)], 1).unwrap_err();
    assert!(err.to_string().contains("past the 1 entries"), "{err}");
}

/// 4-bit codes: each (query, list) table quantized on the device equals the host's bit for
/// bit (the staged path's ids and distances).
#[test]
fn device_quantized_tables_equal_the_host_quantization() {
    let Some(b) = backend() else { return };
    parity::device_quantized_tables_equal_the_host_quantization(&b);
}

#[test]
fn tied_centroids_probe_the_cpu_lists() {
    let Some(b) = backend() else { return };
    parity::tied_centroids_probe_the_cpu_lists(&b);
}

#[test]
fn concurrent_batches_equal_each_alone() {
    let Some(b) = backend() else { return };
    parity::concurrent_batches_equal_each_alone(&b);
}
