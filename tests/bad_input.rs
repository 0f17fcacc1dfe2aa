//! Every malformed input gets a clear message and a non-zero exit, never a panic: broken
//! vector files, out-of-range k / nprobe / PQ / nlist, NaN and infinity, dimension mismatch,
//! and damaged index files.

mod common;

use common::{quiver_err, quiver_ok, DataSet};
use quiver_engine::io::{write_f32, ElementType};

fn data_with_index() -> DataSet {
    let ds = DataSet::new(1500, 20, 16);
    quiver_ok(&[
        "build",
        "--base",
        &ds.p("base.fvecs"),
        "--metric",
        "l2",
        "--nlist",
        "8",
        "--pq",
        "4",
        "--refine",
        "f16",
        "--out",
        &ds.p("idx.qvr"),
    ]);
    ds
}

fn search_args(idx: &str, queries: &str, k: &str, nprobe: &str, out: &str) -> Vec<String> {
    [
        "search",
        "--index",
        idx,
        "--queries",
        queries,
        "--k",
        k,
        "--nprobe",
        nprobe,
        "--out",
        out,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn as_refs(v: &[String]) -> Vec<&str> {
    v.iter().map(|s| s.as_str()).collect()
}

#[test]
fn broken_vector_files() {
    let ds = DataSet::new(600, 5, 16);
    let good = std::fs::read(ds.path("base.fvecs")).unwrap();
    let build = |base: &str| {
        vec![
            "build", "--base", base, "--metric", "l2", "--nlist", "4", "--pq", "4", "--out",
        ]
        .into_iter()
        .map(String::from)
        .chain([ds.p("x.qvr")])
        .collect::<Vec<_>>()
    };
    // Truncated mid-record.
    std::fs::write(ds.path("trunc.fvecs"), &good[..good.len() - 10]).unwrap();
    quiver_err(&as_refs(&build(&ds.p("trunc.fvecs"))), "truncated");
    // A record with another dimension.
    let mut bad = good.clone();
    let rec = 4 + 16 * 4;
    bad[rec * 7..rec * 7 + 4].copy_from_slice(&17i32.to_le_bytes());
    std::fs::write(ds.path("dims.fvecs"), &bad).unwrap();
    quiver_err(
        &as_refs(&build(&ds.p("dims.fvecs"))),
        "record 7 has dimension 17",
    );
    // Unsupported dtype.
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }";
    let mut h = header.to_string();
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    npy.extend((h.len() as u16).to_le_bytes());
    npy.extend(h.as_bytes());
    npy.extend([0u8; 32]);
    std::fs::write(ds.path("f8.npy"), &npy).unwrap();
    quiver_err(&as_refs(&build(&ds.p("f8.npy"))), "unsupported dtype");
    // Empty, missing, unknown extension.
    std::fs::write(ds.path("empty.fvecs"), b"").unwrap();
    quiver_err(&as_refs(&build(&ds.p("empty.fvecs"))), "empty");
    quiver_err(&as_refs(&build(&ds.p("missing.fvecs"))), "missing.fvecs");
    std::fs::write(ds.path("v.txt"), b"1 2 3").unwrap();
    quiver_err(&as_refs(&build(&ds.p("v.txt"))), "extension");
}

#[test]
fn build_parameters_out_of_range() {
    let ds = DataSet::new(600, 5, 16);
    let b = ds.p("base.fvecs");
    let o = ds.p("x.qvr");
    quiver_err(
        &[
            "build", "--base", &b, "--metric", "l2", "--nlist", "4", "--pq", "5", "--out", &o,
        ],
        "does not divide dimension 16",
    );
    quiver_err(
        &[
            "build", "--base", &b, "--metric", "l2", "--nlist", "700", "--pq", "4", "--out", &o,
        ],
        "cannot train 700 clusters on 600",
    );
    quiver_err(
        &[
            "build", "--base", &b, "--metric", "l2", "--nlist", "0", "--pq", "4", "--out", &o,
        ],
        "nlist",
    );
    quiver_err(
        &[
            "build", "--base", &b, "--metric", "hamming", "--nlist", "4", "--pq", "4", "--out", &o,
        ],
        "unknown metric",
    );
    quiver_err(
        &[
            "build", "--base", &b, "--metric", "l2", "--nlist", "4", "--pq", "4", "--refine", "f8",
            "--out", &o,
        ],
        "refine",
    );
    quiver_err(
        &[
            "build",
            "--base",
            &b,
            "--metric",
            "l2",
            "--nlist",
            "4",
            "--pq",
            "4x4",
            "--codes-of",
            "vector",
            "--out",
            &o,
        ],
        "need metric ip or cosine",
    );
    assert!(
        !ds.path("x.qvr").exists(),
        "a failed build left an index behind"
    );
}

#[test]
fn non_finite_values_and_zero_vectors() {
    let ds = DataSet::new(600, 5, 16);
    let mut rows = quiver_engine::synth::ClusteredGaussian::new(16, 4, 0.3, 1).rows(0, 600);
    rows[16 * 321 + 5] = f32::NAN;
    write_f32(ds.path("nan.fvecs"), 16, ElementType::F32, &rows).unwrap();
    quiver_err(
        &[
            "build",
            "--base",
            &ds.p("nan.fvecs"),
            "--metric",
            "l2",
            "--nlist",
            "4",
            "--pq",
            "4",
            "--out",
            &ds.p("x.qvr"),
        ],
        "vector 321 holds a non-finite value",
    );
    rows[16 * 321 + 5] = 0.0;
    rows[16 * 599..].fill(0.0);
    write_f32(ds.path("zero.fvecs"), 16, ElementType::F32, &rows).unwrap();
    quiver_err(
        &[
            "build",
            "--base",
            &ds.p("zero.fvecs"),
            "--metric",
            "cosine",
            "--nlist",
            "4",
            "--pq",
            "4",
            "--out",
            &ds.p("x.qvr"),
        ],
        "vector 599 has zero length",
    );
    // Infinity in a query.
    let ds = data_with_index();
    let mut q = quiver_engine::synth::ClusteredGaussian::new(16, 4, 0.3, 1).rows(0, 3);
    q[16 + 2] = f32::INFINITY;
    write_f32(ds.path("inf.fvecs"), 16, ElementType::F32, &q).unwrap();
    let args = search_args(
        &ds.p("idx.qvr"),
        &ds.p("inf.fvecs"),
        "5",
        "2",
        &ds.p("r.ivecs"),
    );
    quiver_err(&as_refs(&args), "vector 1 holds a non-finite value (inf)");
    assert!(
        !ds.path("r.ivecs").exists(),
        "a failed search left a partial output"
    );
}

#[test]
fn search_parameters_out_of_range() {
    let ds = data_with_index();
    let (i, q, o) = (ds.p("idx.qvr"), ds.p("query.fvecs"), ds.p("r.ivecs"));
    quiver_err(
        &as_refs(&search_args(&i, &q, "0", "2", &o)),
        "k = 0 is out of range",
    );
    quiver_err(
        &as_refs(&search_args(&i, &q, "5", "0", &o)),
        "nprobe = 0 is out of range",
    );
    quiver_err(&as_refs(&search_args(&i, &q, "5", "9", &o)), "nlist = 8");
    quiver_err(&as_refs(&search_args(&i, &q, "-3", "2", &o)), "-3");
    quiver_err(
        &as_refs(&search_args(&i, &q, "100000000", "2", &o)),
        "out of range",
    );
    // Query dimension differs from the index's.
    write_f32(ds.path("q8.fvecs"), 8, ElementType::F32, &[0.5; 16]).unwrap();
    quiver_err(
        &as_refs(&search_args(&i, &ds.p("q8.fvecs"), "5", "2", &o)),
        "dimension mismatch: expected 16, got 8",
    );
    // Refine factor without raw vectors.
    quiver_ok(&[
        "build",
        "--base",
        &ds.p("base.fvecs"),
        "--metric",
        "l2",
        "--nlist",
        "8",
        "--pq",
        "4",
        "--out",
        &ds.p("noraw.qvr"),
    ]);
    quiver_err(
        &[
            "search",
            "--index",
            &ds.p("noraw.qvr"),
            "--queries",
            &q,
            "--k",
            "5",
            "--nprobe",
            "2",
            "--refine-factor",
            "4",
            "--out",
            &o,
        ],
        "--refine none",
    );
    // Ground truth with too few columns for k.
    quiver_ok(&[
        "gt",
        "--base",
        &ds.p("base.fvecs"),
        "--queries",
        &q,
        "--metric",
        "l2",
        "--k",
        "5",
        "--out",
        &ds.p("gt.ivecs"),
    ]);
    quiver_err(
        &[
            "bench",
            "--index",
            &i,
            "--queries",
            &q,
            "--gt",
            &ds.p("gt.ivecs"),
            "--k",
            "10",
            "--nprobe",
            "1",
        ],
        "fewer than k = 10",
    );
    quiver_err(
        &[
            "bench",
            "--index",
            &i,
            "--queries",
            &q,
            "--gt",
            &ds.p("gt.ivecs"),
            "--k",
            "5",
            "--nprobe",
            "1,20",
        ],
        "nprobe = 20",
    );
}

#[test]
fn ids_files_are_checked() {
    let ds = DataSet::new(600, 5, 16);
    let build = |ids: &str| {
        quiver_err(
            &[
                "build",
                "--base",
                &ds.p("base.fvecs"),
                "--ids",
                ids,
                "--metric",
                "l2",
                "--nlist",
                "4",
                "--pq",
                "4",
                "--out",
                &ds.p("x.qvr"),
            ],
            "",
        )
    };
    quiver_engine::io::write_i32(ds.path("short.ivecs"), 1, &[1, 2, 3]).unwrap();
    assert!(build(&ds.p("short.ivecs")).contains("3 ids given for 600 vectors"));
    let mut ids: Vec<i32> = (0..600).collect();
    ids[42] = -7;
    quiver_engine::io::write_i32(ds.path("neg.ivecs"), 1, &ids).unwrap();
    assert!(build(&ds.p("neg.ivecs")).contains("invalid id -7 at row 42"));
    ids[42] = 41;
    quiver_engine::io::write_i32(ds.path("dup.ivecs"), 1, &ids).unwrap();
    assert!(build(&ds.p("dup.ivecs")).contains("id 41 is already in the index"));
}

#[test]
fn damaged_index_files_are_refused() {
    let ds = data_with_index();
    let good = std::fs::read(ds.path("idx.qvr")).unwrap();
    let q = ds.p("query.fvecs");
    let o = ds.p("r.ivecs");
    let mut flipped = good.clone();
    let at = good.len() / 2;
    flipped[at] ^= 1;
    std::fs::write(ds.path("flip.qvr"), &flipped).unwrap();
    quiver_err(
        &as_refs(&search_args(&ds.p("flip.qvr"), &q, "5", "2", &o)),
        "is corrupt (CRC32C",
    );
    std::fs::write(ds.path("cut.qvr"), &good[..good.len() - 100]).unwrap();
    quiver_err(
        &as_refs(&search_args(&ds.p("cut.qvr"), &q, "5", "2", &o)),
        "truncated",
    );
    quiver_err(
        &as_refs(&search_args(&ds.p("query.fvecs"), &q, "5", "2", &o)),
        "not a Quiver index",
    );
    quiver_err(&["info", &ds.p("flip.qvr")], "corrupt");
}

#[test]
fn cluster_flags_are_checked_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    // Unreachable on purpose: every case below must fail before connecting, or say why it
    // could not connect.
    let nats = "nats://127.0.0.1:1";
    let serve = ["serve", "--data-dir", data];
    let member = ["--nats", nats, "--node-id", "a"];
    let cases: [(Vec<&str>, &str); 7] = [
        (vec!["--nats", nats], "--node-id"),
        (vec!["--node-id", "a"], "--nats"),
        (vec!["--nats", nats, "--node-id", "a.b"], "node_id"),
        // Qdrant's API is served in cluster mode too: it gets as far as the broker.
        (
            [&member[..], &["--qdrant", "--listen", "127.0.0.1:0"]].concat(),
            "connecting to NATS",
        ),
        (
            [&member[..], &["--collection", "x=y.qvr"]].concat(),
            "cluster mode",
        ),
        (
            [&member[..], &["--stream-replicas", "9"]].concat(),
            "--stream-replicas",
        ),
        (
            [&member[..], &["--listen", "127.0.0.1:0"]].concat(),
            "connecting to NATS",
        ),
    ];
    for (flags, needle) in cases {
        quiver_err(&[&serve[..], &flags].concat(), needle);
    }
}
