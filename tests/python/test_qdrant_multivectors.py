"""Multi-vectors (`multivector_config` with `max_sim`, ColBERT-style late interaction) on
Quiver's Qdrant API, checked with qdrant-client from PyPI over REST and gRPC against
qdrant-client's local mode (`QdrantClient(":memory:")`):

- a collection with two named multi-vectors (cosine, Euclid) beside a plain dense vector, and
  a collection whose one unnamed vector is a multi-vector; the description reads back with
  `multivector_config`; points carry multi-vectors of any length, read back as given
  (cosine ones normalised);
- nearest queries by a multi-vector and by a point's id, with a filter;
  a dense prefetch re-scored by MaxSim (the two-stage retrieval ColBERT users run);
  recommendations (average, best score), discovery and context queries, and MMR on a
  multi-vector: the same ids and scores as local mode (scored exactly);
- a plain vector where a multi-vector is expected, and vectors of the wrong size inside a
  multi-vector (stored or queried), are refused naming the field.
"""

import random

import pytest
from qdrant_client import QdrantClient, models

from test_qdrant import client_for, qserver  # noqa: F401  (the fixture)
from test_qdrant_discovery import _same_ranking
from test_qdrant_named_vectors import _hits, _vec

MODES = pytest.mark.parametrize("prefer_grpc", [False, True], ids=["rest", "grpc"])
MAXSIM = models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM)
N = 150


def _multi(rng, dim):
    return [_vec(rng, dim) for _ in range(rng.randint(1, 5))]


def _points(seed):
    rng = random.Random(seed)
    pts = []
    for i in range(N):
        vec = {"tok": _multi(rng, 6), "patch": _multi(rng, 4), "dense": _vec(rng, 6)}
        if i % 7 == 0:
            vec.pop("patch")
        pts.append(models.PointStruct(id=i, vector=vec, payload={"g": i % 3}))
    return pts


def _create(c, name):
    c.create_collection(name, vectors_config={
        "tok": models.VectorParams(size=6, distance=models.Distance.COSINE, multivector_config=MAXSIM),
        "patch": models.VectorParams(size=4, distance=models.Distance.EUCLID, multivector_config=MAXSIM),
        "dense": models.VectorParams(size=6, distance=models.Distance.DOT),
    })


def _round(v):
    if isinstance(v, list) and v and isinstance(v[0], list):
        return [[round(x, 4) for x in r] for r in v]
    return [round(x, 4) for x in v]


@MODES
def test_named_multivectors_as_local_mode(qserver, prefer_grpc):  # noqa: F811
    c = client_for(qserver, prefer_grpc)
    ref = QdrantClient(":memory:")
    name = f"multi_vec_{int(prefer_grpc)}"
    for cl in [c, ref]:
        _create(cl, name)
        cl.upsert(name, points=_points(31), wait=True)
    vectors = c.get_collection(name).config.params.vectors
    assert vectors["tok"].multivector_config.comparator == models.MultiVectorComparator.MAX_SIM
    assert vectors["dense"].multivector_config is None

    got = c.retrieve(name, ids=[0, 1, 2, 7], with_vectors=["tok", "patch"])
    want = ref.retrieve(name, ids=[0, 1, 2, 7], with_vectors=["tok", "patch"])
    assert {r.id: {k: _round(v) for k, v in r.vector.items()} for r in got} == \
        {r.id: {k: _round(v) for k, v in r.vector.items()} for r in want}

    rng = random.Random(2)
    flt = models.Filter(must=[models.FieldCondition(key="g", match=models.MatchValue(value=1))])
    pair = models.ContextPair
    for using, dim in [("tok", 6), ("patch", 4)]:
        queries = [
            dict(query=_multi(rng, dim)),
            dict(query=_multi(rng, dim), query_filter=flt),
            dict(query=3),
            dict(query=models.RecommendQuery(recommend=models.RecommendInput(positive=[1, 2], negative=[3]))),
            dict(query=models.RecommendQuery(recommend=models.RecommendInput(
                positive=[1, _multi(rng, dim)], negative=[4], strategy=models.RecommendStrategy.BEST_SCORE))),
            dict(query=models.DiscoverQuery(discover=models.DiscoverInput(target=5, context=[pair(positive=8, negative=9)]))),
            dict(query=models.ContextQuery(context=[pair(positive=10, negative=_multi(rng, dim))])),
            dict(query=models.NearestQuery(nearest=_multi(rng, dim), mmr=models.Mmr(diversity=0.6, candidates_limit=30))),
        ]
        for i, q in enumerate(queries):
            g = c.query_points(name, using=using, limit=8, **q).points
            w = ref.query_points(name, using=using, limit=8, **q).points
            _same_ranking(_hits(g), _hits(w), f"{using} query {i}")

    # Two stages: the plain dense vector's candidates re-scored by MaxSim.
    prefetch = models.Prefetch(query=_vec(rng, 6), using="dense", limit=40)
    q = _multi(rng, 6)
    g = c.query_points(name, prefetch=prefetch, query=q, using="tok", limit=10).points
    w = ref.query_points(name, prefetch=prefetch, query=q, using="tok", limit=10).points
    _same_ranking(_hits(g), _hits(w), "prefetch re-scored")

    with pytest.raises(Exception, match="tok"):
        c.upsert(name, points=[models.PointStruct(id=999, vector={"tok": [0.1] * 6, "dense": [0.1] * 6})])
    with pytest.raises(Exception, match="dimension mismatch"):
        c.upsert(name, points=[models.PointStruct(id=999, vector={"tok": [[0.1] * 6, [0.1] * 5], "dense": [0.1] * 6})])


@MODES
def test_an_unnamed_multivector_as_local_mode(qserver, prefer_grpc):  # noqa: F811
    c = client_for(qserver, prefer_grpc)
    ref = QdrantClient(":memory:")
    name = f"multi_one_{int(prefer_grpc)}"
    rng = random.Random(13)
    pts = [models.PointStruct(id=i, vector=_multi(rng, 5)) for i in range(80)]
    for cl in [c, ref]:
        cl.create_collection(name, vectors_config=models.VectorParams(
            size=5, distance=models.Distance.DOT, multivector_config=MAXSIM))
        cl.upsert(name, points=pts, wait=True)
    assert c.get_collection(name).config.params.vectors.multivector_config is not None
    got = c.retrieve(name, ids=[3, 4], with_vectors=True)
    want = ref.retrieve(name, ids=[3, 4], with_vectors=True)
    assert [_round(r.vector) for r in got] == [_round(r.vector) for r in want]
    mmr = models.NearestQuery(nearest=_multi(rng, 5), mmr=models.Mmr(diversity=0.5, candidates_limit=20))
    for q in [_multi(rng, 5), 7, mmr]:
        g = c.query_points(name, query=q, limit=6).points
        w = ref.query_points(name, query=q, limit=6).points
        _same_ranking(_hits(g), _hits(w), f"unnamed {q}")
    # Vectors of another size inside a query are refused, not re-cut.
    with pytest.raises(Exception, match="dimension mismatch"):
        c.query_points(name, query=[[0.1] * 6, [0.2] * 4], limit=3)
