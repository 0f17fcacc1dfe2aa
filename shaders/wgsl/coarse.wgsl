// Coarse distances: scores[q][c] for a batch of queries against every coarse centroid.
//
// One 16 × 16 workgroup computes a 16-query × 16-centroid tile; both operands are staged
// through workgroup memory 16 dimensions at a time, so each query and centroid value read
// from memory serves 16 products. Inner product: -<q, c>; L2: max(‖q‖² + ‖c‖² − 2<q, c>, 0),
// the same expression as the CPU reference. Each score goes out with its payload (0, centroid)
// for the top-k kernel, which then picks the nprobe best.

struct Params {
    nq: u32,
    nlist: u32,
    dim: u32,
    l2: u32,
}

@group(0) @binding(0) var<storage, read> queries: array<f32>;
@group(0) @binding(1) var<storage, read> centroids: array<f32>;
@group(0) @binding(2) var<storage, read> centroid_norms: array<f32>;
@group(0) @binding(3) var<storage, read_write> scores: array<f32>;
@group(0) @binding(4) var<storage, read_write> payloads: array<vec2<u32>>;
@group(0) @binding(5) var<uniform> params: Params;

const TILE: u32 = 16u;

var<workgroup> q_tile: array<f32, 256>;
var<workgroup> c_tile: array<f32, 256>;

@compute @workgroup_size(16, 16)
fn main(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let q = wid.y * TILE + lid.y;
    let c = wid.x * TILE + lid.x;
    // Rows this thread stages: query (wid.y, lid.y) and centroid (wid.x, lid.y).
    let c_row = wid.x * TILE + lid.y;
    var dot = 0.0;
    var q_norm = 0.0;
    for (var d0 = 0u; d0 < params.dim; d0 += TILE) {
        let d = d0 + lid.x;
        var qv = 0.0;
        if (q < params.nq && d < params.dim) {
            qv = queries[q * params.dim + d];
        }
        var cv = 0.0;
        if (c_row < params.nlist && d < params.dim) {
            cv = centroids[c_row * params.dim + d];
        }
        q_tile[lid.y * TILE + lid.x] = qv;
        c_tile[lid.y * TILE + lid.x] = cv;
        workgroupBarrier();
        for (var t = 0u; t < TILE; t++) {
            let a = q_tile[lid.y * TILE + t];
            dot += a * c_tile[lid.x * TILE + t];
            q_norm += a * a;
        }
        workgroupBarrier();
    }
    if (q < params.nq && c < params.nlist) {
        var s = -dot;
        if (params.l2 != 0u) {
            s = max(q_norm + centroid_norms[c] - 2.0 * dot, 0.0);
        }
        scores[q * params.nlist + c] = s;
        payloads[q * params.nlist + c] = vec2<u32>(0u, c);
    }
}
