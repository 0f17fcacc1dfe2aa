#!/usr/bin/env python3
"""Per-kernel limits of the device-resident search, summed, beside the same model of cuVS's
IVF-PQ search (docs/GPU.md, "What that predicts on a data-centre GPU").

Each kernel of a batch runs after the one before it, so a query costs the SUM of the kernels'
times, and each kernel's time is the largest of its own limits:

  * HBM bytes / HBM bandwidth, L2 bytes / L2 bandwidth (what it reads from L2 and L1),
  * shared-memory wavefronts / the SMs' wavefront rate, where a warp's access costs as many
    wavefronts as its worst bank holds distinct words ("ways": random 8-bit codes gathering
    from a 256-word table row cost the expected maximum of 32 draws over 32 banks, ≈ 3.5),
  * FP32 operations / the FP32 rate (a fused multiply-add is one, a multiply and an add two),
  * warp instructions / the issue rate (selections: a compare per entry, then the bitonic
    sorts and merges of the WarpSelect queue's flushes).

Entries scanned per query come from the lists' sizes: a probe lands on a list with a chance
that grows with its size, so the expected list probed holds sum(s^2) / sum(s) entries, `skew`
times the mean (`--skew`, or `--list-sizes FILE` with one size per line; `quiver info` prints
the skew of an index). Launch gaps, tails and latency not hidden by occupancy are not in the
model: a measured rate is `scripts/gpu-check`'s job.

Quiver's structure follows kernels/src/resident.rs (the fused path: `coarse_select` keeping
each query's probes of a span of centroids in shared memory (nprobe ≤ 64; above it coarse
scores → probe selection rounds) → one merge round → `scan8_select` / `scan4_select` building the query's table per part of `group`
probes and selecting as it scores → one merge round → refine → final selection). cuVS's
follows its source as of 2026-07 (cpp/src/neighbors/ivf_pq: a cuBLAS coarse GEMM writing
f32 scores, select_k, the rotation GEMM, `compute_similarity` with one block per (query,
probe) that rebuilds the f32 lookup table from the codebook in shared memory and keeps a
fused top-k of capacity 128, writing k candidates per (query, probe), select_k over
n_probes × k, post-processing kernels). Both refine `k × refine` candidates the same way.

usage: scripts/roofline.py [--n N] [--dim D] [--nlist L] [--m M] [--bits 8|4] [--nprobe P ...]
                           [--k K] [--refine R] [--batch B] [--l2] [--skew S | --list-sizes F]
                           [--gpu h100|a100] [--quiver-only]
"""
import argparse
import math
import random

# Per second: HBM and L2 bytes, shared-memory wavefronts (one per SM per clock), FP32
# operations (128 lanes per SM per clock), warp instructions issued (4 per SM per clock).
GPUS = {
    "h100": {"sms": 132, "clock": 1.98e9, "hbm": 3.35e12, "l2": 5.5e12},
    "a100": {"sms": 108, "clock": 1.41e9, "hbm": 2.0e12, "l2": 4.0e12},
}

LANES = 32


def rates(g):
    per_clock = g["sms"] * g["clock"]
    return {"hbm": g["hbm"], "l2": g["l2"], "smem": per_clock, "fp32": 128 * per_clock,
            "issue": 4 * per_clock}


def gather_ways(words_per_row=256, trials=20000, seed=7):
    """Expected wavefronts of a warp gathering one random word each from a table row (distinct
    words in the same bank serialise; the same word is broadcast)."""
    rng = random.Random(seed)
    total = 0
    for _ in range(trials):
        banks = {}
        for _ in range(LANES):
            w = rng.randrange(words_per_row)
            banks.setdefault(w % 32, set()).add(w)
        total += max(len(v) for v in banks.values())
    return total / trials


WAYS_8BIT = gather_ways()
# The same gathers from compact 8-bit tables (docs/GPU.md, "Compact tables"): 256 f16 entries
# are 128 words, 256 u8 entries 64 (entries sharing a word are one broadcast).
TABLE_WAYS = {"f32": WAYS_8BIT, "f16": gather_ways(128), "u8": gather_ways(64)}


# A dependent step of a lone warp that waits on memory: a load from HBM (or from L2, for
# rows the previous kernel just wrote and L2 still holds), then the vote.
LATENCY = {"hbm": 600e-9, "l2": 300e-9}
# Steps whose loads a selection issues together (kernels/cuda/topk.cu `PREFETCH`).
PREFETCH = 4
# Warps an H100 keeps resident at once for the selections: 32 one-warp blocks per SM.
SELECT_WARPS = 132 * 32


def spread_parts(n, keep, rows):
    """Parts of a first selection round over rows of `n` entries (engine::topk::
    WarpSelectShape::spread_chunk: enough warps to fill an H100, chunks of at least 8·K)."""
    k_q = max(64, 1 << max(0, math.ceil(math.log2(max(keep, 1)))))
    parts = math.ceil(4096 / rows)
    chunk = 1 << max(0, math.ceil(math.log2(max(math.ceil(n / parts), 1))))
    chunk = min(max(chunk, 8 * k_q), max(8 * k_q, 8192))
    return math.ceil(n / chunk)


class Kernel:
    """One kernel's work per query; `latency`: seconds per query that a batch's chain of
    dependent steps takes at least (its warps' serial loops, spread over the batch)."""

    def __init__(self, name, hbm=0.0, l2=0.0, smem=0.0, fp32=0.0, issue=0.0, latency=0.0):
        self.name, self.hbm, self.l2, self.smem, self.fp32, self.issue = name, hbm, l2, smem, fp32, issue
        self.latency = latency

    def times(self, r):
        return {"HBM": self.hbm / r["hbm"], "L2": self.l2 / r["l2"], "shared": self.smem / r["smem"],
                "FP32": self.fp32 / r["fp32"], "issue": self.issue / r["issue"],
                "latency": self.latency}

    def time(self, r):
        t = self.times(r)
        limit = max(t, key=t.get)
        return t[limit], limit


def select_latency(n, parts, batch, level="hbm"):
    """A selection's chain: each warp reads its part 32 entries a step, a vote a step, the
    loads of PREFETCH steps issued together (topk.cu), so one memory latency per PREFETCH
    steps; `batch × parts` warps in waves of SELECT_WARPS."""
    warps = batch * parts
    waves = math.ceil(warps / SELECT_WARPS)
    steps = math.ceil(n / parts / LANES / PREFETCH)
    return waves * steps * LATENCY[level] / batch


# The largest nprobe the coarse product selects in shared memory, and its spans
# (engine::backend::COARSE_SELECT_MAX_KEEP, coarse_select_span).
COARSE_SELECT_MAX_KEEP = 64


def coarse_select_span(rows, nlist):
    query_tiles = max(math.ceil(rows / 128), 1)
    list_tiles = max(math.ceil(nlist / 128), 1)
    parts = min(max(math.ceil(256 / query_tiles), 1), list_tiles)
    return math.ceil(list_tiles / parts) * 128


def queue_shape(keep, passes=False):
    """A warp queue's K and T for `keep` (engine::topk::WarpSelectShape::for_keep, or
    `for_passes`: K ≥ 32, T = 1), and the warp steps of one flush: a bitonic sort of the 32·T
    staged entries and a merge into K."""
    k_q = max(32 if passes else 64, 1 << max(0, math.ceil(math.log2(max(keep, 1)))))
    t = 1 if passes else min(8, k_q // 32)
    stage = 32 * t
    steps = (stage / 2 / LANES) * (math.log2(stage) * (math.log2(stage) + 1) / 2) \
        + (k_q / 2 / LANES) * math.log2(k_q) + stage / LANES
    return k_q, t, steps


def passes_flushes(keep, tiles):
    """Flushes of a T = 1 queue offered `tiles` tiles of 128 entries, 32 a step (the coarse
    selection's per span): a step flushes when any lane keeps an entry. Tile 1 fills the
    queue (every entry kept); tile j > 1 keeps ≈ keep / (j − 1) of its 128 (an entry beats the
    keep-th best of 128 (j − 1) seen with that chance), spread over its 4 steps at random."""
    total = 0.0
    for j in range(1, tiles + 1):
        kept = 128 if j == 1 else min(128, keep / (j - 1))
        total += 4 * (1 - math.exp(-kept / 4))
    return total


def selection(name, n, keep, entry_bytes, read_from="hbm", writes=None, implicit=False,
              parts=None, batch=1024):
    """A WarpSelect pass over `n` entries keeping `keep` (one warp per row part): one read and
    one compare per entry (≈ 6 warp instructions per 32 entries), and the queue's flushes:
    ≈ keep · (1 + ln(n / keep)) insertions, a flush about every 16·T of them (the first full
    thread queue), each a bitonic sort of 32·T staged entries and a merge into K (≈ 12
    instructions and 8 shared wavefronts per compare-exchange step of 32 pairs)."""
    k_q, t, steps = queue_shape(keep)
    inserts = keep * (1 + math.log(max(n / keep, 1))) if n > keep else n
    flushes = max(1.0, inserts / (16 * t))
    issue = n / LANES * 6 + flushes * steps * 12
    smem = flushes * steps * 8
    read = n * (4 if implicit else entry_bytes)
    out = writes if writes is not None else keep * entry_bytes
    if parts is None:
        parts = math.ceil(n / max(8 * k_q, 8192))
    kw = {"hbm": out, "smem": smem, "issue": issue,
          "latency": select_latency(n, parts, batch, "hbm" if read_from == "hbm" else "l2")}
    kw[read_from] = kw.get(read_from, 0) + read
    return Kernel(name, **kw)


def refine_kernels(keep, k, dim, raw_bytes):
    return [
        Kernel("refine_candidates", hbm=keep * (raw_bytes * dim + 8 + 12) + 12 * keep,
               l2=4 * dim, fp32=keep * dim, issue=keep * dim / LANES * 3),
        selection("select (final)", keep, k, 12),
    ]


def quiver(a, nprobe, e):
    """Quiver's fused resident search, per query."""
    m, bits, dim, nlist = a.m, a.bits, a.dim, a.nlist
    keep = a.k * a.refine
    dsub = dim // m
    mp = math.ceil(m / 16) * 16 if bits == 8 else m
    code = mp if bits == 8 else m / 2
    ksub = 256 if bits == 8 else 16
    group = min(max(math.ceil(a.batch * nprobe / 4096), 1), nprobe)
    parts = math.ceil(nprobe / group)
    ks = []
    # Coarse: 128 × 128 tiles, per dimension 16 shared loads and 72 FFMA a thread (64 dot
    # products + 8 norms): 0.22 conflict-free wavefronts per warp FFMA; centroids and queries
    # from L2 once per 128-row tile.
    fma = nlist * dim * 72 / 64
    gemm = {"l2": 4 * dim * nlist / 128 * 2, "smem": 16 / 72 * fma / LANES, "fp32": fma,
            "issue": (1 + 16 / 72 + 0.05) * fma / LANES}
    if nprobe <= COARSE_SELECT_MAX_KEEP:
        # coarse_select: a block keeps each query's best nprobe of a span of centroids in a
        # shared-memory queue; per 128-list tile the half tile's scores are stored and read
        # (8 conflict-free wavefronts a query) and offered in 4 steps, each a flush when any
        # lane keeps an entry (T = 1). `nprobe` entries per span out, then one round merging
        # the spans.
        span = coarse_select_span(a.batch, nlist)
        spans = math.ceil(nlist / span)
        k_q, t, steps = queue_shape(nprobe, passes=True)
        flushes = spans * passes_flushes(nprobe, span // 128)
        ks.append(Kernel("coarse_select", hbm=spans * nprobe * 12, l2=gemm["l2"],
                         smem=gemm["smem"] + nlist / 128 * 8 + flushes * steps * 8,
                         fp32=fma, issue=gemm["issue"] + nlist / LANES * 6 + flushes * steps * 12))
        if spans > 1:
            ks.append(selection("select (probes, merge)", spans * nprobe, nprobe, 12))
    else:
        # coarse_distances: 4 bytes a list out, then the probe selection in rounds.
        ks.append(Kernel("coarse_distances", hbm=4 * nlist, **gemm))
        parts_p = spread_parts(nlist, nprobe, a.batch)
        ks.append(selection("select (probes)", nlist, nprobe, 12, implicit=True, parts=parts_p))
        if parts_p > 1:
            ks.append(selection("select (probes, merge)", parts_p * nprobe, nprobe, 12))
    # The fused scan: per part the query's table built in shared memory (codebook from L2,
    # dsub multiplies and adds per entry, unfused), with L2 the list terms folded per item;
    # per entry its code bytes (HBM), and the queue's compare; each part's `keep` candidates
    # out. 8-bit: per entry M table gathers (random words of a 256-word row, WAYS_8BIT
    # wavefronts a warp) and M adds (≈ 3 instructions a sub-quantizer). 4-bit: a thread
    # scores a quad of 4 entries with the sub-quantizer's u8 row in registers: per
    # sub-quantizer one broadcast 16-byte shared load for the warp's 128 entries (one
    # wavefront), ≈ 15 instructions (selector, two byte permutes, the mask, the pick, two
    # 16-bit-pair adds) and a quarter of a 16-byte code load per quad.
    table = m * ksub
    build_fp = parts * table * dsub * 2
    build_l2 = parts * table * dsub * 4
    fold = nprobe * table * 2 / LANES if a.l2 else 0
    quant = nprobe * table * 6 / LANES if bits == 4 else 0  # 4-bit: each item's quantization
    if bits == 8 and a.tables == "u8":
        # u8 tables: quantized as the 4-bit ones, once a part (IP) or an item (L2's fold).
        quant = (nprobe if a.l2 else parts) * table * 6 / LANES
    if bits == 8:
        ways = TABLE_WAYS[a.tables]
        entry_smem, per_entry_issue = m / LANES * ways, m * 3 / LANES + 6 / LANES
    else:
        entry_smem = m / (4 * LANES)
        per_entry_issue = m * (15 + 1 / 4) / 4 / LANES + 6 / LANES
    scan_sel = selection("(queue)", e / (parts * 8), keep, 12)
    ks.append(Kernel(
        "scan8_select" if bits == 8 else "scan4_select",
        hbm=e * code + e / 8 + parts * keep * 12,
        l2=build_l2 + nprobe * (16 + 8 + 4) + (nprobe * table * 4 if a.l2 else 0),
        smem=parts * table / LANES + fold + quant + e * entry_smem + parts * 8 * scan_sel.smem,
        fp32=build_fp + e * m,
        issue=build_fp / LANES + e * per_entry_issue + parts * 8 * (scan_sel.issue - e / (parts * 8) / LANES * 6),
    ))
    if parts > 1:
        ks.append(selection("select (merge parts)", parts * keep, keep, 12))
    ks += refine_kernels(keep, a.k, dim, 2)
    launches = len(ks)
    return ks, launches, parts


def cuvs(a, nprobe, e, codebook_in_l1=False):
    """cuVS's IVF-PQ search structure (module doc), per query; then the same refine. With
    `codebook_in_l1`, the LUT builds read the codebook at shared-memory speed (every read an
    L1 hit: the most its blocks could share), its best case."""
    m, bits, dim, nlist = a.m, a.bits, a.dim, a.nlist
    keep = a.k * a.refine
    dsub = dim // m
    code = m if bits == 8 else m / 2
    ksub = 256 if bits == 8 else 16
    dim_ext = math.ceil((dim + 1) / 8) * 8
    ks = [Kernel("map_offset (queries)", hbm=4 * dim + 4 * dim_ext, issue=dim_ext / LANES * 4)]
    # cuBLAS FP32 GEMM (no TF32 by default): FMA-bound at best; f32 scores out.
    ks.append(Kernel("coarse GEMM (cuBLAS)", hbm=4 * nlist, l2=4 * dim_ext * nlist / 128 * 2,
                     fp32=nlist * dim_ext, issue=nlist * dim_ext / LANES * 1.1))
    # raft's select_k here: warp-sort `block_kernel`, one 256-thread block (8 warps) a row.
    ks.append(selection("select_k (probes)", nlist, nprobe, 8, implicit=True, writes=8 * nprobe,
                        parts=8))
    ks.append(Kernel("rotation GEMM", hbm=4 * dim * 2, fp32=dim * dim))
    ks.append(Kernel("calc_chunk_indices", hbm=8 * nprobe, issue=nprobe / LANES * 10))
    if 1 + (a.batch - 1) * nprobe // (2 * nlist) > 1:
        # Blocks sorted by cluster: CUB radix sort of (label, index) pairs, 4 passes.
        ks.append(Kernel("sort probes (CUB)", hbm=8 * nprobe * 2 * 5, issue=nprobe * 20 / LANES))
    # compute_similarity: one block per (query, probe); per probe the base-diff (q and the
    # centre, 3 KB from L2), the LUT rebuilt from the whole codebook (L2: the blocks of an SM
    # share ≈ 28 KB of L1, far below it), dsub FMA + add per entry; per entry its code bytes,
    # M gathers (f32 LUT: random words, WAYS_8BIT; 4-bit: 16 words a row, one wavefront) and
    # adds, the top-k (capacity 128) compare; k candidates of 8 bytes out per probe.
    table = m * ksub
    build_fp = nprobe * table * dsub * 2
    ways = WAYS_8BIT if bits == 8 else 1.0
    sel = selection("(queue)", e / nprobe / 8, keep, 8)
    codebook_reads = nprobe * table * dsub * 4
    l1 = codebook_reads / 4 / LANES if codebook_in_l1 else 0
    ks.append(Kernel(
        "compute_similarity",
        hbm=e * code + nprobe * keep * 8,
        l2=nprobe * 3072 + (0 if codebook_in_l1 else codebook_reads),
        smem=nprobe * table / LANES + e * m / LANES * ways + nprobe * 8 * sel.smem + l1,
        fp32=build_fp + e * m,
        issue=build_fp / LANES + e * (m * 3 + 6) / LANES
        + nprobe * 8 * (sel.issue - e / nprobe / 8 / LANES * 6),
    ))
    ks.append(selection("select_k (candidates)", nprobe * keep, keep, 8, parts=8))
    ks.append(Kernel("postprocess", hbm=keep * 32, issue=keep * 20 / LANES))
    ks += refine_kernels(keep, a.k, dim, 2)
    launches = len(ks) + 1  # + the query_kths initialisation
    return ks, launches, nprobe


def show(title, kernels, r, launches):
    total = 0.0
    print(f"  {title}: {launches} launches a batch")
    print(f"    {'kernel':<24} {'HBM KB':>8} {'L2 KB':>8} {'smem kWF':>9} {'MFP32':>7} {'kInstr':>7} "
          f"{'ns/query':>9}  limit")
    for k in kernels:
        t, limit = k.time(r)
        total += t
        print(f"    {k.name:<24} {k.hbm / 1e3:>8.1f} {k.l2 / 1e3:>8.1f} {k.smem / 1e3:>9.2f} "
              f"{k.fp32 / 1e6:>7.2f} {k.issue / 1e3:>7.1f} {t * 1e9:>9.2f}  {limit}")
    print(f"    {'sum':<24} {'':>8} {'':>8} {'':>9} {'':>7} {'':>7} {total * 1e9:>9.2f}"
          f"  -> {1 / total / 1e6:.2f} M queries/s")
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--nlist", type=int, default=16384)
    ap.add_argument("--m", type=int, default=48)
    ap.add_argument("--bits", type=int, default=8, choices=[8, 4])
    ap.add_argument("--nprobe", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--refine", type=int, default=10)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--l2", action="store_true", help="L2 metric (list terms in the tables)")
    ap.add_argument("--skew", type=float, default=None,
                    help="sum(s^2)/sum(s) over the mean list size (default 1: equal lists)")
    ap.add_argument("--list-sizes", help="a file of list sizes, one a line (sets --skew)")
    ap.add_argument("--tables", default="f32", choices=sorted(TABLE_WAYS),
                    help="8-bit codes: the look-up tables' element type (f16, u8: compact tables, "
                    "not built yet; f32 today)")
    ap.add_argument("--gpu", default="h100", choices=sorted(GPUS))
    ap.add_argument("--quiver-only", action="store_true", help="skip the cuVS model")
    a = ap.parse_args()
    skew = a.skew if a.skew is not None else 1.0
    if a.list_sizes:
        sizes = [int(x) for x in open(a.list_sizes).read().split()]
        skew = sum(s * s for s in sizes) / sum(sizes) / (sum(sizes) / len(sizes))
    r = rates(GPUS[a.gpu])
    for p in a.nprobe:
        e = a.n / a.nlist * skew * p
        print(f"N {a.n:,} d {a.dim} IVF{a.nlist} PQ{a.m}x{a.bits} nprobe {p} k {a.k} refine x{a.refine}"
              f" {'l2' if a.l2 else 'ip'} batch {a.batch}: {e:,.0f} entries scanned per query"
              f" (list skew {skew:.2f}), {a.gpu}")
        if a.k * a.refine > 256:
            print("  note: k × refine > 256 runs the unfused scan (score rows and rounds), which"
                  " this model does not cover; the figures below are the fused path's")
        ks, launches, parts = quiver(a, p, e)
        tq = show(f"Quiver (fused scan: {parts} part(s) of {math.ceil(p / parts)} probes a query)",
                  ks, r, launches)
        line = f"  Quiver: the bound is {1 / tq / 1e6:.2f} M queries/s"
        if not a.quiver_only:
            ks, launches, _ = cuvs(a, p, e)
            tc = show("cuVS (its kernel structure, same model; the codebook read from L2 per "
                      "(query, probe))", ks, r, launches)
            ks, launches, _ = cuvs(a, p, e, codebook_in_l1=True)
            tb = show("cuVS, best case (every codebook read an L1 hit)", ks, r, launches)
            line += (f"; cuVS {1 / tc / 1e6:.2f} M (best case {1 / tb / 1e6:.2f} M);"
                     f" Quiver / cuVS = {tc / tq:.2f}x (best case {tb / tq:.2f}x)")
        print(line)


if __name__ == "__main__":
    main()
