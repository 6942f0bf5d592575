"""Prompt formats must match training byte for byte (shared/REFERENCE.md sections 1 and 5)."""

from __future__ import annotations

import pytest

from irgate.core.prompts import format_document, format_query
from irgate.models.manifest import EmbedderManifest


def _manifest(style: str, query_prefix: str = "", passage_prefix: str = "") -> EmbedderManifest:
    return EmbedderManifest(
        name="m",
        dimension=8,
        pooling="eos" if style == "promptriever" else "mean",
        normalize=True,
        max_tokens=64,
        prompt_style=style,  # type: ignore[arg-type]
        query_prefix=query_prefix,
        passage_prefix=passage_prefix,
        append_eos=style == "promptriever",
        eos_token_id=2 if style == "promptriever" else None,
        pad_token_id=0,
    )


PROMPTRIEVER = _manifest("promptriever", "query: ", "passage: ")
PLAIN = _manifest("plain")


@pytest.mark.parametrize(
    ("query", "instruction", "expected"),
    [
        ("what is a cat", "Think carefully about relevance", "query:  what is a cat? Think carefully about relevance"),
        ("  what is a cat  ", "  Think carefully  ", "query:  what is a cat? Think carefully"),
        ("what is a cat?", "Be precise.", "query:  what is a cat? Be precise."),
        ("Cats are mammals.", "Be precise.", "query:  Cats are mammals. Be precise."),
        ("cats!", "Be precise.", "query:  cats! Be precise."),
        ("what is a cat", None, "query:  what is a cat"),
        ("what is a cat", "", "query:  what is a cat"),
        ("what is a cat", "   ", "query:  what is a cat"),
    ],
)
def test_promptriever_query(query: str, instruction: str | None, expected: str) -> None:
    assert format_query(PROMPTRIEVER, query, instruction) == expected


def test_promptriever_document() -> None:
    assert format_document(PROMPTRIEVER, "Cats", "Cats purr.") == "passage:  Cats Cats purr."
    assert format_document(PROMPTRIEVER, "", "Cats purr.") == "passage:   Cats purr."
    assert format_document(PROMPTRIEVER, None, "Cats purr.") == "passage:   Cats purr."


def test_plain_query_joins_instruction_mteb_style() -> None:
    assert format_query(PLAIN, "what is a cat", None) == "what is a cat"
    assert format_query(PLAIN, "what is a cat", "") == "what is a cat"
    assert format_query(PLAIN, "what is a cat", "Think carefully") == "what is a cat Think carefully"


def test_plain_document_joins_title_and_text() -> None:
    assert format_document(PLAIN, "Cats", "Cats purr.") == "Cats Cats purr."
    assert format_document(PLAIN, "", "Cats purr.") == "Cats purr."
    assert format_document(PLAIN, None, "Cats purr.") == "Cats purr."


def test_plain_prefixes_are_prepended() -> None:
    e5_like = _manifest("plain", "query: ", "passage: ")
    assert format_query(e5_like, "what is a cat", "Be brief") == "query: what is a cat Be brief"
    assert format_document(e5_like, "Cats", "Cats purr.") == "passage: Cats Cats purr."


def test_instruction_support_flag() -> None:
    assert PROMPTRIEVER.supports_instructions
    assert not PLAIN.supports_instructions
