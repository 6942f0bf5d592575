"""The batching queue with a fake embedder backend: core logic only (the real ONNX path is tested
end to end in test_server.py). The fake's vector of a text is [first id, length, 0, ...], so every
answer can be traced back to the text it belongs to."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from irgate.core.batching import BatchingQueue
from irgate.errors import ResourceExhausted

DIMENSION = 4


@dataclass
class FakeManifest:
    dimension: int = DIMENSION
    pad_token_id: int = 0
    padding_side: str = "right"


@dataclass
class FakeBackend:
    manifest: FakeManifest = field(default_factory=FakeManifest)
    calls: list[tuple[int, int]] = field(default_factory=list)  # (rows, width) of each model call
    fail_when_first_id: int | None = None

    async def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        self.calls.append(input_ids.shape)
        await asyncio.sleep(0)  # let other requests queue up meanwhile, as a real model call does
        if self.fail_when_first_id is not None and self.fail_when_first_id in input_ids[:, 0]:
            raise RuntimeError("the model failed on this batch")
        vectors = np.zeros((len(input_ids), DIMENSION), dtype=np.float32)
        vectors[:, 0] = input_ids[:, 0]
        vectors[:, 1] = attention_mask.sum(axis=1)
        return vectors


def texts(first_id: int, *lengths: int) -> list[list[int]]:
    return [[first_id + i] + [7] * (length - 1) for i, length in enumerate(lengths)]


async def with_queue(backend: FakeBackend, work, **options) -> object:
    queue = BatchingQueue(backend, **options)
    queue.start()
    try:
        return await work(queue)
    finally:
        await queue.stop()


def test_concurrent_requests_share_calls_and_get_their_own_vectors_in_order() -> None:
    backend = FakeBackend()
    requests = [texts(100 * r, *[(r * 7 + i) % 30 + 1 for i in range(5)]) for r in range(1, 9)]

    async def work(queue: BatchingQueue):
        return await asyncio.gather(*(queue.embed(ids) for ids in requests))

    started = time.perf_counter_ns()
    results = asyncio.run(with_queue(backend, work, max_batch_tokens=256))
    elapsed = time.perf_counter_ns() - started
    for ids, (vectors, stats) in zip(requests, results, strict=True):
        assert vectors[:, 0].tolist() == [text[0] for text in ids]
        assert vectors[:, 1].tolist() == [len(text) for text in ids]
        # Each request's share of the run: its wait and its part of the model calls fit in the whole.
        assert 0 <= stats.queue_ns and 0 < stats.inference_ns and stats.queue_ns + stats.inference_ns <= elapsed
    assert len(backend.calls) < len(requests)  # shared model calls, not one per request


def test_every_model_call_stays_within_the_token_budget_and_pads_little() -> None:
    backend = FakeBackend()
    lengths = [3, 50, 4, 48, 5, 47, 6, 45, 30, 2, 60, 1]

    async def work(queue: BatchingQueue):
        return await queue.embed(texts(1, *lengths))

    asyncio.run(with_queue(backend, work, max_batch_tokens=100))
    assert sum(rows for rows, _ in backend.calls) == len(lengths)
    assert all(rows * width <= 100 for rows, width in backend.calls)
    padded = sum(rows * width for rows, width in backend.calls)
    assert padded <= 1.3 * sum(lengths)  # sorted by length: short texts are not padded to long ones


def test_a_text_longer_than_the_budget_still_gets_its_own_call() -> None:
    backend = FakeBackend()

    async def work(queue: BatchingQueue):
        return await queue.embed(texts(1, 300, 2))

    vectors, _ = asyncio.run(with_queue(backend, work, max_batch_tokens=64))
    assert vectors[:, 1].tolist() == [300, 2] and (1, 300) in backend.calls


def test_a_failed_model_call_fails_its_requests_only_and_the_queue_keeps_serving() -> None:
    backend = FakeBackend(fail_when_first_id=500)

    async def work(queue: BatchingQueue):
        failing = asyncio.create_task(queue.embed(texts(500, 10)))
        with pytest.raises(RuntimeError, match="model failed"):
            await failing
        return await queue.embed(texts(1, 10, 20))

    vectors, _ = asyncio.run(with_queue(backend, work, max_batch_tokens=64))
    assert vectors[:, 0].tolist() == [1, 2]


def test_a_full_queue_refuses_new_texts() -> None:
    async def work(queue: BatchingQueue):
        with pytest.raises(ResourceExhausted, match="accepts at most 4"):
            await queue.embed(texts(1, 1, 1, 1, 1, 1))

    asyncio.run(with_queue(FakeBackend(), work, max_queued_texts=4))


def test_texts_of_a_caller_that_went_away_are_not_sent_to_the_model() -> None:
    backend = FakeBackend()

    async def work(queue: BatchingQueue):
        gone = asyncio.create_task(queue.embed(texts(900, *[5] * 20)))
        await asyncio.sleep(0)  # enqueued, not yet taken
        gone.cancel()
        kept = await queue.embed(texts(1, 5))
        return kept

    vectors, _ = asyncio.run(with_queue(backend, work, max_batch_tokens=1000))
    assert vectors[:, 0].tolist() == [1]
    assert sum(rows for rows, _ in backend.calls) == 1
