// 8-bit PQ list scan. Twin of shaders/wgsl/scan8.wgsl, stage for stage.
//
// One block per (query, probed list) work item; its 256 threads stride over the list's entries
// (consecutive threads read consecutive entries' codes). The query's table (M × 256 floats)
// is staged in shared memory when the host says it fits (`staged`: M KiB within the device's
// opt-in limit, which the host enables for this kernel — M ≤ 48 anywhere, M ≤ 163 on an
// A100, M ≤ 227 on an H100), else read through L1. An entry's
// score is the coarse term plus, in sub-quantizer order, the table entry of its code (L2 adds
// the list's term first) — the CPU scan's additions in the CPU scan's order. Deleted entries
// score +inf. Output: score and payload (0, global slot) in the query's row, for top-k.

struct ScanItem {
    unsigned int table;
    unsigned int byte_off;
    unsigned int len;
    unsigned int gslot;
    unsigned int terms;
    unsigned int out;
    float bias;
    unsigned int pad;
};

extern "C" __global__ void scan8(
    const unsigned char* __restrict__ codes,
    const ScanItem* __restrict__ items,
    const float* __restrict__ tables,
    const float* __restrict__ terms,
    const unsigned int* __restrict__ dead,
    float* __restrict__ out_score,
    uint2* __restrict__ out_payload,
    unsigned int m,
    unsigned int l2,
    unsigned int staged,
    unsigned int nitems)
{
    extern __shared__ float table[];
    const unsigned int w = blockIdx.x + blockIdx.y * gridDim.x;
    if (w >= nitems) return;
    const ScanItem it = items[w];
    const float* q_table = tables + (size_t)it.table * m * 256;
    if (staged) {
        for (unsigned int i = threadIdx.x; i < m * 256; i += blockDim.x) table[i] = q_table[i];
        __syncthreads();
    }
    const float* t = staged ? table : q_table;
    for (unsigned int i = threadIdx.x; i < it.len; i += blockDim.x) {
        const unsigned int slot = it.gslot + i;
        if ((dead[slot >> 5] >> (slot & 31)) & 1u) {
            out_score[it.out + i] = __int_as_float(0x7f800000);
            out_payload[it.out + i] = make_uint2(0xffffffffu, 0xffffffffu);
            continue;
        }
        float acc = it.bias;
        const unsigned char* code = codes + it.byte_off + (size_t)i * m;
        for (unsigned int s = 0; s < m; s++) {
            const unsigned int c = code[s];
            float v = t[s * 256 + c];
            if (l2) v = terms[it.terms + s * 256 + c] + v;
            acc += v;
        }
        out_score[it.out + i] = acc;
        out_payload[it.out + i] = make_uint2(0u, slot);
    }
}

// The device-resident search's work items, built where the probes are (no trip to the
// host): one thread per query walks its `nprobe` probed lists in order (the coarse
// selection's output row: payload (0, list), best first) and writes one item per list, its
// entries placed one after another in the query's row of the scan output (rows `stride`
// apart: the host sizes `stride` by the longest row possible), and the row's length.
// `places` holds (first code byte, global slot of the first entry, entries, 0) per list.
extern "C" __global__ void scan_items(
    const uint2* __restrict__ probe_payload,
    const float* __restrict__ probe_score,
    const uint4* __restrict__ places,
    ScanItem* __restrict__ items,
    unsigned int* __restrict__ row_len,
    unsigned int nq,
    unsigned int nprobe,
    unsigned int stride,
    unsigned int table_len,
    unsigned int by_residual)
{
    const unsigned int q = blockIdx.x * blockDim.x + threadIdx.x;
    if (q >= nq) return;
    unsigned int out = 0;
    for (unsigned int j = 0; j < nprobe; j++) {
        const unsigned int at = q * nprobe + j;
        const unsigned int l = probe_payload[at].y;
        const uint4 pl = places[l];
        ScanItem it;
        it.table = q;
        it.byte_off = pl.x;
        it.len = pl.z;
        it.gslot = pl.y;
        it.terms = l * table_len;
        it.out = q * stride + out;
        it.bias = by_residual ? probe_score[at] : 0.0f;
        it.pad = 0;
        items[at] = it;
        out += pl.z;
    }
    row_len[q] = out;
}
