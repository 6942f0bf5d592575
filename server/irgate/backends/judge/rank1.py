"""Rank1's rules in one place: the prompt, fitting it to the context, the answer stops, the forced
ending, the answer tokens, p(true), and the one per-document policy (generate, force, score) that
applies them token by token.

Every judge backend (the in-process engine and the Triton gateway, unary and streaming) drives
`Rank1Document`, so they build, stop, force and score exactly alike; a backend only chooses tokens
and reads logits. The rules are orionw/rank1's (rank1.py, prompts.py):
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

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from irgate.domain.judging import Ended, JudgeEvent, ReasoningDelta, Verdict
from irgate.errors import InvalidArgument

if TYPE_CHECKING:
    from irgate.backends.judge.manifest import JudgeManifest

# orionw/rank1 prompts.py: raw text, no chat template; the model thinks after "<think>".
PROMPT_TEMPLATE = (
    "Determine if the following passage is relevant to the query. Answer only with 'true' or 'false'.\n"
    "Query: {query}\nPassage: {passage}\n<think>"
)
THINK_END = "</think>"
ANSWER_STOPS = (f"{THINK_END} true", f"{THINK_END} false")
# p(true) is read from the logits of the first ids of these (leading space, no special tokens).
TRUE_WORD, FALSE_WORD = " true", " false"
# Rank1 allows 8192 reasoning tokens.
MAX_REASONING_TOKENS = 8192
# The passage cap, in tokens (title included), below which a passage is judged whole. Rank1 was
# trained on MS MARCO passages (a few hundred tokens) and BEIR's passages mostly fit in 2048, so
# this cap changes almost no Rank1 score while a context-length document cannot hold a GPU for one call.
MAX_PASSAGE_TOKENS = 2048

_SENTENCE_ENDS = (".", "!", "?")
# Forced answers re-tokenise prompt + cut reasoning + "\n</think>": room for those few tokens.
FORCED_SLACK_TOKENS = 16
# Prompt tokens decoded ahead of the first generated token, so tokenisers that drop a leading
# space at the start of a decode (SentencePiece) still give the right first characters.
_DETOKENIZE_CONTEXT = 5
# A token is rarely longer than this many characters: a passage is cut by characters to
# this bound before tokenising, so an oversized one costs milliseconds, not seconds.
CHARS_PER_TOKEN_BOUND = 24

# What one generated token did to a document's reasoning.
Step = Literal["going", "answered", "budget", "eos"]


def answer_token_id(tokenizer: Any, word: str) -> int:
    """The first id of an answer word (no special tokens): the logit its score is read from."""
    ids = tokenizer.encode(word, add_special_tokens=False)
    if not ids:
        raise InvalidArgument(f"the tokenizer encodes {word!r} to no tokens")
    return int(ids[0])


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
    {true, false}, exp(l_t) / (exp(l_t) + exp(l_f)) = sigmoid(l_t - l_f)."""
    return sigmoid(float(true_logit) - float(false_logit))


def sigmoid(x: float) -> float:
    """1 / (1 + exp(-x)), without overflow for any finite x."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    return math.exp(x) / (1.0 + math.exp(x))


def decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    """Rank1 keeps special tokens (e.g. </think>) in the text, and no space clean-up that would
    make a longer decode disagree with a shorter one.

    A fast tokenizer decodes through its Rust backend directly: the judge decodes twice per
    token of every document, so the Python wrapper's per-call overhead would be paid on every token."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return lambda ids: backend.decode(ids, skip_special_tokens=False)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


@dataclass
class Judgement:
    """One document's reasoning text under Rank1's stops, token by token: detokenised, the answer
    stop found, the part that cannot become a stop streamed (Rank1Document drives it)."""

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
        events.append(Verdict(self.index, score, self.text, len(self.generated), ended, self.prompt.truncated))
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
    return Ended.FORCED_EOS if step == "eos" else Ended.FORCED


class Phase(enum.Enum):
    """Where one document stands under Rank1's policy; its backend acts on it after every step."""

    REASONING = "reasoning"  # generate: each greedy token goes to Rank1Document.generated
    FORCING = "forcing"  # run Rank1Document.forced_text; the step after it goes to forced_answer
    DONE = "done"  # the verdict was given


class Rank1Document:
    """The one per-document policy: reason under the budget until an answer stop, else force the
    answer; score p(true) at the step that gave the answer.

    A backend feeds each generated token with the true/false logits of the step that chose it,
    runs the forced text when the phase turns FORCING (a budget of 0 starts there), and hands the
    step after it to `forced_answer`. Each call returns the events to send (reasoning deltas when
    streaming, then the verdict)."""

    def __init__(
        self, index: int, prompt: FittedPrompt, budget: int, manifest: JudgeManifest,
        decode: Callable[[list[int]], str], stream: bool,
    ) -> None:
        self.judgement = Judgement(index, prompt)
        self._budget = budget
        self._manifest = manifest
        self._decode = decode
        self._stream = stream
        self.phase = Phase.REASONING if budget > 0 else Phase.FORCING
        self.ended = Ended.FORCED  # how a forced answer came about; a budget of 0 is forced from the start

    @property
    def generated_tokens(self) -> int:
        return len(self.judgement.generated)

    def generated(self, token: int, scores: Sequence[float]) -> list[JudgeEvent]:
        """One generated token and the (true, false) logits of the step that chose it."""
        if self.phase is not Phase.REASONING:
            raise RuntimeError(f"document {self.judgement.index} is {self.phase.value}, not reasoning")
        step = self.judgement.feed(token, self._manifest, self._budget, self._decode)
        if step == "answered":  # the logits that chose the answer token score it
            return self._finish(p_true(*scores), Ended.ANSWERED)
        if step == "going":
            delta = self.judgement.delta(self._manifest) if self._stream else None
            return [delta] if delta is not None else []
        self.phase, self.ended = Phase.FORCING, ended_by(step)
        return []

    def stopped(self) -> None:
        """The backend ended the generation before the budget without returning a token for it:
        it stopped at EOS (Triton leaves end_id out). Counted as the EOS it was, then forced."""
        if self.phase is not Phase.REASONING:
            raise RuntimeError(f"document {self.judgement.index} is {self.phase.value}, not reasoning")
        self.judgement.generated.append(self._manifest.eos_token_id)
        self.phase, self.ended = Phase.FORCING, Ended.FORCED_EOS

    def forced_text(self) -> str:
        """What the backend runs to force the answer: the prompt, the reasoning cut to its last
        sentence and the end of the thought."""
        return self.judgement.forced_text(self._manifest)

    def forced_answer(self, scores: Sequence[float]) -> list[JudgeEvent]:
        """The (true, false) logits of the step after the forced text."""
        if self.phase is not Phase.FORCING:
            raise RuntimeError(f"document {self.judgement.index} is {self.phase.value}, not forcing")
        return self._finish(p_true(*scores), self.ended)

    def _finish(self, score: float, ended: Ended) -> list[JudgeEvent]:
        self.phase = Phase.DONE
        return self.judgement.finish(score, ended, self._stream)
