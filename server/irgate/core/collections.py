"""Collection operations: documents are embedded here, then stored by the index layer.

Inputs arrive validated by the API layer (names, ids, metadata, vector values) as the domain types
(irgate.domain) that the index layer takes and returns as they are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from irgate.core.embedding import EmbeddingService, TextInput, Truncation
from irgate.core.index import Index
from irgate.domain.collections import CollectionInfo
from irgate.domain.documents import Document
from irgate.filters import Filter, json_equal


@dataclass(frozen=True)
class UpsertCounts:
    upserted: int  # distinct documents written, replacements included
    replaced: int  # of those, how many replaced a document with the same id
    tokens: int  # tokens embedded for documents that came without a vector
    unchanged: int = 0  # skipped: the same id with the same content is already stored


def same_content(stored: Document, given: Document) -> bool:
    return stored.title == given.title and stored.text == given.text and json_equal(stored.metadata, given.metadata)


class CollectionService:
    """Async front of the index: its blocking calls (SQLite and usearch, or Milvus) run in worker threads."""

    def __init__(self, store: Index, embedding: EmbeddingService):
        self.store = store
        self._embedding = embedding

    async def create(self, name: str, precision: str = "f16") -> CollectionInfo:
        return await asyncio.to_thread(self.store.create, name, precision)

    async def list(self) -> list[CollectionInfo]:
        return await asyncio.to_thread(self.store.list)

    def damaged(self) -> dict[str, str]:
        """Collections that exist but cannot be served (list leaves them out), with the reason."""
        return self.store.unavailable

    async def describe(self, name: str) -> CollectionInfo:
        collection = await asyncio.to_thread(self.store.get, name)
        return await asyncio.to_thread(collection.info)

    async def delete(self, name: str) -> None:
        await asyncio.to_thread(self.store.delete, name)

    async def upsert(
        self, name: str, documents: Sequence[Document], truncation: Truncation = Truncation.END
    ) -> UpsertCounts:
        """Embeds the documents that carry no vector, then commits all of them in one transaction.

        A document stored already with the same title, text and metadata is skipped, not embedded
        again: rerunning an interrupted bulk ingest resumes where it stopped. A client vector is
        always written (it may change while the text does not). An empty text is embedded as the
        empty string, as BEIR and MTEB do.
        """
        collection = await asyncio.to_thread(self.store.get, name)
        latest = {document.id: document for document in documents}  # a repeated id: the last one wins
        candidates = [document.id for document in latest.values() if document.vector is None]
        stored = await asyncio.to_thread(collection.get, candidates, False, True) if candidates else []
        unchanged = {record.id for record in stored if same_content(record, latest[record.id])}
        documents = [document for document in documents if document.id not in unchanged]
        if not documents:
            return UpsertCounts(upserted=0, replaced=0, tokens=0, unchanged=len(unchanged))
        manifest = self._embedding.manifest
        vectors = np.empty((len(documents), manifest.dimension), dtype=np.float32)
        to_embed: list[int] = []
        for position, document in enumerate(documents):
            if document.vector is None:
                to_embed.append(position)
                continue
            vector = document.vector.astype(np.float64)  # float32 norms overflow past ~1e19
            vectors[position] = vector / np.linalg.norm(vector) if manifest.normalize else vector
        tokens = 0
        if to_embed:
            embedded = await self._embedding.embed(
                [TextInput(text=documents[i].text, title=documents[i].title) for i in to_embed],
                truncation,
                normalize=manifest.normalize,
            )
            vectors[to_embed] = embedded.vectors
            tokens = sum(embedded.tokens)
        # The engines write `vectors` (each client vector normalised above), never a document's own.
        result = await asyncio.to_thread(collection.upsert, documents, vectors)
        return UpsertCounts(upserted=result.upserted, replaced=result.replaced, tokens=tokens, unchanged=len(unchanged))

    async def get(self, name: str, ids: Sequence[str], include_vectors: bool = False) -> list[Document]:
        """The documents found, in request order; ids that do not exist are left out."""
        collection = await asyncio.to_thread(self.store.get, name)
        return await asyncio.to_thread(collection.get, list(ids), include_vectors, True)

    async def list_documents(
        self, name: str, after: str | None, limit: int, filter: Filter | None = None, include_vectors: bool = False
    ) -> list[Document]:
        """Up to `limit` documents with ids after `after` (None: from the first), in id order."""
        collection = await asyncio.to_thread(self.store.get, name)
        return await asyncio.to_thread(collection.list_documents, after, limit, filter, include_vectors)

    async def delete_documents(self, name: str, ids: Sequence[str]) -> tuple[int, int]:
        collection = await asyncio.to_thread(self.store.get, name)
        return await asyncio.to_thread(collection.delete, list(ids))

    async def count(self, name: str) -> int:
        collection = await asyncio.to_thread(self.store.get, name)
        return await asyncio.to_thread(collection.count)
