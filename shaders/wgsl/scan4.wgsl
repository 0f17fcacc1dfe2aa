// 4-bit fast-scan list scan: exact integer sums of u8-quantized tables over block-packed codes.
//
// The CPU fast-scan's blocks (32 entries; byte `j` of sub-quantizer `m` holds entry `j`'s code
// in its low nibble and entry `j + 16`'s in its high nibble) in the GPU layout
// (engine/src/interleave.rs: sub-quantizers regrouped in quads, `mq × 16` bytes a block with
// mq = M rounded up to 4; read through `code_at`) and the same quantized tables (quantized on
// the host by the CPU code), so the sum, wrapped at 16 bits, equals the CPU's u16 sum and the score
// `base + sum / scale + offset` is computed with the same operations. One workgroup per
// (query, probed list); deleted entries score +inf.
// The work item's table (M × 16 bytes) is first staged in workgroup memory, as
// kernels/cuda/scan4.cu stages it in shared memory (here up to M = 256, the 4 KiB reserved;
// a larger M reads the table from the storage buffer, through the cache).
// Memory per entry: M / 2 code bytes + M table bytes (workgroup memory) + 12 bytes written.

struct Item {
    table: u32,    // quantized table number
    byte_off: u32, // first code byte of the list in `codes`
    len: u32,
    gslot: u32,
    terms: u32,    // unused (tables arrive quantized with their terms)
    out: u32,
    offset: f32,   // added after the table's score (the coarse term when the table is shared)
    dead_off: u32, // first word of this query's exclusion bitmap in `dead`
}

struct Params {
    m: u32,
    items: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<storage, read> codes: array<u32>;
@group(0) @binding(1) var<storage, read> items: array<Item>;
@group(0) @binding(2) var<storage, read> qtables: array<u32>;
@group(0) @binding(3) var<storage, read> qparams: array<vec2<f32>>; // (base, scale) per table
@group(0) @binding(4) var<storage, read> dead: array<u32>;
@group(0) @binding(5) var<storage, read_write> out_score: array<f32>;
@group(0) @binding(6) var<storage, read_write> out_payload: array<vec2<u32>>;
@group(0) @binding(7) var<uniform> params: Params;

// Byte `j` (0 … 15) of sub-quantizer `s`'s fast-scan row in the block starting at byte `b0`
// (engine/src/interleave.rs `quad_byte`).
fn code_at(b0: u32, s: u32, j: u32) -> u32 {
    return code_byte(b0 + (s >> 2u) * 64u + (j >> 2u) * 16u + (s & 3u) * 4u + (j & 3u));
}

fn code_byte(b: u32) -> u32 {
    return (codes[b >> 2u] >> ((b & 3u) * 8u)) & 0xffu;
}

const LUT_WORDS: u32 = 1024u; // 4 KiB: tables of M ≤ 256

var<workgroup> lut: array<u32, 1024>;

fn table_byte(b: u32) -> u32 {
    return (qtables[b >> 2u] >> ((b & 3u) * 8u)) & 0xffu;
}

fn lut_byte(b: u32) -> u32 {
    return (lut[b >> 2u] >> ((b & 3u) * 8u)) & 0xffu;
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
    let t0 = it.table * m * 16u;
    // Tables are m × 16 bytes: whole words, word-aligned (t0 is a multiple of 16).
    let staged = m * 4u <= LUT_WORDS;
    if (staged) {
        for (var i = tid; i < m * 4u; i += 256u) {
            lut[i] = qtables[(t0 >> 2u) + i];
        }
    }
    workgroupBarrier();
    let qp = qparams[it.table];
    if (staged) {
        score_entries(it, m, qp.x, qp.y, it.offset, tid);
        return;
    }
    for (var i = tid; i < it.len; i += 256u) {
        let slot = it.gslot + i;
        if (((dead[it.dead_off + (slot >> 5u)] >> (slot & 31u)) & 1u) == 1u) {
            out_score[it.out + i] = bitcast<f32>(0x7f800000u);
            out_payload[it.out + i] = vec2<u32>(0xffffffffu, 0xffffffffu);
            continue;
        }
        let block = i / 32u;
        let v = i % 32u;
        let shift = select(0u, 4u, v >= 16u);
        let b0 = it.byte_off + block * ((m + 3u) & ~3u) * 16u;
        var sum = 0u;
        for (var s = 0u; s < m; s++) {
            let nib = (code_at(b0, s, v % 16u) >> shift) & 15u;
            sum += table_byte(t0 + s * 16u + nib);
        }
        out_score[it.out + i] = (qp.x + f32(sum & 0xffffu) / qp.y) + it.offset;
        out_payload[it.out + i] = vec2<u32>(0u, slot);
    }
}

// Entry i's score from the u8 table in `lut`: the integer sum of its M nibbles' table bytes
// (the list's codes from byte `byte_off`, blocks of 32 entries), then
// `(base + sum / scale) + offset`.
fn score4(byte_off: u32, i: u32, m: u32, base: f32, scale: f32, offset: f32) -> f32 {
    let block = i / 32u;
    let v = i % 32u;
    let shift = select(0u, 4u, v >= 16u);
    let b0 = byte_off + block * ((m + 3u) & ~3u) * 16u;
    var sum = 0u;
    for (var s = 0u; s < m; s++) {
        let nib = (code_at(b0, s, v % 16u) >> shift) & 15u;
        sum += lut_byte(s * 16u + nib);
    }
    return (base + f32(sum & 0xffffu) / scale) + offset;
}

// Scores the item's entries from its u8 table staged in `lut`: the integer sum of each
// entry's M nibbles' table bytes, then `(base + sum / scale) + offset`; deleted entries score
// +inf. The loop of both entries (`main` with a staged table, and `quantized`); it touches
// only bindings both have.
fn score_entries(it: Item, m: u32, base: f32, scale: f32, offset: f32, tid: u32) {
    for (var i = tid; i < it.len; i += 256u) {
        let slot = it.gslot + i;
        if (((dead[it.dead_off + (slot >> 5u)] >> (slot & 31u)) & 1u) == 1u) {
            out_score[it.out + i] = bitcast<f32>(0x7f800000u);
            out_payload[it.out + i] = vec2<u32>(0xffffffffu, 0xffffffffu);
            continue;
        }
        out_score[it.out + i] = score4(it.byte_off, i, m, base, scale, offset);
        out_payload[it.out + i] = vec2<u32>(0u, slot);
    }
}

// The bindings of `quantized` beside `codes`, `items`, `dead` and the outputs.
@group(0) @binding(8) var<storage, read> ftables: array<f32>; // M × 16 per query
@group(0) @binding(9) var<storage, read> terms: array<f32>;   // L2: M × 16 per list
// x: M, y: l2, z: items.
@group(0) @binding(10) var<uniform> qparams2: vec4<u32>;

const QM_MAX: u32 = 128u; // sub-quantizers the workgroup arrays below hold

var<workgroup> sub_lo: array<f32, 128>;
var<workgroup> sub_range: array<f32, 128>;
var<workgroup> base_scale: vec2<f32>;

// Entry i of an item's float table: the query's (`lookup_tables`' output, from `q0`), plus for
// L2 the list's terms (from `l0`), added as the CPU adds them.
fn item_value(q0: u32, l0: u32, i: u32, l2: bool) -> f32 {
    var x = ftables[q0 + i];
    if (l2) {
        x = terms[l0 + i] + x;
    }
    return x;
}

// Quantizes an item's table into `lut` (u8, packed four to a word) and `base_scale` by the
// CPU's operations (`QuantizedTable::quantize`): each sub-table's minimum and range, invocation
// 0 summing the minima in order from `start` (the coarse term for L2, 0 for inner product)
// and taking the widest range, scale = 255 / range, values trunc(clamp((x − min) · scale +
// 0.5, 0, 255)). The float values are read from the storage buffers twice rather than staged
// (the fused entry's workgroup memory holds its queue instead). Every invocation of the
// workgroup (`threads` of them, `tid` its index) calls it in uniform control flow; `lut` and
// `base_scale` are ready when it returns. M ≤ 128.
fn quantize_item(tid: u32, threads: u32, q0: u32, l0: u32, m: u32, l2: bool, start: f32) {
    for (var s = tid; s < m; s += threads) {
        var a = item_value(q0, l0, s * 16u, l2);
        var b = a;
        for (var c = 1u; c < 16u; c++) {
            let x = item_value(q0, l0, s * 16u + c, l2);
            a = select(a, x, x < a);
            b = select(b, x, x > b);
        }
        sub_lo[s] = a;
        sub_range[s] = b - a;
    }
    workgroupBarrier();
    if (tid == 0u) {
        var base = start;
        var widest = 0.0;
        for (var s = 0u; s < m; s++) {
            base = base + sub_lo[s];
            widest = select(widest, sub_range[s], sub_range[s] > widest);
        }
        var scale = 1.0;
        if (widest > 0.0) {
            scale = 255.0 / widest;
        }
        base_scale = vec2<f32>(base, scale);
    }
    workgroupBarrier();
    let scale = base_scale.y;
    for (var wd = tid; wd < m * 4u; wd += threads) {
        var word = 0u;
        for (var c = 0u; c < 4u; c++) {
            let i = wd * 4u + c;
            var y = (item_value(q0, l0, i, l2) - sub_lo[i / 16u]) * scale + 0.5;
            y = select(0.0, y, y >= 0.0);
            y = select(255.0, y, y <= 255.0);
            word = word | (u32(y) << (8u * c));
        }
        lut[wd] = word;
    }
    workgroupBarrier();
}

// The device-resident search's 4-bit scan (twin of `scan4_quantized` in kernels/cuda/scan4.cu):
// `main` with each item's u8 table quantized here (`quantize_item`) from the query's float
// table and, for L2, the list's terms; the inner product's coarse term is added to the score
// instead. M ≤ 128 (the host checks).
@compute @workgroup_size(256)
fn quantized(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let w = wid.x + wid.y * 65535u;
    if (w >= qparams2.z) {
        return;
    }
    let it = items[w];
    let m = qparams2.x;
    let l2 = qparams2.y != 0u;
    var start = 0.0;
    var offset = it.offset;
    if (l2) {
        start = it.offset;
        offset = 0.0;
    }
    quantize_item(tid, 256u, it.table * m * 16u, it.terms, m, l2, start);
    score_entries(it, m, base_scale.x, base_scale.y, offset, tid);
}

// The bindings of `fused` besides codes, dead, the outputs, `ftables` and `terms`.
@group(0) @binding(11) var<storage, read> probe_payload: array<vec2<u32>>;
@group(0) @binding(12) var<storage, read> probe_score: array<f32>;
@group(0) @binding(13) var<storage, read> places: array<vec4<u32>>;
// [0]: m, l2, queries, nprobe; [1]: group, by_residual, keep, K; [2]: T.
@group(0) @binding(14) var<uniform> fparams: array<vec4<u32>, 3>;

var<workgroup> item_len4: u32;

// The 4-bit scan with the selection fused in (twin of `scan4_select` in scan4.cu;
// warp_queue.wgsl is prepended by the host): `scan8.wgsl` `fused`'s shape (one workgroup of
// 32 invocations per (query, part of its probes), the workgroup's queue, the best `keep` at
// (q · parts + p) · keep, sorted), each probe's u8 table quantized in workgroup memory as
// `quantized` quantizes it (`quantize_item`); deleted entries are not offered. It selects
// the entries `quantized` and the strided rounds select. M ≤ 128 (the host checks).
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
    let n = m * 16u;
    let q0 = q * n;
    wq_init(lane, part.k);
    var step = 0u;
    for (var j = part.first; j < part.last; j++) {
        let at = q * part.nprobe + j;
        let l = probe_payload[at].y;
        let l0 = l * n;
        let place = places[l];
        var bias = 0.0;
        if (part.by_residual) {
            bias = probe_score[at];
        }
        // The previous item's reads of `lut` and `item_len4` are done before they are
        // rewritten.
        workgroupBarrier();
        if (lane == 0u) {
            item_len4 = place.z;
        }
        var start = 0.0;
        var offset = bias;
        if (part.l2) {
            start = bias;
            offset = 0.0;
        }
        quantize_item(lane, LANES, q0, l0, m, part.l2, start);
        let len = workgroupUniformLoad(&item_len4);
        let base = base_scale.x;
        let scale = base_scale.y;
        for (var b0 = 0u; b0 < len; b0 += LANES) {
            let i = b0 + lane;
            let slot = place.y + i;
            var has = i < len;
            if (has) {
                has = ((dead[slot >> 5u] >> (slot & 31u)) & 1u) == 0u;
            }
            var s = 0.0;
            if (has) {
                s = score4(place.x, i, m, base, scale, offset);
            }
            wq_offer(lane, has, s, vec2<u32>(0u, slot), part.k, part.t, step);
            step += 1u;
        }
    }
    wq_finish(lane, part.k, part.t, step);
    wq_write(lane, part.keep, w * part.keep);
}
