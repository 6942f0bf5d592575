"""Rank1's per-document policy (backends.judge.rank1.Rank1Document) without a model: a toy vocabulary
whose tokens are whole strings, fed as a backend feeds them. The in-process engine and the Triton
gateway drive this one object, so what it decides here is what both serve."""

from __future__ import annotations

import math

import pytest

from irgate.backends.judge import rank1
from irgate.backends.judge.manifest import JudgeManifest
from irgate.backends.judge.rank1 import FittedPrompt, Phase, Rank1Document
from irgate.domain.judging import Ended, ReasoningDelta, Verdict

EOS, TRUE, FALSE = 0, 1, 2
VOCAB = {EOS: "<eos>", TRUE: " true", FALSE: " false", 3: "Rain", 4: " falls.", 5: " It", 6: " is", 7: "</think>", 8: "<think>"}
MANIFEST = JudgeManifest(name="toy", prompt_template=rank1.PROMPT_TEMPLATE, true_token_id=TRUE, false_token_id=FALSE,
                         eos_token_id=EOS, pad_token_id=EOS, max_reasoning_tokens=8, max_context_tokens=100)
PROMPT = FittedPrompt("...Passage: rain\n<think>", [8], truncated=False)
# Logits that favour " true" by a margin of 2: p(true) = sigmoid(2).
LEANS_TRUE = (3.0, 1.0)


def decode(ids: list[int]) -> str:
    return "".join(VOCAB[token] for token in ids)


def document(budget: int, stream: bool = False) -> Rank1Document:
    return Rank1Document(0, PROMPT, budget, MANIFEST, decode, stream)


def feed(doc: Rank1Document, tokens: list[int]) -> list:
    events = []
    for token in tokens:
        events.extend(doc.generated(token, LEANS_TRUE))
    return events


def test_an_answer_stop_in_the_text_ends_the_document_scored_at_that_step() -> None:
    doc = document(budget=8)
    events = feed(doc, [3, 4, 7, TRUE])
    assert doc.phase is Phase.DONE
    (verdict,) = events
    assert verdict == Verdict(0, 1 / (1 + math.exp(-2)), "Rain falls.", 4, Ended.ANSWERED, False)


def test_a_spent_budget_forces_the_answer_from_the_last_sentence() -> None:
    doc = document(budget=4)
    assert feed(doc, [3, 4, 5, 6]) == [] and doc.phase is Phase.FORCING and doc.ended is Ended.FORCED
    assert doc.forced_text() == PROMPT.text + "\nRain falls.\n</think>"  # " It is" cut: not a sentence
    (verdict,) = doc.forced_answer((0.0, 0.0))
    assert (verdict.score, verdict.ended, verdict.reasoning_tokens, doc.phase) == (0.5, Ended.FORCED, 4, Phase.DONE)


def test_an_eos_or_a_backend_that_stopped_at_it_forces_the_answer() -> None:
    doc = document(budget=8)
    feed(doc, [3, EOS])
    assert (doc.phase, doc.ended, doc.generated_tokens) == (Phase.FORCING, Ended.FORCED_EOS, 2)
    stopped = document(budget=8)
    feed(stopped, [3])
    stopped.stopped()  # Triton stops at end_id without returning it: counted all the same
    assert (stopped.phase, stopped.ended, stopped.generated_tokens) == (Phase.FORCING, Ended.FORCED_EOS, 2)
    assert stopped.forced_text() == doc.forced_text()


def test_a_budget_of_zero_starts_forced() -> None:
    doc = document(budget=0)
    assert doc.phase is Phase.FORCING and doc.forced_text() == PROMPT.text + "\n\n</think>"
    (verdict,) = doc.forced_answer(LEANS_TRUE)
    assert (verdict.ended, verdict.reasoning_tokens, verdict.reasoning) == (Ended.FORCED, 0, "")


def test_streamed_deltas_hold_back_what_could_become_a_stop_and_add_up_to_the_reasoning() -> None:
    doc = document(budget=8, stream=True)
    events = feed(doc, [3, 4, 5, 6, 7, FALSE])
    deltas = [event for event in events if isinstance(event, ReasoningDelta)]
    verdict = events[-1]
    assert isinstance(verdict, Verdict) and verdict.ended is Ended.ANSWERED
    assert "".join(delta.text for delta in deltas) == verdict.reasoning == "Rain falls. It is"
    assert all("</think>" not in delta.text for delta in deltas)
    assert feed(document(budget=8), [3, 4, 5]) == []  # no deltas unless streaming


def test_a_step_in_the_wrong_phase_is_refused() -> None:
    doc = document(budget=8)
    with pytest.raises(RuntimeError, match="not forcing"):
        doc.forced_answer(LEANS_TRUE)
    feed(doc, [7, TRUE])
    with pytest.raises(RuntimeError, match="is done, not reasoning"):
        doc.generated(3, LEANS_TRUE)
    with pytest.raises(RuntimeError, match="not reasoning"):
        doc.stopped()
