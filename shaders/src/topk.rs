//! Per-row top-k on the GPU (`topk.wgsl`): the selection step of the coarse stage, the scan
//! and refine.
//!
//! A WarpSelect-style kernel: one 32-lane workgroup per chunk of a row keeps the chunk's best
//! K in a sorted queue in workgroup memory, filtering entries through per-lane thread queues
//! (see the shader's header). Rows longer than a chunk ([`WarpSelectShape::chunk`], at least
//! 8 × K) are cut into chunks, each keeping its best `keep`; rounds repeat until each row is a
//! single chunk, whose output is the row's best `keep`, sorted by (score, payload) — the CPU
//! reference's order. Every round is recorded into the same command encoder: the host knows
//! every length in advance. `keep` up to 1,024 runs on any WebGPU device (15 KiB of workgroup
//! memory), up to 2,048 where the adapter allows 27 KiB; above that the rows are read back and
//! selected on the host with the engine's top-k.

use quiver_engine::backend::FUSED_SELECT_MAX_KEEP;
use quiver_engine::topk::{plan_round, select_rows, WarpSelectShape};
use wgpu::util::DeviceExt;

use crate::device::GpuDevice;
use crate::error::WgpuError;
use crate::kernel::{grid, output, storage, submit, uniform, Kernel, Pending};

/// Largest `keep` selected on the GPU when the adapter has 27 KiB of workgroup memory.
pub const MAX_GPU_KEEP: usize = 2048;
/// Largest `keep` selected on any WebGPU device (16 KiB of workgroup memory).
pub const PORTABLE_GPU_KEEP: usize = 1024;

/// Rows of (score, payload) entries living in two device buffers.
pub(crate) struct Rows {
    pub(crate) scores: wgpu::Buffer,
    pub(crate) payloads: wgpu::Buffer,
    /// (first entry, length) of each row.
    pub(crate) spans: Vec<(usize, usize)>,
}

/// One row's selection, best first: scores and payloads `(high, low)`.
pub(crate) type Selected = (Vec<f32>, Vec<[u32; 2]>);

/// The top-k kernel in three sizes of workgroup memory (the shader's arrays are sized at
/// compile time, and workgroup memory bounds how many workgroups a GPU keeps resident): a
/// queue of 128 (3 KiB, most selections: nprobe, k × refine factor and k are usually ≤ 128),
/// of 1,024 (15 KiB, any WebGPU device) and, where the adapter allows 27 KiB, of 2,048.
pub(crate) struct GpuTopK {
    small: Kernel,
    kernel: Kernel,
    large: Option<Kernel>,
    /// The `strided` entry point of each variant (the device-resident search's rounds).
    strided: [Option<Kernel>; 3],
}

/// The lines of `warp_queue.wgsl` that size the queue's workgroup arrays.
const QUEUE_LINE: &str = "const QCAP: u32 = 1024u;";
const STAGE_LINE: &str = "const STAGE: u32 = 256u; // LANES × TQ_MAX";
/// Queue of the small variant.
const SMALL_QUEUE: usize = 128;

/// `scan8.wgsl` with the warp queue it selects into (`fused`) prepended, sized for the fused
/// selection's largest keep ([`FUSED_SELECT_MAX_KEEP`]: K ≤ 256, T ≤ 8; 6 KiB).
pub(crate) fn scan8_source() -> String {
    let queue = include_str!("../wgsl/warp_queue.wgsl")
        .replace(QUEUE_LINE, "const QCAP: u32 = 256u;")
        .replace(STAGE_LINE, "const STAGE: u32 = 256u;");
    debug_assert_eq!(
        WarpSelectShape::for_keep(FUSED_SELECT_MAX_KEEP).queue,
        256,
        "the fused queue's size"
    );
    queue + include_str!("../wgsl/scan8.wgsl")
}

/// `scan4.wgsl` with the warp queue prepended, sized as for [`scan8_source`] (its `fused`
/// entry selects into it).
pub(crate) fn scan4_source() -> String {
    let queue = include_str!("../wgsl/warp_queue.wgsl")
        .replace(QUEUE_LINE, "const QCAP: u32 = 256u;")
        .replace(STAGE_LINE, "const STAGE: u32 = 256u;");
    queue + include_str!("../wgsl/scan4.wgsl")
}

impl GpuTopK {
    pub(crate) fn new(gpu: &GpuDevice) -> GpuTopK {
        const SOURCE: &str = concat!(
            include_str!("../wgsl/warp_queue.wgsl"),
            include_str!("../wgsl/topk.wgsl")
        );
        debug_assert!(SOURCE.contains(QUEUE_LINE) && SOURCE.contains(STAGE_LINE));
        // K ≤ 128 has T ≤ 4: 128 staged entries at most.
        let small = SOURCE
            .replace(QUEUE_LINE, "const QCAP: u32 = 128u;")
            .replace(STAGE_LINE, "const STAGE: u32 = 128u;");
        let large_bytes = WarpSelectShape::for_keep(MAX_GPU_KEEP).shared_bytes() + 16;
        let large_source = (gpu.max_workgroup_storage as usize >= large_bytes)
            .then(|| SOURCE.replace(QUEUE_LINE, "const QCAP: u32 = 2048u;"));
        GpuTopK {
            small: Kernel::new(gpu, "topk-128", &small),
            kernel: Kernel::new(gpu, "topk", SOURCE),
            large: large_source
                .as_ref()
                .map(|s| Kernel::new(gpu, "topk-2048", s)),
            strided: [
                Some(Kernel::entry(gpu, "topk-strided-128", &small, "strided")),
                Some(Kernel::entry(gpu, "topk-strided", SOURCE, "strided")),
                large_source
                    .as_ref()
                    .map(|s| Kernel::entry(gpu, "topk-strided-2048", s, "strided")),
            ],
        }
    }

    /// Records top-k rounds over `rows` rows `stride` entries apart in `scores` /
    /// `payloads` (each row only its first `row_len[r]` entries when given; without
    /// `payloads`, an entry's payload is (0, its place in its row)), keeping `keep` per row
    /// (at most [`Self::max_keep`]); the last round writes into `out` (score and
    /// payload bindings) when given, else into new buffers, which are returned.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record_strided(
        &self,
        gpu: &GpuDevice,
        encoder: &mut wgpu::CommandEncoder,
        scores: wgpu::Buffer,
        payloads: Option<wgpu::Buffer>,
        rows: usize,
        stride: usize,
        row_len: Option<&wgpu::Buffer>,
        keep: usize,
        mut out: Option<(wgpu::BindingResource<'_>, wgpu::BindingResource<'_>)>,
    ) -> Result<Option<(wgpu::Buffer, wgpu::Buffer)>, WgpuError> {
        let shape = WarpSelectShape::for_keep(keep.max(1));
        let variant = if shape.queue <= SMALL_QUEUE {
            0
        } else if shape.queue <= PORTABLE_GPU_KEEP {
            1
        } else {
            2
        };
        let kernel = self.strided[variant].as_ref().ok_or_else(|| {
            WgpuError::Invalid(format!("keep {keep} is beyond this device's top-k"))
        })?;
        let (mut cur_s, mut cur_p, mut stride) = (scores, payloads, stride.max(1));
        let mut lens = row_len;
        // Long rows' first round is cut finer, to fill the device (`spread_chunk`).
        let mut chunk = shape.spread_chunk(rows, stride);
        let no_payloads = if cur_p.is_none() {
            output(gpu, "no payloads", 8)
        } else {
            cur_s.clone()
        };
        loop {
            let parts = stride.div_ceil(chunk);
            let last = parts == 1;
            let blocks = rows * parts;
            let params = uniform(
                gpu,
                &[
                    rows as u32,
                    stride as u32,
                    parts as u32,
                    chunk as u32,
                    keep as u32,
                    u32::from(lens.is_some()),
                    shape.queue as u32,
                    shape.thread_queue as u32,
                    u32::from(cur_p.is_none()),
                    0,
                    0,
                    0,
                ],
            );
            let into = if last { out.take() } else { None };
            let fresh = match into {
                Some(_) => None,
                None => Some((
                    output(gpu, "top-k scores", (blocks * keep * 4) as u64),
                    output(gpu, "top-k payloads", (blocks * keep * 8) as u64),
                )),
            };
            let (os, op) = match (&into, &fresh) {
                (Some((s, p)), _) => (s.clone(), p.clone()),
                (None, Some((s, p))) => (s.as_entire_binding(), p.as_entire_binding()),
                (None, None) => unreachable!("one of the two is set"),
            };
            kernel.dispatch_bound(
                gpu,
                encoder,
                &[
                    (0, cur_s.as_entire_binding()),
                    // Never read with implicit payloads (a placeholder of one entry: a
                    // `vec2<u32>` array binding needs 8 bytes at least).
                    (
                        1,
                        cur_p.as_ref().unwrap_or(&no_payloads).as_entire_binding(),
                    ),
                    (3, os),
                    (4, op),
                    // Never read without `use_len`.
                    (6, lens.unwrap_or(&cur_s).as_entire_binding()),
                    (7, params.as_entire_binding()),
                ],
                grid(blocks as u64)?,
            );
            match fresh {
                Some((s, p)) if !last => {
                    (cur_s, cur_p, stride) = (s, Some(p), parts * keep);
                    lens = None;
                    chunk = shape.chunk;
                }
                done => return Ok(done),
            }
        }
    }

    /// Largest `keep` this device selects on the GPU.
    pub(crate) fn max_keep(&self) -> usize {
        if self.large.is_some() {
            MAX_GPU_KEEP
        } else {
            PORTABLE_GPU_KEEP
        }
    }

    /// Each row's best `keep` entries (fewer when the row is shorter), best first. Submits
    /// `encoder` (which must already hold the work that fills `rows`) and reads back.
    pub(crate) fn select(
        &self,
        gpu: &GpuDevice,
        encoder: wgpu::CommandEncoder,
        rows: Rows,
        keep: usize,
    ) -> Result<Vec<Selected>, WgpuError> {
        self.submit(gpu, encoder, rows, keep)?.finish(gpu)
    }

    /// Records the selection rounds after the work in `encoder` and submits it all, without
    /// waiting; [`PendingSelect::finish`] waits and reads back.
    pub(crate) fn submit(
        &self,
        gpu: &GpuDevice,
        mut encoder: wgpu::CommandEncoder,
        rows: Rows,
        keep: usize,
    ) -> Result<PendingSelect, WgpuError> {
        if keep > self.max_keep() {
            let total: usize = rows
                .spans
                .iter()
                .map(|&(s, n)| s + n)
                .max()
                .unwrap_or(0)
                .max(1);
            let pending = submit(
                gpu,
                encoder,
                &[
                    (&rows.scores, (total * 4) as u64),
                    (&rows.payloads, (total * 8) as u64),
                ],
                Vec::new(),
            );
            return Ok(PendingSelect {
                pending,
                spans: rows.spans,
                host_keep: Some(keep),
            });
        }
        let keep = keep.max(1);
        let shape = WarpSelectShape::for_keep(keep);
        let kernel = match &self.large {
            _ if shape.queue <= SMALL_QUEUE => &self.small,
            Some(large) if shape.queue > PORTABLE_GPU_KEEP => large,
            _ => &self.kernel,
        };
        let mut cur = rows;
        loop {
            let last = cur.spans.iter().all(|&(_, len)| len <= shape.chunk);
            let (chunks, spans) = plan_round(&cur.spans, keep, shape.chunk);
            let dst: usize = spans.last().map_or(0, |&(s, n)| s + n);
            let total = dst.max(1);
            let out_scores = output(gpu, "top-k scores", (total * 4) as u64);
            let out_payloads = output(gpu, "top-k payloads", (total * 8) as u64);
            if !chunks.is_empty() {
                // wgpu keeps these alive until the submitted work is done.
                let table = storage(gpu, "top-k chunks", &chunks);
                let params = uniform(
                    gpu,
                    &[
                        chunks.len() as u32,
                        shape.queue as u32,
                        shape.thread_queue as u32,
                        0,
                    ],
                );
                kernel.dispatch(
                    gpu,
                    &mut encoder,
                    &[
                        &cur.scores,
                        &cur.payloads,
                        &table,
                        &out_scores,
                        &out_payloads,
                        &params,
                    ],
                    grid(chunks.len() as u64)?,
                );
            }
            cur = Rows {
                scores: out_scores,
                payloads: out_payloads,
                spans,
            };
            if last {
                break;
            }
        }
        let total: usize = cur.spans.iter().map(|s| s.1).sum::<usize>().max(1);
        let pending = submit(
            gpu,
            encoder,
            &[
                (&cur.scores, (total * 4) as u64),
                (&cur.payloads, (total * 8) as u64),
            ],
            Vec::new(),
        );
        Ok(PendingSelect {
            pending,
            spans: cur.spans,
            host_keep: None,
        })
    }
}

/// A submitted selection.
pub(crate) struct PendingSelect {
    pending: Pending,
    spans: Vec<(usize, usize)>,
    /// `Some(keep)`: the rows come back whole and are selected on the host.
    host_keep: Option<usize>,
}

impl PendingSelect {
    /// Waits for the selection and returns each row's entries, best first.
    pub(crate) fn finish(self, gpu: &GpuDevice) -> Result<Vec<Selected>, WgpuError> {
        let got = self.pending.read::<u32>(gpu)?;
        let scores: &[f32] = bytemuck::cast_slice(&got[0]);
        let payloads: &[[u32; 2]] = bytemuck::cast_slice(&got[1]);
        Ok(match self.host_keep {
            None => self
                .spans
                .iter()
                .map(|&(s, n)| (scores[s..s + n].to_vec(), payloads[s..s + n].to_vec()))
                .collect(),
            Some(keep) => select_on_host(scores, payloads, &self.spans, keep),
        })
    }
}

/// The host path for large `keep`: the engine's [`TopK`] over rows read back whole.
fn select_on_host(
    scores: &[f32],
    payloads: &[[u32; 2]],
    spans: &[(usize, usize)],
    keep: usize,
) -> Vec<Selected> {
    let payload = |i: usize| u64::from(payloads[i][0]) << 32 | u64::from(payloads[i][1]);
    select_rows(scores, payload, spans, keep)
        .into_iter()
        .map(|row| {
            (
                row.iter().map(|e| e.score).collect(),
                row.iter()
                    .map(|e| [(e.item >> 32) as u32, e.item as u32])
                    .collect(),
            )
        })
        .collect()
}

/// Each row's best `keep` (score, payload) entries selected by the top-k kernel, best first:
/// the selection alone, as the backend runs it (device rounds up to the device's largest
/// `keep`, the host above), for tests and benchmarks. Rows are (first entry, length) spans of
/// `scores` and `payloads`.
pub fn select_rows_on_device(
    gpu: &GpuDevice,
    scores: &[f32],
    payloads: &[u64],
    spans: &[(usize, usize)],
    keep: usize,
) -> Result<Vec<Vec<(f32, u64)>>, WgpuError> {
    if scores.len() != payloads.len() {
        return Err(WgpuError::Invalid(format!(
            "{} scores but {} payloads",
            scores.len(),
            payloads.len()
        )));
    }
    if let Some(&(s, n)) = spans.iter().find(|&&(s, n)| s + n > scores.len()) {
        return Err(WgpuError::Invalid(format!(
            "row ({s}, {n}) past the {} entries",
            scores.len()
        )));
    }
    if keep == 0 {
        return Ok(vec![Vec::new(); spans.len()]);
    }
    let words: Vec<[u32; 2]> = payloads
        .iter()
        .map(|&p| [(p >> 32) as u32, p as u32])
        .collect();
    let input = |label: &str, bytes: &[u8]| {
        gpu.counters.add(
            quiver_engine::backend::counters::Count::HostToDevice,
            bytes.len().max(8) as u64,
        );
        gpu.counters.add(
            quiver_engine::backend::counters::Count::Alloc,
            bytes.len().max(8) as u64,
        );
        gpu.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: if bytes.is_empty() { &[0; 8] } else { bytes },
                // Read back whole when `keep` is beyond the device's selection.
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            })
    };
    let score_buf = input("top-k input scores", bytemuck::cast_slice(scores));
    let payload_buf = input("top-k input payloads", bytemuck::cast_slice(&words));
    let encoder = gpu
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
    let rows = Rows {
        scores: score_buf,
        payloads: payload_buf,
        spans: spans.to_vec(),
    };
    let selected = GpuTopK::new(gpu).select(gpu, encoder, rows, keep)?;
    Ok(selected
        .into_iter()
        .map(|(s, p)| {
            s.into_iter()
                .zip(p)
                .map(|(s, [hi, lo])| (s, u64::from(hi) << 32 | u64::from(lo)))
                .collect()
        })
        .collect())
}
