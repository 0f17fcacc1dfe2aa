//! Background work while a collection trains: its checkpoints go on (the log stays bounded
//! however long it trains) and the other collections' work is not held up (trainings run on
//! threads of their own, not on the optimizer's). `QUIVER_MAINTENANCE_SECS` sets how long
//! the ingest runs (default 12; the bar is 600) and `QUIVER_MAINTENANCE_BATCH` the
//! points per write (default 500; fewer for a long run, to bound the points kept in memory).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quiver_engine::backend::cpu::CpuBackend;
use quiver_store::{Collection, CollectionMeta, IndexConfig, JobState, Optimizer, StoreConfig};

type C = Collection<CpuBackend>;

const DIM: usize = 32;

fn meta(name: &str, train_at: u64) -> CollectionMeta {
    CollectionMeta {
        name: name.into(),
        dim: DIM,
        metric: "l2".into(),
        index: IndexConfig {
            nlist: 64,
            pq_m: 8,
            refine: "f32".into(),
            refine_factor: 0,
            seed: 9,
            train_at,
        },
        fields: Vec::new(),
        settings: serde_json::Value::Null,
    }
}

fn vectors(ids: &[u64]) -> Vec<f32> {
    ids.iter()
        .flat_map(|&id| {
            let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            (0..DIM).map(move |_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 10_000) as f32 / 1000.0
            })
        })
        .collect()
}

/// Bytes of every log file of the collection at `dir`.
fn wal_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("wal"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Collection A trains through most of the ingest (by itself at its size first, through the
/// optimizer, then retrained again and again) while both A and B take writes: both logs stay
/// within a few checkpoint sizes, and every acknowledged point is there after a reopen.
/// Before, a training held A's checkpoints back (its log grew with every write until the
/// training ended), and a training by size or drift ran on the optimizer's one thread (B's
/// checkpoints waited for it).
#[test]
fn checkpoints_go_on_while_a_collection_trains() {
    let secs: u64 = std::env::var("QUIVER_MAINTENANCE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        checkpoint_wal_bytes: 1 << 20,
        ..StoreConfig::default()
    };
    // Twice the checkpoint size, and as much again for a checkpoint the machine's load
    // delays (the background threads run at a lower priority than this test's writes). A
    // training that held checkpoints back would grow A's log by tens of MB here.
    let limit = 4 * cfg.checkpoint_wal_bytes;
    let (pa, pb) = (dir.path().join("a"), dir.path().join("b"));
    let a = Arc::new(C::create(&pa, meta("a", 60_000), CpuBackend, cfg.clone()).unwrap());
    let b = Arc::new(C::create(&pb, meta("b", 0), CpuBackend, cfg.clone()).unwrap());
    let optimizer = Optimizer::start(Duration::from_millis(10), 0, 2).unwrap();
    optimizer.register(&a);
    optimizer.register(&b);
    let batch: u64 = std::env::var("QUIVER_MAINTENANCE_BATCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let mut next = 0u64;
    let (mut max_a, mut max_b, mut trainings, mut trained_while) = (0u64, 0u64, 0u32, 0u32);
    let start = Instant::now();
    let mut was_training = false;
    while start.elapsed() < Duration::from_secs(secs) || a.job() == JobState::Training {
        let ids: Vec<u64> = (next..next + batch).collect();
        next += batch;
        let v = vectors(&ids);
        a.upsert(ids.clone(), v.clone()).unwrap();
        b.upsert(ids, v).unwrap();
        let training = a.job() == JobState::Training;
        if training {
            trained_while += 1;
        }
        if was_training && !training {
            trainings += 1;
        }
        was_training = training;
        // Once trained by its size, retrained again and again until the time is up.
        if a.trained() && !training && start.elapsed() < Duration::from_secs(secs) {
            a.start_train(None).unwrap();
            was_training = true;
        }
        max_a = max_a.max(wal_bytes(&pa));
        max_b = max_b.max(wal_bytes(&pb));
        std::thread::sleep(Duration::from_millis(5));
        if start.elapsed() > Duration::from_secs(secs + 600) {
            panic!("the last training does not end");
        }
    }
    drop(optimizer);
    eprintln!(
        "{secs} s: {next} points each, {trainings} trainings of A, {trained_while} of {} batches while A trained; largest logs: A {max_a} B, B {max_b} B (limit {limit})",
        next / batch
    );
    // How many trainings fit in the time depends on the machine's load; what matters is that
    // A trained through most of the ingest.
    let batches = next / batch;
    assert!(a.trained() && trainings >= 1, "{trainings} trainings");
    assert!(
        u64::from(trained_while) * 2 >= batches,
        "A trained during {trained_while} of {batches} batches"
    );
    assert!(
        max_a < limit,
        "A's log reached {max_a} bytes while it trained"
    );
    assert!(max_b < limit, "B's log reached {max_b} bytes");
    a.checkpoint().unwrap();
    drop((a, b));
    for p in [&pa, &pb] {
        let c = C::open(p, CpuBackend, cfg.clone()).unwrap();
        assert_eq!(c.count(None), next as usize, "{}", p.display());
        let probe: Vec<u64> = (0..next).step_by(997).collect();
        let got = c.get(&probe);
        assert_eq!(got.len(), probe.len());
        for (id, v) in got {
            assert_eq!(v, vectors(&[id]), "point {id}");
        }
    }
}
