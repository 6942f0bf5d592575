"""Protobuf messages <-> domain types. Field-level validation that needs the proto lives here."""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf import json_format, struct_pb2

from irgate.core.embedding import Timing, Truncation
from irgate.core.judge import Verdict
from irgate.errors import InvalidArgument
from irgate.index.collection import CollectionInfo, DocumentRecord
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
    raise InvalidArgument(f"truncation is {value}; allowed: TRUNCATION_END (1) or TRUNCATION_NONE (2)")


def precision(value: int) -> str:
    if value not in PRECISIONS:
        raise InvalidArgument(f"precision is {value}; allowed: VECTOR_PRECISION_F16, _F32 or _I8")
    return PRECISIONS[value]


def check_count(field: str, count: int, limit: int) -> None:
    if not 1 <= count <= limit:
        raise InvalidArgument(f"{field} has {count} entries; send 1 to {limit}")


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(message)


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
    )


def collection_info(info: CollectionInfo) -> pb.CollectionInfo:
    return pb.CollectionInfo(
        name=info.name,
        documents=info.documents,
        dimension=info.dimension,
        precision=PRECISION_ENUMS[info.precision],
        model=info.model,
        created_at=info.created_at,
    )


def document_record(message: pb.Document) -> DocumentRecord:
    return DocumentRecord(
        id=message.id,
        text=message.text,
        title=message.title,
        metadata=struct_to_dict(message.metadata),
        vector=np.asarray(message.vector, dtype=np.float32) if len(message.vector) else None,
    )


def document(record: DocumentRecord) -> pb.Document:
    message = pb.Document(id=record.id, text=record.text, title=record.title)
    if record.metadata:
        message.metadata.CopyFrom(dict_to_struct(record.metadata))
    if record.vector is not None:
        message.vector.extend(record.vector.tolist())
    return message


ENDED = {"answered": pb.ENDED_ANSWERED, "forced": pb.ENDED_FORCED}


def verdict(value: Verdict) -> pb.Verdict:
    return pb.Verdict(
        index=value.index,
        id=value.id,
        relevant=value.relevant,
        score=value.score,
        reasoning=value.reasoning,
        reasoning_tokens=value.reasoning_tokens,
        ended=ENDED[value.ended],
    )
