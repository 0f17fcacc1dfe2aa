// 8-bit PQ list scan: the approximate score of every entry of every probed list. Twin of
// kernels/cuda/scan8.cu.
//
// One workgroup per `group` consecutive (query, probed list) work items (the host picks 1 to
// 8, as for CUDA); its 256 invocations stride over each item's entries in turn. Codes are in
// the GPU layout (engine/src/interleave.rs): blocks of 32 entries (fewer in a list's last
// block), each cut into 16-byte chunks stored entry after entry, so 32 consecutive
// invocations read 512 contiguous bytes per chunk, one vec4<u32> each. An entry's score is
// the coarse term (`bias`) plus, for each sub-quantizer in order, the query's table entry for
// its code (L2 adds the list's term first, as the CPU reference does) — the same additions in
// the same order as the CPU scan, so the scores agree exactly. Deleted entries score +inf.
// Output: score and payload (0, global slot) at the item's place in its query's row, for the
// top-k kernel. Unlike the CUDA twin the table is read from global memory (through the
// cache), not staged in workgroup memory: WGSL's default limit is 16 KiB, an M = 16 table.
// Memory per entry: Mp (M rounded up to 16) code bytes + M table reads + 12 bytes written.

struct Item {
    table: u32,    // query's table number in `tables`
    byte_off: u32, // first code byte of the list in `codes`
    len: u32,      // entries in the list
    gslot: u32,    // global slot of the list's first entry
    terms: u32,    // first value of the list's L2 terms in `terms`
    out: u32,      // first output entry
    bias: f32,     // coarse term
    dead_off: u32, // first word of this query's exclusion bitmap in `dead`
}

struct Params {
    m: u32,
    l2: u32,
    items: u32,
    group: u32, // consecutive items per workgroup
}

@group(0) @binding(0) var<storage, read> codes: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> items: array<Item>;
@group(0) @binding(2) var<storage, read> tables: array<f32>;
@group(0) @binding(3) var<storage, read> terms: array<f32>;
@group(0) @binding(4) var<storage, read> dead: array<u32>;
@group(0) @binding(5) var<storage, read_write> out_score: array<f32>;
@group(0) @binding(6) var<storage, read_write> out_payload: array<vec2<u32>>;
@group(0) @binding(7) var<uniform> params: Params;

// Entry i's score of a list whose codes start at byte `byte_off` (GPU layout, `len`
// entries): `bias` plus, in sub-quantizer order, its code's entry of the table at `t0` (with
// `l2`, the list's term at `l0` first: term + table, the CPU's addition).
fn score8(byte_off: u32, len: u32, i: u32, bias: f32, t0: u32, l0: u32, m: u32, l2: bool) -> f32 {
    let mp = (m + 15u) & ~15u;
    var acc = bias;
    // This entry's first chunk, in 16-byte words; chunk c is c · nb words further (nb:
    // entries in its block, 32 but in a list's last block).
    let nb = min(32u, len - (i & ~31u));
    let w0 = (byte_off + (i >> 5u) * 32u * mp + (i & 31u) * 16u) >> 4u;
    for (var c0 = 0u; c0 < m; c0 += 16u) {
        let v = codes[w0 + (c0 >> 4u) * nb];
        for (var j = 0u; j < 16u; j++) {
            let s = c0 + j;
            if (s < m) {
                let c = (v[j >> 2u] >> ((j & 3u) * 8u)) & 0xffu;
                var t = tables[t0 + s * 256u + c];
                if (l2) {
                    t = terms[l0 + s * 256u + c] + t;
                }
                acc += t;
            }
        }
    }
    return acc;
}

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let w = wid.x + wid.y * 65535u;
    let first = w * params.group;
    if (first >= params.items) {
        return;
    }
    let last = min(first + params.group, params.items);
    let m = params.m;
    for (var at = first; at < last; at++) {
        let it = items[at];
        let t0 = it.table * m * 256u;
        let l0 = it.terms;
        for (var i = tid; i < it.len; i += 256u) {
            let slot = it.gslot + i;
            if (((dead[it.dead_off + (slot >> 5u)] >> (slot & 31u)) & 1u) == 1u) {
                out_score[it.out + i] = bitcast<f32>(0x7f800000u);
                out_payload[it.out + i] = vec2<u32>(0xffffffffu, 0xffffffffu);
                continue;
            }
            let acc = score8(it.byte_off, it.len, i, it.bias, t0, l0, m, params.l2 != 0u);
            out_score[it.out + i] = acc;
            out_payload[it.out + i] = vec2<u32>(0u, slot);
        }
    }
}

// The bindings of `fused` besides codes, tables, terms, dead and the outputs.
@group(0) @binding(8) var<storage, read> probe_payload: array<vec2<u32>>;
@group(0) @binding(9) var<storage, read> probe_score: array<f32>;
@group(0) @binding(10) var<storage, read> places: array<vec4<u32>>;
// [0]: m, l2, queries, nprobe; [1]: group, by_residual, keep, K; [2]: T.
@group(0) @binding(11) var<uniform> fparams: array<vec4<u32>, 3>;

var<workgroup> item_len: u32;

// The scan with the selection fused in (twin of `scan8_select` in scan8.cu; warp_queue.wgsl
// is prepended by the host): one workgroup of 32 invocations per (query, part), part p of
// query q scanning its probes p·group … min((p+1)·group, nprobe) − 1 (the coarse selection's
// output, best first; each item made as items.wgsl makes it), scoring entries lane, lane +
// 32, … of each list and offering them to the workgroup's queue (K, T: the host's shape for
// `keep`); deleted entries are not offered. The best `keep` go to (q · parts + p) · keep,
// sorted. CUDA runs 8 warps per block, one queue each, merged at the end, and builds the
// table in shared memory; here one warp, its 6 KiB queue (K 256, T 8) in WGSL's 16 KiB of
// workgroup memory, which cannot also hold a 48 KiB table, so the table is read through the
// cache from the tables kernel's output. The selected entries and their order are the same.
@compute @workgroup_size(32)
fn fused(
    @builtin(local_invocation_index) lane: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let w = wid.x + wid.y * 65535u;
    let part = fused_part(fparams, w);
    if (!part.live) {
        return;
    }
    let q = part.q;
    let m = part.m;
    wq_init(lane, part.k);
    var step = 0u;
    for (var j = part.first; j < part.last; j++) {
        let at = q * part.nprobe + j;
        let l = probe_payload[at].y;
        let place = places[l];
        // Every invocation has read the previous probe's length before it is rewritten (an
        // empty list leaves no barrier between the two otherwise).
        workgroupBarrier();
        if (lane == 0u) {
            item_len = place.z;
        }
        let len = workgroupUniformLoad(&item_len);
        var bias = 0.0;
        if (part.by_residual) {
            bias = probe_score[at];
        }
        for (var base = 0u; base < len; base += LANES) {
            let i = base + lane;
            let slot = place.y + i;
            var has = i < len;
            if (has) {
                has = ((dead[slot >> 5u] >> (slot & 31u)) & 1u) == 0u;
            }
            var s = 0.0;
            if (has) {
                s = score8(place.x, len, i, bias, q * m * 256u, l * m * 256u, m, part.l2);
            }
            wq_offer(lane, has, s, vec2<u32>(0u, slot), part.k, part.t, step);
            step += 1u;
        }
    }
    wq_finish(lane, part.k, part.t, step);
    wq_write(lane, part.keep, w * part.keep);
}
