"""The embedder manifest: what a prepared model folder was trained to expect.

A model served with another prompt, pooling or length limit than it was trained with is
silently worse, so every setting that shapes a vector lives here, beside the weights, and the
server reads it instead of guessing (for Promptriever: EOS pooling with an explicit EOS, the
"query: " / "passage: " prefixes and the instruction after the query; for Qwen3-Embedding and
e5-mistral-instruct: the "Instruct: {task}\nQuery:{query}" template and its default task).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

MANIFEST_FILE = "manifest.json"

Pooling = Literal["mean", "cls", "eos"]
PromptStyle = Literal["plain", "promptriever", "instruct"]
PaddingSide = Literal["right", "left"]

M = TypeVar("M", bound="ManifestFile")


class ManifestFile:
    """JSON round trip of a frozen dataclass manifest kept as `manifest.json` beside the weights."""

    # How to make a missing manifest, for the error message.
    made_by: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[M], data: dict[str, Any]) -> M:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
        return cls(**data)

    def save(self, folder: Path) -> Path:
        """Write `folder/manifest.json` (created if needed) and return its path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / MANIFEST_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls: type[M], folder: Path) -> M:
        """Read `folder/manifest.json`; FileNotFoundError says how to make one."""
        path = Path(folder) / MANIFEST_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: prepare the folder first ({cls.made_by})")
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


_POOLINGS = ("mean", "cls", "eos")
_PROMPT_STYLES = ("plain", "promptriever", "instruct")
_PADDING_SIDES = ("right", "left")


@dataclass(frozen=True)
class EmbedderManifest(ManifestFile):
    """Serving contract of one exported embedder (ONNX graph + tokenizer.json in the same folder)."""

    made_by: ClassVar[str] = "irgate prepare, or irgate.models.prepare.export_embedder"

    name: str
    dimension: int
    pooling: Pooling
    normalize: bool
    # Total tokens per text, special tokens included; longer texts are truncated or refused.
    max_tokens: int
    prompt_style: PromptStyle
    query_prefix: str
    passage_prefix: str
    # Decoder embedders (Promptriever/RepLLaMA) were trained with an explicit EOS id appended
    # after truncation; their pooled vector is the hidden state at that EOS.
    append_eos: bool
    eos_token_id: int | None
    pad_token_id: int
    onnx_file: str = "model.onnx"
    tokenizer_file: str = "tokenizer.json"
    # Free text: where the weights came from (checkpoint path, LoRA adapter), for humans.
    source: str = ""
    # The `irgate prepare --preset` this folder was made with ("" without one), for Info.
    preset: str = ""
    # prompt_style "instruct": the query text with {instruction} and {query} slots, and the task
    # that fills {instruction} when a query comes without one (these models were trained with a
    # task on every query, so a bare query would be read as a document).
    query_template: str = ""
    default_instruction: str = ""
    # Side the gateway pads a batch on, as the family's reference code does. The graph pools the
    # last real token wherever the padding is, so this changes nothing but floating-point noise.
    padding_side: PaddingSide = "right"

    def __post_init__(self) -> None:
        # Fail at prepare/load time, not with wrong vectors at serve time.
        if self.pooling not in _POOLINGS:
            raise ValueError(f"pooling must be one of {_POOLINGS}, got {self.pooling!r}")
        if self.prompt_style not in _PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {_PROMPT_STYLES}, got {self.prompt_style!r}")
        if self.dimension <= 0 or self.max_tokens <= 1:
            raise ValueError(f"dimension and max_tokens must be positive, got {self.dimension}, {self.max_tokens}")
        if self.append_eos and self.eos_token_id is None:
            raise ValueError("append_eos needs eos_token_id")
        if self.padding_side not in _PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {_PADDING_SIDES}, got {self.padding_side!r}")
        if self.prompt_style == "instruct":
            slots = ("{instruction}", "{query}")
            if not all(slot in self.query_template for slot in slots) or not self.default_instruction:
                raise ValueError(f"prompt_style 'instruct' needs a query_template with {slots} and a default_instruction, "
                                 f"got {self.query_template!r} and {self.default_instruction!r}")

    @property
    def supports_instructions(self) -> bool:
        """Whether the model was trained to follow a query instruction.

        Plain-style models still accept one (MTEB appends it to the query text), but it is only
        text to them; callers may use this to warn or to document the difference.
        """
        return self.prompt_style in ("promptriever", "instruct")

    @property
    def instruction_format(self) -> str:
        """How a query and its instruction become the model's text, with {query} and {instruction} slots."""
        if self.prompt_style == "instruct":
            return self.query_template
        if self.prompt_style == "promptriever":
            return f"{self.query_prefix} {{query}}? {{instruction}}"
        return f"{self.query_prefix}{{query}} {{instruction}}"
