//! The CUDA emulator's counters (`emu/driver.cpp`): every launch, copy, memset and
//! allocation (and its bytes) the process asked of the driver, read in-process through the emulator's
//! `quiver_emu_stats` (and written at exit to the file `QUIVER_EMU_STATS` names). NVIDIA's
//! driver has no such counters. Built with `--banks`, the emulator also measures each
//! kernel's shared-memory bank conflicts (`emulator_bank_counts`).

pub use quiver_engine::backend::DeviceCounters;

/// The emulator's counters now, or `None` when the loaded driver is not the emulator (or no
/// driver is loaded).
pub fn emulator_counters() -> Option<DeviceCounters> {
    // SAFETY: only tries to open the library with libloading.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return None;
    }
    type Stats = unsafe extern "C" fn(*mut u64, u32) -> u32;
    // SAFETY: the library is present (checked above); `quiver_emu_stats` exists only in the
    // emulator, with this signature (emu/driver.cpp).
    let stats = unsafe { cudarc::driver::sys::culib().get::<Stats>(b"quiver_emu_stats\0") }.ok()?;
    let mut v = [0u64; 9];
    // SAFETY: `v` holds 9 values and the call writes at most the 9 it is given.
    unsafe { stats(v.as_mut_ptr(), v.len() as u32) };
    Some(DeviceCounters {
        launches: v[0],
        h2d_copies: v[1],
        h2d_bytes: v[2],
        d2h_copies: v[3],
        d2h_bytes: v[4],
        d2d_copies: v[5],
        memsets: v[6],
        allocs: v[7],
        alloc_bytes: v[8],
    })
}

/// One kernel's shared-memory traffic as the emulator built with `--banks` measured it: warp
/// requests, the wavefronts they cost (a request costs as many as its worst bank holds
/// distinct words) and the worst request's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BankCounts {
    /// Warp-wide shared-memory loads and stores.
    pub requests: u64,
    /// Wavefronts they took (one per request when conflict-free).
    pub wavefronts: u64,
    /// The most wavefronts one request took.
    pub worst: u64,
    /// Wavefronts the requests would take without a conflict (8-byte words are served a
    /// half-warp at a time, 16-byte ones a quarter: two and four wavefronts at best).
    pub conflict_free: u64,
}

impl BankCounts {
    /// Wavefronts over the conflict-free count: 1.0 without a bank conflict, 2.0 when
    /// requests took twice the wavefronts they needed.
    pub fn ways(&self) -> f64 {
        self.wavefronts as f64 / self.conflict_free.max(1) as f64
    }
}

/// The bank counts of kernel `entry` so far, or `None` when the loaded driver is not the
/// emulator built with `--banks` (or `entry` has touched no shared memory).
pub fn emulator_bank_counts(entry: &str) -> Option<BankCounts> {
    // SAFETY: only tries to open the library with libloading.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return None;
    }
    type Banks = unsafe extern "C" fn(*const std::ffi::c_char, *mut u64) -> i32;
    // SAFETY: the library is present (checked above); `quiver_emu_banks` exists only in the
    // emulator built with --banks, with this signature (emu/driver.cpp).
    let banks = unsafe { cudarc::driver::sys::culib().get::<Banks>(b"quiver_emu_banks\0") }.ok()?;
    let name = std::ffi::CString::new(entry).ok()?;
    let mut v = [0u64; 4];
    // SAFETY: `name` is NUL-terminated; the call writes 4 values into `v`.
    let found = unsafe { banks(name.as_ptr(), v.as_mut_ptr()) };
    (found != 0).then_some(BankCounts {
        requests: v[0],
        wavefronts: v[1],
        worst: v[2],
        conflict_free: v[3],
    })
}
