"""The set of collections under a data directory: one folder per collection, named after it."""

from __future__ import annotations

import fcntl
import logging
import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from irgate.errors import AlreadyExists, DataDirInUse, DataLoss, FailedPrecondition, NotFound
from irgate.identifiers import COLLECTION_NAME, check_collection_name
from irgate.index.collection import DATABASE_FILE, Collection, damage_of
from irgate.index.records import CollectionInfo

# Work folders start with "." so they can never be taken for a collection (names start with a letter or digit).
_STAGING_PREFIX = ".creating-"
_DELETING_PREFIX = ".deleting-"
_LOCK_FILE = ".lock"
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
    """Opens every collection under `root` at start and keeps them open until close().

    A collection that cannot be opened (say, its database file is damaged) is kept aside as
    unavailable: its calls answer DATA_LOSS naming it and its file, and the others serve as usual.
    """

    def __init__(self, root: Path, dimension: int, model: str, snapshot_every: int = 50_000) -> None:
        """dimension and model describe the embedder serving now; new collections are created with them."""
        self.root = Path(root)
        self.dimension = dimension
        self.model = model
        self._snapshot_every = snapshot_every
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
        self._collections: dict[str, Collection] = {}
        self._unavailable: dict[str, str] = {}  # name -> why, as clients are told
        for folder in sorted(self.root.iterdir()):
            if COLLECTION_NAME.fullmatch(folder.name) and (folder / DATABASE_FILE).is_file():
                try:
                    self._collections[folder.name] = self._open(folder)
                except Exception as error:  # one damaged collection must not take the others down
                    self._unavailable[folder.name] = self._unavailable_reason(folder.name, error)

    @property
    def location(self) -> str:
        return f"under {self.root}"

    @property
    def unavailable(self) -> dict[str, str]:
        """Collections that could not be opened, with the reason."""
        with self._lock:
            return dict(self._unavailable)

    def create(self, name: str, precision: str = "f16") -> CollectionInfo:
        validate_collection_name(name)
        with self._exclusive(name):
            with self._lock:
                if name in self._collections:
                    raise AlreadyExists(f"collection '{name}' already exists")
                if name in self._unavailable:
                    raise AlreadyExists(f"collection '{name}' already exists; {self._unavailable[name]}")
            if (self.root / name).exists():
                raise FailedPrecondition(
                    f"the data directory holds a folder '{name}' that is not a collection; move it away first"
                )
            # Built aside and renamed into place, so a crash never leaves a half-made collection.
            staging = self.root / f"{_STAGING_PREFIX}{name}-{uuid.uuid4().hex}"
            try:
                Collection.create(staging, self.dimension, self.model, precision).close()
                staging.rename(self.root / name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            collection = self._open(self.root / name)
            with self._lock:
                self._collections[name] = collection
        return collection.info()

    def get(self, name: str) -> Collection:
        validate_collection_name(name)
        with self._lock:
            collection = self._collections.get(name)
            reason = self._unavailable.get(name)
        if reason is not None:
            raise DataLoss(reason)
        if collection is None:
            raise NotFound(f"collection '{name}' does not exist")
        return collection

    def list(self) -> list[CollectionInfo]:
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
            if collection is None and not damaged:
                raise NotFound(f"collection '{name}' does not exist")
            # Outside the store's lock: waiting for this collection's calls in flight must not hold up
            # the others. Later calls through old references raise NotFound.
            if collection is not None:
                collection.close(snapshot=False)
            # Renamed first so a crash during the removal cannot leave a broken collection behind.
            doomed = self.root / f"{_DELETING_PREFIX}{name}-{uuid.uuid4().hex}"
            (self.root / name).rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            collections = list(self._collections.values())
            self._collections.clear()
        for collection in collections:
            try:
                collection.close()
            except Exception:  # one failed snapshot must not leave the other databases open
                log.exception("closing collection %s failed; its changes log will be replayed at start", collection.name)
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

    def _open(self, folder: Path) -> Collection:
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
