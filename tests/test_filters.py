"""The metadata filter language (irgate.filters): every operator through a real server on both index
engines (its own data directory, and a real milvus-lite server), a selective filter that still finds
k hits, the SQL and Milvus translations against the exact matcher, and precise errors."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import grpc
import numpy as np
import pytest

from irgate.core.index import IndexedCollection
from irgate.errors import InvalidArgument
from irgate.filters import matches_filter, milvus_expression, parse, sqlite_where
from irgate.domain import documents as domain
from irgate.local_server import LocalServer
from irgate.processes import free_port
from irgate_client import Client, Document, IrgateError
from support import unit_vectors

# What each filter below is checked against. Dotted paths read nested objects; "v\.w" is the key "v.w".
METADATA = {
    "a": {"year": 2019, "lang": "en", "price": 9.5, "venue": {"name": "ACL", "city": "Dublin"}, "draft": True},
    "b": {"year": 2020, "lang": "de", "price": 20, "venue": {"name": "EMNLP"}},
    "c": {"year": 2021, "lang": "fr", "price": 5, "draft": False},
    "d": {"year": "2022", "lang": "en"},
    "e": {"year": 2023, "lang": "de", "draft": None, "v.w": "dotted"},
    "f": {"year": True, "lang": "EN", "venue": [{"name": "ACL"}]},
    "g": {},
}

CASES = [
    ({"lang": "de"}, "be"),  # the original form: equality on a key
    ({"lang": {"$eq": "en"}}, "ad"),
    ({"lang": {"$ne": "en"}}, "bcefg"),  # a document without the key matches $ne, as in MongoDB
    ({"lang": {"$in": ["en", "fr"]}}, "acd"),
    ({"lang": {"$nin": ["en", "fr"]}}, "befg"),
    ({"year": {"$gt": 2020}}, "ce"),  # "2022" is a string and true is not a number: neither matches
    ({"year": {"$gte": 2020}}, "bce"),
    ({"year": {"$lt": 2020}}, "a"),
    ({"year": {"$lte": 2020}}, "ab"),
    ({"year": {"$gt": "2020"}}, "d"),  # strings compare with strings only
    ({"year": {"$gte": 2020, "$lt": 2023}}, "bc"),
    ({"price": {"$lt": 10}}, "ac"),
    ({"price": {"$gte": 9.5}}, "ab"),
    ({"price": 9.5}, "a"),
    ({"year": True}, "f"),
    ({"year": {"$eq": 1}}, ""),  # true is not 1
    ({"draft": {"$exists": True}}, "ace"),  # a key holding null exists
    ({"draft": {"$exists": False}}, "bdfg"),
    ({"draft": None}, "e"),
    ({"venue.name": "ACL"}, "a"),  # f's venue is a list: paths do not step into lists
    ({"venue": {"name": "EMNLP"}}, "b"),  # an object without operators is a value, compared whole
    ({"venue.city": {"$exists": False}}, "bcdefg"),
    ({"v\\.w": "dotted"}, "e"),
    ({"$or": [{"lang": "fr"}, {"venue.name": "EMNLP"}]}, "bc"),
    ({"$and": [{"lang": {"$in": ["en", "de"]}}, {"year": {"$gte": 2020}}]}, "be"),
    ({"$not": {"lang": "en"}}, "bcefg"),
    ({"year": {"$not": {"$gte": 2020}}}, "adfg"),
    ({"year": {"$gte": 2020}, "lang": {"$in": ["en", "de"]},
      "$or": [{"venue.name": "EMNLP"}, {"draft": {"$exists": False}}]}, "b"),
    ({"lang": {"$in": []}}, ""),
]


@pytest.fixture(scope="module", params=["local", "milvus"])
def served(request: pytest.FixtureRequest, minilm_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real server on either index engine, holding one collection with METADATA's documents. Its
    milvus-lite server is its own: the index tests here empty the shared one after each test."""
    args = ["--embedder", f"onnx:{minilm_folder}", "--judge", "none", "--max-batch-size", "8", "--max-k", "100"]
    with contextlib.ExitStack() as stack:
        if request.param == "milvus":
            pytest.importorskip("pymilvus", reason="the [milvus] extra is not installed (make test installs it)")
            from irgate.index.milvus_lite import MilvusLiteServer

            milvus = stack.enter_context(MilvusLiteServer(tmp_path_factory.mktemp("filters-milvus"), free_port()))
            args += ["--index", milvus.index_setting]
        running = stack.enter_context(LocalServer(tmp_path_factory.mktemp(f"filters-{request.param}"), args))
        client = stack.enter_context(Client(running.address, timeout=60))
        client.create_collection("filtered")
        client.upsert("filtered", [Document(id=key, text=f"paper {key}", metadata=value) for key, value in METADATA.items()])
        yield client, "filtered"


@pytest.mark.parametrize(("wanted", "expected"), CASES, ids=[json.dumps(case) for case, _ in CASES])
def test_each_operator_through_the_server(served: tuple[Client, str], wanted: dict, expected: str) -> None:
    client, name = served
    hits = client.search(name, "paper", k=20, filter=wanted)
    assert "".join(sorted(hit.id for hit in hits)) == expected


@pytest.mark.parametrize(("wanted", "field", "words"), [
    ({"year": {"$regex": "^20"}}, "filter.year.$regex", "unknown operator '$regex'"),
    ({"$nor": [{"a": 1}]}, "filter.$nor", "unknown operator '$nor'"),
    ({"year": {"$gt": True}}, "filter.year.$gt", "compares numbers with numbers and strings with strings"),
    ({"year": {"$gt": [2020]}}, "filter.year.$gt", "is a list"),
    ({"lang": {"$in": "en"}}, "filter.lang.$in", "takes a list of values"),
    ({"draft": {"$exists": 1}}, "filter.draft.$exists", "takes true or false"),
    ({"$or": []}, "filter.$or", "non-empty list of filters"),
    ({"$or": [{"a": 1}, "b"]}, "filter.$or[1]", "is a string; a filter is an object"),
    ({"$and": [{"year": {"$lt": None}}]}, "filter.$and[0].year.$lt", "is null"),
    ({"$not": 3}, "filter.$not", "is a number"),
    ({"year": {"$gt": 1, "max": 2}}, "filter.year", "mixes operators with the plain key 'max'"),
    ({"venue..name": 1}, "filter.venue..name", "path 'venue..name' is not valid: it has an empty key"),
    ({"venue\\name": 1}, "filter.venue\\name", "'\\n' is not an escape"),
])
def test_a_malformed_filter_is_refused_naming_the_operator_or_path(
    served: tuple[Client, str], wanted: dict, field: str, words: str
) -> None:
    client, name = served
    with pytest.raises(IrgateError) as raised:
        client.search(name, "paper", filter=wanted)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert words in raised.value.message and field in raised.value.message
    assert [violation.field for violation in raised.value.field_violations] == [field]


def test_a_selective_filter_still_finds_k_hits(collection: IndexedCollection) -> None:  # noqa: F811
    # Past 10,000 documents an unfiltered search is approximate (HNSW); 1% of them match here.
    vectors = unit_vectors(12_000, seed=3)
    documents = [domain.Document(id=f"doc{i}", metadata={"shard": i % 100, "rare": i % 100 == 7}) for i in range(12_000)]
    for start in range(0, 12_000, 3000):
        collection.upsert(documents[start:start + 3000], vectors[start:start + 3000])
    query = unit_vectors(1, seed=4)[0]
    matching = np.arange(7, 12_000, 100)
    truth = [f"doc{i}" for i in matching[np.argsort(-(vectors[matching] @ query))][:10]]
    for wanted in ({"rare": True}, {"shard": {"$in": [7]}}, {"$not": {"shard": {"$ne": 7}}}):
        hits = collection.search(query, k=10, filter=wanted)
        assert len(hits) == 10 and all(int(hit.id[3:]) % 100 == 7 for hit in hits), wanted
        # Brute force among the matches (local) or Milvus's filtered graph search: the true nearest.
        assert len({hit.id for hit in hits} & set(truth)) >= 9, wanted


def test_a_selective_filter_milvus_cannot_narrow_still_finds_k_hits(collection: IndexedCollection) -> None:  # noqa: F811
    # Milvus is not given $exists: true (its `exists` skips null values), so its largest search (16,384
    # candidates) is all it narrows to; the 17 matches here are the documents farthest from the query.
    count = 17_000
    query = unit_vectors(1, seed=6)[0]
    vectors = unit_vectors(count, seed=5)
    matching = np.arange(3, count, 1000)
    vectors[matching] = -query + 0.3 * vectors[matching]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    documents = [domain.Document(id=f"doc{i}", metadata={"retracted": None} if i % 1000 == 3 else {}) for i in range(count)]
    for start in range(0, count, 4000):
        collection.upsert(documents[start:start + 4000], vectors[start:start + 4000])
    truth = {f"doc{i}" for i in matching[np.argsort(-(vectors[matching] @ query))][:10]}
    for wanted in ({"retracted": {"$exists": True}}, {"$not": {"retracted": {"$exists": False}}}):
        hits = collection.search(query, k=10, filter=wanted)
        assert len(hits) == 10 and {hit.id for hit in hits} == truth, wanted
        assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)


def test_dotted_paths_and_operators_at_the_index(collection: IndexedCollection) -> None:  # noqa: F811
    collection.upsert([domain.Document(id=key, metadata=value) for key, value in METADATA.items()], unit_vectors(len(METADATA)))
    for wanted, expected in CASES:
        hits = collection.search(unit_vectors(1, seed=9)[0], k=20, filter=wanted)
        assert "".join(sorted(hit.id for hit in hits)) == expected, wanted
    with pytest.raises(InvalidArgument, match=r"filter.year.\$gt is a bool"):
        collection.search(unit_vectors(1)[0], k=1, filter={"year": {"$gt": False}})


def test_sqlite_where_keeps_exactly_the_matches() -> None:
    """The SQLite translation against the exact matcher over the same rows; keys SQLite's JSON paths
    cannot name (non-ASCII, quotes) and strings holding U+0000 are left to the exact check."""
    rows = {**METADATA, "h": {"é": 1, 'q"': "x\x00y"}}
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE documents (id TEXT, metadata TEXT)")
    db.executemany("INSERT INTO documents VALUES (?, ?)", [(key, json.dumps(value)) for key, value in rows.items()])
    extra = [({"é": 1}, "h"), ({'q"': "x\x00y"}, "h"), ({"$not": {"é": 1}}, "abcdefg"), ({"lang": {"$ne": "x\x00"}}, "abcdefgh")]
    for wanted, expected in extra:
        assert "".join(key for key, value in rows.items() if matches_filter(value, parse(wanted))) == expected
    for wanted in [case for case, _ in CASES] + [case for case, _ in extra]:
        expression = parse(wanted)
        kept = "".join(key for key, value in rows.items() if matches_filter(value, expression))
        condition = sqlite_where(expression)
        if condition is None:
            continue
        found = "".join(key for (key,) in db.execute(f"SELECT id FROM documents WHERE {condition.sql}", condition.parameters))
        assert set(kept) <= set(found), wanted  # never drops a match
        if condition.exact:
            assert found == kept, wanted


def test_milvus_expressions_escape_keys_and_strings() -> None:
    assert milvus_expression(parse({'say "hi"\\.x': {"$gte": 'a"\\b'}})) == '(metadata["say \\"hi\\".x"] >= "a\\"\\\\b")'
    assert milvus_expression(parse({"a.b": {"$in": [1, "x"]}, "n": None})) == \
        '((metadata["a"]["b"] == 1 or metadata["a"]["b"] == "x") and metadata["n"] is null)'
    # Negations are left to the gateway: Milvus's != skips documents without the key.
    assert milvus_expression(parse({"lang": {"$ne": "en"}})) is None
    assert milvus_expression(parse({"lang": {"$ne": "en"}, "year": 2020})) == "(metadata[\"year\"] == 2020)"
