"""Judge pipeline: resolve documents -> Rank1 prompts -> the judge backend -> verdicts.

Used by the Judge RPCs and by the rerank stage of Search, so both judge exactly the same text.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from irgate.backends.judge import JudgeBackend, JudgeOutcome, ReasoningDelta
from irgate.core.judging import judge_prompt
from irgate.errors import InvalidArgument
from irgate.index.store import CollectionStore


@dataclass(frozen=True)
class Passage:
    """A document to judge: inline (`text` set) or by `id` in the request's collection."""

    id: str
    text: str = ""
    title: str = ""
    from_collection: bool = False


@dataclass(frozen=True)
class Verdict:
    index: int
    id: str
    score: float
    reasoning: str
    reasoning_tokens: int
    ended: str  # "answered" | "forced"

    @property
    def relevant(self) -> bool:
        return self.score > 0.5


@dataclass(frozen=True)
class Reasoning:
    index: int
    text: str


class JudgeService:
    def __init__(self, backend: JudgeBackend, store: CollectionStore, max_documents: int, max_reasoning_tokens: int):
        self.backend = backend
        self._store = store
        self.max_documents = max_documents
        # The server's cap: the manifest's, lowered further by --max-reasoning-tokens.
        self.max_reasoning_tokens = min(max_reasoning_tokens, backend.manifest.max_reasoning_tokens)

    async def resolve(self, passages: Sequence[Passage], collection: str) -> list[Passage]:
        """Fills in the text of documents given by id."""
        wanted = [passage.id for passage in passages if passage.from_collection]
        if not wanted:
            return list(passages)
        if not collection:
            raise InvalidArgument("documents are given by id but no collection is named; set collection")
        stored = await asyncio.to_thread(self._store.get, collection)
        records = {record.id: record for record in await asyncio.to_thread(stored.get, wanted)}
        resolved = [
            Passage(id=p.id, text=records[p.id].text, title=records[p.id].title) if p.from_collection else p
            for p in passages
        ]
        for passage in resolved:
            if not passage.text.strip():
                raise InvalidArgument(f"document '{passage.id}' has no text to judge (it was stored with a vector only)")
        return resolved

    async def judge(
        self,
        query: str,
        instruction: str,
        passages: Sequence[Passage],
        max_reasoning_tokens: int,
        *,
        return_reasoning: bool = False,
        stream_reasoning: bool = False,
        collection: str = "",
    ) -> AsyncIterator[Verdict | Reasoning]:
        """Verdicts in completion order; reasoning deltas before them when `stream_reasoning`."""
        if not 1 <= len(passages) <= self.max_documents:
            raise InvalidArgument(f"documents has {len(passages)} entries; send 1 to {self.max_documents}")
        resolved = await self.resolve(passages, collection)
        prompts = [
            judge_prompt(self.backend.manifest, query, instruction, passage.title, passage.text) for passage in resolved
        ]
        budget = min(max_reasoning_tokens, self.max_reasoning_tokens)
        events = self.backend.judge(prompts, budget, stream_reasoning=stream_reasoning)
        try:
            async for event in events:
                if isinstance(event, ReasoningDelta):
                    yield Reasoning(index=event.index, text=event.text)
                else:
                    yield _verdict(event, resolved[event.index].id, return_reasoning)
        finally:
            await events.aclose()  # a caller that went away stops the model work

    async def judge_all(
        self,
        query: str,
        instruction: str,
        passages: Sequence[Passage],
        max_reasoning_tokens: int,
        *,
        return_reasoning: bool = False,
        collection: str = "",
    ) -> list[Verdict]:
        """Every verdict, in request order."""
        events = self.judge(
            query, instruction, passages, max_reasoning_tokens, return_reasoning=return_reasoning, collection=collection
        )
        verdicts = [event async for event in events if isinstance(event, Verdict)]
        return sorted(verdicts, key=lambda verdict: verdict.index)


def _verdict(outcome: JudgeOutcome, document_id: str, return_reasoning: bool) -> Verdict:
    return Verdict(
        index=outcome.index,
        id=document_id,
        score=min(max(outcome.score, 0.0), 1.0),
        reasoning=outcome.reasoning if return_reasoning else "",
        reasoning_tokens=outcome.reasoning_tokens,
        ended=outcome.ended,
    )
