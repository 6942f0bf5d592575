"""irgate.v1.Info servicer."""

from __future__ import annotations

import grpc

from irgate import __version__
from irgate.api.rpc import Admission, unary
from irgate.backends.judge import families
from irgate.config import Settings
from irgate.core.embedding import EmbeddingService
from irgate.core.judge import JudgeService
from irgate_client.v1 import irgate_pb2 as pb
from irgate_client.v1 import irgate_pb2_grpc as pb_grpc


class InfoServicer(pb_grpc.InfoServicer):
    def __init__(self, embedding: EmbeddingService, judge: JudgeService | None, settings: Settings, admission: Admission):
        self.admission = admission
        manifest = embedding.manifest
        self._info = pb.GetInfoResponse(
            version=__version__,
            embedder=pb.EmbedderInfo(
                model=manifest.name,
                backend=embedding.backend.address,
                dimension=manifest.dimension,
                max_tokens=manifest.max_tokens,
                pooling=manifest.pooling,
                supports_instructions=manifest.supports_instructions,
                preset=manifest.preset,
                instruction_format=manifest.instruction_format,
                default_instruction=manifest.default_instruction,
            ),
            limits=pb.Limits(
                max_batch_size=settings.max_batch_size,
                max_concurrent_requests=settings.max_concurrent_requests,
                max_k=settings.max_k,
                max_judge_documents=settings.max_judge_documents,
            ),
            index=pb.IndexInfo(engine="milvus" if settings.milvus_address else "local",
                               address=settings.milvus_address or ""),
        )
        if judge is not None:
            self._info.judge.CopyFrom(
                pb.JudgeInfo(
                    model=judge.backend.manifest.name,
                    backend=judge.backend.address,
                    max_reasoning_tokens=judge.max_reasoning_tokens,
                    max_context_tokens=judge.backend.manifest.max_context_tokens,
                    max_passage_tokens=judge.max_passage_tokens,
                    family=judge.backend.manifest.family,
                    scoring=judge.backend.manifest.scoring,
                    score_rule=judge.backend.manifest.score_rule,
                    score_formula=families.score_formula(judge.backend.manifest),
                    supports_instructions=judge.backend.manifest.supports_instructions,
                    default_instruction=judge.backend.manifest.default_instruction,
                )
            )

    @unary("GetInfo")
    async def GetInfo(self, request: pb.GetInfoRequest, context: grpc.aio.ServicerContext) -> pb.GetInfoResponse:
        return self._info
