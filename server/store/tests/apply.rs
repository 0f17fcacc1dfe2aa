//! A collection fed another's log through `Collection::apply` ends in the same state: the
//! leader takes writes as a server would, its write-ahead log is read back as (number, op)
//! pairs — gap-free, one number per logged op — and a follower applies them in batches of
//! random sizes, with redeliveries, a restart in the middle and a refused gap. Both then hold
//! the same points and payloads and give the same exact answers, and the follower's log
//! holds the leader's ops under the leader's numbers.

mod common;

use std::path::Path;

use common::{small_meta, Rng};
use quiver_engine::backend::cpu::CpuBackend;
use quiver_engine::payload;
use quiver_engine::payload::fields::{FieldSpec, FieldType};
use quiver_store::segment::SearchKey;
use quiver_store::wal::{self, Op, PayloadEdit};
use quiver_store::{Collection, StoreConfig, StoreError};

type C = Collection<CpuBackend>;

const DIM: usize = 8;

fn vector(id: u64, step: u64) -> Vec<f32> {
    (0..DIM as u64)
        .map(|j| ((id * 37 + j * 11 + step * 5) % 89) as f32 / 89.0)
        .collect()
}

/// The leader's log, read back from its folder.
fn log_of(dir: &Path) -> Vec<(u64, Op)> {
    let mut out = Vec::new();
    wal::replay(&dir.join("wal"), 1, false, |lsn, op| {
        out.push((lsn, op));
        Ok(())
    })
    .unwrap();
    out
}

fn points(c: &C) -> Vec<(u64, Vec<f32>, Vec<u8>)> {
    let mut all = Vec::new();
    let mut offset = None;
    loop {
        let (page, next) = c.scroll(None, offset, 100);
        let ids: Vec<u64> = page.iter().map(|p| p.0).collect();
        all.extend(c.get_points(&ids));
        match next {
            Some(n) => offset = Some(n),
            None => return all,
        }
    }
}

/// Both collections answer `nq` queries (`vector(q * mul, step)`) at `nprobe` with the same
/// ids and bit-identical distances.
fn assert_same_answers(a: &C, b: &C, nprobe: usize, nq: u64, mul: u64, step: u64) {
    let key = SearchKey {
        k: 10,
        nprobe,
        refine_factor: 0,
    };
    let queries: Vec<f32> = (0..nq).flat_map(|q| vector(q * mul, step)).collect();
    let (x, y) = (
        a.search(&queries, nq as usize, key).unwrap(),
        b.search(&queries, nq as usize, key).unwrap(),
    );
    assert_eq!(x.ids, y.ids, "the collections answer differently");
    assert_eq!(
        x.distances.iter().map(|d| d.to_bits()).collect::<Vec<_>>(),
        y.distances.iter().map(|d| d.to_bits()).collect::<Vec<_>>()
    );
}

#[test]
fn a_follower_fed_the_leaders_log_ends_in_its_state() {
    let tmp = tempfile::tempdir().unwrap();
    let leader = C::create(
        &tmp.path().join("l"),
        small_meta("r", DIM, 0),
        CpuBackend,
        StoreConfig::default(),
    )
    .unwrap();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for step in 0..300u64 {
        let ids: Vec<u64> = {
            let mut v: Vec<u64> = (0..1 + rng.below(20)).map(|_| rng.below(500)).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        match rng.below(10) {
            0..=5 => {
                let vectors = ids.iter().flat_map(|&i| vector(i, step)).collect();
                let payloads = ids
                    .iter()
                    .map(|&i| {
                        payload::encode_text(&format!(r#"{{"g":{},"s":{step}}}"#, i % 5)).unwrap()
                    })
                    .collect();
                leader.upsert_with_payloads(ids, vectors, payloads).unwrap();
            }
            6 => {
                // Deletes of absent ids change nothing and are not logged.
                leader.delete(ids).unwrap();
            }
            7 => {
                // Field indexes and settings are ops of the log too.
                let key = ["g", "e", "s"][rng.below(3) as usize];
                if rng.below(3) == 0 {
                    leader.delete_field_index(key).unwrap();
                } else {
                    leader
                        .create_field_index(FieldSpec {
                            key: key.into(),
                            kind: FieldType::Integer,
                        })
                        .unwrap();
                }
                leader
                    .update_settings(|s, _| *s = serde_json::json!({ "step": step }))
                    .unwrap();
            }
            8 => {
                let edit = PayloadEdit::Merge(
                    payload::encode_text(&format!(r#"{{"e":{step}}}"#)).unwrap(),
                );
                leader.set_payload(ids, edit).unwrap();
            }
            _ => {
                let g = rng.below(5);
                leader
                    .delete_filter(&format!(
                        r#"{{"must":[{{"key":"g","match":{{"value":{g}}}}}]}}"#
                    ))
                    .unwrap();
            }
        }
    }
    let log = log_of(leader.dir());
    // Gap-free: one number per logged op, from 1.
    for (i, (lsn, _)) in log.iter().enumerate() {
        assert_eq!(*lsn, i as u64 + 1, "the leader's log numbers have a gap");
    }
    assert_eq!(leader.last_seq(), log.len() as u64);
    // Deletes by filter were logged as the ids they deleted.
    assert!(log
        .iter()
        .all(|(_, op)| !matches!(op, Op::DeleteFilter { .. })));

    let fdir = tmp.path().join("f");
    let mut follower = C::create_replica(
        &fdir,
        small_meta("r", DIM, 0),
        CpuBackend,
        StoreConfig::default(),
    )
    .unwrap();
    let mut next = 1u64;
    let mut restarted = false;
    while (next as usize) <= log.len() {
        // A redelivery of up to 3 ops already applied, then up to 40 new ones.
        let back = rng.below(4).min(next - 1);
        let from = next - back;
        let to = (from + back + 1 + rng.below(40)).min(log.len() as u64 + 1);
        let ops: Vec<Op> = log[(from - 1) as usize..(to - 1) as usize]
            .iter()
            .map(|(_, op)| op.clone())
            .collect();
        let n = ops.len();
        let done = follower.apply(from, ops).unwrap();
        assert_eq!(done.skipped, back as usize);
        assert_eq!(done.changed.len(), n - back as usize);
        assert_eq!(done.last_seq, to - 1);
        next = to;
        if !restarted && next as usize > log.len() / 2 {
            // A restart: the follower resumes after its last applied op.
            restarted = true;
            follower.close();
            drop(follower);
            follower = C::open(&fdir, CpuBackend, StoreConfig::default()).unwrap();
            assert_eq!(follower.last_seq(), next - 1);
            // A gap is refused and changes nothing.
            let gap = follower.apply(next + 1, vec![Op::Delete { ids: vec![1] }]);
            assert!(
                matches!(&gap, Err(StoreError::Precondition(m)) if m.contains("missing")),
                "{gap:?}"
            );
        }
    }
    // A replica refuses other writes, and a collection that is not one refuses the log.
    let local = follower.upsert(vec![1], vector(1, 0));
    assert!(
        matches!(local, Err(StoreError::Precondition(_))),
        "{local:?}"
    );
    let not_replica = leader.apply(leader.last_seq() + 1, vec![Op::Delete { ids: vec![1] }]);
    assert!(
        matches!(&not_replica, Err(StoreError::Precondition(m)) if m.contains("replica")),
        "{not_replica:?}"
    );

    assert_eq!(follower.last_seq(), leader.last_seq());
    assert!(log.iter().any(|(_, op)| matches!(op, Op::Describe(_))));
    assert_eq!(follower.meta(), {
        let mut m = leader.meta();
        m.name = "r".into();
        m
    });
    let (a, b) = (points(&leader), points(&follower));
    assert!(!a.is_empty());
    assert_eq!(a, b, "the follower's points differ from the leader's");
    assert_same_answers(&leader, &follower, 0, 20, 13, 1000);
    // The follower's log holds the leader's ops under the leader's numbers.
    follower.close();
    assert_eq!(log_of(&fdir), log);
}

/// An entry of a replicated collection's log: an op, or a training its leader decided.
enum Entry {
    Op(Op),
    Train(quiver_engine::index::IvfPqIndex),
}

fn some_ids(rng: &mut Rng, n: u64, below: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..1 + rng.below(n)).map(|_| rng.below(below)).collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn random_op(rng: &mut Rng, step: u64) -> Op {
    match rng.below(10) {
        0..=6 => {
            let ids = some_ids(rng, 40, 3000);
            Op::Upsert {
                vectors: ids.iter().flat_map(|&i| vector(i, step)).collect(),
                payloads: ids
                    .iter()
                    .map(|&i| {
                        payload::encode_text(&format!(r#"{{"g":{},"s":{step}}}"#, i % 5)).unwrap()
                    })
                    .collect(),
                ids,
                dim: DIM,
            }
        }
        7 | 8 => Op::Delete {
            ids: some_ids(rng, 10, 3000),
        },
        _ => Op::SetPayload {
            ids: some_ids(rng, 10, 3000),
            edit: PayloadEdit::Merge(payload::encode_text(&format!(r#"{{"e":{step}}}"#)).unwrap()),
        },
    }
}

/// Feeds `log` (entry `i` numbered `i + 1`) to the collection in `slot` from its last
/// number on, in batches of up to `batch` ops, restarting it once past each entry in
/// `restarts`; returns how many restarts it made.
fn feed(
    slot: &mut C,
    dir: &Path,
    log: &[Entry],
    batch: u64,
    restarts: &[u64],
    cfg: &StoreConfig,
) -> usize {
    let mut next = slot.last_seq() + 1;
    let mut pending: Vec<u64> = restarts.to_vec();
    let mut made = 0;
    while (next as usize) <= log.len() {
        match &log[next as usize - 1] {
            Entry::Train(q) => {
                let done = slot.apply_train(next, q).unwrap();
                assert_eq!(done.last_seq, next);
                next += 1;
            }
            Entry::Op(_) => {
                let mut ops = Vec::new();
                while (next as usize + ops.len()) <= log.len() && (ops.len() as u64) < batch {
                    match &log[next as usize - 1 + ops.len()] {
                        Entry::Op(op) => ops.push(op.clone()),
                        Entry::Train(_) => break,
                    }
                }
                let n = ops.len() as u64;
                assert_eq!(slot.apply(next, ops).unwrap().last_seq, next + n - 1);
                next += n;
            }
        }
        if pending.iter().any(|&r| r < next) {
            pending.retain(|&r| r >= next);
            slot.close();
            *slot = C::open(dir, CpuBackend, cfg.clone()).unwrap();
            assert_eq!(slot.last_seq(), next - 1);
            made += 1;
        }
    }
    made
}

#[test]
fn replicas_switch_to_the_leaders_training_at_its_number() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let a_cfg = StoreConfig::default();
    // The other replica seals, merges and purges often.
    let b_cfg = StoreConfig {
        seal_rows: 64,
        merge_factor: 2,
        max_segments: 3,
        checkpoint_wal_bytes: 16 << 10,
        ..StoreConfig::default()
    };
    let (adir, bdir) = (tmp.path().join("a"), tmp.path().join("b"));
    let mut a =
        C::create_replica(&adir, small_meta("a", DIM, 0), CpuBackend, a_cfg.clone()).unwrap();
    let mut b =
        C::create_replica(&bdir, small_meta("b", DIM, 0), CpuBackend, b_cfg.clone()).unwrap();
    let mut log: Vec<Entry> = (0..120u64)
        .map(|s| Entry::Op(random_op(&mut rng, s)))
        .collect();
    // The leader (here, replica a once it applied everything so far) trains, and logs it.
    assert_eq!(feed(&mut a, &adir, &log, 25, &[], &a_cfg), 0);
    let q = a.train_quantizers(None).unwrap();
    log.push(Entry::Train(q));
    log.extend((120..240u64).map(|s| Entry::Op(random_op(&mut rng, s))));
    // A second training later (a retraining), on what the replicas hold then.
    assert_eq!(feed(&mut a, &adir, &log, 25, &[], &a_cfg), 0);
    let q = a.train_quantizers(None).unwrap();
    log.push(Entry::Train(q));
    log.extend((240..300u64).map(|s| Entry::Op(random_op(&mut rng, s))));
    assert_eq!(feed(&mut a, &adir, &log, 25, &[], &a_cfg), 0);
    // Replica b: other batches, its optimizer stepping between them, restarts around the
    // first training.
    let trained_at = log
        .iter()
        .position(|e| matches!(e, Entry::Train(_)))
        .unwrap() as u64
        + 1;
    let restarts = feed(
        &mut b,
        &bdir,
        &log,
        7,
        &[trained_at - 1, trained_at, 200],
        &b_cfg,
    );
    assert_eq!(restarts, 3);
    let b = std::sync::Arc::new(b);
    while b.optimize_step().unwrap() {}
    assert!(a.trained() && b.trained());
    assert_eq!(a.last_seq(), log.len() as u64);
    assert_eq!(b.last_seq(), log.len() as u64);
    assert!(
        b.version().segments.len() > 1,
        "replica b should differ in layout"
    );
    assert_eq!(points(&a), points(&b), "the replicas' points differ");
    assert_same_answers(&a, &b, 2, 50, 7, 999);
    // A replica trains only when its log says so.
    assert!(matches!(
        b.start_train(None),
        Err(StoreError::Precondition(_))
    ));
}

#[test]
fn a_new_replica_starts_from_a_snapshot_and_goes_on_with_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x51ed_270b_2705_3a1f);
    let cfg = StoreConfig {
        seal_rows: 100,
        ..StoreConfig::default()
    };
    let adir = tmp.path().join("a");
    let mut a = C::create_replica(&adir, small_meta("a", DIM, 0), CpuBackend, cfg.clone()).unwrap();
    let mut log: Vec<Entry> = (0..100u64)
        .map(|s| Entry::Op(random_op(&mut rng, s)))
        .collect();
    feed(&mut a, &adir, &log, 30, &[], &cfg);
    log.push(Entry::Train(a.train_quantizers(None).unwrap()));
    log.extend((100..150u64).map(|s| Entry::Op(random_op(&mut rng, s))));
    feed(&mut a, &adir, &log, 30, &[], &cfg);
    // Replica a writes a snapshot; writes, merges and checkpoints go on after it.
    let snap = tmp.path().join("snapshot");
    let covered = a.export_snapshot(&snap).unwrap();
    assert_eq!(covered, log.len() as u64);
    let at_snapshot = points(&a);
    assert!(matches!(
        a.export_snapshot(&snap),
        Err(StoreError::Precondition(_))
    ));
    log.extend((150..250u64).map(|s| Entry::Op(random_op(&mut rng, s))));
    feed(&mut a, &adir, &log, 30, &[], &cfg);
    let a = std::sync::Arc::new(a);
    while a.optimize_step().unwrap() {}
    a.checkpoint().unwrap();
    // A new replica from the snapshot, then the log from the number after it.
    let cdir = tmp.path().join("c");
    let mut c = C::create_from_snapshot(&snap, &cdir, CpuBackend, cfg.clone()).unwrap();
    assert_eq!(c.last_seq(), covered);
    assert!(c.trained());
    feed(&mut c, &cdir, &log, 13, &[200], &cfg);
    assert_eq!(c.last_seq(), a.last_seq());
    assert_eq!(points(&a), points(&c), "the new replica's points differ");
    assert_same_answers(&a, &c, 2, 30, 11, 777);
    // The snapshot still opens as it was (its files outlive the ones replica a removed).
    drop(c);
    let again = C::create_from_snapshot(&snap, &tmp.path().join("d"), CpuBackend, cfg).unwrap();
    assert_eq!(again.last_seq(), covered);
    assert_eq!(points(&again), at_snapshot);
}
