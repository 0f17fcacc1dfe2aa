//! Where writes run: a runtime of their own whose blocking threads run at a higher nice value
//! (`StoreConfig::write_nice`, see `quiver_store::priority`) than the threads that search.
//! An upsert or delete validates, encodes and waits for its group's fsync on one of these
//! threads; under contention the scheduler gives searches the cores first, so search tail
//! latency moves little while writers run, and ingest uses what searches leave idle.
//! With `write_nice` 0, writes run on the main runtime's blocking pool like everything else.

use tokio::runtime::Runtime;
use tonic::Status;

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
