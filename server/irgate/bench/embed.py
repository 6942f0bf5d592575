"""Embedding throughput, side by side in one run: irgate over gRPC vs the raw engine vs the usual pick.

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

from irgate.core.tokenization import TextEncoder, pad_batch
from irgate.local_server import LocalServer
from irgate.models.manifest import EmbedderManifest
from irgate.models.sources import minilm_checkpoint
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


async def _through_irgate(address: str, texts: list[str]) -> np.ndarray:
    batches = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
    limit = asyncio.Semaphore(CLIENTS)
    async with AsyncClient(address, timeout=600) as client:

        async def one(batch: list[str]) -> list[list[float]]:
            async with limit:
                return [item.values for item in await client.embed(batch)]

        results = await asyncio.gather(*(one(batch) for batch in batches))
    return np.asarray([vector for batch in results for vector in batch], dtype=np.float32)


def _raw_onnx(folder: Path, texts: list[str]) -> np.ndarray:
    import onnxruntime as ort

    manifest = EmbedderManifest.load(folder)
    session = ort.InferenceSession(str(folder / manifest.onnx_file), providers=["CPUExecutionProvider"])
    encoded = TextEncoder(manifest, folder).encode(texts)
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i].ids))
    vectors = np.empty((len(texts), manifest.dimension), dtype=np.float32)
    for start in range(0, len(order), RAW_BATCH):
        rows = order[start : start + RAW_BATCH]
        input_ids, attention_mask = pad_batch([encoded[i].ids for i in rows], manifest.pad_token_id)
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


def run_embed_benchmark(folder: Path, texts: list[str]) -> dict[str, Any]:
    """Documents/s of each side on the same texts, their ratios, and how far the vectors differ."""
    folder = Path(folder)
    _raw_onnx(folder, texts[:BATCH])  # warm-up: load and first-run allocation stay out of the timing
    raw_s, raw = _timed(lambda: _raw_onnx(folder, texts))
    st_s, reference = _timed(lambda: _sentence_transformers(texts))
    with tempfile.TemporaryDirectory(prefix="irgate-bench-") as data_dir:
        with LocalServer(Path(data_dir), ["--embedder", f"onnx:{folder}", "--judge", "none"]) as server:
            asyncio.run(_through_irgate(server.address, texts[:BATCH]))
            served_s, served = _timed(lambda: asyncio.run(_through_irgate(server.address, texts)))
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
