"""Domain types of collections and documents. The API layer builds them from validated requests;
core/collections.py maps them to and from the index layer's rows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Document:
    """A document as a client sees it. Validated at the edge: the id follows irgate.identifiers,
    metadata holds JSON values with finite numbers, the vector (when given) is finite and not zero."""

    id: str
    text: str = ""
    title: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    vector: np.ndarray | None = None  # float32 [dimension]


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    documents: int
    dimension: int
    precision: str  # "f16" | "f32" | "i8"
    model: str
    created_at: float


@dataclass(frozen=True)
class UpsertCounts:
    upserted: int  # distinct documents written, replacements included
    replaced: int  # of those, how many replaced a document with the same id
    tokens: int  # tokens embedded for documents that came without a vector
    unchanged: int = 0  # skipped: the same id with the same content is already stored
