"""Paging and export: ListDocuments walks a collection in id order a page at a time (on both index
engines), ListCollections pages by name, and `irgate collection export` writes a corpus that
`irgate index` reads back into another server, or into the Milvus engine, with the same documents
and the same search results."""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2

from irgate.local_server import LocalServer
from irgate_client import AsyncClient, Client, Document, IrgateError, SearchQuery
from irgate_client.v1 import irgate_pb2 as pb
from irgate_client.v1 import irgate_pb2_grpc as pb_grpc

BATCH = 8
SERVER_ARGS = ["--judge", "none", "--max-batch-size", str(BATCH), "--max-k", "100"]
# Ids whose code-point order differs from a naive one: upper case before lower, accents and a
# character beyond the Basic Multilingual Plane last, digits compared as text ("d10" before "d2").
IDS = ["d2", "d10", "d1", "Z", "a", "é", "𝔸", "x y", "d-3", "b\"quote"] + [f"n{i:02d}" for i in range(13)]
CORPUS = [
    Document(id=document_id, title=f"Title {position}", text=f"Passage {position} about topic {position % 4}.",
             metadata={"year": 2015 + position % 10, "tags": ["t", position], "nested": {"even": position % 2 == 0}})
    for position, document_id in enumerate(IDS)
]
QUERIES = ["passage about topic 1", "title 7", "topic 3"]


@pytest.fixture
def corpus(engine_client: Client) -> Iterator[str]:
    name = f"paging-{uuid.uuid4().hex[:10]}"
    engine_client.create_collection(name)
    engine_client.upsert(name, CORPUS, batch_size=BATCH)
    yield name
    engine_client.delete_collection(name)


def listed_ids(client: Client, collection: str, **options: object) -> list[list[str]]:
    return [[document.id for document in page.documents] for page in client.list_documents(collection, **options)]


def test_documents_come_in_pages_in_id_order_until_the_last(engine_client: Client, corpus: str) -> None:
    pages = list(engine_client.list_documents(corpus, page_size=5))
    assert [len(page.documents) for page in pages] == [5, 5, 5, 5, 3]
    assert [bool(page.next_page_token) for page in pages] == [True] * 4 + [False]
    assert [document.id for page in pages for document in page.documents] == sorted(IDS)
    listed = {document.id: document for page in pages for document in page.documents}
    for given in CORPUS:
        stored = listed[given.id]
        assert (stored.title, stored.text, stored.metadata, stored.vector) == (given.title, given.text, given.metadata, None)


def test_a_page_token_resumes_after_its_page(engine_client: Client, corpus: str) -> None:
    first = next(iter(engine_client.list_documents(corpus, page_size=4)))
    rest = listed_ids(engine_client, corpus, page_size=100, page_token=first.next_page_token)
    assert rest == [sorted(IDS)[4:]]
    # An empty filter lists every document, as no filter does: the same listing, so the token continues it.
    assert listed_ids(engine_client, corpus, page_size=100, page_token=first.next_page_token, filter={}) == rest


def test_the_order_holds_while_documents_are_written(engine_client: Client, corpus: str) -> None:
    """A document present during the whole walk is listed exactly once: writes before the position
    are not seen, writes after it are."""
    ordered = sorted(IDS)
    walk = engine_client.list_documents(corpus, page_size=6)
    seen = [document.id for document in next(walk).documents]
    assert seen == ordered[:6]
    engine_client.upsert(corpus, [Document(id="A-before", text="new, sorts before the position"),
                                  Document(id="zz-after", text="new, sorts after the position"),
                                  Document(id=ordered[1], text="replaced behind the position")], batch_size=BATCH)
    engine_client.delete(corpus, [ordered[10]])
    for page in walk:
        seen += [document.id for document in page.documents]
    assert seen == [*ordered[:6], *sorted([*ordered[6:10], *ordered[11:], "zz-after"])]


def test_a_filter_lists_matching_documents_and_vectors_come_when_asked(engine_client: Client, corpus: str) -> None:
    wanted = {"year": {"$gte": 2022}, "nested.even": True}
    matching = sorted(d.id for d in CORPUS if d.metadata["year"] >= 2022 and d.metadata["nested"]["even"])
    assert [i for page in listed_ids(engine_client, corpus, filter=wanted, page_size=2) for i in page] == matching
    page = next(iter(engine_client.list_documents(corpus, filter=wanted, include_vectors=True, page_size=3)))
    stored, _ = engine_client.get(corpus, [document.id for document in page.documents], include_vectors=True)
    info = engine_client.info()
    for listed, got in zip(page.documents, stored, strict=True):
        assert len(listed.vector) == info.dimension and listed.vector == got.vector


def test_page_tokens_and_sizes_are_checked(engine_client: Client, corpus: str) -> None:
    token = next(iter(engine_client.list_documents(corpus, page_size=2))).next_page_token
    for options, field, words in [
        ({"page_token": "not a token"}, "page_token", "not a token this server made"),
        ({"page_token": token, "filter": {"year": 2016}}, "page_token", "another listing"),
        ({"filter": {"year": {"$gt": [1]}}}, "filter.year.$gt", "$gt"),
    ]:
        with pytest.raises(IrgateError) as raised:
            next(iter(engine_client.list_documents(corpus, **options)))
        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT and words in raised.value.message
        assert [violation.field for violation in raised.value.field_violations] == [field]
    other = f"other-{uuid.uuid4().hex[:8]}"
    engine_client.create_collection(other)
    try:
        with pytest.raises(IrgateError) as raised:
            next(iter(engine_client.list_documents(other, page_token=token)))
        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT and "another listing" in raised.value.message
    finally:
        engine_client.delete_collection(other)
    with pytest.raises(IrgateError) as raised:
        next(iter(engine_client.list_documents("no-such-collection")))
    assert raised.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(IrgateError) as raised:
        next(iter(engine_client.list_documents(corpus, page_size=0)))
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT and "page_size" in raised.value.message


def test_page_size_defaults_to_100_and_is_capped_at_1000(server: LocalServer, client: Client) -> None:
    name = f"big-{uuid.uuid4().hex[:8]}"
    client.create_collection(name)
    vectors = np.random.default_rng(0).standard_normal((1005, client.info().dimension)).tolist()
    client.upsert(name, [Document(id=f"v{i:04d}", vector=vector) for i, vector in enumerate(vectors)], batch_size=BATCH)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.CollectionsStub(channel)
            default = stub.ListDocuments(pb.ListDocumentsRequest(collection=name), timeout=60)
            capped = stub.ListDocuments(pb.ListDocumentsRequest(collection=name, page_size=5000), timeout=60)
        assert (len(default.documents), len(capped.documents)) == (100, 1000)
        assert capped.next_page_token
    finally:
        client.delete_collection(name)


def test_collections_come_in_pages_by_name(server: LocalServer, client: Client) -> None:
    prefix = f"pages-{uuid.uuid4().hex[:8]}"
    names = [f"{prefix}-{letter}" for letter in "cab"]
    for name in names:
        client.create_collection(name)
    try:
        everything = client.list_collections()
        assert [info.name for info in client.list_collections(page_size=1)] == [info.name for info in everything]
        assert sorted(names) == [info.name for info in everything if info.name.startswith(prefix)]
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.CollectionsStub(channel)
            first = stub.ListCollections(pb.ListCollectionsRequest(page_size=2), timeout=30)
            assert len(first.collections) == 2 and first.next_page_token
            following = stub.ListCollections(pb.ListCollectionsRequest(page_size=1000, page_token=first.next_page_token))
            assert [c.name for c in [*first.collections, *following.collections]] == [i.name for i in everything]
            assert not following.next_page_token
            with pytest.raises(grpc.RpcError) as raised:
                stub.ListCollections(pb.ListCollectionsRequest(page_size=1, page_token="AAAA"), timeout=30)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        for name in names:
            client.delete_collection(name)


def test_creation_time_is_a_timestamp_and_the_float_stays(server: LocalServer, client: Client) -> None:
    name = f"timed-{uuid.uuid4().hex[:8]}"
    before = datetime.now(timezone.utc)
    info = client.create_collection(name)
    try:
        described = client.describe_collection(name)
        assert described.create_time is not None and described.create_time.tzinfo is not None
        assert abs((described.create_time - before).total_seconds()) < 60
        assert abs(described.create_time.timestamp() - described.created_at) < 1e-5
        assert info.create_time == described.create_time
        shown = json.loads(irgate("collection", "describe", name, "--json", "--server", server.address).stdout)
        assert datetime.fromisoformat(shown["create_time"]) == described.create_time
    finally:
        client.delete_collection(name)


# ---------------------------------------------------------------------------
# export and import
# ---------------------------------------------------------------------------


def irgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "irgate", *args], capture_output=True, text=True, timeout=600, check=True)


def everything(client: Client, collection: str) -> list[Document]:
    return [document for page in client.list_documents(collection, include_vectors=True) for document in page.documents]


def search_results(client: Client, collection: str) -> list[list[tuple[str, float]]]:
    return [[(hit.id, hit.score) for hit in client.search(collection, query, k=8)] for query in QUERIES]


def assert_same_collection(source: Client, copy: Client, collection: str, vectors_tolerance: float) -> None:
    original, copied = everything(source, collection), everything(copy, collection)
    assert [(d.id, d.title, d.text, d.metadata) for d in copied] == [(d.id, d.title, d.text, d.metadata) for d in original]
    for a, b in zip(original, copied, strict=True):
        np.testing.assert_allclose(b.vector, a.vector, atol=vectors_tolerance)
    for expected, got in zip(search_results(source, collection), search_results(copy, collection), strict=True):
        assert [document_id for document_id, _ in got] == [document_id for document_id, _ in expected]
        np.testing.assert_allclose([score for _, score in got], [score for _, score in expected], atol=1e-3)


@pytest.fixture(scope="module")
def second_server(minilm_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with LocalServer(tmp_path_factory.mktemp("second-data"), ["--embedder", f"onnx:{minilm_folder}", *SERVER_ARGS]) as running:
        yield running


def test_an_export_reads_back_into_another_server_and_into_milvus(
    server: LocalServer, second_server: LocalServer, milvus_server: LocalServer, client: Client, tmp_path: Path
) -> None:
    name = f"moved-{uuid.uuid4().hex[:8]}"
    # Full precision everywhere: the engines quantise f16 differently, which could swap near-equal scores.
    client.create_collection(name, precision="f32")
    client.upsert(name, CORPUS, batch_size=BATCH)
    second, in_milvus = Client(second_server.address, timeout=120), Client(milvus_server.address, timeout=120)
    second.create_collection(name, precision="f32")
    in_milvus.create_collection(name, precision="f32")
    try:
        # Without vectors: the second local server embeds the texts again with the same model.
        plain = tmp_path / "corpus.jsonl"
        exported = irgate("collection", "export", name, str(plain), "--page-size", "7", "--server", server.address)
        assert f"exported {len(CORPUS)} documents" in exported.stderr
        rows = [json.loads(line) for line in plain.read_text(encoding="utf-8").splitlines()]
        assert [row["_id"] for row in rows] == sorted(IDS) and "vector" not in rows[0]
        assert rows[0].keys() == {"_id", "title", "text", "metadata"}
        imported = irgate("index", name, str(plain), "--batch-size", str(BATCH), "--server", second_server.address)
        assert f"upserted {len(CORPUS)}" in imported.stderr
        # With vectors, gzipped: Milvus stores them as they are, nothing is embedded.
        with_vectors = tmp_path / "corpus.jsonl.gz"
        irgate("collection", "export", name, str(with_vectors), "--vectors", "--server", server.address)
        with gzip.open(with_vectors, "rt", encoding="utf-8") as lines:
            assert len(json.loads(next(lines))["vector"]) == client.info().dimension
        imported = irgate("index", name, str(with_vectors), "--batch-size", str(BATCH), "--server", milvus_server.address)
        assert f"upserted {len(CORPUS)}" in imported.stderr and "0 tokens embedded" in imported.stderr
        assert_same_collection(client, second, name, vectors_tolerance=1e-4)
        assert_same_collection(client, in_milvus, name, vectors_tolerance=1e-6)
    finally:
        for holder in (client, second, in_milvus):
            holder.delete_collection(name)
        second.close()
        in_milvus.close()


def test_a_raw_filter_struct_with_a_token_of_the_same_filter_continues(server: LocalServer, client: Client) -> None:
    """The token binds the filter's content, not the bytes of the request: the same filter continues."""
    name = f"filtered-{uuid.uuid4().hex[:8]}"
    client.create_collection(name)
    client.upsert(name, CORPUS, batch_size=BATCH)
    try:
        condition = struct_pb2.Struct()
        condition.update({"year": {"$lt": 2020}, "nested.even": False})
        reordered = struct_pb2.Struct()
        reordered.update({"nested.even": False, "year": {"$lt": 2020}})
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.CollectionsStub(channel)
            first = stub.ListDocuments(pb.ListDocumentsRequest(collection=name, page_size=1, filter=condition), timeout=30)
            rest = stub.ListDocuments(pb.ListDocumentsRequest(collection=name, page_size=100, filter=reordered,
                                                              page_token=first.next_page_token), timeout=30)
        matching = sorted(d.id for d in CORPUS if d.metadata["year"] < 2020 and not d.metadata["nested"]["even"])
        assert [d.id for d in [*first.documents, *rest.documents]] == matching
    finally:
        client.delete_collection(name)


def test_the_async_client_pages_the_same_way(server: LocalServer, client: Client) -> None:
    name = f"async-{uuid.uuid4().hex[:8]}"
    client.create_collection(name)
    client.upsert(name, CORPUS, batch_size=BATCH)

    async def walk() -> tuple[list[list[str]], list[str], list]:
        async with AsyncClient(server.address, timeout=120) as connected:
            pages = [[document.id for document in page.documents]
                     async for page in connected.list_documents(name, page_size=10)]
            collections = [info.name for info in await connected.list_collections(page_size=1)]
            results = await connected.search_batch([SearchQuery(name, "title 7", k=1), SearchQuery("nowhere", "x")])
            return pages, collections, results

    try:
        pages, collections, (found, missing) = asyncio.run(walk())
    finally:
        client.delete_collection(name)
    assert pages == [sorted(IDS)[:10], sorted(IDS)[10:20], sorted(IDS)[20:]]
    assert name in collections
    assert [hit.id for hit in found] == [CORPUS[7].id]
    assert isinstance(missing, IrgateError) and missing.code == grpc.StatusCode.NOT_FOUND
