//! The wgpu backend against the CPU reference (the shared bodies of `parity/`, also run on
//! CUDA) and its own paths (bindings split, streaming), on whatever adapter exists (lavapipe in
//! CI; see tests/stages.rs for the skip rule).

mod parity;

use std::sync::Arc;

use parity::{build, Case};
use quiver_engine::backend::{Backend, SearchParams};
use quiver_engine::{Metric, RefineKind};
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

#[test]
fn searches_match_the_cpu_reference() {
    let Some(gpu) = device() else { return };
    parity::searches_match_the_cpu_reference(&WgpuBackend::new(Arc::new(gpu)));
}

#[test]
fn filtered_searches_match_the_cpu_reference() {
    let Some(gpu) = device() else { return };
    parity::filtered_searches_match_the_cpu_reference(&WgpuBackend::new(Arc::new(gpu)));
}

#[test]
fn wide_codes_match_the_cpu_reference() {
    let Some(gpu) = device() else { return };
    parity::wide_codes_match_the_cpu_reference(&WgpuBackend::new(Arc::new(gpu)));
}

#[test]
fn one_batch_over_segments_equals_each_search() {
    let Some(gpu) = device() else { return };
    parity::one_batch_over_segments_equals_each_search(&WgpuBackend::new(Arc::new(gpu)), true);
}

#[test]
fn many_lists_and_several_rounds_match_the_cpu_reference() {
    let Some(gpu) = device() else { return };
    parity::many_lists_and_several_rounds_match_the_cpu_reference(&WgpuBackend::new(Arc::new(gpu)));
}

/// Deletes after the upload re-upload only the tombstones: the refreshed index shares the
/// device copy of the old one and searches like the CPU.
#[test]
fn deletes_upload_only_tombstones() {
    let Some(gpu) = device() else { return };
    let pairs =
        parity::deletes_after_prepare_match_the_cpu_reference(&WgpuBackend::new(Arc::new(gpu)));
    for (before, after) in &pairs {
        assert!(after.shares_device_data_with(before));
    }
}

/// Given the same probes and tables, the GPU scan selects the CPU scan's candidates.
#[test]
fn scan_stage_selects_the_cpu_candidates() {
    let Some(gpu) = device() else { return };
    parity::scan_stage_selects_the_cpu_candidates(&WgpuBackend::new(Arc::new(gpu)));
}

#[test]
fn coarse_and_tables_match_the_cpu_reference() {
    let Some(gpu) = device() else { return };
    parity::coarse_and_tables_match_the_cpu_reference(&WgpuBackend::new(Arc::new(gpu)));
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

/// 4-bit codes: each (query, list) table quantized on the device equals the host's on this
/// adapter (the staged path's ids and distances, bit for bit).
#[test]
fn device_quantized_tables_equal_the_host_quantization() {
    let Some(gpu) = device() else { return };
    parity::device_quantized_tables_equal_the_host_quantization(&WgpuBackend::new(Arc::new(gpu)));
}

#[test]
fn tied_centroids_probe_the_cpu_lists() {
    let Some(gpu) = device() else { return };
    parity::tied_centroids_probe_the_cpu_lists(&WgpuBackend::new(Arc::new(gpu)));
}

#[test]
fn concurrent_batches_equal_each_alone() {
    let Some(gpu) = device() else { return };
    parity::concurrent_batches_equal_each_alone(&WgpuBackend::new(Arc::new(gpu)));
}

/// The fused scans (`scan8.wgsl` / `scan4.wgsl` `fused`: the selection in the scan, no score
/// rows) select what the unfused path selects, ids and distance bits: 8- and 4-bit codes, IP
/// and L2 (the 4-bit item tables quantized in the workgroup, the L2 terms folded in), with
/// deletes, at nprobe 4 and at every list (16), a part per probe.
#[test]
fn fused_scans_select_what_the_unfused_path_selects() {
    let Some(gpu) = device() else { return };
    let gpu = Arc::new(gpu);
    let fused = WgpuBackend::new(gpu.clone());
    let unfused = WgpuBackend::new(gpu).without_fused_select();
    for (metric, bits, m) in [
        (Metric::InnerProduct, 8, 8),
        (Metric::L2, 8, 8),
        (Metric::InnerProduct, 4, 16),
        (Metric::L2, 4, 16),
    ] {
        let c = Case {
            metric,
            bits,
            m,
            refine: RefineKind::F16,
        };
        let (idx, q) = build(&c, &[3, 7, 11]);
        for nprobe in [4, 16] {
            let params = SearchParams {
                k: 10,
                nprobe,
                refine_factor: 3,
            };
            // Each search's dispatches: the fused path must have taken fewer (no rounds over
            // score rows), or it did not run.
            let run = |b: &WgpuBackend| {
                let prepared = b.prepare(idx.clone()).expect("prepare");
                let before = b.counters().expect("wgpu counts its dispatches");
                let found = b.search(&prepared, &q, &params).expect("search");
                let after = b.counters().expect("wgpu counts its dispatches");
                (found, after.launches - before.launches)
            };
            let (a, unfused_launches) = run(&unfused);
            let (b, fused_launches) = run(&fused);
            let label = format!("{metric} {bits}-bit nprobe {nprobe}");
            assert!(
                fused_launches < unfused_launches,
                "{label}: {fused_launches} dispatches fused, {unfused_launches} unfused"
            );
            assert_eq!(a.ids, b.ids, "{label}: ids");
            let bits_of = |d: &[f32]| d.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits_of(&a.distances),
                bits_of(&b.distances),
                "{label}: distances"
            );
        }
    }
}
