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
// host cuts rows into chunks of max(8·K, 8,192) and chains rounds until each row is one
// chunk. FAISS keeps the queue in registers and exchanges by shuffles, one compiled kernel
// per K; this one exchanges through shared memory, as the WGSL twin must, and takes K at run
// time.
//
// Beyond keep = 2,048 (where FAISS stops) the host selects from the rows read back. The plan
// for the device: a radix select on the order-preserving bits of the scores (four 8-bit
// passes with block histograms find the k-th key), a compaction of the entries at or under
// it, then this kernel's bitonic sort over the survivors.

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
                const float ki = ss[i], kj = ss[j];
                const uint2 pi = sp[i], pj = sp[j];
                const bool swap = ascending ? before(kj, pj, ki, pi) : before(ki, pi, kj, pj);
                if (swap) {
                    ss[i] = kj; ss[j] = ki;
                    sp[i] = pj; sp[j] = pi;
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
        const float sb = ss[b];
        const uint2 pb = sp[b];
        if (before(sb, pb, qs[i], qp[i])) {
            qs[i] = sb;
            qp[i] = pb;
        }
    }
    __syncwarp();
    for (unsigned int stride = k >> 1; stride > 0; stride >>= 1) {
        for (unsigned int p = lane; p < k / 2; p += LANES) {
            const unsigned int i = pair_first(p, stride);
            const unsigned int j = i + stride;
            const float ki = qs[i], kj = qs[j];
            const uint2 pi = qp[i], pj = qp[j];
            if (before(kj, pj, ki, pi)) {
                qs[i] = kj; qs[j] = ki;
                qp[i] = pj; qp[j] = pi;
            }
        }
        __syncwarp();
    }
}

// Selects the best `keep` of one chunk (`len` entries from `src`) into `dst`: the body of
// both entry points. One warp; dynamic shared memory (k + 32·t) × 12 bytes, laid out as
// queue scores [k], staging scores [32·t], queue payloads [k], staging payloads [32·t].
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
    float* smem)
{
    const unsigned int lane = threadIdx.x;
    const unsigned int n_stage = t * LANES;
    float* qs = smem;
    float* ss = qs + k;
    uint2* qp = reinterpret_cast<uint2*>(ss + n_stage);
    uint2* sp = qp + k;
    const float inf = __int_as_float(0x7f800000);
    const uint2 none = make_uint2(0xffffffffu, 0xffffffffu);
    for (unsigned int i = lane; i < k; i += LANES) {
        qs[i] = inf;
        qp[i] = none;
    }
    __syncwarp();

    float thr_score = inf;
    uint2 thr_payload = none;
    float tq_score[TQ_MAX];
    uint2 tq_payload[TQ_MAX];
    unsigned int count = 0;
    // One extra step past the end flushes what the thread queues hold.
    for (unsigned int base = 0; base < len + LANES; base += LANES) {
        const unsigned int i = base + lane;
        if (i < len) {
            const float s = in_score[src + i];
            const uint2 p = in_payload[src + i];
            if (before(s, p, thr_score, thr_payload)) {
#pragma unroll
                for (unsigned int j = 0; j < TQ_MAX; ++j) {
                    if (j == count) {
                        tq_score[j] = s;
                        tq_payload[j] = p;
                    }
                }
                count += 1;
            }
        }
        const bool full = count == t || (base >= len && count > 0);
        if (__any_sync(FULL_MASK, full)) {
#pragma unroll
            for (unsigned int j = 0; j < TQ_MAX; ++j) {
                if (j < t) {
                    const unsigned int at = lane * t + j;
                    ss[at] = j < count ? tq_score[j] : inf;
                    sp[at] = j < count ? tq_payload[j] : none;
                }
            }
            count = 0;
            __syncwarp();
            sort_stage(lane, n_stage, ss, sp);
            merge_stage(lane, k, n_stage, qs, qp, ss, sp);
            thr_score = qs[k - 1];
            thr_payload = qp[k - 1];
        }
    }
    __syncwarp();
    for (unsigned int i = lane; i < keep; i += LANES) {
        out_score[dst + i] = qs[i];
        out_payload[dst + i] = qp[i];
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
                 out_score, out_payload, k, t, smem);
}

// The same selection over rows laid out at a fixed `stride`, each cut into `parts` chunks of
// `chunk` entries, the chunks derived from the block's number (no list from the host: the
// device-resident search's rounds). With `use_len`, row r holds only its first `row_len[r]`
// entries (the rest of its stride is never read); chunks past a row's end output padding.
// Chunk (r, p) writes its best `keep` at (r · parts + p) · keep, so the next round's rows are
// `parts · keep` long, and a round with `parts` = 1 leaves row r's best at r · keep.
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
    unsigned int t)
{
    extern __shared__ float smem[];
    const unsigned int c = blockIdx.x + blockIdx.y * gridDim.x;
    if (c >= nrows * parts) return;
    const unsigned int row = c / parts, part = c % parts;
    const unsigned int n = use_len ? min(row_len[row], stride) : stride;
    const unsigned int first = part * chunk;
    const unsigned int len = first < n ? min(chunk, n - first) : 0u;
    select_chunk(in_score, in_payload, row * stride + first, len, c * keep, keep,
                 out_score, out_payload, k, t, smem);
}
