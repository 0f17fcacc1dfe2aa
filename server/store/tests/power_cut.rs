//! Power cuts at random moments lose no acknowledged operation and leave every collection
//! opening. Each seeded case runs a random sequence of writes (upserts with payloads, deletes
//! by id and by filter, payload edits, field indexes), checkpoints, trainings, compactions and
//! restarts on one collection while the background optimizer merges and checkpoints, with the
//! simulated disk of `sim_disk` watching every fsync. At random durability points it takes
//! the image a power cut there could leave (unsynced data and folder entries dropped, kept, or
//! torn); afterwards every image is opened and must hold exactly the state after the
//! operations acknowledged when it was begun (or after later ones: the image holds what files
//! held while it was built, and an operation may be in flight), and take writes again.
//!
//! It runs `QUIVER_POWER_CUT_CASES` cases (default 20) from seed `QUIVER_POWER_CUT_SEED`
//! (default 1), and more until `QUIVER_POWER_CUT_POINTS` crash points (default 1,000) were
//! checked; `scripts/power-cut` sweeps more seeds. Background work makes the interleavings,
//! and so the crash points, vary from run to run: a failure names its seed and operation.

mod common;
mod sim_disk;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{small_meta, Rng};
use quiver_engine::backend::cpu::CpuBackend;
use quiver_engine::payload;
use quiver_engine::payload::fields::{FieldSpec, FieldType};
use quiver_store::segment::SearchKey;
use quiver_store::wal::PayloadEdit;
use quiver_store::{Collection, CollectionsFolder, Optimizer, StoreConfig};
use serde_json::{json, Map, Value};
use sim_disk::SimDisk;

type C = Collection<CpuBackend>;

const DIM: usize = 4;
/// Ids are drawn below this, so upserts overwrite and deletes hit.
const ID_SPACE: u64 = 400;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Small enough that checkpoints, seals, merges and purges happen every few operations.
fn store_config() -> StoreConfig {
    StoreConfig {
        checkpoint_wal_bytes: 3_000,
        seal_rows: 60,
        merge_factor: 2,
        max_segments: 3,
        purge_ratio: 0.2,
        write_nice: 0,
        ..StoreConfig::default()
    }
}

/// The vector an upsert at step `step` writes for `id` (a rewrite changes it).
fn vector(id: u64, step: usize) -> Vec<f32> {
    (0..DIM as u64)
        .map(|j| ((id * 31 + j * 17 + step as u64 * 7) % 101) as f32 / 101.0 + j as f32)
        .collect()
}

/// One operation of a case.
#[derive(Debug, Clone)]
enum Op {
    Upsert(Vec<u64>),
    Delete(Vec<u64>),
    /// Delete the points whose `g` is this.
    DeleteWhereG(i64),
    Merge(Vec<u64>),
    Replace(Vec<u64>),
    DeleteKey(Vec<u64>, &'static str),
    Clear(Vec<u64>),
    IndexField(&'static str),
    DropFieldIndex(&'static str),
    Checkpoint,
    Train,
    Compact,
    Restart,
    /// The collection is dropped (through its folder, as the service does) ...
    Drop,
    /// ... and created again, empty.
    Create,
}

fn some_ids(rng: &mut Rng, max: u64) -> Vec<u64> {
    let n = 1 + rng.below(max);
    let mut ids: Vec<u64> = (0..n).map(|_| rng.below(ID_SPACE)).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn ops(rng: &mut Rng, count: usize) -> Vec<Op> {
    (0..count)
        .map(|_| match rng.below(100) {
            0..=39 => Op::Upsert(some_ids(rng, 60)),
            40..=49 => Op::Delete(some_ids(rng, 20)),
            50..=53 => Op::DeleteWhereG(rng.below(7) as i64),
            54..=61 => Op::Merge(some_ids(rng, 20)),
            62..=65 => Op::Replace(some_ids(rng, 10)),
            66..=68 => Op::DeleteKey(some_ids(rng, 10), ["e", "g"][rng.below(2) as usize]),
            69..=71 => Op::Clear(some_ids(rng, 5)),
            72..=75 => Op::IndexField(["g", "e"][rng.below(2) as usize]),
            76..=77 => Op::DropFieldIndex(["g", "e"][rng.below(2) as usize]),
            78..=85 => Op::Checkpoint,
            86..=90 => Op::Train,
            91..=94 => Op::Compact,
            95..=97 => Op::Restart,
            _ => Op::Drop,
        })
        // A drop is followed by a create of the same name.
        .flat_map(|op| match op {
            Op::Drop => vec![Op::Drop, Op::Create],
            op => vec![op],
        })
        .collect()
}

/// What the collection must hold: whether it exists, each point's vector and payload, and
/// the indexed fields.
#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    exists: bool,
    points: BTreeMap<u64, (Vec<f32>, Map<String, Value>)>,
    fields: Vec<String>,
}

fn spec(key: &str) -> FieldSpec {
    FieldSpec {
        key: key.to_string(),
        kind: FieldType::Integer,
    }
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("payloads here are objects"),
    }
}

impl Model {
    /// The model after `op`, applied at `step`.
    fn after(&self, op: &Op, step: usize) -> Model {
        let mut m = self.clone();
        let live = |m: &Model, ids: &[u64]| -> Vec<u64> {
            ids.iter()
                .copied()
                .filter(|i| m.points.contains_key(i))
                .collect()
        };
        match op {
            Op::Upsert(ids) => {
                for &id in ids {
                    let p = object(json!({"g": (id % 7) as i64, "s": step}));
                    m.points.insert(id, (vector(id, step), p));
                }
            }
            Op::Delete(ids) => {
                for id in ids {
                    m.points.remove(id);
                }
            }
            Op::DeleteWhereG(g) => m
                .points
                .retain(|_, (_, p)| p.get("g").and_then(Value::as_i64) != Some(*g)),
            Op::Merge(ids) => {
                for id in live(&m, ids) {
                    let p = &mut m.points.get_mut(&id).expect("live").1;
                    p.insert("e".into(), json!(step));
                }
            }
            Op::Replace(ids) => {
                for id in live(&m, ids) {
                    m.points.get_mut(&id).expect("live").1 =
                        object(json!({"g": (step % 7) as i64, "r": step}));
                }
            }
            Op::DeleteKey(ids, key) => {
                for id in live(&m, ids) {
                    m.points.get_mut(&id).expect("live").1.remove(*key);
                }
            }
            Op::Clear(ids) => {
                for id in live(&m, ids) {
                    m.points.get_mut(&id).expect("live").1 = Map::new();
                }
            }
            Op::IndexField(k) => {
                if !m.fields.iter().any(|f| f == k) {
                    m.fields.push(k.to_string());
                }
            }
            Op::DropFieldIndex(k) => m.fields.retain(|f| f != k),
            Op::Checkpoint | Op::Train | Op::Compact | Op::Restart => {}
            Op::Drop => m = Model::default(),
            Op::Create => {
                m = Model {
                    exists: true,
                    ..Model::default()
                }
            }
        }
        m
    }
}

fn encode(v: Value) -> Vec<u8> {
    payload::encode(&v).expect("payload")
}

/// Runs `op` (at `step`) on the collection in `slot`.
/// The collection being tested, in its folder.
struct Live {
    folder: CollectionsFolder,
    train_at: u64,
    optimizer: Optimizer<CpuBackend>,
}

/// Runs `op` (at `step`) on the collection in `slot`.
fn run(slot: &mut Arc<C>, live: &Live, op: &Op, step: usize) {
    let c = slot.clone();
    let dir = live.folder.path("c");
    let optimizer = &live.optimizer;
    match op {
        Op::Upsert(ids) => {
            let vectors = ids.iter().flat_map(|&i| vector(i, step)).collect();
            let payloads = ids
                .iter()
                .map(|&i| encode(json!({"g": (i % 7) as i64, "s": step})))
                .collect();
            c.upsert_with_payloads(ids.clone(), vectors, payloads)
                .expect("upsert");
        }
        Op::Delete(ids) => {
            c.delete(ids.clone()).expect("delete");
        }
        Op::DeleteWhereG(g) => {
            c.delete_filter(&format!(
                r#"{{"must":[{{"key":"g","match":{{"value":{g}}}}}]}}"#
            ))
            .expect("delete by filter");
        }
        Op::Merge(ids) => {
            c.set_payload(ids.clone(), PayloadEdit::Merge(encode(json!({"e": step}))))
                .expect("merge");
        }
        Op::Replace(ids) => {
            let p = encode(json!({"g": (step % 7) as i64, "r": step}));
            c.set_payload(ids.clone(), PayloadEdit::Replace(p))
                .expect("replace");
        }
        Op::DeleteKey(ids, key) => {
            c.set_payload(ids.clone(), PayloadEdit::DeleteKeys(vec![key.to_string()]))
                .expect("delete key");
        }
        Op::Clear(ids) => {
            c.set_payload(ids.clone(), PayloadEdit::Clear)
                .expect("clear");
        }
        Op::IndexField(k) => {
            c.create_field_index(spec(k)).expect("field index");
        }
        Op::DropFieldIndex(k) => {
            c.delete_field_index(k).expect("drop field index");
        }
        Op::Checkpoint => {
            c.checkpoint().expect("checkpoint");
        }
        Op::Train => {
            // Refused while a training by size runs; either way it ends before the next op.
            let _ = c.start_train(None);
            let _ = c.wait_job();
        }
        Op::Compact => {
            let _ = c.wait_job();
            c.compact().expect("compact");
        }
        Op::Restart => {
            c.close();
            let _ = c.wait_job();
            drop(c);
            *slot = Arc::new(C::open(&dir, CpuBackend, store_config()).expect("reopen"));
            optimizer.register(slot);
        }
        Op::Drop => {
            let _ = c.wait_job();
            live.folder.remove("c", Some(&c)).expect("drop");
        }
        Op::Create => {
            let meta = small_meta("c", DIM, live.train_at);
            *slot = Arc::new(
                live.folder
                    .create(meta, CpuBackend, store_config())
                    .expect("create"),
            );
            optimizer.register(slot);
        }
    }
}

/// What a collection opened from an image holds.
fn contents(c: &C) -> Model {
    let mut points = BTreeMap::new();
    let mut offset = None;
    loop {
        let (page, next) = c.scroll(None, offset, 256);
        let ids: Vec<u64> = page.iter().map(|p| p.0).collect();
        for (id, v, p) in c.get_points(&ids) {
            points.insert(id, (v, payload::decode(&p)));
        }
        match next {
            Some(n) => offset = Some(n),
            None => break,
        }
    }
    let mut fields: Vec<String> = c.field_specs().into_iter().map(|f| f.key).collect();
    fields.sort();
    Model {
        exists: true,
        points,
        fields,
    }
}

fn sorted_fields(m: &Model) -> Model {
    let mut m = m.clone();
    m.fields.sort();
    m
}

/// Opens the image of `case`/`image` and checks it against the states it may hold.
fn check_image(
    work: &Path,
    name: &str,
    image: &sim_disk::Image,
    states: &[Model],
    write_after: bool,
) -> Result<(), String> {
    let root = work.join(name);
    image
        .tree
        .write(&root)
        .map_err(|e| format!("writing the image: {e}"))?;
    // Opened as the service opens its data: leftovers removed, each collection listed.
    let folder =
        CollectionsFolder::open(&root).map_err(|e| format!("the folder does not open: {e}"))?;
    let names = folder.names().map_err(|e| format!("listing: {e}"))?;
    let opened = match names.iter().any(|n| n == "c") {
        true => Some(
            C::open(&folder.path("c"), CpuBackend, store_config())
                .map_err(|e| format!("does not open: {e}"))?,
        ),
        false => None,
    };
    let got = opened.as_ref().map(contents).unwrap_or_default();
    // Every operation acknowledged before the image was begun is in it; the one in flight
    // when it was done, and any acknowledged meanwhile, may be.
    let acked = image.label as usize;
    let allowed: Vec<&Model> = states[acked..(image.label_after as usize + 2).min(states.len())]
        .iter()
        .collect();
    if !allowed.iter().any(|m| sorted_fields(m) == got) {
        let diffs: Vec<String> = allowed
            .iter()
            .map(|m| {
                let want = sorted_fields(m);
                let lost: Vec<u64> = want
                    .points
                    .keys()
                    .filter(|k| !got.points.contains_key(k))
                    .copied()
                    .collect();
                let extra: Vec<u64> = got
                    .points
                    .keys()
                    .filter(|k| !want.points.contains_key(k))
                    .copied()
                    .collect();
                let changed: Vec<String> = want
                    .points
                    .iter()
                    .filter_map(|(k, v)| {
                        let g = got.points.get(k)?;
                        (g != v).then(|| format!("{k}: {:?} for {:?}", g, v))
                    })
                    .take(3)
                    .collect();
                format!(
                    "{} points expected: lost {lost:?}, unexpected {extra:?}, changed {changed:?}; fields {:?}",
                    want.points.len(),
                    want.fields
                )
            })
            .collect();
        return Err(format!(
            "{acked} operations acknowledged: {} points held, fields {:?}; versus the states allowed: {}",
            got.points.len(),
            got.fields,
            diffs.join(" | ")
        ));
    }
    let Some(c) = opened else {
        return Ok(());
    };
    // Searches answer.
    let key = SearchKey {
        k: 5,
        nprobe: 0,
        refine_factor: 0,
    };
    let found = c
        .search(&vector(1, 0), 1, key)
        .map_err(|e| format!("search: {e}"))?;
    let hits = found.ids.iter().filter(|&&i| i >= 0).count();
    if hits != got.points.len().min(5) {
        return Err(format!(
            "search found {hits} of {} points",
            got.points.len()
        ));
    }
    if write_after {
        // It takes writes, and they survive a restart.
        let id = 1_000_000;
        c.upsert(vec![id], vector(id, 0))
            .map_err(|e| format!("write after recovery: {e}"))?;
        c.checkpoint()
            .map_err(|e| format!("checkpoint after recovery: {e}"))?;
        c.close();
        drop(c);
        let c = C::open(&folder.path("c"), CpuBackend, store_config())
            .map_err(|e| format!("reopen after recovery: {e}"))?;
        if c.get(&[id]).len() != 1 || c.count(None) != got.points.len() + 1 {
            return Err("a write after recovery was lost".into());
        }
    }
    Ok(())
}

/// One case: its operations, run under the simulated disk; returns the images taken and the
/// model after each acknowledged operation.
fn run_case(seed: u64, work: &Path) -> (Vec<sim_disk::Image>, Vec<Model>, Vec<Op>) {
    let mut rng = Rng(seed);
    let train_at = [0, 120, 250][rng.below(3) as usize];
    let count = 40 + rng.below(30) as usize;
    let ops = ops(&mut rng, count);
    let root = work.join("live");
    std::fs::create_dir_all(&root).expect("work folder");
    let acked = Arc::new(AtomicU64::new(0));
    let label = acked.clone();
    let disk = SimDisk::new(&root, seed ^ 0x5eed, 0.25, move || {
        label.load(Ordering::SeqCst)
    });
    quiver_engine::io::sync::observe(Some(disk.clone()));
    // Opened under the simulated disk: the catalog's first write is cut too.
    let folder = CollectionsFolder::open(&root).expect("folder");
    let live_state = Live {
        folder,
        train_at,
        optimizer: Optimizer::start(Duration::from_millis(1), 0, 2).expect("optimizer"),
    };
    let mut c = Arc::new(
        live_state
            .folder
            .create(small_meta("c", DIM, train_at), CpuBackend, store_config())
            .expect("create"),
    );
    live_state.optimizer.register(&c);
    let mut states = vec![
        Model::default(),
        Model {
            exists: true,
            ..Model::default()
        },
    ];
    acked.store(1, Ordering::SeqCst);
    for (i, op) in ops.iter().enumerate() {
        let step = i + 1;
        let next = states[step].after(op, step);
        run(&mut c, &live_state, op, step);
        states.push(next);
        acked.store(step as u64 + 1, Ordering::SeqCst);
    }
    let _ = c.wait_job();
    // The live collection holds what every operation was acknowledged for.
    let live = contents(&c);
    let want = sorted_fields(states.last().expect("states"));
    assert!(
        live == want,
        "seed {seed}: the live collection differs from the model after every operation: {} points held, {} expected",
        live.points.len(),
        want.points.len()
    );
    c.close();
    drop(live_state);
    quiver_engine::io::sync::observe(None);
    (disk.take_images(), states, ops)
}

#[test]
fn power_cuts_lose_no_acknowledged_operation() {
    let min_cases = env_u64("QUIVER_POWER_CUT_CASES", 20);
    let min_points = env_u64("QUIVER_POWER_CUT_POINTS", 1_000);
    let first = env_u64("QUIVER_POWER_CUT_SEED", 1);
    let mut crash_points = 0;
    let mut failures = Vec::new();
    let started = std::time::Instant::now();
    let mut cases = 0;
    // At least `min_cases` cases, and more until `min_points` crash points were checked.
    while cases < min_cases || crash_points < min_points {
        let seed = first + cases;
        cases += 1;
        let work = tempfile::tempdir().expect("temp folder");
        let (images, states, ops) = run_case(seed, work.path());
        for (n, image) in images.iter().enumerate() {
            crash_points += 1;
            if let Err(e) = check_image(work.path(), &format!("img{n}"), image, &states, n % 5 == 0)
            {
                let op = (image.label as usize)
                    .checked_sub(1)
                    .and_then(|i| ops.get(i));
                failures.push(format!(
                    "seed {seed}, durability point {}, during {:?}: {e}",
                    image.event,
                    op.map(|o| format!("{o:?}"))
                        .unwrap_or_else(|| "create".into())
                ));
            }
        }
    }
    eprintln!(
        "{cases} cases, {crash_points} crash points, {} failed, {:.1} s",
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
