//! Replicas fed one shard log on a real NATS JetStream server hold the same points and answer
//! bit-identically: through a retried (de-duplicated) write, the broker killed with SIGKILL
//! and restarted mid-stream, a replica started late from nothing, and a replica restarted
//! from its own files (it goes on from its last applied op), and a training logged mid-stream
//! (every replica switches to the same quantizers, read from the artifacts bucket, at its
//! number); a replica ahead of a re-created log stops with an error instead of applying it.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quiver_cluster::artifacts::Artifacts;
use quiver_cluster::{ClusterError, Follower, ShardLog, TrainEntry};
use quiver_engine::backend::cpu::CpuBackend;
use quiver_store::wal::Op;
use quiver_store::{Collection, CollectionMeta, IndexConfig, SearchKey, StoreConfig};

type C = Collection<CpuBackend>;

const DIM: usize = 8;

fn meta() -> CollectionMeta {
    CollectionMeta {
        name: "docs".into(),
        dim: DIM,
        metric: "l2".into(),
        ..CollectionMeta::default()
    }
}

fn vector(id: u64, version: u64) -> Vec<f32> {
    (0..DIM as u64)
        .map(|j| ((id * 131 + j * 17 + version * 7) % 1009) as f32 / 1009.0)
        .collect()
}

/// Write `i`: an upsert of 8 ids overlapping the last write's (so later writes overwrite),
/// every seventh a delete of 3 ids.
fn write(i: u64) -> Op {
    if i % 7 == 6 {
        return Op::Delete {
            ids: vec![i * 5, i * 5 + 1, i * 5 + 3],
        };
    }
    let ids: Vec<u64> = (i * 5..i * 5 + 8).collect();
    Op::Upsert {
        vectors: ids.iter().flat_map(|&id| vector(id, i)).collect(),
        payloads: ids
            .iter()
            .map(|id| format!("{{\"w\":{i},\"id\":{id}}}").into_bytes())
            .collect(),
        ids,
        dim: DIM,
    }
}

fn apply_to_model(model: &mut BTreeMap<u64, Vec<f32>>, op: &Op) {
    match op {
        Op::Upsert { ids, vectors, .. } => {
            for (r, id) in ids.iter().enumerate() {
                model.insert(*id, vectors[r * DIM..(r + 1) * DIM].to_vec());
            }
        }
        Op::Delete { ids } => {
            for id in ids {
                model.remove(id);
            }
        }
        _ => unreachable!(),
    }
}

/// Appends until the broker acknowledges (the same message id each time: applied once).
async fn append_acked(log: &ShardLog, id: &str, op: &Op) -> u64 {
    for _ in 0..100 {
        match log.append(id, op).await {
            Ok(a) => return a.seq,
            Err(ClusterError::Broker { .. }) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("append {id}: {e}"),
        }
    }
    panic!("append {id}: the broker never acknowledged");
}

async fn wait(f: &mut Follower, seq: u64) {
    tokio::time::timeout(Duration::from_secs(60), f.wait_for(seq))
        .await
        .expect("the replica did not catch up in 60 s")
        .expect("the follower stopped");
}

fn replica(dir: &Path) -> Arc<C> {
    Arc::new(C::create_replica(dir, meta(), CpuBackend, StoreConfig::default()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_fed_one_log_hold_the_same_points_through_broker_and_replica_restarts() {
    let Some(mut nats) = common::NatsServer::start() else {
        return;
    };
    let js = nats.jetstream().await;
    let log = ShardLog::open(&js, "docs", 1, 0, 1).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (pa, pb) = (tmp.path().join("a"), tmp.path().join("b"));
    let artifacts = Artifacts::open(&js, 1).await.unwrap();
    let a = replica(&pa);
    let mut follow_a = Follower::start(log.clone(), a.clone(), artifacts.clone());
    let mut model = BTreeMap::new();
    let mut seqs = Vec::new();
    for i in 0..60 {
        let op = write(i);
        seqs.push(append_acked(&log, &format!("w{i}"), &op).await);
        apply_to_model(&mut model, &op);
    }
    // Gap-free numbers, one per write.
    assert_eq!(seqs, (1..=60).collect::<Vec<u64>>());
    // A write retried after its acknowledgement was lost: the first one's number, nothing new.
    let again = log.append("w10", &write(10)).await.unwrap();
    assert!(again.duplicate && again.seq == 11, "{again:?}");
    wait(&mut follow_a, 60).await;

    // The broker is killed mid-stream: a write in flight fails (or is held by the client);
    // retried with its id after the restart, it is applied once.
    nats.kill();
    let down = tokio::time::timeout(Duration::from_secs(15), log.append("w60", &write(60))).await;
    assert!(
        !matches!(down, Ok(Ok(_))),
        "a write was acknowledged by a dead broker"
    );
    nats.restart();
    for i in 60..120 {
        let op = write(i);
        append_acked(&log, &format!("w{i}"), &op).await;
        apply_to_model(&mut model, &op);
    }

    // A training logged as a shard's training leader logs it: quantizers trained on A's
    // points, stored as an artifact, then the switch appended.
    wait(&mut follow_a, 120).await;
    let trainer = a.clone();
    let quantizers = tokio::task::spawn_blocking(move || {
        trainer.train_quantizers(Some(IndexConfig {
            nlist: 8,
            pq_m: 4,
            // The vectors kept as written (compared bit for bit below).
            refine: "f32".into(),
            ..IndexConfig::default()
        }))
    })
    .await
    .unwrap()
    .unwrap();
    let file = tmp.path().join("quantizers.qvr");
    quiver_engine::persist::save(&quantizers, &file).unwrap();
    let object = format!("{}.t1", log.stream());
    let bytes = artifacts.put_file(&object, &file).await.unwrap();
    let train = TrainEntry { object, bytes };
    assert_eq!(log.append_train("t1", &train).await.unwrap().seq, 121);
    assert!(!a.trained());

    // A replica started late from nothing, and A restarted from its own files meanwhile.
    let b = replica(&pb);
    let mut follow_b = Follower::start(log.clone(), b.clone(), artifacts.clone());
    follow_a.stop().await.unwrap();
    let stopped_at = a.last_seq();
    drop(a);
    let a = Arc::new(C::open(&pa, CpuBackend, StoreConfig::default()).unwrap());
    assert_eq!(a.last_seq(), stopped_at);
    let mut follow_a = Follower::start(log.clone(), a.clone(), artifacts.clone());
    for i in 120..150 {
        let op = write(i);
        append_acked(&log, &format!("w{i}"), &op).await;
        apply_to_model(&mut model, &op);
    }
    let (first, last) = log.bounds().await.unwrap();
    assert_eq!((first, last), (1, 151));
    wait(&mut follow_a, last).await;
    wait(&mut follow_b, last).await;
    assert_eq!((a.last_seq(), b.last_seq()), (151, 151));
    // Both switched to the logged quantizers (searched through IVF-PQ below).
    assert!(a.trained() && b.trained());
    assert_eq!(a.meta().index.nlist, 8);

    // Both hold exactly the model's points, bit for bit, and answer identically.
    let ids: Vec<u64> = (0..160 * 5).collect();
    for c in [&a, &b] {
        let got: BTreeMap<u64, Vec<f32>> = c.get(&ids).into_iter().collect();
        assert_eq!(got.len(), model.len());
        for (id, v) in &model {
            let g = &got[id];
            assert!(
                g.iter().zip(v).all(|(x, y)| x.to_bits() == y.to_bits()),
                "point {id} differs"
            );
        }
    }
    let queries: Vec<f32> = (0..20).flat_map(|q| vector(q * 37, 3)).collect();
    let key = SearchKey {
        k: 10,
        nprobe: 0,
        refine_factor: 0,
    };
    let (ra, rb) = (
        a.search(&queries, 20, key).unwrap(),
        b.search(&queries, 20, key).unwrap(),
    );
    assert_eq!(ra.ids, rb.ids);
    assert!(ra
        .distances
        .iter()
        .zip(&rb.distances)
        .all(|(x, y)| x.to_bits() == y.to_bits()));
    follow_a.stop().await.unwrap();
    follow_b.stop().await.unwrap();

    // The log lost or re-created under its name (a broker's unsynced tail lost, an operator's
    // `stream rm`): a replica ahead of it stops instead of taking its new entries as its
    // next ones, and the error says so.
    log.delete().await.unwrap();
    let log = ShardLog::open(&js, "docs", 1, 0, 1).await.unwrap();
    log.append("new-1", &write(0)).await.unwrap();
    let follow_a = Follower::start(log.clone(), a.clone(), artifacts.clone());
    let stopped = tokio::time::timeout(Duration::from_secs(30), async {
        while !follow_a.has_stopped() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        stopped.is_ok(),
        "the follower went on over a re-created log"
    );
    assert!(matches!(
        follow_a.stop().await,
        Err(ClusterError::Behind {
            last: 1,
            wanted: 152,
            ..
        })
    ));
    assert_eq!(a.last_seq(), 151);
}
