"""The embedder on Triton: the same ONNX graph `irgate prepare` exports, served by Triton's
onnxruntime backend (model_repository/embedder), fed token tensors by the gateway.

The gateway tokenises with the local prepared folder (manifest.json + tokenizer.json) and
sends right-padded int64 ids and mask; Triton returns the pooled float32 vectors. Triton's
dynamic batcher only merges requests whose inputs have the same shape, so the sequence length
is padded UP to a bucket (16, 32, ... capped at the manifest's max_tokens): padding is masked,
so the vectors do not change, and concurrent requests of similar lengths become one GPU batch.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from irgate.backends.triton import RetryPolicy, TritonClient, parse_address
from irgate.errors import FailedPrecondition, InvalidArgument
from irgate.models.manifest import EmbedderManifest


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a Triton model as a request carries it: the batch dimension first."""

    name: str
    datatype: str  # KServe v2 name: INT64, FP32, BOOL, ...
    dims: tuple[int | str, ...]  # -1: variable; a str names a manifest field filled per model


# The tensor contract of model_repository/embedder/config.pbtxt (and of the graph that
# irgate.models.prepare exports): tests compare the config with these.
INPUT_IDS = TensorSpec("input_ids", "INT64", (-1, -1))
ATTENTION_MASK = TensorSpec("attention_mask", "INT64", (-1, -1))
EMBEDDING = TensorSpec("embedding", "FP32", (-1, "dimension"))
INPUTS = (INPUT_IDS, ATTENTION_MASK)
OUTPUTS = (EMBEDDING,)
# config.pbtxt max_batch_size: larger gateway batches are split into requests of at most this.
MAX_BATCH_SIZE = 64
# Sequence lengths are padded up to one of these (then to multiples of the last), capped at
# the manifest's max_tokens, so requests share shapes and Triton can batch them together.
LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512)


def bucket_length(length: int, max_tokens: int) -> int:
    """The padded length for a batch whose longest text has `length` tokens."""
    if length <= 0:
        raise ValueError("length must be positive")
    for bucket in LENGTH_BUCKETS:
        if length <= bucket:
            return max(length, min(bucket, max_tokens))
    step = LENGTH_BUCKETS[-1]
    return max(length, min(-(-length // step) * step, max_tokens))


def pad_to_bucket(input_ids: np.ndarray, attention_mask: np.ndarray, pad_id: int, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad [batch, seq] ids (with pad_id) and mask (with 0) to the bucket of seq."""
    batch, width = input_ids.shape
    target = bucket_length(width, max_tokens)
    if target == width:
        return np.ascontiguousarray(input_ids, dtype=np.int64), np.ascontiguousarray(attention_mask, dtype=np.int64)
    ids = np.full((batch, target), pad_id, dtype=np.int64)
    mask = np.zeros((batch, target), dtype=np.int64)
    ids[:, :width] = input_ids
    mask[:, :width] = attention_mask
    return ids, mask


class TritonEmbedder:
    """EmbedderBackend over Triton: `TritonEmbedder("triton://127.0.0.1:8001/embedder", Path("models/embedder"))`."""

    # Batches the gateway keeps in flight at once (core.batching): Triton's dynamic batcher
    # merges those of one length bucket, and their network hops overlap.
    concurrent_batches = 4

    def __init__(self, address: str, folder: Path, retry: RetryPolicy | None = None, timeout: float | None = 60.0) -> None:
        folder = Path(folder).resolve()
        self.manifest = EmbedderManifest.load(folder)
        self.folder = folder
        self._target = parse_address(address)
        self.address = str(self._target)
        self._client = TritonClient(self._target, retry=retry, timeout=timeout)

    async def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape or input_ids.shape[0] == 0:
            raise InvalidArgument(f"embed needs matching non-empty [batch, seq] ids and mask, got {input_ids.shape} and {attention_mask.shape}")
        if input_ids.shape[1] > self.manifest.max_tokens:
            raise InvalidArgument(f"{input_ids.shape[1]} tokens exceed the model's {self.manifest.max_tokens}")
        ids, mask = pad_to_bucket(input_ids, attention_mask, self.manifest.pad_token_id, self.manifest.max_tokens)
        chunks = [slice(start, start + MAX_BATCH_SIZE) for start in range(0, ids.shape[0], MAX_BATCH_SIZE)]
        parts = await asyncio.gather(*(self._embed(ids[part], mask[part]) for part in chunks))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def _embed(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import tritonclient.grpc as grpcclient

        inputs = []
        for spec, array in ((INPUT_IDS, ids), (ATTENTION_MASK, mask)):
            tensor = grpcclient.InferInput(spec.name, list(array.shape), spec.datatype)
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            inputs.append(tensor)
        result = await self._client.infer(inputs, [EMBEDDING.name], what="embed")
        vectors = result.as_numpy(EMBEDDING.name)
        expected = (ids.shape[0], self.manifest.dimension)
        if vectors is None or tuple(vectors.shape) != expected:
            got = None if vectors is None else tuple(vectors.shape)
            raise FailedPrecondition(
                f"{self.address} returned {EMBEDDING.name} of shape {got}, expected {expected}: "
                f"the Triton model is not the one prepared in {self.folder}"
            )
        return vectors.astype(np.float32, copy=False)

    async def ready(self) -> bool:
        return await self._client.ready()

    async def close(self) -> None:
        await self._client.close()
