"""What every judge backend takes and gives: a typed request in, Rank1 events out.

The request is checked and resolved once (core.judge.JudgeService): backends trust its budget
and build each prompt with rank1.fit_prompt, so the in-process and the Triton judge see the
same text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from irgate.backends.judge.rank1 import JudgeEvent
from irgate.models.judge import JudgeManifest


@dataclass(frozen=True)
class PassageText:
    title: str
    text: str


@dataclass(frozen=True)
class JudgeRequest:
    """One judge call: a query (with its instruction) against passages, under one reasoning budget."""

    query: str
    instruction: str
    passages: tuple[PassageText, ...]
    # Reasoning tokens per document, already within the backend's cap; 0 answers at once.
    budget: int
    stream_reasoning: bool = False
    # Most tokens of each passage (title included) the judge reads; None: the manifest's cap.
    max_passage_tokens: int | None = None


@runtime_checkable
class JudgeBackend(Protocol):
    """One reasoning judge behind one call."""

    manifest: JudgeManifest
    # Where the model lives, for Info and logs: "local:/abs/path" or "triton://host:port/model".
    address: str

    def judge(self, request: JudgeRequest) -> AsyncIterator[JudgeEvent]:
        """Outcomes in completion order (reasoning deltas before them when streaming).

        Closing the iterator early (client cancel, deadline) stops the model work within one
        prefill chunk or decode step and frees its capacity.
        """
        ...

    async def ready(self) -> bool:
        """True when a call would be served now (health checks)."""
        ...

    async def close(self) -> None:
        """Stop work in flight and release the model; later calls raise Unavailable."""
        ...
