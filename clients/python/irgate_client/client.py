"""Sync and asyncio clients for irgate. Both take the same arguments and return the same types.

    with Client("127.0.0.1:50051") as client:
        client.create_collection("papers", exist_ok=True)
        client.upsert("papers", [Document(id="1", text="Rain forms when vapour condenses.")])
        hits = client.search("papers", "what causes rain", instruction="prefer physics papers")

Deadlines: every call takes `timeout` (seconds; None for no deadline). Left out, a call uses the
client's `timeout` (60 s unless given), except `upsert`, which has no deadline unless given one:
a bulk ingest takes as long as the corpus needs.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from irgate_client import _messages as messages
from irgate_client.types import (
    CollectionInfo,
    Document,
    DocumentPage,
    Embedding,
    FieldViolation,
    Hit,
    IrgateError,
    Query,
    ReasoningDelta,
    SearchQuery,
    ServerInfo,
    UpsertResult,
    Verdict,
)
from irgate_client.v1 import irgate_pb2 as pb
from irgate_client.v1 import irgate_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
# The target when none is given, as for the `irgate` command's --server.
TARGET_VARIABLE = "IRGATE_SERVER"
DEFAULT_TIMEOUT = 60.0
UPSERT_BATCH = 128
HEALTH_SERVICES = ("", "irgate.v1.Info", "irgate.v1.Embed", "irgate.v1.Collections", "irgate.v1.Search", "irgate.v1.Judge")
DEADLINE_HINT = (
    " (the call ran past its deadline; give it more time with timeout=SECONDS, or timeout=None for no deadline, "
    "on the call or on the client)"
)


RETRY_UNAVAILABLE = {
    "maxAttempts": 4,
    "initialBackoff": "0.05s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
# Several gateways: gRPC's own round_robin spreads calls over every address that is up, and a call
# that finds its gateway gone (UNAVAILABLE: refused, or reset before any answer) is tried again on
# another, so losing one gateway fails no call. Retried calls are safe: an upsert of the same ids
# writes the same documents, and the others only read or answer ALREADY_EXISTS/NOT_FOUND the second time.
BALANCED_SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{"name": [{}], "retryPolicy": RETRY_UNAVAILABLE}],
})
# One gateway: the calls that only read (or, like Embed, only compute) are tried again when it
# answers UNAVAILABLE (a backend restarting, the server not up yet); writes are left to the caller.
IDEMPOTENT_METHODS = [
    {"service": "irgate.v1.Info"},
    {"service": "irgate.v1.Embed"},
    {"service": "irgate.v1.Search"},
    {"service": "irgate.v1.Collections", "method": "GetDocuments"},
    {"service": "irgate.v1.Collections", "method": "ListDocuments"},
]
SERVICE_CONFIG = json.dumps({"methodConfig": [{"name": IDEMPOTENT_METHODS, "retryPolicy": RETRY_UNAVAILABLE}]})


def channel_target(target: str | Sequence[str]) -> tuple[str, list[tuple[str, Any]]]:
    """The gRPC target and channel options for one address, or for several gateways to balance over.

    Several addresses must be IP literals (`127.0.0.1:50051`, `[::1]:50051`), all of one family:
    they become one `ipv4:` or `ipv6:` target. For host names, give one `dns:///NAME:PORT` target
    whose name resolves to every gateway, with options=[("grpc.lb_policy_name", "round_robin")]."""
    if isinstance(target, str):
        return target, [("grpc.service_config", SERVICE_CONFIG)]
    if not isinstance(target, Sequence) or not target:
        raise messages.invalid(f"target is {target!r}; give 'HOST:PORT' or a list of gateway addresses")
    addresses = messages.texts("target", target)
    families = set()
    for address in addresses:
        host, _, port = address.rpartition(":")
        try:
            ip = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
        except ValueError:
            ip = None
        if ip is None or not port.isdigit() or (ip.version == 6) != host.startswith("["):
            raise messages.invalid(
                f"target {address!r} is not IP:PORT; several gateways are given by IP address "
                "('127.0.0.1:50051' or '[::1]:50051'), or as one 'dns:///NAME:PORT' target"
            )
        families.add(ip.version)
    if len(families) > 1:
        raise messages.invalid("target mixes IPv4 and IPv6 addresses; give gateways of one family")
    return f"ipv{families.pop()}:{','.join(addresses)}", [
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.service_config", BALANCED_SERVICE_CONFIG),
    ]


class _ClientTimeout:
    """The default of every call's `timeout`: use the client's."""

    def __repr__(self) -> str:
        return "CLIENT_TIMEOUT"


CLIENT_TIMEOUT: Any = _ClientTimeout()

P = ParamSpec("P")
R = TypeVar("R")


def _check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise messages.invalid(f"timeout is {timeout!r}; give seconds greater than 0, or None for no deadline")
    return float(timeout)


class _Connection:
    """Channel settings shared by both clients: TLS, API key, default deadline."""

    def __init__(
        self,
        target: str | Sequence[str],
        api_key: str | None,
        tls: bool,
        root_certificates: bytes | None,
        timeout: float | None,
        options: Sequence[tuple[str, Any]],
    ):
        if target is None:
            target = os.environ.get(TARGET_VARIABLE) or DEFAULT_TARGET
        self.target, balancing = channel_target(target)
        self.credentials = grpc.ssl_channel_credentials(root_certificates) if tls or root_certificates else None
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.timeout = _check_timeout(timeout)
        self.options = [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            *balancing,
            *options,
        ]

    def call_options(self, timeout: float | None) -> dict[str, Any]:
        return {"metadata": self.metadata, "timeout": self.timeout if timeout is CLIENT_TIMEOUT else _check_timeout(timeout)}


def _error(error: grpc.RpcError) -> IrgateError:
    """The IrgateError of a failed call, with the google.rpc error details the server sent."""
    code, details = error.code(), error.details()  # type: ignore[attr-defined]
    message = details or code.name.replace("_", " ").lower()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message += DEADLINE_HINT
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:  # details that disagree with the status are not the server's
        status = None
    return _detailed(code, message, status.details if status is not None else ())


def _status_error(status: status_pb2.Status) -> IrgateError:
    """The IrgateError of a google.rpc.Status the server sent inside an answer (a SearchBatch query's)."""
    code = next((item for item in grpc.StatusCode if item.value[0] == status.code), grpc.StatusCode.UNKNOWN)
    return _detailed(code, status.message, status.details)


def _detailed(code: grpc.StatusCode, message: str, details: Iterable[any_pb2.Any]) -> IrgateError:
    reason, violations, retry_after = "", [], None
    for packed in details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            reason = info.reason
        elif packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            packed.Unpack(bad)
            violations += [FieldViolation(item.field, item.description) for item in bad.field_violations]
        elif packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            packed.Unpack(retry)
            retry_after = retry.retry_delay.ToTimedelta().total_seconds()
    return IrgateError(code, message, reason=reason, field_violations=violations, retry_after=retry_after)


def _batch_result(result: pb.SearchResult) -> list[Hit] | IrgateError:
    if result.HasField("error"):
        return _status_error(result.error)
    return messages.hits(result.response)


def _health_error(error: IrgateError, service: str) -> IrgateError:
    if error.code != grpc.StatusCode.NOT_FOUND:
        return error
    known = ", ".join(repr(name) for name in HEALTH_SERVICES)
    return error.reworded(f"the server reports no health for service {service!r}; known services: {known}")


def _raising(method: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except grpc.RpcError as error:
            raise _error(error) from None

    return wrapper


def _raising_async(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except grpc.aio.AioRpcError as error:
            raise _error(error) from None

    return wrapper


class Client:
    """Blocking client. Every method takes `timeout` (seconds; None: no deadline) to override the client's.

    target: "HOST:PORT" (or any gRPC target), or a list of gateway addresses sharing one index
    (["127.0.0.1:50051", "127.0.0.1:50052"]): calls are spread over them by gRPC's round_robin policy,
    and a call that finds its gateway gone is retried on another. Left out: the IRGATE_SERVER variable,
    else 127.0.0.1:50051.
    """

    def __init__(
        self,
        target: str | Sequence[str] | None = None,
        *,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        options: Sequence[tuple[str, Any]] = (),
    ):
        self._connection = _Connection(target, api_key, tls, root_certificates, timeout, options)
        if self._connection.credentials:
            self._channel = grpc.secure_channel(
                self._connection.target, self._connection.credentials, self._connection.options
            )
        else:
            self._channel = grpc.insecure_channel(self._connection.target, self._connection.options)
        self._info = pb_grpc.InfoStub(self._channel)
        self._embed = pb_grpc.EmbedStub(self._channel)
        self._collections = pb_grpc.CollectionsStub(self._channel)
        self._search = pb_grpc.SearchStub(self._channel)
        self._judge = pb_grpc.JudgeStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    @_raising
    def health(self, service: str = "", *, timeout: float | None = CLIENT_TIMEOUT) -> str:
        """The grpc.health.v1 status of the server ("") or one service ("irgate.v1.Search"): "SERVING" or "NOT_SERVING"."""
        request = health_pb2.HealthCheckRequest(service=messages.text("service", service))
        try:
            response = self._health.Check(request, **self._connection.call_options(timeout))
        except grpc.RpcError as error:
            raise _health_error(_error(error), service) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    @_raising
    def info(self, *, timeout: float | None = CLIENT_TIMEOUT) -> ServerInfo:
        return messages.server_info(self._info.GetInfo(pb.GetInfoRequest(), **self._connection.call_options(timeout)))

    @_raising
    def embed(
        self, texts: Sequence[str | Query | Document], *, truncate: bool = True, raw: bool = False,
        timeout: float | None = CLIENT_TIMEOUT,
    ) -> list[Embedding]:
        """Embeds documents (plain strings, or `Document` with a title) and queries (`Query`, with an instruction)."""
        request = messages.embed_request(texts, truncate, raw)
        return messages.embeddings(self._embed.Embed(request, **self._connection.call_options(timeout)))

    @_raising
    def create_collection(
        self, name: str, *, precision: str = "f16", exist_ok: bool = False, timeout: float | None = CLIENT_TIMEOUT
    ) -> CollectionInfo:
        """Creates an empty collection; with exist_ok=True an existing one is returned as it is."""
        request = pb.CreateCollectionRequest(name=messages.text("name", name), precision=messages.precision(precision))
        try:
            return messages.collection_info(self._collections.CreateCollection(request, **self._connection.call_options(timeout)))
        except grpc.RpcError as error:
            if exist_ok and error.code() == grpc.StatusCode.ALREADY_EXISTS:  # type: ignore[attr-defined]
                return self.describe_collection(name, timeout=timeout)
            raise

    @_raising
    def list_collections(self, *, page_size: int | None = None, timeout: float | None = CLIENT_TIMEOUT) -> list[CollectionInfo]:
        """Every collection, sorted by name; with `page_size` (1 to 1000) fetched that many per call
        (`timeout` applies to each call)."""
        size = 0 if page_size is None else messages.page_size(page_size, "1 to 1000 collections per call, or None for one call")
        listed: list[CollectionInfo] = []
        token = ""
        while True:
            response = self._collections.ListCollections(
                pb.ListCollectionsRequest(page_size=size, page_token=token), **self._connection.call_options(timeout)
            )
            listed += [messages.collection_info(item) for item in response.collections]
            token = response.next_page_token
            if not token:
                return listed

    @_raising
    def describe_collection(self, name: str, *, timeout: float | None = CLIENT_TIMEOUT) -> CollectionInfo:
        request = pb.DescribeCollectionRequest(name=messages.text("name", name))
        return messages.collection_info(self._collections.DescribeCollection(request, **self._connection.call_options(timeout)))

    @_raising
    def delete_collection(self, name: str, *, timeout: float | None = CLIENT_TIMEOUT) -> None:
        request = pb.DeleteCollectionRequest(name=messages.text("name", name))
        self._collections.DeleteCollection(request, **self._connection.call_options(timeout))

    @_raising
    def upsert(
        self,
        collection: str,
        documents: Iterable[Document],
        *,
        batch_size: int = UPSERT_BATCH,
        truncate: bool = True,
        timeout: float | None = None,
    ) -> UpsertResult:
        """Streams the documents in batches; an existing id is replaced, an unchanged document skipped.

        No deadline unless `timeout` is given. If the call fails, the batches the server committed
        stay committed and the error says how many documents were sent: rerun the same upsert to
        resume (stored documents with the same title, text and metadata are not embedded again).
        """
        stream = messages.UpsertStream(collection, documents, batch_size, truncate)
        try:
            response = self._collections.UpsertDocuments(iter(stream), **self._connection.call_options(timeout))
        except grpc.RpcError as error:
            stream.check()  # a document that could not be encoded explains the call's outcome best
            raise stream.failed(_error(error)) from None
        stream.check()
        return messages.upsert_result(response)

    @_raising
    def get(
        self, collection: str, ids: Sequence[str], *, include_vectors: bool = False, timeout: float | None = CLIENT_TIMEOUT
    ) -> tuple[list[Document], list[str]]:
        """Returns (the documents found, in request order; the ids that do not exist)."""
        request = messages.get_request(collection, ids, include_vectors)
        return messages.get_result(self._collections.GetDocuments(request, **self._connection.call_options(timeout)))

    def list_documents(
        self,
        collection: str,
        *,
        filter: Mapping[str, Any] | None = None,
        include_vectors: bool = False,
        page_size: int = 100,
        page_token: str = "",
        timeout: float | None = CLIENT_TIMEOUT,
    ) -> Iterator[DocumentPage]:
        """The collection's documents (those matching `filter`), a page per call in id order, from
        `page_token` on (a page's next_page_token resumes after it; "" starts at the first).
        `timeout` applies to each call."""
        token = page_token
        while True:
            request = messages.list_documents_request(collection, filter, include_vectors, page_size, token)
            try:
                response = self._collections.ListDocuments(request, **self._connection.call_options(timeout))
            except grpc.RpcError as error:
                raise _error(error) from None
            page = messages.document_page(response)
            yield page
            token = page.next_page_token
            if not token:
                return

    @_raising
    def delete(self, collection: str, ids: Sequence[str], *, timeout: float | None = CLIENT_TIMEOUT) -> tuple[int, int]:
        """Returns (deleted, not_found)."""
        request = messages.delete_request(collection, ids)
        response = self._collections.DeleteDocuments(request, **self._connection.call_options(timeout))
        return response.deleted, response.not_found

    @_raising
    def search(
        self,
        collection: str,
        query: str,
        *,
        instruction: str = "",
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        include_documents: bool = False,
        truncate: bool = True,
        rerank: int = 0,
        max_reasoning_tokens: int | None = None,
        return_reasoning: bool = False,
        max_passage_tokens: int | None = None,
        mode: str = "dense",
        dense_depth: int | None = None,
        lexical_depth: int | None = None,
        timeout: float | None = CLIENT_TIMEOUT,
    ) -> list[Hit]:
        """`mode`: "dense" (by embedding), "lexical" (BM25 over title and text) or "hybrid" (both, by reciprocal
        rank fusion); in hybrid mode `dense_depth` and `lexical_depth` say how many of each ranking's best hits
        are fused (None: 100, or k or rerank when larger)."""
        request = messages.search_request(
            collection, query, instruction, k, filter, include_documents, truncate, rerank, max_reasoning_tokens, return_reasoning,
            max_passage_tokens=max_passage_tokens, mode=mode, dense_depth=dense_depth, lexical_depth=lexical_depth,
        )
        return messages.hits(self._search.Search(request, **self._connection.call_options(timeout)))

    @_raising
    def search_batch(
        self, queries: Sequence[SearchQuery], *, timeout: float | None = CLIENT_TIMEOUT
    ) -> list[list[Hit] | IrgateError]:
        """Many queries in one call, embedded together: per query, in order, its hits (as `search`
        returns them) or the IrgateError that failed it alone."""
        response = self._search.SearchBatch(messages.search_batch_request(queries), **self._connection.call_options(timeout))
        return [_batch_result(result) for result in response.results]

    @_raising
    def judge(
        self,
        query: str,
        documents: Sequence[str | Document],
        *,
        instruction: str = "",
        collection: str = "",
        max_reasoning_tokens: int | None = None,
        return_reasoning: bool = False,
        max_passage_tokens: int | None = None,
        timeout: float | None = CLIENT_TIMEOUT,
    ) -> list[Verdict]:
        """Judges each document (a passage, or a `Document` id in `collection`); verdicts in request order.

        `max_reasoning_tokens` None (the default) reasons up to the server's cap, info().max_reasoning_tokens;
        `max_passage_tokens` None reads each passage up to the server's cap, info().max_passage_tokens
        (a request may lower it; longer passages are cut at their end: verdict.truncated)."""
        request = messages.judge_request(
            query, documents, instruction, collection, max_reasoning_tokens, return_reasoning,
            max_passage_tokens=max_passage_tokens,
        )
        response = self._judge.Judge(request, **self._connection.call_options(timeout))
        return [messages.verdict(item) for item in response.verdicts]

    def judge_stream(
        self,
        query: str,
        documents: Sequence[str | Document],
        *,
        instruction: str = "",
        collection: str = "",
        max_reasoning_tokens: int | None = None,
        return_reasoning: bool = False,
        max_passage_tokens: int | None = None,
        timeout: float | None = CLIENT_TIMEOUT,
    ) -> Iterator[Verdict | ReasoningDelta]:
        """Verdicts as each is ready (with reasoning deltas when asked); closing the iterator cancels the work."""
        request = messages.judge_request(
            query, documents, instruction, collection, max_reasoning_tokens, return_reasoning,
            max_passage_tokens=max_passage_tokens,
        )
        call = self._judge.JudgeStream(request, **self._connection.call_options(timeout))
        try:
            for message in call:
                yield messages.judge_event(message)
        except grpc.RpcError as error:
            raise _error(error) from None
        finally:
            call.cancel()


class AsyncClient:
    """asyncio client; the same methods as `Client`, as coroutines. Use inside a running event loop."""

    def __init__(
        self,
        target: str | Sequence[str] | None = None,
        *,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        options: Sequence[tuple[str, Any]] = (),
    ):
        self._connection = _Connection(target, api_key, tls, root_certificates, timeout, options)
        if self._connection.credentials:
            self._channel = grpc.aio.secure_channel(
                self._connection.target, self._connection.credentials, self._connection.options
            )
        else:
            self._channel = grpc.aio.insecure_channel(self._connection.target, self._connection.options)
        self._info = pb_grpc.InfoStub(self._channel)
        self._embed = pb_grpc.EmbedStub(self._channel)
        self._collections = pb_grpc.CollectionsStub(self._channel)
        self._search = pb_grpc.SearchStub(self._channel)
        self._judge = pb_grpc.JudgeStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    @_raising_async
    async def health(self, service: str = "", *, timeout: float | None = CLIENT_TIMEOUT) -> str:
        request = health_pb2.HealthCheckRequest(service=messages.text("service", service))
        try:
            response = await self._health.Check(request, **self._connection.call_options(timeout))
        except grpc.aio.AioRpcError as error:
            raise _health_error(_error(error), service) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    @_raising_async
    async def info(self, *, timeout: float | None = CLIENT_TIMEOUT) -> ServerInfo:
        return messages.server_info(await self._info.GetInfo(pb.GetInfoRequest(), **self._connection.call_options(timeout)))

    @_raising_async
    async def embed(
        self, texts: Sequence[str | Query | Document], *, truncate: bool = True, raw: bool = False,
        timeout: float | None = CLIENT_TIMEOUT,
    ) -> list[Embedding]:
        request = messages.embed_request(texts, truncate, raw)
        return messages.embeddings(await self._embed.Embed(request, **self._connection.call_options(timeout)))

    @_raising_async
    async def create_collection(
        self, name: str, *, precision: str = "f16", exist_ok: bool = False, timeout: float | None = CLIENT_TIMEOUT
    ) -> CollectionInfo:
        request = pb.CreateCollectionRequest(name=messages.text("name", name), precision=messages.precision(precision))
        try:
            return messages.collection_info(
                await self._collections.CreateCollection(request, **self._connection.call_options(timeout))
            )
        except grpc.aio.AioRpcError as error:
            if exist_ok and error.code() == grpc.StatusCode.ALREADY_EXISTS:
                return await self.describe_collection(name, timeout=timeout)
            raise

    @_raising_async
    async def list_collections(
        self, *, page_size: int | None = None, timeout: float | None = CLIENT_TIMEOUT
    ) -> list[CollectionInfo]:
        size = 0 if page_size is None else messages.page_size(page_size, "1 to 1000 collections per call, or None for one call")
        listed: list[CollectionInfo] = []
        token = ""
        while True:
            response = await self._collections.ListCollections(
                pb.ListCollectionsRequest(page_size=size, page_token=token), **self._connection.call_options(timeout)
            )
            listed += [messages.collection_info(item) for item in response.collections]
            token = response.next_page_token
            if not token:
                return listed

    @_raising_async
    async def describe_collection(self, name: str, *, timeout: float | None = CLIENT_TIMEOUT) -> CollectionInfo:
        request = pb.DescribeCollectionRequest(name=messages.text("name", name))
        return messages.collection_info(await self._collections.DescribeCollection(request, **self._connection.call_options(timeout)))

    @_raising_async
    async def delete_collection(self, name: str, *, timeout: float | None = CLIENT_TIMEOUT) -> None:
        request = pb.DeleteCollectionRequest(name=messages.text("name", name))
        await self._collections.DeleteCollection(request, **self._connection.call_options(timeout))

    @_raising_async
    async def upsert(
        self,
        collection: str,
        documents: Iterable[Document],
        *,
        batch_size: int = UPSERT_BATCH,
        truncate: bool = True,
        timeout: float | None = None,
    ) -> UpsertResult:
        stream = messages.UpsertStream(collection, documents, batch_size, truncate)
        try:
            response = await self._collections.UpsertDocuments(iter(stream), **self._connection.call_options(timeout))
        except grpc.aio.AioRpcError as error:
            stream.check()
            raise stream.failed(_error(error)) from None
        stream.check()
        return messages.upsert_result(response)

    @_raising_async
    async def get(
        self, collection: str, ids: Sequence[str], *, include_vectors: bool = False, timeout: float | None = CLIENT_TIMEOUT
    ) -> tuple[list[Document], list[str]]:
        request = messages.get_request(collection, ids, include_vectors)
        return messages.get_result(await self._collections.GetDocuments(request, **self._connection.call_options(timeout)))

    async def list_documents(
        self,
        collection: str,
        *,
        filter: Mapping[str, Any] | None = None,
        include_vectors: bool = False,
        page_size: int = 100,
        page_token: str = "",
        timeout: float | None = CLIENT_TIMEOUT,
    ) -> AsyncIterator[DocumentPage]:
        token = page_token
        while True:
            request = messages.list_documents_request(collection, filter, include_vectors, page_size, token)
            try:
                response = await self._collections.ListDocuments(request, **self._connection.call_options(timeout))
            except grpc.aio.AioRpcError as error:
                raise _error(error) from None
            page = messages.document_page(response)
            yield page
            token = page.next_page_token
            if not token:
                return

    @_raising_async
    async def delete(self, collection: str, ids: Sequence[str], *, timeout: float | None = CLIENT_TIMEOUT) -> tuple[int, int]:
        request = messages.delete_request(collection, ids)
        response = await self._collections.DeleteDocuments(request, **self._connection.call_options(timeout))
        return response.deleted, response.not_found

    @_raising_async
    async def search(
        self,
        collection: str,
        query: str,
        *,
        instruction: str = "",
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        include_documents: bool = False,
        truncate: bool = True,
        rerank: int = 0,
        max_reasoning_tokens: int | None = None,
        return_reasoning: bool = False,
        max_passage_tokens: int | None = None,
        mode: str = "dense",
        dense_depth: int | None = None,
        lexical_depth: int | None = None,
        timeout: float | None = CLIENT_TIMEOUT,
    ) -> list[Hit]:
        """`mode`: "dense" (by embedding), "lexical" (BM25 over title and text) or "hybrid" (both, by reciprocal
        rank fusion); in hybrid mode `dense_depth` and `lexical_depth` say how many of each ranking's best hits
        are fused (None: 100, or k or rerank when larger)."""
        request = messages.search_request(
            collection, query, instruction, k, filter, include_documents, truncate, rerank, max_reasoning_tokens, return_reasoning,
            max_passage_tokens=max_passage_tokens, mode=mode, dense_depth=dense_depth, lexical_depth=lexical_depth,
        )
        return messages.hits(await self._search.Search(request, **self._connection.call_options(timeout)))

    @_raising_async
    async def search_batch(
        self, queries: Sequence[SearchQuery], *, timeout: float | None = CLIENT_TIMEOUT
    ) -> list[list[Hit] | IrgateError]:
        response = await self._search.SearchBatch(messages.search_batch_request(queries), **self._connection.call_options(timeout))
        return [_batch_result(result) for result in response.results]

    @_raising_async
    async def judge(
        self,
        query: str,
        documents: Sequence[str | Document],
        *,
        instruction: str = "",
        collection: str = "",
        max_reasoning_tokens: int | None = None,
        return_reasoning: bool = False,
        max_passage_tokens: int | None = None,
        timeout: float | None = CLIENT_TIMEOUT,
    ) -> list[Verdict]:
        request = messages.judge_request(
            query, documents, instruction, collection, max_reasoning_tokens, return_reasoning,
            max_passage_tokens=max_passage_tokens,
        )
        response = await self._judge.Judge(request, **self._connection.call_options(timeout))
        return [messages.verdict(item) for item in response.verdicts]

    async def judge_stream(
        self,
        query: str,
        documents: Sequence[str | Document],
        *,
        instruction: str = "",
        collection: str = "",
        max_reasoning_tokens: int | None = None,
        return_reasoning: bool = False,
        max_passage_tokens: int | None = None,
        timeout: float | None = CLIENT_TIMEOUT,
    ) -> AsyncIterator[Verdict | ReasoningDelta]:
        request = messages.judge_request(
            query, documents, instruction, collection, max_reasoning_tokens, return_reasoning,
            max_passage_tokens=max_passage_tokens,
        )
        call = self._judge.JudgeStream(request, **self._connection.call_options(timeout))
        try:
            async for message in call:
                yield messages.judge_event(message)
        except grpc.aio.AioRpcError as error:
            raise _error(error) from None
        finally:
            call.cancel()
