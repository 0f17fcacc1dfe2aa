"""Security of `quiver serve` against Python grpcio: TLS with certificates from a throwaway CA
(trustme), mutual TLS, plaintext refused on the TLS port, API keys (read-write and read-only,
from a file and from QUIVER_API_KEYS, as `api-key` or `authorization: Bearer`), and LoadIndex
limited to regular files inside --import-dir.
"""

import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import _quiver_bin, start_server, stop_server

TIMEOUT = 10.0
RW = "rw-0123456789abcdef"
RO = "ro-0123456789abcdef"


def tls_files(tmp_path, ca, name="server"):
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


def secure_channel(srv, ca, client=None):
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.cert_pem.bytes(),
        private_key=client.private_key_pem.bytes() if client else None,
        certificate_chain=b"".join(b.bytes() for b in client.cert_chain_pems) if client else None,
    )
    return grpc.secure_channel(srv.addr, creds, options=[("grpc.ssl_target_name_override", "localhost")])


def roundtrip(channel, pb, name):
    stub = pb.grpc.QuiverStub(channel)
    stub.CreateCollection(pb.pb2.CreateCollectionRequest(name=name, dim=2, metric=pb.pb2.METRIC_L2), timeout=TIMEOUT)
    stub.Upsert(pb.pb2.UpsertRequest(collection=name, ids=[1], vectors=[0.5, 0.5]), timeout=TIMEOUT)
    r = stub.Search(pb.pb2.SearchRequest(collection=name, vector=[0.5, 0.5], k=1), timeout=TIMEOUT)
    assert [n.id for n in r.neighbors] == [1]


def test_tls_serves_and_plaintext_is_refused(tmp_path, quiver_pb):
    ca = trustme.CA()
    cert, key = tls_files(tmp_path, ca)
    srv = start_server(tmp_path, ["--tls-cert", str(cert), "--tls-key", str(key), "--metrics-listen", "127.0.0.1:0"])
    try:
        with secure_channel(srv, ca) as ch:
            roundtrip(ch, quiver_pb, "t")
        # Metrics over HTTPS too; plain HTTP gets no page.
        url = next(l for l in iter(srv.lines.get, None) if l.startswith("metrics on ")).split()[-1]
        assert url.startswith("https://"), url
        ctx = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
        ctx.check_hostname = False
        assert "quiver_requests_total" in urllib.request.urlopen(url, context=ctx, timeout=TIMEOUT).read().decode()
        with pytest.raises(Exception):
            urllib.request.urlopen(url.replace("https://", "http://"), timeout=3).read()
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        # Plaintext to the TLS port: no answer but an error.
        with grpc.insecure_channel(srv.addr) as ch:
            with pytest.raises(grpc.RpcError) as e:
                quiver_pb.grpc.QuiverStub(ch).ListCollections(quiver_pb.pb2.ListCollectionsRequest(), timeout=3)
            assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        # A client that does not trust the server's CA fails the handshake.
        with secure_channel(srv, trustme.CA()) as ch:
            with pytest.raises(grpc.RpcError) as e:
                quiver_pb.grpc.QuiverStub(ch).ListCollections(quiver_pb.pb2.ListCollectionsRequest(), timeout=3)
            assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        stop_server(srv)


def test_sighup_reloads_the_certificate_for_new_connections(tmp_path, quiver_pb):
    old_ca, new_ca = trustme.CA(), trustme.CA()
    cert, key = tls_files(tmp_path, old_ca)
    srv = start_server(tmp_path, ["--tls-cert", str(cert), "--tls-key", str(key)])
    list_req = quiver_pb.pb2.ListCollectionsRequest()
    try:
        kept = secure_channel(srv, old_ca)
        quiver_pb.grpc.QuiverStub(kept).ListCollections(list_req, timeout=TIMEOUT)
        tls_files(tmp_path, new_ca)  # the same file names, a certificate of another CA
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            try:
                with secure_channel(srv, new_ca) as ch:
                    quiver_pb.grpc.QuiverStub(ch).ListCollections(list_req, timeout=3)
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the new certificate was not served after SIGHUP"
                time.sleep(0.2)
        # The connection opened before keeps working; new ones trusting the old CA fail.
        quiver_pb.grpc.QuiverStub(kept).ListCollections(list_req, timeout=TIMEOUT)
        kept.close()
        with secure_channel(srv, old_ca) as ch:
            with pytest.raises(grpc.RpcError):
                quiver_pb.grpc.QuiverStub(ch).ListCollections(list_req, timeout=3)
        # A broken file on the next SIGHUP keeps the current certificate.
        cert.write_text("garbage\n")
        srv.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        with secure_channel(srv, new_ca) as ch:
            quiver_pb.grpc.QuiverStub(ch).ListCollections(list_req, timeout=TIMEOUT)
        assert "reloading TLS failed" in srv.stderr()
    finally:
        stop_server(srv)


def test_mutual_tls_needs_a_client_certificate_from_the_client_ca(tmp_path, quiver_pb):
    ca, clients = trustme.CA(), trustme.CA()
    cert, key = tls_files(tmp_path, ca)
    client_ca = tmp_path / "clients.pem"
    clients.cert_pem.write_to_path(str(client_ca))
    srv = start_server(tmp_path, ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(client_ca)])
    try:
        with secure_channel(srv, ca, client=clients.issue_cert("client@example.com")) as ch:
            roundtrip(ch, quiver_pb, "m")
        for client in (None, trustme.CA().issue_cert("intruder@example.com")):
            with secure_channel(srv, ca, client=client) as ch:
                with pytest.raises(grpc.RpcError) as e:
                    quiver_pb.grpc.QuiverStub(ch).ListCollections(quiver_pb.pb2.ListCollectionsRequest(), timeout=3)
                assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        stop_server(srv)


def serve_refused(tmp_path, args):
    """Runs `quiver serve` with a bad setting: it must exit non-zero; returns its stderr."""
    r = subprocess.run(
        [str(_quiver_bin()), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d"), *args],
        capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    return r.stderr


def test_bad_tls_files_stop_the_server_with_a_message(tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    err = serve_refused(tmp_path, ["--tls-cert", str(junk), "--tls-key", str(junk)])
    assert "junk.pem" in err, err


def test_api_keys_separate_readers_from_writers(tmp_path, quiver_pb):
    pb = quiver_pb.pb2
    keys = tmp_path / "keys"
    keys.write_text(f"# writers\nrw:{RW}\n")
    # The read-only key comes from the environment.
    srv = start_server(tmp_path, ["--api-key-file", str(keys), "--metrics-listen", "127.0.0.1:0",
                                  "--metrics-require-key"], env={"QUIVER_API_KEYS": f"ro:{RO}"})
    try:
        assert RW not in srv.stderr() and RO not in srv.stderr()
        # Metrics need a key too (--metrics-require-key): a read-only one suffices.
        url = next(l for l in iter(srv.lines.get, None) if l.startswith("metrics on ")).split()[-1]
        for headers in [{}, {"api-key": "wrong-0123456789abcdef"}]:
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT)
            assert e.value.code == 401 and e.value.headers["WWW-Authenticate"] == "Bearer", headers
        for headers in [{"api-key": RO}, {"authorization": f"Bearer {RW}"}]:
            # Answered (200; the text may be empty before any call is counted).
            r = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT)
            assert r.status == 200, headers
        with grpc.insecure_channel(srv.addr) as ch:
            stub = quiver_pb.grpc.QuiverStub(ch)
            create = pb.CreateCollectionRequest(name="k", dim=2, metric=pb.METRIC_L2)
            upsert = pb.UpsertRequest(collection="k", ids=[7], vectors=[1.0, 0.0])
            search = pb.SearchRequest(collection="k", vector=[1.0, 0.0], k=1)
            for md in [None, [("api-key", "wrong-0123456789abcdef")], [("authorization", f"Basic {RW}")]]:
                with pytest.raises(grpc.RpcError) as e:
                    stub.Search(search, metadata=md, timeout=TIMEOUT)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, md
            stub.CreateCollection(create, metadata=[("api-key", RW)], timeout=TIMEOUT)
            stub.Upsert(upsert, metadata=[("authorization", f"Bearer {RW}")], timeout=TIMEOUT)
            # Read-only: searches and reads work, writes are refused.
            r = stub.Search(search, metadata=[("api-key", RO)], timeout=TIMEOUT)
            assert [n.id for n in r.neighbors] == [7]
            assert stub.Count(pb.CountRequest(collection="k"), metadata=[("api-key", RO)], timeout=TIMEOUT).count == 1
            for call, req in [(stub.Upsert, upsert), (stub.Delete, pb.DeleteRequest(collection="k", ids=[7])),
                              (stub.DropCollection, pb.DropCollectionRequest(name="k")),
                              (stub.LoadIndex, pb.LoadIndexRequest(collection="x", path="i.qvr"))]:
                with pytest.raises(grpc.RpcError) as e:
                    call(req, metadata=[("api-key", RO)], timeout=TIMEOUT)
                assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert stub.Count(pb.CountRequest(collection="k"), metadata=[("api-key", RW)], timeout=TIMEOUT).count == 1
            # Health stays open.
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert RW not in srv.stderr() and RO not in srv.stderr()
    finally:
        stop_server(srv)


def test_scoped_keys_reach_only_their_collections(tmp_path, quiver_pb):
    pb = quiver_pb.pb2
    tenant, reader = "tenant-a-0123456789abcdef", "shared-reader-0123456789abcdef"
    keys = tmp_path / "keys"
    keys.write_text(f"rw:{RW}\nrw@tenant-a-*:{tenant}\nro@shared|faq:{reader}\n")
    srv = start_server(tmp_path, ["--api-key-file", str(keys), "--metrics-listen", "127.0.0.1:0",
                                  "--metrics-require-key"])
    try:
        url = next(l for l in iter(srv.lines.get, None) if l.startswith("metrics on ")).split()[-1]
        with grpc.insecure_channel(srv.addr) as ch:
            stub = quiver_pb.grpc.QuiverStub(ch)
            admin, a, r = [("api-key", RW)], [("api-key", tenant)], [("authorization", f"Bearer {reader}")]
            for name in ["shared", "tenant-b-docs"]:
                stub.CreateCollection(pb.CreateCollectionRequest(name=name, dim=2, metric=pb.METRIC_L2),
                                      metadata=admin, timeout=TIMEOUT)
            stub.Upsert(pb.UpsertRequest(collection="shared", ids=[1], vectors=[0.0, 1.0]), metadata=admin,
                        timeout=TIMEOUT)
            # The tenant makes and uses collections under its prefix.
            stub.CreateCollection(pb.CreateCollectionRequest(name="tenant-a-docs", dim=2, metric=pb.METRIC_L2),
                                  metadata=a, timeout=TIMEOUT)
            stub.Upsert(pb.UpsertRequest(collection="tenant-a-docs", ids=[5], vectors=[1.0, 0.0]), metadata=a,
                        timeout=TIMEOUT)
            hits = stub.Search(pb.SearchRequest(collection="tenant-a-docs", vector=[1.0, 0.0], k=1), metadata=a,
                               timeout=TIMEOUT)
            assert [n.id for n in hits.neighbors] == [5]
            # Listings show only what a key reaches.
            listed = lambda md: sorted(c.name for c in stub.ListCollections(pb.ListCollectionsRequest(),
                                                                             metadata=md, timeout=TIMEOUT).collections)
            assert listed(a) == ["tenant-a-docs"]
            assert listed(r) == ["shared"]
            assert listed(admin) == ["shared", "tenant-a-docs", "tenant-b-docs"]
            assert stub.Count(pb.CountRequest(collection="shared"), metadata=r, timeout=TIMEOUT).count == 1
            # Every method naming a collection out of reach is refused, before anything else is
            # looked at; LoadIndex (the server's files) needs an unscoped key.
            methods = pb.DESCRIPTOR.services_by_name["Quiver"].methods
            assert len(methods) >= 19
            for m in methods:
                msg = getattr(pb, m.input_type.name)()
                fields = {f.name for f in m.input_type.fields}
                target = "collection" if "collection" in fields else "name" if "name" in fields else None
                if target is not None:
                    setattr(msg, target, "tenant-b-docs")
                call = getattr(stub, m.name)
                if m.name == "ListCollections":
                    continue
                with pytest.raises(grpc.RpcError) as e:
                    call(iter([msg]) if m.client_streaming else msg, metadata=a, timeout=TIMEOUT)
                assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, (m.name, e.value)
                want = "without a collection scope" if m.name == "LoadIndex" else '"tenant-b-docs"'
                assert want in e.value.details(), (m.name, e.value.details())
            # The read-only scoped key cannot write even in reach.
            with pytest.raises(grpc.RpcError) as e:
                stub.Upsert(pb.UpsertRequest(collection="shared", ids=[2], vectors=[0.0, 1.0]), metadata=r,
                            timeout=TIMEOUT)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
            # A stream may not switch to a collection out of reach midway.
            stream = [pb.UpsertRequest(collection="tenant-a-docs", ids=[6], vectors=[1.0, 1.0]),
                      pb.UpsertRequest(collection="shared", ids=[7], vectors=[1.0, 1.0])]
            with pytest.raises(grpc.RpcError) as e:
                stub.UpsertStream(iter(stream), metadata=a, timeout=TIMEOUT)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert stub.Count(pb.CountRequest(collection="shared"), metadata=admin, timeout=TIMEOUT).count == 1
            assert stub.Count(pb.CountRequest(collection="tenant-b-docs"), metadata=admin, timeout=TIMEOUT).count == 0
        # The metrics name every collection: scoped keys may not read them.
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(urllib.request.Request(url, headers={"api-key": tenant}), timeout=TIMEOUT)
        assert e.value.code == 403
        assert urllib.request.urlopen(urllib.request.Request(url, headers={"api-key": RW}), timeout=TIMEOUT).status == 200
        assert tenant not in srv.stderr() and reader not in srv.stderr()
    finally:
        stop_server(srv)


def test_exposed_servers_warn_about_what_they_lack(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"rw:{RW}\nrw@tenant-a-*:tenant-a-0123456789abcdef\n")
    srv = start_server(tmp_path, ["--api-key-file", str(keys), "--metrics-listen", "0.0.0.0:0"])
    try:
        deadline = time.time() + TIMEOUT
        while "metrics names every collection" not in srv.stderr() and time.time() < deadline:
            time.sleep(0.05)
        err = srv.stderr()
        assert "WARNING: the metrics listener" in err and "without TLS" in err, err
        assert "--metrics-require-key" in err and "tenant-a-0123456789abcdef" not in err, err
    finally:
        stop_server(srv)


def test_bad_key_files_stop_the_server_without_echoing_keys(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("rw:0123456789abcdef-good\nrx:0123456789abcdef-secret\n")
    err = serve_refused(tmp_path, ["--api-key-file", str(keys)])
    assert "entry 2" in err and "secret" not in err, err
    keys.write_text("rw@tenant/a:0123456789abcdef-secret\n")
    err = serve_refused(tmp_path, ["--api-key-file", str(keys)])
    assert "entry 1" in err and "scope" in err and "secret" not in err, err
    err = serve_refused(tmp_path, ["--metrics-require-key"])
    assert "--metrics-require-key needs API keys" in err, err


def build_index(tmp_path, out):
    base = tmp_path / "base.fvecs"
    x = np.random.default_rng(1).standard_normal((300, 8)).astype(np.float32)
    rows = np.hstack([np.full((300, 1), 8, dtype=np.int32).view(np.float32), x])
    rows.tofile(base)
    subprocess.run([str(_quiver_bin()), "build", "--base", str(base), "--metric", "l2", "--nlist", "4",
                    "--pq", "4", "--out", str(out)], check=True, capture_output=True, timeout=120)


def test_load_index_reads_only_regular_files_inside_the_import_dir(tmp_path, quiver_pb):
    pb = quiver_pb.pb2
    imports = tmp_path / "imports"
    imports.mkdir()
    build_index(tmp_path, imports / "ok.qvr")
    outside = tmp_path / "outside.qvr"
    build_index(tmp_path, outside)
    os.symlink(outside, imports / "link-out.qvr")
    os.mkfifo(imports / "fifo.qvr")

    # Without --import-dir, LoadIndex is off.
    srv = start_server(tmp_path, [], name="off")
    try:
        with grpc.insecure_channel(srv.addr) as ch:
            with pytest.raises(grpc.RpcError) as e:
                quiver_pb.grpc.QuiverStub(ch).LoadIndex(pb.LoadIndexRequest(collection="a", path=str(outside)), timeout=TIMEOUT)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "--import-dir" in e.value.details()
    finally:
        stop_server(srv)

    srv = start_server(tmp_path, ["--import-dir", str(imports)], name="on")
    try:
        with grpc.insecure_channel(srv.addr) as ch:
            stub = quiver_pb.grpc.QuiverStub(ch)
            for path, code in [
                (str(outside), grpc.StatusCode.PERMISSION_DENIED),
                ("../outside.qvr", grpc.StatusCode.PERMISSION_DENIED),
                ("link-out.qvr", grpc.StatusCode.PERMISSION_DENIED),
                ("fifo.qvr", grpc.StatusCode.INVALID_ARGUMENT),
                ("missing.qvr", grpc.StatusCode.INVALID_ARGUMENT),
                ("", grpc.StatusCode.INVALID_ARGUMENT),
            ]:
                for background in (False, True):
                    t = time.monotonic()
                    with pytest.raises(grpc.RpcError) as e:
                        stub.LoadIndex(pb.LoadIndexRequest(collection="x", path=path, background=background), timeout=TIMEOUT)
                    assert e.value.code() == code, (path, e.value.details())
                    assert e.value.details().startswith("path"), e.value.details()
                    assert time.monotonic() - t < 5, f"{path}: refused only after {time.monotonic() - t:.1f}s"
            info = stub.LoadIndex(pb.LoadIndexRequest(collection="ok", path="ok.qvr"), timeout=60)
            assert info.count == 300
    finally:
        stop_server(srv)


def test_rate_limits_answer_resource_exhausted_with_a_retry_hint(tmp_path, quiver_pb):
    pb = quiver_pb.pb2
    srv = start_server(tmp_path, ["--rate-limit-requests", "1", "--rate-limit-request-burst", "10",
                                  "--rate-limit-vectors", "100", "--rate-limit-vector-burst", "100",
                                  "--metrics-listen", "127.0.0.1:0"])
    try:
        with grpc.insecure_channel(srv.addr) as ch:
            stub = quiver_pb.grpc.QuiverStub(ch)
            stub.CreateCollection(pb.CreateCollectionRequest(name="r", dim=2, metric=pb.METRIC_L2), timeout=TIMEOUT)
            # Vectors: 100 fit the bucket, the next upsert does not.
            ids = list(range(1, 101))
            stub.Upsert(pb.UpsertRequest(collection="r", ids=ids, vectors=[0.5] * 200), timeout=TIMEOUT)
            with pytest.raises(grpc.RpcError) as e:
                stub.Upsert(pb.UpsertRequest(collection="r", ids=[500], vectors=[0.5, 0.5]), timeout=TIMEOUT)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "vectors" in e.value.details() and "retry in" in e.value.details(), e.value.details()
            hint = dict(e.value.trailing_metadata())["retry-after-ms"]
            assert 0 < int(hint) <= 1000, hint
            # Requests: a burst of 10, then refusals, then health checks still answer.
            codes = []
            for _ in range(20):
                try:
                    stub.ListCollections(pb.ListCollectionsRequest(), timeout=TIMEOUT)
                    codes.append("ok")
                except grpc.RpcError as err:
                    codes.append(err.code().name)
            assert "RESOURCE_EXHAUSTED" in codes and set(codes) <= {"ok", "RESOURCE_EXHAUSTED"}, codes
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            # After a wait the client is served again.
            time.sleep(1.5)
            stub.ListCollections(pb.ListCollectionsRequest(), timeout=TIMEOUT)
        metrics_line = next(l for l in iter(srv.lines.get, None) if l.startswith("metrics on "))
        url = metrics_line.split()[-1]
        text = urllib.request.urlopen(url, timeout=TIMEOUT).read().decode()
        assert 'quiver_rate_limited_total{limit="requests"}' in text
        assert 'quiver_rate_limited_total{limit="vectors"} 1' in text
    finally:
        stop_server(srv)
