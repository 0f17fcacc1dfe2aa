// The device-resident search's refine (twin of `refine_candidates` in
// kernels/cuda/refine.cu): one 32-lane "warp" per candidate of the scan's selection (`per` of
// them per query, payload (0, global slot), padding (~0, ~0) with +inf), four per workgroup,
// the arithmetic of `refine.wgsl` (lane i sums dimensions i, i + 32, …, then halving through
// workgroup memory), reading the candidate's raw vector at its global slot; without raw
// vectors (`has_raw` 0) the approximate score stays. Output: the score and the point's id
// (`ids`: (high, low) per global slot), padding where the candidate is padding.

struct Params {
    dim: u32,
    f16: u32,
    ip: u32,
    has_raw: u32,
    per: u32,
    n: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<storage, read> raw: array<u32>;
@group(0) @binding(1) var<storage, read> cand_score: array<f32>;
@group(0) @binding(2) var<storage, read> cand_payload: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read> ids: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read> queries: array<f32>;
@group(0) @binding(5) var<storage, read_write> out_score: array<f32>;
@group(0) @binding(6) var<storage, read_write> out_payload: array<vec2<u32>>;
@group(0) @binding(7) var<uniform> params: Params;

fn value(e: u32) -> f32 {
    if (params.f16 != 0u) {
        let pair = unpack2x16float(raw[e >> 1u]);
        return select(pair.x, pair.y, (e & 1u) == 1u);
    }
    return bitcast<f32>(raw[e]);
}

const LANES: u32 = 32u;
const WARPS: u32 = 4u;
const INF_BITS: u32 = 0x7f800000u;

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
    var p = vec2<u32>(0xffffffffu, 0xffffffffu);
    var approx = bitcast<f32>(INF_BITS);
    if (w < params.n) {
        p = cand_payload[w];
        approx = cand_score[w];
    }
    let live = w < params.n && p.x == 0u && approx != bitcast<f32>(INF_BITS);
    var acc = 0.0;
    if (live && params.has_raw != 0u) {
        let q0 = (w / params.per) * params.dim;
        let e0 = p.y * params.dim;
        for (var d = lane; d < params.dim; d += LANES) {
            let v = value(e0 + d);
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
        if (lane < off) {
            partial[lid] = partial[lid] + partial[lid + off];
        }
        workgroupBarrier();
    }
    if (w < params.n && lane == 0u) {
        if (!live) {
            out_score[w] = bitcast<f32>(INF_BITS);
            out_payload[w] = vec2<u32>(0xffffffffu, 0xffffffffu);
        } else if (params.has_raw == 0u) {
            out_score[w] = approx;
            out_payload[w] = ids[p.y];
        } else {
            let total = partial[lid];
            out_score[w] = select(total, -total, params.ip != 0u);
            out_payload[w] = ids[p.y];
        }
    }
}
