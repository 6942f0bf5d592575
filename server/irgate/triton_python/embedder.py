"""The CPU flavour's `embedder`: the exported ONNX graph under ONNX Runtime, in Triton's python backend.

Same tensors as the onnxruntime-backend model of the GPU flavour (irgate.backends.triton_embedder):
int64 input_ids + attention_mask [batch, seq] -> float32 embedding [batch, dim]. Triton's
dynamic batcher hands `execute` several requests at once; requests of one sequence length
(the gateway pads to length buckets) run as one ONNX Runtime batch, as the onnxruntime backend
would run them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from irgate.backends.triton_embedder import ATTENTION_MASK, EMBEDDING, INPUT_IDS
from irgate.triton_python.tensors import error_response, from_numpy, input_array


class Model:
    def __init__(self, args: dict[str, str], config: dict[str, Any], parameters: dict[str, str]) -> None:
        import onnxruntime as ort

        onnx = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        options = ort.SessionOptions()
        # One session runs one batch at a time; it may use every core for that batch.
        options.intra_op_num_threads = int(parameters.get("threads") or 0) or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(onnx), sess_options=options, providers=["CPUExecutionProvider"])

    def execute(self, requests: list[pb_utils.InferenceRequest]) -> list[pb_utils.InferenceResponse]:
        responses: list[pb_utils.InferenceResponse | None] = [None] * len(requests)
        by_length: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
        for position, request in enumerate(requests):
            ids, mask = input_array(request, INPUT_IDS.name), input_array(request, ATTENTION_MASK.name)
            if ids is None or mask is None or ids.ndim != 2 or ids.shape != mask.shape:
                responses[position] = error_response(
                    f"{INPUT_IDS.name} and {ATTENTION_MASK.name} must be INT64 tensors of one [batch, seq] shape")
                continue
            by_length.setdefault(ids.shape[1], []).append((position, ids, mask))
        for group in by_length.values():
            ids = np.concatenate([item[1] for item in group]).astype(np.int64, copy=False)
            mask = np.concatenate([item[2] for item in group]).astype(np.int64, copy=False)
            (vectors,) = self._session.run([EMBEDDING.name], {INPUT_IDS.name: ids, ATTENTION_MASK.name: mask})
            start = 0
            for position, rows, _ in group:
                part = vectors[start : start + len(rows)].astype(np.float32, copy=False)
                start += len(rows)
                responses[position] = pb_utils.InferenceResponse([from_numpy(EMBEDDING.name, part)])
        return responses

    def finalize(self) -> None:
        self._session = None
