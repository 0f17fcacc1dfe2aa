//! The cluster under failure: 3 NATS servers forming a JetStream cluster (every log kept on 3
//! of them) and 3 `quiver serve --nats` nodes, all real processes on loopback. A collection
//! of 2 shards × 2 replicas is written by concurrent writers through every node, each
//! recording the writes acknowledged to it; mid-write one NATS server and one Quiver node are
//! killed with SIGKILL. Writes and searches go on (a write or read that fails is retried on
//! another node; the error budget is stated below); afterwards every acknowledged point is
//! found by Get and by exact search on every live node, nothing else is there (no write is
//! half-applied), and the killed node, restarted, reaches the applied op of its peers'
//! replicas (from `/metrics`) and answers Get and a fixed query set exactly as they do. The nodes export snapshots every second (after 20 ops), so the shard logs
//! are trimmed as they go; at the end a node's folder is deleted and the node, restarted,
//! starts its replicas from the snapshots and the logs after them, and answers as its peers.
//!
//! The NATS binary is found as the cluster crate's tests find it (`$QUIVER_NATS_SERVER`, the
//! PATH, or `target/nats-venv`); without one the test skips with a message unless
//! `QUIVER_REQUIRE_NATS=1` (CI).

mod common;

use common::{free_port, healthy, http_get, nats_binary_or_skip, Proc};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::quiver_server::proto::quiver_client::QuiverClient;
use ::quiver_server::proto::{
    CountRequest, CreateCollectionRequest, GetRequest, Metric, SearchBatchRequest, SearchRequest,
    TrainRequest, UpsertRequest,
};
use parking_lot::Mutex;
use tonic::transport::Channel;

const DIM: usize = 8;
const WRITERS: u64 = 3;
const BATCH: u64 = 10;
/// Batches each writer writes before the kills, and after.
const BATCHES_BEFORE: u64 = 25;
const BATCHES_AFTER: u64 = 25;
/// Error budget: a batch may fail this many times (on some node, 0.2 to 1 s apart: about a
/// minute) before it is acknowledged. A stream whose leader was on the killed server refuses
/// writes until its new leader is elected.
const MAX_TRIES: usize = 60;

/// A 3-server JetStream cluster on loopback.
struct Nats {
    servers: Vec<Proc>,
    client_ports: Vec<u16>,
}

impl Nats {
    fn start(binary: &Path, dir: &Path) -> Nats {
        let client_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let http_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes: Vec<String> = route_ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        let mut servers = Vec::new();
        for i in 0..3 {
            let config = dir.join(format!("nats-{i}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\nmax_payload: 8MB\n\
                     jetstream {{\n  store_dir: {:?}\n}}\n\
                     cluster {{\n  name: quiver-test\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                    client_ports[i],
                    http_ports[i],
                    dir.join(format!("nats-{i}")),
                    route_ports[i],
                    routes.join(", ")
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.join(format!("nats-{i}.log")))
                .expect("a log file for nats-server");
            let child = Command::new(binary)
                .arg("-c")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .expect("starting nats-server");
            servers.push(Proc(Some(child)));
        }
        // Ready when every server says JetStream is healthy (its meta leader elected).
        let deadline = Instant::now() + Duration::from_secs(60);
        for &p in &http_ports {
            while !healthy(p) {
                assert!(
                    Instant::now() < deadline,
                    "the JetStream cluster did not form"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Nats {
            servers,
            client_ports,
        }
    }

    fn urls(&self) -> String {
        self.client_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A Quiver node: its process, gRPC address and metrics port.
struct QuiverNode {
    proc: Proc,
    addr: String,
    metrics: u16,
}

fn start_node(id: &str, dir: &Path, urls: &str) -> QuiverNode {
    let metrics = common::free_port();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.with_extension("log"))
        .expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(["--nats", urls, "--node-id", id, "--stream-replicas", "3"])
        // Snapshots every second once a replica has applied 20 ops past its shard's last one:
        // the shard logs are trimmed while the test writes, kills and restarts.
        .args(["--snapshot-interval", "1", "--snapshot-min-ops", "20"])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start quiver serve");
    let addr = common::listening_address(&mut child);
    // Killed on the way out whatever happens.
    let proc = Proc(Some(child));
    let addr = addr.unwrap_or_else(|| {
        let log = std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default();
        panic!("node {id} did not start; its log:\n{log}")
    });
    QuiverNode {
        proc,
        addr,
        metrics,
    }
}

/// [`start_node`] off the async threads (it blocks until the node is up).
async fn start_node_async(id: &str, dir: PathBuf, urls: &str) -> QuiverNode {
    let (id, urls) = (id.to_string(), urls.to_string());
    tokio::task::spawn_blocking(move || start_node(&id, &dir, &urls))
        .await
        .expect("starting a node")
}

/// Retries `read` until it succeeds (a node busy with a failover answers late), for 30 s.
async fn eventually_ok<T, F: std::future::Future<Output = Result<T, String>>>(
    what: &str,
    mut read: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match read().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                eprintln!("{what}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

async fn client(addr: &str) -> Option<QuiverClient<Channel>> {
    let endpoint = Channel::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(15));
    Some(QuiverClient::new(endpoint.connect().await.ok()?))
}

fn vector(id: u64) -> Vec<f32> {
    let mut z = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5bd1_e995;
    (0..DIM)
        .map(|_| {
            z ^= z << 13;
            z ^= z >> 7;
            z ^= z << 17;
            (z % 100_000) as f32 / 1000.0
        })
        .collect()
}

/// Every id's vector in `points`, from `addr`.
async fn get_all(addr: &str, ids: &[u64]) -> Result<BTreeMap<u64, Vec<f32>>, String> {
    let mut c = client(addr).await.ok_or("no connection")?;
    let mut out = BTreeMap::new();
    for chunk in ids.chunks(500) {
        let r = c
            .get(GetRequest {
                collection: "docs".into(),
                ids: chunk.to_vec(),
                with_vectors: true,
                ..Default::default()
            })
            .await
            .map_err(|s| s.to_string())?;
        out.extend(r.into_inner().points.into_iter().map(|p| (p.id, p.vector)));
    }
    Ok(out)
}

/// The 5 nearest of each of `queries` (ids and distance bits), from `addr`.
async fn search_all(addr: &str, queries: &[f32]) -> Result<Vec<Vec<(u64, u32)>>, String> {
    let mut c = client(addr).await.ok_or("no connection")?;
    let r = c
        .search_batch(SearchBatchRequest {
            collection: "docs".into(),
            vectors: queries.to_vec(),
            k: 5,
            ..Default::default()
        })
        .await
        .map_err(|s| s.to_string())?;
    Ok(r.into_inner()
        .results
        .into_iter()
        .map(|r| {
            r.neighbors
                .into_iter()
                .map(|n| (n.id, n.distance.to_bits()))
                .collect()
        })
        .collect())
}

/// The collection both tests make: "docs", 2 shards × 2 replicas.
fn docs_2x2() -> CreateCollectionRequest {
    CreateCollectionRequest {
        name: "docs".into(),
        dim: DIM as u32,
        metric: Metric::L2 as i32,
        shard_number: 2,
        replication_factor: 2,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_broker_and_a_node_mid_write_loses_no_acknowledged_write() {
    let Some(binary) = nats_binary_or_skip() else {
        return;
    };
    tokio::time::timeout(Duration::from_secs(300), scenario(binary))
        .await
        .expect("the scenario did not end within 300 s");
}

async fn scenario(binary: PathBuf) {
    // QUIVER_CLUSTER_TEST_DIR keeps the servers' folders and logs (q0.log, …) there instead.
    let tmp = tempfile::tempdir().unwrap();
    let root: PathBuf = match std::env::var_os("QUIVER_CLUSTER_TEST_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            d
        }
        None => tmp.path().to_path_buf(),
    };
    let mut nats = Nats::start(&binary, root.as_path());
    let urls = nats.urls();
    let mut nodes: Vec<QuiverNode> = Vec::new();
    for i in 0..3 {
        nodes.push(start_node_async(&format!("n{i}"), root.join(format!("q{i}")), &urls).await);
    }
    let addrs: Arc<Mutex<Vec<String>>> =
        Arc::new(Mutex::new(nodes.iter().map(|n| n.addr.clone()).collect()));

    // Created once every node has heard the others (heartbeats every 0.5 s): 2 shards of 2
    // replicas placed [[n0, n1], [n2, n0]].
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut c0 = client(&nodes[0].addr).await.expect("node 0");
    let deadline = Instant::now() + Duration::from_secs(30);
    let info = loop {
        let r = c0.create_collection(docs_2x2()).await;
        match r {
            Ok(r) => break r.into_inner(),
            Err(s) if Instant::now() < deadline => {
                eprintln!("create: {s}; retrying");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(s) => panic!("create: {s}"),
        }
    };
    assert_eq!((info.shard_number, info.replication_factor), (2, 2));

    // Writers: each batch goes to the next node; a failure is retried on the next one (same
    // ids and vectors: an upsert is idempotent), up to MAX_TRIES.
    let acked: Arc<Mutex<BTreeMap<u64, Vec<f32>>>> = Arc::default();
    let failures = Arc::new(AtomicU64::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (addrs, acked, failures, progress) = (
            addrs.clone(),
            acked.clone(),
            failures.clone(),
            progress.clone(),
        );
        writers.push(tokio::spawn(async move {
            for b in 0..BATCHES_BEFORE + BATCHES_AFTER {
                let ids: Vec<u64> = (0..BATCH).map(|i| w * 1_000_000 + b * BATCH + i).collect();
                let vectors: Vec<f32> = ids.iter().flat_map(|&id| vector(id)).collect();
                let mut tries = 0;
                loop {
                    let addr = {
                        let a = addrs.lock();
                        a[(w as usize + b as usize + tries) % a.len()].clone()
                    };
                    let r = match client(&addr).await {
                        Some(mut c) => c
                            .upsert(UpsertRequest {
                                collection: "docs".into(),
                                ids: ids.clone(),
                                vectors: vectors.clone(),
                                ..Default::default()
                            })
                            .await
                            .map_err(|s| s.to_string()),
                        None => Err(format!("{addr}: no connection")),
                    };
                    match r {
                        Ok(_) => break,
                        Err(e) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            tries += 1;
                            assert!(tries < MAX_TRIES, "writer {w} batch {b}: {e}");
                            tokio::time::sleep(Duration::from_millis(200 * tries.min(5) as u64))
                                .await;
                        }
                    }
                }
                let mut a = acked.lock();
                for (i, &id) in ids.iter().enumerate() {
                    a.insert(id, vectors[i * DIM..(i + 1) * DIM].to_vec());
                }
                drop(a);
                progress.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // A reader searching through every node meanwhile.
    let reads = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let reader = {
        let (addrs, reads, killed) = (addrs.clone(), reads.clone(), killed.clone());
        tokio::spawn(async move {
            let q = vector(7);
            let mut i = 0usize;
            loop {
                let addr = {
                    let a = addrs.lock();
                    a[i % a.len()].clone()
                };
                i += 1;
                let ok = search_all(&addr, &q).await.is_ok();
                if killed.load(Ordering::Relaxed) {
                    let counter = if ok { &reads.0 } else { &reads.1 };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // Mid-write: one NATS server and one Quiver node die.
    while progress.load(Ordering::Relaxed) < WRITERS * BATCHES_BEFORE {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nats.servers[2].kill();
    nodes[2].proc.kill();
    addrs.lock().truncate(2);
    killed.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("a writer failed");
    }
    // Searches go on with the cluster in its degraded state: at least 5 answered (within
    // 30 s of the writers' end).
    let deadline = Instant::now() + Duration::from_secs(30);
    while reads.0.load(Ordering::Relaxed) < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reader.abort();
    let (ok, failed) = (
        reads.0.load(Ordering::Relaxed),
        reads.1.load(Ordering::Relaxed),
    );
    eprintln!(
        "after the kills: {ok} searches answered, {failed} failed; {} write attempts failed in all",
        failures.load(Ordering::Relaxed)
    );
    // Error budget for reads after the kills: most answer.
    assert!(
        ok > 0 && failed <= ok,
        "{ok} searches answered, {failed} failed"
    );

    // Every acknowledged point is there, bit for bit, and nothing else.
    let acked = acked.lock().clone();
    assert_eq!(
        acked.len() as u64,
        WRITERS * (BATCHES_BEFORE + BATCHES_AFTER) * BATCH
    );
    let ids: Vec<u64> = acked.keys().copied().collect();
    let queries: Vec<f32> = ids.iter().step_by(37).flat_map(|&id| vector(id)).collect();
    let mut answers = Vec::new();
    let live = addrs.lock().clone();
    for addr in live {
        // A node's reads wait for the writes it took; those taken by the others reach its
        // replicas within moments.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = eventually_ok("Get", || get_all(&addr, &ids)).await;
            let missing: Vec<&u64> = acked.keys().filter(|id| !got.contains_key(id)).collect();
            let wrong: Vec<&u64> = got
                .iter()
                .filter(|(id, v)| acked.get(id) != Some(v))
                .map(|(id, _)| id)
                .collect();
            assert!(wrong.is_empty(), "Get on {addr}: points differ: {wrong:?}");
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Get on {addr}: {} of {} acknowledged points missing (first {:?})",
                missing.len(),
                acked.len(),
                missing.iter().take(5).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let count = eventually_ok("Count", || async {
            let mut c = client(&addr).await.ok_or("no connection")?;
            c.count(CountRequest {
                collection: "docs".into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().count)
            .map_err(|s| s.to_string())
        })
        .await;
        assert_eq!(count, acked.len() as u64, "Count on {addr}");
        let found = eventually_ok("search", || search_all(&addr, &queries)).await;
        for (q, f) in found.iter().enumerate() {
            // Exact search: each query is a stored point, found first (its distance is 0 up
            // to the rounding of |a|² + |b|² - 2a·b).
            assert_eq!(f[0].0, ids[q * 37], "search on {addr}");
        }
        answers.push(found);
    }
    assert_eq!(answers[0], answers[1]);

    // The killed node, restarted (its NATS server still down), catches up from the logs and
    // answers as its peers do.
    let restarted = start_node_async("n2", root.join("q2"), &urls).await;
    let expected: Expected = (&ids, &acked, &queries, &answers[0]);
    answers_like_its_peers("the restarted node", &restarted.addr, expected).await;
    same_applied_as_peers("the restarted node", &restarted, &[&nodes[0], &nodes[1]]).await;
    nodes[2] = restarted;
    // It answers from its own replica: with n0 (the other replica of shard 1) killed too,
    // every read of shard 1 is n2's, through n1 and through n2.
    nodes[0].proc.kill();
    for addr in [nodes[1].addr.clone(), nodes[2].addr.clone()] {
        let got = eventually_ok("Get after n0's kill", || get_all(&addr, &ids)).await;
        assert_eq!(got, acked, "Get on {addr} with n0 down");
        let found = eventually_ok("search after n0's kill", || search_all(&addr, &queries)).await;
        assert_eq!(found, answers[0], "search on {addr} with n0 down");
    }
    // n0's folder deleted: restarted, it starts both its replicas from their shards'
    // snapshots (the logs were trimmed below them) and the logs after, and answers as its
    // peers do.
    std::fs::remove_dir_all(root.join("q0")).expect("deleting n0's folder");
    let wiped = start_node_async("n0", root.join("q0"), &urls).await;
    let expected: Expected = (&ids, &acked, &queries, &answers[0]);
    answers_like_its_peers("the wiped node", &wiped.addr, expected).await;
    let log = std::fs::read_to_string(root.join("q0.log")).unwrap_or_default();
    let restored = log
        .lines()
        .filter(|l| l.contains("started the replica from the shard's snapshot"))
        .count();
    assert!(
        restored >= 1,
        "the wiped node started no replica from a snapshot; its log ends:\n{}",
        log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    same_applied_as_peers("the wiped node", &wiped, &[&nodes[1], &nodes[2]]).await;
    nodes[0] = wiped;
    drop(nodes);
    drop(nats);
}

/// What a node caught up answers: (the ids asked, the points Get finds, the queries, their
/// exact search's answers).
type Expected<'a> = (
    &'a [u64],
    &'a BTreeMap<u64, Vec<f32>>,
    &'a [f32],
    &'a Vec<Vec<(u64, u32)>>,
);

/// Waits (up to 60 s) until the node at `addr` answers Get and the query set as expected.
async fn answers_like_its_peers(
    what: &str,
    addr: &str,
    (ids, acked, queries, answers): Expected<'_>,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = get_all(addr, ids).await;
        let found = search_all(addr, queries).await;
        if got.as_ref() == Ok(acked) && found.as_ref() == Ok(answers) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not catch up: {} points, search {:?}",
            got.map(|g| g.len()).unwrap_or(0),
            found.err()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Each `docs` replica's applied op, by shard, from a node's `/metrics` (empty if it does
/// not answer).
fn applied(node: &QuiverNode) -> BTreeMap<u32, u64> {
    let metrics = common::http_get(node.metrics, "/metrics").unwrap_or_default();
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("quiver_cluster_applied_seq{") && l.contains(r#"collection="docs""#)
        })
        .filter_map(|l| {
            let shard = l
                .split(r#"shard=""#)
                .nth(1)?
                .split('"')
                .next()?
                .parse()
                .ok()?;
            let seq = l.rsplit(' ').next()?.parse().ok()?;
            Some((shard, seq))
        })
        .collect()
}

/// Waits (up to 30 s: the figures are refreshed every 5 s) until every replica `node` holds
/// has applied the same op as each of `peers`' replicas of that shard.
async fn same_applied_as_peers(what: &str, node: &QuiverNode, peers: &[&QuiverNode]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mine = applied(node);
        let theirs: Vec<BTreeMap<u32, u64>> = peers.iter().map(|p| applied(p)).collect();
        let differ: Vec<(u32, u64, Vec<u64>)> = mine
            .iter()
            .map(|(&shard, &seq)| {
                let other: Vec<u64> = theirs
                    .iter()
                    .filter_map(|t| t.get(&shard).copied())
                    .collect();
                (shard, seq, other)
            })
            .filter(|(_, seq, other)| other.is_empty() || other.iter().any(|o| o != seq))
            .collect();
        if !mine.is_empty() && differ.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: replicas applied {mine:?}; (shard, applied, the peers') differing: {differ:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `scripts/cluster down` on the way out, whatever happens.
struct LocalCluster(PathBuf);

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .args(["scripts/cluster", "down", "--dir"])
            .arg(&self.0)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output();
    }
}

/// `scripts/cluster up` (the README's local cluster) starts 3 JetStream servers and the nodes
/// asked for, which then serve a 2 × 2 collection through any node; `down` stops every
/// process and keeps the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_cluster_script_starts_serves_and_stops() {
    let Some(binary) = nats_binary_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("local");
    // Off the defaults and out of Linux's ephemeral range (32768-60999, where free_port()
    // and outgoing connections land): NATS on 25,000-30,000, gRPC on 61,000 and up.
    let offset = 11_000 + std::process::id() % 1_500;
    let script = |args: &[&str]| {
        Command::new("bash")
            .arg("scripts/cluster")
            .args(args)
            .arg("--dir")
            .arg(&dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("QUIVER_BIN", env!("CARGO_BIN_EXE_quiver"))
            .env("QUIVER_NATS_SERVER", &binary)
            // Replica requests answered show in the nodes' logs, with their request ids.
            .env("RUST_LOG", "info,quiver_cluster=debug")
            .output()
            .expect("run scripts/cluster")
    };
    let _down = LocalCluster(dir.clone());
    let up = tokio::task::block_in_place(|| {
        script(&["up", "--nodes", "2", "--port-offset", &offset.to_string()])
    });
    let said = String::from_utf8_lossy(&up.stdout).into_owned();
    assert!(
        up.status.success(),
        "up failed: {said}{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let addrs: Vec<String> = (0..2)
        .map(|i| format!("127.0.0.1:{}", 50051 + offset + i))
        .collect();
    for a in &addrs {
        assert!(said.contains(a), "{said}");
    }

    // Created once the nodes have heard each other; written through node 0, read through 1.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut c0 = client(&addrs[0]).await.expect("node 0");
    let created = eventually_ok("create", || {
        let mut c = c0.clone();
        async move {
            c.create_collection(docs_2x2())
                .await
                .map(|r| r.into_inner())
                .map_err(|s| s.to_string())
        }
    })
    .await;
    assert_eq!((created.shard_number, created.replication_factor), (2, 2));
    let ids: Vec<u64> = (0..50).collect();
    c0.upsert(UpsertRequest {
        collection: "docs".into(),
        ids: ids.clone(),
        vectors: ids.iter().flat_map(|&id| vector(id)).collect(),
        wait: true,
        ..Default::default()
    })
    .await
    .expect("upsert");
    // Node 1 reads its own replicas, which apply the write on their own time.
    let got = eventually_ok("Get through node 1", || async {
        let got = get_all(&addrs[1], &ids).await?;
        if got.len() == ids.len() {
            Ok(got)
        } else {
            Err(format!("{} of {} points so far", got.len(), ids.len()))
        }
    })
    .await;
    assert_eq!(got.len(), ids.len());
    // Too few points to train: refused as on one server, naming why, after no replica
    // switched.
    let refused = c0
        .train(TrainRequest {
            collection: "docs".into(),
            ..Default::default()
        })
        .await
        .expect_err("a training of 50 points");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(refused.message().contains("training needs"), "{refused:?}");

    // 2 shards x 1 replica: each node holds one shard, so a search through node 0 asks node 1
    // for the other. The caller's request id comes back with the answer and is in node 1's
    // log; node 0's metrics count the requests it routed and every replica's progress.
    eventually_ok("create solo", || {
        let mut c = c0.clone();
        async move {
            c.create_collection(CreateCollectionRequest {
                name: "solo".into(),
                replication_factor: 1,
                ..docs_2x2()
            })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| s.to_string())
        }
    })
    .await;
    c0.upsert(UpsertRequest {
        collection: "solo".into(),
        ids: ids.clone(),
        vectors: ids.iter().flat_map(|&id| vector(id)).collect(),
        wait: true,
        ..Default::default()
    })
    .await
    .expect("upsert solo");
    let mut search = tonic::Request::new(SearchRequest {
        collection: "solo".into(),
        vector: vector(3),
        k: 5,
        ..Default::default()
    });
    search
        .metadata_mut()
        .insert("x-request-id", "it-solo-search-1".parse().unwrap());
    let found = c0.search(search).await.expect("search solo");
    assert_eq!(
        found
            .metadata()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap()),
        Some("it-solo-search-1")
    );
    assert_eq!(found.into_inner().neighbors[0].id, 3);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(dir.join("quiver-1.log")).unwrap_or_default();
        let metrics = http_get((19090 + offset) as u16, "/metrics").unwrap_or_default();
        let routed_to_1 = metrics.lines().any(|l| {
            l.starts_with("quiver_cluster_routed_total{")
                && l.contains(r#"collection="solo""#)
                && l.contains(r#"node="node-1""#)
        });
        let progress = metrics.lines().any(|l| {
            l.starts_with("quiver_cluster_replication_lag{") && l.contains(r#"collection="docs""#)
        }) && metrics.contains("quiver_cluster_applied_seq{");
        if log.contains("it-solo-search-1") && routed_to_1 && progress {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "request id in node 1's log: {}, routed to node 1: {routed_to_1}, progress: {progress}\n{metrics}",
            log.contains("it-solo-search-1")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let status = tokio::task::block_in_place(|| script(&["status"]));
    assert!(status.status.success());
    let down = tokio::task::block_in_place(|| script(&["down"]));
    assert!(down.status.success());
    assert!(String::from_utf8_lossy(&down.stdout).contains("stopped 5 processes"));
    let status = tokio::task::block_in_place(|| script(&["status"]));
    assert!(!status.status.success(), "processes still run after down");
    assert!(dir.join("quiver-0").exists() && dir.join("nats-0").exists());
}
