"""Loads ../shared/data/minilm-pydocs through qdrant-client and compares recall@10 of its
query_points with Quiver's own Search at the same parameters (see scripts/bench-qdrant)."""

import argparse
import json
import sys
import time
from pathlib import Path

import grpc
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


def native_stub(addr):
    """Quiver's own API (stubs generated from the repo's .proto)."""
    import importlib
    import tempfile
    import grpc_tools
    from grpc_tools import protoc

    root = Path(__file__).resolve().parents[1] / "server" / "proto"
    out = tempfile.mkdtemp()
    rc = protoc.main(["protoc", f"-I{root}", f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
                      f"--python_out={out}", f"--grpc_python_out={out}", str(root / "quiver/v1/quiver.proto")])
    assert rc == 0
    sys.path.insert(0, out)
    pb2 = importlib.import_module("quiver.v1.quiver_pb2")
    pb2_grpc = importlib.import_module("quiver.v1.quiver_pb2_grpc")
    return pb2, pb2_grpc.QuiverStub(grpc.insecure_channel(addr))


def recall(found, truth, k=10):
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--native", required=True)
    ap.add_argument("--qdrant", required=True)
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--refine", type=int, default=10)
    a = ap.parse_args()
    d = Path(a.data)
    base = np.concatenate([fvecs(d / "base-00.fvecs"), fvecs(d / "base-01.fvecs")])
    queries = fvecs(d / "query.fvecs")
    truth = ivecs(d / "groundtruth.ivecs")
    n, dim = base.shape

    host, port = a.qdrant.rsplit(":", 1)
    c = QdrantClient(host=host, grpc_port=int(port), prefer_grpc=True, check_compatibility=False, timeout=300)
    c.create_collection(
        "minilm",
        vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
        metadata={"quiver": {"nlist": 1024, "pq_m": 48, "refine": "f16", "train_at": n}},
    )
    t0 = time.time()
    for start in range(0, n, 1000):
        rows = base[start:start + 1000]
        c.upsert("minilm", points=models.Batch(ids=list(range(start, start + len(rows))), vectors=rows.tolist()))
    load_s = time.time() - t0
    while True:
        info = c.get_collection("minilm")
        if info.indexed_vectors_count == n and info.status == models.CollectionStatus.GREEN:
            break
        assert info.status != models.CollectionStatus.RED, info.optimizer_status
        time.sleep(1)
    trained_s = time.time() - t0 - load_s

    params = models.SearchParams(hnsw_ef=a.nprobe, quantization=models.QuantizationSearchParams(oversampling=a.refine))
    via_qdrant = [[p.id for p in c.query_points("minilm", query=q.tolist(), limit=10, search_params=params).points]
                  for q in queries]
    pb2, stub = native_stub(a.native)
    via_native = [[nb.id for nb in stub.Search(pb2.SearchRequest(
        collection="minilm", vector=q.tolist(), k=10, nprobe=a.nprobe, refine_factor=a.refine)).neighbors]
        for q in queries]
    same = float(np.mean([f == g for f, g in zip(via_qdrant, via_native)]))
    print(json.dumps({
        "points": n, "load_s": round(load_s, 1), "load_vectors_per_s": round(n / load_s),
        "train_wait_s": round(trained_s, 1), "nprobe": a.nprobe, "refine_factor": a.refine,
        "recall_qdrant_query_points": round(recall(via_qdrant, truth), 4),
        "recall_native_search": round(recall(via_native, truth), 4),
        "identical_result_lists": same,
    }))


if __name__ == "__main__":
    main()
