//! The CUDA emulator's counters (`emu/driver.cpp`): every launch, copy, memset and
//! allocation (and its bytes) the process asked of the driver, read in-process through the emulator's
//! `quiver_emu_stats` (and written at exit to the file `QUIVER_EMU_STATS` names). NVIDIA's
//! driver has no such counters.

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
