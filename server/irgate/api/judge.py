"""irgate.v1.Judge servicer."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from irgate.api import convert
from irgate.api.rpc import Admission, streaming, unary
from irgate.core.judge import JudgeCall, JudgeService, Passage, require_judge
from irgate.domain.judging import ReasoningDelta
from irgate.errors import InvalidArgument
from irgate.identifiers import check_collection_name, check_document_id
from irgate_client.v1 import irgate_pb2 as pb
from irgate_client.v1 import irgate_pb2_grpc as pb_grpc


def judge_call(request: pb.JudgeRequest) -> JudgeCall:
    """The request, checked, as the judge service takes it."""
    return JudgeCall(
        request.query,
        request.instruction,
        passages(request),
        convert.reasoning_budget(request),
        return_reasoning=request.return_reasoning,
        collection=request.collection,
        max_passage_tokens=convert.passage_cap(request),
    )


def passages(request: pb.JudgeRequest) -> list[Passage]:
    if request.collection:
        check_collection_name(request.collection)
    if not request.query.strip():
        raise InvalidArgument("query is empty; give the query the documents are judged against", field="query")
    result = []
    for position, document in enumerate(request.documents):
        source = document.WhichOneof("source")
        if source == "inline":
            if not document.inline.text.strip():
                raise InvalidArgument(
                    f"documents[{position}].inline.text is empty; give the passage to judge",
                    field=f"documents[{position}].inline.text",
                )
            result.append(Passage(id=document.inline.id, text=document.inline.text, title=document.inline.title))
        elif source == "id":
            result.append(Passage(id=check_document_id(document.id, f"documents[{position}].id"), from_collection=True))
        else:
            raise InvalidArgument(
                f"documents[{position}] is empty; set inline (a passage) or id (in collection)", field=f"documents[{position}]"
            )
    return result


class JudgeServicer(pb_grpc.JudgeServicer):
    def __init__(self, judge: JudgeService | None, admission: Admission):
        self.judge = judge
        self.admission = admission

    def _service(self) -> JudgeService:
        return require_judge(self.judge, "judge", "start it with --judge local:FOLDER (see `irgate prepare`)")

    @unary("Judge", smaller="judge fewer documents per call, or leave return_reasoning off")
    async def Judge(self, request: pb.JudgeRequest, context: grpc.aio.ServicerContext) -> pb.JudgeResponse:
        start = time.perf_counter_ns()
        verdicts = await self._service().judge_all(judge_call(request))
        elapsed = time.perf_counter_ns() - start  # all of a Judge call is the judge's
        return pb.JudgeResponse(
            verdicts=[convert.verdict(verdict) for verdict in verdicts], timing=pb.Timing(judge_ns=elapsed, total_ns=elapsed)
        )

    @streaming("JudgeStream", smaller="leave return_reasoning off, or set a smaller max_reasoning_tokens")
    async def JudgeStream(
        self, request: pb.JudgeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.JudgeStreamResponse]:
        events = self._service().judge(judge_call(request), stream_reasoning=request.return_reasoning)
        async for event in events:
            if isinstance(event, ReasoningDelta):
                yield pb.JudgeStreamResponse(reasoning=pb.ReasoningDelta(index=event.index, text=event.text))
            else:
                yield pb.JudgeStreamResponse(verdict=convert.verdict(event))
