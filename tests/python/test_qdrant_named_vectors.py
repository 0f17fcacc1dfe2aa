"""Collections with several named dense vectors on Quiver's Qdrant API, checked with
qdrant-client from PyPI over REST and gRPC against qdrant-client's local mode
(`QdrantClient(":memory:")`), the reference for Qdrant's semantics:

- a collection with three dense vectors (each its own size and distance) and a sparse one;
  its description reads back in the form given;
- points carry any subset of the vectors; read back by name (all, some, none), cosine vectors
  normalised as Qdrant keeps them;
- queries `using` each vector, with and without a filter, by vector and by a point's id: the
  same ids and scores as local mode (these vectors are searched exactly);
- hybrid queries: RRF over prefetches on two dense vectors and the sparse one;
- `update_vectors` replaces some vectors of points, keeping their payload and other vectors;
  `delete_vectors` removes some (by ids and by filter); both as local mode does;
- a point that does not exist is NOT_FOUND for `update_vectors`; a vector name the collection
  lacks is refused naming it; the dense vector of a one-vector collection cannot be deleted.

The vectors are kept in the payload (under reserved keys), so the log, checkpoints and replay
carry them; the store's own test (server/store/tests/payload_vectors.rs) searches them across
restarts.
"""

import random

import pytest
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from test_qdrant import client_for, qserver  # noqa: F401  (the fixture)

MODES = pytest.mark.parametrize("prefer_grpc", [False, True], ids=["rest", "grpc"])
N = 240
SIZES = {"text": 8, "image": 5, "code": 6}
DISTANCES = {
    "text": models.Distance.COSINE,
    "image": models.Distance.EUCLID,
    "code": models.Distance.DOT,
}


def _vec(rng, n):
    return [round(rng.uniform(-1, 1), 4) for _ in range(n)]


def _points(seed=9):
    rng = random.Random(seed)
    pts = []
    for i in range(N):
        vec = {n: _vec(rng, d) for n, d in SIZES.items()}
        # About one point in five lacks one of the vectors.
        if rng.random() < 0.2:
            vec.pop(rng.choice(list(SIZES)))
        if i % 3 == 0:
            terms = sorted(rng.sample(range(40), rng.randint(1, 6)))
            vec["words"] = models.SparseVector(
                indices=terms, values=[round(rng.uniform(0.1, 2.0), 3) for _ in terms]
            )
        pts.append(models.PointStruct(id=i, vector=vec, payload={"g": i % 4, "i": i}))
    return pts


def _create(c, name):
    c.create_collection(
        name,
        vectors_config={
            n: models.VectorParams(size=d, distance=DISTANCES[n]) for n, d in SIZES.items()
        },
        sparse_vectors_config={"words": models.SparseVectorParams()},
    )


def _hits(points):
    return [(p.id, round(p.score, 3)) for p in points]


def _same_ranking(got, want, what):
    """Equal scores in order, and equal ids but where scores tie (either order is right)."""
    assert len(got) == len(want), f"{what}: {got} vs {want}"
    for (gi, gs), (wi, ws) in zip(got, want):
        assert abs(gs - ws) <= 2e-3, f"{what}: {got} vs {want}"
        tied = sum(1 for _, s in want if abs(s - ws) <= 2e-3) > 1
        assert gi == wi or tied, f"{what}: {got} vs {want}"


def _records(rs):
    out = {}
    for r in rs:
        v = r.vector or {}
        out[r.id] = (
            {k: [round(x, 4) for x in vv] for k, vv in v.items() if isinstance(vv, list)},
            r.payload,
        )
    return out


@pytest.fixture(scope="module")
def reference():
    ref = QdrantClient(":memory:")
    _create(ref, "m")
    ref.upsert("m", points=_points())
    return ref


@MODES
def test_several_dense_vectors_equal_local_mode(qserver, reference, prefer_grpc):  # noqa: F811
    c = client_for(qserver, prefer_grpc)
    name = f"multi_{int(prefer_grpc)}"
    _create(c, name)
    c.upsert(name, points=_points(), wait=True)

    info = c.get_collection(name)
    params = info.config.params.vectors
    assert set(params) == set(SIZES)
    for n, d in SIZES.items():
        assert params[n].size == d and params[n].distance == DISTANCES[n]
    assert set(info.config.params.sparse_vectors) == {"words"}

    # Read back: every vector, some, none.
    for sel in [True, ["image"], ["text", "words"], False]:
        got = c.retrieve(name, ids=list(range(0, 40, 3)), with_vectors=sel)
        want = reference.retrieve("m", ids=list(range(0, 40, 3)), with_vectors=sel)
        assert _records(got) == _records(want), sel

    rng = random.Random(3)
    for using, d in SIZES.items():
        for f in [None, models.Filter(must=[models.FieldCondition(key="g", match=models.MatchValue(value=1))])]:
            q = _vec(rng, d)
            got = c.query_points(name, query=q, using=using, limit=10, query_filter=f).points
            want = reference.query_points("m", query=q, using=using, limit=10, query_filter=f).points
            _same_ranking(_hits(got), _hits(want), f"{using} {f}")
        # By a point's id (left out of the answer).
        holder = next(p.id for p in _points() if using in p.vector)
        got = c.query_points(name, query=holder, using=using, limit=5).points
        want = reference.query_points("m", query=holder, using=using, limit=5).points
        _same_ranking(_hits(got), _hits(want), f"{using} by id")
        assert holder not in [p.id for p in got]

    # Hybrid: RRF over two dense vectors and the sparse one.
    q_text, q_code = _vec(rng, SIZES["text"]), _vec(rng, SIZES["code"])
    prefetch = [
        models.Prefetch(query=q_text, using="text", limit=30),
        models.Prefetch(query=q_code, using="code", limit=30),
        models.Prefetch(
            query=models.SparseVector(indices=[1, 5, 9, 20], values=[1.0, 0.5, 0.7, 1.2]),
            using="words",
            limit=30,
        ),
    ]
    fused = models.FusionQuery(fusion=models.Fusion.RRF)
    got = c.query_points(name, prefetch=prefetch, query=fused, limit=10).points
    want = reference.query_points("m", prefetch=prefetch, query=fused, limit=10).points
    _same_ranking(_hits(got), _hits(want), "rrf")

    # A name the collection lacks.
    with pytest.raises(Exception, match="audio"):
        c.query_points(name, query=[0.1] * 4, using="audio", limit=3)


@MODES
def test_update_and_delete_vectors_as_local_mode(qserver, prefer_grpc):  # noqa: F811
    c = client_for(qserver, prefer_grpc)
    ref = QdrantClient(":memory:")
    name = f"upd_{int(prefer_grpc)}"
    for cl, n in [(c, name), (ref, name)]:
        _create(cl, n)
        cl.upsert(n, points=_points(seed=21), wait=True)
    rng = random.Random(8)
    new = [
        models.PointVectors(id=i, vector={"image": _vec(rng, SIZES["image"])})
        for i in range(0, 30, 2)
    ] + [models.PointVectors(id=31, vector={"text": _vec(rng, SIZES["text"]), "code": _vec(rng, SIZES["code"])})]
    for cl in [c, ref]:
        cl.update_vectors(name, points=new, wait=True)
        cl.delete_vectors(name, vectors=["code"], points=[1, 3, 5, 31], wait=True)
        cl.delete_vectors(
            name,
            vectors=["text", "words"],
            points=models.Filter(must=[models.FieldCondition(key="i", range=models.Range(gte=200))]),
            wait=True,
        )
        cl.set_payload(name, payload={"edited": True}, points=[0, 2], wait=True)
    ids = list(range(0, 40)) + list(range(195, 240))
    got = c.retrieve(name, ids=ids, with_vectors=True)
    want = ref.retrieve(name, ids=ids, with_vectors=True)
    assert _records(got) == _records(want)
    q = _vec(rng, SIZES["image"])
    _same_ranking(
        _hits(c.query_points(name, query=q, using="image", limit=10).points),
        _hits(ref.query_points(name, query=q, using="image", limit=10).points),
        "image after updates",
    )
    # A missing point, and a name the collection lacks.
    with pytest.raises(Exception, match="(?i)not.?found|No point"):
        c.update_vectors(name, points=[models.PointVectors(id=99999, vector={"image": [0.0] * 5})])
    with pytest.raises(Exception, match="audio"):
        c.delete_vectors(name, vectors=["audio"], points=[1])


@MODES
def test_one_vector_collections_update_it_and_refuse_deleting_it(qserver, prefer_grpc):  # noqa: F811
    c = client_for(qserver, prefer_grpc)
    name = f"one_{int(prefer_grpc)}"
    c.create_collection(name, vectors_config=models.VectorParams(size=4, distance=models.Distance.DOT))
    c.upsert(
        name,
        points=[models.PointStruct(id=i, vector=[float(i), 1.0, 0.0, 0.5], payload={"i": i}) for i in range(10)],
        wait=True,
    )
    c.update_vectors(name, points=[models.PointVectors(id=3, vector=[9.0, 9.0, 9.0, 9.0])], wait=True)
    r = c.retrieve(name, ids=[3], with_vectors=True, with_payload=True)[0]
    assert r.vector == [9.0, 9.0, 9.0, 9.0] and r.payload == {"i": 3}
    assert c.query_points(name, query=[1.0, 1.0, 1.0, 1.0], limit=1).points[0].id == 3
    with pytest.raises(Exception, match="(?i)dense vector"):
        c.delete_vectors(name, vectors=[""], points=[3])


@MODES
def test_has_vector_batches_paths_and_vectorless_queries_as_local_mode(qserver, reference, prefer_grpc):  # noqa: F811
    """`has_vector` counts, a batch of updates, payload selection by key path and a query
    without a vector, each compared with local mode."""
    c = client_for(qserver, prefer_grpc)
    ref = QdrantClient(":memory:")
    name = f"misc_{int(prefer_grpc)}"
    for cl in [c, ref]:
        _create(cl, name)
        cl.upsert(name, points=_points(seed=33), wait=True)
    for v in list(SIZES) + ["words"]:
        f = models.Filter(must=[models.HasVectorCondition(has_vector=v)])
        assert c.count(name, count_filter=f).count == ref.count(name, count_filter=f).count, v
        f = models.Filter(must_not=[models.HasVectorCondition(has_vector=v)])
        assert c.count(name, count_filter=f).count == ref.count(name, count_filter=f).count, v
    ops = [
        models.UpsertOperation(upsert=models.PointsList(points=[
            models.PointStruct(id=1000, vector={"image": [0.1, 0.2, 0.3, 0.4, 0.5]},
                               payload={"g": 9, "nested": {"a": 1, "b": [{"c": 1, "d": 2}]}})])),
        models.SetPayloadOperation(set_payload=models.SetPayload(payload={"tag": "x"}, points=[1, 2, 1000])),
        models.DeletePayloadOperation(delete_payload=models.DeletePayload(keys=["i"], points=[2])),
        models.DeleteVectorsOperation(delete_vectors=models.DeleteVectors(vector=["text"], points=[3])),
        models.UpdateVectorsOperation(update_vectors=models.UpdateVectors(points=[
            models.PointVectors(id=4, vector={"code": [1.0] * SIZES["code"]})])),
        models.DeleteOperation(delete=models.PointIdsList(points=[5])),
        models.ClearPayloadOperation(clear_payload=models.PointIdsList(points=[6])),
    ]
    for cl in [c, ref]:
        cl.batch_update_points(name, update_operations=ops, wait=True)
    ids = [1, 2, 3, 4, 5, 6, 1000]
    assert _records(c.retrieve(name, ids, with_vectors=True, with_payload=True)) == _records(
        ref.retrieve(name, ids, with_vectors=True, with_payload=True)
    )
    for sel in [["nested.a", "g"], ["nested.b[].c"], models.PayloadSelectorExclude(exclude=["nested.b[].d", "tag"])]:
        got = c.retrieve(name, [1000, 1], with_payload=sel)
        want = ref.retrieve(name, [1000, 1], with_payload=sel)
        assert {r.id: r.payload for r in got} == {r.id: r.payload for r in want}, sel
    f = models.Filter(must=[models.FieldCondition(key="g", match=models.MatchValue(value=2))])
    got = c.query_points(name, query_filter=f, limit=7, offset=2, with_payload=True).points
    want = ref.query_points(name, query_filter=f, limit=7, offset=2, with_payload=True).points
    assert [(p.id, p.score, p.payload) for p in got] == [(p.id, p.score, p.payload) for p in want]


@MODES
def test_recommend_and_lookup_from_as_local_mode(qserver, reference, prefer_grpc):  # noqa: F811
    """Recommendations (average_vector) by ids and vectors, on a named vector and on a
    one-vector collection, and `lookup_from` another collection, against local mode."""
    c = client_for(qserver, prefer_grpc)
    ref = QdrantClient(":memory:")
    name, other = f"rec_{int(prefer_grpc)}", f"rec_other_{int(prefer_grpc)}"
    rng = random.Random(4)
    for cl in [c, ref]:
        _create(cl, name)
        cl.upsert(name, points=_points(seed=41), wait=True)
        cl.create_collection(other, vectors_config={"img": models.VectorParams(size=SIZES["image"], distance=models.Distance.DOT)})
        cl.upsert(other, points=[models.PointStruct(id=i, vector={"img": _vec(random.Random(i), SIZES["image"])})
                                 for i in range(20)], wait=True)
    holders = [p.id for p in _points(seed=41) if "image" in p.vector][:6]
    queries = [
        dict(query=models.RecommendQuery(recommend=models.RecommendInput(positive=holders[:2], negative=holders[2:4])),
             using="image"),
        dict(query=models.RecommendQuery(recommend=models.RecommendInput(
            positive=[holders[4], _vec(rng, SIZES["image"])])), using="image"),
        dict(query=models.RecommendQuery(recommend=models.RecommendInput(positive=[1, 2], negative=[3])),
             using="image", lookup_from=models.LookupLocation(collection=other, vector="img")),
        dict(query=5, using="image", lookup_from=models.LookupLocation(collection=other, vector="img")),
        # A lookup in the collection itself: its points named by id are left out.
        dict(query=models.RecommendQuery(recommend=models.RecommendInput(positive=holders[:3])),
             using="image", lookup_from=models.LookupLocation(collection=name, vector="image")),
    ]
    for i, q in enumerate(queries):
        got = c.query_points(name, limit=8, **q).points
        want = ref.query_points(name, limit=8, **q).points
        _same_ranking(_hits(got), _hits(want), f"query {i}")
    with pytest.raises(Exception, match="Not found: Collection"):
        c.query_points(name, query=1, using="image", lookup_from=models.LookupLocation(collection="nope"))
    with pytest.raises(Exception, match="Not existing vector name"):
        c.query_points(name, query=1, using="image", lookup_from=models.LookupLocation(collection=other, vector="x"))
    with pytest.raises(Exception, match="examples exceed the limit"):
        c.query_points(name, using="image", query=models.RecommendQuery(
            recommend=models.RecommendInput(positive=list(range(300)))))
