"""Judge runtime vs the naive loop users would write: one document at a time with generate()
(naive_judge.py), behind `irgate bench judge`.

Both sides get the same prompts, the same greedy budget and the same Rank1 rules; the naive side
scores p(true) with a separate forward pass, as the usual recipe does. The ratio of their
docs/s, measured in one run on one machine, is the claim; absolute times are only context.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from naive_judge import PAIRS, QUERY, NaiveVerdict, benchmark_request, naive_judge, request_prompts
from rich.console import Console

from irgate.backends.judge.contract import JudgeRequest, PassageText
from irgate.backends.judge.local import LocalJudge
from irgate.backends.judge.manifest import JudgeManifest
from irgate.backends.judge.rank1 import fit_prompt
from irgate.domain.judging import Verdict
from irgate.progress import ProgressReport

R = TypeVar("R")


def pair_requests(documents: int, budget: int) -> list[JudgeRequest]:
    """One call per document of PAIRS (cycled), each claim judging its own evidence."""
    return [
        JudgeRequest(query=claim, instruction="", passages=(PassageText("", evidence),), budget=budget)
        for claim, evidence in (PAIRS[i % len(PAIRS)] for i in range(documents))
    ]


async def _collect(judge: LocalJudge, request: JudgeRequest) -> list[Verdict]:
    outcomes = [event async for event in judge.judge(request) if isinstance(event, Verdict)]
    return sorted(outcomes, key=lambda outcome: outcome.index)


# The naive loop's model in its own process (see _naive_process).
_NAIVE: dict[str, Any] = {}


def _load_naive(folder: str, device: str, threads: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    dtype = torch.float32 if device == "cpu" else "auto"
    _NAIVE["model"] = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    _NAIVE["tokenizer"] = AutoTokenizer.from_pretrained(folder)
    _NAIVE["manifest"] = JudgeManifest.load(Path(folder))


def _run_naive(prompts: list[str], budget: int) -> tuple[float, list[NaiveVerdict]]:
    return _timed(lambda: naive_judge(_NAIVE["model"], _NAIVE["tokenizer"], _NAIVE["manifest"], prompts, budget))


def _naive_process(folder: Path, device: str, threads: int) -> ProcessPoolExecutor:
    """A process that holds the naive loop's model. In one process, a second thread running torch
    (the engine's) slowed a CPU loop on the main thread by about 10%, even while idle (each
    thread gets an OpenMP pool); a process of its own times the naive loop at its best."""
    return ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn"), initializer=_load_naive, initargs=(str(folder), device, threads)
    )


def _timed(run: Callable[[], R]) -> tuple[float, R]:
    """Wall time of one run, and its result."""
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


async def _collect_calls(judge: LocalJudge, calls: list[JudgeRequest]) -> list[Verdict]:
    """Concurrent calls; their outcomes in call order."""
    results = await asyncio.gather(*(_collect(judge, call) for call in calls))
    return [outcome for outcomes in results for outcome in outcomes]


async def _concurrent_vs_single(judge: LocalJudge, calls: int, documents: int, budget: int) -> tuple[float, float]:
    """Seconds of one call of `calls` x `documents` documents, and of `calls` concurrent calls of
    `documents` each. The shapes run single, concurrent, concurrent, single and each side sums its
    two runs: a load that drifts linearly over the four runs falls on both sides alike."""

    async def single() -> float:
        started = time.perf_counter()
        await _collect(judge, benchmark_request(calls * documents, budget))
        return time.perf_counter() - started

    async def concurrent() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(_collect(judge, benchmark_request(documents, budget)) for _ in range(calls)))
        return time.perf_counter() - started

    single_s = await single()
    concurrent_s = await concurrent() + await concurrent()
    single_s += await single()
    return single_s, concurrent_s


async def _small_behind_big(judge: LocalJudge, big: int, budget: int, repeats: int) -> tuple[float, float]:
    """Median latencies of a 1-document call alone, and sent while a `big`-document call runs."""
    small = benchmark_request(1, budget)

    async def latency() -> float:
        started = time.perf_counter()
        await _collect(judge, small)
        return time.perf_counter() - started

    alone = statistics.median([await latency() for _ in range(repeats)])
    behind = []
    for _ in range(repeats):
        running = asyncio.ensure_future(_collect(judge, benchmark_request(big, budget)))
        await _until(lambda: judge.engine is not None and judge.engine.stats.running_rows > 0)
        await asyncio.sleep(0.2)  # well inside the big call's work
        behind.append(await latency())
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await _until(lambda: not judge.busy)
    return alone, statistics.median(behind)


async def _cancel_seconds(judge: LocalJudge, documents: int, budget: int) -> float:
    """Seconds from cancelling a call of length-limit passages during its prefill until a new
    1-document call starts being served (its latency then, less its latency alone)."""
    small = benchmark_request(1, budget)
    started = time.perf_counter()
    await _collect(judge, small)
    alone = time.perf_counter() - started
    engine = judge.engine
    assert engine is not None
    context = judge.manifest.max_context_tokens
    long = benchmark_request(documents, budget, length_tokens=context, max_passage_tokens=context)
    before = engine.stats.prefill_tokens
    running = asyncio.ensure_future(_collect(judge, long))
    await _until(lambda: engine.stats.prefill_tokens > before)  # the prefill is under way
    await asyncio.sleep(0.5)
    cancelled = time.perf_counter()
    running.cancel()
    await _collect(judge, small)
    served = time.perf_counter() - cancelled
    await asyncio.gather(running, return_exceptions=True)
    return max(0.0, served - alone)


# A FollowIR-style instruction: what counts as relevant, at paragraph length.
_INSTRUCTION = (
    "A relevant passage reports evidence from studies in humans, such as randomised trials, cohorts or "
    "meta-analyses, that bears directly on the claim; it may support or refute it. Passages about animal "
    "models, cell cultures or mechanisms alone are not relevant, nor are passages that only restate the "
    "claim, describe a study design without results, or discuss a related but different exposure or outcome. "
    "Reviews count when they summarise human evidence on the same question. "
)


def _cut(tokenizer: Any, text: str, tokens: int) -> str:
    """The first `tokens` tokens of `text` (repeated as needed), as text."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = (ids * (tokens // max(1, len(ids)) + 1))[:tokens]
    return tokenizer.decode(ids)


def prefix_request(tokenizer: Any, documents: int = 50, passage_tokens: int = 120, instruction_tokens: int = 150) -> JudgeRequest:
    """A rerank whose documents share a long instruction: `documents` passages of about
    `passage_tokens` tokens under an instruction of about `instruction_tokens`, at budget 0."""
    passages = tuple(
        PassageText("", _cut(tokenizer, f"Claim: {claim} Evidence: {evidence} ", passage_tokens))
        for claim, evidence in (PAIRS[i % len(PAIRS)] for i in range(documents))
    )
    return JudgeRequest(QUERY, _cut(tokenizer, _INSTRUCTION, instruction_tokens), passages, budget=0)


async def _shared_prefix_speedup(judge: LocalJudge, documents: int, repeats: int) -> tuple[float, float, float]:
    """A long-instruction rerank with the request's prefix shared, and on the same engine with
    every prompt computed whole; runs alternate. Returns the median seconds of each side and the
    largest score difference between the two."""
    assert judge.engine is not None
    call = prefix_request(judge.engine.tokenizer, documents)
    times: dict[bool, list[float]] = {True: [], False: []}
    scores: dict[bool, list[float]] = {}
    try:
        for _ in range(repeats):
            for share in (True, False):
                judge.share_prefixes = share
                started = time.perf_counter()
                outcomes = await _collect(judge, call)
                times[share].append(time.perf_counter() - started)
                scores[share] = [outcome.score for outcome in outcomes]
    finally:
        judge.share_prefixes = True
    diff = max(abs(a - b) for a, b in zip(scores[True], scores[False], strict=True))
    return statistics.median(times[True]), statistics.median(times[False]), diff


def _device(judge: LocalJudge) -> str:
    """What ran the judge, for the report."""
    import torch

    if judge.device.startswith("cuda"):
        return torch.cuda.get_device_name(judge.device)
    return f"cpu ({torch.get_num_threads()} threads of {os.cpu_count()} cores)"


async def _until(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the judge did not reach the benchmark's state in time")
        await asyncio.sleep(0.01)


def run_judge_benchmark(
    folder: Path,
    documents: int = 16,
    max_reasoning_tokens: int = 64,
    repeats: int = 3,
    scheduling: bool = True,
    big: int = 100,
    console: Console | None = None,
) -> dict[str, Any]:
    """Time LocalJudge and the naive loop on the same model folder and prompts; JSON-able results.

    With `scheduling`, also the continuous-batching figures (see benchmarks/README.md): 8
    concurrent calls of big/5 documents against one call of them all, a 1-document call behind a
    `big`-document one, the cancellation of a `big`-document call of length-limit passages, and
    a big/2-document rerank under a 150-token instruction with and without sharing its prefix.
    With `console`, each step and the time left are shown on it (minutes to hours on a CPU)."""
    import torch

    folder = Path(folder)
    judge = LocalJudge(folder)
    # The documents of PAIRS, each claim against its own evidence, sent as concurrent calls: the
    # engine batches them as one, and the naive loop takes the same prompts one at a time.
    calls = pair_requests(documents, max_reasoning_tokens)
    prompts = [prompt for call in calls for prompt in request_prompts(judge.manifest, call)]
    judge_times, naive_times = [], []
    figures: dict[str, Any] = {}
    steps = 1 + 2 * repeats + (4 if scheduling else 0)
    with ProgressReport(console or Console(quiet=True), "bench judge", steps, "steps") as progress:
        # The same device and threads for both sides.
        with _naive_process(folder, judge.device, torch.get_num_threads()) as naive:
            # One small warm-up each, so neither side pays first-call allocation in its timing; then
            # the sides alternate run by run (a shared machine's load drifts) and each gives its median.
            progress.describe("bench judge: loading both models, warming up")
            asyncio.run(_collect(judge, benchmark_request(1, 2)))
            naive.submit(_run_naive, prompts[:1], 2).result()
            progress.advance()
            for run in range(1, repeats + 1):
                progress.describe(f"bench judge: the engine, {documents} documents, run {run} of {repeats}")
                judge_run, outcomes = _timed(lambda: asyncio.run(_collect_calls(judge, calls)))
                progress.advance()
                progress.describe(f"bench judge: the naive loop, {documents} documents, run {run} of {repeats}")
                naive_run, verdicts = naive.submit(_run_naive, prompts, max_reasoning_tokens).result()
                progress.advance()
                judge_times.append(judge_run)
                naive_times.append(naive_run)
        if scheduling:
            progress.describe(f"bench judge: 8 concurrent calls of {max(1, big // 5)} documents vs one call")
            single_s, concurrent_s = asyncio.run(_concurrent_vs_single(judge, 8, max(1, big // 5), max_reasoning_tokens))
            figures.update(concurrent_vs_single=round(single_s / concurrent_s, 2),
                           single_call_s=round(single_s, 3), concurrent_calls_s=round(concurrent_s, 3))
            progress.advance()
            progress.describe(f"bench judge: a 1-document call behind a {big}-document one")
            alone_s, behind_s = asyncio.run(_small_behind_big(judge, big, max_reasoning_tokens, repeats))
            figures.update(small_behind_big=round(behind_s / alone_s, 2),
                           small_alone_s=round(alone_s, 3), small_behind_big_s=round(behind_s, 3))
            progress.advance()
            progress.describe(f"bench judge: cancelling a {big}-document call")
            figures["cancel_seconds"] = round(asyncio.run(_cancel_seconds(judge, big, max_reasoning_tokens)), 3)
            progress.advance()
            progress.describe(f"bench judge: {max(1, big // 2)} documents under a 150-token instruction, its prefix shared or not")
            shared_s, whole_s, diff = asyncio.run(_shared_prefix_speedup(judge, max(1, big // 2), repeats))
            figures.update(shared_prefix_speedup=round(whole_s / shared_s, 2), shared_prefix_s=round(shared_s, 3),
                           whole_prompts_s=round(whole_s, 3), shared_prefix_max_score_diff=diff)
            progress.advance()
        progress.describe("bench judge")
    asyncio.run(judge.close())
    judge_s, naive_s = statistics.median(judge_times), statistics.median(naive_times)

    docs_per_s, naive_docs_per_s = documents / judge_s, documents / naive_s
    return {
        "documents": documents,
        "max_reasoning_tokens": max_reasoning_tokens,
        "repeats": repeats,
        "runtime": "transformers-continuous-batching-engine",
        "docs_per_s": round(docs_per_s, 3),
        "tokens_per_s": round(sum(o.reasoning_tokens for o in outcomes) / judge_s, 1),
        "naive_docs_per_s": round(naive_docs_per_s, 3),
        "naive_tokens_per_s": round(sum(v.reasoning_tokens for v in verdicts) / naive_s, 1),
        "judge_vs_naive": round(docs_per_s / naive_docs_per_s, 2),
        "max_score_diff": max(abs(o.score - v.score) for o, v in zip(outcomes, verdicts, strict=True)),
        "answered": sum(o.ended == "answered" for o in outcomes),
        **figures,
        "device": _device(judge),
    }


async def _loop_stall(judge: LocalJudge, characters: int) -> tuple[float, float]:
    """The longest event-loop pause while one call judges an inline passage of `characters`
    characters at budget 0 (fitting it included), and the call's seconds."""
    passage = PassageText("", ("Claim: rain forms when vapour condenses. " * (characters // 40 + 1))[:characters])
    request = JudgeRequest(query=QUERY, instruction="", passages=(passage,), budget=0)
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.ensure_future(tick())
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    await _collect(judge, request)
    elapsed = time.perf_counter() - started
    done.set()
    await ticker
    return max(gaps), elapsed


def run_long_passage_benchmark(
    folder: Path, documents: int = 10, max_passage_tokens: int | None = None, console: Console | None = None
) -> dict[str, Any]:
    """A top-`documents` rerank of context-length passages at the judge's default budget (the
    manifest's reasoning cap), with the passage cap (the manifest's unless given) and without one
    (passages cut only to fit the context); and what a 1 MB inline passage costs the event loop
    and the fitting. JSON-able results. With `console`, each figure is shown as it is measured:
    the uncapped side takes many minutes on a CPU."""

    folder = Path(folder)
    judge = LocalJudge(folder)
    assert judge.engine is not None
    tokenizer, manifest = judge.engine.tokenizer, judge.manifest
    cap = max_passage_tokens or manifest.max_passage_tokens
    budget = manifest.max_reasoning_tokens
    asyncio.run(_collect(judge, benchmark_request(1, 2)))  # warm-up: first-call allocations

    def show(line: str) -> None:
        if console is not None:
            console.log(line)

    # The 1 MB passage first: it takes seconds, the uncapped rerank many minutes.
    megabyte = 1 << 20
    text = ("Claim: rain forms when vapour condenses. " * (megabyte // 40 + 1))[:megabyte]
    fit_s, _ = _timed(lambda: fit_prompt(manifest, tokenizer, QUERY, "", "", text, budget, cap))
    context_fit_s, _ = _timed(lambda: fit_prompt(manifest, tokenizer, QUERY, "", "", text, budget, manifest.max_context_tokens))
    stall_s, megabyte_call_s = asyncio.run(_loop_stall(judge, megabyte))
    show(f"1 MB passage: fitted in {fit_s * 1000:.1f} ms at the cap ({context_fit_s * 1000:.1f} ms to the context), "
         f"event loop paused at most {stall_s * 1000:.1f} ms, the call took {megabyte_call_s:.2f} s")

    def rerank(passage_cap: int) -> tuple[float, list[Verdict]]:
        call = benchmark_request(documents, budget, length_tokens=manifest.max_context_tokens, max_passage_tokens=passage_cap)
        return _timed(lambda: asyncio.run(_collect(judge, call)))

    capped_s, capped = rerank(cap)
    show(f"{documents} passages capped at {cap} tokens, budget {budget}: {capped_s:.1f} s")
    uncapped_s, uncapped = rerank(manifest.max_context_tokens)
    show(f"{documents} passages cut only to the {manifest.max_context_tokens}-token context: {uncapped_s:.1f} s")
    asyncio.run(judge.close())
    return {
        "documents": documents,
        "max_reasoning_tokens": budget,
        "max_passage_tokens": cap,
        "max_context_tokens": manifest.max_context_tokens,
        "capped_s": round(capped_s, 2),
        "uncapped_s": round(uncapped_s, 2),
        "uncapped_vs_capped": round(uncapped_s / capped_s, 2),
        "capped_truncated": sum(o.truncated for o in capped),
        "uncapped_truncated": sum(o.truncated for o in uncapped),
        "megabyte_fit_ms": round(fit_s * 1000, 1),
        "megabyte_fit_to_context_ms": round(context_fit_s * 1000, 1),
        "megabyte_loop_stall_ms": round(stall_s * 1000, 1),
        "megabyte_call_s": round(megabyte_call_s, 2),
        "device": _device(judge),
    }
