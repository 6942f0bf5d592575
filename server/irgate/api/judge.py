"""irgate.v1.Judge servicer: answers UNIMPLEMENTED until the reasoning judge backend lands."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from irgate_client.v1 import irgate_pb2 as pb
from irgate_client.v1 import irgate_pb2_grpc as pb_grpc

NOT_YET = "the reasoning judge is not available in this irgate version; Judge and JudgeStream answer once it lands"


class JudgeServicer(pb_grpc.JudgeServicer):
    async def Judge(self, request: pb.JudgeRequest, context: grpc.aio.ServicerContext) -> pb.JudgeResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, NOT_YET)

    async def JudgeStream(self, request: pb.JudgeRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.JudgeStreamResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, NOT_YET)
        yield pb.JudgeStreamResponse()  # unreachable; makes this an async generator as the stub expects
