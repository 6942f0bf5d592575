"""irgate.v1.Embed servicer."""

from __future__ import annotations

import grpc

from irgate.api import convert
from irgate.api.metrics import EMBEDDED_TOKENS
from irgate.api.rpc import Admission, unary
from irgate.core.embedding import EmbeddingService, TextInput
from irgate.errors import InvalidArgument
from irgate_client.v1 import irgate_pb2 as pb
from irgate_client.v1 import irgate_pb2_grpc as pb_grpc


def text_input(position: int, message: pb.EmbedInput) -> TextInput:
    is_query = message.kind == pb.TEXT_KIND_QUERY
    if message.kind not in (pb.TEXT_KIND_UNSPECIFIED, pb.TEXT_KIND_QUERY, pb.TEXT_KIND_DOCUMENT):
        raise InvalidArgument(f"inputs[{position}].kind is {message.kind}; allowed: TEXT_KIND_QUERY or TEXT_KIND_DOCUMENT",
                              field=f"inputs[{position}].kind")
    if not message.text.strip():
        raise InvalidArgument(f"inputs[{position}].text is empty; every text needs at least one non-space character",
                              field=f"inputs[{position}].text")
    if message.instruction and not is_query:
        raise InvalidArgument(f"inputs[{position}] has an instruction but is not a query; only TEXT_KIND_QUERY takes one",
                              field=f"inputs[{position}].instruction")
    if message.title and is_query:
        raise InvalidArgument(f"inputs[{position}] has a title but is a query; only documents take one",
                              field=f"inputs[{position}].title")
    return TextInput(text=message.text, is_query=is_query, instruction=message.instruction, title=message.title)


class EmbedServicer(pb_grpc.EmbedServicer):
    def __init__(self, embedding: EmbeddingService, admission: Admission, max_batch_size: int):
        self.embedding = embedding
        self.admission = admission
        self.max_batch_size = max_batch_size

    @unary("Embed", smaller="send fewer inputs per call")
    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        convert.check_count("inputs", len(request.inputs), self.max_batch_size)
        items = [text_input(position, message) for position, message in enumerate(request.inputs)]
        result = await self.embedding.embed(items, convert.truncation(request.truncation), normalize=not request.raw)
        EMBEDDED_TOKENS.inc(sum(result.tokens))
        return pb.EmbedResponse(
            embeddings=[
                pb.Embedding(values=vector.tolist(), tokens=tokens, truncated=truncated)
                for vector, tokens, truncated in zip(result.vectors, result.tokens, result.truncated)
            ],
            total_tokens=sum(result.tokens),
            timing=convert.timing(result.timing),
        )
