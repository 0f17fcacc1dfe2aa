// Coarse distances: scores[q][c] for a batch of queries against every coarse centroid.
// Twin of shaders/wgsl/coarse.wgsl, stage for stage.
//
// One 16 × 16 block computes a 16-query × 16-centroid tile; both operands are staged through
// shared memory 16 dimensions at a time, so each value read from memory serves 16 products.
// Inner product: -<q, c>; L2: max(|q|² + |c|² − 2<q, c>, 0), the CPU reference's expression.
// Each score goes out with its payload (0, centroid) for the top-k kernel.

#define TILE 16

extern "C" __global__ void coarse_distances(
    const float* __restrict__ queries,
    const float* __restrict__ centroids,
    const float* __restrict__ centroid_norms,
    float* __restrict__ scores,
    uint2* __restrict__ payloads,
    unsigned int nq,
    unsigned int nlist,
    unsigned int dim,
    unsigned int l2)
{
    __shared__ float q_tile[TILE * TILE];
    __shared__ float c_tile[TILE * TILE];
    const unsigned int lx = threadIdx.x, ly = threadIdx.y;
    const unsigned int q = blockIdx.y * TILE + ly;
    const unsigned int c = blockIdx.x * TILE + lx;
    const unsigned int c_row = blockIdx.x * TILE + ly;
    float dot = 0.0f, q_norm = 0.0f;
    for (unsigned int d0 = 0; d0 < dim; d0 += TILE) {
        const unsigned int d = d0 + lx;
        q_tile[ly * TILE + lx] = (q < nq && d < dim) ? queries[(size_t)q * dim + d] : 0.0f;
        c_tile[ly * TILE + lx] = (c_row < nlist && d < dim) ? centroids[(size_t)c_row * dim + d] : 0.0f;
        __syncthreads();
        #pragma unroll
        for (unsigned int t = 0; t < TILE; t++) {
            const float a = q_tile[ly * TILE + t];
            dot += a * c_tile[lx * TILE + t];
            q_norm += a * a;
        }
        __syncthreads();
    }
    if (q < nq && c < nlist) {
        float s = -dot;
        if (l2) s = fmaxf(q_norm + centroid_norms[c] - 2.0f * dot, 0.0f);
        scores[(size_t)q * nlist + c] = s;
        payloads[(size_t)q * nlist + c] = make_uint2(0u, c);
    }
}
