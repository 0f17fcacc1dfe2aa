// 4-bit fast-scan list scan. Twin of shaders/wgsl/scan4.wgsl, stage for stage.
//
// Same block layout as the CPU fast-scan (32 entries per block, M × 16 bytes; byte j of
// sub-quantizer m holds entry j's code in its low nibble and entry j + 16's in its high one)
// and the same u8 tables (quantized on the host by the CPU code), staged in shared memory
// (M × 16 bytes), so the integer sum equals the CPU's and `base + sum / scale + offset` is the
// same expression. One block per (query, probed list); deleted entries score +inf.

struct ScanItem {
    unsigned int table;
    unsigned int byte_off;
    unsigned int len;
    unsigned int gslot;
    unsigned int terms;
    unsigned int out;
    float offset;
    unsigned int pad;
};

extern "C" __global__ void scan4(
    const unsigned char* __restrict__ codes,
    const ScanItem* __restrict__ items,
    const unsigned char* __restrict__ qtables,
    const float2* __restrict__ qparams,
    const unsigned int* __restrict__ dead,
    float* __restrict__ out_score,
    uint2* __restrict__ out_payload,
    unsigned int m,
    unsigned int nitems)
{
    extern __shared__ unsigned char lut[];
    const unsigned int w = blockIdx.x + blockIdx.y * gridDim.x;
    if (w >= nitems) return;
    const ScanItem it = items[w];
    const unsigned char* t = qtables + (size_t)it.table * m * 16;
    for (unsigned int i = threadIdx.x; i < m * 16; i += blockDim.x) lut[i] = t[i];
    __syncthreads();
    const float2 qp = qparams[it.table];
    for (unsigned int i = threadIdx.x; i < it.len; i += blockDim.x) {
        const unsigned int slot = it.gslot + i;
        if ((dead[slot >> 5] >> (slot & 31)) & 1u) {
            out_score[it.out + i] = __int_as_float(0x7f800000);
            out_payload[it.out + i] = make_uint2(0xffffffffu, 0xffffffffu);
            continue;
        }
        const unsigned int block = i / 32, v = i % 32;
        const unsigned int shift = v >= 16 ? 4 : 0;
        const unsigned char* b0 = codes + it.byte_off + (size_t)block * m * 16 + (v % 16);
        unsigned int sum = 0;
        for (unsigned int s = 0; s < m; s++) {
            const unsigned int nib = (b0[s * 16] >> shift) & 15u;
            sum += lut[s * 16 + nib];
        }
        out_score[it.out + i] = (qp.x + (float)sum / qp.y) + it.offset;
        out_payload[it.out + i] = make_uint2(0u, slot);
    }
}
