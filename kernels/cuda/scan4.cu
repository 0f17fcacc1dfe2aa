// 4-bit fast-scan list scan. Twin of shaders/wgsl/scan4.wgsl, stage for stage.
//
// Same block layout as the CPU fast-scan (32 entries per block, M × 16 bytes; byte j of
// sub-quantizer m holds entry j's code in its low nibble and entry j + 16's in its high one)
// and the same u8 tables (quantized on the host by the CPU code), staged in shared memory
// (M × 16 bytes), so the integer sum equals the CPU's and `base + sum / scale + offset` is the
// same expression. One block per (query, probed list); deleted entries score +inf.

#include "table_entry.cuh"
#include "warp_queue.cuh"

struct ScanItem {
    unsigned int table;
    unsigned int byte_off;
    unsigned int len;
    unsigned int gslot;
    unsigned int terms;
    unsigned int out;
    float offset;
    unsigned int dead_off;  // first word of this query's exclusion bitmap in `dead`
};

// Entry i's score of the list whose blocks start at `byte_off`: the integer sum of its M
// nibbles' table bytes, then `(base + sum / scale) + offset`.
__device__ __forceinline__ float score4(
    const unsigned char* __restrict__ codes,
    unsigned int byte_off,
    unsigned int i,
    const unsigned char* lut,
    float base,
    float scale,
    float offset,
    unsigned int m)
{
    const unsigned int block = i / 32, v = i % 32;
    const unsigned int shift = v >= 16 ? 4 : 0;
    const unsigned char* b0 = codes + byte_off + (size_t)block * m * 16 + (v % 16);
    unsigned int sum = 0;
    for (unsigned int s = 0; s < m; s++) {
        const unsigned int nib = (b0[s * 16] >> shift) & 15u;
        sum += lut[s * 16 + nib];
    }
    return (base + (float)sum / scale) + offset;
}

// Scores the item's entries from its u8 table `lut` (M × 16, in shared memory): the integer
// sum of each entry's M nibbles' table bytes, then `(base + sum / scale) + offset`; deleted
// entries score +inf. Both scans' loop (the host-quantized and the device-quantized tables).
__device__ __forceinline__ void score_entries(
    const unsigned char* __restrict__ codes,
    const ScanItem& it,
    const unsigned char* lut,
    float base,
    float scale,
    float offset,
    const unsigned int* __restrict__ dead,
    float* __restrict__ out_score,
    uint2* __restrict__ out_payload,
    unsigned int m)
{
    for (unsigned int i = threadIdx.x; i < it.len; i += blockDim.x) {
        const unsigned int slot = it.gslot + i;
        if ((dead[it.dead_off + (slot >> 5)] >> (slot & 31)) & 1u) {
            out_score[it.out + i] = __int_as_float(0x7f800000);
            out_payload[it.out + i] = make_uint2(0xffffffffu, 0xffffffffu);
            continue;
        }
        out_score[it.out + i] = score4(codes, it.byte_off, i, lut, base, scale, offset, m);
        out_payload[it.out + i] = make_uint2(0u, slot);
    }
}

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
    score_entries(codes, it, lut, qp.x, qp.y, it.offset, dead, out_score, out_payload, m);
}

// An item's u8 table, quantized in shared memory (see `scan4_quantized`).
struct QuantizedItem {
    const unsigned char* lut;
    float base;
    float scale;
};

// Quantizes the item's table (the query's float table `t`, M × 16, plus for L2 the list's
// `terms`) in `smem4` (M × 16 floats, 2·M + 2 floats, M × 16 bytes) as the CPU does. Every
// thread of the block calls it; it returns after the last barrier.
__device__ QuantizedItem quantize_item(
    unsigned char* smem4,
    const float* __restrict__ t,
    const float* __restrict__ terms,
    unsigned int l2,
    float offset,
    unsigned int m)
{
    const unsigned int n = m * 16;
    float* f = reinterpret_cast<float*>(smem4);
    float* lo = f + n;
    float* range = lo + m;
    float* qp = range + m;
    unsigned char* lut = reinterpret_cast<unsigned char*>(qp + 2);
    for (unsigned int i = threadIdx.x; i < n; i += blockDim.x) {
        f[i] = l2 ? __fadd_rn(terms[i], t[i]) : t[i];
    }
    __syncthreads();
    for (unsigned int s = threadIdx.x; s < m; s += blockDim.x) {
        float a = f[s * 16], b = a;
        for (unsigned int j = 1; j < 16; j++) {
            const float x = f[s * 16 + j];
            a = x < a ? x : a;
            b = x > b ? x : b;
        }
        lo[s] = a;
        range[s] = __fsub_rn(b, a);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float base = l2 ? offset : 0.0f;
        float widest = 0.0f;
        for (unsigned int s = 0; s < m; s++) {
            base = __fadd_rn(base, lo[s]);
            widest = range[s] > widest ? range[s] : widest;
        }
        qp[0] = base;
        qp[1] = widest > 0.0f ? __fdiv_rn(255.0f, widest) : 1.0f;
    }
    __syncthreads();
    const float scale = qp[1];
    for (unsigned int i = threadIdx.x; i < n; i += blockDim.x) {
        float y = __fadd_rn(__fmul_rn(__fsub_rn(f[i], lo[i / 16]), scale), 0.5f);
        y = y >= 0.0f ? y : 0.0f;
        y = y <= 255.0f ? y : 255.0f;
        lut[i] = (unsigned char)(int)y;
    }
    __syncthreads();
    QuantizedItem out;
    out.lut = lut;
    out.base = qp[0];
    out.scale = scale;
    return out;
}

// The device-resident search's 4-bit scan: `scan4` with each item's u8 table quantized on the
// device, by the CPU's own float operations (`QuantizedTable::quantize`, bit for bit), from
// the query's float table (`lookup_tables`: M × 16) and, for L2, the list's terms (terms +
// table, as the CPU adds them). Per item: every sub-table's minimum and maximum; thread 0 sums
// the minima in sub-quantizer order from the starting base (the item's coarse term for L2,
// 0 for inner product, where the term is added to the score instead: the staged path's
// shared per-query table) and takes the widest range; scale = 255 / range; each value
// becomes trunc(clamp((x − min) · scale + 0.5, 0, 255)), with `__f*_rn` so that no
// multiply-add is fused (the CPU rounds after each operation). Then `scan4`'s loop.
// Dynamic shared memory: M × 16 floats (the table), 2·M + 2 floats (each sub-table's minimum
// and range, base and scale), M × 16 bytes (the u8 table).
extern "C" __global__ void scan4_quantized(
    const unsigned char* __restrict__ codes,
    const ScanItem* __restrict__ items,
    const float* __restrict__ tables,
    const float* __restrict__ terms,
    const unsigned int* __restrict__ dead,
    float* __restrict__ out_score,
    uint2* __restrict__ out_payload,
    unsigned int m,
    unsigned int l2,
    unsigned int nitems)
{
    extern __shared__ unsigned char smem4[];
    const unsigned int w = blockIdx.x + blockIdx.y * gridDim.x;
    if (w >= nitems) return;
    const ScanItem it = items[w];
    const QuantizedItem qi = quantize_item(smem4, tables + (size_t)it.table * m * 16,
                                           terms + it.terms, l2, it.offset, m);
    score_entries(codes, it, qi.lut, qi.base, qi.scale, l2 ? 0.0f : it.offset, dead, out_score,
                  out_payload, m);
}

// The 4-bit scan with the selection fused in: `scan8_select`'s shape (one block of 8 warps
// per (query, part of `group` probes), items made from the probes, the query's float table
// built in shared memory by `query_table`, each warp's `WarpQueue`, a pairwise merge, the best
// `keep` at (q · parts + p) · keep), each item's table quantized in shared memory from it as
// `scan4_quantized` quantizes the tables kernel's. Dynamic shared memory: the query's table
// (M × 16 floats), the item's tables (`quantize_item`, rounded up to 8 bytes), then 8 queues
// of (K + 32·T) × 12 bytes.
extern "C" __global__ void scan4_select(
    const unsigned char* __restrict__ codes,
    const uint2* __restrict__ probe_payload,
    const float* __restrict__ probe_score,
    const uint4* __restrict__ places,
    const float* __restrict__ queries,
    const float* __restrict__ codebook,
    const float* __restrict__ terms,
    const unsigned int* __restrict__ dead,
    float* __restrict__ out_score,
    uint2* __restrict__ out_payload,
    unsigned int m,
    unsigned int dsub,
    float factor,
    unsigned int l2,
    unsigned int nq,
    unsigned int nprobe,
    unsigned int group,
    unsigned int by_residual,
    unsigned int keep,
    unsigned int k,
    unsigned int t)
{
    extern __shared__ unsigned char smem4[];
    const unsigned int parts = (nprobe + group - 1u) / group;
    const unsigned int w = blockIdx.x + blockIdx.y * gridDim.x;
    if (w >= nq * parts) return;
    const unsigned int q = w / parts, part = w % parts;
    const unsigned int first = part * group, last = min(first + group, nprobe);
    const unsigned int table_len = m * 16u;
    const unsigned int warp = threadIdx.x / LANES, lane = threadIdx.x % LANES;
    float* q_table = reinterpret_cast<float*>(smem4);
    unsigned char* item = smem4 + table_len * 4u;
    const unsigned int item_bytes = ((m * (16u * 5u + 8u) + 8u) + 7u) & ~7u;
    float* queues = reinterpret_cast<float*>(item + item_bytes);
    const unsigned int queue_words = (k + LANES * t) * 3u;
    WarpQueue wq;
    wq_init(wq, queues + warp * queue_words, lane, k, t);
    query_table(queries + (size_t)q * m * dsub, codebook, q_table, m, 16u, dsub, factor);
    for (unsigned int j = first; j < last; j++) {
        const unsigned int at = q * nprobe + j;
        const unsigned int l = probe_payload[at].y;
        const uint4 pl = places[l];
        const float bias = by_residual ? probe_score[at] : 0.0f;
        __syncthreads();  // the table is built; the previous item's reads of its tables done
        const QuantizedItem qi = quantize_item(item, q_table, terms + (size_t)l * table_len, l2,
                                               bias, m);
        const float offset = l2 ? 0.0f : bias;
        for (unsigned int base = warp * LANES; base < pl.z; base += blockDim.x) {
            const unsigned int i = base + lane;
            const unsigned int slot = pl.y + i;
            const bool has = i < pl.z && !((dead[slot >> 5] >> (slot & 31u)) & 1u);
            const float s = has ? score4(codes, pl.x, i, qi.lut, qi.base, qi.scale, offset, m) : 0.0f;
            wq_offer(wq, lane, has, s, make_uint2(0u, slot));
        }
    }
    wq_finish(wq, lane);
    wq_merge_block(wq, queues, keep, out_score, out_payload, (size_t)w * keep);
}
