// Per-query top-n selection over a row of scores (the coarse stage's top-nprobe).
//
// One workgroup of 256 threads per query. The row's (score, index) pairs are loaded into
// workgroup memory padded to a power of two with +inf, sorted by a bitonic network ordered by
// score then index (the CPU reference's tie rule), and the first `n` are written out. Rows of
// up to 2,048 entries fit the 16 KiB of workgroup memory every adapter offers.

struct Params {
    rows: u32,
    len: u32,
    n: u32,
    padded: u32,
}

@group(0) @binding(0) var<storage, read> scores: array<f32>;
@group(0) @binding(1) var<storage, read_write> out_index: array<u32>;
@group(0) @binding(2) var<storage, read_write> out_score: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

const MAX_LEN: u32 = 2048u;
const THREADS: u32 = 256u;

var<workgroup> keys: array<f32, 2048>;
var<workgroup> vals: array<u32, 2048>;

fn before(ka: f32, va: u32, kb: f32, vb: u32) -> bool {
    return ka < kb || (ka == kb && va < vb);
}

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let row = wid.x + wid.y * 65535u;
    if (row >= params.rows) {
        return;
    }
    let base = row * params.len;
    for (var i = tid; i < params.padded; i += THREADS) {
        if (i < params.len) {
            keys[i] = scores[base + i];
            vals[i] = i;
        } else {
            keys[i] = bitcast<f32>(0x7f800000u); // +inf
            vals[i] = 0xffffffffu;
        }
    }
    workgroupBarrier();
    for (var size = 2u; size <= params.padded; size <<= 1u) {
        for (var stride = size >> 1u; stride > 0u; stride >>= 1u) {
            for (var i = tid; i < params.padded; i += THREADS) {
                let j = i ^ stride;
                if (j > i) {
                    let ascending = (i & size) == 0u;
                    let ki = keys[i];
                    let kj = keys[j];
                    let vi = vals[i];
                    let vj = vals[j];
                    let swap = select(before(ki, vi, kj, vj), before(kj, vj, ki, vi), ascending);
                    if (swap) {
                        keys[i] = kj;
                        keys[j] = ki;
                        vals[i] = vj;
                        vals[j] = vi;
                    }
                }
            }
            workgroupBarrier();
        }
    }
    for (var i = tid; i < params.n; i += THREADS) {
        out_index[row * params.n + i] = vals[i];
        out_score[row * params.n + i] = keys[i];
    }
}
