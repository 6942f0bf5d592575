"""Tensors between Triton's python backend and numpy, through DLPack only.

The stub's numpy paths (`Tensor.as_numpy()`, `pb_utils.Tensor(name, ndarray)`) are compiled
against numpy 1.x and corrupt data under numpy 2 ("output tensor shape does not match size of
output"); DLPack is ABI-stable, so it is the only path used here. Outputs go through torch's
DLPack export: the stub renames the capsules it consumes in a way numpy 2's capsule does not
expect, and numpy then frees the memory while the response still points at it (responses
read other arrays' bytes); torch's capsule keeps its tensor alive until the stub lets go.
"""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

_KDLCPU = (1, 0)


class _Exported:
    """What numpy.from_dlpack takes: an object with __dlpack__ (the stub's Tensor has only to_dlpack)."""

    def __init__(self, tensor: pb_utils.Tensor) -> None:
        self._tensor = tensor

    def __dlpack__(self, **_: object) -> object:
        return self._tensor.to_dlpack()

    def __dlpack_device__(self) -> tuple[int, int]:
        return _KDLCPU


def to_numpy(tensor: pb_utils.Tensor) -> np.ndarray:
    """A CPU input tensor as a numpy array (a copy: the request's memory goes with the request)."""
    return np.array(np.from_dlpack(_Exported(tensor)))


def from_numpy(name: str, array: np.ndarray) -> pb_utils.Tensor:
    import torch
    from torch.utils.dlpack import to_dlpack

    return pb_utils.Tensor.from_dlpack(name, to_dlpack(torch.from_numpy(np.ascontiguousarray(array))))


def input_array(request: pb_utils.InferenceRequest, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else to_numpy(tensor)


def error_response(message: str) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
