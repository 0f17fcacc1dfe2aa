//! Acceptance checks on the real data set `../shared/data/minilm-pydocs` (100k × 384 MiniLM
//! embeddings, inner product). Heavy (about a minute each on 2 cores), so `#[ignore]`d; CI runs
//! them with `cargo test --test minilm -- --ignored`. They skip, saying so, when the data is
//! absent (set QUIVER_MINILM_DIR to point elsewhere).

mod common;

use std::path::PathBuf;

use common::{quiver_ok, read_ivecs};

fn data_dir() -> Option<PathBuf> {
    common::minilm_dir()
}

fn s(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
#[ignore = "heavy: builds an index of 100k real vectors"]
fn exhaustive_refined_search_equals_exact_ground_truth() {
    let Some(d) = data_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (b0, b1, q) = (
        s(&d.join("base-00.fvecs")),
        s(&d.join("base-01.fvecs")),
        s(&d.join("query.fvecs")),
    );
    let (idx, gt, res) = (
        s(&tmp.path().join("i.qvr")),
        s(&tmp.path().join("gt.ivecs")),
        s(&tmp.path().join("r.ivecs")),
    );
    quiver_ok(&[
        "build", "--base", &b0, &b1, "--metric", "ip", "--nlist", "256", "--pq", "48", "--refine",
        "f32", "--out", &idx,
    ]);
    quiver_ok(&[
        "gt",
        "--base",
        &b0,
        &b1,
        "--queries",
        &q,
        "--metric",
        "ip",
        "--k",
        "10",
        "--out",
        &gt,
    ]);
    quiver_ok(&[
        "search",
        "--index",
        &idx,
        "--queries",
        &q,
        "--k",
        "10",
        "--nprobe",
        "256",
        "--refine-factor",
        "1000",
        "--out",
        &res,
    ]);
    let (_, ours) = read_ivecs(tmp.path().join("gt.ivecs").as_path());
    let (_, got) = read_ivecs(tmp.path().join("r.ivecs").as_path());
    let (gk, shipped) = read_ivecs(&d.join("groundtruth.ivecs"));
    let mut same_as_gt = 0;
    let mut found_shipped = 0;
    for qi in 0..1000 {
        let row = &got[qi * 10..qi * 10 + 10];
        same_as_gt += row
            .iter()
            .filter(|id| ours[qi * 10..qi * 10 + 10].contains(id))
            .count();
        found_shipped += row
            .iter()
            .filter(|id| shipped[qi * gk..qi * gk + 10].contains(id))
            .count();
    }
    let (r1, r2) = (
        same_as_gt as f64 / 10_000.0,
        found_shipped as f64 / 10_000.0,
    );
    eprintln!("recall@10 against quiver gt {r1:.4}, against the shipped ground truth {r2:.4}");
    assert!(r1 >= 0.999 && r2 >= 0.999, "{r1} {r2}");
}

#[test]
#[ignore = "heavy: builds an index of 100k real vectors"]
fn ivf1024_pq48_f16_reaches_recall_090() {
    let Some(d) = data_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (b0, b1, q, gt) = (
        s(&d.join("base-00.fvecs")),
        s(&d.join("base-01.fvecs")),
        s(&d.join("query.fvecs")),
        s(&d.join("groundtruth.ivecs")),
    );
    let idx = s(&tmp.path().join("i.qvr"));
    quiver_ok(&[
        "build", "--base", &b0, &b1, "--metric", "ip", "--nlist", "1024", "--pq", "48", "--refine",
        "f16", "--out", &idx,
    ]);
    let out = quiver_ok(&[
        "bench",
        "--index",
        &idx,
        "--queries",
        &q,
        "--gt",
        &gt,
        "--k",
        "10",
        "--nprobe",
        "16,32,64,128",
        "--refine-factor",
        "10",
        "--repeat",
        "1",
        "--json",
    ]);
    eprintln!("{out}");
    let best = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["recall"]
                .as_f64()
                .unwrap()
        })
        .fold(0.0, f64::max);
    assert!(best >= 0.90, "best recall@10 {best} < 0.90");
}
