// Refine: exact distances between queries and their candidates' raw vectors (f32, or f16
// stored two per u32 word), one thread per (query, candidate).
//
// Inner product scores −<q, v>, L2 ‖q − v‖², as the CPU reference (which sums in a different
// order: results agree to float rounding). The top-k kernel then keeps each query's best k by
// (score, id). Memory per candidate: dim × 2 or 4 bytes of scattered vector + the query (from
// cache) + 4 bytes written.

struct Item {
    query: u32,   // query number in `queries`
    elem: u32,    // first element of the vector in `raw` (in values: halves for f16)
    out: u32,     // output entry
    pad: u32,
}

struct Params {
    dim: u32,
    f16: u32,
    ip: u32,
    items: u32,
}

@group(0) @binding(0) var<storage, read> raw: array<u32>;
@group(0) @binding(1) var<storage, read> items: array<Item>;
@group(0) @binding(2) var<storage, read> queries: array<f32>;
@group(0) @binding(3) var<storage, read_write> out_score: array<f32>;
@group(0) @binding(4) var<uniform> params: Params;

fn value(e: u32) -> f32 {
    if (params.f16 != 0u) {
        let pair = unpack2x16float(raw[e >> 1u]);
        return select(pair.x, pair.y, (e & 1u) == 1u);
    }
    return bitcast<f32>(raw[e]);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = gid.x + gid.y * nwg.x * 64u;
    if (w >= params.items) {
        return;
    }
    let it = items[w];
    let q0 = it.query * params.dim;
    var acc = 0.0;
    for (var d = 0u; d < params.dim; d++) {
        let v = value(it.elem + d);
        let q = queries[q0 + d];
        if (params.ip != 0u) {
            acc += q * v;
        } else {
            let diff = q - v;
            acc += diff * diff;
        }
    }
    out_score[it.out] = select(acc, -acc, params.ip != 0u);
}
