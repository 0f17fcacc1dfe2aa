// 8-bit PQ list scan: the approximate score of every entry of every probed list.
//
// One workgroup per (query, probed list) work item; its 256 threads stride over the list's
// entries. An entry's score is the coarse term (`bias`) plus, for each sub-quantizer in order,
// the query's table entry for its code (L2 adds the list's term first, as the CPU reference
// does) — the same additions in the same order as the CPU scan, so the scores agree exactly.
// Deleted entries score +inf. Output: score and payload (0, global slot) at the item's place
// in its query's row, for the top-k kernel.
// Memory per entry: M code bytes + M table reads (from cache: one query's table is 64 KiB at
// M = 64) + 12 bytes written.

struct Item {
    table: u32,    // query's table number in `tables`
    byte_off: u32, // first code byte of the list in `codes`
    len: u32,      // entries in the list
    gslot: u32,    // global slot of the list's first entry
    terms: u32,    // first value of the list's L2 terms in `terms`
    out: u32,      // first output entry
    bias: f32,     // coarse term
    pad: u32,
}

struct Params {
    m: u32,
    l2: u32,
    items: u32,
    pad: u32,
}

@group(0) @binding(0) var<storage, read> codes: array<u32>;
@group(0) @binding(1) var<storage, read> items: array<Item>;
@group(0) @binding(2) var<storage, read> tables: array<f32>;
@group(0) @binding(3) var<storage, read> terms: array<f32>;
@group(0) @binding(4) var<storage, read> dead: array<u32>;
@group(0) @binding(5) var<storage, read_write> out_score: array<f32>;
@group(0) @binding(6) var<storage, read_write> out_payload: array<vec2<u32>>;
@group(0) @binding(7) var<uniform> params: Params;

fn code_byte(b: u32) -> u32 {
    return (codes[b >> 2u] >> ((b & 3u) * 8u)) & 0xffu;
}

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let w = wid.x + wid.y * 65535u;
    if (w >= params.items) {
        return;
    }
    let it = items[w];
    let m = params.m;
    let t0 = it.table * m * 256u;
    let l0 = it.terms;
    for (var i = tid; i < it.len; i += 256u) {
        let slot = it.gslot + i;
        if (((dead[slot >> 5u] >> (slot & 31u)) & 1u) == 1u) {
            out_score[it.out + i] = bitcast<f32>(0x7f800000u);
            out_payload[it.out + i] = vec2<u32>(0xffffffffu, 0xffffffffu);
            continue;
        }
        var acc = it.bias;
        let b0 = it.byte_off + i * m;
        for (var s = 0u; s < m; s++) {
            let c = code_byte(b0 + s);
            var t = tables[t0 + s * 256u + c];
            if (params.l2 != 0u) {
                t = terms[l0 + s * 256u + c] + t;
            }
            acc += t;
        }
        out_score[it.out + i] = acc;
        out_payload[it.out + i] = vec2<u32>(0u, slot);
    }
}
