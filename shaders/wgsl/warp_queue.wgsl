// The warp queue of the WarpSelect-style selection (topk.wgsl's header describes the
// algorithm), shared by the top-k shader (topk.wgsl) and the 8-bit scan's fused entry
// (scan8.wgsl `fused`): the host prepends this file to theirs. Twin of
// kernels/cuda/warp_queue.cuh.
//
// One queue per workgroup of 32 invocations: the sorted queue of K entries and the staging
// area of 32·T in workgroup memory ((QCAP + STAGE) × 12 bytes; the host sizes QCAP and STAGE
// by replacing their lines; entry i at `sw4(i)` / `sw8(i)`), each invocation's thread queue
// and the threshold in private memory. Every invocation calls `wq_offer` together (in uniform control flow), one
// candidate (or none) each; `wq_finish` flushes what the thread queues hold. Entries order by
// (score, payload): a score's IEEE total order (−0 before +0), then the payload's high word,
// then its low word — the CPU reference's tie rule.

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

// Where entry i of the queue or the staging area lives: scores permuted within blocks of 64,
// payloads (8 bytes, served a half-warp at a time) within blocks of 32, so that the elements
// a compare-exchange step reads lie in distinct banks (warp_queue.cuh's `sw4` / `sw8`).
fn sw4(i: u32) -> u32 {
    return i ^ (((i >> 5u) & 1u) * 31u);
}

fn sw8(i: u32) -> u32 {
    return i ^ (((i >> 4u) & 1u) * 15u);
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
                let ki = stage_score[sw4(i)];
                let kj = stage_score[sw4(j)];
                let pi = stage_payload[sw8(i)];
                let pj = stage_payload[sw8(j)];
                let swap = select(before(ki, pi, kj, pj), before(kj, pj, ki, pi), ascending);
                if (swap) {
                    stage_score[sw4(i)] = kj;
                    stage_score[sw4(j)] = ki;
                    stage_payload[sw8(i)] = pj;
                    stage_payload[sw8(j)] = pi;
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
        let sb = stage_score[sw4(b)];
        let pb = stage_payload[sw8(b)];
        if (before(sb, pb, queue_score[sw4(i)], queue_payload[sw8(i)])) {
            queue_score[sw4(i)] = sb;
            queue_payload[sw8(i)] = pb;
        }
    }
    workgroupBarrier();
    for (var stride = k >> 1u; stride > 0u; stride >>= 1u) {
        for (var p = lane; p < k / 2u; p += LANES) {
            let i = pair_first(p, stride);
            let j = i + stride;
            let ki = queue_score[sw4(i)];
            let kj = queue_score[sw4(j)];
            let pi = queue_payload[sw8(i)];
            let pj = queue_payload[sw8(j)];
            if (before(kj, pj, ki, pi)) {
                queue_score[sw4(i)] = kj;
                queue_score[sw4(j)] = ki;
                queue_payload[sw8(i)] = pj;
                queue_payload[sw8(j)] = pi;
            }
        }
        workgroupBarrier();
    }
}

var<private> thr_score: f32;
var<private> thr_payload: vec2<u32>;
var<private> tq_score: array<f32, TQ_MAX>;
var<private> tq_payload: array<vec2<u32>, TQ_MAX>;
var<private> tq_count: u32;

// Empties the queue (K entries of padding: +inf, payload all ones) and the thread queues.
fn wq_init(lane: u32, k: u32) {
    let inf = bitcast<f32>(INF_BITS);
    let none = vec2<u32>(0xffffffffu, 0xffffffffu);
    for (var i = lane; i < k; i += LANES) {
        queue_score[sw4(i)] = inf;
        queue_payload[sw8(i)] = none;
    }
    if (lane == 0u) {
        vote[0] = 0u;
        vote[1] = 0u;
        vote[2] = 0u;
    }
    thr_score = inf;
    thr_payload = none;
    tq_count = 0u;
    workgroupBarrier();
}

// Moves every thread queue into the staging area, sorts it, merges it into the queue and
// reloads the threshold.
fn wq_flush(lane: u32, k: u32, t: u32) {
    let inf = bitcast<f32>(INF_BITS);
    let none = vec2<u32>(0xffffffffu, 0xffffffffu);
    for (var j = 0u; j < t; j += 1u) {
        let at = lane * t + j;
        if (j < tq_count) {
            stage_score[sw4(at)] = tq_score[j];
            stage_payload[sw8(at)] = tq_payload[j];
        } else {
            stage_score[sw4(at)] = inf;
            stage_payload[sw8(at)] = none;
        }
    }
    tq_count = 0u;
    workgroupBarrier();
    sort_stage(lane, t * LANES);
    merge_stage(lane, k, t * LANES);
    thr_score = queue_score[sw4(k - 1u)];
    thr_payload = queue_payload[sw8(k - 1u)];
}

// One step, the caller's `step`-th (counted from 0 since `wq_init`, the same in every
// invocation): each invocation offers (s, p) when `has`; kept when it beats the threshold;
// a flush when any thread queue is full (or, with `last`, holds anything). The vote uses
// three slots so that a slot is cleared two steps before it is used again.
fn wq_step(lane: u32, has: bool, s: f32, p: vec2<u32>, k: u32, t: u32, step: u32, last: bool) {
    if (has && before(s, p, thr_score, thr_payload)) {
        tq_score[tq_count] = s;
        tq_payload[tq_count] = p;
        tq_count += 1u;
    }
    let slot = step % 3u;
    if (tq_count == t || (last && tq_count > 0u)) {
        vote[slot] = 1u;
    }
    if (lane == 0u) {
        vote[(step + 1u) % 3u] = 0u;
    }
    if (workgroupUniformLoad(&vote[slot]) != 0u) {
        wq_flush(lane, k, t);
    }
}

fn wq_offer(lane: u32, has: bool, s: f32, p: vec2<u32>, k: u32, t: u32, step: u32) {
    wq_step(lane, has, s, p, k, t, step, false);
}

// Merges what the thread queues still hold (`step`: the number of offers made); the queue is
// then the best k offered, sorted.
fn wq_finish(lane: u32, k: u32, t: u32, step: u32) {
    wq_step(lane, false, 0.0, vec2<u32>(0u, 0u), k, t, step, true);
    workgroupBarrier();
}

// Writes the queue's best `keep` at `dst` of `out_score` / `out_payload` (every file this
// one is prepended to declares them), after `wq_finish`.
fn wq_write(lane: u32, keep: u32, dst: u32) {
    for (var i = lane; i < keep; i += LANES) {
        out_score[dst + i] = queue_score[sw4(i)];
        out_payload[dst + i] = queue_payload[sw8(i)];
    }
}

// A fused scan's part (scan8.wgsl and scan4.wgsl `fused`) and its parameters, from `f`
// ([0] m, l2, queries, nprobe; [1] group, by_residual, keep, K; [2] T): workgroup `w` of a
// dispatch over queries × parts takes query `q`'s probes `first` … `last` − 1; `live` is
// false past the last part.
struct FusedPart {
    q: u32,
    first: u32,
    last: u32,
    live: bool,
    m: u32,
    l2: bool,
    nprobe: u32,
    by_residual: bool,
    keep: u32,
    k: u32,
    t: u32,
}

fn fused_part(f: array<vec4<u32>, 3>, w: u32) -> FusedPart {
    let nprobe = f[0].w;
    let group = f[1].x;
    let parts = (nprobe + group - 1u) / group;
    let first = (w % parts) * group;
    return FusedPart(
        w / parts,
        first,
        min(first + group, nprobe),
        w < f[0].z * parts,
        f[0].x,
        f[0].y != 0u,
        nprobe,
        f[1].y != 0u,
        f[1].z,
        f[1].w,
        f[2].x,
    );
}
