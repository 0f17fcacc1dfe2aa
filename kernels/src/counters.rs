//! What the device was asked to do: kernel launches, copies each way (calls and bytes),
//! memsets and allocations, as the CUDA emulator counts them (`emu/driver.cpp`).
//!
//! The counts are how a machine without a GPU proves the device-resident search's structure
//! (one query upload and one result download per batch, a bounded number of launches): the
//! emulator is the driver, so it sees every call the backend and cudarc make. On NVIDIA's
//! driver there are no such counters and [`emulator_counters`] is `None`.

/// Cumulative counts of driver calls (since the process started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// Kernel launches.
    pub launches: u64,
    /// Host-to-device copies.
    pub h2d_copies: u64,
    /// Bytes copied host to device.
    pub h2d_bytes: u64,
    /// Device-to-host copies.
    pub d2h_copies: u64,
    /// Bytes copied device to host.
    pub d2h_bytes: u64,
    /// Device-to-device copies.
    pub d2d_copies: u64,
    /// Memsets.
    pub memsets: u64,
    /// Device allocations.
    pub allocs: u64,
}

impl DeviceCounters {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &DeviceCounters) -> DeviceCounters {
        DeviceCounters {
            launches: self.launches.saturating_sub(earlier.launches),
            h2d_copies: self.h2d_copies.saturating_sub(earlier.h2d_copies),
            h2d_bytes: self.h2d_bytes.saturating_sub(earlier.h2d_bytes),
            d2h_copies: self.d2h_copies.saturating_sub(earlier.d2h_copies),
            d2h_bytes: self.d2h_bytes.saturating_sub(earlier.d2h_bytes),
            d2d_copies: self.d2d_copies.saturating_sub(earlier.d2d_copies),
            memsets: self.memsets.saturating_sub(earlier.memsets),
            allocs: self.allocs.saturating_sub(earlier.allocs),
        }
    }

    /// Bytes over the bus, both directions.
    pub fn bus_bytes(&self) -> u64 {
        self.h2d_bytes + self.d2h_bytes
    }

    /// The counts as (name, value) pairs, in the emulator's order (its JSON keys).
    pub fn fields(&self) -> [(&'static str, u64); 8] {
        [
            ("launches", self.launches),
            ("h2d_copies", self.h2d_copies),
            ("h2d_bytes", self.h2d_bytes),
            ("d2h_copies", self.d2h_copies),
            ("d2h_bytes", self.d2h_bytes),
            ("d2d_copies", self.d2d_copies),
            ("memsets", self.memsets),
            ("allocs", self.allocs),
        ]
    }
}

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
    let mut v = [0u64; 8];
    // SAFETY: `v` holds 8 values and the call writes at most the 8 it is given.
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
    })
}
