//! The background optimizer: one thread that visits every registered collection and runs its
//! due work ([`Collection::optimize_step`]: checkpoints, indexing, uploads, merges, purges),
//! off the request path. Collections are held weakly: a dropped collection leaves by itself.

use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use quiver_engine::backend::Backend;

use crate::collection::Collection;

struct Shared<B: Backend> {
    collections: Mutex<Vec<Weak<Collection<B>>>>,
    wake: Condvar,
    stop: Mutex<bool>,
}

/// Handle to the optimizer thread; stops it when dropped.
pub struct Optimizer<B: Backend + Clone + 'static> {
    shared: Arc<Shared<B>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<B: Backend + Clone + 'static> Optimizer<B> {
    /// Starts the thread: a visit every `interval` (or on a wake), at nice value `nice`
    /// (see [`crate::priority`]).
    pub fn start(interval: Duration, nice: i32) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            collections: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            stop: Mutex::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("quiver-optimizer".into())
            .spawn(move || {
                crate::priority::lower_current_thread(nice);
                run(s, interval)
            })?;
        Ok(Optimizer {
            shared,
            thread: Some(thread),
        })
    }

    /// Adds a collection to visit.
    pub fn register(&self, c: &Arc<Collection<B>>) {
        self.shared.collections.lock().push(Arc::downgrade(c));
    }

    /// Wakes the thread now.
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }
}

impl<B: Backend + Clone + 'static> Drop for Optimizer<B> {
    fn drop(&mut self) {
        *self.shared.stop.lock() = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run<B: Backend + Clone + 'static>(s: Arc<Shared<B>>, interval: Duration) {
    let mut busy = false;
    loop {
        {
            let mut stop = s.stop.lock();
            if *stop {
                return;
            }
            // Work left over from the last visit: go on at once; otherwise sleep until the
            // next tick or a wake.
            if !busy {
                s.wake.wait_for(&mut stop, interval);
            }
            if *stop {
                return;
            }
        }
        let live: Vec<Arc<Collection<B>>> = {
            let mut list = s.collections.lock();
            list.retain(|w| w.strong_count() > 0);
            list.iter().filter_map(|w| w.upgrade()).collect()
        };
        busy = false;
        for c in live {
            // Run due steps until none is left (at most a few per visit, so that one busy
            // collection does not starve the others).
            for _ in 0..8 {
                if *s.stop.lock() {
                    return;
                }
                // A panic in one step is reported like an error; the thread goes on serving
                // every collection.
                let step =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.optimize_step()));
                match step {
                    Ok(Ok(true)) => busy = true,
                    Ok(Ok(false)) => break,
                    Ok(Err(e)) => {
                        tracing::warn!(collection = %c.meta().name, error = %e, "background optimization step failed; will retry");
                        break;
                    }
                    Err(p) => {
                        tracing::error!(collection = %c.meta().name, panic = %crate::collection::panic_message(&*p), "background optimization step panicked; will retry");
                        break;
                    }
                }
            }
        }
    }
}
