//! Where writes run: a runtime of their own whose blocking threads run at a higher nice value
//! (`StoreConfig::write_nice`, see `quiver_store::priority`) than the threads that search.
//! An upsert or delete validates, encodes and waits for its group's fsync on one of these
//! threads; under contention the scheduler gives searches the cores first, so search tail
//! latency moves little while writers run, and ingest uses what searches leave idle.
//! With `write_nice` 0, writes run on the main runtime's blocking pool like everything else.
//! [`WriteBudget`] bounds the bytes of writes in flight across the server
//! (`--max-write-bytes`): past it a write is refused with RESOURCE_EXHAUSTED instead of
//! queueing without bound.

use std::sync::Arc;

use tokio::runtime::Runtime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// The bytes of writes (their vectors and payloads) the server holds in flight at most, in
/// KiB permits. A write takes its share before it is queued and gives it back when its
/// blocking part ends, even if its client gave up first. Clones share one budget.
#[derive(Clone)]
pub struct WriteBudget {
    kib: Arc<Semaphore>,
    total_kib: u32,
    max_bytes: u64,
}

/// A write's share of the budget, given back when dropped.
pub struct WriteShare(#[allow(dead_code)] OwnedSemaphorePermit);

impl WriteBudget {
    /// A budget of `max_bytes` (at least 1 KiB, at most 4 TiB).
    pub fn new(max_bytes: u64) -> WriteBudget {
        let total_kib = u32::try_from(max_bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        WriteBudget {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            max_bytes,
        }
    }

    /// Takes `bytes` of the budget, or refuses with RESOURCE_EXHAUSTED (a write above the whole
    /// budget, or one that does not fit beside the writes in flight).
    pub fn take(&self, bytes: u64) -> Result<WriteShare, Status> {
        let kib = bytes.div_ceil(1024).max(1);
        let Some(kib) = u32::try_from(kib).ok().filter(|&k| k <= self.total_kib) else {
            return Err(Status::resource_exhausted(format!(
                "a write of {bytes} bytes is above --max-write-bytes ({}); split it",
                self.max_bytes
            )));
        };
        self.kib
            .clone()
            .try_acquire_many_owned(kib)
            .map(WriteShare)
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "writes in flight fill --max-write-bytes ({} bytes); retry later",
                    self.max_bytes
                ))
            })
    }

    /// Bytes taken by writes in flight now.
    pub fn in_flight_bytes(&self) -> u64 {
        u64::from(self.total_kib - self.kib.available_permits() as u32) * 1024
    }
}

/// The write threads.
pub struct WritePool {
    runtime: Option<Runtime>,
}

impl WritePool {
    /// Starts the pool (a runtime of one worker, blocking threads created on demand), or none
    /// when `nice` is 0 or the runtime cannot start (then writes share the main pool).
    pub fn start(nice: i32) -> WritePool {
        if nice <= 0 {
            return WritePool { runtime: None };
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(512)
            .thread_name("quiver-write")
            .on_thread_start(move || {
                quiver_store::priority::lower_current_thread(nice);
            })
            .build();
        match runtime {
            Ok(rt) => WritePool { runtime: Some(rt) },
            Err(e) => {
                tracing::warn!(error = %e, "write threads did not start; writes run at search priority");
                WritePool { runtime: None }
            }
        }
    }

    /// Runs a blocking write on a write thread and waits for it without blocking the caller.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let handle = match &self.runtime {
            Some(rt) => rt.spawn_blocking(f),
            None => tokio::task::spawn_blocking(f),
        };
        handle
            .await
            .map_err(|e| Status::internal(format!("write worker failed: {e}")))?
    }
}

impl Drop for WritePool {
    fn drop(&mut self) {
        // Dropping a runtime inside an async context panics; this does not wait (every write
        // was answered, or its caller gave up, before the registry goes).
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for WritePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WritePool")
            .field("own_threads", &self.runtime.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_on_its_own_threads_and_drops_inside_async_code() {
        let pool = WritePool::start(5);
        let name = pool
            .run(|| Ok(std::thread::current().name().map(str::to_string)))
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("quiver-write"));
        let e = pool
            .run(|| -> Result<(), Status> { Err(Status::invalid_argument("x")) })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        drop(pool);
        let shared = WritePool::start(0);
        assert_eq!(shared.run(|| Ok(1)).await.unwrap(), 1);
    }
}

#[cfg(test)]
mod budget_tests {
    use super::WriteBudget;

    #[test]
    fn the_budget_refuses_past_its_size_and_takes_back_what_ends() {
        let b = WriteBudget::new(10 * 1024);
        let a = b.take(6 * 1024).unwrap();
        assert_eq!(b.in_flight_bytes(), 6 * 1024);
        let e = b.take(5 * 1024).err().unwrap();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("--max-write-bytes"), "{e:?}");
        let e = b.take(11 * 1024).err().unwrap();
        assert!(e.message().contains("split it"), "{e:?}");
        drop(a);
        assert_eq!(b.in_flight_bytes(), 0);
        let _c = b.take(10 * 1024).unwrap();
    }
}
