"""Issue #33's findings in what Quiver's Qdrant API already supports, checked with qdrant-client
from PyPI (REST and gRPC), and against qdrant-client's local mode where it is the reference:

- gRPC requests compressed with gzip (qdrant-client's `grpc_compression`) are read (they
  answered UNIMPLEMENTED);
- a call to a gRPC method the server lacks answers UNIMPLEMENTED naming the method;
- key paths with Qdrant's wildcard: `grid[][1]` is element 1 of each inner array and
  `grid[][]` every inner array's elements (they were read as `grid[1]` and as nothing);
  counts equal local mode's;
- `GetCollectionInfo` answers the vector's parameters in the form they were given: as the
  vector named "" (what LangChain writes, then reads back as `vectors[""]`) or unnamed, with
  `on_disk` and `datatype` (on_disk was dropped, the named form came back unnamed);
- `GET /` carries Qdrant's title;
- a collection without any vector answers as local mode on both ports.
"""

import grpc
import httpx
import pytest
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from test_qdrant import client_for, qserver  # noqa: F401  (the fixture)

MODES = pytest.mark.parametrize("prefer_grpc", [False, True], ids=["rest", "grpc"])


def test_gzip_compressed_grpc_requests_are_served(qserver):  # noqa: F811
    c = client_for(qserver, True, grpc_compression=grpc.Compression.Gzip)
    c.create_collection("gz", vectors_config=models.VectorParams(size=4, distance=models.Distance.DOT))
    c.upsert("gz", points=[models.PointStruct(id=i, vector=[float(i), 1, 0, 0]) for i in range(1, 6)],
             wait=True)
    hits = c.query_points("gz", query=[1.0, 0, 0, 0], limit=2).points
    assert [h.id for h in hits] == [5, 4]
    assert c.count("gz").count == 5
    c.close()


def test_an_unknown_grpc_method_is_named(qserver):  # noqa: F811
    ch = grpc.insecure_channel(f"127.0.0.1:{qserver.grpc_port}")
    call = ch.unary_unary("/qdrant.Points/Teleport")
    with pytest.raises(grpc.RpcError) as e:
        call(b"", timeout=10)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "/qdrant.Points/Teleport" in e.value.details(), e.value.details()
    call = ch.unary_unary("/qdrant.Nowhere/Anything")
    with pytest.raises(grpc.RpcError) as e:
        call(b"", timeout=10)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "/qdrant.Nowhere/Anything" in e.value.details(), e.value.details()
    ch.close()


def _grid_points():
    rows = [
        {"grid": [[1, 2], [3, 4]], "tag": "a"},
        {"grid": [[2, 5], [6, 2]], "tag": "b"},
        {"grid": [[7], [8, 9]], "tag": "c"},
        {"grid": [9, [1, 2]], "tag": "d"},
        {"grid": {"x": [1, 2]}, "tag": "e"},
        {"other": 1},
    ]
    return [models.PointStruct(id=i + 1, vector=[1.0, float(i), 0, 0], payload=p) for i, p in enumerate(rows)]


@MODES
def test_wildcard_key_paths_count_as_local_mode_does(qserver, prefer_grpc):  # noqa: F811
    c = client_for(qserver, prefer_grpc)
    local = QdrantClient(":memory:")
    for client in (c, local):
        client.create_collection("g", vectors_config=models.VectorParams(size=4, distance=models.Distance.DOT))
        client.upsert("g", points=_grid_points(), wait=True)
    cases = [
        ("grid[][1]", 2),
        ("grid[][1]", 4),
        ("grid[][]", 2),
        ("grid[][]", 9),
        ("grid[0][]", 2),
        ("grid[1][0]", 8),
        ("grid[1][]", 2),
    ]
    for key, value in cases:
        f = models.Filter(must=[models.FieldCondition(key=key, match=models.MatchValue(value=value))])
        want = local.count("g", count_filter=f, exact=True).count
        got = c.count("g", count_filter=f, exact=True).count
        assert got == want, f"{key} = {value}: Quiver {got}, local mode {want}"
        want_ids = sorted(p.id for p in local.scroll("g", scroll_filter=f, limit=10)[0])
        got_ids = sorted(p.id for p in c.scroll("g", scroll_filter=f, limit=10)[0])
        assert got_ids == want_ids, f"{key} = {value}"
    # The cases are not vacuous: the wildcard reaches inner arrays.
    f = models.Filter(must=[models.FieldCondition(key="grid[][1]", match=models.MatchValue(value=2))])
    assert c.count("g", count_filter=f, exact=True).count == 3  # a, b and d
    c.close()


@MODES
def test_collection_info_keeps_the_form_of_the_vector_params(qserver, prefer_grpc):  # noqa: F811
    c = client_for(qserver, prefer_grpc)
    c.create_collection("named_empty", vectors_config={
        "": models.VectorParams(size=4, distance=models.Distance.COSINE, on_disk=True)})
    v = c.get_collection("named_empty").config.params.vectors
    assert isinstance(v, dict) and set(v) == {""}, v
    assert v[""].size == 4 and v[""].distance == models.Distance.COSINE and v[""].on_disk is True

    c.create_collection("plain", vectors_config=models.VectorParams(
        size=4, distance=models.Distance.DOT, on_disk=False, datatype=models.Datatype.FLOAT16))
    v = c.get_collection("plain").config.params.vectors
    assert isinstance(v, models.VectorParams), v
    assert v.on_disk is False and v.datatype == models.Datatype.FLOAT16

    c.create_collection("bare", vectors_config=models.VectorParams(size=4, distance=models.Distance.DOT))
    v = c.get_collection("bare").config.params.vectors
    assert isinstance(v, models.VectorParams) and v.on_disk is None and v.datatype is None
    c.close()


def test_the_root_answers_qdrants_title(qserver):  # noqa: F811
    r = httpx.get(f"http://127.0.0.1:{qserver.rest_port}/")
    assert r.status_code == 200
    body = r.json()
    assert body["title"] == "qdrant - vector search engine"
    assert body["version"] and body["engine"].startswith("quiver ")


@MODES
def test_a_collection_without_vectors_as_local_mode(qserver, prefer_grpc):  # noqa: F811
    """No vector at all (`vectors_config={}`): points hold payloads only; retrieve, scroll,
    count and vectorless queries answer as local mode; a nearest query names the missing
    vector."""
    c = client_for(qserver, prefer_grpc)
    ref = QdrantClient(":memory:")
    name = f"no_vectors_{int(prefer_grpc)}"
    pts = [models.PointStruct(id=i, vector={}, payload={"k": i % 3}) for i in range(20)]
    for cl in [c, ref]:
        cl.create_collection(name, vectors_config={})
        cl.upsert(name, points=pts, wait=True)
    assert c.get_collection(name).config.params.vectors == ref.get_collection(name).config.params.vectors
    f = models.Filter(must=[models.FieldCondition(key="k", match=models.MatchValue(value=1))])
    assert c.count(name, count_filter=f).count == ref.count(name, count_filter=f).count
    got = c.retrieve(name, ids=[1, 2], with_vectors=True)
    want = ref.retrieve(name, ids=[1, 2], with_vectors=True)
    assert [(r.id, r.payload, r.vector) for r in got] == [(r.id, r.payload, r.vector) for r in want]
    got = c.query_points(name, query_filter=f, limit=5).points
    want = ref.query_points(name, query_filter=f, limit=5).points
    assert [(p.id, p.score) for p in got] == [(p.id, p.score) for p in want]
    with pytest.raises(Exception, match="Not existing vector name"):
        c.query_points(name, query=[0.1, 0.2], limit=3)
    c.close()
