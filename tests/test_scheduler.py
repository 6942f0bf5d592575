"""The judge engine's scheduler on its own: plans from waiting and running requests, no model.

Each test drives `Scheduler.schedule` and reports back what a runner would (tokens computed, rows
finished), as vLLM tests its scheduler with fake model outputs; the whole file runs in a second.
"""

from __future__ import annotations

import subprocess
import sys

from irgate.backends.judge.scheduler import HEAD, Plan, Scheduler, SchedulerLimits
from irgate.backends.judge.sequence import FinishReason, Request, Status

LIMITS = SchedulerLimits(max_rows=4, slots=5, kv_tokens=100_000, step_tokens=64)


def requests(group: str, prompts: list[list[int]], new_tokens: int = 8, start: int = 0) -> list[Request]:
    return [Request(policy=None, group=group, arrival=start + k, submitted=0.0, cost=len(ids) + new_tokens, token_ids=list(ids))  # type: ignore[arg-type]
            for k, ids in enumerate(prompts)]


def run(scheduler: Scheduler, plan: Plan, token: int = 7) -> None:
    """What the engine does with a plan: the chunks are computed; a row that computed all its
    tokens gets `token` appended and decodes on."""
    for chunk in plan.chunks:
        scheduler.computed(chunk.request, chunk.end)
        if not chunk.request.pending:
            chunk.request.token_ids.append(token)
            chunk.request.status = Status.DECODING


def padded_work(plan: Plan) -> int:
    return len(plan.chunks) * max(chunk.end - chunk.start for chunk in plan.chunks)


def test_the_scheduler_imports_without_torch() -> None:
    code = ("import sys, irgate.backends.judge.scheduler; "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'transformers')]")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_long_prompt_is_prefilled_in_chunks_within_the_step_budget() -> None:
    scheduler = Scheduler(LIMITS)
    (long,) = requests("a", [list(range(1000))])
    scheduler.add([long])
    steps = 0
    while long.status is Status.PREFILLING or steps == 0:
        plan = scheduler.schedule(0.0)
        assert [chunk.request for chunk in plan.chunks] == [long]
        assert padded_work(plan) <= LIMITS.step_tokens
        run(scheduler, plan)
        steps += 1
    assert steps == -(-1000 // 64)  # whole chunks: no forward wasted
    assert long.num_computed_tokens == 1000 and long.status is Status.DECODING


def test_prefill_packs_short_prompts_and_keeps_the_budget() -> None:
    scheduler = Scheduler(LIMITS)
    batch = requests("a", [list(range(10 + k)) for k in range(4)])
    scheduler.add(batch, share_prefix=False)
    plan = scheduler.schedule(0.0)
    assert sorted(chunk.request.arrival for chunk in plan.chunks) == [0, 1, 2, 3]  # one forward for all
    assert padded_work(plan) <= LIMITS.step_tokens
    assert all(chunk.end == len(chunk.request.token_ids) for chunk in plan.chunks)


def test_wide_prompts_share_a_forward_four_at_most() -> None:
    scheduler = Scheduler(LIMITS)
    scheduler.add(requests("a", [list(range(200)) for _ in range(4)]), share_prefix=False)
    plan = scheduler.schedule(0.0)
    widths = {chunk.end - chunk.start for chunk in plan.chunks}
    assert len(plan.chunks) == 4 and widths == {16} and padded_work(plan) == 64


def test_a_small_request_is_not_starved_behind_a_big_one() -> None:
    scheduler = Scheduler(LIMITS)
    big = requests("big", [list(range(30)) for _ in range(12)], new_tokens=100)
    scheduler.add(big, share_prefix=False)
    for _ in range(20):  # the big request fills its rows and decodes
        run(scheduler, scheduler.schedule(0.0))
    assert len(scheduler.running) == LIMITS.max_rows and scheduler.waiting_count == 8
    (small,) = requests("small", [list(range(30))], start=100)
    scheduler.add([small])
    plan = scheduler.schedule(0.0)
    # Admitted at once past the row limit (a request with nothing running), and its prefill goes
    # before the big request's decode step.
    assert plan.admitted == [small] and [chunk.request for chunk in plan.chunks] == [small]
    run(scheduler, plan)
    plan = scheduler.schedule(0.0)
    assert small in [chunk.request for chunk in plan.chunks] and len(plan.chunks) == 5  # decodes beside the big rows


def test_admission_takes_turns_across_requests() -> None:
    scheduler = Scheduler(LIMITS)
    scheduler.add(requests("a", [[1, 2, 3]] * 6), share_prefix=False)
    scheduler.add(requests("b", [[4, 5, 6]] * 6, start=10), share_prefix=False)
    plan = scheduler.schedule(0.0)
    assert [request.group for request in plan.admitted] == ["a", "b", "a", "b"]


def test_rows_leave_and_waiting_ones_take_their_slots() -> None:
    scheduler = Scheduler(LIMITS)
    batch = requests("a", [[1, 2, 3]] * 6)
    scheduler.add(batch, share_prefix=False)
    run(scheduler, scheduler.schedule(0.0))
    first = scheduler.running[0]
    slot = first.slot
    scheduler.finish(first, FinishReason.COMPLETED)
    assert first.status is Status.FINISHED and first.finish_reason is FinishReason.COMPLETED
    plan = scheduler.schedule(0.0)
    assert [request.slot for request in plan.admitted] == [slot]


def test_cancel_and_deadline_mid_prefill_end_at_the_next_step() -> None:
    scheduler = Scheduler(LIMITS)
    cancelled, timed, kept = requests("a", [list(range(500))] * 3)
    timed.deadline = 5.0
    scheduler.add([cancelled, timed, kept], share_prefix=False)
    run(scheduler, scheduler.schedule(0.0))
    assert cancelled.status is timed.status is Status.PREFILLING
    cancelled.cancelled = True
    plan = scheduler.schedule(5.0)
    assert plan.ended == [cancelled, timed]
    assert (cancelled.finish_reason, timed.finish_reason) == (FinishReason.CANCELLED, FinishReason.DEADLINE)
    assert [chunk.request for chunk in plan.chunks] == [kept]
    assert len(scheduler.running) == 1


def test_a_kv_budget_admits_rows_by_slots_times_the_widest() -> None:
    scheduler = Scheduler(SchedulerLimits(max_rows=4, slots=5, kv_tokens=300, step_tokens=64))
    scheduler.add(requests("a", [list(range(90))] * 4, new_tokens=10), share_prefix=False)  # 100 columns each
    plan = scheduler.schedule(0.0)
    assert len(plan.admitted) == 3
    assert plan.capacity == (3, max(chunk.end for chunk in plan.chunks))  # what this step writes
    scheduler.add(requests("long", [list(range(990))], new_tokens=10, start=10))  # too wide beside them
    for request in list(scheduler.running):
        scheduler.finish(request, FinishReason.COMPLETED)
    plan = scheduler.schedule(0.0)
    # The first row admitted alone runs whatever its width; nothing joins it past the budget.
    assert [request.group for request in plan.admitted] == ["a"]
    scheduler.finish(plan.admitted[0], FinishReason.COMPLETED)
    plan = scheduler.schedule(0.0)
    assert [request.group for request in plan.admitted] == ["long"] and plan.capacity == (1, 64)


def test_a_rewritten_row_feeds_its_tail_beside_generating_rows() -> None:
    scheduler = Scheduler(LIMITS)
    forced, other = requests("a", [list(range(20)), list(range(20))], new_tokens=40)
    scheduler.add([forced, other], share_prefix=False)
    run(scheduler, scheduler.schedule(0.0))
    run(scheduler, scheduler.schedule(0.0))
    assert forced.status is other.status is Status.DECODING
    forced.rewrite([*range(18), 50, 51, 52, 53])  # keeps 18 computed tokens
    assert forced.num_computed_tokens == 18 and forced.pending == 4
    plan = scheduler.schedule(0.0)
    assert {(chunk.request.arrival, chunk.end - chunk.start) for chunk in plan.chunks} == {(0, 1), (1, 1)}
    run(scheduler, plan)
    scheduler.finish(other, FinishReason.COMPLETED)
    plan = scheduler.schedule(0.0)  # nothing else generates: the rest of the tail in one forward
    assert [(chunk.start, chunk.end) for chunk in plan.chunks] == [(19, 22)]


def test_a_requests_prefix_is_computed_once_and_copied() -> None:
    head = list(range(100, 110))
    scheduler = Scheduler(LIMITS, head_ids=head)
    shared = head + list(range(60))  # template head, then the query and instruction
    group = requests("a", [shared + [1000 + k] * 5 for k in range(3)])
    scheduler.add(group)
    plan = scheduler.schedule(0.0)
    assert [(key, length) for _, key, length in plan.restores] == [(HEAD, 10)] * 3
    # The leader computes the prefix alone, chunks stopping where it ends; then it is stored.
    leader = plan.chunks[0].request
    assert [chunk.request for chunk in plan.chunks] == [leader] and plan.chunks[0].end == 70
    assert [(request, length) for _, request, length in plan.stores] == [(leader, 70)]
    key = plan.stores[0][0]
    run(scheduler, plan)
    plan = scheduler.schedule(0.0)
    assert sorted((request.arrival, length) for request, k, length in plan.restores if k == key) == [
        (r.arrival, 70) for r in group if r is not leader
    ]
    assert all(chunk.start == 70 and chunk.end == 75 for chunk in plan.chunks) and len(plan.chunks) == 3
    run(scheduler, plan)
    for request in group:
        scheduler.finish(request, FinishReason.COMPLETED)
    assert scheduler.schedule(0.0).released == [key]


def test_a_short_shared_prefix_is_not_worth_a_forward() -> None:
    scheduler = Scheduler(LIMITS)
    scheduler.add(requests("a", [[1, 2, 3, 4, 5, 10 + k] for k in range(3)]))
    plan = scheduler.schedule(0.0)
    assert len(plan.chunks) == 3 and not plan.stores  # 2 x 5 tokens saved < a forward's cost
