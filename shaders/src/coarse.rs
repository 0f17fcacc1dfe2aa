//! Coarse search on the GPU: distances of a query batch to every centroid (`coarse.wgsl`),
//! then each query's `nprobe` best lists (the top-k kernel), equal to the CPU reference's
//! [`quiver_engine::backend::Backend::coarse_search`].
//!
//! The centroids are uploaded once. A batch is cut into tiles whose score matrix and queries
//! each fit one storage binding, so any batch size runs within the device's limits.

use bytemuck::{Pod, Zeroable};
use quiver_engine::backend::Probes;
use quiver_engine::IvfPqIndex;

use crate::device::GpuDevice;
use crate::error::WgpuError;
use crate::kernel::{check_binding, output, storage, uniform, Kernel};
use crate::topk::{GpuTopK, Rows};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct DistanceParams {
    pub(crate) nq: u32,
    pub(crate) nlist: u32,
    pub(crate) dim: u32,
    pub(crate) l2: u32,
    /// 1: write each score's payload (0, list); 0: scores alone.
    pub(crate) payloads: u32,
    pub(crate) pad: [u32; 3],
}

/// Queries and centroids of one `coarse.wgsl` workgroup's tile (16 × 16 invocations, 8 × 8
/// outputs each).
pub(crate) const COARSE_TILE: usize = 128;

/// The coarse quantizer on a device, with its two kernels.
pub struct GpuCoarse {
    pub(crate) distances: Kernel,
    select: GpuTopK,
    pub(crate) centroids: wgpu::Buffer,
    pub(crate) norms: wgpu::Buffer,
    pub(crate) nlist: usize,
    pub(crate) dim: usize,
    pub(crate) l2: bool,
}

impl std::fmt::Debug for GpuCoarse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuCoarse")
            .field("nlist", &self.nlist)
            .field("dim", &self.dim)
            .finish()
    }
}

impl GpuCoarse {
    /// Uploads an index's centroids and builds the kernels.
    pub fn new(gpu: &GpuDevice, index: &IvfPqIndex) -> Result<GpuCoarse, WgpuError> {
        let (nlist, dim) = (index.nlist(), index.dim());
        check_binding(gpu, "centroid matrix (bytes)", (nlist * dim * 4) as u64)?;
        let norms: Vec<f32> = index
            .centroids()
            .chunks_exact(dim)
            .map(|c| c.iter().map(|x| x * x).sum())
            .collect();
        Ok(GpuCoarse {
            distances: Kernel::new(gpu, "coarse", include_str!("../wgsl/coarse.wgsl")),
            select: GpuTopK::new(gpu),
            centroids: storage(gpu, "centroids", index.centroids()),
            norms: storage(gpu, "centroid norms", &norms),
            nlist,
            dim,
            l2: !index.metric().is_inner_product(),
        })
    }

    /// Queries per tile: the score matrix (with its 8-byte payloads) and the queries each fit
    /// one binding.
    fn tile_rows(&self, gpu: &GpuDevice) -> usize {
        let row_bytes = (self.nlist.max(self.dim / 2) * 8) as u64;
        ((gpu.max_binding() / row_bytes) as usize).clamp(1, 65_535 * 16)
    }

    /// Each query's `nprobe` best lists, best first (ties by list number).
    pub fn search(
        &self,
        gpu: &GpuDevice,
        queries: &[f32],
        nprobe: usize,
    ) -> Result<Probes, WgpuError> {
        let nq = queries.len() / self.dim;
        let nprobe = nprobe.min(self.nlist);
        let mut lists = Vec::with_capacity(nq * nprobe);
        let mut scores = Vec::with_capacity(nq * nprobe);
        for tile in queries.chunks(self.tile_rows(gpu) * self.dim) {
            let rows = tile.len() / self.dim;
            let (l, s) = self.search_tile(gpu, tile, rows, nprobe)?;
            lists.extend(l);
            scores.extend(s);
        }
        Ok(Probes {
            nprobe,
            lists,
            scores,
        })
    }

    fn search_tile(
        &self,
        gpu: &GpuDevice,
        queries: &[f32],
        rows: usize,
        nprobe: usize,
    ) -> Result<(Vec<u32>, Vec<f32>), WgpuError> {
        let q = storage(gpu, "queries", queries);
        let n = rows * self.nlist;
        let scores = output(gpu, "coarse scores", (n * 4) as u64);
        let payloads = output(gpu, "coarse payloads", (n * 8) as u64);
        let params = uniform(
            gpu,
            &DistanceParams {
                nq: rows as u32,
                nlist: self.nlist as u32,
                dim: self.dim as u32,
                l2: u32::from(self.l2),
                payloads: 1,
                pad: [0; 3],
            },
        );
        let groups = (
            self.nlist.div_ceil(COARSE_TILE) as u32,
            rows.div_ceil(COARSE_TILE) as u32,
        );
        if groups.0 > 65_535 || groups.1 > 65_535 {
            return Err(WgpuError::TooLarge {
                what: "coarse tile (lists or queries)",
                got: rows.max(self.nlist) as u64,
                max: 65_535 * COARSE_TILE as u64,
            });
        }
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        self.distances.dispatch(
            gpu,
            &mut enc,
            &[
                &q,
                &self.centroids,
                &self.norms,
                &scores,
                &payloads,
                &params,
            ],
            groups,
        );
        let spans = (0..rows).map(|r| (r * self.nlist, self.nlist)).collect();
        let selected = self.select.select(
            gpu,
            enc,
            Rows {
                scores,
                payloads,
                spans,
            },
            nprobe,
        )?;
        let mut lists = Vec::with_capacity(rows * nprobe);
        let mut out = Vec::with_capacity(rows * nprobe);
        for (s, p) in selected {
            lists.extend(p.iter().map(|p| p[1]));
            out.extend(s);
        }
        Ok((lists, out))
    }
}
