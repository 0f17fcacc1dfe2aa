//! Cluster search equals single-node search on the real data set
//! `../shared/data/minilm-pydocs` (100k × 384 MiniLM embeddings, inner product), through the
//! native gRPC API: the same points go to a single server and to a cluster of 2 nodes (one NATS
//! JetStream server, a collection of 2 shards × 1 replica, so every search is routed to both
//! nodes and merged).
//!
//! - Exact mode (untrained: every point scored): every query's 10 neighbours are the same
//!   ids with bit-identical distances.
//! - IVF-PQ mode (both trained with the same parameters, 1,024 lists and 48 sub-quantizers;
//!   each shard trains its own on its half, so its lists are half as long): searched 32 lists
//!   deep (each shard probes 32, so both scan about 3% of the points), recall@10 against the
//!   shipped ground truth is within 0.01 of the single server's, and the same through either
//!   node.
//!
//! Heavy (a few minutes on 2 cores), so `#[ignore]`d: `cargo test --test cluster_minilm --
//! --ignored --nocapture`. It skips, saying so, when the data or nats-server is absent (with
//! `QUIVER_REQUIRE_NATS=1` a missing nats-server fails it).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ::quiver_server::proto::quiver_client::QuiverClient;
use ::quiver_server::proto::{
    CreateCollectionRequest, IndexParams, Metric, SearchBatchRequest, TrainRequest, UpsertRequest,
};
use common::{free_port, healthy, listening_address, nats_binary_or_skip, Proc};
use tonic::transport::Channel;

const DIM: usize = 384;
const K: usize = 10;
const BATCH: usize = 1000;

/// One NATS server with JetStream on loopback; returns it and its URL.
fn start_nats(binary: &Path, dir: &Path) -> (Proc, String) {
    let (port, http) = (free_port(), free_port());
    let config = dir.join("nats.conf");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{http}\nmax_payload: 8MB\njetstream {{\n  store_dir: {:?}\n}}\n",
            dir.join("nats")
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("nats.log")).unwrap();
    let child = Command::new(binary)
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("starting nats-server");
    let proc = Proc(Some(child));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !healthy(http) {
        assert!(Instant::now() < deadline, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    (proc, format!("nats://127.0.0.1:{port}"))
}

/// `quiver serve` over `dir` with `extra` arguments; returns it and its gRPC address.
fn start_server(dir: &Path, extra: &[&str]) -> (Proc, String) {
    let log = std::fs::File::create(dir.with_extension("log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start quiver serve");
    let addr = listening_address(&mut child);
    let proc = Proc(Some(child));
    let addr = addr.unwrap_or_else(|| {
        let log = std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default();
        panic!("quiver serve did not start; its log:\n{log}")
    });
    (proc, addr)
}

async fn client(addr: &str) -> QuiverClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(1800))
        .connect()
        .await
        .expect("connect");
    QuiverClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// Each query's neighbours as (id, distance bits).
async fn search(
    c: &mut QuiverClient<Channel>,
    queries: &[f32],
    nprobe: u32,
) -> Vec<Vec<(u64, u32)>> {
    let mut out = Vec::new();
    for chunk in queries.chunks(100 * DIM) {
        let r = c
            .search_batch(SearchBatchRequest {
                collection: "minilm".into(),
                vectors: chunk.to_vec(),
                k: K as u32,
                nprobe,
                ..Default::default()
            })
            .await
            .expect("search")
            .into_inner();
        out.extend(r.results.into_iter().map(|r| {
            r.neighbors
                .into_iter()
                .map(|n| (n.id, n.distance.to_bits()))
                .collect()
        }));
    }
    out
}

fn recall(found: &[Vec<(u64, u32)>], truth: &[i32], truth_k: usize) -> f64 {
    let hits: usize = found
        .iter()
        .enumerate()
        .map(|(q, row)| {
            let t = &truth[q * truth_k..q * truth_k + K];
            row.iter()
                .filter(|(id, _)| t.contains(&(*id as i32)))
                .count()
        })
        .sum();
    hits as f64 / (found.len() * K) as f64
}

async fn train(c: &mut QuiverClient<Channel>, nlist: u32) {
    c.train(TrainRequest {
        collection: "minilm".into(),
        index: Some(IndexParams {
            nlist,
            pq_m: 48,
            ..Default::default()
        }),
        background: false,
    })
    .await
    .expect("train");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: 100k real vectors into a cluster and a single server, both trained"]
async fn cluster_search_equals_single_node_search_on_minilm() {
    let Some(data) = common::minilm_dir() else {
        return;
    };
    let Some(binary) = nats_binary_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (_nats, url) = start_nats(&binary, root);
    let (_single, single_addr) = start_server(&root.join("single"), &[]);
    let mut nodes = Vec::new();
    for id in ["n0", "n1"] {
        nodes.push(start_server(
            &root.join(id),
            &["--nats", &url, "--node-id", id, "--stream-replicas", "1"],
        ));
    }
    // Placed once both nodes have heard each other (heartbeats every 0.5 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let (_, b0) = quiver_engine::io::read_all_f32(data.join("base-00.fvecs")).unwrap();
    let (_, b1) = quiver_engine::io::read_all_f32(data.join("base-01.fvecs")).unwrap();
    let base: Vec<f32> = b0.into_iter().chain(b1).collect();
    let (_, queries) = quiver_engine::io::read_all_f32(data.join("query.fvecs")).unwrap();
    let (truth_k, truth) = common::read_ivecs(&data.join("groundtruth.ivecs"));
    let n = base.len() / DIM;

    let mut single = client(&single_addr).await;
    let mut cluster = client(&nodes[0].1).await;
    for (c, shards) in [(&mut single, 1), (&mut cluster, 2)] {
        c.create_collection(CreateCollectionRequest {
            name: "minilm".into(),
            dim: DIM as u32,
            metric: Metric::InnerProduct as i32,
            shard_number: shards,
            replication_factor: 1,
            ..Default::default()
        })
        .await
        .expect("create");
    }
    let started = Instant::now();
    for (b, chunk) in base.chunks(BATCH * DIM).enumerate() {
        let ids: Vec<u64> = (b * BATCH..b * BATCH + chunk.len() / DIM)
            .map(|i| i as u64)
            .collect();
        for c in [&mut single, &mut cluster] {
            c.upsert(UpsertRequest {
                collection: "minilm".into(),
                ids: ids.clone(),
                vectors: chunk.to_vec(),
                wait: true,
                ..Default::default()
            })
            .await
            .expect("upsert");
        }
    }
    eprintln!(
        "{n} points written to both in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Exact mode: the same neighbours, bit for bit.
    let exact_single = search(&mut single, &queries, 0).await;
    let exact_cluster = search(&mut cluster, &queries, 0).await;
    let differ = exact_single
        .iter()
        .zip(&exact_cluster)
        .filter(|(a, b)| a != b)
        .count();
    eprintln!(
        "exact: {differ} of {} queries differ; recall@10 {:.4}",
        exact_single.len(),
        recall(&exact_single, &truth, truth_k)
    );
    assert_eq!(
        differ, 0,
        "exact search differs between the cluster and one server"
    );

    // IVF-PQ mode, the same parameters: 1,024 lists, probed 32 deep.
    for (what, c) in [("single server", &mut single), ("cluster", &mut cluster)] {
        let started = Instant::now();
        train(c, 1024).await;
        eprintln!("{what} trained in {:.1} s", started.elapsed().as_secs_f64());
    }
    let found_single = search(&mut single, &queries, 32).await;
    let found_cluster = search(&mut cluster, &queries, 32).await;
    let (r_single, r_cluster) = (
        recall(&found_single, &truth, truth_k),
        recall(&found_cluster, &truth, truth_k),
    );
    // Every node routes the same: the other node's answers equal.
    let mut other = client(&nodes[1].1).await;
    let found_other = search(&mut other, &queries, 32).await;
    eprintln!(
        "IVF-PQ recall@10 (nlist 1024, PQ48, nprobe 32): single server {r_single:.4}, cluster of 2 shards {r_cluster:.4}"
    );
    assert!(
        (r_single - r_cluster).abs() <= 0.01,
        "recall {r_cluster} against one server's {r_single}"
    );
    assert_eq!(
        found_cluster, found_other,
        "the two nodes answer differently"
    );
}
