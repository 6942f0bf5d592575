"""The set of collections under a data directory: one folder per collection, named after it."""

from __future__ import annotations

import fcntl
import logging

import re
import shutil
import threading
import uuid
from pathlib import Path

from irgate.errors import AlreadyExists, InvalidArgument, NotFound
from irgate.index.collection import DATABASE_FILE, Collection, CollectionInfo

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# Work folders start with "." so they can never be taken for a collection (names start with a letter or digit).
_STAGING_PREFIX = ".creating-"
_DELETING_PREFIX = ".deleting-"
_LOCK_FILE = ".lock"
log = logging.getLogger("irgate.index")


def validate_collection_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"collection name {name!r} is invalid; use 1 to 64 characters of letters, digits, '_' and '-', "
            "starting with a letter or digit"
        )


class CollectionStore:
    """Opens every collection under `root` at start and keeps them open until close()."""

    def __init__(self, root: Path, dimension: int, model: str, snapshot_every: int = 50_000) -> None:
        """dimension and model describe the embedder serving now; new collections are created with them."""
        self.root = Path(root)
        self.dimension = dimension
        self.model = model
        self._snapshot_every = snapshot_every
        self._lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)
        # Two servers on one directory would each keep their own index of the same documents and
        # overwrite each other's snapshots: the second one is refused. The OS drops the lock when
        # the process dies, so a crash never leaves a stale lock behind.
        self._owner = (self.root / _LOCK_FILE).open("a")
        try:
            fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._owner.close()
            raise AlreadyExists(f"{self.root} is in use by another irgate process; give each server its own --data-dir") from None
        # Leftovers of a create or delete interrupted by a crash: neither is a collection.
        for folder in self.root.iterdir():
            if folder.name.startswith((_STAGING_PREFIX, _DELETING_PREFIX)):
                shutil.rmtree(folder, ignore_errors=True)
        self._collections: dict[str, Collection] = {}
        for folder in sorted(self.root.iterdir()):
            if _NAME.fullmatch(folder.name) and (folder / DATABASE_FILE).is_file():
                self._collections[folder.name] = self._open(folder)

    def create(self, name: str, precision: str = "f16") -> CollectionInfo:
        validate_collection_name(name)
        with self._lock:
            if name in self._collections:
                raise AlreadyExists(f"collection '{name}' already exists")
            # Built aside and renamed into place, so a crash never leaves a half-made collection.
            staging = self.root / f"{_STAGING_PREFIX}{name}-{uuid.uuid4().hex}"
            try:
                Collection.create(staging, self.dimension, self.model, precision).close()
                staging.rename(self.root / name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            collection = self._open(self.root / name)
            self._collections[name] = collection
        return collection.info()

    def get(self, name: str) -> Collection:
        validate_collection_name(name)
        with self._lock:
            collection = self._collections.get(name)
        if collection is None:
            raise NotFound(f"collection '{name}' does not exist")
        return collection

    def list(self) -> list[CollectionInfo]:
        with self._lock:
            collections = sorted(self._collections.items())
        return [collection.info() for _, collection in collections]

    def delete(self, name: str) -> None:
        validate_collection_name(name)
        with self._lock:
            collection = self._collections.pop(name, None)
        if collection is None:
            raise NotFound(f"collection '{name}' does not exist")
        # Outside the store's lock: waiting for this collection's calls in flight must not hold up
        # the others. Later calls through old references raise NotFound.
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

    def _open(self, folder: Path) -> Collection:
        return Collection(folder, serving_model=self.model, snapshot_every=self._snapshot_every)
