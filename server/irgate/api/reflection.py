"""Server reflection in both versions clients ask for: grpc.reflection.v1 (grpcurl, Postman and
grpc-js tools try it first) and grpc.reflection.v1alpha (older clients).

grpcio-reflection ships v1alpha only. v1 has the same messages under another package, so its file
descriptor is derived from v1alpha's (package and type names renamed) rather than copied by hand,
and one servicer answers both: their messages are the same bytes on the wire.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, FileDescriptor
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1_PACKAGE = "grpc.reflection.v1"
V1_FILE = "grpc/reflection/v1/reflection.proto"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
V1ALPHA_SERVICE_NAME = reflection.SERVICE_NAME


def _renamed(proto: descriptor_pb2.DescriptorProto, old: str, new: str) -> None:
    for field in proto.field:
        if field.type_name.startswith(old):
            field.type_name = new + field.type_name.removeprefix(old)
    for nested in proto.nested_type:
        _renamed(nested, old, new)


def v1_file() -> FileDescriptor:
    """grpc/reflection/v1/reflection.proto in the default pool (which reflection answers from)."""
    pool = descriptor_pool.Default()
    try:
        return pool.FindFileByName(V1_FILE)
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = f".{proto.package}.", f".{V1_PACKAGE}."
    proto.name, proto.package = V1_FILE, V1_PACKAGE
    proto.ClearField("options")  # v1alpha's language package names
    for message in proto.message_type:
        _renamed(message, old, new)
    for service in proto.service:
        for method in service.method:
            method.input_type = new + method.input_type.removeprefix(old)
            method.output_type = new + method.output_type.removeprefix(old)
    return pool.AddSerializedFile(proto.SerializeToString())


def v1_message(name: str) -> Descriptor:
    """The descriptor of a grpc.reflection.v1 message, e.g. "ServerReflectionRequest"."""
    return v1_file().message_types_by_name[name]


def enable(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serves reflection v1 and v1alpha, each listing service_names and both reflection services."""
    v1_file()
    names = (*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    servicer = reflection.aio.ReflectionServicer(names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": handler}),)
    )
