// 8-bit PQ list scan. Twin of shaders/wgsl/scan8.wgsl, stage for stage.
//
// One block per `group` consecutive (query, probed list) work items (the host picks 1 to 8:
// enough blocks to fill the device, few table stagings); its 256 threads stride over each
// item's entries in turn.
// Codes are in the GPU layout (engine/src/interleave.rs): blocks of 32 entries (fewer in a
// list's last block), each cut into 16-byte chunks stored entry after entry, so a warp reads
// 512 contiguous bytes per chunk, one 16-byte load per thread. The query's table (M × 256 floats) is staged in shared memory when
// the host says it fits (`staged`: M KiB within the device's opt-in limit, which the host
// enables for this kernel — M ≤ 48 anywhere, M ≤ 163 on an A100, M ≤ 227 on an H100), once
// per block and query (a query's items are consecutive, so a group of 8 stages it once, not
// 8 times), or with L2 once per item, the list's terms folded in (term + table: the very
// addition the CPU makes per entry, made once per table cell); else read through L1, the
// terms added per entry. An
// entry's score is the coarse term plus, in sub-quantizer order, its code's (term +) table
// entry — the CPU scan's additions in the CPU scan's order. Deleted entries score +inf.
// Output: score and payload (0, global slot) in the query's row, for top-k.

#include "table_entry.cuh"
#include "warp_queue.cuh"

struct ScanItem {
    unsigned int table;
    unsigned int byte_off;
    unsigned int len;
    unsigned int gslot;
    unsigned int terms;
    unsigned int out;
    float bias;
    unsigned int dead_off;  // first word of this query's exclusion bitmap in `dead`
};

// Entry i's score of a list whose codes start at `byte_off` (GPU layout, `len` entries):
// `bias` plus, in sub-quantizer order, its code's table entry `t` (and, with `l_terms`,
// the list's term first: term + table, the CPU's addition).
__device__ __forceinline__ float score8(
    const unsigned char* __restrict__ codes,
    unsigned int byte_off,
    unsigned int len,
    unsigned int i,
    float bias,
    const float* t,
    const float* l_terms,
    unsigned int m)
{
    const unsigned int mp = (m + 15u) & ~15u;
    float acc = bias;
    // This entry's first chunk; chunk c is c · 16 · nb bytes further (nb: entries in its
    // block, 32 but in a list's last block).
    const unsigned int nb = min(32u, len - (i & ~31u));
    const unsigned char* code = codes + byte_off + (size_t)(i >> 5) * 32u * mp + (i & 31u) * 16u;
    for (unsigned int c0 = 0; c0 < m; c0 += 16) {
        const uint4 v = *reinterpret_cast<const uint4*>(code + (size_t)c0 * nb);
#pragma unroll
        for (unsigned int j = 0; j < 16; j++) {
            const unsigned int s = c0 + j;
            if (s < m) {
                const unsigned int word = j < 4 ? v.x : j < 8 ? v.y : j < 12 ? v.z : v.w;
                const unsigned int c = (word >> ((j & 3u) * 8u)) & 0xffu;
                float x = t[s * 256 + c];
                if (l_terms) x = l_terms[s * 256 + c] + x;
                acc += x;
            }
        }
    }
    return acc;
}

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
    unsigned int nitems,
    unsigned int group)
{
    extern __shared__ float table[];
    const unsigned int w = blockIdx.x + blockIdx.y * gridDim.x;
    const unsigned int first = w * group;
    if (first >= nitems) return;
    const unsigned int last = min(first + group, nitems);
    const unsigned int add_terms = l2 && !staged;
    // The table in shared memory belongs to this query table number (none yet).
    unsigned int staged_table = 0xffffffffu;
    for (unsigned int at = first; at < last; at++) {
        // Every thread reads the same item: the branches below are uniform in the block.
        const ScanItem it = items[at];
        const float* q_table = tables + (size_t)it.table * m * 256;
        const float* l_terms = terms + it.terms;
        if (staged && (l2 || it.table != staged_table)) {
            __syncthreads();  // the previous item's reads of `table` are done
            for (unsigned int i = threadIdx.x; i < m * 256; i += blockDim.x)
                table[i] = l2 ? l_terms[i] + q_table[i] : q_table[i];
            __syncthreads();
            staged_table = it.table;
        }
        const float* t = staged ? table : q_table;
        for (unsigned int i = threadIdx.x; i < it.len; i += blockDim.x) {
            const unsigned int slot = it.gslot + i;
            if ((dead[it.dead_off + (slot >> 5)] >> (slot & 31)) & 1u) {
                out_score[it.out + i] = __int_as_float(0x7f800000);
                out_payload[it.out + i] = make_uint2(0xffffffffu, 0xffffffffu);
                continue;
            }
            const float acc = score8(codes, it.byte_off, it.len, i, it.bias, t,
                                     add_terms ? l_terms : nullptr, m);
            out_score[it.out + i] = acc;
            out_payload[it.out + i] = make_uint2(0u, slot);
        }
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
        it.dead_off = 0;
        items[at] = it;
        out += pl.z;
    }
    row_len[q] = out;
}

// The scan with the selection fused in (no score rows, no table in device memory): one
// block of 8 warps per (query, part), part p of query q scanning its probes p·group …
// min((p+1)·group, nprobe) − 1 (the coarse selection's output row, best first; each item made
// here as `scan_items` makes it, from the lists' places). The block first builds the query's
// table in shared memory (`query_table`: `lookup_tables`' arithmetic, from the queries and the
// codebook: what the tables kernel would have written and `scan8` staged), and with L2 folds
// each list's terms into a second copy per item (term + table, as `scan8` stages it). Warp w
// scores the entries 32w … 32w + 31 of every 256 of an item (one interleaved code block) and
// offers them to its own `WarpQueue` (K, T: the host's shape for `keep`); deleted entries are
// not offered (they would score +inf with the padding's payload, which never beats a real
// entry). After the last item the eight queues are merged pairwise (three bitonic merges
// deep) and warp 0 writes the best `keep` at (q · parts + p) · keep, sorted; what one
// `select_strided` round over each query's `parts · keep` entries then selects is exactly
// what the score rows' rounds select (the same entries, the same order).
// Dynamic shared memory: the query's table (M KiB), with L2 the folded table (M KiB more),
// then 8 queues of (K + 32·T) × 12 bytes.
extern "C" __global__ void scan8_select(
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
    extern __shared__ float smem[];
    const unsigned int parts = (nprobe + group - 1u) / group;
    const unsigned int w = blockIdx.x + blockIdx.y * gridDim.x;
    if (w >= nq * parts) return;
    const unsigned int q = w / parts, part = w % parts;
    const unsigned int first = part * group, last = min(first + group, nprobe);
    const unsigned int table_len = m * 256u;
    const unsigned int warp = threadIdx.x / LANES, lane = threadIdx.x % LANES;
    float* q_table = smem;
    float* folded = smem + table_len;
    float* queues = smem + (l2 ? 2u : 1u) * table_len;
    const unsigned int queue_words = (k + LANES * t) * 3u;
    WarpQueue wq;
    wq_init(wq, queues + warp * queue_words, lane, k, t);
    query_table(queries + (size_t)q * m * dsub, codebook, q_table, m, 256u, dsub, factor);
    __syncthreads();
    for (unsigned int j = first; j < last; j++) {
        // Every thread reads the same item: the branches below are uniform in the block.
        const unsigned int at = q * nprobe + j;
        const unsigned int l = probe_payload[at].y;
        const uint4 pl = places[l];
        const float bias = by_residual ? probe_score[at] : 0.0f;
        if (l2) {
            const float* l_terms = terms + (size_t)l * table_len;
            __syncthreads();  // the previous item's reads of `folded` are done
            for (unsigned int i = threadIdx.x; i < table_len; i += blockDim.x)
                folded[i] = l_terms[i] + q_table[i];
            __syncthreads();
        }
        const float* tt = l2 ? folded : q_table;
        for (unsigned int base = warp * LANES; base < pl.z; base += blockDim.x) {
            const unsigned int i = base + lane;
            const unsigned int slot = pl.y + i;
            const bool has = i < pl.z && !((dead[slot >> 5] >> (slot & 31u)) & 1u);
            const float s = has ? score8(codes, pl.x, pl.z, i, bias, tt, nullptr, m) : 0.0f;
            wq_offer(wq, lane, has, s, make_uint2(0u, slot));
        }
    }
    wq_finish(wq, lane);
    wq_merge_block(wq, queues, keep, out_score, out_payload, (size_t)w * keep);
}
