"""What tests share besides fixtures (those are conftest.py's): the repository's paths, a bounded
wait, the index tests' vectors, and the judge backends' events collected for one request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"  # the data sets and models that the slow tests read, beside the checkout
# The index tests' collections: small vectors, and a model name that no embedder has.
DIM = 16
MODEL = "test-embedder"


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until condition() holds, polled every 50 ms; fails naming `what` after `timeout` seconds."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - started


def assert_ratio(report: dict[str, Any], ratio: str, numerator: str, denominator: str) -> None:
    """A benchmark's ratio is the quotient of two rates it measured (both ran, both finite), to its rounding."""
    top, bottom = report[numerator], report[denominator]
    assert np.isfinite([top, bottom]).all() and top > 0 and bottom > 0, (numerator, top, denominator, bottom)
    assert abs(report[ratio] - top / bottom) <= 0.01 + 0.02 * top / bottom, (ratio, report[ratio], top / bottom)


def unit_vectors(count: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """`count` random unit vectors (float32 [count, dim]), the same for the same seed."""
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def judge_events(backend: Any, request: Any) -> list[Any]:
    """Every event a judge backend yields for one JudgeRequest (outcomes and reasoning deltas)."""

    async def run() -> list[Any]:
        return [event async for event in backend.judge(request)]

    return asyncio.run(run())


def outcomes_of(events: list[Any]) -> list[Any]:
    """The outcomes among judge events, in request order."""
    from irgate.domain.judging import Verdict

    return sorted((e for e in events if isinstance(e, Verdict)), key=lambda outcome: outcome.index)
