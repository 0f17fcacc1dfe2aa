//! What a device was asked to do: kernel launches (wgpu: dispatches), copies each way (calls
//! and bytes), device-to-device copies, memsets and allocations.
//!
//! The counts are how a machine without a GPU proves the device-resident search's structure
//! (one query upload and one result download per batch, a bounded number of launches). The
//! CUDA emulator counts at the driver (`kernels/emu/driver.cpp`, so every call the backend and
//! cudarc make), the wgpu backend in its own helpers; [`Backend::counters`] returns them,
//! `None` where nothing counts (the CPU, NVIDIA's driver).
//!
//! [`Backend::counters`]: crate::backend::Backend::counters

/// Cumulative counts (since the process, or the backend, started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// Kernel launches (wgpu: compute dispatches).
    pub launches: u64,
    /// Host-to-device copies (wgpu: buffers created with data and queue writes; a
    /// dispatch's uniform parameters are its arguments, as a CUDA launch's, and not counted).
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
    /// Device allocations (wgpu: buffers created).
    pub allocs: u64,
    /// Bytes of those allocations. Every buffer of the device-resident search is written
    /// whole (or, for the unfused scan's rows, below each row's length) by the kernel that
    /// makes it, so this bounds the device bytes a batch writes.
    pub alloc_bytes: u64,
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
            alloc_bytes: self.alloc_bytes.saturating_sub(earlier.alloc_bytes),
        }
    }

    /// Bytes over the bus, both directions.
    pub fn bus_bytes(&self) -> u64 {
        self.h2d_bytes + self.d2h_bytes
    }

    /// The counts as (name, value) pairs (the emulator's JSON keys, in its order).
    pub fn fields(&self) -> [(&'static str, u64); 9] {
        [
            ("launches", self.launches),
            ("h2d_copies", self.h2d_copies),
            ("h2d_bytes", self.h2d_bytes),
            ("d2h_copies", self.d2h_copies),
            ("d2h_bytes", self.d2h_bytes),
            ("d2d_copies", self.d2d_copies),
            ("memsets", self.memsets),
            ("allocs", self.allocs),
            ("alloc_bytes", self.alloc_bytes),
        ]
    }
}

impl std::ops::AddAssign for DeviceCounters {
    fn add_assign(&mut self, o: DeviceCounters) {
        self.launches += o.launches;
        self.h2d_copies += o.h2d_copies;
        self.h2d_bytes += o.h2d_bytes;
        self.d2h_copies += o.d2h_copies;
        self.d2h_bytes += o.d2h_bytes;
        self.d2d_copies += o.d2d_copies;
        self.memsets += o.memsets;
        self.allocs += o.allocs;
        self.alloc_bytes += o.alloc_bytes;
    }
}

/// Atomic counters a backend keeps for itself (the wgpu backend), read as [`DeviceCounters`].
#[derive(Debug, Default)]
pub struct AtomicCounters {
    values: [std::sync::atomic::AtomicU64; 9],
}

/// One of [`AtomicCounters`]' counts.
#[derive(Debug, Clone, Copy)]
pub enum Count {
    /// Kernel launches or dispatches.
    Launch,
    /// Host-to-device copies (and their bytes).
    HostToDevice,
    /// Device-to-host copies (and their bytes).
    DeviceToHost,
    /// Device-to-device copies.
    DeviceToDevice,
    /// Memsets.
    Memset,
    /// Allocations.
    Alloc,
}

impl AtomicCounters {
    /// Counts one `what` of `bytes` bytes (bytes count for copies across the bus and for
    /// allocations).
    pub fn add(&self, what: Count, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let (calls, b) = match what {
            Count::Launch => (0, None),
            Count::HostToDevice => (1, Some(2)),
            Count::DeviceToHost => (3, Some(4)),
            Count::DeviceToDevice => (5, None),
            Count::Memset => (6, None),
            Count::Alloc => (7, Some(8)),
        };
        self.values[calls].fetch_add(1, Relaxed);
        if let Some(b) = b {
            self.values[b].fetch_add(bytes, Relaxed);
        }
    }

    /// The counts now.
    pub fn read(&self) -> DeviceCounters {
        let v = |i: usize| self.values[i].load(std::sync::atomic::Ordering::Relaxed);
        DeviceCounters {
            launches: v(0),
            h2d_copies: v(1),
            h2d_bytes: v(2),
            d2h_copies: v(3),
            d2h_bytes: v(4),
            d2d_copies: v(5),
            memsets: v(6),
            allocs: v(7),
            alloc_bytes: v(8),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_counts_read_back_and_subtract() {
        let c = AtomicCounters::default();
        c.add(Count::Launch, 0);
        c.add(Count::HostToDevice, 100);
        c.add(Count::HostToDevice, 28);
        let first = c.read();
        c.add(Count::DeviceToHost, 40);
        c.add(Count::Alloc, 0);
        let d = c.read().since(&first);
        assert_eq!(first.launches, 1);
        assert_eq!((first.h2d_copies, first.h2d_bytes), (2, 128));
        assert_eq!(
            (d.d2h_copies, d.d2h_bytes, d.allocs, d.launches),
            (1, 40, 1, 0)
        );
        assert_eq!(d.bus_bytes(), 40);
        let mut sum = first;
        sum += d;
        assert_eq!(sum, c.read());
    }
}
