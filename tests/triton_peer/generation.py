"""Greedy generation with the `tensorrt_llm` model's tensor contract, in plain transformers.

Used by the MLServer runtime (the independent KServe v2 peer) and by the in-process fake
Triton stream of the streaming test: both answer exactly what TensorRT-LLM would answer for a
greedy request with exclude_input_in_output and return_generation_logits:
output_ids [1, 1, n] int32, sequence_length [1, 1] int32, generation_logits [1, 1, n, vocab]
float32, where generation stops after `request_output_len` tokens or at `end_id` (which is
returned, as HF generate does).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class GreedyGenerator:
    """One causal LM in fp32 on the CPU; one sequence at a time, KV cache kept between steps."""

    def __init__(self, folder: str, threads: int = 1) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self._torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    def steps(self, input_ids: list[int], output_len: int, end_id: int | None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (token, logits that chose it) per generated token."""
        from transformers import DynamicCache

        torch = self._torch
        with torch.inference_mode():
            cache = DynamicCache(config=self.model.config)
            chunk = torch.tensor([input_ids], dtype=torch.long)
            for _ in range(output_len):
                out = self.model(input_ids=chunk, cache=cache, use_cache=True, logits_to_keep=1)
                logits = out.logits[0, -1].float()
                token = int(logits.argmax())
                yield token, logits.numpy().astype(np.float32, copy=True)
                if end_id is not None and token == end_id:
                    return
                chunk = torch.tensor([[token]], dtype=torch.long)

    def generate(self, input_ids: list[int], output_len: int, end_id: int | None) -> tuple[list[int], np.ndarray]:
        tokens: list[int] = []
        rows: list[np.ndarray] = []
        for token, logits in self.steps(input_ids, output_len, end_id):
            tokens.append(token)
            rows.append(logits)
        vocab = self.model.config.vocab_size
        return tokens, (np.stack(rows) if rows else np.zeros((0, vocab), dtype=np.float32))
