//! Two stores given the same op sequence under different timings end in the same state: the
//! same answers (ids and bit-identical distances) and the same points. They differ in seal
//! size, merge settings, when the optimizer runs (seeded at random between ops) and a restart
//! in the middle of one; each trains at the same point of the sequence, and both finish their
//! background work before they are compared. Runs on 20,000 of the MiniLM vectors in
//! `../shared/data/minilm-pydocs` (QUIVER_MINILM_DIR elsewhere) and skips, saying so, when
//! they are absent.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use quiver_engine::backend::cpu::CpuBackend;
use quiver_engine::backend::Neighbors;
use quiver_engine::payload;
use quiver_store::segment::SearchKey;
use quiver_store::wal::PayloadEdit;
use quiver_store::{Collection, CollectionMeta, IndexConfig, JobState, StoreConfig};

type C = Collection<CpuBackend>;

const POINTS: usize = 20_000;
const QUERIES: usize = 1_000;

fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("QUIVER_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/minilm-pydocs")
        });
    if dir.join("base-00.fvecs").exists() {
        Some(dir)
    } else {
        eprintln!("skipped: {} not found", dir.display());
        None
    }
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One write of the sequence.
enum Op {
    Upsert(Vec<u64>),
    Delete(Vec<u64>),
    Edit(Vec<u64>, u32),
    Train,
}

/// The op sequence: every point upserted in batches of 50–500, deletes and payload edits of
/// earlier points between them, a training once 12,000 points were written, some points
/// written again after it, and a retraining once 18,000 were (its inputs lie in segments
/// merged differently in each store).
fn ops(seed: u64) -> Vec<Op> {
    let mut rng = Rng(seed | 1);
    let (mut out, mut next, mut trained, mut retrained) = (Vec::new(), 0u64, false, false);
    while (next as usize) < POINTS {
        let n = (50 + rng.below(451)).min(POINTS as u64 - next);
        out.push(Op::Upsert((next..next + n).collect()));
        next += n;
        match rng.below(10) {
            0 => out.push(Op::Delete(some(&mut rng, 20, next))),
            1 | 2 => out.push(Op::Edit(some(&mut rng, 50, next), rng.below(1000) as u32)),
            3 if trained => out.push(Op::Upsert(some(&mut rng, 100, next))),
            _ => {}
        }
        if !trained && next >= 12_000 {
            out.push(Op::Train);
            trained = true;
        }
        if !retrained && next >= 18_000 {
            out.push(Op::Train);
            retrained = true;
        }
    }
    out
}

/// Up to `n` distinct ids below `below`, ascending.
fn some(rng: &mut Rng, n: usize, below: u64) -> Vec<u64> {
    let mut ids: Vec<u64> = (0..n).map(|_| rng.below(below)).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn meta() -> CollectionMeta {
    CollectionMeta {
        name: "d".into(),
        dim: 384,
        metric: "ip".into(),
        index: IndexConfig {
            nlist: 64,
            pq_m: 48,
            refine: "f32".into(),
            refine_factor: 0,
            seed: 5,
            train_at: 0,
        },
        fields: Vec::new(),
        settings: serde_json::Value::Null,
    }
}

/// Runs every step the optimizer has due, and waits for a training it started.
fn settle(c: &Arc<C>) {
    loop {
        while c.optimize_step().unwrap() {}
        if c.job() != JobState::Training {
            return;
        }
        let _ = c.wait_job();
    }
}

/// Applies `ops` to a new store at `path` with `cfg`: the optimizer runs at random points
/// (drawn from `timing`), and with `restart_at` the store is closed and opened again there.
fn run(
    path: &Path,
    cfg: StoreConfig,
    ops: &[Op],
    base: &[f32],
    timing: u64,
    restart_at: Option<usize>,
) -> Arc<C> {
    let mut rng = Rng(timing | 1);
    let mut c = Arc::new(C::create(path, meta(), CpuBackend, cfg.clone()).unwrap());
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Upsert(ids) => {
                let v: Vec<f32> = ids
                    .iter()
                    .flat_map(|&id| base[id as usize * 384..(id as usize + 1) * 384].to_vec())
                    .collect();
                let p: Vec<Vec<u8>> = ids
                    .iter()
                    .map(|id| payload::encode_text(&format!(r#"{{"g":{}}}"#, id % 7)).unwrap())
                    .collect();
                c.upsert_with_payloads(ids.clone(), v, p).unwrap();
            }
            Op::Delete(ids) => {
                c.delete(ids.clone()).unwrap();
            }
            Op::Edit(ids, value) => {
                let merge = payload::encode_text(&format!(r#"{{"e":{value}}}"#)).unwrap();
                c.set_payload(ids.clone(), PayloadEdit::Merge(merge))
                    .unwrap();
            }
            Op::Train => {
                settle(&c);
                c.start_train(None).unwrap();
                c.wait_job().unwrap();
            }
        }
        for _ in 0..rng.below(3) {
            if !c.optimize_step().unwrap() {
                break;
            }
        }
        if restart_at == Some(i) {
            settle(&c);
            drop(c);
            c = Arc::new(C::open(path, CpuBackend, cfg.clone()).unwrap());
        }
    }
    settle(&c);
    c
}

fn bits(n: &Neighbors) -> (Vec<i64>, Vec<u32>) {
    (
        n.ids.clone(),
        n.distances.iter().map(|d| d.to_bits()).collect(),
    )
}

/// The first [`POINTS`] base vectors and [`QUERIES`] queries.
fn data(d: &Path) -> (Vec<f32>, Vec<f32>) {
    let (dim, mut base) = quiver_engine::io::read_all_f32(d.join("base-00.fvecs")).unwrap();
    assert_eq!(dim, 384);
    base.truncate(POINTS * dim);
    let (_, mut queries) = quiver_engine::io::read_all_f32(d.join("query.fvecs")).unwrap();
    queries.truncate(QUERIES * dim);
    (base, queries)
}

#[test]
fn stores_given_the_same_ops_under_different_timings_answer_alike() {
    let Some(d) = data_dir() else { return };
    let (base, queries) = data(&d);
    let dim = 384;
    let nq = queries.len() / dim;
    let ops = ops(42);
    let split = ops.iter().position(|o| matches!(o, Op::Train)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let small = StoreConfig {
        seal_rows: 700,
        merge_factor: 2,
        max_segments: 3,
        ..StoreConfig::default()
    };
    let large = StoreConfig {
        seal_rows: 5_000,
        merge_factor: 8,
        max_segments: 16,
        ..StoreConfig::default()
    };
    // Before training (flat: exact search), then at the end (IVF-PQ).
    let keys = [
        SearchKey {
            k: 10,
            nprobe: 0,
            refine_factor: 0,
        },
        SearchKey {
            k: 10,
            nprobe: 64,
            refine_factor: 100,
        },
        SearchKey {
            k: 10,
            nprobe: 4,
            refine_factor: 1,
        },
    ];
    let stages: [(&str, &[Op]); 2] = [("untrained", &ops[..split]), ("trained", &ops)];
    for (stage, ops) in stages {
        let a = run(
            &dir.path().join(format!("{stage}-a")),
            small.clone(),
            ops,
            &base,
            1,
            None,
        );
        let b = run(
            &dir.path().join(format!("{stage}-b")),
            large.clone(),
            ops,
            &base,
            2,
            Some(ops.len() / 2),
        );
        let (sa, sb) = (a.version().segments.len(), b.version().segments.len());
        assert_eq!(a.trained(), stage == "trained");
        for key in keys {
            let (ra, rb) = (
                a.search(&queries, nq, key).unwrap(),
                b.search(&queries, nq, key).unwrap(),
            );
            let (ba, bb) = (bits(&ra), bits(&rb));
            let differ = (0..nq)
                .filter(|&q| {
                    ba.0[q * 10..(q + 1) * 10] != bb.0[q * 10..(q + 1) * 10]
                        || ba.1[q * 10..(q + 1) * 10] != bb.1[q * 10..(q + 1) * 10]
                })
                .count();
            eprintln!(
                "{stage} ({sa} vs {sb} sealed segments), {key:?}: {differ} of {nq} queries differ"
            );
            assert_eq!(differ, 0, "{stage}, {key:?}");
        }
        let all: Vec<u64> = (0..POINTS as u64).collect();
        let (pa, pb) = (a.get_points(&all), b.get_points(&all));
        assert_eq!(pa.len(), pb.len());
        for (x, y) in pa.iter().zip(&pb) {
            assert_eq!(x.0, y.0);
            assert!(
                x.1.iter()
                    .zip(&y.1)
                    .all(|(u, v)| u.to_bits() == v.to_bits()),
                "point {}",
                x.0
            );
            assert_eq!(x.2, y.2, "payload of {}", x.0);
        }
    }
}

/// The answers of a store at the end of the sequence (default search parameters), and its
/// points, as bytes: what the SIMD comparison below compares across processes.
fn answers(base: &[f32], queries: &[f32], dir: &Path) -> Vec<u8> {
    let c = run(
        &dir.join("s"),
        StoreConfig::default(),
        &ops(42),
        base,
        1,
        None,
    );
    let nq = queries.len() / 384;
    let key = SearchKey {
        k: 10,
        nprobe: 0,
        refine_factor: 0,
    };
    let r = c.search(queries, nq, key).unwrap();
    let mut out = Vec::new();
    for q in 0..nq {
        for j in 0..10 {
            out.extend_from_slice(&r.ids[q * 10 + j].to_le_bytes());
            out.extend_from_slice(&r.distances[q * 10 + j].to_bits().to_le_bytes());
        }
    }
    let all: Vec<u64> = (0..POINTS as u64).collect();
    for (id, v, p) in c.get_points(&all) {
        out.extend_from_slice(&id.to_le_bytes());
        v.iter()
            .for_each(|x| out.extend_from_slice(&x.to_bits().to_le_bytes()));
        out.extend_from_slice(&p);
    }
    out
}

/// Replicas may run on CPUs with different SIMD: the same op sequence run by this test's
/// binary under each `QUIVER_SIMD` level the CPU has ends with the same points (`Get`: the
/// same bits) and answers with the same ids in the same order; the distances differ only in
/// their last bits (each level sums a dot product in its own lane order, with or without
/// fused multiply-adds), at most a relative 1e-5 apart.
#[test]
fn stores_on_different_simd_levels_answer_alike() {
    let Some(d) = data_dir() else { return };
    if let Some(out) = std::env::var_os("QUIVER_DETERMINISM_OUT") {
        // The child: one run at the level its environment forces.
        let (base, queries) = data(&d);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(out, answers(&base, &queries, dir.path())).unwrap();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // One child process per level, all at once (each is single-threaded for the most part).
    let children: Vec<(&str, std::path::PathBuf, std::process::Child)> =
        ["scalar", "avx2", "avx512vbmi"]
            .into_iter()
            .map(|level| {
                let out = dir.path().join(level);
                let child = std::process::Command::new(std::env::current_exe().unwrap())
                    .args([
                        "--exact",
                        "stores_on_different_simd_levels_answer_alike",
                        "--nocapture",
                    ])
                    .env("QUIVER_SIMD", level)
                    .env("QUIVER_DETERMINISM_OUT", &out)
                    .spawn()
                    .unwrap();
                (level, out, child)
            })
            .collect();
    let mut runs: Vec<(String, Vec<u8>)> = Vec::new();
    for (level, out, mut child) in children {
        let status = child.wait().unwrap();
        assert!(status.success(), "{level}");
        runs.push((level.to_string(), std::fs::read(&out).unwrap()));
    }
    let results = QUERIES * 10 * 12;
    let at = |b: &[u8], q: usize, j: usize| {
        let o = q * 120 + j * 12;
        (
            i64::from_le_bytes(b[o..o + 8].try_into().unwrap()),
            f32::from_le_bytes(b[o + 8..o + 12].try_into().unwrap()),
        )
    };
    for (level, got) in &runs[1..] {
        let want = &runs[0].1;
        let (mut ids_differ, mut bits_differ, mut worst) = (0, 0, 0f64);
        for q in 0..QUERIES {
            let (mut ids, mut bits) = (false, false);
            for j in 0..10 {
                let ((gi, gd), (wi, wd)) = (at(got, q, j), at(want, q, j));
                ids |= gi != wi;
                bits |= gd.to_bits() != wd.to_bits();
                let rel = (f64::from(gd) - f64::from(wd)).abs() / f64::from(wd).abs().max(1e-6);
                worst = worst.max(rel);
            }
            ids_differ += usize::from(ids);
            bits_differ += usize::from(bits);
        }
        let points = got[results..] == want[results..];
        eprintln!(
            "{level} vs scalar: {ids_differ} of {QUERIES} answers differ in ids, {bits_differ} in distance bits (largest relative difference {worst:.2e}); points {}",
            if points { "identical" } else { "differ" }
        );
        assert_eq!(ids_differ, 0, "{level}: ids");
        assert!(worst <= 1e-5, "{level}: distances {worst:e} apart");
        assert!(points, "{level}: points");
    }
}
