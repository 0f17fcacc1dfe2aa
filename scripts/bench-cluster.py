"""Helper of scripts/bench-cluster: fills a collection the load generator then drives.

  bench-cluster.py ADDR load COLLECTION SHARDS BASE.fvecs [BASE.fvecs ...]
      creates COLLECTION (inner product; SHARDS shards of 1 replica, 1 on a single server),
      upserts every row (ids run on across the files, 1,000 per request, wait=true) and trains
      it (nlist 1024, PQ48, refine f32); prints one JSON line: rows, upload and training
      seconds.
"""

import json
import sys
import time

import grpc
import numpy as np

from importlib import util
from pathlib import Path

# The stub compiler of bench-ingest.py.
_spec = util.spec_from_file_location("bench_ingest", Path(__file__).with_name("bench-ingest.py"))
_ingest = util.module_from_spec(_spec)
_spec.loader.exec_module(_ingest)


def main():
    addr, cmd = sys.argv[1], sys.argv[2]
    if cmd != "load":
        sys.exit(f"unknown command {cmd!r}")
    name, shards, files = sys.argv[3], int(sys.argv[4]), sys.argv[5:]
    pb, pb_grpc = _ingest.stubs()
    opts = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    stub = pb_grpc.QuiverStub(grpc.insecure_channel(addr, options=opts))
    base = np.concatenate([_ingest.read_fvecs(f) for f in files])
    n, dim = base.shape
    stub.CreateCollection(pb.CreateCollectionRequest(
        name=name, dim=dim, metric=pb.METRIC_INNER_PRODUCT,
        shard_number=shards if shards > 1 else 0, replication_factor=0))
    t0 = time.time()
    for start in range(0, n, 1000):
        rows = base[start:start + 1000]
        stub.Upsert(pb.UpsertRequest(
            collection=name, ids=list(range(start, start + len(rows))),
            vectors=rows.ravel().tolist(), wait=True), timeout=120)
    upload = time.time() - t0
    t0 = time.time()
    stub.Train(pb.TrainRequest(
        collection=name, index=pb.IndexParams(nlist=1024, pq_m=48, refine=pb.REFINE_F32)),
        timeout=3600)
    print(json.dumps({"rows": n, "upload_s": round(upload, 1), "train_s": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
