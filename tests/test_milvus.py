"""Milvus as the index: stateless gateways sharing one real `milvus-lite server` process.

The API tests of collections and search below are test_server's own (imported), run here through a
client that balances over two gateways sharing Milvus, so consecutive calls of one test land on
different gateways: what one acknowledges, the other must serve at once (consistency level Strong).
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
from test_server import (  # noqa: F401 - collected here too, against the Milvus-backed gateways
    PAPERS,
    papers,
    test_collection_lifecycle,
    test_collection_names_must_be_plain_identifiers,
    test_get_and_delete_documents,
    test_metadata_filter_keeps_matching_documents_only,
    test_search_checks_its_arguments,
    test_search_finds_the_relevant_document,
    test_search_without_documents_returns_ids_and_scores_only,
    test_upsert_accepts_client_vectors,
    test_upsert_rejects_bad_documents,
    test_upsert_replaces_existing_ids,
    test_upsert_stream_reports_what_was_committed_before_an_error,
)

from irgate.errors import InvalidArgument, NotFound, ResourceExhausted, StartupError, Unavailable
from irgate.domain.documents import Document
from irgate.local_server import LocalServer
from irgate_client import Client, IrgateError

pytest.importorskip("pymilvus", reason="the [milvus] extra is not installed (make test installs it)")

from pymilvus.client.types import LoadState  # noqa: E402
from pymilvus.exceptions import MilvusException  # noqa: E402

from irgate.index.milvus import MAX_TEXT_BYTES, MilvusIndex, irgate_name, milvus_name, typed_error  # noqa: E402

GATEWAY_ARGS = ["--judge", "none", "--max-batch-size", "8", "--max-k", "100"]


def gateway(milvus, minilm_folder: Path, data_dir: Path) -> LocalServer:
    return LocalServer(data_dir, ["--embedder", f"onnx:{minilm_folder}", "--index", milvus.index_setting, *GATEWAY_ARGS])


@pytest.fixture(scope="module")
def gateways(milvus, minilm_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    with gateway(milvus, minilm_folder, tmp_path_factory.mktemp("gateway-a")) as first, \
            gateway(milvus, minilm_folder, tmp_path_factory.mktemp("gateway-b")) as second:
        yield first, second


@pytest.fixture(scope="module")
def server(gateways: tuple[LocalServer, LocalServer]) -> LocalServer:
    return gateways[0]


@pytest.fixture
def client(gateways: tuple[LocalServer, LocalServer]):
    with Client([gateway.address for gateway in gateways], timeout=60) as balanced:
        yield balanced


@pytest.fixture
def index(milvus):
    opened = MilvusIndex(milvus.address, 4, "test-embedder")
    yield opened
    for info in opened.list():
        opened.delete(info.name)
    opened.close()


def test_writes_through_one_gateway_are_served_by_the_other(gateways: tuple[LocalServer, LocalServer]) -> None:
    name = f"shared-{uuid.uuid4().hex[:8]}"
    with Client(gateways[0].address) as writer, Client(gateways[1].address) as reader:
        writer.create_collection(name)
        assert name in [info.name for info in reader.list_collections()]
        for round_ in range(3):  # each write is searched for at once on the other gateway
            writer.upsert(name, [PAPERS[round_]])
            assert reader.search(name, PAPERS[round_].text, k=1)[0].id == PAPERS[round_].id
            assert reader.describe_collection(name).documents == round_ + 1
        writer.delete(name, ["rain"])
        assert "rain" not in [hit.id for hit in reader.search(name, "what causes rain", k=3)]
        reader.delete_collection(name)
        assert name not in [info.name for info in writer.list_collections()]


def test_losing_a_gateway_fails_no_call_of_a_client_given_both(
    gateways: tuple[LocalServer, LocalServer], milvus, minilm_folder: Path, tmp_path: Path
) -> None:
    name = f"failover-{uuid.uuid4().hex[:8]}"
    with Client(gateways[0].address) as setup:
        setup.create_collection(name)
        setup.upsert(name, PAPERS)
    victim = gateway(milvus, minilm_folder, tmp_path).start()
    searchers = 4
    failures: list[str] = []
    answered = [0] * searchers
    stop = threading.Event()

    def search_until_stopped(slot: int, client: Client) -> None:
        while not stop.is_set():
            try:
                assert client.search(name, "what causes rain", k=1)[0].id == "rain"
                answered[slot] += 1
            except IrgateError as error:
                failures.append(f"{error.code.name}: {error.message}")

    try:
        with Client([gateways[0].address, victim.address], timeout=30) as client:
            threads = [threading.Thread(target=search_until_stopped, args=(slot, client)) for slot in range(searchers)]
            for thread in threads:
                thread.start()
            time.sleep(3)
            before_kill = sum(answered)
            victim.kill()
            time.sleep(4)
            stop.set()
            for thread in threads:
                thread.join()
    finally:
        victim.stop()
        with Client(gateways[0].address) as cleanup:
            cleanup.delete_collection(name)
    print(f"searches: {before_kill} before the kill, {sum(answered) - before_kill} after; failed: {failures}")
    assert before_kill > 0 and sum(answered) > before_kill  # searches went on after the kill
    # Only calls in flight at the kill may fail (one per searcher); gRPC's retry usually saves those too.
    assert len(failures) <= searchers, failures


def test_names_map_to_milvus_and_back() -> None:
    for name in ("books", "a_h", "a-h", "a__b", "a-_-b", "9lives", "x" * 64):
        stored = milvus_name(name)
        assert stored.replace("_", "").isalnum() and irgate_name(stored) == name
    assert len({milvus_name(name) for name in ("a_h", "a-h", "a__h", "a-_h")}) == 4
    assert irgate_name("other_app") is None and irgate_name("irgate_bad_x") is None


def test_a_collection_is_served_at_once_by_every_index_on_the_server(index: MilvusIndex, milvus) -> None:
    index.create("notes", precision="i8")
    other = MilvusIndex(milvus.address, 4, "test-embedder")
    try:
        index.get("notes").upsert([Document(id="n1", text="one")], np.eye(4, dtype=np.float32)[:1])
        seen = other.get("notes")
        assert (seen.info().precision, seen.count()) == ("i8", 1)
        assert seen.search(np.eye(4, dtype=np.float32)[0], k=1)[0].id == "n1"
    finally:
        other.close()


def test_null_is_a_value_and_a_missing_key_is_not(index: MilvusIndex) -> None:
    index.create("notes")
    notes = index.get("notes")
    vectors = np.eye(4, dtype=np.float32)[:3]
    notes.upsert([Document(id="null", metadata={"v": None}), Document(id="missing", metadata={}),
                  Document(id="zero", metadata={"v": 0})], vectors)
    assert [hit.id for hit in notes.search(vectors[0], k=3, filter={"v": None})] == ["null"]
    assert [hit.id for hit in notes.search(vectors[0], k=3, filter={"v": False})] == []
    assert [hit.id for hit in notes.search(vectors[0], k=3, filter={"v": 0.0})] == ["zero"]


def test_text_longer_than_a_milvus_column_is_refused(index: MilvusIndex) -> None:
    index.create("notes")
    long = "é" * (MAX_TEXT_BYTES // 2 + 1)  # fewer characters than the limit, more bytes
    with pytest.raises(InvalidArgument, match=f"text of document 'long' has {MAX_TEXT_BYTES + 2} bytes in UTF-8"):
        index.get("notes").upsert([Document(id="long", text=long)], np.eye(4, dtype=np.float32)[:1])
    assert index.get("notes").count() == 0


def test_a_gateway_refuses_to_start_without_its_milvus(minilm_folder: Path, tmp_path: Path) -> None:
    from irgate.processes import free_port

    with pytest.raises(StartupError, match=r"cannot reach Milvus at 127\.0\.0\.1:\d+"):  # IRGATE_INDEX as --index
        LocalServer(tmp_path, ["--embedder", f"onnx:{minilm_folder}", "--judge", "none"],
                    env={"IRGATE_INDEX": f"milvus://127.0.0.1:{free_port()}"}).start()


def test_a_malformed_index_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StartupError) as refused:
        LocalServer(tmp_path, ["--judge", "none", "--index", "milvus://nowhere"]).start()
    assert "--index (env IRGATE_INDEX) is 'milvus://nowhere'; use local or milvus://HOST:PORT" in " ".join(
        str(refused.value).split())


def test_the_sdk_balances_over_ip_addresses_only() -> None:
    from irgate_client.client import channel_target

    target, options = channel_target(["127.0.0.1:50051", "127.0.0.1:50052"])
    assert target == "ipv4:127.0.0.1:50051,127.0.0.1:50052" and ("grpc.lb_policy_name", "round_robin") in options
    assert channel_target(["[::1]:1", "[::1]:2"])[0] == "ipv6:[::1]:1,[::1]:2"
    for bad in (["localhost:50051", "127.0.0.1:1"], ["127.0.0.1:1", "[::1]:2"], []):
        with pytest.raises(IrgateError) as raised:
            Client(bad)
        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_released_collection_is_loaded_again_by_the_call_that_finds_it_so(index: MilvusIndex) -> None:
    index.create("notes")
    vectors = np.eye(4, dtype=np.float32)
    index.get("notes").upsert([Document(id="n0")], vectors[:1])
    # A restarted milvus-lite holds every collection released, as here; each call must load it again.
    calls = {
        "search": lambda notes: [hit.id for hit in notes.search(vectors[0], k=1)] == ["n0"],
        "get": lambda notes: [record.id for record in notes.get(["n0"])] == ["n0"],
        "upsert": lambda notes: notes.upsert([Document(id="n1")], vectors[1:2]).upserted == 1,
        "delete": lambda notes: notes.delete(["n1"]) == (1, 0),
    }
    for call, answered in calls.items():
        index._client.release_collection(milvus_name("notes"))
        assert answered(index.get("notes")), call
        assert index._client.get_load_state(milvus_name("notes"))["state"] == LoadState.Loaded, call


def test_the_first_health_probe_loads_what_milvus_holds_released(index: MilvusIndex, milvus) -> None:
    index.create("notes")
    index._client.release_collection(milvus_name("notes"))
    probe = MilvusIndex(milvus.address, 4, "test-embedder")  # a gateway starting, or seeing Milvus back
    try:
        assert probe.ready()
        assert index._client.get_load_state(milvus_name("notes"))["state"] == LoadState.Loaded
    finally:
        probe.close()


def test_milvus_failures_answer_a_precise_code_or_unavailable() -> None:
    def typed(code: int, message: str) -> type:
        return type(typed_error(MilvusException(code=code, message=message), "notes", "127.0.0.1:19530"))

    assert typed(100, "collection not found[collection=irgate_notes]") is NotFound
    assert typed(101, "Collection 'irgate_notes' is in state 'released'; call load() before search/get/query") is Unavailable
    assert typed(8, "rate limit exceeded") is ResourceExhausted
    assert typed(1100, "invalid parameter[expected=topk <= 16384]") is InvalidArgument
    for code, message in ((2, "Fail connecting to server"), (1, "Unexpected error"), (503, "channel not available"),
                          (65535, "undefined")):
        assert typed(code, message) is Unavailable, code


def test_a_snapshot_seals_the_writes_into_the_vector_index(index: MilvusIndex) -> None:
    index.create("notes", precision="f32")
    notes = index.get("notes")
    vectors = np.eye(4, dtype=np.float32)
    notes.upsert([Document(id=f"n{i}") for i in range(4)], vectors)
    notes.snapshot()
    described = index._client.describe_index(milvus_name("notes"), "vector")
    assert (described["index_type"], described["indexed_rows"], described["pending_index_rows"]) == ("HNSW", 4, 0)
    assert notes.search(vectors[2], k=1)[0].id == "n2" and notes.count() == 4


def test_the_compose_file_sets_only_real_settings() -> None:
    import dataclasses
    import re

    from irgate.config import Settings

    compose = (Path(__file__).resolve().parent.parent / "deploy" / "docker-compose.yml").read_text()
    variables = set(re.findall(r"\b(IRGATE_[A-Z_]+):", compose))
    assert variables and variables <= {f"IRGATE_{item.name.upper()}" for item in dataclasses.fields(Settings)}
    assert "IRGATE_INDEX: milvus://milvus:19530" in compose
