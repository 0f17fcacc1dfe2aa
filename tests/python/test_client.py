"""Quiver's gRPC API driven by a third-party client (Python grpcio, stubs generated at test time).

Each test gets its own server process (fixture `server` in conftest.py) in a fresh data dir.
"""

import math

import grpc
import numpy as np
import pytest

DIM = 16
N = 500
TIMEOUT = 30.0  # per RPC, seconds

METRICS = ["cosine", "l2"]


def metric_enum(pb, name):
    return {"cosine": pb.METRIC_COSINE, "l2": pb.METRIC_L2, "ip": pb.METRIC_INNER_PRODUCT}[name]


def dataset(seed=7, n=N, dim=DIM):
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(1, 10 * n, dtype=np.uint64), size=n, replace=False)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return ids, vectors


def create(stub, pb, name, metric, dim=DIM, index=None):
    req = pb.CreateCollectionRequest(name=name, dim=dim, metric=metric_enum(pb, metric))
    if index is not None:
        req.index.CopyFrom(index)
    return stub.CreateCollection(req, timeout=TIMEOUT)


def upsert(stub, pb, name, ids, vectors):
    resp = stub.Upsert(
        pb.UpsertRequest(collection=name, ids=[int(i) for i in ids], vectors=np.asarray(vectors, np.float32).ravel().tolist()),
        timeout=TIMEOUT,
    )
    return resp.upserted


def populated(stub, pb, name, metric, seed=7, n=N):
    create(stub, pb, name, metric)
    ids, vectors = dataset(seed, n)
    assert upsert(stub, pb, name, ids, vectors) == n
    return ids, vectors


def search(stub, pb, name, vector, k, **kw):
    resp = stub.Search(
        pb.SearchRequest(collection=name, vector=np.asarray(vector, np.float32).tolist(), k=k, **kw),
        timeout=TIMEOUT,
    )
    return [n.id for n in resp.neighbors], [n.distance for n in resp.neighbors]


def exact(metric, vectors, ids, query, k):
    """Brute-force neighbours in the server's conventions: (ids, distances)."""
    v = vectors.astype(np.float64)
    q = np.asarray(query, np.float64)
    if metric == "l2":
        d = ((v - q) ** 2).sum(axis=1)
        order = np.argsort(d, kind="stable")
    else:
        if metric == "cosine":
            v = v / np.linalg.norm(v, axis=1, keepdims=True)
            q = q / np.linalg.norm(q)
        d = v @ q
        order = np.argsort(-d, kind="stable")
    order = order[:k]
    return [int(ids[i]) for i in order], d[order]


def assert_sorted(metric, distances):
    pairs = list(zip(distances, distances[1:]))
    if metric == "l2":
        assert all(a <= b for a, b in pairs), f"L2 distances not ascending: {distances}"
    else:
        assert all(a >= b for a, b in pairs), f"{metric} scores not descending: {distances}"


def self_distance(metric):
    return 0.0 if metric == "l2" else 1.0


def expect_code(code, fn, *args, **kwargs):
    with pytest.raises(grpc.RpcError) as ei:
        fn(*args, timeout=TIMEOUT, **kwargs)
    assert ei.value.code() == code, f"expected {code}, got {ei.value.code()}: {ei.value.details()}"
    return ei.value


# --- collections ------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
def test_create_get_list(stub, quiver_pb, metric):
    pb = quiver_pb.pb2
    info = create(stub, pb, f"c_{metric}", metric)
    assert info.name == f"c_{metric}"
    assert info.dim == DIM
    assert info.metric == metric_enum(pb, metric)
    assert info.count == 0
    assert not info.trained

    ids, vectors = dataset()
    assert upsert(stub, pb, f"c_{metric}", ids, vectors) == N

    got = stub.GetCollection(pb.GetCollectionRequest(name=f"c_{metric}"), timeout=TIMEOUT)
    assert got.name == f"c_{metric}"
    assert got.dim == DIM
    assert got.metric == metric_enum(pb, metric)
    assert got.count == N
    assert not got.trained

    listed = stub.ListCollections(pb.ListCollectionsRequest(), timeout=TIMEOUT)
    by_name = {c.name: c for c in listed.collections}
    assert f"c_{metric}" in by_name, f"ListCollections: {list(by_name)}"
    assert by_name[f"c_{metric}"].count == N


def test_list_several_and_drop(stub, quiver_pb):
    pb = quiver_pb.pb2
    create(stub, pb, "a", "cosine")
    create(stub, pb, "b", "l2")
    names = {c.name for c in stub.ListCollections(pb.ListCollectionsRequest(), timeout=TIMEOUT).collections}
    assert {"a", "b"} <= names
    stub.DropCollection(pb.DropCollectionRequest(name="a"), timeout=TIMEOUT)
    names = {c.name for c in stub.ListCollections(pb.ListCollectionsRequest(), timeout=TIMEOUT).collections}
    assert "a" not in names and "b" in names
    expect_code(grpc.StatusCode.NOT_FOUND, stub.GetCollection, pb.GetCollectionRequest(name="a"))


# --- search (exact, untrained) ------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
def test_search_finds_stored_vector_first(stub, quiver_pb, metric):
    pb = quiver_pb.pb2
    ids, vectors = populated(stub, pb, "s", metric)
    for row in (0, 1, 17, 250, N - 1):
        got_ids, dists = search(stub, pb, "s", vectors[row], k=10)
        assert len(got_ids) == 10
        assert got_ids[0] == int(ids[row]), f"row {row}: expected id {ids[row]} first, got {got_ids}"
        assert dists[0] == pytest.approx(self_distance(metric), abs=1e-4)
        assert_sorted(metric, dists)


@pytest.mark.parametrize("metric", METRICS)
def test_search_matches_brute_force(stub, quiver_pb, metric):
    pb = quiver_pb.pb2
    ids, vectors = populated(stub, pb, "s", metric)
    rng = np.random.default_rng(99)
    for _ in range(5):
        q = rng.standard_normal(DIM).astype(np.float32)
        got_ids, dists = search(stub, pb, "s", q, k=20)
        want_ids, want_d = exact(metric, vectors, ids, q, 20)
        assert got_ids == want_ids
        np.testing.assert_allclose(dists, want_d, rtol=1e-4, atol=1e-4)
        assert_sorted(metric, dists)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("k", [1, 7, 100, N])
def test_search_respects_k(stub, quiver_pb, metric, k):
    pb = quiver_pb.pb2
    ids, vectors = populated(stub, pb, "s", metric)
    got_ids, dists = search(stub, pb, "s", vectors[3], k=k)
    assert len(got_ids) == k
    assert len(set(got_ids)) == k, "duplicate ids in one result list"
    assert set(got_ids) <= {int(i) for i in ids}
    assert_sorted(metric, dists)


def test_search_k_above_count_returns_all(stub, quiver_pb):
    pb = quiver_pb.pb2
    ids, vectors = populated(stub, pb, "small", "l2", n=5)
    got_ids, dists = search(stub, pb, "small", vectors[0], k=10)
    assert sorted(got_ids) == sorted(int(i) for i in ids)
    assert got_ids[0] == int(ids[0])


@pytest.mark.parametrize("metric", METRICS)
def test_upsert_replaces_existing_id(stub, quiver_pb, metric):
    pb = quiver_pb.pb2
    ids, vectors = populated(stub, pb, "s", metric)
    new = np.random.default_rng(5).standard_normal(DIM).astype(np.float32) * 3
    assert upsert(stub, pb, "s", [ids[10]], [new]) == 1
    assert stub.GetCollection(pb.GetCollectionRequest(name="s"), timeout=TIMEOUT).count == N
    got_ids, dists = search(stub, pb, "s", new, k=3)
    assert got_ids[0] == int(ids[10])
    assert dists[0] == pytest.approx(self_distance(metric), abs=1e-3)


@pytest.mark.parametrize("metric", METRICS)
def test_delete_removes_id_from_results(stub, quiver_pb, metric):
    pb = quiver_pb.pb2
    ids, vectors = populated(stub, pb, "s", metric)
    victim = int(ids[42])
    assert search(stub, pb, "s", vectors[42], k=5)[0][0] == victim

    resp = stub.Delete(pb.DeleteRequest(collection="s", ids=[victim]), timeout=TIMEOUT)
    assert resp.deleted == 1
    assert stub.GetCollection(pb.GetCollectionRequest(name="s"), timeout=TIMEOUT).count == N - 1

    got_ids, _ = search(stub, pb, "s", vectors[42], k=N)
    assert victim not in got_ids
    assert len(got_ids) == N - 1
    keep = np.arange(N) != 42
    want_ids, _ = exact(metric, vectors[keep], ids[keep], vectors[42], 10)
    assert got_ids[:10] == want_ids

    # Deleting it again (or an id never stored) deletes nothing.
    again = stub.Delete(pb.DeleteRequest(collection="s", ids=[victim, 10 * N + 1]), timeout=TIMEOUT)
    assert again.deleted == 0
    assert stub.GetCollection(pb.GetCollectionRequest(name="s"), timeout=TIMEOUT).count == N - 1


@pytest.mark.parametrize("metric", METRICS)
def test_search_batch_one_result_per_query(stub, quiver_pb, metric):
    pb = quiver_pb.pb2
    ids, vectors = populated(stub, pb, "s", metric)
    rows = [0, 5, 99, 123, 499]
    resp = stub.SearchBatch(
        pb.SearchBatchRequest(collection="s", vectors=vectors[rows].ravel().tolist(), k=4),
        timeout=TIMEOUT,
    )
    assert len(resp.results) == len(rows)
    for row, result in zip(rows, resp.results):
        got = [n.id for n in result.neighbors]
        dists = [n.distance for n in result.neighbors]
        assert len(got) == 4
        assert got[0] == int(ids[row])
        assert dists[0] == pytest.approx(self_distance(metric), abs=1e-4)
        assert_sorted(metric, dists)
        single_ids, single_d = search(stub, pb, "s", vectors[row], k=4)
        assert got == single_ids
        np.testing.assert_allclose(dists, single_d, rtol=1e-5, atol=1e-5)


def test_upsert_stream_three_messages(stub, quiver_pb):
    pb = quiver_pb.pb2
    create(stub, pb, "stream", "cosine")
    ids, vectors = dataset(seed=11, n=300)
    chunks = [(0, 50), (50, 150), (150, 300)]
    sent = []

    def messages():
        for a, b in chunks:
            sent.append((a, b))
            yield pb.UpsertRequest(collection="stream", ids=[int(i) for i in ids[a:b]], vectors=vectors[a:b].ravel().tolist())

    resp = stub.UpsertStream(messages(), timeout=TIMEOUT)
    assert len(sent) == 3
    assert resp.upserted == 300
    assert stub.GetCollection(pb.GetCollectionRequest(name="stream"), timeout=TIMEOUT).count == 300
    for row in (0, 75, 299):  # one from each message
        got_ids, dists = search(stub, pb, "stream", vectors[row], k=3)
        assert got_ids[0] == int(ids[row])
        assert dists[0] == pytest.approx(1.0, abs=1e-4)


# --- training -----------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
def test_train_ivfpq_then_search_with_refine(stub, quiver_pb, metric):
    pb = quiver_pb.pb2
    ids, vectors = populated(stub, pb, "t", metric)
    info = stub.Train(pb.TrainRequest(collection="t", index=pb.IndexParams(nlist=8, pq_m=4)), timeout=120)
    assert info.trained
    assert info.count == N
    assert info.index.nlist == 8 and info.index.pq_m == 4

    got = stub.GetCollection(pb.GetCollectionRequest(name="t"), timeout=TIMEOUT)
    assert got.trained
    assert got.count == N

    hits = 0
    rows = list(range(0, N, 25))
    for row in rows:
        got_ids, dists = search(stub, pb, "t", vectors[row], k=10, nprobe=8, refine_factor=10)
        assert len(got_ids) == 10
        assert_sorted(metric, dists)
        if got_ids[0] == int(ids[row]):
            hits += 1
            # f16 refine (the default): close to, not exactly, the exact value.
            assert dists[0] == pytest.approx(self_distance(metric), abs=1e-2)
    # All lists probed and the candidates re-ranked: the stored vector must come first.
    assert hits == len(rows), f"stored vector first for {hits}/{len(rows)} queries"

    # Server defaults (nprobe 0, refine_factor 0) still answer, sorted and k long.
    got_ids, dists = search(stub, pb, "t", vectors[0], k=10)
    assert len(got_ids) == 10
    assert got_ids[0] == int(ids[0])
    assert_sorted(metric, dists)


def test_train_too_few_vectors_fails(stub, quiver_pb):
    pb = quiver_pb.pb2
    populated(stub, pb, "tiny", "l2", n=5)
    err = expect_code(
        grpc.StatusCode.FAILED_PRECONDITION,
        stub.Train,
        pb.TrainRequest(collection="tiny", index=pb.IndexParams(nlist=8, pq_m=4)),
    )
    assert err.details()
    assert not stub.GetCollection(pb.GetCollectionRequest(name="tiny"), timeout=TIMEOUT).trained


# --- error statuses -----------------------------------------------------------------------------


def test_dimension_mismatch_is_invalid_argument(stub, quiver_pb):
    pb = quiver_pb.pb2
    ids, vectors = populated(stub, pb, "d", "cosine")
    # Search with a 15-d and a 17-d query.
    for d in (DIM - 1, DIM + 1):
        expect_code(grpc.StatusCode.INVALID_ARGUMENT, stub.Search, pb.SearchRequest(collection="d", vector=[0.5] * d, k=3))
    # Upsert: one id with 15 values; two ids with 3 * 16 values.
    expect_code(grpc.StatusCode.INVALID_ARGUMENT, stub.Upsert, pb.UpsertRequest(collection="d", ids=[1], vectors=[0.5] * (DIM - 1)))
    expect_code(grpc.StatusCode.INVALID_ARGUMENT, stub.Upsert, pb.UpsertRequest(collection="d", ids=[1, 2], vectors=[0.5] * (3 * DIM)))
    # SearchBatch with a ragged row count.
    expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.SearchBatch,
        pb.SearchBatchRequest(collection="d", vectors=[0.5] * (2 * DIM + 3), k=3),
    )
    # Nothing was written.
    assert stub.GetCollection(pb.GetCollectionRequest(name="d"), timeout=TIMEOUT).count == N


def test_unknown_collection_is_not_found(stub, quiver_pb):
    pb = quiver_pb.pb2
    nf = grpc.StatusCode.NOT_FOUND
    expect_code(nf, stub.GetCollection, pb.GetCollectionRequest(name="nope"))
    expect_code(nf, stub.Search, pb.SearchRequest(collection="nope", vector=[0.5] * DIM, k=3))
    expect_code(nf, stub.SearchBatch, pb.SearchBatchRequest(collection="nope", vectors=[0.5] * DIM, k=3))
    expect_code(nf, stub.Upsert, pb.UpsertRequest(collection="nope", ids=[1], vectors=[0.5] * DIM))
    expect_code(nf, stub.Delete, pb.DeleteRequest(collection="nope", ids=[1]))
    expect_code(nf, stub.Train, pb.TrainRequest(collection="nope"))
    expect_code(nf, stub.Flush, pb.FlushRequest(collection="nope"))
    expect_code(nf, stub.DropCollection, pb.DropCollectionRequest(name="nope"))
    expect_code(nf, stub.UpsertStream, iter([pb.UpsertRequest(collection="nope", ids=[1], vectors=[0.5] * DIM)]))


def test_duplicate_create_is_already_exists(stub, quiver_pb):
    pb = quiver_pb.pb2
    create(stub, pb, "dup", "cosine")
    for metric, dim in (("cosine", DIM), ("l2", 8)):  # same name, same or different schema
        expect_code(
            grpc.StatusCode.ALREADY_EXISTS,
            stub.CreateCollection,
            pb.CreateCollectionRequest(name="dup", dim=dim, metric=metric_enum(pb, metric)),
        )
    got = stub.GetCollection(pb.GetCollectionRequest(name="dup"), timeout=TIMEOUT)
    assert got.dim == DIM and got.metric == pb.METRIC_COSINE


def test_k_zero_is_invalid_argument(stub, quiver_pb):
    pb = quiver_pb.pb2
    ids, vectors = populated(stub, pb, "k", "l2")
    expect_code(grpc.StatusCode.INVALID_ARGUMENT, stub.Search, pb.SearchRequest(collection="k", vector=vectors[0].tolist(), k=0))
    expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.SearchBatch,
        pb.SearchBatchRequest(collection="k", vectors=vectors[:2].ravel().tolist(), k=0),
    )


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_is_invalid_argument(stub, quiver_pb, bad):
    pb = quiver_pb.pb2
    ids, vectors = populated(stub, pb, "nan", "cosine")
    v = vectors[0].copy()
    v[3] = bad
    expect_code(grpc.StatusCode.INVALID_ARGUMENT, stub.Upsert, pb.UpsertRequest(collection="nan", ids=[10 * N + 7], vectors=v.tolist()))
    expect_code(grpc.StatusCode.INVALID_ARGUMENT, stub.Search, pb.SearchRequest(collection="nan", vector=v.tolist(), k=3))
    expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.SearchBatch,
        pb.SearchBatchRequest(collection="nan", vectors=np.concatenate([vectors[1], v]).tolist(), k=3),
    )
    assert stub.GetCollection(pb.GetCollectionRequest(name="nan"), timeout=TIMEOUT).count == N


def test_invalid_create_requests(stub, quiver_pb):
    pb = quiver_pb.pb2
    ia = grpc.StatusCode.INVALID_ARGUMENT
    expect_code(ia, stub.CreateCollection, pb.CreateCollectionRequest(name="z", dim=0, metric=pb.METRIC_L2))
    expect_code(ia, stub.CreateCollection, pb.CreateCollectionRequest(name="z", dim=DIM, metric=pb.METRIC_UNSPECIFIED))
    expect_code(ia, stub.CreateCollection, pb.CreateCollectionRequest(name="", dim=DIM, metric=pb.METRIC_L2))
    expect_code(
        ia,
        stub.CreateCollection,
        pb.CreateCollectionRequest(name="z", dim=DIM, metric=pb.METRIC_L2, index=pb.IndexParams(pq_m=5)),
    )
    names = {c.name for c in stub.ListCollections(pb.ListCollectionsRequest(), timeout=TIMEOUT).collections}
    assert "z" not in names
