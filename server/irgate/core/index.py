"""The index the gateway serves collections from: what core needs of it, whichever engine is behind.

Two engines implement it:
  - irgate.index.store.CollectionStore: usearch + SQLite in this process, under --data-dir (the default);
  - irgate.index.milvus.MilvusIndex: a Milvus server holds every collection (vectors, text, title,
    metadata), so gateways sharing it hold no state of their own.
Both check their input with irgate.index.records and raise the same typed errors with the same
messages. Their methods block: core calls them from worker threads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from irgate.domain.collections import CollectionInfo
from irgate.domain.documents import Document
from irgate.filters import Filter
from irgate.index.records import ScoredKey, UpsertResult


class IndexedCollection(Protocol):
    name: str

    def info(self) -> CollectionInfo: ...

    def count(self) -> int: ...

    def upsert(self, documents: Sequence[Document], vectors: np.ndarray) -> UpsertResult:
        """Writes documents with their vectors (float32 [n, dim]); an existing id is replaced, and when
        one call repeats an id, the last one wins. Acknowledged means visible to every later search."""
        ...

    def get(self, ids: Sequence[str], include_vectors: bool = False, skip_missing: bool = False) -> list[Document]:
        """The documents in request order; NotFound names the first missing id unless skip_missing."""
        ...

    def delete(self, ids: Sequence[str]) -> tuple[int, int]:
        """(deleted, not_found), each id counted once."""
        ...

    def search(self, vector: np.ndarray, k: int, filter: Filter | Mapping[str, Any] | None = None) -> list[ScoredKey]:
        """Up to k documents by cosine similarity, best first, among those that match the filter
        (irgate.filters: parsed, or the JSON object to parse)."""
        ...

    def lexical_search(self, text: str, k: int, filter: Filter | Mapping[str, Any] | None = None) -> list[ScoredKey]:
        """Up to k documents by BM25 over title and text, best first (index.lexical says how a query is
        read); filter: as in search. An engine without lexical search raises FailedPrecondition."""
        ...

    def list_documents(
        self, after: str | None, limit: int, filter: Filter | None = None, include_vectors: bool = False
    ) -> list[Document]:
        """Up to `limit` documents whose ids come after `after` (None: from the first), in id order by
        code point, among those that match the filter. Paging by the last id seen keeps the order
        stable under writes: both engines keep ids in an ordered index."""
        ...

    def snapshot(self) -> None:
        """Makes the next start fast where the engine keeps a snapshot; a no-op where it does not."""
        ...


class Index(Protocol):
    @property
    def location(self) -> str:
        """Where the collections live, for the startup summary."""
        ...

    @property
    def unavailable(self) -> dict[str, str]:
        """Collections that exist but cannot be served, with the reason clients are told."""
        ...

    def ready(self) -> bool:
        """True when the engine answers calls now (health checks); never raises. The health loop calls
        it every few seconds, so an engine may use it to pick up where it left off after an outage
        (Milvus loads the collections a restart released, which may take longer than the check)."""
        ...

    def create(self, name: str, precision: str = "f16") -> CollectionInfo: ...

    def get(self, name: str) -> IndexedCollection: ...

    def list(self) -> list[CollectionInfo]: ...

    def delete(self, name: str) -> None: ...

    def close(self) -> None: ...
