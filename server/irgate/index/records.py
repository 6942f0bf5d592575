"""What every index engine stores and answers, and the checks every engine applies to its input.

Both engines (index.store's usearch + SQLite, index.milvus's Milvus) take and return these types
and run these checks, so the same input gets the same answer, word for word, from either.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from irgate.domain.collections import CollectionInfo as CollectionInfo
from irgate.domain.documents import Document
from irgate.errors import InvalidArgument
from irgate.filters import Filter, parse
from irgate.filters import json_equal as json_equal
from irgate.filters import matches_filter as matches_filter
from irgate.identifiers import check_document_id

PRECISIONS = ("f16", "f32", "i8")


@dataclass(frozen=True)
class UpsertResult:
    upserted: int  # distinct documents written, replacements included
    replaced: int  # of those, how many replaced a document with the same id


@dataclass(frozen=True)
class ScoredKey:
    id: str
    score: float  # cosine similarity, higher is better


@dataclass(frozen=True)
class CheckedDocument:
    """One document of an upsert, checked: its metadata encoded as JSON, its vector float32."""

    record: Document
    metadata_json: str
    vector: np.ndarray


def validate_document_id(document_id: object) -> None:
    """Ids are looked up through SQLite's JSON functions, which end a string at U+0000: the
    identifier rule (no control characters) is what makes every stored id findable again."""
    check_document_id(document_id)


def check_upsert(documents: Sequence[Document], vectors: np.ndarray, dimension: int) -> list[CheckedDocument]:
    """The documents to write, one per distinct id (when a call repeats an id, the last one wins)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(documents):
        raise InvalidArgument(
            f"got {len(documents)} documents and vectors of shape {list(vectors.shape)}; "
            f"give one vector of {dimension} values per document"
        )
    if documents and vectors.shape[1] != dimension:
        raise InvalidArgument(
            f"vector of document '{documents[0].id}' has {vectors.shape[1]} values; "
            f"the collection's dimension is {dimension}"
        )
    last_position: dict[str, int] = {}
    for position, document in enumerate(documents):
        validate_document_id(document.id)
        last_position[document.id] = position
    checked = []
    for document_id, position in last_position.items():
        document = documents[position]
        if not np.all(np.isfinite(vectors[position])):
            raise InvalidArgument(f"vector of document '{document_id}' contains NaN or infinite values")
        _require_text(document.title, "title", document_id)
        _require_text(document.text, "text", document_id)
        checked.append(CheckedDocument(document, _encode_metadata(document.metadata, document_id), vectors[position]))
    return checked


def check_query(
    vector: np.ndarray, k: int, filter: Filter | Mapping[str, Any] | None, dimension: int
) -> tuple[np.ndarray, Filter | None]:
    """The query vector as float32 [dimension] and the filter (None: every document matches)."""
    query = np.asarray(vector, dtype=np.float32)
    if query.ndim == 2 and query.shape[0] == 1:
        query = query[0]
    if query.ndim != 1 or query.shape[0] != dimension:
        raise InvalidArgument(f"query vector has {query.size} values; the collection's dimension is {dimension}")
    if not np.all(np.isfinite(query)):
        raise InvalidArgument("query vector contains NaN or infinite values")
    return query, check_text_query(k, filter)


def check_text_query(k: int, filter: Filter | Mapping[str, Any] | None) -> Filter | None:
    """The filter of a search (by vector or by text): the api layer's parsed one, or a JSON object
    parsed here (irgate.filters); None when every document matches."""
    if k < 1:
        raise InvalidArgument(f"k is {k}; it must be at least 1")
    if filter is None or isinstance(filter, Filter):
        return filter
    return parse(filter)


def check_model(collection: str, built_with: str, serving_model: str | None) -> None:
    """Vectors from two embedders are not comparable even when their lengths agree. None skips the check."""
    if serving_model is not None and serving_model != built_with:
        raise InvalidArgument(
            f"collection '{collection}' was built with model '{built_with}' but this server embeds with "
            f"'{serving_model}'; serve '{built_with}' or create a new collection"
        )


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise InvalidArgument(f"precision '{precision}' is not supported; use one of {', '.join(PRECISIONS)}")


def _require_text(value: object, field_name: str, document_id: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{field_name} of document '{document_id}' must be text")
    return value


def _encode_metadata(metadata: object, document_id: str) -> str:
    if not isinstance(metadata, Mapping) or not all(isinstance(key, str) for key in metadata):
        raise InvalidArgument(f"metadata of document '{document_id}' must map text keys to JSON values")
    try:
        return json.dumps(dict(metadata), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidArgument(
            f"metadata of document '{document_id}' is not JSON ({error}); use strings, numbers, booleans, "
            "null, lists and objects"
        ) from None
