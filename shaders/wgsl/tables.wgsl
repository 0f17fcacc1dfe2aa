// PQ lookup tables: values[q][m][j] = factor · <q_m, C_mj> for every query q, sub-quantizer m
// and centroid j (factor −1 for inner-product metrics, −2 for L2, as the CPU reference).
//
// One thread per table entry; the codebook (`M × ksub × dsub`) is read in place: each entry
// costs `dsub` multiply-adds and reads `2 · dsub` values, which the caches serve (a query's
// `dsub` values are shared by the 256 threads of its sub-quantizer).

struct Params {
    nq: u32,
    m: u32,
    ksub: u32,
    dsub: u32,
    factor: f32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read> queries: array<f32>;
@group(0) @binding(1) var<storage, read> codebook: array<f32>;
@group(0) @binding(2) var<storage, read_write> values: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    let per_query = params.m * params.ksub;
    if (i >= params.nq * per_query) {
        return;
    }
    let q = i / per_query;
    let r = i % per_query;
    let sub = r / params.ksub;
    let j = r % params.ksub;
    let dim = params.m * params.dsub;
    var acc = 0.0;
    for (var t = 0u; t < params.dsub; t++) {
        acc += queries[q * dim + sub * params.dsub + t] * codebook[(sub * params.ksub + j) * params.dsub + t];
    }
    values[i] = params.factor * acc;
}
