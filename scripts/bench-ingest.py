"""Helper of scripts/bench-ingest: gRPC calls the load generator does not make.

  bench-ingest.py ADDR delete-range COLLECTION FIRST COUNT
      deletes ids FIRST .. FIRST+COUNT-1 (in batches of 10,000).
  bench-ingest.py ADDR compact COLLECTION
      Flush with compact: every segment merged into one; prints the seconds it took.
  bench-ingest.py ADDR huge-search COLLECTION PID
      the 12.9 GB request (1,024 queries, k 1,024, refine factor 1,024): prints its status,
      how long the answer took and the server's resident memory before and after.
  bench-ingest.py ADDR train-probe COLLECTION VECTORS_FILE PID
      fills COLLECTION (created flat, cosine) with the .fvecs rows, starts a background Train,
      and calls GetCollection and ListCollections every 20 ms until it is trained: prints
      the slowest answer of each, and every answer over 50 ms (seconds since Train, call, ms).
Every result is one JSON line on stdout.
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def stubs():
    from grpc_tools import protoc
    import grpc_tools
    import importlib

    out = tempfile.mkdtemp()
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main([
        "grpc_tools.protoc", f"-I{REPO / 'server/proto'}", f"-I{well_known}",
        f"--python_out={out}", f"--grpc_python_out={out}",
        str(REPO / "server/proto/quiver/v1/quiver.proto"),
    ])
    assert rc == 0
    sys.path.insert(0, out)
    return importlib.import_module("quiver.v1.quiver_pb2"), importlib.import_module(
        "quiver.v1.quiver_pb2_grpc")


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def read_fvecs(path):
    a = np.fromfile(path, dtype=np.int32)
    d = a[0]
    return a.reshape(-1, d + 1)[:, 1:].view(np.float32)


def main():
    addr, cmd, coll = sys.argv[1], sys.argv[2], sys.argv[3]
    pb, rpc = stubs()
    ch = grpc.insecure_channel(addr, options=[
        ("grpc.max_send_message_length", 256 << 20),
        ("grpc.max_receive_message_length", 256 << 20)])
    stub = rpc.QuiverStub(ch)
    if cmd == "delete-range":
        first, count = int(sys.argv[4]), int(sys.argv[5])
        deleted = 0
        for s in range(first, first + count, 10_000):
            ids = list(range(s, min(s + 10_000, first + count)))
            deleted += stub.Delete(pb.DeleteRequest(collection=coll, ids=ids)).deleted
        print(json.dumps({"deleted": deleted}))
    elif cmd == "compact":
        t = time.time()
        stub.Flush(pb.FlushRequest(collection=coll, compact=True), timeout=3600)
        info = stub.GetCollection(pb.GetCollectionRequest(name=coll))
        print(json.dumps({"compact_s": round(time.time() - t, 2), "segments": info.segments,
                          "count": info.count}))
    elif cmd == "huge-search":
        pid = int(sys.argv[4])
        info = stub.GetCollection(pb.GetCollectionRequest(name=coll))
        before = rss_kib(pid)
        q = np.random.default_rng(1).standard_normal((1024, info.dim)).astype(np.float32)
        t = time.time()
        try:
            stub.SearchBatch(pb.SearchBatchRequest(collection=coll, vectors=q.ravel().tolist(),
                                                   k=1024, refine_factor=1024), timeout=60)
            code, msg = "OK", ""
        except grpc.RpcError as e:
            code, msg = e.code().name, e.details()
        took = time.time() - t
        time.sleep(0.5)
        print(json.dumps({"status": code, "message": msg, "answer_s": round(took, 3),
                          "rss_before_mib": before // 1024, "rss_after_mib": rss_kib(pid) // 1024}))
    elif cmd == "train-probe":
        path, pid = sys.argv[4], int(sys.argv[5])
        x = read_fvecs(path)
        stub.CreateCollection(pb.CreateCollectionRequest(name=coll, dim=x.shape[1],
                                                         metric=pb.METRIC_COSINE))
        t = time.time()
        for s in range(0, len(x), 1000):
            stub.Upsert(pb.UpsertRequest(collection=coll, ids=list(range(s, min(s + 1000, len(x)))),
                                         vectors=x[s:s + 1000].ravel().tolist()), timeout=600)
        fill_s = time.time() - t
        t0 = time.time()
        stub.Train(pb.TrainRequest(collection=coll, background=True))
        worst_get = worst_list = 0.0
        worst_get_at = worst_list_at = 0.0
        polls = 0
        slow = []  # (seconds since Train, call, ms) of every answer slower than 50 ms
        while True:
            a = time.time()
            info = stub.GetCollection(pb.GetCollectionRequest(name=coll))
            b = time.time()
            stub.ListCollections(pb.ListCollectionsRequest())
            c = time.time()
            polls += 1
            for call, ms, at in (("get", (b - a) * 1e3, a), ("list", (c - b) * 1e3, b)):
                if ms > 50:
                    slow.append([round(at - t0, 2), call, round(ms, 1)])
            if b - a > worst_get:
                worst_get, worst_get_at = b - a, a - t0
            if c - b > worst_list:
                worst_list, worst_list_at = c - b, b - t0
            if info.state != "training":
                break
            time.sleep(0.02)
        print(json.dumps({"points": len(x), "fill_s": round(fill_s, 1),
                          "train_s": round(time.time() - t0, 1), "state": info.state,
                          "trained": info.trained, "polls": polls,
                          "get_collection_max_ms": round(worst_get * 1e3, 2),
                          "get_collection_max_at_s": round(worst_get_at, 1),
                          "list_collections_max_ms": round(worst_list * 1e3, 2),
                          "list_collections_max_at_s": round(worst_list_at, 1),
                          "slow_calls": slow,
                          "rss_mib": rss_kib(pid) // 1024}))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
