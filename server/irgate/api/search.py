"""irgate.v1.Search servicer."""

from __future__ import annotations

import grpc

from irgate.api import convert
from irgate.api.rpc import Admission, unary
from irgate.core.search import RerankOptions, SearchPipeline, SearchQuery
from irgate.errors import InvalidArgument
from irgate_client.v1 import irgate_pb2 as pb
from irgate_client.v1 import irgate_pb2_grpc as pb_grpc

DEFAULT_K = 10


class SearchServicer(pb_grpc.SearchServicer):
    def __init__(self, pipeline: SearchPipeline, admission: Admission):
        self.pipeline = pipeline
        self.admission = admission

    @unary("Search")
    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        if not request.query.strip():
            raise InvalidArgument("query is empty; give the text to search for")
        result = await self.pipeline.search(
            SearchQuery(
                collection=request.collection,
                query=request.query,
                instruction=request.instruction,
                k=request.k or min(DEFAULT_K, self.pipeline.max_k),
                filter=convert.struct_to_dict(request.filter) if request.HasField("filter") else None,
                include_documents=request.include_documents,
                rerank=RerankOptions(
                    top_n=request.rerank.top_n,
                    max_reasoning_tokens=request.rerank.max_reasoning_tokens,
                    return_reasoning=request.rerank.return_reasoning,
                ),
                truncation=convert.truncation(request.truncation),
            )
        )
        hits = []
        for hit in result.hits:
            message = pb.Hit(id=hit.id, score=hit.score, dense_score=hit.dense_score)
            if hit.document is not None:
                message.document.CopyFrom(convert.document(hit.document))
            if hit.verdict is not None:
                message.verdict.CopyFrom(convert.verdict(hit.verdict))
            hits.append(message)
        return pb.SearchResponse(hits=hits, timing=convert.timing(result.timing))
