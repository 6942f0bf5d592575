"""Turn a query (+ instruction) or a document into the exact text the model was trained on.

Formats are copied from the training code, not paraphrased (Promptriever's tevatron fork for
"query:  {query}? {instruction}" and "passage:  {title} {text}"; MTEB's `title + " " + text` and
`query + " " + instruction` for plain models; the model cards' `Instruct: {task}\nQuery:{query}` of
Qwen3-Embedding and `Instruct: {task}\nQuery: {query}` of e5-mistral-instruct, their documents
bare): an extra or missing space changes every vector.
"""

from __future__ import annotations

from irgate.models.manifest import EmbedderManifest

_SENTENCE_END = (".", "?", "!")


def format_query(manifest: EmbedderManifest, query: str, instruction: str | None = None) -> str:
    """Query text for the model in `manifest`; `instruction` may be None or empty."""
    if manifest.prompt_style == "promptriever":
        # tevatron fork dataset.py: the prefix "query: " is joined with one more space, and a "?"
        # separates query and instruction unless the query already ends a sentence.
        q = query.strip()
        instr = (instruction or "").strip()
        q_mark = "?" if instr and not q.endswith(_SENTENCE_END) else ""
        return f"{manifest.query_prefix} {q}{q_mark} {instr}".strip()
    if manifest.prompt_style == "instruct":
        # The instruction is the task description; the query goes in as given, unstripped, as the
        # model cards' get_detailed_instruct does.
        task = instruction if instruction and instruction.strip() else manifest.default_instruction
        return manifest.query_template.format(instruction=task, query=query)
    # MTEB's instruction wrapper: query + " " + instruction.
    text = f"{query} {instruction}" if instruction else query
    return manifest.query_prefix + text if manifest.query_prefix else text


def format_document(manifest: EmbedderManifest, title: str | None, text: str) -> str:
    """Document text; an empty title is kept as an empty slot where training did so."""
    title = title or ""
    if manifest.prompt_style == "promptriever":
        # Not stripped: training produced "passage:   text" (three spaces) for untitled passages.
        return f"{manifest.passage_prefix} {title} {text}"
    # MTEB encodes title + " " + text; instruct-style documents are this too (no instruction).
    body = f"{title} {text}".strip()
    return manifest.passage_prefix + body if manifest.passage_prefix else body
