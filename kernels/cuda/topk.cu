// Per-row top-k by (score, payload): the selection of the coarse stage, the scan and refine.
// Twin of shaders/wgsl/topk.wgsl, stage for stage.
//
// A WarpSelect-style selection (Johnson, Douze, Jégou, "Billion-scale similarity search with
// GPUs", 2017): one warp per block, one chunk of a row per warp.
//
//   * The warp queue holds the best K entries seen so far, sorted ascending by (score,
//     payload) (payload high word, then low: the CPU reference's tie rule), in shared memory;
//     its last entry is the threshold every lane keeps in registers.
//   * The warp reads its chunk 32 entries at a time (coalesced); a lane keeps an entry that
//     beats the threshold in its thread queue of T entries (registers: the insertion is
//     unrolled over the TQ_MAX slots, so no local memory).
//   * When any lane's thread queue is full (`__any_sync`), the warp writes the 32·T entries
//     to a staging area, sorts them with a bitonic network, merges them into the queue (the
//     staging area reversed against the queue's tail, element-wise minimum, then one bitonic
//     merge of the whole queue) and reloads the threshold. `__syncwarp` orders each step.
//   * After the chunk, a last merge; the first `keep` queue entries are the chunk's output.
//
// After warm-up few entries beat the threshold, so most of a chunk costs one coalesced read
// and one comparison per entry. K is a power of two from 64 to 2,048 (host: the smallest one
// ≥ keep), T = min(8, K / 32). Dynamic shared memory: (K + 32·T) × 12 bytes, 27 KiB at
// K = 2,048 (no opt-in beyond 48 KiB needed; 8 blocks per SM on an H100 at that size). The
// host cuts rows into chunks of max(8·K, 8,192) (a long row's first round finer, to fill the
// device: `WarpSelectShape::spread_chunk`) and chains rounds until each row is one chunk.
// FAISS keeps the queue in registers and exchanges by shuffles, one compiled kernel per K; this one exchanges through shared memory, as the WGSL twin must, and takes K at run
// time.
//
// Beyond keep = 2,048 (where FAISS stops) the host selects from the rows read back. The plan
// for the device: a radix select on the order-preserving bits of the scores (four 8-bit
// passes with block histograms find the k-th key), a compaction of the entries at or under
// it, then this kernel's bitonic sort over the survivors.

#include "warp_queue.cuh"

#define PREFETCH 4

// Selects the best `keep` of one chunk (`len` entries from `src`) into `dst`: the body of
// both entry points. One warp; dynamic shared memory (k + 32·t) × 12 bytes (a `WarpQueue`).
// With `implicit`, entry i's payload is (0, first_pos + i) and `in_payload` is not read.
__device__ void select_chunk(
    const float* __restrict__ in_score,
    const uint2* __restrict__ in_payload,
    unsigned int src,
    unsigned int len,
    unsigned int dst,
    unsigned int keep,
    float* __restrict__ out_score,
    uint2* __restrict__ out_payload,
    unsigned int k,
    unsigned int t,
    float* smem,
    unsigned int implicit,
    unsigned int first_pos)
{
    const unsigned int lane = threadIdx.x;
    WarpQueue w;
    wq_init(w, smem, lane, k, t);
    // PREFETCH steps' loads issued before their offers (each offer waits on a vote, so a load
    // per step would put one memory latency on every step); the offers are the same, in the
    // same order.
    for (unsigned int base = 0; base < len; base += PREFETCH * LANES) {
        float s[PREFETCH];
        uint2 p[PREFETCH];
#pragma unroll
        for (unsigned int j = 0; j < PREFETCH; j++) {
            const unsigned int i = base + j * LANES + lane;
            const bool has = i < len;
            s[j] = has ? in_score[src + i] : 0.0f;
            p[j] = !has ? make_uint2(0u, 0u)
                 : implicit ? make_uint2(0u, first_pos + i)
                            : in_payload[src + i];
        }
#pragma unroll
        for (unsigned int j = 0; j < PREFETCH; j++) {
            if (base + j * LANES < len) wq_offer(w, lane, base + j * LANES + lane < len, s[j], p[j]);
        }
    }
    wq_finish(w, lane);
    for (unsigned int i = lane; i < keep; i += LANES) {
        out_score[dst + i] = w.qs[sw4(i)];
        out_payload[dst + i] = w.qp[sw8(i)];
    }
}

// One chunk per block of 32 threads, the chunks listed by the host.
extern "C" __global__ void warp_select(
    const float* __restrict__ in_score,
    const uint2* __restrict__ in_payload,
    const Chunk* __restrict__ chunks,
    float* __restrict__ out_score,
    uint2* __restrict__ out_payload,
    unsigned int nchunks,
    unsigned int k,
    unsigned int t)
{
    extern __shared__ float smem[];
    const unsigned int c = blockIdx.x + blockIdx.y * gridDim.x;
    if (c >= nchunks) return;
    const Chunk chunk = chunks[c];
    select_chunk(in_score, in_payload, chunk.src, chunk.len, chunk.dst, chunk.keep,
                 out_score, out_payload, k, t, smem, 0u, 0u);
}

// The same selection over rows laid out at a fixed `stride`, each cut into `parts` chunks of
// `chunk` entries, the chunks derived from the block's number (no list from the host: the
// device-resident search's rounds). With `use_len`, row r holds only its first `row_len[r]`
// entries (the rest of its stride is never read); chunks past a row's end output padding.
// Chunk (r, p) writes its best `keep` at (r · parts + p) · keep, so the next round's rows are
// `parts · keep` long, and a round with `parts` = 1 leaves row r's best at r · keep. With
// `implicit` (the coarse scores, written without payloads), an entry's payload is (0, its
// place in its row).
extern "C" __global__ void select_strided(
    const float* __restrict__ in_score,
    const uint2* __restrict__ in_payload,
    const unsigned int* __restrict__ row_len,
    float* __restrict__ out_score,
    uint2* __restrict__ out_payload,
    unsigned int nrows,
    unsigned int stride,
    unsigned int parts,
    unsigned int chunk,
    unsigned int keep,
    unsigned int use_len,
    unsigned int k,
    unsigned int t,
    unsigned int implicit)
{
    extern __shared__ float smem[];
    const unsigned int c = blockIdx.x + blockIdx.y * gridDim.x;
    if (c >= nrows * parts) return;
    const unsigned int row = c / parts, part = c % parts;
    const unsigned int n = use_len ? min(row_len[row], stride) : stride;
    const unsigned int first = part * chunk;
    const unsigned int len = first < n ? min(chunk, n - first) : 0u;
    select_chunk(in_score, in_payload, row * stride + first, len, c * keep, keep,
                 out_score, out_payload, k, t, smem, implicit, first);
}
