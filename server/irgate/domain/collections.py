"""What a collection is to every layer: the index engines report it, core passes it on, the API
layer writes it into a CollectionInfo message."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    documents: int
    dimension: int
    precision: str  # "f16" | "f32" | "i8"
    model: str  # the embedder its vectors came from
    created_at: float  # seconds since the Unix epoch
