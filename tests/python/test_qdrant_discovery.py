"""Queries scored against examples on Quiver's Qdrant API: discovery (a target and context
pairs), context search (pairs alone) and the `best_score` / `sum_scores` recommendation
strategies, checked with qdrant-client from PyPI over REST and gRPC against qdrant-client's
local mode (`QdrantClient(":memory:")`), the reference for Qdrant's semantics:

- on named dense vectors of each distance (cosine, Euclid, dot), on sparse vectors, and on a
  one-vector collection before and after its IVF-PQ index is trained: the same ids and scores
  as local mode (these queries score every point exactly);
- examples by point id (left out of the answer) and by vector, with a filter, an offset and a
  score threshold; sparse recommendations by the average vector;
- bad input: a context query without pairs, a sparse example for a dense vector, a NaN in an
  example, each refused naming the field.
"""

import random

import pytest
from qdrant_client import QdrantClient, models

from test_qdrant import client_for, qserver  # noqa: F401  (the fixture)
from test_qdrant_named_vectors import SIZES, _create, _hits, _points, _vec

MODES = pytest.mark.parametrize("prefer_grpc", [False, True], ids=["rest", "grpc"])


def _same_ranking(got, want, what):
    """Equal scores in order; equal ids but where scores tie, within the answer or with the
    points left out at its end (many points score 0 on these queries: which of them make the
    cut is either's choice)."""
    assert len(got) == len(want), f"{what}: {got} vs {want}"
    last = want[-1][1] if want else None
    for (gi, gs), (wi, ws) in zip(got, want):
        assert abs(gs - ws) <= 2e-3, f"{what}: {got} vs {want}"
        tied = sum(1 for _, s in want if abs(s - ws) <= 2e-3) > 1 or abs(ws - last) <= 2e-3
        assert gi == wi or tied, f"{what}: {got} vs {want}"


def _pair(p, n):
    return models.ContextPair(positive=p, negative=n)


def _example_queries(rng, using, size, holders):
    """Discovery, context and example-strategy queries on the vector `using`."""
    v = lambda: _vec(rng, size)  # noqa: E731
    reco = lambda strategy, pos, neg: models.RecommendQuery(  # noqa: E731
        recommend=models.RecommendInput(positive=pos, negative=neg, strategy=strategy)
    )
    return [
        models.DiscoverQuery(discover=models.DiscoverInput(
            target=holders[0], context=[_pair(holders[1], holders[2]), _pair(v(), holders[3])])),
        models.DiscoverQuery(discover=models.DiscoverInput(target=v(), context=[])),
        models.ContextQuery(context=[_pair(holders[4], holders[5]), _pair(v(), v())]),
        models.ContextQuery(context=_pair(holders[1], v())),
        reco(models.RecommendStrategy.BEST_SCORE, [holders[0], v()], [holders[2]]),
        reco(models.RecommendStrategy.BEST_SCORE, [], [holders[3], holders[4]]),
        reco(models.RecommendStrategy.SUM_SCORES, [holders[1]], [v(), holders[5]]),
    ]


@pytest.fixture(scope="module")
def reference():
    ref = QdrantClient(":memory:")
    _create(ref, "m")
    ref.upsert("m", points=_points(seed=17))
    return ref


@MODES
def test_named_and_sparse_vectors_as_local_mode(qserver, reference, prefer_grpc):  # noqa: F811
    c = client_for(qserver, prefer_grpc)
    name = f"disc_{int(prefer_grpc)}"
    _create(c, name)
    c.upsert(name, points=_points(seed=17), wait=True)
    rng = random.Random(5)
    flt = models.Filter(must_not=[models.FieldCondition(key="g", match=models.MatchValue(value=2))])
    for using, size in SIZES.items():
        holders = [p.id for p in _points(seed=17) if using in p.vector][:6]
        for i, q in enumerate(_example_queries(rng, using, size, holders)):
            for kw in [dict(limit=12), dict(limit=5, offset=3, query_filter=flt)]:
                got = c.query_points(name, query=q, using=using, **kw).points
                want = reference.query_points("m", query=q, using=using, **kw).points
                _same_ranking(_hits(got), _hits(want), f"{using} query {i} {kw}")
        # A score threshold keeps the points scoring at least it. (Local mode reads it as a
        # distance bound on Euclid vectors even for these scores, higher better; not compared.)
        if using == "image":
            continue
        q = _example_queries(rng, using, size, holders)[4]
        got = c.query_points(name, query=q, using=using, limit=50, score_threshold=0.0).points
        want = reference.query_points("m", query=q, using=using, limit=50, score_threshold=0.0).points
        _same_ranking(_hits(got), _hits(want), f"{using} threshold")

    # Sparse: examples by id and by sparse vector, and the average vector.
    holders = [p.id for p in _points(seed=17) if "words" in p.vector][:6]
    sv = lambda: models.SparseVector(indices=sorted(rng.sample(range(40), 4)), values=[0.5, 1.0, 1.5, 0.25])  # noqa: E731
    queries = [
        models.DiscoverQuery(discover=models.DiscoverInput(target=sv(), context=[_pair(holders[0], holders[1])])),
        models.ContextQuery(context=[_pair(holders[2], sv())]),
        models.RecommendQuery(recommend=models.RecommendInput(
            positive=[holders[3]], negative=[sv()], strategy=models.RecommendStrategy.SUM_SCORES)),
        models.RecommendQuery(recommend=models.RecommendInput(positive=[holders[4], sv()], negative=[holders[5]])),
    ]
    for i, q in enumerate(queries):
        got = c.query_points(name, query=q, using="words", limit=10).points
        want = reference.query_points("m", query=q, using="words", limit=10).points
        _same_ranking(_hits(got), _hits(want), f"sparse query {i}")


@MODES
def test_one_vector_collection_before_and_after_training(qserver, prefer_grpc):  # noqa: F811
    c = client_for(qserver, prefer_grpc)
    ref = QdrantClient(":memory:")
    name = f"disc_one_{int(prefer_grpc)}"
    rng = random.Random(8)
    pts = [models.PointStruct(id=i, vector=_vec(rng, 16), payload={"g": i % 3}) for i in range(600)]
    for cl in [c, ref]:
        cl.create_collection(
            name,
            vectors_config=models.VectorParams(size=16, distance=models.Distance.COSINE),
            metadata={"quiver": {"nlist": 8, "pq_m": 4, "train_at": 400}},
        )
    for cl in [c, ref]:
        cl.upsert(name, points=pts[:300], wait=True)
    queries = _example_queries(rng, "", 16, [3, 7, 11, 19, 23, 29])

    def check(what):
        for i, q in enumerate(queries):
            got = c.query_points(name, query=q, limit=10).points
            want = ref.query_points(name, query=q, limit=10).points
            _same_ranking(_hits(got), _hits(want), f"{what} query {i}")

    check("flat")
    for cl in [c, ref]:
        cl.upsert(name, points=pts[300:], wait=True)
    check("trained")


@MODES
def test_bad_examples_are_refused(qserver, prefer_grpc):  # noqa: F811
    c = client_for(qserver, prefer_grpc)
    name = f"disc_bad_{int(prefer_grpc)}"
    _create(c, name)
    c.upsert(name, points=_points(seed=17)[:40], wait=True)
    with pytest.raises(Exception, match="context"):
        c.query_points(name, query=models.ContextQuery(context=[]), using="text")
    with pytest.raises(Exception, match="sparse"):
        c.query_points(name, using="text", query=models.DiscoverQuery(discover=models.DiscoverInput(
            target=models.SparseVector(indices=[1], values=[1.0]), context=[])))
    nan = [float("nan")] + [0.1] * (SIZES["text"] - 1)
    with pytest.raises(Exception, match="query"):
        c.query_points(name, using="text", query=models.ContextQuery(context=[_pair(nan, 1)]))
