//! Segments end to end on the CPU backend: training while writes go on, seals, deletes across
//! segments, the shared-stage search answering like the one compacted index, compaction into
//! one segment with the same answers, and a reopen that finds everything again.

use std::sync::Arc;

use quiver_engine::backend::cpu::CpuBackend;
use quiver_store::segment::SearchKey;
use quiver_store::{Collection, CollectionMeta, IndexConfig, StoreConfig};

type C = Collection<CpuBackend>;

fn vector(id: u64) -> Vec<f32> {
    let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..16)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 10_000) as f32 / 1000.0
        })
        .collect()
}

fn upsert(c: &C, ids: std::ops::Range<u64>) {
    let ids: Vec<u64> = ids.collect();
    let v: Vec<f32> = ids.iter().flat_map(|&i| vector(i)).collect();
    c.upsert(ids, v).unwrap();
}

/// The same ids; distances equal up to rounding (a point written while training ran is scored
/// by the flat scan before a compaction, by the refine after it).
fn same_answers(a: &quiver_engine::backend::Neighbors, b: &quiver_engine::backend::Neighbors) {
    assert_eq!(a.ids, b.ids);
    for (x, y) in a.distances.iter().zip(&b.distances) {
        assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "{x} vs {y}");
    }
}

/// A 16-d L2 collection, IVF8,PQ4 with f32 refine.
fn meta(name: &str) -> CollectionMeta {
    CollectionMeta {
        name: name.into(),
        dim: 16,
        metric: "l2".into(),
        index: IndexConfig {
            nlist: 8,
            pq_m: 4,
            refine: "f32".into(),
            refine_factor: 0,
            seed: 5,
            train_at: 0,
        },
        fields: Vec::new(),
        settings: serde_json::Value::Null,
    }
}

#[test]
fn segments_search_like_one_index_and_survive_compaction_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let meta = meta("s");
    let c = Arc::new(C::create(&path, meta, CpuBackend, StoreConfig::default()).unwrap());
    upsert(&c, 0..2000);
    c.start_train(None).unwrap();
    upsert(&c, 2000..2300); // during or after training
    c.wait_job().unwrap();
    assert!(c.trained());
    upsert(&c, 2300..2600);
    c.checkpoint().unwrap(); // seals the appendable segment
    upsert(&c, 2600..2800);
    // Deletes and replacements across segments.
    assert_eq!(c.delete((0..2800).step_by(7).collect()).unwrap(), 400);
    upsert(&c, 1..2); // 1 is live: replaced in place of its sealed copy
    let v = c.version();
    assert!(
        v.segments.len() >= 2,
        "{} sealed segments",
        v.segments.len()
    );
    assert_eq!(v.len(), 2400);

    let nq = 20;
    let queries: Vec<f32> = (0..nq as u64).flat_map(|q| vector(10_000 + q)).collect();
    let key = SearchKey {
        k: 10,
        nprobe: 3,
        refine_factor: 4,
    };
    let shared = c.search(&queries, nq, key).unwrap();
    // Every answer is a live point at its exact distance.
    for (q, (ids, d)) in shared
        .ids
        .chunks(10)
        .zip(shared.distances.chunks(10))
        .enumerate()
    {
        let query = &queries[q * 16..(q + 1) * 16];
        for (&id, &d) in ids.iter().zip(d) {
            assert!(
                id >= 0 && !c.get(&[id as u64]).is_empty(),
                "{id} is not live"
            );
            let want: f32 = vector(id as u64)
                .iter()
                .zip(query)
                .map(|(a, b)| (a - b) * (a - b))
                .sum();
            assert!(
                (d - want).abs() <= 1e-3 * want.max(1.0),
                "{id}: {d} vs {want}"
            );
        }
    }
    // Exact settings: a stored vector finds itself; a deleted one is gone.
    let exact = SearchKey {
        k: 1,
        nprobe: 8,
        refine_factor: 100,
    };
    for id in [3u64, 1500, 2299, 2799, 1] {
        let r = c.search(&vector(id), 1, exact).unwrap();
        assert_eq!(r.ids[0], id as i64);
    }
    let r = c.search(&vector(7), 1, exact).unwrap();
    assert_ne!(r.ids[0], 7);

    let before = c.search(&queries, nq, exact).unwrap();
    c.compact().unwrap();
    let v = c.version();
    assert_eq!(v.segments.len(), 1);
    assert_eq!(v.len(), 2400);
    same_answers(&c.search(&queries, nq, exact).unwrap(), &before);
    // The segments were searched as one index: the same candidates were refined (ties in
    // approximate scores aside), so the answers of the compacted index are nearly all the
    // same.
    let compacted = c.search(&queries, nq, key).unwrap();
    let same = shared
        .ids
        .chunks(10)
        .zip(compacted.ids.chunks(10))
        .map(|(a, b)| a.iter().filter(|x| b.contains(x)).count())
        .sum::<usize>();
    assert!(
        same >= nq * 10 * 95 / 100,
        "{same} of {} answers shared",
        nq * 10
    );
    drop(v);
    drop(c);
    let c = C::open(&path, CpuBackend, StoreConfig::default()).unwrap();
    assert_eq!(c.version().len(), 2400);
    same_answers(&c.search(&queries, nq, exact).unwrap(), &before);
    assert_eq!(c.get(&[1])[0].1, vector(1));
    assert!(c.get(&[7]).is_empty());
    // Reopened segments (each file holding its own copy of the quantizers) still merge.
    upsert(&c, 3000..3100);
    c.checkpoint().unwrap();
    c.compact().unwrap();
    assert_eq!(c.version().segments.len(), 1);
    assert_eq!(c.version().len(), 2500);
}

/// The write that fills the appendable segment seals it in memory (no optimizer runs here),
/// so later writes copy only a new, small appendable segment's lists. The sealed segments
/// have no files until a checkpoint: a reopen before one finds their points in the log, and
/// the optimizer's next step writes them.
#[test]
fn writes_seal_a_full_appendable_segment_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w");
    let meta = meta("w");
    let cfg = StoreConfig {
        seal_rows: 100,
        ..StoreConfig::default()
    };
    let c = C::create(&path, meta, CpuBackend, cfg.clone()).unwrap();
    let c = Arc::new(c);
    upsert(&c, 0..1000);
    c.start_train(None).unwrap();
    c.wait_job().unwrap();
    let sealed = c.version().segments.len();
    for b in 0..10u64 {
        upsert(&c, 1000 + b * 50..1000 + (b + 1) * 50);
        assert!(c.version().appendable.len() < 100, "write {b}: not sealed");
    }
    let v = c.version();
    assert_eq!(v.segments.len(), sealed + 5, "one seal per 100 rows");
    assert_eq!(v.len(), 1500);
    drop(v);
    let exact = SearchKey {
        k: 1,
        nprobe: 8,
        refine_factor: 100,
    };
    for id in [1000u64, 1099, 1100, 1499] {
        assert_eq!(c.search(&vector(id), 1, exact).unwrap().ids[0], id as i64);
    }
    drop(c);
    // Reopened from the files of the training's checkpoint and the log.
    let c = Arc::new(C::open(&path, CpuBackend, cfg.clone()).unwrap());
    assert_eq!(c.version().len(), 1500);
    for id in [0u64, 999, 1000, 1250, 1499] {
        assert_eq!(c.get(&[id])[0].1, vector(id), "{id}");
    }
    // The optimizer's next steps write the sealed segments (and merge them); what a reopen
    // then reads comes from their files.
    let mut steps = 0;
    while c.optimize_step().unwrap() {
        steps += 1;
        assert!(steps < 50, "the optimizer does not settle");
    }
    assert!(steps >= 1);
    drop(c);
    let c = C::open(&path, CpuBackend, cfg).unwrap();
    assert_eq!(c.version().len(), 1500);
    for id in [0u64, 1000, 1499] {
        assert_eq!(c.search(&vector(id), 1, exact).unwrap().ids[0], id as i64);
    }
}

/// Found by the `collection_files` fuzz target: a manifest whose dimension, metric or file
/// names do not match its segment files opened, and the first search then panicked merging
/// per-segment results of different shapes. Such a folder is refused at open, naming the file.
#[test]
fn a_manifest_that_disagrees_with_its_segments_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m");
    let c = C::create(&path, meta("m"), CpuBackend, StoreConfig::default()).unwrap();
    upsert(&c, 0..50);
    c.checkpoint().unwrap();
    c.close();
    drop(c);
    let manifest = path.join("manifest.json");
    let good = std::fs::read_to_string(&manifest).unwrap();
    assert!(good.contains("\"dim\": 16") && good.contains("\"metric\": \"l2\""));
    for (from, to, says) in [
        ("\"dim\": 16", "\"dim\": 8", "holds 16-d"),
        ("\"dim\": 16", "\"dim\": 0", "dimension 0"),
        ("\"metric\": \"l2\"", "\"metric\": \"ip\"", "holds 16-d"),
        (
            "\"metric\": \"l2\"",
            "\"metric\": \"manhattan\"",
            "unknown metric",
        ),
        ("\"file\": \"", "\"file\": \"../", "not a plain name"),
    ] {
        std::fs::write(&manifest, good.replacen(from, to, 1)).unwrap();
        let e = C::open(&path, CpuBackend, StoreConfig::default())
            .err()
            .unwrap_or_else(|| panic!("{to}: opened"));
        assert!(e.to_string().contains(says), "{to}: {e}");
    }
    std::fs::write(&manifest, good).unwrap();
    let c = C::open(&path, CpuBackend, StoreConfig::default()).unwrap();
    assert_eq!(c.count(None), 50);
}

/// A closed (dropped) collection's handle is fenced: after `close`, a checkpoint, a training,
/// a field index, a settings change, a write and an optimizer step through it change nothing
/// on disk, where a new collection of the same name may live by then.
#[test]
fn a_closed_collection_touches_nothing_in_its_old_folder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let old = Arc::new(C::create(&path, meta("c"), CpuBackend, StoreConfig::default()).unwrap());
    upsert(&old, 0..400);
    old.close();
    // The drop moved the folder aside; a new collection took the name.
    std::fs::rename(&path, dir.path().join("trash")).unwrap();
    let new = Arc::new(C::create(&path, meta("c"), CpuBackend, StoreConfig::default()).unwrap());
    upsert(&new, 1000..1010);
    new.checkpoint().unwrap();
    let before: Vec<_> = files_under(&path);

    assert!(old.checkpoint().is_err());
    assert!(old.start_train(None).is_err() || old.wait_job().is_err());
    assert!(old
        .create_field_index(quiver_engine::payload::fields::FieldSpec {
            key: "k".into(),
            kind: quiver_engine::payload::fields::FieldType::Keyword,
        })
        .is_err());
    assert!(old
        .update_settings(|s, _| *s = serde_json::json!({"x": 1}))
        .is_err());
    assert!(old.upsert(vec![5], vector(5)).is_err());
    assert!(!old.optimize_step().unwrap());
    assert_eq!(
        files_under(&path),
        before,
        "the old handle changed the new folder"
    );
    drop((old, new));
    let reopened = C::open(&path, CpuBackend, StoreConfig::default()).unwrap();
    assert_eq!(reopened.count(None), 10);
    assert_eq!(reopened.meta().settings, serde_json::Value::Null);
}

/// Every file below `dir` with its contents.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A stopped training (the server's shutdown stops them so its checkpoint does not wait for
/// a whole training) ends at its first step, reports why, publishes nothing, and the
/// collection goes on taking writes and checkpoints.
#[test]
fn a_stopped_training_ends_and_leaves_the_collection_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let c = Arc::new(
        C::create(
            &dir.path().join("c"),
            meta("c"),
            CpuBackend,
            StoreConfig::default(),
        )
        .unwrap(),
    );
    upsert(&c, 0..1000);
    c.stop_training();
    c.start_train(None).unwrap();
    let e = c.wait_job().unwrap_err();
    assert!(e.to_string().contains("cancelled"), "{e}");
    assert!(!c.trained());
    upsert(&c, 1000..1010);
    c.checkpoint().unwrap();
    assert_eq!(c.count(None), 1010);
}
