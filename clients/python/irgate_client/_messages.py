"""Protobuf messages <-> SDK types, shared by the sync and the asyncio client.

Arguments are checked here, before anything is sent, so that a wrong one raises IrgateError
(INVALID_ARGUMENT) naming it, instead of a bare TypeError or ValueError from protobuf.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import fields
from datetime import timezone
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from irgate_client.types import (
    CollectionInfo,
    Document,
    DocumentPage,
    Embedding,
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

PRECISIONS = {"f16": pb.VECTOR_PRECISION_F16, "f32": pb.VECTOR_PRECISION_F32, "i8": pb.VECTOR_PRECISION_I8}
UINT32_MAX = 2**32 - 1
# Metadata and filters travel as protobuf Structs, whose numbers are doubles: exact for integers up to
# 2**53 - 1 only. Beyond it 9007199254740993 would arrive as 9007199254740992, so such numbers are refused.
MAX_EXACT_NUMBER = 2**53 - 1


def invalid(message: str) -> IrgateError:
    return IrgateError(grpc.StatusCode.INVALID_ARGUMENT, message)


PASSAGE_CAP_ALLOWED = "1 to the server's passage cap (info().max_passage_tokens), or None for the cap"


def whole_number(name: str, value: object, minimum: int, allowed: str) -> int:
    """`value` as a uint32 field of at least `minimum`; `allowed` tells the caller what to give."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"{name} is {value!r}; give a whole number: {allowed}")
    if not minimum <= value <= UINT32_MAX:
        raise invalid(f"{name} is {value}; {allowed}")
    return value


def text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise invalid(f"{name} is a {type(value).__name__}; give a str")
    return value


def texts(name: str, values: object) -> list[str]:
    """A list of strings; one bare string is refused (it would be sent as one id per character)."""
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise invalid(f"{name} is a {type(values).__name__}; give a list of str (e.g. [{values!r}])")
    items = list(values)
    for position, item in enumerate(items):
        text(f"{name}[{position}]", item)
    return items


def exact_numbers(name: str, value: object) -> None:
    """Refuses numbers a Struct would round (beyond +-MAX_EXACT_NUMBER), naming where they are, as the server does."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value) and abs(value) > MAX_EXACT_NUMBER:
            raise invalid(f"{name} is {value}; metadata numbers are doubles, exact within +-{MAX_EXACT_NUMBER} (2^53 - 1) "
                          "only: send a larger number as a string")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            exact_numbers(f"{name}.{key}", item)
    elif isinstance(value, (list, tuple)):
        for position, item in enumerate(value):
            exact_numbers(f"{name}[{position}]", item)


def json_value(value: Any) -> Any:
    """A value read from a Struct, whole numbers as int (2021, not 2021.0) as they were sent; -0.0 stays a float."""
    whole = isinstance(value, float) and value.is_integer() and abs(value) <= MAX_EXACT_NUMBER
    if whole and (value or math.copysign(1, value) > 0):
        return int(value)
    if isinstance(value, dict):
        return {key: json_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_value(item) for item in value]
    return value


def truncation(truncate: bool) -> int:
    return pb.TRUNCATION_END if truncate else pb.TRUNCATION_NONE


def embed_input(item: str | Query | Document) -> pb.EmbedInput:
    if isinstance(item, Query):
        return pb.EmbedInput(kind=pb.TEXT_KIND_QUERY, text=item.text, instruction=item.instruction)
    if isinstance(item, Document):
        return pb.EmbedInput(kind=pb.TEXT_KIND_DOCUMENT, text=item.text, title=item.title)
    return pb.EmbedInput(kind=pb.TEXT_KIND_DOCUMENT, text=item)


def embed_request(items: Sequence[str | Query | Document], truncate: bool, raw: bool) -> pb.EmbedRequest:
    if isinstance(items, str) or not isinstance(items, Sequence) or not items:
        raise invalid("texts must be a non-empty list of str, Query or Document")
    for position, item in enumerate(items):
        if not isinstance(item, (str, Query, Document)):
            raise invalid(f"texts[{position}] is a {type(item).__name__}; give a str, Query or Document")
    return pb.EmbedRequest(inputs=[embed_input(item) for item in items], truncation=truncation(truncate), raw=raw)


def precision(name: str) -> int:
    if name not in PRECISIONS:
        raise invalid(f"precision {name!r} is not one of {', '.join(PRECISIONS)}")
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
        max_passage_tokens=response.judge.max_passage_tokens,
        max_batch_size=response.limits.max_batch_size,
        max_concurrent_requests=response.limits.max_concurrent_requests,
        max_k=response.limits.max_k,
        max_judge_documents=response.limits.max_judge_documents,
        index_engine=response.index.engine,
        index_address=response.index.address,
        embedder_preset=response.embedder.preset,
        instruction_format=response.embedder.instruction_format,
        default_instruction=response.embedder.default_instruction,
        judge_family=response.judge.family,
        judge_scoring=response.judge.scoring,
        judge_score_formula=response.judge.score_formula,
        judge_supports_instructions=response.judge.supports_instructions,
        judge_default_instruction=response.judge.default_instruction,
    )


def collection_info(message: pb.CollectionInfo) -> CollectionInfo:
    state = "DAMAGED" if message.state == pb.COLLECTION_STATE_DAMAGED else "READY"
    # A damaged collection's precision cannot be read: "" rather than the f16 an unset field means.
    precision = "" if state == "DAMAGED" else {value: name for name, value in PRECISIONS.items()}.get(message.precision, "f16")
    create_time = message.create_time.ToDatetime(tzinfo=timezone.utc) if message.HasField("create_time") else None
    return CollectionInfo(
        message.name, message.documents, message.dimension, precision, message.model, message.created_at,
        state, message.damage, create_time,
    )


def page_size(value: object, allowed: str) -> int:
    return whole_number("page_size", value, 1, allowed)


def list_documents_request(
    collection: str, filter: Mapping[str, Any] | None, include_vectors: bool, size: int, token: str
) -> pb.ListDocumentsRequest:
    request = pb.ListDocumentsRequest(
        collection=text("collection", collection), include_vectors=include_vectors,
        page_size=page_size(size, "1 to 1000 documents per page"), page_token=text("page_token", token),
    )
    if filter is not None:
        request.filter.CopyFrom(filter_struct(filter))
    return request


def document_page(response: pb.ListDocumentsResponse) -> DocumentPage:
    return DocumentPage([document(item) for item in response.documents], response.next_page_token)


def document_message(document: Document) -> pb.Document:
    if not isinstance(document, Document):
        raise TypeError(f"got a {type(document).__name__}; upsert takes Document(id=..., text=...)")
    message = pb.Document(id=document.id, text=document.text, title=document.title)
    if document.metadata:
        exact_numbers(f"metadata of document {document.id!r}", dict(document.metadata))
        message.metadata.update(dict(document.metadata))
    if document.vector is not None:
        message.vector.extend(document.vector)
    return message


def document(message: pb.Document) -> Document:
    return Document(
        id=message.id,
        text=message.text,
        title=message.title,
        metadata=json_value(json_format.MessageToDict(message.metadata)),
        vector=list(message.vector) if len(message.vector) else None,
    )


class UpsertStream:
    """The request messages of one upsert, built as the stream is consumed.

    gRPC turns an exception raised while it iterates requests into a bare UNKNOWN, so a document
    that cannot be encoded ends the stream instead and is reported by `check` after the call.
    """

    def __init__(self, collection: str, documents: Iterable[Document], batch_size: int, truncate: bool):
        if isinstance(documents, (str, Document)) or not isinstance(documents, Iterable):
            raise invalid(f"documents is a {type(documents).__name__}; give an iterable of Document")
        self._collection = text("collection", collection)
        self._documents = documents
        self._batch_size = whole_number("batch_size", batch_size, 1, "1 to the server's max_batch_size (see info())")
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
            raise invalid(
                f"document {self.sent + 1} could not be encoded ({type(self.error).__name__}: {self.error}); "
                f"the {self.sent} documents sent before it were committed"
            ) from self.error

    def failed(self, error: IrgateError) -> IrgateError:
        """The call's error, saying what was sent: a rerun skips what the server had committed."""
        return error.reworded(
            f"{error.message} [upsert: {self.sent} documents sent before the failure; documents the server "
            "committed stay committed, and rerunning the same upsert resumes: stored unchanged documents are skipped]",
        )


def upsert_result(response: pb.UpsertDocumentsResponse) -> UpsertResult:
    return UpsertResult(
        response.upserted, response.replaced, response.total_tokens, response.documents, response.unchanged
    )


def get_request(collection: str, ids: Sequence[str], include_vectors: bool) -> pb.GetDocumentsRequest:
    return pb.GetDocumentsRequest(collection=text("collection", collection), ids=texts("ids", ids),
                                  include_vectors=include_vectors)


def get_result(response: pb.GetDocumentsResponse) -> tuple[list[Document], list[str]]:
    return [document(item) for item in response.documents], list(response.not_found)


def delete_request(collection: str, ids: Sequence[str]) -> pb.DeleteDocumentsRequest:
    return pb.DeleteDocumentsRequest(collection=text("collection", collection), ids=texts("ids", ids))


# Search modes by the name the SDK takes (see SearchMode in the proto).
SEARCH_MODES = {"dense": pb.SEARCH_MODE_DENSE, "lexical": pb.SEARCH_MODE_LEXICAL, "hybrid": pb.SEARCH_MODE_HYBRID}


def search_request(
    collection: str,
    query: str,
    instruction: str,
    k: int,
    filter: Mapping[str, Any] | None,
    include_documents: bool,
    truncate: bool,
    rerank: int,
    max_reasoning_tokens: int | None,
    return_reasoning: bool,
    *,
    max_passage_tokens: int | None = None,
    mode: str = "dense",
    dense_depth: int | None = None,
    lexical_depth: int | None = None,
) -> pb.SearchRequest:
    whole_number("k", k, 1, "1 to the server's max_k (see info())")
    if mode not in SEARCH_MODES:
        raise invalid(f"mode is {mode!r}; use one of {', '.join(repr(name) for name in SEARCH_MODES)}")
    for name, depth in (("dense_depth", dense_depth), ("lexical_depth", lexical_depth)):
        if depth is not None:
            whole_number(name, depth, 1, "1 to the server's max_k (see info()), or None for the default")
    whole_number("rerank", rerank, 0, "the number of top hits the judge reranks, 0 for none")
    if max_reasoning_tokens is not None:
        whole_number("max_reasoning_tokens", max_reasoning_tokens, 0, "reasoning tokens per judged document")
    if max_passage_tokens is not None:
        whole_number("max_passage_tokens", max_passage_tokens, 1, PASSAGE_CAP_ALLOWED)
    request = pb.SearchRequest(
        collection=text("collection", collection),
        query=text("query", query),
        instruction=text("instruction", instruction),
        k=k,
        include_documents=include_documents,
        truncation=truncation(truncate),
        rerank=pb.RerankOptions(
            top_n=rerank,
            max_reasoning_tokens=max_reasoning_tokens,
            return_reasoning=return_reasoning,
            max_passage_tokens=max_passage_tokens,
        ),
        mode=SEARCH_MODES[mode],
        dense_depth=dense_depth,
        lexical_depth=lexical_depth,
    )
    if filter is not None:
        checked = filter_struct(filter)
        if filter:
            request.filter.CopyFrom(checked)
    return request


def filter_struct(filter: object) -> struct_pb2.Struct:
    if not isinstance(filter, Mapping):
        raise invalid(f"filter is a {type(filter).__name__}; give a dict of metadata path -> value or "
                      '{operator: value} (e.g. {"year": {"$gte": 2020}}, see the README)')
    exact_numbers("filter", dict(filter))
    message = struct_pb2.Struct()
    try:
        message.update(dict(filter))
    except (TypeError, ValueError) as error:
        raise invalid(f"filter cannot be sent ({error}); use str keys and JSON values") from None
    return message


def search_batch_request(queries: Sequence[SearchQuery]) -> pb.SearchBatchRequest:
    if isinstance(queries, SearchQuery) or not isinstance(queries, Sequence) or not queries:
        raise invalid("queries must be a non-empty list of SearchQuery")
    requests = []
    for position, query in enumerate(queries):
        if not isinstance(query, SearchQuery):
            raise invalid(f"queries[{position}] is a {type(query).__name__}; give a SearchQuery")
        try:
            requests.append(search_request(**{item.name: getattr(query, item.name) for item in fields(query)}))
        except IrgateError as error:
            raise error.reworded(f"queries[{position}]: {error.message}") from None
    return pb.SearchBatchRequest(queries=requests)


def hits(response: pb.SearchResponse) -> list[Hit]:
    return [
        Hit(
            id=hit.id,
            score=hit.score,
            dense_score=hit.dense_score if hit.HasField("dense_score") else None,
            lexical_score=hit.lexical_score if hit.HasField("lexical_score") else None,
            fused_score=hit.fused_score if hit.HasField("fused_score") else None,
            document=document(hit.document) if hit.HasField("document") else None,
            verdict=verdict(hit.verdict) if hit.HasField("verdict") else None,
        )
        for hit in response.hits
    ]


ENDED = {pb.ENDED_ANSWERED: "answered", pb.ENDED_FORCED: "forced", pb.ENDED_FORCED_EOS: "forced_eos", pb.ENDED_SCORED: "scored"}


def judge_request(
    query: str,
    documents: Sequence[str | Document],
    instruction: str,
    collection: str,
    max_reasoning_tokens: int | None,
    return_reasoning: bool,
    *,
    max_passage_tokens: int | None = None,
) -> pb.JudgeRequest:
    """Strings and `Document`s with text are judged inline; a `Document` with only an id is looked up.

    `max_reasoning_tokens` and `max_passage_tokens` None leave them to the server (its caps)."""
    if max_reasoning_tokens is not None:
        whole_number("max_reasoning_tokens", max_reasoning_tokens, 0, "reasoning tokens per judged document")
    if max_passage_tokens is not None:
        whole_number("max_passage_tokens", max_passage_tokens, 1, PASSAGE_CAP_ALLOWED)
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
        max_passage_tokens=max_passage_tokens,
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
        truncated=message.truncated,
        reasoning_budget=message.reasoning_budget,
    )


def judge_event(message: pb.JudgeStreamResponse) -> Verdict | ReasoningDelta:
    if message.HasField("reasoning"):
        return ReasoningDelta(index=message.reasoning.index, text=message.reasoning.text)
    return verdict(message.verdict)
