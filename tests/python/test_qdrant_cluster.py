"""Qdrant's API on a Quiver cluster, through qdrant-client: a NATS JetStream server and two
`quiver serve --nats` nodes, real processes on loopback (nats-server from
$QUIVER_NATS_SERVER; skipped when it is absent unless QUIVER_REQUIRE_NATS=1, as in CI).

- A collection created through one node with `shard_number=2` (and `replication_factor=2`)
  is described as such through both, over REST and gRPC, and every point written through
  one node is counted, scrolled (by id, across the shards), retrieved and found through the
  other.
- The seeded differential test of test_qdrant_differential runs on a collection of 2 shards:
  upserts, payload edits, deletes by ids and by filter and field indexes, compared with
  qdrant-client's local mode at checkpoints (counts, scrolls, retrieves, exact and
  approximate queries).
- A sharded collection trains by itself (each shard at its share of the training size) and
  answers from its IVF-PQ index.
"""

import os
import socket
import subprocess
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from qdrant_client import models
from qdrant_client.http.exceptions import UnexpectedResponse

from conftest import start_server, stop_server
from test_qdrant import _read_addresses, client_for
from test_qdrant_differential import run_random_ops


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nats_binary():
    path = os.environ.get("QUIVER_NATS_SERVER", "")
    if path and Path(path).exists():
        return path
    if os.environ.get("QUIVER_REQUIRE_NATS") == "1":
        pytest.fail("QUIVER_REQUIRE_NATS=1 but $QUIVER_NATS_SERVER does not name a nats-server")
    pytest.skip("no nats-server ($QUIVER_NATS_SERVER): the cluster tests need one")


@pytest.fixture
def qcluster(tmp_path):
    """One NATS server with JetStream and two Quiver nodes serving Qdrant's API; yields the
    nodes (each with grpc_port and rest_port)."""
    binary = _nats_binary()
    port, http = _free_port(), _free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(f"listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{http}\n"
                    f"jetstream {{\n  store_dir: {str(tmp_path / 'nats')!r}\n}}\n".replace("'", '"'))
    with open(tmp_path / "nats.log", "wb") as log:
        nats = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=log)
    nodes = []
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline, "nats-server did not start"
                time.sleep(0.1)
        url = f"nats://127.0.0.1:{port}"
        for node in ["n0", "n1"]:
            srv = start_server(tmp_path, ["--nats", url, "--node-id", node, "--stream-replicas", "1",
                                          "--qdrant-grpc-listen", "127.0.0.1:0",
                                          "--qdrant-http-listen", "127.0.0.1:0"], name=node)
            srv.grpc_port, srv.rest_port = _read_addresses(srv)
            nodes.append(srv)
        # Placed on both once they have heard each other (heartbeats every 0.5 s).
        time.sleep(1.5)
        yield nodes
    finally:
        for srv in nodes:
            stop_server(srv)
        nats.terminate()
        nats.wait(timeout=10)


@pytest.mark.parametrize("prefer_grpc", [False, True], ids=["rest", "grpc"])
def test_a_sharded_collection_through_either_node(qcluster, prefer_grpc):
    a, b = (client_for(n, prefer_grpc) for n in qcluster)
    name = "sharded"
    a.create_collection(name, vectors_config=models.VectorParams(size=8, distance=models.Distance.COSINE),
                        shard_number=2, replication_factor=2)
    for c in (a, b):
        params = c.get_collection(name).config.params
        assert (params.shard_number, params.replication_factor) == (2, 2)
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((300, 8)).astype(np.float32)
    a.upsert(name, points=[models.PointStruct(id=i, vector=vectors[i].tolist(), payload={"odd": i % 2})
                           for i in range(300)], wait=True)
    # Written through one node, read through the other once a replica of each shard has it.
    deadline = time.time() + 30
    while b.count(name, exact=True).count != 300:
        assert time.time() < deadline, "the other node never counted every point"
        time.sleep(0.1)
    odd = models.Filter(must=[models.FieldCondition(key="odd", match=models.MatchValue(value=1))])
    assert b.count(name, count_filter=odd, exact=True).count == 150
    ids, offset = [], None
    while True:
        page, offset = b.scroll(name, limit=37, offset=offset, with_payload=True)
        ids += [p.id for p in page]
        assert all(p.payload == {"odd": p.id % 2} for p in page)
        if offset is None:
            break
    assert ids == list(range(300)), "scroll is not every id once, ascending, across the shards"
    got = b.retrieve(name, ids=[5, 150, 299, 1000], with_vectors=True)
    assert [p.id for p in got] == [5, 150, 299]
    for p in got:
        want = vectors[p.id] / np.linalg.norm(vectors[p.id])
        assert np.allclose(p.vector, want, atol=1e-5)
    hits = b.query_points(name, query=vectors[42].tolist(), limit=3,
                          search_params=models.SearchParams(exact=True)).points
    assert hits[0].id == 42 and abs(hits[0].score - 1.0) < 1e-5
    a.create_payload_index(name, field_name="odd", field_schema=models.PayloadSchemaType.INTEGER, wait=True)
    assert "odd" in b.get_collection(name).payload_schema
    a.delete(name, points_selector=models.FilterSelector(filter=odd), wait=True)
    assert a.count(name, exact=True).count == 150
    a.delete_collection(name)
    assert not b.collection_exists(name)


@pytest.mark.parametrize("seed", [0, 1])
def test_random_ops_on_two_shards_agree_with_qdrant_client_local_mode(qcluster, seed):
    node = qcluster[seed % 2]
    # Each shard holds about half of the at most 400 points, fewer than the 256 a training
    # needs: the training by itself is the next test's.
    run_random_ops(lambda prefer_grpc: client_for(node, prefer_grpc), seed, shard_number=2,
                   expect_training=False)


def test_a_sharded_collection_trains_by_itself(qcluster):
    """Each shard trains once it holds its share of the collection's training size, led by one
    of its replicas; queries then run on the IVF-PQ index of both shards."""
    a, b = (client_for(n, prefer_grpc=True) for n in qcluster)
    name = "trains"
    a.create_collection(name, vectors_config=models.VectorParams(size=16, distance=models.Distance.EUCLID),
                        shard_number=2, replication_factor=2,
                        metadata={"quiver": {"nlist": 16, "pq_m": 4, "train_at": 1000}})
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((1200, 16)).astype(np.float32)
    for start in range(0, 1200, 400):
        a.upsert(name, points=[models.PointStruct(id=i, vector=vectors[i].tolist())
                               for i in range(start, start + 400)], wait=True)
    deadline = time.time() + 120
    while b.get_collection(name).indexed_vectors_count != 1200:
        assert time.time() < deadline, f"not trained by itself: {b.get_collection(name)}"
        time.sleep(0.2)
    assert b.get_collection(name).status == models.CollectionStatus.GREEN
    hits = 0
    for q in range(40):
        x = vectors[q] + 0.01 * rng.standard_normal(16).astype(np.float32)
        truth = np.argsort(((vectors - x) ** 2).sum(axis=1))[:10]
        found = b.query_points(name, query=x.tolist(), limit=10).points
        assert found[0].id == q
        hits += len(set(truth.tolist()) & {h.id for h in found})
    assert hits / 400 >= 0.9, f"recall@10 {hits / 400:.3f} on the trained shards"


def _refused(prefer_grpc, call, code, status):
    """Runs `call`, which must fail with gRPC `code` or REST `status`; returns the message."""
    with pytest.raises(grpc.RpcError if prefer_grpc else UnexpectedResponse) as err:
        call()
    if prefer_grpc:
        assert err.value.code() == code, err.value
        return err.value.details()
    assert err.value.status_code == status, err.value
    return str(err.value)


@pytest.mark.parametrize("prefer_grpc", [False, True], ids=["rest", "grpc"])
def test_a_cluster_refuses_what_a_single_server_refuses(qcluster, prefer_grpc):
    """A payload edit one point cannot take changes none (as on a single server); an unknown
    collection is NOT_FOUND even when nothing is selected; a repeated field index or
    settings change is answered and changes nothing."""
    a, b = (client_for(n, prefer_grpc) for n in qcluster)
    name = "refusals"
    a.create_collection(name, vectors_config=models.VectorParams(size=4, distance=models.Distance.DOT),
                        shard_number=2)
    a.upsert(name, points=[models.PointStruct(id=i, vector=[1.0, 0.0, 0.0, float(i)],
                                              payload={"big": "x" * 40_000 if i == 3 else "", "i": i})
                           for i in range(8)], wait=True)
    # Point 3 would pass the 64 KiB payload limit: the edit is refused whole.
    msg = _refused(prefer_grpc, lambda: a.set_payload(name, payload={"more": "y" * 30_000},
                                                      points=[1, 3, 5], wait=True),
                   grpc.StatusCode.INVALID_ARGUMENT, 400)
    assert "payload" in msg and "point 3" in msg, msg
    assert all("more" not in p.payload for p in b.retrieve(name, ids=[1, 3, 5]))
    for call in (lambda: b.retrieve("nope", ids=[]),
                 lambda: b.delete("nope", points_selector=models.PointIdsList(points=[]))):
        _refused(prefer_grpc, call, grpc.StatusCode.NOT_FOUND, 404)
    for _ in range(2):
        a.create_payload_index(name, field_name="i", field_schema=models.PayloadSchemaType.INTEGER, wait=True)
        b.update_collection(name, optimizers_config=models.OptimizersConfigDiff(indexing_threshold=20_000))
    assert list(b.get_collection(name).payload_schema) == ["i"]
    assert a.get_collection(name).config.optimizer_config.indexing_threshold == 20_000
    flt = models.Filter(must=[models.FieldCondition(key="i", range=models.Range(gte=5))])
    assert b.count(name, count_filter=flt, exact=True).count == 3
    a.delete_payload_index(name, field_name="i", wait=True)
    a.delete_payload_index(name, field_name="i", wait=True)
    assert not b.get_collection(name).payload_schema
