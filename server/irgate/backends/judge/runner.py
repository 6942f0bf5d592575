"""The judge engine's runner: one KV buffer with a slot per row, and the model forward over it.

Every attention layer's keys and values live in one tensor of [slots, kv_heads, columns + 1,
head_dim]: slot s holds one row, its column j the row's token j (positions are columns, so a row
needs no padding and no mask of its own history). A forward computes, for each row, a chunk of
tokens starting at its computed count: a prompt chunk, a decode token, or a rewritten tail. Their
keys and values are written straight into the row's columns (a rewrite simply overwrites what
follows the part it kept), and attention reads the buffer through an explicit 4D mask, so rows
at different positions share one forward. The last column of each slot is scratch: the padding
of a forward writes there and nothing reads it.

A forward over neighbouring slots attends to a view of the buffer (no copy; slots in between
that are not in the forward run a pad token into their scratch column); over scattered slots,
the rows' columns are gathered first (prefill, where the copy is small beside the compute).

Stored prefixes are copies of a slot's first columns (the judge's constant head, a request's
shared query and instruction), written into other slots as they are admitted.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch
from transformers.cache_utils import Cache


class _SlotCache(Cache):
    """The view of the buffer one forward sees: `update` writes the chunk's keys and values into
    the rows' columns and returns what attention reads (columns [0, width) of the rows)."""

    def __init__(self, runner: SlotRunner, slots: torch.Tensor, columns: torch.Tensor, rows: slice | torch.Tensor, width: int) -> None:
        super().__init__(layers=[])
        self._runner = runner
        self._slots = slots  # [rows, 1]: each input row's slot
        self._columns = columns  # [rows, width of the input]: where each input token is written
        self._rows = rows  # the buffer rows attention reads: a slice (a view) or an index (a gather)
        self._width = width

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self._runner.keys[layer_idx], self._runner.values[layer_idx]
        keys[self._slots, :, self._columns] = key_states.transpose(1, 2).to(keys.dtype)
        values[self._slots, :, self._columns] = value_states.transpose(1, 2).to(values.dtype)
        if isinstance(self._rows, slice):
            return keys[self._rows, :, : self._width], values[self._rows, :, : self._width]
        return keys[:, :, : self._width].index_select(0, self._rows), values[:, :, : self._width].index_select(0, self._rows)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # positions are passed explicitly


class SlotRunner:
    """Owns the model's KV buffer; `forward` runs one step's chunks."""

    def __init__(self, model: Any, device: torch.device, pad_id: int, score_ids: Sequence[int]) -> None:
        self.model = model
        self.device = device
        self.pad_id = pad_id
        self._score_ids = torch.tensor(list(score_ids), device=device)
        config = model.config
        self._layers = config.num_hidden_layers
        self._kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        self._head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self._dtype = next(model.parameters()).dtype
        self._cache_argument = "cache" if "cache" in _parameters(model.forward) else "past_key_values"
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._stored: dict[Hashable, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}

    @property
    def shape(self) -> tuple[int, int]:
        """(slots, columns) the buffer holds (its scratch column not counted)."""
        return (self.keys[0].shape[0], self.keys[0].shape[2] - 1) if self.keys else (0, 0)

    def keys_per_token(self) -> int:
        """How many attended keys cost as much as one token through the weights (for the scheduler)."""
        params = sum(parameter.numel() for parameter in self.model.parameters())
        heads = self.model.config.num_attention_heads
        return max(1, (2 * params) // (4 * self._layers * heads * self._head_dim))

    def reserve(self, slots: int, columns: int) -> None:
        """Makes the buffer hold `slots` x `columns`, keeping what it holds; (0, 0) frees it."""
        if slots == 0:
            self.keys, self.values = [], []
            return
        held_slots, held_columns = self.shape
        if slots <= held_slots and columns <= held_columns:
            return
        # Columns grow by half at least (a long prefill reallocates a few times, not every
        # chunk), in whole blocks of 64.
        slots = max(slots, held_slots)
        columns = max(columns, held_columns + held_columns // 2) if columns > held_columns else held_columns
        columns = -(-columns // 64) * 64

        def grown(old: torch.Tensor | None) -> torch.Tensor:
            # Zeroed: a row's attention spans the widest row's columns, masked, and a masked
            # column must still hold a finite number (0 x NaN is NaN).
            new = torch.zeros((slots, self._kv_heads, columns + 1, self._head_dim), dtype=self._dtype, device=self.device)
            if old is not None:
                new[: old.shape[0], :, :held_columns] = old[:, :, :held_columns]
            return new

        old_keys, old_values = self.keys or [None] * self._layers, self.values or [None] * self._layers
        self.keys = [grown(old) for old in old_keys]
        self.values = [grown(old) for old in old_values]

    def store(self, key: Hashable, slot: int, length: int) -> None:
        """Keeps a copy of the slot's first `length` columns under `key`."""
        self._stored[key] = ([k[slot, :, :length].clone() for k in self.keys], [v[slot, :, :length].clone() for v in self.values])

    def restore(self, key: Hashable, slot: int, length: int) -> None:
        """Writes the first `length` columns stored under `key` into the slot."""
        keys, values = self._stored[key]
        for buffer, stored in zip(self.keys, keys, strict=True):
            buffer[slot, :, :length] = stored[:, :length]
        for buffer, stored in zip(self.values, values, strict=True):
            buffer[slot, :, :length] = stored[:, :length]

    def drop(self, key: Hashable) -> None:
        self._stored.pop(key, None)

    def forward(self, rows: Sequence[tuple[int, Sequence[int], int]], full_logits: Sequence[bool]) -> tuple[list[int], list[list[float]], dict[int, np.ndarray]]:
        """Each row (slot, ids, start) computes `ids` at positions start, start + 1, ...; returns
        each row's greedy next token, its score logits, and its whole logits row where asked."""
        slots = [slot for slot, _, _ in rows]
        lo, hi = min(slots), max(slots) + 1
        # Neighbouring slots run as a view (rows in between pad); others gather their columns.
        view = 2 * (hi - lo) <= 3 * len(rows)
        order = list(range(lo, hi)) if view else slots
        chunk = {slot: (ids, start) for slot, ids, start in rows}
        width = max(len(ids) for ids, _ in chunk.values())
        scratch = self.keys[0].shape[2] - 1
        input_ids = torch.full((len(order), width), self.pad_id, dtype=torch.long)
        positions = torch.zeros((len(order), width), dtype=torch.long)
        columns = torch.full((len(order), width), scratch, dtype=torch.long)
        ends = torch.ones(len(order), dtype=torch.long)  # each input row attends columns [0, end)
        for k, slot in enumerate(order):
            ids, start = chunk.get(slot, ((), 0))
            # Left padded: every row's last input column is its last token, whose logits are kept.
            pad = width - len(ids)
            input_ids[k, pad:] = torch.tensor(list(ids), dtype=torch.long)
            positions[k, :pad] = start
            positions[k, pad:] = torch.arange(start, start + len(ids))
            columns[k, pad:] = positions[k, pad:]
            ends[k] = start + len(ids) if ids else 1
        attended = int(ends.max())
        # Query i of a row sees the columns up to its own position; pads see the row's start.
        allowed = torch.arange(attended)[None, None, :] <= positions[:, :, None]
        mask = torch.zeros(allowed.shape, dtype=self._dtype).masked_fill_(~allowed, torch.finfo(self._dtype).min)
        index = torch.tensor(order, dtype=torch.long, device=self.device)
        cache = _SlotCache(self, index[:, None], columns.to(self.device), slice(lo, hi) if view else index, attended)
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask[:, None].to(self.device),
            position_ids=positions.to(self.device),
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_argument: cache},
        )
        logits = out.logits[:, -1]
        if view:
            logits = logits[torch.tensor([slot - lo for slot in slots], device=self.device)]
        # One transfer for the chosen tokens and the score logits (ids are exact as floats).
        picked = torch.cat([logits.argmax(-1, keepdim=True).float(), logits[:, self._score_ids].float()], dim=1).tolist()
        wanted = [k for k, want in enumerate(full_logits) if want]
        full = dict(zip(wanted, logits[wanted].float().cpu().numpy(), strict=True)) if wanted else {}
        return [int(row[0]) for row in picked], [row[1:] for row in picked], full


def _parameters(function: Any) -> Any:
    import inspect

    return inspect.signature(function).parameters
