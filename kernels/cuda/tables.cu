// PQ lookup tables: values[q][m][j] = factor · <q_m, C_mj> (factor −1 for inner-product
// metrics, −2 for L2, as the CPU reference). Twin of shaders/wgsl/tables.wgsl.
//
// One thread per table entry; the codebook (M × ksub × dsub) is read in place (it stays in
// L2: 4 KiB to 400 KiB).

#include "table_entry.cuh"

extern "C" __global__ void lookup_tables(
    const float* __restrict__ queries,
    const float* __restrict__ codebook,
    float* __restrict__ values,
    unsigned int nq,
    unsigned int m,
    unsigned int ksub,
    unsigned int dsub,
    float factor)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x
        + (size_t)blockIdx.y * gridDim.x * blockDim.x;
    const size_t per_query = (size_t)m * ksub;
    if (i >= nq * per_query) return;
    const size_t q = i / per_query;
    const unsigned int r = (unsigned int)(i % per_query);
    const unsigned int sub = r / ksub, j = r % ksub;
    values[i] = table_entry(queries + q * (size_t)m * dsub, codebook, sub, j, ksub, dsub, factor);
}
