//! The CUDA kernel sources and the WGSL shader each one mirrors.

/// One CUDA translation unit.
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    /// File stem in `kernels/cuda/`.
    pub name: &'static str,
    /// Entry points (`extern "C" __global__`).
    pub entries: &'static [&'static str],
    /// The CUDA C source.
    pub source: &'static str,
    /// Headers it includes (`#include "name"`), by name: given to NVRTC with the source (the
    /// emulator's build inlines them).
    pub headers: &'static [(&'static str, &'static str)],
    /// The WGSL twin in `shaders/wgsl/`.
    pub wgsl_twin: &'static str,
}

/// The table entry of the lookup tables (`cuda/table_entry.cuh`).
const TABLE_ENTRY: (&str, &str) = ("table_entry.cuh", include_str!("../cuda/table_entry.cuh"));

/// The warp queue of the selections (`cuda/warp_queue.cuh`).
const WARP_QUEUE: (&str, &str) = ("warp_queue.cuh", include_str!("../cuda/warp_queue.cuh"));

/// Every kernel, in pipeline order.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "coarse",
        entries: &["coarse_distances", "coarse_select"],
        source: include_str!("../cuda/coarse.cu"),
        headers: &[WARP_QUEUE],
        wgsl_twin: "coarse.wgsl",
    },
    Kernel {
        name: "topk",
        entries: &["warp_select", "select_strided"],
        source: include_str!("../cuda/topk.cu"),
        headers: &[WARP_QUEUE],
        wgsl_twin: "topk.wgsl",
    },
    Kernel {
        name: "tables",
        entries: &["lookup_tables"],
        source: include_str!("../cuda/tables.cu"),
        headers: &[TABLE_ENTRY],
        wgsl_twin: "tables.wgsl",
    },
    Kernel {
        name: "scan8",
        entries: &["scan8", "scan_items", "scan8_select"],
        source: include_str!("../cuda/scan8.cu"),
        headers: &[TABLE_ENTRY, WARP_QUEUE],
        wgsl_twin: "scan8.wgsl",
    },
    Kernel {
        name: "scan4",
        entries: &["scan4", "scan4_quantized", "scan4_select"],
        source: include_str!("../cuda/scan4.cu"),
        headers: &[TABLE_ENTRY, WARP_QUEUE],
        wgsl_twin: "scan4.wgsl",
    },
    Kernel {
        name: "refine",
        entries: &["refine", "refine_candidates"],
        source: include_str!("../cuda/refine.cu"),
        headers: &[],
        wgsl_twin: "refine.wgsl",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel names its entry points in its source and has its WGSL twin on disk.
    #[test]
    fn kernels_have_their_entries_and_twins() {
        let shaders = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shaders/wgsl");
        for k in KERNELS {
            for e in k.entries {
                let bounded = k.source.lines().any(|l| {
                    l.contains("__global__ void __launch_bounds__") && l.contains(&format!(" {e}("))
                });
                assert!(
                    k.source.contains(&format!("__global__ void {e}(")) || bounded,
                    "{}: no entry {e}",
                    k.name
                );
            }
            assert!(shaders.join(k.wgsl_twin).exists(), "{}: no twin", k.name);
        }
    }
}
