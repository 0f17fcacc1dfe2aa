//! PQ lookup tables on the GPU (`tables.wgsl`), equal (to float rounding) to the CPU
//! reference's [`quiver_engine::backend::Backend::lookup_tables`].
//!
//! The codebook is uploaded once; batches are tiled so that each tile's tables fit one
//! storage binding.

use bytemuck::{Pod, Zeroable};
use quiver_engine::backend::LookupTables;
use quiver_engine::IvfPqIndex;

use crate::device::GpuDevice;
use crate::error::WgpuError;
use crate::kernel::{check_binding, grid, output, storage, submit_and_read, uniform, Kernel};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct Params {
    pub(crate) nq: u32,
    pub(crate) m: u32,
    pub(crate) ksub: u32,
    pub(crate) dsub: u32,
    pub(crate) factor: f32,
    pub(crate) pad: [u32; 3],
}

/// A product quantizer's codebook on a device, with the table kernel.
pub struct GpuTables {
    pub(crate) kernel: Kernel,
    pub(crate) codebook: wgpu::Buffer,
    pub(crate) m: usize,
    pub(crate) ksub: usize,
    pub(crate) dsub: usize,
    pub(crate) factor: f32,
}

impl std::fmt::Debug for GpuTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuTables")
            .field("m", &self.m)
            .field("ksub", &self.ksub)
            .finish()
    }
}

impl GpuTables {
    /// Uploads an index's PQ codebook and builds the kernel.
    pub fn new(gpu: &GpuDevice, index: &IvfPqIndex) -> Result<GpuTables, WgpuError> {
        let pq = index.pq();
        check_binding(
            gpu,
            "PQ codebook (bytes)",
            (pq.centroids().len() * 4) as u64,
        )?;
        Ok(GpuTables {
            kernel: Kernel::new(gpu, "tables", include_str!("../wgsl/tables.wgsl")),
            codebook: storage(gpu, "codebook", pq.centroids()),
            m: pq.m(),
            ksub: pq.ksub(),
            dsub: pq.dsub(),
            factor: if index.metric().is_inner_product() {
                -1.0
            } else {
                -2.0
            },
        })
    }

    /// The lookup tables of a batch of queries (`nq × M × ksub`).
    pub fn compute(&self, gpu: &GpuDevice, queries: &[f32]) -> Result<LookupTables, WgpuError> {
        let dim = self.m * self.dsub;
        let per_query = self.m * self.ksub;
        let rows = ((gpu.max_binding() / (per_query.max(dim) * 4) as u64) as usize).max(1);
        let mut values = Vec::with_capacity(queries.len() / dim * per_query);
        for tile in queries.chunks(rows * dim) {
            let nq = tile.len() / dim;
            let q = storage(gpu, "queries", tile);
            let bytes = (nq * per_query * 4) as u64;
            let out = output(gpu, "tables", bytes);
            let p = uniform(
                gpu,
                &Params {
                    nq: nq as u32,
                    m: self.m as u32,
                    ksub: self.ksub as u32,
                    dsub: self.dsub as u32,
                    factor: self.factor,
                    pad: [0; 3],
                },
            );
            let mut enc = gpu
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            let groups = grid((nq * per_query).div_ceil(256) as u64)?;
            self.kernel
                .dispatch(gpu, &mut enc, &[&q, &self.codebook, &out, &p], groups);
            let mut got = submit_and_read::<f32>(gpu, enc, &[(&out, bytes)])?;
            values.extend(got.pop().unwrap_or_default());
        }
        Ok(LookupTables {
            m: self.m,
            ksub: self.ksub,
            values,
        })
    }
}
