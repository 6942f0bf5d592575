"""Python SDK for the irgate gRPC retrieval inference server (sync and asyncio)."""

from irgate_client.client import AsyncClient, Client
from irgate_client.types import (
    CollectionInfo,
    Document,
    Embedding,
    FieldViolation,
    Hit,
    IrgateError,
    Query,
    ReasoningDelta,
    ServerInfo,
    UpsertResult,
    Verdict,
)

__all__ = [
    "AsyncClient",
    "Client",
    "CollectionInfo",
    "Document",
    "Embedding",
    "FieldViolation",
    "Hit",
    "IrgateError",
    "Query",
    "ReasoningDelta",
    "ServerInfo",
    "UpsertResult",
    "Verdict",
]
