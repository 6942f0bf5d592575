"""The judge engine's loop over a fake runner: rows computed as one at a time, and failures.

The fake model's next token is a function of a row's whole slot content, so a row whose slot held
anything but its own tokens in order (a wrong prefix copy, a rewrite keeping a stale column)
chooses another token than its policy expects. Failures are injected into the runner's forward:
every caller must hear within a second, with a typed error, and the engine must then serve the
next call or refuse it at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence

import pytest

from irgate.backends.judge.engine import EngineLimits, JudgeEngine
from irgate.backends.judge.errors import EngineClosed, EngineFailed, SequenceDeadline
from irgate.backends.judge.scheduler import HEAD
from irgate.backends.judge.sequence import DONE, Action, FinishReason, Rewrite
from irgate.errors import IrgateError, Unavailable

HEAD_IDS = [900, 901, 902, 903]


def next_token(context: Sequence[int]) -> int:
    return (sum(k * token for k, token in enumerate(context, 1)) + len(context)) % 997


class FakeRunner:
    """SlotRunner's interface over lists: a slot is the list of the tokens written into it."""

    def __init__(self, fail: Callable[[int], bool] = lambda call: False, delay: float = 0.0) -> None:
        self.fail, self.delay = fail, delay
        self.calls = 0
        self.slots: dict[int, list[int]] = {}
        self.stored: dict[Hashable, list[int]] = {HEAD: list(HEAD_IDS)}

    def keys_per_token(self) -> int:
        return 1 << 20

    def reserve(self, slots: int, columns: int) -> None:
        if slots == 0:
            self.slots.clear()  # a slot holds nothing after the buffer is freed

    def store(self, key: Hashable, slot: int, length: int) -> None:
        self.stored[key] = self.slots[slot][:length]

    def restore(self, key: Hashable, slot: int, length: int) -> None:
        self.slots[slot] = self.stored[key][:length]

    def drop(self, key: Hashable) -> None:
        del self.stored[key]

    def forward(self, rows: Sequence[tuple[int, Sequence[int], int]], full: Sequence[bool]) -> tuple[list[int], list[list[float]], dict]:
        self.calls += 1
        time.sleep(self.delay)
        if self.fail(self.calls):
            raise RuntimeError(f"injected failure in forward {self.calls}")
        tokens = []
        for slot, ids, start in rows:
            # Columns past `start` are never read: the row's mask stops at its own position.
            content = self.slots.get(slot, [])[:start]
            self.slots[slot] = content + list(ids)
            tokens.append(next_token(self.slots[slot]) if len(content) == start else -1)
        return tokens, [[0.0, 0.0] for _ in rows], {}


class Policy:
    """Generates `new_tokens`, checking each against the fake model run on its tokens alone; with
    `rewrite_after`, replaces its last two tokens once (as a forced answer does)."""

    wants_logits = False
    rewrite_slack = 4

    def __init__(self, prompt: list[int], new_tokens: int, rewrite_after: int | None = None) -> None:
        self.prompt_ids = prompt
        self.max_new_tokens = new_tokens
        self.tokens = list(prompt)
        self.produced: list[int] = []
        self.mismatches = 0
        self.rewrite_after = rewrite_after
        self.reason: FinishReason | None = None
        self.error: IrgateError | None = None
        self.done = threading.Event()

    def admitted(self) -> None:
        pass

    def advance(self, token: int, scores: Sequence[float], logits: object) -> Action:
        self.mismatches += token != next_token(self.tokens)
        self.produced.append(token)
        if len(self.produced) == self.rewrite_after:
            self.tokens = [*self.tokens[:-2], 7, 8]
            return Rewrite(list(self.tokens))
        if len(self.produced) >= self.max_new_tokens:
            self.reason = FinishReason.COMPLETED
            self.done.set()
            return DONE
        self.tokens.append(token)
        return None

    def end(self, reason: FinishReason, error: IrgateError | None) -> None:
        self.reason, self.error = reason, error
        self.done.set()


def engine_with(runner: FakeRunner, limits: EngineLimits | None = None) -> JudgeEngine:
    limits = limits or EngineLimits(max_batch_tokens=4096, max_batch_rows=3, prefill_chunk_tokens=16)
    return JudgeEngine.start(lambda: JudgeEngine(None, None, None, "cpu", limits, runner, HEAD_IDS))  # type: ignore[arg-type]


def wait_all(policies: list[Policy], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for k, policy in enumerate(policies):
        assert policy.done.wait(max(0.0, deadline - time.monotonic())), f"sequence {k} got no answer within {timeout} s"


@pytest.fixture
def engines():
    started: list[JudgeEngine] = []
    yield lambda runner, limits=None: started.append(engine_with(runner, limits)) or started[-1]
    for engine in started:
        engine.close()


def test_rows_compute_as_one_at_a_time(engines) -> None:
    """Chunked prefill, prefix sharing, rows joining and leaving three slots, rewrites: every
    token is the one the row's own tokens give."""
    engine = engines(FakeRunner())
    calls = []
    for call in range(4):
        shared = HEAD_IDS + [call] * (20 + 7 * call)  # a query and instruction of its own
        policies = [Policy(shared + list(range(doc, doc + 5 + 3 * doc)), 6 + doc, rewrite_after=3 if doc % 2 else None)
                    for doc in range(5)]
        engine.submit(policies, group=call)
        calls.append(policies)
    everything = [policy for policies in calls for policy in policies]
    wait_all(everything, 30)
    assert all(policy.reason is FinishReason.COMPLETED for policy in everything)
    assert sum(policy.mismatches for policy in everything) == 0
    assert [len(policy.produced) for policy in everything] == [6 + doc for _ in calls for doc in range(5)]
    assert engine.stats.running_rows == 0 and engine.stats.waiting_sequences == 0


def test_a_failing_step_ends_its_calls_and_the_next_call_is_served(engines) -> None:
    runner = FakeRunner(fail=lambda call: call == 3)
    engine = engines(runner)
    first = [Policy(HEAD_IDS + list(range(40)), 20) for _ in range(3)]
    second = [Policy(HEAD_IDS + [5] * 30, 20) for _ in range(2)]
    engine.submit(first, group="first")
    engine.submit(second, group="second")
    started = time.monotonic()
    wait_all(first, 1.0)
    assert time.monotonic() - started < 1.0
    assert all(policy.reason is FinishReason.FAILED and isinstance(policy.error, EngineFailed) for policy in first)
    assert "injected failure" in str(first[0].error) and isinstance(first[0].error, Unavailable)
    wait_all(second, 5.0)  # it had no row in the failed step, or ended with it: either way, answered
    assert engine.ready
    after = Policy(HEAD_IDS + [1, 2, 3], 4)
    engine.submit([after])
    wait_all([after], 5.0)
    assert after.reason is FinishReason.COMPLETED and after.mismatches == 0


def test_steps_that_keep_failing_stop_the_engine_and_refuse_calls(engines) -> None:
    engine = engines(FakeRunner(fail=lambda call: True))
    # Four slots: each failed step ends four calls, and the third in a row stops the engine.
    calls = [[Policy(HEAD_IDS + [call] * 10, 5) for _ in range(2)] for call in range(12)]
    for call, policies in enumerate(calls):
        engine.submit(policies, group=call)
    everything = [policy for policies in calls for policy in policies]
    wait_all(everything, 1.0)
    assert all(isinstance(policy.error, EngineFailed) for policy in everything)
    assert not engine.ready
    with pytest.raises(EngineFailed, match="stopped serving"):
        engine.submit([Policy([1, 2], 2)])
    assert engine.stats.running_rows == 0 and engine.stats.waiting_sequences == 0


def test_a_policy_that_raises_ends_its_own_row_only(engines) -> None:
    class Raising(Policy):
        def advance(self, token: int, scores: Sequence[float], logits: object) -> Action:
            raise ValueError("a bad policy")

    engine = engines(FakeRunner())
    bad, good = Raising([1, 2, 3], 3), Policy([1, 2, 4], 3)
    engine.submit([bad, good])
    wait_all([bad, good], 5.0)
    assert bad.reason is FinishReason.FAILED and "a bad policy" in str(bad.error)
    assert good.reason is FinishReason.COMPLETED and good.mismatches == 0


def test_a_deadline_ends_a_sequence_mid_prefill(engines) -> None:
    engine = engines(FakeRunner(delay=0.02))
    late = Policy(list(range(400)), 4)  # 25 chunks of 16 tokens: half a second
    engine.submit([late], deadline=time.monotonic() + 0.1)
    wait_all([late], 1.0)
    assert late.reason is FinishReason.DEADLINE and isinstance(late.error, SequenceDeadline)


def test_close_ends_every_call_and_refuses_new_ones() -> None:
    engine = engine_with(FakeRunner(delay=0.02))
    running = [Policy(list(range(300)), 50) for _ in range(6)]
    engine.submit(running)
    started = time.monotonic()
    engine.close()
    wait_all(running, 1.0)
    assert time.monotonic() - started < 1.0
    assert all(isinstance(policy.error, EngineClosed) for policy in running)
    with pytest.raises(EngineClosed):
        engine.submit([Policy([1, 2], 2)])
