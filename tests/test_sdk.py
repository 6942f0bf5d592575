"""The Python SDK against a real server: resumable bulk ingest, deadlines, argument checks, health."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from irgate.local_server import LocalServer
from irgate.processes import free_port
from irgate_client import AsyncClient, Client, Document, IrgateError, Query

ABSTRACTS = [
    Document(id=f"abstract-{i}", title=f"Study {i}", text=f"Trial {i} measured outcome {i * 3 % 7} in {i + 10} patients.",
             metadata={"year": 2000 + i})
    for i in range(6)
]


def test_rerunning_an_upsert_skips_unchanged_documents(client: Client) -> None:
    client.create_collection("resume")
    first = client.upsert("resume", ABSTRACTS, batch_size=4)
    assert (first.upserted, first.unchanged, first.documents) == (6, 0, 6) and first.total_tokens > 0

    again = client.upsert("resume", ABSTRACTS, batch_size=4)
    assert (again.upserted, again.replaced, again.unchanged, again.total_tokens) == (0, 0, 6, 0)

    edited = list(ABSTRACTS)
    edited[1] = Document(id="abstract-1", title="Study 1", text="A corrected abstract.", metadata={"year": 2001})
    edited[2] = Document(id="abstract-2", title="Study 2", text=ABSTRACTS[2].text, metadata={"year": 1999})
    result = client.upsert("resume", edited)
    assert (result.upserted, result.replaced, result.unchanged) == (2, 2, 4)
    assert client.get("resume", ["abstract-1"])[0][0].text == "A corrected abstract."
    assert client.search("resume", "A corrected abstract.", k=1)[0].id == "abstract-1"


def test_the_last_of_a_repeated_id_decides_whether_it_is_unchanged(client: Client) -> None:
    client.create_collection("repeats")
    client.upsert("repeats", [Document(id="a", text="Original text.")])
    result = client.upsert("repeats", [Document(id="a", text="A draft."), Document(id="a", text="Original text.")])
    assert (result.upserted, result.unchanged) == (0, 1)
    assert client.get("repeats", ["a"])[0][0].text == "Original text."


def test_a_client_vector_is_always_written(client: Client) -> None:
    client.create_collection("vectors")
    vector = client.embed(["Glaciers carve valleys."])[0].values
    client.upsert("vectors", [Document(id="g", text="Glaciers carve valleys.", vector=vector)])
    result = client.upsert("vectors", [Document(id="g", text="Glaciers carve valleys.", vector=[-v for v in vector])])
    assert (result.upserted, result.unchanged) == (1, 0)


def test_documents_without_title_and_text_are_embedded_as_empty_strings(client: Client) -> None:
    """Real BEIR corpora contain them; BEIR and MTEB embed them as ""."""
    client.create_collection("blanks")
    result = client.upsert("blanks", [Document(id="blank"), Document(id="full", text="Volcanoes erupt lava.")])
    assert (result.upserted, result.documents) == (2, 2)
    blank = client.get("blanks", ["blank"], include_vectors=True)[0][0]
    assert (blank.title, blank.text) == ("", "")
    assert len(blank.vector) == 384
    assert {hit.id for hit in client.search("blanks", "lava", k=2)} == {"blank", "full"}


def test_bulk_upsert_has_no_deadline_unless_given_one(server: LocalServer) -> None:
    documents = [Document(id=f"note-{i}", text=f"Field note {i}: the sample weighed {i} grams.") for i in range(200)]
    # A client default of 50 ms would stop any call that embeds 200 texts; upsert does not use it.
    with Client(server.address, timeout=0.05) as hurried:
        hurried.create_collection("deadlines", timeout=30)
        assert hurried.upsert("deadlines", documents[:100], batch_size=8).upserted == 100
        with pytest.raises(IrgateError) as raised:
            hurried.upsert("deadlines", documents[100:], batch_size=8, timeout=0.05)
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "timeout=SECONDS" in raised.value.message and "documents sent before the failure" in raised.value.message


def test_arguments_are_checked_before_anything_is_sent() -> None:
    # Nothing listens there: a check that let the call through would answer UNAVAILABLE instead.
    with Client(f"127.0.0.1:{free_port()}") as client:
        cases = {
            "k is -1": lambda: client.search("c", "q", k=-1),
            "k is 0": lambda: client.search("c", "q", k=0),
            "k is 1099511627776": lambda: client.search("c", "q", k=2**40),
            "rerank is -2": lambda: client.search("c", "q", rerank=-2),
            "k is '5'": lambda: client.search("c", "q", k="5"),
            "filter is a list": lambda: client.search("c", "q", filter=["a"]),
            "ids is a str": lambda: client.get("c", "doc-1"),
            "ids[1] is a int": lambda: client.delete("c", ["a", 2]),
            "batch_size is 0": lambda: client.upsert("c", [Document(id="a", text="b")], batch_size=0),
            "texts must be a non-empty list": lambda: client.embed([]),
            "texts[1] is a int": lambda: client.embed(["a", 3]),
            "timeout is 0": lambda: client.info(timeout=0),
            "precision 'f8'": lambda: client.create_collection("c", precision="f8"),
            "name is a int": lambda: client.describe_collection(7),
            "filter.id is 9007199254740993; metadata numbers are doubles": lambda: client.search(
                "c", "q", filter={"id": 2**53 + 1}),
            "filter.ids[1] is -9007199254740992": lambda: client.search("c", "q", filter={"ids": [1, -(2**53)]}),
        }
        for expected, call in cases.items():
            with pytest.raises(IrgateError) as raised:
                call()
            assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT, (expected, raised.value)
            assert expected in raised.value.message, (expected, raised.value.message)
        with pytest.raises(IrgateError) as raised:  # a document of the wrong type ends the stream, named
            client.upsert("c", ["just a string"])
        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT and "document 1 could not be encoded" in str(raised.value)
        with pytest.raises(IrgateError) as raised:  # a Struct would round it to 9007199254740992
            client.upsert("c", [Document(id="big", text="b", metadata={"id": 9007199254740993})])
        assert "metadata of document 'big'.id is 9007199254740993" in raised.value.message
        assert "send a larger number as a string" in raised.value.message


def test_create_collection_with_exist_ok_returns_the_existing_one(client: Client) -> None:
    created = client.create_collection("again", precision="f32")
    assert client.create_collection("again", exist_ok=True) == created
    with pytest.raises(IrgateError) as raised:
        client.create_collection("again")
    assert raised.value.code == grpc.StatusCode.ALREADY_EXISTS


def test_health_of_the_server_and_of_each_service(client: Client) -> None:
    assert client.health() == "SERVING"
    assert client.health("irgate.v1.Search") == "SERVING"
    assert client.health("irgate.v1.Judge") == "NOT_SERVING"  # this server runs without a judge
    with pytest.raises(IrgateError) as raised:
        client.health("Search")
    assert raised.value.code == grpc.StatusCode.NOT_FOUND and "'irgate.v1.Search'" in raised.value.message


def test_an_unreachable_server_is_unavailable() -> None:
    with Client(f"127.0.0.1:{free_port()}", timeout=5) as client, pytest.raises(IrgateError) as raised:
        client.health()
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE


def test_async_client_has_the_same_methods(server: LocalServer) -> None:
    async def run() -> None:
        async with AsyncClient(server.address, timeout=30) as client:
            assert await client.health() == "SERVING"
            await client.create_collection("async-sdk", exist_ok=True)
            info = await client.create_collection("async-sdk", exist_ok=True)
            assert info.name == "async-sdk"
            first = await client.upsert("async-sdk", ABSTRACTS[:2])
            again = await client.upsert("async-sdk", ABSTRACTS[:2])
            assert (first.upserted, again.unchanged) == (2, 2)
            found, missing = await client.get("async-sdk", ["abstract-0", "nope"])
            assert [document.id for document in found] == ["abstract-0"] and missing == ["nope"]
            with pytest.raises(IrgateError) as raised:
                await client.search("async-sdk", "q", k=-1)
            assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert len((await client.embed([Query("trial outcome", instruction="recent")]))[0].values) == 384

    asyncio.run(run())


def test_metadata_numbers_come_back_as_they_were_sent(client: Client) -> None:
    metadata = {"year": 2021, "below": -7, "share": 0.25, "largest": 2**53 - 1, "pages": [3, 9.5], "venue": {"volume": 12}}
    client.create_collection("numbers")
    client.upsert("numbers", [Document(id="paper", text="A paper.", metadata=metadata)])
    [stored], _ = client.get("numbers", ["paper"])
    assert stored.metadata == metadata
    assert [type(stored.metadata[key]) for key in ("year", "below", "share", "largest")] == [int, int, float, int]
    assert [type(value) for value in stored.metadata["pages"]] == [int, float] and type(stored.metadata["venue"]["volume"]) is int
    [hit] = client.search("numbers", "paper", k=1, filter={"year": 2021}, include_documents=True)
    assert hit.document is not None and hit.document.metadata == metadata


def test_the_server_refuses_numbers_a_double_cannot_hold(server: LocalServer) -> None:
    """Past the SDK's check (another client, grpcurl): 9007199254740993 arrives as 9007199254740992.0."""
    from irgate_client.v1 import irgate_pb2 as pb

    document = pb.Document(id="big", text="An id.")
    document.metadata.update({"id": 9007199254740993})
    search = pb.SearchRequest(collection="numbers-raw", query="id", k=1)
    search.filter.update({"id": 9007199254740993})
    with Client(server.address, timeout=30) as client:
        client.create_collection("numbers-raw")
    with grpc.insecure_channel(server.address) as channel:
        upsert = channel.stream_unary("/irgate.v1.Collections/UpsertDocuments",
                                      request_serializer=pb.UpsertDocumentsRequest.SerializeToString,
                                      response_deserializer=pb.UpsertDocumentsResponse.FromString)
        searching = channel.unary_unary("/irgate.v1.Search/Search", request_serializer=pb.SearchRequest.SerializeToString,
                                        response_deserializer=pb.SearchResponse.FromString)
        for call in (lambda: upsert(iter([pb.UpsertDocumentsRequest(collection="numbers-raw", documents=[document])]),
                                    timeout=30),
                     lambda: searching(search, timeout=30)):
            with pytest.raises(grpc.RpcError) as raised:
                call()
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "is 9007199254740992; numbers are doubles, exact within +-9007199254740991" in raised.value.details()


def test_client_without_a_target_uses_irgate_server(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IRGATE_SERVER", server.address)
    with Client(timeout=30) as client:
        assert client.health() == "SERVING"

    async def run() -> str:
        async with AsyncClient(timeout=30) as connected:
            return await connected.health()

    assert asyncio.run(run()) == "SERVING"
