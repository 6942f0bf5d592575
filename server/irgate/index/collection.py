"""One collection: an SQLite document store (the source of truth) plus a usearch index derived from it.

Files in a collection's folder:
  documents.sqlite  documents with their float32 vectors, the `meta` row set, the `changes` log, and
                    `lexical`, the FTS5 (BM25) index of titles and texts, which each write keeps in
                    step with the documents table inside its own transaction
  index.usearch     the last usearch snapshot
  index.json        {"seq": N, "sha256": ...}: the `changes` sequence number that snapshot covers,
                    and the checksum of index.usearch, verified before the snapshot is loaded

Every write commits its document rows and its `changes` rows in one SQLite transaction before
touching usearch, so an acknowledged write survives a crash: on open, the snapshot is loaded and
the changes after its seq are replayed (or the index is rebuilt from the documents table when the
snapshot is missing, fails its checksum or does not match, which the log says). The lexical index
needs no replay: it commits with the documents. A collection made before it existed gets it built
from its documents when it is first opened.

SQLite errors that mean a damaged file become DataLoss naming the collection and its file.
An open collection holds FILES_PER_COLLECTION file descriptors (the database, its WAL and its
shared-memory index); the usearch index lives in memory.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
# onnxruntime before usearch: with usearch 2.26's module loaded first, importing onnxruntime 1.32
# segfaults, and the server (and any script) that holds collections also embeds.
import onnxruntime  # noqa: F401
from usearch.index import Index

from irgate.domain.documents import Document
from irgate.errors import DataLoss, InvalidArgument, NotFound, Resource, ResourceExhausted
from irgate.filters import Filter, sqlite_where
from irgate.index.lexical import TOKENIZER, fts5_query
from irgate.index.records import (
    PRECISIONS,
    CollectionInfo,
    ScoredKey,
    UpsertResult,
    check_model,
    check_precision,
    check_query,
    check_text_query,
    check_upsert,
    matches_filter,
    validate_document_id,
)

__all__ = [
    "FILES_PER_COLLECTION",
    "PRECISIONS",
    "Collection",
    "CollectionInfo",
    "ScoredKey",
    "UpsertResult",
    "damage_of",
    "out_of_descriptors",
]

DATABASE_FILE = "documents.sqlite"
FILES_PER_COLLECTION = 3
INDEX_FILE = "index.usearch"
SNAPSHOT_FILE = "index.json"

# Rows read per batch when rebuilding the index, so a large collection is not loaded into memory twice.
_REBUILD_BATCH = 10_000
# A filtered search first asks usearch for this many candidates per wanted hit, and grows by this factor.
_FILTER_OVERFETCH = 8
# A filter that leaves at most this many documents is searched by brute force among them instead.
_FILTER_CANDIDATES = 10_000
# ... once the candidates to check would pass this share (1/8) of the index.
_SCAN_SHARE = 8

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE documents (
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE TABLE changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL CHECK (op IN ('add', 'remove')),
    key INTEGER NOT NULL
);
"""
# External content: the FTS5 table indexes documents.title and documents.text without a second copy.
# Documents are only ever inserted and deleted (an upsert deletes the old row). The writes add and
# remove lexical rows themselves, not through triggers on documents: a trigger makes each document
# INSERT a statement with its own savepoint, and FTS5 writes its pending terms to disk at every
# savepoint, so each document became a segment of its own to merge (benchmarks/lexical.py measures the cost).
# detail=full and the column sizes stay although they cost ingest time: without them bm25() gets the
# term counts and lengths by tokenizing every matching document again at each search (benchmarks/README.md).
_LEXICAL_TABLE = (
    f"CREATE VIRTUAL TABLE lexical USING fts5(title, text, content='documents', content_rowid='key', "
    f"tokenize='{TOKENIZER}')"
)
# Triggers that collections written by an earlier irgate carry; opening one drops them.
_LEXICAL_TRIGGERS = ("documents_lexical_add", "documents_lexical_remove")
# Lexical matches read per batch while a filter drops some of them.
_LEXICAL_BATCH = 256

log = logging.getLogger("irgate.index")

# Below this many documents a search is brute force (exact) instead of HNSW (approximate).
EXACT_SEARCH_BELOW = 10_000
# SQLite primary result codes (the low byte of extended codes).
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26
# verify() compares this many stored vectors with the index's copies.
_VERIFY_SAMPLE = 1000
_Result = TypeVar("_Result")


def damage_of(error: BaseException) -> str | None:
    """SQLite's words for a damaged database file ('database disk image is malformed'), else None."""
    if isinstance(error, sqlite3.DatabaseError) and (getattr(error, "sqlite_errorcode", 0) & 0xFF) in (
        _SQLITE_CORRUPT,
        _SQLITE_NOTADB,
    ):
        return str(error)
    return None


def out_of_descriptors(error: BaseException) -> bool:
    """Whether `error` comes from the process (EMFILE) or the system (ENFILE) having no file descriptor left.

    usearch says so in words only, and SQLite only 'unable to open database file' or 'disk I/O error';
    for those a probe opens one more descriptor. Call this before closing what the failed call left
    open, or the probe finds the descriptors that freed."""
    if isinstance(error, OSError):
        return error.errno in (errno.EMFILE, errno.ENFILE)
    if isinstance(error, RuntimeError):
        return any(os.strerror(code) in str(error) for code in (errno.EMFILE, errno.ENFILE))
    if isinstance(error, sqlite3.OperationalError) and (getattr(error, "sqlite_errorcode", 0) & 0xFF) in (
        _SQLITE_IOERR,
        _SQLITE_CANTOPEN,
    ):
        try:
            os.close(os.open(os.devnull, os.O_RDONLY))
        except OSError as probe:
            return probe.errno in (errno.EMFILE, errno.ENFILE)
    return False


def _reporting_damage(method: Callable[..., _Result]) -> Callable[..., _Result]:
    """Turns SQLite errors of a damaged file into DataLoss, and a full disk into ResourceExhausted."""

    @functools.wraps(method)
    def guarded(self: Collection, *args: Any, **kwargs: Any) -> _Result:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as error:
            file = f"{self.name}/{DATABASE_FILE}"
            damage = damage_of(error)
            if damage is not None:
                log.error("collection %s: %s is damaged (%s)", self.name, self.folder / DATABASE_FILE, damage)
                raise DataLoss(
                    f"collection '{self.name}' is damaged: its database file {file} reports '{damage}'; "
                    "restore it from a backup, or delete the collection and index its documents again"
                ) from error
            if getattr(error, "sqlite_errorcode", 0) & 0xFF == _SQLITE_FULL:
                raise ResourceExhausted(
                    f"the disk holding collection '{self.name}' is full; nothing was written. Free space and retry"
                ) from error
            raise

    return guarded


class Collection:
    """A collection opened from its folder. Methods are safe to call from several threads at once."""

    def __init__(self, folder: Path, serving_model: str | None = None, snapshot_every: int = 50_000) -> None:
        """Opens an existing collection.

        serving_model: the model that embeds the vectors given to upsert and search; when it differs
        from the model the collection was built with, those calls are refused (vectors from two
        embedders are not comparable even when their lengths agree). None skips the check.
        """
        if snapshot_every < 1:
            raise ValueError(f"snapshot_every is {snapshot_every}; it must be at least 1")
        self.folder = Path(folder)
        self.name = self.folder.name
        database = self.folder / DATABASE_FILE
        # sqlite3.connect would create an empty database, so check first.
        if not database.is_file():
            raise NotFound(f"collection '{self.name}' does not exist", resource=Resource("collection", self.name))
        self._serving_model = serving_model
        self._snapshot_every = snapshot_every
        self._closed = False
        # One lock for everything: SQLite writes need it, and usearch's Python binding is not safe for
        # concurrent calls on one index either (each search reserves and reuses per-thread context 0).
        self._lock = threading.Lock()
        self._db = _connect(database)
        meta = dict(self._db.execute("SELECT key, value FROM meta"))
        self.dimension = int(meta["dimension"])
        self.precision = meta["precision"]
        self.model = meta["model"]
        self.created_at = float(meta["created_at"])
        self._ensure_lexical_index()
        self._index, self._snapshot_seq = self._load_index()
        # Kept outside the lock so len() never waits behind a long write (it is called on the event loop).
        self._count = len(self._index)

    @classmethod
    def create(
        cls,
        folder: Path,
        dimension: int,
        model: str,
        precision: str = "f16",
        snapshot_every: int = 50_000,
    ) -> Collection:
        """Creates an empty collection in `folder`, which must not exist yet, and opens it."""
        check_precision(precision)
        if dimension < 1:
            raise InvalidArgument(f"dimension is {dimension}; it must be at least 1")
        folder = Path(folder)
        folder.mkdir()
        db = _connect(folder / DATABASE_FILE)
        try:
            with _transaction(db):
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("dimension", str(dimension)),
                        ("precision", precision),
                        ("model", model),
                        ("created_at", repr(time.time())),
                    ],
                )
        finally:
            db.close()
        return cls(folder, serving_model=model, snapshot_every=snapshot_every)

    def info(self) -> CollectionInfo:
        return CollectionInfo(
            name=self.name,
            documents=self._count,
            dimension=self.dimension,
            precision=self.precision,
            model=self.model,
            created_at=self.created_at,
        )

    def __len__(self) -> int:
        return self._count

    def count(self) -> int:
        return self._count

    @_reporting_damage
    def upsert(self, documents: Sequence[Document], vectors: np.ndarray) -> UpsertResult:
        """Writes documents with their vectors (float32 [n, dim]) in one transaction.

        A document whose id exists replaces it; when one call repeats an id, the last one wins.
        """
        self._check_model()
        checked = check_upsert(documents, vectors, self.dimension)
        rows = [
            (item.record.id, item.record.title, item.record.text, item.metadata_json, item.vector.astype("<f4").tobytes())
            for item in checked
        ]
        if not rows:
            return UpsertResult(upserted=0, replaced=0)
        with self._lock:
            self._check_open()
            with _transaction(self._db):
                old_keys = [key for (key,) in self._db.execute(
                    "SELECT key FROM documents WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps([item.record.id for item in checked]),),
                )]
                self._unindex_lexically(old_keys)
                self._db.execute(
                    "DELETE FROM documents WHERE key IN (SELECT value FROM json_each(?))", (json.dumps(old_keys),)
                )
                new_keys = [
                    self._db.execute(
                        "INSERT INTO documents (id, title, text, metadata, vector) VALUES (?, ?, ?, ?, ?)", row
                    ).lastrowid
                    for row in rows
                ]
                self._log_changes("remove", old_keys)
                self._log_changes("add", new_keys)
                self._index_lexically(new_keys, rows)
            # Committed: from here on a crash is repaired by replaying the changes log.
            self._index.remove(old_keys)
            self._index.add(np.asarray(new_keys, dtype=np.uint64), np.stack([item.vector for item in checked]))
            self._count = len(self._index)
            self._snapshot_if_due_safely()
        return UpsertResult(upserted=len(rows), replaced=len(old_keys))

    @_reporting_damage
    def get(self, ids: Sequence[str], include_vectors: bool = False, skip_missing: bool = False) -> list[Document]:
        """Returns the documents in request order; raises NotFound naming the first missing id.

        skip_missing leaves missing ids out instead: for search hits whose documents a concurrent
        delete removed after the index was searched.
        """
        for document_id in ids:
            validate_document_id(document_id)
        vector_column = "vector" if include_vectors else "NULL"
        with self._lock:
            self._check_open()
            found = {
                row[0]: _record(row)
                for row in self._db.execute(
                    f"SELECT id, title, text, metadata, {vector_column} FROM documents "
                    "WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps(list(ids)),),
                )
            }
        if not skip_missing:
            for document_id in ids:
                if document_id not in found:
                    raise NotFound(
                        f"document '{document_id}' does not exist in collection '{self.name}'",
                        resource=Resource("document", document_id),
                    )
        return [found[document_id] for document_id in ids if document_id in found]

    @_reporting_damage
    def delete(self, ids: Sequence[str]) -> tuple[int, int]:
        """Deletes documents by id; returns (deleted, not_found), each id counted once."""
        for document_id in ids:
            validate_document_id(document_id)
        distinct = list(dict.fromkeys(ids))
        with self._lock:
            self._check_open()
            with _transaction(self._db):
                keys = [key for (key,) in self._db.execute(
                    "SELECT key FROM documents WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps(distinct),),
                )]
                self._unindex_lexically(keys)
                self._db.execute(
                    "DELETE FROM documents WHERE key IN (SELECT value FROM json_each(?))", (json.dumps(keys),)
                )
                self._log_changes("remove", keys)
            self._index.remove(keys)
            self._count = len(self._index)
            self._snapshot_if_due_safely()
        return len(keys), len(distinct) - len(keys)

    @_reporting_damage
    def search(self, vector: np.ndarray, k: int, filter: Filter | Mapping[str, Any] | None = None) -> list[ScoredKey]:
        """Returns up to k documents by cosine similarity, best first; filter: see irgate.filters.

        A filtered search widens its candidates until k match; before they pass 1/_SCAN_SHARE of
        the index, a filter that SQLite finds at most _FILTER_CANDIDATES documents for is searched
        exactly among those. Either way a selective filter finds k hits when k documents match."""
        self._check_model()
        query, wanted = check_query(vector, k, filter, self.dimension)
        with self._lock:
            self._check_open()
            size = len(self._index)
            fetch = min(size, k * _FILTER_OVERFETCH if wanted else k)
            scanned = False
            while fetch > 0:
                # Small collections are searched exactly: brute force is sub-millisecond there and has
                # perfect recall. Once every document is asked for, a rare filter value is never missed.
                covers_all = fetch >= size
                matches = self._index.search(query, fetch, exact=covers_all or size < EXACT_SEARCH_BELOW)
                hits = self._matching(matches.keys, matches.distances, wanted, k)
                if len(hits) >= k or covers_all:
                    return hits
                fetch = min(size, fetch * _FILTER_OVERFETCH)
                # Checking candidates one by one past a share of the index costs more than SQLite takes
                # to find every match (a scan); when few enough match, they are searched exactly instead.
                if wanted is not None and not scanned and fetch * _SCAN_SHARE > size:
                    scanned = True
                    if (keys := self._filtered_keys(wanted, _FILTER_CANDIDATES)) is not None:
                        return self._nearest_among(query, keys, k)
        return []

    @_reporting_damage
    def lexical_search(self, text: str, k: int, filter: Filter | Mapping[str, Any] | None = None) -> list[ScoredKey]:
        """Returns up to k documents by BM25 over title and text (higher is better), best first; a
        query without a word to look for finds nothing. filter: as in search, checked on each match."""
        wanted = check_text_query(k, filter)
        expression = fts5_query(text)
        if expression is None:
            return []
        hits: list[ScoredKey] = []
        with self._lock:
            self._check_open()
            # bm25() is lower for better matches; FTS5 sorts by it itself for ORDER BY rank.
            cursor = self._db.execute(
                "SELECT lexical.rowid, -lexical.rank, documents.id, documents.metadata FROM lexical "
                "JOIN documents ON documents.key = lexical.rowid WHERE lexical MATCH ? ORDER BY lexical.rank"
                + ("" if wanted is not None else " LIMIT ?"),
                (expression,) if wanted is not None else (expression, k),
            )
            while len(hits) < k and (rows := cursor.fetchmany(_LEXICAL_BATCH)):
                hits.extend(ScoredKey(id=document_id, score=float(score)) for _, score, document_id, metadata in rows
                            if wanted is None or matches_filter(json.loads(metadata), wanted))
            cursor.close()
        return hits[:k]

    @_reporting_damage
    def list_documents(
        self, after: str | None, limit: int, filter: Filter | None = None, include_vectors: bool = False
    ) -> list[Document]:
        """Up to `limit` documents with ids after `after`, in id order (SQLite compares ids as UTF-8
        bytes, which sort as code points), among those that match the filter (narrowed by
        irgate.filters.sqlite_where, then checked exactly)."""
        if limit < 1:
            raise InvalidArgument(f"limit is {limit}; it must be at least 1")
        condition = sqlite_where(filter) if filter is not None else None
        where, parameters = ("1", ()) if condition is None else (condition.sql, condition.parameters)
        exact = filter is None or (condition is not None and condition.exact)
        records: list[Document] = []
        with self._lock:
            self._check_open()
            cursor = self._db.execute(
                f"SELECT id, title, text, metadata, {'vector' if include_vectors else 'NULL'} FROM documents "
                f"WHERE id > ? AND ({where}) ORDER BY id" + (" LIMIT ?" if exact else ""),
                (after or "", *parameters, *((limit,) if exact else ())),
            )
            while len(records) < limit and (rows := cursor.fetchmany(limit)):
                records.extend(record for record in map(_record, rows)
                               if exact or filter is None or matches_filter(record.metadata, filter))
            cursor.close()
        return records[:limit]

    @_reporting_damage
    def snapshot(self) -> None:
        """Saves the usearch index with the seq it covers, then drops the changes it makes redundant."""
        with self._lock:
            self._check_open()
            self._snapshot()

    @_reporting_damage
    def verify(self) -> list[str]:
        """Checks that store and index agree: SQLite's own integrity check, every document in the index
        and nothing else, and a sample of index vectors equal to the stored ones. Returns the problems
        found (none: they agree), plus a note when the index had to be rebuilt at open."""
        with self._lock:
            self._check_open()
            problems = [f"SQLite integrity check: {line}" for (line,) in self._db.execute("PRAGMA quick_check")
                        if line != "ok"]
            if problems:
                return problems
            problems.extend(self._verify_lexical_index())
            if self.index_source not in ("snapshot", _NO_SNAPSHOT):
                problems.append(f"the index snapshot was not usable ({self.index_source}); a restart rebuilds it")
            stored = np.fromiter((key for (key,) in self._db.execute("SELECT key FROM documents")), dtype=np.uint64)
            indexed = np.asarray(self._index.keys, dtype=np.uint64)
            missing = np.setdiff1d(stored, indexed)
            extra = np.setdiff1d(indexed, stored)
            if missing.size:
                problems.append(f"{missing.size} stored documents are missing from the index")
            if extra.size:
                problems.append(f"the index holds {extra.size} keys that are not stored documents")
            sample = np.intersect1d(stored, indexed)[:_VERIFY_SAMPLE]
            if sample.size:
                rows = dict(self._db.execute(
                    "SELECT key, vector FROM documents WHERE key IN (SELECT value FROM json_each(?))",
                    (json.dumps(sample.tolist()),),
                ))
                expected = np.stack([np.frombuffer(rows[int(key)], dtype="<f4") for key in sample]).astype(np.float64)
                actual = np.asarray(self._index.get(sample, dtype=np.float32), dtype=np.float64)
                cosine = np.sum(expected * actual, axis=1) / np.maximum(
                    np.linalg.norm(expected, axis=1) * np.linalg.norm(actual, axis=1), 1e-30
                )
                differing = int(np.sum(~(cosine > _AGREEMENT[self.precision])))
                if differing:
                    problems.append(f"{differing} of {sample.size} sampled index vectors differ from the stored ones")
        return problems

    def close(self, snapshot: bool = True) -> None:
        """Closes the collection, first saving a snapshot so the next open needs no replay.

        snapshot=False skips that, for a collection about to be deleted.
        """
        with self._lock:
            if self._closed:
                return
            try:
                if snapshot:
                    self._snapshot()
            finally:
                # A failed snapshot loses nothing (the changes log covers it) and must not keep the
                # database's descriptors open: the store closes collections to free them.
                self._db.close()
                self._closed = True

    # ---- internals; callers hold self._lock unless noted ----

    def _check_open(self) -> None:
        if self._closed:
            raise NotFound(
                f"collection '{self.name}' does not exist (it was closed or deleted)", resource=Resource("collection", self.name)
            )

    def _check_model(self) -> None:
        """Lock-free: reads only fields fixed at open."""
        check_model(self.name, self.model, self._serving_model)

    def _ensure_lexical_index(self) -> None:
        """Builds the lexical index of a collection made before there was one, and drops the triggers
        an earlier irgate kept it with, which would now index each document twice (lock-free: called at open)."""
        present = {name for (name,) in self._db.execute(
            "SELECT name FROM sqlite_master WHERE name IN (SELECT value FROM json_each(?))",
            (json.dumps(["lexical", *_LEXICAL_TRIGGERS]),),
        )}
        if present == {"lexical"}:
            return
        with _transaction(self._db):
            for trigger in sorted(present - {"lexical"}):
                self._db.execute(f"DROP TRIGGER {trigger}")
            if "lexical" not in present:
                if self._db.execute("SELECT EXISTS (SELECT 1 FROM documents)").fetchone()[0]:  # a new, empty one says nothing
                    log.info("collection %s: building its lexical index from %s", self.name, DATABASE_FILE)
                self._db.execute(_LEXICAL_TABLE)
                self._db.execute("INSERT INTO lexical (lexical) VALUES ('rebuild')")

    def _unindex_lexically(self, keys: list[int]) -> None:
        """Removes the lexical rows of documents about to be deleted: FTS5 finds the terms it indexed
        from the title and text, so this runs while the documents rows still hold them."""
        self._db.execute(
            "INSERT INTO lexical (lexical, rowid, title, text) SELECT 'delete', key, title, text FROM documents "
            "WHERE key IN (SELECT value FROM json_each(?))",
            (json.dumps(keys),),
        )

    def _index_lexically(self, keys: list[int], rows: list[tuple[str, str, str, str, bytes]]) -> None:
        """Adds the lexical rows of newly inserted documents (rows as upsert inserts them: id, title,
        text, metadata, vector); FTS5 tokenizes them into memory and writes them out at the commit."""
        self._db.executemany(
            "INSERT INTO lexical (rowid, title, text) VALUES (?, ?, ?)",
            [(key, title, text) for key, (_, title, text, _, _) in zip(keys, rows)],
        )

    def _verify_lexical_index(self) -> list[str]:
        """The lexical index's disagreement with the documents table, which it is rebuilt from when found."""
        problem = None
        try:
            # rank 1: compare the index with the documents it was built from, not only with itself.
            self._db.execute("INSERT INTO lexical (lexical, rank) VALUES ('integrity-check', 1)")
        except sqlite3.DatabaseError as error:
            problem = str(error)
        if problem is None:
            return []
        with _transaction(self._db):
            self._db.execute("INSERT INTO lexical (lexical) VALUES ('rebuild')")
        return [f"the lexical index disagreed with the documents ({problem}); it was rebuilt from them"]

    def _log_changes(self, op: str, keys: list[int]) -> None:
        self._db.executemany("INSERT INTO changes (op, key) VALUES (?, ?)", [(op, key) for key in keys])

    def _last_seq(self) -> int:
        # sqlite_sequence keeps the highest seq ever given out, even after the rows were deleted.
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
        return 0 if row is None else int(row[0])

    def _new_index(self) -> Index:
        return Index(ndim=self.dimension, metric="cos", dtype=self.precision)

    def _load_index(self) -> tuple[Index, int]:
        """Returns the index (snapshot + replayed changes, or a rebuild) and the seq of its snapshot.

        Sets index_source to "snapshot", or to why the index was rebuilt from the documents."""
        try:
            index, seq = self._load_snapshot()
            self._replay(index, seq)
            document_count = self._db.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
            # A write whose usearch step failed after its commit would otherwise stay invisible forever.
            if len(index) != document_count:
                raise _UnusableSnapshot(f"it holds {len(index)} documents after replay, the database {document_count}")
            self.index_source = "snapshot"
            return index, seq
        except _UnusableSnapshot as unusable:
            self.index_source = str(unusable)
        empty = self._db.execute("SELECT 1 FROM documents LIMIT 1").fetchone() is None
        # A new collection (and its folder while it is made aside) has nothing to rebuild: nothing to say.
        if not (empty and self.index_source == _NO_SNAPSHOT):
            level = logging.INFO if self.index_source == _NO_SNAPSHOT else logging.WARNING
            log.log(level, "collection %s: rebuilding its index from %s: %s", self.name, DATABASE_FILE, self.index_source)
        return self._rebuild(), 0

    def _load_snapshot(self) -> tuple[Index, int]:
        index_file = self.folder / INDEX_FILE
        try:
            snapshot = json.loads((self.folder / SNAPSHOT_FILE).read_text())
        except FileNotFoundError:
            raise _UnusableSnapshot(_NO_SNAPSHOT) from None
        except (OSError, ValueError) as error:
            if out_of_descriptors(error):  # the snapshot is sound: no rebuild, the open fails
                raise
            raise _UnusableSnapshot(f"{SNAPSHOT_FILE} is unreadable ({error})") from None
        if not isinstance(snapshot, dict) or not isinstance(snapshot.get("seq"), int) or "sha256" not in snapshot:
            raise _UnusableSnapshot(f"{SNAPSHOT_FILE} lacks its seq or checksum")
        try:
            with index_file.open("rb") as file:
                digest = hashlib.file_digest(file, "sha256").hexdigest()
        except OSError as error:
            if out_of_descriptors(error):
                raise
            raise _UnusableSnapshot(f"{INDEX_FILE} is unreadable ({error.strerror})") from None
        if digest != snapshot["sha256"]:
            raise _UnusableSnapshot(f"{INDEX_FILE} fails its checksum (the file was damaged)")
        index = self._new_index()
        try:
            index.load(str(index_file))
        except (RuntimeError, ValueError) as error:
            if out_of_descriptors(error):
                raise
            raise _UnusableSnapshot(f"{INDEX_FILE} does not load ({error})") from None
        # load() adopts the file's own settings, so a snapshot from another configuration must be caught here.
        if index.ndim != self.dimension or index.dtype.name.lower() != self.precision:
            raise _UnusableSnapshot(f"{INDEX_FILE} was made for another dimension or precision")
        return index, snapshot["seq"]

    def _replay(self, index: Index, after_seq: int) -> None:
        """Applies the logged changes after `after_seq`.

        Keys are never reused, so only the net effect matters. Re-applying a change the snapshot already
        holds is a no-op, which covers a crash between writing index.usearch and index.json.
        """
        added: set[int] = set()
        removed: set[int] = set()
        for op, key in self._db.execute("SELECT op, key FROM changes WHERE seq > ?", (after_seq,)):
            (added if op == "add" else removed).add(key)
        index.remove([key for key in removed if key in index])
        to_add = [key for key in added - removed if key not in index]
        for start in range(0, len(to_add), _REBUILD_BATCH):
            batch = to_add[start : start + _REBUILD_BATCH]
            self._add_rows(
                index,
                self._db.execute(
                    "SELECT key, vector FROM documents WHERE key IN (SELECT value FROM json_each(?))",
                    (json.dumps(batch),),
                ).fetchall(),
            )

    def _rebuild(self) -> Index:
        index = self._new_index()
        cursor = self._db.execute("SELECT key, vector FROM documents")
        while rows := cursor.fetchmany(_REBUILD_BATCH):
            self._add_rows(index, rows)
        return index

    def _add_rows(self, index: Index, rows: list[tuple[int, bytes]]) -> None:
        if rows:
            keys = np.fromiter((key for key, _ in rows), dtype=np.uint64, count=len(rows))
            vectors = np.frombuffer(b"".join(blob for _, blob in rows), dtype="<f4")
            index.add(keys, vectors.reshape(len(rows), self.dimension).astype(np.float32))

    def _filtered_keys(self, wanted: Filter, limit: int) -> list[int] | None:
        """The keys of the documents that match, found through SQLite (irgate.filters.sqlite_where,
        then the exact check where that is wider), or None when more than `limit` may match.
        The caller holds self._lock."""
        condition = sqlite_where(wanted)
        where, parameters = ("1", ()) if condition is None else (condition.sql, condition.parameters)
        exact = condition is not None and condition.exact
        rows = self._db.execute(
            f"SELECT key, {'NULL' if exact else 'metadata'} FROM documents WHERE {where} LIMIT ?", (*parameters, limit + 1)
        ).fetchall()
        if len(rows) > limit:
            return None
        return [key for key, metadata in rows if exact or matches_filter(json.loads(metadata), wanted)]

    def _nearest_among(self, query: np.ndarray, keys: list[int], k: int) -> list[ScoredKey]:
        """The k documents of `keys` nearest to query, by brute force over the index's own vectors
        (so scores agree with an unfiltered search's)."""
        if not keys:
            return []
        candidates = np.asarray(keys, dtype=np.uint64)
        vectors = np.asarray(self._index.get(candidates, dtype=np.float32), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(query)
        similarity = (vectors @ query) / np.maximum(norms, np.finfo(np.float32).tiny)
        best = np.argsort(-similarity, kind="stable")[:k]
        return self._matching(candidates[best], 1.0 - similarity[best], None, k)

    def _matching(
        self, keys: np.ndarray, distances: np.ndarray, wanted: Filter | None, k: int
    ) -> list[ScoredKey]:
        """Turns usearch matches into hits: keys to ids, then the metadata filter, at most k."""
        rows = {
            key: (document_id, metadata)
            for key, document_id, metadata in self._db.execute(
                "SELECT key, id, metadata FROM documents WHERE key IN (SELECT value FROM json_each(?))",
                (json.dumps([int(key) for key in keys]),),
            )
        }
        hits: list[ScoredKey] = []
        for key, distance in zip(keys, distances):
            row = rows.get(int(key))
            if row is None:
                continue
            if wanted and not matches_filter(json.loads(row[1]), wanted):
                continue
            hits.append(ScoredKey(id=row[0], score=1.0 - float(distance)))
            if len(hits) == k:
                break
        return hits

    def _snapshot_if_due_safely(self) -> None:
        """After a commit the write is durable: a failed snapshot (say, a full disk) is logged, not
        reported as a failed write; the changes log still covers it."""
        try:
            self._snapshot_if_due()
        except Exception:
            log.exception("snapshot of collection %s failed; its changes log covers the writes", self.name)

    def _snapshot_if_due(self) -> None:
        if self._last_seq() - self._snapshot_seq >= self._snapshot_every:
            self._snapshot()

    def _snapshot(self) -> None:
        seq = self._last_seq()
        if seq == self._snapshot_seq and (self.folder / INDEX_FILE).exists():
            return  # nothing changed since the last snapshot
        # Each file is replaced atomically; the pair is not, which _replay tolerates (see there).
        index_temp = self.folder / f"{INDEX_FILE}.tmp"
        self._index.save(str(index_temp))
        _fsync(index_temp)
        with index_temp.open("rb") as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
        os.replace(index_temp, self.folder / INDEX_FILE)
        snapshot_temp = self.folder / f"{SNAPSHOT_FILE}.tmp"
        snapshot_temp.write_text(json.dumps({"seq": seq, "sha256": digest}))
        _fsync(snapshot_temp)
        os.replace(snapshot_temp, self.folder / SNAPSHOT_FILE)
        _fsync(self.folder)
        with _transaction(self._db):
            self._db.execute("DELETE FROM changes WHERE seq <= ?", (seq,))
        self._snapshot_seq = seq


_NO_SNAPSHOT = "no snapshot was saved yet"
# Cosine similarity above which an index vector counts as equal to its stored copy, per precision.
_AGREEMENT = {"f32": 0.9999, "f16": 0.999, "i8": 0.9}


class _UnusableSnapshot(Exception):
    """Why the saved snapshot cannot be used; the index is then rebuilt from the documents."""


def _record(row: tuple[str, str, str, str, bytes | None]) -> Document:
    """A documents row (id, title, text, metadata, vector or NULL) as a record."""
    document_id, title, text, metadata, vector = row
    return Document(
        id=document_id,
        title=title,
        text=text,
        metadata=json.loads(metadata),
        vector=None if vector is None else np.frombuffer(vector, dtype="<f4").astype(np.float32),
    )


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are opened explicitly by _transaction, never implicitly.
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed transaction survives power loss, not just a process crash.
    db.execute("PRAGMA synchronous=FULL")
    return db


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
