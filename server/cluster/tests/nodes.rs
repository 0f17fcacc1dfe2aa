//! Nodes of a cluster on a real NATS JetStream server: a collection of 2 shards × 2 replicas
//! on 3 nodes is placed the same on every node, racing creates of one name give exactly one
//! collection, writes taken by any node are split by shard and reach every replica of their
//! shard with the same numbers and bits, a bad write is refused before it enters the log, any
//! node's Get, Count and exact search equal a model of the acknowledged writes (brute force),
//! reads go on while a node is down, a dropped and re-created collection starts empty, a
//! restarted node goes on from its own files and a node whose folder was deleted catches up
//! from the logs; once a shard's snapshot is exported and its log trimmed below it, a node
//! whose replica the log no longer covers, or whose folder was deleted, starts from the
//! snapshot and the log after it; in the background (`snapshot_every`) snapshots are exported
//! and the log trimmed without being asked. A training is refused with too few points; one
//! that runs switches every replica of each shard at one number of its log, and a shard's
//! replicas then answer identically.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use quiver_cluster::placement::shard_of;
use quiver_cluster::{CatalogEntry, CatalogLog, ClusterError, Node, SearchRequest, WriteToken};
use quiver_engine::backend::cpu::CpuBackend;
use quiver_store::wal::Op;
use quiver_store::{CollectionMeta, CollectionsFolder, IndexConfig, StoreConfig, StoreError};

const DIM: usize = 4;

fn meta(name: &str) -> CollectionMeta {
    CollectionMeta {
        name: name.into(),
        dim: DIM,
        metric: "l2".into(),
        ..CollectionMeta::default()
    }
}

/// A point's vector in write `version`: pseudo-random, so distances do not tie.
fn vector(id: u64, version: u64) -> Vec<f32> {
    (0..DIM as u64)
        .map(|j| {
            let mut z = (id * 31 + j * 7 + version * 1_000_003).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z ^= z >> 29;
            (z % 1_000_000) as f32 / 1_000_000.0
        })
        .collect()
}

fn upsert(ids: &[u64], version: u64) -> Op {
    Op::Upsert {
        ids: ids.to_vec(),
        vectors: ids.iter().flat_map(|&id| vector(id, version)).collect(),
        dim: DIM,
        payloads: Vec::new(),
    }
}

async fn node(nats: &common::NatsServer, dir: &Path, id: &str) -> Node<CpuBackend> {
    let folder = CollectionsFolder::open(dir).unwrap();
    Node::start(
        nats.jetstream().await,
        folder,
        CpuBackend,
        StoreConfig::default(),
        1,
        id,
    )
    .await
    .unwrap()
}

/// What a replica holds: id → vector bits.
async fn replica_points(n: &Node<CpuBackend>, name: &str, shard: u32) -> BTreeMap<u64, Vec<u32>> {
    let c = n.replica(name, shard).await.expect("held");
    let ids: Vec<u64> = (0..400).collect();
    c.get(&ids)
        .into_iter()
        .map(|(id, v)| (id, v.iter().map(|x| x.to_bits()).collect()))
        .collect()
}

/// The model's points of one shard.
fn of_shard(model: &BTreeMap<u64, Vec<f32>>, shard: u32) -> BTreeMap<u64, Vec<u32>> {
    model
        .iter()
        .filter(|(id, _)| shard_of(**id, 2) == shard)
        .map(|(id, v)| (*id, v.iter().map(|x| x.to_bits()).collect()))
        .collect()
}

/// The exact `k` nearest (squared L2) of `q` in the model, by distance then id.
fn brute_force(model: &BTreeMap<u64, Vec<f32>>, q: &[f32], k: usize) -> Vec<u64> {
    let mut all: Vec<(f32, u64)> = model
        .iter()
        .map(|(id, v)| (v.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum(), *id))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    all.into_iter().take(k).map(|(_, id)| id).collect()
}

/// Checks every node's Get, Count and search against the model.
async fn reads_match(
    nodes: &[&Node<CpuBackend>],
    model: &BTreeMap<u64, Vec<f32>>,
    after: &WriteToken,
) {
    let t = Duration::from_secs(10);
    let ids: Vec<u64> = (0..400).collect();
    let queries: Vec<f32> = (0..8).flat_map(|q| vector(10_000 + q, 7)).collect();
    for n in nodes {
        let got = n.get("docs", &ids, Some(after), t).await.unwrap();
        let got: BTreeMap<u64, Vec<f32>> = got.into_iter().map(|p| (p.id, p.vector)).collect();
        assert_eq!(&got, model, "Get on {}", n.id());
        assert_eq!(
            n.count("docs", None, Some(after), t).await.unwrap(),
            model.len() as u64
        );
        let found = n
            .search(
                "docs",
                SearchRequest {
                    queries: queries.clone(),
                    nq: 8,
                    k: 10,
                    after: Some(after.clone()),
                    ..SearchRequest::default()
                },
                t,
            )
            .await
            .unwrap();
        for (q, f) in found.iter().enumerate() {
            let want = brute_force(model, &queries[q * DIM..(q + 1) * DIM], 10);
            assert_eq!(
                f.iter().map(|x| x.0).collect::<Vec<_>>(),
                want,
                "search on {}, query {q}",
                n.id()
            );
        }
    }
}

/// Writes batch `i` of `batches` (9 points from id 5i, version i) to "docs" through
/// `nodes[i % len]`, into the model too; the writes' token.
async fn write_batches(
    nodes: &[&Node<CpuBackend>],
    batches: std::ops::Range<u64>,
    model: &mut BTreeMap<u64, Vec<f32>>,
) -> WriteToken {
    let mut token = WriteToken::default();
    for i in batches {
        let ids: Vec<u64> = (i * 5..i * 5 + 9).collect();
        let t = nodes[i as usize % nodes.len()]
            .write("docs", &format!("w{i}"), upsert(&ids, i))
            .await
            .unwrap();
        ids.iter().for_each(|&id| {
            model.insert(id, vector(id, i));
        });
        token.shards.extend(t.shards);
    }
    token
}

/// Waits (up to 30 s) until `cond` holds.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut cond: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_replicated_collections_through_any_node() {
    let Some(nats) = common::NatsServer::start() else {
        return;
    };
    // A hang is a failure, not a stuck CI job.
    tokio::time::timeout(Duration::from_secs(150), scenario(&nats))
        .await
        .expect("the scenario did not end within 150 s");
}

async fn scenario(nats: &common::NatsServer) {
    let tmp = tempfile::tempdir().unwrap();

    let a = node(nats, &tmp.path().join("a"), "a").await;
    let b = node(nats, &tmp.path().join("b"), "b").await;
    let c = node(nats, &tmp.path().join("c"), "c").await;
    for n in [&a, &b, &c] {
        eventually("every node sees the others up", || async {
            n.live_nodes().len() == 3
        })
        .await;
    }

    // Created on A with 2 shards of 2 replicas: placed on distinct nodes, the same on all.
    let docs = a.create_collection(meta("docs"), 2, 2).await.unwrap();
    assert_eq!(docs.placement, vec![vec!["a", "b"], vec!["c", "a"]]);
    for n in [&b, &c] {
        n.sync_catalog().await.unwrap();
        assert_eq!(n.topology().get("docs"), Some(&docs));
    }
    assert_eq!(
        a.held().await,
        [("docs".to_string(), 0), ("docs".to_string(), 1)]
    );
    assert_eq!(b.held().await, [("docs".to_string(), 0)]);
    assert_eq!(c.held().await, [("docs".to_string(), 1)]);
    assert!(matches!(
        b.create_collection(meta("docs"), 1, 1).await,
        Err(ClusterError::Exists(_))
    ));
    // Descriptions and placements no node could serve are refused before they enter the log.
    let before = a.sync_catalog().await.unwrap();
    let mut bad = meta("flat");
    bad.dim = 0;
    assert!(matches!(
        a.create_collection(bad, 1, 1).await,
        Err(ClusterError::Store(StoreError::Invalid {
            field: "dim",
            ..
        }))
    ));
    assert!(matches!(
        a.create_collection(meta("wide"), 1, 4).await,
        Err(ClusterError::Store(StoreError::Invalid {
            field: "replication_factor",
            ..
        }))
    ));
    assert!(matches!(
        a.create_collection(meta("none"), 0, 1).await,
        Err(ClusterError::Store(StoreError::Invalid {
            field: "shard_number",
            ..
        }))
    ));
    assert_eq!(a.sync_catalog().await.unwrap(), before);
    // The catalog's compare-and-set: of two appends checked against the same last entry,
    // the second is refused (the log never holds a create its writer did not check).
    let catalog = CatalogLog::open(&nats.jetstream().await, 1).await.unwrap();
    let create = |name: &str| CatalogEntry::Create {
        meta: meta(name),
        placement: vec![vec!["a".into()]],
    };
    let first = catalog
        .append_after(before, "cas-1", &create("cas"))
        .await
        .unwrap();
    assert_eq!(first.map(|a| a.seq), Some(before + 1));
    assert!(catalog
        .append_after(before, "cas-2", &create("cas"))
        .await
        .unwrap()
        .is_none());
    // A repeat of the first (its answer lost) is refused too, and the entry tells it is its
    // own (what a node's retry checks).
    let again = catalog
        .append_after(before, "cas-1", &create("cas"))
        .await
        .unwrap();
    assert!(again.is_none(), "{again:?}");
    assert!(catalog.is_entry(before + 1, "cas-1").await.unwrap());
    assert!(!catalog.is_entry(before + 1, "cas-2").await.unwrap());
    assert!(!catalog.is_entry(before + 5, "cas-1").await.unwrap());
    a.drop_collection("cas").await.unwrap();
    // Two nodes creating one name at once: exactly one wins.
    let (ra, rb) = tokio::join!(
        a.create_collection(meta("race"), 1, 3),
        b.create_collection(meta("race"), 1, 3)
    );
    assert_eq!(
        [ra.is_ok(), rb.is_ok()].iter().filter(|x| **x).count(),
        1,
        "{ra:?} {rb:?}"
    );
    assert!(matches!(
        ra.err().or(rb.err()),
        Some(ClusterError::Exists(_))
    ));

    // Writes taken by every node, interleaved; the model is what was acknowledged.
    let mut model: BTreeMap<u64, Vec<f32>> = BTreeMap::new();
    let mut tokens = Vec::new();
    for i in 0..45u64 {
        let ids: Vec<u64> = (i * 5..i * 5 + 9).collect();
        let n = [&a, &b, &c][i as usize % 3];
        let op = if i % 9 == 8 {
            Op::Delete {
                ids: ids[..4].to_vec(),
            }
        } else {
            upsert(&ids, i)
        };
        let token = n.write("docs", &format!("w{i}"), op).await.unwrap();
        match i % 9 {
            8 => ids[..4].iter().for_each(|id| {
                model.remove(id);
            }),
            _ => ids.iter().for_each(|&id| {
                model.insert(id, vector(id, i));
            }),
        }
        tokens.push(token);
    }
    // Both shards got writes, numbered from 1 without gaps in each.
    let last = |s: u32| {
        tokens
            .iter()
            .map(|t: &WriteToken| t.seq_of(s))
            .max()
            .unwrap()
    };
    assert!(last(0) > 10 && last(1) > 10, "{tokens:?}");
    let all = WriteToken {
        incarnation: docs.incarnation,
        shards: vec![(0, last(0)), (1, last(1))],
    };
    // Checked before it enters the log: nothing appended.
    let bad = Op::Upsert {
        ids: vec![1],
        vectors: vec![0.0; DIM + 1],
        dim: DIM + 1,
        payloads: Vec::new(),
    };
    assert!(matches!(
        a.write("docs", "bad", bad).await,
        Err(ClusterError::Store(StoreError::Invalid {
            field: "vectors",
            ..
        }))
    ));
    assert!(matches!(
        a.write("nope", "x", upsert(&[1], 0)).await,
        Err(ClusterError::NotFound(_))
    ));
    // A retried write (same message id) is applied once.
    let again = a
        .write("docs", "w3", upsert(&(15..24).collect::<Vec<_>>(), 3))
        .await
        .unwrap();
    assert!(again.shards.iter().all(|&(s, q)| q <= last(s)), "{again:?}");

    for n in [&a, &b, &c] {
        n.wait_applied("docs", &all, Duration::from_secs(20))
            .await
            .unwrap();
    }
    // Every replica holds exactly its shard's points, bit for bit.
    eventually("every replica has applied every write", || async {
        a.applied("docs", 0).await == Some(last(0))
            && b.applied("docs", 0).await == Some(last(0))
            && a.applied("docs", 1).await == Some(last(1))
            && c.applied("docs", 1).await == Some(last(1))
    })
    .await;
    for (n, s) in [(&a, 0), (&b, 0), (&a, 1), (&c, 1)] {
        assert_eq!(
            replica_points(n, "docs", s).await,
            of_shard(&model, s),
            "{} shard {s}",
            n.id()
        );
    }
    reads_match(&[&a, &b, &c], &model, &all).await;
    // B holds no replica of shard 1: its reads of it went to A or C.
    assert!(b
        .routed()
        .iter()
        .any(|((_, s, node), _)| *s == 1 && node != "b"));

    // Dropped on B and re-created on A: the new one starts empty (its own logs).
    a.write("race", "r1", upsert(&[1, 2, 3], 0)).await.unwrap();
    let old = a.topology().get("race").unwrap().incarnation;
    let old_folder = format!("race.{old}.0");
    assert!(tmp.path().join("a").join(&old_folder).exists());
    b.drop_collection("race").await.unwrap();
    assert!(matches!(
        b.drop_collection("race").await,
        Err(ClusterError::NotFound(_))
    ));
    // Every node removed its replica of the dropped one, and its log is gone: a write
    // racing the drop cannot bring it back.
    for (n, dir) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        n.sync_catalog().await.unwrap();
        assert!(!tmp.path().join(dir).join(&old_folder).exists(), "{dir}");
    }
    let js = nats.jetstream().await;
    assert!(quiver_cluster::ShardLog::open_existing(&js, "race", old, 0)
        .await
        .unwrap()
        .is_none());
    a.create_collection(meta("race"), 1, 3).await.unwrap();
    for n in [&a, &b, &c] {
        n.sync_catalog().await.unwrap();
        assert_eq!(
            n.count("race", None, None, Duration::from_secs(5))
                .await
                .unwrap(),
            0
        );
    }

    // Too few points per shard to train: refused before any replica switches, saying why.
    let refused = b.train("docs", None, Duration::from_secs(20)).await;
    assert!(
        matches!(&refused, Err(ClusterError::Store(StoreError::Precondition(m))) if m.contains("training needs")),
        "{refused:?}"
    );

    // A trained collection: each shard's training leader logs its quantizers, every replica
    // switches at that number (writes after it are encoded with them), and the replicas of a
    // shard answer bit-identically.
    a.create_collection(meta("trained"), 2, 2).await.unwrap();
    let first: Vec<u64> = (0..1200).collect();
    let w1 = b.write("trained", "t1", upsert(&first, 0)).await.unwrap();
    let index = IndexConfig {
        nlist: 4,
        pq_m: 2,
        refine: "f32".into(),
        ..IndexConfig::default()
    };
    let switched = c
        .train("trained", Some(index), Duration::from_secs(60))
        .await
        .unwrap();
    for s in 0..2 {
        assert_eq!(switched.seq_of(s), w1.seq_of(s) + 1, "{switched:?}");
    }
    let later: Vec<u64> = (1200..1300).collect();
    let w2 = a.write("trained", "t2", upsert(&later, 1)).await.unwrap();
    let queries: Vec<f32> = (0..20).flat_map(|q| vector(q * 61, 0)).collect();
    let key = quiver_store::SearchKey {
        k: 5,
        nprobe: 4,
        refine_factor: 0,
    };
    for s in 0..2u32 {
        let mut answers = Vec::new();
        for n in [&a, &b, &c] {
            let Some(r) = n.replica("trained", s).await else {
                continue;
            };
            eventually(
                "the replica applies the training and the write after it",
                || async { n.applied("trained", s).await == Some(w2.seq_of(s)) },
            )
            .await;
            assert!(r.trained(), "{} shard {s}", n.id());
            assert_eq!(r.meta().index.nlist, 4);
            let found = r.search(&queries, 20, key).unwrap();
            answers.push((
                found.ids,
                found
                    .distances
                    .iter()
                    .map(|d| d.to_bits())
                    .collect::<Vec<_>>(),
            ));
        }
        assert_eq!(answers.len(), 2);
        assert_eq!(answers[0], answers[1], "shard {s}");
    }
    // Through any node: each stored point finds itself first.
    let probe: Vec<u64> = (0..1300).step_by(97).collect();
    let found = a
        .search(
            "trained",
            SearchRequest {
                queries: probe
                    .iter()
                    .flat_map(|&id| vector(id, u64::from(id >= 1200)))
                    .collect(),
                nq: probe.len(),
                k: 3,
                nprobe: 4,
                ..SearchRequest::default()
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    for (q, f) in found.iter().enumerate() {
        assert_eq!(f[0].0, probe[q]);
    }

    // C stops: every read still answers (shard 1 from A), and writes go on.
    c.stop().await.unwrap();
    // Its folder is free once the node is gone.
    drop(c);
    let during = write_batches(&[&a, &b], 45..55, &mut model).await;
    reads_match(&[&a, &b], &model, &during).await;
    // With C down, B's reads of shard 1 went to A.
    assert!(b
        .routed()
        .iter()
        .any(|((_, s, node), _)| *s == 1 && node == "a"));

    // C restarted goes on from its own files; then, its folder deleted, from the logs alone.
    let c = node(nats, &tmp.path().join("c"), "c").await;
    c.wait_applied("docs", &during, Duration::from_secs(20))
        .await
        .unwrap();
    let last1 = during.seq_of(1);
    eventually("the restarted node catches up", || async {
        c.applied("docs", 1).await == Some(last1)
    })
    .await;
    assert_eq!(replica_points(&c, "docs", 1).await, of_shard(&model, 1));
    c.stop().await.unwrap();
    // Its folder is free once the node is gone.
    drop(c);
    std::fs::remove_dir_all(tmp.path().join("c")).unwrap();
    let c = node(nats, &tmp.path().join("c"), "c").await;
    eventually("the wiped node catches up", || async {
        c.applied("docs", 1).await == Some(last1)
    })
    .await;
    assert_eq!(replica_points(&c, "docs", 1).await, of_shard(&model, 1));
    reads_match(&[&a, &b, &c], &model, &during).await;
    assert!(a.failed().await.is_empty() && c.failed().await.is_empty());

    // Snapshots: a node holding no replica of a shard exports none of it.
    assert!(matches!(
        b.snapshot("docs", 1).await,
        Err(ClusterError::Unavailable { .. })
    ));
    // C stops; writes go on; A exports shard 1's snapshot, and the log is trimmed below it
    // (C, down, does not say how far it has applied: the log is trimmed past it).
    c.stop().await.unwrap();
    drop(c);
    let later = write_batches(&[&a], 55..60, &mut model).await;
    let last1 = later.seq_of(1);
    eventually("A applies the writes", || async {
        a.applied("docs", 1).await == Some(last1)
    })
    .await;
    let done = a.snapshot("docs", 1).await.unwrap().expect("exported");
    assert_eq!(done.seq, last1);
    assert_eq!(done.trimmed_below, Some(last1 + 1));
    let incarnation = a.topology().get("docs").unwrap().incarnation;
    let log =
        quiver_cluster::ShardLog::open_existing(&nats.jetstream().await, "docs", incarnation, 1)
            .await
            .unwrap()
            .unwrap();
    assert_eq!(log.bounds().await.unwrap(), (last1 + 1, last1));
    // The current snapshot covers that much already: nothing more to export.
    assert_eq!(a.snapshot("docs", 1).await.unwrap(), None);
    // C restarted with its folder, which the log no longer covers, starts from the snapshot.
    let c = node(nats, &tmp.path().join("c"), "c").await;
    assert_eq!(c.restored_from("docs", 1), Some(last1));
    assert_eq!(c.applied("docs", 1).await, Some(last1));
    assert_eq!(replica_points(&c, "docs", 1).await, of_shard(&model, 1));
    // Writes after the snapshot reach it through the log.
    let of_1: Vec<u64> = (0..100)
        .filter(|&id| shard_of(id, 2) == 1)
        .take(4)
        .collect();
    let t = b.write("docs", "w60", upsert(&of_1, 60)).await.unwrap();
    assert!(t.seq_of(1) > last1);
    for &id in &of_1 {
        model.insert(id, vector(id, 60));
    }
    reads_match(&[&a, &b, &c], &model, &t).await;
    eventually("C applies the write", || async {
        c.applied("docs", 1).await == Some(t.seq_of(1))
    })
    .await;
    assert_eq!(replica_points(&c, "docs", 1).await, of_shard(&model, 1));
    // Wiped, C starts from the snapshot and the log after it.
    c.stop().await.unwrap();
    drop(c);
    std::fs::remove_dir_all(tmp.path().join("c")).unwrap();
    let c = node(nats, &tmp.path().join("c"), "c").await;
    assert_eq!(c.restored_from("docs", 1), Some(last1));
    eventually("the wiped node catches up from the snapshot", || async {
        c.applied("docs", 1).await == Some(t.seq_of(1))
    })
    .await;
    assert_eq!(replica_points(&c, "docs", 1).await, of_shard(&model, 1));
    reads_match(&[&a, &b, &c], &model, &t).await;
    assert!(c.failed().await.is_empty());

    // A folder written for another catalog (or before this one was lost) is refused.
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(
        foreign.join("cluster.identity"),
        "2001-01-01 0:00:00.0 +00:00:00",
    )
    .unwrap();
    let refused = Node::start(
        nats.jetstream().await,
        CollectionsFolder::open(&foreign).unwrap(),
        CpuBackend,
        StoreConfig::default(),
        1,
        "d",
    )
    .await;
    assert!(
        matches!(refused, Err(ClusterError::Foreign { .. })),
        "{:?}",
        refused.err()
    );
    for n in [a, b, c] {
        n.stop().await.unwrap();
    }
}

/// In the background (`snapshot_every`), a node exports each shard's snapshot once enough ops
/// were applied past the last one and trims the log below it (both replicas answer how far
/// they have applied); a node whose folder is deleted then starts from the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_exported_in_the_background_and_a_wiped_node_starts_from_one() {
    let Some(nats) = common::NatsServer::start() else {
        return;
    };
    tokio::time::timeout(Duration::from_secs(120), async {
        let tmp = tempfile::tempdir().unwrap();
        let a = node(&nats, &tmp.path().join("a"), "a").await;
        let b = node(&nats, &tmp.path().join("b"), "b").await;
        eventually("both nodes up", || async { a.live_nodes().len() == 2 }).await;
        a.create_collection(meta("docs"), 1, 2).await.unwrap();
        a.snapshot_every(Duration::from_millis(200), 5);
        let mut model = BTreeMap::new();
        let t = write_batches(&[&a, &b], 0..12, &mut model).await;
        let last = t.seq_of(0);
        let incarnation = a.topology().get("docs").unwrap().incarnation;
        let log = quiver_cluster::ShardLog::open_existing(
            &nats.jetstream().await,
            "docs",
            incarnation,
            0,
        )
        .await
        .unwrap()
        .unwrap();
        eventually("the log is trimmed below a snapshot", || async {
            log.bounds().await.unwrap().0 > 1
        })
        .await;
        // B, wiped, starts from the snapshot and catches up from the log.
        b.stop().await.unwrap();
        drop(b);
        std::fs::remove_dir_all(tmp.path().join("b")).unwrap();
        let b = node(&nats, &tmp.path().join("b"), "b").await;
        assert!(b.restored_from("docs", 0).is_some_and(|seq| seq <= last));
        eventually("the wiped node catches up", || async {
            b.applied("docs", 0).await == Some(last)
        })
        .await;
        let all: BTreeMap<u64, Vec<u32>> = model
            .iter()
            .map(|(id, v)| (*id, v.iter().map(|x| x.to_bits()).collect()))
            .collect();
        assert_eq!(replica_points(&b, "docs", 0).await, all);
        for n in [a, b] {
            n.stop().await.unwrap();
        }
    })
    .await
    .expect("the scenario did not end within 120 s");
}
