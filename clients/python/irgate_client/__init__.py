"""Python SDK for the irgate gRPC retrieval inference server (sync and asyncio)."""

from irgate_client.client import AsyncClient, Client
from irgate_client.types import (
    CollectionInfo,
    Document,
    DocumentPage,
    Embedding,
    FieldViolation,
    Hit,
    IrgateError,
    Query,
    ReasoningDelta,
    SearchQuery,
    ServerInfo,
    UpsertResult,
    Verdict,
)

__all__ = [
    "AsyncClient",
    "Client",
    "CollectionInfo",
    "Document",
    "DocumentPage",
    "Embedding",
    "FieldViolation",
    "Hit",
    "IrgateError",
    "Query",
    "ReasoningDelta",
    "SearchQuery",
    "ServerInfo",
    "UpsertResult",
    "Verdict",
]
