"""Payloads and filtered search through Quiver's gRPC API, driven by Python grpcio: upsert with
payloads, Get, Scroll, Count, filtered Search and SearchBatch (per-query filters), payload
edits, delete by filter, and INVALID_ARGUMENT naming the place of every bad filter. Each test
runs before training (flat segments) and after it (IVF-PQ segments).
"""

import json

import grpc
import numpy as np
import pytest

DIM = 16
N = 1200
TIMEOUT = 30.0


def payload(i):
    return {"g": int(i % 10), "tag": f"t{i % 3}", "meta": {"lang": ["en", "de"][i % 2]}}


@pytest.fixture(params=["flat", "trained"])
def coll(request, stub, quiver_pb):
    """A collection "p" of N points (ids 1..N) with payloads; trained or not."""
    pb = quiver_pb.pb2
    stub.CreateCollection(
        pb.CreateCollectionRequest(
            name="p", dim=DIM, metric=pb.METRIC_L2,
            index=pb.IndexParams(nlist=8, pq_m=4, refine=pb.REFINE_F32, seed=3)),
        timeout=TIMEOUT)
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    ids = list(range(1, N + 1))
    for a in range(0, N, 400):
        stub.Upsert(pb.UpsertRequest(
            collection="p", ids=ids[a:a + 400], vectors=vectors[a:a + 400].ravel().tolist(),
            payloads=[json.dumps(payload(i)) for i in ids[a:a + 400]]), timeout=TIMEOUT)
    if request.param == "trained":
        info = stub.Train(pb.TrainRequest(collection="p"), timeout=120)
        assert info.trained
    return vectors


def exact_filtered(vectors, q, k, keep):
    ids = np.array([i for i in range(1, N + 1) if keep(i)])
    d = ((vectors[ids - 1] - q) ** 2).sum(axis=1)
    return [int(x) for x in ids[np.argsort(d, kind="stable")[:k]]]


def test_get_and_scroll_return_payloads(stub, quiver_pb, coll):
    pb = quiver_pb.pb2
    got = stub.Get(pb.GetRequest(collection="p", ids=[5, 6, 99999], with_payload=True), timeout=TIMEOUT)
    assert [p.id for p in got.points] == [5, 6]
    assert json.loads(got.points[0].payload) == payload(5)
    only = stub.Get(pb.GetRequest(collection="p", ids=[5], with_payload=True, payload_keys=["tag"]), timeout=TIMEOUT)
    assert json.loads(only.points[0].payload) == {"tag": "t2"}
    # Scroll through g = 3 in pages of 50, by ascending id.
    f = json.dumps({"must": [{"key": "g", "match": {"value": 3}}]})
    seen, offset = [], None
    while True:
        req = pb.ScrollRequest(collection="p", filter=f, limit=50, with_payload=True)
        if offset is not None:
            req.offset = offset
        page = stub.Scroll(req, timeout=TIMEOUT)
        seen += [p.id for p in page.points]
        assert all(json.loads(p.payload)["g"] == 3 for p in page.points)
        if not page.HasField("next_offset"):
            break
        offset = page.next_offset
    assert seen == [i for i in range(1, N + 1) if i % 10 == 3]
    assert stub.Count(pb.CountRequest(collection="p", filter=f), timeout=TIMEOUT).count == N // 10
    assert stub.Count(pb.CountRequest(collection="p"), timeout=TIMEOUT).count == N


def test_filtered_search_finds_the_exact_filtered_neighbours(stub, quiver_pb, coll):
    pb = quiver_pb.pb2
    vectors = coll
    q = vectors[10] + 0.01
    cases = [
        ({"must": [{"key": "g", "match": {"value": 4}}]}, lambda i: i % 10 == 4),
        ({"must": [{"key": "meta.lang", "match": {"value": "de"}}],
          "must_not": [{"key": "tag", "match": {"any": ["t0", "t1"]}}]},
         lambda i: i % 2 == 1 and i % 3 == 2),
        ({"should": [{"has_id": [7, 8, 9]}, {"key": "g", "range": {"gte": 9}}]},
         lambda i: i in (7, 8, 9) or i % 10 >= 9),
    ]
    for f, keep in cases:
        resp = stub.Search(pb.SearchRequest(
            collection="p", vector=q.tolist(), k=10, nprobe=8, refine_factor=50,
            filter=json.dumps(f), with_payload=True), timeout=TIMEOUT)
        ids = [n.id for n in resp.neighbors]
        assert all(keep(i) for i in ids), (f, ids)
        assert ids == exact_filtered(vectors, q, 10, keep), f
        assert all(json.loads(n.payload) == payload(n.id) for n in resp.neighbors)
    # Nothing passes: no neighbours.
    resp = stub.Search(pb.SearchRequest(
        collection="p", vector=q.tolist(), k=10,
        filter=json.dumps({"must": [{"key": "g", "match": {"value": 42}}]})), timeout=TIMEOUT)
    assert len(resp.neighbors) == 0
    # A batch with a filter per query (and one without).
    filters = [json.dumps({"must": [{"key": "g", "match": {"value": g}}]}) for g in range(3)] + [""]
    qs = vectors[[20, 21, 22, 23]]
    resp = stub.SearchBatch(pb.SearchBatchRequest(
        collection="p", vectors=qs.ravel().tolist(), k=5, nprobe=8, refine_factor=50,
        filters=filters), timeout=TIMEOUT)
    for g, r in enumerate(resp.results[:3]):
        assert [n.id for n in r.neighbors] == exact_filtered(vectors, qs[g], 5, lambda i, g=g: i % 10 == g)
    assert resp.results[3].neighbors[0].id == 24


def test_payload_edits_and_delete_by_filter(stub, quiver_pb, coll):
    pb = quiver_pb.pb2
    r = stub.SetPayload(pb.SetPayloadRequest(collection="p", ids=[1, 2, 99999], payload=json.dumps({"new": True})), timeout=TIMEOUT)
    assert r.updated == 2
    got = stub.Get(pb.GetRequest(collection="p", ids=[1], with_payload=True), timeout=TIMEOUT)
    assert json.loads(got.points[0].payload) == {**payload(1), "new": True}
    stub.SetPayload(pb.SetPayloadRequest(collection="p", ids=[2], payload=json.dumps({"only": 1}), replace=True), timeout=TIMEOUT)
    stub.DeletePayload(pb.DeletePayloadRequest(collection="p", ids=[1], keys=["tag", "meta"]), timeout=TIMEOUT)
    stub.DeletePayload(pb.DeletePayloadRequest(collection="p", ids=[3]), timeout=TIMEOUT)
    got = stub.Get(pb.GetRequest(collection="p", ids=[1, 2, 3], with_payload=True), timeout=TIMEOUT)
    assert [json.loads(p.payload) for p in got.points] == [{"g": 1, "new": True}, {"only": 1}, {}]
    f = json.dumps({"must": [{"key": "new", "match": {"value": True}}]})
    assert stub.Count(pb.CountRequest(collection="p", filter=f), timeout=TIMEOUT).count == 1
    # Delete by filter: every g = 5 point.
    d = stub.Delete(pb.DeleteRequest(collection="p", filter=json.dumps({"must": [{"key": "g", "match": {"value": 5}}]})), timeout=TIMEOUT)
    assert d.deleted == N // 10
    assert stub.Count(pb.CountRequest(collection="p"), timeout=TIMEOUT).count == N - N // 10
    got = stub.Get(pb.GetRequest(collection="p", ids=[5, 15, 16]), timeout=TIMEOUT)
    assert [p.id for p in got.points] == [16]
    # The edits and the delete are durable: Flush writes segments, and they read back.
    stub.Flush(pb.FlushRequest(collection="p"), timeout=TIMEOUT)
    got = stub.Get(pb.GetRequest(collection="p", ids=[1, 2, 5], with_payload=True), timeout=TIMEOUT)
    assert [json.loads(p.payload) for p in got.points] == [{"g": 1, "new": True}, {"only": 1}]


DEEP = {"must": [{"key": "g", "match": {"value": 1}}]}
for _ in range(20):
    DEEP = {"must": [DEEP]}

BAD_FILTERS = [
    ("{", "filter: not valid JSON"),
    ("[]", "filter: expected an object"),
    ('{"must":[{"key":"g","match":{"value":1.5}}]}', "filter.must[0].match.value:"),
    ('{"must":[{"key":"g","match":{"valu":1}}]}', "filter.must[0].match.valu:"),
    ('{"must":[{"key":"g","range":{"gt":"x"}}]}', "filter.must[0].range.gt:"),
    ('{"should":[{"frob":1}]}', "filter.should[0].frob:"),
    ('{"must":[{"key":"a..b","match":{"value":1}}]}', "filter.must[0].key:"),
    ('{"must_not":[{"has_id":[-1]}]}', "filter.must_not[0].has_id[0]:"),
    ('{"musts":[]}', "filter.musts:"),
    ('{"must":[{"key":"g"}]}', "filter.must[0]:"),
    (json.dumps(DEEP), "deeper than 16"),
    (json.dumps({"should": [{"key": "g", "match": {"value": i}} for i in range(1100)]}), "more than 1024 conditions"),
]


@pytest.mark.parametrize("text,message", BAD_FILTERS)
def test_bad_filters_are_invalid_argument_naming_the_place(stub, quiver_pb, text, message):
    pb = quiver_pb.pb2
    stub.CreateCollection(pb.CreateCollectionRequest(name="b", dim=2, metric=pb.METRIC_L2), timeout=TIMEOUT)
    stub.Upsert(pb.UpsertRequest(collection="b", ids=[1], vectors=[0.0, 1.0], payloads=['{"g":1}']), timeout=TIMEOUT)
    calls = [
        lambda: stub.Search(pb.SearchRequest(collection="b", vector=[0.0, 1.0], k=1, filter=text), timeout=TIMEOUT),
        lambda: stub.Count(pb.CountRequest(collection="b", filter=text), timeout=TIMEOUT),
        lambda: stub.Scroll(pb.ScrollRequest(collection="b", filter=text), timeout=TIMEOUT),
        lambda: stub.Delete(pb.DeleteRequest(collection="b", filter=text), timeout=TIMEOUT),
        lambda: stub.SearchBatch(pb.SearchBatchRequest(collection="b", vectors=[0.0, 1.0], k=1, filters=[text]), timeout=TIMEOUT),
    ]
    for i, call in enumerate(calls):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (i, e.value.details())
        want = message.replace("filter", "filters[0]", 1) if i == 4 else message
        assert want in e.value.details(), (i, e.value.details())
    # Nothing was deleted by the refused calls.
    assert stub.Count(pb.CountRequest(collection="b"), timeout=TIMEOUT).count == 1


def test_bad_payloads_are_invalid_argument(stub, quiver_pb):
    pb = quiver_pb.pb2
    stub.CreateCollection(pb.CreateCollectionRequest(name="b", dim=2, metric=pb.METRIC_L2), timeout=TIMEOUT)
    for payloads, message in [
        (["[1,2]"], "payloads[0]: payload must be a JSON object"),
        (["{\"a\":"], "payloads[0]: payload is not valid JSON"),
        (["{}", "{}"], "payloads: 2 payloads for 1 ids"),
        ([json.dumps({"s": "x" * 70000})], "payloads[0]: payload is"),
    ]:
        with pytest.raises(grpc.RpcError) as e:
            stub.Upsert(pb.UpsertRequest(collection="b", ids=[1], vectors=[0.0, 1.0], payloads=payloads), timeout=TIMEOUT)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in e.value.details(), e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        stub.SetPayload(pb.SetPayloadRequest(collection="b", ids=[1], payload="[]"), timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "payload:" in e.value.details()


def test_field_indexes_answer_as_payloads_do(stub, quiver_pb, coll):
    pb = quiver_pb.pb2
    vectors = coll
    q = vectors[30] + 0.01
    cases = [
        {"must": [{"key": "g", "range": {"gte": 2, "lt": 4}}, {"key": "tag", "match": {"any": ["t0", "t1"]}}]},
        {"must": [{"key": "meta.lang", "match": {"value": "en"}}], "must_not": [{"key": "g", "match": {"value": 0}}]},
        {"must": [{"key": "tag", "match": {"except": ["t2"]}}]},
    ]

    def answers():
        out = []
        for f in cases:
            text = json.dumps(f)
            resp = stub.Search(pb.SearchRequest(collection="p", vector=q.tolist(), k=10, nprobe=8,
                                                refine_factor=50, filter=text), timeout=TIMEOUT)
            count = stub.Count(pb.CountRequest(collection="p", filter=text), timeout=TIMEOUT).count
            out.append(([n.id for n in resp.neighbors], count))
        return out

    before = answers()
    fields = [("g", pb.FIELD_TYPE_INTEGER), ("tag", pb.FIELD_TYPE_KEYWORD), ("meta.lang", pb.FIELD_TYPE_KEYWORD)]
    for key, kind in fields:
        info = stub.CreateFieldIndex(pb.CreateFieldIndexRequest(
            collection="p", field=pb.FieldIndex(key=key, type=kind)), timeout=TIMEOUT)
    assert [(f.key, f.type) for f in info.field_indexes] == fields
    got = stub.GetCollection(pb.GetCollectionRequest(name="p"), timeout=TIMEOUT)
    assert [(f.key, f.type) for f in got.field_indexes] == fields
    assert answers() == before
    # Written after: new points are found through the indexes too.
    stub.Upsert(pb.UpsertRequest(collection="p", ids=[5000], vectors=(q + 0.001).tolist(),
                                 payloads=[json.dumps({"g": 3, "tag": "t0"})]), timeout=TIMEOUT)
    resp = stub.Search(pb.SearchRequest(collection="p", vector=q.tolist(), k=1,
                                        filter=json.dumps(cases[0])), timeout=TIMEOUT)
    assert resp.neighbors[0].id == 5000
    # A condition that does not suit an indexed field's type is refused, naming the place.
    with pytest.raises(grpc.RpcError) as e:
        stub.Search(pb.SearchRequest(collection="p", vector=q.tolist(), k=1, filter=json.dumps(
            {"must": [{"key": "tag", "range": {"gt": 1}}]})), timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "filter.must[0]" in e.value.details(), e.value.details()
    # Dropped: the filters still answer, point by point.
    info = stub.DeleteFieldIndex(pb.DeleteFieldIndexRequest(collection="p", key="tag"), timeout=TIMEOUT)
    assert [f.key for f in info.field_indexes] == ["g", "meta.lang"]
    stub.Delete(pb.DeleteRequest(collection="p", ids=[5000]), timeout=TIMEOUT)
    assert answers() == before


def test_bad_field_indexes_are_invalid_argument(stub, quiver_pb):
    pb = quiver_pb.pb2
    stub.CreateCollection(pb.CreateCollectionRequest(
        name="b", dim=2, metric=pb.METRIC_L2,
        field_indexes=[pb.FieldIndex(key="n", type=pb.FIELD_TYPE_INTEGER)]), timeout=TIMEOUT)
    for field, message in [
        (pb.FieldIndex(key="n"), "field.type:"),
        (pb.FieldIndex(key="", type=pb.FIELD_TYPE_BOOL), "field.key: empty"),
        (pb.FieldIndex(key="a..b", type=pb.FIELD_TYPE_BOOL), "field.key:"),
        (None, "field: missing"),
    ]:
        with pytest.raises(grpc.RpcError) as e:
            stub.CreateFieldIndex(pb.CreateFieldIndexRequest(collection="b", field=field), timeout=TIMEOUT)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
        assert message in e.value.details(), e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        stub.CreateCollection(pb.CreateCollectionRequest(
            name="c", dim=2, metric=pb.METRIC_L2,
            field_indexes=[pb.FieldIndex(key="n", type=pb.FIELD_TYPE_BOOL)] * 2), timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "field_indexes[1].key" in e.value.details(), e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        stub.CreateFieldIndex(pb.CreateFieldIndexRequest(
            collection="nope", field=pb.FieldIndex(key="n", type=pb.FIELD_TYPE_BOOL)), timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    # The integer index refuses a string match on its field.
    with pytest.raises(grpc.RpcError) as e:
        stub.Count(pb.CountRequest(collection="b", filter='{"must":[{"key":"n","match":{"value":"x"}}]}'), timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
