//! Sealed segments on a device backend share one device copy of the collection's quantizers:
//! upserting 1,000 points into a 100,000-point collection and sealing them uploads the new
//! segment's own bytes (codes, ids, raw vectors, list places, tombstones), never the
//! quantizers or the other segments again; a merge uploads the merged segment once; a search
//! runs the sealed segments as one device batch (one upload, one download). Counted
//! by the backends' own counters (`Backend::counters`): wgpu (lavapipe in CI) and CUDA (the
//! emulator in CI; the counters are the process's, and only the CUDA test here uses CUDA).

use std::sync::Arc;

use quiver_engine::backend::{Backend, DeviceCounters, PreparedIndex};
use quiver_engine::interleave::device_code_bytes;
use quiver_engine::synth::ClusteredGaussian;
use quiver_engine::IvfPqIndex;
use quiver_store::segment::{SearchKey, SegmentIndex};
use quiver_store::{Collection, CollectionMeta, IndexConfig, StoreConfig};

const DIM: usize = 32;
const NLIST: usize = 256;

/// Bytes an index's own lists take on a device: codes (in the GPU layout:
/// `quiver_engine::interleave`, M rounded up to 16 bytes an entry), ids, raw vectors, the
/// per-list places (16 bytes each) and the tombstone bitmap.
fn list_bytes(index: &IvfPqIndex) -> u64 {
    let entries: usize = index.lists().iter().map(|l| l.len()).sum();
    let own: usize = index
        .lists()
        .iter()
        .enumerate()
        .map(|(i, l)| device_code_bytes(index, i) + 8 * l.len() + l.raw.as_bytes().len())
        .sum();
    (own + 16 * index.nlist() + 4 * entries.div_ceil(32)) as u64
}

fn upsert<B: Backend + Clone + 'static>(
    c: &Collection<B>,
    g: &ClusteredGaussian,
    ids: std::ops::Range<u64>,
) {
    let v = g.rows(ids.start as usize, (ids.end - ids.start) as usize);
    c.upsert(ids.collect(), v).expect("upsert");
}

/// The sealed segments' prepared indexes (all on the device).
fn sealed<B: Backend + Clone + 'static>(c: &Collection<B>) -> Vec<Arc<IvfPqIndex>> {
    c.version()
        .segments
        .iter()
        .map(|s| match &s.index {
            SegmentIndex::Device(p) => Arc::new(p.index().clone()),
            _ => panic!("a sealed segment not on the device: {s:?}"),
        })
        .collect()
}

fn counts<B: Backend>(b: &B) -> DeviceCounters {
    b.counters().expect("the backend counts")
}

/// The body: 100k points trained and sealed, then 1,000 upserted and sealed, then the two
/// segments merged; each step's uploads against its segment's bytes.
fn new_segments_upload_only_their_own_bytes<B: Backend + Clone + 'static>(backend: B) {
    if backend.counters().is_none() {
        eprintln!("skipped: {} does not count its device work", backend.name());
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = CollectionMeta {
        name: "d".into(),
        dim: DIM,
        metric: "l2".into(),
        index: IndexConfig {
            nlist: NLIST as u32,
            pq_m: 8,
            refine: "f16".into(),
            refine_factor: 0,
            seed: 3,
            train_at: 0,
        },
        fields: Vec::new(),
        settings: serde_json::Value::Null,
    };
    let cfg = StoreConfig {
        seal_rows: 1_000_000,
        max_segments: 1000,
        ..StoreConfig::default()
    };
    let c = Arc::new(
        Collection::create(&dir.path().join("d"), meta, backend.clone(), cfg).expect("create"),
    );
    let g = ClusteredGaussian::new(DIM, 64, 0.5, 9);
    for start in (0..100_000u64).step_by(10_000) {
        upsert(&c, &g, start..start + 10_000);
    }
    let before = counts(&backend);
    c.start_train(None).expect("train");
    c.wait_job().expect("train job");
    c.checkpoint().expect("checkpoint");
    while c.optimize_step().expect("optimize") {}
    let first = counts(&backend).since(&before);
    let segs = sealed(&c);
    let n: usize = segs.iter().map(|s| s.len()).sum();
    assert_eq!(n, 100_000, "every point sealed");
    let first_lists: u64 = segs.iter().map(|s| list_bytes(s)).sum();
    println!(
        "{}: 100,000 points sealed: {} bytes uploaded in {} copies ({first_lists} bytes of lists)",
        backend.name(),
        first.h2d_bytes,
        first.h2d_copies
    );

    // 1,000 more: the appendable segment (CPU) takes them; the checkpoint seals them (on the
    // CPU) and the optimizer's next steps upload the sealed segment.
    let before = counts(&backend);
    upsert(&c, &g, 100_000..101_000);
    let written = counts(&backend).since(&before);
    assert_eq!(written.h2d_bytes, 0, "a write uploads nothing");
    c.checkpoint().expect("checkpoint");
    while c.optimize_step().expect("optimize") {}
    let seal = counts(&backend).since(&before);
    let segs = sealed(&c);
    let new = segs
        .iter()
        .find(|s| s.len() == 1000)
        .expect("a sealed segment of the 1,000 new points");
    let bound = list_bytes(new);
    println!(
        "{}: 1,000 points sealed: {} bytes uploaded in {} copies; the new segment's bytes {bound}",
        backend.name(),
        seal.h2d_bytes,
        seal.h2d_copies
    );
    assert!(
        seal.h2d_bytes <= bound,
        "sealing 1,000 points uploaded {} bytes, more than the new segment's {bound}",
        seal.h2d_bytes
    );

    // Searches see both segments in one device batch: the queries go up once, both
    // segments' results come back in one copy.
    let q = g.rows(200_000, 8);
    let before = counts(&backend);
    let key = SearchKey {
        k: 10,
        nprobe: 16,
        refine_factor: 4,
    };
    let got = c.search(&q, 8, key).expect("search");
    let s = counts(&backend).since(&before);
    assert_eq!(got.ids.len(), 80);
    assert_eq!(segs.len(), 2);
    println!("{}: a search over both segments: {s:?}", backend.name());
    assert_eq!(s.h2d_copies, 1, "both segments in one batch: one upload");
    assert_eq!(s.h2d_bytes, (q.len() * 4) as u64, "the queries' bytes");
    assert_eq!(s.d2h_copies, 1, "one download of both segments' results");

    // Merging the two uploads the merged segment once.
    let before = counts(&backend);
    c.compact().expect("compact");
    let merge = counts(&backend).since(&before);
    let segs = sealed(&c);
    assert_eq!(segs.len(), 1);
    let bound = list_bytes(&segs[0]);
    println!(
        "{}: merged into one segment: {} bytes uploaded; its bytes {bound}",
        backend.name(),
        merge.h2d_bytes
    );
    assert!(merge.h2d_bytes <= bound, "{} > {bound}", merge.h2d_bytes);
}

#[test]
fn wgpu_new_segments_upload_only_their_own_bytes() {
    use quiver_shaders::{AdapterChoice, GpuDevice, WgpuBackend};
    let gpu = match GpuDevice::open(AdapterChoice::AnyIncludingCpu) {
        Ok(d) => d,
        Err(e) => {
            if std::env::var("QUIVER_REQUIRE_WGPU").is_ok_and(|v| v == "1") {
                panic!("QUIVER_REQUIRE_WGPU=1 but {e}");
            }
            eprintln!("skipped: no wgpu adapter ({e})");
            return;
        }
    };
    new_segments_upload_only_their_own_bytes(Arc::new(WgpuBackend::new(Arc::new(gpu))));
}

#[test]
fn cuda_new_segments_upload_only_their_own_bytes() {
    use quiver_kernels::probe::{cuda_availability, CudaAvailability};
    match cuda_availability() {
        CudaAvailability::Devices(_) => new_segments_upload_only_their_own_bytes(Arc::new(
            quiver_kernels::CudaBackend::open(0).expect("open CUDA device 0"),
        )),
        other => {
            if std::env::var("QUIVER_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
                panic!("QUIVER_REQUIRE_CUDA=1 but {other}");
            }
            eprintln!("skipped: no CUDA device ({other})");
        }
    }
}
