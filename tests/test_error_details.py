"""Every error carries google.rpc error details (grpc-status-details-bin) beside its code and
message, read here both raw, as any gRPC client would, and through the SDK's IrgateError."""

from __future__ import annotations

import asyncio
import collections
import uuid
from concurrent import futures

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from irgate.local_server import LocalServer
from irgate_client import AsyncClient, Client, Document, FieldViolation, IrgateError
from irgate_client.v1 import irgate_pb2 as pb
from irgate_client.v1 import irgate_pb2_grpc as pb_grpc

DOMAIN = "irgate.dev"


def failure(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


def details_of(error: grpc.RpcError) -> dict[str, object]:
    """The error's google.rpc.Status details by type name, e.g. {"ErrorInfo": ErrorInfo(...)}."""
    status = rpc_status.from_call(error)
    assert isinstance(status, status_pb2.Status), f"{error.code().name} carries no google.rpc.Status: {error.details()}"
    assert status.message == error.details() and status.code == error.code().value[0]
    found: dict[str, object] = {}
    for packed in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo,
                     error_details_pb2.ResourceInfo):
            if packed.Is(kind.DESCRIPTOR):
                found[kind.DESCRIPTOR.name] = detail = kind()
                packed.Unpack(detail)
    return found


@pytest.fixture
def channel(server: LocalServer):
    with grpc.insecure_channel(server.address) as opened:
        yield opened


@pytest.fixture
def collection(client: Client) -> str:
    name = f"details-{uuid.uuid4().hex[:12]}"
    client.create_collection(name)
    client.upsert(name, [Document(id="rain", text="Rain forms when vapour condenses.")])
    yield name
    client.delete_collection(name)


def test_an_invalid_argument_names_the_field_and_what_is_allowed(channel: grpc.Channel, collection: str) -> None:
    error = failure(lambda: pb_grpc.SearchStub(channel).Search(pb.SearchRequest(collection=collection, query="rain", k=500)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = details_of(error)
    assert (details["ErrorInfo"].reason, details["ErrorInfo"].domain) == ("INVALID_ARGUMENT", DOMAIN)
    [violation] = details["BadRequest"].field_violations
    assert violation.field == "k" and "between 1 and 100" in violation.description
    assert "RetryInfo" not in details  # the same request fails the same way

    bad = pb.Document(id="bad\x01id", text="x")
    request = pb.UpsertDocumentsRequest(collection=collection, documents=[pb.Document(id="fine", text="y"), bad])
    error = failure(lambda: pb_grpc.CollectionsStub(channel).UpsertDocuments(iter([request])))
    [violation] = details_of(error)["BadRequest"].field_violations
    assert violation.field == "documents[1].id" and "control character" in violation.description

    inputs = [pb.EmbedInput(text="fine"), pb.EmbedInput(text=" ")]
    error = failure(lambda: pb_grpc.EmbedStub(channel).Embed(pb.EmbedRequest(inputs=inputs)))
    [violation] = details_of(error)["BadRequest"].field_violations
    assert violation.field == "inputs[1].text"


def test_the_sdk_exposes_the_reason_and_field_violations(server: LocalServer, client: Client, collection: str) -> None:
    with pytest.raises(IrgateError) as raised:
        client.search(collection, "rain", k=500)
    error = raised.value
    assert (error.code, error.reason, error.retry_after) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", None)
    assert error.field_violations == (FieldViolation("k", error.message),)

    with pytest.raises(IrgateError) as raised:
        client.describe_collection(f"missing-{uuid.uuid4().hex[:8]}")
    assert (raised.value.code, raised.value.reason, raised.value.field_violations) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND", ())

    async def search_async() -> IrgateError:
        async with AsyncClient(server.address, timeout=30) as connected:
            with pytest.raises(IrgateError) as raised:
                await connected.search(collection, "rain", k=500)
            return raised.value

    error = asyncio.run(search_async())
    assert (error.reason, [violation.field for violation in error.field_violations]) == ("INVALID_ARGUMENT", ["k"])


def test_missing_and_existing_collections_name_the_resource(channel: grpc.Channel, collection: str) -> None:
    stub = pb_grpc.CollectionsStub(channel)
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    error = failure(lambda: stub.DescribeCollection(pb.DescribeCollectionRequest(name=missing)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    details = details_of(error)
    assert details["ErrorInfo"].reason == "NOT_FOUND"
    resource = details["ResourceInfo"]
    assert (resource.resource_type, resource.resource_name) == ("collection", missing)

    error = failure(lambda: stub.CreateCollection(pb.CreateCollectionRequest(name=collection)))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    resource = details_of(error)["ResourceInfo"]
    assert (resource.resource_type, resource.resource_name) == ("collection", collection)


def test_every_error_carries_error_info_with_its_request_id(channel: grpc.Channel) -> None:
    judge = pb.JudgeRequest(query="rain", documents=[pb.JudgeDocument(inline=pb.InlineDocument(text="Rain falls."))])
    future = pb_grpc.JudgeStub(channel).Judge.future(judge, metadata=(("x-request-id", "judge-without-judge"),))
    error = failure(future.result)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = details_of(error)["ErrorInfo"]
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "FAILED_PRECONDITION", DOMAIN, {"request_id": "judge-without-judge"}
    )
    assert ("x-request-id", "judge-without-judge") in error.trailing_metadata()

    # Bytes that are no valid message (invalid UTF-8 in a string field) never reach a handler.
    garbled = channel.unary_unary("/irgate.v1.Search/Search", request_serializer=None, response_deserializer=None)
    error = failure(lambda: garbled(b"\x12\x02\xff\xfe"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details_of(error)["ErrorInfo"].reason == "MALFORMED_REQUEST"


def test_the_sdk_retries_unavailable_on_reads_and_not_on_writes() -> None:
    """A gRPC server that answers UNAVAILABLE twice, as a gateway whose backend restarts would:
    the SDK's service config tries reads again, and leaves writes to the caller."""
    attempts: collections.Counter[str] = collections.Counter()

    def get_info(request: pb.GetInfoRequest, context: grpc.ServicerContext) -> pb.GetInfoResponse:
        attempts["GetInfo"] += 1
        if attempts["GetInfo"] <= 2:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the embedder is restarting")
        return pb.GetInfoResponse(version="restarted", embedder=pb.EmbedderInfo(model="m", dimension=3))

    def create(request: pb.CreateCollectionRequest, context: grpc.ServicerContext) -> pb.CollectionInfo:
        attempts["CreateCollection"] += 1
        context.abort(grpc.StatusCode.UNAVAILABLE, "the index is restarting")

    handlers = [
        grpc.method_handlers_generic_handler("irgate.v1.Info", {"GetInfo": grpc.unary_unary_rpc_method_handler(
            get_info, pb.GetInfoRequest.FromString, pb.GetInfoResponse.SerializeToString)}),
        grpc.method_handlers_generic_handler("irgate.v1.Collections", {"CreateCollection": grpc.unary_unary_rpc_method_handler(
            create, pb.CreateCollectionRequest.FromString, pb.CollectionInfo.SerializeToString)}),
    ]
    flaky = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=handlers)
    port = flaky.add_insecure_port("127.0.0.1:0")
    flaky.start()
    try:
        with Client(f"127.0.0.1:{port}", timeout=30) as client:
            assert client.info().version == "restarted" and attempts["GetInfo"] == 3
            with pytest.raises(IrgateError) as raised:
                client.create_collection("papers")
            assert raised.value.code == grpc.StatusCode.UNAVAILABLE and attempts["CreateCollection"] == 1
    finally:
        flaky.stop(None)
