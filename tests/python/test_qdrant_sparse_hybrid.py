"""Named and sparse vectors and the Query API's prefetch + fusion on Quiver's Qdrant API,
checked with qdrant-client from PyPI over REST and gRPC against qdrant-client's local mode
(`QdrantClient(":memory:")`), the reference for Qdrant's semantics:

- a collection with one dense vector under a name and sparse vectors (with and without the
  `idf` modifier); its description reads back in the form given;
- points written with vectors by name, read back with them (all, or some names);
- sparse queries are exact: the same ids and scores as local mode, filtered or not, with idf;
- dense queries `using` the name; a query naming a vector the collection lacks is refused;
- hybrid queries: RRF and DBSF over a dense and a sparse prefetch give local mode's ranking
  and scores; a dense query re-scoring a sparse prefetch's candidates, too;
- a collection with sparse vectors only (no dense vector).

Sparse vectors are kept in the payload, so the log, checkpoints and replay carry them; the
store's own test (server/store/tests/sparse.rs) searches them across restarts.
"""

import random

import pytest
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from test_qdrant import client_for, qserver  # noqa: F401  (the fixture)

MODES = pytest.mark.parametrize("prefer_grpc", [False, True], ids=["rest", "grpc"])
DIM = 8
N = 300


def _sparse(rng, vocab=60, most=10):
    terms = sorted(rng.sample(range(vocab), rng.randint(1, most)))
    return models.SparseVector(indices=terms, values=[round(rng.uniform(0.1, 2.0), 3) for _ in terms])


def _points(seed=5):
    rng = random.Random(seed)
    pts = []
    for i in range(N):
        vec = {"dense": [rng.uniform(-1, 1) for _ in range(DIM)], "text": _sparse(rng)}
        if i % 4 == 0:
            vec["title"] = _sparse(rng, vocab=20, most=3)
        pts.append(models.PointStruct(id=i, vector=vec, payload={"g": i % 3, "i": i}))
    return pts


def _create(c, name):
    c.create_collection(
        name,
        vectors_config={"dense": models.VectorParams(size=DIM, distance=models.Distance.COSINE)},
        sparse_vectors_config={
            "text": models.SparseVectorParams(),
            "title": models.SparseVectorParams(modifier=models.Modifier.IDF),
        },
    )


def _ids_scores(points):
    return [(p.id, round(p.score, 4)) for p in points]


@pytest.fixture(scope="module")
def reference():
    ref = QdrantClient(":memory:")
    _create(ref, "h")
    ref.upsert("h", points=_points())
    return ref


@MODES
def test_named_and_sparse_vectors_round_trip(qserver, reference, prefer_grpc):  # noqa: F811
    c = client_for(qserver, prefer_grpc)
    name = f"nv_{int(prefer_grpc)}"
    _create(c, name)
    c.upsert(name, points=_points(), wait=True)
    info = c.get_collection(name)
    assert set(info.config.params.vectors) == {"dense"}
    assert info.config.params.vectors["dense"].size == DIM
    assert set(info.config.params.sparse_vectors) == {"text", "title"}
    assert info.config.params.sparse_vectors["title"].modifier == models.Modifier.IDF
    assert c.count(name).count == N

    got = c.retrieve(name, ids=[0, 1], with_vectors=True)
    want = reference.retrieve("h", ids=[0, 1], with_vectors=True)
    for g, w in zip(got, want):
        assert set(g.vector) == set(w.vector), (g.vector.keys(), w.vector.keys())
        assert g.vector["text"].indices == w.vector["text"].indices
        assert g.vector["text"].values == pytest.approx(w.vector["text"].values)
        assert g.vector["dense"] == pytest.approx(w.vector["dense"], rel=1e-5, abs=1e-6)
        assert g.payload == w.payload
    only = c.retrieve(name, ids=[4], with_vectors=["title"])
    assert set(only[0].vector) == {"title"}
    page, _ = c.scroll(name, limit=3, with_vectors=["text"], with_payload=True)
    assert [p.id for p in page] == [0, 1, 2]
    assert all(set(p.vector) == {"text"} for p in page)
    assert all("__quiver" not in k for p in page for k in p.payload)
    c.close()


@MODES
def test_sparse_queries_are_exact(qserver, reference, prefer_grpc):  # noqa: F811
    c = client_for(qserver, prefer_grpc)
    name = f"sq_{int(prefer_grpc)}"
    _create(c, name)
    c.upsert(name, points=_points(), wait=True)
    rng = random.Random(9)
    for i in range(30):
        using = "title" if i % 3 == 0 else "text"
        q = _sparse(rng, vocab=20 if using == "title" else 60, most=4)
        flt = models.Filter(must=[models.FieldCondition(key="g", match=models.MatchValue(value=i % 3))]) if i % 2 else None
        got = c.query_points(name, query=q, using=using, limit=10, query_filter=flt).points
        want = reference.query_points("h", query=q, using=using, limit=10, query_filter=flt).points
        # Equal scores may come in either order: compare scores in order, ids as sets of ties.
        assert [round(p.score, 3) for p in got] == [round(p.score, 3) for p in want], (using, q)
        by_score = lambda pts: sorted((round(p.score, 3), p.id) for p in pts)  # noqa: E731
        assert by_score(got) == by_score(want), (using, q)
    c.close()


@MODES
def test_dense_queries_use_the_name(qserver, reference, prefer_grpc):  # noqa: F811
    c = client_for(qserver, prefer_grpc)
    name = f"dq_{int(prefer_grpc)}"
    _create(c, name)
    c.upsert(name, points=_points(), wait=True)
    rng = random.Random(3)
    q = [rng.uniform(-1, 1) for _ in range(DIM)]
    got = c.query_points(name, query=q, using="dense", limit=5).points
    want = reference.query_points("h", query=q, using="dense", limit=5).points
    assert [p.id for p in got] == [p.id for p in want]
    with pytest.raises(Exception) as e:
        c.query_points(name, query=q, limit=5)
    assert "Not existing vector name" in str(e.value), str(e.value)
    with pytest.raises(Exception) as e:
        c.query_points(name, query=q, using="image", limit=5)
    assert "`image`" in str(e.value), str(e.value)
    c.close()


@MODES
@pytest.mark.parametrize("fusion", [models.Fusion.RRF, models.Fusion.DBSF], ids=["rrf", "dbsf"])
def test_hybrid_fusion_equals_local_mode(qserver, reference, prefer_grpc, fusion):  # noqa: F811
    c = client_for(qserver, prefer_grpc)
    name = f"hy_{int(prefer_grpc)}_{fusion.value}"
    _create(c, name)
    c.upsert(name, points=_points(), wait=True)
    rng = random.Random(21)
    for _ in range(10):
        dense = [rng.uniform(-1, 1) for _ in range(DIM)]
        sparse = _sparse(rng, most=5)
        prefetch = [
            # Exact on both sides: the dense prefetch visits every list.
            models.Prefetch(query=dense, using="dense", limit=20,
                            params=models.SearchParams(exact=True)),
            models.Prefetch(query=sparse, using="text", limit=20),
        ]
        got = c.query_points(name, prefetch=prefetch, query=models.FusionQuery(fusion=fusion), limit=10).points
        want = reference.query_points("h", prefetch=prefetch, query=models.FusionQuery(fusion=fusion),
                                      limit=10).points
        assert [round(p.score, 4) for p in got] == pytest.approx([round(p.score, 4) for p in want], abs=2e-4)
        assert sorted(p.id for p in got) == sorted(p.id for p in want)
        # Re-scoring: the sparse prefetch's candidates, ranked by the dense vector.
        got = c.query_points(name, prefetch=prefetch[1:], query=dense, using="dense", limit=5).points
        want = reference.query_points("h", prefetch=prefetch[1:], query=dense, using="dense", limit=5).points
        assert [p.id for p in got] == [p.id for p in want]
    c.close()


@MODES
def test_a_sparse_only_collection(qserver, prefer_grpc):  # noqa: F811
    c = client_for(qserver, prefer_grpc)
    ref = QdrantClient(":memory:")
    name = f"so_{int(prefer_grpc)}"
    for cl in (c, ref):
        cl.create_collection(name, vectors_config={},
                             sparse_vectors_config={"bm25": models.SparseVectorParams(modifier=models.Modifier.IDF)})
    rng = random.Random(4)
    pts = [models.PointStruct(id=i, vector={"bm25": _sparse(rng)}, payload={"i": i}) for i in range(100)]
    for cl in (c, ref):
        cl.upsert(name, points=pts)
    info = c.get_collection(name)
    assert info.config.params.vectors == {} or not info.config.params.vectors
    q = _sparse(rng, most=4)
    got = c.query_points(name, query=q, using="bm25", limit=10).points
    want = ref.query_points(name, query=q, using="bm25", limit=10).points
    assert [round(p.score, 3) for p in got] == [round(p.score, 3) for p in want]
    rec = c.retrieve(name, ids=[3], with_vectors=True)[0]
    assert set(rec.vector) == {"bm25"}
    with pytest.raises(Exception):
        c.upsert(name, points=[models.PointStruct(id=1000, vector={"other": _sparse(rng)})])
    c.close()


def test_a_dense_vector_missing_from_a_point_is_refused(qserver):  # noqa: F811
    c = client_for(qserver, False)
    _create(c, "miss")
    with pytest.raises(UnexpectedResponse) as e:
        c.upsert("miss", points=[models.PointStruct(id=1, vector={"text": models.SparseVector(indices=[1], values=[1.0])})])
    assert e.value.status_code == 400
    assert "dense vector `dense`" in e.value.content.decode(), e.value.content
    with pytest.raises(UnexpectedResponse) as e:
        c.upsert("miss", points=[models.PointStruct(id=1, vector={
            "dense": [0.0] * DIM, "text": models.SparseVector(indices=[1, 1], values=[1.0, 2.0])})])
    assert e.value.status_code == 400
    assert "more than once" in e.value.content.decode(), e.value.content
    c.close()


def test_sparse_and_named_vectors_survive_sigkill(tmp_path):
    """Acknowledged writes of named and sparse vectors (upserts, a payload overwrite that keeps
    them, deletes) are all there after the server is killed with SIGKILL and started again on
    its data: the same points, vectors and query answers."""
    from conftest import start_server, stop_server
    from test_qdrant import _read_addresses

    args = ["--qdrant-grpc-listen", "127.0.0.1:0", "--qdrant-http-listen", "127.0.0.1:0"]
    srv = start_server(tmp_path, args, name="killed")
    srv.grpc_port, srv.rest_port = _read_addresses(srv)
    c = client_for(srv, True)
    _create(c, "k")
    pts = _points(seed=8)
    for s in range(0, N, 50):
        c.upsert("k", points=pts[s:s + 50], wait=True)
    c.overwrite_payload("k", payload={"o": 1}, points=[3, 4, 5], wait=True)
    c.delete("k", points_selector=models.PointIdsList(points=[6, 7]), wait=True)
    rng = random.Random(2)
    queries = [(_sparse(rng, most=4), "text") for _ in range(10)] + [(_sparse(rng, vocab=20, most=3), "title")
                                                                     for _ in range(5)]
    before = [_ids_scores(c.query_points("k", query=q, using=u, limit=10).points) for q, u in queries]
    kept = c.retrieve("k", ids=[3, 4], with_vectors=True, with_payload=True)
    c.close()
    srv.proc.kill()
    srv.proc.wait()

    srv = start_server(tmp_path, args, name="killed")
    try:
        srv.grpc_port, srv.rest_port = _read_addresses(srv)
        c = client_for(srv, False)
        assert c.count("k").count == N - 2
        after = [_ids_scores(c.query_points("k", query=q, using=u, limit=10).points) for q, u in queries]
        assert after == before
        again = c.retrieve("k", ids=[3, 4], with_vectors=True, with_payload=True)
        for a, b in zip(again, kept):
            assert a.payload == b.payload == {"o": 1}
            # Read over REST now, over gRPC (f32 on the wire) before.
            assert a.vector["text"].indices == b.vector["text"].indices
            assert a.vector["text"].values == pytest.approx(b.vector["text"].values, rel=1e-6)
        c.close()
    finally:
        stop_server(srv)


@MODES
def test_a_querys_filter_and_ids_reach_its_prefetches(qserver, reference, prefer_grpc):  # noqa: F811
    """The root filter applies inside every prefetch (fusion and re-scoring answer `limit`
    points passing it), and a point queried by id is left out of every ranking, as in local
    mode."""
    c = client_for(qserver, prefer_grpc)
    name = f"pf_{int(prefer_grpc)}"
    _create(c, name)
    c.upsert(name, points=_points(), wait=True)
    rng = random.Random(31)
    flt = models.Filter(must=[models.FieldCondition(key="g", match=models.MatchValue(value=1))])
    for _ in range(5):
        dense = [rng.uniform(-1, 1) for _ in range(DIM)]
        sparse = _sparse(rng, most=6)
        prefetch = [models.Prefetch(query=dense, using="dense", limit=15, params=models.SearchParams(exact=True)),
                    models.Prefetch(query=sparse, using="text", limit=15)]
        for query, using in ((models.FusionQuery(fusion=models.Fusion.RRF), None), (dense, "dense")):
            kw = dict(prefetch=prefetch, query=query, using=using, query_filter=flt, limit=8)
            got = c.query_points(name, **kw).points
            want = reference.query_points("h", **kw).points
            assert all(p.id % 3 == 1 for p in got)
            assert [p.id for p in got] == [p.id for p in want]
    by_id = [models.Prefetch(query=5, using="dense", limit=10, params=models.SearchParams(exact=True)),
             models.Prefetch(query=_sparse(rng), using="text", limit=10)]
    got = c.query_points(name, prefetch=by_id, query=models.FusionQuery(fusion=models.Fusion.RRF), limit=10).points
    want = reference.query_points("h", prefetch=by_id, query=models.FusionQuery(fusion=models.Fusion.RRF),
                                  limit=10).points
    assert 5 not in [p.id for p in got]
    assert [p.id for p in got] == [p.id for p in want]
    c.close()
