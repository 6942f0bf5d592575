"""Judge backends: raw Rank1 prompts in, p(true) + reasoning per document out (shared/REFERENCE.md section 2).

Why transformers with our own decode loop (REFERENCE section 7, measured on this 2-core CPU with
SmolLM2-135M, 16 documents, one query, 64-token budget; ratios against a naive per-document
transformers generate + scoring forward at 0.22 docs/s):
- transformers, shared-prefix KV cache + batched generate + scoring from the kept cache: 4.0-4.8x,
  p(true) within 1.5e-6 of naive;
- onnxruntime-genai fp32: 3.0-3.3x (its batching mishandles left padding); int4: 6x but p(true)
  off by 0.32, i.e. not the model any more;
- llama.cpp Q4_1: about 4x, p(true) off by 0.02-0.14, and no wheel (source build only).
Transformers keeps the weights exact and hands us the KV cache as tensors, so one loop can
reuse the prompt prefix, drop finished documents from the batch, score an answer from logits
it already has, check cancellation before every step and score forced answers from the kept
cache. bench/judge.py on this machine (same 16 docs / 64 tokens, median of 3): 5.15x naive when
idle (10.2 vs 2.0 docs/s; SmolLM2 ends most documents by EOS after ~9 tokens), 7.5x when every
document runs its full budget; p(true) within 1e-6 of naive. Forced answers of documents that
end early are deferred and scored in one shared step (4.5x -> 4.9x single-run before that).
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from irgate.core.judging import answer_stop, forced_continuation
from irgate.errors import InvalidArgument, ResourceExhausted, Unavailable
from irgate.models.judge import JudgeManifest

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache

Ended = Literal["answered", "forced"]

# Prompt tokens decoded ahead of the first generated token, so tokenisers that drop a leading
# space at the start of a decode (SentencePiece) still give the right first characters.
_DETOKENIZE_CONTEXT = 5
# Forced answers re-tokenise prompt + cut reasoning + "\n</think>": room for those few tokens.
_FORCED_SLACK_TOKENS = 16


@dataclass(frozen=True)
class JudgeOutcome:
    """The verdict on one document."""

    index: int  # position of the document's prompt in the request
    score: float  # p(true) from the " true"/" false" logits at the answer step, in [0, 1]
    reasoning: str  # generated text before the answer (special tokens kept, stop string and EOS dropped)
    reasoning_tokens: int  # tokens generated for this document (answer tokens included)
    ended: Ended  # "answered": the model said true/false; "forced": budget or EOS, one forced step


@dataclass(frozen=True)
class ReasoningDelta:
    """New reasoning text of one document; the deltas of a document concatenate to its reasoning."""

    index: int
    text: str


JudgeEvent = JudgeOutcome | ReasoningDelta


@runtime_checkable
class JudgeBackend(Protocol):
    """One reasoning judge behind one call."""

    manifest: JudgeManifest
    # Where the model lives, for Info and logs: "local:/abs/path" or "triton://host:port/model".
    address: str

    def judge(
        self, prompts: list[str], max_reasoning_tokens: int, stream_reasoning: bool = False
    ) -> AsyncIterator[JudgeEvent]:
        """Judge formatted prompts; yields outcomes in completion order, deltas only when asked.

        Closing the iterator early (client cancel, deadline) stops the model work within one
        decode step.
        """
        ...

    async def ready(self) -> bool:
        """True when a call would be served now (health checks)."""
        ...

    async def close(self) -> None:
        """Stop work in flight and release the model; later calls raise Unavailable."""
        ...


Step = Literal["going", "answered", "forced"]


def check_budget(manifest: JudgeManifest, budget: int) -> None:
    if not 0 <= budget <= manifest.max_reasoning_tokens:
        raise InvalidArgument(
            f"max_reasoning_tokens must be within 0..{manifest.max_reasoning_tokens} for {manifest.name}, got {budget}"
        )


def check_context(manifest: JudgeManifest, prompt_ids: list[list[int]], budget: int) -> None:
    """Prompt + reasoning + the forced answer must fit the model's positions."""
    for index, ids in enumerate(prompt_ids):
        if len(ids) + budget + _FORCED_SLACK_TOKENS > manifest.max_context_tokens:
            raise InvalidArgument(
                f"document {index}: {len(ids)} prompt tokens + {budget} reasoning tokens exceed the "
                f"judge's {manifest.max_context_tokens}-token context; shorten the passage or the budget"
            )


@dataclass
class Judgement:
    """One document under Rank1's rules while its reasoning is generated, token by token.

    Shared by every judge backend, so the in-process and the Triton judge stop, stream and count
    exactly alike; the backend only chooses tokens and reads logits.
    """

    index: int
    prompt: str
    prompt_ids: list[int]
    generated: list[int] = field(default_factory=list)
    text: str = ""  # decoded generated text so far
    streamed: int = 0  # characters of `text` already sent as deltas
    # Incremental detokenisation (vLLM's scheme) over prompt context + generated ids.
    tokens: list[int] = field(default_factory=list)
    prefix_offset: int = 0
    read_offset: int = 0

    def __post_init__(self) -> None:
        self.tokens = self.prompt_ids[-_DETOKENIZE_CONTEXT:]
        self.read_offset = len(self.tokens)

    def feed(self, token: int, manifest: JudgeManifest, budget: int, decode: Callable[[list[int]], str]) -> Step:
        """Takes the next generated token: "answered" when the text now holds an answer stop
        (the logits that chose this token score it), "forced" at EOS or the end of the budget."""
        self.generated.append(token)
        if token == manifest.eos_token_id:  # vLLM stops on EOS and leaves it out of the text
            return "forced"
        since = len(self.text)
        self._detokenize(decode)
        at = answer_stop(self.text, manifest.answer_stops, since)
        if at is not None:
            self.text = self.text[:at]
            return "answered"
        return "forced" if len(self.generated) >= budget else "going"

    def delta(self, manifest: JudgeManifest) -> ReasoningDelta | None:
        """Reasoning text safe to stream now: what could still become a stop string is held back."""
        ready = len(self.text) - (max(len(stop) for stop in manifest.answer_stops) - 1)
        if ready <= self.streamed:
            return None
        delta = ReasoningDelta(self.index, self.text[self.streamed : ready])
        self.streamed = ready
        return delta

    def finish(self, score: float, ended: Ended, stream: bool) -> list[JudgeEvent]:
        """The last reasoning delta (when streaming) and the outcome."""
        events: list[JudgeEvent] = []
        if stream and len(self.text) > self.streamed:
            events.append(ReasoningDelta(self.index, self.text[self.streamed :]))
            self.streamed = len(self.text)
        events.append(JudgeOutcome(self.index, score, self.text, len(self.generated), ended))
        return events

    def _detokenize(self, decode: Callable[[list[int]], str]) -> None:
        """Appends the newest token's text, waiting while it ends mid-character."""
        self.tokens.append(self.generated[-1])
        before = decode(self.tokens[self.prefix_offset : self.read_offset])
        after = decode(self.tokens[self.prefix_offset :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)


def p_true(true_logit: float, false_logit: float) -> float:
    """Rank1's score from the " true" and " false" logits of one step: p(true) restricted to
    {true, false}, exp(l_t) / (exp(l_t) + exp(l_f)) = sigmoid(l_t - l_f), without overflow."""
    margin = float(true_logit) - float(false_logit)
    if margin >= 0:
        return 1.0 / (1.0 + math.exp(-margin))
    return math.exp(margin) / (1.0 + math.exp(margin))


def decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    """Rank1 keeps special tokens (e.g. </think>) in the text, and no space clean-up that would
    make a longer decode disagree with a shorter one."""
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class LocalJudge:
    """In-process judge over a folder made by irgate.models.judge.prepare_judge.

    All torch work runs in one dedicated thread: one request's batch at a time, with the other
    requests queued behind it, and the event loop never blocked.
    """

    def __init__(self, folder: Path, threads: int | None = None, device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

        folder = Path(folder).resolve()
        self.manifest = JudgeManifest.load(folder)
        self.address = f"local:{folder}"
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.device = str(self._device)
        cores = os.cpu_count() or 1
        # Torch's pool is process-wide; cap it so the embedder and the index keep cores.
        torch.set_num_threads(min(threads or cores, cores))
        self._tokenizer = AutoTokenizer.from_pretrained(folder)
        self._decode_ids = decoder(self._tokenizer)
        # fp32 on CPU (bf16 matmuls are slow there); the checkpoint's own dtype on a GPU.
        dtype = torch.float32 if self._device.type == "cpu" else "auto"
        self._model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(self._device).eval()
        if any(layer.is_sliding for layer in DynamicCache(config=self._model.config).layers):
            # The batch layout masks cache slots by position; a sliding window would drop slots.
            raise InvalidArgument(f"{folder}: sliding-window attention is not supported by the local judge")
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(max_workers=1, thread_name_prefix="judge")
        self._stops: set[threading.Event] = set()
        self._running = 0
        # Model forward passes so far: lets tests and metrics see that work really stopped.
        self.steps = 0

    @property
    def busy(self) -> bool:
        """True while the worker thread is running a batch."""
        return self._running > 0

    async def ready(self) -> bool:
        return self._executor is not None

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        for stop in list(self._stops):
            stop.set()
        if executor is not None:
            # Work in flight ends at its next step; wait for it without blocking the loop.
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)

    async def judge(
        self, prompts: list[str], max_reasoning_tokens: int, stream_reasoning: bool = False
    ) -> AsyncIterator[JudgeEvent]:
        if self._executor is None:
            raise Unavailable(f"judge {self.manifest.name} is closed")
        check_budget(self.manifest, max_reasoning_tokens)
        if not prompts:
            return
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[JudgeEvent | None] = asyncio.Queue()
        stop = threading.Event()

        def emit(event: JudgeEvent) -> None:
            if stop.is_set():
                return
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop closed: nobody is listening any more
                stop.set()

        def finished(work: asyncio.Future[None]) -> None:
            # Retrieve the error here so an abandoned call does not log "never retrieved".
            if not work.cancelled():
                work.exception()
            events.put_nowait(None)

        self._stops.add(stop)
        work = loop.run_in_executor(
            self._executor, self._judge_sync, list(prompts), max_reasoning_tokens, stream_reasoning, stop, emit
        )
        # Scheduled after every emit of the worker (same thread, FIFO), so None comes last.
        work.add_done_callback(finished)
        try:
            while (event := await events.get()) is not None:
                yield event
            work.result()
            if stop.is_set():  # close() cut the batch short: do not pass it off as complete
                raise Unavailable(f"judge {self.manifest.name} was closed while judging")
        finally:
            stop.set()
            self._stops.discard(stop)

    # ---- worker thread -------------------------------------------------------------------

    def _judge_sync(
        self,
        prompts: list[str],
        budget: int,
        stream: bool,
        stop: threading.Event,
        emit: Callable[[JudgeEvent], None],
    ) -> None:
        import torch

        self._running += 1
        try:
            # Grad mode is per thread: set it here, in the worker.
            with torch.inference_mode():
                self._decode(prompts, budget, stream, stop, emit)
        except torch.OutOfMemoryError as error:
            raise ResourceExhausted(f"judge {self.manifest.name} ran out of memory: {error}") from error
        finally:
            self._running -= 1

    def _decode(
        self,
        prompts: list[str],
        budget: int,
        stream: bool,
        stop: threading.Event,
        emit: Callable[[JudgeEvent], None],
    ) -> None:
        """Batched greedy decoding with Rank1's stops; emits each outcome when its document ends.

        Cache layout per row: shared prefix | left padding | rest of the prompt | generated,
        with mask 0 on padding and explicit positions, so every row sees exactly its own prompt.
        """
        import torch

        manifest = self.manifest
        ids = [list(row) for row in self._tokenizer(prompts)["input_ids"]]
        check_context(manifest, ids, budget)
        rows = [Judgement(index, prompt, row_ids) for index, (prompt, row_ids) in enumerate(zip(prompts, ids))]

        # The template's text before {query} is the same for every document: run it once.
        # At least one token per row stays outside it, so each row gets its own first logits.
        shared = min(len(row_ids) for row_ids in ids) - 1
        for other in ids[1:]:
            shared = min(shared, _common_prefix(ids[0], other))
        cache = self._new_cache()
        # A call that was cancelled while it waited behind another costs nothing, and one cancelled
        # during the prefill stops before the next forward pass.
        if stop.is_set():
            return
        if shared > 0:
            self._model(
                input_ids=torch.tensor([ids[0][:shared]], device=self._device),
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            self.steps += 1
            cache.batch_repeat_interleave(len(rows))
        mask = torch.ones((len(rows), shared), dtype=torch.long, device=self._device)
        positions = torch.full((len(rows),), shared, dtype=torch.long, device=self._device)
        if stop.is_set():
            return
        if budget == 0:
            self._force(rows, cache, mask, stream, emit)
            return

        logits, mask, positions = self._forward(cache, mask, positions, [row.prompt_ids[shared:] for row in rows])
        deferred: list[tuple[list[Judgement], DynamicCache, torch.Tensor]] = []
        while not stop.is_set():
            steps: dict[Step, list[int]] = {"answered": [], "forced": [], "going": []}
            for k, (row, token) in enumerate(zip(rows, logits.argmax(-1).tolist())):
                step = row.feed(token, manifest, budget, self._decode_ids)
                steps[step].append(k)
                if step == "going" and stream and (delta := row.delta(manifest)):
                    emit(delta)
            answered, forced, going = steps["answered"], steps["forced"], steps["going"]
            if answered:
                # The logits that chose the answer token are the answer position: no re-run.
                for k, score in zip(answered, self._scores(logits[answered])):
                    for event in rows[k].finish(score, "answered", stream):
                        emit(event)
            if forced and not stop.is_set():
                # Forced answers wait for the batch to end and then share ONE step: on a CPU a
                # step costs about the same for 1 row as for 16 (the weights are read either way).
                if going:
                    index = torch.tensor(forced, device=self._device)
                    deferred.append(([rows[k] for k in forced], self._rows_of(cache, index), mask[index]))
                else:  # the usual case: everything left ran out of budget at this step
                    deferred.append(([rows[k] for k in forced], cache, mask))
            if not going or stop.is_set():
                if deferred and not stop.is_set():
                    self._force(*self._merged(deferred), stream, emit)
                return
            if len(going) < len(rows):
                # Finished documents leave the batch and stop costing compute.
                index = torch.tensor(going, device=self._device)
                cache.batch_select_indices(index)
                mask, positions = mask[index], positions[index]
                rows = [rows[k] for k in going]
            logits, mask, positions = self._forward(cache, mask, positions, [[row.generated[-1]] for row in rows])

    def _force(
        self,
        rows: list[Judgement],
        cache: DynamicCache,
        mask: torch.Tensor,
        stream: bool,
        emit: Callable[[JudgeEvent], None],
    ) -> None:
        """Rank1's forced answer: prompt + "\\n" + reasoning cut to a sentence + "\\n</think>", one step.

        The forced text is tokenised afresh (as Rank1 sends it), but its tokens mostly repeat what
        the cache already holds for the row: slots past the common part are masked out and only the
        differing tail is run, all forced rows in one step.
        """
        import torch

        chunks: list[list[int]] = []
        mask = mask.clone()
        positions = torch.empty(len(rows), dtype=torch.long, device=self._device)
        for k, row in enumerate(rows):
            forced_ids = self._tokenizer(row.prompt + forced_continuation(row.text, self.manifest.think_end))["input_ids"]
            filled = int(mask[k].sum())
            cached = (row.prompt_ids + row.generated)[:filled]
            # At least one token must run to produce the logits.
            common = min(_common_prefix(cached, forced_ids), len(forced_ids) - 1)
            # The n-th unmasked slot holds token n-1: keep the first `common` of them.
            mask[k] *= (mask[k].cumsum(0) <= common).long()
            positions[k] = common
            chunks.append(list(forced_ids[common:]))
        logits, _, _ = self._forward(cache, mask, positions, chunks)
        for row, score in zip(rows, self._scores(logits)):
            for event in row.finish(score, "forced", stream):
                emit(event)

    def _forward(
        self, cache: DynamicCache, mask: torch.Tensor, positions: torch.Tensor, chunks: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Append each row's chunk (left padded) to the cache; last-position logits, mask, next positions."""
        import torch

        width = max(len(chunk) for chunk in chunks)
        rows = len(chunks)
        input_ids = torch.full((rows, width), self.manifest.pad_token_id, dtype=torch.long)
        new_mask = torch.zeros((rows, width), dtype=torch.long)
        position_ids = torch.zeros((rows, width), dtype=torch.long)
        starts = positions.tolist()
        for k, chunk in enumerate(chunks):
            input_ids[k, width - len(chunk) :] = torch.tensor(chunk, dtype=torch.long)
            new_mask[k, width - len(chunk) :] = 1
            position_ids[k, width - len(chunk) :] = torch.arange(starts[k], starts[k] + len(chunk))
        mask = torch.cat([mask, new_mask.to(self._device)], dim=1)
        out = self._model(
            input_ids=input_ids.to(self._device),
            attention_mask=mask,
            position_ids=position_ids.to(self._device),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.steps += 1
        lengths = torch.tensor([len(chunk) for chunk in chunks], device=self._device)
        return out.logits[:, -1].float(), mask, positions + lengths

    def _scores(self, logits: torch.Tensor) -> list[float]:
        true_logits = logits[:, self.manifest.true_token_id].tolist()
        false_logits = logits[:, self.manifest.false_token_id].tolist()
        return [p_true(t, f) for t, f in zip(true_logits, false_logits)]

    def _new_cache(self) -> DynamicCache:
        from transformers import DynamicCache

        return DynamicCache(config=self._model.config)

    def _merged(
        self, parts: list[tuple[list[Judgement], DynamicCache, torch.Tensor]]
    ) -> tuple[list[Judgement], DynamicCache, torch.Tensor]:
        """One batch from rows that left the decode loop at different steps: caches left padded to one length."""
        import torch
        from torch.nn.functional import pad
        from transformers import DynamicCache

        if len(parts) == 1:
            return parts[0]
        width = max(mask.shape[1] for _, _, mask in parts)
        rows = [row for part_rows, _, _ in parts for row in part_rows]
        mask = torch.cat([pad(part_mask, (width - part_mask.shape[1], 0)) for _, _, part_mask in parts])
        layers = []
        for layer in range(len(parts[0][1].layers)):
            # Cache tensors are [batch, heads, sequence, head_dim]: pad the sequence on the left.
            keys, values = zip(
                *(
                    (
                        pad(cache.layers[layer].keys, (0, 0, width - part_mask.shape[1], 0)),
                        pad(cache.layers[layer].values, (0, 0, width - part_mask.shape[1], 0)),
                    )
                    for _, cache, part_mask in parts
                )
            )
            layers.append((torch.cat(keys), torch.cat(values)))
        return rows, DynamicCache(ddp_cache_data=layers, config=self._model.config), mask

    def _rows_of(self, cache: DynamicCache, index: torch.Tensor) -> DynamicCache:
        """A new cache holding copies of some rows (the original keeps decoding the others)."""
        from transformers import DynamicCache

        return DynamicCache(
            ddp_cache_data=[(layer.keys[index], layer.values[index]) for layer in cache.layers],
            config=self._model.config,
        )
