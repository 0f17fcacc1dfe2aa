//! Per-row top-k on the GPU (`topk.wgsl`): the selection step of the coarse stage, the scan
//! and refine.
//!
//! Rows of (score, payload) entries of any length are cut into chunks of 1,024; a round sorts
//! every chunk in workgroup memory and keeps its best `keep`, so a row shrinks by a factor
//! `1024 / keep` per round. Rounds repeat until each row is a single chunk, whose output is
//! the row's best `keep`, sorted by (score, payload) — the CPU reference's order. Every round
//! is recorded into the same command encoder: the host knows every length in advance.
//! Selections with `keep` above [`MAX_GPU_KEEP`] (rows would shrink too slowly) read the rows
//! back and select on the host with the engine's top-k.

use quiver_engine::topk::{plan_round, select_rows};

use crate::device::GpuDevice;
use crate::error::WgpuError;
use crate::kernel::{grid, output, storage, submit, uniform, Kernel, Pending};

/// Entries one workgroup sorts.
pub const CHUNK: usize = 1024;
/// Largest `keep` selected on the GPU (each round at least halves a row).
pub const MAX_GPU_KEEP: usize = CHUNK / 2;

/// Rows of (score, payload) entries living in two device buffers.
pub(crate) struct Rows {
    pub(crate) scores: wgpu::Buffer,
    pub(crate) payloads: wgpu::Buffer,
    /// (first entry, length) of each row.
    pub(crate) spans: Vec<(usize, usize)>,
}

/// One row's selection, best first: scores and payloads `(high, low)`.
pub(crate) type Selected = (Vec<f32>, Vec<[u32; 2]>);

/// The top-k kernel.
pub(crate) struct GpuTopK {
    kernel: Kernel,
}

impl GpuTopK {
    pub(crate) fn new(gpu: &GpuDevice) -> GpuTopK {
        GpuTopK {
            kernel: Kernel::new(gpu, "topk", include_str!("../wgsl/topk.wgsl")),
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
        if keep > MAX_GPU_KEEP {
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
        let mut cur = rows;
        loop {
            let last = cur.spans.iter().all(|&(_, len)| len <= CHUNK);
            let (chunks, spans) = plan_round(&cur.spans, keep, CHUNK);
            let dst: usize = spans.last().map_or(0, |&(s, n)| s + n);
            let total = dst.max(1);
            let out_scores = output(gpu, "top-k scores", (total * 4) as u64);
            let out_payloads = output(gpu, "top-k payloads", (total * 8) as u64);
            if !chunks.is_empty() {
                // wgpu keeps these alive until the submitted work is done.
                let table = storage(gpu, "top-k chunks", &chunks);
                let params = uniform(gpu, &[chunks.len() as u32, 0, 0, 0]);
                self.kernel.dispatch(
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
