// Per-row top-k by (score, payload): the selection of the coarse stage (top-nprobe), of the
// scan (each query's best candidates) and of refine (each query's k neighbours).
//
// A WarpSelect-style selection (Johnson, Douze, Jégou, "Billion-scale similarity search with
// GPUs", 2017), one 32-lane "warp" per workgroup, twin of `warp_select` in
// kernels/cuda/topk.cu, stage for stage:
//
//   * the warp queue holds the best K entries seen so far, sorted ascending by (score,
//     payload) (payload high word, then low: the CPU reference's tie rule), in workgroup
//     memory; its last entry is the threshold every lane keeps in a register;
//   * the warp reads its chunk 32 entries at a time (coalesced); a lane keeps an entry that
//     beats the threshold in its own thread queue of T entries (private memory);
//   * when any lane's thread queue is full (a vote: `__any_sync` on CUDA, a workgroup-memory
//     flag read by `workgroupUniformLoad` here), the warp writes the 32·T thread-queue entries
//     to a staging area, sorts them with a bitonic network, merges them into the warp queue
//     (the staging area reversed against the queue's tail, element-wise minimum, then one
//     bitonic merge of the whole queue) and reloads the threshold;
//   * after the chunk, a last merge; the first `keep` queue entries are the chunk's output.
//
// After warm-up few entries beat the threshold, so most of the chunk costs one read and one
// comparison per entry. K is a power of two from 64 to QCAP (host: the smallest one ≥ keep),
// T = min(8, K / 32) so that the staging area (32·T ≤ K) fits the queue's tail. Workgroup
// memory: (QCAP + STAGE) × 12 bytes: 15 KiB for QCAP = 1,024 (fits WebGPU's 16 KiB default);
// the host also builds a 3 KiB variant (QCAP = STAGE = 128) for the common small selections
// and a 27 KiB one (QCAP = 2,048) where the adapter allows it, replacing those two lines.
// The host cuts rows into chunks and chains rounds until each row is one chunk.
//
// CUDA exchanges through shared memory too, with `__syncwarp` where this has
// `workgroupBarrier`; FAISS keeps the queue in registers and exchanges by shuffles, which
// needs one compiled kernel per K.

struct Chunk {
    src: u32,   // first entry of the chunk in the input
    len: u32,   // entries
    dst: u32,   // first entry of its output
    keep: u32,  // entries written: min(keep, len)
}

@group(0) @binding(0) var<storage, read> in_score: array<f32>;
@group(0) @binding(1) var<storage, read> in_payload: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> chunks: array<Chunk>;
@group(0) @binding(3) var<storage, read_write> out_score: array<f32>;
@group(0) @binding(4) var<storage, read_write> out_payload: array<vec2<u32>>;
// x: chunks, y: queue length K (power of two, 64 ≤ K ≤ QCAP), z: thread-queue length T.
@group(0) @binding(5) var<uniform> params: vec4<u32>;

// (warp_queue.wgsl, prepended by the host, holds the queue: its constants, workgroup memory
// and functions.)

var<workgroup> chunk_len: u32;

const PREFETCH: u32 = 4u;

// Selects the best `keep` of one chunk (`n` entries from `src`) into `dst`: the body of both
// entry points (twin of `select_chunk` in topk.cu).
// With `implicit`, entry i's payload is (0, first_pos + i) and `in_payload` is not read.
fn select_chunk(
    lane: u32, src: u32, n: u32, dst: u32, keep: u32, k: u32, t: u32, implicit: bool,
    first_pos: u32,
) {
    wq_init(lane, k);
    if (lane == 0u) {
        chunk_len = n;
    }
    let len = workgroupUniformLoad(&chunk_len);
    var step = 0u;
    // PREFETCH steps' loads before their offers (each offer waits on a vote); the offers are
    // the same, in the same order (twin of topk.cu).
    for (var base = 0u; base < len; base += PREFETCH * LANES) {
        var s: array<f32, PREFETCH>;
        var p: array<vec2<u32>, PREFETCH>;
        for (var j = 0u; j < PREFETCH; j++) {
            let i = base + j * LANES + lane;
            s[j] = 0.0;
            p[j] = vec2<u32>(0u, 0u);
            if (i < len) {
                s[j] = in_score[src + i];
                if (implicit) {
                    p[j] = vec2<u32>(0u, first_pos + i);
                } else {
                    p[j] = in_payload[src + i];
                }
            }
        }
        for (var j = 0u; j < PREFETCH; j++) {
            if (base + j * LANES < len) {
                wq_offer(lane, base + j * LANES + lane < len, s[j], p[j], k, t, step);
                step += 1u;
            }
        }
    }
    wq_finish(lane, k, t, step);
    wq_write(lane, keep, dst);
}

// One chunk per workgroup, the chunks listed by the host.
@compute @workgroup_size(32)
fn main(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let c = wid.x + wid.y * 65535u;
    if (c >= params.x) {
        return;
    }
    let chunk = chunks[c];
    select_chunk(lane, chunk.src, chunk.len, chunk.dst, chunk.keep, params.y, params.z, false, 0u);
}

// The bindings of `strided` in place of `chunks` and `params`.
@group(0) @binding(6) var<storage, read> row_len: array<u32>;
// [0]: rows, stride, parts, chunk; [1]: keep, use_len, K, T; [2]: implicit payloads.
@group(0) @binding(7) var<uniform> sparams: array<vec4<u32>, 3>;

// The same selection over rows `stride` apart, each cut into `parts` chunks of `chunk`
// entries derived from the workgroup's number (no list from the host: the device-resident
// search's rounds); with `use_len`, row r holds only its first `row_len[r]` entries. Chunk
// (r, p) writes its best `keep` at (r · parts + p) · keep. With `implicit` (the coarse
// scores, written without payloads) an entry's payload is (0, its place in its row). Twin of
// `select_strided` in topk.cu.
@compute @workgroup_size(32)
fn strided(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let c = wid.x + wid.y * 65535u;
    let rows = sparams[0].x;
    let stride = sparams[0].y;
    let parts = sparams[0].z;
    let chunk = sparams[0].w;
    let keep = sparams[1].x;
    if (c >= rows * parts) {
        return;
    }
    let row = c / parts;
    let part = c % parts;
    var n = stride;
    if (sparams[1].y != 0u) {
        n = min(row_len[row], stride);
    }
    let first = part * chunk;
    var len = 0u;
    if (first < n) {
        len = min(chunk, n - first);
    }
    select_chunk(
        lane, row * stride + first, len, c * keep, keep, sparams[1].z, sparams[1].w,
        sparams[2].x != 0u, first,
    );
}
