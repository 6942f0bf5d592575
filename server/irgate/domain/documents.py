"""A document, one type from the wire to the index and back: the API layer builds it from a
validated request, core embeds and stores it, the index engines return it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Document:
    """Validated at the edge: the id follows irgate.identifiers, metadata holds JSON values with
    finite numbers, the vector (when given) is finite and not zero. The index engines check their
    input again (irgate.index.records), as they are also called without the API layer."""

    id: str
    text: str = ""
    title: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    vector: np.ndarray | None = None  # float32 [dimension]; from an engine only when asked for
