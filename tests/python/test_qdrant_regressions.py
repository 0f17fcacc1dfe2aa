"""Regressions found as a client would, with qdrant-client against Quiver's Qdrant API, in both
of its modes (REST and gRPC):

- a filter passing only a few points edited after the collection trained found one of them
  (the edited points sat alone in the appendable segment, searched as if unfiltered with
  nprobe of its 64 lists); now it finds all of them, and agrees with `exact=True`;
- `update_mode` on upsert (qdrant-client's congruence test `test_update_mode`): insert_only
  leaves existing points as they are, update_only creates nothing, on `upsert`,
  `upload_points` and `upload_collection`;
- retrieved vectors were PQ reconstructions (or f16-rounded) once a collection trained; now
  they are the vectors as written, through training and payload edits (f16 only when the
  collection's `datatype` asks for it).
"""

import time

import numpy as np
import pytest
from qdrant_client import models

from test_qdrant import client_for, qserver  # noqa: F401  (the fixture)

DIM = 16


def _wait_trained(c, name, timeout=120):
    """Until the collection reports its index built (status green after training)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = c.get_collection(name)
        if info.indexed_vectors_count and info.indexed_vectors_count > 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"{name} did not train within {timeout}s: {c.get_collection(name)}")


@pytest.mark.parametrize("prefer_grpc", [False, True], ids=["rest", "grpc"])
def test_a_filter_on_a_few_edited_points_finds_them_all(qserver, prefer_grpc):  # noqa: F811
    c = client_for(qserver, prefer_grpc)
    name = "edited"
    c.create_collection(
        name,
        vectors_config=models.VectorParams(size=DIM, distance=models.Distance.EUCLID),
        metadata={"quiver": {"nlist": 64, "pq_m": 4, "refine": "f16", "train_at": 4000}},
    )
    x = np.random.default_rng(7).standard_normal((4000, DIM)).astype(np.float32)
    c.upload_collection(name, vectors=x, ids=list(range(4000)), batch_size=1000, wait=True)
    _wait_trained(c, name)
    tagged = [11, 2222, 3777]
    c.set_payload(name, payload={"new": True}, points=tagged, wait=True)
    flt = models.Filter(must=[models.FieldCondition(key="new", match=models.MatchValue(value=True))])
    for t in tagged:
        for params in [None, models.SearchParams(hnsw_ef=1), models.SearchParams(exact=True)]:
            hits = c.query_points(name, query=x[t].tolist(), query_filter=flt, limit=10,
                                  search_params=params).points
            assert sorted(h.id for h in hits) == tagged, (t, params, hits)
            assert hits[0].id == t
    c.close()


def _modified(p, vector):
    return models.PointStruct(id=p.id, vector=vector, payload=p.payload)


@pytest.mark.parametrize("prefer_grpc", [False, True], ids=["rest", "grpc"])
@pytest.mark.parametrize("how", ["upsert", "upload_points", "upload_collection"])
def test_update_mode_writes_only_what_it_lets_through(qserver, prefer_grpc, how):  # noqa: F811
    c = client_for(qserver, prefer_grpc)
    name = f"mode-{how}"
    c.create_collection(name, vectors_config=models.VectorParams(size=4, distance=models.Distance.DOT))
    points = [models.PointStruct(id=i, vector=[float(i), 1.0, 0.0, 0.0], payload={"i": i}) for i in range(1, 6)]

    def write(pts, mode):
        if how == "upsert":
            c.upsert(name, points=pts, update_mode=mode, wait=True)
        elif how == "upload_points":
            c.upload_points(name, points=pts, update_mode=mode, wait=True)
        else:
            c.upload_collection(name, vectors=[p.vector for p in pts], payload=[p.payload for p in pts],
                                ids=[p.id for p in pts], update_mode=mode, wait=True)

    write(points, models.UpdateMode.UPSERT)
    first = points[0].vector
    # Insert-only: point 2 (present) keeps its own vector and payload; 6 (absent) is added.
    write([_modified(points[1], first), models.PointStruct(id=6, vector=first, payload={"i": 6})],
          models.UpdateMode.INSERT_ONLY)
    got = {p.id: p for p in c.retrieve(name, ids=[2, 6], with_vectors=True)}
    assert sorted(got) == [2, 6]
    assert got[2].vector == pytest.approx(points[1].vector) and got[2].payload == {"i": 2}
    # Update-only: point 2 (present) takes the new vector; 7 (absent) is not created.
    write([_modified(points[1], first), models.PointStruct(id=7, vector=first, payload={"i": 7})],
          models.UpdateMode.UPDATE_ONLY)
    got = {p.id: p for p in c.retrieve(name, ids=[2, 7], with_vectors=True)}
    assert sorted(got) == [2]
    assert got[2].vector == pytest.approx(first)
    assert c.count(name).count == 6
    c.close()


def test_a_bad_update_mode_is_refused_by_name(qserver):  # noqa: F811
    import json
    import urllib.error
    import urllib.request

    c = client_for(qserver, False)
    c.create_collection("bad", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
    c.close()
    body = json.dumps({"points": [{"id": 1, "vector": [1.0, 0.0]}], "update_mode": "sometimes"}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{qserver.rest_port}/collections/bad/points",
                                 data=body, method="PUT", headers={"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 400
    assert "update_mode" in e.value.read().decode()


@pytest.mark.parametrize("prefer_grpc", [False, True], ids=["rest", "grpc"])
def test_retrieved_vectors_are_the_ones_written(qserver, prefer_grpc):  # noqa: F811
    c = client_for(qserver, prefer_grpc)
    x = np.random.default_rng(11).standard_normal((3000, DIM)).astype(np.float32)
    kinds = {
        "written-f32": (None, x),
        "written-f16": (models.Datatype.FLOAT16, x.astype(np.float16).astype(np.float32)),
    }
    for name, (datatype, expected) in kinds.items():
        c.create_collection(
            name,
            vectors_config=models.VectorParams(size=DIM, distance=models.Distance.EUCLID,
                                               datatype=datatype),
            metadata={"quiver": {"nlist": 16, "pq_m": 4, "train_at": 2000}},
        )
        c.upload_collection(name, vectors=x, ids=list(range(3000)), batch_size=1000, wait=True)
        _wait_trained(c, name)
        c.set_payload(name, payload={"edited": True}, points=list(range(0, 3000, 3)), wait=True)
        got = c.retrieve(name, ids=list(range(3000)), with_vectors=True)
        assert len(got) == 3000
        back = np.array([p.vector for p in sorted(got, key=lambda p: p.id)], dtype=np.float32)
        assert np.array_equal(back, expected), name
    with pytest.raises(Exception) as e:
        c.create_collection(
            "written-u8",
            vectors_config=models.VectorParams(size=DIM, distance=models.Distance.EUCLID,
                                               datatype=models.Datatype.UINT8),
        )
    assert "uint8" in str(e.value)
    c.close()


def test_rest_upserts_take_their_write_share_before_the_body_is_read(tmp_path):
    """A REST upsert's share of --max-write-bytes is its declared length (times 8: the body, the
    parsed JSON, the converted points and their log record), taken before the body is read: past
    the budget it is refused with 429 naming the flag, and a smaller one is written."""
    import json
    import urllib.error
    import urllib.request

    from conftest import start_server, stop_server
    from test_qdrant import _read_addresses

    srv = start_server(tmp_path, ["--qdrant-grpc-listen", "127.0.0.1:0", "--qdrant-http-listen",
                                  "127.0.0.1:0", "--max-write-bytes", "1000000"], name="budget")
    try:
        srv.grpc_port, srv.rest_port = _read_addresses(srv)
        c = client_for(srv, False)
        c.create_collection("b", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.DOT))
        c.close()

        def put(n):
            body = json.dumps({"points": [{"id": i, "vector": [0.123456] * DIM} for i in range(n)]}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{srv.rest_port}/collections/b/points?wait=true",
                                         data=body, method="PUT",
                                         headers={"content-type": "application/json"})
            return len(body), urllib.request.urlopen(req, timeout=30)

        with pytest.raises(urllib.error.HTTPError) as e:
            put(2000)  # about 170 KB: a share of 1.4 MB
        assert e.value.code == 429
        assert "--max-write-bytes" in e.value.read().decode()
        size, ok = put(500)  # about 43 KB: a share of 340 KB
        assert ok.status == 200 and size < 1000000 // 8
    finally:
        stop_server(srv)
