"""Rank1's rules in one place: the prompt, fitting it to the context, the answer stops, the forced
ending, p(true), and the per-document state machine that applies them token by token.

Every judge backend (the in-process engine and the Triton gateway) imports this module, so they
build, stop, force and score exactly alike; a backend only chooses tokens and reads logits.
The rules are orionw/rank1's (rank1.py, prompts.py):
- prompt: raw text, no chat template; an instruction is joined to the query with one space, a
  title to its passage with one space;
- greedy generation that stops once the generated TEXT contains "</think> true" or
  "</think> false", wherever the token boundaries fall;
- score = exp(l_true) / (exp(l_true) + exp(l_false)) from the " true"/" false" logits of the
  step that chose the answer token;
- when the budget runs out (or the model ends its text early), the reasoning is cut back to its
  last sentence, the prompt is re-sent as prompt + "\\n" + cut + "\\n</think>", and the score is
  read from the next step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from irgate.errors import InvalidArgument
from irgate.models.judge import THINK_END, JudgeManifest

# How a verdict came about: "answered": the model said true/false by itself; "forced": the
# reasoning budget ran out; "forced_eos": the model ended its text (EOS) without an answer;
# "scored": a one-step judge read its score at the prompt's last position (backends.judge.families).
Ended = Literal["answered", "forced", "forced_eos", "scored"]
# What one generated token did to a document.
Step = Literal["going", "answered", "budget", "eos"]

_SENTENCE_ENDS = (".", "!", "?")
# Forced answers re-tokenise prompt + cut reasoning + "\n</think>": room for those few tokens.
FORCED_SLACK_TOKENS = 16
# Prompt tokens decoded ahead of the first generated token, so tokenisers that drop a leading
# space at the start of a decode (SentencePiece) still give the right first characters.
_DETOKENIZE_CONTEXT = 5
# A token is rarely longer than this many characters: a passage is cut by characters to
# this bound before tokenising, so an oversized one costs milliseconds, not seconds.
CHARS_PER_TOKEN_BOUND = 24


def judge_prompt(manifest: JudgeManifest, query: str, instruction: str, title: str, text: str) -> str:
    """The raw prompt (no chat template) for one query/passage pair, as Rank1 builds it."""
    full_query = f"{query} {instruction}" if instruction else query
    passage = f"{title} {text}" if title else text
    return manifest.prompt_template.format(query=full_query, passage=passage)


@dataclass(frozen=True)
class FittedPrompt:
    """A prompt that fits the judge's context together with its reasoning budget."""

    text: str
    ids: list[int]
    truncated: bool  # the passage was cut at its end to fit


def prompt_limit(manifest: JudgeManifest, budget: int) -> int:
    """Most prompt tokens that leave room for `budget` reasoning tokens and the forced answer."""
    return manifest.max_context_tokens - budget - FORCED_SLACK_TOKENS


def fit_prompt(
    manifest: JudgeManifest,
    tokenizer: Any,
    query: str,
    instruction: str,
    title: str,
    text: str,
    budget: int,
    max_passage_tokens: int | None = None,
) -> FittedPrompt:
    """The prompt, with the passage cut at its end to `max_passage_tokens` tokens (None: the
    manifest's cap) and so that prompt + budget fit the context.

    As Rank1's vLLM runs cut at the model's maximum length, the passage loses its end; the query
    and the instruction are never cut: when they alone do not fit, the request is refused.
    """
    limit = prompt_limit(manifest, budget)
    if max_passage_tokens is None:
        max_passage_tokens = manifest.max_passage_tokens
    passage = f"{title} {text}" if title else text
    bounded, passage_ids, truncated = cut_passage(tokenizer, passage, max_passage_tokens, min(limit, max_passage_tokens))
    prompt = manifest.prompt_template.format(query=_query(query, instruction), passage=bounded)
    ids = _encode(tokenizer, prompt)
    if len(ids) <= limit:
        return FittedPrompt(prompt, ids, truncated)
    keep = len(passage_ids) - (len(ids) - limit)
    # The same boundary effect inside the template: tighten until the whole prompt fits.
    while len(ids) > limit:
        if keep <= 0:
            empty = len(_encode(tokenizer, manifest.prompt_template.format(query=_query(query, instruction), passage="")))
            raise InvalidArgument(
                f"the query and instruction take {empty} tokens of the judge's {manifest.max_context_tokens}-token "
                f"context, which leaves no room for the passage and {budget} reasoning tokens; shorten the query "
                "or the instruction, or lower max_reasoning_tokens"
            )
        prompt = manifest.prompt_template.format(query=_query(query, instruction), passage=_decode_cut(tokenizer, passage_ids[:keep]))
        ids = _encode(tokenizer, prompt)
        keep -= max(1, len(ids) - limit)
    return FittedPrompt(prompt, ids, True)


def cut_passage(tokenizer: Any, passage: str, cap: int, bound: int | None = None) -> tuple[str, list[int], bool]:
    """The passage cut at its end to `cap` tokens (no special tokens): its text, its ids, and
    whether it was cut. No more than `bound` (default `cap`) tokens' worth of characters are
    ever tokenised, so an oversized passage costs milliseconds, not seconds."""
    bounded = passage[: (cap if bound is None else bound) * CHARS_PER_TOKEN_BOUND]
    passage_ids = _encode(tokenizer, bounded, special=False)
    truncated = bounded != passage or len(passage_ids) > cap
    if truncated:
        passage_ids = passage_ids[:cap]
        bounded = _decode_cut(tokenizer, passage_ids)
        # Re-tokenising a cut can merge a boundary token or two differently: tighten to the cap.
        while len(_encode(tokenizer, bounded, special=False)) > cap:
            passage_ids = passage_ids[:-1]
            bounded = _decode_cut(tokenizer, passage_ids)
    return bounded, passage_ids, truncated


def _decode_cut(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _query(query: str, instruction: str) -> str:
    return f"{query} {instruction}" if instruction else query


def _encode(tokenizer: Any, text: str, special: bool = True) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def answer_stop(text: str, stops: Sequence[str], since: int = 0) -> int | None:
    """Start of the first stop string in `text` that ends after `since`, or None.

    Rank1 (vLLM) stops once the generated text CONTAINS a stop string, wherever the token
    boundaries fall; callers pass the length the text had before the newest token as `since`,
    so each step scans only what could have completed a stop.
    """
    longest = max(len(stop) for stop in stops)
    start = max(0, since - longest + 1)
    found = [index for stop in stops if (index := text.find(stop, start)) >= 0]
    return min(found) if found else None


def forced_continuation(reasoning_text: str, think_end: str = THINK_END) -> str:
    """What to append to the prompt when the reasoning ran out of budget.

    Rank1 cuts the reasoning back to its last complete sentence, keeps all of it when it has no
    sentence end, strips it and closes the thought, then reads one more token:
    prompt + "\n" + cut + "\n</think>".
    """
    text = reasoning_text.rstrip()
    end = max(text.rfind(mark) for mark in _SENTENCE_ENDS)
    cut = text[: end + 1] if end >= 0 else text
    return "\n" + cut.strip() + "\n" + think_end


def p_true(true_logit: float, false_logit: float) -> float:
    """Rank1's score from the " true" and " false" logits of one step: p(true) restricted to
    {true, false}, exp(l_t) / (exp(l_t) + exp(l_f)) = sigmoid(l_t - l_f), without overflow."""
    margin = float(true_logit) - float(false_logit)
    if margin >= 0:
        return 1.0 / (1.0 + math.exp(-margin))
    return math.exp(margin) / (1.0 + math.exp(margin))


def decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    """Rank1 keeps special tokens (e.g. </think>) in the text, and no space clean-up that would
    make a longer decode disagree with a shorter one.

    A fast tokenizer decodes through its Rust backend directly: the judge decodes twice per
    token of every document, and the Python wrapper's overhead per call was half a GPU judge's time."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return lambda ids: backend.decode(ids, skip_special_tokens=False)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


@dataclass(frozen=True)
class JudgeOutcome:
    """The verdict on one document."""

    index: int  # position of the document in the request
    score: float  # p(true) from the " true"/" false" logits at the answer step, in [0, 1]
    reasoning: str  # generated text before the answer (special tokens kept, stop string and EOS dropped)
    reasoning_tokens: int  # tokens generated for this document (the answer token and an EOS included)
    ended: Ended
    truncated: bool = False  # the passage was cut to fit the judge's context


@dataclass(frozen=True)
class ReasoningDelta:
    """New reasoning text of one document; the deltas of a document concatenate to its reasoning."""

    index: int
    text: str


JudgeEvent = JudgeOutcome | ReasoningDelta


@dataclass
class Judgement:
    """One document under Rank1's rules while its reasoning is generated, token by token."""

    index: int
    prompt: FittedPrompt
    generated: list[int] = field(default_factory=list)
    text: str = ""  # decoded generated text so far
    streamed: int = 0  # characters of `text` already sent as deltas
    # Incremental detokenisation (vLLM's scheme) over prompt context + generated ids.
    tokens: list[int] = field(default_factory=list)
    prefix_offset: int = 0
    read_offset: int = 0

    def __post_init__(self) -> None:
        self.tokens = self.prompt.ids[-_DETOKENIZE_CONTEXT:]
        self.read_offset = len(self.tokens)

    def feed(self, token: int, manifest: JudgeManifest, budget: int, decode: Callable[[list[int]], str]) -> Step:
        """Takes the next generated token: "answered" when the text now holds an answer stop
        (the logits that chose this token score it), "eos" or "budget" when it must be forced."""
        self.generated.append(token)
        if token == manifest.eos_token_id:  # vLLM stops on EOS and leaves it out of the text
            return "eos"
        since = len(self.text)
        self._detokenize(decode)
        at = answer_stop(self.text, manifest.answer_stops, since)
        if at is not None:
            self.text = self.text[:at]
            return "answered"
        return "budget" if len(self.generated) >= budget else "going"

    def forced_text(self, manifest: JudgeManifest) -> str:
        """The text Rank1 re-sends to force the answer."""
        return self.prompt.text + forced_continuation(self.text, manifest.think_end)

    def delta(self, manifest: JudgeManifest) -> ReasoningDelta | None:
        """Reasoning text safe to stream now: what could still become a stop string is held back."""
        ready = len(self.text) - (max(len(stop) for stop in manifest.answer_stops) - 1)
        if ready <= self.streamed:
            return None
        delta = ReasoningDelta(self.index, self.text[self.streamed : ready])
        self.streamed = ready
        return delta

    def finish(self, score: float, ended: Ended, stream: bool) -> list[JudgeEvent]:
        """The last reasoning delta (when streaming) and the outcome."""
        events: list[JudgeEvent] = []
        if stream and len(self.text) > self.streamed:
            events.append(ReasoningDelta(self.index, self.text[self.streamed :]))
            self.streamed = len(self.text)
        events.append(JudgeOutcome(self.index, score, self.text, len(self.generated), ended, self.prompt.truncated))
        return events

    def _detokenize(self, decode: Callable[[list[int]], str]) -> None:
        """Appends the newest token's text, waiting while it ends mid-character."""
        self.tokens.append(self.generated[-1])
        before = decode(self.tokens[self.prefix_offset : self.read_offset])
        after = decode(self.tokens[self.prefix_offset :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)


def ended_by(step: Step) -> Ended:
    """The ending a forced document reports."""
    return "forced_eos" if step == "eos" else "forced"
