"""One-step LLM rerankers, served as their own reference code scores them.

None of these checkpoints can be downloaded here, so each family is a tiny random-weight model of
its architecture (transformers' Qwen3Config for Qwen3-Reranker, Qwen2Config for mxbai-rerank-v2,
GemmaConfig for bge-reranker-v2-gemma: two layers, 32 hidden units, a fixed seed) with a
byte-level tokenizer holding the family's special tokens at their real ids and its answer words
as single tokens. Each is prepared by `irgate prepare --judge-preset`, served by a real server,
and compared with a reference computed here as the family's own code computes it (its input
building, a plain transformers forward, its formula): the exact prompt strings, the token ids,
and the scores within 1e-4 in fp32.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import torch
from tokenizers import processors

from irgate.backends.judge import families
from irgate.backends.judge.manifest import JudgeManifest
from irgate.backends.judge.engine import EngineLimits
from irgate.backends.judge.local import LocalJudge
from irgate.domain.judging import JudgeRequest, PassageText, Verdict
from irgate.local_server import LocalServer
from irgate_client import Client, Document, IrgateError
from tiny_models import byte_tokenizer, save_model

TOLERANCE = 1e-4
QUERY = "what causes type 2 diabetes"
CLAIM = "Find passages that say insulin resistance is the cause"
PASSAGES = [
    "Type 2 diabetes is caused mainly by insulin resistance together with a relative lack of insulin.",
    "The Eiffel Tower was finished in 1889 for the World's Fair in Paris.",
    "Obesity and lack of exercise raise the risk of type 2 diabetes.",
]
# The real special ids of the families' tokenizers.
QWEN_SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<think>": 151667, "</think>": 151668}
GEMMA_SPECIALS = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}


# --- the tiny families ------------------------------------------------------------------------


def build_tiny_qwen3_reranker(folder: Path) -> Path:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=151669, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=8, max_position_embeddings=40960, eos_token_id=151645,
                         pad_token_id=151643, tie_word_embeddings=True)
    tokenizer = byte_tokenizer(0, QWEN_SPECIALS, words=("yes", "no"))
    return save_model(folder, tokenizer, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "padding_side": "left",
                                          "model_max_length": 131072}, Qwen3ForCausalLM(config))


def build_tiny_qwen2(folder: Path) -> Path:
    """mxbai-rerank-v2's architecture (Qwen2.5): its answer tokens "1" and "0" are single bytes."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=32768, eos_token_id=151645, pad_token_id=151643,
                         tie_word_embeddings=True)
    tokenizer = byte_tokenizer(0, {name: id_ for name, id_ in QWEN_SPECIALS.items() if "think" not in name})
    return save_model(folder, tokenizer, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "padding_side": "left",
                                          "model_max_length": 32768}, Qwen2ForCausalLM(config))


def build_tiny_gemma(folder: Path) -> Path:
    """bge-reranker-v2-gemma's architecture (Gemma); like Gemma's tokenizer, this one adds <bos>."""
    from transformers import GemmaConfig, GemmaForCausalLM

    torch.manual_seed(0)
    config = GemmaConfig(vocab_size=256000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=1, head_dim=8, max_position_embeddings=8192, bos_token_id=2, eos_token_id=1,
                         pad_token_id=0)
    adds_bos = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 2)])
    tokenizer = byte_tokenizer(4, GEMMA_SPECIALS, adds_bos, words=("Yes", "No"))
    return save_model(folder, tokenizer, {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
                                          "padding_side": "left", "model_max_length": 8192}, GemmaForCausalLM(config))


def irgate_prepare(source: Path, preset: str, out: Path) -> Path:
    """`irgate prepare --judge-source --judge-preset` as a user runs it; returns the judge folder."""
    subprocess.run([sys.executable, "-m", "irgate", "prepare", "--judge-source", str(source), "--judge-preset", preset,
                    "--out", str(out)], check=True, capture_output=True, text=True, timeout=600)
    return out / "judge"


# --- the references, as each family's own code builds and scores its inputs -------------------


def _tokenizer(source: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


def _last_logits(source: Path, rows: list[list[int]], pad: int) -> torch.Tensor:
    """A plain transformers forward of the left-padded batch; the last position's logits."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    width = max(len(row) for row in rows)
    ids = torch.tensor([[pad] * (width - len(row)) + row for row in rows])
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits[:, -1, :]


def prepare_for_model_only_second(first: list[int], second: list[int], max_length: int) -> list[int]:
    """transformers 4's tokenizer.prepare_for_model(first, second, truncation="only_second",
    max_length=..., add_special_tokens=False), which both references call (transformers 5 dropped
    it): the second sequence loses its end until the pair fits."""
    overflow = max(0, len(first) + len(second) - max_length)
    return first + second[: len(second) - overflow]


def qwen3_reference_inputs(source: Path, query: str, passages: list[str], instruction: str | None) -> tuple[list[str], list[list[int]]]:
    """QwenLM/Qwen3-Embedding examples/qwen3_reranker_transformers.py (format_instruction, process_inputs)."""
    tokenizer = _tokenizer(source)
    prefix = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
              "provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n")
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    prefix_tokens = tokenizer.encode(prefix, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(suffix, add_special_tokens=False)
    task = instruction or "Given a web search query, retrieve relevant passages that answer the query"
    pairs = [f"<Instruct>: {task}\n<Query>: {query}\n<Document>: {doc}" for doc in passages]
    inputs = tokenizer(pairs, padding=False, truncation="longest_first", return_attention_mask=False,
                       max_length=8192 - len(prefix_tokens) - len(suffix_tokens))
    return [prefix + pair + suffix for pair in pairs], [prefix_tokens + ids + suffix_tokens for ids in inputs["input_ids"]]


def qwen3_reference_scores(source: Path, rows: list[list[int]]) -> list[float]:
    tokenizer = _tokenizer(source)
    logits = _last_logits(source, rows, tokenizer.pad_token_id)
    pair = torch.stack([logits[:, tokenizer.convert_tokens_to_ids("no")], logits[:, tokenizer.convert_tokens_to_ids("yes")]], dim=1)
    return torch.nn.functional.log_softmax(pair, dim=1)[:, 1].exp().tolist()


MXBAI_PREFIX = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
MXBAI_TASK = ("You are a search relevance expert who evaluates how well documents match search queries. For each query-document "
              "pair, carefully analyze the semantic relationship between them, then provide your binary relevance judgment (0 for "
              "not relevant, 1 for relevant).\nRelevance:")
MXBAI_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"


def mxbai_reference_inputs(source: Path, query: str, passages: list[str], instruction: str | None) -> tuple[list[str], list[list[int]]]:
    """mixedbread-ai/mxbai-rerank mxbai_rerank_v2.py (prepare_predefined_inputs, prepare_inputs, concat_input_ids)."""
    tokenizer = _tokenizer(source)

    def ids(text: str) -> list[int]:
        return tokenizer(text, return_tensors=None, add_special_tokens=False)["input_ids"]

    predefined = len(ids(MXBAI_PREFIX)) + len(ids(MXBAI_TASK)) + len(ids(MXBAI_SUFFIX)) + len(ids("\n"))
    max_length = min(8192, tokenizer.model_max_length - predefined)
    query_prompt = f"query: {query}"
    if instruction:
        query_prompt = f"instruction: {instruction}\n{query_prompt}"
    texts, rows = [], []
    for document in passages:
        query_ids = tokenizer(query_prompt, add_special_tokens=False, max_length=max_length * 3 // 4, truncation=True)["input_ids"]
        doc_max = min(tokenizer.model_max_length - len(query_ids) - predefined, max_length)
        doc_ids = tokenizer(f"document: {document}", add_special_tokens=False, max_length=doc_max, truncation=True)["input_ids"]
        item = prepare_for_model_only_second(query_ids, ids("\n") + doc_ids, max_length)
        rows.append(ids(MXBAI_PREFIX) + item + ids("\n") + ids(MXBAI_TASK) + ids(MXBAI_SUFFIX))
        texts.append(MXBAI_PREFIX + query_prompt + "\n" + f"document: {document}" + "\n" + MXBAI_TASK + MXBAI_SUFFIX)
    return texts, rows


def mxbai_reference_scores(source: Path, rows: list[list[int]], margin: float) -> list[float]:
    tokenizer = _tokenizer(source)
    logits = _last_logits(source, rows, tokenizer.pad_token_id)
    yes, no = tokenizer("1", add_special_tokens=False)["input_ids"][0], tokenizer("0", add_special_tokens=False)["input_ids"][0]
    return torch.sigmoid(logits[:, yes] - logits[:, no] - margin / 2).tolist()


BGE_PROMPT = ("Given a query A and a passage B, determine whether the passage contains an answer to the query by providing a "
              "prediction of either 'Yes' or 'No'.")


def bge_reference_inputs(source: Path, query: str, passages: list[str], instruction: str | None) -> tuple[list[str], list[list[int]]]:
    """FlagOpen/FlagEmbedding inference/reranker/decoder_only/base.py (compute_score_single_gpu), max_length 512."""
    tokenizer = _tokenizer(source)
    max_length, query_max_length = 512, 512 * 3 // 4
    prompt_ids = tokenizer(BGE_PROMPT, return_tensors=None, add_special_tokens=False)["input_ids"]
    sep_ids = tokenizer("\n", return_tensors=None, add_special_tokens=False)["input_ids"]
    encode_max_length = max_length + len(sep_ids) + len(prompt_ids)
    texts, rows = [], []
    for passage in passages:
        query_ids = tokenizer(f"A: {query}", add_special_tokens=False, max_length=query_max_length, truncation=True)["input_ids"]
        passage_ids = tokenizer(f"B: {passage}", add_special_tokens=False, max_length=max_length, truncation=True)["input_ids"]
        item = prepare_for_model_only_second([tokenizer.bos_token_id] + query_ids, sep_ids + passage_ids, encode_max_length)
        rows.append(item + sep_ids + prompt_ids)
        texts.append(f"<bos>A: {query}\nB: {passage}\n{BGE_PROMPT}")
    return texts, rows


def bge_reference_scores(source: Path, rows: list[list[int]]) -> list[float]:
    tokenizer = _tokenizer(source)
    logits = _last_logits(source, rows, tokenizer.pad_token_id)
    yes = tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
    return torch.sigmoid(logits[:, yes]).tolist()


@dataclass(frozen=True)
class Family:
    preset: str
    build: Callable[[Path], Path]
    inputs: Callable[[Path, str, list[str], str | None], tuple[list[str], list[list[int]]]]
    scores: Callable[[Path, list[list[int]]], list[float]]
    instructions: bool


FAMILIES = {
    "qwen3-reranker": Family("qwen3-reranker", build_tiny_qwen3_reranker, qwen3_reference_inputs, qwen3_reference_scores, True),
    "mxbai-rerank-base-v2": Family("mxbai-rerank-base-v2", build_tiny_qwen2, mxbai_reference_inputs,
                                   lambda source, rows: mxbai_reference_scores(source, rows, 9.0), True),
    "mxbai-rerank-large-v2": Family("mxbai-rerank-large-v2", build_tiny_qwen2, mxbai_reference_inputs,
                                    lambda source, rows: mxbai_reference_scores(source, rows, 12.0), True),
    "bge-reranker-v2-gemma": Family("bge-reranker-v2-gemma", build_tiny_gemma, bge_reference_inputs, bge_reference_scores, False),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A tiny model of the family, prepared by `irgate prepare` and served by a real server."""
    spec = FAMILIES[request.param]
    source = spec.build(tmp_path_factory.mktemp(f"tiny-{spec.preset}"))
    folder = irgate_prepare(source, spec.preset, tmp_path_factory.mktemp(f"{spec.preset}-models"))
    args = ["--embedder", f"onnx:{folder.parent / 'embedder'}", "--judge", f"local:{folder}"]
    with LocalServer(tmp_path_factory.mktemp(f"{spec.preset}-data"), args) as running:
        yield spec, source, folder, running


def _instructions(spec: Family) -> list[str | None]:
    return [None, CLAIM] if spec.instructions else [None]


# --- the tests --------------------------------------------------------------------------------


def test_prompts_and_token_ids_are_the_references(family) -> None:
    spec, source, folder, _ = family
    manifest = JudgeManifest.load(folder)
    tokenizer = _tokenizer(folder)
    for instruction in _instructions(spec):
        texts, rows = spec.inputs(source, QUERY, PASSAGES, instruction)
        for passage, text, ids in zip(PASSAGES, texts, rows, strict=True):
            fitted = families.fit(manifest, tokenizer, QUERY, instruction or "", "", passage, 0)
            assert fitted.text == text
            assert fitted.ids == ids
            assert not fitted.truncated


def test_served_scores_are_the_references(family) -> None:
    spec, source, _, running = family
    worst = 0.0
    with Client(running.address) as client:
        for instruction in _instructions(spec):
            _, rows = spec.inputs(source, QUERY, PASSAGES, instruction)
            expected = spec.scores(source, rows)
            verdicts = client.judge(QUERY, PASSAGES, instruction=instruction or "")
            for verdict, reference in zip(verdicts, expected, strict=True):
                assert verdict.ended == "scored"
                assert (verdict.reasoning_tokens, verdict.reasoning_budget, verdict.reasoning) == (0, 0, "")
                assert abs(verdict.score - reference) <= TOLERANCE, (spec.preset, instruction, verdict.score, reference)
                worst = max(worst, abs(verdict.score - reference))
    print(f"{spec.preset}: largest score difference against the reference {worst:.2e}")


def test_the_cli_judge_prints_the_reference_scores(family) -> None:
    spec, source, _, running = family
    instruction = CLAIM if spec.instructions else None
    _, rows = spec.inputs(source, QUERY, PASSAGES[:2], instruction)
    expected = spec.scores(source, rows)
    command = [sys.executable, "-m", "irgate", "judge", QUERY, "--doc", PASSAGES[0], "--doc", PASSAGES[1], "--json",
               "--server", running.address]
    if instruction:
        command += ["--instruction", instruction]
    lines = subprocess.run(command, check=True, capture_output=True, text=True, timeout=120).stdout.splitlines()
    verdicts = sorted((json.loads(line) for line in lines if line.strip()), key=lambda verdict: verdict["index"])
    assert [round(verdict["score"], 4) for verdict in verdicts] == [round(score, 4) for score in expected]


def test_search_rerank_orders_stored_documents_by_the_reference_scores(family) -> None:
    spec, source, _, running = family
    instruction = CLAIM if spec.instructions else None
    _, rows = spec.inputs(source, QUERY, PASSAGES, instruction)
    expected = dict(zip(["d0", "d1", "d2"], spec.scores(source, rows), strict=True))
    collection = f"rerank-{spec.preset}"
    with Client(running.address) as client:
        client.create_collection(collection, exist_ok=True)
        client.upsert(collection, [Document(id=f"d{k}", text=passage) for k, passage in enumerate(PASSAGES)])
        hits = client.search(collection, QUERY, instruction=instruction or "", k=3, rerank=3)
    assert [hit.id for hit in hits] == sorted(expected, key=expected.get, reverse=True)
    for hit in hits:
        assert hit.verdict is not None and hit.verdict.ended == "scored"
        assert abs(hit.score - expected[hit.id]) <= TOLERANCE


def test_a_request_budget_is_accepted_and_reported_as_not_applicable(family) -> None:
    _, _, _, running = family
    with Client(running.address) as client:
        [verdict] = client.judge(QUERY, PASSAGES[:1], max_reasoning_tokens=64)
        unbudgeted = client.judge(QUERY, PASSAGES[:1])[0]
    assert (verdict.reasoning_budget, verdict.reasoning_tokens, verdict.ended) == (0, 0, "scored")
    assert verdict.score == unbudgeted.score


def test_info_reports_the_family_and_its_score_rule(family) -> None:
    spec, _, _, running = family
    with Client(running.address) as client:
        info = client.info()
    assert (info.judge_family, info.judge_scoring, info.max_reasoning_tokens) == (families.PRESETS[spec.preset].family, "one_step", 0)
    assert info.judge_supports_instructions is spec.instructions
    expected = {"qwen3-reranker": "exp(logit('yes')) / (exp(logit('yes')) + exp(logit('no')))",
                "mxbai-rerank-base-v2": "sigmoid(logit('1') - logit('0') - 4.5)",
                "mxbai-rerank-large-v2": "sigmoid(logit('1') - logit('0') - 6)",
                "bge-reranker-v2-gemma": "sigmoid(logit('Yes'))"}
    assert info.judge_score_formula == expected[spec.preset]
    shown = subprocess.run([sys.executable, "-m", "irgate", "info", "--server", running.address], check=True,
                           capture_output=True, text=True, timeout=60).stdout
    assert "judge_family" in shown and families.PRESETS[spec.preset].family in shown


def test_an_instruction_is_refused_where_the_family_has_no_slot(family) -> None:
    spec, _, _, running = family
    with Client(running.address) as client:
        if spec.instructions:
            assert len(client.judge(QUERY, PASSAGES[:1], instruction=CLAIM)) == 1
            return
        with pytest.raises(IrgateError) as refused:
            client.judge(QUERY, PASSAGES[:1], instruction=CLAIM)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "takes no instruction" in str(refused.value)


def test_the_passage_cap_cuts_the_document_and_says_so(family) -> None:
    spec, source, folder, running = family
    long_passage = " ".join(PASSAGES)
    with Client(running.address) as client:
        whole = client.judge(QUERY, [long_passage])[0]
        cut = client.judge(QUERY, [long_passage], max_passage_tokens=16)[0]
    assert not whole.truncated and cut.truncated
    manifest = JudgeManifest.load(folder)
    fitted = families.fit(manifest, _tokenizer(folder), QUERY, "", "", long_passage, 0, 16)
    short = _tokenizer(folder).decode(_tokenizer(folder)(long_passage, add_special_tokens=False)["input_ids"][:16])
    _, rows = spec.inputs(source, QUERY, [short], None)
    assert fitted.ids == rows[0]
    assert abs(cut.score - spec.scores(source, rows)[0]) <= TOLERANCE


def test_the_familys_own_truncation_of_an_overlong_query_and_passage(family) -> None:
    """Each family's own cut: the query to its share, the passage piece to what is left (byte
    tokens, so 7,000 characters of query and 12,000 of passage pass every family's limits)."""
    spec, source, folder, _ = family
    manifest = JudgeManifest.load(folder)
    tokenizer = _tokenizer(folder)
    query, passage = ("diabetes causes " * 440)[:7000], ("insulin resistance. " * 600)[:12000]
    _, rows = spec.inputs(source, query, [passage], None)
    fitted = families.fit(manifest, tokenizer, query, "", "", passage, 0)
    assert fitted.truncated
    assert fitted.ids == rows[0]
    assert len(fitted.ids) <= manifest.max_context_tokens


def test_a_book_length_passage_gets_the_references_ids(family) -> None:
    """Only what could fit is tokenised, and the ids are still the reference's own cut."""
    spec, source, folder, _ = family
    book = "Insulin resistance develops slowly over the years. " * 20_000
    _, rows = spec.inputs(source, QUERY, [book], None)
    fitted = families.fit(JudgeManifest.load(folder), _tokenizer(folder), QUERY, "", "", book, 0)
    assert fitted.truncated and fitted.ids == rows[0]


def test_scores_are_the_same_when_calls_are_batched_and_streamed(family) -> None:
    spec, _, folder, running = family
    with Client(running.address) as client:
        alone = [client.judge(QUERY, [passage])[0].score for passage in PASSAGES]
        streamed = [event for event in client.judge_stream(QUERY, PASSAGES) if hasattr(event, "score")]
    assert sorted(alone) == pytest.approx(sorted(verdict.score for verdict in streamed), abs=TOLERANCE)


def test_the_engine_runs_one_forward_for_many_documents(family) -> None:
    """A one-step judge prefills the documents of a call together and generates nothing: with a
    prefill chunk that holds them all, three documents cost one forward."""
    _, _, folder, _ = family
    judge = LocalJudge(folder, threads=1, limits=EngineLimits(prefill_chunk_tokens=4096))
    try:
        before = judge.engine.stats.forward_passes
        request = JudgeRequest(QUERY, "", tuple(PassageText("", passage) for passage in PASSAGES), 0)

        async def run() -> list[Verdict]:
            return [event async for event in judge.judge(request)]

        outcomes = asyncio.run(run())
        assert len(outcomes) == len(PASSAGES) and all(math.isfinite(o.score) for o in outcomes)
        assert judge.engine.stats.generated_tokens == 0
        assert judge.engine.stats.forward_passes - before == 1
    finally:
        asyncio.run(judge.close())


# --- the CPU Triton flavour -------------------------------------------------------------------


@pytest.fixture(scope="module")
def triton_judges(minilm_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    """One tritonserver serving every family's tiny judge as a CPU-flavour `tensorrt_llm` model
    (judge_<preset>, and judge_<preset>_unary deployed non-decoupled), prepared as `irgate prepare --triton --triton-flavour cpu` prepares one."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from irgate.models import triton as triton_models
    from irgate.models.judge import prepare_judge
    from irgate.models.tritonserver import TritonServer

    root = tmp_path_factory.mktemp("triton-families")
    folders = {}
    for preset, spec in FAMILIES.items():
        prepare_judge(spec.build(root / f"tiny-{preset}"), root / f"judge-{preset}", preset)
        folders[preset] = root / f"judge-{preset}"
    repository = root / "model_repository"
    triton_models.prepare_triton_repository(minilm_folder, repository, flavour="cpu", judge_folder=folders["qwen3-reranker"])
    template = text_format.Parse((repository / "judge" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    for preset, folder in folders.items():
        # Streamed calls need the decoupled model; unary ModelInfer a non-decoupled one.
        for suffix, decoupled in (("", True), ("_unary", False)):
            template.name = f"judge_{preset}{suffix}"
            template.parameters["folder"].string_value = str(folder)
            template.model_transaction_policy.decoupled = decoupled
            shutil.copytree(repository / "judge", repository / template.name)
            (repository / template.name / "config.pbtxt").write_text(text_format.MessageToString(template))
    # The judge and embedder the preparation put there were only the template: each model is a
    # Python backend stub that Triton would start (and wait for) with the others.
    for unused in ("judge", "embedder"):
        shutil.rmtree(repository / unused)
    with TritonServer(repository) as running:
        yield running, folders


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "unary"])
def test_triton_cpu_flavour_gives_the_in_process_scores(triton_judges, stream: bool) -> None:
    """The last prompt position's logits come back as the generation logits of one output token."""
    from irgate.backends.triton_judge import TritonJudge

    triton, folders = triton_judges
    for preset, folder in folders.items():
        instruction = CLAIM if FAMILIES[preset].instructions else ""
        request = JudgeRequest(QUERY, instruction, tuple(PassageText("", passage) for passage in PASSAGES), 0)
        address = f"triton://{triton.address}/judge_{preset}" + ("" if stream else "_unary?stream=0")
        remote, local = TritonJudge(address, folder), LocalJudge(folder, threads=1)

        async def run(backend) -> list[Verdict]:
            return sorted([event async for event in backend.judge(request)], key=lambda outcome: outcome.index)

        try:
            got, expected = asyncio.run(run(remote)), asyncio.run(run(local))
        finally:
            asyncio.run(remote.close())
            asyncio.run(local.close())
        assert [(o.index, o.ended, o.reasoning_tokens) for o in got] == [(o.index, "scored", 0) for o in expected]
        worst = max(abs(a.score - b.score) for a, b in zip(got, expected, strict=True))
        assert worst <= TOLERANCE, (preset, got, expected)
        print(f"{preset} through Triton ({'streamed' if stream else 'unary'}): largest difference from in-process {worst:.2e}")
