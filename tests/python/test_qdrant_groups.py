"""Grouped queries (`query_points_groups`, what a RAG stack uses to answer one hit per source
document) on Quiver's Qdrant API, checked with qdrant-client from PyPI over REST and gRPC
against qdrant-client's local mode (`QdrantClient(":memory:")`):

- groups by an integer key, a string key and an array key (a point joins the group of each
  value), `group_size` 1 and 3, a filter, a prefetch, and a named vector: the same groups in
  the same order, with the same hits;
- `with_lookup` answers each group's point from another collection;
- points whose key is missing, or holds a value that cannot name a group, join none;
- a missing `group_by` is refused naming the field.
"""

import random

import pytest
from qdrant_client import QdrantClient, models

from test_qdrant import client_for, qserver  # noqa: F401  (the fixture)
from test_qdrant_named_vectors import _vec

MODES = pytest.mark.parametrize("prefer_grpc", [False, True], ids=["rest", "grpc"])


def _groups(res):
    return [(g.id, [(h.id, round(h.score, 3)) for h in g.hits],
             None if g.lookup is None else (g.lookup.id, g.lookup.payload)) for g in res.groups]


@MODES
def test_groups_as_local_mode(qserver, prefer_grpc):  # noqa: F811
    c = client_for(qserver, prefer_grpc)
    ref = QdrantClient(":memory:")
    name, docs = f"groups_{int(prefer_grpc)}", f"groups_docs_{int(prefer_grpc)}"
    rng = random.Random(21)
    pts = []
    for i in range(200):
        payload = {"doc": i % 17, "source": f"s{i % 5}", "tags": [i % 4, (i * 7) % 4], "i": i}
        if i % 13 == 0:
            payload.pop("doc")
        if i % 29 == 0:
            payload["doc"] = 1.5  # not an integer or a string: in no group
        pts.append(models.PointStruct(id=i, vector={"v": _vec(rng, 8), "w": _vec(rng, 4)}, payload=payload))
    for cl in [c, ref]:
        cl.create_collection(name, vectors_config={
            "v": models.VectorParams(size=8, distance=models.Distance.COSINE),
            "w": models.VectorParams(size=4, distance=models.Distance.EUCLID)})
        cl.upsert(name, points=pts, wait=True)
        cl.create_collection(docs, vectors_config={})
        cl.upsert(docs, points=[models.PointStruct(id=d, vector={}, payload={"title": f"doc {d}"})
                                for d in range(17)], wait=True)
    flt = models.Filter(must_not=[models.FieldCondition(key="source", match=models.MatchValue(value="s2"))])
    cases = [
        dict(query=_vec(rng, 8), using="v", group_by="doc", limit=5, group_size=3),
        dict(query=_vec(rng, 8), using="v", group_by="source", limit=3, group_size=1),
        dict(query=_vec(rng, 8), using="v", group_by="tags", limit=4, group_size=2, query_filter=flt),
        dict(query=_vec(rng, 4), using="w", group_by="doc", limit=6, group_size=2,
             with_lookup=models.WithLookup(collection=docs, with_payload=True)),
        dict(query=_vec(rng, 4), using="w", group_by="doc", limit=4, group_size=2,
             prefetch=models.Prefetch(query=_vec(rng, 8), using="v", limit=30)),
    ]
    for i, kw in enumerate(cases):
        got = c.query_points_groups(name, **kw)
        want = ref.query_points_groups(name, **kw)
        assert _groups(got) == _groups(want), f"case {i}"
    with pytest.raises(Exception, match="group_by"):
        c.query_points_groups(name, query=_vec(rng, 8), using="v", group_by="")
