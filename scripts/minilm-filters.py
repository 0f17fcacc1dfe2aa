#!/usr/bin/env python3
"""Payloads and filters for filtered-search benchmarks on data/minilm-pydocs.

usage: python3 scripts/minilm-filters.py DATA_DIR OUT_DIR [--seed 7]

Writes into OUT_DIR:
  payload.jsonl        one object per base row, in row order:
                       {"source": top-level package, "module": dotted module, "n": 0..999}
                       (`n` drawn with Python's random.Random(seed))
  filters.json         the benchmark's filter sets, each {"name", "target", "kind", "file"}
  <name>.jsonl         one Qdrant-syntax filter per query line (1,000 lines)

Selectivities 0.5%, 1%, 10%, 50%, each in three kinds:
  range      uncorrelated with the query: `n` in [0, 1000·s)
  package    uncorrelated: packages drawn at random (seeded) until they hold ≈ s of the base
  own        correlated: the query's own package (its `source` in passages.jsonl.gz). When that
             package holds more than s, it is narrowed by an `n` range to ≈ s; when less, the
             points with `n` in a range are added (should) to reach ≈ s.
"""
import argparse, collections, gzip, json, os, random


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    base, query = [], []
    with gzip.open(os.path.join(a.data_dir, "passages.jsonl.gz"), "rt") as f:
        for line in f:
            d = json.loads(line)
            (base if d["split"] == "base" else query).append(d)
    base.sort(key=lambda d: d["id"])
    query.sort(key=lambda d: d["id"])
    n = len(base)
    rng = random.Random(a.seed)
    ints = [rng.randrange(1000) for _ in range(n)]
    pkg = [d["source"].split(".")[0] for d in base]
    with open(os.path.join(a.out_dir, "payload.jsonl"), "w") as f:
        for d, p, i in zip(base, pkg, ints):
            f.write(json.dumps({"source": p, "module": d["source"], "n": int(i)}) + "\n")
    share = {p: c / n for p, c in collections.Counter(pkg).items()}
    qpkg = [d["source"].split(".")[0] for d in query]

    def key_match(p):
        return {"key": "source", "match": {"value": p}}

    def key_range(lo, hi):
        return {"key": "n", "range": {"gte": lo, "lt": hi}}

    sets = []
    prng = random.Random(a.seed)
    for s in [0.005, 0.01, 0.10, 0.50]:
        tag = f"{s * 100:g}".replace(".", "_")
        rows = {}
        hi = max(1, round(1000 * s))
        rows["range"] = [{"must": [key_range(0, hi)]}] * len(query)
        # Packages at random until they hold about s of the base.
        names = sorted(share)
        prng.shuffle(names)
        chosen, total = [], 0.0
        for p in names:
            if total + share[p] <= s * 1.15:
                chosen.append(p)
                total += share[p]
            if total >= s * 0.85:
                break
        rows["package"] = [{"must": [{"key": "source", "match": {"any": chosen}}]}] * len(query)
        own = []
        for p in qpkg:
            sp = share.get(p, 0.0)
            if sp >= s:
                cut = max(1, round(1000 * s / sp))
                own.append({"must": [key_match(p), key_range(0, cut)]})
            else:
                # own package, or the points with n in [0, t): sp + (1 - sp)·t/1000 ≈ s
                t = max(1, round(1000 * (s - sp) / (1 - sp)))
                own.append({"should": [key_match(p), key_range(0, t)]})
        rows["own"] = own
        for kind, filters in rows.items():
            name = f"{kind}-{tag}"
            with open(os.path.join(a.out_dir, name + ".jsonl"), "w") as f:
                for flt in filters:
                    f.write(json.dumps(flt, separators=(",", ":")) + "\n")
            sets.append({"name": name, "target": s, "kind": kind, "file": name + ".jsonl"})
    with open(os.path.join(a.out_dir, "filters.json"), "w") as f:
        json.dump(sets, f, indent=1)
    print(f"wrote payloads for {n} rows and {len(sets)} filter sets to {a.out_dir}")


if __name__ == "__main__":
    main()
