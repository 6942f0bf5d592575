"""Embedding throughput, side by side in one run: irgate over gRPC vs the raw engine vs the usual pick
(and, with --triton or --http, the same server through Triton or over its HTTP front).

- irgate: a real `irgate serve` process, texts sent by concurrent clients through the public API;
- raw ONNX Runtime: the same exported graph and tokenizer called directly in this process, in
  length-sorted batches (the best the engine alone does, with no server around it);
- sentence-transformers: what most users would run instead, on the same checkpoint.
Vectors are compared first: a speed-up with different vectors would be no speed-up.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from irgate.core.tokenization import TextEncoder, pad_batch
from irgate.local_server import LocalServer
from irgate.processes import free_port
from irgate.models.manifest import EmbedderManifest
from irgate.models.sources import minilm_checkpoint
from irgate.progress import ProgressReport
from irgate_client import AsyncClient

BATCH = 32  # texts per client request
RAW_BATCH = 8  # texts per raw engine call: about the server's default 2048-token budget, the CPU's best
CLIENTS = 4

_WORDS = (
    "protein expression cells patients tumour risk gene receptor levels treatment clinical study "
    "increased reduced mice signalling pathway response associated cancer mortality infection cohort"
).split()


def synthetic_texts(count: int, words: int = 180, seed: int = 0) -> list[str]:
    """Passages of a few hundred tokens, like SciFact abstracts, with varied lengths."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(_WORDS, size=int(rng.integers(words // 2, words * 2)))) for _ in range(count)]


def _raw_onnx(folder: Path, texts: list[str]) -> np.ndarray:
    import onnxruntime as ort

    manifest = EmbedderManifest.load(folder)
    session = ort.InferenceSession(str(folder / manifest.onnx_file), providers=["CPUExecutionProvider"])
    encoded = TextEncoder(manifest, folder).encode(texts)
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i].ids))
    vectors = np.empty((len(texts), manifest.dimension), dtype=np.float32)
    for start in range(0, len(order), RAW_BATCH):
        rows = order[start : start + RAW_BATCH]
        input_ids, attention_mask = pad_batch([encoded[i].ids for i in rows], manifest.pad_token_id, manifest.padding_side)
        (pooled,) = session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})
        vectors[rows] = pooled
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _sentence_transformers(texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_checkpoint()), device="cpu")
    return model.encode(texts, batch_size=BATCH, normalize_embeddings=True, convert_to_numpy=True)


def _timed(run: Any) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    vectors = run()
    return time.perf_counter() - started, vectors


def run_embed_benchmark(folder: Path, texts: list[str], console: Console | None = None) -> dict[str, Any]:
    """Documents/s of each side on the same texts, their ratios, and how far the vectors differ;
    with `console`, each step and the time left are shown on it."""
    folder = Path(folder)
    with ProgressReport(console or Console(quiet=True), "bench embed", 3, "steps") as progress:
        progress.describe(f"bench embed: raw ONNX Runtime, {len(texts)} texts")
        _raw_onnx(folder, texts[:BATCH])  # warm-up: load and first-run allocation stay out of the timing
        raw_s, raw = _timed(lambda: _raw_onnx(folder, texts))
        progress.advance()
        progress.describe(f"bench embed: sentence-transformers, {len(texts)} texts")
        st_s, reference = _timed(lambda: _sentence_transformers(texts))
        progress.advance()
        progress.describe(f"bench embed: irgate over gRPC, {len(texts)} texts")
        with tempfile.TemporaryDirectory(prefix="irgate-bench-") as data_dir:
            with LocalServer(Path(data_dir), ["--embedder", f"onnx:{folder}", "--judge", "none"]) as server:
                asyncio.run(_embed_rpcs(server.address, texts[:BATCH], CLIENTS))
                served_s, served = asyncio.run(_embed_rpcs(server.address, texts, CLIENTS))
        progress.advance()
        progress.describe("bench embed")
    rate = {name: len(texts) / seconds for name, seconds in (("irgate", served_s), ("onnx", raw_s), ("st", st_s))}
    return {
        "documents": len(texts),
        "irgate_docs_per_s": round(rate["irgate"], 1),
        "raw_onnxruntime_docs_per_s": round(rate["onnx"], 1),
        "sentence_transformers_docs_per_s": round(rate["st"], 1),
        "irgate_vs_raw_onnxruntime": round(rate["irgate"] / rate["onnx"], 2),
        "irgate_vs_sentence_transformers": round(rate["irgate"] / rate["st"], 2),
        "max_abs_diff_vs_sentence_transformers": float(np.abs(served - reference).max()),
    }


# ---- the Triton path: the same Embed RPC with the model behind a local tritonserver -------------

TRITON_CLIENTS = (1, 16)
ROUNDS = 3  # sides alternate round by round (the median counts), so both see the same machine load
LATENCY_CALLS = 40  # one-text Embed calls per side, alternating, for the p50 of the extra hop


async def _embed_rpcs(address: str, texts: list[str], clients: int) -> tuple[float, np.ndarray]:
    """Embed `texts` in calls of BATCH texts from `clients` concurrent clients: (seconds, vectors)."""
    batches = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
    limit = asyncio.Semaphore(clients)
    async with AsyncClient(address, timeout=600) as client:

        async def one(part: list[str]) -> list[list[float]]:
            async with limit:
                return [item.values for item in await client.embed(part)]

        started = time.perf_counter()
        results = await asyncio.gather(*(one(part) for part in batches))
        seconds = time.perf_counter() - started
    return seconds, np.asarray([vector for part in results for vector in part], dtype=np.float32)


def _rates(documents: int, seconds: dict[tuple[str, int], list[float]], base: str, other: str, ratio: str) -> dict[str, float]:
    """Each side's documents/s (median over rounds) at each client count, and other/base as `ratio`."""
    report: dict[str, float] = {}
    for clients in sorted({count for _, count in seconds}):
        rate = {side: documents / float(np.median(seconds[side, clients])) for side in (base, other)}
        for side in (base, other):
            report[f"{side}_docs_per_s_{clients}_clients"] = round(rate[side], 1)
        report[f"{ratio}_{clients}_clients"] = round(rate[other] / rate[base], 2)
    return report


async def _one_text_latencies(addresses: dict[str, str], texts: list[str]) -> dict[str, list[float]]:
    """Per-call seconds of one-text Embed calls, the sides taking turns call by call."""
    latencies: dict[str, list[float]] = {side: [] for side in addresses}
    clients = {side: AsyncClient(address, timeout=600) for side, address in addresses.items()}
    try:
        for text in texts:
            for side, client in clients.items():
                started = time.perf_counter()
                await client.embed([text])
                latencies[side].append(time.perf_counter() - started)
    finally:
        for client in clients.values():
            await client.close()
    return latencies


def run_triton_embed_benchmark(folder: Path, texts: list[str], console: Console | None = None) -> dict[str, Any]:
    """Embed RPC throughput of `irgate serve` with the embedder behind a local tritonserver (CPU
    flavour: the same ONNX graph under ONNX Runtime in Triton's python backend) against the
    in-process embedder, at 1 and 16 clients; and the p50 latency that the extra hop adds to a
    one-text call. With `console`, each step and the time left are shown on it."""
    from irgate.models.triton import prepare_triton_repository
    from irgate.models.tritonserver import TritonServer

    folder = Path(folder).resolve()
    sides = ("in_process", "triton")
    report: dict[str, Any] = {"documents": len(texts), "texts_per_call": BATCH}
    steps = 2 + ROUNDS * len(TRITON_CLIENTS) * len(sides) + 1
    with ProgressReport(console or Console(quiet=True), "bench embed --triton", steps, "steps") as progress, \
            tempfile.TemporaryDirectory(prefix="irgate-bench-triton-") as work:
        progress.describe("bench embed --triton: starting tritonserver and two gateways")
        repository = Path(work) / "triton"
        prepare_triton_repository(folder, repository, flavour="cpu")
        with (
            TritonServer(repository) as triton,
            LocalServer(Path(work) / "in-process", ["--embedder", f"onnx:{folder}", "--judge", "none"]) as in_process,
            LocalServer(Path(work) / "through-triton", ["--embedder", f"triton://{triton.address}/embedder",
                                                        "--embedder-folder", str(folder), "--judge", "none"]) as through_triton,
        ):
            addresses = {"in_process": in_process.address, "triton": through_triton.address}
            vectors: dict[str, np.ndarray] = {}
            seconds: dict[tuple[str, int], list[float]] = {}
            progress.advance()
            progress.describe("bench embed --triton: warming up")
            for side in sides:
                asyncio.run(_embed_rpcs(addresses[side], texts[: 2 * BATCH], 2))  # warm-up
            progress.advance()
            for round_ in range(1, ROUNDS + 1):
                for clients in TRITON_CLIENTS:
                    for side in sides:
                        progress.describe(f"bench embed --triton: {side}, {clients} clients, round {round_} of {ROUNDS}")
                        took, vectors[side] = asyncio.run(_embed_rpcs(addresses[side], texts, clients))
                        seconds.setdefault((side, clients), []).append(took)
                        progress.advance()
            progress.describe(f"bench embed --triton: {LATENCY_CALLS} one-text calls per side")
            latencies = asyncio.run(_one_text_latencies(addresses, texts[:LATENCY_CALLS]))
            progress.advance()
            progress.describe("bench embed --triton")
    report.update(_rates(len(texts), seconds, "in_process", "triton", "triton_vs_in_process"))
    p50 = {side: 1000 * float(np.median(latencies[side])) for side in sides}
    for side in sides:
        report[f"{side}_one_text_p50_ms"] = round(p50[side], 2)
    report["triton_hop_p50_ms"] = round(p50["triton"] - p50["in_process"], 2)
    report["max_abs_diff_triton_vs_in_process"] = float(np.abs(vectors["triton"] - vectors["in_process"]).max())
    return report


# ---- the HTTP path: the OpenAI embeddings route against the Embed RPC of the same server -------

HTTP_CLIENTS = (1, 16)


async def _openai_route(base_url: str, texts: list[str], clients: int) -> tuple[float, np.ndarray]:
    """Embed `texts` through POST /v1/embeddings with the official openai SDK, as its users call it
    (base64 vectors, the SDK's default), in calls of BATCH texts from `clients` concurrent clients."""
    import openai

    batches = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
    limit = asyncio.Semaphore(clients)
    async with openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600) as client:

        async def one(part: list[str]) -> list[list[float]]:
            async with limit:
                answer = await client.embeddings.create(model="bench", input=part)
                return [item.embedding for item in answer.data]

        started = time.perf_counter()
        results = await asyncio.gather(*(one(part) for part in batches))
        seconds = time.perf_counter() - started
    return seconds, np.asarray([vector for part in results for vector in part], dtype=np.float32)


def run_http_embed_benchmark(folder: Path, texts: list[str], console: Console | None = None) -> dict[str, Any]:
    """Throughput of the OpenAI embeddings route over the gRPC Embed RPC of one server, on the same
    texts at 1 and 16 clients, the sides taking turns round by round. With `console`, each step and the
    time left are shown on it."""
    folder = Path(folder).resolve()
    sides = ("grpc", "openai_http")
    report: dict[str, Any] = {"documents": len(texts), "texts_per_call": BATCH}
    steps = 1 + ROUNDS * len(HTTP_CLIENTS) * len(sides)
    with ProgressReport(console or Console(quiet=True), "bench embed --http", steps, "steps") as progress, \
            tempfile.TemporaryDirectory(prefix="irgate-bench-http-") as work:
        progress.describe("bench embed --http: starting a server and warming up")
        port = free_port()
        with LocalServer(Path(work), ["--embedder", f"onnx:{folder}", "--judge", "none", "--http-port", str(port)]) as server:
            base_url = f"http://127.0.0.1:{port}/v1"
            run = {"grpc": lambda count, part: asyncio.run(_embed_rpcs(server.address, part, count)),
                   "openai_http": lambda count, part: asyncio.run(_openai_route(base_url, part, count))}
            for side in sides:
                run[side](2, texts[: 2 * BATCH])
            progress.advance()
            vectors: dict[str, np.ndarray] = {}
            seconds: dict[tuple[str, int], list[float]] = {}
            for round_ in range(1, ROUNDS + 1):
                for clients in HTTP_CLIENTS:
                    for side in sides:
                        progress.describe(f"bench embed --http: {side}, {clients} clients, round {round_} of {ROUNDS}")
                        took, vectors[side] = run[side](clients, texts)
                        seconds.setdefault((side, clients), []).append(took)
                        progress.advance()
            progress.describe("bench embed --http")
    report.update(_rates(len(texts), seconds, "grpc", "openai_http", "http_vs_grpc"))
    report["max_abs_diff_http_vs_grpc"] = float(np.abs(vectors["openai_http"] - vectors["grpc"]).max())
    return report
