"""Rank1's text rules (shared/REFERENCE.md section 2): the prompt, the answer stop, the forced ending.

Pure string functions, so every judge backend (in-process or Triton) judges the same text.
"""

from __future__ import annotations

from collections.abc import Sequence

from irgate.models.judge import THINK_END, JudgeManifest

_SENTENCE_ENDS = (".", "!", "?")


def judge_prompt(manifest: JudgeManifest, query: str, instruction: str, title: str, text: str) -> str:
    """The raw prompt (no chat template) for one query/passage pair, as Rank1 builds it."""
    full_query = f"{query} {instruction}" if instruction else query
    passage = f"{title} {text}" if title else text
    return manifest.prompt_template.format(query=full_query, passage=passage)


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
