"""Tiny random-weight models of real families, for tests that cannot download the checkpoints.

A tokenizer here is byte-level BPE: one token per byte unless `merges` join bytes into a word
(an answer token such as "yes" must be one token), with the family's special tokens at their
real ids, saved so transformers' AutoTokenizer loads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors


def byte_tokenizer(
    first_id: int,
    specials: dict[str, int],
    post_processor: processors.PostProcessor | None = None,
    words: tuple[str, ...] = (),
) -> Tokenizer:
    """Byte-level BPE, so a space more or less changes the ids; each of `words` is one token,
    numbered after the bytes (merged left to right)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocabulary = {character: first_id + i for i, character in enumerate(alphabet)}
    merges: list[tuple[str, str]] = []
    for word in words:
        for end in range(2, len(word) + 1):
            left, right = word[: end - 1], word[end - 1]
            if word[:end] not in vocabulary:
                merges.append((left, right))
                vocabulary[word[:end]] = first_id + len(vocabulary)
    tokenizer = Tokenizer(models.BPE(vocab=vocabulary | specials, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(specials))
    if post_processor is not None:
        tokenizer.post_processor = post_processor
    return tokenizer


def save_model(folder: Path, tokenizer: Tokenizer, tokenizer_config: dict[str, object], model: torch.nn.Module) -> Path:
    """A Hugging Face folder: tokenizer.json + tokenizer_config.json + the model's weights and config."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", **tokenizer_config}), encoding="utf-8")
    model.save_pretrained(folder)
    return folder
