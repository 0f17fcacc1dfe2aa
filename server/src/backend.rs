//! The engine backend that searches trained collections, chosen once at start: the CPU
//! reference, wgpu or CUDA (`quiver serve|search|bench --backend auto|cpu|wgpu|cuda`).
//!
//! [`AnyBackend`] implements the engine's `Backend` trait by dispatching to the chosen one, so
//! callers stay generic. `auto` takes CUDA when a CUDA device works, else a hardware GPU adapter
//! through wgpu, else the CPU (never a CPU adapter such as lavapipe), and says which it took.

use std::sync::Arc;

use quiver_engine::backend::cpu::{CpuBackend, CpuPrepared};
use quiver_engine::backend::{
    Backend, Candidates, LookupTables, Neighbors, PreparedIndex, Probes, QueryFilters, SearchParams,
};
use quiver_engine::{EngineError, IvfPqIndex};
use quiver_kernels::{CudaBackend, CudaPrepared};
use quiver_shaders::{AdapterChoice, GpuDevice, WgpuBackend, WgpuPrepared};

/// Which backend to use, as the command line says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// A hardware GPU through wgpu if there is one, else the CPU.
    Auto,
    /// The CPU reference backend.
    Cpu,
    /// wgpu on the best adapter, a CPU adapter (lavapipe) included.
    Wgpu,
    /// CUDA on device 0.
    Cuda,
}

/// A backend chosen at run time.
#[derive(Debug, Clone)]
pub enum AnyBackend {
    /// The CPU reference.
    Cpu(CpuBackend),
    /// wgpu on one device.
    Wgpu(Arc<WgpuBackend>),
    /// CUDA on one device.
    Cuda(Arc<CudaBackend>),
}

/// An index prepared on an [`AnyBackend`].
#[derive(Debug)]
pub enum AnyPrepared {
    /// On the CPU.
    Cpu(CpuPrepared),
    /// On a wgpu device (boxed: the device handles make it large).
    Wgpu(Box<WgpuPrepared>),
    /// On a CUDA device.
    Cuda(Box<CudaPrepared>),
}

impl AnyBackend {
    /// Opens the backend `kind` asks for. Returns it and a line saying what was chosen.
    pub fn open(kind: BackendKind) -> Result<(AnyBackend, String), EngineError> {
        let unavailable = |e: quiver_shaders::WgpuError| EngineError::BackendUnavailable {
            backend: "wgpu",
            reason: e.to_string(),
        };
        match kind {
            BackendKind::Cpu => Ok((AnyBackend::Cpu(CpuBackend), "backend cpu".into())),
            BackendKind::Wgpu => {
                let gpu = GpuDevice::open(AdapterChoice::AnyIncludingCpu).map_err(unavailable)?;
                let line = format!("backend wgpu on {}", gpu.adapter().name);
                Ok((
                    AnyBackend::Wgpu(Arc::new(WgpuBackend::new(Arc::new(gpu)))),
                    line,
                ))
            }
            BackendKind::Cuda => {
                let b = CudaBackend::open(0).map_err(|e| EngineError::BackendUnavailable {
                    backend: "cuda",
                    reason: e.to_string(),
                })?;
                let line = format!("backend cuda on {}", b.device_name());
                Ok((AnyBackend::Cuda(Arc::new(b)), line))
            }
            BackendKind::Auto => {
                let cuda = match CudaBackend::open(0) {
                    Ok(b) => {
                        let line = format!("backend auto: cuda on {}", b.device_name());
                        return Ok((AnyBackend::Cuda(Arc::new(b)), line));
                    }
                    Err(e) => e,
                };
                match GpuDevice::open(AdapterChoice::HardwareOnly) {
                    Ok(gpu) => {
                        let line = format!("backend auto: wgpu on {} ({cuda})", gpu.adapter().name);
                        Ok((
                            AnyBackend::Wgpu(Arc::new(WgpuBackend::new(Arc::new(gpu)))),
                            line,
                        ))
                    }
                    Err(e) => Ok((
                        AnyBackend::Cpu(CpuBackend),
                        format!("backend auto: cpu ({cuda}; {e})"),
                    )),
                }
            }
        }
    }
}

fn mismatch() -> EngineError {
    EngineError::BackendUnavailable {
        backend: "any",
        reason: "the index was prepared on another backend".into(),
    }
}

impl AnyPrepared {
    /// The shared index this was prepared from.
    pub fn index_arc(&self) -> &Arc<IvfPqIndex> {
        match self {
            AnyPrepared::Cpu(p) => p.index_arc(),
            AnyPrepared::Wgpu(p) => p.index_arc(),
            AnyPrepared::Cuda(p) => p.index_arc(),
        }
    }
}

impl PreparedIndex for AnyPrepared {
    fn index(&self) -> &IvfPqIndex {
        self.index_arc()
    }
}

impl Backend for AnyBackend {
    type Prepared = AnyPrepared;

    fn name(&self) -> &'static str {
        match self {
            AnyBackend::Cpu(b) => b.name(),
            AnyBackend::Wgpu(b) => b.name(),
            AnyBackend::Cuda(b) => b.name(),
        }
    }

    fn prepare(&self, index: Arc<IvfPqIndex>) -> Result<AnyPrepared, EngineError> {
        Ok(match self {
            AnyBackend::Cpu(b) => AnyPrepared::Cpu(b.prepare(index)?),
            AnyBackend::Wgpu(b) => AnyPrepared::Wgpu(Box::new(b.prepare(index)?)),
            AnyBackend::Cuda(b) => AnyPrepared::Cuda(Box::new(b.prepare(index)?)),
        })
    }

    fn refresh(&self, p: &AnyPrepared, index: Arc<IvfPqIndex>) -> Result<AnyPrepared, EngineError> {
        Ok(match (self, p) {
            (AnyBackend::Cpu(b), AnyPrepared::Cpu(p)) => AnyPrepared::Cpu(b.refresh(p, index)?),
            (AnyBackend::Wgpu(b), AnyPrepared::Wgpu(p)) => {
                AnyPrepared::Wgpu(Box::new(b.refresh(p, index)?))
            }
            (AnyBackend::Cuda(b), AnyPrepared::Cuda(p)) => {
                AnyPrepared::Cuda(Box::new(b.refresh(p, index)?))
            }
            _ => self.prepare(index)?,
        })
    }

    fn coarse_search(
        &self,
        p: &AnyPrepared,
        queries: &[f32],
        nprobe: usize,
    ) -> Result<Probes, EngineError> {
        match (self, p) {
            (AnyBackend::Cpu(b), AnyPrepared::Cpu(p)) => b.coarse_search(p, queries, nprobe),
            (AnyBackend::Wgpu(b), AnyPrepared::Wgpu(p)) => b.coarse_search(p, queries, nprobe),
            (AnyBackend::Cuda(b), AnyPrepared::Cuda(p)) => b.coarse_search(p, queries, nprobe),
            _ => Err(mismatch()),
        }
    }

    fn lookup_tables(&self, p: &AnyPrepared, queries: &[f32]) -> Result<LookupTables, EngineError> {
        match (self, p) {
            (AnyBackend::Cpu(b), AnyPrepared::Cpu(p)) => b.lookup_tables(p, queries),
            (AnyBackend::Wgpu(b), AnyPrepared::Wgpu(p)) => b.lookup_tables(p, queries),
            (AnyBackend::Cuda(b), AnyPrepared::Cuda(p)) => b.lookup_tables(p, queries),
            _ => Err(mismatch()),
        }
    }

    fn scan(
        &self,
        p: &AnyPrepared,
        probes: &Probes,
        tables: &LookupTables,
        keep: usize,
    ) -> Result<Candidates, EngineError> {
        match (self, p) {
            (AnyBackend::Cpu(b), AnyPrepared::Cpu(p)) => b.scan(p, probes, tables, keep),
            (AnyBackend::Wgpu(b), AnyPrepared::Wgpu(p)) => b.scan(p, probes, tables, keep),
            (AnyBackend::Cuda(b), AnyPrepared::Cuda(p)) => b.scan(p, probes, tables, keep),
            _ => Err(mismatch()),
        }
    }

    fn scan_filtered(
        &self,
        p: &AnyPrepared,
        probes: &Probes,
        tables: &LookupTables,
        keep: usize,
        filters: QueryFilters<'_>,
    ) -> Result<Candidates, EngineError> {
        match (self, p) {
            (AnyBackend::Cpu(b), AnyPrepared::Cpu(p)) => {
                b.scan_filtered(p, probes, tables, keep, filters)
            }
            (AnyBackend::Wgpu(b), AnyPrepared::Wgpu(p)) => {
                b.scan_filtered(p, probes, tables, keep, filters)
            }
            (AnyBackend::Cuda(b), AnyPrepared::Cuda(p)) => {
                b.scan_filtered(p, probes, tables, keep, filters)
            }
            _ => Err(mismatch()),
        }
    }

    fn search_filtered(
        &self,
        p: &AnyPrepared,
        queries: &[f32],
        params: &SearchParams,
        filters: QueryFilters<'_>,
    ) -> Result<Neighbors, EngineError> {
        match (self, p) {
            (AnyBackend::Cpu(b), AnyPrepared::Cpu(p)) => {
                b.search_filtered(p, queries, params, filters)
            }
            (AnyBackend::Wgpu(b), AnyPrepared::Wgpu(p)) => {
                b.search_filtered(p, queries, params, filters)
            }
            (AnyBackend::Cuda(b), AnyPrepared::Cuda(p)) => {
                b.search_filtered(p, queries, params, filters)
            }
            _ => Err(mismatch()),
        }
    }

    fn refine(
        &self,
        p: &AnyPrepared,
        queries: &[f32],
        candidates: &Candidates,
        k: usize,
    ) -> Result<Neighbors, EngineError> {
        match (self, p) {
            (AnyBackend::Cpu(b), AnyPrepared::Cpu(p)) => b.refine(p, queries, candidates, k),
            (AnyBackend::Wgpu(b), AnyPrepared::Wgpu(p)) => b.refine(p, queries, candidates, k),
            (AnyBackend::Cuda(b), AnyPrepared::Cuda(p)) => b.refine(p, queries, candidates, k),
            _ => Err(mismatch()),
        }
    }

    fn counters(&self) -> Option<quiver_engine::backend::DeviceCounters> {
        match self {
            AnyBackend::Cpu(b) => b.counters(),
            AnyBackend::Wgpu(b) => b.counters(),
            AnyBackend::Cuda(b) => b.counters(),
        }
    }

    fn max_batch(&self, p: &AnyPrepared) -> usize {
        match (self, p) {
            (AnyBackend::Cpu(b), AnyPrepared::Cpu(p)) => b.max_batch(p),
            (AnyBackend::Wgpu(b), AnyPrepared::Wgpu(p)) => b.max_batch(p),
            (AnyBackend::Cuda(b), AnyPrepared::Cuda(p)) => b.max_batch(p),
            _ => 1,
        }
    }

    fn search(
        &self,
        p: &AnyPrepared,
        queries: &[f32],
        params: &SearchParams,
    ) -> Result<Neighbors, EngineError> {
        match (self, p) {
            (AnyBackend::Cpu(b), AnyPrepared::Cpu(p)) => b.search(p, queries, params),
            (AnyBackend::Wgpu(b), AnyPrepared::Wgpu(p)) => b.search(p, queries, params),
            (AnyBackend::Cuda(b), AnyPrepared::Cuda(p)) => b.search(p, queries, params),
            _ => Err(mismatch()),
        }
    }

    fn search_many(
        &self,
        prepared: &[&AnyPrepared],
        queries: &[f32],
        params: &SearchParams,
    ) -> Result<Vec<Neighbors>, EngineError> {
        match self {
            AnyBackend::Cpu(b) => {
                let ps: Option<Vec<_>> = prepared
                    .iter()
                    .map(|p| match p {
                        AnyPrepared::Cpu(p) => Some(p),
                        _ => None,
                    })
                    .collect();
                b.search_many(&ps.ok_or_else(mismatch)?, queries, params)
            }
            AnyBackend::Wgpu(b) => {
                let ps: Option<Vec<_>> = prepared
                    .iter()
                    .map(|p| match p {
                        AnyPrepared::Wgpu(p) => Some(&**p),
                        _ => None,
                    })
                    .collect();
                b.search_many(&ps.ok_or_else(mismatch)?, queries, params)
            }
            AnyBackend::Cuda(b) => {
                let ps: Option<Vec<_>> = prepared
                    .iter()
                    .map(|p| match p {
                        AnyPrepared::Cuda(p) => Some(&**p),
                        _ => None,
                    })
                    .collect();
                b.search_many(&ps.ok_or_else(mismatch)?, queries, params)
            }
        }
    }
}
