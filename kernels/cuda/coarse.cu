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

#define TILE 128
#define STEP 8
#define STRIDE 132
#define SUB 8

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
    const unsigned int tid = ty * 16 + tx;
    const unsigned int q0 = blockIdx.y * TILE, c0 = blockIdx.x * TILE;
    float dot[SUB][SUB];
    float q_norm[SUB];
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
#pragma unroll
    for (int i = 0; i < SUB; i++) {
        const unsigned int q = q0 + ty + 16 * i;
#pragma unroll
        for (int j = 0; j < SUB; j++) {
            const unsigned int c = c0 + tx + 16 * j;
            if (q < nq && c < nlist) {
                float s = -dot[i][j];
                if (l2) s = fmaxf(q_norm[i] + centroid_norms[c] - 2.0f * dot[i][j], 0.0f);
                scores[(size_t)q * nlist + c] = s;
                if (with_payloads) payloads[(size_t)q * nlist + c] = make_uint2(0u, c);
            }
        }
    }
}
