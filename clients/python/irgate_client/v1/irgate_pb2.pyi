import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TextKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEXT_KIND_UNSPECIFIED: _ClassVar[TextKind]
    TEXT_KIND_QUERY: _ClassVar[TextKind]
    TEXT_KIND_DOCUMENT: _ClassVar[TextKind]

class Truncation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRUNCATION_UNSPECIFIED: _ClassVar[Truncation]
    TRUNCATION_END: _ClassVar[Truncation]
    TRUNCATION_NONE: _ClassVar[Truncation]

class VectorPrecision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VECTOR_PRECISION_UNSPECIFIED: _ClassVar[VectorPrecision]
    VECTOR_PRECISION_F16: _ClassVar[VectorPrecision]
    VECTOR_PRECISION_F32: _ClassVar[VectorPrecision]
    VECTOR_PRECISION_I8: _ClassVar[VectorPrecision]

class CollectionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COLLECTION_STATE_UNSPECIFIED: _ClassVar[CollectionState]
    COLLECTION_STATE_READY: _ClassVar[CollectionState]
    COLLECTION_STATE_DAMAGED: _ClassVar[CollectionState]

class SearchMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_MODE_UNSPECIFIED: _ClassVar[SearchMode]
    SEARCH_MODE_DENSE: _ClassVar[SearchMode]
    SEARCH_MODE_LEXICAL: _ClassVar[SearchMode]
    SEARCH_MODE_HYBRID: _ClassVar[SearchMode]

class Ended(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENDED_UNSPECIFIED: _ClassVar[Ended]
    ENDED_ANSWERED: _ClassVar[Ended]
    ENDED_FORCED: _ClassVar[Ended]
    ENDED_FORCED_EOS: _ClassVar[Ended]
    ENDED_SCORED: _ClassVar[Ended]
TEXT_KIND_UNSPECIFIED: TextKind
TEXT_KIND_QUERY: TextKind
TEXT_KIND_DOCUMENT: TextKind
TRUNCATION_UNSPECIFIED: Truncation
TRUNCATION_END: Truncation
TRUNCATION_NONE: Truncation
VECTOR_PRECISION_UNSPECIFIED: VectorPrecision
VECTOR_PRECISION_F16: VectorPrecision
VECTOR_PRECISION_F32: VectorPrecision
VECTOR_PRECISION_I8: VectorPrecision
COLLECTION_STATE_UNSPECIFIED: CollectionState
COLLECTION_STATE_READY: CollectionState
COLLECTION_STATE_DAMAGED: CollectionState
SEARCH_MODE_UNSPECIFIED: SearchMode
SEARCH_MODE_DENSE: SearchMode
SEARCH_MODE_LEXICAL: SearchMode
SEARCH_MODE_HYBRID: SearchMode
ENDED_UNSPECIFIED: Ended
ENDED_ANSWERED: Ended
ENDED_FORCED: Ended
ENDED_FORCED_EOS: Ended
ENDED_SCORED: Ended

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("version", "embedder", "judge", "limits", "index")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_FIELD_NUMBER: _ClassVar[int]
    JUDGE_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    version: str
    embedder: EmbedderInfo
    judge: JudgeInfo
    limits: Limits
    index: IndexInfo
    def __init__(self, version: _Optional[str] = ..., embedder: _Optional[_Union[EmbedderInfo, _Mapping]] = ..., judge: _Optional[_Union[JudgeInfo, _Mapping]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., index: _Optional[_Union[IndexInfo, _Mapping]] = ...) -> None: ...

class IndexInfo(_message.Message):
    __slots__ = ("engine", "address")
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    engine: str
    address: str
    def __init__(self, engine: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class EmbedderInfo(_message.Message):
    __slots__ = ("model", "backend", "dimension", "max_tokens", "pooling", "supports_instructions", "preset", "instruction_format", "default_instruction")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    SUPPORTS_INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FORMAT_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    model: str
    backend: str
    dimension: int
    max_tokens: int
    pooling: str
    supports_instructions: bool
    preset: str
    instruction_format: str
    default_instruction: str
    def __init__(self, model: _Optional[str] = ..., backend: _Optional[str] = ..., dimension: _Optional[int] = ..., max_tokens: _Optional[int] = ..., pooling: _Optional[str] = ..., supports_instructions: _Optional[bool] = ..., preset: _Optional[str] = ..., instruction_format: _Optional[str] = ..., default_instruction: _Optional[str] = ...) -> None: ...

class JudgeInfo(_message.Message):
    __slots__ = ("model", "backend", "max_reasoning_tokens", "max_context_tokens", "max_passage_tokens", "family", "scoring", "score_rule", "score_formula", "supports_instructions", "default_instruction")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MAX_REASONING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_PASSAGE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    SCORING_FIELD_NUMBER: _ClassVar[int]
    SCORE_RULE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FORMULA_FIELD_NUMBER: _ClassVar[int]
    SUPPORTS_INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    model: str
    backend: str
    max_reasoning_tokens: int
    max_context_tokens: int
    max_passage_tokens: int
    family: str
    scoring: str
    score_rule: str
    score_formula: str
    supports_instructions: bool
    default_instruction: str
    def __init__(self, model: _Optional[str] = ..., backend: _Optional[str] = ..., max_reasoning_tokens: _Optional[int] = ..., max_context_tokens: _Optional[int] = ..., max_passage_tokens: _Optional[int] = ..., family: _Optional[str] = ..., scoring: _Optional[str] = ..., score_rule: _Optional[str] = ..., score_formula: _Optional[str] = ..., supports_instructions: _Optional[bool] = ..., default_instruction: _Optional[str] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_batch_size", "max_concurrent_requests", "max_k", "max_judge_documents")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_K_FIELD_NUMBER: _ClassVar[int]
    MAX_JUDGE_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    max_concurrent_requests: int
    max_k: int
    max_judge_documents: int
    def __init__(self, max_batch_size: _Optional[int] = ..., max_concurrent_requests: _Optional[int] = ..., max_k: _Optional[int] = ..., max_judge_documents: _Optional[int] = ...) -> None: ...

class EmbedInput(_message.Message):
    __slots__ = ("kind", "text", "instruction", "title")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    kind: TextKind
    text: str
    instruction: str
    title: str
    def __init__(self, kind: _Optional[_Union[TextKind, str]] = ..., text: _Optional[str] = ..., instruction: _Optional[str] = ..., title: _Optional[str] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("inputs", "truncation", "raw")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[EmbedInput]
    truncation: Truncation
    raw: bool
    def __init__(self, inputs: _Optional[_Iterable[_Union[EmbedInput, _Mapping]]] = ..., truncation: _Optional[_Union[Truncation, str]] = ..., raw: _Optional[bool] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values", "tokens", "truncated")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    tokens: int
    truncated: bool
    def __init__(self, values: _Optional[_Iterable[float]] = ..., tokens: _Optional[int] = ..., truncated: _Optional[bool] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("queue_ns", "tokenization_ns", "inference_ns", "total_ns", "judge_ns")
    QUEUE_NS_FIELD_NUMBER: _ClassVar[int]
    TOKENIZATION_NS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_NS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_NS_FIELD_NUMBER: _ClassVar[int]
    JUDGE_NS_FIELD_NUMBER: _ClassVar[int]
    queue_ns: int
    tokenization_ns: int
    inference_ns: int
    total_ns: int
    judge_ns: int
    def __init__(self, queue_ns: _Optional[int] = ..., tokenization_ns: _Optional[int] = ..., inference_ns: _Optional[int] = ..., total_ns: _Optional[int] = ..., judge_ns: _Optional[int] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "total_tokens", "timing")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    total_tokens: int
    timing: Timing
    def __init__(self, embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., total_tokens: _Optional[int] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "precision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    precision: VectorPrecision
    def __init__(self, name: _Optional[str] = ..., precision: _Optional[_Union[VectorPrecision, str]] = ...) -> None: ...

class CollectionInfo(_message.Message):
    __slots__ = ("name", "documents", "dimension", "precision", "model", "created_at", "state", "damage", "create_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DAMAGE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    documents: int
    dimension: int
    precision: VectorPrecision
    model: str
    created_at: float
    state: CollectionState
    damage: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., documents: _Optional[int] = ..., dimension: _Optional[int] = ..., precision: _Optional[_Union[VectorPrecision, str]] = ..., model: _Optional[str] = ..., created_at: _Optional[float] = ..., state: _Optional[_Union[CollectionState, str]] = ..., damage: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections", "next_page_token")
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[CollectionInfo]
    next_page_token: str
    def __init__(self, collections: _Optional[_Iterable[_Union[CollectionInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DescribeCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Document(_message.Message):
    __slots__ = ("id", "text", "title", "metadata", "vector")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    title: str
    metadata: _struct_pb2.Struct
    vector: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., title: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., vector: _Optional[_Iterable[float]] = ...) -> None: ...

class UpsertDocumentsRequest(_message.Message):
    __slots__ = ("collection", "documents", "truncation")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    truncation: Truncation
    def __init__(self, collection: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ..., truncation: _Optional[_Union[Truncation, str]] = ...) -> None: ...

class UpsertDocumentsResponse(_message.Message):
    __slots__ = ("upserted", "replaced", "total_tokens", "documents", "unchanged")
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    replaced: int
    total_tokens: int
    documents: int
    unchanged: int
    def __init__(self, upserted: _Optional[int] = ..., replaced: _Optional[int] = ..., total_tokens: _Optional[int] = ..., documents: _Optional[int] = ..., unchanged: _Optional[int] = ...) -> None: ...

class GetDocumentsRequest(_message.Message):
    __slots__ = ("collection", "ids", "include_vectors")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    include_vectors: bool
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., include_vectors: _Optional[bool] = ...) -> None: ...

class GetDocumentsResponse(_message.Message):
    __slots__ = ("documents", "not_found")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    not_found: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ..., not_found: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteDocumentsRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteDocumentsResponse(_message.Message):
    __slots__ = ("deleted", "not_found")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    not_found: int
    def __init__(self, deleted: _Optional[int] = ..., not_found: _Optional[int] = ...) -> None: ...

class ListDocumentsRequest(_message.Message):
    __slots__ = ("collection", "page_size", "page_token", "filter", "include_vectors")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    page_size: int
    page_token: str
    filter: _struct_pb2.Struct
    include_vectors: bool
    def __init__(self, collection: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., filter: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., include_vectors: _Optional[bool] = ...) -> None: ...

class ListDocumentsResponse(_message.Message):
    __slots__ = ("documents", "next_page_token")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    next_page_token: str
    def __init__(self, documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RerankOptions(_message.Message):
    __slots__ = ("top_n", "max_reasoning_tokens", "return_reasoning", "max_passage_tokens")
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    MAX_REASONING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RETURN_REASONING_FIELD_NUMBER: _ClassVar[int]
    MAX_PASSAGE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    top_n: int
    max_reasoning_tokens: int
    return_reasoning: bool
    max_passage_tokens: int
    def __init__(self, top_n: _Optional[int] = ..., max_reasoning_tokens: _Optional[int] = ..., return_reasoning: _Optional[bool] = ..., max_passage_tokens: _Optional[int] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "query", "instruction", "k", "filter", "include_documents", "rerank", "truncation", "mode", "dense_depth", "lexical_depth")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DENSE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_DEPTH_FIELD_NUMBER: _ClassVar[int]
    collection: str
    query: str
    instruction: str
    k: int
    filter: _struct_pb2.Struct
    include_documents: bool
    rerank: RerankOptions
    truncation: Truncation
    mode: SearchMode
    dense_depth: int
    lexical_depth: int
    def __init__(self, collection: _Optional[str] = ..., query: _Optional[str] = ..., instruction: _Optional[str] = ..., k: _Optional[int] = ..., filter: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., include_documents: _Optional[bool] = ..., rerank: _Optional[_Union[RerankOptions, _Mapping]] = ..., truncation: _Optional[_Union[Truncation, str]] = ..., mode: _Optional[_Union[SearchMode, str]] = ..., dense_depth: _Optional[int] = ..., lexical_depth: _Optional[int] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "score", "dense_score", "verdict", "document", "lexical_score", "fused_score")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    DENSE_SCORE_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    FUSED_SCORE_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    dense_score: float
    verdict: Verdict
    document: Document
    lexical_score: float
    fused_score: float
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., dense_score: _Optional[float] = ..., verdict: _Optional[_Union[Verdict, _Mapping]] = ..., document: _Optional[_Union[Document, _Mapping]] = ..., lexical_score: _Optional[float] = ..., fused_score: _Optional[float] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "timing")
    HITS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    timing: Timing
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class SearchBatchRequest(_message.Message):
    __slots__ = ("queries",)
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedCompositeFieldContainer[SearchRequest]
    def __init__(self, queries: _Optional[_Iterable[_Union[SearchRequest, _Mapping]]] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("response", "error")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    response: SearchResponse
    error: _status_pb2.Status
    def __init__(self, response: _Optional[_Union[SearchResponse, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class SearchBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResult, _Mapping]]] = ...) -> None: ...

class JudgeDocument(_message.Message):
    __slots__ = ("inline", "id")
    INLINE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    inline: InlineDocument
    id: str
    def __init__(self, inline: _Optional[_Union[InlineDocument, _Mapping]] = ..., id: _Optional[str] = ...) -> None: ...

class InlineDocument(_message.Message):
    __slots__ = ("id", "text", "title")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    title: str
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., title: _Optional[str] = ...) -> None: ...

class JudgeRequest(_message.Message):
    __slots__ = ("query", "instruction", "documents", "collection", "max_reasoning_tokens", "return_reasoning", "max_passage_tokens")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    MAX_REASONING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RETURN_REASONING_FIELD_NUMBER: _ClassVar[int]
    MAX_PASSAGE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    query: str
    instruction: str
    documents: _containers.RepeatedCompositeFieldContainer[JudgeDocument]
    collection: str
    max_reasoning_tokens: int
    return_reasoning: bool
    max_passage_tokens: int
    def __init__(self, query: _Optional[str] = ..., instruction: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[JudgeDocument, _Mapping]]] = ..., collection: _Optional[str] = ..., max_reasoning_tokens: _Optional[int] = ..., return_reasoning: _Optional[bool] = ..., max_passage_tokens: _Optional[int] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("index", "id", "relevant", "score", "reasoning", "reasoning_tokens", "ended", "truncated", "reasoning_budget")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    RELEVANT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    REASONING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    REASONING_BUDGET_FIELD_NUMBER: _ClassVar[int]
    index: int
    id: str
    relevant: bool
    score: float
    reasoning: str
    reasoning_tokens: int
    ended: Ended
    truncated: bool
    reasoning_budget: int
    def __init__(self, index: _Optional[int] = ..., id: _Optional[str] = ..., relevant: _Optional[bool] = ..., score: _Optional[float] = ..., reasoning: _Optional[str] = ..., reasoning_tokens: _Optional[int] = ..., ended: _Optional[_Union[Ended, str]] = ..., truncated: _Optional[bool] = ..., reasoning_budget: _Optional[int] = ...) -> None: ...

class JudgeResponse(_message.Message):
    __slots__ = ("verdicts", "timing")
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    verdicts: _containers.RepeatedCompositeFieldContainer[Verdict]
    timing: Timing
    def __init__(self, verdicts: _Optional[_Iterable[_Union[Verdict, _Mapping]]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class ReasoningDelta(_message.Message):
    __slots__ = ("index", "text")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    index: int
    text: str
    def __init__(self, index: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class JudgeStreamResponse(_message.Message):
    __slots__ = ("reasoning", "verdict")
    REASONING_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    reasoning: ReasoningDelta
    verdict: Verdict
    def __init__(self, reasoning: _Optional[_Union[ReasoningDelta, _Mapping]] = ..., verdict: _Optional[_Union[Verdict, _Mapping]] = ...) -> None: ...
