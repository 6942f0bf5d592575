"""Exported ONNX embedders must give the vectors the original PyTorch model gives.

Each reference runs plain transformers on the SAME token ids the server's TextEncoder
produces, so these tests pin export + pooling; tokenisation is pinned by the id checks.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from irgate.backends.embedder import EmbedderBackend, OnnxEmbedder
from irgate.core.prompts import format_document, format_query
from irgate.core.tokenization import TextEncoder, pad_batch
from irgate.models.manifest import EmbedderManifest
from irgate.models.prepare import export_embedder, prepare_default_embedder
from irgate.models.sources import minilm_checkpoint
from irgate.local_server import LocalServer
from irgate_client import Client, Document, Query

TOLERANCE = 1e-4
TEXTS = [
    "what is a cat",
    "Cats are small carnivorous mammals that have been domesticated for thousands of years; "
    "they hunt vermin and are valued for companionship.",
    "ok",
    "The mitochondria is the powerhouse of the cell, producing ATP through oxidative phosphorylation.",
]


def _normalise(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _onnx_vectors(folder: Path, ids: list[list[int]]) -> np.ndarray:
    embedder = OnnxEmbedder(folder, threads=2)
    input_ids, mask = pad_batch(ids, embedder.manifest.pad_token_id)

    async def run() -> np.ndarray:
        assert await embedder.ready()
        vectors = await embedder.embed(input_ids, mask)
        await embedder.close()
        assert not await embedder.ready()
        return vectors

    vectors = asyncio.run(run())
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(ids), embedder.manifest.dimension)
    return vectors


def _torch_hidden(model: torch.nn.Module, ids: list[list[int]], pad_id: int, token_types: bool) -> tuple[torch.Tensor, torch.Tensor]:
    input_ids, mask = (torch.from_numpy(a) for a in pad_batch(ids, pad_id))
    kwargs = {"input_ids": input_ids, "attention_mask": mask}
    if token_types:
        kwargs["token_type_ids"] = torch.zeros_like(input_ids)
    with torch.no_grad():
        return model(**kwargs).last_hidden_state, mask


# --- all-MiniLM-L6-v2 (sentence-transformers preset, mean pooling) ---------------------


def test_minilm_manifest(minilm_folder: Path) -> None:
    manifest = EmbedderManifest.load(minilm_folder)
    assert (manifest.dimension, manifest.pooling, manifest.max_tokens) == (384, "mean", 256)
    assert manifest.normalize and manifest.prompt_style == "plain" and not manifest.append_eos
    assert manifest.pad_token_id == 0
    assert isinstance(OnnxEmbedder(minilm_folder), EmbedderBackend)


def test_prepare_default_embedder_is_idempotent(minilm_folder: Path) -> None:
    before = (minilm_folder / "model.onnx").stat().st_mtime_ns
    assert prepare_default_embedder(minilm_folder) == EmbedderManifest.load(minilm_folder)
    assert (minilm_folder / "model.onnx").stat().st_mtime_ns == before


def test_missing_manifest_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        EmbedderManifest.load(tmp_path)


def test_minilm_onnx_matches_transformers(minilm_folder: Path) -> None:
    from transformers import AutoModel

    manifest = EmbedderManifest.load(minilm_folder)
    ids = [e.ids for e in TextEncoder(manifest, minilm_folder).encode(TEXTS)]
    assert len({len(i) for i in ids}) == len(ids), "texts must differ in length to exercise padding"
    assert all(i[0] == 101 and i[-1] == 102 for i in ids), "BERT ids are [CLS] ... [SEP]"

    got = _normalise(_onnx_vectors(minilm_folder, ids))
    model = AutoModel.from_pretrained(minilm_checkpoint()).eval()
    hidden, mask = _torch_hidden(model, ids, manifest.pad_token_id, token_types=True)
    m = mask.unsqueeze(-1).float()
    want = _normalise(((hidden * m).sum(1) / m.sum(1)).numpy())
    assert np.abs(got - want).max() <= TOLERANCE


def test_minilm_matches_sentence_transformers(minilm_folder: Path) -> None:
    """End to end against the library MTEB used for the published numbers, truncation included."""
    st = pytest.importorskip("sentence_transformers")
    manifest = EmbedderManifest.load(minilm_folder)
    texts = [*TEXTS, "word " * 400]
    ids = [e.ids for e in TextEncoder(manifest, minilm_folder).encode(texts)]
    got = _normalise(_onnx_vectors(minilm_folder, ids))
    want = st.SentenceTransformer(str(minilm_checkpoint()), device="cpu").encode(texts, normalize_embeddings=True)
    assert np.abs(got - want).max() <= TOLERANCE


def test_minilm_truncation(minilm_folder: Path) -> None:
    manifest = EmbedderManifest.load(minilm_folder)
    short, long = TextEncoder(manifest, minilm_folder).encode(["a cat", "cat " * 600])
    assert not short.truncated and short.original_length == len(short.ids) == 4
    assert long.truncated and len(long.ids) == manifest.max_tokens
    assert long.original_length == 602
    assert long.ids[0] == 101 and long.ids[-1] == 102, "specials survive truncation"


def test_pad_batch_right_pads() -> None:
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert ids.dtype == mask.dtype == np.int64
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


# --- SmolLM2 decoder with a LoRA adapter (promptriever preset, EOS pooling) -------------


@pytest.fixture(scope="module")
def random_lora(smollm2_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A non-trivial adapter: init_lora_weights=False makes B non-zero, so merging changes outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    torch.manual_seed(0)
    base = AutoModel.from_pretrained(smollm2_hf)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    out = tmp_path_factory.mktemp("lora")
    get_peft_model(base, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def promptriever_folder(smollm2_hf: Path, random_lora: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smollm2-promptriever")
    export_embedder(smollm2_hf, out, preset="promptriever", lora=random_lora, name="smollm2-test", max_tokens=64)
    return out


def _eos_pooled(model: torch.nn.Module, ids: list[list[int]], pad_id: int) -> np.ndarray:
    hidden, mask = _torch_hidden(model, ids, pad_id, token_types=False)
    last = mask.sum(1) - 1
    return _normalise(hidden[torch.arange(len(ids)), last].numpy())


def test_promptriever_lora_export_matches_peft(smollm2_hf: Path, random_lora: Path, promptriever_folder: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModel

    manifest = EmbedderManifest.load(promptriever_folder)
    assert (manifest.pooling, manifest.prompt_style, manifest.append_eos) == ("eos", "promptriever", True)
    assert manifest.dimension == 576 and manifest.max_tokens == 64
    assert manifest.pad_token_id == manifest.eos_token_id == 2

    texts = [
        format_query(manifest, "what is a cat", "Think carefully about relevance"),
        format_document(manifest, "Cats", TEXTS[1]),
        format_document(manifest, "", "ok"),
        format_query(manifest, TEXTS[3], None),
    ]
    ids = [e.ids for e in TextEncoder(manifest, promptriever_folder).encode(texts)]
    assert all(i[-1] == manifest.eos_token_id for i in ids)
    assert len({len(i) for i in ids}) == len(ids)
    got = _normalise(_onnx_vectors(promptriever_folder, ids))

    base = AutoModel.from_pretrained(smollm2_hf).eval()
    without_lora = _eos_pooled(base, ids, manifest.pad_token_id)
    with_lora = _eos_pooled(PeftModel.from_pretrained(base, random_lora).eval(), ids, manifest.pad_token_id)
    assert np.abs(got - with_lora).max() <= TOLERANCE
    assert np.abs(got - without_lora).max() > 100 * TOLERANCE, "the LoRA adapter was not merged"
    # Batch of one, no padding: the traced graph must not have frozen the dummy's mask shape.
    alone = _normalise(_onnx_vectors(promptriever_folder, ids[1:2]))
    assert np.abs(alone[0] - got[1]).max() <= TOLERANCE


def test_promptriever_truncation_keeps_eos(promptriever_folder: Path) -> None:
    manifest = EmbedderManifest.load(promptriever_folder)
    (long,) = TextEncoder(manifest, promptriever_folder).encode([format_document(manifest, "", "cat " * 300)])
    assert long.truncated and long.original_length > manifest.max_tokens
    assert len(long.ids) == manifest.max_tokens and long.ids[-1] == manifest.eos_token_id


def test_served_promptriever_formats_as_trained(smollm2_hf: Path, random_lora: Path, promptriever_folder: Path,
                                                tmp_path: Path) -> None:
    """Through a real server: the query and passage strings are exactly Promptriever's (REFERENCE §1)."""
    from peft import PeftModel
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf)
    eos = tokenizer.eos_token_id
    trained = ["query:  what is a cat? Think carefully about relevance", "passage:  Cats Cats are small mammals."]
    ids = [tokenizer(text)["input_ids"] + [eos] for text in trained]
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(smollm2_hf), random_lora).eval()
    expected = _eos_pooled(model, ids, eos)

    args = ["--embedder", f"onnx:{promptriever_folder}", "--judge", "none"]
    with LocalServer(tmp_path, args) as server, Client(server.address) as client:
        assert client.info().supports_instructions
        served = client.embed([Query("what is a cat", instruction="Think carefully about relevance"),
                               Document(id="", title="Cats", text="Cats are small mammals.")])
    got = np.asarray([item.values for item in served], dtype=np.float32)
    assert [item.tokens for item in served] == [len(i) for i in ids]
    assert np.abs(got - expected).max() <= TOLERANCE
