"""One scheduler for greedy generation on a causal LM: continuous batching across requests.

Used by the in-process judge (backends.judge.local, Rank1 sequences) and by the CPU Triton
model of the `tensorrt_llm` contract (plain sequences through `generate`), so both run the same
scheduler. It knows nothing of gRPC or of irgate's server; callbacks run on its own thread.

How a step is chosen (one model forward at a time, on one worker thread):
- Admission: sequences wait per group (one group per request) and are admitted round-robin
  across groups while the KV budget (prompt + new tokens of every running sequence) and the
  row limit allow, so a small request is not starved behind a large one.
- Prefill: admitted sequences are cut into jobs of similar length, trading padding against the
  fixed cost of a forward; a job's prompts run in chunks of at most `prefill_chunk_tokens`
  (weighted by the attention over the context already cached), so a cancellation, a deadline
  or a newly arrived request waits for at most one chunk. Jobs of different groups take turns;
  a new request's prefill and older requests' decode steps alternate.
- Decode: every running sequence advances one token per step; finished ones leave the batch
  and their capacity is free at once.
- Rewrites (Rank1's forced answer): a sequence may replace the tail of its tokens. Its row keeps
  the cached columns the new tokens share (the others are masked out) and feeds the rest one
  per decode step alongside the rows still generating, which costs almost nothing (on a CPU a
  step costs about the same for 2 rows as for 16); once no row is generating, what is left runs
  in one forward.

KV layout: one cache per batch, rows left padded; a 2D mask marks each row's own columns and
explicit position ids keep every row's positions its own, so rows of any length share a batch.
Every prompt starts with the judge template's constant text: its KV is computed once and copied
into each job instead of being run again.
"""

from __future__ import annotations

import inspect
import itertools
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from irgate.errors import InvalidArgument, ResourceExhausted
from irgate.models.judge import JudgeManifest

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass(frozen=True)
class EngineLimits:
    """Capacity of the engine; `for_device` gives the measured defaults."""

    # KV tokens reserved by running sequences (prompt + most new tokens + forced slack each).
    max_batch_tokens: int = 65536
    # Sequences decoding at once. On a 2-core CPU a step of 16 rows cost about 2x a step of 1 and
    # one of 32 about 3.5x, so 16 keeps a small call behind a big one within about 1.5x its time alone.
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


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Rewrite:
    """Replace a sequence's tokens with `ids` (it keeps what they share with its cache)."""

    ids: list[int]


class _Done:
    pass


DONE: Final = _Done()
Action = Rewrite | _Done | None  # None: go on with the chosen token


class EngineSequence(Protocol):
    """What the engine drives: a prompt and a policy that sees every chosen token."""

    prompt_ids: list[int]
    max_new_tokens: int
    wants_logits: bool  # pass the full logits row to `advance` (costly: a vocabulary per token)

    def advance(self, token: int, scores: Sequence[float], logits: np.ndarray | None) -> Action:
        """The greedy token of this step, the logits of the engine's score ids, and (when wanted)
        the whole logits row; returns what to do next."""
        ...

    def admitted(self) -> None:
        """The engine gave the sequence a row: its prompt is prefilled from now on."""
        ...

    def end(self, reason: str) -> None:
        """The engine stopped the sequence: "cancelled", "closed" or "failed: <message>"."""
        ...


@dataclass
class EngineStats:
    """Counters for tests, benchmarks and metrics; `on_queue_wait` observes each admission."""

    forward_passes: int = 0
    prefill_tokens: int = 0
    generated_tokens: int = 0
    cancelled_sequences: int = 0
    running_rows: int = 0
    waiting_sequences: int = 0
    on_queue_wait: Callable[[float], None] | None = None


@dataclass(eq=False)
class _Row:
    seq: EngineSequence
    group: Hashable
    cost: int
    submitted: float
    tokens: list[int] = field(default_factory=list)  # ids whose KV is in the row's cache, in order
    pending: list[int] = field(default_factory=list)  # ids to run next (a prompt tail, a rewrite or the last token)
    admission: int = 0  # the admission round that started the row
    cancelled: bool = False
    finished: bool = False


@dataclass(eq=False)
class _Part:
    """Rows with their own cache: a prefill job or the decode batch."""

    rows: list[_Row]
    cache: Any  # kv_cache.growing_cache; each layer's keys/values are [rows, heads, columns, head_dim]
    mask: torch.Tensor  # [rows, width]; 1 where a column holds the row's own token
    positions: torch.Tensor  # [rows]; the position of each row's next token
    # Prefill: the rows' pending ids left padded to one width, and how many columns ran.
    width: int = 0
    done: int = 0


# Seconds an idle engine waits after the first arrival for others to join it.
_ADMISSION_WINDOW_S = 0.005
# The fixed cost of a forward in prefill tokens, as a share of a chunk: measured on a 2-core
# CPU, a forward costs about as much as 64 more prompt tokens (with 256-token chunks).
_FORWARD_COST_CHUNKS = 0.25


class Handle:
    """Cancels the sequences of one `submit`."""

    def __init__(self, engine: JudgeEngine, rows: list[_Row]) -> None:
        self._engine = engine
        self._rows = rows

    def cancel(self) -> None:
        self._engine._cancel(self._rows)


class JudgeEngine:
    """A causal LM under one continuous-batching scheduler thread.

    `JudgeEngine.load(folder)` takes a prepared judge folder (weights, tokenizer, manifest.json).
    """

    def __init__(self, model: Any, tokenizer: Any, manifest: JudgeManifest, device: torch.device, limits: EngineLimits):
        import torch

        self.model = model
        self.tokenizer = tokenizer
        self.manifest = manifest
        self.device = device
        self.limits = limits
        self.stats = EngineStats()
        self._score_ids = torch.tensor([manifest.true_token_id, manifest.false_token_id], device=device)
        self._cache_argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        config = model.config
        # Weights vs attention cost of one prefill token: how many cached keys cost as much as
        # the weights, so that chunks over a long context shrink and stay equally fast.
        params = sum(parameter.numel() for parameter in model.parameters())
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        self._keys_per_token_cost = max(1, (2 * params) // (4 * config.num_hidden_layers * heads * head_dim))
        self._lock = threading.Condition()
        self._waiting: OrderedDict[Hashable, deque[_Row]] = OrderedDict()
        self._jobs: list[_Part] = []
        self._admissions = itertools.count(1)
        self._batch: _Part | None = None
        self._reserved = 0
        self._rows = 0
        self._served: dict[Hashable, int] = {}
        self._tick = itertools.count()
        self._running: dict[Hashable, int] = {}  # admitted, unfinished sequences per group
        self._outstanding: dict[Hashable, int] = {}  # waiting + running per group, as of the last admission
        self._closed = False
        self._prefix_ids: list[int] = []
        self._prefix: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._prefill_turn = True
        self._thread = threading.current_thread()  # the one that runs the scheduler (see load)

    @classmethod
    def load(
        cls, folder: Path, *, device: str | None = None, threads: int | None = None, limits: EngineLimits | None = None
    ) -> JudgeEngine:
        """Loads the model, and runs every forward after, on the engine's own thread: a second
        thread running torch in a process gets an OpenMP pool of its own, and on a 2-core CPU the
        16-document judge benchmark took about 20% longer when another thread had loaded the model."""
        built: Future[JudgeEngine] = Future()

        def serve() -> None:
            try:
                engine = cls._build(Path(folder), device, threads, limits)
            except BaseException as error:  # noqa: BLE001 - raised again in the caller's thread
                built.set_exception(error)
                return
            built.set_result(engine)
            engine._run()

        threading.Thread(target=serve, name="judge-engine", daemon=True).start()
        return built.result()

    @classmethod
    def _build(cls, folder: Path, device: str | None, threads: int | None, limits: EngineLimits | None) -> JudgeEngine:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
        from transformers.utils import logging as hf_logging

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
        if any(getattr(layer, "is_sliding", False) for layer in DynamicCache(config=model.config).layers):
            # Rows are masked by column; a sliding window would drop columns a row still needs.
            raise InvalidArgument(f"{folder}: sliding-window attention is not supported by the judge engine")
        engine = cls(model, tokenizer, manifest, target, limits or EngineLimits.for_device(target.type))
        engine._cache_prefix()
        return engine

    # ---- public API (any thread) ---------------------------------------------------------------

    def submit(self, sequences: Sequence[EngineSequence], group: Hashable | None = None) -> Handle:
        """Queue sequences of one request; `group` is the fairness key (a new one by default)."""
        group = object() if group is None else group
        now = time.monotonic()
        rows = []
        for seq in sequences:
            if not seq.prompt_ids:
                raise InvalidArgument("a sequence needs at least one prompt token")
            cost = len(seq.prompt_ids) + seq.max_new_tokens + 16
            rows.append(_Row(seq, group, cost, now, pending=list(seq.prompt_ids)))
        with self._lock:
            if self._closed:
                raise ResourceExhausted("the judge engine is closed")
            self._waiting.setdefault(group, deque()).extend(rows)
            self.stats.waiting_sequences += len(rows)
            self._lock.notify()
        return Handle(self, rows)

    def generate(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        *,
        end_id: int,
        on_token: Callable[[int, np.ndarray | None], None],
        on_finish: Callable[[str], None],
        return_logits: bool = False,
        group: Hashable | None = None,
    ) -> Handle:
        """Plain greedy generation (TensorRT-LLM's contract): each token with the logits that
        chose it; stops after `max_new_tokens` ("length") or at `end_id` ("end_id", not passed
        to on_token)."""
        return self.submit([_Generation(list(prompt_ids), max_new_tokens, end_id, on_token, on_finish, return_logits)], group)

    def close(self) -> None:
        """Ends every sequence ("closed") and stops the thread."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join()

    # ---- scheduler thread ------------------------------------------------------------------------

    def _run(self) -> None:
        import torch

        with torch.inference_mode():  # grad mode is per thread: set it here
            while True:
                with self._lock:
                    idle = not self._has_work()
                    while not self._closed and not self._has_work():
                        self._lock.wait()
                if idle:
                    # Calls that arrive together (a fan-out of single-document calls) start as one
                    # job instead of one forward each, as Triton's max_queue_delay does.
                    time.sleep(_ADMISSION_WINDOW_S)
                with self._lock:
                    if self._closed:
                        break
                    self._sweep_cancelled()
                    self._admit()
                try:
                    self._step()
                except Exception as error:  # noqa: BLE001 - every row in flight gets the message
                    self._fail_all(error)
        with self._lock:
            self._end_everything("closed")

    def _has_work(self) -> bool:
        return bool(self._waiting or self._jobs or self._decoding())

    def _decoding(self) -> bool:
        return self._batch is not None and any(not row.finished for row in self._batch.rows)

    def _step(self) -> None:
        """One forward: a prefill chunk, a decode step, or the rewritten tails of the batch."""
        if self._batch is not None and not self._decoding():
            self._batch = None  # every row left: its cache goes at once
        decoding = [row for row in self._batch.rows if not row.finished] if self._batch else []
        job = min(self._jobs, key=self._job_order) if self._jobs else None
        if job is not None and self._prefill_now(job, decoding):
            self._prefill_chunk(job)
            self._prefill_turn = False
        elif decoding:
            if self._tails_due(decoding):
                self._run_tails()
            else:
                self._decode_step()
            self._prefill_turn = True

    def _priority(self, group: Hashable) -> int:
        """Smaller requests first: a group's sequences still to finish."""
        return self._outstanding.get(group, 0)

    def _job_order(self, job: _Part) -> tuple[int, int]:
        """A job holding rows of several requests goes by its smallest one; among equals, the
        one whose prefill ran longest ago goes first."""
        return min((self._priority(row.group), self._served.get(row.group, -1)) for row in job.rows)

    def _prefill_now(self, job: _Part, decoding: list[_Row]) -> bool:
        """Rows admitted together finish their prefill before decoding (fewest forwards in all);
        a new request's prefill and older requests' decode steps alternate, except that a request
        much smaller than the job's is never slowed down by its prefill, and a smaller request's
        prefill goes first."""
        if not decoding or min(row.admission for row in decoding) >= job.rows[0].admission:
            return True
        mine = self._job_order(job)[0]
        smallest = min(self._priority(row.group) for row in decoding)
        if mine < smallest:
            return True
        return self._prefill_turn and 2 * smallest >= mine

    def _tails_due(self, decoding: list[_Row]) -> bool:
        """Rewritten tails ride along decode steps for free, except when nothing is generating,
        or when a request waiting only on its tails is much smaller than every generating one
        (a small call behind a big one is not kept a step per tail token)."""
        generating = {row.group for row in decoding if len(row.pending) == 1}
        if not generating:
            return True
        busy = generating | {row.group for job in self._jobs for row in job.rows} | set(self._waiting)
        riding = {row.group for row in decoding if len(row.pending) > 1} - busy
        smallest = min(self._priority(group) for group in generating)
        return any(2 * self._priority(group) < smallest for group in riding)

    # ---- admission ---------------------------------------------------------------------------------

    def _admit(self) -> None:
        """Round-robin across groups within the KV budget and the row limit; a group with nothing
        running may pass the row limit, so every request makes progress at once."""
        admitted: list[_Row] = []
        admission = next(self._admissions)
        while (row := self._next_admissible()) is not None:
            queue = self._waiting[row.group]
            queue.popleft()
            self._waiting.move_to_end(row.group)
            if not queue:
                del self._waiting[row.group]
            self._reserved += row.cost
            self._rows += 1
            self._running[row.group] = self._running.get(row.group, 0) + 1
            self.stats.waiting_sequences -= 1
            if self.stats.on_queue_wait is not None:
                self.stats.on_queue_wait(time.monotonic() - row.submitted)
            row.seq.admitted()
            row.admission = admission
            admitted.append(row)
        self.stats.running_rows = self._rows
        self._outstanding = dict(self._running)
        for group, queue in self._waiting.items():
            self._outstanding[group] = self._outstanding.get(group, 0) + len(queue)
        if admitted:
            # Jobs that have not run yet take the new rows in: calls that arrive while a forward
            # runs still share one prefill.
            unstarted = [job for job in self._jobs if job.done == 0]
            for job in unstarted:
                self._jobs.remove(job)
                for row in job.rows:
                    row.pending, row.tokens = row.tokens + row.pending, []
                    row.admission = admission
                admitted = job.rows + admitted
            # Requests of about the same size share jobs; a much smaller one's rows get their own,
            # so its prefill is not as long as a big request's.
            sizes: dict[int, list[_Row]] = {}
            for row in admitted:
                sizes.setdefault(self._priority(row.group).bit_length(), []).append(row)
            for rows in sizes.values():
                self._jobs.extend(self._form_jobs(rows))

    def _next_admissible(self) -> _Row | None:
        for group, queue in self._waiting.items():
            row = queue[0]
            if self._rows >= self.limits.max_batch_rows and self._running.get(group, 0) > 0:
                continue
            if self._reserved + row.cost > self.limits.max_batch_tokens and self._rows > 0:
                continue  # memory is a hard limit; an oversized sequence still runs alone
            return row
        return None

    def _form_jobs(self, rows: list[_Row]) -> list[_Part]:
        """Rows sorted by the tail they run (their prompt past the cached prefix) are cut into
        jobs at the least cost: padded tokens, plus the fixed cost of each chunk's forward."""
        def tail(row: _Row) -> int:
            return len(row.pending) - min(_common_prefix(row.pending, self._prefix_ids), len(row.pending) - 1)

        rows = sorted(rows, key=tail)
        tails = [tail(row) for row in rows]
        chunk = self.limits.prefill_chunk_tokens
        forward_cost = _FORWARD_COST_CHUNKS * chunk
        # cost[end]: the cheapest cut of rows[:end]; start[end]: where its last job begins.
        cost, start = [0.0] * (len(rows) + 1), [0] * (len(rows) + 1)
        for end in range(1, len(rows) + 1):
            options = []
            for first in range(end - 1, -1, -1):
                count, width = end - first, tails[end - 1]
                if count > 1 and count * width > 4 * chunk:
                    break  # a job of many rows stays within a few chunks, so each starts soon
                forwards = -(-width // max(1, chunk // count))
                options.append((cost[first] + forwards * forward_cost + count * width, first))
            cost[end], start[end] = min(options)
        groups, end = [], len(rows)
        while end:
            groups.append(rows[start[end] : end])
            end = start[end]
        jobs = []
        for group in reversed(groups):
            if len(group) > 1 and self._shared(group) <= 0:
                # Without a cached column a padded query would attend to nothing: a job per row.
                jobs.extend(self._new_job([row]) for row in group)
            else:
                jobs.append(self._new_job(group))
        return jobs

    def _shared(self, rows: list[_Row]) -> int:
        """Template prefix tokens every row starts with; at least one token each stays outside,
        so every row gets logits of its own."""
        return min(min(_common_prefix(row.pending, self._prefix_ids), len(row.pending) - 1) for row in rows)

    def _new_job(self, rows: list[_Row]) -> _Part:
        """A job's cache starts as the shared template prefix, copied for each row."""
        import torch

        shared = max(0, self._shared(rows))
        count = len(rows)
        layers = [
            (keys[:, :, :shared].expand(count, -1, -1, -1), values[:, :, :shared].expand(count, -1, -1, -1))
            for keys, values in self._prefix
        ] if shared > 0 else []
        for row in rows:
            row.tokens = row.pending[:shared]
            row.pending = row.pending[shared:]
        return _Part(
            rows=rows,
            cache=self._new_cache(layers),
            mask=torch.ones((count, shared), dtype=torch.long, device=self.device),
            positions=torch.full((count,), shared, dtype=torch.long, device=self.device),
            width=max(len(row.pending) for row in rows),
        )

    # ---- cancellation ------------------------------------------------------------------------------

    def _cancel(self, rows: list[_Row]) -> None:
        with self._lock:
            for row in rows:
                row.cancelled = True
            self._lock.notify()

    def _sweep_cancelled(self) -> None:
        for group in list(self._waiting):
            queue = self._waiting[group]
            kept = deque(row for row in queue if not row.cancelled)
            for row in queue:
                if row.cancelled:
                    self.stats.waiting_sequences -= 1
                    self._end(row, "cancelled", admitted=False)
            if kept:
                self._waiting[group] = kept
            else:
                del self._waiting[group]
        for job in list(self._jobs):
            if any(row.cancelled for row in job.rows):
                self._drop_rows(job, [row for row in job.rows if row.cancelled])
                if not job.rows:
                    self._jobs.remove(job)
        if self._batch is not None:
            for row in self._batch.rows:
                if row.cancelled and not row.finished:
                    self._end(row, "cancelled")

    def _drop_rows(self, part: _Part, dropped: list[_Row]) -> None:
        """Removes rows from a job (its cache keeps only the others)."""
        for row in dropped:
            self._end(row, "cancelled")
        self._select(part, [k for k, row in enumerate(part.rows) if not row.finished])

    # ---- forwards ----------------------------------------------------------------------------------

    def _prefill_chunk(self, job: _Part) -> None:
        """One bounded chunk of a job."""
        tick = next(self._tick)
        for row in job.rows:
            self._served[row.group] = tick
        context = job.mask.shape[1]
        weight = 1 + context / self._keys_per_token_cost
        columns = max(1, int(self.limits.prefill_chunk_tokens / (len(job.rows) * weight)))
        start, end = job.done, min(job.width, job.done + columns)
        chunks = []
        for row in job.rows:
            pad = job.width - len(row.pending)
            chunks.append(row.pending[max(0, start - pad) : max(0, end - pad)])
        self.stats.prefill_tokens += sum(len(chunk) for chunk in chunks)
        logits = self._forward(job, chunks, end - start)
        job.done = end
        if job.done < job.width:
            return
        self._jobs.remove(job)
        for row in job.rows:
            row.tokens.extend(row.pending)
            row.pending = []
        self._advance(job, logits)

    def _decode_step(self) -> None:
        """The next pending token of every row in one forward; built without per-row tensors or
        a device sync, since on a GPU this loop's host overhead, not the model, sets the pace."""
        import torch

        batch = self._batch
        assert batch is not None
        self._compact(batch)
        pad = self.manifest.pad_token_id
        tokens = [row.pending[0] if not row.finished else pad for row in batch.rows]
        input_ids = torch.tensor(tokens, dtype=torch.long).to(self.device, non_blocking=True)[:, None]
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(tokens), 1))], dim=1)
        out = self.model(
            input_ids=input_ids,
            attention_mask=batch.mask,
            position_ids=batch.positions[:, None],
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_argument: batch.cache},
        )
        self.stats.forward_passes += 1
        batch.positions = batch.positions + 1
        for row in batch.rows:
            if not row.finished:
                row.tokens.append(row.pending.pop(0))
        self._advance(batch, out.logits[:, -1])

    def _run_tails(self) -> None:
        """Every row's pending ids (a rewritten tail, or the last token) in one forward."""
        batch = self._batch
        assert batch is not None
        self._compact(batch)
        chunks = [row.pending if not row.finished else [] for row in batch.rows]
        logits = self._forward(batch, chunks, max(len(chunk) for chunk in chunks))
        for row, chunk in zip(batch.rows, chunks):
            row.tokens.extend(chunk)
            row.pending = []
        self._advance(batch, logits)

    def _forward(self, part: _Part, chunks: list[list[int]], width: int) -> torch.Tensor:
        """Append each row's chunk (left padded to `width`) to the part's cache; last-column logits."""
        import torch

        rows = len(chunks)
        input_ids = torch.full((rows, width), self.manifest.pad_token_id, dtype=torch.long)
        new_mask = torch.zeros((rows, width), dtype=torch.long)
        position_ids = torch.zeros((rows, width), dtype=torch.long)
        starts = part.positions.tolist()
        for k, chunk in enumerate(chunks):
            if chunk:
                input_ids[k, width - len(chunk) :] = torch.tensor(chunk, dtype=torch.long)
                new_mask[k, width - len(chunk) :] = 1
                position_ids[k, width - len(chunk) :] = torch.arange(starts[k], starts[k] + len(chunk))
        mask = torch.cat([part.mask, new_mask.to(self.device)], dim=1)
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask,
            position_ids=position_ids.to(self.device),
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_argument: part.cache},
        )
        self.stats.forward_passes += 1
        part.mask = mask
        part.positions = part.positions + new_mask.sum(1).to(self.device)
        return out.logits[:, -1]

    def _advance(self, part: _Part, logits: torch.Tensor) -> None:
        """The policy of each row that ran all its pending ids sees its token; rows then go on
        decoding, rewrite their tail, or leave. Rows still feeding a rewritten tail wait."""
        import torch

        # One transfer for the chosen tokens and the score logits (ids are exact as floats).
        picked = torch.cat([logits.argmax(-1, keepdim=True).float(), logits[:, self._score_ids].float()], dim=1).tolist()
        tokens = [int(row[0]) for row in picked]
        scores = [row[1:] for row in picked]
        ready = [k for k, row in enumerate(part.rows) if not row.finished and not row.pending]
        wanted = [k for k in ready if part.rows[k].seq.wants_logits]
        full = dict(zip(wanted, logits[wanted].float().cpu().numpy())) if wanted else {}
        for k in ready:
            row = part.rows[k]
            try:
                action = row.seq.advance(tokens[k], scores[k], full.get(k))
            except Exception as error:  # noqa: BLE001 - a policy's failure ends its own row only
                self._end(row, f"failed: {error}")
                continue
            if isinstance(action, Rewrite):
                self._rewind(part, k, action.ids)
            elif action is DONE:
                self._end(row, None)
            else:
                self.stats.generated_tokens += 1
                row.pending = [tokens[k]]
        if part is not self._batch:
            going = [k for k, row in enumerate(part.rows) if not row.finished and row.pending]
            if going:
                self._select(part, going)
                self._batch = part if self._batch is None or not self._batch.rows else self._merge([self._batch, part])

    def _rewind(self, part: _Part, k: int, ids: list[int]) -> None:
        """Row k's tokens become `ids`: it keeps the cached columns they share with its tokens
        (the others are masked out) and the rest become its pending tail."""
        row = part.rows[k]
        common = min(_common_prefix(row.tokens, ids), len(ids) - 1)
        # The n-th unmasked column holds the row's token n-1: keep the first `common`.
        part.mask[k] *= (part.mask[k].cumsum(0) <= common).long()
        part.positions[k] = common
        row.tokens, row.pending = ids[:common], ids[common:]

    # ---- cache bookkeeping ---------------------------------------------------------------------------

    def _select(self, part: _Part, keep: list[int]) -> None:
        import torch

        if len(keep) == len(part.rows):
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        part.rows = [part.rows[k] for k in keep]
        for layer in part.cache.layers:
            if layer.is_initialized:  # a job that has not run yet may have no cache at all
                layer.keys, layer.values = layer.keys[index], layer.values[index]
        part.mask, part.positions = part.mask[index], part.positions[index]

    def _compact(self, batch: _Part) -> None:
        """Finished rows leave the batch once they are a quarter of it; empty columns go too."""
        finished = sum(row.finished for row in batch.rows)
        if finished and finished * 4 >= len(batch.rows):
            self._select(batch, [k for k, row in enumerate(batch.rows) if not row.finished])
            used = batch.mask.any(0).nonzero()
            first = int(used[0]) if len(used) else batch.mask.shape[1]
            if first > 0:
                for layer in batch.cache.layers:
                    layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
                batch.mask = batch.mask[:, first:]

    def _merge(self, parts: list[_Part]) -> _Part:
        """One part from several: finished rows dropped, caches left padded to one width."""
        import torch
        from torch.nn.functional import pad

        for part in parts:
            self._select(part, [k for k, row in enumerate(part.rows) if not row.finished])
        parts = [part for part in parts if part.rows]
        width = max(part.mask.shape[1] for part in parts)
        layers = []
        for layer in range(len(parts[0].cache.layers)):
            # Pad the columns on the left to one width.
            keys, values = zip(
                *(
                    (
                        pad(part.cache.layers[layer].keys, (0, 0, width - part.mask.shape[1], 0)),
                        pad(part.cache.layers[layer].values, (0, 0, width - part.mask.shape[1], 0)),
                    )
                    for part in parts
                )
            )
            layers.append((torch.cat(keys), torch.cat(values)))
        return _Part(
            rows=[row for part in parts for row in part.rows],
            cache=self._new_cache(layers),
            mask=torch.cat([pad(part.mask, (width - part.mask.shape[1], 0)) for part in parts]),
            positions=torch.cat([part.positions for part in parts]),
        )

    def _new_cache(self, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
        from irgate.backends.judge.kv_cache import growing_cache

        cache = growing_cache(self.model.config)
        for index, (keys, values) in enumerate(layers):
            cache.update(keys, values, index)  # copies: a new cache never aliases another's tensors
        return cache

    def _cache_prefix(self) -> None:
        """KV of the judge template's constant beginning (the family's), computed once for every job to copy."""
        import torch
        from transformers import DynamicCache

        from irgate.backends.judge.families import shared_head

        ids = shared_head(self.manifest, self.tokenizer)
        if not ids:
            return
        cache = DynamicCache(config=self.model.config)
        with torch.inference_mode():
            self.model(
                input_ids=torch.tensor([ids], device=self.device),
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_argument: cache},
            )
        self._prefix_ids = ids
        self._prefix = [(layer.keys, layer.values) for layer in cache.layers]

    # ---- endings -----------------------------------------------------------------------------------

    def _end(self, row: _Row, reason: str | None, admitted: bool = True) -> None:
        """Frees the row's capacity; `reason` None: its policy finished it, else the policy is told."""
        if row.finished:
            return
        row.finished = True
        if admitted:
            self._reserved -= row.cost
            self._rows -= 1
            self._running[row.group] -= 1
            if not self._running[row.group]:
                del self._running[row.group]
                if row.group not in self._waiting:
                    self._served.pop(row.group, None)
            self.stats.running_rows = self._rows
        if reason == "cancelled":
            self.stats.cancelled_sequences += 1
        if reason is not None:
            try:
                row.seq.end(reason)
            except Exception:  # noqa: BLE001,S110 - a listener that went away must not stop the engine
                pass

    def _fail_all(self, error: Exception) -> None:
        import torch

        if isinstance(error, torch.OutOfMemoryError):
            message = f"the judge ran out of memory ({error}); lower --judge-max-batch-tokens"
        else:
            message = f"{type(error).__name__}: {error}"
        with self._lock:
            for part in [*self._jobs, *([self._batch] if self._batch else [])]:
                for row in part.rows:
                    self._end(row, f"failed: {message}")
            self._jobs, self._batch = [], None

    def _end_everything(self, reason: str) -> None:
        for queue in self._waiting.values():
            for row in queue:
                self._end(row, reason, admitted=False)
        self._waiting.clear()
        for part in [*self._jobs, *([self._batch] if self._batch else [])]:
            for row in part.rows:
                self._end(row, reason)
        self._jobs, self._batch = [], None


@dataclass(eq=False)
class _Generation:
    """TensorRT-LLM-style plain greedy generation."""

    prompt_ids: list[int]
    max_new_tokens: int
    end_id: int
    on_token: Callable[[int, Any], None]
    on_finish: Callable[[str], None]
    wants_logits: bool
    produced: int = 0

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

    def end(self, reason: str) -> None:
        self.on_finish(reason)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
