//! Retraining when the data drifts: points from a region the quantizers were not trained on
//! raise the coarse error; the optimizer retrains, every point stays (writes made during the
//! retraining too), the new quantizers fit the new data, and the result survives a reopen.

use std::sync::Arc;

use quiver_engine::backend::cpu::CpuBackend;
use quiver_store::segment::SearchKey;
use quiver_store::{Collection, CollectionMeta, IndexConfig, StoreConfig};

type C = Collection<CpuBackend>;

/// Runs the optimizer's steps until none is due and no training it started runs (trainings
/// run on threads of their own).
fn settle(c: &Arc<C>) {
    loop {
        while c.optimize_step().unwrap() {}
        if c.job() != quiver_store::JobState::Training {
            return;
        }
        let _ = c.wait_job();
    }
}
const DIM: usize = 16;

/// A point near one of 8 centres (the corners of a cube) of a region: region 0 around the origin, region 1 far off.
fn vector(id: u64, region: u64) -> Vec<f32> {
    let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let centre = id % 8;
    (0..DIM)
        .map(|j| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let noise = (x % 1000) as f32 / 1000.0;
            let c = if (centre >> (j % 3)) & 1 == 1 {
                4.0
            } else {
                0.0
            };
            c + noise + region as f32 * 40.0 * ((j % 2) as f32)
        })
        .collect()
}

fn upsert(c: &C, ids: std::ops::Range<u64>, region: u64) {
    let ids: Vec<u64> = ids.collect();
    let v: Vec<f32> = ids.iter().flat_map(|&i| vector(i, region)).collect();
    c.upsert(ids, v).unwrap();
}

fn finds_itself(c: &C, id: u64, region: u64) -> bool {
    let key = SearchKey {
        k: 1,
        nprobe: 16,
        refine_factor: 50,
    };
    c.search(&vector(id, region), 1, key).unwrap().ids[0] == id as i64
}

#[test]
fn drifted_data_is_retrained_without_losing_a_point() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d");
    let meta = CollectionMeta {
        name: "d".into(),
        dim: DIM,
        metric: "l2".into(),
        index: IndexConfig {
            nlist: 16,
            pq_m: 4,
            refine: "f32".into(),
            refine_factor: 0,
            seed: 3,
            train_at: 0,
        },
        fields: Vec::new(),
        settings: serde_json::Value::Null,
    };
    let c = Arc::new(C::create(&path, meta, CpuBackend, StoreConfig::default()).unwrap());
    upsert(&c, 0..3000, 0);
    c.start_train(None).unwrap();
    c.wait_job().unwrap();
    let first = c.version().quantizers.clone().unwrap();
    let d = c.drift();
    assert!(d.baseline > 0.0 && d.trained_points == 3000, "{d:?}");

    // More of the same: no drift.
    upsert(&c, 3000..3400, 0);
    let r = c.drift().ratio().unwrap();
    assert!(r < 1.5, "same data scores {r}");
    settle(&c);
    assert!(Arc::ptr_eq(
        c.version().quantizers.as_ref().unwrap(),
        &first
    ));

    // A new region: the error rises, and past 10% new points a retraining is due.
    upsert(&c, 10_000..11_500, 1);
    let r = c.drift().ratio().unwrap();
    assert!(r > 1.5, "new data scores {r}");
    let before = c.drift();
    // Writes go on while the optimizer retrains.
    let writer = {
        let c = c.clone();
        std::thread::spawn(move || {
            for b in 0..20u64 {
                let s = 20_000 + b * 10;
                upsert(&c, s..s + 10, 1);
            }
        })
    };
    settle(&c);
    writer.join().unwrap();
    settle(&c);
    let v = c.version();
    let second = v.quantizers.clone().unwrap();
    assert!(!Arc::ptr_eq(&second, &first), "retrained");
    assert_eq!(v.len(), 3400 + 1500 + 200);
    assert!(c.drift().trained_points >= 4900);
    drop(v);
    // The new quantizers fit the new region: more of it lands far nearer a centroid (the
    // mean over the first batch's 400 old-region points and 1,500 new-region ones was
    // dominated by the new region).
    upsert(&c, 11_500..11_900, 1);
    let after = c.drift();
    let mean = |d: &quiver_store::drift::Drift| d.added_error / d.added as f64;
    assert!(
        mean(&after) * 10.0 < mean(&before),
        "before {before:?}, after {after:?}"
    );
    for (id, region) in [
        (5, 0),
        (3100, 0),
        (10_001, 1),
        (11_499, 1),
        (20_155, 1),
        (11_555, 1),
    ] {
        assert!(finds_itself(&c, id, region), "{id}");
    }

    // Durable: a reopen finds the new quantizers and every point; the old quantizers file is
    // gone.
    c.checkpoint().unwrap();
    drop(c);
    let c = C::open(&path, CpuBackend, StoreConfig::default()).unwrap();
    assert_eq!(c.version().len(), 5500);
    assert!(c.drift().baseline > 0.0);
    for (id, region) in [(5, 0), (10_001, 1), (20_199, 1), (11_899, 1)] {
        assert!(finds_itself(&c, id, region), "{id} after reopen");
    }
    let quantizer_files = std::fs::read_dir(path.join("segments"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("quantizers-"))
        .count();
    assert_eq!(quantizer_files, 1);
    c.compact().unwrap();
    assert_eq!(c.version().len(), 5500);
}

#[test]
fn train_on_a_trained_collection_retrains_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r");
    let meta = CollectionMeta {
        name: "r".into(),
        dim: DIM,
        metric: "cosine".into(),
        index: IndexConfig {
            nlist: 8,
            pq_m: 4,
            refine: "none".into(),
            refine_factor: 0,
            seed: 3,
            train_at: 0,
        },
        fields: Vec::new(),
        settings: serde_json::Value::Null,
    };
    let c = Arc::new(C::create(&path, meta, CpuBackend, StoreConfig::default()).unwrap());
    upsert(&c, 0..1000, 0);
    c.start_train(None).unwrap();
    c.wait_job().unwrap();
    upsert(&c, 1000..1500, 1);
    let first = c.version().quantizers.clone().unwrap();
    // Without refine vectors the retraining learns from the codes' reconstructions.
    c.start_train(Some(IndexConfig {
        nlist: 16,
        pq_m: 0,
        refine: String::new(),
        refine_factor: 0,
        seed: 0,
        train_at: 0,
    }))
    .unwrap();
    c.wait_job().unwrap();
    let v = c.version();
    let q = v.quantizers.clone().unwrap();
    assert!(!Arc::ptr_eq(&q, &first));
    assert_eq!(q.nlist(), 16);
    assert_eq!(c.meta().index.nlist, 16);
    assert_eq!(v.len(), 1500);
    assert_eq!(c.drift().trained_points, 1500);
}

/// An index loaded from a file comes without a drift baseline: the optimizer measures one
/// over its points, and new points are then compared with it.
#[test]
fn a_loaded_index_gets_a_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let meta = CollectionMeta {
        name: "l".into(),
        dim: DIM,
        metric: "l2".into(),
        index: IndexConfig {
            nlist: 0,
            pq_m: 0,
            refine: "f16".into(),
            refine_factor: 0,
            seed: 0,
            train_at: 0,
        },
        fields: Vec::new(),
        settings: serde_json::Value::Null,
    };
    let x: Vec<f32> = (0..2000).flat_map(|i| vector(i, 0)).collect();
    let mut params = quiver_engine::IndexParams::new(quiver_engine::Metric::L2, DIM, 16, 4);
    params.refine = quiver_engine::RefineKind::F16;
    let mut index =
        quiver_engine::IvfPqIndex::train(params, &x, &quiver_engine::progress::NoProgress).unwrap();
    index
        .add(&x, None, &quiver_engine::progress::NoProgress)
        .unwrap();
    let c = Arc::new(
        C::create(
            &dir.path().join("l"),
            meta,
            CpuBackend,
            StoreConfig::default(),
        )
        .unwrap(),
    );
    c.load_index(index).unwrap();
    assert_eq!(c.drift().baseline, 0.0);
    settle(&c);
    let d = c.drift();
    assert!(d.baseline > 0.0 && d.trained_points == 2000, "{d:?}");
    upsert(&c, 5000..5100, 0);
    let r = c.drift().ratio().unwrap();
    assert!((0.5..1.5).contains(&r), "the same data scores {r}");
}

#[test]
fn a_collection_trains_by_itself_at_its_training_size_and_keeps_its_settings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    let meta = CollectionMeta {
        name: "t".into(),
        dim: DIM,
        metric: "l2".into(),
        index: IndexConfig {
            nlist: 16,
            pq_m: 4,
            refine: "f32".into(),
            refine_factor: 0,
            seed: 3,
            train_at: 1_000,
        },
        fields: Vec::new(),
        settings: serde_json::json!({"hnsw_config": {"m": 32}}),
    };
    let c = Arc::new(C::create(&path, meta, CpuBackend, StoreConfig::default()).unwrap());
    upsert(&c, 0..999, 0);
    settle(&c);
    assert!(c.version().quantizers.is_none(), "trained below its size");
    upsert(&c, 999..1200, 0);
    settle(&c);
    assert!(c.version().quantizers.is_some(), "not trained at its size");
    assert!((0..1200).step_by(97).all(|id| finds_itself(&c, id, 0)));

    // Settings change durably; train_at 0 turns training by itself off.
    c.update_settings(|settings, at| {
        *settings = serde_json::json!({"metadata": {"team": "a"}});
        *at = 0;
    })
    .unwrap();
    drop(c);
    let c = C::open(&path, CpuBackend, StoreConfig::default()).unwrap();
    let meta = c.meta();
    assert_eq!(
        meta.settings,
        serde_json::json!({"metadata": {"team": "a"}})
    );
    assert_eq!(meta.index.train_at, 0);
    assert_eq!(c.version().len(), 1200);
}
