"""Judging's domain types: what a judge call asks (JudgeRequest) and what it gives back (Verdict,
ReasoningDelta), with how each verdict came about (Ended).

Core builds the request and reads the events; every judge backend (in-process, Triton) takes the
one and produces the others, so core needs no backend module to understand them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Ended(str, enum.Enum):
    """How a verdict came about. A str, so that it compares, hashes and prints as its wire name."""

    ANSWERED = "answered"  # the model said true/false by itself
    FORCED = "forced"  # the reasoning budget ran out and the answer was forced
    FORCED_EOS = "forced_eos"  # the model ended its text (EOS) without an answer and the answer was forced
    SCORED = "scored"  # a one-step judge read its score at the prompt's last position

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class PassageText:
    """A passage as the judge reads it."""

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


@dataclass(frozen=True)
class Verdict:
    """The verdict on one document.

    A backend judges by position and fills the first six fields; the judge service adds the
    document's id and the budget it was judged under."""

    index: int  # position of the document in the request
    score: float  # by the family's rule (Rank1: p(true) at the answer step), in [0, 1]
    reasoning: str  # generated text before the answer (special tokens kept, stop string and EOS dropped)
    reasoning_tokens: int  # tokens generated for this document (the answer token and an EOS included)
    ended: Ended
    truncated: bool = False  # the passage was cut at its end to fit the passage cap or the context
    id: str = ""
    reasoning_budget: int = 0  # the request's budget, capped by the server; 0 for a one-step judge

    @property
    def relevant(self) -> bool:
        return self.score > 0.5


@dataclass(frozen=True)
class ReasoningDelta:
    """New reasoning text of one document; the deltas of a document concatenate to its reasoning."""

    index: int
    text: str


JudgeEvent = Verdict | ReasoningDelta
