"""Hybrid retrieval on ../shared/data/minilm-pydocs through Quiver's Qdrant API (see
scripts/hybrid-eval): dense MiniLM vectors and BM25 sparse vectors of the passages' text in
one collection, then for every query passage:

- relevance labels: the base passages from the query's own module (`source`), a label set
  built from the data (recall@10 is capped: relevant found in the top 10 / min(10, relevant));
- dense-only, sparse-only (BM25: document weights here, idf by the collection's `idf`
  modifier) and RRF over both (prefetch 20 each), recall@10 of each;
- RRF equal to qdrant-client local mode's fusion of the same two candidate lists;
- sparse top-10 equal to a brute-force dot product over every passage (numpy, idf computed
  here);
- throughput and server CPU per query of each mode, 8 client threads.

Prints JSON lines; exit 1 when an equality fails.
"""

import argparse
import collections
import gzip
import json
import math
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.hybrid.fusion import reciprocal_rank_fusion

TOKEN = re.compile(r"[a-z0-9]+")
STOP = set(
    "a an and are as at be by for from has have if in into is it its of on or that the their "
    "then there these this to was were which will with not can may be been when where who whose "
    "all any each than such also only other one two used use using".split()
)
K1, B = 1.2, 0.75


def fvecs(path):
    raw = np.fromfile(path, dtype=np.int32)
    dim = raw[0]
    return raw.reshape(-1, dim + 1)[:, 1:].view(np.float32)


def tokens(text):
    return [t for t in TOKEN.findall(text.lower()) if len(t) > 1 and t not in STOP]


class Bm25:
    """Term ids and BM25 document weights (idf is the collection's modifier)."""

    def __init__(self, docs):
        self.vocab = {}
        toks = [tokens(d) for d in docs]
        self.avgdl = sum(len(t) for t in toks) / max(1, len(toks))
        self.docs = [self.doc(t) for t in toks]

    def term(self, t, add):
        if t not in self.vocab:
            if not add:
                return None
            self.vocab[t] = len(self.vocab)
        return self.vocab[t]

    def doc(self, toks):
        tf = collections.Counter(toks)
        dl = len(toks)
        out = {}
        for t, n in tf.items():
            out[self.term(t, True)] = n * (K1 + 1) / (n + K1 * (1 - B + B * dl / self.avgdl))
        idx = sorted(out)
        return models.SparseVector(indices=idx, values=[float(out[i]) for i in idx])

    def query(self, text):
        idx = sorted({i for i in (self.term(t, False) for t in tokens(text)) if i is not None})
        return models.SparseVector(indices=idx, values=[1.0] * len(idx))


def brute_sparse(bm, q, k):
    """Exact top-k by dot product with idf-weighted query terms, over every passage."""
    if not hasattr(bm, "post"):
        post = collections.defaultdict(lambda: ([], []))
        for row, d in enumerate(bm.docs):
            for i, v in zip(d.indices, d.values):
                post[i][0].append(row)
                post[i][1].append(v)
        bm.post = {i: (np.array(r), np.array(v, dtype=np.float64)) for i, (r, v) in post.items()}
        bm.n = sum(1 for d in bm.docs if d.indices)
    scores = np.zeros(len(bm.docs))
    hit = np.zeros(len(bm.docs), dtype=bool)
    for i, w in zip(q.indices, q.values):
        rows, vals = bm.post.get(i, (np.array([], dtype=int), np.array([])))
        df = len(rows)
        idf = math.log((bm.n - df + 0.5) / (df + 0.5) + 1)
        scores[rows] += w * idf * vals
        hit[rows] = True
    cand = np.nonzero(hit)[0]
    order = cand[np.argsort(-scores[cand], kind="stable")]
    return [(int(r), float(scores[r])) for r in order[:k]], scores


def server_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / 100.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--grpc", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--queries", type=int, default=1000)
    a = ap.parse_args()
    d = Path(a.data)
    base = np.concatenate([fvecs(d / "base-00.fvecs"), fvecs(d / "base-01.fvecs")])
    qvecs = fvecs(d / "query.fvecs")
    rows = [json.loads(l) for l in gzip.open(d / "passages.jsonl.gz", "rt")]
    btext = {r["id"]: r for r in rows if r["split"] == "base"}
    qtext = {r["id"]: r for r in rows if r["split"] == "query"}
    n = len(base)
    bm = Bm25([btext[i]["text"] for i in range(n)])
    by_source = collections.defaultdict(set)
    for i in range(n):
        by_source[btext[i]["source"]].add(i)

    host, port = a.grpc.rsplit(":", 1)
    c = QdrantClient(host=host, grpc_port=int(port), prefer_grpc=True, timeout=600)
    name = "pydocs"
    c.create_collection(
        name,
        vectors_config={"dense": models.VectorParams(size=base.shape[1], distance=models.Distance.COSINE)},
        sparse_vectors_config={"bm25": models.SparseVectorParams(modifier=models.Modifier.IDF)},
        metadata={"quiver": {"nlist": 1024, "pq_m": 48, "refine": "f16", "train_at": n}},
    )
    t0 = time.time()
    for s in range(0, n, 1000):
        c.upsert(name, points=[
            models.PointStruct(id=i, vector={"dense": base[i].tolist(), "bm25": bm.docs[i]},
                               payload={"source": btext[i]["source"]})
            for i in range(s, min(n, s + 1000))
        ])
    while True:
        info = c.get_collection(name)
        if info.indexed_vectors_count == n and info.status == models.CollectionStatus.GREEN:
            break
        time.sleep(1)
    print(json.dumps({"loaded": n, "vocab": len(bm.vocab), "seconds": round(time.time() - t0, 1)}), flush=True)

    nq = min(a.queries, len(qvecs))
    dense_params = models.SearchParams(hnsw_ef=32)
    recall = collections.defaultdict(list)
    failures = []
    sparse_checked = 0
    for qi in range(nq):
        rel = by_source[qtext[qi]["source"]]
        dq = qvecs[qi].tolist()
        sq = bm.query(qtext[qi]["text"])
        prefetch = [models.Prefetch(query=dq, using="dense", limit=20, params=dense_params)]
        if sq.indices:
            prefetch.append(models.Prefetch(query=sq, using="bm25", limit=20))
        dense = c.query_points(name, query=dq, using="dense", limit=10, search_params=dense_params).points
        sparse = c.query_points(name, query=sq, using="bm25", limit=10).points if sq.indices else []
        fused = c.query_points(name, prefetch=prefetch, query=models.FusionQuery(fusion=models.Fusion.RRF),
                               limit=10).points
        if rel:
            cap = min(10, len(rel))
            for mode, pts in (("dense", dense), ("sparse", sparse), ("rrf", fused)):
                recall[mode].append(len({p.id for p in pts} & rel) / cap)
        # Local mode's RRF of the same candidates.
        cands = [c.query_points(name, query=p.query, using=p.using, limit=20,
                                search_params=p.params).points for p in prefetch]
        want = reciprocal_rank_fusion(cands, limit=10)
        same = [p.id for p in fused] == [p.id for p in want] and all(
            abs(x.score - y.score) < 1e-6 for x, y in zip(fused, want))
        if not same:
            failures.append(f"query {qi}: rrf {[(p.id, p.score) for p in fused]} != local {[(p.id, p.score) for p in want]}")
        # Sparse exactness: scores equal, ids among those scoring at least the 10th.
        if sq.indices:
            sparse_checked += 1
            exact, all_scores = brute_sparse(bm, sq, 10)
            got = [round(p.score, 3) for p in sparse]
            ref = [round(s, 3) for _, s in exact]
            tenth = exact[-1][1] if exact else 0.0
            ok = np.allclose(got, ref, rtol=1e-4, atol=1e-3) and len(got) == len(ref) and all(
                all_scores[p.id] >= tenth - 1e-3 for p in sparse)
            if not ok:
                failures.append(f"query {qi}: sparse {list(zip([p.id for p in sparse], got))} != exact {exact}")
    print(json.dumps({
        "queries": nq,
        "labelled": len(recall["dense"]),
        "recall@10": {m: round(float(np.mean(v)), 4) for m, v in recall.items()},
        "rrf_equal_to_local_mode": nq - sum(f.count("rrf") for f in failures),
        "sparse_exact": sparse_checked - sum("sparse" in f for f in failures),
        "sparse_checked": sparse_checked,
    }), flush=True)

    # Throughput: 8 client threads, each mode over the same queries.
    def run(mode):
        def one(qi):
            dq = qvecs[qi].tolist()
            sq = bm.query(qtext[qi]["text"])
            if mode == "dense" or not sq.indices:
                c.query_points(name, query=dq, using="dense", limit=10, search_params=dense_params)
            elif mode == "sparse":
                c.query_points(name, query=sq, using="bm25", limit=10)
            else:
                c.query_points(name, prefetch=[
                    models.Prefetch(query=dq, using="dense", limit=20, params=dense_params),
                    models.Prefetch(query=sq, using="bm25", limit=20)],
                    query=models.FusionQuery(fusion=models.Fusion.RRF), limit=10)
        cpu0, t0 = server_cpu(a.pid), time.time()
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(one, range(nq)))
        wall, cpu = time.time() - t0, server_cpu(a.pid) - cpu0
        return {"mode": mode, "qps": round(nq / wall, 1), "server_cpu_ms_per_query": round(1000 * cpu / nq, 3)}

    for mode in ("dense", "sparse", "rrf", "dense", "sparse", "rrf"):
        print(json.dumps(run(mode)), flush=True)
    for f in failures[:20]:
        print("FAIL " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
