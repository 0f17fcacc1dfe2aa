//! Shared plumbing of the kernels: pipelines from WGSL, buffers, dispatch, read-back.

use wgpu::util::DeviceExt;

use quiver_engine::backend::counters::Count;

use crate::device::GpuDevice;
use crate::error::WgpuError;

/// A compute pipeline built once from one WGSL source (entry point `main`).
pub(crate) struct Kernel {
    pub(crate) pipeline: wgpu::ComputePipeline,
}

impl Kernel {
    pub(crate) fn new(gpu: &GpuDevice, label: &str, source: &str) -> Kernel {
        Kernel::entry(gpu, label, source, "main")
    }

    /// A pipeline from one entry point of a WGSL source.
    pub(crate) fn entry(gpu: &GpuDevice, label: &str, source: &str, entry: &str) -> Kernel {
        let module = gpu
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        let pipeline = gpu
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
        Kernel { pipeline }
    }

    /// Records one dispatch of `groups` workgroups (split over x and y past 65,535).
    pub(crate) fn dispatch(
        &self,
        gpu: &GpuDevice,
        encoder: &mut wgpu::CommandEncoder,
        buffers: &[&wgpu::Buffer],
        groups: (u32, u32),
    ) {
        let bindings: Vec<(u32, wgpu::BindingResource<'_>)> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| (i as u32, b.as_entire_binding()))
            .collect();
        self.dispatch_bound(gpu, encoder, &bindings, groups);
    }
}

impl Kernel {
    /// Records one dispatch with explicit bindings: (binding number, buffer range), for entry
    /// points that use some of a module's bindings or ranges of one buffer.
    pub(crate) fn dispatch_bound(
        &self,
        gpu: &GpuDevice,
        encoder: &mut wgpu::CommandEncoder,
        bindings: &[(u32, wgpu::BindingResource<'_>)],
        groups: (u32, u32),
    ) {
        let layout = self.pipeline.get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry> = bindings
            .iter()
            .map(|(i, r)| wgpu::BindGroupEntry {
                binding: *i,
                resource: r.clone(),
            })
            .collect();
        let bind = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &layout,
            entries: &entries,
        });
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: None,
            timestamp_writes: None,
        });
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(groups.0, groups.1, 1);
        gpu.counters.add(Count::Launch, 0);
    }
}

/// `bytes` bytes of `buffer` from `offset`, as a binding.
pub(crate) fn range(buffer: &wgpu::Buffer, offset: u64, bytes: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset,
        size: std::num::NonZeroU64::new(bytes.max(4)),
    })
}

/// Workgroups for `n` independent groups: x up to 65,535, the rest in y.
pub(crate) fn grid(n: u64) -> Result<(u32, u32), WgpuError> {
    const MAX: u64 = 65_535;
    let n = n.max(1);
    if n <= MAX {
        return Ok((n as u32, 1));
    }
    let y = n.div_ceil(MAX);
    if y > MAX {
        return Err(WgpuError::TooLarge {
            what: "workgroup count",
            got: n,
            max: MAX * MAX,
        });
    }
    Ok((MAX as u32, y as u32))
}

/// A read-only storage buffer holding `data`.
pub(crate) fn storage<T: bytemuck::Pod>(gpu: &GpuDevice, label: &str, data: &[T]) -> wgpu::Buffer {
    let bytes: &[u8] = bytemuck::cast_slice(data);
    // A binding may not be empty: pad to one element.
    let padded;
    let contents = if bytes.is_empty() {
        padded = [0u8; 4];
        &padded[..]
    } else {
        bytes
    };
    gpu.counters.add(Count::HostToDevice, contents.len() as u64);
    gpu.counters.add(Count::Alloc, contents.len() as u64);
    gpu.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage: wgpu::BufferUsages::STORAGE,
        })
}

/// A uniform buffer holding `value`.
///
/// A kernel's parameters, as CUDA's launch arguments: counted as a buffer, not as a copy.
pub(crate) fn uniform<T: bytemuck::Pod>(gpu: &GpuDevice, value: &T) -> wgpu::Buffer {
    gpu.counters
        .add(Count::Alloc, std::mem::size_of::<T>() as u64);
    gpu.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("params"),
            contents: bytemuck::bytes_of(value),
            usage: wgpu::BufferUsages::UNIFORM,
        })
}

/// A writable storage buffer of `bytes` bytes that can be copied out.
pub(crate) fn output(gpu: &GpuDevice, label: &str, bytes: u64) -> wgpu::Buffer {
    gpu.counters.add(Count::Alloc, bytes.max(4));
    gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.max(4),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

/// Checks that a binding of `bytes` fits the device's storage binding limit.
pub(crate) fn check_binding(
    gpu: &GpuDevice,
    what: &'static str,
    bytes: u64,
) -> Result<(), WgpuError> {
    if bytes > gpu.max_binding {
        return Err(WgpuError::TooLarge {
            what,
            got: bytes,
            max: gpu.max_binding,
        });
    }
    Ok(())
}

/// Work submitted to the device whose outputs are being copied to mappable buffers.
pub(crate) struct Pending {
    submission: wgpu::SubmissionIndex,
    staging: Vec<(wgpu::Buffer, u64)>,
    /// Buffers the submitted work uses, kept alive until it is done.
    _keep: Vec<wgpu::Buffer>,
}

/// Submits `encoder` after copying each `(buffer, bytes)` to a mappable buffer, without
/// waiting: the caller prepares the next batch while the device runs this one. `keep` holds
/// buffers the work uses.
pub(crate) fn submit(
    gpu: &GpuDevice,
    mut encoder: wgpu::CommandEncoder,
    outputs: &[(&wgpu::Buffer, u64)],
    keep: Vec<wgpu::Buffer>,
) -> Pending {
    let staging: Vec<(wgpu::Buffer, u64)> = outputs
        .iter()
        .map(|(src, bytes)| {
            let dst = take_readback(gpu, (*bytes).max(4));
            encoder.copy_buffer_to_buffer(src, 0, &dst, 0, (*bytes).max(4));
            gpu.counters.add(Count::DeviceToHost, (*bytes).max(4));
            (dst, *bytes)
        })
        .collect();
    let submission = gpu.queue.submit([encoder.finish()]);
    for (s, _) in &staging {
        s.map_async(wgpu::MapMode::Read, .., |_| {});
    }
    Pending {
        submission,
        staging,
        _keep: keep,
    }
}

impl Pending {
    /// Waits for this submission (not for later ones) and returns the outputs' contents.
    pub(crate) fn read<T: bytemuck::Pod>(self, gpu: &GpuDevice) -> Result<Vec<Vec<T>>, WgpuError> {
        gpu.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(self.submission),
                timeout: None,
            })
            .map_err(|e| WgpuError::Runtime(e.to_string()))?;
        let out: Result<Vec<Vec<T>>, WgpuError> = self
            .staging
            .iter()
            .map(|(s, bytes)| {
                let view = s
                    .get_mapped_range(..)
                    .map_err(|e| WgpuError::Runtime(e.to_string()))?;
                let out = bytemuck::cast_slice::<u8, T>(&view[..*bytes as usize]).to_vec();
                drop(view);
                s.unmap();
                Ok(out)
            })
            .collect();
        if out.is_ok() {
            // All unmapped again: reusable.
            for (s, _) in self.staging {
                give_readback(gpu, s);
            }
        }
        out
    }
}

/// Read-back buffers kept per device.
const READBACK_POOL: usize = 8;

/// A mappable buffer of at least `bytes` bytes: a pooled one if any is large enough.
fn take_readback(gpu: &GpuDevice, bytes: u64) -> wgpu::Buffer {
    if let Ok(mut pool) = gpu.readback_pool.lock() {
        if let Some(i) = pool.iter().position(|b| b.size() >= bytes) {
            return pool.swap_remove(i);
        }
    }
    gpu.counters.add(Count::Alloc, bytes.next_power_of_two());
    gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("read-back"),
        size: bytes.next_power_of_two(),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// Returns an unmapped read-back buffer to the pool (the smallest are dropped when full).
fn give_readback(gpu: &GpuDevice, buffer: wgpu::Buffer) {
    if let Ok(mut pool) = gpu.readback_pool.lock() {
        pool.push(buffer);
        if pool.len() > READBACK_POOL {
            pool.sort_by_key(|b| std::cmp::Reverse(b.size()));
            pool.truncate(READBACK_POOL);
        }
    }
}

/// Submits `encoder` after copying each `(buffer, bytes)` to a mappable buffer, waits, and
/// returns their contents.
pub(crate) fn submit_and_read<T: bytemuck::Pod>(
    gpu: &GpuDevice,
    encoder: wgpu::CommandEncoder,
    outputs: &[(&wgpu::Buffer, u64)],
) -> Result<Vec<Vec<T>>, WgpuError> {
    submit(gpu, encoder, outputs, Vec::new()).read(gpu)
}

/// Runs `f` (device work) inside out-of-memory and validation error scopes, so that a device
/// failure comes back as an error naming `what` instead of wgpu's default panic.
pub(crate) fn checked<T>(
    gpu: &GpuDevice,
    what: &str,
    f: impl FnOnce() -> Result<T, WgpuError>,
) -> Result<T, WgpuError> {
    let oom = gpu.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let result = f();
    let invalid = pollster::block_on(validation.pop());
    let out_of_memory = pollster::block_on(oom.pop());
    if let Some(e) = out_of_memory {
        return Err(WgpuError::Runtime(format!(
            "{what}: the device is out of memory ({e}); lower QUIVER_WGPU_MEMORY_MIB to stream the index"
        )));
    }
    if let Some(e) = invalid {
        return Err(WgpuError::Runtime(format!("{what}: {e}")));
    }
    result
}
