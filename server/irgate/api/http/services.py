"""What the HTTP front serves from: the gRPC servicers (each call goes through them) and the facts
the dialects report about the models."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from irgate.api.collections import CollectionsServicer
from irgate.api.embed import EmbedServicer
from irgate.api.info import InfoServicer
from irgate.api.judge import JudgeServicer
from irgate.api.search import SearchServicer
from irgate.config import Settings
from irgate.core.embedding import EmbeddingService


@dataclass(frozen=True)
class HttpServices:
    info: InfoServicer
    embed: EmbedServicer
    collections: CollectionsServicer
    search: SearchServicer
    judge: JudgeServicer
    embedding: EmbeddingService
    judge_model: str  # empty without a judge
    settings: Settings
    # Health status name ("SERVING", "NOT_SERVING") by gRPC service name, "" for the whole server.
    health: Callable[[str], str | None]
