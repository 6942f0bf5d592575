"""Protobuf messages <-> SDK types, shared by the sync and the asyncio client."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from google.protobuf import json_format, struct_pb2

from irgate_client.types import (
    CollectionInfo,
    Document,
    Embedding,
    Hit,
    Query,
    ReasoningDelta,
    ServerInfo,
    UpsertResult,
    Verdict,
)
from irgate_client.v1 import irgate_pb2 as pb

PRECISIONS = {"f16": pb.VECTOR_PRECISION_F16, "f32": pb.VECTOR_PRECISION_F32, "i8": pb.VECTOR_PRECISION_I8}


def truncation(truncate: bool) -> int:
    return pb.TRUNCATION_END if truncate else pb.TRUNCATION_NONE


def embed_input(item: str | Query | Document) -> pb.EmbedInput:
    if isinstance(item, Query):
        return pb.EmbedInput(kind=pb.TEXT_KIND_QUERY, text=item.text, instruction=item.instruction)
    if isinstance(item, Document):
        return pb.EmbedInput(kind=pb.TEXT_KIND_DOCUMENT, text=item.text, title=item.title)
    return pb.EmbedInput(kind=pb.TEXT_KIND_DOCUMENT, text=item)


def embed_request(texts: Sequence[str | Query | Document], truncate: bool, raw: bool) -> pb.EmbedRequest:
    return pb.EmbedRequest(inputs=[embed_input(item) for item in texts], truncation=truncation(truncate), raw=raw)


def precision(name: str) -> int:
    if name not in PRECISIONS:
        raise ValueError(f"precision {name!r} is not one of {sorted(PRECISIONS)}")
    return PRECISIONS[name]


def embeddings(response: pb.EmbedResponse) -> list[Embedding]:
    return [Embedding(list(item.values), item.tokens, item.truncated) for item in response.embeddings]


def server_info(response: pb.GetInfoResponse) -> ServerInfo:
    return ServerInfo(
        version=response.version,
        model=response.embedder.model,
        backend=response.embedder.backend,
        dimension=response.embedder.dimension,
        max_tokens=response.embedder.max_tokens,
        pooling=response.embedder.pooling,
        supports_instructions=response.embedder.supports_instructions,
        judge_model=response.judge.model,
        judge_backend=response.judge.backend,
        max_reasoning_tokens=response.judge.max_reasoning_tokens,
        max_batch_size=response.limits.max_batch_size,
        max_concurrent_requests=response.limits.max_concurrent_requests,
        max_k=response.limits.max_k,
        max_judge_documents=response.limits.max_judge_documents,
    )


def collection_info(message: pb.CollectionInfo) -> CollectionInfo:
    precision = {value: name for name, value in PRECISIONS.items()}.get(message.precision, "f16")
    return CollectionInfo(
        message.name, message.documents, message.dimension, precision, message.model, message.created_at
    )


def document_message(document: Document) -> pb.Document:
    message = pb.Document(id=document.id, text=document.text, title=document.title)
    if document.metadata:
        message.metadata.update(dict(document.metadata))
    if document.vector is not None:
        message.vector.extend(document.vector)
    return message


def document(message: pb.Document) -> Document:
    return Document(
        id=message.id,
        text=message.text,
        title=message.title,
        metadata=json_format.MessageToDict(message.metadata),
        vector=list(message.vector) if len(message.vector) else None,
    )


class UpsertStream:
    """The request messages of one upsert, built as the stream is consumed.

    gRPC turns an exception raised while it iterates requests into a bare UNKNOWN, so a document
    that cannot be encoded ends the stream instead and is reported by `check` after the call.
    """

    def __init__(self, collection: str, documents: Iterable[Document], batch_size: int, truncate: bool):
        self._collection = collection
        self._documents = documents
        self._batch_size = batch_size
        self._truncation = truncation(truncate)
        self.sent = 0
        self.error: Exception | None = None

    def __iter__(self) -> Iterator[pb.UpsertDocumentsRequest]:
        batch: list[pb.Document] = []
        try:
            for item in self._documents:
                batch.append(document_message(item))
                if len(batch) == self._batch_size:
                    yield self._message(batch)
                    batch = []
        except Exception as error:  # reported by check(): never half a batch
            self.error = error
            return
        if batch:
            yield self._message(batch)

    def _message(self, batch: list[pb.Document]) -> pb.UpsertDocumentsRequest:
        self.sent += len(batch)
        return pb.UpsertDocumentsRequest(collection=self._collection, documents=batch, truncation=self._truncation)

    def check(self) -> None:
        if self.error is not None:
            raise ValueError(
                f"document {self.sent + 1} could not be encoded ({type(self.error).__name__}: {self.error}); "
                f"the {self.sent} documents sent before it were committed"
            ) from self.error


def upsert_result(response: pb.UpsertDocumentsResponse) -> UpsertResult:
    return UpsertResult(response.upserted, response.replaced, response.total_tokens, response.documents)


def search_request(
    collection: str,
    query: str,
    instruction: str,
    k: int,
    filter: Mapping[str, Any] | None,
    include_documents: bool,
    truncate: bool,
    rerank: int,
    max_reasoning_tokens: int,
    return_reasoning: bool,
) -> pb.SearchRequest:
    request = pb.SearchRequest(
        collection=collection,
        query=query,
        instruction=instruction,
        k=k,
        include_documents=include_documents,
        truncation=truncation(truncate),
        rerank=pb.RerankOptions(
            top_n=rerank, max_reasoning_tokens=max_reasoning_tokens, return_reasoning=return_reasoning
        ),
    )
    if filter:
        request.filter.CopyFrom(struct_pb2.Struct())
        request.filter.update(dict(filter))
    return request


def hits(response: pb.SearchResponse) -> list[Hit]:
    return [
        Hit(
            id=hit.id,
            score=hit.score,
            dense_score=hit.dense_score,
            document=document(hit.document) if hit.HasField("document") else None,
            verdict=verdict(hit.verdict) if hit.HasField("verdict") else None,
        )
        for hit in response.hits
    ]


ENDED = {pb.ENDED_ANSWERED: "answered", pb.ENDED_FORCED: "forced"}


def judge_request(
    query: str,
    documents: Sequence[str | Document],
    instruction: str,
    collection: str,
    max_reasoning_tokens: int,
    return_reasoning: bool,
) -> pb.JudgeRequest:
    """Strings and `Document`s with text are judged inline; a `Document` with only an id is looked up."""
    items = []
    for item in documents:
        if isinstance(item, str):
            items.append(pb.JudgeDocument(inline=pb.InlineDocument(text=item)))
        elif item.text:
            items.append(pb.JudgeDocument(inline=pb.InlineDocument(id=item.id, text=item.text, title=item.title)))
        else:
            items.append(pb.JudgeDocument(id=item.id))
    return pb.JudgeRequest(
        query=query,
        instruction=instruction,
        documents=items,
        collection=collection,
        max_reasoning_tokens=max_reasoning_tokens,
        return_reasoning=return_reasoning,
    )


def verdict(message: pb.Verdict) -> Verdict:
    return Verdict(
        index=message.index,
        id=message.id,
        relevant=message.relevant,
        score=message.score,
        reasoning=message.reasoning,
        reasoning_tokens=message.reasoning_tokens,
        ended=ENDED.get(message.ended, "unspecified"),
    )


def judge_event(message: pb.JudgeStreamResponse) -> Verdict | ReasoningDelta:
    if message.HasField("reasoning"):
        return ReasoningDelta(index=message.reasoning.index, text=message.reasoning.text)
    return verdict(message.verdict)
