"""The filter conditions #33 added, against qdrant-client's local mode (`QdrantClient(":memory:")`)
on both ports: seeded random payloads (geo points, datetimes, text, arrays, arrays of objects,
nulls) and seeded random filters of each kind — `values_count`, datetime ranges (as
`datetime_range` and as a `range` of strings), `geo_radius`, `geo_bounding_box`,
`geo_polygon` (with a hole), full-text `text` / `text_any` / `phrase` / `prefix` /
`substring`, and `nested` — alone and combined under must / should / must_not. Counts,
scrolled ids and exact filtered queries (`exact=True`) must equal local mode's; a field index
on another key of the same condition does not change the answer.
"""

import datetime as dt
import random

import pytest
from qdrant_client import QdrantClient, models

from test_qdrant import client_for, qserver  # noqa: F401  (the fixture)

MODES = pytest.mark.parametrize("prefer_grpc", [False, True], ids=["rest", "grpc"])
DIM = 4
N = 300
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa Lambda MU".split()
BASE = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def _payload(rng, i):
    p = {"i": i}
    if rng.random() < 0.9:
        p["loc"] = {"lon": round(rng.uniform(-20, 20), 4), "lat": round(rng.uniform(-20, 20), 4)}
    if rng.random() < 0.2:
        p["loc"] = [p.get("loc", {"lon": 0.0, "lat": 0.0}), {"lon": round(rng.uniform(-20, 20), 4), "lat": 1.5}]
    r = rng.random()
    when = BASE + dt.timedelta(minutes=rng.randint(0, 60 * 24 * 30))
    if r < 0.4:
        p["when"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    elif r < 0.6:
        p["when"] = when.strftime("%Y-%m-%d %H:%M:%S")
    elif r < 0.75:
        p["when"] = (when + dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+02:00")
    elif r < 0.85:
        p["when"] = when.strftime("%Y-%m-%d")
    if rng.random() < 0.9:
        p["text"] = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))) + rng.choice(["", ".", "!"])
    n = rng.randint(0, 4)
    if rng.random() < 0.8:
        p["tags"] = [rng.choice(["x", "y", "z"]) for _ in range(n)]
    elif rng.random() < 0.5:
        p["tags"] = None
    if rng.random() < 0.85:
        p["items"] = [{"name": rng.choice(["a", "b", "c"]), "qty": rng.randint(0, 5)}
                      for _ in range(rng.randint(0, 3))]
    return p


def _point(rng):
    return models.GeoPoint(lon=round(rng.uniform(-20, 20), 3), lat=round(rng.uniform(-20, 20), 3))


def _condition(rng):
    fc = models.FieldCondition
    kind = rng.choice(["count", "dt", "dt_range", "radius", "box", "polygon", "text", "text_any", "phrase",
                       "prefix", "substring", "nested"])
    if kind == "count":
        lo = rng.randint(0, 3)
        return fc(key="tags", values_count=models.ValuesCount(gte=lo, lt=lo + rng.randint(1, 3)))
    if kind in ("dt", "dt_range"):
        a = BASE + dt.timedelta(days=rng.randint(0, 29), hours=rng.randint(0, 23))
        b = a + dt.timedelta(days=rng.randint(1, 10))
        r = models.DatetimeRange(gte=a, lt=b) if rng.random() < 0.5 else models.DatetimeRange(gt=a.isoformat())
        return fc(key="when", range=r)
    if kind == "radius":
        return fc(key="loc", geo_radius=models.GeoRadius(center=_point(rng), radius=rng.uniform(1e5, 2e6)))
    if kind == "box":
        a, b = _point(rng), _point(rng)
        return fc(key="loc", geo_bounding_box=models.GeoBoundingBox(
            top_left=models.GeoPoint(lon=min(a.lon, b.lon), lat=max(a.lat, b.lat)),
            bottom_right=models.GeoPoint(lon=max(a.lon, b.lon), lat=min(a.lat, b.lat))))
    if kind == "polygon":
        c, w = _point(rng), rng.uniform(3, 12)
        ring = [(c.lon - w, c.lat - w), (c.lon + w, c.lat - w), (c.lon + w, c.lat + w), (c.lon - w, c.lat + w)]
        hole = [(c.lon - 1, c.lat - 1), (c.lon + 1, c.lat - 1), (c.lon + 1, c.lat + 1), (c.lon - 1, c.lat + 1)]
        line = lambda pts: models.GeoLineString(points=[models.GeoPoint(lon=x, lat=y) for x, y in pts + pts[:1]])  # noqa: E731
        return fc(key="loc", geo_polygon=models.GeoPolygon(exterior=line(ring), interiors=[line(hole)]))
    if kind == "text":
        return fc(key="text", match=models.MatchText(text=" ".join(rng.sample(WORDS, rng.randint(1, 2)))))
    if kind == "text_any":
        return fc(key="text", match=models.MatchTextAny(text_any=" ".join(rng.sample(WORDS, 2))))
    if kind == "phrase":
        return fc(key="text", match=models.MatchPhrase(phrase=" ".join(rng.sample(WORDS, 2))))
    if kind == "prefix":
        return fc(key="text", match=models.MatchPrefix(prefix=rng.choice(WORDS)[:3]))
    if kind == "substring":
        return fc(key="text", match=models.MatchSubstring(substring=rng.choice(WORDS)[1:4]))
    inner = [fc(key="name", match=models.MatchValue(value=rng.choice("abc")))]
    if rng.random() < 0.5:
        inner.append(fc(key="qty", range=models.Range(gte=rng.randint(0, 4))))
    return models.NestedCondition(nested=models.Nested(key=rng.choice(["items", "items[]"]),
                                                       filter=models.Filter(must=inner)))


def _filter(rng):
    r = rng.random()
    if r < 0.5:
        return models.Filter(must=[_condition(rng)])
    if r < 0.7:
        return models.Filter(must=[_condition(rng), _condition(rng)])
    if r < 0.85:
        return models.Filter(should=[_condition(rng), _condition(rng)])
    return models.Filter(must=[_condition(rng)], must_not=[_condition(rng)])


def _ids(c, name, flt):
    out, offset = [], None
    while True:
        page, offset = c.scroll(name, scroll_filter=flt, limit=128, offset=offset)
        out += [p.id for p in page]
        if offset is None:
            return out


@MODES
def test_new_conditions_equal_local_mode(qserver, prefer_grpc):  # noqa: F811
    rng = random.Random(17)
    c = client_for(qserver, prefer_grpc)
    ref = QdrantClient(":memory:")
    name = f"fc_{int(prefer_grpc)}"
    pts = [models.PointStruct(id=i, vector=[rng.uniform(-1, 1) for _ in range(DIM)], payload=_payload(rng, i))
           for i in range(N)]
    for cl in (c, ref):
        cl.create_collection(name, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.EUCLID))
        cl.upsert(name, points=pts)
    # An index on a key some conditions use: the conditions are still evaluated value by value.
    c.create_payload_index(name, "i", models.PayloadSchemaType.INTEGER)
    rng = random.Random(23)
    nonzero = 0
    for k in range(60):
        flt = _filter(rng)
        want = ref.count(name, count_filter=flt).count
        assert c.count(name, count_filter=flt).count == want, (k, flt)
        assert _ids(c, name, flt) == _ids(ref, name, flt), (k, flt)
        q = [rng.uniform(-1, 1) for _ in range(DIM)]
        got = c.query_points(name, query=q, query_filter=flt, limit=5, search_params=models.SearchParams(exact=True))
        exp = ref.query_points(name, query=q, query_filter=flt, limit=5)
        assert [p.id for p in got.points] == [p.id for p in exp.points], (k, flt)
        nonzero += 0 < want < N
    assert nonzero >= 30, "the filters should mostly pass some but not all points"
    c.close()
