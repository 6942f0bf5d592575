"""Lexical (BM25) search over a document's title and text: how a user's query becomes an FTS5 query.

A query is plain text, never FTS5 syntax: `AND`, `NEAR`, `*`, quotes and parentheses in it are
words or punctuation, not operators. Each run of letters and digits becomes one quoted term and
the terms are OR-ed, as a BM25 engine's match query does (Elasticsearch's, which BEIR's BM25
figures come from), so a document needs one of the words to be found and ranks by how many it
holds and how rare they are. English stop words are left out of the query, as Elasticsearch's
`english` analyzer leaves them out (the same list, Lucene's): they add almost nothing to BM25
but match nearly every document, and scoring those made a query several times slower. A query of
stop words only keeps them. The index keeps every word. Only the first MAX_QUERY_TERMS words count,
as an embedder reads only a query's first tokens: scoring grows with the words, and a search holds
its collection while it runs.

The tokenizer is FTS5's `porter unicode61`: Unicode case folding and diacritics removal, then the
Porter stemmer (Elasticsearch's `english` analyzer stems with Porter too). Title and text are
weighted equally; docs/evaluation.md has the SciFact figures behind both choices.
"""

from __future__ import annotations

import re

TOKENIZER = "porter unicode61"
# unicode61's token characters are letters and digits; everything else (including '_') separates.
_TERM = re.compile(r"[^\W_]+")
MAX_QUERY_TERMS = 1024
STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these they "
    "this to was will with".split()
)


def fts5_query(text: str) -> str | None:
    """The FTS5 MATCH expression for a user's query, or None when it holds no word to look for."""
    terms = _TERM.findall(text)
    if not terms:
        return None
    kept = ([term for term in terms if term.lower() not in STOP_WORDS] or terms)[:MAX_QUERY_TERMS]
    return " OR ".join(f'"{term}"' for term in kept)
