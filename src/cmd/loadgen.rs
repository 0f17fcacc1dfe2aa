//! `quiver loadgen`: drives a running Quiver gRPC server with concurrent single-query searches
//! (or, with `--upsert-batch N`, upserts of N rows under new ids: `vectors_per_s` is reported)
//! and prints throughput, latency percentiles, errors by gRPC status and, against exact ground
//! truth, recall@k, as one JSON object on one line of stdout.
//!
//! `--concurrency` workers each keep one request in flight (closed loop): worker w sends query
//! rows w, w + N, w + 2N, … (modulo the number of queries), one `Search` per request. With
//! `--rate` the run is open loop: send slots are handed out at that total rate to whichever
//! worker asks next. A worker waits for its slot; a slot already past is used at once, but slots
//! missed while every worker was busy are not made up later (no catch-up burst), so the
//! concurrency still caps the requests in flight and the achieved QPS falls below the target when
//! the server cannot keep up.
//!
//! The run lasts `--warmup` + `--duration` seconds. Requests sent during the warm-up are not
//! counted; requests sent after it are, including those still in flight when sending stops,
//! which are awaited (up to 10 s, after which they are abandoned and reported as `abandoned`).
//! `duration_s` runs from the end of the warm-up to the later of the end of sending and the last
//! counted reply; `qps` is the successful counted requests over it. Latencies are from send to
//! reply, over successful counted requests, percentiles by nearest rank.
//!
//! `--api qdrant` sends each search as Qdrant's `qdrant.Points/Query` (a nearest-vector query,
//! `hnsw_ef` = nprobe, `quantization.oversampling` = refine factor) to a server's Qdrant gRPC
//! listener instead, so that the two APIs are measured by the same client.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};
use quiver_engine::io::read_all_f32;
use quiver_server::proto::quiver_client::QuiverClient;
use quiver_server::proto::{GetCollectionRequest, Neighbor, SearchRequest, UpsertRequest};
use quiver_server::qdrant::proto::{self as qdrant, points_client::PointsClient};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::output::read_int_rows;

/// Limit on establishing each connection (and on the pre-flight `GetCollection`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long requests still in flight when sending stops are awaited before being abandoned.
const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// Number of gRPC status codes (0 = Ok … 16 = Unauthenticated).
const CODES: usize = 17;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Server address, HOST:PORT (or a URL such as http://HOST:PORT).
    #[arg(long)]
    addr: String,
    /// Collection to search.
    #[arg(long)]
    collection: String,
    /// Query vectors (.fvecs, .bvecs or .npy); each request sends one row.
    #[arg(long)]
    queries: PathBuf,
    /// Concurrent workers, each with at most one request in flight.
    #[arg(long)]
    concurrency: usize,
    /// Seconds to measure, after the warm-up (fractions allowed, e.g. 0.5).
    #[arg(long)]
    duration: f64,
    /// Neighbours per query.
    #[arg(long, default_value_t = 10)]
    k: u32,
    /// Inverted lists probed per query (0 = the server's default).
    #[arg(long, default_value_t = 0)]
    nprobe: u32,
    /// Refine factor (0 = the server's default).
    #[arg(long, default_value_t = 0)]
    refine_factor: u32,
    /// Exact ground truth (.ivecs), row i for query row i; adds recall@k to the report.
    #[arg(long)]
    gt: Option<PathBuf>,
    /// Total requests per second across all workers (open loop); default: as fast as the
    /// workers go (closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Per-request gRPC deadline in milliseconds (default: none).
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Seconds of warm-up before measuring: requests are sent but not counted.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// HTTP/2 connections to open, shared round-robin by the workers.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Write mode: each request upserts this many rows of `--queries` (taken in turn) under
    /// new ids from `--id-start` on, and the report adds `vectors_per_s`; 0 searches.
    #[arg(long, default_value_t = 0)]
    upsert_batch: usize,
    /// First id of write mode (ids then run on across workers).
    #[arg(long, default_value_t = 1 << 40)]
    id_start: u64,
    /// Write mode: ids cycle through this many from `--id-start` (upserts then replace
    /// points, so the collection's size holds); 0: they run on.
    #[arg(long, default_value_t = 0)]
    id_count: u64,
    /// Write mode: the payload (a JSON object) of every upserted point.
    #[arg(long, value_name = "JSON")]
    payload: Option<String>,
    /// Search mode: every request searches only points passing this filter (Qdrant's JSON
    /// filter syntax).
    #[arg(long, value_name = "JSON")]
    filter: Option<String>,
    /// The API searched: Quiver's own (`quiver.v1.Quiver/Search`) or Qdrant's
    /// (`qdrant.Points/Query`, on a `--qdrant-grpc-listen` address; search mode only).
    #[arg(long, value_enum, default_value = "quiver")]
    api: Api,
}

/// The gRPC API a load run searches through.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `quiver.v1.Quiver/Search`.
    Quiver,
    /// `qdrant.Points/Query`.
    Qdrant,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    validate(&a)?;
    let work = Arc::new(load_workload(&a)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = rt.block_on(execute(&a, work))?;
    println!("{report}");
    Ok(())
}

/// Checks the flags that need no file or server.
fn validate(a: &Args) -> anyhow::Result<()> {
    ensure!(a.concurrency >= 1, "--concurrency must be at least 1");
    ensure!(a.connections >= 1, "--connections must be at least 1");
    ensure!(
        a.duration.is_finite() && a.duration > 0.0,
        "--duration must be a positive number of seconds, got {}",
        a.duration
    );
    ensure!(
        a.warmup.is_finite() && a.warmup >= 0.0,
        "--warmup must be zero or a positive number of seconds, got {}",
        a.warmup
    );
    ensure!(a.k >= 1, "--k must be at least 1");
    ensure!(
        a.duration <= 1e6 && a.warmup <= 1e6,
        "--duration and --warmup must be at most 1000000 seconds"
    );
    ensure!(
        a.upsert_batch == 0 || a.gt.is_none(),
        "--gt does not apply to write mode (--upsert-batch)"
    );
    ensure!(
        a.filter.is_none() || (a.upsert_batch == 0 && a.gt.is_none()),
        "--filter applies to search mode only, without --gt (its ground truth is unfiltered)"
    );
    ensure!(
        a.upsert_batch > 0 || (a.payload.is_none() && a.id_count == 0),
        "--payload and --id-count apply to write mode only (--upsert-batch)"
    );
    ensure!(
        a.id_count == 0 || a.id_count >= a.upsert_batch as u64,
        "--id-count must be 0 or at least --upsert-batch"
    );
    ensure!(
        a.api == Api::Quiver || (a.upsert_batch == 0 && a.filter.is_none()),
        "--api qdrant measures unfiltered searches only (no --upsert-batch, no --filter)"
    );
    if let Some(r) = a.rate {
        ensure!(
            r.is_finite() && r >= 1e-3,
            "--rate must be a number of requests per second of at least 0.001, got {r}"
        );
    }
    if let Some(t) = a.timeout_ms {
        ensure!(t >= 1, "--timeout-ms must be at least 1");
    }
    Ok(())
}

/// The queries, the optional ground truth and the request parameters, shared by the workers.
struct Workload {
    collection: String,
    dim: usize,
    queries: Vec<f32>,
    gt: Option<GroundTruth>,
    k: u32,
    nprobe: u32,
    refine_factor: u32,
    timeout: Option<Duration>,
    upsert_batch: usize,
    next_id: std::sync::atomic::AtomicU64,
    /// First id and count of the ids write mode cycles through (count 0: they run on).
    id_start: u64,
    id_count: u64,
    payload: String,
    filter: String,
    api: Api,
}

struct GroundTruth {
    /// Neighbours per row of `ids`.
    k: usize,
    ids: Vec<i32>,
}

impl Workload {
    fn nq(&self) -> usize {
        self.queries.len() / self.dim
    }

    /// The true top k of query row `row`, when there is ground truth.
    fn truth(&self, row: usize) -> Option<&[i32]> {
        self.gt
            .as_ref()
            .map(|g| &g.ids[row * g.k..row * g.k + self.k as usize])
    }
}

fn load_workload(a: &Args) -> anyhow::Result<Workload> {
    let (dim, queries) = read_all_f32(&a.queries).context("reading the queries")?;
    ensure!(
        dim > 0 && queries.len() >= dim,
        "{}: the queries file holds no vectors",
        a.queries.display()
    );
    let nq = queries.len() / dim;
    let gt = match &a.gt {
        None => None,
        Some(p) => {
            let (gt_k, ids) = read_int_rows(p)?;
            ensure!(
                gt_k >= a.k as usize,
                "{}: ground truth has {gt_k} neighbours per query, fewer than k = {}",
                p.display(),
                a.k
            );
            let rows = ids.len() / gt_k;
            ensure!(
                rows >= nq,
                "{}: ground truth has {rows} rows for {nq} queries",
                p.display()
            );
            Some(GroundTruth { k: gt_k, ids })
        }
    };
    Ok(Workload {
        collection: a.collection.clone(),
        dim,
        queries,
        gt,
        k: a.k,
        nprobe: a.nprobe,
        refine_factor: a.refine_factor,
        timeout: a.timeout_ms.map(Duration::from_millis),
        upsert_batch: a.upsert_batch,
        next_id: std::sync::atomic::AtomicU64::new(a.id_start),
        id_start: a.id_start,
        id_count: a.id_count,
        payload: a.payload.clone().unwrap_or_default(),
        filter: a.filter.clone().unwrap_or_default(),
        api: a.api,
    })
}

/// Connects, runs the workers and summarises: the JSON report.
async fn execute(a: &Args, work: Arc<Workload>) -> anyhow::Result<serde_json::Value> {
    let endpoint = endpoint(&a.addr)?;
    let connections = a.connections.min(a.concurrency);
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(connect(&endpoint, &a.addr).await?);
    }
    if a.api == Api::Quiver {
        check_collection(
            QuiverClient::new(channels[0].clone()),
            &a.collection,
            work.dim,
            &a.addr,
        )
        .await?;
    }

    let warmup = seconds(a.warmup, "--warmup")?;
    let duration = seconds(a.duration, "--duration")?;
    let start = Instant::now();
    let out_of_range = || anyhow!("--warmup + --duration is too long");
    let measure_start = start.checked_add(warmup).ok_or_else(out_of_range)?;
    let end = measure_start
        .checked_add(duration)
        .ok_or_else(out_of_range)?;
    let hard_stop = end.checked_add(DRAIN_GRACE).ok_or_else(out_of_range)?;
    let win = Window {
        measure_start,
        end,
        hard_stop,
    };
    let pacer = a.rate.map(|r| Arc::new(Pacer::new(start, r)));

    let mut handles = Vec::with_capacity(a.concurrency);
    for w in 0..a.concurrency {
        let channel = channels[w % channels.len()].clone();
        handles.push(tokio::spawn(worker(
            w,
            a.concurrency,
            channel,
            work.clone(),
            pacer.clone(),
            win,
        )));
    }
    let mut stats = Vec::with_capacity(handles.len());
    for h in handles {
        stats.push(h.await.map_err(|e| anyhow!("a load worker failed: {e}"))?);
    }
    let s = summarise(stats, &win, work.k, work.gt.is_some());
    if s.errors > 0 {
        if let Some((code, msg)) = &s.first_error {
            eprintln!(
                "loadgen: {} of {} requests failed; first: {code:?}: {msg}",
                s.errors, s.requests
            );
        }
    }
    if s.abandoned > 0 {
        eprintln!(
            "loadgen: {} requests still unanswered {} s after the end were abandoned",
            s.abandoned,
            DRAIN_GRACE.as_secs()
        );
    }

    let mut report = serde_json::json!({
        "qps": s.qps,
        "p50_ms": s.p50_ms,
        "p95_ms": s.p95_ms,
        "p99_ms": s.p99_ms,
        "mean_ms": s.mean_ms,
        "max_ms": s.max_ms,
        "requests": s.requests,
        "errors": s.errors,
        "errors_by_status": s.errors_by_status,
        "abandoned": s.abandoned,
        "warmup_requests": s.warmup_requests,
        "concurrency": a.concurrency,
        "connections": connections,
        "duration_s": s.duration_s,
        "warmup_s": a.warmup,
        "k": a.k,
        "nprobe": a.nprobe,
        "refine_factor": a.refine_factor,
        "api": format!("{:?}", a.api).to_lowercase(),
    });
    let obj = report.as_object_mut().expect("a JSON object");
    if let Some(r) = a.rate {
        obj.insert("rate".into(), r.into());
    }
    if let Some(t) = a.timeout_ms {
        obj.insert("timeout_ms".into(), t.into());
    }
    if a.upsert_batch > 0 {
        obj.insert("upsert_batch".into(), a.upsert_batch.into());
        obj.insert(
            "vectors_per_s".into(),
            (s.qps * a.upsert_batch as f64).into(),
        );
    }
    if work.gt.is_some() {
        obj.insert(
            "recall".into(),
            s.recall.map_or(serde_json::Value::Null, Into::into),
        );
    }
    Ok(report)
}

fn seconds(x: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(x).map_err(|_| anyhow!("{flag} {x} is out of range"))
}

/// An endpoint for HOST:PORT (plain HTTP/2) or a URL.
fn endpoint(addr: &str) -> anyhow::Result<Endpoint> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let ep = Endpoint::from_shared(url)
        .with_context(|| format!("invalid server address {addr:?} (expected HOST:PORT)"))?;
    Ok(ep.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true))
}

/// Opens one connection, failing with a message that names the address.
async fn connect(ep: &Endpoint, addr: &str) -> anyhow::Result<Channel> {
    match tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), ep.connect()).await {
        Ok(Ok(ch)) => Ok(ch),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context(format!("cannot connect to {addr}"))),
        Err(_) => bail!(
            "cannot connect to {addr}: no connection within {} s",
            CONNECT_TIMEOUT.as_secs()
        ),
    }
}

/// Checks that the collection exists and has the queries' dimension, so that a mistake fails
/// at once instead of as a run of errors. A server without `GetCollection` is not checked.
async fn check_collection(
    mut client: QuiverClient<Channel>,
    name: &str,
    dim: usize,
    addr: &str,
) -> anyhow::Result<()> {
    let mut req = tonic::Request::new(GetCollectionRequest {
        name: name.to_string(),
    });
    req.set_timeout(CONNECT_TIMEOUT);
    match tokio::time::timeout(
        CONNECT_TIMEOUT + Duration::from_secs(1),
        client.get_collection(req),
    )
    .await
    {
        Err(_) => bail!(
            "{addr}: no reply to GetCollection within {} s",
            CONNECT_TIMEOUT.as_secs()
        ),
        Ok(Ok(info)) => {
            let have = info.get_ref().dim as usize;
            ensure!(have == dim, "collection {name:?} on {addr} has dimension {have}, but the queries have dimension {dim}");
            Ok(())
        }
        Ok(Err(s)) if s.code() == Code::Unimplemented => Ok(()),
        Ok(Err(s)) if s.code() == Code::NotFound => {
            bail!("collection {name:?} not found on {addr}: {}", s.message())
        }
        Ok(Err(s)) => bail!(
            "{addr}: GetCollection {name:?} failed: {:?}: {}",
            s.code(),
            s.message()
        ),
    }
}

/// When counting starts, when sending stops, and when requests still in flight are abandoned.
#[derive(Clone, Copy, Debug)]
struct Window {
    measure_start: Instant,
    end: Instant,
    hard_stop: Instant,
}

/// Hands out send slots at a fixed rate. A slot is never earlier than the moment it is asked
/// for, so slots missed while all workers were busy are skipped rather than made up.
struct Pacer {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    /// `rate` is validated: finite and at least 0.001 per second.
    fn new(start: Instant, rate: f64) -> Self {
        Pacer {
            interval: Duration::from_secs_f64(1.0 / rate),
            next: Mutex::new(start),
        }
    }

    fn take(&self, now: Instant) -> Instant {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let slot = (*next).max(now);
        *next = slot + self.interval;
        slot
    }
}

/// One worker's counts; latencies in milliseconds of successful counted requests.
#[derive(Default)]
struct WorkerStats {
    latencies_ms: Vec<f64>,
    errors: [u64; CODES],
    hits: u64,
    warmup: u64,
    abandoned: u64,
    last_done: Option<Instant>,
    first_error: Option<(Code, String)>,
}

async fn worker(
    w: usize,
    concurrency: usize,
    channel: Channel,
    work: Arc<Workload>,
    pacer: Option<Arc<Pacer>>,
    win: Window,
) -> WorkerStats {
    let mut client = QuiverClient::new(channel.clone());
    let mut qdrant = PointsClient::new(channel);
    let (nq, dim) = (work.nq(), work.dim);
    let step = concurrency % nq;
    let mut row = w % nq;
    let mut st = WorkerStats {
        latencies_ms: Vec::with_capacity(1024),
        ..Default::default()
    };
    loop {
        if let Some(p) = &pacer {
            let slot = p.take(Instant::now());
            if slot >= win.end {
                break;
            }
            tokio::time::sleep_until(slot).await;
        } else if Instant::now() >= win.end {
            break;
        }
        let t0 = Instant::now();
        if work.upsert_batch > 0 {
            let b = work.upsert_batch;
            let first = work
                .next_id
                .fetch_add(b as u64, std::sync::atomic::Ordering::Relaxed);
            let mut vectors = Vec::with_capacity(b * dim);
            for i in 0..b {
                let r = (row + i) % nq;
                vectors.extend_from_slice(&work.queries[r * dim..(r + 1) * dim]);
            }
            let ids: Vec<u64> = (first..first + b as u64)
                .map(|i| match work.id_count {
                    0 => i,
                    n => work.id_start + (i - work.id_start) % n,
                })
                .collect();
            let payloads = if work.payload.is_empty() {
                Vec::new()
            } else {
                vec![work.payload.clone(); b]
            };
            let mut req = tonic::Request::new(UpsertRequest {
                collection: work.collection.clone(),
                ids,
                vectors,
                payloads,
                ..Default::default()
            });
            if let Some(t) = work.timeout {
                req.set_timeout(t);
            }
            let r = tokio::time::timeout_at(win.hard_stop, client.upsert(req)).await;
            let t1 = Instant::now();
            let counted = t0 >= win.measure_start;
            match r {
                Err(_) => {
                    st.abandoned += u64::from(counted);
                    break;
                }
                Ok(_) if !counted => st.warmup += 1,
                Ok(Ok(_)) => {
                    st.last_done = Some(t1);
                    st.latencies_ms.push((t1 - t0).as_secs_f64() * 1e3);
                }
                Ok(Err(status)) => {
                    st.last_done = Some(t1);
                    let code = classify(&status, t1 - t0, work.timeout);
                    st.errors[i32::from(code) as usize] += 1;
                    if st.first_error.is_none() {
                        st.first_error = Some((code, status.message().to_string()));
                    }
                }
            }
            row = (row + b * concurrency) % nq;
            continue;
        }
        let vector = work.queries[row * dim..(row + 1) * dim].to_vec();
        // The client enforces the deadline itself too, so that it reads as DeadlineExceeded
        // (tonic's own client timeout reports Cancelled).
        let own_deadline = work
            .timeout
            .and_then(|t| t0.checked_add(t))
            .filter(|d| *d < win.hard_stop);
        let search = async {
            match work.api {
                Api::Quiver => {
                    let mut req = tonic::Request::new(SearchRequest {
                        collection: work.collection.clone(),
                        vector,
                        k: work.k,
                        nprobe: work.nprobe,
                        refine_factor: work.refine_factor,
                        filter: work.filter.clone(),
                        ..Default::default()
                    });
                    if let Some(t) = work.timeout {
                        req.set_timeout(t);
                    }
                    client.search(req).await.map(|r| r.into_inner().neighbors)
                }
                Api::Qdrant => {
                    let mut req = tonic::Request::new(qdrant_query(&work, vector));
                    if let Some(t) = work.timeout {
                        req.set_timeout(t);
                    }
                    qdrant
                        .query(req)
                        .await
                        .map(|r| qdrant_neighbors(r.into_inner()))
                }
            }
        };
        let outcome = tokio::time::timeout_at(own_deadline.unwrap_or(win.hard_stop), search).await;
        let t1 = Instant::now();
        let counted = t0 >= win.measure_start;
        let result = match outcome {
            Ok(r) => r,
            Err(_) if own_deadline.is_some() => {
                Err(tonic::Status::deadline_exceeded("client deadline expired"))
            }
            Err(_) => {
                st.abandoned += u64::from(counted);
                break;
            }
        };
        if !counted {
            st.warmup += 1;
        } else {
            st.last_done = Some(t1);
            match result {
                Ok(neighbors) => {
                    st.latencies_ms.push((t1 - t0).as_secs_f64() * 1e3);
                    if let Some(truth) = work.truth(row) {
                        st.hits += hits(&neighbors, truth) as u64;
                    }
                }
                Err(status) => {
                    let code = classify(&status, t1 - t0, work.timeout);
                    st.errors[i32::from(code) as usize] += 1;
                    if st.first_error.is_none() {
                        st.first_error = Some((code, status.message().to_string()));
                    }
                }
            }
        }
        row += step;
        if row >= nq {
            row -= nq;
        }
    }
    st
}

/// Qdrant's nearest-vector query for one row, with the run's parameters.
fn qdrant_query(work: &Workload, vector: Vec<f32>) -> qdrant::QueryPoints {
    use qdrant::{query::Variant, vector_input::Variant as Input};
    qdrant::QueryPoints {
        collection_name: work.collection.clone(),
        query: Some(qdrant::Query {
            variant: Some(Variant::Nearest(qdrant::VectorInput {
                variant: Some(Input::Dense(qdrant::DenseVector { data: vector })),
            })),
        }),
        limit: Some(u64::from(work.k)),
        params: Some(qdrant::SearchParams {
            hnsw_ef: (work.nprobe > 0).then_some(u64::from(work.nprobe)),
            quantization: (work.refine_factor > 0).then_some(qdrant::QuantizationSearchParams {
                oversampling: Some(f64::from(work.refine_factor)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A Qdrant answer as neighbours (integer ids; a UUID id counts as no match).
fn qdrant_neighbors(r: qdrant::QueryResponse) -> Vec<Neighbor> {
    use qdrant::point_id::PointIdOptions;
    r.result
        .into_iter()
        .map(|p| Neighbor {
            id: match p.id.and_then(|i| i.point_id_options) {
                Some(PointIdOptions::Num(n)) => n,
                _ => u64::MAX,
            },
            distance: p.score,
            payload: String::new(),
        })
        .collect()
}

/// The status code to count: a Cancelled that came once the deadline had passed is the
/// deadline (tonic's client-side timeout reports Cancelled).
fn classify(status: &tonic::Status, elapsed: Duration, timeout: Option<Duration>) -> Code {
    match status.code() {
        Code::Cancelled if timeout.is_some_and(|t| elapsed >= t) => Code::DeadlineExceeded,
        c => c,
    }
}

/// How many of the true neighbours (negative ids are padding) are among those returned.
fn hits(got: &[Neighbor], truth: &[i32]) -> usize {
    truth
        .iter()
        .filter(|&&t| t >= 0 && got.iter().any(|n| n.id == t as u64))
        .count()
}

/// The p-th percentile (nearest rank) of sorted samples; 0 when there are none.
fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64 / 100.0).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Summary {
    qps: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
    max_ms: f64,
    requests: u64,
    errors: u64,
    errors_by_status: serde_json::Map<String, serde_json::Value>,
    abandoned: u64,
    warmup_requests: u64,
    duration_s: f64,
    recall: Option<f64>,
    first_error: Option<(Code, String)>,
}

fn summarise(stats: Vec<WorkerStats>, win: &Window, k: u32, with_gt: bool) -> Summary {
    let mut latencies = Vec::with_capacity(stats.iter().map(|s| s.latencies_ms.len()).sum());
    let mut errors = [0u64; CODES];
    let (mut hits, mut warmup, mut abandoned) = (0u64, 0u64, 0u64);
    let mut last = win.end;
    let mut first_error = None;
    for s in stats {
        latencies.extend_from_slice(&s.latencies_ms);
        for (e, n) in errors.iter_mut().zip(s.errors) {
            *e += n;
        }
        hits += s.hits;
        warmup += s.warmup;
        abandoned += s.abandoned;
        if let Some(t) = s.last_done {
            last = last.max(t);
        }
        if first_error.is_none() {
            first_error = s.first_error;
        }
    }
    latencies.sort_by(f64::total_cmp);
    let ok = latencies.len() as u64;
    let n_errors: u64 = errors.iter().sum();
    let duration_s = (last - win.measure_start).as_secs_f64();
    let mut by_status = serde_json::Map::new();
    for (code, &n) in errors.iter().enumerate() {
        if n > 0 {
            by_status.insert(format!("{:?}", Code::from_i32(code as i32)), n.into());
        }
    }
    let mean_ms = if ok == 0 {
        0.0
    } else {
        latencies.iter().sum::<f64>() / ok as f64
    };
    Summary {
        qps: if duration_s > 0.0 {
            ok as f64 / duration_s
        } else {
            0.0
        },
        p50_ms: nearest_rank(&latencies, 50.0),
        p95_ms: nearest_rank(&latencies, 95.0),
        p99_ms: nearest_rank(&latencies, 99.0),
        mean_ms,
        max_ms: latencies.last().copied().unwrap_or(0.0),
        requests: ok + n_errors,
        errors: n_errors,
        errors_by_status: by_status,
        abandoned,
        warmup_requests: warmup,
        duration_s,
        recall: (with_gt && ok > 0).then(|| hits as f64 / (ok * u64::from(k)) as f64),
        first_error,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use ::quiver_server::proto::quiver_server::{Quiver, QuiverServer};
    use ::quiver_server::proto::{
        CollectionInfo, CountRequest, CountResponse, CreateCollectionRequest, DeletePayloadRequest,
        DeleteRequest, DeleteResponse, DropCollectionRequest, DropCollectionResponse, FlushRequest,
        FlushResponse, GetRequest, GetResponse, ListCollectionsRequest, ListCollectionsResponse,
        LoadIndexRequest, ScrollRequest, ScrollResponse, SearchBatchRequest, SearchBatchResponse,
        SearchResponse, SetPayloadRequest, SetPayloadResponse, TrainRequest, UpsertRequest,
        UpsertResponse,
    };
    use tonic::{Request, Response, Status};

    use super::*;

    fn nb(ids: &[u64]) -> Vec<Neighbor> {
        ids.iter()
            .map(|&id| Neighbor {
                id,
                distance: 0.0,
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(|x| x as f64).collect();
        assert_eq!(nearest_rank(&v, 50.0), 50.0);
        assert_eq!(nearest_rank(&v, 95.0), 95.0);
        assert_eq!(nearest_rank(&v, 99.0), 99.0);
        assert_eq!(nearest_rank(&v, 100.0), 100.0);
        assert_eq!(nearest_rank(&v, 0.0), 1.0);
        assert_eq!(nearest_rank(&[7.0], 99.0), 7.0);
        assert_eq!(nearest_rank(&[1.0, 2.0, 3.0], 50.0), 2.0);
        assert_eq!(nearest_rank(&[], 50.0), 0.0);
    }

    #[test]
    fn hits_count_true_neighbours_returned() {
        assert_eq!(hits(&nb(&[2, 1, 7]), &[1, 2, 3]), 2);
        // Fewer than k returned; duplicates do not count twice; -1 is padding.
        assert_eq!(hits(&nb(&[5]), &[5, 6, 7]), 1);
        assert_eq!(hits(&nb(&[5, 5, 5]), &[5, 6, 7]), 1);
        assert_eq!(hits(&nb(&[]), &[5, 6, 7]), 0);
        assert_eq!(hits(&nb(&[4]), &[4, -1, -1]), 1);
    }

    #[test]
    fn recall_averages_over_successful_requests() {
        let t0 = Instant::now();
        let win = Window {
            measure_start: t0,
            end: t0 + Duration::from_secs(1),
            hard_stop: t0 + Duration::from_secs(2),
        };
        let a = WorkerStats {
            latencies_ms: vec![1.0, 3.0],
            hits: 7,
            ..Default::default()
        };
        let mut b = WorkerStats {
            latencies_ms: vec![2.0, 4.0],
            hits: 5,
            ..Default::default()
        };
        b.errors[Code::Unavailable as usize] = 3;
        let s = summarise(vec![a, b], &win, 4, true);
        assert_eq!(s.recall, Some(12.0 / 16.0));
        assert_eq!((s.requests, s.errors), (7, 3));
        assert_eq!(
            s.errors_by_status.get("Unavailable"),
            Some(&serde_json::Value::from(3u64))
        );
        assert_eq!((s.p50_ms, s.max_ms, s.mean_ms), (2.0, 4.0, 2.5));
        assert!((s.qps - 4.0).abs() < 1e-9 && (s.duration_s - 1.0).abs() < 1e-9);
        assert_eq!(summarise(vec![], &win, 4, true).recall, None);
        assert_eq!(summarise(vec![], &win, 4, false).recall, None);
    }

    #[test]
    fn pacer_skips_missed_slots_instead_of_bursting() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let p = Pacer::new(t0, 100.0);
        assert_eq!(p.take(t0), t0);
        assert_eq!(p.take(t0), t0 + ms(10));
        assert_eq!(p.take(t0 + ms(5)), t0 + ms(20));
        // Far behind: the next slot is now, then one interval later, not a run of past slots.
        assert_eq!(p.take(t0 + ms(1000)), t0 + ms(1000));
        assert_eq!(p.take(t0 + ms(1000)), t0 + ms(1010));
    }

    #[test]
    fn cancelled_after_the_deadline_is_the_deadline() {
        let st = Status::cancelled("Timeout expired");
        let t = Some(Duration::from_millis(50));
        assert_eq!(
            classify(&st, Duration::from_millis(51), t),
            Code::DeadlineExceeded
        );
        assert_eq!(classify(&st, Duration::from_millis(10), t), Code::Cancelled);
        assert_eq!(
            classify(&st, Duration::from_millis(51), None),
            Code::Cancelled
        );
        assert_eq!(
            format!("{:?}", Code::ResourceExhausted),
            "ResourceExhausted"
        );
    }

    fn args(addr: &str) -> Args {
        Args {
            addr: addr.into(),
            collection: "c".into(),
            queries: PathBuf::new(),
            concurrency: 3,
            duration: 0.3,
            k: 4,
            nprobe: 0,
            refine_factor: 0,
            gt: None,
            rate: None,
            timeout_ms: None,
            warmup: 0.0,
            connections: 1,
            upsert_batch: 0,
            id_start: 0,
            id_count: 0,
            payload: None,
            filter: None,
            api: Api::Quiver,
        }
    }

    #[test]
    fn flags_are_validated() {
        assert!(validate(&args("x:1")).is_ok());
        let bad: [fn(&mut Args); 11] = [
            |a| a.concurrency = 0,
            |a| a.connections = 0,
            |a| a.duration = 0.0,
            |a| a.duration = f64::NAN,
            |a| a.warmup = -1.0,
            |a| a.k = 0,
            |a| a.rate = Some(0.0),
            |a| a.payload = Some("{}".into()),
            |a| a.id_count = 5,
            |a| {
                a.upsert_batch = 10;
                a.id_count = 5;
            },
            |a| {
                a.upsert_batch = 10;
                a.filter = Some("{}".into());
            },
        ];
        for f in bad {
            let mut a = args("x:1");
            f(&mut a);
            assert!(validate(&a).is_err(), "{a:?}");
        }
        assert!(endpoint("127.0.0.1:50051").is_ok());
        assert!(endpoint("http://localhost:50051").is_ok());
    }

    fn write_rows(path: &std::path::Path, rows: &[Vec<[u8; 4]>]) {
        let mut f = std::fs::File::create(path).unwrap();
        for r in rows {
            f.write_all(&(r.len() as i32).to_le_bytes()).unwrap();
            for x in r {
                f.write_all(x).unwrap();
            }
        }
    }

    #[test]
    fn files_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("q.fvecs");
        let gt = dir.path().join("gt.ivecs");
        let frow = |v: f32| vec![v.to_le_bytes(); 4];
        let irow = |n: usize| (0..n as i32).map(|x| x.to_le_bytes()).collect::<Vec<_>>();
        write_rows(&q, &[frow(1.0), frow(2.0)]);
        let mut a = args("x:1");
        a.queries = q.clone();
        let w = load_workload(&a).unwrap();
        assert_eq!((w.dim, w.nq()), (4, 2));

        a.gt = Some(gt.clone());
        write_rows(&gt, &[irow(5), irow(5)]);
        let w = load_workload(&a).unwrap();
        assert_eq!(w.truth(1), Some(&[0, 1, 2, 3][..]));
        write_rows(&gt, &[irow(5)]);
        let e = format!("{:#}", load_workload(&a).err().unwrap());
        assert!(e.contains("1 rows for 2 queries"), "{e}");
        write_rows(&gt, &[irow(3), irow(3)]);
        let e = format!("{:#}", load_workload(&a).err().unwrap());
        assert!(e.contains("fewer than k = 4"), "{e}");

        a.gt = None;
        write_rows(&q, &[]);
        assert!(load_workload(&a).is_err());
    }

    /// A stand-in server with one collection "c" of dimension 4. A query [base, sleep_ms,
    /// fail, half] returns ids base, base + 1, … (k of them, or k / 2 when `half` > 0), after
    /// sleeping `sleep_ms`, or ResourceExhausted when `fail` > 0.
    struct Fake;

    #[tonic::async_trait]
    impl Quiver for Fake {
        async fn create_collection(
            &self,
            _: Request<CreateCollectionRequest>,
        ) -> Result<Response<CollectionInfo>, Status> {
            Err(Status::unimplemented(""))
        }
        async fn drop_collection(
            &self,
            _: Request<DropCollectionRequest>,
        ) -> Result<Response<DropCollectionResponse>, Status> {
            Err(Status::unimplemented(""))
        }
        async fn list_collections(
            &self,
            _: Request<ListCollectionsRequest>,
        ) -> Result<Response<ListCollectionsResponse>, Status> {
            Err(Status::unimplemented(""))
        }
        async fn get_collection(
            &self,
            r: Request<GetCollectionRequest>,
        ) -> Result<Response<CollectionInfo>, Status> {
            if r.get_ref().name != "c" {
                return Err(Status::not_found("no such collection"));
            }
            Ok(Response::new(CollectionInfo {
                name: "c".into(),
                dim: 4,
                ..Default::default()
            }))
        }
        async fn upsert(
            &self,
            _: Request<UpsertRequest>,
        ) -> Result<Response<UpsertResponse>, Status> {
            Err(Status::unimplemented(""))
        }
        async fn get(&self, _: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
            Err(Status::unimplemented(""))
        }
        async fn upsert_stream(
            &self,
            _: Request<tonic::Streaming<UpsertRequest>>,
        ) -> Result<Response<UpsertResponse>, Status> {
            Err(Status::unimplemented(""))
        }
        async fn delete(
            &self,
            _: Request<DeleteRequest>,
        ) -> Result<Response<DeleteResponse>, Status> {
            Err(Status::unimplemented(""))
        }
        async fn train(
            &self,
            _: Request<TrainRequest>,
        ) -> Result<Response<CollectionInfo>, Status> {
            Err(Status::unimplemented(""))
        }
        async fn load_index(
            &self,
            _: Request<LoadIndexRequest>,
        ) -> Result<Response<CollectionInfo>, Status> {
            Err(Status::unimplemented(""))
        }
        async fn flush(&self, _: Request<FlushRequest>) -> Result<Response<FlushResponse>, Status> {
            Err(Status::unimplemented(""))
        }
        async fn search(
            &self,
            r: Request<SearchRequest>,
        ) -> Result<Response<SearchResponse>, Status> {
            let (v, k) = (&r.get_ref().vector, u64::from(r.get_ref().k));
            if v[2] > 0.0 {
                return Err(Status::resource_exhausted("queue full"));
            }
            if v[1] > 0.0 {
                tokio::time::sleep(Duration::from_millis(v[1] as u64)).await;
            }
            let n = if v[3] > 0.0 { k / 2 } else { k };
            let base = v[0] as u64;
            Ok(Response::new(SearchResponse {
                neighbors: (0..n)
                    .map(|i| Neighbor {
                        id: base + i,
                        distance: i as f32,
                        ..Default::default()
                    })
                    .collect(),
            }))
        }
        async fn search_batch(
            &self,
            _: Request<SearchBatchRequest>,
        ) -> Result<Response<SearchBatchResponse>, Status> {
            Err(Status::unimplemented(""))
        }
        async fn count(&self, _: Request<CountRequest>) -> Result<Response<CountResponse>, Status> {
            Err(Status::unimplemented(""))
        }
        async fn scroll(
            &self,
            _: Request<ScrollRequest>,
        ) -> Result<Response<ScrollResponse>, Status> {
            Err(Status::unimplemented(""))
        }
        async fn set_payload(
            &self,
            _: Request<SetPayloadRequest>,
        ) -> Result<Response<SetPayloadResponse>, Status> {
            Err(Status::unimplemented(""))
        }
        async fn delete_payload(
            &self,
            _: Request<DeletePayloadRequest>,
        ) -> Result<Response<SetPayloadResponse>, Status> {
            Err(Status::unimplemented(""))
        }
        async fn create_field_index(
            &self,
            _: Request<::quiver_server::proto::CreateFieldIndexRequest>,
        ) -> Result<Response<CollectionInfo>, Status> {
            Err(Status::unimplemented(""))
        }
        async fn delete_field_index(
            &self,
            _: Request<::quiver_server::proto::DeleteFieldIndexRequest>,
        ) -> Result<Response<CollectionInfo>, Status> {
            Err(Status::unimplemented(""))
        }
    }

    async fn start_fake() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(QuiverServer::new(Fake))
                .serve_with_incoming(incoming),
        );
        addr.to_string()
    }

    /// Rows [base, sleep_ms, fail, half]; ground truth row i = base_i, base_i + 1, … (6 wide).
    fn workload(rows: &[[f32; 4]], with_gt: bool, timeout_ms: Option<u64>) -> Arc<Workload> {
        let gt = with_gt.then(|| GroundTruth {
            k: 6,
            ids: rows
                .iter()
                .flat_map(|r| (0..6).map(move |i| r[0] as i32 + i))
                .collect(),
        });
        Arc::new(Workload {
            collection: "c".into(),
            dim: 4,
            queries: rows.iter().flatten().copied().collect(),
            gt,
            k: 4,
            nprobe: 0,
            refine_factor: 0,
            timeout: timeout_ms.map(Duration::from_millis),
            upsert_batch: 0,
            next_id: Default::default(),
            id_start: 0,
            id_count: 0,
            payload: String::new(),
            filter: String::new(),
            api: Api::Quiver,
        })
    }

    fn num(v: &serde_json::Value, key: &str) -> f64 {
        v[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing in {v}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closed_loop_reports_throughput_and_recall() {
        let addr = start_fake().await;
        let mut a = args(&addr);
        a.warmup = 0.1;
        a.connections = 2;
        let rows = [
            [0.0, 0.0, 0.0, 0.0],
            [10.0, 0.0, 0.0, 0.0],
            [20.0, 0.0, 0.0, 0.0],
            [30.0, 0.0, 0.0, 0.0],
        ];
        let r = execute(&a, workload(&rows, true, Some(2000)))
            .await
            .unwrap();
        for key in [
            "qps",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "mean_ms",
            "max_ms",
            "requests",
            "errors",
            "concurrency",
            "duration_s",
        ] {
            num(&r, key);
        }
        assert!(num(&r, "requests") > 10.0, "{r}");
        assert_eq!(num(&r, "errors"), 0.0);
        assert_eq!(r["errors_by_status"], serde_json::json!({}));
        assert_eq!(num(&r, "recall"), 1.0);
        assert!(num(&r, "warmup_requests") > 0.0);
        assert!(
            num(&r, "duration_s") >= 0.3 && num(&r, "duration_s") < 1.0,
            "{r}"
        );
        let qps = num(&r, "requests") / num(&r, "duration_s");
        assert!((num(&r, "qps") - qps).abs() < 1e-6 * qps);
        assert!(num(&r, "p50_ms") <= num(&r, "p95_ms") && num(&r, "p95_ms") <= num(&r, "p99_ms"));
        assert!(num(&r, "p99_ms") <= num(&r, "max_ms"));
        assert_eq!(r["connections"], 2);

        // Short answers: 2 of k = 4 found on every request.
        let half = [[0.0, 0.0, 0.0, 1.0], [10.0, 0.0, 0.0, 1.0]];
        let r = execute(&args(&addr), workload(&half, true, None))
            .await
            .unwrap();
        assert_eq!(num(&r, "recall"), 0.5);
        let r = execute(&args(&addr), workload(&half, false, None))
            .await
            .unwrap();
        assert!(r.get("recall").is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn errors_are_counted_by_status() {
        let addr = start_fake().await;
        let mut a = args(&addr);
        a.concurrency = 2;
        a.timeout_ms = Some(50);
        // Worker 0 always sends row 0 (rejected), worker 1 row 1 (too slow for the deadline).
        let rows = [[0.0, 0.0, 1.0, 0.0], [0.0, 300.0, 0.0, 0.0]];
        let r = execute(&a, workload(&rows, false, a.timeout_ms))
            .await
            .unwrap();
        let by = &r["errors_by_status"];
        assert!(by["ResourceExhausted"].as_u64().unwrap() > 0, "{r}");
        assert!(by["DeadlineExceeded"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(num(&r, "errors"), num(&r, "requests"));
        assert_eq!((num(&r, "qps"), num(&r, "p50_ms")), (0.0, 0.0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rate_paces_the_requests() {
        let addr = start_fake().await;
        let mut a = args(&addr);
        a.concurrency = 4;
        a.duration = 0.5;
        a.rate = Some(100.0);
        let r = execute(&a, workload(&[[0.0; 4]], false, None))
            .await
            .unwrap();
        let n = num(&r, "requests");
        assert!((40.0..=51.0).contains(&n), "{r}");
        assert_eq!(num(&r, "rate"), 100.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn start_up_failures_are_clear_errors() {
        let addr = start_fake().await;
        let mut a = args(&addr);
        a.collection = "nope".into();
        let e = format!(
            "{:#}",
            execute(&a, workload(&[[0.0; 4]], false, None))
                .await
                .unwrap_err()
        );
        assert!(e.contains("\"nope\" not found"), "{e}");

        let w = Arc::new(Workload {
            dim: 2,
            queries: vec![0.0; 2],
            ..Arc::try_unwrap(workload(&[[0.0; 4]], false, None))
                .ok()
                .unwrap()
        });
        let e = format!("{:#}", execute(&args(&addr), w).await.unwrap_err());
        assert!(e.contains("dimension 4"), "{e}");

        // A port with nothing listening.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let t = std::time::Instant::now();
        let e = format!(
            "{:#}",
            execute(&args(&closed), workload(&[[0.0; 4]], false, None))
                .await
                .unwrap_err()
        );
        assert!(e.contains(&format!("cannot connect to {closed}")), "{e}");
        assert!(t.elapsed() < Duration::from_secs(7));
    }
}
