"""Instruction-following embedder families, served as their own reference code embeds.

None of these checkpoints can be downloaded here, so each family is a tiny random-weight model of
its architecture (a transformers Qwen3Config or MistralConfig: two layers, 32 hidden units) with a
byte-level tokenizer that carries the family's special tokens at their real ids. Each is prepared
by `irgate prepare --preset`, served by a real server, and compared with a reference computed here
as the family's model card computes it (a plain transformers forward, its last_token_pool and
F.normalize): the exact prompt strings, the token ids, and the vectors within 1e-4 in fp32.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, processors

from irgate.backends.embedder import OnnxEmbedder
from irgate.core.prompts import format_document, format_query
from irgate.core.tokenization import TextEncoder, pad_batch
from irgate.errors import InvalidArgument
from irgate.local_server import LocalServer
from irgate.models.manifest import EmbedderManifest
from irgate.models.prepare import export_embedder
from irgate_client import Client, Document, Query
from tiny_models import byte_tokenizer, save_model

TOLERANCE = 1e-4
# The task both model cards use in their example (MS MARCO web search), and one of the user's own.
WEB_SEARCH_TASK = "Given a web search query, retrieve relevant passages that answer the query"
CLAIM_TASK = "Given a claim, find documents that refute the claim"
QUERIES = [("how much protein should a female eat", None), ("summit define", CLAIM_TASK)]
DOCUMENTS = [
    ("", "As a general guideline, the CDC's average requirement of protein for women ages 19 to 70 is 46 grams per day."),
    ("Summit", "Definition of summit for English Language Learners: the highest point of a mountain."),
]
# Qwen3's real ids (REFERENCE of the family: <|endoftext|> ends every text and pads; eos_token is <|im_end|>).
QWEN3_END, QWEN3_IM_END = 151643, 151645
QWEN3_VOCABULARY = 151669
# Mistral's real ids.
MISTRAL_UNK, MISTRAL_BOS, MISTRAL_EOS = 0, 1, 2


# --- the tiny families ------------------------------------------------------------------------


def build_tiny_qwen3(folder: Path) -> Path:
    """Qwen3 architecture; like Qwen3-Embedding's tokenizer.json, the tokenizer appends <|endoftext|> itself."""
    from transformers import Qwen3Config, Qwen3Model

    specials = {"<|endoftext|>": QWEN3_END, "<|im_start|>": 151644, "<|im_end|>": QWEN3_IM_END}
    appends_end = processors.TemplateProcessing(
        single="$A <|endoftext|>", pair="$A $B <|endoftext|>", special_tokens=[("<|endoftext|>", QWEN3_END)])
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=QWEN3_VOCABULARY, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=32768,
                         eos_token_id=QWEN3_END, pad_token_id=QWEN3_END)
    return save_model(folder, byte_tokenizer(0, specials, appends_end),
                 {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "padding_side": "left"}, Qwen3Model(config))


def build_tiny_mistral(folder: Path) -> Path:
    """Mistral architecture (e5-mistral-7b-instruct's); the tokenizer adds BOS, never EOS."""
    from transformers import MistralConfig, MistralModel

    specials = {"<unk>": MISTRAL_UNK, "<s>": MISTRAL_BOS, "</s>": MISTRAL_EOS}
    adds_bos = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", MISTRAL_BOS)])
    torch.manual_seed(0)
    config = MistralConfig(vocab_size=32000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=32768,
                           sliding_window=4096, bos_token_id=MISTRAL_BOS, eos_token_id=MISTRAL_EOS)
    return save_model(folder, byte_tokenizer(3, specials, adds_bos),
                 {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"}, MistralModel(config))


def irgate_prepare(source: Path, preset: str, out: Path) -> Path:
    """`irgate prepare` as a user runs it; returns the prepared embedder folder."""
    subprocess.run([sys.executable, "-m", "irgate", "prepare", "--embedder-source", str(source), "--preset", preset,
                    "--out", str(out), "--no-judge"], check=True, capture_output=True, text=True, timeout=600)
    return out / "embedder"


@pytest.fixture(scope="module")
def qwen3_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="module")
def mistral_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_mistral(tmp_path_factory.mktemp("tiny-mistral"))


@pytest.fixture(scope="module")
def qwen3_folder(qwen3_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return irgate_prepare(qwen3_source, "qwen3-embedding", tmp_path_factory.mktemp("qwen3-models"))


@pytest.fixture(scope="module")
def e5_folder(mistral_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return irgate_prepare(mistral_source, "e5-mistral-instruct", tmp_path_factory.mktemp("e5-models"))


def _serve(folder: Path, tmp_path_factory: pytest.TempPathFactory):
    with LocalServer(tmp_path_factory.mktemp("data"), ["--embedder", f"onnx:{folder}", "--judge", "none"]) as running:
        yield running


@pytest.fixture(scope="module")
def qwen3_server(qwen3_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    yield from _serve(qwen3_folder, tmp_path_factory)


@pytest.fixture(scope="module")
def e5_server(e5_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    yield from _serve(e5_folder, tmp_path_factory)


# --- the references, as the model cards write them ---------------------------------------------


def last_token_pool(last_hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Both model cards' pooling, verbatim."""
    left_padding = attention_mask[:, -1].sum() == attention_mask.shape[0]
    if left_padding:
        return last_hidden_states[:, -1]
    sequence_lengths = attention_mask.sum(dim=1) - 1
    batch_size = last_hidden_states.shape[0]
    return last_hidden_states[torch.arange(batch_size, device=last_hidden_states.device), sequence_lengths]


def qwen3_instruct(task: str, query: str) -> str:
    return f"Instruct: {task}\nQuery:{query}"


def e5_instruct(task: str, query: str) -> str:
    return f"Instruct: {task}\nQuery: {query}"


def qwen3_batch(source: Path, texts: list[str], max_length: int = 8192) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, padding_side="left")
    return tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")


def e5_batch(source: Path, texts: list[str], max_length: int = 4096) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    batch = tokenizer(texts, max_length=max_length - 1, return_attention_mask=False, padding=False, truncation=True)
    batch["input_ids"] = [input_ids + [tokenizer.eos_token_id] for input_ids in batch["input_ids"]]
    return tokenizer.pad(batch, padding=True, return_attention_mask=True, return_tensors="pt")


def reference_vectors(source: Path, batch: dict[str, torch.Tensor]) -> np.ndarray:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(source).eval()
    with torch.no_grad():
        outputs = model(**batch)
    return F.normalize(last_token_pool(outputs.last_hidden_state, batch["attention_mask"]), p=2, dim=1).numpy()


def real_ids(batch: dict[str, torch.Tensor]) -> list[list[int]]:
    """Each row's ids without its padding."""
    return [[token for token, real in zip(row, mask, strict=True) if real]
            for row, mask in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(), strict=True)]


def served_inputs() -> list[Query | Document]:
    return [*(Query(text, instruction=task) for text, task in QUERIES),
            *(Document(id="", title=title, text=text) for title, text in DOCUMENTS)]


def reference_texts(instruct: object) -> list[str]:
    """The model card's strings for served_inputs(): queries with their task (the web search one by
    default), documents as MTEB joins them (title, a space, text), no instruction."""
    queries = [instruct(task or WEB_SEARCH_TASK, text) for text, task in QUERIES]  # type: ignore[operator]
    return [*queries, *(f"{title} {text}".strip() for title, text in DOCUMENTS)]


def irgate_texts(manifest: EmbedderManifest) -> list[str]:
    return [*(format_query(manifest, text, task) for text, task in QUERIES),
            *(format_document(manifest, title, text) for title, text in DOCUMENTS)]


# --- Qwen3-Embedding --------------------------------------------------------------------------


def test_qwen3_manifest_is_the_model_cards(qwen3_folder: Path) -> None:
    manifest = EmbedderManifest.load(qwen3_folder)
    assert (manifest.preset, manifest.prompt_style, manifest.pooling, manifest.normalize) == (
        "qwen3-embedding", "instruct", "eos", True)
    assert (manifest.max_tokens, manifest.padding_side, manifest.append_eos) == (8192, "left", False)
    assert (manifest.pad_token_id, manifest.eos_token_id) == (QWEN3_END, QWEN3_IM_END)
    assert manifest.instruction_format == "Instruct: {instruction}\nQuery:{query}"
    assert manifest.default_instruction == WEB_SEARCH_TASK


def test_qwen3_prompts_and_token_ids_are_the_references(qwen3_source: Path, qwen3_folder: Path) -> None:
    manifest = EmbedderManifest.load(qwen3_folder)
    texts = irgate_texts(manifest)
    assert texts == reference_texts(qwen3_instruct)
    assert texts[0] == f"Instruct: {WEB_SEARCH_TASK}\nQuery:how much protein should a female eat"
    ids = [encoded.ids for encoded in TextEncoder(manifest, qwen3_folder).encode(texts)]
    assert ids == real_ids(qwen3_batch(qwen3_source, texts))
    # The tokenizer's own <|endoftext|> ends each text, once; <|im_end|> (its eos_token) never appears.
    assert all(row[-1] == QWEN3_END and row.count(QWEN3_END) == 1 and QWEN3_IM_END not in row for row in ids)


def test_qwen3_truncation_keeps_the_end_token(qwen3_source: Path, qwen3_folder: Path) -> None:
    manifest = dataclasses.replace(EmbedderManifest.load(qwen3_folder), max_tokens=16)
    text = format_document(manifest, "", "cat " * 50)
    (encoded,) = TextEncoder(manifest, qwen3_folder).encode([text])
    assert encoded.truncated and encoded.ids == real_ids(qwen3_batch(qwen3_source, [text], max_length=16))[0]
    assert len(encoded.ids) == 16 and encoded.ids[-1] == QWEN3_END


def test_served_qwen3_gives_the_reference_vectors(qwen3_source: Path, qwen3_server: LocalServer) -> None:
    batch = qwen3_batch(qwen3_source, reference_texts(qwen3_instruct))
    expected = reference_vectors(qwen3_source, batch)
    with Client(qwen3_server.address) as client:
        served = client.embed(served_inputs())
    got = np.asarray([item.values for item in served], dtype=np.float32)
    assert [item.tokens for item in served] == [len(row) for row in real_ids(batch)]
    assert np.abs(got - expected).max() <= TOLERANCE
    # The test can tell formats apart: e5's space after "Query:" gives another vector.
    spaced = reference_vectors(qwen3_source, qwen3_batch(qwen3_source, [e5_instruct(WEB_SEARCH_TASK, QUERIES[0][0])]))
    assert np.abs(spaced[0] - got[0]).max() > 100 * TOLERANCE


def test_qwen3_tokenizer_that_does_not_append_its_end_token_is_refused(qwen3_source: Path, tmp_path: Path) -> None:
    """Pooling would read the last content token: prepare says so before loading the model."""
    source = tmp_path / "qwen3-no-end"
    source.mkdir()
    for file in qwen3_source.iterdir():
        (source / file.name).symlink_to(file)
    (source / "tokenizer.json").unlink()
    tokenizer = Tokenizer.from_file(str(qwen3_source / "tokenizer.json"))
    tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B", special_tokens=[])
    tokenizer.save(str(source / "tokenizer.json"))
    out = tmp_path / "out"
    with pytest.raises(InvalidArgument, match=r"appends <\|endoftext\|> to every text"):
        export_embedder(source, out, preset="qwen3-embedding")
    assert not (out / "manifest.json").exists() and not (out / "model.onnx").exists()


# --- e5-mistral-instruct ----------------------------------------------------------------------


def test_e5_manifest_is_the_model_cards(e5_folder: Path) -> None:
    manifest = EmbedderManifest.load(e5_folder)
    assert (manifest.preset, manifest.prompt_style, manifest.pooling, manifest.normalize) == (
        "e5-mistral-instruct", "instruct", "eos", True)
    assert (manifest.max_tokens, manifest.append_eos, manifest.eos_token_id) == (4096, True, MISTRAL_EOS)
    assert manifest.instruction_format == "Instruct: {instruction}\nQuery: {query}"


def test_e5_prompts_and_token_ids_are_the_references(mistral_source: Path, e5_folder: Path) -> None:
    manifest = EmbedderManifest.load(e5_folder)
    texts = irgate_texts(manifest)
    assert texts == reference_texts(e5_instruct)
    assert texts[1] == f"Instruct: {CLAIM_TASK}\nQuery: summit define"
    ids = [encoded.ids for encoded in TextEncoder(manifest, e5_folder).encode(texts)]
    assert ids == real_ids(e5_batch(mistral_source, texts))
    assert all(row[0] == MISTRAL_BOS and row[-1] == MISTRAL_EOS and row.count(MISTRAL_EOS) == 1 for row in ids)


def test_e5_truncation_is_to_max_length_minus_one_then_eos(mistral_source: Path, e5_folder: Path) -> None:
    manifest = dataclasses.replace(EmbedderManifest.load(e5_folder), max_tokens=16)
    text = format_document(manifest, "", "cat " * 50)
    (encoded,) = TextEncoder(manifest, e5_folder).encode([text])
    assert encoded.truncated and encoded.ids == real_ids(e5_batch(mistral_source, [text], max_length=16))[0]
    assert len(encoded.ids) == 16 and encoded.ids[0] == MISTRAL_BOS and encoded.ids[-1] == MISTRAL_EOS


def test_served_e5_gives_the_reference_vectors(mistral_source: Path, e5_server: LocalServer) -> None:
    batch = e5_batch(mistral_source, reference_texts(e5_instruct))
    expected = reference_vectors(mistral_source, batch)
    with Client(e5_server.address) as client:
        served = client.embed(served_inputs())
    got = np.asarray([item.values for item in served], dtype=np.float32)
    assert [item.tokens for item in served] == [len(row) for row in real_ids(batch)]
    assert np.abs(got - expected).max() <= TOLERANCE
    # Without the EOS the model card appends, the pooled token is another one and so is the vector.
    without_eos = torch.tensor([real_ids(batch)[0][:-1]])
    alone = reference_vectors(mistral_source, {"input_ids": without_eos, "attention_mask": torch.ones_like(without_eos)})
    assert np.abs(alone[0] - got[0]).max() > 100 * TOLERANCE


# --- both -------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen3", "e5"])
def test_last_token_pooling_holds_for_any_padding(family: str, request: pytest.FixtureRequest) -> None:
    """Left, right, and left then right (the gateway's left padding topped up by Triton's buckets)."""
    folder: Path = request.getfixturevalue(f"{family}_folder")
    manifest = EmbedderManifest.load(folder)
    ids = [encoded.ids for encoded in TextEncoder(manifest, folder).encode(irgate_texts(manifest))]
    assert len({len(row) for row in ids}) == len(ids), "texts must differ in length to exercise padding"
    embedder = OnnxEmbedder(folder, threads=2)

    def pooled(input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return asyncio.run(embedder.embed(input_ids, mask))

    alone = np.concatenate([pooled(*pad_batch([row], manifest.pad_token_id)) for row in ids])
    left = pad_batch(ids, manifest.pad_token_id, "left")
    right = pad_batch(ids, manifest.pad_token_id, "right")
    bucket = tuple(np.pad(array, ((0, 0), (0, 5)), constant_values=value)
                   for array, value in zip(left, (manifest.pad_token_id, 0), strict=True))
    for padded in (left, right, bucket):
        assert np.abs(pooled(*padded) - alone).max() <= TOLERANCE
    asyncio.run(embedder.close())


@pytest.mark.parametrize("family, preset, instruction_format", [
    ("qwen3", "qwen3-embedding", "Instruct: {instruction}\\nQuery:{query}"),
    ("e5", "e5-mistral-instruct", "Instruct: {instruction}\\nQuery: {query}"),
])
def test_info_reports_the_preset_and_instruction_format(family: str, preset: str, instruction_format: str,
                                                        request: pytest.FixtureRequest) -> None:
    server: LocalServer = request.getfixturevalue(f"{family}_server")
    with Client(server.address) as client:
        info = client.info()
    assert (info.embedder_preset, info.supports_instructions) == (preset, True)
    assert info.instruction_format == instruction_format.replace("\\n", "\n")
    assert info.default_instruction == WEB_SEARCH_TASK
    printed = subprocess.run([sys.executable, "-m", "irgate", "info", "--server", server.address],
                             check=True, capture_output=True, text=True, timeout=120).stdout
    rows = {line.split()[1]: line for line in printed.splitlines() if line.startswith("│") and len(line.split()) > 2}
    assert preset in rows["embedder_preset"]
    assert instruction_format in rows["instruction_format"]
