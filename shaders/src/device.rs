//! Adapter discovery and device creation.
//!
//! `auto` prefers a hardware adapter (discrete, then integrated, then virtual GPU) and never
//! picks a CPU adapter such as Mesa's lavapipe: that runs shaders correctly but slower than
//! the CPU backend. [`AdapterChoice::AnyIncludingCpu`] takes a CPU adapter too (tests, CI).

use wgpu::{Adapter, Backends, DeviceType, Instance, InstanceDescriptor};

use crate::error::WgpuError;

/// Which adapter to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterChoice {
    /// The best hardware adapter; never a CPU adapter.
    HardwareOnly,
    /// The best adapter, a CPU one when nothing else exists.
    AnyIncludingCpu,
}

/// One adapter as `quiver devices` shows it.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    /// Adapter name (e.g. "llvmpipe (LLVM 15.0.6, 256 bits)").
    pub name: String,
    /// Graphics API behind it.
    pub backend: String,
    /// Discrete / integrated / virtual GPU, or CPU.
    pub device_type: String,
    /// Driver and version.
    pub driver: String,
    /// Largest storage buffer binding, bytes.
    pub max_storage_binding: u64,
    /// Largest buffer, bytes.
    pub max_buffer: u64,
    /// Whether `auto` may pick it.
    pub hardware: bool,
}

fn instance() -> Instance {
    let mut desc = InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = Backends::VULKAN | Backends::METAL | Backends::DX12;
    Instance::new(desc)
}

fn rank(t: DeviceType) -> Option<u8> {
    match t {
        DeviceType::DiscreteGpu => Some(0),
        DeviceType::IntegratedGpu => Some(1),
        DeviceType::VirtualGpu => Some(2),
        DeviceType::Other => Some(3),
        DeviceType::Cpu => None,
    }
}

fn summary(a: &Adapter) -> AdapterSummary {
    let info = a.get_info();
    let limits = a.limits();
    AdapterSummary {
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
        max_storage_binding: limits.max_storage_buffer_binding_size,
        max_buffer: limits.max_buffer_size,
        hardware: rank(info.device_type).is_some(),
    }
}

/// Every adapter this process can see.
pub fn list_adapters() -> Vec<AdapterSummary> {
    pollster::block_on(instance().enumerate_adapters(Backends::all()))
        .iter()
        .map(summary)
        .collect()
}

/// Largest buffer the backend allocates for index data or one tile of a batch, whatever the
/// adapter allows: a batch keeps a handful of such buffers in flight (scores, payloads, tables,
/// read-back copies), so this bounds its device memory to about a gigabyte.
pub const MAX_BUFFER_BYTES: u64 = 256 << 20;

/// An open device and its queue, with what the kernels need to know of its limits.
pub struct GpuDevice {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    adapter: AdapterSummary,
    /// Largest storage binding the kernels may use (the adapter's, or less for tests).
    pub(crate) max_binding: u64,
    /// Device memory an index's codes and raw vectors may take; larger indexes are streamed.
    memory_budget: u64,
    /// Workgroup memory one workgroup may use, bytes (the adapter's limit).
    pub(crate) max_workgroup_storage: u32,
    /// Mappable read-back buffers kept for reuse (sizes are powers of two).
    pub(crate) readback_pool: std::sync::Mutex<Vec<wgpu::Buffer>>,
    /// Dispatches, uploads, read-backs and buffers created on this device (issue #13's
    /// counts; `WgpuBackend::counters`).
    pub(crate) counters: quiver_engine::backend::counters::AtomicCounters,
}

/// The default device memory budget for an index's codes and raw vectors, MiB
/// (`QUIVER_WGPU_MEMORY_MIB` overrides it).
pub const DEFAULT_MEMORY_BUDGET_MIB: u64 = 4096;

impl std::fmt::Debug for GpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuDevice")
            .field("adapter", &self.adapter.name)
            .finish()
    }
}

impl GpuDevice {
    /// Opens the best adapter allowed by `choice`.
    pub fn open(choice: AdapterChoice) -> Result<GpuDevice, WgpuError> {
        let adapters = pollster::block_on(instance().enumerate_adapters(Backends::all()));
        let best = adapters
            .into_iter()
            .filter_map(|a| {
                let r = rank(a.get_info().device_type);
                match (r, choice) {
                    (Some(r), _) => Some((r, a)),
                    (None, AdapterChoice::AnyIncludingCpu) => Some((9, a)),
                    (None, AdapterChoice::HardwareOnly) => None,
                }
            })
            .min_by_key(|(r, _)| *r)
            .map(|(_, a)| a)
            .ok_or_else(|| {
                WgpuError::NoAdapter(match choice {
                    AdapterChoice::HardwareOnly => {
                        "no hardware GPU adapter (CPU adapters such as lavapipe are only used \
                         when asked for explicitly)"
                            .into()
                    }
                    AdapterChoice::AnyIncludingCpu => {
                        "no Vulkan, Metal or DX12 adapter (on Debian: apt-get install \
                         mesa-vulkan-drivers libvulkan1)"
                            .into()
                    }
                })
            })?;
        let adapter = summary(&best);
        let limits = best.limits();
        let (device, queue) = pollster::block_on(best.request_device(&wgpu::DeviceDescriptor {
            label: Some("quiver"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| WgpuError::Device {
            adapter: adapter.name.clone(),
            reason: e.to_string(),
        })?;
        Ok(GpuDevice {
            device,
            queue,
            max_binding: limits
                .max_storage_buffer_binding_size
                .min(limits.max_buffer_size)
                .min(MAX_BUFFER_BYTES),
            memory_budget: std::env::var("QUIVER_WGPU_MEMORY_MIB")
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(DEFAULT_MEMORY_BUDGET_MIB)
                .saturating_mul(1 << 20),
            readback_pool: std::sync::Mutex::new(Vec::new()),
            counters: Default::default(),
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            adapter,
        })
    }

    /// The adapter it runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.adapter
    }

    /// Caps the storage binding size the kernels use (to exercise tiling in tests).
    pub fn with_max_binding(mut self, bytes: u64) -> Self {
        self.max_binding = self.max_binding.min(bytes.max(256));
        self
    }

    /// Sets the device memory budget for an index's codes and raw vectors; an index above it
    /// is streamed: each batch uploads the lists it probes and the candidates it refines.
    pub fn with_memory_budget(mut self, bytes: u64) -> Self {
        self.memory_budget = bytes;
        self
    }

    /// The device memory budget for an index's codes and raw vectors.
    pub fn memory_budget(&self) -> u64 {
        self.memory_budget
    }

    /// The storage binding size the kernels use.
    pub fn max_binding(&self) -> u64 {
        self.max_binding
    }
}
