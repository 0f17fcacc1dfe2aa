//! Crash test: the real `quiver serve` binary, concurrent writers (upserts with payloads,
//! replacements, deletes, payload edits, deletes by filter) with every acknowledged write
//! recorded, background training and continual
//! checkpoints, killed with SIGKILL at random moments and restarted, over and over. After
//! each restart every acknowledged write must be there (Get, exact search), no unacknowledged
//! batch may be half applied, and searches must be right.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use ::quiver_server::proto::quiver_client::QuiverClient;
use ::quiver_server::proto::{
    CountRequest, CreateCollectionRequest, CreateFieldIndexRequest, DeleteRequest, FieldIndex,
    FieldType, GetCollectionRequest, GetRequest, IndexParams, Metric, Refine, SearchRequest,
    SetPayloadRequest, TrainRequest, UpsertRequest,
};
use parking_lot::Mutex;
use tonic::transport::Channel;

const DIM: usize = 8;
const WRITERS: u64 = 4;
const KILLS: usize = 32;

/// Fault-injection points set in the server (builds with the `failpoints` feature): a pause
/// before training publishes and in every checkpoint, so that kills land in them.
const WINDOWS: &str = "train::before_publish=sleep(250);checkpoint::before=sleep(15)";

fn start(dir: &Path) -> (Child, String) {
    start_with(
        dir,
        if cfg!(feature = "failpoints") {
            WINDOWS
        } else {
            ""
        },
    )
}

fn start_with(dir: &Path, failpoints: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .env("FAILPOINTS", failpoints)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        // Checkpoint whenever the log holds anything, seal small segments: kills land in
        // checkpoints, seals and merges as well as in appends.
        .args(["--checkpoint-wal-mib", "0", "--seal-rows", "200"])
        .stdout(Stdio::piped())
        .stderr(match std::env::var_os("QUIVER_CRASH_LOG") {
            Some(p) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .expect("log file"),
            ),
            None => Stdio::null(),
        })
        .spawn()
        .expect("start server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("read address");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, addr)
}

async fn client(addr: &str) -> QuiverClient<Channel> {
    QuiverClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}

/// A small deterministic generator (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn vector(id: u64, version: u64) -> Vec<f32> {
    let mut r = Rng(id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ version.wrapping_add(1) ^ 0xABCD);
    (0..DIM)
        .map(|_| (r.below(20_000) as f32) / 1000.0)
        .collect()
}

/// A point as the client last saw it acknowledged: its vector and its payload.
type Point = (Vec<f32>, serde_json::Value);

/// What the client knows: each id's last acknowledged state, and the batch in flight when the
/// server died (its outcome unknown, but it must be whole or absent).
#[derive(Default)]
struct Model {
    live: HashMap<u64, Point>,
    in_flight: Vec<Op>,
}

#[derive(Clone, Debug)]
enum Op {
    /// Ids, vectors and payloads `{"w": writer, "v": version}`.
    Upsert(Vec<u64>, Vec<Vec<f32>>, Vec<serde_json::Value>),
    Delete(Vec<u64>),
    /// Ids and the keys merged into their payloads.
    SetPayload(Vec<u64>, serde_json::Value),
    /// The filter `w = writer and v = version`, and the ids it matched when sent (the writer's
    /// own points: no other writer touches them).
    DeleteFilter(String, Vec<u64>),
}

impl Op {
    fn ids(&self) -> &[u64] {
        match self {
            Op::Upsert(i, ..) | Op::Delete(i) | Op::SetPayload(i, _) | Op::DeleteFilter(_, i) => i,
        }
    }
}

fn merged(old: &serde_json::Value, keys: &serde_json::Value) -> serde_json::Value {
    let mut m = old.as_object().cloned().unwrap_or_default();
    for (k, v) in keys.as_object().into_iter().flatten() {
        m.insert(k.clone(), v.clone());
    }
    serde_json::Value::Object(m)
}

async fn writer(addr: String, w: u64, seed: u64, model: Arc<Mutex<Model>>, next: Arc<Mutex<u64>>) {
    let Ok(mut c) = QuiverClient::connect(format!("http://{addr}")).await else {
        return;
    };
    let mut rng = Rng(seed | 1);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(1 + rng.below(4))).await;
        let mine: Vec<(u64, serde_json::Value)> = {
            let m = model.lock();
            m.live
                .iter()
                .filter(|(id, _)| *id % WRITERS == w)
                .map(|(id, (_, p))| (*id, p.clone()))
                .collect()
        };
        let pick = |rng: &mut Rng| -> Vec<u64> {
            (0..1 + rng.below(3))
                .map(|_| mine[rng.below(mine.len() as u64) as usize].0)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect()
        };
        let dice = rng.below(12);
        let op = if !mine.is_empty() && dice < 3 {
            Op::Delete(pick(&mut rng))
        } else if !mine.is_empty() && dice == 3 {
            Op::SetPayload(pick(&mut rng), serde_json::json!({ "tag": rng.below(100) }))
        } else if !mine.is_empty() && dice == 4 {
            // Delete by filter: this writer's points of one version.
            let v = mine[rng.below(mine.len() as u64) as usize].1["v"].clone();
            let ids = mine
                .iter()
                .filter(|(_, p)| p["v"] == v)
                .map(|(id, _)| *id)
                .collect();
            let filter = serde_json::json!({"must": [
                {"key": "w", "match": {"value": w}},
                {"key": "v", "match": {"value": v}}]});
            Op::DeleteFilter(filter.to_string(), ids)
        } else {
            let mut ids = Vec::new();
            for _ in 0..10 {
                if !mine.is_empty() && rng.below(5) == 0 {
                    ids.push(mine[rng.below(mine.len() as u64) as usize].0);
                } else {
                    let mut n = next.lock();
                    *n += 1;
                    ids.push(*n * WRITERS + w);
                }
            }
            ids.sort();
            ids.dedup();
            let version = rng.next() % 1000;
            let vecs = ids.iter().map(|&i| vector(i, version)).collect();
            let payloads = ids
                .iter()
                .map(|_| serde_json::json!({"w": w, "v": version}))
                .collect();
            Op::Upsert(ids, vecs, payloads)
        };
        model.lock().in_flight.push(op.clone());
        let r = match &op {
            Op::Upsert(ids, vecs, payloads) => c
                .upsert(UpsertRequest {
                    collection: "c".into(),
                    ids: ids.clone(),
                    vectors: vecs.concat(),
                    payloads: payloads.iter().map(|p| p.to_string()).collect(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            Op::Delete(ids) => c
                .delete(DeleteRequest {
                    collection: "c".into(),
                    ids: ids.clone(),
                    filter: String::new(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            Op::SetPayload(ids, keys) => c
                .set_payload(SetPayloadRequest {
                    collection: "c".into(),
                    ids: ids.clone(),
                    payload: keys.to_string(),
                    replace: false,
                })
                .await
                .map(|_| ()),
            Op::DeleteFilter(filter, _) => c
                .delete(DeleteRequest {
                    collection: "c".into(),
                    ids: Vec::new(),
                    filter: filter.clone(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
        };
        let mut m = model.lock();
        let pos = m
            .in_flight
            .iter()
            .position(|o| std::ptr::eq(o, &op) || format!("{o:?}") == format!("{op:?}"));
        if r.is_err() {
            return; // the server died: this batch stays in flight
        }
        if let Some(p) = pos {
            m.in_flight.remove(p);
        }
        apply(&mut m.live, op);
    }
}

/// Folds an acknowledged write into the model.
fn apply(live: &mut HashMap<u64, Point>, op: Op) {
    match op {
        Op::Upsert(ids, vecs, payloads) => {
            for ((id, v), p) in ids.into_iter().zip(vecs).zip(payloads) {
                live.insert(id, (v, p));
            }
        }
        Op::Delete(ids) | Op::DeleteFilter(_, ids) => {
            for id in ids {
                live.remove(&id);
            }
        }
        Op::SetPayload(ids, keys) => {
            for id in ids {
                if let Some((_, p)) = live.get_mut(&id) {
                    *p = merged(p, &keys);
                }
            }
        }
    }
}

/// Checks the restarted server against the model, then folds the in-flight batches' observed
/// outcomes into it.
async fn verify(c: &mut QuiverClient<Channel>, model: &mut Model, round: usize) {
    let mut ids: Vec<u64> = model.live.keys().copied().collect();
    for op in &model.in_flight {
        ids.extend(op.ids());
    }
    ids.sort();
    ids.dedup();
    let mut got: HashMap<u64, Point> = HashMap::new();
    for chunk in ids.chunks(4000) {
        got.extend(
            c.get(GetRequest {
                collection: "c".into(),
                ids: chunk.to_vec(),
                with_vectors: true,
                with_payload: true,
                payload_keys: Vec::new(),
            })
            .await
            .expect("get")
            .into_inner()
            .points
            .into_iter()
            .map(|p| {
                let payload = serde_json::from_str(&p.payload).expect("payload JSON");
                (p.id, (p.vector, payload))
            }),
        );
    }
    let in_flight_ids: std::collections::HashSet<u64> = model
        .in_flight
        .iter()
        .flat_map(|o| o.ids().to_vec())
        .collect();
    for (id, v) in &model.live {
        if in_flight_ids.contains(id) {
            continue;
        }
        assert_eq!(
            got.get(id),
            Some(v),
            "round {round}: acknowledged id {id} lost or changed"
        );
    }
    for id in &ids {
        if !model.live.contains_key(id) && !in_flight_ids.contains(id) {
            assert!(
                !got.contains_key(id),
                "round {round}: deleted id {id} is back"
            );
        }
    }
    // Each in-flight batch is whole or absent.
    for op in std::mem::take(&mut model.in_flight) {
        let ids = op.ids().to_vec();
        let before = ids
            .iter()
            .filter(|id| got.get(id) == model.live.get(id))
            .count();
        let after = {
            let mut m: HashMap<u64, Point> = ids
                .iter()
                .filter_map(|id| model.live.get(id).map(|p| (*id, p.clone())))
                .collect();
            apply(&mut m, op.clone());
            ids.iter().filter(|id| got.get(id) == m.get(id)).count()
        };
        assert!(
            after == ids.len() || before == ids.len(),
            "round {round}: batch {op:?} half applied ({after} of {} after, {before} as before)",
            ids.len()
        );
        if after == ids.len() {
            apply(&mut model.live, op);
        }
    }
    assert_eq!(got.len(), model.live.len(), "round {round}: extra points");
    // Exact search: a stored vector finds itself first (probing every list, refining on f32).
    let info = c
        .get_collection(GetCollectionRequest { name: "c".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        info.count as usize,
        model.live.len(),
        "round {round}: count"
    );
    let nprobe = if info.trained {
        info.index.unwrap().nlist
    } else {
        0
    };
    for (id, (v, p)) in model.live.iter().take(5) {
        let r = c
            .search(SearchRequest {
                collection: "c".into(),
                vector: v.clone(),
                k: 1,
                nprobe,
                refine_factor: 200,
                with_payload: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.neighbors[0].id, *id, "round {round}: search for {id}");
        assert!(r.neighbors[0].distance < 1e-3);
        let payload: serde_json::Value = serde_json::from_str(&r.neighbors[0].payload).unwrap();
        assert_eq!(&payload, p, "round {round}: payload of {id} in a search");
        // Filtered to its writer and version: still found first.
        let filter = serde_json::json!({"must": [
            {"key": "w", "match": {"value": p["w"]}},
            {"key": "v", "match": {"value": p["v"]}}]});
        let r = c
            .search(SearchRequest {
                collection: "c".into(),
                vector: v.clone(),
                k: 1,
                nprobe,
                refine_factor: 200,
                filter: filter.to_string(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.neighbors[0].id, *id,
            "round {round}: filtered search for {id}"
        );
    }
    // Count by filter agrees with the model, for one writer.
    let n = c
        .count(CountRequest {
            collection: "c".into(),
            filter: r#"{"must":[{"key":"w","match":{"value":1}}]}"#.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .count as usize;
    let want = model.live.values().filter(|(_, p)| p["w"] == 1).count();
    assert_eq!(n, want, "round {round}: count by filter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill_during_writes_checkpoints_and_training() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let model = Arc::new(Mutex::new(Model::default()));
    let next = Arc::new(Mutex::new(0u64));
    let mut rng = Rng(0x5EED_1234);
    let mut trained_at = None;
    let mut killed_training = 0;
    let mut retrains = 0;
    let mut fields_acked: Vec<String> = Vec::new();
    for round in 0..KILLS {
        let (mut child, addr) = start(&data);
        let mut c = client(&addr).await;
        if round == 0 {
            c.create_collection(CreateCollectionRequest {
                name: "c".into(),
                dim: DIM as u32,
                metric: Metric::L2 as i32,
                index: Some(IndexParams {
                    nlist: 8,
                    pq_m: 4,
                    refine: Refine::F32 as i32,
                    seed: 3,
                    train_at: 0,
                }),
                field_indexes: vec![FieldIndex {
                    key: "w".into(),
                    r#type: FieldType::Integer as i32,
                }],
                ..Default::default()
            })
            .await
            .expect("create");
            fields_acked.push("w".to_string());
        } else {
            // No writer runs between rounds: check a copy taken out of the lock (no guard
            // held across an await), then put it back.
            let mut m = std::mem::take(&mut *model.lock());
            verify(&mut c, &mut m, round).await;
            *model.lock() = m;
        }
        let info = c
            .get_collection(GetCollectionRequest { name: "c".into() })
            .await
            .unwrap()
            .into_inner();
        // Every acknowledged field index is there.
        let indexed: Vec<&str> = info.field_indexes.iter().map(|f| f.key.as_str()).collect();
        for k in &fields_acked {
            assert!(
                indexed.contains(&k.as_str()),
                "round {round}: field index {k} lost: {indexed:?}"
            );
        }
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                tokio::spawn(writer(
                    addr.clone(),
                    w,
                    rng.next(),
                    model.clone(),
                    next.clone(),
                ))
            })
            .collect();
        if !info.trained && info.count >= 600 {
            // Kill during the background training (it may finish first on a fast machine).
            let r = c
                .train(TrainRequest {
                    collection: "c".into(),
                    index: None,
                    background: true,
                })
                .await;
            if r.is_ok() && trained_at.is_none() {
                trained_at = Some(round);
            }
        }
        if info.trained && round > KILLS / 2 && round % 3 == 0 {
            // A retraining (Train on a trained collection), for kills to land in: writes go
            // into a flat segment meanwhile, and the switch replaces every sealed segment.
            if c.train(TrainRequest {
                collection: "c".into(),
                index: None,
                background: true,
            })
            .await
            .is_ok()
            {
                retrains += 1;
            }
        }
        if round == 2 || round == KILLS / 2 + 1 {
            // A field index created while writers run (the kill may come right after).
            let key = if round == 2 { "v" } else { "x.y" };
            if c.create_field_index(CreateFieldIndexRequest {
                collection: "c".into(),
                field: Some(FieldIndex {
                    key: key.into(),
                    r#type: FieldType::Integer as i32,
                }),
            })
            .await
            .is_ok()
            {
                fields_acked.push(key.to_string());
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(40 + rng.below(260))).await;
        if round == KILLS / 2 {
            // Halfway, let a training finish (kills landed in it before), so that the second
            // half kills a trained collection: IVF appendable segments, seals, merges.
            for _ in 0..1200 {
                let i = c
                    .get_collection(GetCollectionRequest { name: "c".into() })
                    .await
                    .unwrap()
                    .into_inner();
                // Trained and the job over: the checkpoint that makes training durable ran.
                if i.trained && i.state == "ready" {
                    break;
                }
                if i.state != "training" && i.count >= 600 {
                    let _ = c
                        .train(TrainRequest {
                            collection: "c".into(),
                            index: None,
                            background: true,
                        })
                        .await;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        let state = c
            .get_collection(GetCollectionRequest { name: "c".into() })
            .await
            .map(|r| r.into_inner().state)
            .unwrap_or_default();
        child.kill().expect("SIGKILL");
        killed_training += usize::from(state == "training");
        let _ = child.wait();
        for h in handles {
            let _ = h.await;
        }
    }
    let (mut child, addr) = start(&data);
    let mut c = client(&addr).await;
    {
        let mut m = std::mem::take(&mut *model.lock());
        verify(&mut c, &mut m, KILLS).await;
        assert!(
            m.live.len() > 500,
            "too few writes acknowledged: {}",
            m.live.len()
        );
    }
    let info = c
        .get_collection(GetCollectionRequest { name: "c".into() })
        .await
        .unwrap()
        .into_inner();
    eprintln!(
        "crash test: {KILLS} kills ({killed_training} while training; {retrains} retrainings started), {} points live, trained {} (a train started in round {trained_at:?}), {} segments",
        info.count, info.trained, info.segments
    );
    let indexed: Vec<&str> = info.field_indexes.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(
        indexed, fields_acked,
        "field indexes after the last restart"
    );
    if cfg!(feature = "failpoints") {
        assert!(killed_training >= 1, "no kill landed in a training");
        assert!(info.trained, "no training finished");
        assert!(retrains >= 1, "no retraining started");
    }
    child.kill().unwrap();
    let _ = child.wait();
}

/// The log's fsync fails (fault injection in the real binary): the client gets UNAVAILABLE
/// saying the write was not applied, later writes are taken, and after a SIGKILL and a restart
/// every acknowledged write is there and no refused one.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_fsync_gets_a_clear_status_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut child, addr) = start_with(&data, "wal::fsync=2*return");
    let mut c = client(&addr).await;
    c.create_collection(CreateCollectionRequest {
        name: "c".into(),
        dim: DIM as u32,
        metric: Metric::L2 as i32,
        ..Default::default()
    })
    .await
    .unwrap();
    let up = |ids: Vec<u64>| UpsertRequest {
        collection: "c".into(),
        vectors: ids.iter().flat_map(|&i| vector(i, 0)).collect(),
        ids,
        ..Default::default()
    };
    let mut refused = Vec::new();
    let mut acked = Vec::new();
    for batch in 0..6u64 {
        let ids = vec![batch * 10, batch * 10 + 1];
        match c.upsert(up(ids.clone())).await {
            Ok(_) => acked.extend(ids),
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
                assert!(e.message().contains("not applied"), "{e:?}");
                refused.extend(ids);
            }
        }
    }
    assert_eq!(refused.len(), 4, "two failed fsyncs, two refused batches");
    child.kill().unwrap();
    let _ = child.wait();
    let (mut child, addr) = start_with(&data, "");
    let mut c = client(&addr).await;
    let got: Vec<u64> = c
        .get(GetRequest {
            collection: "c".into(),
            ids: (0..60).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .points
        .iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(got, acked);
    child.kill().unwrap();
    let _ = child.wait();
}

/// A drop whose client gives up (a 1 s deadline) while the collection trains (held 4 s before
/// publishing) goes on by itself and keeps the name until its files are gone: a Create of the
/// same name meanwhile is told to retry instead of starting a folder the drop then deletes.
/// Once created, 1,000 acknowledged upserts into the new collection survive a restart.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_drop_during_training_keeps_a_recreated_collection() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut child, addr) = start_with(&data, "train::before_publish=sleep(4000)");
    let mut c = client(&addr).await;
    let create = || CreateCollectionRequest {
        name: "d".into(),
        dim: DIM as u32,
        metric: Metric::L2 as i32,
        index: Some(IndexParams {
            nlist: 8,
            pq_m: 4,
            refine: Refine::F16 as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let up = |ids: Vec<u64>| UpsertRequest {
        collection: "d".into(),
        vectors: ids.iter().flat_map(|&i| vector(i, 0)).collect(),
        ids,
        ..Default::default()
    };
    c.create_collection(create()).await.unwrap();
    c.upsert(up((0..600).collect())).await.unwrap();
    c.train(TrainRequest {
        collection: "d".into(),
        background: true,
        ..Default::default()
    })
    .await
    .unwrap();
    // The training thread takes the collection's structural lock at once and then holds it
    // through the 4 s pause; give it that moment even on a loaded machine.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut drop_req =
        tonic::Request::new(::quiver_server::proto::DropCollectionRequest { name: "d".into() });
    drop_req.set_timeout(std::time::Duration::from_secs(1));
    let drop_sent = std::time::Instant::now();
    let dropped = c.drop_collection(drop_req).await;
    assert!(
        matches!(
            dropped.as_ref().map_err(|e| e.code()),
            Err(tonic::Code::DeadlineExceeded | tonic::Code::Cancelled)
        ),
        "the drop waits for the training, past the deadline: {dropped:?}"
    );
    // Create as soon as the server lets it.
    let started = std::time::Instant::now();
    let mut refused = 0;
    loop {
        match c.create_collection(create()).await {
            Ok(_) => break,
            Err(e) if e.code() == tonic::Code::Unavailable => {
                assert!(e.message().contains("dropped"), "{e:?}");
                refused += 1;
                assert!(started.elapsed().as_secs() < 60, "the drop never ended");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("create: {e:?}"),
        }
    }
    for batch in 0..10u64 {
        let ids: Vec<u64> = (batch * 100..(batch + 1) * 100).collect();
        c.upsert(up(ids)).await.unwrap();
    }
    // Past the old training's pause: whatever the old collection does after it must not touch
    // the new folder.
    let settle = std::time::Duration::from_secs(6).saturating_sub(drop_sent.elapsed());
    tokio::time::sleep(settle).await;
    child.kill().unwrap();
    let _ = child.wait();
    let (mut child, addr) = start_with(&data, "");
    let mut c = client(&addr).await;
    let info = c
        .get_collection(GetCollectionRequest { name: "d".into() })
        .await
        .expect("the re-created collection is there after the restart")
        .into_inner();
    assert_eq!(info.count, 1000);
    assert!(
        !info.trained,
        "the new collection is not the trained old one"
    );
    assert!(
        refused > 0,
        "the create ran while the drop still held the name"
    );
    child.kill().unwrap();
    let _ = child.wait();
}
