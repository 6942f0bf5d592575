"""Embedder backends: token tensors in, pooled vectors out.

The pipeline tokenises and normalises; a backend only runs the model, so the in-process ONNX
Runtime path and a Triton path (same ONNX graph, same inputs) are interchangeable.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import onnxruntime as ort

from irgate.errors import Unavailable
from irgate.models.manifest import EmbedderManifest

log = logging.getLogger("irgate.backends")


@runtime_checkable
class EmbedderBackend(Protocol):
    """One embedding model behind one call."""

    manifest: EmbedderManifest
    # Where the model lives, for Info and logs: "onnx:/abs/path" or "triton://host:port/model".
    address: str
    # The local prepared folder (manifest.json, tokenizer.json): the gateway tokenises.
    folder: Path

    async def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """int64 [batch, seq] padded ids and mask (either side) -> float32 [batch, dimension], pooled, NOT normalised."""
        ...

    async def ready(self) -> bool:
        """True when a call would be served now (health checks)."""
        ...

    async def close(self) -> None:
        """Release the model; later calls raise Unavailable."""
        ...


def _providers() -> list[str]:
    # CUDA first when this onnxruntime build has it; CPU stays as the fallback for unsupported ops.
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxEmbedder:
    """In-process ONNX Runtime embedder for a folder made by irgate.models.prepare."""

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        folder = Path(folder).resolve()
        self.manifest = EmbedderManifest.load(folder)
        self.folder = folder
        self.address = f"onnx:{folder}"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ORT's default of one thread per logical core oversubscribes a machine that also runs
        # the tokeniser, the index and the judge; cap to what the caller grants.
        cores = os.cpu_count() or 1
        options.intra_op_num_threads = min(threads or cores, cores)
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(folder / self.manifest.onnx_file), sess_options=options, providers=_providers()
        )
        self._output = self._session.get_outputs()[0].name
        # The startup log says where the model really runs: CUDA only when onnxruntime-gpu found a GPU.
        log.info("ONNX Runtime %s runs %s with %s (%d threads)", ort.__version__, self.manifest.name,
                 " > ".join(self._session.get_providers()), options.intra_op_num_threads)
        # One worker: ORT already parallelises inside a run, and a single thread serialises runs
        # so concurrent batches queue instead of fighting for cores. session.run releases the GIL.
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx-embed")

    def _run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        (vectors,) = self._session.run(
            [self._output],
            {
                "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
                "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
            },
        )
        return vectors.astype(np.float32, copy=False)

    async def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if self._executor is None:
            raise Unavailable(f"embedder {self.manifest.name} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, input_ids, attention_mask)

    async def ready(self) -> bool:
        return self._executor is not None

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            # Let an in-flight run finish without blocking the loop.
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)
