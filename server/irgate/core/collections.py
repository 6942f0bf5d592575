"""Collection operations: documents are embedded here, then stored by the index layer."""

from __future__ import annotations

import asyncio

import numpy as np

from irgate.core.embedding import EmbeddingService, TextInput, Truncation
from irgate.errors import InvalidArgument
from irgate.index.collection import CollectionInfo, DocumentRecord, UpsertResult
from irgate.index.store import CollectionStore


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
    ) -> tuple[UpsertResult, int]:
        """Embeds the documents that carry no vector, then commits all of them in one transaction.

        Returns the write counts and the number of tokens embedded.
        """
        collection = await asyncio.to_thread(self.store.get, name)
        dimension = self._embedding.manifest.dimension
        vectors = np.empty((len(documents), dimension), dtype=np.float32)
        to_embed: list[int] = []
        for position, document in enumerate(documents):
            if not document.id:
                raise InvalidArgument(f"document {position} has no id; ids are 1 to 256 characters")
            if document.vector is None:
                if not document.text.strip():
                    raise InvalidArgument(
                        f"document '{document.id}' has neither text nor vector; give one of them"
                    )
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
        return result, tokens

    async def get(self, name: str, ids: list[str], include_vectors: bool = False) -> list[DocumentRecord]:
        collection = await asyncio.to_thread(self.store.get, name)
        return await asyncio.to_thread(collection.get, ids, include_vectors)

    async def delete_documents(self, name: str, ids: list[str]) -> tuple[int, int]:
        collection = await asyncio.to_thread(self.store.get, name)
        return await asyncio.to_thread(collection.delete, ids)

    async def count(self, name: str) -> int:
        collection = await asyncio.to_thread(self.store.get, name)
        return len(collection)
