"""Server reflection (v1 and v1alpha) and the standard health service, seen from grpcio.

grpcio-reflection ships client stubs for v1alpha only (grpc_reflection.v1alpha.reflection_pb2).
The v1 messages are wire-identical (same fields and numbers, only the package differs), so v1 is
called through a generic stream-stream call on the v1 method path with the v1alpha serializers.
"""

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

TIMEOUT = 30.0
REFLECTION = {
    "v1": "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "v1alpha": "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
}


def reflect(channel, version, requests):
    call = channel.stream_stream(
        REFLECTION[version],
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    responses = list(call(iter(requests), timeout=TIMEOUT))
    assert len(responses) == len(requests)
    for r in responses:
        assert not r.HasField("error_response"), f"{version}: {r.error_response}"
    return responses


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_services(channel, version):
    (resp,) = reflect(channel, version, [reflection_pb2.ServerReflectionRequest(list_services="")])
    assert resp.HasField("list_services_response")
    names = {s.name for s in resp.list_services_response.service}
    assert "quiver.v1.Quiver" in names, names
    assert "grpc.health.v1.Health" in names, names


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_file_for_quiver_symbol(channel, version):
    (resp,) = reflect(channel, version, [reflection_pb2.ServerReflectionRequest(file_containing_symbol="quiver.v1.Quiver")])
    assert resp.HasField("file_descriptor_response")
    files = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in resp.file_descriptor_response.file_descriptor_proto]
    assert files, "no file descriptors returned"
    quiver_files = [f for f in files if f.package == "quiver.v1" and any(s.name == "Quiver" for s in f.service)]
    assert len(quiver_files) == 1, [f.name for f in files]
    svc = next(s for s in quiver_files[0].service if s.name == "Quiver")
    methods = {m.name: m for m in svc.method}
    assert "Search" in methods, sorted(methods)
    assert methods["Search"].input_type == ".quiver.v1.SearchRequest"
    assert methods["Search"].output_type == ".quiver.v1.SearchResponse"
    assert methods["UpsertStream"].client_streaming and not methods["UpsertStream"].server_streaming
    messages = {m.name for m in quiver_files[0].message_type}
    assert {"SearchRequest", "SearchResponse", "Neighbor", "CollectionInfo"} <= messages


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_file_for_health_symbol(channel, version):
    (resp,) = reflect(channel, version, [reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health")])
    files = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in resp.file_descriptor_response.file_descriptor_proto]
    assert any(f.package == "grpc.health.v1" and any(s.name == "Health" for s in f.service) for f in files)


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_unknown_symbol_is_not_found(channel, version):
    """NOT_FOUND for an unknown symbol.

    The reflection protocol's usual form is an in-stream ErrorResponse (grpc-go, grpc C++);
    tonic-reflection instead ends the stream with a NOT_FOUND status. Both are accepted.
    """
    call = channel.stream_stream(
        REFLECTION[version],
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Service")
    try:
        responses = list(call(iter([request]), timeout=TIMEOUT))
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, f"{e.code()}: {e.details()}"
        assert "no.such.Service" in (e.details() or "")
        return
    assert len(responses) == 1
    assert responses[0].HasField("error_response")
    assert responses[0].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_reflection_descriptor_pool_resolves_api(channel):
    """What generic clients (grpcurl-like) do: build a descriptor pool from reflection (v1alpha)."""
    pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    svc = pool.FindServiceByName("quiver.v1.Quiver")
    search = svc.FindMethodByName("Search")
    assert search.input_type.full_name == "quiver.v1.SearchRequest"
    fields = {f.name for f in search.input_type.fields}
    assert {"collection", "vector", "k", "nprobe", "refine_factor"} <= fields
    assert pool.FindEnumTypeByName("quiver.v1.Metric").values_by_name["METRIC_COSINE"].number == 3


@pytest.mark.parametrize("service", ["quiver.v1.Quiver", ""])
def test_health_serving(channel, service):
    stub = health_pb2_grpc.HealthStub(channel)
    resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_health_unknown_service_is_not_found(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.RpcError) as ei:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=TIMEOUT)
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND
