"""Protobuf messages <-> domain types. Requests are validated here, at the edge: what reaches
core is a domain type whose names, ids, numbers and sizes have been checked (see irgate.identifiers)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from google.protobuf import struct_pb2

from irgate.core.embedding import Timing, Truncation
from irgate.core.judge import Verdict
from irgate.domain.collections import CollectionInfo
from irgate.domain.documents import Document
from irgate.errors import InvalidArgument
from irgate.identifiers import check_collection_name, check_document_id, check_key, shown
from irgate_client.v1 import irgate_pb2 as pb

PRECISIONS = {
    pb.VECTOR_PRECISION_UNSPECIFIED: "f16",
    pb.VECTOR_PRECISION_F16: "f16",
    pb.VECTOR_PRECISION_F32: "f32",
    pb.VECTOR_PRECISION_I8: "i8",
}
PRECISION_ENUMS = {"f16": pb.VECTOR_PRECISION_F16, "f32": pb.VECTOR_PRECISION_F32, "i8": pb.VECTOR_PRECISION_I8}


def truncation(value: int) -> Truncation:
    if value in (pb.TRUNCATION_UNSPECIFIED, pb.TRUNCATION_END):
        return Truncation.END
    if value == pb.TRUNCATION_NONE:
        return Truncation.NONE
    raise InvalidArgument(f"truncation is {value}; allowed: TRUNCATION_END (1) or TRUNCATION_NONE (2)", field="truncation")


def precision(value: int) -> str:
    if value not in PRECISIONS:
        raise InvalidArgument(f"precision is {value}; allowed: VECTOR_PRECISION_F16, _F32 or _I8", field="precision")
    return PRECISIONS[value]


def check_count(field: str, count: int, limit: int) -> None:
    if not 1 <= count <= limit:
        raise InvalidArgument(f"{field} has {count} entries; send 1 to {limit}", field=field)


def collection_name(name: str, field: str = "collection") -> str:
    return check_collection_name(name, field)


def document_ids(ids: Sequence[str], field: str, limit: int) -> list[str]:
    check_count(field, len(ids), limit)
    return [check_document_id(value, f"{field}[{position}]") for position, value in enumerate(ids)]


# A Struct's numbers are doubles, exact for integers up to 2**53 - 1 only: past it a client's
# 9007199254740993 arrives as 9007199254740992, so a number beyond it is refused rather than stored rounded.
MAX_EXACT_NUMBER = 2**53 - 1


def struct_to_dict(message: struct_pb2.Struct, field: str) -> dict[str, Any]:
    """A Struct as JSON values; field names the Struct in error messages (e.g. "filter").

    Numbers must be finite (JSON has no NaN or infinity) and within +-MAX_EXACT_NUMBER. Keys follow irgate.identifiers.
    """
    return {check_key(key, field): _json_value(value, f"{field}.{shown(key)}") for key, value in message.fields.items()}


def _json_value(value: struct_pb2.Value, field: str) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise InvalidArgument(f"{field} is {number}; JSON numbers must be finite (no NaN or infinity)", field=field)
        if abs(number) > MAX_EXACT_NUMBER:
            raise InvalidArgument(
                f"{field} is {number:.17g}; numbers are doubles, exact within +-{MAX_EXACT_NUMBER} (2^53 - 1) only, "
                "and this one may have been rounded on the way: send a larger number as a string",
                field=field,
            )
        # Whole numbers read back as ints (2001, -7, not 2001.0); -0.0 stays a float so it round-trips.
        if number.is_integer() and (number or math.copysign(1.0, number) > 0):
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "null_value":
        return None
    if kind == "struct_value":
        return struct_to_dict(value.struct_value, field)
    if kind == "list_value":
        return [_json_value(item, f"{field}[{position}]") for position, item in enumerate(value.list_value.values)]
    raise InvalidArgument(f"{field} has no value; set null, a number, a string, a bool, a list or an object", field=field)


def document(message: pb.Document, field: str, dimension: int) -> Document:
    """A validated Document. field names it in errors, e.g. "documents[3]"."""
    document_id = check_document_id(message.id, f"{field}.id")
    vector = None
    if len(message.vector):
        vector = np.asarray(message.vector, dtype=np.float32)
        if vector.size != dimension:
            raise InvalidArgument(
                f"{field}.vector (document '{shown(document_id)}') has {vector.size} values; "
                f"the embedder's dimension is {dimension}",
                field=f"{field}.vector",
            )
        if not np.all(np.isfinite(vector)):
            raise InvalidArgument(f"{field}.vector (document '{shown(document_id)}') holds NaN or infinite values", field=f"{field}.vector")
        if not np.any(vector):
            raise InvalidArgument(f"{field}.vector (document '{shown(document_id)}') is all zeros; it has no direction", field=f"{field}.vector")
    return Document(
        id=document_id,
        text=message.text,
        title=message.title,
        metadata=struct_to_dict(message.metadata, f"{field}.metadata"),
        vector=vector,
    )


def dict_to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def timing(value: Timing) -> pb.Timing:
    return pb.Timing(
        queue_ns=value.queue_ns,
        tokenization_ns=value.tokenization_ns,
        inference_ns=value.inference_ns,
        total_ns=value.total_ns,
        judge_ns=value.judge_ns,
    )


def collection_info(info: CollectionInfo) -> pb.CollectionInfo:
    message = pb.CollectionInfo(
        name=info.name,
        documents=info.documents,
        dimension=info.dimension,
        precision=PRECISION_ENUMS[info.precision],
        model=info.model,
        created_at=info.created_at,
        state=pb.COLLECTION_STATE_READY,
    )
    message.create_time.FromNanoseconds(round(info.created_at * 1e9))
    return message


def document_message(value: Document) -> pb.Document:
    message = pb.Document(id=value.id, text=value.text, title=value.title)
    if value.metadata:
        message.metadata.CopyFrom(dict_to_struct(dict(value.metadata)))
    if value.vector is not None:
        message.vector.extend(value.vector.tolist())
    return message


ENDED = {"answered": pb.ENDED_ANSWERED, "forced": pb.ENDED_FORCED, "forced_eos": pb.ENDED_FORCED_EOS, "scored": pb.ENDED_SCORED}


def verdict(value: Verdict) -> pb.Verdict:
    return pb.Verdict(
        index=value.index,
        id=value.id,
        relevant=value.relevant,
        score=value.score,
        reasoning=value.reasoning,
        reasoning_tokens=value.reasoning_tokens,
        ended=ENDED[value.ended],
        truncated=value.truncated,
        reasoning_budget=value.reasoning_budget,
    )


def reasoning_budget(message: pb.JudgeRequest | pb.RerankOptions) -> int | None:
    """None when the request left the budget unset: the server's cap applies."""
    return message.max_reasoning_tokens if message.HasField("max_reasoning_tokens") else None


def passage_cap(message: pb.JudgeRequest | pb.RerankOptions) -> int | None:
    """None when the request left the passage cap unset: the server's cap applies (the judge
    refuses one above it)."""
    return message.max_passage_tokens if message.HasField("max_passage_tokens") else None
