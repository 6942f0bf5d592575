"""Shared pytest fixtures: real models from packaged weights, and a real server process."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

import filelock
import pytest

from irgate.local_server import LocalServer
from irgate.backends.judge import rank1
from irgate.processes import free_port
from irgate_client import Client
from support import DIM, MODEL, REPO

if TYPE_CHECKING:
    from irgate.core.index import Index, IndexedCollection

# Slow, deterministic conversions are cached here (git-ignored) so reruns are fast; exports under
# test are made fresh per session so a stale cache can never hide an exporter regression.
TEST_MODEL_CACHE = REPO / ".cache" / "test-models"


def cache_lock() -> filelock.FileLock:
    """Held while a fixture fills TEST_MODEL_CACHE: pytest-xdist's workers share it, and a second
    worker must find a finished folder, not one being written."""
    TEST_MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    return filelock.FileLock(TEST_MODEL_CACHE / ".lock")


@pytest.fixture(scope="session", autouse=True)
def eval_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`irgate eval` keeps finished queries in a cache; tests keep theirs apart from the user's, so a
    rerun of the suite measures again instead of reading an earlier session's results."""
    folder = tmp_path_factory.mktemp("eval-cache")
    os.environ["IRGATE_EVAL_CACHE"] = str(folder)
    return folder


# ---------------------------------------------------------------------------
# model fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def minilm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 exported to ONNX the way `make serve` prepares it (about 5 s)."""
    from irgate.models.prepare import prepare_default_embedder

    out = tmp_path_factory.mktemp("minilm")
    prepare_default_embedder(out)
    return out


@pytest.fixture(scope="session")
def smollm2_hf() -> Path:
    """SmolLM2-135M-Instruct dequantised from its GGUF into a Hugging Face folder (cached)."""
    from irgate.models.sources import gguf_to_hf, smollm2_gguf

    with cache_lock():
        return gguf_to_hf(smollm2_gguf(), TEST_MODEL_CACHE / "smollm2-135m-hf")


# One worked example teaches SmolLM2 to close its thought and answer, so the answered path runs
# on real model output (with the plain Rank1 prompt it only ever ends by EOS or budget).
FEW_SHOT_TEMPLATE = (
    "Determine if the following passage is relevant to the query. Answer only with 'true' or 'false'.\n"
    "Query: cats\nPassage: Cats are small felines.\n<think>The passage is about cats.</think> true\n\n"
    "Determine if the following passage is relevant to the query. Answer only with 'true' or 'false'.\n"
    "Query: rain\nPassage: Stocks fell today.\n<think>The passage is about stocks.</think> false\n\n"
    + rank1.PROMPT_TEMPLATE
)


@pytest.fixture(scope="session")
def judge_folder(smollm2_hf: Path) -> Path:
    """SmolLM2 prepared as a Rank1-style judge from its HF folder (reasoning cap 8192, unlike the
    256 of the packaged default that `make serve` prepares)."""
    from irgate.models.judge import prepare_judge

    out = TEST_MODEL_CACHE / "judge-smollm2"
    with cache_lock():
        prepare_judge(smollm2_hf, out)
    return out


@pytest.fixture(scope="session")
def few_shot_folder(smollm2_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same judge with FEW_SHOT_TEMPLATE, so that it answers by itself."""
    from irgate.models.judge import prepare_judge

    out = tmp_path_factory.mktemp("judge-few-shot")
    dataclasses.replace(prepare_judge(smollm2_hf, out), prompt_template=FEW_SHOT_TEMPLATE).save(out)
    return out


@pytest.fixture(scope="session")
def local_judge(judge_folder: Path):
    from irgate.backends.judge.local import LocalJudge

    backend = LocalJudge(judge_folder, threads=2)
    yield backend
    asyncio.run(backend.close())


# ---------------------------------------------------------------------------
# index fixtures: each engine, the local one under a temporary folder and Milvus in `milvus`
# ---------------------------------------------------------------------------


def open_index(request: pytest.FixtureRequest, root: Path, dimension: int = DIM, model: str = MODEL) -> Index:
    """The engine the test is parametrised with: `local` under root, or `milvus` (all in one server)."""
    # Imported here, not with the fixtures: usearch loaded before torch slows torch's ONNX export
    # (minilm_folder) from seconds to many minutes.
    from irgate.index.store import CollectionStore

    if request.param == "local":
        return CollectionStore(root, dimension=dimension, model=model)
    from irgate.index.milvus import MilvusIndex

    return MilvusIndex(request.getfixturevalue("milvus").address, dimension, model)


@pytest.fixture(params=["local", "milvus"])
def engine(request: pytest.FixtureRequest, tmp_path: Path):
    """Opens indexes of one engine over one place; the Milvus server is emptied after the test."""
    opened: list[Index] = []

    def open_one(dimension: int = DIM, model: str = MODEL) -> Index:
        opened.append(open_index(request, tmp_path / "collections", dimension, model))
        return opened[-1]

    yield open_one
    if request.param == "milvus":
        for info in opened[-1].list():
            opened[-1].delete(info.name)
    for index in opened:
        index.close()


@pytest.fixture
def store(engine) -> Index:
    return engine()


@pytest.fixture
def collection(store: Index) -> IndexedCollection:
    store.create("books")
    return store.get("books")


# ---------------------------------------------------------------------------
# server fixtures: a real `irgate serve` process on a free loopback port
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(minilm_folder: Path, tmp_path_factory: pytest.TempPathFactory, metrics_port: int):
    data_dir = tmp_path_factory.mktemp("server-data")
    with LocalServer(data_dir, ["--embedder", f"onnx:{minilm_folder}", "--judge", "none", "--metrics-port", str(metrics_port),
                                "--max-batch-size", "8", "--max-k", "100"]) as running:
        yield running


@pytest.fixture(scope="session")
def milvus(tmp_path_factory: pytest.TempPathFactory):
    """A real `milvus-lite server` process on a free loopback port, shared by every Milvus-backed test."""
    pytest.importorskip("pymilvus", reason="the [milvus] extra is not installed (make test installs it)")
    from irgate.index.milvus_lite import MilvusLiteServer

    with MilvusLiteServer(tmp_path_factory.mktemp("milvus"), free_port()) as running:
        yield running


@pytest.fixture(scope="module")
def milvus_server(milvus, minilm_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    """The `server` fixture's twin on the Milvus engine (the session's milvus-lite server)."""
    with LocalServer(tmp_path_factory.mktemp("milvus-gateway"),
                     ["--embedder", f"onnx:{minilm_folder}", "--index", milvus.index_setting, "--judge", "none",
                      "--max-batch-size", "8", "--max-k", "100"]) as running:
        yield running


@pytest.fixture(params=["local", "milvus"])
def engine_client(request: pytest.FixtureRequest):
    """A client of `server` or `milvus_server`: a test taking it runs once on each index engine."""
    running = request.getfixturevalue("server" if request.param == "local" else "milvus_server")
    with Client(running.address, timeout=120) as connected:
        yield connected


@pytest.fixture
def client(server: LocalServer):
    with Client(server.address, timeout=60) as connected:
        yield connected
