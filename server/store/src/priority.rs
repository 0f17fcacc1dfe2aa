//! CPU priority of the threads that write and optimize: they run at a higher nice value than
//! searches, so under contention the scheduler gives searches the cores and ingest fills what
//! they leave idle (searches' tail latency then moves little while writers run).
//!
//! Linux keeps a nice value per thread; raising it needs no privilege (lowering it back does,
//! so a thread lowered here stays lowered: use it only on threads that do nothing else).
//! Elsewhere this does nothing.

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

    /// 7 above the test process's own nice value (itself perhaps raised), at most 19.
    #[cfg(target_os = "linux")]
    fn before_plus(n: i32) -> i32 {
        (nice_of(std::process::id() as i64) + n).min(19)
    }
}
