"""MLServer custom runtimes that serve irgate's Triton tensor contracts (tests only).

Loaded by MLServer 1.7.1 in its own virtualenv (see peer.py): this module must not import
irgate. `parameters.uri` in each model-settings.json names what to load.
- OnnxEmbedderRuntime: the ONNX graph `irgate prepare` exports, run by onnxruntime, exactly as
  Triton's onnxruntime backend would (input_ids/attention_mask INT64 -> embedding FP32).
- TrtllmGreedyRuntime: the request/response tensors of TensorRT-LLM's `tensorrt_llm` model for
  greedy generation, computed with transformers (generation.py).
"""

from __future__ import annotations

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


def _inputs(payload: InferenceRequest) -> dict[str, np.ndarray]:
    return {item.name: NumpyCodec.decode_input(item) for item in payload.inputs}


def _scalar(inputs: dict[str, np.ndarray], name: str, default):
    value = inputs.get(name)
    return default if value is None else value.reshape(-1)[0].item()


class OnnxEmbedderRuntime(MLModel):
    async def load(self) -> bool:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = ort.InferenceSession(self.settings.parameters.uri, sess_options=options,
                                             providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inputs = _inputs(payload)
        feed = {name: inputs[name].astype(np.int64) for name in ("input_ids", "attention_mask")}
        (vectors,) = self._session.run(["embedding"], feed)
        return InferenceResponse(model_name=self.name,
                                 outputs=[NumpyCodec.encode_output("embedding", vectors.astype(np.float32))])


class TrtllmGreedyRuntime(MLModel):
    async def load(self) -> bool:
        from generation import GreedyGenerator

        self._generator = GreedyGenerator(self.settings.parameters.uri)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inputs = _inputs(payload)
        if _scalar(inputs, "stop", False):
            return InferenceResponse(model_name=self.name, outputs=[])
        length = int(_scalar(inputs, "input_lengths", 0))
        ids = [int(token) for token in inputs["input_ids"].reshape(-1)[:length]]
        end_id = _scalar(inputs, "end_id", None)
        tokens, logits = self._generator.generate(ids, int(_scalar(inputs, "request_output_len", 1)),
                                                  None if end_id is None else int(end_id))
        if not _scalar(inputs, "exclude_input_in_output", False):
            raise ValueError("this peer only implements exclude_input_in_output=true")
        outputs = [
            NumpyCodec.encode_output("output_ids", np.asarray([[tokens]], dtype=np.int32).reshape(1, 1, len(tokens))),
            NumpyCodec.encode_output("sequence_length", np.asarray([[len(tokens)]], dtype=np.int32)),
        ]
        if _scalar(inputs, "return_generation_logits", False):
            outputs.append(NumpyCodec.encode_output("generation_logits", logits.reshape(1, 1, *logits.shape)))
        return InferenceResponse(model_name=self.name, outputs=outputs)
