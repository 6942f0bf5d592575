"""The Triton model repository: fill model_repository/ from prepared folders, build the judge engine.

The configs live in git (model_repository/*/config.pbtxt) and are the templates: the lines
marked `# irgate: NAME` are rewritten in place from the prepared model, everything else
(batching, instance groups, accelerators) is left as the operator tuned it. Weights go into
the version folders (model_repository/*/1/, git-ignored).
- embedder: `prepare_triton_repository` copies model.onnx (and any external-data files) into
  embedder/1/ and fills the output dimension and the TensorRT profile shapes from the manifest.
- judge: `build_judge_engine` runs TensorRT-LLM's checkpoint conversion and `trtllm-build`
  (only on a CUDA machine with TensorRT-LLM installed) into judge/1/engine and points the
  config at it. The gateway tokenises, so no tokenizer goes to Triton.

Two flavours, one source of truth. The GPU flavour is the configs above. The CPU flavour
(`prepare_triton_repository(..., flavour="cpu")`, into a repository of its own) runs both models
in Triton's python backend (irgate.triton_python) and is rendered FROM the GPU configs by
`render_cpu_config`: the same inputs, outputs, batching and transaction policy, only the
backend, instances and parameters differ, so the two cannot drift apart.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console

from irgate.errors import FailedPrecondition, InvalidArgument
from irgate.models.manifest import EmbedderManifest

EMBEDDER_MODEL = "embedder"
JUDGE_MODEL = "judge"
CONFIG_FILE = "config.pbtxt"
VERSION = "1"
# The repository in the source tree: the templates when a target repository has no config yet.
SOURCE_REPOSITORY = Path(__file__).resolve().parents[3] / "model_repository"
# Batch size the TensorRT optimisation profile is tuned for (the largest comes from the config).
_OPT_BATCH = 32
_OPT_LENGTH = 128
FLAVOURS = ("gpu", "cpu")
# The python-backend shim every CPU-flavour model loads as <model>/1/model.py.
_PYTHON_MODEL = Path(__file__).resolve().parents[1] / "triton_python" / "model.py"

_console = Console(stderr=True)


# ---- config templates -----------------------------------------------------------------------


def parse_config(text: str, where: str = "config.pbtxt"):
    """Strictly parse config.pbtxt text into tritonclient's ModelConfig (unknown fields fail)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as error:
        raise InvalidArgument(f"{where} is not a valid Triton model config: {error}") from error


def set_marked(text: str, marker: str, replace: Callable[[str], str]) -> str:
    """Rewrite every line that ends with `# irgate: marker` through `replace(line_without_comment)`."""
    pattern = re.compile(rf"^(?P<body>.*?)(?P<comment>\s*#\s*irgate:\s*{re.escape(marker)}\s*)$", re.MULTILINE)
    found = False

    def substitute(match: re.Match[str]) -> str:
        nonlocal found
        found = True
        return replace(match.group("body")) + match.group("comment")

    result = pattern.sub(substitute, text)
    if not found:
        raise InvalidArgument(f"the config has no line marked '# irgate: {marker}'")
    return result


def _set_value(body: str, value: str) -> str:
    """`... value: "old" }` -> the same with the new string value."""
    new, count = re.subn(r'(value:\s*(?:\{\s*string_value:\s*)?)"[^"]*"', lambda m: f'{m.group(1)}"{value}"', body, count=1)
    if count != 1:
        raise InvalidArgument(f"cannot find a string value to set in {body.strip()!r}")
    return new


def _set_dims(body: str, dims: Sequence[int]) -> str:
    new, count = re.subn(r"dims:\s*\[[^\]]*\]", f"dims: [ {', '.join(str(d) for d in dims)} ]", body, count=1)
    if count != 1:
        raise InvalidArgument(f"cannot find dims to set in {body.strip()!r}")
    return new


def _profile(batch: int, length: int) -> str:
    return f"input_ids:{batch}x{length},attention_mask:{batch}x{length}"


def _template(repository: Path, model: str) -> str:
    config = repository / model / CONFIG_FILE
    if config.is_file():
        return config.read_text(encoding="utf-8")
    source = SOURCE_REPOSITORY / model / CONFIG_FILE
    if source.is_file():
        return source.read_text(encoding="utf-8")
    raise FailedPrecondition(
        f"{config} not found: copy model_repository/{model}/{CONFIG_FILE} from the irgate sources there first"
    )


def render_embedder_config(template: str, manifest: EmbedderManifest, engine_cache: Path | None = None) -> str:
    """The embedder config with the manifest's dimension and length limits filled in."""
    config = parse_config(template, "the embedder config template")
    batch = config.max_batch_size or 1
    text = set_marked(template, "dimension", lambda body: _set_dims(body, [manifest.dimension]))
    text = set_marked(text, "max_shapes", lambda body: _set_value(body, _profile(batch, manifest.max_tokens)))
    text = set_marked(text, "opt_shapes", lambda body: _set_value(
        body, _profile(min(_OPT_BATCH, batch), min(_OPT_LENGTH, manifest.max_tokens))))
    if engine_cache is not None:
        text = set_marked(text, "engine_cache", lambda body: _set_value(body, str(engine_cache)))
    parse_config(text, "the rendered embedder config")
    return text


def _onnx_files(folder: Path, onnx_file: str) -> list[Path]:
    """model.onnx and the external-data files it names (models over protobuf's 2 GB)."""
    files = [folder / onnx_file]
    try:
        import onnx
    except ImportError:  # without onnx, only in-file weights are supported
        return files
    model = onnx.load(str(folder / onnx_file), load_external_data=False)
    locations = set()
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                locations.add(entry.value)
    return files + [folder / location for location in sorted(locations)]


def _place(source: Path, target: Path) -> None:
    """Hard link (no copy of gigabytes) when possible, else copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _python_path() -> str:
    """The site directories of this environment, for the python-backend stub's sys.path."""
    import irgate

    folders = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], str(Path(irgate.__file__).resolve().parents[1])]
    return os.pathsep.join(dict.fromkeys(folders))


def render_cpu_config(gpu_config: str, model: str, parameters: dict[str, str], instances: int = 1) -> str:
    """The CPU flavour of a model: its GPU config with the python backend (irgate.triton_python)
    on `instances` CPU instances. Inputs, outputs, max_batch_size, batching and the transaction
    policy are the GPU config's, untouched; the GPU-only parts (accelerators, TensorRT-LLM
    parameters) go; `parameters` (plus `irgate_model` and `irgate_python_path`) come in."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = parse_config(gpu_config, f"the {model} config")
    config.backend = "python"
    for name in ("optimization", "instance_group", "parameters"):
        config.ClearField(name)
    config.instance_group.add(count=instances, kind=model_config_pb2.ModelInstanceGroup.KIND_CPU)
    for key, value in {"irgate_model": model, "irgate_python_path": _python_path(), **parameters}.items():
        config.parameters[key].string_value = str(value)
    header = (f"# irgate {model}, CPU flavour: written by `irgate prepare --triton --triton-flavour cpu` from the GPU\n"
              f"# config (model_repository/{model}/config.pbtxt). Edit that one and prepare again.\n")
    text = header + text_format.MessageToString(config)
    parse_config(text, f"the rendered CPU {model} config")
    return text


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def _python_model(repository: Path, model: str, config: str) -> Path:
    _write(repository / model / VERSION / "model.py", _PYTHON_MODEL.read_text(encoding="utf-8"))
    path = repository / model / CONFIG_FILE
    _write(path, config)
    return path


def prepare_triton_repository(
    embedder_folder: Path,
    repository: Path,
    engine_cache: Path | None = None,
    *,
    flavour: str = "gpu",
    judge_folder: Path | None = None,
    device: str = "cpu",
    threads: int = 0,
) -> Path:
    """Put the prepared embedder (and, CPU flavour, the judge) into `repository` for Triton;
    returns the embedder's config path. Idempotent.

    - "gpu": copies model.onnx into embedder/1 and fills the config's dimension and TensorRT
      profile shapes from the folder's manifest (the judge engine is built separately);
    - "cpu": the same model.onnx and, with `judge_folder`, the judge, both as python-backend
      models rendered from the GPU configs of the source tree (`render_cpu_config`). The judge
      runs irgate's judge engine on `device` ("cpu", "cuda") with the judge folder's weights.
      `threads`: ONNX Runtime / torch threads per model (0: the machine's cores).
    """
    if flavour not in FLAVOURS:
        raise InvalidArgument(f"unknown Triton flavour {flavour!r}; choose one of {', '.join(FLAVOURS)}")
    folder = Path(embedder_folder)
    repository = Path(repository)
    manifest = EmbedderManifest.load(folder)
    if flavour == "cpu":
        if repository.resolve() == SOURCE_REPOSITORY:
            raise InvalidArgument(
                f"{repository} holds the GPU configs the CPU flavour is rendered from: "
                "write the CPU flavour into a repository of its own (e.g. models/triton)")
        gpu_embedder = render_embedder_config(_template(SOURCE_REPOSITORY, EMBEDDER_MODEL), manifest)
        text = render_cpu_config(gpu_embedder, EMBEDDER_MODEL, {"threads": str(threads)})
        _python_model(repository, EMBEDDER_MODEL, text)
        if judge_folder is not None:
            judge = Path(judge_folder).resolve()
            if not (judge / "manifest.json").is_file():
                raise FailedPrecondition(f"{judge} is not a prepared judge folder (no manifest.json): run irgate prepare")
            judge_config = render_cpu_config(_template(SOURCE_REPOSITORY, JUDGE_MODEL), JUDGE_MODEL,
                                             {"folder": str(judge), "device": device, "threads": str(threads)})
            _python_model(repository, JUDGE_MODEL, judge_config)
    else:
        text = render_embedder_config(_template(repository, EMBEDDER_MODEL), manifest, engine_cache)
    version = repository / EMBEDDER_MODEL / VERSION
    for source in _onnx_files(folder, manifest.onnx_file):
        if not source.is_file():
            raise FailedPrecondition(f"{source} not found: prepare the embedder folder again (irgate prepare)")
        # Triton's onnxruntime backend loads <version>/model.onnx by default.
        name = "model.onnx" if source.name == manifest.onnx_file else source.name
        _place(source, version / name)
    config = repository / EMBEDDER_MODEL / CONFIG_FILE
    _write(config, text)
    _console.log(f"wrote the {flavour} flavour: {version / 'model.onnx'} and {config} "
                 f"(dim {manifest.dimension}, max {manifest.max_tokens} tokens)")
    return config


# ---- the judge engine (TensorRT-LLM) ----------------------------------------------------------

# TensorRT-LLM's own Hugging Face conversion (tensorrt_llm.models.automodel), so any
# architecture it supports (Qwen2 for rank1-*, Llama, Mistral) converts the same way.
_CONVERT = (
    "import sys\n"
    "from tensorrt_llm.models.automodel import AutoModelForCausalLM\n"
    "model = AutoModelForCausalLM.from_hugging_face(sys.argv[1], dtype=sys.argv[3])\n"
    "model.save_checkpoint(sys.argv[2], save_config=True)\n"
)


def _max_positions(checkpoint: Path) -> int:
    import json

    config = Path(checkpoint) / "config.json"
    if not config.is_file():
        raise InvalidArgument(f"{checkpoint} is not a Hugging Face model folder (no config.json)")
    return int(json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings") or 4096)


def engine_dir_of(repository: Path) -> Path:
    return Path(repository).resolve() / JUDGE_MODEL / VERSION / "engine"


def build_judge_engine_commands(
    checkpoint: Path,
    repository: Path,
    *,
    work_dir: Path | None = None,
    dtype: str = "bfloat16",
    max_batch_size: int = 64,
    max_seq_len: int | None = None,
    max_num_tokens: int = 16384,
    python: str = sys.executable,
) -> list[list[str]]:
    """The commands that turn a Hugging Face causal LM into the judge's TensorRT-LLM engine.

    Engine options and why:
    - --gather_generation_logits (float32): p(true) vs p(false) needs the full logits of the
      answer step, not the sampled token's log-prob;
    - --paged_kv_cache + --use_paged_context_fmha: paged KV cache for in-flight batching, and
      the paged context attention that KV-cache reuse and chunked context require;
    - --remove_input_padding: packed ragged batches (documents differ in length);
    - max_seq_len defaults to the model's positions, capped at Rank1's 16k context.
    """
    checkpoint = Path(checkpoint).resolve()
    engine_dir = engine_dir_of(repository)
    work = Path(work_dir).resolve() if work_dir else engine_dir.parent / "trtllm-checkpoint"
    seq_len = max_seq_len or min(_max_positions(checkpoint), 16384)
    if seq_len < 2:
        raise InvalidArgument(f"max_seq_len must be at least 2, got {seq_len}")
    convert = [python, "-c", _CONVERT, str(checkpoint), str(work), dtype]
    build = [
        "trtllm-build",
        "--checkpoint_dir", str(work),
        "--output_dir", str(engine_dir),
        "--gemm_plugin", "auto",
        "--gpt_attention_plugin", "auto",
        "--paged_kv_cache", "enable",
        "--use_paged_context_fmha", "enable",
        "--remove_input_padding", "enable",
        "--gather_generation_logits",
        "--logits_dtype", "float32",
        "--max_beam_width", "1",
        "--max_batch_size", str(max_batch_size),
        "--max_input_len", str(seq_len - 1),
        "--max_seq_len", str(seq_len),
        "--max_num_tokens", str(max_num_tokens),
    ]
    return [convert, build]


def render_judge_config(template: str, engine_dir: Path, decoupled: bool = True) -> str:
    """The judge config pointing at `engine_dir`; decoupled (streaming) unless told otherwise."""
    parse_config(template, "the judge config template")
    text = set_marked(template, "engine_dir", lambda body: _set_value(body, str(engine_dir)))
    text = set_marked(text, "decoupled", lambda body: re.sub(
        r"decoupled:\s*\w+", f"decoupled: {'true' if decoupled else 'false'}", body))
    parse_config(text, "the rendered judge config")
    return text


def fill_judge_config(repository: Path, engine_dir: Path | None = None, decoupled: bool = True) -> Path:
    repository = Path(repository)
    config = repository / JUDGE_MODEL / CONFIG_FILE
    text = render_judge_config(_template(repository, JUDGE_MODEL), engine_dir or engine_dir_of(repository), decoupled)
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text, encoding="utf-8")
    return config


def build_judge_engine(
    checkpoint: Path,
    repository: Path,
    *,
    decoupled: bool = True,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
    **options,
) -> Path:
    """Convert + build the judge engine into repository/judge/1/engine and fill the config.

    Needs an NVIDIA GPU and TensorRT-LLM (e.g. inside the tritonserver `-trtllm-python-py3`
    container). Returns the engine folder.
    """
    if shutil.which("trtllm-build") is None:
        raise FailedPrecondition(
            "trtllm-build not found: building the judge engine needs TensorRT-LLM on a machine with an NVIDIA GPU "
            "(pip install tensorrt-llm, or run inside NVIDIA's tritonserver <yy.mm>-trtllm-python-py3 container)"
        )
    commands = build_judge_engine_commands(checkpoint, repository, **options)
    for command in commands:
        shown = " ".join(command[:2] + ["..."]) if command[1] == "-c" else " ".join(command)
        _console.log(f"running {shown}")
        done = run(command, check=False)
        if done.returncode != 0:
            raise FailedPrecondition(f"{command[0]} failed with exit code {done.returncode}")
    engine_dir = engine_dir_of(repository)
    config = fill_judge_config(repository, engine_dir, decoupled)
    _console.log(f"built {engine_dir}; {config} points at it")
    return engine_dir
