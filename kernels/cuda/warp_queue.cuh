// The warp queue of the WarpSelect-style selection (kernels/cuda/topk.cu's header comment
// describes the algorithm), shared by the top-k kernels (topk.cu) and the scans that select
// as they score (scan8.cu `scan8_select`, scan4.cu `scan4_select`). Twin of
// shaders/wgsl/warp_queue.wgsl.
//
// A `WarpQueue` is one warp's: its sorted queue of K entries and its staging area of 32·T in
// shared memory (laid out as queue scores [K], staging scores [32·T], queue payloads [K],
// staging payloads [32·T]: (K + 32·T) × 12 bytes; entry i of each at `sw4(i)` / `sw8(i)`,
// below), each lane's thread queue and the threshold in registers. Every lane of the warp calls `offer` together, one candidate (or
// none) each; `finish` flushes what the thread queues hold. Entries order by (score,
// payload): a score's IEEE total order (−0 before +0), then the payload's high word, then its
// low word — the CPU reference's tie rule.

#pragma once

#define LANES 32
#define TQ_MAX 8
#define FULL_MASK 0xffffffffu

struct Chunk {
    unsigned int src;
    unsigned int len;
    unsigned int dst;
    unsigned int keep;
};

// A score's place in IEEE total order (the CPU reference's `order_key`: −0 before +0).
__device__ __forceinline__ unsigned int order_key(float f) {
    const unsigned int b = __float_as_uint(f);
    return b ^ ((unsigned int)((int)b >> 31) | 0x80000000u);
}

__device__ __forceinline__ bool before(float ka, uint2 pa, float kb, uint2 pb) {
    const unsigned int a = order_key(ka), b = order_key(kb);
    return a < b || (a == b && (pa.x < pb.x || (pa.x == pb.x && pa.y < pb.y)));
}

// Where entry i of a queue or staging area lives: scores (4 bytes) permuted within blocks of
// 64, payloads (8 bytes, served a half-warp at a time) within blocks of 32. A warp's
// compare-exchange step reads 32 first (or second) elements of a 64-element window; stored
// in order, elements e and e + 32 share a bank and every step below stride 32 would be a
// 2-way conflict (4-way for payloads). Flipping the low bits of the upper half (e ^ 31 when
// bit 5 is set; e ^ 15 when bit 4 is, for payloads) sends every step's elements to distinct
// banks, and runs of 32 consecutive entries (the merges, the output) stay conflict-free.
__device__ __forceinline__ unsigned int sw4(unsigned int i) { return i ^ (((i >> 5) & 1u) * 31u); }
__device__ __forceinline__ unsigned int sw8(unsigned int i) { return i ^ (((i >> 4) & 1u) * 15u); }

// First index of compare-exchange pair `p` in a bitonic step of half-width `stride`.
__device__ __forceinline__ unsigned int pair_first(unsigned int p, unsigned int stride) {
    return 2u * stride * (p / stride) + p % stride;
}

// Sorts the first `n` staging entries ascending (bitonic sort; n a power of two).
__device__ void sort_stage(unsigned int lane, unsigned int n, float* ss, uint2* sp) {
    for (unsigned int size = 2; size <= n; size <<= 1) {
        for (unsigned int stride = size >> 1; stride > 0; stride >>= 1) {
            for (unsigned int p = lane; p < n / 2; p += LANES) {
                const unsigned int i = pair_first(p, stride);
                const unsigned int j = i + stride;
                const bool ascending = (i & size) == 0;
                const float ki = ss[sw4(i)], kj = ss[sw4(j)];
                const uint2 pi = sp[sw8(i)], pj = sp[sw8(j)];
                const bool swap = ascending ? before(kj, pj, ki, pi) : before(ki, pi, kj, pj);
                if (swap) {
                    ss[sw4(i)] = kj; ss[sw4(j)] = ki;
                    sp[sw8(i)] = pj; sp[sw8(j)] = pi;
                }
            }
            __syncwarp();
        }
    }
}

// Merges the sorted staging area (n entries) into the sorted queue (k ≥ n entries), keeping
// the best k, sorted.
__device__ void merge_stage(unsigned int lane, unsigned int k, unsigned int n,
                            float* qs, uint2* qp, const float* ss, const uint2* sp) {
    // The queue's best k − n entries stay; its last n against the staging area reversed:
    // the element-wise minimum is the best n of the two, and the whole queue is bitonic.
    for (unsigned int p = lane; p < n; p += LANES) {
        const unsigned int i = k - n + p;
        const unsigned int b = n - 1 - p;
        const float sb = ss[sw4(b)];
        const uint2 pb = sp[sw8(b)];
        if (before(sb, pb, qs[sw4(i)], qp[sw8(i)])) {
            qs[sw4(i)] = sb;
            qp[sw8(i)] = pb;
        }
    }
    __syncwarp();
    for (unsigned int stride = k >> 1; stride > 0; stride >>= 1) {
        for (unsigned int p = lane; p < k / 2; p += LANES) {
            const unsigned int i = pair_first(p, stride);
            const unsigned int j = i + stride;
            const float ki = qs[sw4(i)], kj = qs[sw4(j)];
            const uint2 pi = qp[sw8(i)], pj = qp[sw8(j)];
            if (before(kj, pj, ki, pi)) {
                qs[sw4(i)] = kj; qs[sw4(j)] = ki;
                qp[sw8(i)] = pj; qp[sw8(j)] = pi;
            }
        }
        __syncwarp();
    }
}

struct WarpQueue {
    float* qs;
    uint2* qp;
    float* ss;
    uint2* sp;
    unsigned int k;
    unsigned int t;
    float thr_score;
    uint2 thr_payload;
    float tq_score[TQ_MAX];
    uint2 tq_payload[TQ_MAX];
    unsigned int count;
};

// An empty queue of `k` entries (padding: +inf, payload all ones) with thread queues of `t`,
// in the shared memory at `smem` ((k + 32·t) × 12 bytes).
__device__ __forceinline__ void wq_init(WarpQueue& w, float* smem, unsigned int lane,
                                        unsigned int k, unsigned int t) {
    const unsigned int n_stage = t * LANES;
    w.qs = smem;
    w.ss = w.qs + k;
    w.qp = reinterpret_cast<uint2*>(w.ss + n_stage);
    w.sp = w.qp + k;
    w.k = k;
    w.t = t;
    const float inf = __int_as_float(0x7f800000);
    const uint2 none = make_uint2(0xffffffffu, 0xffffffffu);
    for (unsigned int i = lane; i < k; i += LANES) {
        w.qs[i] = inf;
        w.qp[i] = none;
    }
    w.thr_score = inf;
    w.thr_payload = none;
    w.count = 0;
    __syncwarp();
}

// Takes up a sorted queue of `k` entries kept in shared memory between passes (`qs` / `qp`,
// e.g. one of the coarse selection's per-query queues) with the warp's staging area of 32·t
// (`ss` / `sp`); the thread queues start empty. The queue's entries must be visible to the
// warp (a barrier since they were written).
__device__ __forceinline__ void wq_attach(WarpQueue& w, float* qs, uint2* qp, float* ss,
                                          uint2* sp, unsigned int k, unsigned int t) {
    w.qs = qs;
    w.qp = qp;
    w.ss = ss;
    w.sp = sp;
    w.k = k;
    w.t = t;
    w.thr_score = qs[sw4(k - 1)];
    w.thr_payload = qp[sw8(k - 1)];
    w.count = 0;
}

// Moves every lane's thread queue into the staging area, sorts it and merges it into the
// queue; reloads the threshold.
__device__ __forceinline__ void wq_flush(WarpQueue& w, unsigned int lane) {
    const float inf = __int_as_float(0x7f800000);
    const uint2 none = make_uint2(0xffffffffu, 0xffffffffu);
#pragma unroll
    for (unsigned int j = 0; j < TQ_MAX; ++j) {
        if (j < w.t) {
            const unsigned int at = lane * w.t + j;
            w.ss[sw4(at)] = j < w.count ? w.tq_score[j] : inf;
            w.sp[sw8(at)] = j < w.count ? w.tq_payload[j] : none;
        }
    }
    w.count = 0;
    __syncwarp();
    sort_stage(lane, w.t * LANES, w.ss, w.sp);
    merge_stage(lane, w.k, w.t * LANES, w.qs, w.qp, w.ss, w.sp);
    w.thr_score = w.qs[sw4(w.k - 1)];
    w.thr_payload = w.qp[sw8(w.k - 1)];
}

// One step of the warp: each lane offers (s, p) when `has`; kept when it beats the threshold;
// a flush when any lane's thread queue is full. Every lane of the warp calls it together.
__device__ __forceinline__ void wq_offer(WarpQueue& w, unsigned int lane, bool has, float s,
                                         uint2 p) {
    if (has && before(s, p, w.thr_score, w.thr_payload)) {
#pragma unroll
        for (unsigned int j = 0; j < TQ_MAX; ++j) {
            if (j == w.count) {
                w.tq_score[j] = s;
                w.tq_payload[j] = p;
            }
        }
        w.count += 1;
    }
    if (__any_sync(FULL_MASK, w.count == w.t)) wq_flush(w, lane);
}

// Merges what the thread queues still hold; the queue is then the best k offered, sorted.
__device__ __forceinline__ void wq_finish(WarpQueue& w, unsigned int lane) {
    if (__any_sync(FULL_MASK, w.count > 0)) wq_flush(w, lane);
    __syncwarp();
}

// Merges the block's warp queues (warp w's at `queues` + w · (k + 32·t) · 3 words) into warp
// 0's, pairwise (log2(warps) bitonic merges deep), and warp 0 writes the best `keep` at `dst`,
// sorted. Every thread of the block calls it, after `wq_finish`.
__device__ __forceinline__ void wq_merge_block(WarpQueue& wq, float* queues, unsigned int keep,
                                               float* __restrict__ out_score,
                                               uint2* __restrict__ out_payload, size_t dst) {
    const unsigned int warp = threadIdx.x / LANES, lane = threadIdx.x % LANES;
    const unsigned int nwarps = blockDim.x / LANES;
    const unsigned int queue_words = (wq.k + LANES * wq.t) * 3u;
    for (unsigned int step = 1; step < nwarps; step <<= 1) {
        __syncthreads();
        if (warp % (2u * step) == 0 && warp + step < nwarps) {
            const float* os = queues + (warp + step) * queue_words;
            const uint2* op = reinterpret_cast<const uint2*>(os + wq.k + LANES * wq.t);
            merge_stage(lane, wq.k, wq.k, wq.qs, wq.qp, os, op);
        }
    }
    if (warp == 0) {
        __syncwarp();
        for (unsigned int i = lane; i < keep; i += LANES) {
            out_score[dst + i] = wq.qs[sw4(i)];
            out_payload[dst + i] = wq.qp[sw8(i)];
        }
    }
}
