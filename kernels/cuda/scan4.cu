// 4-bit fast-scan list scan. Twin of shaders/wgsl/scan4.wgsl, stage for stage.
//
// Codes in the GPU layout of fast-scan blocks (engine/src/interleave.rs: 32 entries a block,
// sub-quantizers regrouped in quads, `mq` = M rounded up to 4, `mq` × 16 bytes a block) and the
// CPU's u8 tables (quantized on the host by the CPU code, or on the device by its operations),
// staged in shared memory (M × 16 bytes), so the integer sum equals the CPU's and
// `base + sum / scale + offset` is the same expression. A thread scores four consecutive
// entries of a block (a quad: `quad_sums`): per quad of sub-quantizers one 16-byte load of
// their codes, per sub-quantizer one broadcast 16-byte load of its table row into registers
// and the four look-ups done there by byte permutes; sums in 16-bit halves of two registers.
// One block per (query, probed list); deleted entries score +inf.

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

// Table row `t` (16 u8 entries in four words) looked up at four codes, one per byte of `x`
// (each 0 … 15): byte n of the result is t's byte numbered by x's byte n. Two byte permutes
// take codes 0–7 from the row's first eight bytes and 8–15 from its last eight, and a mask
// from each code's bit 3 picks between them.
__device__ __forceinline__ unsigned int lookup16(uint4 t, unsigned int x)
{
    const unsigned int lo3 = x & 0x07070707u;
    // The four 3-bit selectors as the nibbles of one word (bytes 0 and 2 of lo3 | lo3 >> 4).
    const unsigned int sel = __byte_perm(lo3 | (lo3 >> 4), 0u, 0x4420u);
    const unsigned int low = __byte_perm(t.x, t.y, sel);
    const unsigned int high = __byte_perm(t.z, t.w, sel);
    const unsigned int bit3 = x & 0x08080808u;
    const unsigned int mask = (bit3 << 5) - (bit3 >> 3);  // 0xff in each byte whose code is ≥ 8
    return (low & ~mask) | (high & mask);
}

// The u16 sums (as the CPU's: wrapping) of quad `quad` of a list whose blocks start at
// `byte_off`: entries 4·quad … 4·quad + 3, i.e. entries 4u … 4u + 3 of block quad / 8
// (u = quad % 8: chunk u % 4 of each quad of sub-quantizers, high nibbles when u ≥ 4). Sums
// go in 16-bit halves (entries 0 and 2 of the quad in `even`, 1 and 3 in `odd`), moved into
// 32-bit totals every 256 sub-quantizers (256 · 255 < 2^16), so no half carries into the next.
__device__ __forceinline__ void quad_sums(
    const unsigned char* __restrict__ codes,
    unsigned int byte_off,
    unsigned int quad,
    const unsigned char* lut,
    unsigned int m,
    unsigned int sums[4])
{
    const unsigned int mq = (m + 3u) & ~3u;
    const unsigned int u = quad & 7u;
    const unsigned int shift = (u >> 2) * 4u;
    const unsigned char* chunk =
        codes + byte_off + (size_t)(quad >> 3) * mq * 16u + (u & 3u) * 16u;
    unsigned int total[4] = {0u, 0u, 0u, 0u};
    for (unsigned int s1 = 0; s1 < m; s1 += 256u) {
        const unsigned int end = min(s1 + 256u, m);
        unsigned int even = 0u, odd = 0u;
        for (unsigned int s0 = s1; s0 < end; s0 += 4u) {
            const uint4 v = *reinterpret_cast<const uint4*>(chunk + (size_t)s0 * 16u);
#pragma unroll
            for (unsigned int j = 0; j < 4; j++) {
                const unsigned int s = s0 + j;
                if (s < end) {
                    const unsigned int w = j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w;
                    const uint4 t = *reinterpret_cast<const uint4*>(lut + s * 16u);
                    const unsigned int r = lookup16(t, (w >> shift) & 0x0f0f0f0fu);
                    even += r & 0x00ff00ffu;
                    odd += (r >> 8) & 0x00ff00ffu;
                }
            }
        }
        total[0] += even & 0xffffu;
        total[1] += odd & 0xffffu;
        total[2] += even >> 16;
        total[3] += odd >> 16;
    }
#pragma unroll
    for (unsigned int r = 0; r < 4; r++) sums[r] = total[r] & 0xffffu;
}

// Scores the item's entries from its u8 table `lut` (M × 16, in shared memory, 16-byte
// aligned): a thread a quad (`quad_sums`), then `(base + sum / scale) + offset` per entry;
// deleted entries score +inf. Both scans' loop (the host-quantized and the device-quantized
// tables).
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
    for (unsigned int quad = threadIdx.x; quad * 4u < it.len; quad += blockDim.x) {
        unsigned int sums[4];
        quad_sums(codes, it.byte_off, quad, lut, m, sums);
#pragma unroll
        for (unsigned int r = 0; r < 4; r++) {
            const unsigned int i = quad * 4u + r;
            if (i >= it.len) break;
            const unsigned int slot = it.gslot + i;
            if ((dead[it.dead_off + (slot >> 5)] >> (slot & 31)) & 1u) {
                out_score[it.out + i] = __int_as_float(0x7f800000);
                out_payload[it.out + i] = make_uint2(0xffffffffu, 0xffffffffu);
                continue;
            }
            out_score[it.out + i] = (base + (float)sums[r] / scale) + offset;
            out_payload[it.out + i] = make_uint2(0u, slot);
        }
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
    extern __shared__ __align__(16) unsigned char lut[];
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
// `terms`) in `smem4` (16-byte aligned: M × 16 bytes for the u8 table, first so that its rows
// load as 16-byte words, then M × 16 floats, 2·M + 2 floats) as the CPU does. Every thread of
// the block calls it; it returns after the last barrier.
__device__ QuantizedItem quantize_item(
    unsigned char* smem4,
    const float* __restrict__ t,
    const float* __restrict__ terms,
    unsigned int l2,
    float offset,
    unsigned int m)
{
    const unsigned int n = m * 16;
    unsigned char* lut = smem4;
    float* f = reinterpret_cast<float*>(smem4 + n);
    float* lo = f + n;
    float* range = lo + m;
    float* qp = range + m;
    for (unsigned int i = threadIdx.x; i < n; i += blockDim.x) {
        f[i] = l2 ? __fadd_rn(terms[i], t[i]) : t[i];
    }
    __syncthreads();
    // Each sub-table's minimum and maximum: 16 lanes a sub-table, each reading one value
    // (consecutive words: no bank conflict), reduced by shuffles as the CPU's tree
    // (`fastscan::min_max16`) reduces them: values 8 apart, then 4, 2, 1, each step keeping
    // `lower < upper ? lower : upper` of the value from the lower position and the one from
    // the upper (and the same for the maximum), so ties, signed zeros and all come out as
    // the CPU's. Whole warps loop (n is a multiple of 16; the block of 32).
    for (unsigned int i = threadIdx.x; i < ((n + 31u) & ~31u); i += blockDim.x) {
        float a = i < n ? f[i] : 0.0f, b = a;
        for (unsigned int d = 8; d > 0; d >>= 1) {
            const float oa = __shfl_xor_sync(FULL_MASK, a, d);
            const float ob = __shfl_xor_sync(FULL_MASK, b, d);
            const bool low = (i & d) == 0;
            const float a_lo = low ? a : oa, a_hi = low ? oa : a;
            const float b_lo = low ? b : ob, b_hi = low ? ob : b;
            a = a_lo < a_hi ? a_lo : a_hi;
            b = b_lo > b_hi ? b_lo : b_hi;
        }
        if (i < n && (i & 15u) == 0) {
            lo[i / 16] = a;
            range[i / 16] = __fsub_rn(b, a);
        }
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
// Dynamic shared memory: M × 16 bytes (the u8 table), M × 16 floats (the table), 2·M + 2
// floats (each sub-table's minimum and range, base and scale).
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
    extern __shared__ __align__(16) unsigned char smem4[];
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
    extern __shared__ __align__(16) unsigned char smem4[];
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
        // A quad a lane (the warp's 32 quads: 128 entries); each of its four entries offered
        // in turn.
        for (unsigned int base = warp * LANES; base * 4u < pl.z; base += blockDim.x) {
            const unsigned int quad = base + lane;
            unsigned int sums[4] = {0u, 0u, 0u, 0u};
            if (quad * 4u < pl.z) quad_sums(codes, pl.x, quad, qi.lut, m, sums);
#pragma unroll
            for (unsigned int r = 0; r < 4; r++) {
                const unsigned int i = quad * 4u + r;
                const unsigned int slot = pl.y + i;
                const bool has = i < pl.z && !((dead[slot >> 5] >> (slot & 31u)) & 1u);
                const float s = has ? (qi.base + (float)sums[r] / qi.scale) + offset : 0.0f;
                wq_offer(wq, lane, has, s, make_uint2(0u, slot));
            }
        }
    }
    wq_finish(wq, lane);
    wq_merge_block(wq, queues, keep, out_score, out_payload, (size_t)w * keep);
}
