"""A KV cache whose layers append into spare columns instead of concatenating.

transformers' DynamicLayer grows by torch.cat, which copies every cached column at each decode
step: with 16 rows at 1000 cached columns that copy was a third of a step on a 2-core CPU. Here
each layer keeps buffers with spare columns and hands out views of their used part, so a step
writes only its own columns; a buffer is copied only when it is full (it then grows by half).
The engine may assign a layer's keys and values (it selects rows and drops columns): anything
other than the view last handed out is taken as the layer's new content.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class GrowingLayer(DynamicLayer):
    """A DynamicLayer backed by buffers with spare columns."""

    _handed: torch.Tensor | None = None  # the keys view last returned by update
    _key_buffer: torch.Tensor
    _value_buffer: torch.Tensor

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        used = self.get_seq_length()
        end = used + key_states.shape[-2]
        if self.keys is not self._handed or end > self._key_buffer.shape[-2]:
            capacity = end + max(16, end // 2)
            self._key_buffer = _buffer(key_states, capacity, self.keys, used)
            self._value_buffer = _buffer(value_states, capacity, self.values, used)
        self._key_buffer[:, :, used:end] = key_states
        self._value_buffer[:, :, used:end] = value_states
        self.keys, self.values = self._key_buffer[:, :, :end], self._value_buffer[:, :, :end]
        self._handed = self.keys
        return self.keys, self.values


def _buffer(states: torch.Tensor, capacity: int, content: torch.Tensor, used: int) -> torch.Tensor:
    rows, heads, _, dim = states.shape
    buffer = states.new_empty((rows, heads, capacity, dim))
    if used:
        buffer[:, :, :used] = content
    return buffer


def growing_cache(config: Any) -> DynamicCache:
    """A DynamicCache for `config` whose full-attention layers are GrowingLayers."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
