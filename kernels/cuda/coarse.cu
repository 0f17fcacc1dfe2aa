// Coarse distances: scores[q][c] for a batch of queries against every coarse centroid.
// Twin of shaders/wgsl/coarse.wgsl, stage for stage.
//
// A register-tiled matrix product. One 16 × 16 block computes a 128-query × 128-centroid
// tile, each thread an 8 × 8 sub-tile: queries ty + 16i and centroids tx + 16j (i, j < 8), so
// that the 16 threads of a half-warp read 16 consecutive shared-memory words (no bank
// conflict) and the two half-warps a broadcast query word. Both operands are staged through
// shared memory 8 dimensions at a time, dimension-major with row stride 132 (≡ 4 mod 32: the
// staging stores of a warp, 8 dimensions × 4 rows, land in 32 distinct banks); per dimension
// a thread reads 8 + 8 words and does 64 multiply-adds for the dot products (+ 8 for the
// queries' norms): 0.22 shared loads per multiply-add (0.4 with the 4 × 4 tile this replaced,
// 2 with one output a thread). Each dot product adds its dimensions in order.
// Inner product: -<q, c>; L2: max(|q|² + |c|² − 2<q, c>, 0), the CPU reference's expression.
// The multiply-adds are fused (`__fmaf_rn`, one rounding each: FFMA on the GPU, std::fma in
// the emulator); nothing else is (the kernels compile with --fmad=false).
// Each score goes out with its payload (0, centroid) for the top-k kernel, or (with
// `with_payloads` 0: the device-resident search) alone, 4 bytes a list, the selection taking
// an entry's place in its row as its payload.
//
// `coarse_select` (the device-resident search, nprobe ≤ 64) writes no score rows at all: a
// block takes a span of centroids, one 128 × 128 tile after another, and keeps each of its
// 128 queries' best `keep` lists of the span in a warp queue (`warp_queue.cuh`) held in
// shared memory between tiles; each tile's scores pass through shared memory half a tile (64
// queries) at a time, a warp offering 8 queries' rows. The block writes each query's best
// `keep` of its span, sorted by (score, list); one top-k round merges a query's spans. Same
// products, same scores as `coarse_distances`, so the same probes.

#include "warp_queue.cuh"

#define TILE 128
#define STEP 8
#define STRIDE 132
#define SUB 8
// Half a tile's scores staged for the selection: 64 queries × 128 centroids, row stride 144
// (≡ 16 mod 32: a warp's stores, two query rows × 16 threads, land in 32 distinct banks).
#define HALF 64
#define SCORE_STRIDE 144
#define SELECT_WARPS 8

// The products of queries q0.. × centroids c0.. (a 128 × 128 tile): dot[i][j] for query
// q0 + ty + 16i and centroid c0 + tx + 16j, and the queries' squared norms. Every thread of the
// 16 × 16 block calls it (it stages operands through `q_tile` / `c_tile` between barriers).
__device__ __forceinline__ void tile_product(
    const float* __restrict__ queries,
    const float* __restrict__ centroids,
    unsigned int nq,
    unsigned int nlist,
    unsigned int dim,
    unsigned int q0,
    unsigned int c0,
    float* q_tile,
    float* c_tile,
    float (&dot)[SUB][SUB],
    float (&q_norm)[SUB])
{
    const unsigned int tx = threadIdx.x, ty = threadIdx.y;
    const unsigned int tid = ty * 16 + tx;
#pragma unroll
    for (int i = 0; i < SUB; i++) {
        q_norm[i] = 0.0f;
#pragma unroll
        for (int j = 0; j < SUB; j++) dot[i][j] = 0.0f;
    }
    for (unsigned int d0 = 0; d0 < dim; d0 += STEP) {
        // Stage 128 rows × 8 dimensions of each operand: thread tid loads row tid / 8 + 32r,
        // dimension tid % 8 (8 threads read one row's 32 contiguous bytes).
        const unsigned int d = d0 + (tid & 7u);
#pragma unroll
        for (unsigned int r = 0; r < 4; r++) {
            const unsigned int row = (tid >> 3) + 32u * r;
            const unsigned int q = q0 + row, c = c0 + row;
            q_tile[(tid & 7u) * STRIDE + row] = (q < nq && d < dim) ? queries[(size_t)q * dim + d] : 0.0f;
            c_tile[(tid & 7u) * STRIDE + row] = (c < nlist && d < dim) ? centroids[(size_t)c * dim + d] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (unsigned int t = 0; t < STEP; t++) {
            float a[SUB], b[SUB];
#pragma unroll
            for (int i = 0; i < SUB; i++) a[i] = q_tile[t * STRIDE + ty + 16 * i];
#pragma unroll
            for (int j = 0; j < SUB; j++) b[j] = c_tile[t * STRIDE + tx + 16 * j];
#pragma unroll
            for (int i = 0; i < SUB; i++) {
                q_norm[i] = __fmaf_rn(a[i], a[i], q_norm[i]);
#pragma unroll
                for (int j = 0; j < SUB; j++) dot[i][j] = __fmaf_rn(a[i], b[j], dot[i][j]);
            }
        }
        __syncthreads();
    }
}

// A list's coarse score from its product: inner product -<q, c>; L2 max(|q|² + |c|² − 2<q, c>, 0).
__device__ __forceinline__ float coarse_score(float dot, float q_norm, float c_norm, unsigned int l2) {
    return l2 ? fmaxf(q_norm + c_norm - 2.0f * dot, 0.0f) : -dot;
}

extern "C" __global__ void coarse_distances(
    const float* __restrict__ queries,
    const float* __restrict__ centroids,
    const float* __restrict__ centroid_norms,
    float* __restrict__ scores,
    uint2* __restrict__ payloads,
    unsigned int nq,
    unsigned int nlist,
    unsigned int dim,
    unsigned int l2,
    unsigned int with_payloads)
{
    __shared__ float q_tile[STEP * STRIDE];
    __shared__ float c_tile[STEP * STRIDE];
    const unsigned int tx = threadIdx.x, ty = threadIdx.y;
    const unsigned int q0 = blockIdx.y * TILE, c0 = blockIdx.x * TILE;
    float dot[SUB][SUB];
    float q_norm[SUB];
    tile_product(queries, centroids, nq, nlist, dim, q0, c0, q_tile, c_tile, dot, q_norm);
#pragma unroll
    for (int i = 0; i < SUB; i++) {
        const unsigned int q = q0 + ty + 16 * i;
#pragma unroll
        for (int j = 0; j < SUB; j++) {
            const unsigned int c = c0 + tx + 16 * j;
            if (q < nq && c < nlist) {
                scores[(size_t)q * nlist + c] = coarse_score(dot[i][j], q_norm[i], centroid_norms[c], l2);
                if (with_payloads) payloads[(size_t)q * nlist + c] = make_uint2(0u, c);
            }
        }
    }
}

// The coarse product with the probe selection in it (see the header). Block (16, 16); grid
// (parts, query tiles): block (p, y) takes queries 128y.. and centroids [p · span, (p + 1) ·
// span) ∩ [0, nlist), `span` a multiple of 128, and writes each query's best `keep` of them,
// sorted, at (q · parts + p) · keep (padding — +inf, payload all ones — where the span has
// fewer). Dynamic shared memory: the half tile's scores (64 × 144 words), 128 queues of `k`
// entries (scores, then payloads) and 8 warps' staging areas of 32·t (scores, then payloads):
// 36,864 + 128 · k · 12 + 8 · 32 · t · 12 bytes.
// Two blocks an SM (128 registers a thread): what its shared memory allows at nprobe ≤ 32.
extern "C" __global__ void __launch_bounds__(256, 2) coarse_select(
    const float* __restrict__ queries,
    const float* __restrict__ centroids,
    const float* __restrict__ centroid_norms,
    float* __restrict__ out_score,
    uint2* __restrict__ out_payload,
    unsigned int nq,
    unsigned int nlist,
    unsigned int dim,
    unsigned int l2,
    unsigned int span,
    unsigned int keep,
    unsigned int k,
    unsigned int t)
{
    extern __shared__ float smem[];
    __shared__ float q_tile[STEP * STRIDE];
    __shared__ float c_tile[STEP * STRIDE];
    const unsigned int tx = threadIdx.x, ty = threadIdx.y;
    const unsigned int tid = ty * 16 + tx, warp = tid / LANES, lane = tid % LANES;
    const unsigned int parts = gridDim.x, part = blockIdx.x;
    const unsigned int q0 = blockIdx.y * TILE;
    const unsigned int c_begin = part * span;
    const unsigned int c_end = min(nlist, c_begin + span);
    float* half_scores = smem;
    float* queue_s = half_scores + HALF * SCORE_STRIDE;
    uint2* queue_p = reinterpret_cast<uint2*>(queue_s + TILE * k);
    float* stage_s = reinterpret_cast<float*>(queue_p + TILE * k);
    uint2* stage_p = reinterpret_cast<uint2*>(stage_s + SELECT_WARPS * LANES * t);
    float* ss = stage_s + warp * LANES * t;
    uint2* sp = stage_p + warp * LANES * t;
    const float inf = __int_as_float(0x7f800000);
    for (unsigned int i = tid; i < TILE * k; i += TILE * 2) {
        queue_s[i] = inf;
        queue_p[i] = make_uint2(0xffffffffu, 0xffffffffu);
    }
    for (unsigned int c0 = c_begin; c0 < c_end; c0 += TILE) {
        float dot[SUB][SUB];
        float q_norm[SUB];
        tile_product(queries, centroids, nq, nlist, dim, q0, c0, q_tile, c_tile, dot, q_norm);
#pragma unroll
        for (unsigned int h = 0; h < 2; h++) {
            // The previous half's offers are done (and, first, the queues are cleared).
            __syncthreads();
#pragma unroll
            for (unsigned int i = 0; i < SUB / 2; i++) {
#pragma unroll
                for (unsigned int j = 0; j < SUB; j++) {
                    const unsigned int c = c0 + tx + 16 * j;
                    const float cn = c < c_end ? centroid_norms[c] : 0.0f;
                    half_scores[(ty + 16 * i) * SCORE_STRIDE + tx + 16 * j] =
                        coarse_score(dot[4 * h + i][j], q_norm[4 * h + i], cn, l2);
                }
            }
            __syncthreads();
            // Warp w offers rows 8w..8w + 8 of the half, one query after another, a step
            // of 32 lists at a time; lists past the span are not offered.
            for (unsigned int r = warp * 8; r < warp * 8 + 8; r++) {
                const unsigned int row = HALF * h + r;
                if (q0 + row >= nq) break;
                WarpQueue w;
                wq_attach(w, queue_s + row * k, queue_p + row * k, ss, sp, k, t);
                // One offer in the code (not unrolled): the registers stay the product's.
#pragma unroll 1
                for (unsigned int step = 0; step < TILE / LANES; step++) {
                    const unsigned int col = step * LANES + lane;
                    const unsigned int c = c0 + col;
                    wq_offer(w, lane, c < c_end, half_scores[r * SCORE_STRIDE + col], make_uint2(0u, c));
                }
                wq_finish(w, lane);
            }
        }
    }
    // Each warp writes the queues it kept (no other warp touched them).
    for (unsigned int h = 0; h < 2; h++) {
        for (unsigned int r = warp * 8; r < warp * 8 + 8; r++) {
            const unsigned int row = HALF * h + r;
            const unsigned int q = q0 + row;
            if (q >= nq) break;
            const size_t dst = ((size_t)q * parts + part) * keep;
            for (unsigned int i = lane; i < keep; i += LANES) {
                out_score[dst + i] = queue_s[row * k + sw4(i)];
                out_payload[dst + i] = queue_p[row * k + sw8(i)];
            }
        }
    }
}
