"""Sync and asyncio clients for irgate. Both take the same arguments and return the same types.

    with Client("127.0.0.1:50051") as client:
        client.create_collection("papers")
        client.upsert("papers", [Document(id="1", text="Rain forms when vapour condenses.")])
        hits = client.search("papers", "what causes rain", instruction="prefer physics papers")
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

import grpc

from irgate_client import _messages as messages
from irgate_client.types import (
    CollectionInfo,
    Document,
    Embedding,
    Hit,
    IrgateError,
    Query,
    ReasoningDelta,
    ServerInfo,
    UpsertResult,
    Verdict,
)
from irgate_client.v1 import irgate_pb2 as pb
from irgate_client.v1 import irgate_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 60.0
UPSERT_BATCH = 128

P = ParamSpec("P")
R = TypeVar("R")


class _Connection:
    """Channel settings shared by both clients: TLS, API key, default deadline."""

    def __init__(
        self,
        target: str,
        api_key: str | None,
        tls: bool,
        root_certificates: bytes | None,
        timeout: float | None,
        options: Sequence[tuple[str, Any]],
    ):
        self.target = target
        self.credentials = grpc.ssl_channel_credentials(root_certificates) if tls or root_certificates else None
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.timeout = timeout
        self.options = [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            *options,
        ]

    def call_options(self, timeout: float | None) -> dict[str, Any]:
        return {"metadata": self.metadata, "timeout": self.timeout if timeout is None else timeout}


def _raising(method: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except grpc.RpcError as error:
            raise IrgateError(error.code(), error.details()) from None  # type: ignore[attr-defined]

    return wrapper


def _raising_async(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except grpc.aio.AioRpcError as error:
            raise IrgateError(error.code(), error.details() or "") from None

    return wrapper


class Client:
    """Blocking client. Every method takes `timeout` (seconds) to override the default deadline."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        options: Sequence[tuple[str, Any]] = (),
    ):
        self._connection = _Connection(target, api_key, tls, root_certificates, timeout, options)
        if self._connection.credentials:
            self._channel = grpc.secure_channel(target, self._connection.credentials, self._connection.options)
        else:
            self._channel = grpc.insecure_channel(target, self._connection.options)
        self._info = pb_grpc.InfoStub(self._channel)
        self._embed = pb_grpc.EmbedStub(self._channel)
        self._collections = pb_grpc.CollectionsStub(self._channel)
        self._search = pb_grpc.SearchStub(self._channel)
        self._judge = pb_grpc.JudgeStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    @_raising
    def info(self, *, timeout: float | None = None) -> ServerInfo:
        return messages.server_info(self._info.GetInfo(pb.GetInfoRequest(), **self._connection.call_options(timeout)))

    @_raising
    def embed(
        self, texts: Sequence[str | Query | Document], *, truncate: bool = True, raw: bool = False,
        timeout: float | None = None,
    ) -> list[Embedding]:
        """Embeds documents (plain strings, or `Document` with a title) and queries (`Query`, with an instruction)."""
        request = messages.embed_request(texts, truncate, raw)
        return messages.embeddings(self._embed.Embed(request, **self._connection.call_options(timeout)))

    @_raising
    def create_collection(self, name: str, *, precision: str = "f16", timeout: float | None = None) -> CollectionInfo:
        request = pb.CreateCollectionRequest(name=name, precision=messages.precision(precision))
        return messages.collection_info(self._collections.CreateCollection(request, **self._connection.call_options(timeout)))

    @_raising
    def list_collections(self, *, timeout: float | None = None) -> list[CollectionInfo]:
        response = self._collections.ListCollections(pb.ListCollectionsRequest(), **self._connection.call_options(timeout))
        return [messages.collection_info(item) for item in response.collections]

    @_raising
    def describe_collection(self, name: str, *, timeout: float | None = None) -> CollectionInfo:
        request = pb.DescribeCollectionRequest(name=name)
        return messages.collection_info(self._collections.DescribeCollection(request, **self._connection.call_options(timeout)))

    @_raising
    def delete_collection(self, name: str, *, timeout: float | None = None) -> None:
        self._collections.DeleteCollection(pb.DeleteCollectionRequest(name=name), **self._connection.call_options(timeout))

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
        """Streams the documents in batches; an existing id is replaced."""
        stream = messages.UpsertStream(collection, documents, batch_size, truncate)
        try:
            response = self._collections.UpsertDocuments(iter(stream), **self._connection.call_options(timeout))
        finally:
            stream.check()  # a document that could not be encoded explains the call's outcome best
        return messages.upsert_result(response)

    @_raising
    def get(
        self, collection: str, ids: Sequence[str], *, include_vectors: bool = False, timeout: float | None = None
    ) -> list[Document]:
        request = pb.GetDocumentsRequest(collection=collection, ids=ids, include_vectors=include_vectors)
        response = self._collections.GetDocuments(request, **self._connection.call_options(timeout))
        return [messages.document(item) for item in response.documents]

    @_raising
    def delete(self, collection: str, ids: Sequence[str], *, timeout: float | None = None) -> tuple[int, int]:
        """Returns (deleted, not_found)."""
        request = pb.DeleteDocumentsRequest(collection=collection, ids=ids)
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
        max_reasoning_tokens: int = 0,
        return_reasoning: bool = False,
        timeout: float | None = None,
    ) -> list[Hit]:
        request = messages.search_request(
            collection, query, instruction, k, filter, include_documents, truncate, rerank, max_reasoning_tokens, return_reasoning
        )
        return messages.hits(self._search.Search(request, **self._connection.call_options(timeout)))

    @_raising
    def judge(
        self,
        query: str,
        documents: Sequence[str | Document],
        *,
        instruction: str = "",
        collection: str = "",
        max_reasoning_tokens: int = 0,
        return_reasoning: bool = False,
        timeout: float | None = None,
    ) -> list[Verdict]:
        """Judges each document (a passage, or a `Document` id in `collection`); verdicts in request order."""
        request = messages.judge_request(query, documents, instruction, collection, max_reasoning_tokens, return_reasoning)
        response = self._judge.Judge(request, **self._connection.call_options(timeout))
        return [messages.verdict(item) for item in response.verdicts]

    def judge_stream(
        self,
        query: str,
        documents: Sequence[str | Document],
        *,
        instruction: str = "",
        collection: str = "",
        max_reasoning_tokens: int = 0,
        return_reasoning: bool = False,
        timeout: float | None = None,
    ) -> Iterator[Verdict | ReasoningDelta]:
        """Verdicts as each is ready (with reasoning deltas when asked); closing the iterator cancels the work."""
        request = messages.judge_request(query, documents, instruction, collection, max_reasoning_tokens, return_reasoning)
        call = self._judge.JudgeStream(request, **self._connection.call_options(timeout))
        try:
            for message in call:
                yield messages.judge_event(message)
        except grpc.RpcError as error:
            raise IrgateError(error.code(), error.details()) from None  # type: ignore[attr-defined]
        finally:
            call.cancel()


class AsyncClient:
    """asyncio client; the same methods as `Client`, as coroutines. Use inside a running event loop."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        options: Sequence[tuple[str, Any]] = (),
    ):
        self._connection = _Connection(target, api_key, tls, root_certificates, timeout, options)
        if self._connection.credentials:
            self._channel = grpc.aio.secure_channel(target, self._connection.credentials, self._connection.options)
        else:
            self._channel = grpc.aio.insecure_channel(target, self._connection.options)
        self._info = pb_grpc.InfoStub(self._channel)
        self._embed = pb_grpc.EmbedStub(self._channel)
        self._collections = pb_grpc.CollectionsStub(self._channel)
        self._search = pb_grpc.SearchStub(self._channel)
        self._judge = pb_grpc.JudgeStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    @_raising_async
    async def info(self, *, timeout: float | None = None) -> ServerInfo:
        return messages.server_info(await self._info.GetInfo(pb.GetInfoRequest(), **self._connection.call_options(timeout)))

    @_raising_async
    async def embed(
        self, texts: Sequence[str | Query | Document], *, truncate: bool = True, raw: bool = False,
        timeout: float | None = None,
    ) -> list[Embedding]:
        request = messages.embed_request(texts, truncate, raw)
        return messages.embeddings(await self._embed.Embed(request, **self._connection.call_options(timeout)))

    @_raising_async
    async def create_collection(self, name: str, *, precision: str = "f16", timeout: float | None = None) -> CollectionInfo:
        request = pb.CreateCollectionRequest(name=name, precision=messages.precision(precision))
        return messages.collection_info(await self._collections.CreateCollection(request, **self._connection.call_options(timeout)))

    @_raising_async
    async def list_collections(self, *, timeout: float | None = None) -> list[CollectionInfo]:
        response = await self._collections.ListCollections(pb.ListCollectionsRequest(), **self._connection.call_options(timeout))
        return [messages.collection_info(item) for item in response.collections]

    @_raising_async
    async def describe_collection(self, name: str, *, timeout: float | None = None) -> CollectionInfo:
        request = pb.DescribeCollectionRequest(name=name)
        return messages.collection_info(await self._collections.DescribeCollection(request, **self._connection.call_options(timeout)))

    @_raising_async
    async def delete_collection(self, name: str, *, timeout: float | None = None) -> None:
        await self._collections.DeleteCollection(pb.DeleteCollectionRequest(name=name), **self._connection.call_options(timeout))

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
        finally:
            stream.check()
        return messages.upsert_result(response)

    @_raising_async
    async def get(
        self, collection: str, ids: Sequence[str], *, include_vectors: bool = False, timeout: float | None = None
    ) -> list[Document]:
        request = pb.GetDocumentsRequest(collection=collection, ids=ids, include_vectors=include_vectors)
        response = await self._collections.GetDocuments(request, **self._connection.call_options(timeout))
        return [messages.document(item) for item in response.documents]

    @_raising_async
    async def delete(self, collection: str, ids: Sequence[str], *, timeout: float | None = None) -> tuple[int, int]:
        request = pb.DeleteDocumentsRequest(collection=collection, ids=ids)
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
        max_reasoning_tokens: int = 0,
        return_reasoning: bool = False,
        timeout: float | None = None,
    ) -> list[Hit]:
        request = messages.search_request(
            collection, query, instruction, k, filter, include_documents, truncate, rerank, max_reasoning_tokens, return_reasoning
        )
        return messages.hits(await self._search.Search(request, **self._connection.call_options(timeout)))

    @_raising_async
    async def judge(
        self,
        query: str,
        documents: Sequence[str | Document],
        *,
        instruction: str = "",
        collection: str = "",
        max_reasoning_tokens: int = 0,
        return_reasoning: bool = False,
        timeout: float | None = None,
    ) -> list[Verdict]:
        request = messages.judge_request(query, documents, instruction, collection, max_reasoning_tokens, return_reasoning)
        response = await self._judge.Judge(request, **self._connection.call_options(timeout))
        return [messages.verdict(item) for item in response.verdicts]

    async def judge_stream(
        self,
        query: str,
        documents: Sequence[str | Document],
        *,
        instruction: str = "",
        collection: str = "",
        max_reasoning_tokens: int = 0,
        return_reasoning: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[Verdict | ReasoningDelta]:
        request = messages.judge_request(query, documents, instruction, collection, max_reasoning_tokens, return_reasoning)
        call = self._judge.JudgeStream(request, **self._connection.call_options(timeout))
        try:
            async for message in call:
                yield messages.judge_event(message)
        except grpc.aio.AioRpcError as error:
            raise IrgateError(error.code(), error.details() or "") from None
        finally:
            call.cancel()
