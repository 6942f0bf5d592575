"""Prompt formats must match training byte for byte (shared/REFERENCE.md sections 1, 5 and 13)."""

from __future__ import annotations

import dataclasses

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


WEB_SEARCH = "Given a web search query, retrieve relevant passages that answer the query"
QWEN3 = dataclasses.replace(PLAIN, pooling="eos", prompt_style="instruct", default_instruction=WEB_SEARCH,
                            query_template="Instruct: {instruction}\nQuery:{query}", padding_side="left")
E5_MISTRAL = dataclasses.replace(QWEN3, query_template="Instruct: {instruction}\nQuery: {query}", padding_side="right")


@pytest.mark.parametrize(
    ("manifest", "instruction", "expected"),
    [
        (QWEN3, "Given a claim, find documents that refute it", "Instruct: Given a claim, find documents that refute it\nQuery:cats purr"),
        (QWEN3, None, f"Instruct: {WEB_SEARCH}\nQuery:cats purr"),
        (QWEN3, "  ", f"Instruct: {WEB_SEARCH}\nQuery:cats purr"),
        (E5_MISTRAL, "Given a claim, find documents that refute it", "Instruct: Given a claim, find documents that refute it\nQuery: cats purr"),
        (E5_MISTRAL, "", f"Instruct: {WEB_SEARCH}\nQuery: cats purr"),
    ],
)
def test_instruct_query_puts_the_task_before_the_query(manifest: EmbedderManifest, instruction: str | None,
                                                      expected: str) -> None:
    assert format_query(manifest, "cats purr", instruction) == expected


def test_instruct_query_text_is_taken_as_given() -> None:
    # Braces in a query or a task are text, never template slots.
    assert format_query(QWEN3, " {query} ", "{instruction}") == "Instruct: {instruction}\nQuery: {query} "


def test_instruct_documents_are_bare() -> None:
    assert format_document(QWEN3, "Cats", "Cats purr.") == "Cats Cats purr."
    assert format_document(E5_MISTRAL, None, "Cats purr.") == "Cats purr."


def test_instruct_manifest_needs_its_template_and_default_task() -> None:
    with pytest.raises(ValueError, match="query_template"):
        dataclasses.replace(QWEN3, query_template="Query:{query}")
    with pytest.raises(ValueError, match="default_instruction"):
        dataclasses.replace(QWEN3, default_instruction="")
    with pytest.raises(ValueError, match="padding_side"):
        dataclasses.replace(QWEN3, padding_side="middle")  # type: ignore[arg-type]


def test_instruction_support_flag() -> None:
    assert PROMPTRIEVER.supports_instructions and QWEN3.supports_instructions
    assert not PLAIN.supports_instructions


def test_instruction_format_says_where_the_instruction_goes() -> None:
    assert QWEN3.instruction_format == "Instruct: {instruction}\nQuery:{query}"
    assert PROMPTRIEVER.instruction_format == "query:  {query}? {instruction}"
    assert PLAIN.instruction_format == "{query} {instruction}"
