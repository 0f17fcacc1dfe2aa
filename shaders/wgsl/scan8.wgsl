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
    let mp = (m + 15u) & ~15u;
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
            var acc = it.bias;
            // This entry's first chunk, in 16-byte words; chunk c is c · nb words further
            // (nb: entries in its block, 32 but in a list's last block).
            let nb = min(32u, it.len - (i & ~31u));
            let w0 = (it.byte_off + (i >> 5u) * 32u * mp + (i & 31u) * 16u) >> 4u;
            for (var c0 = 0u; c0 < m; c0 += 16u) {
                let v = codes[w0 + (c0 >> 4u) * nb];
                for (var j = 0u; j < 16u; j++) {
                    let s = c0 + j;
                    if (s < m) {
                        let c = (v[j >> 2u] >> ((j & 3u) * 8u)) & 0xffu;
                        var t = tables[t0 + s * 256u + c];
                        if (params.l2 != 0u) {
                            t = terms[l0 + s * 256u + c] + t;
                        }
                        acc += t;
                    }
                }
            }
            out_score[it.out + i] = acc;
            out_payload[it.out + i] = vec2<u32>(0u, slot);
        }
    }
}
