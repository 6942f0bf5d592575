"""Server reflection answers in both versions: grpc.reflection.v1, which grpcurl, Postman and
grpc-js tools ask first, and grpc.reflection.v1alpha, for older clients."""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, message_factory
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from irgate.api import reflection
from irgate.local_server import LocalServer

V1_METHOD = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
SERVED = {"irgate.v1.Info", "irgate.v1.Embed", "irgate.v1.Collections", "irgate.v1.Search", "irgate.v1.Judge",
          "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}
V1Request = message_factory.GetMessageClass(reflection.v1_message("ServerReflectionRequest"))
V1Response = message_factory.GetMessageClass(reflection.v1_message("ServerReflectionResponse"))


def ask_v1(channel: grpc.Channel, *requests: object) -> list:
    """A v1 client stub: the method and message types a v1-only client such as grpc-js uses."""
    info = channel.stream_stream(V1_METHOD, request_serializer=V1Request.SerializeToString,
                                 response_deserializer=V1Response.FromString)
    return list(info(iter(requests), timeout=30))


def test_the_v1_messages_are_the_v1_package() -> None:
    assert V1Request.DESCRIPTOR.full_name == "grpc.reflection.v1.ServerReflectionRequest"
    method = reflection.v1_file().services_by_name["ServerReflection"].methods_by_name["ServerReflectionInfo"]
    assert (method.input_type.full_name, method.output_type.full_name) == (
        "grpc.reflection.v1.ServerReflectionRequest", "grpc.reflection.v1.ServerReflectionResponse"
    )
    assert method.client_streaming and method.server_streaming


def test_a_v1_client_lists_every_service_and_reads_their_descriptors(server: LocalServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        [listed] = ask_v1(channel, V1Request(list_services=""))
        assert listed.DESCRIPTOR.full_name == "grpc.reflection.v1.ServerReflectionResponse"
        assert {service.name for service in listed.list_services_response.service} == SERVED

        search, itself = ask_v1(channel, V1Request(file_containing_symbol="irgate.v1.Search"),
                                V1Request(file_containing_symbol="grpc.reflection.v1.ServerReflection"))
        files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
                 for raw in search.file_descriptor_response.file_descriptor_proto]
        contract = next(file for file in files if file.package == "irgate.v1")
        assert "Search" in [service.name for service in contract.service]
        [described] = [descriptor_pb2.FileDescriptorProto.FromString(raw)
                       for raw in itself.file_descriptor_response.file_descriptor_proto]
        assert (described.name, described.package) == ("grpc/reflection/v1/reflection.proto", "grpc.reflection.v1")

        [missing] = ask_v1(channel, V1Request(file_containing_symbol="irgate.v1.Nothing"))
        assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_a_v1alpha_client_lists_the_same_services(server: LocalServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        [listed] = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30)
    assert {service.name for service in listed.list_services_response.service} == SERVED
