#!/usr/bin/env python3
"""The device-resident search's roofline: every byte each kernel moves per query, where it
comes from (HBM, L2, shared memory, the bus), launches per batch, and the bounds those put
on queries per second for a GPU's bandwidths (docs/GPU.md, "Roofline").

The model follows kernels/src/resident.rs stage by stage (the WGSL path is the same). Lists
are taken as equal in size (E = N · nprobe / nlist entries scanned per query); real lists
are uneven, so E is a floor. What the emulator counts (launches, bus bytes) the script
prints too, so the two can be compared: `cargo test -p quiver-kernels --test counters --
--ignored` on the emulator gives 9 launches and 1,656 bus bytes per query for the 100k
case below.

usage: scripts/roofline.py [--n N] [--dim D] [--nlist L] [--m M] [--bits 8|4] [--nprobe P ...]
                           [--k K] [--refine R] [--batch B] [--l2] [--gpu h100]
"""
import argparse
import math

# Bandwidths (bytes/s) and FP32 rate: H100 SXM (HBM3 3.35 TB/s; L2 read ≈ 5.5 TB/s as
# microbenchmarks measure it; shared memory 128 B/clock/SM × 132 SMs × 1.98 GHz).
GPUS = {
    "h100": {"hbm": 3.35e12, "l2": 5.5e12, "smem": 33.4e12, "fma": 33.5e12, "l2_bytes": 50e6},
    "a100": {"hbm": 2.0e12, "l2": 4.0e12, "smem": 19.5e12, "fma": 9.7e12, "l2_bytes": 40e6},
}


def select_launches(row, keep):
    """Rounds of select_strided over rows of `row` entries keeping `keep` (chunk: the larger
    of 8 · keep and 8,192 entries, one warp each; every round but the last shrinks a row to
    chunks × keep)."""
    chunk = max(8 * keep, 8192)
    rounds = 1
    while row > chunk:
        row = math.ceil(row / chunk) * keep
        rounds += 1
    return rounds


def model(n, dim, nlist, m, bits, nprobe, k, refine, batch, l2, raw_bytes=2):
    e = n * nprobe / nlist  # entries scanned per query
    keep = k * refine
    mp = math.ceil(m / 16) * 16 if bits == 8 else m  # interleaved 8-bit codes pad M to 16
    code = mp if bits == 8 else m / 2
    ksub = 256 if bits == 8 else 16
    table = 4 * m * ksub  # one query's f32 tables
    rows = []  # (stage, hbm, l2, smem, fma) bytes / FMAs per query

    # Coarse: 64 × 64 tiles; each block reads its 64 queries' and 64 centroids' dims from L2;
    # per dimension 8 shared loads serve 16 products; rows of (score, payload) out.
    rows.append(("coarse_distances", 12 * nlist, 4 * dim * nlist / 64 * 2,
                 4 * nlist * dim / 2, nlist * dim))
    rows.append(("select (probes)", 12 * nlist + 12 * nprobe, 0, 0, 0))
    # Tables: each of M · ksub threads reads dsub codebook floats and dsub query floats.
    rows.append(("lookup_tables", table, 2 * ksub * dim * 4, 0, ksub * dim))
    rows.append(("scan_items", 0, 28 * nprobe + 32 * nprobe, 0, 0))
    if bits == 8:
        # A block takes `group` consecutive items (engine::backend::scan_items_per_block) and
        # stages the query's table in shared memory (from L2) once per query it meets —
        # with L2 once per item, the list's terms folded in; per entry M shared reads; codes
        # from HBM; rows of (score, payload) out.
        group = min(max(batch * nprobe // 2048, 1), 8)
        stagings = nprobe if l2 else min(nprobe, math.ceil(nprobe / group) + 1)
        stage = stagings * table * (2 if l2 else 1)
        rows.append(("scan8", code * e + e / 8 + 12 * e, stage, stagings * table + 4 * m * e, 0))
    else:
        # Each item builds and quantizes its (query, list) table in shared memory from the
        # f32 table (L2); per entry M/2 code bytes and M u8 lookups.
        stage = nprobe * table * (2 if l2 else 1)
        rows.append(("scan4_quantized", code * e + e / 8 + 12 * e, stage,
                     nprobe * m * ksub * 6 + m * e, 0))
    rows.append(("select (candidates)", 12 * e + 12 * keep, 0, 0, 0))
    rows.append(("refine_candidates", keep * (raw_bytes * dim + 8 + 12) + 12 * keep, 4 * dim, 0,
                 keep * dim))
    rows.append(("select (final)", 12 * keep + 12 * k, 0, 0, 0))
    launches = (1 + select_launches(nlist, nprobe) + 1 + 1 + 1
                + select_launches(e, keep) + 1 + select_launches(keep, k))
    bus = 4 * dim + 12 * k
    return rows, launches, bus, e


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
    ap.add_argument("--l2", action="store_true", help="L2 metric (adds the list terms)")
    ap.add_argument("--gpu", default="h100", choices=sorted(GPUS))
    a = ap.parse_args()
    g = GPUS[a.gpu]
    for p in a.nprobe:
        rows, launches, bus, e = model(a.n, a.dim, a.nlist, a.m, a.bits, p, a.k, a.refine, a.batch, a.l2)
        print(f"N {a.n:,} d {a.dim} IVF{a.nlist} PQ{a.m}x{a.bits} nprobe {p} k {a.k} refine x{a.refine}"
              f" {'l2' if a.l2 else 'ip'}: {e:,.0f} entries scanned per query")
        print(f"  {'stage':<22} {'HBM KB':>10} {'L2 KB':>10} {'smem KB':>10} {'MFMA':>8}")
        tot = [0.0, 0.0, 0.0, 0.0]
        for name, *v in rows:
            tot = [t + x for t, x in zip(tot, v)]
            print(f"  {name:<22} {v[0] / 1e3:>10.1f} {v[1] / 1e3:>10.1f} {v[2] / 1e3:>10.1f} {v[3] / 1e6:>8.2f}")
        print(f"  {'total':<22} {tot[0] / 1e3:>10.1f} {tot[1] / 1e3:>10.1f} {tot[2] / 1e3:>10.1f} {tot[3] / 1e6:>8.2f}")
        bounds = {"HBM": g["hbm"] / tot[0], "L2": g["l2"] / tot[1], "shared": g["smem"] / tot[2],
                  "FMA": g["fma"] / max(tot[3], 1)}
        limit = min(bounds, key=bounds.get)
        print("  bounds (queries/s): " + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in bounds.items())
              + f"; the bound is {limit}: {bounds[limit] / 1e6:.2f} M queries/s on {a.gpu}")
        print(f"  per batch of {a.batch}: {launches} launches, bus {bus:,} bytes per query"
              f" ({4 * a.dim} of query, {12 * a.k} of results)")


if __name__ == "__main__":
    main()
