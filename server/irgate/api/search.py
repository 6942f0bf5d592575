"""irgate.v1.Search servicer."""

from __future__ import annotations

import grpc

from irgate import filters
from irgate.api import convert
from irgate.api.rpc import Admission, code_of, status_message, unary
from irgate.core.search import RerankOptions, SearchMode, SearchPipeline, SearchQuery, SearchResult
from irgate.errors import InvalidArgument, IrgateError
from irgate_client.v1 import irgate_pb2 as pb
from irgate_client.v1 import irgate_pb2_grpc as pb_grpc

DEFAULT_K = 10
_MODES = {
    pb.SEARCH_MODE_UNSPECIFIED: SearchMode.DENSE,
    pb.SEARCH_MODE_DENSE: SearchMode.DENSE,
    pb.SEARCH_MODE_LEXICAL: SearchMode.LEXICAL,
    pb.SEARCH_MODE_HYBRID: SearchMode.HYBRID,
}


class SearchServicer(pb_grpc.SearchServicer):
    def __init__(self, pipeline: SearchPipeline, admission: Admission, max_k: int, max_batch_size: int):
        self.pipeline = pipeline
        self.admission = admission
        self.max_k = max_k
        self.max_batch_size = max_batch_size  # most queries of one SearchBatch

    @unary("Search", smaller="ask for fewer hits (a smaller k), or leave include_documents off")
    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        return _response(await self.pipeline.search(self._query(request)))

    @unary("SearchBatch", smaller="send fewer queries per call, ask for fewer hits (a smaller k), or leave include_documents off")
    async def SearchBatch(self, request: pb.SearchBatchRequest, context: grpc.aio.ServicerContext) -> pb.SearchBatchResponse:
        convert.check_count("queries", len(request.queries), self.max_batch_size)
        queries: list[SearchQuery | IrgateError] = []
        for query in request.queries:
            try:
                queries.append(self._query(query))
            except IrgateError as error:
                queries.append(error)
        answers = iter(await self.pipeline.search_batch([query for query in queries if isinstance(query, SearchQuery)]))
        results = []
        for query in queries:
            outcome = query if isinstance(query, IrgateError) else next(answers)
            if isinstance(outcome, IrgateError):
                results.append(pb.SearchResult(error=status_message(code_of(outcome), str(outcome), outcome)))
            else:
                results.append(pb.SearchResult(response=_response(outcome)))
        return pb.SearchBatchResponse(results=results)

    def _query(self, request: pb.SearchRequest) -> SearchQuery:
        """The validated query of one SearchRequest (Search's, or one of a SearchBatch)."""
        collection = convert.collection_name(request.collection)
        if not request.query.strip():
            raise InvalidArgument("query is empty; give the text to search for", field="query")
        k = request.k or min(DEFAULT_K, self.max_k)
        if k > self.max_k:
            raise InvalidArgument(f"k is {k}; it must be between 1 and {self.max_k}", field="k")
        mode = _MODES.get(request.mode)
        if mode is None:
            raise InvalidArgument(
                f"mode is {request.mode}; use SEARCH_MODE_DENSE, SEARCH_MODE_LEXICAL or SEARCH_MODE_HYBRID", field="mode"
            )
        depths = {name: self._depth(request, name, mode) for name in ("dense_depth", "lexical_depth")}
        return SearchQuery(
            collection=collection,
            query=request.query,
            instruction=request.instruction,
            k=k,
            filter=filters.parse(convert.struct_to_dict(request.filter, "filter")) if request.HasField("filter") else None,
            include_documents=request.include_documents,
            rerank=RerankOptions(
                top_n=request.rerank.top_n,
                max_reasoning_tokens=convert.reasoning_budget(request.rerank),
                return_reasoning=request.rerank.return_reasoning,
                max_passage_tokens=convert.passage_cap(request.rerank),
            ),
            truncation=convert.truncation(request.truncation),
            mode=mode,
            **depths,
        )

    def _depth(self, request: pb.SearchRequest, name: str, mode: SearchMode) -> int | None:
        if not request.HasField(name):
            return None
        depth = getattr(request, name)
        if mode is not SearchMode.HYBRID:
            raise InvalidArgument(f"{name} applies to mode SEARCH_MODE_HYBRID only; leave it unset", field=name)
        if not 1 <= depth <= self.max_k:
            raise InvalidArgument(f"{name} is {depth}; it must be between 1 and {self.max_k}", field=name)
        return depth


def _response(result: SearchResult) -> pb.SearchResponse:
    hits = []
    for hit in result.hits:
        message = pb.Hit(id=hit.id, score=hit.score, dense_score=hit.dense_score, lexical_score=hit.lexical_score,
                         fused_score=hit.fused_score)
        if hit.document is not None:
            message.document.CopyFrom(convert.document_message(hit.document))
        if hit.verdict is not None:
            message.verdict.CopyFrom(convert.verdict(hit.verdict))
        hits.append(message)
    return pb.SearchResponse(hits=hits, timing=convert.timing(result.timing))
