"""Open collections and file descriptors: the local store keeps only its most recently used
collections open (each holds 3 descriptors), so a server under a low open-file limit serves many
more collections than it could hold open; running out anyway answers RESOURCE_EXHAUSTED."""

from __future__ import annotations

import os
import resource
import threading
from pathlib import Path

import grpc
import pytest

from irgate.errors import DataLoss, NotFound, ResourceExhausted
from irgate.index.collection import FILES_PER_COLLECTION
from irgate.domain import documents as domain
from irgate.index.store import CollectionStore
from irgate.local_server import LocalServer
from irgate_client import Client, Document, IrgateError
from support import DIM, MODEL, unit_vectors

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors through /proc")

def collections_holding_files(root: Path, pid: int | str = "self") -> set[str]:
    """The collections under `root` whose files process `pid` holds open now."""
    held = set()
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = Path(os.readlink(entry))
        except OSError:  # closed while we looked
            continue
        if target.parent.parent == root:
            held.add(target.parent.name)
    return held


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "collections"


def test_only_the_most_recently_used_collections_stay_open(root: Path):
    store = CollectionStore(root, DIM, MODEL, max_open=3)
    vectors = {f"c{i}": unit_vectors(5, seed=i) for i in range(10)}
    for name, own in vectors.items():
        store.create(name)
        store.get(name).upsert([domain.Document(id=f"{name}-{j}") for j in range(5)], own)
        assert len(collections_holding_files(root)) <= 3
    assert collections_holding_files(root) == {"c7", "c8", "c9"}

    # Listing and counting open nothing: closed collections keep their counts.
    assert [(info.name, info.documents) for info in store.list()] == [(name, 5) for name in sorted(vectors)]
    assert store.get("c0").count() == 5
    assert collections_holding_files(root) == {"c7", "c8", "c9"}

    # Every collection reopens on use with all its documents; the least recently used make room.
    for name, own in vectors.items():
        assert [store.get(name).search(vector, k=1)[0].id for vector in own] == [f"{name}-{j}" for j in range(5)]
    store.get("c0").delete(["c0-4"])
    assert collections_holding_files(root) == {"c8", "c9", "c0"}
    store.close()
    assert collections_holding_files(root) == set()

    reopened = CollectionStore(root, DIM, MODEL, max_open=3)
    assert len(collections_holding_files(root)) == 3
    assert {info.name: info.documents for info in reopened.list()} == {name: 4 if name == "c0" else 5 for name in vectors}
    for name, own in vectors.items():
        found = [hit.id for hit in reopened.get(name).search(own[0], k=5)]
        assert sorted(found) == [f"{name}-{j}" for j in range(4 if name == "c0" else 5)]
    reopened.close()


def test_a_collection_closed_to_make_room_loses_no_write_even_in_a_crash(root: Path):
    """Closing a collection to make room snapshots it; what was written after that is in its
    changes log, which the next open replays."""
    store = CollectionStore(root, DIM, MODEL, max_open=1)
    for name in ("first", "second"):
        store.create(name)
    first, second = store.get("first"), store.get("second")
    first.upsert([domain.Document(id="early", text="before closing")], unit_vectors(1, seed=1))
    second.upsert([domain.Document(id="other")], unit_vectors(1, seed=2))  # closes "first"
    assert (root / "first" / "index.usearch").exists()
    first.upsert([domain.Document(id="late", text="after reopening")], unit_vectors(1, seed=3))  # closes "second"
    # A crash: the process ends without closing anything.
    store._owner.close()
    crashed = CollectionStore(root, DIM, MODEL, max_open=1)
    records = crashed.get("first").get(["early", "late"])
    assert [(record.id, record.text) for record in records] == [("early", "before closing"), ("late", "after reopening")]
    assert crashed.get("second").count() == 1
    crashed.close()


def test_collections_in_use_are_never_closed_under_their_calls(root: Path):
    """Six threads write and search six collections while only two may stay open: the store closes
    only collections no call is using, so every call completes and every write is found."""
    store = CollectionStore(root, DIM, MODEL, max_open=2)
    names = [f"busy{i}" for i in range(6)]
    for name in names:
        store.create(name)
    errors: list[BaseException] = []

    def work(name: str, seed: int) -> None:
        try:
            collection = store.get(name)
            vectors = unit_vectors(200, seed=seed)
            for start in range(0, 200, 20):
                collection.upsert([domain.Document(id=f"{name}-{i}") for i in range(start, start + 20)], vectors[start : start + 20])
                for i in range(start, start + 20, 5):
                    assert collection.search(vectors[i], k=1)[0].id == f"{name}-{i}"
                assert collection.count() == start + 20
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(name, seed)) for seed, name in enumerate(names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a worker did not finish within 120 s"
    assert errors == []
    # Once the calls are over, the store is back within its limit.
    assert len(collections_holding_files(root)) <= 2
    assert {info.name: info.documents for info in store.list()} == dict.fromkeys(names, 200)
    store.close()


def test_a_deleted_collection_refuses_calls_whether_open_or_closed(root: Path):
    store = CollectionStore(root, DIM, MODEL, max_open=1)
    for name in ("kept", "gone"):
        store.create(name)
    held = store.get("gone")
    held.upsert([domain.Document(id="d")], unit_vectors(1, seed=0))
    store.get("kept").upsert([domain.Document(id="d")], unit_vectors(1, seed=1))  # closes "gone"
    store.delete("gone")
    with pytest.raises(NotFound, match="'gone' does not exist"):
        held.search(unit_vectors(1, seed=0)[0], k=1)
    store.create("gone")  # the same name again is a new, empty collection
    assert store.get("gone").count() == 0
    with pytest.raises(NotFound, match="'gone' does not exist"):
        held.get(["d"])
    assert store.get("gone").search(unit_vectors(1, seed=0)[0], k=1) == []
    store.close()


def test_a_collection_damaged_while_closed_answers_data_loss_and_the_others_serve(root: Path):
    store = CollectionStore(root, DIM, MODEL, max_open=1)
    for name in ("fine", "broken"):
        store.create(name)
        store.get(name).upsert([domain.Document(id="d")], unit_vectors(1, seed=0))
    store.get("fine").get(["d"])  # closes "broken"
    database = root / "broken" / "documents.sqlite"
    database.write_bytes(b"\xa5" * 4096 + database.read_bytes()[4096:])
    with pytest.raises(DataLoss, match="collection 'broken' is unavailable: its database file .* is damaged"):
        store.get("broken").get(["d"])
    assert [info.name for info in store.list()] == ["fine"] and "broken" in store.unavailable
    assert store.get("fine").get(["d"])[0].id == "d"
    store.delete("broken")  # how a damaged collection is dropped
    store.close()


def test_running_out_of_descriptors_is_resource_exhausted_and_retrying_later_works(root: Path):
    store = CollectionStore(root, DIM, MODEL, max_open=50)
    names = [f"c{i}" for i in range(20)]
    for name in names:
        store.create(name)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    limit = in_use + 4 * FILES_PER_COLLECTION + 1
    opened: list[str] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        with pytest.raises(ResourceExhausted) as refused:
            for name in names:
                store.get(name).upsert([domain.Document(id="d")], unit_vectors(1, seed=len(opened)))
                opened.append(name)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert 3 <= len(opened) < len(names)
    message = str(refused.value)
    assert f"ran out of file descriptors while opening collection '{names[len(opened)]}'" in message
    assert f"its limit is {limit} open files" in message and "--max-open-collections" in message
    # Nothing was written to the refused collection, and with descriptors to spare the same call succeeds.
    refused_name = names[len(opened)]
    assert store.get(refused_name).count() == 0
    store.get(refused_name).upsert([domain.Document(id="d")], unit_vectors(1, seed=99))
    assert store.get(refused_name).count() == 1
    assert all(store.get(name).get(["d"])[0].id == "d" for name in opened)
    store.close()


# ---------------------------------------------------------------------------
# a real server under a low open-file limit
# ---------------------------------------------------------------------------

OPEN_FILES = 128  # about 20 of them are the server's own at rest
COLLECTIONS = 150  # 450 descriptors if all were open
MAX_OPEN = 8


def serve(data_dir: Path, minilm_folder: Path, max_open: int) -> LocalServer:
    return LocalServer(
        data_dir,
        ["--embedder", f"onnx:{minilm_folder}", "--judge", "none", "--max-open-collections", str(max_open)],
        open_files=OPEN_FILES,
    )


def names_of(count: int) -> list[str]:
    return [f"c{i:03d}" for i in range(count)]


def note(name: str, letter: str) -> Document:
    return Document(id=f"{name}-{letter}", text=f"note {letter} of collection {name}")


def test_a_server_under_a_low_limit_serves_more_collections_than_it_can_hold_open(minilm_folder: Path, tmp_path: Path):
    names = names_of(COLLECTIONS)
    pruned = names[::3]  # their note b is deleted
    root = tmp_path / "collections"
    with serve(tmp_path, minilm_folder, MAX_OPEN) as first, Client(first.address, timeout=60) as client:
        assert any(f"open files: soft limit {OPEN_FILES}" in line for line in first.output)
        for name in names:
            client.create_collection(name)
        for name in names:  # each write opens its collection and closes the least recently used
            client.upsert(name, [note(name, "a"), note(name, "b")])
        assert len(collections_holding_files(root, first.pid)) <= MAX_OPEN
        for name in reversed(pruned):  # the other way round: each of these was closed and opens again
            assert client.delete(name, [f"{name}-b"]) == (1, 0)
        for name in names[::15]:
            assert client.search(name, f"note a of collection {name}", k=1)[0].id == f"{name}-a"
        assert len(collections_holding_files(root, first.pid)) <= MAX_OPEN
        listed = {info.name: info.documents for info in client.list_collections()}
        first.kill()  # a crash: only what was acknowledged counts

    expected = {name: 1 if name in pruned else 2 for name in names}
    assert listed == expected
    with serve(tmp_path, minilm_folder, MAX_OPEN) as second, Client(second.address, timeout=60) as client:
        assert {info.name: info.documents for info in client.list_collections()} == expected
        for name in names:
            found, missing = client.get(name, [f"{name}-a", f"{name}-b"])
            assert missing == ([f"{name}-b"] if name in pruned else [])
            assert [(document.id, document.text) for document in found] == [
                (f"{name}-{letter}", f"note {letter} of collection {name}") for letter in ("a" if name in pruned else "ab")
            ]
        assert len(collections_holding_files(root, second.pid)) <= MAX_OPEN


def test_a_server_out_of_descriptors_answers_resource_exhausted_naming_them(minilm_folder: Path, tmp_path: Path):
    names = names_of(50)  # 150 descriptors if all were open
    with serve(tmp_path, minilm_folder, max_open=100) as running, Client(running.address, timeout=60) as client:
        assert any("--max-open-collections 100 holds up to 300 files open" in line for line in running.output)
        for name in names:
            client.create_collection(name)
        written: list[str] = []
        with pytest.raises(IrgateError) as refused:
            for name in names:
                client.upsert(name, [note(name, "a")])
                written.append(name)
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"ran out of file descriptors while opening collection '{names[len(written)]}'" in refused.value.message
        assert f"its limit is {OPEN_FILES} open files" in refused.value.message
        # The collections already open still serve, and deleting some frees descriptors for a retry.
        assert client.search(written[0], f"note a of collection {written[0]}", k=1)[0].id == f"{written[0]}-a"
        for name in written[:5]:
            client.delete_collection(name)
        retried = names[len(written)]
        client.upsert(retried, [note(retried, "a")])
        assert client.describe_collection(retried).documents == 1
