// Per-row top-k by (score, payload): the selection of the coarse stage, the scan and refine.
// Twin of shaders/wgsl/topk.wgsl, stage for stage.
//
// Rows are cut into chunks of at most 1,024 entries (`topk_chunks`, 12 KiB of shared memory,
// keep ≤ 512, as topk.wgsl) or 4,096 (`topk_chunks_4096`, 48 KiB, keep ≤ 2,048); one block of
// 256 threads takes one chunk, loads (score, payload) pairs into shared memory (padded to a
// power of two with +inf), sorts them with a bitonic network ordered by score, then payload
// (high word, then low: the CPU reference's tie rule), and writes the first `keep`. The host
// chains rounds until each row is one chunk.
//
// Beyond keep = 2,048 (where FAISS stops) the host selects from the rows read back. The plan
// for the device: a radix select on the order-preserving bits of the scores (four 8-bit
// passes with block histograms find the k-th key), a compaction of the entries at or under
// it, and this bitonic sort over the survivors in 4,096-entry chunks merged pairwise; and, for
// small k, a WarpSelect-style kernel (per-warp sorted queues in registers merged through
// shared memory, Johnson, Douze and Jégou 2017) to replace the full chunk sorts.

#define THREADS 256

struct Chunk {
    unsigned int src;
    unsigned int len;
    unsigned int dst;
    unsigned int keep;
};

__device__ __forceinline__ bool before(float ka, uint2 pa, float kb, uint2 pb) {
    return ka < kb || (ka == kb && (pa.x < pb.x || (pa.x == pb.x && pa.y < pb.y)));
}

// One chunk of up to CHUNK entries per block: load, bitonic sort, write the first `keep`.
template <unsigned int CHUNK>
__device__ void topk_chunk(
    const float* __restrict__ in_score,
    const uint2* __restrict__ in_payload,
    const Chunk* __restrict__ chunks,
    float* __restrict__ out_score,
    uint2* __restrict__ out_payload,
    unsigned int nchunks,
    float* keys,
    uint2* pays)
{
    const unsigned int c = blockIdx.x + blockIdx.y * gridDim.x;
    if (c >= nchunks) return;
    const Chunk chunk = chunks[c];
    const unsigned int tid = threadIdx.x;
    unsigned int padded = 2;
    while (padded < chunk.len) padded <<= 1;
    for (unsigned int i = tid; i < padded; i += THREADS) {
        if (i < chunk.len) {
            keys[i] = in_score[chunk.src + i];
            pays[i] = in_payload[chunk.src + i];
        } else {
            keys[i] = __int_as_float(0x7f800000);
            pays[i] = make_uint2(0xffffffffu, 0xffffffffu);
        }
    }
    __syncthreads();
    for (unsigned int size = 2; size <= padded; size <<= 1) {
        for (unsigned int stride = size >> 1; stride > 0; stride >>= 1) {
            for (unsigned int i = tid; i < padded; i += THREADS) {
                const unsigned int j = i ^ stride;
                if (j > i) {
                    const bool ascending = (i & size) == 0;
                    const float ki = keys[i], kj = keys[j];
                    const uint2 pi = pays[i], pj = pays[j];
                    const bool swap = ascending ? before(kj, pj, ki, pi) : before(ki, pi, kj, pj);
                    if (swap) {
                        keys[i] = kj; keys[j] = ki;
                        pays[i] = pj; pays[j] = pi;
                    }
                }
            }
            __syncthreads();
        }
    }
    for (unsigned int i = tid; i < chunk.keep; i += THREADS) {
        out_score[chunk.dst + i] = keys[i];
        out_payload[chunk.dst + i] = pays[i];
    }
}

// Chunks of 1,024 (12 KiB of shared memory): keep ≤ 512, as topk.wgsl.
extern "C" __global__ void topk_chunks(
    const float* __restrict__ in_score,
    const uint2* __restrict__ in_payload,
    const Chunk* __restrict__ chunks,
    float* __restrict__ out_score,
    uint2* __restrict__ out_payload,
    unsigned int nchunks)
{
    __shared__ float keys[1024];
    __shared__ uint2 pays[1024];
    topk_chunk<1024>(in_score, in_payload, chunks, out_score, out_payload, nchunks, keys, pays);
}

// Chunks of 4,096 (48 KiB of shared memory): keep up to 2,048 on the device.
extern "C" __global__ void topk_chunks_4096(
    const float* __restrict__ in_score,
    const uint2* __restrict__ in_payload,
    const Chunk* __restrict__ chunks,
    float* __restrict__ out_score,
    uint2* __restrict__ out_payload,
    unsigned int nchunks)
{
    __shared__ float keys[4096];
    __shared__ uint2 pays[4096];
    topk_chunk<4096>(in_score, in_payload, chunks, out_score, out_payload, nchunks, keys, pays);
}
