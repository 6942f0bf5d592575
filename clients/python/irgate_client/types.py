"""Typed values the SDK takes and returns (plain dataclasses, no protobuf)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import grpc


@dataclass(frozen=True)
class FieldViolation:
    """A request field at fault: its path (e.g. "documents[3].id") and what was wrong and what is allowed."""

    field: str
    description: str


class IrgateError(Exception):
    """A call failed; `code` is the gRPC status code, `message` the server's explanation.

    From the server's error details (google.rpc): `reason`, a stable word to branch on (e.g.
    "RESPONSE_TOO_LARGE", "SERVER_BUSY"; empty when the call failed before the server answered);
    `field_violations`, the request fields at fault; `retry_after`, the seconds to wait before
    retrying, or None when retrying the same call does not help.

    Arguments the SDK can check before sending (a negative k, ids given as one string, ...) raise
    it too, with INVALID_ARGUMENT and a message that names the argument, as the server would.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        field_violations: Sequence[FieldViolation] = (),
        retry_after: float | None = None,
    ):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.field_violations = tuple(field_violations)
        self.retry_after = retry_after

    def reworded(self, message: str) -> IrgateError:
        """The same error with another message (details kept)."""
        return IrgateError(
            self.code, message, reason=self.reason, field_violations=self.field_violations, retry_after=self.retry_after
        )


@dataclass(frozen=True)
class Query:
    """A search query with an optional instruction (for instructable embedders)."""

    text: str
    instruction: str = ""


@dataclass(frozen=True)
class Document:
    id: str
    text: str = ""
    title: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    vector: Sequence[float] | None = None


@dataclass(frozen=True)
class Embedding:
    values: list[float]
    tokens: int
    truncated: bool


@dataclass(frozen=True)
class ServerInfo:
    version: str
    model: str
    backend: str
    dimension: int
    max_tokens: int
    pooling: str
    supports_instructions: bool
    judge_model: str  # empty when the server runs without a judge
    judge_backend: str
    max_reasoning_tokens: int  # the server's cap per judged document
    max_passage_tokens: int  # most tokens of each passage the judge reads (0 without a judge)
    max_batch_size: int
    max_concurrent_requests: int
    max_k: int
    max_judge_documents: int
    index_engine: str = ""  # where collections are held: "local" or "milvus" (empty from an older server)
    index_address: str = ""  # the Milvus server's HOST:PORT; empty for the local index
    embedder_preset: str = ""  # the `irgate prepare --preset` of the embedder, e.g. "qwen3-embedding"
    # How a query and its instruction become the embedder's text, e.g. "Instruct: {instruction}\nQuery:{query}".
    instruction_format: str = ""
    default_instruction: str = ""  # what a query without an instruction is embedded with ("" for nothing)
    judge_family: str = ""  # e.g. "rank1", "qwen3-reranker" (empty without a judge)
    judge_scoring: str = ""  # "reasoning" (Rank1) or "one_step" (scored at the prompt's last position)
    judge_score_formula: str = ""  # e.g. "sigmoid(logit('1') - logit('0') - 4.5)"
    judge_supports_instructions: bool = False  # a judge without an instruction slot refuses one
    judge_default_instruction: str = ""  # what a judge request without an instruction is judged under


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    documents: int
    dimension: int
    precision: str
    model: str
    created_at: float  # seconds since the Unix epoch; deprecated: read create_time
    # "READY", or "DAMAGED": its calls fail with DATA_LOSS (`damage` says why) until it is deleted.
    state: str = "READY"
    damage: str = ""
    create_time: datetime | None = None  # timezone-aware (UTC); None for a damaged collection or from older servers


@dataclass(frozen=True)
class UpsertResult:
    upserted: int  # documents written, replacements included
    replaced: int  # of those, documents that replaced a stored one with the same id
    total_tokens: int  # tokens embedded
    documents: int  # documents in the collection afterwards
    unchanged: int = 0  # skipped: already stored with the same title, text and metadata


@dataclass(frozen=True)
class Verdict:
    """The judge's answer for one document."""

    index: int  # position of the document in the request
    id: str
    relevant: bool
    score: float  # p(true) at the answer, in [0, 1]
    reasoning: str
    reasoning_tokens: int
    # "answered": the model closed its reasoning by itself; "forced": the budget ran out and the
    # answer was forced; "forced_eos": the model ended its text early and the answer was forced;
    # "scored": a one-step judge scored the prompt itself (no reasoning).
    ended: str
    truncated: bool = False  # the passage was cut at its end to fit the judge's context
    reasoning_budget: int = 0  # the budget applied: the request's, or the server's cap


@dataclass(frozen=True)
class ReasoningDelta:
    """New reasoning text of one document, streamed by `judge_stream` when asked for."""

    index: int
    text: str


@dataclass(frozen=True)
class Hit:
    id: str
    score: float  # judge score when judged, else the first stage's (dense, lexical or fused score)
    dense_score: float | None  # cosine similarity; None when the dense stage did not find the hit
    document: Document | None = None
    verdict: Verdict | None = None
    lexical_score: float | None = None  # BM25 (lexical and hybrid modes); None when that stage did not find it
    fused_score: float | None = None  # reciprocal rank fusion score (hybrid mode)


@dataclass(frozen=True)
class SearchQuery:
    """One query of `search_batch`: the arguments of `search`, as a value."""

    collection: str
    query: str
    instruction: str = ""
    k: int = 10
    filter: Mapping[str, Any] | None = None
    include_documents: bool = False
    truncate: bool = True
    rerank: int = 0
    max_reasoning_tokens: int | None = None
    return_reasoning: bool = False
    max_passage_tokens: int | None = None
    mode: str = "dense"
    dense_depth: int | None = None
    lexical_depth: int | None = None


@dataclass(frozen=True)
class DocumentPage:
    """One page of `list_documents`: its documents in id order, and the token of the next page
    ("" on the last), which a later `list_documents(..., page_token=...)` resumes from."""

    documents: list[Document]
    next_page_token: str
