"""The reasoning judge must judge exactly as Rank1 does, under continuous batching.

Real SmolLM2-135M weights; every batched score is checked against the naive per-document
transformers path (generate + scoring forward) on the same prompts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from support import judge_events, outcomes_of, wait_for

# The naive reference lives with the benchmark that times the engine against it (benchmarks/).
from naive_judge import PAIRS, QUERY, benchmark_request, naive_judge, request_prompts

from irgate.backends.judge import rank1
from irgate.backends.judge.contract import JudgeBackend, JudgeRequest, PassageText
from irgate.backends.judge.engine import EngineLimits, JudgeEngine
from irgate.backends.judge.local import LocalJudge
from irgate.backends.judge.rank1 import ReasoningDelta, answer_stop, fit_prompt, forced_continuation, judge_prompt, prompt_limit
from irgate.domain.judging import Verdict
from irgate.errors import InvalidArgument, IrgateError, Unavailable
from irgate.backends.judge.manifest import JudgeManifest
from irgate.models.judge import DEFAULT_JUDGE_NAME, SMOLLM2_MAX_PASSAGE_TOKENS, prepare_judge
from irgate.models.manifest import MANIFEST_FILE

# SmolLM2 "reasons" about this for hundreds of tokens: it runs to any budget.
STORY = "Write a long story about a brave cat who sails the sea."


def _link_files(source: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        (out / entry.name).symlink_to(entry)


@pytest.fixture(scope="session")
def reference(judge_folder: Path):
    """The model and tokenizer loaded independently, for the naive per-document path."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(judge_folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(judge_folder)


# ---- text rules ---------------------------------------------------------------------------


def test_prompt_is_rank1_raw_text(local_judge: LocalJudge) -> None:
    prompt = judge_prompt(local_judge.manifest, "what causes diabetes", "Ignore animal studies.", "Diabetes", "Insulin resistance.")
    assert prompt == (
        "Determine if the following passage is relevant to the query. Answer only with 'true' or 'false'.\n"
        "Query: what causes diabetes Ignore animal studies.\n"
        "Passage: Diabetes Insulin resistance.\n"
        "<think>"
    )
    plain = judge_prompt(local_judge.manifest, "q {x}", "", "", "p {passage}")
    assert plain.endswith("Query: q {x}\nPassage: p {passage}\n<think>")


def test_answer_token_ids_are_first_ids_of_spaced_words(local_judge: LocalJudge, reference) -> None:
    _, tokenizer = reference
    assert local_judge.manifest.true_token_id == tokenizer.encode(" true", add_special_tokens=False)[0]
    assert local_judge.manifest.false_token_id == tokenizer.encode(" false", add_special_tokens=False)[0]
    assert local_judge.manifest.answer_stops == ("</think> true", "</think> false")
    assert local_judge.manifest.pad_token_id == local_judge.manifest.eos_token_id == tokenizer.eos_token_id


def test_forced_continuation_cuts_to_last_sentence() -> None:
    assert forced_continuation("A. B? C") == "\nA. B?\n</think>"
    assert forced_continuation("\nFirst! second") == "\nFirst!\n</think>"
    assert forced_continuation("Ends with a sentence.  \n") == "\nEnds with a sentence.\n</think>"
    # Without any sentence end Rank1 keeps the whole reasoning rather than dropping it.
    assert forced_continuation("  no sentence end ") == "\nno sentence end\n</think>"
    assert forced_continuation("") == "\n\n</think>"


def test_answer_stop_detection(reference) -> None:
    stops = ("</think> true", "</think> false")
    assert answer_stop("thinking</think> false", stops) == len("thinking")
    assert answer_stop("thinking</think>", stops) is None
    assert answer_stop("a</think> true and more", stops) == 1  # contained, not only at the end
    # Fed token by token as the runtime does: found exactly when the completing token arrives.
    _, tokenizer = reference
    ids = tokenizer.encode("The passage is on topic.</think> true", add_special_tokens=False)
    text, hits = "", []
    for step, token in enumerate(ids):
        since = len(text)
        text += tokenizer.decode([token])
        if answer_stop(text, stops, since) is not None:
            hits.append(step)
    assert hits == [len(ids) - 1]


def test_manifest_roundtrip_and_validation(local_judge: LocalJudge, tmp_path: Path) -> None:
    local_judge.manifest.save(tmp_path)
    assert JudgeManifest.load(tmp_path) == local_judge.manifest
    with pytest.raises(ValueError, match="query"):
        dataclasses.replace(local_judge.manifest, prompt_template="Passage: {passage}")
    with pytest.raises(FileNotFoundError, match="prepare_judge"):
        JudgeManifest.load(tmp_path / "missing")


def test_prepare_default_and_idempotent(smollm2_hf: Path, judge_folder: Path, tmp_path: Path) -> None:
    # A folder that already holds the converted weights: gguf_to_hf skips, so no second conversion.
    default = tmp_path / "default"
    _link_files(smollm2_hf, default)
    manifest = prepare_judge(None, default)
    assert manifest.name == DEFAULT_JUDGE_NAME
    assert manifest.prompt_template == rank1.PROMPT_TEMPLATE
    assert 0 < manifest.max_reasoning_tokens <= 1024  # a CPU-sized cap for the default model
    assert manifest.max_passage_tokens == SMOLLM2_MAX_PASSAGE_TOKENS  # the family's passage cap
    assert prepare_judge(None, default) == manifest
    assert prepare_judge(smollm2_hf, judge_folder) == JudgeManifest.load(judge_folder)
    assert JudgeManifest.load(judge_folder).max_passage_tokens == rank1.MAX_PASSAGE_TOKENS
    # A manifest written before passage caps existed is prepared again, and gets its family's cap.
    written = json.loads((default / MANIFEST_FILE).read_text())
    del written["max_passage_tokens"]
    (default / MANIFEST_FILE).write_text(json.dumps(dict(written, max_reasoning_tokens=7)))
    assert prepare_judge(None, default) == manifest
    # Never serve another judge's weights under the default's name.
    with pytest.raises(InvalidArgument, match="another judge"):
        prepare_judge(None, judge_folder)


# ---- runtime ------------------------------------------------------------------------------


def request(passages: list[str], budget: int, query: str = QUERY, stream: bool = False) -> JudgeRequest:
    return JudgeRequest(query, "", tuple(PassageText("", text) for text in passages), budget, stream)


def test_local_judge_is_a_backend(local_judge: LocalJudge, judge_folder: Path) -> None:
    assert isinstance(local_judge, JudgeBackend)
    assert local_judge.address == f"local:{judge_folder.resolve()}"
    assert asyncio.run(local_judge.ready())


def test_budget_zero_is_forced_at_once(local_judge: LocalJudge, reference) -> None:
    call = benchmark_request(3, 0)
    outcomes = outcomes_of(judge_events(local_judge, call))
    naive = naive_judge(*reference, local_judge.manifest, request_prompts(local_judge.manifest, call), 0)
    assert [o.index for o in outcomes] == [0, 1, 2]
    for outcome, verdict in zip(outcomes, naive, strict=True):
        assert (outcome.ended, outcome.reasoning_tokens, outcome.reasoning) == ("forced", 0, "")
        assert outcome.score == pytest.approx(verdict.score, abs=1e-5)


def _assert_like_naive(outcomes: list[Verdict], naive: list) -> None:
    for outcome, verdict in zip(outcomes, naive, strict=True):
        assert (outcome.reasoning, outcome.reasoning_tokens, outcome.ended) == (
            verdict.reasoning,
            verdict.reasoning_tokens,
            verdict.ended,
        )
        assert 0.0 <= outcome.score <= 1.0
        assert abs(outcome.score - verdict.score) <= 1e-5


def test_batched_scores_equal_naive_per_document(local_judge: LocalJudge, reference) -> None:
    # Different lengths, so the batch really pads; the story runs to the budget ("forced"),
    # the claims end early by EOS ("forced_eos").
    passages = [evidence for _, evidence in PAIRS[:3]] + ["A short passage.", STORY]
    call = request(passages, 16, query=PAIRS[0][0])
    outcomes = outcomes_of(judge_events(local_judge, call))
    naive = naive_judge(*reference, local_judge.manifest, request_prompts(local_judge.manifest, call), 16)
    _assert_like_naive(outcomes, naive)
    assert {o.ended for o in outcomes} == {"forced", "forced_eos"}


def test_concurrent_calls_are_batched_and_judge_like_one_at_a_time(local_judge: LocalJudge, reference) -> None:
    """Continuous batching: documents of concurrent calls share decode steps, and each verdict
    is the one the naive loop gives (same endings and tokens, scores within 1e-5 in fp32)."""
    calls = [request([p.text for p in benchmark_request(4, 12).passages[i:]] + [STORY], 12, query=q)
             for i, q in enumerate([QUERY, "Is this about medicine?", "cats"])]
    engine = local_judge.engine
    assert engine is not None
    before = engine.stats.forward_passes

    async def run() -> list[list[Verdict]]:
        results = await asyncio.gather(*(asyncio.to_thread(judge_events, local_judge, call) for call in calls))
        return [outcomes_of(events) for events in results]

    results = asyncio.run(run())
    forwards = engine.stats.forward_passes - before
    for call, outcomes in zip(calls, results, strict=True):
        naive = naive_judge(*reference, local_judge.manifest, request_prompts(local_judge.manifest, call), 12)
        _assert_like_naive(outcomes, naive)
    # One at a time, the three stories alone would take 3 x 12 decode steps.
    assert forwards < 3 * 12


def test_answered_path_scores_from_answer_step(few_shot_folder: Path, reference) -> None:
    backend = LocalJudge(few_shot_folder, threads=2)
    call = JudgeRequest("what causes diabetes", "", (
        PassageText("", "Insulin resistance is a major cause of type 2 diabetes."),
        PassageText("Tides", "The moon's gravity raises ocean tides."),
    ), 48)
    outcomes = outcomes_of(judge_events(backend, call))
    naive = naive_judge(*reference, backend.manifest, request_prompts(backend.manifest, call), 48)
    assert len(outcomes) == 2
    for outcome, verdict in zip(outcomes, naive, strict=True):
        assert outcome.ended == verdict.ended == "answered"
        assert outcome.reasoning == verdict.reasoning
        assert "</think>" not in outcome.reasoning
        assert outcome.reasoning_tokens == verdict.reasoning_tokens < 48
        assert abs(outcome.score - verdict.score) <= 1e-5

    async def close_mid_batch() -> None:
        stream = backend.judge(request([STORY], 2000, query="cats", stream=True))
        await asyncio.wait_for(stream.__anext__(), 120)
        closing = asyncio.create_task(backend.close())
        with pytest.raises(Unavailable, match="closed while judging"):
            async for _ in stream:
                pass
        await closing

    asyncio.run(close_mid_batch())
    assert not asyncio.run(backend.ready())
    with pytest.raises(Unavailable):
        judge_events(backend, call)


def test_a_shared_prefix_judges_as_computing_each_prompt_whole(local_judge: LocalJudge, reference) -> None:
    """A request's query and instruction are computed once and copied into each document's slot:
    the verdicts are the naive loop's, with fewer prompt tokens computed than without sharing."""
    instruction = "Only passages about human studies count; ignore mouse and cell studies. " * 4
    call = JudgeRequest(PAIRS[0][0], instruction, tuple(PassageText("", evidence) for _, evidence in PAIRS[:5]), 6)
    engine = local_judge.engine
    assert engine is not None
    tokens = []
    results = []
    try:
        for share in (True, False):
            local_judge.share_prefixes = share
            before = engine.stats.prefill_tokens
            results.append(outcomes_of(judge_events(local_judge, call)))
            tokens.append(engine.stats.prefill_tokens - before)
    finally:
        local_judge.share_prefixes = True
    naive = naive_judge(*reference, local_judge.manifest, request_prompts(local_judge.manifest, call), 6)
    for outcomes in results:
        _assert_like_naive(outcomes, naive)
    # The instruction is about 60 tokens: four documents fewer compute it.
    assert tokens[0] < tokens[1] - 4 * 50


def test_streaming_in_completion_order(local_judge: LocalJudge) -> None:
    passages = [evidence for _, evidence in PAIRS[:4]]  # SmolLM2 ends these early by EOS
    passages[2] = STORY  # runs to the budget
    events = judge_events(local_judge, request(passages, 24, query=PAIRS[0][0], stream=True))
    outcomes = [e for e in events if isinstance(e, Verdict)]
    assert sorted(o.index for o in outcomes) == [0, 1, 2, 3]
    # Completion order: a document that finished in fewer steps comes out first.
    assert [o.reasoning_tokens for o in outcomes] == sorted(o.reasoning_tokens for o in outcomes)
    assert outcomes[-1].index == 2 and outcomes[-1].reasoning_tokens == 24
    for outcome in outcomes:
        position = events.index(outcome)
        deltas = [e.text for e in events if isinstance(e, ReasoningDelta) and e.index == outcome.index]
        assert "".join(deltas) == outcome.reasoning
        assert all(events.index(e) < position for e in events if isinstance(e, ReasoningDelta) and e.index == outcome.index)
    # Without asking, no deltas.
    assert all(isinstance(e, Verdict) for e in judge_events(local_judge, request(passages[:2], 8)))


def _idle(judge: LocalJudge, timeout: float = 30.0) -> None:
    wait_for(lambda: not judge.busy, timeout, "the judge going idle")


def test_cancel_during_decoding_stops_the_engine(local_judge: LocalJudge) -> None:
    engine = local_judge.engine
    assert engine is not None
    started, cancelled = engine.stats.forward_passes, engine.stats.cancelled_sequences

    async def run() -> None:
        stream = local_judge.judge(request([STORY] * 4, 2000, query="cats", stream=True))
        async for event in stream:
            assert isinstance(event, ReasoningDelta)
            break
        await stream.aclose()

    asyncio.run(run())
    _idle(local_judge)
    forwards = engine.stats.forward_passes
    time.sleep(0.3)
    assert engine.stats.forward_passes == forwards  # nothing keeps computing in the background
    assert forwards - started < 100  # far from the 2000-token budget
    assert engine.stats.cancelled_sequences - cancelled == 4


@pytest.fixture
def small_engine(judge_folder: Path):
    """An engine with small limits, so that prefill takes many chunks and capacity runs out."""
    engine = JudgeEngine.load(judge_folder, threads=2, limits=EngineLimits(max_batch_tokens=4096, max_batch_rows=4, prefill_chunk_tokens=64))
    yield engine
    engine.close()


def _generation(engine: JudgeEngine, prompt: list[int], tokens: int, group: object, end_id: int = -1) -> tuple:
    """engine.generate with its tokens and ending collected; returns (handle, tokens, finished event, endings)."""
    produced: list[int] = []
    reasons: list[str | IrgateError] = []
    done = threading.Event()

    def finish(reason: str | IrgateError) -> None:
        reasons.append(reason)
        done.set()

    handle = engine.generate(prompt, tokens, end_id=end_id, on_token=lambda token, _: produced.append(token),
                             on_finish=finish, group=group)
    return handle, produced, done, reasons


def test_a_small_request_is_served_while_a_big_one_runs(small_engine: JudgeEngine) -> None:
    tokenizer = small_engine.tokenizer
    prompt = list(tokenizer(judge_prompt(small_engine.manifest, "cats", "", "", STORY))["input_ids"])
    big = [_generation(small_engine, prompt, 200, "big") for _ in range(12)]  # 3x the row limit
    wait_for(lambda: small_engine.stats.running_rows >= 4, 60, "the big request filling the rows")
    _, small_tokens, small_done, small_reasons = _generation(small_engine, prompt, 3, "small")
    assert small_done.wait(120)
    assert small_reasons == ["length"] and len(small_tokens) == 3
    # The small call finished while the big one was far from done: it did not queue behind it.
    assert sum(len(tokens) for _, tokens, _, _ in big) < 12 * 200 / 2
    for handle, *_ in big:
        handle.cancel()
    for _, _, done, reasons in big:
        assert done.wait(30) and reasons[-1] in ("cancelled", "length")


def test_cancel_during_prefill_frees_capacity_within_a_chunk(small_engine: JudgeEngine) -> None:
    tokenizer = small_engine.tokenizer
    long_prompt = list(tokenizer(judge_prompt(small_engine.manifest, "cats", "", "", STORY * 60))["input_ids"])
    assert len(long_prompt) > 800  # with 64-token chunks: many prefill forwards
    handles = [_generation(small_engine, long_prompt, 8, "long") for _ in range(3)]
    wait_for(lambda: small_engine.stats.prefill_tokens > 0, 60, "the prefill starting")
    forwards = small_engine.stats.forward_passes
    for handle, *_ in handles:
        handle.cancel()
    for _, produced, done, reasons in handles:
        assert done.wait(30) and reasons == ["cancelled"] and produced == []
    # At most the chunk in flight ran after the cancel, not the rest of the prefill.
    assert small_engine.stats.forward_passes - forwards <= 2
    assert small_engine.stats.running_rows == 0
    short = list(tokenizer(judge_prompt(small_engine.manifest, "cats", "", "", "A cat."))["input_ids"])
    _, tokens, done, reasons = _generation(small_engine, short, 2, "next")
    assert done.wait(60) and reasons == ["length"] and len(tokens) == 2


def test_engine_generate_stops_at_end_id_without_returning_it(small_engine: JudgeEngine) -> None:
    claim, evidence = PAIRS[0]
    prompt = list(small_engine.tokenizer(judge_prompt(small_engine.manifest, claim, "", "", evidence))["input_ids"])
    eos = small_engine.manifest.eos_token_id
    _, free, done, _ = _generation(small_engine, prompt, 40, "free")  # end_id -1: never stops early
    assert done.wait(60) and eos in free  # SmolLM2 ends this one early
    _, tokens, done, reasons = _generation(small_engine, prompt, 40, "stopping", end_id=eos)
    assert done.wait(60) and reasons == ["end_id"] and tokens == free[: free.index(eos)]


def test_long_passages_are_cut_to_fit_the_context(local_judge: LocalJudge, judge_folder: Path) -> None:
    manifest = dataclasses.replace(local_judge.manifest, max_context_tokens=256)
    tokenizer = AutoTokenizer.from_pretrained(judge_folder)
    fitted = fit_prompt(manifest, tokenizer, "what causes rain", "Use physics.", "Rain", "Droplets condense. " * 500, 32)
    assert fitted.truncated and len(fitted.ids) <= prompt_limit(manifest, 32)
    assert len(fitted.ids) > prompt_limit(manifest, 32) - 8  # the passage keeps nearly all the room
    # The query and instruction are whole; only the passage's end is gone.
    assert "Query: what causes rain Use physics.\nPassage: Rain Droplets condense." in fitted.text
    assert fitted.text.endswith("\n<think>")
    short = fit_prompt(manifest, tokenizer, "rain", "", "", "Droplets condense.", 32)
    assert not short.truncated and short.text == judge_prompt(manifest, "rain", "", "", "Droplets condense.")
    with pytest.raises(InvalidArgument, match="query and instruction take"):
        fit_prompt(manifest, tokenizer, "rain " * 400, "", "", "Droplets.", 32)
    # A passage of megabytes is cut by characters before it is tokenised.
    huge = fit_prompt(local_judge.manifest, tokenizer, "rain", "", "", "word " * 1_000_000, 64)
    assert huge.truncated and len(huge.ids) <= prompt_limit(local_judge.manifest, 64)
    # Through the backend the verdict says so.
    (outcome,) = outcomes_of(judge_events(local_judge, request(["Droplets condense. " * 3000], 4)))
    assert outcome.truncated


class RecordingTokenizer:
    """The real tokenizer, keeping the length of the longest text it was asked to tokenise."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.longest = 0

    def __call__(self, text: str, **options: Any) -> Any:
        self.longest = max(self.longest, len(text))
        return self.tokenizer(text, **options)

    def decode(self, ids: list[int], **options: Any) -> str:
        return self.tokenizer.decode(ids, **options)


def passage_tokens(tokenizer: Any, fitted_text: str) -> int:
    passage = fitted_text.split("\nPassage: ", 1)[1].removesuffix("\n<think>")
    return len(tokenizer(passage, add_special_tokens=False)["input_ids"])


def test_passages_are_cut_to_the_passage_cap(local_judge: LocalJudge, judge_folder: Path) -> None:
    manifest = local_judge.manifest
    tokenizer = AutoTokenizer.from_pretrained(judge_folder)
    text = "Droplets condense into rain when moist air cools. " * 100  # about 1000 tokens
    fitted = fit_prompt(manifest, tokenizer, "what causes rain", "", "Rain", text, 32, max_passage_tokens=40)
    assert fitted.truncated and 36 <= passage_tokens(tokenizer, fitted.text) <= 40
    assert "\nPassage: Rain Droplets condense into rain" in fitted.text  # the passage keeps its start
    # Unset, the cap is the manifest's; a passage within it is judged whole, title included.
    whole = fit_prompt(manifest, tokenizer, "what causes rain", "", "Rain", text, 32)
    assert not whole.truncated and whole.text == judge_prompt(manifest, "what causes rain", "", "Rain", text)
    title_tokens = len(tokenizer("Rain " + text, add_special_tokens=False)["input_ids"])
    assert fit_prompt(manifest, tokenizer, "rain", "", "Rain", text, 32, title_tokens).truncated is False
    assert fit_prompt(manifest, tokenizer, "rain", "", "Rain", text, 32, title_tokens - 1).truncated
    # The context still bounds a cap above it.
    small = dataclasses.replace(manifest, max_context_tokens=256)
    tight = fit_prompt(small, tokenizer, "rain", "", "", text, 32, max_passage_tokens=1000)
    assert tight.truncated and len(tight.ids) <= prompt_limit(small, 32)


def test_a_megabyte_passage_is_cut_by_characters_before_tokenising(local_judge: LocalJudge, judge_folder: Path) -> None:
    recording = RecordingTokenizer(AutoTokenizer.from_pretrained(judge_folder))
    megabyte = ("Droplets condense into rain when moist air cools. " * 21_000)[: 1 << 20]
    fitted = fit_prompt(local_judge.manifest, recording, "rain", "", "", megabyte, 64, max_passage_tokens=100)
    assert fitted.truncated and passage_tokens(recording.tokenizer, fitted.text) <= 100
    # What was tokenised is bounded by the cap (a few kilobytes), not by the passage.
    assert recording.longest < 4096


def test_loading_the_judge_draws_no_progress_bar(judge_folder: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A server's log gets no "Loading weights" bar (a line per redraw); others' bars stay on."""
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    JudgeEngine.load(judge_folder, threads=1).close()
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()
