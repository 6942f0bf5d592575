"""The judge engine's scheduler: what the next model forward computes. Pure Python, no torch.

Each `schedule()` returns one `Plan`: the requests that end (cancelled, past their deadline), the
ones admitted into free KV slots, the prefixes to copy into slots, and the chunks of one forward:
either prompt chunks that prefill, or one token per decoding row. The engine runs the plan and
reports back (`computed`, `finish`); nothing here touches tensors, so tests drive it with a fake
model. The rules, in the order they apply:

- Admission: round-robin across requests (groups), so a small request is never queued behind a
  big one; within `max_rows` rows, except that a request with nothing running may pass it (up to
  `slots`), so every request makes progress at once; and within `kv_tokens`: slots in use times
  the widest row's columns, since the KV buffer is a rectangle (a row alone always fits).
- Prefix sharing: the longest common token prefix of a request's prompts (its template beginning,
  query and instruction) is computed once, by one of its rows (the leader), then stored and copied
  into every other row's slot; the others wait for it instead of computing it again. The judge's
  constant head (given at construction) is copied into every row as it is admitted.
- Prefill or decode: rows admitted together finish their prefill before any of them decodes (the
  fewest forwards); otherwise a new request's prefill and older requests' decode steps take
  turns, except that a smaller request's prefill goes first and a request more than twice the size
  of the smallest decoding one does not slow it down.
- A prefill forward is at most `step_tokens` of padded work, weighted by the context the chunks
  attend to (so a cancellation, a deadline or a new request waits for at most one such chunk); the
  least recently served request's rows go first.
- Decode: every decoding row computes its one pending token. A rewritten row (a forced answer)
  feeds its new tail one token per decode step beside the rows still generating, which costs
  almost nothing; the tails run whole when nothing else generates, or when their request is less
  than half the size of every generating one.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from irgate.backends.judge.sequence import FinishReason, Request, Status, common_prefix
from irgate.errors import InvalidArgument

HEAD: tuple[str] = ("head",)  # the stored key of the judge's constant head
# The fixed cost of a forward in prompt tokens, as a share of a prefill chunk (see docs/judge-engine.md).
_FORWARD_COST_CHUNKS = 0.25


@dataclass(frozen=True)
class SchedulerLimits:
    max_rows: int  # rows running at once (a request with nothing running may pass it)
    slots: int  # rows at most, whatever happens: the KV buffer's slot count
    kv_tokens: int  # slots in use x columns of the widest row, unless one row runs alone
    step_tokens: int  # padded token work of one prefill forward
    # How many attended keys cost as much as one token through the weights: chunks over a long
    # context shrink so that every forward takes about as long.
    keys_per_token: int = 1 << 30

    def __post_init__(self) -> None:
        for name in ("max_rows", "slots", "kv_tokens", "step_tokens", "keys_per_token"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Chunk:
    """Row `request` computes `request.token_ids[start:end]` in this forward."""

    request: Request
    start: int
    end: int


@dataclass
class Plan:
    ended: list[Request] = field(default_factory=list)  # finished by the scheduler: tell their policies
    admitted: list[Request] = field(default_factory=list)
    restores: list[tuple[Request, Hashable, int]] = field(default_factory=list)  # before the forward
    chunks: list[Chunk] = field(default_factory=list)  # one forward (none: nothing to compute)
    stores: list[tuple[Hashable, Request, int]] = field(default_factory=list)  # after the forward
    released: list[Hashable] = field(default_factory=list)  # stored prefixes nobody reads again
    capacity: tuple[int, int] = (0, 0)  # (slots, columns) the KV buffer must hold for this step


@dataclass(eq=False)
class _Group:
    key: Hashable
    waiting: deque[Request] = field(default_factory=deque)
    running: int = 0
    served: int = -1  # the step of its last prefill chunk
    prompts: int = 0  # prompts added so far
    prefix_ids: list[int] = field(default_factory=list)  # shared by its prompts, computed once
    leader: Request | None = None  # the row computing the prefix
    stored: int = 0  # columns of the prefix stored (0: none yet)

    @property
    def size(self) -> int:
        return len(self.waiting) + self.running

    @property
    def store_key(self) -> tuple[str, int]:
        return ("prefix", id(self))


class Scheduler:
    def __init__(self, limits: SchedulerLimits, head_ids: Iterable[int] = ()) -> None:
        self.limits = limits
        self.head_ids = list(head_ids)
        self.running: list[Request] = []
        self._groups: dict[Hashable, _Group] = {}
        self._waiting: OrderedDict[Hashable, _Group] = OrderedDict()  # groups with waiting rows, round-robin
        self._slots: list[Request | None] = [None] * limits.slots
        self._columns = 0  # the widest admitted row since the engine was last idle
        self._slots_used = 0  # the highest slot + 1 since then
        self._step = 0
        self._prefill_turn = True
        self._released: list[Hashable] = []

    # ---- what the engine tells it ----------------------------------------------------------------

    def add(self, requests: list[Request], share_prefix: bool = True) -> None:
        """Queue the requests of one call (one group); with `share_prefix`, their longest common
        prompt prefix is computed once for all of them."""
        if not requests:
            return
        group = self._groups.setdefault(requests[0].group, _Group(requests[0].group))
        # Once a leader computes it, the prefix stays: later rows take what they share of it.
        if share_prefix and group.leader is None and not group.stored:
            prompts = [request.token_ids for request in requests]
            shared = group.prefix_ids if group.prompts else prompts[0]
            length = min(len(shared), *(len(ids) - 1 for ids in prompts))
            for ids in prompts:
                length = common_prefix(shared[:length], ids)
            group.prefix_ids = shared[:length]
        group.prompts += len(requests)
        group.waiting.extend(requests)
        self._waiting.setdefault(group.key, group)

    def computed(self, request: Request, end: int) -> None:
        """The request's tokens up to `end` are in its slot."""
        request.num_computed_tokens = end

    def finish(self, request: Request, reason: FinishReason) -> None:
        """The request leaves: its slot is free at once."""
        if request.status is Status.FINISHED:
            return
        group = self._groups[request.group]
        if request.status is Status.WAITING:
            group.waiting.remove(request)
            if not group.waiting:
                self._waiting.pop(group.key, None)
        else:
            self.running.remove(request)
            self._slots[request.slot] = None
            group.running -= 1
            if group.leader is request:
                group.leader = None
        request.status, request.finish_reason = Status.FINISHED, reason
        if not group.size:
            del self._groups[group.key]
            if group.stored:
                self._released.append(group.store_key)

    def requests(self, groups: Iterable[Hashable] | None = None) -> list[Request]:
        """Every unfinished request (of `groups` when given), running ones first."""
        chosen = set(self._groups) if groups is None else set(groups)
        waiting = [request for key in chosen if key in self._groups for request in self._groups[key].waiting]
        return [request for request in self.running if request.group in chosen] + waiting

    @property
    def waiting_count(self) -> int:
        return sum(len(group.waiting) for group in self._waiting.values())

    @property
    def idle(self) -> bool:
        return not self._groups

    # ---- one step --------------------------------------------------------------------------------

    def schedule(self, now: float) -> Plan:
        self._step += 1
        plan = Plan()
        for request in self.requests():
            if request.cancelled or (request.deadline is not None and now >= request.deadline):
                self.finish(request, FinishReason.CANCELLED if request.cancelled else FinishReason.DEADLINE)
                plan.ended.append(request)
        plan.released, self._released = self._released, []
        if not self.running:
            self._columns = self._slots_used = 0  # the buffer may shrink to what comes next
        self._admit(plan)
        self._share_prefixes(plan)
        decoding = [request for request in self.running if request.status is Status.DECODING]
        prefilling = sorted(
            (request for request in self.running if request.status is Status.PREFILLING and not self._blocked(request)),
            key=lambda request: (self._groups[request.group].served, self._groups[request.group].size, request.arrival),
        )
        if prefilling and (not decoding or self._prefill_first(prefilling, decoding)):
            self._prefill(prefilling, plan)
            self._prefill_turn = False
        elif decoding:
            self._decode(decoding, plan)
            self._prefill_turn = True
        # The buffer holds the columns written so far, not every reservation: a burst of long
        # prompts grows it step by step instead of zeroing gigabytes before its first forward.
        written = [chunk.end for chunk in plan.chunks] + [length for _, _, length in plan.restores]
        plan.capacity = (self._slots_used, max(written, default=0))
        return plan

    def _admit(self, plan: Plan) -> None:
        while True:
            group = next((group for group in self._waiting.values() if self._fits(group)), None)
            if group is None:
                return
            request = group.waiting.popleft()
            self._waiting.move_to_end(group.key)
            if not group.waiting:
                del self._waiting[group.key]
            slot = self._slots.index(None)
            self._slots[slot] = request
            self._slots_used = max(self._slots_used, slot + 1)
            self._columns = max(self._columns, request.cost)
            request.slot, request.status, request.admission = slot, Status.PREFILLING, self._step
            group.running += 1
            self.running.append(request)
            plan.admitted.append(request)
            head = min(common_prefix(request.token_ids, self.head_ids), len(request.token_ids) - 1)
            if head > 0:
                plan.restores.append((request, HEAD, head))
                request.num_computed_tokens = head

    def _fits(self, group: _Group) -> bool:
        request = group.waiting[0]
        if None not in self._slots:
            return False
        if len(self.running) >= self.limits.max_rows and group.running:
            return False
        slots = max(self._slots_used, self._slots.index(None) + 1)
        return not self.running or slots * max(self._columns, request.cost) <= self.limits.kv_tokens

    def _shared(self, request: Request) -> int:
        """How much of its group's prefix the request can take: 0 for a group of one prompt, and
        nothing the constant head gives anyway; at least its last token stays its own."""
        group = self._groups[request.group]
        if group.prompts < 2:
            return 0
        shared = min(common_prefix(request.token_ids, group.prefix_ids), len(request.token_ids) - 1)
        saved = (group.prompts - 1) * (shared - common_prefix(group.prefix_ids[:shared], self.head_ids))
        # Sharing costs the leader's forward before the others start: worth it when it saves more
        # tokens than the fixed cost of a forward.
        return shared if saved > _FORWARD_COST_CHUNKS * self.limits.step_tokens else 0

    def _share_prefixes(self, plan: Plan) -> None:
        """Rows whose group prefix is stored take it; a group without a leader gets one."""
        for request in self.running:
            group = self._groups[request.group]
            if request.status is not Status.PREFILLING:
                continue
            shared = self._shared(request)
            if group.stored and min(shared, group.stored) > request.num_computed_tokens:
                request.num_computed_tokens = min(shared, group.stored)
                plan.restores.append((request, group.store_key, request.num_computed_tokens))
            elif not group.stored and group.leader is None and shared > request.num_computed_tokens:
                group.leader = request

    def _blocked(self, request: Request) -> bool:
        """Waits for its group's prefix, which its leader is computing."""
        group = self._groups[request.group]
        return (not group.stored and group.leader is not None and group.leader is not request
                and self._shared(request) > request.num_computed_tokens)

    def _prefill_first(self, prefilling: list[Request], decoding: list[Request]) -> bool:
        if min(request.admission for request in decoding) >= min(request.admission for request in prefilling):
            return True
        mine = self._groups[prefilling[0].group].size
        smallest = min(self._groups[request.group].size for request in decoding)
        if mine < smallest:
            return True
        return self._prefill_turn and mine <= 2 * smallest

    def _prefill(self, candidates: list[Request], plan: Plan) -> None:
        def limit(request: Request) -> int:
            group = self._groups[request.group]
            if group.leader is request:  # stop at the prefix, so that it can be stored as it is
                return self._shared(request) - request.num_computed_tokens
            return request.pending

        budget = self.limits.step_tokens
        chosen: list[Request] = []
        width = 0
        for request in candidates:
            trial = [*chosen, request]
            need = max(limit(row) for row in trial)
            weight = 1 + max(row.num_computed_tokens for row in trial) / self.limits.keys_per_token
            fitting = max(1, int(budget / (len(trial) * weight)))
            # Up to 4 rows at full width; more only while their chunks stay that wide.
            if chosen and fitting < min(need, max(1, int(budget / (4 * weight)))):
                break
            chosen, width = trial, min(need, fitting)
        for request in chosen:
            group = self._groups[request.group]
            group.served = self._step
            start = request.num_computed_tokens
            end = start + min(limit(request), width)
            plan.chunks.append(Chunk(request, start, end))
            if group.leader is request and end == self._shared(request):
                plan.stores.append((group.store_key, request, end))
                group.stored, group.leader = end, None

    def _decode(self, decoding: list[Request], plan: Plan) -> None:
        generating = [request for request in decoding if request.pending == 1]
        tails = [request for request in decoding if request.pending > 1]
        if tails and (not generating or self._tails_first(tails, generating)):
            width = min(max(request.pending for request in tails), max(1, self.limits.step_tokens // len(tails)))
            for request in tails:
                start = request.num_computed_tokens
                plan.chunks.append(Chunk(request, start, start + min(request.pending, width)))
            return
        for request in decoding:
            start = request.num_computed_tokens
            plan.chunks.append(Chunk(request, start, start + 1))

    def _tails_first(self, tails: list[Request], generating: list[Request]) -> bool:
        """A request waiting only on its tails, much smaller than every generating one, is not
        kept a decode step per tail token."""
        smallest = min(self._groups[request.group].size for request in generating)
        generating_groups = {request.group for request in generating}
        riding = [self._groups[request.group] for request in tails if request.group not in generating_groups]
        return any(not group.waiting and 2 * group.size < smallest for group in riding)
