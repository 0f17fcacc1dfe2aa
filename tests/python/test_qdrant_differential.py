"""Differential test of Quiver's Qdrant API against qdrant-client's local mode
(`QdrantClient(":memory:")`, the PyPI package's own implementation of Qdrant's semantics).

Seeded random op sequences — upserts with payloads, set / overwrite / delete / clear payload,
deletes by ids and by filter, field indexes, and the collection training by itself part-way
(`metadata.quiver.train_at`) — go to both; at checkpoints along the way count, scroll,
retrieve and queries are compared: counts, scrolled ids and payloads, retrieved payloads and
vectors equal; `exact=True` queries return the same ids (scores within float rounding);
default-parameter queries reach recall@10 >= 0.95 against the local mode's exact answer, per
filter class, including filters passing fewer points than `limit`.

The seed budget is fixed (QUIVER_DIFF_SEEDS, default 4; a longer sweep: raise it).
"""

import os
import time

import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from test_qdrant import client_for, qserver  # noqa: F401  (the fixture)

DIM = 8
IDS = 400
SEEDS = int(os.environ.get("QUIVER_DIFF_SEEDS", "4"))
TAGS = ["a", "b", "c"]


def filter_classes():
    """Name → filter: none, broad, mid, selective (fewer points than `limit`), ranged."""
    fc = models.FieldCondition
    return {
        "none": None,
        "broad": models.Filter(must=[fc(key="tag", match=models.MatchAny(any=["a", "b"]))]),
        "mid": models.Filter(must=[fc(key="g", match=models.MatchValue(value=2))]),
        "selective": models.Filter(must=[
            fc(key="g", match=models.MatchValue(value=3)),
            fc(key="flag", match=models.MatchValue(value=True)),
        ]),
        "range_not": models.Filter(
            must=[fc(key="x", range=models.Range(gte=0.2, lt=0.7))],
            must_not=[fc(key="tag", match=models.MatchValue(value="c"))],
        ),
    }


def random_payload(rng):
    p = {"g": int(rng.integers(0, 6)), "tag": TAGS[int(rng.integers(0, 3))], "x": round(float(rng.random()), 4)}
    if rng.random() < 0.3:
        p["flag"] = bool(rng.random() < 0.5)
    return p


class Pair:
    """The same calls to Quiver (through qdrant-client) and to the local mode."""

    def __init__(self, quiver, local, name):
        self.q, self.l, self.name = quiver, local, name

    def both(self, method, **kw):
        getattr(self.q, method)(self.name, **kw)
        getattr(self.l, method)(self.name, **kw)

    def live(self):
        ids, offset = [], None
        while True:
            page, offset = self.l.scroll(self.name, limit=256, offset=offset, with_payload=False)
            ids += [p.id for p in page]
            if offset is None:
                return ids


def random_op(pair, rng, vectors, step):
    live = pair.live()
    kind = rng.choice(["upsert"] * 5 + ["set", "overwrite", "delete_keys", "clear", "delete_ids",
                                        "delete_filter"])
    if kind == "upsert" or len(live) < 10:
        n = int(rng.integers(1, 40))
        ids = [int(i) for i in rng.choice(IDS, size=n, replace=False)]
        pts = []
        for i in ids:
            vectors[i] = rng.standard_normal(DIM).astype(np.float32)
            pts.append(models.PointStruct(id=i, vector=vectors[i].tolist(), payload=random_payload(rng)))
        pair.both("upsert", points=pts, wait=True)
        return
    some = [int(i) for i in rng.choice(live, size=min(len(live), int(rng.integers(1, 15))), replace=False)]
    if kind == "set":
        pair.both("set_payload", payload={"flag": bool(rng.random() < 0.5), "g": int(rng.integers(0, 6))},
                  points=some, wait=True)
    elif kind == "overwrite":
        pair.both("overwrite_payload", payload=random_payload(rng), points=some, wait=True)
    elif kind == "delete_keys":
        pair.both("delete_payload", keys=[str(rng.choice(["flag", "g", "x"]))], points=some, wait=True)
    elif kind == "clear":
        pair.both("clear_payload", points_selector=models.PointIdsList(points=some[:3]), wait=True)
    elif kind == "delete_ids":
        pair.both("delete", points_selector=models.PointIdsList(points=some), wait=True)
    else:
        flt = models.Filter(must=[
            models.FieldCondition(key="g", match=models.MatchValue(value=int(rng.integers(0, 6)))),
            models.FieldCondition(key="tag", match=models.MatchValue(value=TAGS[int(rng.integers(0, 3))])),
        ])
        pair.both("delete", points_selector=models.FilterSelector(filter=flt), wait=True)


def scroll_all(c, name, flt=None):
    out, offset = [], None
    while True:
        page, offset = c.scroll(name, scroll_filter=flt, limit=97, offset=offset, with_payload=True)
        out += [(p.id, p.payload) for p in page]
        if offset is None:
            return out


def compare(pair, rng, label, recalls):
    q, l, name = pair.q, pair.l, pair.name
    classes = filter_classes()
    for cls, flt in classes.items():
        assert q.count(name, count_filter=flt, exact=True).count == l.count(name, count_filter=flt).count, (label, cls)
        assert scroll_all(q, name, flt) == scroll_all(l, name, flt), (label, cls)
    live = pair.live()
    some = [int(i) for i in rng.choice(IDS, size=30, replace=False)]
    got = {p.id: p for p in q.retrieve(name, ids=some, with_vectors=True)}
    want = {p.id: p for p in l.retrieve(name, ids=some, with_vectors=True)}
    assert sorted(got) == sorted(want), label
    for i, p in want.items():
        assert got[i].payload == p.payload, (label, i)
        assert np.allclose(got[i].vector, p.vector, atol=1e-5), (label, i)
    if not live:
        return
    queries = rng.standard_normal((12, DIM)).astype(np.float32)
    for cls, flt in classes.items():
        for x in queries:
            truth = l.query_points(name, query=x.tolist(), query_filter=flt, limit=10).points
            exact = q.query_points(name, query=x.tolist(), query_filter=flt, limit=10,
                                   search_params=models.SearchParams(exact=True)).points
            assert [h.id for h in exact] == [h.id for h in truth], (label, cls)
            assert np.allclose([h.score for h in exact], [h.score for h in truth], atol=1e-4), (label, cls)
            approx = q.query_points(name, query=x.tolist(), query_filter=flt, limit=10).points
            want_ids = {h.id for h in truth}
            hit = len(want_ids & {h.id for h in approx})
            recalls.setdefault(cls, [0, 0])
            recalls[cls][0] += hit
            recalls[cls][1] += len(want_ids)


@pytest.mark.parametrize("seed", range(SEEDS))
def test_random_ops_agree_with_qdrant_client_local_mode(qserver, seed):  # noqa: F811
    run_random_ops(lambda prefer_grpc: client_for(qserver, prefer_grpc), seed)


def run_random_ops(connect, seed, shard_number=None, expect_training=True):
    """One seed's op sequence against Quiver (`connect(prefer_grpc)` makes its client) and the
    local mode, compared at checkpoints; the collection has `shard_number` shards (None: the
    server's default). `expect_training`: the collection must have trained by itself once it
    held 256 points."""
    rng = np.random.default_rng(1000 + seed)
    distance = [models.Distance.COSINE, models.Distance.EUCLID, models.Distance.DOT][seed % 3]
    prefer_grpc = seed % 2 == 1
    quiver = connect(prefer_grpc)
    local = QdrantClient(":memory:")
    name = f"diff-{seed}"
    quiver.create_collection(name, vectors_config=models.VectorParams(size=DIM, distance=distance),
                             shard_number=shard_number,
                             metadata={"quiver": {"nlist": 64, "pq_m": 4, "refine": "f32", "train_at": 200}})
    local.create_collection(name, vectors_config=models.VectorParams(size=DIM, distance=distance))
    pair = Pair(quiver, local, name)
    vectors = {}
    recalls = {}
    for step in range(120):
        random_op(pair, rng, vectors, step)
        if step == 30:
            pair.both("create_payload_index", field_name="tag", field_schema=models.PayloadSchemaType.KEYWORD,
                      wait=True)
        if step == 60:
            pair.both("create_payload_index", field_name="g", field_schema=models.PayloadSchemaType.INTEGER,
                      wait=True)
        if step % 40 == 39:
            compare(pair, rng, f"seed {seed} step {step}", recalls)
    # The collection trains by itself once it holds 256 points (the optimizer's next tick).
    deadline = time.time() + 60
    while (expect_training and local.count(name).count >= 256
           and not quiver.get_collection(name).indexed_vectors_count
           and time.time() < deadline):
        time.sleep(0.1)
    info = quiver.get_collection(name)
    trained = info.indexed_vectors_count
    print(f"seed {seed} ({distance}, {'grpc' if prefer_grpc else 'rest'}): {info.points_count} points, "
          f"{trained} indexed; recall@10 " + ", ".join(f"{c} {h / max(t, 1):.3f} of {t}" for c, (h, t) in recalls.items()))
    if info.points_count >= 256 and expect_training:
        assert trained, "the collection did not train by itself"
    for cls, (hit, total) in recalls.items():
        if total:
            assert hit / total >= 0.95, f"seed {seed} {cls}: recall@10 {hit / total:.3f} ({hit}/{total}); trained: {trained}"
    quiver.close()
    local.close()
