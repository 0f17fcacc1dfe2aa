//! Payloads in the store: written with points, edited, read back with Get and Scroll, counted
//! and filtered on in searches, deleted by filter; all of it the same after a log replay, after
//! a checkpoint (flat and IVF-PQ segment files), across a training, and on sealed segments.

use std::sync::Arc;

use quiver_engine::backend::NO_FILTER;
use quiver_engine::payload::{self, filter::Filter};
use quiver_store::segment::SearchKey;
use quiver_store::wal::PayloadEdit;
use quiver_store::{Collection, CollectionMeta, IndexConfig, StoreConfig};

type C = Collection<quiver_engine::backend::cpu::CpuBackend>;

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

fn meta() -> CollectionMeta {
    CollectionMeta {
        name: "p".into(),
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

/// Points `ids` with payload `{"g": id % 10, "tag": "t{id % 3}"}`.
fn upsert(c: &C, ids: std::ops::Range<u64>) {
    let ids: Vec<u64> = ids.collect();
    let v: Vec<f32> = ids.iter().flat_map(|&i| vector(i)).collect();
    let p: Vec<Vec<u8>> = ids
        .iter()
        .map(|i| {
            payload::encode_text(&format!(r#"{{"g":{},"tag":"t{}"}}"#, i % 10, i % 3)).unwrap()
        })
        .collect();
    c.upsert_with_payloads(ids, v, p).unwrap();
}

fn filter(text: &str) -> Filter {
    Filter::parse_text(text).unwrap()
}

fn payload_of(c: &C, id: u64) -> serde_json::Value {
    let got = c.get_points(&[id]);
    serde_json::Value::Object(payload::decode(&got[0].2))
}

/// Every check of the collection's state after the writes of the test.
fn check(c: &C, label: &str) {
    // Deleted by filter: g = 7 (but 1007, written after, is live).
    assert_eq!(
        c.count(Some(&filter(
            r#"{"must":[{"key":"g","match":{"value":7}}]}"#
        ))),
        1,
        "{label}"
    );
    assert!(c.get_points(&[17]).is_empty(), "{label}");
    assert_eq!(c.get_points(&[1007]).len(), 1, "{label}");
    // Edited: 5 merged, 6 lost "tag", 8 cleared.
    assert_eq!(
        payload_of(c, 5),
        serde_json::json!({"g": 5, "tag": "t2", "new": true}),
        "{label}"
    );
    assert_eq!(payload_of(c, 6), serde_json::json!({"g": 6}), "{label}");
    assert_eq!(payload_of(c, 8), serde_json::json!({}), "{label}");
    assert_eq!(c.count(None), 1201 - 120, "{label}");
    // Scroll: ids ascending from an offset, with payloads, and where to go on.
    let (page, next) = c.scroll(
        Some(&filter(r#"{"must":[{"key":"g","match":{"value":3}}]}"#)),
        Some(100),
        5,
    );
    let ids: Vec<u64> = page.iter().map(|(i, _)| *i).collect();
    assert_eq!(ids, [103, 113, 123, 133, 143], "{label}");
    assert_eq!(next, Some(153), "{label}");
    assert_eq!(
        serde_json::Value::Object(payload::decode(&page[0].1)),
        serde_json::json!({"g": 3, "tag": "t1"}),
        "{label}"
    );
    // Filtered search: only g = 3 points (first query), only "new" ones (second), none (third).
    let q: Vec<f32> = [vector(3), vector(5), vector(9)].concat();
    let filters = [
        filter(r#"{"must":[{"key":"g","match":{"value":3}}]}"#),
        filter(r#"{"must":[{"key":"new","match":{"value":true}}]}"#),
    ];
    let key = SearchKey {
        k: 5,
        nprobe: 8,
        refine_factor: 0,
    };
    let r = c
        .search_filtered(&q, 3, key, &filters, &[0, 1, NO_FILTER])
        .unwrap();
    assert_eq!(r.ids_of(0)[0], 3, "{label}");
    assert!(
        r.ids_of(0).iter().all(|&i| i % 10 == 3),
        "{label}: {:?}",
        r.ids_of(0)
    );
    assert_eq!(r.ids_of(1), &[5, -1, -1, -1, -1], "{label}");
    assert_eq!(r.ids_of(2)[0], 9, "{label}");
}

#[test]
fn payloads_survive_replay_checkpoints_and_training() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    let c = Arc::new(
        C::create(
            &path,
            meta(),
            quiver_engine::backend::cpu::CpuBackend,
            StoreConfig::default(),
        )
        .unwrap(),
    );
    upsert(&c, 0..1200);
    // Edits, then a delete by filter, then a point that filter matches written after it.
    let merge = payload::encode_text(r#"{"new":true}"#).unwrap();
    assert_eq!(
        c.set_payload(vec![5, 99_999], PayloadEdit::Merge(merge))
            .unwrap(),
        1
    );
    assert_eq!(
        c.set_payload(vec![6], PayloadEdit::DeleteKeys(vec!["tag".into()]))
            .unwrap(),
        1
    );
    assert_eq!(c.set_payload(vec![8], PayloadEdit::Clear).unwrap(), 1);
    assert_eq!(
        c.delete_filter(r#"{"must":[{"key":"g","match":{"value":7}}]}"#)
            .unwrap(),
        120
    );
    upsert(&c, 1007..1008);
    // The log holds the ids the filter deleted (replicas apply ids), not the filter.
    let mut logged = Vec::new();
    quiver_store::wal::replay(&path.join("wal"), 1, false, |_, op| {
        logged.push(op);
        Ok(())
    })
    .unwrap();
    assert!(!logged
        .iter()
        .any(|op| matches!(op, quiver_store::wal::Op::DeleteFilter { .. })));
    let deleted: Vec<u64> = (0..1200).filter(|i| i % 10 == 7).collect();
    assert!(logged
        .iter()
        .any(|op| matches!(op, quiver_store::wal::Op::Delete { ids } if *ids == deleted)));
    // A bad filter or an oversized edit is refused, changing nothing.
    assert!(c
        .delete_filter(r#"{"must":[{"key":"g","frob":1}]}"#)
        .is_err());
    let big =
        |k: &str| payload::encode_text(&format!(r#"{{"{k}":"{}"}}"#, "x".repeat(40_000))).unwrap();
    c.set_payload(vec![9], PayloadEdit::Merge(big("s")))
        .unwrap();
    let e = c
        .set_payload(vec![9], PayloadEdit::Merge(big("s2")))
        .unwrap_err();
    assert!(e.to_string().contains("point 9"), "{e}");
    assert!(payload_of(&c, 9).get("s2").is_none());
    c.set_payload(vec![9], PayloadEdit::DeleteKeys(vec!["s".into()]))
        .unwrap();
    check(&c, "flat, live");

    // Replay of the log alone.
    drop(c);
    let c = Arc::new(
        C::open(
            &path,
            quiver_engine::backend::cpu::CpuBackend,
            StoreConfig::default(),
        )
        .unwrap(),
    );
    check(&c, "flat, replayed");
    // Flat segment files.
    c.checkpoint().unwrap();
    drop(c);
    let c = Arc::new(
        C::open(
            &path,
            quiver_engine::backend::cpu::CpuBackend,
            StoreConfig::default(),
        )
        .unwrap(),
    );
    check(&c, "flat, checkpointed");

    // Training carries payloads into the IVF-PQ segment; edits of its (sealed) points after.
    c.start_train(None).unwrap();
    c.wait_job().unwrap();
    assert!(c.trained());
    check(&c, "trained");
    let merge = payload::encode_text(r#"{"late":1}"#).unwrap();
    assert_eq!(
        c.set_payload(vec![3], PayloadEdit::Merge(merge)).unwrap(),
        1
    );
    assert_eq!(
        payload_of(&c, 3),
        serde_json::json!({"g": 3, "tag": "t0", "late": 1})
    );
    c.set_payload(vec![3], PayloadEdit::DeleteKeys(vec!["late".into()]))
        .unwrap();
    check(&c, "trained, edited");
    c.checkpoint().unwrap();
    drop(c);
    let c = Arc::new(
        C::open(
            &path,
            quiver_engine::backend::cpu::CpuBackend,
            StoreConfig::default(),
        )
        .unwrap(),
    );
    check(&c, "trained, reopened");
    c.compact().unwrap();
    check(&c, "compacted");
}

/// Answers of the filters of `field_index_checks`: counts, scroll pages and filtered searches.
fn answers(c: &C) -> Vec<String> {
    let filters = [
        r#"{"must":[{"key":"g","match":{"value":3}}]}"#,
        r#"{"must":[{"key":"g","range":{"gte":2,"lt":5}},{"key":"tag","match":{"any":["t0","t2"]}}]}"#,
        r#"{"should":[{"key":"tag","match":{"value":"t1"}}],"must_not":[{"key":"g","range":{"gt":4}}]}"#,
        r#"{"must":[{"key":"tag","match":{"except":["t0"]}}]}"#,
        r#"{"must":[{"key":"g","match":{"value":"x"}}]}"#,
    ];
    let mut out = Vec::new();
    let q: Vec<f32> = [vector(3), vector(500), vector(1111)].concat();
    let key = SearchKey {
        k: 10,
        nprobe: 8,
        refine_factor: 0,
    };
    for (i, text) in filters.iter().enumerate() {
        let f = filter(text);
        let (page, next) = c.scroll(Some(&f), Some(400), 7);
        out.push(format!(
            "{i}: count {} page {:?} next {next:?}",
            c.count(Some(&f)),
            page.iter().map(|(id, _)| *id).collect::<Vec<_>>()
        ));
        let r = c
            .search_filtered(&q, 3, key, std::slice::from_ref(&f), &[0, 0, 0])
            .unwrap();
        out.push(format!("{i}: ids {:?}", r.ids));
    }
    out
}

#[test]
fn field_indexes_are_kept_built_and_answer_as_payloads_do() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let mut m = meta();
    m.fields = vec![payload::fields::FieldSpec::parse("g:integer").unwrap()];
    let cpu = || quiver_engine::backend::cpu::CpuBackend;
    let c = Arc::new(C::create(&path, m, cpu(), StoreConfig::default()).unwrap());
    upsert(&c, 0..1200);
    // The reference: the same filters with no field indexed.
    c.delete_field_index("g").unwrap();
    assert!(c.field_specs().is_empty());
    let flat = answers(&c);
    let specs = || {
        vec![
            payload::fields::FieldSpec::parse("g:integer").unwrap(),
            payload::fields::FieldSpec::parse("tag:keyword").unwrap(),
        ]
    };
    for s in specs() {
        assert!(c.create_field_index(s).unwrap());
    }
    assert!(!c.create_field_index(specs()[1].clone()).unwrap());
    assert_eq!(c.field_specs(), specs());
    assert_eq!(answers(&c), flat, "indexed, appendable flat segment");
    c.checkpoint().unwrap();
    assert_eq!(answers(&c), flat, "indexed, sealed flat segment");
    assert!(c.version().segments[0].has_field_indexes(&specs()));

    // Trained: the IVF-PQ segments answer as the flat ones did (exact counts and scrolls; the
    // searches probe every list).
    c.start_train(None).unwrap();
    c.wait_job().unwrap();
    let trained = answers(&c);
    let unindexed = {
        c.delete_field_index("g").unwrap();
        c.delete_field_index("tag").unwrap();
        answers(&c)
    };
    assert_eq!(trained, unindexed, "trained: indexed and not");
    for s in specs() {
        c.create_field_index(s).unwrap();
    }
    for s in c.version().segments.iter() {
        assert!(s.has_field_indexes(&specs()), "{s:?}");
    }
    // A type change replaces the key's index; conditions must then suit the new type.
    assert!(c
        .create_field_index(payload::fields::FieldSpec::parse("g:keyword").unwrap())
        .unwrap());
    assert_eq!(c.field_specs()[0].to_string(), "g:keyword");
    assert_eq!(answers(&c), trained, "g as a keyword");
    c.create_field_index(specs()[0].clone()).unwrap();

    // Writes after: the appendable segment's indexes are rebuilt, merges build theirs.
    upsert(&c, 1200..1300);
    c.delete(vec![3, 13]).unwrap();
    let after = answers(&c);
    c.checkpoint().unwrap();
    // (The sealed appendable segment keeps the indexes the searches above built.)
    while c.optimize_step().unwrap() {}
    for s in c.version().segments.iter() {
        assert!(s.has_field_indexes(&specs()), "{s:?}");
    }
    assert_eq!(answers(&c), after, "sealed and optimized");
    c.compact().unwrap();
    assert_eq!(c.version().segments.len(), 1);
    assert!(c.version().segments[0].has_field_indexes(&specs()));
    assert_eq!(answers(&c), after, "compacted");

    // The indexed fields survive a restart (from the manifest) and a read-only load.
    drop(c);
    let c = Arc::new(C::open(&path, cpu(), StoreConfig::default()).unwrap());
    assert_eq!(c.field_specs(), specs());
    // Loaded segments get theirs from the optimizer.
    assert!(!c.version().segments[0].has_field_indexes(&specs()));
    while c.optimize_step().unwrap() {}
    assert!(c.version().segments[0].has_field_indexes(&specs()));
    assert_eq!(answers(&c), after, "reopened");
    assert!(!c.delete_field_index("nope").unwrap());
    assert!(c.delete_field_index("tag").unwrap());
    drop(c);
    let c = Arc::new(C::open(&path, cpu(), StoreConfig::default()).unwrap());
    assert_eq!(c.field_specs(), vec![specs()[0].clone()]);
    assert_eq!(answers(&c), after, "one index dropped");
}

/// A payload edit moves its points into the appendable segment, which then holds only them,
/// spread over the collection's lists. A search filtered on the new field finds all of them at
/// any nprobe (regression: it searched that segment as if unfiltered, opening nprobe lists of
/// 64, and found only the points in those), live, after a checkpoint seals them into a small
/// segment of their own, and after a compaction.
#[test]
fn a_filter_on_a_few_edited_points_finds_them_all() {
    for refine in ["f32", "none"] {
        let dir = tempfile::tempdir().unwrap();
        let mut m = meta();
        m.index.nlist = 64;
        m.index.refine = refine.into();
        let c = Arc::new(
            C::create(
                &dir.path().join("p"),
                m,
                quiver_engine::backend::cpu::CpuBackend,
                StoreConfig::default(),
            )
            .unwrap(),
        );
        upsert(&c, 0..4000);
        c.start_train(None).unwrap();
        c.wait_job().unwrap();
        let tagged = [11u64, 2222, 3777];
        let merge = payload::encode_text(r#"{"new":true}"#).unwrap();
        assert_eq!(
            c.set_payload(tagged.to_vec(), PayloadEdit::Merge(merge))
                .unwrap(),
            3
        );
        assert_eq!(c.version().appendable.len(), 3, "{refine}");
        let f = filter(r#"{"must":[{"key":"new","match":{"value":true}}]}"#);
        let found = |c: &C, label: &str| {
            for nprobe in [1, 4, 64] {
                for &t in &tagged {
                    let key = SearchKey {
                        k: 10,
                        nprobe,
                        refine_factor: 0,
                    };
                    let r = c
                        .search_filtered(&vector(t), 1, key, std::slice::from_ref(&f), &[0])
                        .unwrap();
                    let mut ids: Vec<i64> = r.ids.iter().copied().filter(|&i| i >= 0).collect();
                    ids.sort_unstable();
                    assert_eq!(
                        ids,
                        vec![11, 2222, 3777],
                        "{refine}, {label}: nprobe {nprobe}, query near {t}"
                    );
                }
            }
        };
        found(&c, "live");
        c.checkpoint().unwrap();
        found(&c, "checkpointed");
        c.compact().unwrap();
        found(&c, "compacted");
    }
}

/// Insert-only and update-only upserts: each point is written or left by whether its id is live
/// when its group applies, the count says how many were written, and replay (the log holds
/// plain upserts of what was written) gives the same state. Eight threads insert-only the
/// same fresh ids at once: each id is inserted once, by exactly one of them.
#[test]
fn insert_only_and_update_only_write_what_their_mode_lets_through() {
    use quiver_store::UpsertMode;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    let c = Arc::new(
        C::create(
            &path,
            meta(),
            quiver_engine::backend::cpu::CpuBackend,
            StoreConfig::default(),
        )
        .unwrap(),
    );
    upsert(&c, 0..10);
    let text = |s: &str| payload::encode_text(s).unwrap();
    // Insert-only: 3 is live (left as it is), 20 is new.
    let n = c
        .upsert_with_mode(
            vec![3, 20],
            [vector(100), vector(20)].concat(),
            vec![text(r#"{"w":"insert"}"#), text(r#"{"w":"insert"}"#)],
            UpsertMode::InsertOnly,
        )
        .unwrap();
    assert_eq!(n, 1);
    // Update-only: 4 is live (replaced), 21 is absent (not created).
    let n = c
        .upsert_with_mode(
            vec![4, 21],
            [vector(104), vector(21)].concat(),
            vec![text(r#"{"w":"update"}"#), text(r#"{"w":"update"}"#)],
            UpsertMode::UpdateOnly,
        )
        .unwrap();
    assert_eq!(n, 1);
    // Nothing let through: no write at all.
    let lsn = c.version().lsn;
    assert_eq!(
        c.upsert_with_mode(vec![5], vector(5), Vec::new(), UpsertMode::InsertOnly)
            .unwrap(),
        0
    );
    assert_eq!(c.version().lsn, lsn, "a write of no point is not logged");

    let check = |c: &C, label: &str| {
        let got = |id: u64| c.get_points(&[id]);
        assert_eq!(got(3)[0].1, vector(3), "{label}: insert-only left 3");
        assert_eq!(
            payload_of(c, 3),
            serde_json::json!({"g": 3, "tag": "t0"}),
            "{label}"
        );
        assert_eq!(got(20)[0].1, vector(20), "{label}: insert-only added 20");
        assert_eq!(
            payload_of(c, 20),
            serde_json::json!({"w": "insert"}),
            "{label}"
        );
        assert_eq!(got(4)[0].1, vector(104), "{label}: update-only replaced 4");
        assert_eq!(
            payload_of(c, 4),
            serde_json::json!({"w": "update"}),
            "{label}"
        );
        assert!(got(21).is_empty(), "{label}: update-only did not create 21");
        assert_eq!(c.count(None), 11, "{label}");
    };
    check(&c, "live");
    drop(c);
    let c = Arc::new(
        C::open(
            &path,
            quiver_engine::backend::cpu::CpuBackend,
            StoreConfig::default(),
        )
        .unwrap(),
    );
    check(&c, "replayed");

    // Racing insert-only writers of the same fresh ids.
    let written: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let c = &c;
                s.spawn(move || {
                    let ids: Vec<u64> = (1000..1050).collect();
                    let v: Vec<f32> = ids.iter().flat_map(|&i| vector(i + t)).collect();
                    c.upsert_with_mode(ids, v, Vec::new(), UpsertMode::InsertOnly)
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(written, 50, "each fresh id inserted exactly once");
    assert_eq!(c.count(None), 61);
}

/// A collection of `meta` (with 16 lists) in `dir`, points 0..3000 written and trained.
fn trained_3000(dir: &std::path::Path, mut meta: CollectionMeta) -> Arc<C> {
    meta.index.nlist = 16;
    let c = Arc::new(
        C::create(
            &dir.join("p"),
            meta,
            quiver_engine::backend::cpu::CpuBackend,
            StoreConfig::default(),
        )
        .unwrap(),
    );
    upsert(&c, 0..3000);
    c.start_train(None).unwrap();
    c.wait_job().unwrap();
    c
}

/// Payload edits never move a point: on a codes-only collection (raw-vector kind "none", what
/// `REFINE_CODES` creates, where a point's stored vector is its PQ reconstruction), 20 edits of the same points leave what
/// `Get` returns bit for bit and every search answer as on an untouched control (before,
/// each edit re-encoded the reconstruction, which can land in another list or code).
#[test]
fn payload_edits_leave_vectors_and_answers_as_they_were() {
    let make = |dir: &std::path::Path| {
        let mut m = meta();
        m.index.refine = "none".into();
        trained_3000(dir, m)
    };
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (edited, control) = (make(d1.path()), make(d2.path()));
    let ids: Vec<u64> = (0..3000).step_by(7).collect();
    let before = edited.get_points(&ids);
    for round in 0..20 {
        let merge = payload::encode_text(&format!(r#"{{"round":{round}}}"#)).unwrap();
        edited
            .set_payload(ids.clone(), PayloadEdit::Merge(merge))
            .unwrap();
        if round % 5 == 4 {
            edited.checkpoint().unwrap();
        }
    }
    let after = edited.get_points(&ids);
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b.0, a.0);
        let (bb, ab): (Vec<u32>, Vec<u32>) = (
            b.1.iter().map(|x| x.to_bits()).collect(),
            a.1.iter().map(|x| x.to_bits()).collect(),
        );
        assert_eq!(bb, ab, "point {} moved", b.0);
    }
    assert_eq!(payload_of(&edited, 7)["round"], 19);
    let q: Vec<f32> = (0..50u64).flat_map(|i| vector(i * 61 + 5)).collect();
    let key = SearchKey {
        k: 10,
        nprobe: 4,
        refine_factor: 0,
    };
    let (a, b) = (
        edited.search(&q, 50, key).unwrap(),
        control.search(&q, 50, key).unwrap(),
    );
    for i in 0..50 {
        let mut x = a.ids_of(i).to_vec();
        let mut y = b.ids_of(i).to_vec();
        x.sort_unstable();
        y.sort_unstable();
        assert_eq!(x, y, "query {i}");
    }
}

/// The vectors as written survive edits and retrainings: on a collection created with refine
/// "none" (which keeps f32 vectors and re-ranks only the `k` returned), 20 payload edits and 3
/// forced retrainings leave `Get` returning the written vectors bit for bit (cosine: the
/// normalised ones, which normalising again leaves as they are), and every answer as on an
/// untouched control trained once (before, such a collection kept only codes: each edit and
/// retraining re-encoded PQ reconstructions and points drifted).
#[test]
fn vectors_as_written_survive_edits_and_retrainings() {
    for metric in ["l2", "cosine"] {
        let make = |dir: &std::path::Path| {
            let mut m = meta();
            m.metric = metric.into();
            m.index.refine_factor = 1;
            trained_3000(dir, m)
        };
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (edited, control) = (make(d1.path()), make(d2.path()));
        let all: Vec<u64> = (0..3000).collect();
        let written = control.get_points(&all);
        if metric == "l2" {
            for (id, v, _) in &written {
                let bits = |x: &[f32]| x.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(v), bits(&vector(*id)), "point {id} as written");
            }
        }
        let edits: Vec<u64> = (0..3000).step_by(7).collect();
        for round in 0..20 {
            let merge = payload::encode_text(&format!(r#"{{"round":{round}}}"#)).unwrap();
            edited
                .set_payload(edits.clone(), PayloadEdit::Merge(merge))
                .unwrap();
            if round % 7 == 6 || round == 19 {
                edited.start_train(None).unwrap();
                edited.wait_job().unwrap();
            }
        }
        let after = edited.get_points(&all);
        assert_eq!(after.len(), written.len());
        for (w, a) in written.iter().zip(&after) {
            assert_eq!(w.0, a.0);
            let (wb, ab): (Vec<u32>, Vec<u32>) = (
                w.1.iter().map(|x| x.to_bits()).collect(),
                a.1.iter().map(|x| x.to_bits()).collect(),
            );
            assert_eq!(wb, ab, "{metric}: point {} moved", w.0);
        }
        assert_eq!(payload_of(&edited, 7)["round"], 19);
        // Recall@10 against brute force over the written vectors: equal to the control's.
        let q: Vec<f32> = (0..100u64).flat_map(|i| vector(i * 61 + 100_000)).collect();
        let key = SearchKey {
            k: 10,
            nprobe: 4,
            refine_factor: 0,
        };
        let exact = SearchKey {
            k: 10,
            nprobe: 16,
            refine_factor: 300,
        };
        let truth = control.search(&q, 100, exact).unwrap();
        let recall = |n: &quiver_engine::backend::Neighbors| {
            let mut hits = 0;
            for i in 0..100 {
                let t: std::collections::HashSet<i64> = truth.ids_of(i).iter().copied().collect();
                hits += n.ids_of(i).iter().filter(|x| t.contains(x)).count();
            }
            hits as f64 / 1000.0
        };
        let (a, b) = (
            edited.search(&q, 100, key).unwrap(),
            control.search(&q, 100, key).unwrap(),
        );
        let (ra, rb) = (recall(&a), recall(&b));
        eprintln!("{metric}: recall@10 edited {ra:.3}, control {rb:.3}");
        assert_eq!(ra, rb, "{metric}: recall after edits and retrainings");
        for i in 0..100 {
            let mut x = a.ids_of(i).to_vec();
            let mut y = b.ids_of(i).to_vec();
            x.sort_unstable();
            y.sort_unstable();
            assert_eq!(x, y, "{metric}: query {i}");
        }
    }
}

/// Conditional upserts into a trained collection (rows encoded before the group decides):
/// the points let through are written with their own codes (each found by its own vector),
/// the others left bit for bit as they were.
#[test]
fn conditional_upserts_into_a_trained_collection_keep_each_rows_code() {
    use quiver_store::UpsertMode;
    let dir = tempfile::tempdir().unwrap();
    let c = trained_3000(dir.path(), meta());
    let before = c.get_points(&[3, 4]);
    let n = c
        .upsert_with_mode(
            vec![3, 50_000, 50_001],
            [vector(100), vector(50_000), vector(50_001)].concat(),
            Vec::new(),
            UpsertMode::InsertOnly,
        )
        .unwrap();
    assert_eq!(n, 2);
    let n = c
        .upsert_with_mode(
            vec![60_000, 4],
            [vector(60_000), vector(104)].concat(),
            Vec::new(),
            UpsertMode::UpdateOnly,
        )
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(c.get_points(&[3])[0].1, before[0].1, "insert-only left 3");
    assert!(c.get(&[60_000]).is_empty());
    let key = SearchKey {
        k: 1,
        nprobe: 16,
        refine_factor: 10,
    };
    for (id, v) in [
        (50_000u64, vector(50_000)),
        (50_001, vector(50_001)),
        (4, vector(104)),
    ] {
        assert_eq!(c.get(&[id])[0].1, v, "point {id}");
        assert_eq!(
            c.search(&v, 1, key).unwrap().ids[0],
            id as i64,
            "point {id}"
        );
    }
}

/// Qdrant's `UpdateVectors`: live points only, each keeping its stored payload with the
/// written keys set over it (a payload edit queued before it in the same group is kept);
/// what is logged replays to the same points.
#[test]
fn vector_updates_keep_the_stored_payload_and_replay() {
    use quiver_store::UpsertMode;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let c = C::create(
        &path,
        meta(),
        quiver_engine::backend::cpu::CpuBackend,
        StoreConfig::default(),
    )
    .unwrap();
    let p = |v: serde_json::Value| payload::encode(&v).unwrap();
    c.upsert_with_payloads(
        vec![1, 2],
        [vector(1), vector(2)].concat(),
        vec![p(serde_json::json!({"a": 1, "b": 2})), Vec::new()],
    )
    .unwrap();
    c.set_payload(vec![1], PayloadEdit::Merge(p(serde_json::json!({"e": 5}))))
        .unwrap();
    let n = c
        .upsert_with_mode(
            vec![1, 2, 99],
            [vector(101), vector(102), vector(199)].concat(),
            vec![
                p(serde_json::json!({"b": 3, "c": 4})),
                Vec::new(),
                p(serde_json::json!({"x": 1})),
            ],
            UpsertMode::UpdateVectors,
        )
        .unwrap();
    assert_eq!(n, 2, "the absent point is not created");
    let check = |c: &C| {
        assert!(c.get(&[99]).is_empty());
        assert_eq!(c.get(&[1])[0].1, vector(101));
        assert_eq!(c.get(&[2])[0].1, vector(102));
        assert_eq!(
            payload_of(c, 1),
            serde_json::json!({"a": 1, "b": 3, "c": 4, "e": 5})
        );
        assert!(c.get_points(&[2])[0].2.is_empty(), "no payload stays none");
    };
    check(&c);
    // An update whose merged payload would pass the limit is refused alone: nothing of it is
    // applied or logged, and writes go on.
    let big = "x".repeat(40_000);
    c.set_payload(
        vec![2],
        PayloadEdit::Merge(p(serde_json::json!({"big": big}))),
    )
    .unwrap();
    let e = c
        .upsert_with_mode(
            vec![2],
            vector(302),
            vec![p(serde_json::json!({"more": "y".repeat(30_000)}))],
            UpsertMode::UpdateVectors,
        )
        .unwrap_err();
    assert!(e.to_string().contains("point 2"), "{e}");
    assert_eq!(
        c.get(&[2])[0].1,
        vector(102),
        "the refused update left the vector"
    );
    c.set_payload(vec![2], PayloadEdit::DeleteKeys(vec!["big".into()]))
        .unwrap();
    c.close();
    drop(c);
    let c = C::open(
        &path,
        quiver_engine::backend::cpu::CpuBackend,
        StoreConfig::default(),
    )
    .unwrap();
    check(&c);
}
