"""The index layer: every engine (usearch + SQLite in a temporary data directory, and a real
`milvus-lite server` process) gives the same answers to the tests taking `store` or `collection`;
the tests of files, crashes and snapshots are the local engine's own."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from irgate.core.index import Index, IndexedCollection
from irgate.errors import AlreadyExists, DataDirInUse, InvalidArgument, NotFound
from irgate.domain.documents import Document
from irgate.index.collection import Collection, ScoredKey
from irgate.index.store import CollectionStore, validate_collection_name
from support import DIM, MODEL, unit_vectors


def docs(count: int, prefix: str = "doc", **metadata: object) -> list[Document]:
    return [Document(id=f"{prefix}{i}", text=f"text {i}", metadata=dict(metadata)) for i in range(count)]


@pytest.fixture
def local_store(tmp_path: Path):
    store = CollectionStore(tmp_path / "collections", dimension=DIM, model=MODEL)
    yield store
    store.close()


def test_create_list_describe_delete(store: Index):
    before = time.time()
    info = store.create("zeta", precision="f32")
    store.create("alpha")
    assert (info.name, info.documents, info.dimension, info.precision, info.model) == ("zeta", 0, DIM, "f32", MODEL)
    assert before <= info.created_at <= time.time()
    assert [c.name for c in store.list()] == ["alpha", "zeta"]
    assert store.get("alpha").info().precision == "f16"
    with pytest.raises(AlreadyExists, match="'alpha' already exists"):
        store.create("alpha")
    with pytest.raises(InvalidArgument, match="precision 'f64' is not supported; use one of f16, f32, i8"):
        store.create("beta", precision="f64")

    store.delete("alpha")
    assert [c.name for c in store.list()] == ["zeta"]
    with pytest.raises(NotFound, match="collection 'alpha' does not exist"):
        store.get("alpha")
    with pytest.raises(NotFound):
        store.delete("alpha")


def test_deleting_a_collection_removes_its_folder(local_store: CollectionStore, tmp_path: Path):
    local_store.create("alpha")
    local_store.delete("alpha")
    assert not (tmp_path / "collections" / "alpha").exists()


def test_deleted_collection_refuses_calls_through_old_references(store: Index):
    store.create("gone")
    held = store.get("gone")
    store.delete("gone")
    with pytest.raises(NotFound, match="'gone' does not exist"):
        held.search(unit_vectors(1)[0], 1)


def test_upsert_then_search_finds_the_exact_vector_first(collection: IndexedCollection):
    vectors = unit_vectors(50)
    result = collection.upsert(docs(50), vectors)
    assert (result.upserted, result.replaced) == (50, 0)
    assert collection.count() == 50 and collection.info().documents == 50

    hits = collection.search(vectors[7], k=5)
    assert len(hits) == 5
    assert hits[0].id == "doc7"
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)


def test_search_returns_fewer_than_k_when_the_collection_is_small(collection: IndexedCollection):
    assert collection.search(unit_vectors(1)[0], k=10) == []
    collection.upsert(docs(3), unit_vectors(3))
    assert len(collection.search(unit_vectors(1, seed=9)[0], k=10)) == 3


def test_upsert_replaces_a_document_and_its_vector(collection: IndexedCollection):
    vectors = unit_vectors(20)
    collection.upsert(docs(20), vectors)
    replacement = unit_vectors(1, seed=42)
    result = collection.upsert([Document(id="doc3", text="new text")], replacement)
    assert (result.upserted, result.replaced) == (1, 1)
    assert collection.count() == 20
    assert collection.get(["doc3"])[0].text == "new text"
    assert collection.search(replacement[0], k=1) == [ScoredKey(id="doc3", score=pytest.approx(1.0, abs=1e-3))]
    # The old vector no longer leads to doc3 with a perfect score.
    old = {hit.id: hit.score for hit in collection.search(vectors[3], k=20)}
    assert old.get("doc3", 0.0) < 0.99


def test_repeated_id_in_one_call_last_wins(collection: IndexedCollection):
    vectors = unit_vectors(2)
    result = collection.upsert(
        [Document(id="same", text="first"), Document(id="same", text="second")], vectors
    )
    assert (result.upserted, result.replaced) == (1, 0)
    assert collection.count() == 1
    assert collection.get(["same"])[0].text == "second"
    assert collection.search(vectors[1], k=1)[0].score == pytest.approx(1.0, abs=1e-3)


def test_delete_counts_deleted_and_not_found(collection: IndexedCollection):
    vectors = unit_vectors(10)
    collection.upsert(docs(10), vectors)
    assert collection.delete(["doc1", "doc2", "missing", "doc1"]) == (2, 1)
    assert collection.count() == 8
    assert "doc1" not in {hit.id for hit in collection.search(vectors[1], k=10)}
    assert collection.delete(["doc1"]) == (0, 1)


def test_get_in_request_order_and_not_found(collection: IndexedCollection):
    collection.upsert(
        [Document(id="a", text="A", title="Ta", metadata={"n": 1}), Document(id="b", text="B")],
        unit_vectors(2),
    )
    records = collection.get(["b", "a"])
    assert [r.id for r in records] == ["b", "a"]
    assert records[1] == Document(id="a", text="A", title="Ta", metadata={"n": 1})
    assert records[1].vector is None
    with pytest.raises(NotFound, match="document 'nope' does not exist in collection 'books'"):
        collection.get(["a", "nope", "other"])


def test_include_vectors_round_trips_float32(collection: IndexedCollection):
    vectors = unit_vectors(3)
    collection.upsert(docs(3), vectors)
    record = collection.get(["doc2"], include_vectors=True)[0]
    assert record.vector.dtype == np.float32
    np.testing.assert_array_equal(record.vector, vectors[2])


def test_metadata_filter(collection: IndexedCollection):
    vectors = unit_vectors(300)
    documents = [
        Document(id=f"doc{i}", metadata={"lang": "de" if i % 50 == 0 else "en", "year": 2000 + i % 3})
        for i in range(300)
    ]
    collection.upsert(documents, vectors)

    german = collection.search(vectors[1], k=10, filter={"lang": "de"})
    # Only 6 documents match: the search widens until the whole index is covered and returns them all.
    assert sorted(hit.id for hit in german) == sorted(f"doc{i}" for i in range(0, 300, 50))
    both = collection.search(vectors[100], k=3, filter={"lang": "de", "year": 2001})
    assert {hit.id for hit in both} <= {"doc100", "doc250"} and both[0].id == "doc100"
    assert collection.search(vectors[0], k=5, filter={"missing-key": 1}) == []
    assert len(collection.search(vectors[0], k=5, filter={})) == 5


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("books", True),
        ("a", True),
        ("9lives", True),
        ("Mixed_Case-1", True),
        ("x" * 64, True),
        ("", False),
        ("x" * 65, False),
        ("../x", False),
        ("a/b", False),
        ("a b", False),
        ("-leading", False),
        ("_leading", False),
        (".hidden", False),
        ("naïve", False),
    ],
)
def test_collection_name_rule(name: str, valid: bool):
    if valid:
        validate_collection_name(name)
    else:
        with pytest.raises(InvalidArgument, match="1 to 64 characters of letters, digits, '_' and '-'"):
            validate_collection_name(name)


@pytest.mark.parametrize("bad_id", ["", "x" * 257])
def test_document_id_rule(collection: IndexedCollection, bad_id: str):
    with pytest.raises(InvalidArgument, match="ids are 1 to 256 characters"):
        collection.upsert([Document(id=bad_id)], unit_vectors(1))
    with pytest.raises(InvalidArgument, match="ids are 1 to 256 characters"):
        collection.get([bad_id])


def test_any_text_is_a_valid_document_id(collection: IndexedCollection):
    odd = "../../etc/passwd ' \"; DROP TABLE documents; -- ✓"
    collection.upsert([Document(id=odd)], unit_vectors(1))
    assert collection.get([odd])[0].id == odd


def test_wrong_vector_dimension(collection: IndexedCollection):
    wrong_length = f"vector of document 'x' has 12 values; the collection's dimension is {DIM}"
    with pytest.raises(InvalidArgument, match=wrong_length):
        collection.upsert([Document(id="x")], np.zeros((1, 12), dtype=np.float32))
    with pytest.raises(InvalidArgument, match=f"query vector has 12 values; the collection's dimension is {DIM}"):
        collection.search(np.zeros(12, dtype=np.float32), k=1)
    with pytest.raises(InvalidArgument, match="one vector of 16 values per document"):
        collection.upsert(docs(2), unit_vectors(3))
    with pytest.raises(InvalidArgument, match="NaN or infinite"):
        collection.upsert([Document(id="x")], np.full((1, DIM), np.nan, dtype=np.float32))
    assert collection.count() == 0


def test_metadata_must_be_json(collection: IndexedCollection):
    with pytest.raises(InvalidArgument, match="metadata of document 'x' is not JSON"):
        collection.upsert([Document(id="x", metadata={"when": object()})], unit_vectors(1))


def test_a_collection_built_by_another_model_refuses_new_vectors(engine):
    first = engine(model="old-embedder")
    first.create("books")
    first.get("books").upsert(docs(2), unit_vectors(2))
    first.close()

    second = engine(dimension=8, model="new-embedder")
    books = second.get("books")
    assert books.info().model == "old-embedder" and books.count() == 2
    assert [r.id for r in books.get(["doc0"])] == ["doc0"]
    refusal = "built with model 'old-embedder' but this server embeds with 'new-embedder'"
    with pytest.raises(InvalidArgument, match=refusal):
        books.search(unit_vectors(1, dim=8)[0], k=1)


def test_persistence_across_close_and_reopen(tmp_path: Path):
    root = tmp_path / "collections"
    store = CollectionStore(root, dimension=DIM, model=MODEL)
    store.create("books", precision="f32")
    vectors = unit_vectors(100)
    store.get("books").upsert(docs(100, lang="en"), vectors)
    store.get("books").delete(["doc5"])
    store.close()
    assert (root / "books" / "index.usearch").exists()

    reopened = CollectionStore(root, dimension=DIM, model=MODEL)
    books = reopened.get("books")
    assert books.info().precision == "f32" and books.count() == 99
    assert books.search(vectors[42], k=1)[0].id == "doc42"
    assert books.get(["doc42"])[0].metadata == {"lang": "en"}
    with pytest.raises(NotFound):
        books.get(["doc5"])
    reopened.close()


def crash(collection: IndexedCollection) -> None:
    """Simulates a crash: the database connection goes away, no snapshot is written."""
    collection._db.close()


def test_crash_without_any_snapshot_loses_nothing(tmp_path: Path):
    folder = tmp_path / "books"
    collection = Collection.create(folder, dimension=DIM, model=MODEL)
    vectors = unit_vectors(60)
    collection.upsert(docs(60), vectors)
    collection.delete(["doc0"])
    crash(collection)
    assert not (folder / "index.usearch").exists()

    recovered = Collection(folder)
    assert len(recovered) == 59
    for i in range(1, 60):
        assert recovered.search(vectors[i], k=1)[0].id == f"doc{i}"
    recovered.close()


def test_crash_after_a_snapshot_replays_the_rest(tmp_path: Path):
    folder = tmp_path / "books"
    collection = Collection.create(folder, dimension=DIM, model=MODEL)
    vectors = unit_vectors(80)
    collection.upsert(docs(40), vectors[:40])
    collection.snapshot()
    collection.upsert(docs(40, prefix="late"), vectors[40:])
    collection.upsert([Document(id="doc1")], vectors[79:])  # replaces a snapshotted document
    collection.delete(["doc2"])
    crash(collection)

    recovered = Collection(folder)
    assert len(recovered) == 79
    assert recovered.search(vectors[45], k=1)[0].id == "late5"
    assert {h.id for h in recovered.search(vectors[79], k=2)} == {"doc1", "late39"}
    assert "doc2" not in {h.id for h in recovered.search(vectors[2], k=10)}
    recovered.close()


def test_crash_between_saving_the_index_and_its_seq_replays_harmlessly(tmp_path: Path):
    folder = tmp_path / "books"
    collection = Collection.create(folder, dimension=DIM, model=MODEL)
    vectors = unit_vectors(20)
    collection.upsert(docs(10), vectors[:10])
    collection.snapshot()
    collection.upsert(docs(10, prefix="late"), vectors[10:])
    collection.delete(["doc0"])
    # The new index file landed but index.json still names the older seq: the replay re-applies changes.
    collection._index.save(str(folder / "index.usearch"))
    crash(collection)

    recovered = Collection(folder)
    assert len(recovered) == 19
    assert recovered.search(vectors[15], k=1)[0].id == "late5"
    recovered.close()


def test_a_corrupt_snapshot_is_rebuilt_from_the_documents(tmp_path: Path):
    folder = tmp_path / "books"
    collection = Collection.create(folder, dimension=DIM, model=MODEL)
    vectors = unit_vectors(30)
    collection.upsert(docs(30), vectors)
    collection.close()
    (folder / "index.usearch").write_bytes(b"not an index")

    recovered = Collection(folder)
    assert len(recovered) == 30
    assert recovered.search(vectors[12], k=1)[0].id == "doc12"
    recovered.close()


def test_snapshot_every_snapshots_and_truncates_the_change_log(tmp_path: Path):
    folder = tmp_path / "books"
    collection = Collection.create(folder, dimension=DIM, model=MODEL, snapshot_every=10)
    vectors = unit_vectors(25)
    for i in range(25):
        collection.upsert([Document(id=f"doc{i}")], vectors[i : i + 1])
    covered = json.loads((folder / "index.json").read_text())["seq"]
    assert covered == 20
    with sqlite3.connect(folder / "documents.sqlite") as db:
        assert db.execute("SELECT MIN(seq), COUNT(*) FROM changes").fetchone() == (21, 5)
    crash(collection)

    recovered = Collection(folder, snapshot_every=10)
    assert len(recovered) == 25
    assert recovered.search(vectors[24], k=1)[0].id == "doc24"
    recovered.close()


def test_f16_recall_at_10_against_exact_search(local_store: CollectionStore, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("irgate.index.collection.EXACT_SEARCH_BELOW", 0)  # measure the HNSW graph itself
    rng = np.random.default_rng(7)
    dim, count, clusters = 384, 2000, 20
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    points = centres[rng.integers(0, clusters, count + 100)] + 0.6 * rng.standard_normal((count + 100, dim))
    points = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    corpus, queries = points[:count], points[count:]
    big = Collection.create(local_store.root / "recall", dimension=dim, model=MODEL)
    big.upsert(docs(count), corpus)

    exact = np.argsort(-(queries @ corpus.T), axis=1)[:, :10]
    found = 0
    for query, truth in zip(queries, exact, strict=True):
        got = {hit.id for hit in big.search(query, k=10)}
        found += len(got & {f"doc{i}" for i in truth})
    recall = found / (10 * len(queries))
    print(f"f16 recall@10 = {recall:.3f}")
    assert recall >= 0.95
    big.close()


def test_concurrent_upserts_and_searches(collection: IndexedCollection):
    vectors = unit_vectors(800, seed=3)
    errors: list[BaseException] = []

    def writer(part: int) -> None:
        try:
            for start in range(part * 200, part * 200 + 200, 20):
                collection.upsert(docs(20, prefix=f"doc{start}-"), vectors[start : start + 20])
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    def reader() -> None:
        try:
            for i in range(150):
                for hit in collection.search(vectors[i], k=5):
                    assert -1.01 <= hit.score <= 1.01
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(p,)) for p in range(4)]
    threads += [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert collection.count() == 800
    for start in range(0, 800, 20):
        for offset in (0, 19):
            assert collection.search(vectors[start + offset], k=1)[0].id == f"doc{start}-{offset}"


def test_metadata_filter_compares_json_values(collection: IndexedCollection):
    vectors = unit_vectors(3)
    collection.upsert(
        [Document(id="flag", metadata={"v": True}), Document(id="one", metadata={"v": 1}),
         Document(id="nested", metadata={"v": {"a": [1, False]}})],
        vectors,
    )
    assert [hit.id for hit in collection.search(vectors[0], k=3, filter={"v": True})] == ["flag"]
    assert [hit.id for hit in collection.search(vectors[0], k=3, filter={"v": 1.0})] == ["one"]
    assert [hit.id for hit in collection.search(vectors[0], k=3, filter={"v": {"a": [1, False]}})] == ["nested"]
    assert collection.search(vectors[0], k=3, filter={"v": {"a": [1, 0]}}) == []


def test_one_store_per_directory(tmp_path: Path):
    first = CollectionStore(tmp_path / "collections", dimension=DIM, model=MODEL)
    with pytest.raises(DataDirInUse, match="in use by another irgate process"):
        CollectionStore(tmp_path / "collections", dimension=DIM, model=MODEL)
    first.close()
    CollectionStore(tmp_path / "collections", dimension=DIM, model=MODEL).close()  # free again once closed


def test_a_process_that_opens_collections_can_still_load_the_embedder() -> None:
    """usearch loaded before onnxruntime made onnxruntime's import segfault (exit -11)."""
    done = subprocess.run([sys.executable, "-c", "import irgate.index.collection; import onnxruntime"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
