"""The judge manifest: the serving contract of one prepared judge folder.

A judge served with another prompt, other answer tokens or other stop strings than it was
trained with scores silently worse, so those live in the folder's manifest.json and every judge
backend reads them instead of guessing. Rank1's values are backends.judge.rank1's, the one-step
families' backends.judge.families'; `irgate prepare` (irgate.models.judge) writes the file, and
another model can override the template, the answer tokens and the stops by editing it.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import ClassVar

from irgate.backends.judge.rank1 import ANSWER_STOPS, MAX_PASSAGE_TOKENS, THINK_END
from irgate.models.manifest import ManifestFile


@dataclass(frozen=True)
class JudgeManifest(ManifestFile):
    """Serving contract of one prepared judge (Hugging Face causal-LM folder beside this manifest)."""

    made_by: ClassVar[str] = "irgate prepare, or irgate.models.judge.prepare_judge"

    name: str
    # str.format template with {query} and {passage}; literal braces must be doubled.
    prompt_template: str
    # First ids of the answer words (Rank1: " true" / " false", leading space, no special tokens):
    # the score is read from these two logits at the answer step.
    true_token_id: int
    false_token_id: int
    eos_token_id: int
    pad_token_id: int
    # Largest reasoning budget one request may ask for; the server may cap lower by flag.
    max_reasoning_tokens: int
    # Prompt + reasoning + forced answer must fit the model's positions.
    max_context_tokens: int
    # Default cap on a passage's tokens (title included); longer passages are cut at their end
    # (Verdict.truncated). The server may change it by flag, a request may lower it.
    max_passage_tokens: int = MAX_PASSAGE_TOKENS
    think_end: str = THINK_END
    # Generation stops as soon as the generated text contains one of these (Rank1's stop strings).
    answer_stops: tuple[str, ...] = ANSWER_STOPS
    # Free text: where the weights came from, for humans and for idempotent preparation.
    source: str = ""
    # The family's rules (backends.judge.families holds every preset's): the preset prepared, the
    # family, "reasoning" (Rank1: reason, then answer) or "one_step" (score read at the prompt's
    # last position), and how the score comes from the true/false logits there.
    preset: str = "rank1"
    family: str = "rank1"
    scoring: str = "reasoning"
    score_rule: str = "p_true"
    score_offset: float = 0.0  # margin_sigmoid: sigmoid(l_true - l_false - score_offset)
    supports_instructions: bool = True
    # One step only: used when a request has no instruction ("" for none).
    default_instruction: str = ""
    # One step only: how an instruction fills {instruction} (e.g. "instruction: {instruction}\n").
    instruction_template: str = "{instruction}"
    # One step only: (role, template) pieces, each tokenised alone without special tokens; roles
    # "fixed", "span", "query" (cut to query_max_tokens) and "rest" (the passage piece, cut to
    # max_passage_tokens and to what span_max_tokens leaves): families.fit applies them.
    prompt_pieces: tuple[tuple[str, str], ...] = ()
    query_max_tokens: int = 0
    span_max_tokens: int = 0

    def __post_init__(self) -> None:
        # Fail at prepare/load time, not with wrong scores at serve time.
        if self.scoring not in ("reasoning", "one_step"):
            raise ValueError(f"scoring must be 'reasoning' or 'one_step', found {self.scoring!r}")
        if self.score_rule not in ("p_true", "margin_sigmoid", "logit_sigmoid"):
            raise ValueError(f"score_rule must be p_true, margin_sigmoid or logit_sigmoid, found {self.score_rule!r}")
        object.__setattr__(self, "prompt_pieces", tuple((str(role), str(text)) for role, text in self.prompt_pieces))
        if self.scoring == "one_step":
            roles = [role for role, _ in self.prompt_pieces]
            if roles.count("rest") != 1 or not set(roles) <= {"fixed", "span", "query", "rest"}:
                raise ValueError("prompt_pieces need exactly one 'rest' piece and only fixed, span, query and rest roles")
            fields = {name for _, text in self.prompt_pieces for _, name, _, _ in string.Formatter().parse(text) if name}
            if not {"query", "passage"} <= fields <= {"query", "passage", "instruction"}:
                raise ValueError(f"prompt_pieces must use {{query}} and {{passage}} (and may use {{instruction}}), found {sorted(fields)}")
        else:
            fields = {name for _, name, _, _ in string.Formatter().parse(self.prompt_template) if name is not None}
            if fields != {"query", "passage"}:
                raise ValueError(f"prompt_template must use exactly {{query}} and {{passage}}, found {sorted(fields)}")
        if self.true_token_id == self.false_token_id:
            raise ValueError("true_token_id and false_token_id must differ")
        if not self.answer_stops or not all(self.answer_stops):
            raise ValueError("answer_stops must hold at least one non-empty string")
        if self.max_reasoning_tokens < 0 or self.max_context_tokens <= 0 or self.max_passage_tokens <= 0:
            raise ValueError("max_reasoning_tokens, max_context_tokens and max_passage_tokens must be positive")
        # JSON gives lists; keep the frozen manifest hashable and equal to the one saved.
        object.__setattr__(self, "answer_stops", tuple(self.answer_stops))
