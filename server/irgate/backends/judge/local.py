"""The in-process judge: Rank1 or one-step sequences on the continuous-batching engine, bridged to asyncio.

Transformers with irgate's own engine (not onnxruntime-genai or llama.cpp, see docs/judge-engine.md
for what was measured): the weights stay exact and the KV cache is plain tensors, so one engine can
batch the documents of every request, share a request's prompt prefix, drop finished rows, score
an answer from logits it already has, stop cancelled work between forwards and score forced
answers from the kept cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from irgate import tracing
from irgate.backends.judge import families, rank1
from irgate.backends.judge.contract import JudgeRequest
from irgate.backends.judge.engine import EngineLimits, EngineStats, JudgeEngine
from irgate.backends.judge.errors import EngineClosed
from irgate.backends.judge.rank1 import FittedPrompt, JudgeEvent, Phase, Rank1Document
from irgate.domain.judging import Verdict
from irgate.backends.judge.sequence import DONE, Action, FinishReason, Rewrite
from irgate.errors import IrgateError

_INLINE_FIT_CHARACTERS = 16_384

Emit = Callable[[JudgeEvent | IrgateError], None]


class _Timeline:
    """When a document reached each stage, for its trace spans once it is judged."""

    def __init__(self) -> None:
        self.trace = tracing.current()
        self.submitted_ns = tracing.now_ns()
        self.admitted_ns = self.prefilled_ns = 0

    def record(self, index: int) -> None:
        now = tracing.now_ns()
        stages = {"judge queue": (self.submitted_ns, self.admitted_ns), "prefill": (self.admitted_ns, self.prefilled_ns or now)}
        if self.prefilled_ns:
            stages["decode"] = (self.prefilled_ns, now)
        tracing.record(self.trace, stages, document=index)


class _Rank1Sequence:
    """One document on the engine under Rank1's policy: reasoning, then the answer or a forced one."""

    wants_logits = False
    rewrite_slack = rank1.FORCED_SLACK_TOKENS

    def __init__(self, judge: LocalJudge, index: int, prompt: FittedPrompt, budget: int, stream: bool, emit: Emit) -> None:
        self._judge = judge
        self._document = Rank1Document(index, prompt, budget, judge.manifest, judge._decode_ids, stream)
        self._emit = emit
        self._timeline = _Timeline()
        self.max_new_tokens = budget
        # A budget of 0 starts forced: the prompt is the forced text, its next token the answer.
        self._forcing = self._document.phase is Phase.FORCING
        self.prompt_ids = judge._encode(self._document.forced_text()) if self._forcing else prompt.ids

    def admitted(self) -> None:
        self._timeline.admitted_ns = tracing.now_ns()

    def advance(self, token: int, scores: Sequence[float], logits: Any) -> Action:
        self._timeline.prefilled_ns = self._timeline.prefilled_ns or tracing.now_ns()
        if self._forcing:  # this step read the forced answer
            return self._send(self._document.forced_answer(scores))
        events = self._document.generated(token, scores)
        if self._document.phase is Phase.FORCING:
            self._forcing = True
            return Rewrite(self._judge._encode(self._document.forced_text()))
        return self._send(events)

    def end(self, reason: FinishReason, error: IrgateError | None) -> None:
        if error is not None:  # a cancelled call has nobody listening
            self._emit(error)

    def _send(self, events: list[JudgeEvent]) -> Action:
        done = self._document.phase is Phase.DONE
        if done:  # spans before the verdict: its caller may end the call's own span once it arrives
            self._timeline.record(self._document.judgement.index)
        for event in events:
            self._emit(event)
        return DONE if done else None


class _OneStepSequence:
    """One document of a one-step judge: its prompt is prefilled and scored, nothing is generated."""

    wants_logits = False
    max_new_tokens = 0
    rewrite_slack = 0

    def __init__(self, judge: LocalJudge, index: int, prompt: FittedPrompt, emit: Emit) -> None:
        self._judge = judge
        self._index = index
        self._prompt = prompt
        self._emit = emit
        self._timeline = _Timeline()
        self.prompt_ids = prompt.ids

    def admitted(self) -> None:
        self._timeline.admitted_ns = tracing.now_ns()

    def advance(self, token: int, scores: Sequence[float], logits: Any) -> Action:
        self._timeline.record(self._index)
        self._emit(families.one_step_verdict(self._judge.manifest, self._index, self._prompt, scores))
        return DONE

    def end(self, reason: FinishReason, error: IrgateError | None) -> None:
        if error is not None:
            self._emit(error)


class LocalJudge:
    """JudgeBackend over a folder made by irgate.models.judge.prepare_judge."""

    def __init__(
        self, folder: Path, threads: int | None = None, device: str | None = None, limits: EngineLimits | None = None
    ) -> None:
        folder = Path(folder).resolve()
        self.engine: JudgeEngine | None = JudgeEngine.load(folder, device=device, threads=threads, limits=limits)
        self.manifest = self.engine.manifest
        self._stats = self.engine.stats
        self.address = f"local:{folder}"
        self.device = str(self.engine.device)
        self._tokenizer = self.engine.tokenizer
        self._decode_ids = rank1.decoder(self._tokenizer)
        # Compute a request's common prompt prefix (template, query, instruction) once for all
        # its documents; the benchmark turns it off to measure what it saves.
        self.share_prefixes = True

    @property
    def busy(self) -> bool:
        """True while the engine holds sequences (running or waiting)."""
        return self.engine is not None and (self._stats.running_rows > 0 or self._stats.waiting_sequences > 0)

    @property
    def stats(self) -> EngineStats:
        return self._stats

    async def ready(self) -> bool:
        """False once closed, or once the engine stopped serving after repeated failed steps."""
        return self.engine is not None and self.engine.ready

    async def close(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            await asyncio.to_thread(engine.close)

    async def judge(self, request: JudgeRequest) -> AsyncIterator[JudgeEvent]:
        engine = self.engine
        if engine is None:
            raise EngineClosed(f"judge {self.manifest.name} is closed")
        if not request.passages:
            return
        # Long passages are tokenised off the event loop; short ones (a millisecond or two) on it,
        # so that calls arriving together reach the engine together and share their first forward.
        if sum(len(p.title) + len(p.text) for p in request.passages) + len(request.query) <= _INLINE_FIT_CHARACTERS:
            prompts = families.fit_request(self.manifest, self._tokenizer, request)
        else:
            prompts = await asyncio.to_thread(families.fit_request, self.manifest, self._tokenizer, request)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[JudgeEvent | IrgateError] = asyncio.Queue()

        def emit(event: JudgeEvent | IrgateError) -> None:
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
        handle = engine.submit(sequences, share_prefix=self.share_prefixes)
        remaining = len(sequences)
        try:
            while remaining:
                event = await events.get()
                if isinstance(event, IrgateError):
                    raise event
                if isinstance(event, Verdict):
                    remaining -= 1
                yield event
        finally:
            handle.cancel()  # a caller that left (cancel, deadline) frees the engine at once

    def _encode(self, text: str) -> list[int]:
        return list(self._tokenizer(text)["input_ids"])

