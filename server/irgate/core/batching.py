"""Dynamic batching: the texts of concurrent requests share model calls under a token budget.

Requests put token ids in one queue; a single worker task takes whatever is waiting (up to
``SORT_WINDOW`` batches' worth of real tokens), sorts it by length so that padding stays small,
and runs one model call per length-homogeneous batch of at most ``max_batch_tokens``. While the model runs, new requests queue up and
ride in the next round, so there is no fixed batching delay (as in text-embeddings-inference).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from irgate.backends.embedder import EmbedderBackend
from irgate.core.tokenization import pad_batch
from irgate.errors import ResourceExhausted, Unavailable

# Texts are sorted by length across this many batches' worth of waiting work: a wider window pads
# less (512 SciFact docs through the server: 38 -> 45 docs/s going from 1 to 8 on 2 cores), at the price of
# a later answer for the first texts of the window.
SORT_WINDOW = 8


@dataclass
class _Request:
    ids: list[list[int]]
    vectors: np.ndarray
    future: asyncio.Future[None]
    enqueued_ns: int
    remaining: int
    started_ns: int = 0
    inference_ns: float = 0.0


@dataclass(frozen=True)
class BatchStats:
    queue_ns: int
    inference_ns: int


@dataclass
class BatchingQueue:
    """Runs a backend over token ids of many requests in shared, length-sorted batches."""

    backend: EmbedderBackend
    max_batch_tokens: int = 16384
    max_batch_texts: int = 128  # texts per model call (the API's own per-request limit is separate)
    max_queued_texts: int = 65536
    _pending: deque[tuple[_Request, int]] = field(default_factory=deque, init=False)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _worker: asyncio.Task[None] | None = field(default=None, init=False)

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="irgate-batching")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    @property
    def queued_texts(self) -> int:
        return len(self._pending)

    async def embed(self, ids: list[list[int]]) -> tuple[np.ndarray, BatchStats]:
        """Pooled (unnormalised) vectors for each id list, in order."""
        if len(self._pending) + len(ids) > self.max_queued_texts:
            raise ResourceExhausted(
                f"the embedding queue holds {len(self._pending)} texts and accepts at most "
                f"{self.max_queued_texts}; retry later"
            )
        request = _Request(
            ids=ids,
            vectors=np.empty((len(ids), self.backend.manifest.dimension), dtype=np.float32),
            future=asyncio.get_running_loop().create_future(),
            enqueued_ns=time.perf_counter_ns(),
            remaining=len(ids),
        )
        self._pending.extend((request, i) for i in range(len(ids)))
        self._wakeup.set()
        await request.future
        return request.vectors, BatchStats(
            queue_ns=request.started_ns - request.enqueued_ns, inference_ns=int(request.inference_ns)
        )

    async def _run(self) -> None:
        # A remote backend (Triton) takes several batches at once (`concurrent_batches`): its own
        # batcher merges them, and one batch's network hop overlaps another's compute. The
        # in-process engine takes one at a time.
        slots = asyncio.Semaphore(max(1, int(getattr(self.backend, "concurrent_batches", 1))))
        running: set[asyncio.Task[None]] = set()

        def finished(task: asyncio.Task[None]) -> None:
            running.discard(task)
            slots.release()

        try:
            while True:
                if not self._pending:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                for batch in self._next_batches():
                    await slots.acquire()
                    task = asyncio.get_running_loop().create_task(self._run_batch(batch))
                    running.add(task)
                    task.add_done_callback(finished)
        finally:
            for task in list(running):
                task.cancel()

    def _next_batches(self) -> list[list[tuple[_Request, int]]]:
        taken: list[tuple[_Request, int]] = []
        tokens = 0
        while self._pending and tokens < self.max_batch_tokens * SORT_WINDOW:
            request, index = self._pending.popleft()
            if request.future.done():  # the caller went away (cancelled or deadline passed)
                continue
            taken.append((request, index))
            tokens += len(request.ids[index])
        taken.sort(key=lambda item: len(item[0].ids[item[1]]))
        batches: list[list[tuple[_Request, int]]] = []
        current: list[tuple[_Request, int]] = []
        for item in taken:
            longest = len(item[0].ids[item[1]])  # sorted: this item is the longest so far
            if current and (
                (len(current) + 1) * longest > self.max_batch_tokens or len(current) >= self.max_batch_texts
            ):
                batches.append(current)
                current = []
            current.append(item)
        if current:
            batches.append(current)
        return batches

    async def _run_batch(self, batch: list[tuple[_Request, int]]) -> None:
        batch = [item for item in batch if not item[0].future.done()]
        if not batch:
            return
        start = time.perf_counter_ns()
        for request, _ in batch:
            if not request.started_ns:
                request.started_ns = start
        try:
            manifest = self.backend.manifest
            input_ids, attention_mask = pad_batch(
                [request.ids[index] for request, index in batch], manifest.pad_token_id, manifest.padding_side
            )
            vectors = await self.backend.embed(input_ids, attention_mask)
            expected = (len(batch), self.backend.manifest.dimension)
            if vectors.shape != expected:
                raise Unavailable(f"the embedder returned vectors of shape {vectors.shape}, expected {expected}")
        except Exception as error:  # one failed batch fails its requests, never the worker
            for request, _ in batch:
                if not request.future.done():
                    request.future.set_exception(error)
            return
        share = (time.perf_counter_ns() - start) / len(batch)
        for row, (request, index) in enumerate(batch):
            request.vectors[index] = vectors[row]
            request.inference_ns += share
            request.remaining -= 1
            if request.remaining == 0 and not request.future.done():
                request.future.set_result(None)
