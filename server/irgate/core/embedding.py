"""Embedding pipeline: format as trained -> tokenise -> batched model call -> normalise."""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from irgate import tracing
from irgate.backends.embedder import EmbedderBackend
from irgate.core.batching import BatchingQueue
from irgate.core.prompts import format_document, format_query
from irgate.core.tokenization import TextEncoder
from irgate.errors import InvalidArgument


class Truncation(enum.Enum):
    END = "end"  # keep the first max_tokens tokens
    NONE = "none"  # reject over-long input


@dataclass(frozen=True)
class TextInput:
    text: str
    is_query: bool = False
    instruction: str = ""
    title: str = ""


@dataclass(frozen=True)
class Timing:
    queue_ns: int = 0
    tokenization_ns: int = 0
    inference_ns: int = 0
    total_ns: int = 0
    judge_ns: int = 0  # a Search's rerank stage: judging the top_n hits (0 without a rerank)


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # float32 [n, dimension]
    tokens: list[int]
    truncated: list[bool]
    timing: Timing


class EmbeddingService:
    """Turns texts into vectors exactly as the embedder was trained to see them."""

    def __init__(self, backend: EmbedderBackend, encoder: TextEncoder, queue: BatchingQueue):
        self.backend = backend
        self.manifest = backend.manifest
        self._encoder = encoder
        self._queue = queue

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids in the embedder's own vocabulary as text (clients that send ids instead of text);
        raises InvalidArgument for an id the vocabulary does not have."""
        size = self._encoder.vocabulary_size
        for position, token in enumerate(ids):
            if not 0 <= token < size:
                raise InvalidArgument(f"token id {token} at position {position} is not in the embedder's vocabulary (0 to {size - 1})")
        return self._encoder.decode(ids)

    def format(self, item: TextInput) -> str:
        if item.is_query:
            return format_query(self.manifest, item.text, item.instruction)
        return format_document(self.manifest, item.title, item.text)

    async def embed(
        self, items: list[TextInput], truncation: Truncation = Truncation.END, normalize: bool = True
    ) -> Embeddings:
        start = time.perf_counter_ns()
        texts = [self.format(item) for item in items]
        with tracing.stage("tokenize", texts=len(texts)):
            # encode_batch releases the GIL: a large batch must not stall the event loop.
            encoded = await asyncio.to_thread(self._encoder.encode, texts)
        tokenized = time.perf_counter_ns()
        if truncation is Truncation.NONE:
            for position, item in enumerate(encoded):
                if item.truncated:
                    length = f"more than {item.original_length}" if item.cut else f"{item.original_length}"
                    raise InvalidArgument(
                        f"text {position} has {length} tokens and the model reads at most "
                        f"{self.manifest.max_tokens}; shorten it or allow truncation (TRUNCATION_END)"
                    )
        with tracing.stage("embedding batch", tokens=sum(len(item.ids) for item in encoded)) as span:
            vectors, stats = await self._queue.embed([item.ids for item in encoded])
            span.set_attributes({"queue_ns": stats.queue_ns, "inference_ns": stats.inference_ns})
        if normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        return Embeddings(
            vectors=vectors,
            tokens=[len(item.ids) for item in encoded],
            truncated=[item.truncated for item in encoded],
            timing=Timing(
                queue_ns=stats.queue_ns,
                tokenization_ns=tokenized - start,
                inference_ns=stats.inference_ns,
                total_ns=time.perf_counter_ns() - start,
            ),
        )
