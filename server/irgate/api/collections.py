"""irgate.v1.Collections servicer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from irgate.api import convert
from irgate.api.metrics import EMBEDDED_TOKENS
from irgate.api.rpc import Admission, unary
from irgate.core.collections import CollectionService
from irgate.errors import InvalidArgument
from irgate_client.v1 import irgate_pb2 as pb
from irgate_client.v1 import irgate_pb2_grpc as pb_grpc


class CollectionsServicer(pb_grpc.CollectionsServicer):
    def __init__(self, collections: CollectionService, admission: Admission, max_batch_size: int):
        self.collections = collections
        self.admission = admission
        self.max_batch_size = max_batch_size

    @unary("CreateCollection")
    async def CreateCollection(self, request: pb.CreateCollectionRequest, context: grpc.aio.ServicerContext) -> pb.CollectionInfo:
        info = await self.collections.create(request.name, convert.precision(request.precision))
        return convert.collection_info(info)

    @unary("ListCollections")
    async def ListCollections(self, request: pb.ListCollectionsRequest, context: grpc.aio.ServicerContext) -> pb.ListCollectionsResponse:
        infos = await self.collections.list()
        return pb.ListCollectionsResponse(collections=[convert.collection_info(info) for info in infos])

    @unary("DescribeCollection")
    async def DescribeCollection(self, request: pb.DescribeCollectionRequest, context: grpc.aio.ServicerContext) -> pb.CollectionInfo:
        return convert.collection_info(await self.collections.describe(request.name))

    @unary("DeleteCollection")
    async def DeleteCollection(self, request: pb.DeleteCollectionRequest, context: grpc.aio.ServicerContext) -> pb.DeleteCollectionResponse:
        await self.collections.delete(request.name)
        return pb.DeleteCollectionResponse()

    @unary("UpsertDocuments")
    async def UpsertDocuments(
        self, requests: AsyncIterator[pb.UpsertDocumentsRequest], context: grpc.aio.ServicerContext
    ) -> pb.UpsertDocumentsResponse:
        name: str | None = None
        upserted = replaced = unchanged = tokens = 0
        async for request in requests:
            try:
                if name is None:
                    name = request.collection
                elif request.collection != name:
                    raise InvalidArgument(
                        f"message names collection '{request.collection}' but this stream writes to '{name}'; "
                        "use one stream per collection"
                    )
                convert.check_count("documents", len(request.documents), self.max_batch_size)
                records = [convert.document_record(document) for document in request.documents]
                outcome = await self.collections.upsert(name, records, convert.truncation(request.truncation))
            except Exception as error:
                if upserted:
                    # Say what is durable, so that the client resumes instead of re-sending everything.
                    error.args = (f"{error} ({upserted} documents of earlier messages were committed)",)
                raise
            upserted += outcome.upserted
            replaced += outcome.replaced
            unchanged += outcome.unchanged
            tokens += outcome.tokens
            EMBEDDED_TOKENS.inc(outcome.tokens)
        if name is None:
            raise InvalidArgument("the stream sent no documents; send at least one UpsertDocumentsRequest")
        return pb.UpsertDocumentsResponse(
            upserted=upserted,
            replaced=replaced,
            unchanged=unchanged,
            total_tokens=tokens,
            documents=await self.collections.count(name),
        )

    @unary("GetDocuments")
    async def GetDocuments(self, request: pb.GetDocumentsRequest, context: grpc.aio.ServicerContext) -> pb.GetDocumentsResponse:
        convert.check_count("ids", len(request.ids), self.max_batch_size)
        records = await self.collections.get(request.collection, list(request.ids), request.include_vectors)
        found = {record.id for record in records}
        return pb.GetDocumentsResponse(
            documents=[convert.document(record) for record in records],
            not_found=[document_id for document_id in dict.fromkeys(request.ids) if document_id not in found],
        )

    @unary("DeleteDocuments")
    async def DeleteDocuments(self, request: pb.DeleteDocumentsRequest, context: grpc.aio.ServicerContext) -> pb.DeleteDocumentsResponse:
        convert.check_count("ids", len(request.ids), self.max_batch_size)
        deleted, not_found = await self.collections.delete_documents(request.collection, list(request.ids))
        return pb.DeleteDocumentsResponse(deleted=deleted, not_found=not_found)
