"""The judge engine: greedy generation on a causal LM, continuously batched across requests.

Used by the in-process judge (backends.judge.local: Rank1 and one-step sequences) and by the CPU
Triton model of the `tensorrt_llm` contract (plain sequences through `generate`), so both run the
same engine. It knows nothing of gRPC; policies' callbacks run on its thread. Its parts:
- sequence: a request's tokens, computed count and status; the policy protocol (EngineSequence);
- scheduler (pure Python): what each step computes, and why (fairness, budget, prefix sharing);
- runner (torch): the KV buffer with a slot per row and the model forward over it;
- this module: the loop on its own thread that asks the scheduler for a plan, runs it on the
  runner and hands each row's token to its policy. docs/judge-engine.md walks through one step.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from irgate.backends.judge import families
from irgate.backends.judge.errors import EngineClosed, EngineFailed, EngineOutOfMemory, SequenceDeadline
from irgate.backends.judge.scheduler import HEAD, Plan, Scheduler, SchedulerLimits
from irgate.backends.judge.sequence import (
    DONE,
    Action,
    EngineSequence,
    FinishReason,
    Request,
    Rewrite,
    Status,
)
from irgate.errors import InvalidArgument, IrgateError
from irgate.backends.judge.manifest import JudgeManifest

if TYPE_CHECKING:
    import numpy as np
    import torch

    from irgate.backends.judge.runner import SlotRunner

__all__ = ["DONE", "Action", "EngineLimits", "EngineSequence", "EngineStats", "FinishReason", "Handle", "JudgeEngine",
           "Rewrite", "default_device"]


@dataclass(frozen=True)
class EngineLimits:
    """Capacity of the engine; `for_device` gives the measured defaults."""

    # KV columns the buffer may hold: slots in use x the widest row (prompt + most new tokens +
    # its rewrite slack). A row alone always runs.
    max_batch_tokens: int = 65536
    # Rows decoding at once (see benchmarks/README.md for the CPU measurement behind 16).
    max_batch_rows: int = 16
    # Token work of one prefill forward (rows x columns, weighted by the context they attend to).
    prefill_chunk_tokens: int = 256

    def __post_init__(self) -> None:
        for name in ("max_batch_tokens", "max_batch_rows", "prefill_chunk_tokens"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name} must be at least 1, got {getattr(self, name)}")

    @classmethod
    def for_device(
        cls, device: str, max_batch_tokens: int = 0, max_batch_rows: int = 0, prefill_chunk_tokens: int = 0
    ) -> EngineLimits:
        """The defaults for a device ("cpu", "cuda", "cuda:1"), with any non-zero value overriding."""
        defaults = (
            cls(max_batch_tokens=262144, max_batch_rows=256, prefill_chunk_tokens=4096)
            if device.startswith("cuda")
            else cls()
        )
        return cls(
            max_batch_tokens=max_batch_tokens or defaults.max_batch_tokens,
            max_batch_rows=max_batch_rows or defaults.max_batch_rows,
            prefill_chunk_tokens=prefill_chunk_tokens or defaults.prefill_chunk_tokens,
        )

    def scheduler_limits(self, keys_per_token: int) -> SchedulerLimits:
        # A quarter more slots than rows: a request with nothing running passes the row limit.
        return SchedulerLimits(
            max_rows=self.max_batch_rows,
            slots=self.max_batch_rows + max(1, self.max_batch_rows // 4),
            kv_tokens=self.max_batch_tokens,
            step_tokens=self.prefill_chunk_tokens,
            keys_per_token=keys_per_token,
        )


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class EngineStats:
    """Counters for tests, benchmarks and metrics; `on_queue_wait` observes each admission."""

    forward_passes: int = 0
    prefill_tokens: int = 0
    generated_tokens: int = 0
    cancelled_sequences: int = 0
    failed_steps: int = 0
    running_rows: int = 0
    waiting_sequences: int = 0
    on_queue_wait: Callable[[float], None] | None = None


# Seconds an idle engine waits after the first arrival for others to join it: calls that arrive
# together (a fan-out of single-document calls) start as one forward, as Triton's max_queue_delay.
_ADMISSION_WINDOW_S = 0.005
# Steps failing one after another before the engine stops serving (reports not ready).
_FAILURES_BEFORE_BROKEN = 3


class Handle:
    """Cancels the sequences of one `submit`; the engine ends them at its next step."""

    def __init__(self, engine: JudgeEngine, requests: list[Request]) -> None:
        self._engine = engine
        self._requests = requests

    def cancel(self) -> None:
        for request in self._requests:
            request.cancelled = True
        with self._engine._lock:
            self._engine._lock.notify()


class JudgeEngine:
    """A causal LM under one continuous-batching loop. `JudgeEngine.load(folder)` takes a prepared
    judge folder (weights, tokenizer, manifest.json)."""

    def __init__(self, model: Any, tokenizer: Any, manifest: JudgeManifest, device: torch.device,
                 limits: EngineLimits, runner: SlotRunner, head_ids: Sequence[int] = ()) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.manifest = manifest
        self.device = device
        self.limits = limits
        self.stats = EngineStats()
        self.runner = runner
        self.scheduler = Scheduler(limits.scheduler_limits(runner.keys_per_token()), head_ids)
        self._lock = threading.Condition()
        self._inbox: list[tuple[list[Request], bool]] = []
        self._arrivals = 0
        self._closed = False
        self._broken: EngineFailed | None = None
        self._failures = 0
        self._thread = threading.current_thread()  # the one that runs the loop (see start)

    @classmethod
    def load(
        cls, folder: Path, *, device: str | None = None, threads: int | None = None, limits: EngineLimits | None = None
    ) -> JudgeEngine:
        """Loads the model, and runs every forward after, on the engine's own thread: a second
        thread running torch in a process gets an OpenMP pool of its own, which slowed the judge
        benchmark by about 20% on a 2-core CPU."""
        return cls.start(lambda: cls._build(Path(folder), device, threads, limits))

    @staticmethod
    def start(build: Callable[[], JudgeEngine]) -> JudgeEngine:
        """Builds an engine on a new thread, which then runs its loop; returns once it is built."""
        built: Future[JudgeEngine] = Future()

        def serve() -> None:
            try:
                engine = build()
            except BaseException as error:  # noqa: BLE001 - raised again in the caller's thread
                built.set_exception(error)
                return
            engine._thread = threading.current_thread()
            built.set_result(engine)
            engine._run()

        threading.Thread(target=serve, name="judge-engine", daemon=True).start()
        return built.result()

    @classmethod
    def _build(cls, folder: Path, device: str | None, threads: int | None, limits: EngineLimits | None) -> JudgeEngine:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
        from transformers.utils import logging as hf_logging

        from irgate.backends.judge.runner import SlotRunner

        folder = folder.resolve()
        manifest = JudgeManifest.load(folder)
        target = torch.device(device or default_device())
        cores = os.cpu_count() or 1
        # Torch's pool is process-wide; cap it so the embedder and the index keep cores.
        torch.set_num_threads(min(threads or cores, cores))
        tokenizer = AutoTokenizer.from_pretrained(folder)
        # fp32 on CPU (bf16 matmuls are slow there); the checkpoint's own dtype on a GPU.
        dtype = torch.float32 if target.type == "cpu" else "auto"
        # No "Loading weights" progress bar: in a server's log it is a line per redraw.
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(target).eval()
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        if target.type == "cpu":
            # An fp32 checkpoint's tensors are views of the mmapped safetensors file: page cache,
            # which the kernel may drop under memory pressure and fault back in mid-forward (steps
            # 3-15x slower on a loaded machine, see benchmarks/README.md). Own copies stay resident.
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.data = parameter.data.clone()
        if any(getattr(layer, "is_sliding", False) for layer in DynamicCache(config=model.config).layers):
            # A slot holds every column of its row; a sliding window would need another mask.
            raise InvalidArgument(f"{folder}: sliding-window attention is not supported by the judge engine")
        runner = SlotRunner(model, target, manifest.pad_token_id, (manifest.true_token_id, manifest.false_token_id))
        head = families.shared_head(manifest, tokenizer)
        if head:  # every prompt starts with it: computed once, copied into each slot
            with torch.inference_mode():
                runner.reserve(1, len(head))
                runner.forward([(0, head, 0)], [False])
                runner.store(HEAD, 0, len(head))
                runner.reserve(0, 0)
        return cls(model, tokenizer, manifest, target, limits or EngineLimits.for_device(target.type), runner, head)

    # ---- public API (any thread) ---------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """False once closed, or once steps kept failing."""
        return not self._closed and self._broken is None

    def submit(self, sequences: Sequence[EngineSequence], group: Hashable | None = None, *,
               deadline: float | None = None, share_prefix: bool = True) -> Handle:
        """Queue the sequences of one request; `group` is the fairness key (a new one by default);
        `deadline` (time.monotonic() seconds) ends unfinished ones with SequenceDeadline; with
        `share_prefix`, the longest common prefix of their prompts is computed once."""
        group = object() if group is None else group
        now = time.monotonic()
        requests = []
        for seq in sequences:
            if not seq.prompt_ids:
                raise InvalidArgument("a sequence needs at least one prompt token")
            cost = len(seq.prompt_ids) + seq.max_new_tokens + seq.rewrite_slack
            requests.append(Request(seq, group, 0, now, deadline, cost, list(seq.prompt_ids)))
        with self._lock:
            if self._closed:
                raise EngineClosed("the judge engine is closed")
            if self._broken is not None:
                raise self._broken
            for request in requests:
                self._arrivals += 1
                request.arrival = self._arrivals
            self._inbox.append((requests, share_prefix))
            self.stats.waiting_sequences += len(requests)
            self._lock.notify()
        return Handle(self, requests)

    def generate(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        *,
        end_id: int,
        on_token: Callable[[int, np.ndarray | None], None],
        on_finish: Callable[[str | IrgateError], None],
        return_logits: bool = False,
        group: Hashable | None = None,
    ) -> Handle:
        """Plain greedy generation (TensorRT-LLM's contract): each token with the logits that
        chose it; `on_finish` gets "length" after `max_new_tokens`, "end_id" at `end_id` (not
        passed to on_token), "cancelled", or the error that ended it (EngineClosed, EngineFailed...)."""
        return self.submit([_Generation(list(prompt_ids), max_new_tokens, end_id, on_token, on_finish, return_logits)], group)

    def close(self) -> None:
        """Ends every sequence (EngineClosed) and stops the thread."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join()

    # ---- the loop (the engine's thread) ----------------------------------------------------------

    def _run(self) -> None:
        import torch

        try:
            with torch.inference_mode():  # grad mode is per thread: set it here
                while self._step():
                    pass
        finally:
            # Whatever ended the loop, nobody is left waiting on it.
            with self._lock:
                self._closed = True
                arrived, self._inbox = self._inbox, []
                self.stats.running_rows = self.stats.waiting_sequences = 0
            closed = EngineClosed("the judge engine was closed while judging")
            for request in [request for requests, _ in arrived for request in requests] + self.scheduler.requests():
                self._tell(request, FinishReason.CLOSED, closed)

    def _step(self) -> bool:
        """One plan, run; False once the engine is closed."""
        with self._lock:
            idle = not self._inbox and self.scheduler.idle
            while not self._closed and not self._inbox and self.scheduler.idle:
                self.runner.reserve(0, 0)  # an idle engine holds no KV memory
                self._lock.wait()
            if self._closed:
                return False
        if idle:
            time.sleep(_ADMISSION_WINDOW_S)
        plan = None
        try:
            with self._lock:
                arrived, self._inbox = self._inbox, []
            for requests, share in arrived:
                self.scheduler.add(requests, share)
            plan = self.scheduler.schedule(time.monotonic())
            self._execute(plan)
            self._failures = 0
        except Exception as error:  # noqa: BLE001 - the calls in flight end with it, typed
            self._fail(error)
        finally:
            with self._lock:
                self.stats.running_rows = len(self.scheduler.running)
                self.stats.waiting_sequences = self.scheduler.waiting_count + sum(len(r) for r, _ in self._inbox)
        return True

    def _execute(self, plan: Plan) -> None:
        for request in plan.ended:
            reason = request.finish_reason
            assert reason is not None
            self._tell(request, reason, SequenceDeadline("the judge call's deadline passed") if reason is FinishReason.DEADLINE else None)
        for key in plan.released:
            self.runner.drop(key)
        now = time.monotonic()
        for request in plan.admitted:
            if self.stats.on_queue_wait is not None:
                self.stats.on_queue_wait(now - request.submitted)
            request.policy.admitted()
        if not plan.chunks:
            return
        self.runner.reserve(*plan.capacity)
        for request, key, length in plan.restores:
            self.runner.restore(key, request.slot, length)
        rows = [(chunk.request.slot, chunk.request.token_ids[chunk.start : chunk.end], chunk.start) for chunk in plan.chunks]
        wanted = [chunk.request.policy.wants_logits and chunk.end == len(chunk.request.token_ids) for chunk in plan.chunks]
        self.stats.prefill_tokens += sum(
            chunk.end - chunk.start for chunk in plan.chunks if chunk.request.status is Status.PREFILLING
        )
        tokens, scores, logits = self.runner.forward(rows, wanted)
        self.stats.forward_passes += 1
        for key, request, length in plan.stores:
            self.runner.store(key, request.slot, length)
        for k, chunk in enumerate(plan.chunks):
            request = chunk.request
            self.scheduler.computed(request, chunk.end)
            if not request.pending:
                self._advance(request, tokens[k], scores[k], logits.get(k))

    def _advance(self, request: Request, token: int, scores: list[float], logits: np.ndarray | None) -> None:
        """The row's policy sees its token: the row goes on decoding, rewrites itself, or leaves."""
        try:
            action = request.policy.advance(token, scores, logits)
        except Exception as error:  # noqa: BLE001 - a policy's failure ends its own row only
            self._finish(request, FinishReason.FAILED, EngineFailed(f"the judge sequence failed: {error}"))
            return
        if action is DONE:
            self.scheduler.finish(request, FinishReason.COMPLETED)
            return
        if isinstance(action, Rewrite):
            request.rewrite(action.ids)
        else:
            self.stats.generated_tokens += 1
            request.token_ids.append(token)
        request.status = Status.DECODING
        if len(request.token_ids) > request.cost:  # past the columns reserved for it
            self._finish(request, FinishReason.FAILED,
                         EngineFailed(f"the judge sequence outgrew its {request.cost} reserved tokens"))

    def _fail(self, error: Exception) -> None:
        """A step raised: every call with a row in flight ends with the typed error (their slots
        may hold half-written columns); waiting calls are served next, unless steps keep failing."""
        import torch

        self.stats.failed_steps += 1
        self._failures += 1
        if isinstance(error, torch.OutOfMemoryError):
            failure: EngineFailed | EngineOutOfMemory = EngineOutOfMemory(
                f"the judge ran out of memory ({error}); lower --judge-max-batch-tokens")
        else:
            failure = EngineFailed(f"the judge model step failed: {type(error).__name__}: {error}")
        groups = {request.group for request in self.scheduler.running}
        if self._failures >= _FAILURES_BEFORE_BROKEN:
            with self._lock:
                self._broken = EngineFailed(f"the judge stopped serving after {self._failures} failed steps: {failure}")
                arrived, self._inbox = self._inbox, []
            for requests, share in arrived:
                self.scheduler.add(requests, share)
            groups = None  # every call
        for request in self.scheduler.requests(groups):
            self._finish(request, FinishReason.FAILED, failure)

    def _finish(self, request: Request, reason: FinishReason, error: IrgateError | None) -> None:
        self.scheduler.finish(request, reason)
        self._tell(request, reason, error)

    def _tell(self, request: Request, reason: FinishReason, error: IrgateError | None) -> None:
        if reason is FinishReason.CANCELLED:
            self.stats.cancelled_sequences += 1
        try:
            request.policy.end(reason, error)
        except Exception:  # noqa: BLE001,S110 - a listener that went away must not stop the engine
            pass


@dataclass(eq=False)
class _Generation:
    """TensorRT-LLM-style plain greedy generation."""

    prompt_ids: list[int]
    max_new_tokens: int
    end_id: int
    on_token: Callable[[int, Any], None]
    on_finish: Callable[[str | IrgateError], None]
    wants_logits: bool
    produced: int = 0
    rewrite_slack = 0  # it never rewrites

    def advance(self, token: int, scores: Sequence[float], logits: np.ndarray | None) -> Action:
        if token == self.end_id:
            self.on_finish("end_id")
            return DONE
        self.produced += 1
        self.on_token(token, logits)
        if self.produced >= self.max_new_tokens:
            self.on_finish("length")
            return DONE
        return None

    def admitted(self) -> None:
        """Plain generation keeps no timeline."""

    def end(self, reason: FinishReason, error: IrgateError | None) -> None:
        self.on_finish(error if error is not None else str(reason))
