"""Judge pipeline: resolve documents -> the judge backend (which builds each family's prompts) -> verdicts.

Used by the Judge RPCs and by the rerank stage of Search, so both judge exactly the same text.
The judge's rules that do not depend on its family are checked here, once for both: that the
server has a judge at all, how many documents one call may judge, the reasoning budget and the
passage cap a request gets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from irgate.core.index import Index
from irgate.domain.judging import Ended, JudgeRequest, PassageText, ReasoningDelta, Verdict
from irgate.errors import FailedPrecondition, InvalidArgument

if TYPE_CHECKING:  # the protocol every judge backend meets; core depends on no backend module
    from irgate.backends.judge.contract import JudgeBackend


@dataclass(frozen=True)
class Passage:
    """A document to judge: inline (`text` set) or by `id` in the request's collection."""

    id: str
    text: str = ""
    title: str = ""
    from_collection: bool = False


@dataclass(frozen=True)
class JudgeCall:
    """What one judge call asks for, as the Judge RPCs and Search's rerank stage give it.
    `max_reasoning_tokens` and `max_passage_tokens` None take the server's caps."""

    query: str
    instruction: str
    passages: Sequence[Passage]
    max_reasoning_tokens: int | None = None
    return_reasoning: bool = False
    collection: str = ""  # where documents given by id are read
    max_passage_tokens: int | None = None


@dataclass
class JudgeCounts:
    """What the judge has done, for metrics."""

    verdicts: dict[str, int] = field(default_factory=dict)  # by ending
    reasoning_tokens: int = 0


class JudgeService:
    def __init__(
        self,
        backend: JudgeBackend,
        store: Index,
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

    async def judge(self, call: JudgeCall, *, stream_reasoning: bool = False) -> AsyncIterator[Verdict | ReasoningDelta]:
        """Verdicts in completion order; reasoning deltas before them when `stream_reasoning`."""
        if not 1 <= len(call.passages) <= self.max_documents:
            raise InvalidArgument(
                f"documents has {len(call.passages)} entries; send 1 to {self.max_documents}", field="documents")
        passage_cap = self.passage_cap(call.max_passage_tokens)
        resolved = await self.resolve(call.passages, call.collection)
        request = JudgeRequest(
            query=call.query,
            instruction=call.instruction,
            passages=tuple(PassageText(passage.title, passage.text) for passage in resolved),
            budget=self.budget(call.max_reasoning_tokens),
            stream_reasoning=stream_reasoning,
            max_passage_tokens=passage_cap,
        )
        events = self.backend.judge(request)
        try:
            async for event in events:
                if isinstance(event, ReasoningDelta):
                    yield event
                    continue
                ended = Ended(event.ended)
                self.counts.verdicts[ended.value] = self.counts.verdicts.get(ended.value, 0) + 1
                self.counts.reasoning_tokens += event.reasoning_tokens
                yield replace(
                    event, id=resolved[event.index].id, ended=ended, reasoning=event.reasoning if call.return_reasoning else "",
                    reasoning_budget=request.budget,
                )
        finally:
            await events.aclose()  # a caller that went away stops the model work

    async def judge_all(self, call: JudgeCall) -> list[Verdict]:
        """Every verdict, in request order."""
        verdicts = [event async for event in self.judge(call) if isinstance(event, Verdict)]
        return sorted(verdicts, key=lambda verdict: verdict.index)


def require_judge(judge: JudgeService | None, what: str, remedy: str) -> JudgeService:
    """The server's judge; FAILED_PRECONDITION, saying what cannot be done and what to do instead,
    when the server runs without one."""
    if judge is None:
        raise FailedPrecondition(f"this server runs without a judge, so it cannot {what}; {remedy}")
    return judge
