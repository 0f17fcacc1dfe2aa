"""Cluster search equals single-server search on the real data set, through Qdrant's API and
qdrant-client (the Qdrant half of the cluster's acceptance; the native half is
tests/cluster_minilm.rs): `../shared/data/minilm-pydocs` (100k × 384 MiniLM embeddings,
cosine) goes through qdrant-client to one `quiver serve --qdrant` and to a cluster of two
nodes (one NATS JetStream server) holding a collection created with `shard_number=2`.

- Exact mode (`exact=True`): every query's 10 neighbours are the same ids, scores within
  float rounding.
- IVF-PQ mode: both train by themselves once the collection's `metadata.quiver.train_at` is
  lowered below its size (1,024 lists, 48 sub-quantizers; each shard of the cluster trains its
  own on its half), then answer `hnsw_ef=32` (32 lists per shard) queries: recall@10 against
  the shipped ground truth within 0.01 of the single server's, through gRPC and REST.

Heavy (about 2.5 minutes on 2 cores, so not in CI): runs only with QUIVER_HEAVY=1, and
skips, saying so, when the data or nats-server is absent.
"""

import os
import time
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import models

from conftest import start_server, stop_server
from test_qdrant import _read_addresses, client_for
from test_qdrant_cluster import qcluster  # noqa: F401  (the fixture)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "minilm-pydocs"
NAME = "minilm"
K = 10

pytestmark = pytest.mark.skipif(os.environ.get("QUIVER_HEAVY") != "1",
                                reason="heavy: set QUIVER_HEAVY=1 (100k real vectors into a cluster and a server)")


def read_vecs(path, dtype):
    raw = np.fromfile(path, dtype=np.int32)
    dim = raw[0]
    return raw.reshape(-1, dim + 1)[:, 1:].view(dtype).copy()


@pytest.fixture
def single(tmp_path):
    srv = start_server(tmp_path, ["--qdrant-grpc-listen", "127.0.0.1:0",
                                  "--qdrant-http-listen", "127.0.0.1:0"], name="single")
    srv.grpc_port, srv.rest_port = _read_addresses(srv)
    yield srv
    stop_server(srv)


def fill(client, base, shard_number):
    client.create_collection(NAME, vectors_config=models.VectorParams(size=base.shape[1],
                                                                      distance=models.Distance.COSINE),
                             shard_number=shard_number,
                             metadata={"quiver": {"nlist": 1024, "pq_m": 48, "train_at": 0}})
    started = time.time()
    client.upload_collection(NAME, vectors=base, ids=range(len(base)), batch_size=1000, parallel=1,
                             wait=True)
    return time.time() - started


def search(client, queries, **params):
    out = []
    for start in range(0, len(queries), 100):
        requests = [models.QueryRequest(query=q.tolist(), limit=K, params=models.SearchParams(**params))
                    for q in queries[start:start + 100]]
        out += [[(p.id, p.score) for p in r.points] for r in client.query_batch_points(NAME, requests)]
    return out


def recall(found, truth):
    return np.mean([len({i for i, _ in row} & set(truth[q, :K].tolist())) / K for q, row in enumerate(found)])


def test_cluster_search_equals_single_server_search_through_qdrant_client(single, qcluster):  # noqa: F811
    if not (DATA / "base-00.fvecs").exists():
        pytest.skip(f"no data at {DATA}")
    base = np.concatenate([read_vecs(DATA / "base-00.fvecs", np.float32),
                           read_vecs(DATA / "base-01.fvecs", np.float32)])
    queries = read_vecs(DATA / "query.fvecs", np.float32)
    truth = read_vecs(DATA / "groundtruth.ivecs", np.int32)
    one = client_for(single, prefer_grpc=True, timeout=600)
    nodes = [client_for(n, prefer_grpc=True, timeout=600) for n in qcluster]
    rest = client_for(qcluster[1], prefer_grpc=False, timeout=600)
    for what, c, shards in [("single server", one, None), ("cluster", nodes[0], 2)]:
        print(f"{what}: {len(base)} points written in {fill(c, base, shards):.1f} s")

    exact_one = search(one, queries, exact=True)
    exact_cluster = search(nodes[1], queries, exact=True)
    differ = sum([i for i, _ in a] != [i for i, _ in b] for a, b in zip(exact_one, exact_cluster))
    worst = max(abs(sa - sb) for a, b in zip(exact_one, exact_cluster) for (_, sa), (_, sb) in zip(a, b))
    print(f"exact: {differ} of {len(queries)} queries differ (scores within {worst:.2e}); "
          f"recall@10 {recall(exact_one, truth):.4f}")
    assert differ == 0 and worst < 1e-4

    # Lowered below the size: each trains by itself at the optimizer's next look.
    for what, c in [("single server", one), ("cluster", nodes[0])]:
        started = time.time()
        c.update_collection(NAME, metadata={"quiver": {"nlist": 1024, "pq_m": 48, "train_at": 1000}})
        while c.get_collection(NAME).indexed_vectors_count != len(base):
            assert time.time() - started < 900, f"{what} did not train by itself"
            time.sleep(1)
        print(f"{what} trained by itself in {time.time() - started:.1f} s")
    r_one = recall(search(one, queries, hnsw_ef=32), truth)
    found = {f"node {i} grpc": search(c, queries, hnsw_ef=32) for i, c in enumerate(nodes)}
    found["node 1 rest"] = search(rest, queries, hnsw_ef=32)
    r_cluster = {k: recall(v, truth) for k, v in found.items()}
    print(f"IVF-PQ recall@10 (nlist 1024, PQ48, hnsw_ef 32): single server {r_one:.4f}, cluster of 2 shards "
          + ", ".join(f"{k} {v:.4f}" for k, v in r_cluster.items()))
    for k, r in r_cluster.items():
        assert abs(r - r_one) <= 0.01, f"{k}: recall {r} against one server's {r_one}"
    answers = list(found.values())
    assert all([i for i, _ in a] == [i for i, _ in b] for other in answers[1:]
               for a, b in zip(answers[0], other)), "the nodes answer differently"
