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
    pad: u32,
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
    for (var i = tid; i < it.len; i += 256u) {
        let slot = it.gslot + i;
        if (((dead[slot >> 5u] >> (slot & 31u)) & 1u) == 1u) {
            out_score[it.out + i] = bitcast<f32>(0x7f800000u);
            out_payload[it.out + i] = vec2<u32>(0xffffffffu, 0xffffffffu);
            continue;
        }
        let block = i / 32u;
        let v = i % 32u;
        let shift = select(0u, 4u, v >= 16u);
        let b0 = it.byte_off + block * m * 16u + (v % 16u);
        var sum = 0u;
        if (staged) {
            for (var s = 0u; s < m; s++) {
                let nib = (code_byte(b0 + s * 16u) >> shift) & 15u;
                sum += lut_byte(s * 16u + nib);
            }
        } else {
            for (var s = 0u; s < m; s++) {
                let nib = (code_byte(b0 + s * 16u) >> shift) & 15u;
                sum += table_byte(t0 + s * 16u + nib);
            }
        }
        out_score[it.out + i] = (qp.x + f32(sum) / qp.y) + it.offset;
        out_payload[it.out + i] = vec2<u32>(0u, slot);
    }
}
