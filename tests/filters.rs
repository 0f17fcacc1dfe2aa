//! Payloads and filters on the command line: `build --payload --index-field`, `search
//! --filter/--filters` (results pass the filter; -1 where fewer than k do), `bench --filter`
//! against exact filtered ground truth, and clear errors for bad payloads and bad filters.

mod common;

use common::{quiver_err, quiver_ok, read_ivecs, DataSet};

const N: usize = 3000;

/// A data set with payloads `{"g": i % 10, "r": i, "tag": "t{i % 3}"}` and an index built
/// with them (`g` and `r` indexed).
fn data() -> DataSet {
    let ds = DataSet::new(N, 30, 16);
    let lines: Vec<String> = (0..N)
        .map(|i| format!(r#"{{"g":{},"r":{i},"tag":"t{}"}}"#, i % 10, i % 3))
        .collect();
    std::fs::write(ds.path("payload.jsonl"), lines.join("\n") + "\n").unwrap();
    quiver_ok(&[
        "build",
        "--base",
        &ds.p("base.fvecs"),
        "--metric",
        "l2",
        "--nlist",
        "16",
        "--pq",
        "8",
        "--refine",
        "f32",
        "--payload",
        &ds.p("payload.jsonl"),
        "--index-field",
        "g:integer",
        "--index-field",
        "r:integer",
        "--out",
        &ds.p("idx.qvr"),
    ]);
    ds
}

fn search(ds: &DataSet, filter: &[&str], out: &str) -> Vec<i32> {
    let (index, queries) = (ds.p("idx.qvr"), ds.p("query.fvecs"));
    let mut args = vec![
        "search",
        "--index",
        &index,
        "--queries",
        &queries,
        "--k",
        "10",
        "--nprobe",
        "4",
        "--refine-factor",
        "4",
        "--out",
    ];
    let out = ds.p(out);
    args.push(&out);
    args.extend_from_slice(filter);
    quiver_ok(&args);
    read_ivecs(std::path::Path::new(&out)).1
}

#[test]
fn searches_return_only_points_that_pass_the_filter() {
    let ds = data();
    let info = quiver_ok(&["info", &ds.p("idx.qvr")]);
    assert!(info.contains("3000 vectors carry one"), "{info}");
    assert!(info.contains("g:integer, r:integer"), "{info}");
    let ids = search(
        &ds,
        &["--filter", r#"{"must":[{"key":"g","match":{"value":3}}]}"#],
        "a.ivecs",
    );
    assert_eq!(ids.len(), 300);
    assert!(ids.iter().all(|&i| i >= 0 && i % 10 == 3), "{ids:?}");
    // Unindexed key, should + must_not.
    let ids = search(
        &ds,
        &[
            "--filter",
            r#"{"should":[{"key":"tag","match":{"any":["t1"]}}],"must_not":[{"key":"g","range":{"gte":5}}]}"#,
        ],
        "b.ivecs",
    );
    assert!(ids.iter().all(|&i| i % 3 == 1 && i % 10 < 5), "{ids:?}");
    // Five points pass: each row has them, then -1.
    let ids = search(
        &ds,
        &["--filter", r#"{"must":[{"key":"r","range":{"lt":5}}]}"#],
        "c.ivecs",
    );
    for row in ids.chunks(10) {
        let mut got: Vec<i32> = row[..5].to_vec();
        got.sort_unstable();
        assert_eq!(got, [0, 1, 2, 3, 4]);
        assert!(row[5..].iter().all(|&i| i == -1), "{row:?}");
    }
    // One filter per query: query q keeps g = q % 10.
    let lines: Vec<String> = (0..30)
        .map(|q| {
            format!(
                r#"{{"must":[{{"key":"g","match":{{"value":{}}}}}]}}"#,
                q % 10
            )
        })
        .collect();
    std::fs::write(ds.path("per-query.jsonl"), lines.join("\n")).unwrap();
    let ids = search(&ds, &["--filters", &ds.p("per-query.jsonl")], "d.ivecs");
    for (q, row) in ids.chunks(10).enumerate() {
        assert!(
            row.iter().all(|&i| i % 10 == (q % 10) as i32),
            "query {q}: {row:?}"
        );
    }
}

#[test]
fn bench_measures_filtered_recall_against_exact_ground_truth() {
    let ds = data();
    let out = quiver_ok(&[
        "bench",
        "--index",
        &ds.p("idx.qvr"),
        "--queries",
        &ds.p("query.fvecs"),
        "--base",
        &ds.p("base.fvecs"),
        "--filter",
        r#"{"must":[{"key":"g","range":{"lt":2}}]}"#,
        "--k",
        "10",
        "--nprobe",
        "4",
        "--refine-factor",
        "8",
        "--repeat",
        "1",
        "--json",
    ]);
    let row: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON row");
    let s = row["selectivity"].as_f64().unwrap();
    assert!((s - 0.2).abs() < 1e-9, "{row}");
    assert!(row["recall"].as_f64().unwrap() >= 0.95, "{row}");
}

#[test]
fn bad_payloads_and_filters_are_clear_errors() {
    let ds = data();
    let base_args = |payload: &str| -> Vec<String> {
        [
            "build",
            "--base",
            &ds.p("base.fvecs"),
            "--metric",
            "l2",
            "--nlist",
            "16",
            "--pq",
            "8",
            "--payload",
            payload,
            "--out",
            &ds.p("bad.qvr"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run_err = |args: Vec<String>, needle: &str| {
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        quiver_err(&a, needle);
    };
    std::fs::write(ds.path("short.jsonl"), "{}\n{}\n").unwrap();
    run_err(
        base_args(&ds.p("short.jsonl")),
        "fewer than the base's rows",
    );
    let mut long = vec!["{}"; N + 1].join("\n");
    long.push('\n');
    std::fs::write(ds.path("long.jsonl"), long).unwrap();
    run_err(base_args(&ds.p("long.jsonl")), "more lines than the base");
    let mut lines = vec!["{}".to_string(); N];
    lines[7] = "[1,2]".into();
    std::fs::write(ds.path("array.jsonl"), lines.join("\n")).unwrap();
    run_err(base_args(&ds.p("array.jsonl")), "line 8");
    lines[7] = "{\"a\":".into();
    std::fs::write(ds.path("broken.jsonl"), lines.join("\n")).unwrap();
    run_err(base_args(&ds.p("broken.jsonl")), "not valid JSON");
    quiver_err(
        &[
            "build",
            "--base",
            &ds.p("base.fvecs"),
            "--metric",
            "l2",
            "--nlist",
            "16",
            "--pq",
            "8",
            "--index-field",
            "g:text",
            "--out",
            &ds.p("bad.qvr"),
        ],
        "unknown type",
    );

    let search_err = |flag: &str, filter: &str, needle: &str| {
        quiver_err(
            &[
                "search",
                "--index",
                &ds.p("idx.qvr"),
                "--queries",
                &ds.p("query.fvecs"),
                "--k",
                "10",
                "--nprobe",
                "4",
                "--out",
                &ds.p("x.ivecs"),
                flag,
                filter,
            ],
            needle,
        );
    };
    search_err("--filter", "{", "not valid JSON");
    search_err(
        "--filter",
        r#"{"must":[{"key":"g","match":{"value":1.5}}]}"#,
        "filter.must[0].match.value",
    );
    search_err(
        "--filter",
        r#"{"must":[{"key":"g","frob":1}]}"#,
        "filter.must[0].frob",
    );
    search_err(
        "--filter",
        r#"{"must":[{"key":"g","match":{"value":"x"}}]}"#,
        "indexed as integer",
    );
    search_err(
        "--filter",
        r#"{"must":[{"key":"r","range":{"gt":"2020"}}]}"#,
        "filter.must[0].range.gt",
    );
    std::fs::write(ds.path("two.jsonl"), "{}\n{}\n").unwrap();
    search_err("--filters", &ds.p("two.jsonl"), "2 filters for 30 queries");
    quiver_err(
        &[
            "bench",
            "--index",
            &ds.p("idx.qvr"),
            "--queries",
            &ds.p("query.fvecs"),
            "--filter",
            "{}",
        ],
        "--base",
    );
}
