"""The CPU flavour's judge on a GPU: Triton's python backend running irgate's judge engine on CUDA,
compared with the same engine in-process. For a GPU machine without network (run by
triton_gpu_check.sh); this machine packs what it needs.

    python benchmarks/triton_gpu_check.py pack CARRY        # here: CARRY/ holds ~58 MB to carry
    python3 benchmarks/triton_gpu_check.py run CARRY        # there (PYTHONPATH=server)

`pack` puts into CARRY: the nvidia-pytriton wheel (`make triton` downloaded it), wheels of rich
and its dependencies (irgate's judge imports it; installed there only if missing), the judge
folder's tokenizer and manifest (SmolLM2's vocabulary; weights are made there), and the judge's
CPU-flavour config rendered non-decoupled (unary HTTP needs no gRPC client there).

`run` unpacks tritonserver, makes a judge with random weights (Llama layout, SmolLM2's
vocabulary, fp32, fixed seed), serves it with the python backend on `--device` (cuda), sends
PROMPTS greedy requests at once over Triton's HTTP API (stdlib only), runs the same prompts
through an in-process JudgeEngine, and prints one JSON line: whether the tokens are equal, the
largest logit difference, and both sides' wall time. Exit status 1 when they differ.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPTS = 16
BUDGET = 64
SEED = 0
# ~300M parameters: large enough to keep the GPU busy per step, small enough to make, save and
# load twice within a minute.
SHAPE = {"hidden_size": 1024, "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 4,
         "intermediate_size": 4096, "head_dim": 64}
SMALL_SHAPE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "intermediate_size": 128, "head_dim": 16}  # --small: a CPU rehearsal of the script
RICH = ["rich", "pygments", "markdown-it-py", "mdurl"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "manifest.json")


def pack(carry: Path) -> None:
    sys.path.insert(0, str(REPO / "server"))
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from irgate.models import triton as triton_models

    wheels = carry / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    (wheel,) = sorted((REPO / ".cache" / "triton" / "wheel").glob("nvidia_pytriton-*.whl"))
    shutil.copy2(wheel, wheels / wheel.name)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(wheels), *RICH], check=True)
    judge = carry / "judge"
    judge.mkdir(exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy2(REPO / "models" / "judge" / name, judge / name)
    gpu_config = triton_models.SOURCE_REPOSITORY / "judge" / "config.pbtxt"
    text = triton_models.render_cpu_config(gpu_config.read_text(), "judge", {"folder": "set by run", "device": "cuda", "threads": "0"})
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    config.model_transaction_policy.decoupled = False
    model = carry / "repository" / "judge"
    (model / "1").mkdir(parents=True, exist_ok=True)
    (model / "config.pbtxt").write_text(text_format.MessageToString(config))
    shutil.copy2(REPO / "server" / "irgate" / "triton_python" / "model.py", model / "1" / "model.py")
    size = sum(path.stat().st_size for path in carry.rglob("*") if path.is_file())
    print(f"packed {carry}: {size / 2**20:.1f} MiB to carry beside the repository")


def _set_parameter(text: str, key: str, value: str) -> str:
    pattern = re.compile(r'(key: "%s"\s*value \{\s*string_value: )"[^"]*"' % re.escape(key))
    new, count = pattern.subn(lambda match: f'{match.group(1)}"{value}"', text)
    if count != 1:
        raise SystemExit(f"the packed judge config has no parameter {key}")
    return new


def _make_judge(carry: Path, folder: Path, small: bool) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy2(carry / "judge" / name, folder / name)
    config = LlamaConfig(vocab_size=49152, max_position_embeddings=8192, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                         tie_word_embeddings=True, **(SMALL_SHAPE if small else SHAPE))
    torch.manual_seed(SEED)
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(folder)


def _infer(url: str, prompt: list[int], budget: int, end_id: int) -> tuple[list[int], list[list[float]] | None, float]:
    def tensor(name: str, datatype: str, data: list) -> dict:
        return {"name": name, "datatype": datatype, "shape": [1, len(data)], "data": data}

    body = json.dumps({
        "inputs": [tensor("input_ids", "INT32", prompt), tensor("input_lengths", "INT32", [len(prompt)]),
                   tensor("request_output_len", "INT32", [budget]), tensor("end_id", "INT32", [end_id]),
                   tensor("streaming", "BOOL", [False]), tensor("return_generation_logits", "BOOL", [True]),
                   tensor("exclude_input_in_output", "BOOL", [True])],
        "outputs": [{"name": name, "parameters": {"binary_data": True}}
                    for name in ("output_ids", "sequence_length", "generation_logits")],
    }).encode()
    started = time.perf_counter()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as answer:
        header_length = int(answer.headers["Inference-Header-Content-Length"])
        payload = answer.read()
    seconds = time.perf_counter() - started
    import numpy as np

    header, offset, arrays = json.loads(payload[:header_length]), header_length, {}
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        dtype = {"INT32": np.int32, "FP32": np.float32}[output["datatype"]]
        arrays[output["name"]] = np.frombuffer(payload[offset : offset + size], dtype=dtype).reshape(output["shape"])
        offset += size
    length = int(arrays["sequence_length"].reshape(-1)[0])
    tokens = [int(token) for token in arrays["output_ids"].reshape(-1)[:length]]
    logits = arrays["generation_logits"].reshape(-1, arrays["generation_logits"].shape[-1])
    return tokens, logits, seconds


def _in_process(folder: Path, device: str, prompts: list[list[int]], budget: int, end_id: int):
    import numpy as np

    from irgate.backends.judge.engine import JudgeEngine

    engine = JudgeEngine.load(folder, device=device)
    results: list[tuple[list[int], list]] = [([], []) for _ in prompts]
    done = threading.Semaphore(0)
    try:
        started = time.perf_counter()
        for index, prompt in enumerate(prompts):
            tokens, rows = results[index]
            engine.generate(prompt, budget, end_id=end_id, return_logits=True,
                            on_token=lambda token, logits, tokens=tokens, rows=rows: (tokens.append(token), rows.append(logits)),
                            on_finish=lambda reason: done.release())
        for _ in prompts:
            done.acquire()
        seconds = time.perf_counter() - started
    finally:
        engine.close()
    return [(tokens, np.stack(rows) if rows else None) for tokens, rows in results], seconds


def run(carry: Path, work: Path, device: str, small: bool) -> int:
    import numpy as np

    sys.path.insert(0, str(REPO / "server"))
    work.mkdir(parents=True, exist_ok=True)
    extra_site = work / "site"
    try:
        import rich  # noqa: F401 - irgate's judge imports it
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links",
                        str(carry / "wheels"), "--target", str(extra_site), *RICH], check=True)
        sys.path.insert(0, str(extra_site))
    from irgate.models.tritonserver import TritonServer, unpack

    (wheel,) = sorted((carry / "wheels").glob("nvidia_pytriton-*.whl"))
    install = unpack(wheel, work / "triton")
    folder = work / "judge"
    started = time.perf_counter()
    _make_judge(carry, folder, small)
    made_s = time.perf_counter() - started
    repository = work / "repository"
    shutil.rmtree(repository, ignore_errors=True)
    shutil.copytree(carry / "repository", repository)
    config = repository / "judge" / "config.pbtxt"
    python_path = [str(REPO / "server"), str(extra_site), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                   *site.getsitepackages()]
    text = _set_parameter(config.read_text(), "irgate_python_path", ":".join(dict.fromkeys(python_path)))
    text = _set_parameter(text, "folder", str(folder))
    config.write_text(_set_parameter(text, "device", device))

    rng = np.random.default_rng(SEED)
    prompts = [[int(t) for t in rng.integers(100, 49000, size=int(rng.integers(150, 400)))] for _ in range(PROMPTS)]
    end_id = 2
    report: dict[str, object] = {"device": device, "prompts": PROMPTS, "budget": BUDGET, "make_judge_s": round(made_s, 1)}
    started = time.perf_counter()
    with TritonServer(repository, install=install, log=work / "tritonserver.log") as server:
        report["triton_start_s"] = round(time.perf_counter() - started, 1)
        url = f"http://127.0.0.1:{server.http_port}/v2/models/judge/infer"
        _infer(url, prompts[0][:20], 2, end_id)  # warm-up
        started = time.perf_counter()
        with ThreadPoolExecutor(PROMPTS) as pool:
            served = list(pool.map(lambda prompt: _infer(url, prompt, BUDGET, end_id), prompts))
        report["triton_wall_s"] = round(time.perf_counter() - started, 2)
        report["triton_p50_request_s"] = round(float(np.median([seconds for _, _, seconds in served])), 2)
        metrics = server.metrics()
        report["triton_generated_tokens"] = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                                                if line.startswith("irgate_judge_generated_tokens_total{"))
    local, local_s = _in_process(folder, device, prompts, BUDGET, end_id)
    report["in_process_wall_s"] = round(local_s, 2)
    same_tokens = all(tokens == reference for (tokens, _, _), (reference, _) in zip(served, local))
    worst = 0.0
    for (tokens, logits, _), (reference, rows) in zip(served, local):
        if rows is not None and logits is not None and len(tokens) == len(reference):
            worst = max(worst, float(np.abs(logits[: len(reference)] - rows).max()))
    report.update(same_tokens=same_tokens, max_logit_diff=worst,
                  tokens_per_prompt=[len(tokens) for tokens, _, _ in served])
    print(json.dumps(report))
    if not same_tokens:
        print(f"tritonserver log: {work / 'tritonserver.log'}", file=sys.stderr)
    return 0 if same_tokens and worst <= 1e-3 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("pack", "run"))
    parser.add_argument("carry", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/irgate-triton-gpu"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="a tiny model (a rehearsal on a CPU)")
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.carry.resolve())
        return 0
    return run(args.carry.resolve(), args.work.resolve(), args.device, args.small)


if __name__ == "__main__":
    sys.exit(main())
