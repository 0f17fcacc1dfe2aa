// 4-bit fast-scan list scan: exact integer sums of u8-quantized tables over block-packed codes.
//
// Same layout as the CPU fast-scan (blocks of 32 entries, `M × 16` bytes; byte `j` of
// sub-quantizer `m` holds entry `j`'s code in its low nibble and entry `j + 16`'s in its high
// nibble) and the same quantized tables (quantized on the host by the CPU code), so the u32
// sum equals the CPU's u16 sum and the score `base + sum / scale + offset` is computed with
// the same operations. One workgroup per (query, probed list); deleted entries score +inf.
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
        let b0 = it.byte_off + block * m * 16u + (v % 16u);
        var sum = 0u;
        for (var s = 0u; s < m; s++) {
            let nib = (code_byte(b0 + s * 16u) >> shift) & 15u;
            sum += table_byte(t0 + s * 16u + nib);
        }
        out_score[it.out + i] = (qp.x + f32(sum) / qp.y) + it.offset;
        out_payload[it.out + i] = vec2<u32>(0u, slot);
    }
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
        let block = i / 32u;
        let v = i % 32u;
        let shift = select(0u, 4u, v >= 16u);
        let b0 = it.byte_off + block * m * 16u + (v % 16u);
        var sum = 0u;
        for (var s = 0u; s < m; s++) {
            let nib = (code_byte(b0 + s * 16u) >> shift) & 15u;
            sum += lut_byte(s * 16u + nib);
        }
        out_score[it.out + i] = (base + f32(sum) / scale) + offset;
        out_payload[it.out + i] = vec2<u32>(0u, slot);
    }
}

// The bindings of `quantized` beside `codes`, `items`, `dead` and the outputs.
@group(0) @binding(8) var<storage, read> ftables: array<f32>; // M × 16 per query
@group(0) @binding(9) var<storage, read> terms: array<f32>;   // L2: M × 16 per list
// x: M, y: l2, z: items.
@group(0) @binding(10) var<uniform> qparams2: vec4<u32>;

const QM_MAX: u32 = 128u; // sub-quantizers the workgroup arrays below hold

var<workgroup> ftab: array<f32, 2048>; // QM_MAX × 16
var<workgroup> sub_lo: array<f32, 128>;
var<workgroup> sub_range: array<f32, 128>;
var<workgroup> base_scale: vec2<f32>;

// The device-resident search's 4-bit scan (twin of `scan4_quantized` in kernels/cuda/scan4.cu):
// `main` with each item's u8 table quantized here by the CPU's operations
// (`QuantizedTable::quantize`): the float table (L2: the list's terms + the query's table),
// each sub-table's minimum and range, thread 0 summing the minima in order from the starting
// base (the coarse term for L2, 0 for inner product, whose coarse term is added to the score)
// and taking the widest range, scale = 255 / range, values trunc(clamp((x − min) · scale +
// 0.5, 0, 255)) packed four to a word in `lut`. M ≤ 128 (the host checks).
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
    let n = m * 16u;
    let t0 = it.table * n;
    for (var i = tid; i < n; i += 256u) {
        var x = ftables[t0 + i];
        if (l2) {
            x = terms[it.terms + i] + x;
        }
        ftab[i] = x;
    }
    workgroupBarrier();
    for (var s = tid; s < m; s += 256u) {
        var a = ftab[s * 16u];
        var b = a;
        for (var j = 1u; j < 16u; j++) {
            let x = ftab[s * 16u + j];
            a = select(a, x, x < a);
            b = select(b, x, x > b);
        }
        sub_lo[s] = a;
        sub_range[s] = b - a;
    }
    workgroupBarrier();
    if (tid == 0u) {
        var base = 0.0;
        if (l2) {
            base = it.offset;
        }
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
    for (var wd = tid; wd < n / 4u; wd += 256u) {
        var word = 0u;
        for (var j = 0u; j < 4u; j++) {
            let i = wd * 4u + j;
            var y = (ftab[i] - sub_lo[i / 16u]) * scale + 0.5;
            y = select(0.0, y, y >= 0.0);
            y = select(255.0, y, y <= 255.0);
            word = word | (u32(y) << (8u * j));
        }
        lut[wd] = word;
    }
    workgroupBarrier();
    var offset = it.offset;
    if (l2) {
        offset = 0.0;
    }
    score_entries(it, m, base_scale.x, scale, offset, tid);
}
