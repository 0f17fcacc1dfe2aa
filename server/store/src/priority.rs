//! CPU priority of the threads that write and optimize: they run at a higher nice value than
//! searches, so under contention the scheduler gives searches the cores and ingest fills what
//! they leave idle (searches' tail latency then moves little while writers run).
//!
//! Linux keeps a nice value per thread; raising it needs no privilege (lowering it back does,
//! so a thread lowered here stays lowered: use it only on threads that do nothing else).
//! Elsewhere this does nothing.
//!
//! Background work that fans out on rayon (training, merges and purges) runs inside
//! [`in_background`]: on a rayon pool of its own whose threads are lowered too, not on the
//! global pool that searches use at the normal priority.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The background pools, one per nice value, made on first use and kept for the process.
static POOLS: Mutex<Option<HashMap<i32, Arc<rayon::ThreadPool>>>> = Mutex::new(None);

fn pool(nice: i32) -> Option<Arc<rayon::ThreadPool>> {
    let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    let pools = pools.get_or_insert_with(HashMap::new);
    if let Some(p) = pools.get(&nice) {
        return Some(p.clone());
    }
    let built = rayon::ThreadPoolBuilder::new()
        .thread_name(move |i| format!("quiver-bg{nice}-{i}"))
        .start_handler(move |_| {
            lower_current_thread(nice);
        })
        .build();
    match built {
        Ok(p) => {
            let p = Arc::new(p);
            pools.insert(nice, p.clone());
            Some(p)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no background thread pool; background work runs at search priority");
            None
        }
    }
}

/// Runs `f` so that the rayon work inside it runs on threads at nice value `nice` (as many as
/// the global pool has). With `nice` 0, or when no pool can be started, `f` runs as is.
pub fn in_background<T: Send>(nice: i32, f: impl FnOnce() -> T + Send) -> T {
    match (nice > 0).then(|| pool(nice)).flatten() {
        Some(p) => p.install(f),
        None => f(),
    }
}

/// Raises the calling thread's nice value to `nice` (0 leaves it). Returns whether it did.
pub fn lower_current_thread(nice: i32) -> bool {
    if nice <= 0 {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on the calling thread's own id; no memory is passed.
        let done = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, nice.min(19))
        };
        done == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    /// The nice value of thread `tid` of this process, from `/proc`.
    #[cfg(target_os = "linux")]
    fn nice_of(tid: i64) -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        // Field 19 (nice): the 17th after the ")" that ends the command name.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[cfg(target_os = "linux")]
    fn gettid() -> i64 {
        // SAFETY: gettid takes no arguments.
        unsafe { libc::syscall(libc::SYS_gettid) }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_thread_is_lowered_alone() {
        let me = gettid();
        let before = nice_of(me);
        let inside = std::thread::spawn(|| {
            let lowered = super::lower_current_thread(before_plus(7));
            (lowered, nice_of(gettid()))
        })
        .join()
        .unwrap();
        assert!(inside.0);
        assert_eq!(inside.1, before_plus(7));
        assert_eq!(nice_of(me), before, "only the calling thread changes");
        assert!(!super::lower_current_thread(0));
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn background_work_runs_on_lowered_threads() {
        use rayon::prelude::*;
        let nice = before_plus(5);
        let seen: Vec<i32> = super::in_background(nice, || {
            (0..64).into_par_iter().map(|_| nice_of(gettid())).collect()
        });
        assert!(seen.iter().all(|&n| n == nice), "{seen:?}");
        // Nice 0: the work runs where it was called, at the caller's priority.
        let me = nice_of(gettid());
        assert_eq!(super::in_background(0, || nice_of(gettid())), me);
    }

    /// 7 above the test process's own nice value (itself perhaps raised), at most 19.
    #[cfg(target_os = "linux")]
    fn before_plus(n: i32) -> i32 {
        (nice_of(std::process::id() as i64) + n).min(19)
    }
}
