//! The micro-batcher: gathers concurrent searches of one collection into batches.
//!
//! A bounded queue per collection feeds one dispatcher task. The dispatcher takes the oldest
//! request, then keeps taking requests until the batch holds `max_batch` queries or the oldest
//! has waited `max_delay` (NVIDIA Triton's dynamic-batching rule). Before running, requests whose
//! caller went away are dropped and requests whose deadline passed get DEADLINE_EXCEEDED; the
//! rest are grouped by search parameters and each group runs as one engine call on a blocking
//! thread (the engine parallelises inside with rayon). Up to `concurrent_batches` batches run at
//! once (so a core left idle by one batch's serial parts serves another); while that many run,
//! new requests queue, so batches grow with load. A full queue answers RESOURCE_EXHAUSTED at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use quiver_engine::backend::{Neighbors, NO_FILTER};
use quiver_engine::payload::filter::Filter;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tonic::Status;

use crate::collection::StoreCollection;
use crate::config::BatchingConfig;
use crate::metrics::Metrics;
use quiver_store::SearchKey;

/// One search request: `nq` valid queries with their parameters.
#[derive(Debug)]
pub struct Job {
    /// Row-major queries.
    pub queries: Vec<f32>,
    /// Number of queries.
    pub nq: usize,
    /// Parameters.
    pub key: SearchKey,
    /// When it was queued.
    pub enqueued: Instant,
    /// When its caller stops waiting.
    pub deadline: Option<Instant>,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<Neighbors, Status>>,
    /// The job's distinct filters (empty: none).
    pub filters: Vec<Arc<Filter>>,
    /// With filters: per query, an index into `filters` or [`NO_FILTER`].
    pub of_query: Vec<u32>,
}

/// Handle to a collection's batcher.
#[derive(Debug)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    task: JoinHandle<()>,
    queued_bytes: Arc<AtomicUsize>,
    max_queued_bytes: usize,
}

impl Job {
    /// Bytes the job holds while queued.
    pub fn bytes(&self) -> usize {
        self.queries.len() * 4 + self.of_query.len() * 4 + std::mem::size_of::<Job>()
    }
}

impl Batcher {
    /// Starts the dispatcher of a collection.
    pub fn spawn(
        collection: String,
        cell: Arc<StoreCollection>,
        cfg: BatchingConfig,
        metrics: Metrics,
    ) -> Batcher {
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let max_queued_bytes = cfg.max_queued_bytes;
        let task = tokio::spawn(dispatch(
            collection,
            cell,
            cfg,
            metrics,
            rx,
            queued_bytes.clone(),
        ));
        Batcher {
            tx,
            task,
            queued_bytes,
            max_queued_bytes,
        }
    }

    /// Queues a job, or refuses it at once when the queue is full (in jobs or in bytes).
    pub fn submit(&self, job: Job) -> Result<(), Status> {
        let bytes = job.bytes();
        let before = self.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        if before > 0 && before + bytes > self.max_queued_bytes {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            return Err(Status::resource_exhausted(format!(
                "search queue holds {before} bytes, at its limit of {} (--max-queued-bytes): the server is overloaded, retry with backoff",
                self.max_queued_bytes
            )));
        }
        self.tx.try_send(job).map_err(|e| {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            match e {
                mpsc::error::TrySendError::Full(_) => Status::resource_exhausted(
                    "search queue is full: the server is overloaded, retry with backoff",
                ),
                mpsc::error::TrySendError::Closed(_) => {
                    Status::unavailable("the collection is shutting down")
                }
            }
        })
    }

    /// Stops accepting and waits until every queued search has been answered.
    pub async fn drain(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}

async fn dispatch(
    collection: String,
    cell: Arc<StoreCollection>,
    cfg: BatchingConfig,
    metrics: Metrics,
    mut rx: mpsc::Receiver<Job>,
    queued_bytes: Arc<AtomicUsize>,
) {
    let depth = metrics
        .queue_depth
        .with_label_values(&[collection.as_str()]);
    let slots = cfg.concurrent_batches.max(1);
    let running = Arc::new(Semaphore::new(slots));
    let collection: Arc<str> = collection.into();
    loop {
        // A free slot first (requests keep queueing meanwhile), so the batch gathers
        // everything that arrived while all slots were busy.
        let Ok(slot) = running.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            break;
        };
        let until = first.enqueued + cfg.max_delay;
        let mut nq = first.nq;
        let mut batch = vec![first];
        loop {
            while nq < cfg.max_batch {
                match rx.try_recv() {
                    Ok(job) => {
                        nq += job.nq;
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            if nq >= cfg.max_batch || Instant::now() >= until {
                break;
            }
            match tokio::time::timeout_at(until.into(), rx.recv()).await {
                Ok(Some(job)) => {
                    nq += job.nq;
                    batch.push(job);
                }
                Ok(None) | Err(_) => break,
            }
        }
        // Run the batch as its own task and go back to gathering the next.
        depth.set(rx.len() as i64);
        let taken: usize = batch.iter().map(Job::bytes).sum();
        queued_bytes.fetch_sub(taken, Ordering::AcqRel);
        let (collection, cell, metrics) = (collection.clone(), cell.clone(), metrics.clone());
        tokio::spawn(async move {
            run_batch(&collection, &cell, &metrics, batch).await;
            drop(slot);
        });
    }
    // Draining: every running batch answers before the dispatcher ends (this loop's own slot
    // was released when it broke out).
    let _all = running.acquire_many(slots as u32).await;
}

async fn run_batch(
    collection: &str,
    cell: &Arc<StoreCollection>,
    metrics: &Metrics,
    batch: Vec<Job>,
) {
    let now = Instant::now();
    let mut groups: HashMap<SearchKey, Vec<Job>> = HashMap::new();
    for job in batch {
        if job.reply.is_closed() {
            continue; // cancelled by its caller
        }
        if job.deadline.is_some_and(|d| d <= now) {
            let _ = job.reply.send(Err(Status::deadline_exceeded(
                "deadline passed while queued; the search did not run",
            )));
            continue;
        }
        metrics
            .queue_wait
            .with_label_values(&[collection])
            .observe((now - job.enqueued).as_secs_f64());
        groups.entry(job.key).or_default().push(job);
    }
    for (key, jobs) in groups {
        let store = cell.clone();
        let nq: usize = jobs.iter().map(|j| j.nq).sum();
        let mut queries = Vec::with_capacity(jobs.iter().map(|j| j.queries.len()).sum());
        for j in &jobs {
            queries.extend_from_slice(&j.queries);
        }
        // Queries with filters and without share the batch: each query names its filter.
        let filtered = jobs.iter().any(|j| !j.filters.is_empty());
        let mut filters: Vec<Filter> = Vec::new();
        let mut of_query: Vec<u32> = Vec::with_capacity(if filtered { nq } else { 0 });
        if filtered {
            for j in &jobs {
                let base = filters.len() as u32;
                filters.extend(j.filters.iter().map(|f| (**f).clone()));
                if j.filters.is_empty() {
                    of_query.extend(std::iter::repeat_n(NO_FILTER, j.nq));
                } else {
                    of_query.extend(j.of_query.iter().map(|&f| {
                        if f == NO_FILTER {
                            f
                        } else {
                            base + f
                        }
                    }));
                }
            }
        }
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            if filtered {
                store.search_filtered(&queries, nq, key, &filters, &of_query)
            } else {
                store.search(&queries, nq, key)
            }
        })
        .await;
        metrics
            .batch_exec
            .with_label_values(&[collection])
            .observe(started.elapsed().as_secs_f64());
        metrics
            .batch_size
            .with_label_values(&[collection])
            .observe(nq as f64);
        match result {
            Ok(Ok(all)) => {
                let k = all.k;
                let mut row = 0;
                for j in jobs {
                    let part = Neighbors {
                        k,
                        ids: all.ids[row * k..(row + j.nq) * k].to_vec(),
                        distances: all.distances[row * k..(row + j.nq) * k].to_vec(),
                    };
                    row += j.nq;
                    let _ = j.reply.send(Ok(part));
                }
            }
            Ok(Err(e)) => {
                let status = crate::status::from_store(e);
                for j in jobs {
                    let _ = j.reply.send(Err(status.clone()));
                }
            }
            Err(join) => {
                tracing::error!(%collection, error = %join, "search batch failed");
                for j in jobs {
                    let _ = j.reply.send(Err(Status::internal("search batch failed")));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cell() -> (tempfile::TempDir, Arc<StoreCollection>) {
        let dir = tempfile::tempdir().unwrap();
        let meta = quiver_store::CollectionMeta {
            name: "t".into(),
            dim: 2,
            metric: "l2".into(),
            index: quiver_store::IndexConfig {
                nlist: 0,
                pq_m: 0,
                refine: "f16".into(),
                refine_factor: 0,
                seed: 1,
                train_at: 0,
            },
            fields: Vec::new(),
            settings: serde_json::Value::Null,
        };
        let c = StoreCollection::create(
            &dir.path().join("t"),
            meta,
            crate::backend::AnyBackend::Cpu(quiver_engine::backend::cpu::CpuBackend),
            Default::default(),
        )
        .unwrap();
        c.upsert(vec![10, 11, 12], vec![0.0, 0.0, 1.0, 1.0, 5.0, 5.0])
            .unwrap();
        (dir, Arc::new(c))
    }

    fn job(
        q: [f32; 2],
        deadline: Option<Instant>,
    ) -> (Job, oneshot::Receiver<Result<Neighbors, Status>>) {
        let (tx, rx) = oneshot::channel();
        let key = SearchKey {
            k: 1,
            nprobe: 0,
            refine_factor: 0,
        };
        (
            Job {
                queries: q.to_vec(),
                nq: 1,
                key,
                enqueued: Instant::now(),
                deadline,
                reply: tx,
                filters: Vec::new(),
                of_query: Vec::new(),
            },
            rx,
        )
    }

    #[tokio::test]
    async fn expired_deadlines_do_not_run_and_others_get_their_own_answers() {
        let cfg = BatchingConfig {
            max_batch: 8,
            max_delay: Duration::from_millis(20),
            queue_capacity: 8,
            ..Default::default()
        };
        let (_dir, c) = cell();
        let b = Batcher::spawn("t".into(), c, cfg, Metrics::new());
        let (expired, rx_expired) = job([0.0, 0.0], Some(Instant::now()));
        let (near, rx_near) = job([0.9, 0.9], None);
        let (far, rx_far) = job([6.0, 6.0], Some(Instant::now() + Duration::from_secs(60)));
        let (cancelled, rx_cancelled) = job([0.0, 0.0], None);
        drop(rx_cancelled);
        for j in [expired, near, far, cancelled] {
            b.submit(j).unwrap();
        }
        let e = rx_expired.await.unwrap().unwrap_err();
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(rx_near.await.unwrap().unwrap().ids, vec![11]);
        assert_eq!(rx_far.await.unwrap().unwrap().ids, vec![12]);
        b.drain().await;
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let cfg = BatchingConfig {
            max_batch: 1,
            max_delay: Duration::ZERO,
            queue_capacity: 1,
            ..Default::default()
        };
        let (_dir, c) = cell();
        let b = Batcher::spawn("t".into(), c, cfg, Metrics::new());
        // The dispatcher has not run yet (single-threaded test runtime): the first job fills
        // the queue, the second is refused.
        let (first, rx_first) = job([0.0, 0.0], None);
        let (second, _rx) = job([0.0, 0.0], None);
        b.submit(first).unwrap();
        let e = b.submit(second).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert_eq!(rx_first.await.unwrap().unwrap().ids, vec![10]);
        b.drain().await;
    }
}
