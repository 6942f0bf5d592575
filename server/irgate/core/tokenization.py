"""Text -> token ids exactly as the model was trained, plus padding into batches.

Uses the Rust `tokenizers` library directly (not transformers): it loads in milliseconds, has
no torch dependency, and its batch encode runs in parallel without holding the GIL.
`encode_batch_fast` (tokenizers >= 0.21) skips character offsets, which serving never uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from irgate.models.manifest import EmbedderManifest, PaddingSide


# Texts longer than this many characters per token of the model's budget are cut before they are
# tokenised, so an oversized text costs milliseconds, not seconds (a 60 MB text took 23 s whole).
# Generous: English averages about 4 characters per token, and a WordPiece [UNK] stands for at most
# 100; only a text made mostly of whitespace or of 100-character words could lose tokens by the cut.
CHARACTERS_PER_TOKEN = 64


@dataclass(frozen=True)
class Encoded:
    """Token ids of one text after truncation, and how many it had before.

    cut: the text was longer than the character bound and was cut before tokenising, so
    original_length counts the tokens of the cut text only (the whole text had more)."""

    ids: list[int]
    original_length: int
    cut: bool = False

    @property
    def truncated(self) -> bool:
        return self.cut or self.original_length > len(self.ids)


class TextEncoder:
    """Tokeniser for one prepared model folder; thread-safe for concurrent `encode` calls."""

    def __init__(self, manifest: EmbedderManifest, folder: Path) -> None:
        self.manifest = manifest
        tokenizer = Tokenizer.from_file(str(Path(folder) / manifest.tokenizer_file))
        # tokenizer.json files often carry the trainer's own padding/truncation (MiniLM's pads
        # every text to 128); length policy is ours, so switch both off.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self._n_special = tokenizer.num_special_tokens_to_add(False)
        # Room for content tokens: the post-processor's specials (CLS/SEP, BOS) and, for
        # Promptriever-style models, the EOS appended by hand all count against max_tokens.
        self._n_extra = self._n_special + (1 if manifest.append_eos else 0)
        if manifest.max_tokens <= self._n_extra:
            raise ValueError(f"max_tokens {manifest.max_tokens} leaves no room beside {self._n_extra} special tokens")
        self.max_characters = manifest.max_tokens * CHARACTERS_PER_TOKEN

    @property
    def vocabulary_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of token ids in this model's vocabulary, its special tokens left out."""
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)

    def encode(self, texts: list[str]) -> list[Encoded]:
        """Tokenise already formatted texts (see irgate.core.prompts), truncating to max_tokens.

        Content is truncated before special tokens are added, so a truncated BERT text still
        ends in [SEP] and a decoder text still ends in EOS, as in training.
        """
        budget = self.manifest.max_tokens - self._n_extra
        eos = self.manifest.eos_token_id if self.manifest.append_eos else None
        cut = [len(text) > self.max_characters for text in texts]
        texts = [text[: self.max_characters] for text in texts]
        out: list[Encoded] = []
        for enc, was_cut in zip(self._tokenizer.encode_batch_fast(texts, add_special_tokens=False), cut):
            original = len(enc.ids) + self._n_extra
            if len(enc.ids) > budget:
                enc.truncate(budget)
            ids = self._tokenizer.post_process(enc).ids if self._n_special else list(enc.ids)
            if eos is not None:
                ids.append(eos)
            out.append(Encoded(ids=ids, original_length=original, cut=was_cut))
        return out


def pad_batch(encoded: Sequence[list[int]], pad_id: int, side: PaddingSide = "right") -> tuple[np.ndarray, np.ndarray]:
    """Pad id lists to the longest one: (input_ids, attention_mask), both int64 [batch, seq].

    Right padding keeps position ids of real tokens identical to an unpadded run. Left padding
    (the manifest's padding_side, where the family's reference code pads so) shifts them, which
    rotary positions do not see; the exported graph pools the last real token either way.
    """
    if not encoded:
        raise ValueError("pad_batch needs at least one sequence")
    width = max(len(ids) for ids in encoded)
    input_ids = np.full((len(encoded), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(encoded), width), dtype=np.int64)
    for row, ids in enumerate(encoded):
        real = slice(width - len(ids), width) if side == "left" else slice(0, len(ids))
        input_ids[row, real] = ids
        attention_mask[row, real] = 1
    return input_ids, attention_mask
