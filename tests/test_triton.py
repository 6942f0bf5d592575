"""The Triton path without a server: configs checked against Triton's real schema (both flavours,
one tensor contract), addresses, buckets, the repository and engine-build plumbing, the decoding
of streamed responses, and failures against a port nobody listens on.

Everything that needs a running tritonserver is in test_triton_server.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2, service_pb2

from irgate.backends.embedder import EmbedderBackend, OnnxEmbedder
from irgate.backends import triton_embedder, triton_judge
from irgate.backends.triton import RetryPolicy, parse_address
from irgate.backends.triton_embedder import TritonEmbedder, bucket_length, pad_to_bucket
from irgate.backends.triton_judge import FINAL_PARAMETER, decode_stream_response
from irgate.core.tokenization import pad_batch
from irgate.errors import FailedPrecondition, InvalidArgument, Unavailable
from irgate.models import triton as triton_models
from irgate.local_server import LocalServer
from irgate.processes import free_port
from irgate_client import Client, IrgateError

REPO = Path(__file__).resolve().parent.parent
REPOSITORY = REPO / "model_repository"
FAST_RETRY = RetryPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.05)


def _config(model: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse((REPOSITORY / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


# ---- configs: Triton's own schema, and the backends' tensor contract ----------------------


@pytest.mark.parametrize("model", ["embedder", "judge"])
def test_config_parses_strictly(model: str) -> None:
    config = _config(model)
    assert config.name == model
    assert config.max_batch_size > 0
    assert triton_models.parse_config((REPOSITORY / model / "config.pbtxt").read_text()).name == model


def test_misspelled_config_field_fails() -> None:
    text = (REPOSITORY / "embedder" / "config.pbtxt").read_text()
    broken = text.replace("max_queue_delay_microseconds", "max_queue_delay_microsecond")
    with pytest.raises(text_format.ParseError, match="max_queue_delay_microsecond"):
        text_format.Parse(broken, model_config_pb2.ModelConfig())
    with pytest.raises(InvalidArgument, match="not a valid Triton model config"):
        triton_models.parse_config(broken)
    with pytest.raises(text_format.ParseError):
        text_format.Parse(text.replace("KIND_GPU", "KIND_GPUS"), model_config_pb2.ModelConfig())


def _tensors(config: model_config_pb2.ModelConfig, tensors: Any) -> dict[str, tuple[str, list[int]]]:
    batch = [-1] if config.max_batch_size > 0 else []
    return {t.name: (model_config_pb2.DataType.Name(t.data_type), batch + list(t.dims)) for t in tensors}


def _specs(specs: Any, **fields: int) -> dict[str, tuple[str, list[int]]]:
    return {s.name: (f"TYPE_{s.datatype}", [fields[d] if isinstance(d, str) else d for d in s.dims]) for s in specs}


def test_embedder_config_matches_backend_tensors(minilm_folder: Path) -> None:
    config = _config("embedder")
    dimension = OnnxEmbedder(minilm_folder).manifest.dimension  # the template is filled for the default model
    assert _tensors(config, config.input) == _specs(triton_embedder.INPUTS)
    assert _tensors(config, config.output) == _specs(triton_embedder.OUTPUTS, dimension=dimension)
    assert config.max_batch_size == triton_embedder.MAX_BATCH_SIZE
    assert config.backend == "onnxruntime"
    assert list(config.dynamic_batching.preferred_batch_size) and config.dynamic_batching.default_queue_policy.max_queue_size > 0
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["trt_engine_cache_enable"] == "1"
    # ...and the graph irgate exports has exactly these tensors.
    session = OnnxEmbedder(minilm_folder)._session
    assert [i.name for i in session.get_inputs()] == [s.name for s in triton_embedder.INPUTS]
    assert [o.name for o in session.get_outputs()] == [triton_embedder.EMBEDDING.name]


def test_judge_config_matches_backend_tensors() -> None:
    config = _config("judge")
    # TRT-LLM reshapes [1] scalars to [] per request; the request still carries [batch, 1].
    assert _tensors(config, config.input) == _specs(triton_judge.INPUTS)
    assert _tensors(config, config.output) == _specs(triton_judge.OUTPUTS)
    optional = {t.name for t in config.input if t.optional}
    assert optional == set(triton_judge.OPTIONAL_INPUTS)
    assert config.backend == "tensorrtllm"
    assert config.model_transaction_policy.decoupled
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert parameters["gpt_model_type"] == "inflight_fused_batching"
    assert parameters["enable_kv_cache_reuse"] == "true"
    assert parameters["exclude_input_in_output"] == "true"


# ---- small pure pieces -----------------------------------------------------------------------


def test_addresses() -> None:
    address = parse_address("triton://127.0.0.1:8001/judge?stream=0")
    assert (address.host, address.port, address.model, address.url) == ("127.0.0.1", 8001, "judge", "127.0.0.1:8001")
    assert address.flag("stream", True) is False
    assert str(address) == "triton://127.0.0.1:8001/judge?stream=0"
    for bad in ("onnx:/x", "triton://host/model", "triton://host:80", "triton://host:80/a/b", "triton://h:1/m?strem=1",
                "triton://h:x/m"):
        with pytest.raises(InvalidArgument):
            parse_address(bad)


def test_length_buckets() -> None:
    assert [bucket_length(n, 256) for n in (1, 16, 17, 100, 129, 256)] == [16, 16, 32, 128, 256, 256]
    assert bucket_length(200, 200) == 200 and bucket_length(600, 2048) == 1024
    ids, mask = pad_to_bucket(np.ones((2, 20), np.int64), np.ones((2, 20), np.int64), 0, 256)
    assert ids.shape == mask.shape == (2, 32) and mask[:, 20:].sum() == 0 and (ids[:, 20:] == 0).all()


# ---- model repository and engine build ------------------------------------------------------


def test_prepare_triton_repository(minilm_folder: Path, tmp_path: Path) -> None:
    repository = tmp_path / "model_repository"
    shutil.copytree(REPOSITORY, repository)
    config_path = triton_models.prepare_triton_repository(minilm_folder, repository)
    onnx = repository / "embedder" / "1" / "model.onnx"
    assert onnx.read_bytes() == (minilm_folder / "model.onnx").read_bytes()
    # The default model fills the template with what it already says: the git file is unchanged.
    assert config_path.read_text() == (REPOSITORY / "embedder" / "config.pbtxt").read_text()

    # Another model's dimension and limit replace the marked values; comments stay.
    other = tmp_path / "other"
    shutil.copytree(minilm_folder, other)
    manifest = OnnxEmbedder(minilm_folder).manifest
    dataclasses.replace(manifest, dimension=768, max_tokens=512).save(other)
    triton_models.prepare_triton_repository(other, repository, engine_cache=tmp_path / "cache")
    text = config_path.read_text()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert list(config.output[0].dims) == [768]
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.parameters["trt_profile_max_shapes"] == "input_ids:64x512,attention_mask:64x512"
    assert accelerator.parameters["trt_engine_cache_path"] == str(tmp_path / "cache")
    assert "# irgate: dimension" in text and "dynamic batcher" in text

    # An empty repository gets the source tree's template.
    fresh = tmp_path / "fresh"
    triton_models.prepare_triton_repository(minilm_folder, fresh)
    assert (fresh / "embedder" / "1" / "model.onnx").is_file()


def test_cpu_flavour_has_the_gpu_flavours_tensor_contract(minilm_folder: Path, judge_folder: Path, tmp_path: Path) -> None:
    """Both flavours come from one source: the CPU configs are rendered from the GPU ones, so the
    inputs, outputs, batch limits, batching and transaction policy are the same, and they are
    the backends' own tensor specs."""
    cpu = tmp_path / "cpu"
    triton_models.prepare_triton_repository(minilm_folder, cpu, flavour="cpu", judge_folder=judge_folder)
    dimension = OnnxEmbedder(minilm_folder).manifest.dimension
    for model, specs in (("embedder", triton_embedder), ("judge", triton_judge)):
        gpu_config, cpu_config = _config(model), text_format.Parse((cpu / model / "config.pbtxt").read_text(),
                                                                   model_config_pb2.ModelConfig())
        for field in ("name", "max_batch_size", "input", "output", "dynamic_batching", "model_transaction_policy"):
            assert getattr(cpu_config, field) == getattr(gpu_config, field), (model, field)
        assert _tensors(cpu_config, cpu_config.input) == _specs(specs.INPUTS)
        assert _tensors(cpu_config, cpu_config.output) == _specs(specs.OUTPUTS, dimension=dimension)
        assert cpu_config.backend == "python" and gpu_config.backend != "python"
        assert [group.kind for group in cpu_config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
        assert not cpu_config.HasField("optimization")
        assert cpu_config.parameters["irgate_model"].string_value == model
        assert (cpu / model / "1" / "model.py").read_text() == (REPO / "server/irgate/triton_python/model.py").read_text()
    assert (cpu / "embedder" / "1" / "model.onnx").read_bytes() == (minilm_folder / "model.onnx").read_bytes()
    judge = text_format.Parse((cpu / "judge" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert judge.parameters["folder"].string_value == str(judge_folder.resolve())
    assert "gpt_model_path" not in judge.parameters
    # The stub's sys.path gets this environment (its own does not honour PYTHONPATH).
    assert str(REPO / "server") in judge.parameters["irgate_python_path"].string_value.split(":")

    # The CPU flavour never overwrites the GPU configs it is rendered from.
    with pytest.raises(InvalidArgument, match="repository of its own"):
        triton_models.prepare_triton_repository(minilm_folder, REPOSITORY, flavour="cpu")
    with pytest.raises(InvalidArgument, match="unknown Triton flavour 'tpu'"):
        triton_models.prepare_triton_repository(minilm_folder, cpu, flavour="tpu")


def test_engine_build_commands(smollm2_hf: Path, tmp_path: Path) -> None:
    convert, build = triton_models.build_judge_engine_commands(smollm2_hf, tmp_path / "repo", max_batch_size=16)
    assert convert[1] == "-c" and "from_hugging_face" in convert[2] and convert[3] == str(smollm2_hf.resolve())
    assert build[0] == "trtllm-build"
    assert "--gather_generation_logits" in build
    flags = {flag: value for flag, value in zip(build, build[1:] + [""], strict=True) if flag.startswith("--")}
    assert flags["--logits_dtype"] == "float32"
    assert flags["--paged_kv_cache"] == "enable" and flags["--use_paged_context_fmha"] == "enable"
    assert flags["--remove_input_padding"] == "enable" and flags["--max_batch_size"] == "16"
    assert flags["--output_dir"] == str(triton_models.engine_dir_of(tmp_path / "repo"))
    assert int(flags["--max_input_len"]) < int(flags["--max_seq_len"]) <= 16384


def test_engine_build_without_trtllm_fails_clearly(smollm2_hf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_models.shutil, "which", lambda name: None)
    with pytest.raises(FailedPrecondition, match="trtllm-build not found.*NVIDIA GPU"):
        triton_models.build_judge_engine(smollm2_hf, tmp_path)


def test_engine_build_runs_and_fills_config(smollm2_hf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repository = tmp_path / "repo"
    shutil.copytree(REPOSITORY, repository)
    ran: list[list[str]] = []
    monkeypatch.setattr(triton_models.shutil, "which", lambda name: f"/usr/bin/{name}")

    def run(command: list[str], check: bool) -> subprocess.CompletedProcess:
        ran.append(command)
        return subprocess.CompletedProcess(command, 0)

    engine = triton_models.build_judge_engine(smollm2_hf, repository, run=run, decoupled=False)
    assert [command[0] for command in ran] == [sys.executable, "trtllm-build"]
    config = text_format.Parse((repository / "judge" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.parameters["gpt_model_path"].string_value == str(engine)
    assert not config.model_transaction_policy.decoupled

    def failing(command: list[str], check: bool) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(command, 3)

    with pytest.raises(FailedPrecondition, match="exit code 3"):
        triton_models.build_judge_engine(smollm2_hf, repository, run=failing)


# ---- readiness and failures without a server -------------------------------------------------


def test_dead_port_is_not_ready_and_embed_is_unavailable(minilm_folder: Path) -> None:
    port = free_port()  # nobody listens there
    backend = TritonEmbedder(f"triton://127.0.0.1:{port}/embedder", minilm_folder, retry=FAST_RETRY)
    assert isinstance(backend, EmbedderBackend) and backend.folder == minilm_folder.resolve()

    async def run() -> None:
        assert await backend.ready() is False
        ids, mask = pad_batch([[101, 2000, 102]], 0)
        started = time.monotonic()
        with pytest.raises(Unavailable, match=rf"Triton at 127.0.0.1:{port} is unreachable.*3 times"):
            await backend.embed(ids, mask)
        assert time.monotonic() - started < 10
        await backend.close()
        with pytest.raises(Unavailable, match="closed"):
            await backend.embed(ids, mask)

    asyncio.run(run())


# ---- the streamed (decoupled) form: real Triton message types ---------------------------------


def _response(request_id: str, tokens: list[int], logits: np.ndarray | None, final: bool) -> service_pb2.ModelStreamInferResponse:
    infer = service_pb2.ModelInferResponse(model_name="judge", id=request_id)
    arrays = [("output_ids", "INT32", np.asarray(tokens, np.int32).reshape(1, 1, -1)),
              ("sequence_length", "INT32", np.asarray([[len(tokens)]], np.int32))]
    if logits is not None:
        arrays.append(("generation_logits", "FP32", logits.astype(np.float32).reshape(1, 1, *logits.shape)))
    for name, datatype, array in arrays if tokens or logits is not None else []:
        infer.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        infer.raw_output_contents.append(array.tobytes())
    infer.parameters[FINAL_PARAMETER].bool_param = final
    return service_pb2.ModelStreamInferResponse(infer_response=infer)


def test_decode_stream_response() -> None:
    logits = np.arange(2 * 5, dtype=np.float32).reshape(2, 5)
    step = decode_stream_response(_response("7:1:g", [3, 4], logits, final=False))
    assert (step.request_id, step.tokens, step.final) == ("7:1:g", [3, 4], False)
    np.testing.assert_array_equal(step.logits, logits)
    # output_ids padded past sequence_length (TRT-LLM pads with -1) are cut.
    padded = _response("x", [9, -1, -1], None, final=True)
    padded.infer_response.raw_output_contents[1] = np.asarray([[1]], np.int32).tobytes()
    step = decode_stream_response(padded)
    assert step.tokens == [9] and step.final and step.logits is None
    empty = decode_stream_response(_response("x", [], None, final=True))
    assert empty.tokens == [] and empty.final
    # A step that chose end_id: the token is not returned, the logits of the step are (a forced
    # answer is scored from them).
    ended = _response("x:0:f", [2], logits[:1], final=True)
    ended.infer_response.raw_output_contents[1] = np.asarray([[0]], np.int32).tobytes()
    step = decode_stream_response(ended)
    assert step.tokens == [] and step.final
    np.testing.assert_array_equal(step.logits, logits[:1])
    with pytest.raises(FailedPrecondition, match="out of memory"):
        decode_stream_response(service_pb2.ModelStreamInferResponse(error_message="out of memory"))


def test_gateway_reports_not_serving_while_triton_is_down(minilm_folder: Path, tmp_path: Path) -> None:
    dead = f"triton://127.0.0.1:{free_port()}/embedder?attempts=1"
    args = ["--embedder", dead, "--embedder-folder", str(minilm_folder), "--judge", "none"]
    with LocalServer(tmp_path, args) as gateway:
        with grpc.insecure_channel(gateway.address) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="irgate.v1.Embed"))
        assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with Client(gateway.address, timeout=30) as client:
            with pytest.raises(IrgateError) as raised:
                client.embed(["rain"])
        assert raised.value.code == grpc.StatusCode.UNAVAILABLE and "127.0.0.1" in raised.value.message
