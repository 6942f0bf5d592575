"""Fuzzing every RPC of a real server with Hypothesis-generated requests, valid and invalid.

Each strategy builds a request together with the status it must get: INVALID_ARGUMENT when any
part breaks a documented rule, else a status that follows from the server's state (OK, NOT_FOUND,
ALREADY_EXISTS, or FAILED_PRECONDITION for the judge of a server started without one). No request
may ever get UNKNOWN or INTERNAL, and the server must outlive them all. IRGATE_FUZZ_EXAMPLES sets
the examples per RPC (`make soak` raises it); the number of requests sent is printed at the end.
"""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from irgate.local_server import LocalServer
from irgate_client.v1 import irgate_pb2 as pb
from irgate_client.v1 import irgate_pb2_grpc as pb_grpc

EXAMPLES = int(os.environ.get("IRGATE_FUZZ_EXAMPLES", "250"))
BATCH = 8  # --max-batch-size of the fuzzed server
MAX_K = 50
DIMENSION = 384
EXISTING = "fuzz-docs"  # created once; upserts, gets and deletes land here
OK, INVALID = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
sent = {"requests": 0}

# --- building blocks: (value, valid?) ------------------------------------------------------------

# Any text protobuf can carry (no lone surrogates); control characters included.
any_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=60)
plain_text = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=60)
control = st.characters(min_codepoint=0, max_codepoint=0x1F) | st.characters(min_codepoint=0x7F, max_codepoint=0x9F)

valid_ids = plain_text.map(lambda text: (text, True))
invalid_ids = st.one_of(
    st.just(("", False)),
    st.text(min_size=257, max_size=300).filter(lambda text: not any(0xD800 <= ord(c) <= 0xDFFF for c in text)).map(
        lambda text: (text, False)
    ),
    st.tuples(plain_text, control, any_text).map(lambda parts: (parts[0] + parts[1] + parts[2], False)),
)
ids = st.one_of(valid_ids, valid_ids, invalid_ids)

valid_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True).map(lambda name: (f"fz{name}", True))
invalid_names = st.one_of(
    st.just(("", False)),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{64,70}", fullmatch=True).map(lambda name: (name, False)),
    st.tuples(plain_text, st.sampled_from(["/", ".", " ", "..", "\x00", "é"])).map(lambda p: (p[0] + p[1], False)),
)
# A name that exists, one that does not, or one that breaks the rule.
collections = st.one_of(st.just((EXISTING, True)), valid_names, invalid_names)

numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(lambda x: (x, True)),
    st.sampled_from([math.nan, math.inf, -math.inf]).map(lambda x: (x, False)),
    st.integers(-(2**53), 2**53).map(lambda x: (x, True)),
)
scalars = st.one_of(numbers, any_text.map(lambda s: (s, True)), st.booleans().map(lambda b: (b, True)), st.just((None, True)))
keys = st.one_of(plain_text.map(lambda k: (k, True)), st.tuples(plain_text, control).map(lambda p: (p[0] + p[1], False)))


def _json(children):
    lists = st.lists(children, max_size=3).map(lambda items: ([v for v, _ in items], all(ok for _, ok in items)))
    objects = st.lists(st.tuples(keys, children), max_size=3).map(
        lambda pairs: ({k: v for (k, _), (v, _) in pairs}, all(kok and vok for (_, kok), (_, vok) in pairs))
    )
    return lists | objects


json_values = st.recursive(scalars, _json, max_leaves=8)
structs = st.lists(st.tuples(keys, json_values), max_size=4).map(
    lambda pairs: ({k: v for (k, _), (v, _) in pairs}, all(kok and vok for (_, kok), (_, vok) in pairs))
)


def equality_only(value: dict) -> bool:
    """Whether a filter holds only the plain form, key = value: no operator ('$' at any depth) and no
    dotted or escaped path ('.' or '\\' in a key), whose rules test_filters checks."""

    def operators_in(item: object) -> bool:
        if isinstance(item, dict):
            return any(key.startswith("$") or operators_in(child) for key, child in item.items())
        return isinstance(item, list) and any(operators_in(child) for child in item)

    return not operators_in(value) and not any("." in key or "\\" in key for key in value)


def struct_of(value: dict) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def unit_vector(seed: int) -> list[float]:
    vector = np.random.default_rng(seed).standard_normal(DIMENSION)
    return (vector / np.linalg.norm(vector)).astype(np.float32).tolist()


vectors = st.one_of(
    st.just(([], True)),
    st.integers(0, 2**32).map(lambda seed: (unit_vector(seed), True)),
    st.integers(1, 500).filter(lambda n: n != DIMENSION).map(lambda n: ([0.5] * n, False)),
    st.sampled_from([math.nan, math.inf]).map(lambda x: ([x] + [0.1] * (DIMENSION - 1), False)),
    st.just(([0.0] * DIMENSION, False)),
)


@st.composite
def documents(draw):
    (document_id, id_ok), (metadata, metadata_ok), (vector, vector_ok) = draw(ids), draw(structs), draw(vectors)
    document = pb.Document(id=document_id, text=draw(any_text), title=draw(any_text), vector=vector)
    document.metadata.CopyFrom(struct_of(metadata))
    return document, id_ok and metadata_ok and vector_ok


def count_ok(count: int) -> bool:
    return 1 <= count <= BATCH


# --- the server and a checked call -------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzzed(minilm_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    args = ["--embedder", f"onnx:{minilm_folder}", "--judge", "none", "--max-batch-size", str(BATCH), "--max-k", str(MAX_K)]
    with LocalServer(tmp_path_factory.mktemp("fuzz-data"), args) as running, grpc.insecure_channel(running.address) as channel:
        pb_grpc.CollectionsStub(channel).CreateCollection(pb.CreateCollectionRequest(name=EXISTING))
        yield running, channel
        assert running._process is not None and running._process.poll() is None, "the server died"
    print(f"\nfuzz: {sent['requests']} requests, none answered UNKNOWN or INTERNAL")


def check(call, allowed: set[grpc.StatusCode]) -> grpc.StatusCode:
    sent["requests"] += 1
    try:
        call()
        code, details = OK, ""
    except grpc.RpcError as error:
        code, details = error.code(), error.details()
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), details
    assert code in allowed, f"{code.name}: {details}"
    return code


def expect(valid: bool, *otherwise: grpc.StatusCode) -> set[grpc.StatusCode]:
    return set(otherwise) if valid else {INVALID}


# --- one test per RPC --------------------------------------------------------------------------


@FUZZ
@given(
    inputs=st.lists(
        st.tuples(st.sampled_from([0, 1, 2, 7]), any_text, any_text, any_text), max_size=BATCH + 2
    ),
    truncation=st.sampled_from([0, 1, 2, 9]),
    raw=st.booleans(),
)
def test_embed(fuzzed, inputs, truncation, raw) -> None:
    messages, valid = [], count_ok(len(inputs)) and truncation != 9
    for kind, text, instruction, title in inputs:
        is_query = kind == pb.TEXT_KIND_QUERY
        valid &= kind != 7 and bool(text.strip()) and not (instruction and not is_query) and not (title and is_query)
        messages.append(pb.EmbedInput(kind=kind, text=text, instruction=instruction, title=title))
    request = pb.EmbedRequest(inputs=messages, truncation=truncation, raw=raw)
    check(lambda: pb_grpc.EmbedStub(fuzzed[1]).Embed(request, timeout=60), expect(valid, OK))


@FUZZ
@given(messages=st.lists(st.tuples(collections, st.lists(documents(), max_size=BATCH + 1), st.sampled_from([0, 1, 2, 9])),
                         min_size=0, max_size=3))
def test_upsert_documents(fuzzed, messages) -> None:
    requests, allowed, name = [], None, None
    for (collection, name_ok), batch, truncation in messages:
        if allowed is not None:
            # The answer is decided: the stream ends there. (Messages a client sends after the server
            # has answered fail in grpc's client with its own INTERNAL, which is not the server's.)
            break
        request = pb.UpsertDocumentsRequest(collection=collection, documents=[d for d, _ in batch], truncation=truncation)
        requests.append(request)
        first = name is None
        name = collection if first else name
        if (first and not name_ok) or collection != name or not count_ok(len(batch)) or truncation == 9:
            allowed = {INVALID}
        elif not all(ok for _, ok in batch):
            allowed = {INVALID}
        elif collection != EXISTING:
            allowed = {grpc.StatusCode.NOT_FOUND}
    if allowed is None:
        allowed = {INVALID} if not requests else {OK}
    check(lambda: pb_grpc.CollectionsStub(fuzzed[1]).UpsertDocuments(iter(requests), timeout=60), allowed)


@FUZZ
@given(collection=collections, chosen=st.lists(ids, max_size=BATCH + 2), vectors=st.booleans(), delete=st.booleans())
def test_get_and_delete_documents(fuzzed, collection, chosen, vectors, delete) -> None:
    (name, name_ok), valid_ids = collection, all(ok for _, ok in chosen)
    valid = name_ok and count_ok(len(chosen)) and valid_ids
    allowed = expect(valid, OK if name == EXISTING else grpc.StatusCode.NOT_FOUND)
    stub = pb_grpc.CollectionsStub(fuzzed[1])
    values = [value for value, _ in chosen]
    if delete:
        check(lambda: stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection=name, ids=values), timeout=60), allowed)
    else:
        request = pb.GetDocumentsRequest(collection=name, ids=values, include_vectors=vectors)
        check(lambda: stub.GetDocuments(request, timeout=60), allowed)


@FUZZ
@given(
    collection=collections,
    query=any_text,
    instruction=any_text,
    k=st.integers(0, 2**32 - 1),
    top_n=st.sampled_from([0, 0, 0, 1, 5]),
    filter_=st.none() | structs.filter(lambda pair: equality_only(pair[0])),
    include=st.booleans(),
    truncation=st.sampled_from([0, 1, 2, 9]),
)
def test_search(fuzzed, collection, query, instruction, k, top_n, filter_, include, truncation) -> None:
    (name, name_ok) = collection
    filter_ok = filter_ is None or filter_[1]
    valid = name_ok and bool(query.strip()) and k <= MAX_K and filter_ok and truncation != 9
    # No judge here: a rerank is a failed precondition, checked after the request itself.
    state = grpc.StatusCode.FAILED_PRECONDITION if top_n else (OK if name == EXISTING else grpc.StatusCode.NOT_FOUND)
    request = pb.SearchRequest(collection=name, query=query, instruction=instruction, k=k, include_documents=include,
                               rerank=pb.RerankOptions(top_n=top_n), truncation=truncation)
    if filter_ is not None:
        request.filter.CopyFrom(struct_of(filter_[0]))
    allowed = expect(valid, state)
    if valid and truncation == pb.TRUNCATION_NONE:
        allowed.add(INVALID)  # a query longer than the model reads
    check(lambda: pb_grpc.SearchStub(fuzzed[1]).Search(request, timeout=60), allowed)


@FUZZ
@given(name=st.one_of(valid_names, invalid_names), precision=st.sampled_from([0, 1, 2, 3, 7]))
def test_collection_lifecycle(fuzzed, name, precision) -> None:
    (value, valid) = name
    value = f"{value}{uuid.uuid4().hex[:6]}" if valid and len(value) < 50 else value  # fresh, so create succeeds
    stub = pb_grpc.CollectionsStub(fuzzed[1])
    created = check(lambda: stub.CreateCollection(pb.CreateCollectionRequest(name=value, precision=precision)),
                    expect(valid and precision != 7, OK, grpc.StatusCode.ALREADY_EXISTS))
    present = OK if created == OK else grpc.StatusCode.NOT_FOUND
    check(lambda: stub.DescribeCollection(pb.DescribeCollectionRequest(name=value)), expect(valid, present))
    check(lambda: stub.ListCollections(pb.ListCollectionsRequest()), {OK})
    check(lambda: stub.DeleteCollection(pb.DeleteCollectionRequest(name=value)), expect(valid, present))


@FUZZ
@given(
    query=any_text,
    documents_=st.lists(st.one_of(any_text.map(lambda t: pb.JudgeDocument(inline=pb.InlineDocument(text=t))),
                                  ids.map(lambda i: pb.JudgeDocument(id=i[0])), st.just(pb.JudgeDocument())), max_size=4),
    budget=st.integers(0, 2**32 - 1),
    stream=st.booleans(),
)
def test_judge(fuzzed, query, documents_, budget, stream) -> None:
    request = pb.JudgeRequest(query=query, documents=documents_, max_reasoning_tokens=budget, collection=EXISTING)
    stub = pb_grpc.JudgeStub(fuzzed[1])
    # This server runs without a judge: a valid request is a failed precondition, an invalid one may be either.
    allowed = {grpc.StatusCode.FAILED_PRECONDITION, INVALID}
    check((lambda: list(stub.JudgeStream(request, timeout=60))) if stream else (lambda: stub.Judge(request, timeout=60)),
          allowed)


@FUZZ
@given(service=st.one_of(st.sampled_from(["", "irgate.v1.Search", "irgate.v1.Judge"]), plain_text))
def test_info_and_health(fuzzed, service) -> None:
    check(lambda: pb_grpc.InfoStub(fuzzed[1]).GetInfo(pb.GetInfoRequest(), timeout=60), {OK})
    health = health_pb2_grpc.HealthStub(fuzzed[1])
    known = service in ("", "irgate.v1.Search", "irgate.v1.Judge")
    check(lambda: health.Check(health_pb2.HealthCheckRequest(service=service), timeout=60),
          {OK} if known else {grpc.StatusCode.NOT_FOUND})

    def watch() -> None:
        stream = health.Watch(health_pb2.HealthCheckRequest(service=service), timeout=60)
        next(stream)
        stream.cancel()

    check(watch, {OK})
