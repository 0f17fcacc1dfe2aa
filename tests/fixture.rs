//! Index files of every released format version must keep loading. `fixtures/v1/` holds an
//! index written by format version 1, the queries it was searched with and the answers it gave;
//! this test loads it with today's code and expects the same answers.
//!
//! Regenerate (only when adding a new format version, into a new folder):
//! `cargo test --test fixture -- --ignored regenerate_v1_fixture`

mod common;

use std::path::PathBuf;

use common::{quiver_ok, read_ivecs};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

fn search(index: &str, out: &str) {
    let q = dir().join("queries.fvecs");
    quiver_ok(&[
        "search",
        "--index",
        index,
        "--queries",
        q.to_str().unwrap(),
        "--k",
        "5",
        "--nprobe",
        "2",
        "--refine-factor",
        "4",
        "--out",
        out,
    ]);
}

#[test]
fn v1_fixture_loads_and_answers_as_when_written() {
    let index = dir().join("index.qvr");
    let info = quiver_ok(&["info", index.to_str().unwrap()]);
    for line in [
        "metric          l2",
        "dimension       16",
        "vectors         400",
        "nlist           4",
        "refine          f16",
    ] {
        assert!(info.contains(line), "missing {line:?} in:\n{info}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("r.ivecs");
    search(index.to_str().unwrap(), out.to_str().unwrap());
    assert_eq!(read_ivecs(&out), read_ivecs(&dir().join("expected.ivecs")));
    // Each query is a base row: with refine it must find itself first.
    let (k, ids) = read_ivecs(&out);
    for (q, row) in ids.chunks(k).enumerate() {
        assert_eq!(row[0], (q * 37) as i32, "query {q}");
    }
}

#[test]
#[ignore = "writes the checked-in fixture; run only when creating a new format version"]
fn regenerate_v1_fixture() {
    use quiver_engine::io::{write_f32, ElementType};
    let d = dir();
    std::fs::create_dir_all(&d).unwrap();
    let g = quiver_engine::synth::ClusteredGaussian::new(16, 8, 0.3, 5);
    write_f32(d.join("base.fvecs"), 16, ElementType::F32, &g.rows(0, 400)).unwrap();
    let queries: Vec<f32> = (0..10).flat_map(|q| g.rows(q * 37, 1)).collect();
    write_f32(d.join("queries.fvecs"), 16, ElementType::F32, &queries).unwrap();
    let (base, index) = (d.join("base.fvecs"), d.join("index.qvr"));
    quiver_ok(&[
        "build",
        "--base",
        base.to_str().unwrap(),
        "--metric",
        "l2",
        "--nlist",
        "4",
        "--pq",
        "4",
        "--refine",
        "f16",
        "--seed",
        "7",
        "--out",
        index.to_str().unwrap(),
    ]);
    std::fs::remove_file(&base).unwrap();
    search(
        index.to_str().unwrap(),
        d.join("expected.ivecs").to_str().unwrap(),
    );
}
