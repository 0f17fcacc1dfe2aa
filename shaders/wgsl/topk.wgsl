// Per-row top-k by (score, payload): the selection of the coarse stage (top-nprobe), of the
// scan (each query's best candidates) and of refine (each query's k neighbours).
//
// Rows are cut into chunks of at most 1,024 entries; one workgroup of 256 threads takes one
// chunk: it loads (score, payload) pairs into workgroup memory (padded to a power of two with
// +inf), sorts them by a bitonic network ordered by score, then payload (high word, then low:
// the CPU reference's tie rule), and writes the first `keep` to its place in the output.
// The host chains rounds: each round's chunks shrink a row by 1,024 → keep, until every row
// is one chunk, whose output is the row's sorted top-k. 12 KiB of workgroup memory.

struct Chunk {
    src: u32,   // first entry of the chunk in the input
    len: u32,   // entries (1..=1024)
    dst: u32,   // first entry of its output
    keep: u32,  // entries written: min(keep, len)
}

@group(0) @binding(0) var<storage, read> in_score: array<f32>;
@group(0) @binding(1) var<storage, read> in_payload: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> chunks: array<Chunk>;
@group(0) @binding(3) var<storage, read_write> out_score: array<f32>;
@group(0) @binding(4) var<storage, read_write> out_payload: array<vec2<u32>>;
@group(0) @binding(5) var<uniform> params: vec4<u32>; // x: number of chunks

const CHUNK: u32 = 1024u;
const THREADS: u32 = 256u;

var<workgroup> keys: array<f32, 1024>;
var<workgroup> pays: array<vec2<u32>, 1024>;

fn before(ka: f32, pa: vec2<u32>, kb: f32, pb: vec2<u32>) -> bool {
    return ka < kb || (ka == kb && (pa.x < pb.x || (pa.x == pb.x && pa.y < pb.y)));
}

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let c = wid.x + wid.y * 65535u;
    if (c >= params.x) {
        return;
    }
    let chunk = chunks[c];
    var padded = 2u;
    while (padded < chunk.len) {
        padded <<= 1u;
    }
    for (var i = tid; i < padded; i += THREADS) {
        if (i < chunk.len) {
            keys[i] = in_score[chunk.src + i];
            pays[i] = in_payload[chunk.src + i];
        } else {
            keys[i] = bitcast<f32>(0x7f800000u);
            pays[i] = vec2<u32>(0xffffffffu, 0xffffffffu);
        }
    }
    workgroupBarrier();
    for (var size = 2u; size <= CHUNK; size <<= 1u) {
        for (var stride = size >> 1u; stride > 0u; stride >>= 1u) {
            // Uniform control flow: every thread runs every step; inactive sizes are skipped
            // by all threads alike.
            if (size <= padded) {
                for (var i = tid; i < padded; i += THREADS) {
                    let j = i ^ stride;
                    if (j > i) {
                        let ascending = (i & size) == 0u;
                        let ki = keys[i];
                        let kj = keys[j];
                        let pi = pays[i];
                        let pj = pays[j];
                        let swap = select(before(ki, pi, kj, pj), before(kj, pj, ki, pi), ascending);
                        if (swap) {
                            keys[i] = kj;
                            keys[j] = ki;
                            pays[i] = pj;
                            pays[j] = pi;
                        }
                    }
                }
            }
            workgroupBarrier();
        }
    }
    for (var i = tid; i < chunk.keep; i += THREADS) {
        out_score[chunk.dst + i] = keys[i];
        out_payload[chunk.dst + i] = pays[i];
    }
}
