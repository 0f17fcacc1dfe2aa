"""Qdrant's own Python client (qdrant-client from PyPI) against Quiver's Qdrant API, in both of
its modes: REST (the default, and what LangChain uses) and gRPC (prefer_grpc=True). Results
are checked against Quiver's native gRPC API on the same data; a LangChain run
(langchain-qdrant with langchain-core's deterministic fake embeddings) adds texts with metadata
and searches with a metadata filter, and a LlamaIndex run (llama-index-vector-stores-qdrant,
nodes with their embeddings given) adds nodes, queries with a metadata filter and deletes.
"""

import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from conftest import start_server, stop_server

DIM = 8
UUIDS = [str(uuid.UUID(int=(i * 0x9E3779B97F4A7C15 + 12345) % (1 << 128), version=4)) for i in range(5)]


def _read_addresses(srv):
    """The Qdrant listeners' addresses from the server's stdout: (grpc_port, rest_port)."""
    grpc_port = rest_port = None
    while grpc_port is None or rest_port is None:
        line = srv.lines.get(timeout=10)
        assert line is not None, f"server stopped before printing its Qdrant addresses\n{srv.stderr()}"
        if line.startswith("qdrant grpc on "):
            grpc_port = int(line.rsplit(":", 1)[1])
        elif line.startswith("qdrant rest on "):
            rest_port = int(line.rsplit(":", 1)[1])
    return grpc_port, rest_port


@pytest.fixture
def qserver(tmp_path):
    srv = start_server(
        tmp_path,
        ["--qdrant-grpc-listen", "127.0.0.1:0", "--qdrant-http-listen", "127.0.0.1:0"],
        name="qdrant",
    )
    srv.grpc_port, srv.rest_port = _read_addresses(srv)
    yield srv
    stop_server(srv)


@pytest.fixture
def qstub(qserver, quiver_pb):
    """Quiver's native API on the same server."""
    ch = grpc.insecure_channel(qserver.addr)
    grpc.channel_ready_future(ch).result(timeout=30)
    yield quiver_pb.grpc.QuiverStub(ch)
    ch.close()


def client_for(srv, prefer_grpc, **kw):
    return QdrantClient(
        host="127.0.0.1",
        port=srv.rest_port,
        grpc_port=srv.grpc_port,
        prefer_grpc=prefer_grpc,
        https=False,
        **{"timeout": 30, **kw},
    )


def vectors(n, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, DIM)).astype(np.float32)


def unsupported(prefer_grpc):
    """The error a call outside the supported surface raises, per mode."""
    return grpc.RpcError if prefer_grpc else UnexpectedResponse


def check_unsupported(err, prefer_grpc):
    if prefer_grpc:
        assert err.code() == grpc.StatusCode.UNIMPLEMENTED, err
        assert "not supported" in err.details(), err.details()
    else:
        assert err.status_code == 400, err
        assert "not supported" in str(err), str(err)


@pytest.mark.parametrize("prefer_grpc", [False, True], ids=["rest", "grpc"])
def test_qdrant_client_end_to_end(qserver, prefer_grpc, qstub, quiver_pb):
    stub = qstub
    c = client_for(qserver, prefer_grpc)
    name = "docs"
    assert not c.collection_exists(name)
    c.create_collection(
        name,
        vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE),
        hnsw_config=models.HnswConfigDiff(m=32),
        quantization_config=models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
            type=models.ScalarType.INT8, quantile=0.99, always_ram=True)),
        metadata={"team": "search"},
    )
    assert c.collection_exists(name)
    assert name in [x.name for x in c.get_collections().collections]
    info = c.get_collection(name)
    assert info.status == models.CollectionStatus.GREEN
    assert info.config.params.vectors.size == DIM
    assert info.config.params.vectors.distance == models.Distance.COSINE
    # Settings are kept and reported.
    assert info.config.hnsw_config.m == 32
    assert info.config.hnsw_config.ef_construct == 100
    assert info.config.quantization_config.scalar.quantile == pytest.approx(0.99)
    assert info.config.metadata == {"team": "search"}
    c.update_collection(name, optimizers_config=models.OptimizersConfigDiff(indexing_threshold=20000))
    assert c.get_collection(name).config.optimizer_config.indexing_threshold == 20000

    # Integer and UUID ids, with payloads.
    x = vectors(45, 1)
    ids = list(range(1, 41)) + UUIDS
    points = [
        models.PointStruct(
            id=pid,
            vector=x[i].tolist(),
            payload={"source": "numpy" if i % 3 == 0 else "torch", "n": i, "tags": ["a", "b"][: i % 3]},
        )
        for i, pid in enumerate(ids)
    ]
    r = c.upsert(name, points=points, wait=True)
    assert r.status == models.UpdateStatus.COMPLETED
    assert c.count(name).count == 45

    # Nearest neighbours equal Quiver's own API's on the same data (the collection is small:
    # both are exact).
    q = vectors(1, 2)[0]
    hits = c.query_points(name, query=q.tolist(), limit=5, with_payload=True).points
    native = stub.Search(quiver_pb.pb2.SearchRequest(collection=name, vector=q.tolist(), k=5, with_payload=True))
    assert len(hits) == 5
    for h, n in zip(hits, native.neighbors):
        assert h.score == pytest.approx(n.distance, abs=1e-5)
        if isinstance(h.id, int):
            assert h.id == n.id
        else:
            assert h.id in UUIDS
        payload = json.loads(n.payload)
        assert "__quiver_uuid" not in h.payload
        assert h.payload["n"] == payload["n"]

    # With a filter: the same as the native filter.
    flt = models.Filter(must=[models.FieldCondition(key="source", match=models.MatchValue(value="numpy"))])
    hits = c.query_points(name, query=q.tolist(), query_filter=flt, limit=10, with_payload=True).points
    native = stub.Search(quiver_pb.pb2.SearchRequest(
        collection=name, vector=q.tolist(), k=10,
        filter=json.dumps({"must": [{"key": "source", "match": {"value": "numpy"}}]})))
    assert [h.score for h in hits] == pytest.approx([n.distance for n in native.neighbors], abs=1e-5)
    assert all(h.payload["source"] == "numpy" for h in hits)
    assert len(hits) == 10

    # Offset and score threshold.
    all10 = c.query_points(name, query=q.tolist(), limit=10).points
    page2 = c.query_points(name, query=q.tolist(), limit=5, offset=5).points
    assert [h.id for h in page2] == [h.id for h in all10[5:]]
    above = c.query_points(name, query=q.tolist(), limit=45, score_threshold=all10[3].score).points
    assert [h.id for h in above] == [h.id for h in all10[:4]]

    # Older clients' search, and a batch.
    batch = c.query_batch_points(name, requests=[
        models.QueryRequest(query=q.tolist(), limit=3),
        models.QueryRequest(query=x[0].tolist(), limit=1, filter=flt),
    ])
    assert [h.id for h in batch[0].points] == [h.id for h in all10[:3]]
    assert batch[1].points[0].id == 1

    # Query by a stored point's id: its neighbours, without itself.
    by_id = c.query_points(name, query=UUIDS[0], limit=3).points
    assert UUIDS[0] not in [h.id for h in by_id]

    # Retrieve.
    got = c.retrieve(name, ids=[2, UUIDS[1], 9999], with_payload=True, with_vectors=True)
    assert [g.id for g in got] == [2, UUIDS[1]]
    assert got[0].payload == {"source": "torch", "n": 1, "tags": ["a"]}
    assert np.allclose(got[0].vector, x[1] / np.linalg.norm(x[1]), atol=1e-3)
    assert got[1].payload["n"] == 41

    # Scroll, paginated: every point once.
    seen, offset = [], None
    while True:
        page, offset = c.scroll(name, limit=10, offset=offset, with_payload=False)
        seen += [p.id for p in page]
        if offset is None:
            break
    assert sorted(map(str, seen)) == sorted(map(str, ids))
    page, _ = c.scroll(name, scroll_filter=flt, limit=100)
    assert {p.payload["source"] for p in page} == {"numpy"}
    assert len(page) == 15

    # Count with a filter.
    assert c.count(name, count_filter=flt).count == 15

    # Payload edits.
    c.set_payload(name, payload={"lang": "en"}, points=[1, UUIDS[3]], wait=True)
    got = c.retrieve(name, ids=[1, UUIDS[3]])
    assert got[0].payload["lang"] == "en" and got[1].payload["lang"] == "en"
    c.delete_payload(name, keys=["lang", "tags"], points=[1, UUIDS[3]], wait=True)
    got = c.retrieve(name, ids=[1, UUIDS[3]])
    assert "lang" not in got[0].payload and "tags" not in got[1].payload
    c.overwrite_payload(name, payload={"only": 1}, points=[UUIDS[3]], wait=True)
    assert c.retrieve(name, ids=[UUIDS[3]])[0].payload == {"only": 1}
    c.clear_payload(name, points_selector=[UUIDS[3]], wait=True)
    got = c.retrieve(name, ids=[UUIDS[3]])
    assert got[0].id == UUIDS[3] and got[0].payload == {}
    c.set_payload(name, payload={"flag": True}, points=models.FilterSelector(filter=flt), wait=True)
    assert c.count(name, count_filter=models.Filter(must=[
        models.FieldCondition(key="flag", match=models.MatchValue(value=True))])).count == 15

    # A field index.
    c.create_payload_index(name, field_name="source", field_schema=models.PayloadSchemaType.KEYWORD, wait=True)
    info = c.get_collection(name)
    assert info.payload_schema["source"].data_type == models.PayloadSchemaType.KEYWORD
    assert c.count(name, count_filter=flt).count == 15
    c.delete_payload_index(name, field_name="source", wait=True)
    assert "source" not in c.get_collection(name).payload_schema

    # Deletes: by ids, then by filter.
    c.delete(name, points_selector=models.PointIdsList(points=[1, UUIDS[0]]), wait=True)
    assert c.count(name).count == 43
    assert c.retrieve(name, ids=[1, UUIDS[0]]) == []
    c.delete(name, points_selector=models.FilterSelector(filter=flt), wait=True)
    assert c.count(name).count == 43 - 14  # point 1 (i = 0) was a numpy one
    assert c.count(name, count_filter=flt).count == 0

    c.delete_collection(name)
    assert not c.collection_exists(name)
    c.close()


@pytest.mark.parametrize("prefer_grpc", [False, True], ids=["rest", "grpc"])
def test_outside_the_supported_surface_is_refused_by_name(qserver, prefer_grpc):
    c = client_for(qserver, prefer_grpc)
    err = unsupported(prefer_grpc)
    with pytest.raises(err) as e:
        c.create_collection("m", vectors_config=models.VectorParams(size=4, distance=models.Distance.MANHATTAN))
    check_unsupported(e.value, prefer_grpc)

    c.create_collection("c", vectors_config=models.VectorParams(size=4, distance=models.Distance.EUCLID))
    c.upsert("c", points=[models.PointStruct(id=i, vector=[float(i), 0, 0, 1], payload={"t": "x y"})
                          for i in range(1, 5)], wait=True)
    # Euclid scores are distances.
    hits = c.query_points("c", query=[1.0, 0, 0, 1], limit=2).points
    assert [h.id for h in hits] == [1, 2] and hits[0].score == pytest.approx(0.0, abs=1e-6)
    assert hits[1].score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(err) as e:
        c.query_points("c", query=models.SampleQuery(sample=models.Sample.RANDOM))
    check_unsupported(e.value, prefer_grpc)
    # A vector name the collection lacks is bad input, as in Qdrant.
    with pytest.raises(grpc.RpcError if prefer_grpc else UnexpectedResponse) as e:
        c.query_points("c", query=[1.0, 0, 0, 1], using="other")
    if prefer_grpc:
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    else:
        assert e.value.status_code == 400
    assert "Not existing vector name" in str(e.value), str(e.value)
    # `has_vector` names one of the collection's vectors.
    assert c.count("c", count_filter=models.Filter(must=[models.HasVectorCondition(has_vector="")])).count == 4
    with pytest.raises(grpc.RpcError if prefer_grpc else UnexpectedResponse) as e:
        c.count("c", count_filter=models.Filter(must=[models.HasVectorCondition(has_vector="x")]))
    assert "Not existing vector name" in str(e.value) and "`x`" in str(e.value), str(e.value)
    # Operations Qdrant has and Quiver does not: UNIMPLEMENTED, or a REST error naming the path.
    if prefer_grpc:
        from qdrant_client import grpc as qgrpc
        with pytest.raises(grpc.RpcError) as e:
            c.grpc_points.Facet(qgrpc.FacetCounts(collection_name="c", key="t"), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    else:
        import httpx
        r = httpx.post(f"http://127.0.0.1:{qserver.rest_port}/collections/c/facet", json={"key": "t"})
        assert r.status_code == 404 and "not part of Quiver's Qdrant API" in r.json()["status"]["error"]
    # An id given twice in one upsert keeps its last point, as in Qdrant.
    c.upsert("c", points=[models.PointStruct(id=7, vector=[1.0, 0, 0, 0], payload={"v": 1}),
                          models.PointStruct(id=7, vector=[2.0, 0, 0, 0], payload={"v": 2})], wait=True)
    assert c.retrieve("c", ids=[7])[0].payload == {"v": 2}
    # Settings are held to a payload's limits (they live in the collection's manifest).
    # (Too deep for the gRPC decoder's own limit, so that one is too large instead.)
    bad = {"blob": "x" * 70_000}
    if not prefer_grpc:
        bad = {}
        for _ in range(40):
            bad = {"d": bad}
    with pytest.raises(grpc.RpcError if prefer_grpc else UnexpectedResponse) as e:
        c.create_collection("deep", vectors_config=models.VectorParams(size=4, distance=models.Distance.DOT),
                            metadata=bad)
    if prefer_grpc:
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    else:
        assert e.value.status_code == 400
    assert not c.collection_exists("deep")
    # Bad input: a wrong dimension is INVALID_ARGUMENT / 400 naming the field.
    with pytest.raises(grpc.RpcError if prefer_grpc else UnexpectedResponse) as e:
        c.upsert("c", points=[models.PointStruct(id=9, vector=[1.0, 2.0])], wait=True)
    if prefer_grpc:
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "points[0].vector" in e.value.details()
    else:
        assert e.value.status_code == 400 and "points[0].vector" in str(e.value)
    c.close()


def test_keys_are_honoured_on_both_qdrant_ports(tmp_path):
    keyfile = tmp_path / "keys"
    rw, ro = "rw-key-0123456789abcdef", "ro-key-0123456789abcdef"
    keyfile.write_text(f"rw:{rw}\nro:{ro}\n")
    srv = start_server(
        tmp_path,
        ["--qdrant-grpc-listen", "127.0.0.1:0", "--qdrant-http-listen", "127.0.0.1:0",
         "--api-key-file", str(keyfile)],
        name="keys",
    )
    try:
        srv.grpc_port, srv.rest_port = _read_addresses(srv)
        for prefer_grpc in (False, True):
            name = f"k{int(prefer_grpc)}"
            writer = client_for(srv, prefer_grpc, api_key=rw)
            writer.create_collection(name, vectors_config=models.VectorParams(size=4, distance=models.Distance.DOT))
            writer.upsert(name, points=[models.PointStruct(id=1, vector=[1.0, 0, 0, 0])], wait=True)
            reader = client_for(srv, prefer_grpc, api_key=ro)
            assert [h.id for h in reader.query_points(name, query=[1.0, 0, 0, 0], limit=1).points] == [1]
            with pytest.raises(grpc.RpcError if prefer_grpc else UnexpectedResponse) as e:
                reader.upsert(name, points=[models.PointStruct(id=2, vector=[0, 1.0, 0, 0])], wait=True)
            if prefer_grpc:
                assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
            else:
                assert e.value.status_code == 403
            nokey = client_for(srv, prefer_grpc)
            with pytest.raises(grpc.RpcError if prefer_grpc else UnexpectedResponse) as e:
                nokey.count(name)
            if prefer_grpc:
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            else:
                assert e.value.status_code == 401
            for cl in (writer, reader, nokey):
                cl.close()
    finally:
        stop_server(srv)


def _implemented_methods():
    """`(service, method)` of every Qdrant gRPC method Quiver implements, from its proto."""
    proto = (Path(__file__).resolve().parents[2] / "server/proto/qdrant/qdrant.proto").read_text()
    methods, service = [], None
    for line in proto.splitlines():
        line = line.strip()
        if line.startswith("service "):
            service = line.split()[1]
        elif line.startswith("rpc ") and service in ("Collections", "Points"):
            methods.append((service, line.split()[1].split("(")[0]))
    return methods


def test_scoped_keys_reach_only_their_collections_on_both_qdrant_ports(tmp_path):
    from google.protobuf import message_factory
    from qdrant_client.grpc import collections_service_pb2, points_service_pb2

    keyfile = tmp_path / "keys"
    admin, tenant = "admin-key-0123456789abcdef", "tenant-key-0123456789abcdef"
    keyfile.write_text(f"rw:{admin}\nrw@tenant-a-*:{tenant}\n")
    srv = start_server(
        tmp_path,
        ["--qdrant-grpc-listen", "127.0.0.1:0", "--qdrant-http-listen", "127.0.0.1:0",
         "--api-key-file", str(keyfile)],
        name="scopes",
    )
    try:
        srv.grpc_port, srv.rest_port = _read_addresses(srv)
        boss = client_for(srv, False, api_key=admin)
        boss.create_collection("tenant-b-docs", vectors_config=models.VectorParams(size=4, distance=models.Distance.DOT))
        boss.upsert("tenant-b-docs", points=[models.PointStruct(id=1, vector=[1.0, 0, 0, 0])], wait=True)
        for prefer_grpc in (False, True):
            mine = f"tenant-a-{int(prefer_grpc)}"
            c = client_for(srv, prefer_grpc, api_key=tenant)
            c.create_collection(mine, vectors_config=models.VectorParams(size=4, distance=models.Distance.DOT))
            c.upsert(mine, points=[models.PointStruct(id=3, vector=[0, 1.0, 0, 0])], wait=True)
            assert [h.id for h in c.query_points(mine, query=[0, 1.0, 0, 0], limit=1).points] == [3]
            assert mine in [x.name for x in c.get_collections().collections]
            assert "tenant-b-docs" not in [x.name for x in c.get_collections().collections]
            for call in (lambda: c.count("tenant-b-docs"), lambda: c.collection_exists("tenant-b-docs"),
                         lambda: c.query_points("tenant-b-docs", query=[1.0, 0, 0, 0], limit=1),
                         lambda: c.delete_collection("tenant-b-docs")):
                with pytest.raises(grpc.RpcError if prefer_grpc else UnexpectedResponse) as e:
                    call()
                if prefer_grpc:
                    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, e.value
                else:
                    assert e.value.status_code == 403, e.value
            c.close()
        assert boss.count("tenant-b-docs").count == 1
        boss.close()

        # Every implemented gRPC method naming a collection out of reach is refused (messages
        # from qdrant-client's own protos, the collection name their only content).
        files = {"Collections": collections_service_pb2, "Points": points_service_pb2}
        methods = _implemented_methods()
        assert len(methods) >= 20
        with grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as ch:
            for service, method in methods:
                desc = files[service].DESCRIPTOR.services_by_name[service].methods_by_name[method]
                cls = message_factory.GetMessageClass(desc.input_type)
                msg = cls(**({"collection_name": "tenant-b-docs"} if "collection_name" in
                             desc.input_type.fields_by_name else {}))
                rpc = ch.unary_unary(f"/qdrant.{service}/{method}", request_serializer=cls.SerializeToString,
                                     response_deserializer=lambda b: b)
                if method in ("List", "ListAliases"):
                    # Listings answer what the key reaches.
                    rpc(msg, metadata=[("api-key", tenant)], timeout=10)
                    continue
                with pytest.raises(grpc.RpcError) as e:
                    rpc(msg, metadata=[("api-key", tenant)], timeout=10)
                assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, (method, e.value)
                if method == "UpdateAliases":
                    # Aliases reach collections by other names: a scoped key changes none.
                    assert "without a collection scope" in e.value.details(), e.value.details()
                    continue
                assert '"tenant-b-docs"' in e.value.details(), (method, e.value.details())

        # And every REST route.
        base = f"http://127.0.0.1:{srv.rest_port}/collections/tenant-b-docs"
        routes = [("GET", ""), ("PUT", ""), ("PATCH", ""), ("DELETE", ""), ("GET", "/exists"),
                  ("PUT", "/points"), ("POST", "/points"), ("GET", "/points/1"), ("POST", "/points/delete"),
                  ("POST", "/points/payload"), ("PUT", "/points/payload"), ("POST", "/points/payload/delete"),
                  ("POST", "/points/payload/clear"), ("PUT", "/index"), ("DELETE", "/index/city"),
                  ("POST", "/points/search"), ("POST", "/points/search/batch"), ("POST", "/points/query"),
                  ("POST", "/points/query/batch"), ("POST", "/points/scroll"), ("POST", "/points/count")]
        for method, path in routes:
            req = urllib.request.Request(base + path, data=b"{}", method=method,
                                         headers={"api-key": tenant, "content-type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=10)
            assert e.value.code == 403, (method, path, e.value.code)
            body = json.loads(e.value.read())
            assert "tenant-b-docs" in body["status"]["error"], (method, path, body)
        assert tenant not in srv.stderr()
    finally:
        stop_server(srv)


def test_langchain_adds_texts_and_searches_with_a_metadata_filter(qserver):
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_qdrant import QdrantVectorStore

    texts = [f"passage {i} about {'numpy' if i % 2 else 'torch'}" for i in range(20)]
    metadatas = [{"source": "numpy" if i % 2 else "torch", "n": i} for i in range(20)]
    store = QdrantVectorStore.from_texts(
        texts,
        DeterministicFakeEmbedding(size=32),
        metadatas=metadatas,
        url=f"http://127.0.0.1:{qserver.rest_port}",
        collection_name="lc",
    )
    flt = models.Filter(must=[models.FieldCondition(key="metadata.source", match=models.MatchValue(value="numpy"))])
    docs = store.similarity_search("passage 3 about numpy", k=4, filter=flt)
    assert len(docs) == 4
    assert all(d.metadata["source"] == "numpy" for d in docs)
    # The deterministic embedding of a stored text finds that text first.
    assert docs[0].page_content == "passage 3 about numpy"
    scored = store.similarity_search_with_score("passage 4 about torch", k=1)
    assert scored[0][0].page_content == "passage 4 about torch"


def test_llamaindex_adds_nodes_and_queries_with_a_metadata_filter(qserver):
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.types import (
        MetadataFilter,
        MetadataFilters,
        VectorStoreQuery,
    )
    from llama_index.vector_stores.qdrant import QdrantVectorStore

    client = QdrantClient(url=f"http://127.0.0.1:{qserver.rest_port}")
    store = QdrantVectorStore(client=client, collection_name="li")
    emb = vectors(20, 5)
    nodes = [
        TextNode(text=f"node {i}", embedding=emb[i].tolist(),
                 metadata={"source": "numpy" if i % 2 else "torch", "n": i})
        for i in range(20)
    ]
    assert len(store.add(nodes)) == 20
    # LlamaIndex indexes the document id field when it creates the collection.
    assert "doc_id" in client.get_collection("li").payload_schema
    res = store.query(VectorStoreQuery(
        query_embedding=emb[3].tolist(), similarity_top_k=3,
        filters=MetadataFilters(filters=[MetadataFilter(key="source", value="numpy")])))
    assert len(res.nodes) == 3
    assert res.nodes[0].get_content() == "node 3"
    assert all(n.metadata["source"] == "numpy" for n in res.nodes)
    assert res.ids[0] == nodes[3].node_id
    store.delete_nodes([nodes[3].node_id])
    res = store.query(VectorStoreQuery(query_embedding=emb[3].tolist(), similarity_top_k=1))
    assert res.nodes[0].get_content() != "node 3"
    client.close()


@pytest.mark.parametrize("prefer_grpc", [False, True], ids=["rest", "grpc"])
def test_a_single_server_keeps_one_shard_whatever_is_asked(qserver, prefer_grpc):
    """As a single Qdrant node: `shard_number` and `replication_factor` are accepted and the
    collection is reported as one shard of one replica."""
    c = client_for(qserver, prefer_grpc)
    c.create_collection("one", vectors_config=models.VectorParams(size=4, distance=models.Distance.DOT),
                        shard_number=3, replication_factor=2)
    params = c.get_collection("one").config.params
    assert (params.shard_number, params.replication_factor) == (1, 1)
