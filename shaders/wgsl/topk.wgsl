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

const LANES: u32 = 32u;
const QCAP: u32 = 1024u;
const TQ_MAX: u32 = 8u;
const STAGE: u32 = 256u; // LANES × TQ_MAX

const INF_BITS: u32 = 0x7f800000u;

var<workgroup> queue_score: array<f32, QCAP>;
var<workgroup> queue_payload: array<vec2<u32>, QCAP>;
var<workgroup> stage_score: array<f32, STAGE>;
var<workgroup> stage_payload: array<vec2<u32>, STAGE>;
// The "any thread queue full" vote, three slots so that a slot is cleared two steps before
// it is used again (no barrier is needed between clearing and voting).
var<workgroup> vote: array<u32, 3>;
var<workgroup> chunk_len: u32;

// A score's place in IEEE total order (the CPU reference's `order_key`: −0 before +0).
fn order_key(f: f32) -> u32 {
    let b = bitcast<u32>(f);
    return b ^ select(0x80000000u, 0xffffffffu, (b >> 31u) == 1u);
}

fn before(ka: f32, pa: vec2<u32>, kb: f32, pb: vec2<u32>) -> bool {
    let a = order_key(ka);
    let b = order_key(kb);
    return a < b || (a == b && (pa.x < pb.x || (pa.x == pb.x && pa.y < pb.y)));
}

// First index of compare-exchange pair `p` in a bitonic step of half-width `stride`.
fn pair_first(p: u32, stride: u32) -> u32 {
    return 2u * stride * (p / stride) + p % stride;
}

// Sorts the first `n` staging entries ascending (bitonic sort; n a power of two ≤ STAGE).
fn sort_stage(lane: u32, n: u32) {
    for (var size = 2u; size <= n; size <<= 1u) {
        for (var stride = size >> 1u; stride > 0u; stride >>= 1u) {
            for (var p = lane; p < n / 2u; p += LANES) {
                let i = pair_first(p, stride);
                let j = i + stride;
                let ascending = (i & size) == 0u;
                let ki = stage_score[i];
                let kj = stage_score[j];
                let pi = stage_payload[i];
                let pj = stage_payload[j];
                let swap = select(before(ki, pi, kj, pj), before(kj, pj, ki, pi), ascending);
                if (swap) {
                    stage_score[i] = kj;
                    stage_score[j] = ki;
                    stage_payload[i] = pj;
                    stage_payload[j] = pi;
                }
            }
            workgroupBarrier();
        }
    }
}

// Merges the sorted staging area (n entries) into the sorted queue (k ≥ n entries), keeping
// the best k, sorted.
fn merge_stage(lane: u32, k: u32, n: u32) {
    // The queue's best k − n entries stay; its last n against the staging area reversed:
    // the element-wise minimum is the best n of the two, and the whole queue is bitonic.
    for (var p = lane; p < n; p += LANES) {
        let i = k - n + p;
        let b = n - 1u - p;
        let sb = stage_score[b];
        let pb = stage_payload[b];
        if (before(sb, pb, queue_score[i], queue_payload[i])) {
            queue_score[i] = sb;
            queue_payload[i] = pb;
        }
    }
    workgroupBarrier();
    for (var stride = k >> 1u; stride > 0u; stride >>= 1u) {
        for (var p = lane; p < k / 2u; p += LANES) {
            let i = pair_first(p, stride);
            let j = i + stride;
            let ki = queue_score[i];
            let kj = queue_score[j];
            let pi = queue_payload[i];
            let pj = queue_payload[j];
            if (before(kj, pj, ki, pi)) {
                queue_score[i] = kj;
                queue_score[j] = ki;
                queue_payload[i] = pj;
                queue_payload[j] = pi;
            }
        }
        workgroupBarrier();
    }
}

// Selects the best `keep` of one chunk (`n` entries from `src`) into `dst`: the body of both
// entry points (twin of `select_chunk` in topk.cu).
fn select_chunk(lane: u32, src: u32, n: u32, dst: u32, keep: u32, k: u32, t: u32) {
    let n_stage = t * LANES;
    let inf = bitcast<f32>(INF_BITS);
    let none = vec2<u32>(0xffffffffu, 0xffffffffu);
    for (var i = lane; i < k; i += LANES) {
        queue_score[i] = inf;
        queue_payload[i] = none;
    }
    if (lane == 0u) {
        chunk_len = n;
        vote[0] = 0u;
        vote[1] = 0u;
        vote[2] = 0u;
    }
    let len = workgroupUniformLoad(&chunk_len);

    var thr_score = inf;
    var thr_payload = none;
    var tq_score: array<f32, TQ_MAX>;
    var tq_payload: array<vec2<u32>, TQ_MAX>;
    var count = 0u;
    var step = 0u;
    // One extra step past the end flushes what the thread queues hold.
    for (var base = 0u; base < len + LANES; base += LANES) {
        let i = base + lane;
        if (i < len) {
            let s = in_score[src + i];
            let p = in_payload[src + i];
            if (before(s, p, thr_score, thr_payload)) {
                tq_score[count] = s;
                tq_payload[count] = p;
                count += 1u;
            }
        }
        let slot = step % 3u;
        if (count == t || (base >= len && count > 0u)) {
            vote[slot] = 1u;
        }
        if (lane == 0u) {
            vote[(step + 1u) % 3u] = 0u;
        }
        step += 1u;
        if (workgroupUniformLoad(&vote[slot]) != 0u) {
            for (var j = 0u; j < t; j += 1u) {
                let at = lane * t + j;
                if (j < count) {
                    stage_score[at] = tq_score[j];
                    stage_payload[at] = tq_payload[j];
                } else {
                    stage_score[at] = inf;
                    stage_payload[at] = none;
                }
            }
            count = 0u;
            workgroupBarrier();
            sort_stage(lane, n_stage);
            merge_stage(lane, k, n_stage);
            thr_score = queue_score[k - 1u];
            thr_payload = queue_payload[k - 1u];
        }
    }
    workgroupBarrier();
    for (var i = lane; i < keep; i += LANES) {
        out_score[dst + i] = queue_score[i];
        out_payload[dst + i] = queue_payload[i];
    }
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
    select_chunk(lane, chunk.src, chunk.len, chunk.dst, chunk.keep, params.y, params.z);
}

// The bindings of `strided` in place of `chunks` and `params`.
@group(0) @binding(6) var<storage, read> row_len: array<u32>;
// [0]: rows, stride, parts, chunk; [1]: keep, use_len, K, T.
@group(0) @binding(7) var<uniform> sparams: array<vec4<u32>, 2>;

// The same selection over rows `stride` apart, each cut into `parts` chunks of `chunk`
// entries derived from the workgroup's number (no list from the host: the device-resident
// search's rounds); with `use_len`, row r holds only its first `row_len[r]` entries. Chunk
// (r, p) writes its best `keep` at (r · parts + p) · keep. Twin of `select_strided` in topk.cu.
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
    select_chunk(lane, row * stride + first, len, c * keep, keep, sparams[1].z, sparams[1].w);
}
