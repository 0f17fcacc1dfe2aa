// Refine: exact distances between queries and their candidates' raw vectors (f32, or f16 via
// cuda_fp16.h), one warp per (query, candidate): lanes stride over the dimensions (coalesced
// reads of the scattered row) and reduce with shuffles. Twin of shaders/wgsl/refine.wgsl
// (which uses one thread per pair; same arithmetic up to summation order).
// Inner product scores −<q, v>, L2 |q − v|², accumulated with fused multiply-adds
// (`__fmaf_rn`: the same rounding on the GPU and in the emulator).

#include <cuda_fp16.h>

struct RefineItem {
    unsigned int query;
    unsigned int elem;
    unsigned int out;
    unsigned int pad;
};

extern "C" __global__ void refine(
    const void* __restrict__ raw,
    const RefineItem* __restrict__ items,
    const float* __restrict__ queries,
    float* __restrict__ out_score,
    unsigned int dim,
    unsigned int f16,
    unsigned int ip,
    unsigned int nitems)
{
    const unsigned int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32
        + blockIdx.y * (gridDim.x * blockDim.x / 32);
    const unsigned int lane = threadIdx.x % 32;
    if (warp >= nitems) return;
    const RefineItem it = items[warp];
    const float* q = queries + (size_t)it.query * dim;
    float acc = 0.0f;
    for (unsigned int d = lane; d < dim; d += 32) {
        const float v = f16 ? __half2float(((const __half*)raw)[(size_t)it.elem + d])
                            : ((const float*)raw)[(size_t)it.elem + d];
        if (ip) {
            acc = __fmaf_rn(q[d], v, acc);
        } else {
            const float diff = q[d] - v;
            acc = __fmaf_rn(diff, diff, acc);
        }
    }
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) out_score[it.out] = ip ? -acc : acc;
}

// The device-resident search's refine: one warp per candidate of the scan's selection
// (`per` of them per query, payload (0, global slot), padding (~0, ~0) with +inf), the same
// arithmetic as `refine`, reading the candidate's raw vector at its global slot; without raw
// vectors (`has_raw` 0) the approximate score stays. Output: the score and the point's id
// (`ids`: (high, low) words per global slot), padding where the candidate is padding.
extern "C" __global__ void refine_candidates(
    const void* __restrict__ raw,
    const float* __restrict__ cand_score,
    const uint2* __restrict__ cand_payload,
    const uint2* __restrict__ ids,
    const float* __restrict__ queries,
    float* __restrict__ out_score,
    uint2* __restrict__ out_payload,
    unsigned int dim,
    unsigned int f16,
    unsigned int ip,
    unsigned int has_raw,
    unsigned int per,
    unsigned int n)
{
    const unsigned int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32
        + blockIdx.y * (gridDim.x * blockDim.x / 32);
    const unsigned int lane = threadIdx.x % 32;
    if (warp >= n) return;
    const uint2 p = cand_payload[warp];
    const float approx = cand_score[warp];
    // The same for every lane of the warp: the warp leaves together or not at all.
    if (p.x != 0u || approx == __int_as_float(0x7f800000)) {
        if (lane == 0) {
            out_score[warp] = __int_as_float(0x7f800000);
            out_payload[warp] = make_uint2(0xffffffffu, 0xffffffffu);
        }
        return;
    }
    const unsigned int slot = p.y;
    if (!has_raw) {
        if (lane == 0) {
            out_score[warp] = approx;
            out_payload[warp] = ids[slot];
        }
        return;
    }
    const float* q = queries + (size_t)(warp / per) * dim;
    const size_t elem = (size_t)slot * dim;
    float acc = 0.0f;
    for (unsigned int d = lane; d < dim; d += 32) {
        const float v = f16 ? __half2float(((const __half*)raw)[elem + d])
                            : ((const float*)raw)[elem + d];
        if (ip) {
            acc = __fmaf_rn(q[d], v, acc);
        } else {
            const float diff = q[d] - v;
            acc = __fmaf_rn(diff, diff, acc);
        }
    }
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) {
        out_score[warp] = ip ? -acc : acc;
        out_payload[warp] = ids[slot];
    }
}
