//! Integration tests of `quiver serve`: the real binary on a free loopback port, driven by the
//! generated gRPC client. Covers the collection life cycle, equality with `quiver search`,
//! durability across restarts and SIGKILL, every bad-input case, DEADLINE_EXCEEDED and
//! RESOURCE_EXHAUSTED from a full queue.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use ::quiver_server::proto::quiver_client::QuiverClient;
use ::quiver_server::proto::{
    CreateCollectionRequest, DeleteRequest, DropCollectionRequest, GetCollectionRequest,
    IndexParams, ListCollectionsRequest, LoadIndexRequest, Metric, Refine, SearchBatchRequest,
    SearchRequest, SearchResponse, TrainRequest, UpsertRequest,
};
use common::{quiver_ok, read_ivecs, DataSet};
use tonic::transport::Channel;
use tonic::Code;

/// A running server process.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(data_dir: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_quiver"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data_dir.to_str().unwrap(),
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
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
        Server { child, addr }
    }

    async fn client(&self) -> QuiverClient<Channel> {
        QuiverClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
            .max_decoding_message_size(256 << 20)
    }

    /// SIGTERM and wait: a clean shutdown exits 0.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "server exited with {status}");
    }

    fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn create(name: &str, dim: u32, metric: Metric, nlist: u32, pq_m: u32) -> CreateCollectionRequest {
    CreateCollectionRequest {
        name: name.into(),
        dim,
        metric: metric as i32,
        index: Some(IndexParams {
            nlist,
            pq_m,
            refine: Refine::F16 as i32,
            seed: 0,
            train_at: 0,
        }),
        field_indexes: Vec::new(),
        ..Default::default()
    }
}

fn search(c: &str, v: Vec<f32>, k: u32) -> SearchRequest {
    SearchRequest {
        collection: c.into(),
        vector: v,
        k,
        nprobe: 0,
        refine_factor: 0,
        ..Default::default()
    }
}

fn ids(r: &SearchResponse) -> Vec<u64> {
    r.neighbors.iter().map(|n| n.id).collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn life_cycle_equals_cli_and_survives_restart_and_sigkill() {
    let ds = DataSet::new(2000, 20, 16);
    let base = quiver_engine::io::read_all_f32(ds.path("base.fvecs"))
        .unwrap()
        .1;
    let queries = quiver_engine::io::read_all_f32(ds.path("query.fvecs"))
        .unwrap()
        .1;
    // The CLI's answer for the same data and parameters.
    quiver_ok(&[
        "build",
        "--base",
        &ds.p("base.fvecs"),
        "--metric",
        "cosine",
        "--nlist",
        "16",
        "--pq",
        "4",
        "--refine",
        "f16",
        "--out",
        &ds.p("idx.qvr"),
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
        "4",
        "--refine-factor",
        "3",
        "--out",
        &ds.p("cli.ivecs"),
    ]);
    let (_, cli) = read_ivecs(&ds.path("cli.ivecs"));
    let data = ds.path("data");
    let rt = rt();
    let server = Server::start(&data, &[]);
    rt.block_on(async {
        let mut c = server.client().await;
        let info = c
            .create_collection(create("docs", 16, Metric::Cosine, 16, 4))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((info.dim, info.count, info.trained), (16, 0, false));
        // Upsert in two messages: batched and streamed.
        let all_ids: Vec<u64> = (0..2000).collect();
        c.upsert(UpsertRequest {
            collection: "docs".into(),
            ids: all_ids[..1000].to_vec(),
            vectors: base[..1000 * 16].to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
        let rest = UpsertRequest {
            collection: "docs".into(),
            ids: all_ids[1000..].to_vec(),
            vectors: base[1000 * 16..].to_vec(),
            ..Default::default()
        };
        let n = c
            .upsert_stream(tokio_stream::iter(vec![rest]))
            .await
            .unwrap()
            .into_inner()
            .upserted;
        assert_eq!(n, 1000);
        // Untrained: exact search finds the vector itself.
        let r = c
            .search(search("docs", base[16 * 7..16 * 8].to_vec(), 3))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.neighbors[0].id, 7);
        assert!((r.neighbors[0].distance - 1.0).abs() < 1e-4);
        let info = c
            .train(TrainRequest {
                collection: "docs".into(),
                index: None,
                background: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(info.trained && info.count == 2000);
        // Trained: equal to `quiver search` with the same parameters.
        for q in 0..20 {
            let r = c
                .search(SearchRequest {
                    collection: "docs".into(),
                    vector: queries[q * 16..(q + 1) * 16].to_vec(),
                    k: 10,
                    nprobe: 4,
                    refine_factor: 3,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let want: Vec<u64> = cli[q * 10..(q + 1) * 10]
                .iter()
                .map(|&i| i as u64)
                .collect();
            assert_eq!(ids(&r), want, "query {q}");
        }
        // Batch search: one list per query, same answers.
        let b = c
            .search_batch(SearchBatchRequest {
                collection: "docs".into(),
                vectors: queries.clone(),
                k: 10,
                nprobe: 4,
                refine_factor: 3,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(b.results.len(), 20);
        assert_eq!(
            ids(&b.results[3]),
            cli[30..40].iter().map(|&i| i as u64).collect::<Vec<_>>()
        );
        // Delete.
        let d = c
            .delete(DeleteRequest {
                collection: "docs".into(),
                ids: vec![7, 8, 123_456],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(d.deleted, 2);
        let r = c
            .search(search("docs", base[16 * 7..16 * 8].to_vec(), 5))
            .await
            .unwrap()
            .into_inner();
        assert!(!ids(&r).contains(&7));
        let list = c
            .list_collections(ListCollectionsRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(list.collections.len(), 1);
        assert_eq!(list.collections[0].count, 1998);
    });
    server.stop();

    // Restart: everything is back, trained.
    let server = Server::start(&data, &[]);
    rt.block_on(async {
        let mut c = server.client().await;
        let info = c
            .get_collection(GetCollectionRequest {
                name: "docs".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((info.count, info.trained), (1998, true));
        // An acknowledged upsert just before SIGKILL.
        c.upsert(UpsertRequest {
            collection: "docs".into(),
            ids: vec![9_000_000],
            vectors: vec![0.25; 16],
            ..Default::default()
        })
        .await
        .unwrap();
        c.delete(DeleteRequest {
            collection: "docs".into(),
            ids: vec![9],
            ..Default::default()
        })
        .await
        .unwrap();
    });
    server.kill9();
    let server = Server::start(&data, &[]);
    rt.block_on(async {
        let mut c = server.client().await;
        let info = c
            .get_collection(GetCollectionRequest {
                name: "docs".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.count, 1998);
        let r = c
            .search(search("docs", vec![0.25; 16], 1))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ids(&r), vec![9_000_000], "the acknowledged upsert was lost");
        c.drop_collection(DropCollectionRequest {
            name: "docs".into(),
        })
        .await
        .unwrap();
        let e = c
            .get_collection(GetCollectionRequest {
                name: "docs".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
    });
    server.stop();
    assert!(!data.join("collections/docs").exists());
}

#[test]
fn served_index_files_answer_like_the_cli() {
    let ds = DataSet::new(1500, 10, 8);
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
        "f32",
        "--out",
        &ds.p("i.qvr"),
    ]);
    quiver_ok(&[
        "search",
        "--index",
        &ds.p("i.qvr"),
        "--queries",
        &ds.p("query.fvecs"),
        "--k",
        "5",
        "--nprobe",
        "3",
        "--refine-factor",
        "2",
        "--out",
        &ds.p("cli.ivecs"),
    ]);
    let (_, cli) = read_ivecs(&ds.path("cli.ivecs"));
    let queries = quiver_engine::io::read_all_f32(ds.path("query.fvecs"))
        .unwrap()
        .1;
    let ro = format!("ro={}", ds.p("i.qvr"));
    let rw = format!("rw={}:rw", ds.p("i.qvr"));
    let imports = ds.p("");
    let server = Server::start(
        &ds.path("data"),
        &[
            "--collection",
            &ro,
            "--collection",
            &rw,
            "--import-dir",
            &imports,
        ],
    );
    rt().block_on(async {
        let mut c = server.client().await;
        for name in ["ro", "rw"] {
            let b = c
                .search_batch(SearchBatchRequest {
                    collection: name.into(),
                    vectors: queries.clone(),
                    k: 5,
                    nprobe: 3,
                    refine_factor: 2,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let got: Vec<i32> = b
                .results
                .iter()
                .flat_map(|r| r.neighbors.iter().map(|n| n.id as i32))
                .collect();
            assert_eq!(got, cli, "{name}");
        }
        let e = c
            .upsert(UpsertRequest {
                collection: "ro".into(),
                ids: vec![1],
                vectors: vec![0.0; 8],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        c.upsert(UpsertRequest {
            collection: "rw".into(),
            ids: vec![99_999],
            vectors: vec![0.0; 8],
            ..Default::default()
        })
        .await
        .unwrap();
        let info = c
            .get_collection(GetCollectionRequest { name: "ro".into() })
            .await
            .unwrap()
            .into_inner();
        assert!(info.read_only && info.trained && info.count == 1500);
        // LoadIndex creates a writable copy, served from the server's own copy of the file:
        // truncating and rewriting the client's file afterwards changes no answer (before, the
        // collection kept a map of it: truncation faulted the server with SIGBUS).
        std::fs::copy(ds.path("i.qvr"), ds.path("imp.qvr")).unwrap();
        let info = c
            .load_index(LoadIndexRequest {
                collection: "copy".into(),
                path: ds.p("imp.qvr"),
                background: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.count, 1500);
        let search_copy = |c: &QuiverClient<Channel>| {
            let (mut c, queries) = (c.clone(), queries.clone());
            async move {
                c.search_batch(SearchBatchRequest {
                    collection: "copy".into(),
                    vectors: queries,
                    k: 5,
                    nprobe: 3,
                    refine_factor: 2,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
            }
        };
        let before = search_copy(&c).await;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(ds.path("imp.qvr"))
            .unwrap();
        f.set_len(0).unwrap();
        drop(f);
        std::fs::write(ds.path("imp.qvr"), vec![0x5a; 1 << 16]).unwrap();
        assert_eq!(search_copy(&c).await, before);
        let got: Vec<i32> = before
            .results
            .iter()
            .flat_map(|r| r.neighbors.iter().map(|n| n.id as i32))
            .collect();
        assert_eq!(got, cli, "copy");
        let e = c
            .load_index(LoadIndexRequest {
                collection: "bad".into(),
                path: ds.p("query.fvecs"),
                background: false,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        // In the background: the reply comes at once, the state says how it went.
        let state = |c: &mut QuiverClient<Channel>, name: &'static str| {
            let mut c = c.clone();
            async move {
                for _ in 0..500 {
                    let s = match c
                        .get_collection(GetCollectionRequest { name: name.into() })
                        .await
                    {
                        Ok(i) => i.into_inner().state,
                        Err(e) => format!("{:?}: {}", e.code(), e.message()),
                    };
                    if s != "loading" {
                        return s;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                panic!("{name} still loading");
            }
        };
        for (name, path) in [("bg", "i.qvr"), ("bgbad", "query.fvecs")] {
            let info = c
                .load_index(LoadIndexRequest {
                    collection: name.into(),
                    path: ds.p(path),
                    background: true,
                })
                .await
                .unwrap()
                .into_inner();
            assert!(info.state == "loading" || info.state == "ready", "{info:?}");
        }
        assert_eq!(state(&mut c, "bg").await, "ready");
        let bad = state(&mut c, "bgbad").await;
        assert!(
            bad.starts_with("Unavailable") && bad.contains("loading"),
            "{bad}"
        );
        let listed = c
            .list_collections(ListCollectionsRequest {})
            .await
            .unwrap()
            .into_inner()
            .collections;
        assert!(listed.iter().any(|i| i.name == "bg" && i.count == 1500));
        assert!(listed
            .iter()
            .any(|i| i.name == "bgbad" && i.state.starts_with("failed: loading")));
        // The failed name is freed by a drop.
        c.drop_collection(DropCollectionRequest {
            name: "bgbad".into(),
        })
        .await
        .unwrap();
    });
    server.stop();
}

#[test]
fn bad_input_gets_the_right_status_and_the_server_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(
        tmp.path(),
        &[
            "--max-k",
            "100",
            "--max-message-bytes",
            "200000",
            "--max-queries-per-request",
            "50",
        ],
    );
    rt().block_on(async {
        let mut c = server.client().await;
        c.create_collection(create("v", 8, Metric::L2, 4, 2))
            .await
            .unwrap();
        let vecs: Vec<f32> = (0..300 * 8)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
            .collect();
        c.upsert(UpsertRequest {
            collection: "v".into(),
            ids: (0..300).collect(),
            vectors: vecs.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        let expect = |r: Result<tonic::Response<SearchResponse>, tonic::Status>,
                      code: Code,
                      needle: &str| {
            let e = r.expect_err("should fail");
            assert_eq!(e.code(), code, "{e:?}");
            assert!(
                e.message().contains(needle),
                "{:?} lacks {needle:?}",
                e.message()
            );
        };
        expect(
            c.search(search("v", vec![0.5; 7], 3)).await,
            Code::InvalidArgument,
            "dimension mismatch: expected 8, got 7",
        );
        let mut nan = vec![0.5; 8];
        nan[2] = f32::NAN;
        expect(
            c.search(search("v", nan, 3)).await,
            Code::InvalidArgument,
            "non-finite",
        );
        expect(
            c.search(search("v", vec![0.5; 8], 0)).await,
            Code::InvalidArgument,
            "k: 0 is out of range",
        );
        expect(
            c.search(search("v", vec![0.5; 8], 101)).await,
            Code::InvalidArgument,
            "between 1 and 100",
        );
        expect(
            c.search(search("nope", vec![0.5; 8], 3)).await,
            Code::NotFound,
            "\"nope\" does not exist",
        );
        let e = c
            .create_collection(create("v", 8, Metric::L2, 4, 2))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists);
        for (bad, field) in [
            (create("d0", 0, Metric::L2, 0, 0), "dim"),
            (create("pq", 8, Metric::L2, 0, 3), "pq_m"),
            (create("m", 8, Metric::Unspecified, 0, 0), "metric"),
            (create("a/b", 8, Metric::L2, 0, 0), "name"),
        ] {
            let e = c.create_collection(bad).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
            assert!(e.message().contains(field), "{e:?}");
        }
        // Empty batch, too many queries, oversized message.
        let e = c
            .search_batch(SearchBatchRequest {
                collection: "v".into(),
                vectors: vec![],
                k: 3,
                nprobe: 0,
                refine_factor: 0,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(
            e.code() == Code::InvalidArgument && e.message().contains("empty"),
            "{e:?}"
        );
        let e = c
            .search_batch(SearchBatchRequest {
                collection: "v".into(),
                vectors: vec![0.1; 8 * 51],
                k: 3,
                nprobe: 0,
                refine_factor: 0,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(
            e.code() == Code::InvalidArgument && e.message().contains("51 queries exceed"),
            "{e:?}"
        );
        let e = c
            .upsert(UpsertRequest {
                collection: "v".into(),
                ids: (0..10_000).collect(),
                vectors: vec![0.5; 80_000],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
        // Upsert shape errors.
        let e = c
            .upsert(UpsertRequest {
                collection: "v".into(),
                ids: vec![1, 2],
                vectors: vec![0.5; 8],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(
            e.code() == Code::InvalidArgument && e.message().starts_with("vectors"),
            "{e:?}"
        );
        let e = c
            .upsert(UpsertRequest {
                collection: "v".into(),
                ids: vec![],
                vectors: vec![],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        // Train, then nprobe out of range and refine on an index without raw vectors.
        c.train(TrainRequest {
            collection: "v".into(),
            index: None,
            background: false,
        })
        .await
        .unwrap();
        let mut r = search("v", vec![0.5; 8], 3);
        r.nprobe = 5;
        expect(
            c.search(r).await,
            Code::InvalidArgument,
            "nprobe: 5 is out of range",
        );
        // Train on a trained collection retrains it (same parameters).
        let info = c
            .train(TrainRequest {
                collection: "v".into(),
                index: None,
                background: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(info.trained);
        assert_eq!(info.state, "ready");
        assert_eq!(info.index.map(|i| i.nlist), Some(4));
        c.create_collection(create("small", 8, Metric::L2, 0, 0))
            .await
            .unwrap();
        c.upsert(UpsertRequest {
            collection: "small".into(),
            ids: vec![1],
            vectors: vec![0.5; 8],
            ..Default::default()
        })
        .await
        .unwrap();
        let e = c
            .train(TrainRequest {
                collection: "small".into(),
                index: None,
                background: false,
            })
            .await
            .unwrap_err();
        assert!(
            e.code() == Code::FailedPrecondition && e.message().contains("at least"),
            "{e:?}"
        );
        // Still serving.
        let r = c
            .search(search("v", vecs[8 * 5..8 * 6].to_vec(), 1))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ids(&r), vec![5]);
    });
    server.stop();
}

#[test]
fn deadlines_and_a_full_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(
        tmp.path(),
        &[
            "--queue-capacity",
            "1",
            "--max-batch",
            "1",
            "--max-delay-ms",
            "0",
        ],
    );
    rt().block_on(async {
        let mut c = server.client().await;
        c.create_collection(create("big", 64, Metric::L2, 0, 0))
            .await
            .unwrap();
        let n = 20_000;
        let vecs: Vec<f32> = (0..n * 64)
            .map(|i| ((i * 2_654_435_761usize) % 10_007) as f32 / 10_007.0)
            .collect();
        for start in (0..n).step_by(5000) {
            c.upsert(UpsertRequest {
                collection: "big".into(),
                ids: (start as u64..(start + 5000) as u64).collect(),
                vectors: vecs[start * 64..(start + 5000) * 64].to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        // A deadline already passed: DEADLINE_EXCEEDED, the search does not run.
        let mut req = tonic::Request::new(search("big", vec![0.5; 64], 3));
        req.metadata_mut()
            .insert("grpc-timeout", "1n".parse().unwrap());
        // The server answers DEADLINE_EXCEEDED; tonic's client enforces the same deadline and
        // may report it first as CANCELLED "Timeout expired". The server side is pinned down
        // deterministically by the batcher's unit tests.
        let e = c.search(req).await.unwrap_err();
        let client_timeout = e.code() == Code::Cancelled && e.message().contains("Timeout expired");
        assert!(
            e.code() == Code::DeadlineExceeded || client_timeout,
            "{e:?}"
        );
        // Many slow exact searches at once against a queue of one: some are refused at once.
        let mut tasks = Vec::new();
        for _ in 0..48 {
            let mut c = c.clone();
            tasks.push(tokio::spawn(async move {
                c.search_batch(SearchBatchRequest {
                    collection: "big".into(),
                    vectors: vec![0.3; 64 * 40],
                    k: 5,
                    nprobe: 0,
                    refine_factor: 0,
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .map_err(|e| e.code())
            }));
        }
        let mut codes = Vec::new();
        for t in tasks {
            codes.push(t.await.unwrap());
        }
        let exhausted = codes
            .iter()
            .filter(|r| **r == Err(Code::ResourceExhausted))
            .count();
        let ok = codes.iter().filter(|r| r.is_ok()).count();
        assert!(exhausted > 0, "no RESOURCE_EXHAUSTED: {codes:?}");
        assert_eq!(ok + exhausted, codes.len(), "{codes:?}");
        // Afterwards the server answers normally.
        c.search(search("big", vec![0.5; 64], 3)).await.unwrap();
    });
    server.stop();
}

/// A search whose estimated working memory is above `--max-request-bytes` is refused with
/// RESOURCE_EXHAUSTED naming the estimate, before anything is allocated; small ones run.
#[test]
fn memory_admission_refuses_oversized_searches() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), &["--max-request-bytes", "100000"]);
    rt().block_on(async {
        let mut c = server.client().await;
        c.create_collection(create("m", 8, Metric::L2, 4, 2))
            .await
            .unwrap();
        c.upsert(UpsertRequest {
            collection: "m".into(),
            ids: (0..10).collect(),
            vectors: (0..80).map(|i| i as f32).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
        let e = c
            .search_batch(SearchBatchRequest {
                collection: "m".into(),
                vectors: vec![0.5; 8 * 50],
                k: 100,
                nprobe: 0,
                refine_factor: 0,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("--max-request-bytes"), "{e:?}");
        let r = c
            .search(SearchRequest {
                collection: "m".into(),
                vector: vec![0.0; 8],
                k: 1,
                nprobe: 0,
                refine_factor: 0,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.neighbors[0].id, 0);
    });
}

/// Shutdown waits for an open client stream at most `--shutdown-grace-s`, then exits 0 having
/// kept what the stream had sent.
#[test]
fn shutdown_does_not_wait_forever_for_an_open_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start(tmp.path(), &["--shutdown-grace-s", "1"]);
    rt().block_on(async {
        let mut c = server.client().await;
        c.create_collection(create("s", 4, Metric::L2, 1, 1))
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(UpsertRequest {
            collection: "s".into(),
            ids: vec![1],
            vectors: vec![1.0, 2.0, 3.0, 4.0],
            ..Default::default()
        })
        .await
        .unwrap();
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let call = tokio::spawn(async move { c.upsert_stream(stream).await });
        // Wait until the message is applied, then ask the server to stop with the stream open.
        let mut probe = server.client().await;
        for _ in 0..100 {
            let n = probe
                .get_collection(GetCollectionRequest { name: "s".into() })
                .await
                .unwrap()
                .into_inner()
                .count;
            if n == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let started = std::time::Instant::now();
        let pid = server.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = server.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(8));
        drop(tx);
        let _ = call.await;
    });
    let server = Server::start(tmp.path(), &[]);
    rt().block_on(async {
        let mut c = server.client().await;
        let info = c
            .get_collection(GetCollectionRequest { name: "s".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.count, 1);
    });
}

/// Starts `quiver serve` on `data_dir` with stderr going to `log`. With `hold_signals` the
/// child starts with SIGTERM blocked, as a launcher may leave it: a SIGTERM sent before the
/// server has registered its handlers then waits (instead of ending the process before `main`
/// runs, a window every process has), and the server must unblock it once it can take it.
fn spawn_server(data_dir: &Path, log: &Path, hold_signals: bool) -> Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quiver"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("create log"));
    if hold_signals {
        // SAFETY: between fork and exec this only calls async-signal-safe libc functions on a
        // local sigset_t.
        unsafe {
            cmd.pre_exec(|| {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGTERM);
                match libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) {
                    0 => Ok(()),
                    rc => Err(std::io::Error::from_raw_os_error(rc)),
                }
            });
        }
    }
    cmd.spawn().expect("start server")
}

/// Sends SIGTERM to `child` and waits up to a minute for it to end; returns its exit status
/// and its log.
fn terminate_and_wait(child: &mut Child, log: &Path) -> (std::process::ExitStatus, String) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "kill");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the server did not end within 60 s of SIGTERM\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    (status, std::fs::read_to_string(log).unwrap_or_default())
}

/// A SIGTERM at any moment of start-up takes the graceful path: exit 0 with the collection's
/// shutdown checkpoint logged. Once at once after `listening on` (before the server can have
/// polled anything), then 50 times at seeded random points in the first 200 ms after spawn
/// (while the runtime starts, the collection opens, the listeners bind and the lines print).
#[test]
fn sigterm_at_any_point_of_start_up_shuts_down_gracefully() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A collection with acknowledged writes, so every shutdown has something to checkpoint.
    let server = Server::start(&data, &[]);
    rt().block_on(async {
        let mut c = server.client().await;
        c.create_collection(create("s", 4, Metric::L2, 1, 1))
            .await
            .unwrap();
        c.upsert(UpsertRequest {
            collection: "s".into(),
            ids: (0..100).collect(),
            vectors: (0..400).map(|i| i as f32).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    });
    server.stop();
    let checked = |status: std::process::ExitStatus, log: &str, when: &str| {
        assert!(
            status.success(),
            "SIGTERM {when}: the server exited with {status}\n--- log ---\n{log}"
        );
        assert!(
            log.contains("checkpointed") && log.contains("stopped"),
            "SIGTERM {when}: no shutdown checkpoint logged\n--- log ---\n{log}"
        );
    };

    // At once after the readiness line.
    let log = tmp.path().join("at-once.log");
    let mut child = spawn_server(&data, &log, false);
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("read address");
    assert!(line.starts_with("listening on "), "{line:?}");
    let (status, text) = terminate_and_wait(&mut child, &log);
    checked(status, &text, "at once after 'listening on'");

    // At random points in the first 200 ms (xorshift, fixed seed: the delays are printed).
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for run in 0..50 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let delay = std::time::Duration::from_micros(state % 200_000);
        let log = tmp.path().join(format!("random-{run}.log"));
        let mut child = spawn_server(&data, &log, true);
        std::thread::sleep(delay);
        let (status, text) = terminate_and_wait(&mut child, &log);
        println!(
            "run {run}: SIGTERM {:.1} ms after spawn: {status}",
            delay.as_secs_f64() * 1e3
        );
        checked(
            status,
            &text,
            &format!(
                "{:.1} ms after spawn (run {run})",
                delay.as_secs_f64() * 1e3
            ),
        );
    }
}

/// `--max-write-bytes` bounds the writes in flight: an upsert above it is refused with
/// RESOURCE_EXHAUSTED naming the flag (nothing written), one within it is taken.
#[test]
fn writes_above_the_write_budget_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), &["--max-write-bytes", "65536"]);
    rt().block_on(async {
        let mut c = server.client().await;
        c.create_collection(create("w", 16, Metric::L2, 1, 1))
            .await
            .unwrap();
        let up = |n: u64| UpsertRequest {
            collection: "w".into(),
            ids: (0..n).collect(),
            vectors: vec![0.5; n as usize * 16],
            ..Default::default()
        };
        // 2,000 × 16 × 4 = 128 KB.
        let e = c.upsert(up(2000)).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("--max-write-bytes"), "{e:?}");
        // 250 points: about 17 KB on the wire, a share of three times that.
        let n = c.upsert(up(250)).await.unwrap().into_inner().upserted;
        assert_eq!(n, 250);
        let info = c
            .get_collection(GetCollectionRequest { name: "w".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.count, 250);
    });
    server.stop();
}

/// A second SIGTERM ends the process at once (exit code 130) while the first one's shutdown
/// waits on an open stream; what was acknowledged (stream messages included) is there after
/// a restart.
#[test]
fn a_second_sigterm_stops_at_once_and_keeps_what_was_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start(tmp.path(), &["--shutdown-grace-s", "600"]);
    rt().block_on(async {
        let mut c = server.client().await;
        c.create_collection(create("s", 4, Metric::L2, 1, 1))
            .await
            .unwrap();
        c.upsert(UpsertRequest {
            collection: "s".into(),
            ids: vec![1, 2],
            vectors: vec![1.0; 8],
            ..Default::default()
        })
        .await
        .unwrap();
        // An open stream keeps the first SIGTERM's shutdown waiting (grace 600 s).
        let (tx, rx) = tokio::sync::mpsc::channel::<UpsertRequest>(1);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut streaming = server.client().await;
        let call = tokio::spawn(async move { streaming.upsert_stream(stream).await });
        tx.send(UpsertRequest {
            collection: "s".into(),
            ids: vec![3],
            vectors: vec![1.0; 4],
            ..Default::default()
        })
        .await
        .unwrap();
        // The stream is open once its first message is applied.
        for _ in 0..500 {
            let n = c
                .get_collection(GetCollectionRequest { name: "s".into() })
                .await
                .unwrap()
                .into_inner()
                .count;
            if n == 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let pid = libc::pid_t::try_from(server.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "the first SIGTERM waits on the open stream"
        );
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = server.child.wait().unwrap();
        assert_eq!(status.code(), Some(130), "{status:?}");
        drop(tx);
        let _ = call.await;
    });
    let server = Server::start(tmp.path(), &[]);
    rt().block_on(async {
        let mut c = server.client().await;
        let info = c
            .get_collection(GetCollectionRequest { name: "s".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.count, 3);
    });
    server.stop();
}

/// Kilobytes of a process's memory: its resident set now (`VmRSS`) or at its peak (`VmHWM`).
fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// 64 clients each sending a 32 MiB upsert at once, to a server with `--max-write-bytes`
/// 256 MiB: the upserts past the budget are refused (RESOURCE_EXHAUSTED) before their bodies
/// are read, and the server's peak memory rises by less than the budget plus 10% beside the
/// points it stores (they all write the same 65,536 points). Before, every message was
/// buffered and decoded before the budget was asked: the peak rose by gigabytes. The 64
/// requests share one encoded body, so the client holds it once.
/// `QUIVER_BIG_UPSERT_POINTS` (default 65,536: 32 MiB per upsert; 131,072 for 64 MiB) sets
/// each upsert's size.
#[test]
fn many_large_upserts_at_once_stay_within_the_write_budget() {
    use prost::Message;
    use tower::ServiceExt;
    const BUDGET: u64 = 256 << 20;
    let n: u64 = std::env::var("QUIVER_BIG_UPSERT_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(65_536);
    // Room for the message (ids and vectors) above the 64 MiB default.
    let max_message = (n * (128 * 4 + 10) + (1 << 20)).max(64 << 20);
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(
        tmp.path(),
        &[
            "--max-write-bytes",
            &BUDGET.to_string(),
            "--max-message-bytes",
            &max_message.to_string(),
            "--max-upsert-points",
            &n.max(65_536).to_string(),
        ],
    );
    let pid = server.child.id();
    rt().block_on(async {
        let mut c = server.client().await;
        c.create_collection(create("big", 128, Metric::L2, 1, 1))
            .await
            .unwrap();
        let msg = UpsertRequest {
            collection: "big".into(),
            ids: (0..n).collect(),
            vectors: (0..n * 128).map(|i| (i % 1000) as f32 / 1000.0).collect(),
            ..Default::default()
        };
        let encoded = msg.encode_to_vec();
        drop(msg);
        let mut framed = Vec::with_capacity(encoded.len() + 5);
        framed.push(0);
        framed.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        framed.extend_from_slice(&encoded);
        drop(encoded);
        let body = bytes::Bytes::from(framed);
        let stored = body.len() as u64;
        let channel = Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let before = memory_kib(pid, "VmRSS:") * 1024;
        let calls = (0..64).map(|_| {
            let (channel, body) = (channel.clone(), body.clone());
            async move {
                let req = http::Request::post(format!(
                    "http://{}/quiver.v1.Quiver/Upsert",
                    "localhost"
                ))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(tonic::body::Body::new(http_body_util::Full::new(body)))
                .unwrap();
                let resp = channel.oneshot(req).await.unwrap();
                let head = resp.headers().get("grpc-status").cloned();
                let collected = http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .unwrap();
                let status = head.or_else(|| {
                    collected
                        .trailers()
                        .and_then(|t| t.get("grpc-status").cloned())
                });
                status.map(|s| s.to_str().unwrap().to_string())
            }
        });
        let statuses = futures_join_all(calls).await;
        let peak = memory_kib(pid, "VmHWM:") * 1024;
        let ok = statuses.iter().filter(|s| s.as_deref() == Some("0")).count();
        let refused = statuses
            .iter()
            .filter(|s| s.as_deref() == Some("8"))
            .count();
        let rise = peak.saturating_sub(before);
        eprintln!(
            "64 upserts of {stored} bytes: {ok} written, {refused} refused; peak memory {} MiB above the {} MiB before (budget {} MiB)",
            rise >> 20,
            before >> 20,
            BUDGET >> 20
        );
        assert_eq!(ok + refused, 64, "{statuses:?}");
        assert!(ok >= 1 && refused >= 1, "{statuses:?}");
        assert!(
            rise < BUDGET + BUDGET / 10 + stored,
            "peak memory rose by {rise} bytes"
        );
        let info = c
            .get_collection(GetCollectionRequest { name: "big".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.count, n);
    });
    server.stop();
}

/// Runs the futures concurrently and collects their outputs in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[test]
fn a_single_server_refuses_shards_and_replicas_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    rt().block_on(async {
        let mut c = server.client().await;
        for (shards, replicas, field) in [(2, 0, "shard_number"), (1, 3, "replication_factor")] {
            let mut req = create("sharded", 4, Metric::L2, 0, 0);
            req.shard_number = shards;
            req.replication_factor = replicas;
            let e = c.create_collection(req).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
            assert!(e.message().contains(field), "{e:?}");
            assert!(e.message().contains("--nats"), "{e:?}");
        }
        // 1 × 1 is what a single server is: accepted, and reported.
        let mut req = create("single", 4, Metric::L2, 0, 0);
        req.shard_number = 1;
        req.replication_factor = 1;
        let info = c.create_collection(req).await.unwrap().into_inner();
        assert_eq!((info.shard_number, info.replication_factor), (1, 1));
    });
}
