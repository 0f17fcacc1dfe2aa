//! Index files of every released format version must keep loading. `fixtures/vN/` holds an
//! index written by format version N, the queries it was searched with and the answers it
//! gave; these tests load each with today's code and expect the same answers.
//! - v1: L2, 8-bit PQ, residual codes, f16 refine.
//! - v2: cosine, 4-bit fast-scan codes of the vectors themselves (the PARAMS flags byte that
//!   version 2 added), f16 refine.
//!
//! Regenerate only the current version's folder, when adding a new format version:
//! `cargo test --test fixture -- --ignored regenerate_current_fixture`

mod common;

use std::path::PathBuf;

use common::{quiver_ok, read_ivecs};

fn dir(version: u32) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/v{version}"))
}

fn search(version: u32, index: &str, out: &str) {
    let q = dir(version).join("queries.fvecs");
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

/// Loads fixture `version`, checks `quiver info` shows `lines`, and searches it.
fn check_fixture(version: u32, lines: &[&str]) {
    let index = dir(version).join("index.qvr");
    let info = quiver_ok(&["info", index.to_str().unwrap()]);
    for line in lines {
        assert!(info.contains(line), "missing {line:?} in:\n{info}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("r.ivecs");
    search(version, index.to_str().unwrap(), out.to_str().unwrap());
    assert_eq!(
        read_ivecs(&out),
        read_ivecs(&dir(version).join("expected.ivecs"))
    );
    // Each query is a base row: with refine it must find itself first.
    let (k, ids) = read_ivecs(&out);
    for (q, row) in ids.chunks(k).enumerate() {
        assert_eq!(row[0], (q * 37) as i32, "v{version} query {q}");
    }
}

#[test]
fn v1_fixture_loads_and_answers_as_when_written() {
    check_fixture(
        1,
        &[
            "metric          l2",
            "dimension       16",
            "vectors         400",
            "nlist           4",
            "refine          f16",
            "codes of        residual",
        ],
    );
}

#[test]
fn v2_fixture_loads_and_answers_as_when_written() {
    check_fixture(
        2,
        &[
            "metric          cosine",
            "vectors         400",
            "4 bits",
            "codes of        vector",
        ],
    );
}

#[test]
#[ignore = "writes the checked-in fixture; run only when creating a new format version"]
fn regenerate_current_fixture() {
    use quiver_engine::io::{write_f32, ElementType};
    let version = quiver_engine::persist::FORMAT_VERSION;
    let d = dir(version);
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
        "cosine",
        "--nlist",
        "4",
        "--pq",
        "8x4",
        "--refine",
        "f16",
        "--seed",
        "7",
        "--out",
        index.to_str().unwrap(),
    ]);
    std::fs::remove_file(&base).unwrap();
    search(
        version,
        index.to_str().unwrap(),
        d.join("expected.ivecs").to_str().unwrap(),
    );
}
