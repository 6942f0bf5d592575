"""Collection operations: documents are embedded here, then stored by the index layer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from irgate.core.embedding import EmbeddingService, TextInput, Truncation
from irgate.errors import InvalidArgument
from irgate.index.collection import CollectionInfo, DocumentRecord, json_equal
from irgate.index.store import CollectionStore


@dataclass(frozen=True)
class UpsertOutcome:
    upserted: int  # documents written, replacements included
    replaced: int  # of those, how many replaced a stored document
    unchanged: int  # documents skipped: already stored with the same title, text and metadata
    tokens: int  # tokens embedded


def same_content(stored: DocumentRecord, given: DocumentRecord) -> bool:
    return stored.title == given.title and stored.text == given.text and json_equal(stored.metadata, given.metadata)


class CollectionService:
    """Async front of the collection store: blocking SQLite/usearch work runs in worker threads."""

    def __init__(self, store: CollectionStore, embedding: EmbeddingService):
        self.store = store
        self._embedding = embedding

    async def create(self, name: str, precision: str = "f16") -> CollectionInfo:
        return await asyncio.to_thread(self.store.create, name, precision)

    async def list(self) -> list[CollectionInfo]:
        return await asyncio.to_thread(self.store.list)

    async def describe(self, name: str) -> CollectionInfo:
        collection = await asyncio.to_thread(self.store.get, name)
        return await asyncio.to_thread(collection.info)

    async def delete(self, name: str) -> None:
        await asyncio.to_thread(self.store.delete, name)

    async def upsert(
        self, name: str, documents: list[DocumentRecord], truncation: Truncation = Truncation.END
    ) -> UpsertOutcome:
        """Embeds the documents that carry no vector, then commits all of them in one transaction.

        A document stored already with the same title, text and metadata is skipped, not embedded
        again: rerunning an interrupted bulk ingest resumes where it stopped. A client vector is
        always written (it may change while the text does not).
        """
        collection = await asyncio.to_thread(self.store.get, name)
        latest = {document.id: document for document in documents if document.id}  # a repeated id: the last wins
        candidates = [document.id for document in latest.values() if document.vector is None]
        stored = await asyncio.to_thread(collection.get, candidates, False, True) if candidates else []
        unchanged = {record.id for record in stored if same_content(record, latest[record.id])}
        documents = [document for document in documents if document.id not in unchanged]
        if not documents:
            return UpsertOutcome(upserted=0, replaced=0, unchanged=len(unchanged), tokens=0)
        dimension = self._embedding.manifest.dimension
        vectors = np.empty((len(documents), dimension), dtype=np.float32)
        to_embed: list[int] = []
        for position, document in enumerate(documents):
            if not document.id:
                raise InvalidArgument(f"document {position} has no id; ids are 1 to 256 characters")
            if document.vector is None:  # an empty text is embedded as the empty string, as BEIR/MTEB do
                to_embed.append(position)
                continue
            if document.vector.shape != (dimension,):
                raise InvalidArgument(
                    f"vector of document '{document.id}' has {document.vector.size} values; "
                    f"the collection's dimension is {dimension}"
                )
            norm = float(np.linalg.norm(document.vector.astype(np.float64)))  # float32 overflows past ~1e19
            if not np.isfinite(norm) or norm == 0.0:
                raise InvalidArgument(
                    f"vector of document '{document.id}' has norm {norm}; give finite values, not all zero"
                )
            vectors[position] = document.vector / norm if self._embedding.manifest.normalize else document.vector
        tokens = 0
        if to_embed:
            embedded = await self._embedding.embed(
                [TextInput(text=documents[i].text, title=documents[i].title) for i in to_embed],
                truncation,
                normalize=self._embedding.manifest.normalize,
            )
            vectors[to_embed] = embedded.vectors
            tokens = sum(embedded.tokens)
        result = await asyncio.to_thread(collection.upsert, documents, vectors)
        return UpsertOutcome(upserted=result.upserted, replaced=result.replaced, unchanged=len(unchanged), tokens=tokens)

    async def get(self, name: str, ids: list[str], include_vectors: bool = False) -> list[DocumentRecord]:
        """The documents found, in request order; ids that do not exist are left out."""
        collection = await asyncio.to_thread(self.store.get, name)
        return await asyncio.to_thread(collection.get, ids, include_vectors, True)

    async def delete_documents(self, name: str, ids: list[str]) -> tuple[int, int]:
        collection = await asyncio.to_thread(self.store.get, name)
        return await asyncio.to_thread(collection.delete, ids)

    async def count(self, name: str) -> int:
        collection = await asyncio.to_thread(self.store.get, name)
        return len(collection)
