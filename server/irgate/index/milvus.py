"""Collections held by a Milvus server, through pymilvus (the [milvus] extra).

Milvus is the source of truth: each collection is one Milvus collection holding every document's
id, vector, title, text and metadata, and its settings (model, precision, creation time) as
collection properties. The gateway keeps nothing between calls, so any number of gateways can
share one Milvus and a write acknowledged by one is seen by a search on another: collections are
created with, and every read asks for, consistency level Strong (a read waits until every write
acknowledged before it is searchable).

Where Milvus differs from the in-process engine (docs/scale-out.md says more):
  - vectors are stored as FLOAT_VECTOR (float32): Milvus has no FLOAT16 vectors. The precision asked
    for picks the HNSW graph's quantisation instead: f32 -> HNSW, f16 -> HNSW_SQ FP16, i8 -> HNSW_SQ SQ8.
  - metadata is one JSON column. A filter is pushed down to Milvus as a JSON expression that finds a
    superset of the matches (irgate.filters.milvus_expression: Milvus takes true for 1 and a missing key
    for null, and negations are not pushed down), then the gateway keeps exactly the documents that
    match (irgate.filters.matches_filter), as the in-process engine does.
  - title and text are VARCHAR columns of at most 1 MiB each (in UTF-8 bytes).

A restarted Milvus may hold collections released (milvus-lite always does; a Milvus cluster while it
recovers): a call that Milvus answers "not loaded" loads the collection and is made once more, and
the health probe (ready) loads every released collection once Milvus answers again after an outage.
Every Milvus failure reaches the client as a precise code or UNAVAILABLE (retry), never INTERNAL.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

import grpc
import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.client.types import LoadState
from pymilvus.exceptions import ErrorCode, MilvusException

from irgate.domain.documents import Document
from irgate.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    IrgateError,
    NotFound,
    Resource,
    ResourceExhausted,
    StartupError,
    Unavailable,
)
from irgate.filters import Filter, milvus_expression, milvus_string
from irgate.identifiers import COLLECTION_NAME, check_collection_name
from irgate.index.records import (
    CollectionInfo,
    ScoredKey,
    UpsertResult,
    check_model,
    check_precision,
    check_query,
    check_upsert,
    matches_filter,
    validate_document_id,
)

# Milvus collection names allow letters, digits and '_' only, starting with a letter or '_': an irgate
# name is stored with '_' written as '__' and '-' as '_h' behind this prefix, which also keeps other
# applications' collections on the same Milvus out of irgate's list.
_PREFIX = "irgate_"
# VARCHAR lengths count UTF-8 bytes. Ids are at most 256 characters, so at most 1024 bytes.
_ID_BYTES = 1024
MAX_TEXT_BYTES = 1024 * 1024
# The most results one Milvus search returns (its topk limit).
MAX_TOPK = 16384
# Ids per query: well inside Milvus's query window and message limits.
_IDS_PER_QUERY = 1000
# A filtered search whose pushed-down superset held too few exact matches asks again for this many times more.
_FILTER_GROWTH = 8
# When even MAX_TOPK candidates hold fewer than k matches, up to this many matching ids are searched among.
_MATCHES_SEARCHED = 10_000
_STRONG = "Strong"
# The quantisation of the HNSW graph per precision: Milvus stores FLOAT_VECTOR (float32) either way.
_INDEX_OF_PRECISION: dict[str, tuple[str, dict[str, Any]]] = {
    "f32": ("HNSW", {}),
    "f16": ("HNSW_SQ", {"sq_type": "FP16"}),
    "i8": ("HNSW_SQ", {"sq_type": "SQ8"}),
}
_GRAPH = {"M": 16, "efConstruction": 200}
_SEARCH_EF = 64
# Milvus's status codes (its merr package) that say a collection is not (or not fully) loaded, or is
# being recovered: a Milvus that restarted answers these until the collection is loaded again.
_NOT_LOADED = {101, 103, 106}
# Milvus's codes for "too much now": rate limits, quotas and memory or disk limits; retry later.
_OVER_LIMIT = {3, 4, 7, 8, 9}
# Milvus's codes for a parameter it refused (invalid, missing, too large).
_BAD_PARAMETER = {1100, 1101, 1102}
# The longest wait between attempts to reach a Milvus that is down.
_RECONNECT_MS = 1000
# The health probe's limit: a Milvus that does not answer list_collections within it is not ready.
_PROBE_TIMEOUT = 2.0
T = TypeVar("T")

log = logging.getLogger("irgate.index")


def milvus_name(name: str) -> str:
    return _PREFIX + name.replace("_", "__").replace("-", "_h")


def irgate_name(stored: str) -> str | None:
    """The irgate name of a Milvus collection, or None when irgate did not make it."""
    if not stored.startswith(_PREFIX):
        return None
    name = re.sub(r"_(.)", lambda match: "_" if match.group(1) == "_" else "-", stored[len(_PREFIX):])
    return name if COLLECTION_NAME.fullmatch(name) and milvus_name(name) == stored else None


def _ids_expression(ids: Sequence[str]) -> str:
    return f"id in [{', '.join(milvus_string(document_id) for document_id in ids)}]"


def _record(row: Mapping[str, Any]) -> Document:
    """A row of a query as a record; its vector when the query asked for one."""
    vector = row.get("vector")
    return Document(
        id=row["id"], title=row["title"], text=row["text"], metadata=row["metadata"],
        vector=None if vector is None else np.asarray(vector, dtype=np.float32),
    )


def _not_loaded(error: MilvusException) -> bool:
    message = error.message.lower()
    return error.code in _NOT_LOADED or "not loaded" in message or "released" in message


def typed_error(error: MilvusException | grpc.RpcError, name: str, address: str) -> IrgateError:
    """A Milvus failure as the typed error clients are told: NOT_FOUND, RESOURCE_EXHAUSTED or
    INVALID_ARGUMENT where Milvus says so precisely, UNAVAILABLE (retry) for everything else, which
    is a Milvus that is down, restarting, recovering or failing. The message carries Milvus's code and
    reason, which is all the gateway knows of the failure."""
    if isinstance(error, grpc.RpcError):
        status: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
        if status is grpc.StatusCode.RESOURCE_EXHAUSTED:
            return ResourceExhausted(f"the Milvus index at {address} is at a limit ({error.details()}); retry later")  # type: ignore[attr-defined]
        return Unavailable(f"the Milvus index at {address} cannot be reached ({status.name}); retry")
    code, message = error.code, error.message
    if code == ErrorCode.COLLECTION_NOT_FOUND or "collection not found" in message.lower():
        return NotFound(f"collection '{name}' does not exist", resource=Resource("collection", name))
    if _not_loaded(error):
        return Unavailable(f"collection '{name}' is not loaded in the Milvus index at {address} yet ({message}); retry")
    if code == 2 or "unavailable" in message.lower():  # 2: pymilvus cannot connect
        return Unavailable(f"the Milvus index at {address} cannot be reached ({message}); retry")
    if code in _OVER_LIMIT:
        return ResourceExhausted(f"the Milvus index at {address} refused the call for now ({message}); retry later")
    if code in _BAD_PARAMETER:
        return InvalidArgument(f"the Milvus index at {address} refused the request: {message}")
    return Unavailable(f"the Milvus index at {address} cannot serve the call now (code {code}: {message}); retry")


class MilvusIndex:
    """Every collection of one Milvus server. Safe to call from several threads at once."""

    def __init__(self, address: str, dimension: int, model: str, timeout: float = 30.0) -> None:
        """address: HOST:PORT of Milvus's gRPC port; dimension and model describe the embedder serving now."""
        self.address = address
        self.dimension = dimension
        self.model = model
        # pymilvus logs every failed call with a traceback before raising it; irgate reports each one once.
        logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
        try:
            # pymilvus pings idle connections every 10 s; a gRPC server with default settings (milvus-lite's)
            # answers that with GOAWAY "too_many_pings" and drops the connection. Pings during calls are enough.
            # gRPC waits ever longer between attempts to reach a server that is down (up to 2 minutes, and
            # pymilvus's fresh channels share that wait): capped, a restarted Milvus is found within a second.
            self._client = MilvusClient(
                uri=f"http://{self.address}", timeout=timeout,
                grpc_options={"grpc.keepalive_permit_without_calls": False, "grpc.max_reconnect_backoff_ms": _RECONNECT_MS},
            )
        except MilvusException as error:
            raise StartupError(f"cannot reach Milvus at {self.address} ({error.message}); start it or fix --index") from None
        self._loading = threading.Lock()
        # Whether the last health probe got an answer (None before the first): the first probe, and the
        # first after Milvus stopped answering, load what a restarted Milvus holds released.
        self._answered: bool | None = None

    @property
    def location(self) -> str:
        return f"in Milvus at {self.address}"

    @property
    def unavailable(self) -> dict[str, str]:
        return {}  # Milvus answers for its own collections' health

    def ready(self) -> bool:
        """True when Milvus answers within a few seconds. When it answers again after it did not (or
        at the first probe), every irgate collection it holds released is loaded, so that searches
        find it served; a load that fails is retried by the next call that needs the collection."""
        try:
            stored = self._client.list_collections(timeout=_PROBE_TIMEOUT)
        except (MilvusException, grpc.RpcError) as error:
            if self._answered is not False:
                log.warning("the Milvus index at %s does not answer (%s); the services that need it are NOT_SERVING "
                            "until it does", self.address, getattr(error, "message", error))
            self._answered = False
            return False
        if self._answered is False:
            log.warning("the Milvus index at %s answers again", self.address)
        if not self._answered:
            self._answered = True
            for name in filter(None, map(irgate_name, stored)):
                try:
                    self._load(name)
                except (MilvusException, grpc.RpcError) as error:
                    log.warning("cannot load collection '%s' in Milvus at %s now: %s", name, self.address,
                                typed_error(error, name, self.address))
        return True

    def create(self, name: str, precision: str = "f16") -> CollectionInfo:
        check_collection_name(name, "collection name")
        check_precision(precision)
        stored = milvus_name(name)
        created_at = time.time()
        with self._answers(name):
            if self._client.has_collection(stored):
                raise AlreadyExists(f"collection '{name}' already exists", resource=Resource("collection", name))
            schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=_ID_BYTES)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dimension)
            schema.add_field("title", DataType.VARCHAR, max_length=MAX_TEXT_BYTES)
            schema.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT_BYTES)
            schema.add_field("metadata", DataType.JSON)
            index_type, quantisation = _INDEX_OF_PRECISION[precision]
            index = self._client.prepare_index_params()
            index.add_index(field_name="vector", index_type=index_type, metric_type="COSINE", params={**_GRAPH, **quantisation})
            self._client.create_collection(
                stored,
                schema=schema,
                index_params=index,
                consistency_level=_STRONG,
                properties={"irgate.model": self.model, "irgate.precision": precision, "irgate.created_at": repr(created_at)},
            )
        return CollectionInfo(name, 0, self.dimension, precision, self.model, created_at)

    def get(self, name: str) -> MilvusCollection:
        check_collection_name(name, "collection name")
        with self._answers(name):
            described = self._client.describe_collection(milvus_name(name))
        vector = next(field for field in described["fields"] if field["name"] == "vector")
        properties = described.get("properties", {})
        return MilvusCollection(
            self,
            name,
            dimension=int(vector["params"]["dim"]),
            precision=properties.get("irgate.precision", "f32"),
            model=properties.get("irgate.model", ""),
            created_at=float(properties.get("irgate.created_at", 0.0)),
            serving_model=self.model,
        )

    def list(self) -> list[CollectionInfo]:
        with self._answers(""):
            stored = self._client.list_collections()
        infos = []
        for name in sorted(filter(None, map(irgate_name, stored))):
            try:
                infos.append(self.get(name).info())
            except NotFound:
                continue  # deleted by another gateway meanwhile
        return infos

    def delete(self, name: str) -> None:
        check_collection_name(name, "collection name")
        with self._answers(name):
            if not self._client.has_collection(milvus_name(name)):
                raise NotFound(f"collection '{name}' does not exist", resource=Resource("collection", name))
            self._client.drop_collection(milvus_name(name))

    def close(self) -> None:
        self._client.close()

    @contextmanager
    def _answers(self, name: str) -> Iterator[None]:
        """Milvus's failures inside as irgate's typed errors (typed_error)."""
        try:
            yield
        except (MilvusException, grpc.RpcError) as error:
            raise typed_error(error, name, self.address) from None

    def loaded(self, name: str, call: Callable[[], T]) -> T:
        """call()'s answer; when Milvus says the collection is not loaded (it restarted), the collection
        is loaded and call() made once more. Milvus's failures are raised as typed errors."""
        with self._answers(name):
            try:
                return call()
            except MilvusException as error:
                if not _not_loaded(error):
                    raise
            self._load(name)
            return call()

    def _load(self, name: str) -> None:
        # One load at a time: the threads that found the collection released wait for the first one's
        # load instead of each loading it again.
        with self._loading:
            if self._client.get_load_state(milvus_name(name))["state"] == LoadState.Loaded:
                return
            log.warning("collection '%s' is not loaded in Milvus at %s (Milvus restarted?); loading it", name, self.address)
            self._client.load_collection(milvus_name(name))


class MilvusCollection:
    """One collection; a handle holds its fixed settings only, every document lives in Milvus."""

    def __init__(
        self, index: MilvusIndex, name: str, *, dimension: int, precision: str, model: str, created_at: float,
        serving_model: str | None,
    ) -> None:
        self._index = index
        self._client = index._client
        self.name = name
        self.dimension = dimension
        self.precision = precision
        self.model = model
        self.created_at = created_at
        self._serving_model = serving_model
        self._stored = milvus_name(name)

    def info(self) -> CollectionInfo:
        return CollectionInfo(self.name, self.count(), self.dimension, self.precision, self.model, self.created_at)

    def count(self) -> int:
        rows = self._index.loaded(self.name, partial(
            self._client.query, self._stored, filter="", output_fields=["count(*)"], consistency_level=_STRONG))
        return int(rows[0]["count(*)"])

    def upsert(self, documents: Sequence[Document], vectors: np.ndarray) -> UpsertResult:
        check_model(self.name, self.model, self._serving_model)
        checked = check_upsert(documents, vectors, self.dimension)
        if not checked:
            return UpsertResult(upserted=0, replaced=0)
        for item in checked:
            for field_name, value in (("title", item.record.title), ("text", item.record.text)):
                size = len(value.encode("utf-8", "surrogatepass"))
                if size > MAX_TEXT_BYTES:
                    raise InvalidArgument(
                        f"{field_name} of document '{item.record.id}' has {size} bytes in UTF-8; a collection "
                        f"in Milvus holds at most {MAX_TEXT_BYTES} per {field_name}"
                    )
        ids = [item.record.id for item in checked]
        rows = [
            {
                "id": item.record.id,
                "vector": item.vector.tolist(),
                "title": item.record.title,
                "text": item.record.text,
                "metadata": json.loads(item.metadata_json),
            }
            for item in checked
        ]
        replaced = len(self._existing(ids))
        self._index.loaded(self.name, partial(self._client.upsert, self._stored, rows))
        return UpsertResult(upserted=len(rows), replaced=replaced)

    def get(self, ids: Sequence[str], include_vectors: bool = False, skip_missing: bool = False) -> list[Document]:
        for document_id in ids:
            validate_document_id(document_id)
        fields = ["id", "title", "text", "metadata", *(["vector"] if include_vectors else [])]
        found: dict[str, Document] = {}
        for start in range(0, len(ids), _IDS_PER_QUERY):
            expression = _ids_expression(ids[start : start + _IDS_PER_QUERY])
            for row in self._index.loaded(self.name, partial(
                self._client.query, self._stored, filter=expression, output_fields=fields, consistency_level=_STRONG,
            )):
                found[row["id"]] = _record(row)
        if not skip_missing:
            for document_id in ids:
                if document_id not in found:
                    raise NotFound(
                        f"document '{document_id}' does not exist in collection '{self.name}'",
                        resource=Resource("document", document_id),
                    )
        return [found[document_id] for document_id in ids if document_id in found]

    def delete(self, ids: Sequence[str]) -> tuple[int, int]:
        for document_id in ids:
            validate_document_id(document_id)
        distinct = list(dict.fromkeys(ids))
        stored = self._existing(distinct)
        existing = [document_id for document_id in distinct if document_id in stored]
        if existing:
            self._index.loaded(self.name, partial(self._client.delete, self._stored, filter=_ids_expression(existing)))
        return len(existing), len(distinct) - len(existing)

    def search(self, vector: np.ndarray, k: int, filter: Filter | Mapping[str, Any] | None = None) -> list[ScoredKey]:
        check_model(self.name, self.model, self._serving_model)
        query, wanted = check_query(vector, k, filter, self.dimension)
        expression = (milvus_expression(wanted) if wanted else None) or ""
        limit = min(k, MAX_TOPK)
        while True:
            found = self._index.loaded(self.name, partial(
                self._client.search,
                self._stored,
                data=[query.tolist()],
                limit=limit,
                filter=expression,
                output_fields=["metadata"] if wanted else [],
                search_params={"metric_type": "COSINE", "params": {"ef": max(limit, _SEARCH_EF)}},
                consistency_level=_STRONG,
            ))[0]
            hits = [
                ScoredKey(id=hit["id"], score=float(hit["distance"]))
                for hit in found
                if not wanted or matches_filter(hit["entity"]["metadata"], wanted)
            ]
            # Done when k exact matches are in, or Milvus has nothing more to give.
            if len(hits) >= k or len(found) < limit:
                return hits[:k]
            if limit == MAX_TOPK:
                return hits[:k] if wanted is None else self._nearest_among_matches(query, k, wanted, expression, hits)
            limit = min(limit * _FILTER_GROWTH, MAX_TOPK)

    def _nearest_among_matches(
        self, query: np.ndarray, k: int, wanted: Filter, expression: str, found: list[ScoredKey]
    ) -> list[ScoredKey]:
        """For a filter Milvus could not narrow enough (its largest search held fewer than k matches):
        the matching documents' ids, by reading the metadata of every document the pushed-down
        expression keeps, then a search among those ids. With more than _MATCHES_SEARCHED matches,
        the hits `found` in Milvus's largest search stand."""
        matching: list[str] = []
        with self._index._answers(self.name):
            rows = self._index.loaded(self.name, partial(
                self._client.query_iterator, self._stored, batch_size=_IDS_PER_QUERY, filter=expression,
                output_fields=["metadata"], consistency_level=_STRONG,
            ))
            try:
                while batch := rows.next():
                    matching.extend(row["id"] for row in batch if matches_filter(row["metadata"], wanted))
                    if len(matching) > _MATCHES_SEARCHED:
                        return found[:k]
            finally:
                rows.close()
        hits: list[ScoredKey] = []
        for start in range(0, len(matching), _IDS_PER_QUERY):
            ids = matching[start : start + _IDS_PER_QUERY]
            hits.extend(ScoredKey(id=hit["id"], score=float(hit["distance"])) for hit in self._index.loaded(self.name, partial(
                self._client.search, self._stored, data=[query.tolist()], limit=min(k, len(ids)),
                filter=_ids_expression(ids), search_params={"metric_type": "COSINE", "params": {"ef": max(k, _SEARCH_EF)}},
                consistency_level=_STRONG,
            ))[0])
        return sorted(hits, key=lambda hit: -hit.score)[:k]

    def lexical_search(self, text: str, k: int, filter: Filter | Mapping[str, Any] | None = None) -> list[ScoredKey]:
        raise FailedPrecondition(
            f"collection '{self.name}' is in Milvus (the milvus engine), which irgate does not search lexically yet; "
            "use mode dense, or serve the collection from the local index (docs/scale-out.md)"
        )

    def list_documents(
        self, after: str | None, limit: int, filter: Filter | None = None, include_vectors: bool = False
    ) -> list[Document]:
        """Up to `limit` documents with ids after `after`, in id order, through Milvus's query
        iterator (which walks a collection by primary key: a plain query with a limit returns rows in
        no particular order), the filter pushed down as in search and then checked exactly."""
        if limit < 1:
            raise InvalidArgument(f"limit is {limit}; it must be at least 1")
        pushed = milvus_expression(filter) if filter is not None else None
        conditions = [*([f"id > {milvus_string(after)}"] if after is not None else []), *([f"({pushed})"] if pushed else [])]
        fields = ["id", "title", "text", "metadata", *(["vector"] if include_vectors else [])]
        records: list[Document] = []
        with self._index._answers(self.name):
            rows = self._index.loaded(self.name, partial(
                self._client.query_iterator, self._stored, batch_size=min(limit, _IDS_PER_QUERY),
                filter=" and ".join(conditions), output_fields=fields, consistency_level=_STRONG,
            ))
            try:
                while len(records) < limit and (batch := rows.next()):
                    records.extend(record for record in map(_record, batch)
                                   if filter is None or matches_filter(record.metadata, filter))
            finally:
                rows.close()
        return records[:limit]

    def snapshot(self, timeout: float = 300.0) -> None:
        """Seals what was written into indexed segments (Milvus's flush) and returns once the vector
        index covers them. Milvus does this by itself as segments fill up or age; until then fresh
        writes are searched by brute force, which milvus-lite does in Python (see docs/scale-out.md)."""
        with self._index._answers(self.name):
            self._client.flush(self._stored)
            deadline = time.monotonic() + timeout
            while self._client.describe_index(self._stored, "vector").get("pending_index_rows", 0) > 0:
                if time.monotonic() > deadline:
                    raise Unavailable(f"Milvus did not finish indexing collection '{self.name}' within {timeout:.0f} s")
                time.sleep(0.2)

    def _existing(self, ids: Sequence[str]) -> set[str]:
        existing: set[str] = set()
        for start in range(0, len(ids), _IDS_PER_QUERY):
            expression = _ids_expression(ids[start : start + _IDS_PER_QUERY])
            rows = self._index.loaded(self.name, partial(
                self._client.query, self._stored, filter=expression, output_fields=["id"], consistency_level=_STRONG,
            ))
            existing.update(row["id"] for row in rows)
        return existing
