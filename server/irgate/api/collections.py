"""irgate.v1.Collections servicer."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator

import grpc

from irgate import filters
from irgate.api import convert
from irgate.api.metrics import EMBEDDED_TOKENS
from irgate.api.rpc import Admission, client_streaming, note, stream_messages, unary
from irgate.core.collections import CollectionService
from irgate.errors import InvalidArgument
from irgate.identifiers import shown
from irgate_client.v1 import irgate_pb2 as pb
from irgate_client.v1 import irgate_pb2_grpc as pb_grpc

# AIP-158: a page holds DEFAULT_PAGE_SIZE items unless the request says, and never more than MAX_PAGE_SIZE.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_COLLECTIONS_SCOPE = "collections"


class CollectionsServicer(pb_grpc.CollectionsServicer):
    def __init__(
        self, collections: CollectionService, admission: Admission, max_batch_size: int, dimension: int, stream_idle_s: float
    ):
        self.collections = collections
        self.admission = admission
        self.max_batch_size = max_batch_size
        self.dimension = dimension  # of the embedder: client vectors must have as many values
        self.stream_idle_s = stream_idle_s

    @unary("CreateCollection")
    async def CreateCollection(self, request: pb.CreateCollectionRequest, context: grpc.aio.ServicerContext) -> pb.CollectionInfo:
        info = await self.collections.create(convert.collection_name(request.name, "name"), convert.precision(request.precision))
        return convert.collection_info(info)

    @unary("ListCollections")
    async def ListCollections(self, request: pb.ListCollectionsRequest, context: grpc.aio.ServicerContext) -> pb.ListCollectionsResponse:
        after = _position(request.page_token, _COLLECTIONS_SCOPE)
        listed = [convert.collection_info(info) for info in await self.collections.list()]
        listed += [
            pb.CollectionInfo(name=name, state=pb.COLLECTION_STATE_DAMAGED, damage=reason)
            for name, reason in self.collections.damaged().items()
        ]
        listed = [info for info in sorted(listed, key=lambda info: info.name) if after is None or info.name > after]
        if not request.page_size:  # as before paging: every collection at once
            return pb.ListCollectionsResponse(collections=listed)
        size = min(request.page_size, MAX_PAGE_SIZE)
        more = len(listed) > size
        return pb.ListCollectionsResponse(
            collections=listed[:size],
            next_page_token=_token(_COLLECTIONS_SCOPE, listed[size - 1].name) if more else "",
        )

    @unary("ListDocuments", smaller="ask for a smaller page_size, or leave include_vectors off")
    async def ListDocuments(self, request: pb.ListDocumentsRequest, context: grpc.aio.ServicerContext) -> pb.ListDocumentsResponse:
        name = convert.collection_name(request.collection)
        expression = None
        scope = f"documents {name}"
        if request.HasField("filter"):
            given = convert.struct_to_dict(request.filter, "filter")
            expression = filters.parse(given)
            if expression is not None:  # an empty filter lists every document, as none does
                # A token walks one listing: the same collection with the same filter.
                scope += " " + hashlib.sha256(json.dumps(given, sort_keys=True).encode()).hexdigest()[:16]
        after = _position(request.page_token, scope)
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        # One more than the page: whether another page follows is known without an empty last page.
        documents = await self.collections.list_documents(name, after, size + 1, expression, request.include_vectors)
        more = len(documents) > size
        return pb.ListDocumentsResponse(
            documents=[convert.document_message(document) for document in documents[:size]],
            next_page_token=_token(scope, documents[size - 1].id) if more else "",
        )

    @unary("DescribeCollection")
    async def DescribeCollection(self, request: pb.DescribeCollectionRequest, context: grpc.aio.ServicerContext) -> pb.CollectionInfo:
        return convert.collection_info(await self.collections.describe(convert.collection_name(request.name, "name")))

    @unary("DeleteCollection")
    async def DeleteCollection(self, request: pb.DeleteCollectionRequest, context: grpc.aio.ServicerContext) -> pb.DeleteCollectionResponse:
        await self.collections.delete(convert.collection_name(request.name, "name"))
        return pb.DeleteCollectionResponse()

    @client_streaming("UpsertDocuments")
    async def UpsertDocuments(
        self, requests: AsyncIterator[pb.UpsertDocumentsRequest], context: grpc.aio.ServicerContext
    ) -> pb.UpsertDocumentsResponse:
        name: str | None = None
        upserted = replaced = unchanged = tokens = 0
        try:
            async for request in stream_messages(requests, self.stream_idle_s, "UpsertDocuments"):
                if name is None:
                    name = convert.collection_name(request.collection)
                    note(collection=name)
                elif request.collection != name:
                    raise InvalidArgument(
                        f"message names collection '{shown(request.collection)}' but this stream writes to '{name}'; "
                        "use one stream per collection",
                        field="collection",
                    )
                convert.check_count("documents", len(request.documents), self.max_batch_size)
                documents = [
                    convert.document(document, f"documents[{position}]", self.dimension)
                    for position, document in enumerate(request.documents)
                ]
                truncation = convert.truncation(request.truncation)
                # A slot per message, not per stream: a stream waiting for its next message holds none.
                with self.admission.slot():
                    outcome = await self.collections.upsert(name, documents, truncation)
                upserted += outcome.upserted
                replaced += outcome.replaced
                unchanged += outcome.unchanged
                tokens += outcome.tokens
                note(upserted=upserted, unchanged=unchanged)
                EMBEDDED_TOKENS.inc(outcome.tokens)
        except Exception as error:
            if upserted:
                # Say what is durable, so that the client resumes instead of re-sending everything.
                error.add_note(f"{upserted} documents of earlier messages were committed")
            raise
        if name is None:
            raise InvalidArgument(
                "the stream sent no documents; send at least one UpsertDocumentsRequest", field="documents"
            )
        return pb.UpsertDocumentsResponse(
            upserted=upserted,
            replaced=replaced,
            unchanged=unchanged,
            total_tokens=tokens,
            documents=await self.collections.count(name),
        )

    @unary("GetDocuments", smaller="ask for fewer ids per call, or leave include_vectors off")
    async def GetDocuments(self, request: pb.GetDocumentsRequest, context: grpc.aio.ServicerContext) -> pb.GetDocumentsResponse:
        ids = convert.document_ids(request.ids, "ids", self.max_batch_size)
        records = await self.collections.get(convert.collection_name(request.collection), ids, request.include_vectors)
        found = {record.id for record in records}
        return pb.GetDocumentsResponse(
            documents=[convert.document_message(record) for record in records],
            not_found=[document_id for document_id in dict.fromkeys(ids) if document_id not in found],
        )

    @unary("DeleteDocuments")
    async def DeleteDocuments(self, request: pb.DeleteDocumentsRequest, context: grpc.aio.ServicerContext) -> pb.DeleteDocumentsResponse:
        ids = convert.document_ids(request.ids, "ids", self.max_batch_size)
        deleted, not_found = await self.collections.delete_documents(convert.collection_name(request.collection), ids)
        return pb.DeleteDocumentsResponse(deleted=deleted, not_found=not_found)


def _token(scope: str, after: str) -> str:
    """An opaque page token: the listing it belongs to and the last name or id of its page."""
    return base64.urlsafe_b64encode(json.dumps({"scope": scope, "after": after}).encode()).decode()


def _position(token: str, scope: str) -> str | None:
    """The last name or id of the page before, from its token (None for the first page)."""
    if not token:
        return None
    try:
        decoded = json.loads(base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True))
        given_scope, after = decoded["scope"], decoded["after"]
    except (ValueError, TypeError, KeyError):  # binascii.Error and UnicodeError are ValueErrors
        decoded = None
    if decoded is None or not isinstance(given_scope, str) or not isinstance(after, str):
        raise InvalidArgument(
            "page_token is not a token this server made; pass next_page_token of the previous page unchanged, "
            "or leave it empty for the first page",
            field="page_token",
        )
    if given_scope != scope:
        raise InvalidArgument(
            "page_token belongs to another listing (another collection, or another filter); a token only "
            "continues the listing of the page it came from",
            field="page_token",
        )
    return after
