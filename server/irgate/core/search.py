"""Search pipeline: embed the query (with its instruction) -> ANN top-k -> optional documents.

The query arrives validated by the API layer (collection name, k within the server's limit,
rerank.top_n within the judge's, a JSON filter)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from irgate import tracing
from irgate.core.collections import document_of
from irgate.core.documents import Document
from irgate.core.embedding import EmbeddingService, TextInput, Timing, Truncation
from irgate.core.index import Index
from irgate.core.judge import JudgeService, Passage, Verdict
from irgate.errors import FailedPrecondition


@dataclass(frozen=True)
class RerankOptions:
    top_n: int = 0
    max_reasoning_tokens: int | None = None  # None: the judge's cap (the one default)
    return_reasoning: bool = False
    max_passage_tokens: int | None = None  # None: the judge's passage cap; a request may only lower it


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
    document: Document | None = None
    verdict: Verdict | None = None


@dataclass(frozen=True)
class SearchResult:
    hits: list[SearchHit]
    timing: Timing


class SearchPipeline:
    def __init__(self, embedding: EmbeddingService, store: Index, judge: JudgeService | None = None):
        self._embedding = embedding
        self._store = store
        self._judge = judge

    async def search(self, query: SearchQuery) -> SearchResult:
        start = time.perf_counter_ns()
        top_n = query.rerank.top_n
        if top_n and self._judge is None:
            raise FailedPrecondition("this server runs without a judge, so it cannot rerank; set rerank.top_n to 0")
        if top_n and self._judge is not None:  # refused before the dense search, with the field's name
            self._judge.passage_cap(query.rerank.max_passage_tokens, "rerank.max_passage_tokens")
        collection = await asyncio.to_thread(self._store.get, query.collection)
        embedded = await self._embedding.embed(
            [TextInput(text=query.query, is_query=True, instruction=query.instruction)],
            query.truncation,
            normalize=True,
        )
        # The judge may lift any of the top_n dense hits into the first k.
        with tracing.stage("index search", k=max(query.k, top_n), filtered=query.filter is not None):
            found = await asyncio.to_thread(collection.search, embedded.vectors[0], max(query.k, top_n), query.filter)
        hits = [SearchHit(id=item.id, score=item.score, dense_score=item.score) for item in found]
        if (query.include_documents or top_n) and hits:
            with tracing.stage("document fetch", documents=len(hits)):
                records = await asyncio.to_thread(collection.get, [hit.id for hit in hits], skip_missing=True)
            documents = {record.id: document_of(record) for record in records}
            hits = [replace(hit, document=documents[hit.id]) for hit in hits if hit.id in documents]
        if top_n and hits:
            hits = await self._rerank(query, hits)
        if not query.include_documents:
            hits = [replace(hit, document=None) for hit in hits]
        timing = replace(embedded.timing, total_ns=time.perf_counter_ns() - start)
        return SearchResult(hits=hits[: query.k], timing=timing)

    async def _rerank(self, query: SearchQuery, hits: list[SearchHit]) -> list[SearchHit]:
        """Judged hits first, by judge score then dense score; the rest keep their dense order."""
        assert self._judge is not None
        top, rest = hits[: query.rerank.top_n], hits[query.rerank.top_n :]
        # A document stored with a vector only has no text to judge: it joins the unjudged rest.
        judged = [hit for hit in top if hit.document is not None and hit.document.text.strip()]
        if not judged:
            return hits
        judged_ids = {hit.id for hit in judged}
        rest = [hit for hit in top if hit.id not in judged_ids] + rest
        passages = [Passage(id=hit.id, text=hit.document.text, title=hit.document.title) for hit in judged if hit.document]
        verdicts = await self._judge.judge_all(
            query.query,
            query.instruction,
            passages,
            query.rerank.max_reasoning_tokens,
            return_reasoning=query.rerank.return_reasoning,
            max_passage_tokens=query.rerank.max_passage_tokens,
        )
        judged = [replace(hit, score=verdict.score, verdict=verdict) for hit, verdict in zip(judged, verdicts, strict=True)]
        judged.sort(key=lambda hit: (-hit.score, -hit.dense_score))
        return judged + rest
