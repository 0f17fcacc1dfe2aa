"""Several named dense vectors on ../shared/data/minilm-pydocs through Quiver's Qdrant API (see
scripts/named-vectors-eval): one collection holding each passage's MiniLM vector under two
names, `full` (384-d) and `half` (its first 192 values), both cosine, kept in the payload
and searched exactly; beside it a one-vector collection of the same vectors (IVF-PQ, trained
once all are in). Then for every query:

- `using: full` top-10 equal to a brute-force cosine ranking (numpy) of the 100,000 passages,
  and `using: half` likewise (ties in score may swap);
- recall@10 of each against the set's exact top-100 ground truth (`full` only);
- throughput and server CPU per query of the named-vector query and the one-vector
  collection's IVF-PQ query, 8 client threads.

Prints JSON lines; exit 1 when an equality fails.
"""

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from qdrant_client import QdrantClient, models


def fvecs(path):
    raw = np.fromfile(path, dtype=np.int32)
    dim = raw[0]
    return raw.reshape(-1, dim + 1)[:, 1:].view(np.float32)


def ivecs(path):
    raw = np.fromfile(path, dtype=np.int32)
    k = raw[0]
    return raw.reshape(-1, k + 1)[:, 1:]


def server_cpu(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--grpc", required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--queries", type=int, default=1000)
    a = p.parse_args()
    d = Path(a.data)
    base = np.concatenate([fvecs(d / "base-00.fvecs"), fvecs(d / "base-01.fvecs")])
    queries = fvecs(d / "query.fvecs")[: a.queries]
    truth = ivecs(d / "groundtruth.ivecs")[: a.queries]
    n, dim = base.shape
    half = dim // 2
    host, port = a.grpc.rsplit(":", 1)
    c = QdrantClient(host=host, grpc_port=int(port), prefer_grpc=True, timeout=600)

    t0 = time.time()
    c.create_collection(
        "named",
        vectors_config={
            "full": models.VectorParams(size=dim, distance=models.Distance.COSINE),
            "half": models.VectorParams(size=half, distance=models.Distance.COSINE),
        },
    )
    c.create_collection(
        "one",
        vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
        metadata={"quiver": {"nlist": 1024, "pq_m": 48, "refine": "f16", "train_at": n}},
    )
    step = 2000
    for s in range(0, n, step):
        ids = list(range(s, min(n, s + step)))
        c.upsert(
            "named",
            points=[models.PointStruct(id=i, vector={"full": base[i].tolist(), "half": base[i, :half].tolist()}) for i in ids],
        )
        c.upsert("one", points=[models.PointStruct(id=i, vector=base[i].tolist()) for i in ids])
    # Trained (every vector in the IVF-PQ index) and done.
    while True:
        info = c.get_collection("one")
        if info.status == models.CollectionStatus.GREEN and (info.indexed_vectors_count or 0) >= n:
            break
        time.sleep(1)
    print(json.dumps({"loaded": n, "seconds": round(time.time() - t0, 1)}), flush=True)

    ok = True
    full_u, half_u = unit(base), unit(base[:, :half])
    hits = 0
    for name, mat, qs in [("full", full_u, unit(queries)), ("half", half_u, unit(queries[:, :half]))]:
        bad = 0
        for qi, q in enumerate(qs):
            sims = mat @ q
            want = np.argsort(-sims, kind="stable")[:10]
            got = c.query_points("named", query=(queries[qi] if name == "full" else queries[qi, :half]).tolist(), using=name, limit=10).points
            got_ids = [pt.id for pt in got]
            # Equal, but where scores tie within float error.
            if got_ids != want.tolist():
                tied = all(abs(sims[g] - sims[w]) <= 1e-5 for g, w in zip(got_ids, want))
                if not tied:
                    bad += 1
            if name == "full":
                hits += len(set(got_ids) & set(truth[qi, :10].tolist()))
        print(json.dumps({"space": name, "queries": len(qs), "top10_equal_brute_force": len(qs) - bad}), flush=True)
        ok &= bad == 0
    print(json.dumps({"space": "full", "recall_at_10": round(hits / (10 * len(queries)), 4)}), flush=True)

    def run(label, fn):
        cpu0, t0 = server_cpu(a.pid), time.time()
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(fn, range(len(queries))))
        wall, cpu = time.time() - t0, server_cpu(a.pid) - cpu0
        print(json.dumps({"mode": label, "qps": round(len(queries) / wall, 1),
                          "server_cpu_ms_per_query": round(1000 * cpu / len(queries), 3)}), flush=True)

    run("named full (exact)", lambda i: c.query_points("named", query=queries[i].tolist(), using="full", limit=10))
    run("named half (exact)", lambda i: c.query_points("named", query=queries[i, :half].tolist(), using="half", limit=10))
    run("one-vector IVF-PQ", lambda i: c.query_points("one", query=queries[i].tolist(), limit=10))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
