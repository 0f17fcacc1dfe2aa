"""Aliases on Quiver's Qdrant API, with qdrant-client from PyPI on both ports, against its local
mode where it is the reference: created, renamed and deleted in one call (all or none), listed
(all, or one collection's), accepted wherever a collection name is (queries, upserts, counts,
collection info), switched from one collection to another atomically, gone with their
collection, refused with a clear error when they do not fit, and kept across a SIGKILL."""

import grpc
import pytest
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from conftest import start_server, stop_server
from test_qdrant import _read_addresses, client_for, qserver  # noqa: F401  (the fixture)

MODES = pytest.mark.parametrize("prefer_grpc", [False, True], ids=["rest", "grpc"])


def _setup(c, suffix):
    for i, name in enumerate([f"v1_{suffix}", f"v2_{suffix}"]):
        c.create_collection(name, vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
        c.upsert(name, points=[models.PointStruct(id=j, vector=[1.0, float(i)], payload={"v": i + 1})
                               for j in range(1, 4 + i)], wait=True)


def _aliases(c, collection=None):
    got = c.get_collection_aliases(collection).aliases if collection else c.get_aliases().aliases
    return sorted((a.alias_name, a.collection_name) for a in got)


@MODES
def test_aliases_switch_atomically_and_stand_for_their_collection(qserver, prefer_grpc):  # noqa: F811
    c = client_for(qserver, prefer_grpc)
    ref = QdrantClient(":memory:")
    s = int(prefer_grpc)
    v1, v2, prod = f"v1_{s}", f"v2_{s}", f"prod_{s}"
    for cl in (c, ref):
        _setup(cl, s)
        cl.update_collection_aliases(change_aliases_operations=[
            models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=v1, alias_name=prod)),
            models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=v1, alias_name="tmp_" + str(s))),
        ])
    assert _aliases(c) == _aliases(ref) == [(prod, v1), ("tmp_" + str(s), v1)]
    assert _aliases(c, v1) == _aliases(ref, v1)
    assert _aliases(c, v2) == []
    # The alias stands for its collection: reads, writes, info.
    assert c.count(prod).count == 3
    assert c.get_collection(prod).points_count == 3
    hits = c.query_points(prod, query=[1.0, 0.0], limit=1, with_payload=True).points
    assert hits[0].payload == {"v": 1}
    c.upsert(prod, points=[models.PointStruct(id=50, vector=[1.0, 0.0], payload={"v": 1})], wait=True)
    assert c.count(v1).count == 4
    # Switched to v2 in one call (delete + create), renamed, deleted.
    ops = [models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=prod)),
           models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=v2, alias_name=prod))]
    for cl in (c, ref):
        cl.update_collection_aliases(change_aliases_operations=ops)
    assert c.count(prod).count == 4 and c.query_points(prod, query=[1.0, 0.0], limit=1,
                                                         with_payload=True).points[0].payload == {"v": 2}
    rename = [models.RenameAliasOperation(rename_alias=models.RenameAlias(
        old_alias_name="tmp_" + str(s), new_alias_name="old_" + str(s)))]
    for cl in (c, ref):
        cl.update_collection_aliases(change_aliases_operations=rename)
    assert _aliases(c) == _aliases(ref)
    # All or none: a failing action leaves the aliases as they were.
    bad = [models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=v1, alias_name="new_" + str(s))),
           models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name="nope", alias_name="x"))]
    with pytest.raises((UnexpectedResponse, grpc.RpcError)) as e:
        c.update_collection_aliases(change_aliases_operations=bad)
    if prefer_grpc:
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    else:
        assert e.value.status_code == 404
    assert "nope" in str(e.value)
    assert _aliases(c) == _aliases(ref)
    # As Qdrant: creating an alias that exists points it elsewhere, deleting a missing one is
    # no error.
    ops = [models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name="never_" + str(s))),
           models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=v1, alias_name=prod))]
    for cl in (c, ref):
        cl.update_collection_aliases(change_aliases_operations=ops)
    assert _aliases(c) == _aliases(ref)
    assert c.count(prod).count == 4
    # A collection may not take an alias's name; dropping a collection drops its aliases.
    with pytest.raises((UnexpectedResponse, grpc.RpcError)):
        c.create_collection(prod, vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
    for cl in (c, ref):
        cl.delete_collection(v2)
    assert _aliases(c) == _aliases(ref) == [("old_" + str(s), v1), (prod, v1)]
    for cl in (c, ref):
        cl.delete_collection(v1)
    assert _aliases(c) == _aliases(ref) == []
    with pytest.raises((UnexpectedResponse, grpc.RpcError, ValueError)):
        c.count(prod)
    c.close()


def test_aliases_survive_sigkill(tmp_path):
    args = ["--qdrant-grpc-listen", "127.0.0.1:0", "--qdrant-http-listen", "127.0.0.1:0"]
    srv = start_server(tmp_path, args, name="aliases")
    srv.grpc_port, srv.rest_port = _read_addresses(srv)
    c = client_for(srv, False)
    _setup(c, "k")
    c.update_collection_aliases(change_aliases_operations=[
        models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name="v2_k", alias_name="live"))])
    c.close()
    srv.proc.kill()
    srv.proc.wait()
    srv = start_server(tmp_path, args, name="aliases")
    try:
        srv.grpc_port, srv.rest_port = _read_addresses(srv)
        c = client_for(srv, True)
        assert _aliases(c) == [("live", "v2_k")]
        assert c.count("live").count == 4
        c.close()
    finally:
        stop_server(srv)


def test_a_scoped_key_does_not_reach_through_an_alias(tmp_path):
    """An alias in a key's scope naming a collection outside it does not open that collection
    to the key, on either port (nor does a query's `lookup_from`); listings hide such aliases."""
    keyfile = tmp_path / "keys"
    admin, tenant = "admin-key-0123456789abcdef", "tenant-key-0123456789abcdef"
    keyfile.write_text(f"rw:{admin}\nrw@tenant-a-*:{tenant}\n")
    srv = start_server(tmp_path, ["--qdrant-grpc-listen", "127.0.0.1:0", "--qdrant-http-listen", "127.0.0.1:0",
                                  "--api-key-file", str(keyfile)], name="alias-scopes")
    try:
        srv.grpc_port, srv.rest_port = _read_addresses(srv)
        boss = client_for(srv, False, api_key=admin)
        boss.create_collection("tenant-b-docs", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
        boss.upsert("tenant-b-docs", points=[models.PointStruct(id=1, vector=[1.0, 0.0])], wait=True)
        boss.create_collection("tenant-a-own", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
        boss.update_collection_aliases(change_aliases_operations=[models.CreateAliasOperation(
            create_alias=models.CreateAlias(collection_name="tenant-b-docs", alias_name="tenant-a-sneaky"))])
        for prefer_grpc in (False, True):
            c = client_for(srv, prefer_grpc, api_key=tenant)
            with pytest.raises((UnexpectedResponse, grpc.RpcError)) as e:
                c.count("tenant-a-sneaky")
            if prefer_grpc:
                assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
            else:
                assert e.value.status_code == 403
            assert "tenant-b-docs" in str(e.value)
            assert _aliases(c) == []
            # Nor does a query reading its points' vectors through `lookup_from`.
            with pytest.raises((UnexpectedResponse, grpc.RpcError)) as e:
                c.query_points("tenant-a-own", query=1, lookup_from=models.LookupLocation(collection="tenant-b-docs"))
            if prefer_grpc:
                assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
            else:
                assert e.value.status_code == 403
            assert "tenant-b-docs" in str(e.value)
            c.close()
        assert boss.count("tenant-a-sneaky").count == 1
    finally:
        stop_server(srv)
