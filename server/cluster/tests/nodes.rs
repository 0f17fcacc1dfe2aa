//! Nodes of a cluster on a real NATS JetStream server: a collection created on one node is
//! held by every node, racing creates of one name give exactly one collection, writes taken
//! by any node reach every replica with the same numbers and bits, a bad write is refused
//! before it enters the log, a dropped and re-created collection starts empty, a node started
//! later from an empty folder catches up from the logs, and a restarted node goes on from its
//! own files.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use quiver_cluster::{CatalogLog, ClusterError, Node};
use quiver_engine::backend::cpu::CpuBackend;
use quiver_store::wal::Op;
use quiver_store::{CatalogOp, CollectionMeta, CollectionsFolder, StoreConfig, StoreError};

const DIM: usize = 4;

fn meta(name: &str) -> CollectionMeta {
    CollectionMeta {
        name: name.into(),
        dim: DIM,
        metric: "l2".into(),
        ..CollectionMeta::default()
    }
}

fn upsert(ids: &[u64], version: u64) -> Op {
    Op::Upsert {
        ids: ids.to_vec(),
        vectors: ids
            .iter()
            .flat_map(|&id| {
                (0..DIM as u64).map(move |j| ((id * 7 + j + version * 13) % 101) as f32 / 101.0)
            })
            .collect(),
        dim: DIM,
        payloads: Vec::new(),
    }
}

async fn node(js: &async_nats::jetstream::Context, dir: &Path, id: &str) -> Node<CpuBackend> {
    let folder = CollectionsFolder::open(dir).unwrap();
    Node::start(
        js.clone(),
        folder,
        CpuBackend,
        StoreConfig::default(),
        1,
        id,
    )
    .await
    .unwrap()
}

async fn points(n: &Node<CpuBackend>, name: &str) -> BTreeMap<u64, Vec<u32>> {
    let c = n.collection(name).await.expect("held");
    let ids: Vec<u64> = (0..200).collect();
    c.get(&ids)
        .into_iter()
        .map(|(id, v)| (id, v.iter().map(|x| x.to_bits()).collect()))
        .collect()
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
async fn every_node_holds_the_same_collections_and_points() {
    let Some(nats) = common::NatsServer::start() else {
        return;
    };
    // A hang is a failure, not a stuck CI job.
    tokio::time::timeout(Duration::from_secs(120), scenario(&nats))
        .await
        .expect("the scenario did not end within 120 s");
}

async fn scenario(nats: &common::NatsServer) {
    let js = nats.jetstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let a = node(&js, &tmp.path().join("a"), "a").await;
    let b = node(&js, &tmp.path().join("b"), "b").await;

    // Created on A, held by B once B has applied the catalog.
    a.create_collection(meta("docs")).await.unwrap();
    b.sync_catalog().await.unwrap();
    assert_eq!(b.collections().await, vec!["docs"]);
    assert!(matches!(
        b.create_collection(meta("docs")).await,
        Err(ClusterError::Exists(_))
    ));
    // A description no node could open is refused before it enters the log.
    let before = a.sync_catalog().await.unwrap();
    let mut bad = meta("flat");
    bad.dim = 0;
    assert!(matches!(
        a.create_collection(bad).await,
        Err(ClusterError::Store(StoreError::Invalid {
            field: "dim",
            ..
        }))
    ));
    assert_eq!(a.sync_catalog().await.unwrap(), before);
    // The catalog's compare-and-set: of two appends checked against the same last entry,
    // the second is refused (the log never holds a create its writer did not check).
    let catalog = CatalogLog::open(&js, 1).await.unwrap();
    let create = |name: &str| CatalogOp::Create {
        name: name.into(),
        meta: Some(meta(name)),
        replica: true,
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
        a.create_collection(meta("race")),
        b.create_collection(meta("race"))
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

    // Writes taken by either node, interleaved.
    let mut last = 0;
    for i in 0..40u64 {
        let ids: Vec<u64> = (i * 3..i * 3 + 5).collect();
        let n = if i % 2 == 0 { &a } else { &b };
        let op = if i % 9 == 8 {
            Op::Delete {
                ids: ids[..2].to_vec(),
            }
        } else {
            upsert(&ids, i)
        };
        last = n.write("docs", &format!("w{i}"), op).await.unwrap();
    }
    assert_eq!(last, 40);
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
    a.wait_applied("docs", last).await.unwrap();
    b.wait_applied("docs", last).await.unwrap();
    let want = points(&a, "docs").await;
    assert!(want.len() > 50);
    assert_eq!(points(&b, "docs").await, want);

    // Dropped on B and re-created on A: the new one starts empty (its own log).
    a.write("race", "r1", upsert(&[1, 2, 3], 0)).await.unwrap();
    b.drop_collection("race").await.unwrap();
    assert!(matches!(
        b.drop_collection("race").await,
        Err(ClusterError::NotFound(_))
    ));
    a.sync_catalog().await.unwrap();
    assert_eq!(a.collections().await, vec!["docs"]);
    a.create_collection(meta("race")).await.unwrap();
    b.sync_catalog().await.unwrap();
    assert!(points(&b, "race").await.is_empty());

    // A node started later from an empty folder catches up from the logs.
    let c = node(&js, &tmp.path().join("c"), "c").await;
    c.sync_catalog().await.unwrap();
    assert_eq!(c.collections().await, vec!["docs", "race"]);
    c.wait_applied("docs", last).await.unwrap();
    assert_eq!(points(&c, "docs").await, want);

    // A restarted node goes on from its own files.
    b.stop().await.unwrap();
    let seq = a
        .write("docs", "after", upsert(&[150, 151], 99))
        .await
        .unwrap();
    let b = node(&js, &tmp.path().join("b"), "b").await;
    b.wait_applied("docs", seq).await.unwrap();
    c.wait_applied("docs", seq).await.unwrap();
    a.wait_applied("docs", seq).await.unwrap();
    let want = points(&a, "docs").await;
    assert_eq!(want.len(), points(&c, "docs").await.len());
    for n in [&b, &c] {
        assert_eq!(points(n, "docs").await, want);
    }
    eventually("every node holds the same collections", || async {
        b.collections().await == a.collections().await
    })
    .await;
    for n in [a, b, c] {
        n.stop().await.unwrap();
    }
}
