"""Maximal marginal relevance (`nearest` + `mmr`, what LangChain's
`max_marginal_relevance_search` sends) on Quiver's Qdrant API, checked with qdrant-client from
PyPI over REST and gRPC against qdrant-client's local mode (`QdrantClient(":memory:")`):

- on named dense vectors of each distance, on sparse vectors and on a one-vector collection:
  the same points in the same order, with their nearest-query scores, for several diversities,
  candidate limits, offsets and a filter;
- diversity 0 is the nearest ranking itself;
- a diversity outside [0, 1] is refused naming the field.
"""

import random

import pytest
from qdrant_client import QdrantClient, models

from test_qdrant import client_for, qserver  # noqa: F401  (the fixture)
from test_qdrant_named_vectors import SIZES, _create, _hits, _points, _vec

MODES = pytest.mark.parametrize("prefer_grpc", [False, True], ids=["rest", "grpc"])


def _mmr(q, diversity=None, candidates=None):
    return models.NearestQuery(nearest=q, mmr=models.Mmr(diversity=diversity, candidates_limit=candidates))


def _same(got, want, what):
    assert [p.id for p in got] == [p.id for p in want], f"{what}: {_hits(got)} vs {_hits(want)}"
    for g, w in zip(got, want):
        assert abs(g.score - w.score) <= 2e-3, f"{what}: {_hits(got)} vs {_hits(want)}"


@MODES
def test_mmr_as_local_mode(qserver, prefer_grpc):  # noqa: F811
    c = client_for(qserver, prefer_grpc)
    ref = QdrantClient(":memory:")
    name = f"mmr_{int(prefer_grpc)}"
    for cl in [c, ref]:
        _create(cl, name)
        cl.upsert(name, points=_points(seed=23), wait=True)
    rng = random.Random(6)
    flt = models.Filter(must_not=[models.FieldCondition(key="g", match=models.MatchValue(value=0))])
    settings = [
        dict(diversity=None, candidates=None, limit=8),
        dict(diversity=0.8, candidates=40, limit=10),
        dict(diversity=0.3, candidates=25, limit=6, offset=2, query_filter=flt),
        dict(diversity=1.0, candidates=30, limit=5),
    ]
    for using, size in SIZES.items():
        for s in settings:
            s = dict(s)
            q = _mmr(_vec(rng, size), s.pop("diversity"), s.pop("candidates"))
            got = c.query_points(name, query=q, using=using, **s).points
            want = ref.query_points(name, query=q, using=using, **s).points
            _same(got, want, f"{using} {s}")
        # Diversity 0: the nearest ranking.
        v = _vec(rng, size)
        got = c.query_points(name, query=_mmr(v, 0.0, 20), using=using, limit=7).points
        plain = c.query_points(name, query=v, using=using, limit=7).points
        assert [p.id for p in got] == [p.id for p in plain]

    sv = models.SparseVector(indices=[1, 4, 9, 17, 30], values=[1.0, 0.5, 1.5, 0.7, 0.2])
    for d in [0.2, 0.7]:
        got = c.query_points(name, query=_mmr(sv, d, 30), using="words", limit=8).points
        want = ref.query_points(name, query=_mmr(sv, d, 30), using="words", limit=8).points
        _same(got, want, f"sparse {d}")

    with pytest.raises(Exception, match="diversity"):
        c.query_points(name, query=models.NearestQuery(
            nearest=_vec(rng, SIZES["text"]), mmr=models.Mmr.model_construct(diversity=1.5)), using="text")


@MODES
def test_mmr_on_a_one_vector_collection(qserver, prefer_grpc):  # noqa: F811
    c = client_for(qserver, prefer_grpc)
    ref = QdrantClient(":memory:")
    name = f"mmr_one_{int(prefer_grpc)}"
    rng = random.Random(12)
    pts = [models.PointStruct(id=i, vector=_vec(rng, 12)) for i in range(300)]
    for cl in [c, ref]:
        cl.create_collection(name, vectors_config=models.VectorParams(size=12, distance=models.Distance.COSINE))
        cl.upsert(name, points=pts, wait=True)
    for d in [0.1, 0.5, 0.9]:
        q = _mmr(_vec(rng, 12), d, 50)
        got = c.query_points(name, query=q, limit=10).points
        want = ref.query_points(name, query=q, limit=10).points
        _same(got, want, f"one vector {d}")
