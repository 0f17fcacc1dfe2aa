// One PQ lookup-table entry: factor · <q_sub, C_sub,j>, the query's sub-vector `sub` against
// centroid j of sub-quantizer `sub` (codebook: M × ksub × dsub), its dimensions added in order,
// each product rounded before its addition (the kernels compile with --fmad=false): the CPU
// reference's table arithmetic (factor · Σ, with factor −1 or −2, equals Σ of factor · terms
// exactly). Shared by `lookup_tables` (tables.cu) and the fused scans, which build their
// query's table in shared memory (scan8.cu `scan8_select`, scan4.cu `scan4_select`).

#pragma once

__device__ __forceinline__ float table_entry(
    const float* __restrict__ query,
    const float* __restrict__ codebook,
    unsigned int sub,
    unsigned int j,
    unsigned int ksub,
    unsigned int dsub,
    float factor)
{
    float acc = 0.0f;
    for (unsigned int t = 0; t < dsub; t++) {
        acc += query[sub * dsub + t] * codebook[((size_t)sub * ksub + j) * dsub + t];
    }
    return factor * acc;
}

// The query's whole table (M × ksub entries) into `out`, strided over the block's threads.
__device__ __forceinline__ void query_table(
    const float* __restrict__ query,
    const float* __restrict__ codebook,
    float* out,
    unsigned int m,
    unsigned int ksub,
    unsigned int dsub,
    float factor)
{
    for (unsigned int i = threadIdx.x; i < m * ksub; i += blockDim.x) {
        out[i] = table_entry(query, codebook, i / ksub, i % ksub, ksub, dsub, factor);
    }
}
