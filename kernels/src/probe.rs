//! Is there a CUDA device? Answered without cudarc's panic when `libcuda` is missing.

use cudarc::driver::CudaContext;

/// What the machine offers the CUDA backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CudaAvailability {
    /// No driver library (`libcuda.so`): no NVIDIA driver installed.
    NoDriver,
    /// The driver loads but reports no usable device (or fails to initialise).
    NoDevice(String),
    /// Devices present.
    Devices(usize),
}

/// Looks for a CUDA driver and devices.
pub fn cuda_availability() -> CudaAvailability {
    // SAFETY: only tries to open the library with libloading.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return CudaAvailability::NoDriver;
    }
    match CudaContext::device_count() {
        Ok(0) => CudaAvailability::NoDevice("the driver reports no device".into()),
        Ok(n) => CudaAvailability::Devices(n as usize),
        Err(e) => CudaAvailability::NoDevice(e.to_string()),
    }
}

impl std::fmt::Display for CudaAvailability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CudaAvailability::NoDriver => write!(f, "no CUDA driver (libcuda) on this machine"),
            CudaAvailability::NoDevice(why) => write!(f, "no CUDA device: {why}"),
            CudaAvailability::Devices(n) => write!(f, "{n} CUDA device(s)"),
        }
    }
}
