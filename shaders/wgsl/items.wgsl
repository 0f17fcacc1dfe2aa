// The device-resident search's work items, built where the probes are (twin of `scan_items`
// in kernels/cuda/scan8.cu): one invocation per query walks its `nprobe` probed lists in
// order (the coarse selection's output row: payload (0, list), best first) and writes one
// `scan8.wgsl` item per list, its entries placed one after another in the query's row of the
// scan output (rows `stride` apart: the host sizes `stride` by the longest row possible), and
// the row's length. `places` holds (first code byte, global slot of the first entry, entries,
// 0) per list.

struct Item {
    table: u32,
    byte_off: u32,
    len: u32,
    gslot: u32,
    terms: u32,
    out: u32,
    bias: f32,
    dead_off: u32,
}

struct Params {
    nq: u32,
    nprobe: u32,
    stride: u32,
    table_len: u32,
    by_residual: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read> probe_payload: array<vec2<u32>>;
@group(0) @binding(1) var<storage, read> probe_score: array<f32>;
@group(0) @binding(2) var<storage, read> places: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> items: array<Item>;
@group(0) @binding(4) var<storage, read_write> row_len: array<u32>;
@group(0) @binding(5) var<uniform> params: Params;

@compute @workgroup_size(128)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let q = (wid.x + wid.y * 65535u) * 128u + lid;
    if (q >= params.nq) {
        return;
    }
    var out = 0u;
    for (var j = 0u; j < params.nprobe; j++) {
        let at = q * params.nprobe + j;
        let l = probe_payload[at].y;
        let pl = places[l];
        var bias = 0.0;
        if (params.by_residual != 0u) {
            bias = probe_score[at];
        }
        items[at] = Item(q, pl.x, pl.z, pl.y, l * params.table_len, q * params.stride + out, bias, 0u);
        out += pl.z;
    }
    row_len[q] = out;
}
