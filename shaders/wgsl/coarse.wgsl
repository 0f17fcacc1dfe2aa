// Coarse distances: scores[q][c] for a batch of queries against every coarse centroid. Twin of
// kernels/cuda/coarse.cu.
//
// A register-tiled matrix product. One 16 × 16 workgroup computes a 128-query × 128-centroid
// tile, each invocation an 8 × 8 sub-tile: queries y + 16i and centroids x + 16j (i, j < 8),
// so that 16 neighbouring invocations read 16 consecutive workgroup-memory words. Both
// operands are staged through workgroup memory 8 dimensions at a time, dimension-major (row
// stride 132); per dimension an invocation reads 8 + 8 words and does 64 multiply-adds for the
// dot products (+ 8 for the queries' norms). Each dot product adds its dimensions in order.
// Inner product: -<q, c>; L2: max(‖q‖² + ‖c‖² − 2<q, c>, 0), the same expression as the CPU
// reference. Each score goes out with its payload (0, centroid) for the top-k kernel, which
// then picks the nprobe best.

struct Params {
    nq: u32,
    nlist: u32,
    dim: u32,
    l2: u32,
    payloads: u32, // 0: scores alone (the resident search's selection takes places as payloads)
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read> queries: array<f32>;
@group(0) @binding(1) var<storage, read> centroids: array<f32>;
@group(0) @binding(2) var<storage, read> centroid_norms: array<f32>;
@group(0) @binding(3) var<storage, read_write> scores: array<f32>;
@group(0) @binding(4) var<storage, read_write> payloads: array<vec2<u32>>;
@group(0) @binding(5) var<uniform> params: Params;

const TILE: u32 = 128u;
const STEP: u32 = 8u;
const STRIDE: u32 = 132u;
const SUB: u32 = 8u;

var<workgroup> q_tile: array<f32, 1056>; // STEP × STRIDE
var<workgroup> c_tile: array<f32, 1056>;

@compute @workgroup_size(16, 16)
fn main(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let tx = lid.x;
    let ty = lid.y;
    let tid = ty * 16u + tx;
    let q0 = wid.y * TILE;
    let c0 = wid.x * TILE;
    var dot: array<array<f32, 8>, 8>;
    var q_norm: array<f32, 8>;
    for (var i = 0u; i < SUB; i++) {
        q_norm[i] = 0.0;
        for (var j = 0u; j < SUB; j++) {
            dot[i][j] = 0.0;
        }
    }
    for (var d0 = 0u; d0 < params.dim; d0 += STEP) {
        // Stage 128 rows × 8 dimensions of each operand: invocation tid loads row tid / 8 +
        // 32r, dimension tid % 8.
        let d = d0 + (tid & 7u);
        for (var r = 0u; r < 4u; r++) {
            let row = (tid >> 3u) + 32u * r;
            let q = q0 + row;
            let c = c0 + row;
            var qv = 0.0;
            if (q < params.nq && d < params.dim) {
                qv = queries[q * params.dim + d];
            }
            var cv = 0.0;
            if (c < params.nlist && d < params.dim) {
                cv = centroids[c * params.dim + d];
            }
            q_tile[(tid & 7u) * STRIDE + row] = qv;
            c_tile[(tid & 7u) * STRIDE + row] = cv;
        }
        workgroupBarrier();
        for (var t = 0u; t < STEP; t++) {
            var a: array<f32, 8>;
            var b: array<f32, 8>;
            for (var i = 0u; i < SUB; i++) {
                a[i] = q_tile[t * STRIDE + ty + 16u * i];
                b[i] = c_tile[t * STRIDE + tx + 16u * i];
            }
            for (var i = 0u; i < SUB; i++) {
                q_norm[i] += a[i] * a[i];
                for (var j = 0u; j < SUB; j++) {
                    dot[i][j] += a[i] * b[j];
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < SUB; i++) {
        let q = q0 + ty + 16u * i;
        for (var j = 0u; j < SUB; j++) {
            let c = c0 + tx + 16u * j;
            if (q < params.nq && c < params.nlist) {
                var s = -dot[i][j];
                if (params.l2 != 0u) {
                    s = max(q_norm[i] + centroid_norms[c] - 2.0 * dot[i][j], 0.0);
                }
                scores[q * params.nlist + c] = s;
                if (params.payloads != 0u) {
                    payloads[q * params.nlist + c] = vec2<u32>(0u, c);
                }
            }
        }
    }
}
