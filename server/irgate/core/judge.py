"""Judge pipeline: resolve documents -> the judge family's prompts -> the judge backend -> verdicts.

Used by the Judge RPCs and by the rerank stage of Search, so both judge exactly the same text.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from irgate.backends.judge import families
from irgate.backends.judge.contract import JudgeBackend, JudgeRequest, PassageText
from irgate.backends.judge.rank1 import Ended, JudgeOutcome, ReasoningDelta
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
    ended: Ended
    truncated: bool  # the passage was cut at its end to fit the judge's context
    reasoning_budget: int  # the budget this document was judged under (the request's, capped)

    @property
    def relevant(self) -> bool:
        return self.score > 0.5


@dataclass
class JudgeCounts:
    """What the judge has done, for metrics."""

    verdicts: dict[str, int] = field(default_factory=dict)  # by ending
    reasoning_tokens: int = 0


@dataclass(frozen=True)
class Reasoning:
    index: int
    text: str


class JudgeService:
    def __init__(
        self,
        backend: JudgeBackend,
        store: CollectionStore,
        max_documents: int,
        max_reasoning_tokens: int,
        max_passage_tokens: int = 0,
    ):
        self.backend = backend
        self._store = store
        self.max_documents = max_documents
        self.counts = JudgeCounts()
        manifest = backend.manifest
        # The server's cap: the manifest's, lowered further by --max-reasoning-tokens. It is also
        # the one default: a request that does not set a budget reasons up to the cap, as Rank1 does.
        # A one-step judge's manifest caps it at 0: a budget in a request is accepted and reported
        # as not applicable (Verdict.reasoning_budget 0), never used.
        self.max_reasoning_tokens = min(max_reasoning_tokens, manifest.max_reasoning_tokens)
        # The passage cap: the manifest's family default unless --judge-max-passage-tokens sets
        # one; no passage can be longer than the context anyway.
        self.max_passage_tokens = min(max_passage_tokens or manifest.max_passage_tokens, manifest.max_context_tokens)

    def budget(self, requested: int | None) -> int:
        """The budget a request gets: the cap when unset, and never more than the cap."""
        return self.max_reasoning_tokens if requested is None else min(requested, self.max_reasoning_tokens)

    def passage_cap(self, requested: int | None, field: str = "max_passage_tokens") -> int:
        """The passage cap a request gets: the server's when unset; a request may only lower it."""
        if requested is None:
            return self.max_passage_tokens
        if not 1 <= requested <= self.max_passage_tokens:
            raise InvalidArgument(
                f"{field} is {requested}; it must be between 1 and the server's cap, {self.max_passage_tokens} "
                "(leave it unset for the cap)",
                field=field,
            )
        return requested

    async def resolve(self, passages: Sequence[Passage], collection: str) -> list[Passage]:
        """Fills in the text of documents given by id."""
        wanted = [passage.id for passage in passages if passage.from_collection]
        if not wanted:
            return list(passages)
        if not collection:
            raise InvalidArgument("documents are given by id but no collection is named; set collection", field="collection")
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
        max_reasoning_tokens: int | None,
        *,
        return_reasoning: bool = False,
        stream_reasoning: bool = False,
        collection: str = "",
        max_passage_tokens: int | None = None,
    ) -> AsyncIterator[Verdict | Reasoning]:
        """Verdicts in completion order; reasoning deltas before them when `stream_reasoning`.

        `max_reasoning_tokens` and `max_passage_tokens` None take the server's caps."""
        if not 1 <= len(passages) <= self.max_documents:
            raise InvalidArgument(f"documents has {len(passages)} entries; send 1 to {self.max_documents}", field="documents")
        families.check_instruction(self.backend.manifest, instruction)
        passage_cap = self.passage_cap(max_passage_tokens)
        resolved = await self.resolve(passages, collection)
        request = JudgeRequest(
            query=query,
            instruction=instruction,
            passages=tuple(PassageText(passage.title, passage.text) for passage in resolved),
            budget=self.budget(max_reasoning_tokens),
            stream_reasoning=stream_reasoning,
            max_passage_tokens=passage_cap,
        )
        events = self.backend.judge(request)
        try:
            async for event in events:
                if isinstance(event, ReasoningDelta):
                    yield Reasoning(index=event.index, text=event.text)
                else:
                    self.counts.verdicts[event.ended] = self.counts.verdicts.get(event.ended, 0) + 1
                    self.counts.reasoning_tokens += event.reasoning_tokens
                    yield _verdict(event, resolved[event.index].id, return_reasoning, request.budget)
        finally:
            await events.aclose()  # a caller that went away stops the model work

    async def judge_all(
        self,
        query: str,
        instruction: str,
        passages: Sequence[Passage],
        max_reasoning_tokens: int | None,
        *,
        return_reasoning: bool = False,
        collection: str = "",
        max_passage_tokens: int | None = None,
    ) -> list[Verdict]:
        """Every verdict, in request order."""
        events = self.judge(
            query,
            instruction,
            passages,
            max_reasoning_tokens,
            return_reasoning=return_reasoning,
            collection=collection,
            max_passage_tokens=max_passage_tokens,
        )
        verdicts = [event async for event in events if isinstance(event, Verdict)]
        return sorted(verdicts, key=lambda verdict: verdict.index)


def _verdict(outcome: JudgeOutcome, document_id: str, return_reasoning: bool, budget: int) -> Verdict:
    return Verdict(
        index=outcome.index,
        id=document_id,
        score=min(max(outcome.score, 0.0), 1.0),
        reasoning=outcome.reasoning if return_reasoning else "",
        reasoning_tokens=outcome.reasoning_tokens,
        ended=outcome.ended,
        truncated=outcome.truncated,
        reasoning_budget=budget,
    )
