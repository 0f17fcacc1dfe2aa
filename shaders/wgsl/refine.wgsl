// Refine: exact distances between queries and their candidates' raw vectors (f32, or f16
// stored two per u32 word). Twin of `refine` in kernels/cuda/refine.cu: one 32-lane "warp"
// per (query, candidate), four per workgroup. Lane i sums dimensions i, i + 32, …, so a warp
// reads the vector's row in consecutive words (coalesced); the 32 partial sums are then
// added by halving (lane i += lane i + 16, + 8, …, + 1), through workgroup memory where CUDA
// shuffles (`__shfl_down_sync`): the same additions in the same order, so both give the same
// bits.
//
// Inner product scores −<q, v>, L2 ‖q − v‖², as the CPU reference (which sums in a different
// order: results agree to float rounding). The top-k kernel then keeps each query's best k by
// (score, id). Memory per candidate: dim × 2 or 4 bytes of scattered vector (whole rows read
// by consecutive lanes) + the query (from cache) + 4 bytes written.

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

const LANES: u32 = 32u;
const WARPS: u32 = 4u;

var<workgroup> partial: array<f32, 128>; // LANES × WARPS

@compute @workgroup_size(128)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let lane = lid % LANES;
    let w = (wid.x + wid.y * nwg.x) * WARPS + lid / LANES;
    // No early return: every invocation reaches the barriers below.
    let live = w < params.items;
    var it = Item(0u, 0u, 0u, 0u);
    var acc = 0.0;
    if (live) {
        it = items[w];
        let q0 = it.query * params.dim;
        for (var d = lane; d < params.dim; d += LANES) {
            let v = value(it.elem + d);
            let q = queries[q0 + d];
            if (params.ip != 0u) {
                acc += q * v;
            } else {
                let diff = q - v;
                acc += diff * diff;
            }
        }
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var off = 16u; off > 0u; off >>= 1u) {
        // Lanes below `off` write their own entry and read entries at or above `off`.
        if (lane < off) {
            partial[lid] = partial[lid] + partial[lid + off];
        }
        workgroupBarrier();
    }
    if (live && lane == 0u) {
        let total = partial[lid];
        out_score[it.out] = select(total, -total, params.ip != 0u);
    }
}
