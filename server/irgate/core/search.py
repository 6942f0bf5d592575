"""Search pipeline: embed the query (with its instruction) -> ANN top-k -> optional documents."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from irgate.core.embedding import EmbeddingService, TextInput, Timing, Truncation
from irgate.errors import FailedPrecondition, InvalidArgument
from irgate.index.collection import DocumentRecord
from irgate.index.store import CollectionStore


@dataclass(frozen=True)
class RerankOptions:
    top_n: int = 0
    max_reasoning_tokens: int = 0
    return_reasoning: bool = False


@dataclass(frozen=True)
class SearchQuery:
    collection: str
    query: str
    instruction: str = ""
    k: int = 10
    filter: Mapping[str, Any] | None = None
    include_documents: bool = False
    rerank: RerankOptions = RerankOptions()
    truncation: Truncation = Truncation.END


@dataclass(frozen=True)
class SearchHit:
    id: str
    score: float
    dense_score: float
    document: DocumentRecord | None = None


@dataclass(frozen=True)
class SearchResult:
    hits: list[SearchHit]
    timing: Timing


class SearchPipeline:
    def __init__(self, embedding: EmbeddingService, store: CollectionStore, max_k: int):
        self._embedding = embedding
        self._store = store
        self.max_k = max_k

    async def search(self, query: SearchQuery) -> SearchResult:
        start = time.perf_counter_ns()
        if not 1 <= query.k <= self.max_k:
            raise InvalidArgument(f"k is {query.k}; it must be between 1 and {self.max_k}")
        if query.rerank.top_n:
            raise FailedPrecondition("this server runs without a judge, so it cannot rerank; set rerank.top_n to 0")
        collection = await asyncio.to_thread(self._store.get, query.collection)
        embedded = await self._embedding.embed(
            [TextInput(text=query.query, is_query=True, instruction=query.instruction)],
            query.truncation,
            normalize=True,
        )
        found = await asyncio.to_thread(collection.search, embedded.vectors[0], query.k, query.filter)
        hits = [SearchHit(id=item.id, score=item.score, dense_score=item.score) for item in found]
        if query.include_documents and hits:
            documents = await asyncio.to_thread(collection.get, [hit.id for hit in hits])
            hits = [replace(hit, document=document) for hit, document in zip(hits, documents)]
        timing = replace(embedded.timing, total_ns=time.perf_counter_ns() - start)
        return SearchResult(hits=hits, timing=timing)
