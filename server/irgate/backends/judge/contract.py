"""What every judge backend takes and gives, and what the server reads of it: a typed request in
(irgate.domain.judging.JudgeRequest), verdicts and reasoning deltas out.

The request is checked and resolved once (core.judge.JudgeService): backends trust its budget
and build each prompt with families.fit, so the in-process and the Triton judge see the same text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from irgate.backends.judge.manifest import JudgeManifest
from irgate.domain.judging import JudgeEvent, JudgeRequest, PassageText

if TYPE_CHECKING:
    from irgate.backends.judge.engine import EngineStats

# The request types, as backends and their tests import them.
__all__ = ["JudgeBackend", "JudgeRequest", "PassageText"]


@runtime_checkable
class JudgeBackend(Protocol):
    """One reasoning judge behind one call."""

    manifest: JudgeManifest
    # Where the model lives, for Info and logs: "local:/abs/path" or "triton://host:port/model".
    address: str

    @property
    def busy(self) -> bool:
        """True while the judge holds work of a call (the irgate_judge_busy metric)."""
        ...

    @property
    def stats(self) -> EngineStats | None:
        """The in-process engine's counters (metrics read them, and the server sets their
        `on_queue_wait`), kept after close; None where the model runs in another server."""
        ...

    def judge(self, request: JudgeRequest) -> AsyncIterator[JudgeEvent]:
        """Verdicts in completion order (reasoning deltas before them when streaming).

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
