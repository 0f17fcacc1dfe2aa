//! Errors of the wgpu path.

use thiserror::Error;

/// What can go wrong opening a device or running a kernel.
#[derive(Debug, Error)]
pub enum WgpuError {
    /// No adapter matched the request.
    #[error("no wgpu adapter available: {0}")]
    NoAdapter(String),
    /// The adapter refused a device.
    #[error("could not open a wgpu device on {adapter}: {reason}")]
    Device {
        /// Adapter name.
        adapter: String,
        /// Why.
        reason: String,
    },
    /// A size beyond what a kernel or the device supports.
    #[error("{what} is {got}, beyond the wgpu path's limit of {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        got: u64,
        /// The limit.
        max: u64,
    },
    /// Arguments that do not fit together.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The device failed while running or reading back.
    #[error("wgpu device error: {0}")]
    Runtime(String),
}
