//! End-to-end tests of the `quiver` command line on synthetic data: build, search, bench, gt,
//! rerank, info, and exactness of a search that probes every list with a large refine.

mod common;

use common::{quiver_ok, read_ivecs, DataSet};

fn build(ds: &DataSet, metric: &str, refine: &str, out: &str) {
    quiver_ok(&[
        "build",
        "--base",
        &ds.p("base.fvecs"),
        "--metric",
        metric,
        "--nlist",
        "16",
        "--pq",
        "8",
        "--refine",
        refine,
        "--out",
        &ds.p(out),
    ]);
}

#[test]
fn exhaustive_search_with_large_refine_equals_ground_truth() {
    let ds = DataSet::new(3000, 50, 32);
    for metric in ["l2", "ip", "cosine"] {
        build(&ds, metric, "f32", "idx.qvr");
        quiver_ok(&[
            "gt",
            "--base",
            &ds.p("base.fvecs"),
            "--queries",
            &ds.p("query.fvecs"),
            "--metric",
            metric,
            "--k",
            "10",
            "--out",
            &ds.p("gt.ivecs"),
        ]);
        quiver_ok(&[
            "search",
            "--index",
            &ds.p("idx.qvr"),
            "--queries",
            &ds.p("query.fvecs"),
            "--k",
            "10",
            "--nprobe",
            "16",
            "--refine-factor",
            "400",
            "--out",
            &ds.p("res.ivecs"),
            "--distances",
            &ds.p("res.fvecs"),
        ]);
        let (k, gt) = read_ivecs(&ds.path("gt.ivecs"));
        let (k2, res) = read_ivecs(&ds.path("res.ivecs"));
        assert_eq!((k, k2), (10, 10));
        let same = gt.iter().zip(&res).filter(|(a, b)| a == b).count();
        assert!(
            same as f64 >= 0.999 * gt.len() as f64,
            "{metric}: {same} of {} ranks equal",
            gt.len()
        );
    }
}

#[test]
fn bench_prints_recall_rows_and_json_keys() {
    let ds = DataSet::new(3000, 40, 16);
    build(&ds, "l2", "f16", "idx.qvr");
    quiver_ok(&[
        "gt",
        "--base",
        &ds.p("base.fvecs"),
        "--queries",
        &ds.p("query.fvecs"),
        "--metric",
        "l2",
        "--k",
        "20",
        "--out",
        &ds.p("gt.ivecs"),
    ]);
    let out = quiver_ok(&[
        "bench",
        "--index",
        &ds.p("idx.qvr"),
        "--queries",
        &ds.p("query.fvecs"),
        "--gt",
        &ds.p("gt.ivecs"),
        "--k",
        "10",
        "--nprobe",
        "1,4,16",
        "--refine-factor",
        "8",
        "--json",
        "--repeat",
        "1",
    ]);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(rows.len(), 3);
    let keys = [
        "backend",
        "mode",
        "threads",
        "nprobe",
        "k",
        "refine_factor",
        "recall",
        "qps",
        "p50_us",
        "p99_us",
        // What each batch asked of the device: null on the CPU (nothing counts there).
        "device_per_batch",
        // Share of points a filter allows: null without one.
        "selectivity",
    ];
    for r in &rows {
        let obj = r.as_object().expect("object");
        assert_eq!(obj.len(), keys.len(), "{r}");
        for key in keys {
            assert!(obj.contains_key(key), "missing {key} in {r}");
        }
    }
    assert!(rows.iter().all(|r| r["device_per_batch"].is_null()));
    let recall: Vec<f64> = rows.iter().map(|r| r["recall"].as_f64().unwrap()).collect();
    assert!(
        recall[2] >= recall[0],
        "recall should not fall as nprobe grows: {recall:?}"
    );
    assert!(
        recall[2] > 0.95,
        "exhaustive probing with refine should find nearly all: {recall:?}"
    );
    // Single mode and the table output work too.
    let table = quiver_ok(&[
        "bench",
        "--index",
        &ds.p("idx.qvr"),
        "--queries",
        &ds.p("query.fvecs"),
        "--gt",
        &ds.p("gt.ivecs"),
        "--nprobe",
        "2",
        "--mode",
        "single",
    ]);
    assert!(
        table.contains("recall") && table.contains("single"),
        "{table}"
    );
}

#[test]
fn rerank_of_shuffled_ground_truth_restores_its_order() {
    let ds = DataSet::new(2000, 30, 8);
    quiver_ok(&[
        "gt",
        "--base",
        &ds.p("base.fvecs"),
        "--queries",
        &ds.p("query.fvecs"),
        "--metric",
        "l2",
        "--k",
        "20",
        "--out",
        &ds.p("gt.ivecs"),
    ]);
    let (k, gt) = read_ivecs(&ds.path("gt.ivecs"));
    // Reverse each row and pad with -1: rerank must give back the first 10 of the truth.
    let mut cands = Vec::new();
    for row in gt.chunks(k) {
        cands.extend(row.iter().rev());
        cands.extend([-1, -1]);
    }
    quiver_engine::io::write_i32(ds.path("cands.ivecs"), k + 2, &cands).unwrap();
    quiver_ok(&[
        "rerank",
        "--queries",
        &ds.p("query.fvecs"),
        "--candidates",
        &ds.p("cands.ivecs"),
        "--base",
        &ds.p("base.fvecs"),
        "--metric",
        "l2",
        "--k",
        "10",
        "--out",
        &ds.p("rr.ivecs"),
    ]);
    let (k2, rr) = read_ivecs(&ds.path("rr.ivecs"));
    assert_eq!(k2, 10);
    for (q, row) in rr.chunks(10).enumerate() {
        assert_eq!(row, &gt[q * k..q * k + 10], "query {q}");
    }
}

#[test]
fn split_base_and_user_ids() {
    let ds = DataSet::new(1200, 10, 8);
    let g = quiver_engine::synth::ClusteredGaussian::new(8, 20, 0.3, 11);
    let w = |name: &str, rows: Vec<f32>| {
        quiver_engine::io::write_f32(ds.path(name), 8, quiver_engine::io::ElementType::F32, &rows)
            .unwrap()
    };
    w("b0.fvecs", g.rows(0, 700));
    w("b1.npy", g.rows(700, 500));
    let ids: Vec<i32> = (0..1200).map(|i| 5000 + i).collect();
    quiver_engine::io::write_i32(ds.path("ids.ivecs"), 1, &ids).unwrap();
    quiver_ok(&[
        "build",
        "--base",
        &ds.p("b0.fvecs"),
        &ds.p("b1.npy"),
        "--ids",
        &ds.p("ids.ivecs"),
        "--metric",
        "l2",
        "--nlist",
        "4",
        "--pq",
        "4",
        "--refine",
        "f16",
        "--out",
        &ds.p("idx.qvr"),
    ]);
    // Query with base rows 3 and 900: their own ids come first.
    w("q.fvecs", [g.rows(3, 1), g.rows(900, 1)].concat());
    quiver_ok(&[
        "search",
        "--index",
        &ds.p("idx.qvr"),
        "--queries",
        &ds.p("q.fvecs"),
        "--k",
        "3",
        "--nprobe",
        "4",
        "--refine-factor",
        "10",
        "--out",
        &ds.p("r.ivecs"),
    ]);
    let (_, r) = read_ivecs(&ds.path("r.ivecs"));
    assert_eq!((r[0], r[3]), (5003, 5900));
    let info = quiver_ok(&["info", &ds.p("idx.qvr")]);
    assert!(
        info.contains("vectors         1200") && info.contains("refine          f16"),
        "{info}"
    );
}

#[test]
fn synth_writes_a_usable_data_set() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("b.fvecs");
    let q = dir.path().join("q.npy");
    quiver_ok(&[
        "synth",
        "--n",
        "500",
        "--dim",
        "12",
        "--queries",
        "7",
        "--out-base",
        b.to_str().unwrap(),
        "--out-queries",
        q.to_str().unwrap(),
    ]);
    let f = quiver_engine::io::VectorFile::open(&q).unwrap();
    assert_eq!((f.len(), f.dim()), (7, 12));
    assert_eq!(quiver_engine::io::VectorFile::open(&b).unwrap().len(), 500);
}

/// `--backend`: wgpu results equal the CPU's where an adapter exists; without any adapter
/// (the Vulkan loader pointed at no driver), `--backend wgpu` fails with a clear message and
/// `auto` falls back to the CPU, saying so.
#[test]
fn backend_choice_wgpu_and_fallback() {
    let ds = DataSet::new(2000, 30, 16);
    build(&ds, "l2", "f16", "idx.qvr");
    let search = |backend: &str, out: &str, no_driver: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_quiver"));
        cmd.args([
            "search",
            "--index",
            &ds.p("idx.qvr"),
            "--queries",
            &ds.p("query.fvecs"),
            "--k",
            "10",
            "--nprobe",
            "4",
            "--refine-factor",
            "4",
            "--backend",
            backend,
            "--out",
            &ds.p(out),
        ]);
        if no_driver {
            cmd.env("VK_ICD_FILENAMES", ds.p("no-such-driver.json"))
                .env("VK_DRIVER_FILES", ds.p("no-such-driver.json"));
        }
        cmd.output().expect("run quiver")
    };
    let cpu = search("cpu", "cpu.ivecs", false);
    assert!(cpu.status.success());
    let wgpu = search("wgpu", "wgpu.ivecs", false);
    let err = String::from_utf8_lossy(&wgpu.stderr).into_owned();
    if wgpu.status.success() {
        let (_, a) = read_ivecs(&ds.path("cpu.ivecs"));
        let (_, b) = read_ivecs(&ds.path("wgpu.ivecs"));
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        assert!(
            same * 100 >= a.len() * 99,
            "{same} of {} ids agree",
            a.len()
        );
        assert!(err.contains("backend wgpu on"), "{err}");
    } else {
        assert!(err.contains("no wgpu adapter"), "{err}");
    }
    let none = search("wgpu", "none.ivecs", true);
    let err = String::from_utf8_lossy(&none.stderr).into_owned();
    assert_eq!(none.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no wgpu adapter") && !err.contains("panicked"),
        "{err}"
    );
    let auto = search("auto", "auto.ivecs", true);
    let err = String::from_utf8_lossy(&auto.stderr).into_owned();
    assert!(auto.status.success(), "{err}");
    if !quiver_kernels_present() {
        assert!(err.contains("backend auto: cpu"), "{err}");
    }
    // CUDA: where there is no driver (every CI machine), a clear error and exit code 1.
    let cuda = search("cuda", "cuda.ivecs", false);
    let err = String::from_utf8_lossy(&cuda.stderr).into_owned();
    if !quiver_kernels_present() {
        assert_eq!(cuda.status.code(), Some(1), "{err}");
        assert!(
            err.contains("no CUDA driver") && !err.contains("panicked"),
            "{err}"
        );
    }
}

/// Whether a CUDA driver library exists here (then the CUDA assertions do not apply).
fn quiver_kernels_present() -> bool {
    [
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "/usr/lib64/libcuda.so.1",
        "/usr/lib/wsl/lib/libcuda.so.1",
    ]
    .iter()
    .any(|p| std::path::Path::new(p).exists())
}
