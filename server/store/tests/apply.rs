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
            6 | 7 => {
                // Deletes of absent ids change nothing and are not logged.
                leader.delete(ids).unwrap();
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
    let mut follower = C::create(
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
    // Once fed by a log, the follower refuses other writes.
    let local = follower.upsert(vec![1], vector(1, 0));
    assert!(
        matches!(local, Err(StoreError::Precondition(_))),
        "{local:?}"
    );

    assert_eq!(follower.last_seq(), leader.last_seq());
    let (a, b) = (points(&leader), points(&follower));
    assert!(!a.is_empty());
    assert_eq!(a, b, "the follower's points differ from the leader's");
    let key = SearchKey {
        k: 10,
        nprobe: 0,
        refine_factor: 0,
    };
    let queries: Vec<f32> = (0..20).flat_map(|q| vector(q * 13, 1000)).collect();
    let (x, y) = (
        leader.search(&queries, 20, key).unwrap(),
        follower.search(&queries, 20, key).unwrap(),
    );
    assert_eq!(x.ids, y.ids);
    assert_eq!(
        x.distances.iter().map(|d| d.to_bits()).collect::<Vec<_>>(),
        y.distances.iter().map(|d| d.to_bits()).collect::<Vec<_>>()
    );
    // The follower's log holds the leader's ops under the leader's numbers.
    follower.close();
    assert_eq!(log_of(&fdir), log);
}
