"""Search pipeline: a first stage (dense: embed the query with its instruction, then ANN; lexical:
BM25 over title and text; hybrid: both, fused by reciprocal rank fusion) -> optional documents ->
optional rerank by the judge.

The query arrives validated by the API layer (collection name, k within the server's limit, a JSON
filter); the judge's rules (a judge at all, rerank.top_n within its limit, the passage cap) are
checked here, before any search runs."""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from irgate import tracing
from irgate.domain.documents import Document
from irgate.core.embedding import Embeddings, EmbeddingService, TextInput, Timing, Truncation
from irgate.core.index import Index, IndexedCollection
from irgate.core.judge import JudgeCall, JudgeService, Passage, Verdict, require_judge
from irgate.errors import InvalidArgument, IrgateError
from irgate.filters import Filter
from irgate.index.records import ScoredKey

# Reciprocal rank fusion's constant (Cormack et al. 2009): a hit at rank r of a stage adds 1 / (RRF_K + r).
RRF_K = 60
# How many of each stage's best hits hybrid search fuses unless the query says (k or rerank.top_n when larger).
HYBRID_DEPTH = 100


class SearchMode(enum.Enum):
    DENSE = "dense"
    LEXICAL = "lexical"
    HYBRID = "hybrid"


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
    filter: Filter | Mapping[str, Any] | None = None
    include_documents: bool = False
    rerank: RerankOptions = RerankOptions()
    truncation: Truncation = Truncation.END
    mode: SearchMode = SearchMode.DENSE
    # Hybrid mode only: how many of each stage's best hits are fused; None: HYBRID_DEPTH, or more when
    # k or rerank.top_n is larger.
    dense_depth: int | None = None
    lexical_depth: int | None = None

    def depth(self, given: int | None) -> int:
        """A first stage's depth: the judge may lift any of the top_n candidates into the first k."""
        wanted = max(self.k, self.rerank.top_n)
        if self.mode is not SearchMode.HYBRID:
            return wanted
        return given if given is not None else max(wanted, HYBRID_DEPTH)


@dataclass(frozen=True)
class SearchHit:
    id: str
    score: float  # the judge's when judged, else the first stage's: fused_score, or the one stage's score
    dense_score: float | None = None  # None: the dense stage did not find it (or did not run)
    lexical_score: float | None = None  # BM25; None: the lexical stage did not find it (or did not run)
    fused_score: float | None = None  # hybrid mode only
    document: Document | None = None
    verdict: Verdict | None = None


@dataclass(frozen=True)
class SearchResult:
    hits: list[SearchHit]
    timing: Timing  # the embedder's share, the judge's and the whole search's


class SearchPipeline:
    def __init__(self, embedding: EmbeddingService, store: Index, judge: JudgeService | None = None):
        self._embedding = embedding
        self._store = store
        self._judge = judge

    async def search_batch(self, queries: Sequence[SearchQuery]) -> list[SearchResult | IrgateError]:
        """Each query's result, or the typed error that failed it, in query order. The queries with a
        dense stage are embedded in one call per truncation policy, so they share model batches."""
        embedded: dict[int, Embeddings | IrgateError] = {}
        for truncation in Truncation:
            positions = [position for position, query in enumerate(queries)
                         if query.mode is not SearchMode.LEXICAL and query.truncation is truncation]
            if positions:
                embedded.update(await self._embed_queries([queries[position] for position in positions], positions))

        async def answer(position: int) -> SearchResult | IrgateError:
            vectors = embedded.get(position)
            if isinstance(vectors, IrgateError):
                return vectors
            try:
                return await self.search(queries[position], vectors)
            except IrgateError as error:
                return error

        return list(await asyncio.gather(*(answer(position) for position in range(len(queries)))))

    async def _embed_queries(self, queries: list[SearchQuery], positions: list[int]) -> dict[int, Embeddings | IrgateError]:
        """The queries' embeddings by position, from one call; when that call refuses one of them (an
        over-long query under TRUNCATION_NONE), each is embedded alone so that only it fails."""
        texts = [TextInput(text=query.query, is_query=True, instruction=query.instruction) for query in queries]
        try:
            together = await self._embedding.embed(texts, queries[0].truncation, normalize=True)
        except InvalidArgument:
            if len(queries) == 1:
                raise
            alone: dict[int, Embeddings | IrgateError] = {}
            for query, position in zip(queries, positions, strict=True):
                try:
                    alone.update(await self._embed_queries([query], [position]))
                except InvalidArgument as error:
                    alone[position] = error
            return alone
        return {
            position: Embeddings(together.vectors[row : row + 1], together.tokens[row : row + 1],
                                 together.truncated[row : row + 1], together.timing)
            for row, position in enumerate(positions)
        }

    async def search(self, query: SearchQuery, embedded: Embeddings | None = None) -> SearchResult:
        """embedded: the query's embedding when the caller computed it (search_batch), else computed here."""
        start = time.perf_counter_ns()
        top_n = query.rerank.top_n
        if top_n:  # refused before the first stage runs, with the field's name
            judge = require_judge(self._judge, "rerank", "set rerank.top_n to 0")
            if top_n > judge.max_documents:
                raise InvalidArgument(f"rerank.top_n is {top_n}; it must be between 0 and {judge.max_documents}",
                                      field="rerank.top_n")
            judge.passage_cap(query.rerank.max_passage_tokens, "rerank.max_passage_tokens")
        collection = await asyncio.to_thread(self._store.get, query.collection)
        timing = Timing()
        dense: list[ScoredKey] = []
        lexical: list[ScoredKey] = []
        if query.mode is not SearchMode.DENSE:
            # Before the query is embedded: an engine without lexical search refuses at no cost.
            depth = query.depth(query.lexical_depth)
            with tracing.stage("lexical search", k=depth, filtered=query.filter is not None):
                lexical = await asyncio.to_thread(collection.lexical_search, query.query, depth, query.filter)
        if query.mode is not SearchMode.LEXICAL:
            dense, timing = await self._dense(collection, query, embedded)
        hits = _first_stage(query.mode, dense, lexical)
        if (query.include_documents or top_n) and hits:
            with tracing.stage("document fetch", documents=len(hits)):
                records = await asyncio.to_thread(collection.get, [hit.id for hit in hits], skip_missing=True)
            documents = {record.id: record for record in records}
            hits = [replace(hit, document=documents[hit.id]) for hit in hits if hit.id in documents]
        if top_n and hits:
            judging = time.perf_counter_ns()
            hits = await self._rerank(query, hits)
            timing = replace(timing, judge_ns=time.perf_counter_ns() - judging)
        if not query.include_documents:
            hits = [replace(hit, document=None) for hit in hits]
        timing = replace(timing, total_ns=time.perf_counter_ns() - start)
        return SearchResult(hits=hits[: query.k], timing=timing)

    async def _dense(
        self, collection: IndexedCollection, query: SearchQuery, embedded: Embeddings | None
    ) -> tuple[list[ScoredKey], Timing]:
        if embedded is None:
            embedded = await self._embedding.embed(
                [TextInput(text=query.query, is_query=True, instruction=query.instruction)],
                query.truncation,
                normalize=True,
            )
        depth = query.depth(query.dense_depth)
        with tracing.stage("index search", k=depth, filtered=query.filter is not None):
            found = await asyncio.to_thread(collection.search, embedded.vectors[0], depth, query.filter)
        return found, embedded.timing

    async def _rerank(self, query: SearchQuery, hits: list[SearchHit]) -> list[SearchHit]:
        """Judged hits first, by judge score (ties keep the first stage's order); the rest keep that order."""
        assert self._judge is not None
        top, rest = hits[: query.rerank.top_n], hits[query.rerank.top_n :]
        # A document stored with a vector only has no text to judge: it joins the unjudged rest.
        judged = [hit for hit in top if hit.document is not None and hit.document.text.strip()]
        if not judged:
            return hits
        judged_ids = {hit.id for hit in judged}
        rest = [hit for hit in top if hit.id not in judged_ids] + rest
        passages = [Passage(id=hit.id, text=hit.document.text, title=hit.document.title) for hit in judged if hit.document]
        verdicts = await self._judge.judge_all(JudgeCall(
            query.query,
            query.instruction,
            passages,
            query.rerank.max_reasoning_tokens,
            return_reasoning=query.rerank.return_reasoning,
            max_passage_tokens=query.rerank.max_passage_tokens,
        ))
        judged = [replace(hit, score=verdict.score, verdict=verdict) for hit, verdict in zip(judged, verdicts, strict=True)]
        judged.sort(key=lambda hit: -hit.score)  # stable
        return judged + rest


def _first_stage(mode: SearchMode, dense: list[ScoredKey], lexical: list[ScoredKey]) -> list[SearchHit]:
    if mode is SearchMode.DENSE:
        return [SearchHit(id=item.id, score=item.score, dense_score=item.score) for item in dense]
    if mode is SearchMode.LEXICAL:
        return [SearchHit(id=item.id, score=item.score, lexical_score=item.score) for item in lexical]
    return fuse(dense, lexical)


def fuse(dense: list[ScoredKey], lexical: list[ScoredKey]) -> list[SearchHit]:
    """Reciprocal rank fusion of the two rankings (best first): each hit scores the sum over the rankings
    that hold it of 1 / (RRF_K + its rank there), ranks counted from 1. Ties go to the hit with the better
    single rank, then to the dense ranking's, so the order never depends on anything but the two lists."""
    dense_rank = {item.id: rank for rank, item in enumerate(dense, start=1)}
    lexical_rank = {item.id: rank for rank, item in enumerate(lexical, start=1)}
    dense_score = {item.id: item.score for item in dense}
    lexical_score = {item.id: item.score for item in lexical}
    hits = []
    for document_id in dict.fromkeys([*dense_rank, *lexical_rank]):
        ranks = [rank for rank in (dense_rank.get(document_id), lexical_rank.get(document_id)) if rank is not None]
        fused = sum(1.0 / (RRF_K + rank) for rank in ranks)
        hits.append((-fused, min(ranks), document_id not in dense_rank, SearchHit(
            id=document_id, score=fused, dense_score=dense_score.get(document_id),
            lexical_score=lexical_score.get(document_id), fused_score=fused,
        )))
    hits.sort(key=lambda entry: entry[:3])
    return [entry[3] for entry in hits]
