"""The reasoning judge must judge exactly as Rank1 does (shared/REFERENCE.md section 2).

Real SmolLM2-135M weights; every batched score is checked against the naive per-document
transformers path (generate + scoring forward) on the same prompts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from conftest import judge_events, outcomes_of

from irgate.backends.judge import JudgeBackend, JudgeOutcome, LocalJudge, ReasoningDelta
from irgate.bench.judge import benchmark_prompts, naive_judge
from irgate.core.judging import answer_stop, forced_continuation, judge_prompt
from irgate.errors import InvalidArgument, Unavailable
from irgate.models.judge import DEFAULT_JUDGE_NAME, RANK1_PROMPT_TEMPLATE, JudgeManifest, prepare_judge

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
    assert manifest.prompt_template == RANK1_PROMPT_TEMPLATE
    assert 0 < manifest.max_reasoning_tokens <= 1024  # a CPU-sized cap for the default model
    assert prepare_judge(None, default) == manifest
    assert prepare_judge(smollm2_hf, judge_folder) == JudgeManifest.load(judge_folder)
    # Never serve another judge's weights under the default's name.
    with pytest.raises(InvalidArgument, match="another judge"):
        prepare_judge(None, judge_folder)


# ---- runtime ------------------------------------------------------------------------------


def test_local_judge_is_a_backend(local_judge: LocalJudge, judge_folder: Path) -> None:
    assert isinstance(local_judge, JudgeBackend)
    assert local_judge.address == f"local:{judge_folder.resolve()}"
    assert asyncio.run(local_judge.ready())


def test_budget_zero_is_forced_at_once(local_judge: LocalJudge, reference) -> None:
    prompts = benchmark_prompts(local_judge.manifest, 3)
    outcomes = outcomes_of(judge_events(local_judge, prompts, 0))
    naive = naive_judge(*reference, local_judge.manifest, prompts, 0)
    assert [o.index for o in outcomes] == [0, 1, 2]
    for outcome, verdict in zip(outcomes, naive):
        assert (outcome.ended, outcome.reasoning_tokens, outcome.reasoning) == ("forced", 0, "")
        assert 0.0 <= outcome.score <= 1.0
        assert outcome.score == pytest.approx(verdict.score, abs=1e-4)


def test_batched_scores_equal_naive_per_document(local_judge: LocalJudge, reference) -> None:
    prompts = benchmark_prompts(local_judge.manifest, 4)
    # Different lengths, so the batch really pads.
    prompts[1] = judge_prompt(local_judge.manifest, "ok", "", "", "A short passage.")
    outcomes = outcomes_of(judge_events(local_judge, prompts, 16))
    naive = naive_judge(*reference, local_judge.manifest, prompts, 16)
    for outcome, verdict in zip(outcomes, naive):
        assert (outcome.reasoning, outcome.reasoning_tokens, outcome.ended) == (
            verdict.reasoning,
            verdict.reasoning_tokens,
            verdict.ended,
        )
        assert 0.0 <= outcome.score <= 1.0
        assert abs(outcome.score - verdict.score) <= 1e-3


def test_answered_path_scores_from_answer_step(few_shot_folder: Path, reference) -> None:
    backend = LocalJudge(few_shot_folder, threads=2)
    manifest = backend.manifest
    prompts = [
        judge_prompt(manifest, "what causes diabetes", "", "", "Insulin resistance is a major cause of type 2 diabetes."),
        judge_prompt(manifest, "tides", "", "", "The moon's gravity raises ocean tides."),
    ]
    outcomes = outcomes_of(judge_events(backend, prompts, 48))
    naive = naive_judge(*reference, manifest, prompts, 48)
    for outcome, verdict in zip(outcomes, naive):
        assert outcome.ended == verdict.ended == "answered"
        assert outcome.reasoning == verdict.reasoning
        assert "</think>" not in outcome.reasoning
        assert outcome.reasoning_tokens == verdict.reasoning_tokens < 48
        assert abs(outcome.score - verdict.score) <= 1e-3

    async def close_mid_batch() -> None:
        stream = backend.judge(["Write a long story about a brave cat who sails the sea."], 2000, stream_reasoning=True)
        await stream.__anext__()
        closing = asyncio.create_task(backend.close())
        with pytest.raises(Unavailable, match="closed while judging"):
            async for _ in stream:
                pass
        await closing

    asyncio.run(close_mid_batch())
    assert not asyncio.run(backend.ready())
    with pytest.raises(Unavailable):
        judge_events(backend, prompts, 4)


def test_streaming_in_completion_order(local_judge: LocalJudge) -> None:
    prompts = benchmark_prompts(local_judge.manifest, 4)
    prompts[2] = "Write a long story about a brave cat who sails the sea."  # runs to the budget
    events = judge_events(local_judge, prompts, 24, stream=True)
    outcomes = [e for e in events if isinstance(e, JudgeOutcome)]
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
    assert all(isinstance(e, JudgeOutcome) for e in judge_events(local_judge, prompts[:2], 8))


def test_cancel_stops_the_worker(local_judge: LocalJudge) -> None:
    # SmolLM2 repeats itself on this prompt for hundreds of tokens, far past the first delta.
    prompts = ["Write a long story about a brave cat who sails the sea."] * 4
    started = local_judge.steps

    async def run() -> float:
        stream = local_judge.judge(prompts, 2000, stream_reasoning=True)
        async for event in stream:
            assert isinstance(event, ReasoningDelta)
            break
        await stream.aclose()
        closed = time.perf_counter()
        while local_judge.busy:
            await asyncio.sleep(0.01)
        return time.perf_counter() - closed

    # One decode step of 4 rows takes well under a second here; 2 s leaves room for a busy box.
    assert asyncio.run(run()) < 2.0
    steps = local_judge.steps
    time.sleep(0.3)
    assert local_judge.steps == steps  # nothing keeps computing in the background
    assert steps - started < 100  # far from the 2000-token budget


def test_rejects_budget_outside_manifest_cap(local_judge: LocalJudge) -> None:
    with pytest.raises(InvalidArgument, match="max_reasoning_tokens"):
        judge_events(local_judge, ["x"], local_judge.manifest.max_reasoning_tokens + 1)
    with pytest.raises(InvalidArgument, match="max_reasoning_tokens"):
        judge_events(local_judge, ["x"], -1)
    assert judge_events(local_judge, [], 8) == []

