"""The in-process judge: Rank1 or one-step sequences on the continuous-batching engine, bridged to asyncio.

Why transformers with our own scheduler (measured on a 2-core CPU with SmolLM2-135M, 16
documents, one query, 64-token budget, against a naive per-document generate + scoring forward):
- transformers with a shared-prefix KV cache, batched decoding and scoring from the kept cache:
  4-5x naive with p(true) within 1.5e-6;
- onnxruntime-genai fp32: 3.0-3.3x (its batching mishandles left padding); int4: 6x but p(true)
  off by 0.32, i.e. not the model any more;
- llama.cpp Q4_1: about 4x, p(true) off by 0.02-0.14, and no wheel (source build only).
Transformers keeps the weights exact and hands over the KV cache as tensors, so one scheduler
can batch documents of every request, drop finished ones, score an answer from logits it already
has, stop cancelled work between forwards and score forced answers from the kept cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from irgate import tracing
from irgate.backends.judge import families, rank1
from irgate.backends.judge.contract import JudgeRequest
from irgate.backends.judge.engine import DONE, Action, EngineLimits, JudgeEngine, Rewrite
from irgate.backends.judge.rank1 import Ended, FittedPrompt, JudgeEvent, JudgeOutcome, Judgement
from irgate.errors import ResourceExhausted, Unavailable


_INLINE_FIT_CHARACTERS = 16_384


class _Rank1Sequence:
    """One document on the engine: reasoning under Rank1's stops, then the answer or a forced one."""

    wants_logits = False

    def __init__(self, judge: LocalJudge, index: int, prompt: FittedPrompt, budget: int, stream: bool, emit: Any) -> None:
        self._judge = judge
        self._judgement = Judgement(index, prompt)
        self._budget = budget
        self._stream = stream
        self._emit = emit
        self.max_new_tokens = budget
        self._ended: Ended | None = None
        # The call's trace and when this document reached each stage, for its spans once it is judged.
        self._trace = tracing.current()
        self._submitted_ns = tracing.now_ns()
        self._admitted_ns = self._prefilled_ns = 0
        if budget == 0:  # nothing to reason: the prompt is the forced one, its next token the answer
            self._ended = "forced"
            self.prompt_ids = judge._encode(self._judgement.forced_text(judge.manifest))
        else:
            self.prompt_ids = prompt.ids

    def admitted(self) -> None:
        self._admitted_ns = tracing.now_ns()

    def advance(self, token: int, scores: Sequence[float], logits: Any) -> Action:
        manifest = self._judge.manifest
        self._prefilled_ns = self._prefilled_ns or tracing.now_ns()
        if self._ended is not None:  # this step read the forced answer
            self._finish(rank1.p_true(*scores), self._ended)
            return DONE
        step = self._judgement.feed(token, manifest, self._budget, self._judge._decode_ids)
        if step == "answered":  # the logits that chose the answer token score it
            self._finish(rank1.p_true(*scores), "answered")
            return DONE
        if step == "going":
            if self._stream and (delta := self._judgement.delta(manifest)):
                self._emit(delta)
            return None
        self._ended = rank1.ended_by(step)
        return Rewrite(self._judge._encode(self._judgement.forced_text(manifest)))

    def end(self, reason: str) -> None:
        if reason != "cancelled":  # a cancelled call has nobody listening
            self._emit(reason)

    def _finish(self, score: float, ended: Ended) -> None:
        stages = {"judge queue": (self._submitted_ns, self._admitted_ns), "prefill": (self._admitted_ns, self._prefilled_ns),
                  "decode": (self._prefilled_ns, tracing.now_ns())}
        tracing.record(self._trace, stages, document=self._judgement.index)
        for event in self._judgement.finish(score, ended, self._stream):
            self._emit(event)


class _OneStepSequence:
    """One document of a one-step judge: its prompt is prefilled and scored, nothing is generated."""

    wants_logits = False
    max_new_tokens = 0

    def __init__(self, judge: LocalJudge, index: int, prompt: FittedPrompt, emit: Any) -> None:
        self._judge = judge
        self._index = index
        self._truncated = prompt.truncated
        self._emit = emit
        self.prompt_ids = prompt.ids
        self._trace = tracing.current()
        self._submitted_ns = tracing.now_ns()
        self._admitted_ns = 0

    def admitted(self) -> None:
        self._admitted_ns = tracing.now_ns()

    def advance(self, token: int, scores: Sequence[float], logits: Any) -> Action:
        stages = {"judge queue": (self._submitted_ns, self._admitted_ns), "prefill": (self._admitted_ns, tracing.now_ns())}
        tracing.record(self._trace, stages, document=self._index)
        self._emit(JudgeOutcome(self._index, families.score(self._judge.manifest, *scores), "", 0, "scored", self._truncated))
        return DONE

    def end(self, reason: str) -> None:
        if reason != "cancelled":
            self._emit(reason)


class LocalJudge:
    """JudgeBackend over a folder made by irgate.models.judge.prepare_judge."""

    def __init__(
        self, folder: Path, threads: int | None = None, device: str | None = None, limits: EngineLimits | None = None
    ) -> None:
        folder = Path(folder).resolve()
        self.engine: JudgeEngine | None = JudgeEngine.load(folder, device=device, threads=threads, limits=limits)
        self.manifest = self.engine.manifest
        self.address = f"local:{folder}"
        self.device = str(self.engine.device)
        self._tokenizer = self.engine.tokenizer
        self._decode_ids = rank1.decoder(self._tokenizer)

    @property
    def busy(self) -> bool:
        """True while the engine holds sequences (running or waiting)."""
        engine = self.engine
        return engine is not None and (engine.stats.running_rows > 0 or engine.stats.waiting_sequences > 0)

    async def ready(self) -> bool:
        return self.engine is not None

    async def close(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            await asyncio.to_thread(engine.close)

    async def judge(self, request: JudgeRequest) -> AsyncIterator[JudgeEvent]:
        engine = self.engine
        if engine is None:
            raise Unavailable(f"judge {self.manifest.name} is closed")
        if not request.passages:
            return
        # Long passages are tokenised off the event loop; short ones (a millisecond or two) on it,
        # so that calls arriving together reach the engine together and share their first forward.
        if sum(len(p.title) + len(p.text) for p in request.passages) + len(request.query) <= _INLINE_FIT_CHARACTERS:
            prompts = self._fit(request)
        else:
            prompts = await asyncio.to_thread(self._fit, request)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[JudgeEvent | str] = asyncio.Queue()

        def emit(event: JudgeEvent | str) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop closed: nobody is listening any more
                pass

        sequences: list[_Rank1Sequence] | list[_OneStepSequence]
        if families.one_step(self.manifest):
            sequences = [_OneStepSequence(self, index, prompt, emit) for index, prompt in enumerate(prompts)]
        else:
            sequences = [
                _Rank1Sequence(self, index, prompt, request.budget, request.stream_reasoning, emit)
                for index, prompt in enumerate(prompts)
            ]
        handle = engine.submit(sequences)
        remaining = len(sequences)
        try:
            while remaining:
                event = await events.get()
                if isinstance(event, str):
                    raise _failure(self.manifest.name, event)
                if isinstance(event, JudgeOutcome):
                    remaining -= 1
                yield event
        finally:
            handle.cancel()  # a caller that left (cancel, deadline) frees the engine at once

    def _fit(self, request: JudgeRequest) -> list[FittedPrompt]:
        return [
            families.fit(
                self.manifest, self._tokenizer, request.query, request.instruction, p.title, p.text, request.budget,
                request.max_passage_tokens,
            )
            for p in request.passages
        ]

    def _encode(self, text: str) -> list[int]:
        return list(self._tokenizer(text)["input_ids"])


def _failure(name: str, reason: str) -> Exception:
    if reason == "closed":
        return Unavailable(f"judge {name} was closed while judging")
    if "out of memory" in reason:
        return ResourceExhausted(f"judge {name}: {reason.removeprefix('failed: ')}")
    return Unavailable(f"judge {name} failed: {reason.removeprefix('failed: ')}")
