//! The background optimizer: a pool of threads shared by every registered collection that runs
//! each one's due work ([`Collection::optimize_step`]: checkpoints, indexing, uploads, merges,
//! purges), off the request path. A collection is worked on by one thread at a time, and the
//! one waiting longest goes first, so a long merge in one collection holds up only that
//! collection while the other threads go on with the rest. (Trainings run on a thread of
//! their own, one per collection at most, and leave the pool free for checkpoints.)
//! Collections are held weakly: a dropped collection leaves by itself.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use quiver_engine::backend::Backend;

use crate::collection::Collection;

/// Due steps run per turn before a collection goes to the back of the queue.
const STEPS_PER_TURN: usize = 8;

struct Entry<B: Backend + Clone + 'static> {
    id: u64,
    collection: Weak<Collection<B>>,
    /// A thread is working on it.
    busy: bool,
    /// When it is next visited.
    due: Instant,
}

struct State<B: Backend + Clone + 'static> {
    entries: Vec<Entry<B>>,
    next_id: u64,
    stop: bool,
}

struct Shared<B: Backend + Clone + 'static> {
    state: Mutex<State<B>>,
    wake: Condvar,
    interval: Duration,
}

/// Handle to the optimizer's threads; stops them when dropped (each ends after its current
/// step).
pub struct Optimizer<B: Backend + Clone + 'static> {
    shared: Arc<Shared<B>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// The default size of the pool: half the cores, at least 2 (one collection's merge never
/// holds up every other's checkpoints) and at most 4.
pub fn default_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cores / 2).clamp(2, 4)
}

impl<B: Backend + Clone + 'static> Optimizer<B> {
    /// Starts `threads` threads (at least 1): each collection is visited every `interval` (or
    /// at once after a wake or while it has work left), at nice value `nice` (see
    /// [`crate::priority`]).
    pub fn start(interval: Duration, nice: i32, threads: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                entries: Vec::new(),
                next_id: 0,
                stop: false,
            }),
            wake: Condvar::new(),
            interval,
        });
        let mut optimizer = Optimizer {
            shared: shared.clone(),
            threads: Vec::new(),
        };
        for i in 0..threads.max(1) {
            let s = shared.clone();
            // On failure, the threads started so far are stopped by the handle's drop.
            let thread = std::thread::Builder::new()
                .name(format!("quiver-optimizer-{i}"))
                .spawn(move || {
                    crate::priority::lower_current_thread(nice);
                    run(&s)
                })?;
            optimizer.threads.push(thread);
        }
        Ok(optimizer)
    }

    /// Adds a collection to visit (once: registering it again changes nothing).
    pub fn register(&self, c: &Arc<Collection<B>>) {
        let mut state = self.shared.state.lock();
        let weak = Arc::downgrade(c);
        if state
            .entries
            .iter()
            .any(|e| Weak::ptr_eq(&e.collection, &weak))
        {
            return;
        }
        let id = state.next_id;
        state.next_id += 1;
        state.entries.push(Entry {
            id,
            collection: weak,
            busy: false,
            due: Instant::now(),
        });
        self.shared.wake.notify_one();
    }

    /// Visits every collection now.
    pub fn wake(&self) {
        let now = Instant::now();
        for e in self.shared.state.lock().entries.iter_mut() {
            e.due = e.due.min(now);
        }
        self.shared.wake.notify_all();
    }
}

impl<B: Backend + Clone + 'static> Drop for Optimizer<B> {
    fn drop(&mut self) {
        self.shared.state.lock().stop = true;
        self.shared.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One thread of the pool: takes the collection due first that no other thread works on, runs
/// its due steps, puts it back.
fn run<B: Backend + Clone + 'static>(s: &Shared<B>) {
    loop {
        let (id, c) = {
            let mut state = s.state.lock();
            loop {
                if state.stop {
                    return;
                }
                state.entries.retain(|e| e.collection.strong_count() > 0);
                let now = Instant::now();
                let next = state
                    .entries
                    .iter_mut()
                    .filter(|e| !e.busy)
                    .min_by_key(|e| e.due);
                match next {
                    Some(e) if e.due <= now => {
                        if let Some(c) = e.collection.upgrade() {
                            e.busy = true;
                            break (e.id, c);
                        }
                    }
                    Some(e) => {
                        let until = e.due;
                        s.wake.wait_until(&mut state, until);
                    }
                    None => {
                        s.wake.wait_for(&mut state, s.interval);
                    }
                }
            }
        };
        let more = run_turn(s, &c);
        drop(c);
        let mut state = s.state.lock();
        if let Some(e) = state.entries.iter_mut().find(|e| e.id == id) {
            e.busy = false;
            e.due = if more {
                Instant::now()
            } else {
                Instant::now() + s.interval
            };
        }
        if more {
            s.wake.notify_one();
        }
    }
}

/// Runs up to [`STEPS_PER_TURN`] due steps of `c`; true when work is left.
fn run_turn<B: Backend + Clone + 'static>(s: &Shared<B>, c: &Arc<Collection<B>>) -> bool {
    for _ in 0..STEPS_PER_TURN {
        if s.state.lock().stop {
            return false;
        }
        // A panic in one step is reported like an error; the thread goes on serving every
        // collection.
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.optimize_step()));
        match step {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return false,
            Ok(Err(e)) => {
                tracing::warn!(collection = %c.meta().name, error = %e, "background optimization step failed; will retry");
                return false;
            }
            Err(p) => {
                tracing::error!(collection = %c.meta().name, panic = %crate::collection::panic_message(&*p), "background optimization step panicked; will retry");
                return false;
            }
        }
    }
    true
}
