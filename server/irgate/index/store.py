"""The set of collections under a data directory: one folder per collection, named after it.

At most max_open collections are open at once (each holds FILES_PER_COLLECTION file descriptors and
its index in memory): using another one closes the least recently used collection that no call is
using, and a closed collection opens again on its next use.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import resource
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from irgate.errors import (
    AlreadyExists,
    DataDirInUse,
    DataLoss,
    FailedPrecondition,
    NotFound,
    Resource,
    ResourceExhausted,
    StartupError,
)
from irgate.filters import Filter
from irgate.identifiers import COLLECTION_NAME, check_collection_name
from irgate.index.collection import DATABASE_FILE, FILES_PER_COLLECTION, Collection, damage_of, out_of_descriptors
from irgate.domain.documents import Document
from irgate.index.records import CollectionInfo, ScoredKey, UpsertResult

# Work folders start with "." so they can never be taken for a collection (names start with a letter or digit).
_STAGING_PREFIX = ".creating-"
_DELETING_PREFIX = ".deleting-"
_LOCK_FILE = ".lock"
# 384 descriptors in all: under the common limit of 1024 open files with room for sockets and model files.
MAX_OPEN_COLLECTIONS = 128
log = logging.getLogger("irgate.index")


def validate_collection_name(name: str) -> None:
    """A collection name becomes a folder name: this check keeps every folder inside the store's root."""
    check_collection_name(name, "collection name")


def lock_data_dir(root: Path) -> TextIO:
    """Takes the directory's lock, or raises DataDirInUse; the lock holds while the returned file is open.

    Two servers on one directory would each keep their own index of the same documents and
    overwrite each other's snapshots. The OS drops the lock when the process dies, so a crash never
    leaves a stale lock behind."""
    root.mkdir(parents=True, exist_ok=True)
    owner = (root / _LOCK_FILE).open("a")
    try:
        fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner.close()
        raise DataDirInUse(f"{root} is in use by another irgate process; give each server its own --data-dir") from None
    return owner


class CollectionStore:
    """The collections under `root`, each opened once at start to check it and learn its settings and
    document count, then kept open only while among the max_open most recently used.

    A collection that cannot be opened (say, its database file is damaged) is kept aside as
    unavailable: its calls answer DATA_LOSS naming it and its file, and the others serve as usual.
    """

    def __init__(
        self, root: Path, dimension: int, model: str, snapshot_every: int = 50_000, max_open: int = MAX_OPEN_COLLECTIONS
    ) -> None:
        """dimension and model describe the embedder serving now; new collections are created with them.

        Raises StartupError when the file descriptors run out while the collections are opened."""
        if max_open < 1:
            raise ValueError(f"max_open is {max_open}; it must be at least 1")
        self.root = Path(root)
        self.dimension = dimension
        self.model = model
        self._snapshot_every = snapshot_every
        self._max_open = max_open
        self._lock = threading.Lock()
        # Names whose create or delete is under way: a second create or delete of the same name
        # waits for it (they would race on the folder), other names do not.
        self._busy: set[str] = set()
        self._settled = threading.Condition(self._lock)
        self._owner = lock_data_dir(self.root)
        # Leftovers of a create or delete interrupted by a crash: neither is a collection.
        for folder in self.root.iterdir():
            if folder.name.startswith((_STAGING_PREFIX, _DELETING_PREFIX)):
                shutil.rmtree(folder, ignore_errors=True)
        self._collections: dict[str, StoredCollection] = {}
        self._recent: OrderedDict[str, StoredCollection] = OrderedDict()  # the open ones, least recently used first
        self._unavailable: dict[str, str] = {}  # name -> why, as clients are told
        for folder in sorted(self.root.iterdir()):
            if COLLECTION_NAME.fullmatch(folder.name) and (folder / DATABASE_FILE).is_file():
                self._close_least_recent(keep=self._max_open - 1)
                try:
                    collection = self._open_collection(folder)
                except ResourceExhausted as error:
                    self.close()
                    raise StartupError(
                        f"{_descriptor_shortage(f'opening collection {folder.name!r}')}: "
                        "raise the open-file limit (ulimit -n) or lower --max-open-collections"
                    ) from error
                except Exception as error:  # one damaged collection must not take the others down
                    self._unavailable[folder.name] = self._unavailable_reason(folder.name, error)
                    continue
                stored = StoredCollection(self, folder, collection.info())
                stored.opened = collection
                self._collections[folder.name] = self._recent[folder.name] = stored

    @property
    def location(self) -> str:
        return f"under {self.root}"

    @property
    def unavailable(self) -> dict[str, str]:
        """Collections that could not be opened, with the reason."""
        with self._lock:
            return dict(self._unavailable)

    def ready(self) -> bool:
        return True  # in this process: it answers whenever the server does (damaged collections answer DATA_LOSS)

    def create(self, name: str, precision: str = "f16") -> CollectionInfo:
        validate_collection_name(name)
        with self._exclusive(name):
            with self._lock:
                if name in self._collections:
                    raise AlreadyExists(f"collection '{name}' already exists", resource=Resource("collection", name))
                if name in self._unavailable:
                    raise AlreadyExists(
                        f"collection '{name}' already exists; {self._unavailable[name]}", resource=Resource("collection", name)
                    )
            if (self.root / name).exists():
                raise FailedPrecondition(
                    f"the data directory holds a folder '{name}' that is not a collection; move it away first"
                )
            # Built aside and renamed into place, so a crash never leaves a half-made collection.
            staging = self.root / f"{_STAGING_PREFIX}{name}-{uuid.uuid4().hex}"
            try:
                with _descriptors_reported(f"creating collection '{name}'"):
                    created = Collection.create(staging, self.dimension, self.model, precision)
                    info = dataclasses.replace(created.info(), name=name)
                    created.close(snapshot=False)  # an empty index needs none: opening builds it at no cost
                    staging.rename(self.root / name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            # Left closed: its first use opens it.
            stored = StoredCollection(self, self.root / name, info)
            with self._lock:
                self._collections[name] = stored
        return stored.info()

    def get(self, name: str) -> StoredCollection:
        validate_collection_name(name)
        with self._lock:
            collection = self._collections.get(name)
            reason = self._unavailable.get(name)
        if reason is not None:
            raise DataLoss(reason, resource=Resource("collection", name))
        if collection is None:
            raise NotFound(f"collection '{name}' does not exist", resource=Resource("collection", name))
        return collection

    def list(self) -> list[CollectionInfo]:
        """Opens no collection: a closed one's count is the one it had when it was closed."""
        with self._lock:
            collections = sorted(self._collections.items())
        return [collection.info() for _, collection in collections]

    def delete(self, name: str) -> None:
        """Deletes a collection, an unavailable one too (which is how a damaged collection is dropped)."""
        validate_collection_name(name)
        with self._exclusive(name):
            with self._lock:
                collection = self._collections.pop(name, None)
                damaged = self._unavailable.pop(name, None) is not None
                self._recent.pop(name, None)
                if collection is not None:
                    collection.gone = True
            if collection is None and not damaged:
                raise NotFound(f"collection '{name}' does not exist", resource=Resource("collection", name))
            # Outside the store's lock: waiting for this collection's calls in flight must not hold up
            # the others. Later calls through old references raise NotFound.
            if collection is not None:
                with collection.guard:
                    opened = collection.detach()
                if opened is not None:
                    opened.close(snapshot=False)
            # Renamed first so a crash during the removal cannot leave a broken collection behind.
            doomed = self.root / f"{_DELETING_PREFIX}{name}-{uuid.uuid4().hex}"
            (self.root / name).rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            collections = list(self._collections.values())
            self._collections.clear()
            self._recent.clear()
            for collection in collections:
                collection.gone = True
        for collection in collections:
            with collection.guard:
                self._close_collection(collection)
        self._owner.close()  # releases the directory lock

    @contextmanager
    def _exclusive(self, name: str) -> Iterator[None]:
        with self._settled:
            while name in self._busy:
                self._settled.wait()
            self._busy.add(name)
        try:
            yield
        finally:
            with self._settled:
                self._busy.discard(name)
                self._settled.notify_all()

    @contextmanager
    def _using(self, stored: StoredCollection) -> Iterator[Collection]:
        """`stored` open for one call: it stays open until the call returns (a delete still ends it)."""
        with self._lock:
            if stored.gone:
                raise NotFound(f"collection '{stored.name}' does not exist (it was closed or deleted)")
            stored.pins += 1
        try:
            with _descriptors_reported(f"using collection '{stored.name}'"):
                yield self._opened(stored)
        finally:
            with self._lock:
                stored.pins -= 1
            # Collections that were all in use when another one opened close once free.
            self._close_least_recent(keep=self._max_open)

    def _opened(self, stored: StoredCollection) -> Collection:
        with stored.guard:
            if stored.gone:
                raise NotFound(f"collection '{stored.name}' does not exist (it was closed or deleted)")
            if stored.opened is not None:
                with self._lock:
                    if not stored.gone:  # a delete or close under way takes it out of the open ones
                        self._recent.move_to_end(stored.name)
                return stored.opened
            self._close_least_recent(keep=self._max_open - 1)
            try:
                collection = self._open_collection(stored.folder)
            except Exception as error:
                if damage_of(error) is None:
                    raise
                # Damaged while it was closed: kept aside as at start.
                reason = self._unavailable_reason(stored.name, error)
                with self._lock:
                    stored.gone = True
                    self._collections.pop(stored.name, None)
                    self._unavailable[stored.name] = reason
                raise DataLoss(reason, resource=Resource("collection", stored.name)) from error
            with self._lock:
                stored.opened = collection
                if not stored.gone:  # else the delete or close waiting for the guard closes it
                    self._recent[stored.name] = stored
            return collection

    def _close_least_recent(self, keep: int) -> None:
        """Closes the least recently used collections that no call uses until at most `keep` are open."""
        while True:
            with self._lock:
                if len(self._recent) <= keep:
                    return
                # Not blocking: a guard held elsewhere is a collection opening or closing, so not idle.
                victim = next(
                    (stored for stored in self._recent.values() if stored.pins == 0 and stored.guard.acquire(blocking=False)),
                    None,
                )
                if victim is None:
                    return  # every open collection is in use: they close as their calls end
                del self._recent[victim.name]
            try:
                self._close_collection(victim)
            finally:
                victim.guard.release()

    def _close_collection(self, stored: StoredCollection) -> None:
        """Closes `stored` if open, snapshotting its index; the caller holds its guard."""
        opened = stored.detach()
        if opened is None:
            return
        try:
            opened.close()
        except Exception:  # the database closed anyway; a failed snapshot only makes the next open replay
            log.exception("snapshot of collection %s failed on closing; its changes log covers the writes", stored.name)

    def _open_collection(self, folder: Path) -> Collection:
        with _descriptors_reported(f"opening collection '{folder.name}'"):
            return Collection(folder, serving_model=self.model, snapshot_every=self._snapshot_every)

    def _unavailable_reason(self, name: str, error: Exception) -> str:
        file = f"{self.root.name}/{name}/{DATABASE_FILE}"
        damage = damage_of(error)
        if damage is not None:
            log.error("collection %s is unavailable: %s is damaged (%s)", name, self.root / name / DATABASE_FILE, damage)
            what = f"its database file {file} is damaged ({damage})"
        else:
            log.exception("collection %s is unavailable: it could not be opened", name)
            what = f"it could not be opened from {file} (the server log says why)"
        return (
            f"collection '{name}' is unavailable: {what}; the other collections serve as usual. "
            f"Restore {file} from a backup, or delete the collection and index its documents again"
        )


class StoredCollection:
    """A collection of a CollectionStore, as callers hold it: each call opens it when the store has
    closed it. Its settings and document count stay known while it is closed."""

    def __init__(self, store: CollectionStore, folder: Path, info: CollectionInfo) -> None:
        self.name = folder.name
        self.folder = folder
        self._store = store
        self._closed_info = info  # documents: the count when it was last closed
        # The store's bookkeeping, changed under its lock: the open collection, the calls using it now
        # (it is never closed under them), and whether it was deleted or its store closed.
        self.opened: Collection | None = None
        self.pins = 0
        self.gone = False
        # Held while it opens or closes, so a reopen never overlaps the close that writes its snapshot.
        self.guard = threading.Lock()

    def info(self) -> CollectionInfo:
        return dataclasses.replace(self._closed_info, documents=self.count())

    def count(self) -> int:
        opened = self.opened
        return self._closed_info.documents if opened is None else opened.count()

    def upsert(self, documents: Sequence[Document], vectors: np.ndarray) -> UpsertResult:
        with self._store._using(self) as collection:
            return collection.upsert(documents, vectors)

    def get(self, ids: Sequence[str], include_vectors: bool = False, skip_missing: bool = False) -> list[Document]:
        with self._store._using(self) as collection:
            return collection.get(ids, include_vectors, skip_missing)

    def delete(self, ids: Sequence[str]) -> tuple[int, int]:
        with self._store._using(self) as collection:
            return collection.delete(ids)

    def search(self, vector: np.ndarray, k: int, filter: Mapping[str, Any] | None = None) -> list[ScoredKey]:
        with self._store._using(self) as collection:
            return collection.search(vector, k, filter)

    def lexical_search(self, text: str, k: int, filter: Filter | Mapping[str, Any] | None = None) -> list[ScoredKey]:
        with self._store._using(self) as collection:
            return collection.lexical_search(text, k, filter)

    def list_documents(
        self, after: str | None, limit: int, filter: Filter | None = None, include_vectors: bool = False
    ) -> list[Document]:
        with self._store._using(self) as collection:
            return collection.list_documents(after, limit, filter, include_vectors)

    def snapshot(self) -> None:
        with self._store._using(self) as collection:
            collection.snapshot()

    def detach(self) -> Collection | None:
        """Takes the open collection away (the caller holds the guard and closes it), keeping its count."""
        opened = self.opened
        if opened is not None:
            self._closed_info = dataclasses.replace(self._closed_info, documents=opened.count())
            self.opened = None
        return opened


def _descriptor_shortage(doing: str) -> str:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return (
        f"the server ran out of file descriptors while {doing} (its limit is {soft} open files, "
        f"and each open collection holds {FILES_PER_COLLECTION})"
    )


@contextmanager
def _descriptors_reported(doing: str) -> Iterator[None]:
    """Running out of file descriptors becomes ResourceExhausted saying so, instead of an internal error."""
    try:
        yield
    except Exception as error:
        if out_of_descriptors(error):
            raise ResourceExhausted(
                f"{_descriptor_shortage(doing)}; retry later. The operator can raise the limit (ulimit -n) "
                "or lower --max-open-collections"
            ) from error
        raise


def check_collection(root: Path, name: str) -> list[str]:
    """The problems `irgate collection check` reports for collection `name` under `root` (none: its
    store and index agree). Needs the directory's lock: the files must be at rest, not being written."""
    validate_collection_name(name)
    folder = Path(root) / name
    if not (folder / DATABASE_FILE).is_file():
        raise NotFound(f"collection '{name}' does not exist under {root}")
    owner = lock_data_dir(Path(root))
    try:
        try:
            collection = Collection(folder)
        except Exception as error:
            damage = damage_of(error)
            return [f"{DATABASE_FILE} is damaged ({damage})" if damage else f"cannot be opened ({error})"]
        try:
            return collection.verify()
        finally:
            collection.close(snapshot=False)
    finally:
        owner.close()
