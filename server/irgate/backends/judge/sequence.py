"""A sequence on the judge engine: its tokens, how many of them are in its KV slot, and its status.

Pure Python (no torch), shared by the scheduler, the runner's caller and the policies that drive
sequences (backends.judge.local, the Triton CPU model). A sequence's life:

    WAITING --admitted--> PREFILLING --last prompt token computed--> DECODING --> FINISHED

`token_ids` is everything the sequence has (prompt, then each chosen token, or a rewrite); its
first `num_computed_tokens` have their keys and values in the sequence's slot, in order (slot column
j holds token j). What is left to compute is `token_ids[num_computed_tokens:]`: a prompt tail while
PREFILLING, the last chosen token (or a rewritten tail) while DECODING.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    import numpy as np

    from irgate.errors import IrgateError


class Status(enum.Enum):
    WAITING = "waiting"  # queued, no slot yet
    PREFILLING = "prefilling"  # has a slot; its prompt is being computed
    DECODING = "decoding"  # its policy has seen a token; one token (or a rewritten tail) per step
    FINISHED = "finished"


class FinishReason(enum.StrEnum):
    COMPLETED = "completed"  # its policy said DONE
    CANCELLED = "cancelled"  # its caller left
    DEADLINE = "deadline"  # its deadline passed
    CLOSED = "closed"  # the engine was closed
    FAILED = "failed"  # a step (or its own policy) raised


@dataclass(frozen=True)
class Rewrite:
    """Replace the sequence's tokens with `ids`; it keeps the computed tokens they start with."""

    ids: list[int]


class _Done:
    def __repr__(self) -> str:
        return "DONE"


DONE: Final = _Done()
Action = Rewrite | _Done | None  # None: go on with the chosen token


class EngineSequence(Protocol):
    """What the engine drives: a prompt and a policy that sees every chosen token."""

    prompt_ids: list[int]
    max_new_tokens: int
    wants_logits: bool  # pass the full logits row to `advance` (costly: a vocabulary per token)
    rewrite_slack: int  # most tokens a Rewrite may add past prompt + max_new_tokens (KV reserved for it)

    def advance(self, token: int, scores: Sequence[float], logits: np.ndarray | None) -> Action:
        """The greedy token of this step, the logits of the engine's score ids, and (when wanted)
        the whole logits row; returns what to do next."""
        ...

    def admitted(self) -> None:
        """The engine gave the sequence a slot: its prompt is computed from now on."""
        ...

    def end(self, reason: FinishReason, error: IrgateError | None) -> None:
        """The engine stopped the sequence (never called after `advance` returned DONE); `error`
        is what its caller should raise (None when cancelled: nobody is listening)."""
        ...


@dataclass(eq=False)
class Request:
    """One submitted sequence as the engine tracks it."""

    policy: EngineSequence
    group: Hashable  # the fairness key: the sequences of one call share it
    arrival: int  # submission order, for ties
    submitted: float  # monotonic seconds
    deadline: float | None = None  # monotonic seconds
    # Prompt + most new tokens + the policy's slack for a rewrite: the KV columns it may need.
    cost: int = 0
    token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    status: Status = Status.WAITING
    finish_reason: FinishReason | None = None
    slot: int = -1
    admission: int = 0  # the scheduler step that admitted it
    cancelled: bool = False  # set from any thread; the scheduler acts on it at its next step

    @property
    def pending(self) -> int:
        """Tokens still to compute."""
        return len(self.token_ids) - self.num_computed_tokens

    def rewrite(self, ids: list[int]) -> None:
        """The tokens become `ids`: the computed ones they start with stay (their KV is right),
        the rest is computed again; at least the last id is, so its logits come out."""
        common = min(common_prefix(self.token_ids[: self.num_computed_tokens], ids), len(ids) - 1)
        self.token_ids = list(ids)
        self.num_computed_tokens = common


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
