"""The judge engine on a GPU, for a machine without network (no CUDA machine runs CI).

    PYTHONPATH=server python3 benchmarks/judge_gpu_check.py --tokenizer FOLDER [--out DIR]

FOLDER holds a judge's tokenizer files and manifest.json (SmolLM2's, from `irgate prepare`);
weights are random (fixed seed) with the shapes of Rank1 models, so nothing large travels.
Prints one JSON line per check:
- "fidelity": a ~300M model in fp32 on CUDA, the in-process judge (continuous batching engine)
  against the naive per-document loop: same tokens and endings, largest p(true) difference;
- "throughput": rank1-1.5b's shape in bf16, 100 documents x 256 reasoning tokens: the judge's
  tokens/s and the engine's plain generation tokens/s against transformers' eager batched
  `generate` on the same left-padded batch, in one run on one device.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import threading
import time
from pathlib import Path

FIDELITY_SHAPE = {"hidden_size": 1024, "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 4,
                  "intermediate_size": 4096, "head_dim": 64}
RANK1_1_5B = {"hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
              "intermediate_size": 8960, "head_dim": 128}
SMALL_SHAPE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "intermediate_size": 128, "head_dim": 16}  # --small: a rehearsal on a CPU
DEVICE = "cuda"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "manifest.json")


def make_judge(tokenizer: Path, folder: Path, shape: dict, dtype: str) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy2(tokenizer / name, folder / name)
    config = LlamaConfig(vocab_size=49152, max_position_embeddings=8192, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                         tie_word_embeddings=True, **shape)
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(folder)
    return folder


async def outcomes(judge, request) -> list:
    from irgate.domain.judging import Verdict

    found = [event async for event in judge.judge(request) if isinstance(event, Verdict)]
    return sorted(found, key=lambda outcome: outcome.index)


def fidelity(tokenizer: Path, work: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from naive_judge import benchmark_request, naive_judge, request_prompts

    from irgate.backends.judge.local import LocalJudge

    folder = make_judge(tokenizer, work / "fidelity", FIDELITY_SHAPE, "float32")
    judge = LocalJudge(folder, device=DEVICE)
    request = benchmark_request(8, 32)
    got = asyncio.run(outcomes(judge, request))
    asyncio.run(judge.close())
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(DEVICE).eval()
    naive = naive_judge(model, AutoTokenizer.from_pretrained(folder), judge.manifest, request_prompts(judge.manifest, request), 32)
    return {
        "check": "fidelity",
        "documents": len(got),
        "same_tokens_and_endings": all((o.reasoning_tokens, o.ended, o.reasoning) == (v.reasoning_tokens, v.ended, v.reasoning)
                                       for o, v in zip(got, naive)),
        "max_score_diff": max(abs(o.score - v.score) for o, v in zip(got, naive)),
    }


def throughput(tokenizer: Path, work: Path, documents: int, budget: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from naive_judge import benchmark_request, request_prompts

    from irgate.backends.judge.local import LocalJudge

    folder = make_judge(tokenizer, work / "rank1-1.5b", RANK1_1_5B, "bfloat16")
    request = benchmark_request(documents, budget, length_tokens=100)
    judge = LocalJudge(folder, device=DEVICE)
    # Warm-up: the same call twice, timing the second. A first run at a shape pays CUDA's kernel
    # selection and the caching allocator's growth (the cache widens every step); HF's
    # `generate` below runs after the engine, on a warm allocator.
    _sync()
    started = time.perf_counter()
    asyncio.run(outcomes(judge, request))
    _sync()
    warm_up_s = time.perf_counter() - started
    started = time.perf_counter()
    judged = asyncio.run(outcomes(judge, request))
    _sync()
    judge_s = time.perf_counter() - started
    judge_tokens = sum(outcome.reasoning_tokens for outcome in judged)

    engine = judge.engine
    prompts = [list(ids) for ids in AutoTokenizer.from_pretrained(folder)(request_prompts(judge.manifest, request))["input_ids"]]
    done = threading.Semaphore(0)
    counted = [0]

    def count(token: int, logits: object) -> None:
        counted[0] += 1

    started = time.perf_counter()
    for prompt in prompts:
        engine.generate(prompt, budget, end_id=-1, on_token=count, on_finish=lambda reason: done.release())
    for _ in prompts:
        done.acquire()
    generate_s = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else 0.0
    asyncio.run(judge.close())

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(DEVICE).eval()
    tokenizer_ = AutoTokenizer.from_pretrained(folder)
    tokenizer_.padding_side = "left"
    batch = tokenizer_(request_prompts(judge.manifest, request), return_tensors="pt", padding=True).to(DEVICE)
    with torch.inference_mode():
        model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=2)  # warm-up
        _sync()
        started = time.perf_counter()
        out = model.generate(**batch, max_new_tokens=budget, min_new_tokens=budget, do_sample=False, pad_token_id=2)
        _sync()
        baseline_s = time.perf_counter() - started
    baseline_tokens = (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]
    return {
        "check": "throughput",
        "shape": "rank1-1.5b (random weights, bf16)",
        "documents": documents,
        "budget": budget,
        "prompt_tokens_mean": round(sum(len(p) for p in prompts) / len(prompts), 1),
        "judge_tokens_per_s": round(judge_tokens / judge_s, 1),
        "engine_generate_tokens_per_s": round(counted[0] / generate_s, 1),
        "hf_generate_eager_tokens_per_s": round(baseline_tokens / baseline_s, 1),
        "judge_vs_hf_generate": round((judge_tokens / judge_s) / (baseline_tokens / baseline_s), 2),
        "engine_vs_hf_generate": round((counted[0] / generate_s) / (baseline_tokens / baseline_s), 2),
        "peak_gib": round(peak, 1),
        "judge_warm_up_s": round(warm_up_s, 2),
        "judge_s": round(judge_s, 2),
        "engine_generate_s": round(generate_s, 2),
        "hf_generate_s": round(baseline_s, 2),
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
    }


def _sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    global DEVICE, FIDELITY_SHAPE, RANK1_1_5B
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/irgate-judge-gpu"))
    parser.add_argument("--documents", type=int, default=100)
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--small", action="store_true", help="tiny models on the CPU: rehearse the script")
    parser.add_argument("--only", choices=("fidelity", "throughput"), help="run one check")
    args = parser.parse_args()
    if args.small:
        DEVICE, FIDELITY_SHAPE, RANK1_1_5B = "cpu", SMALL_SHAPE, SMALL_SHAPE
    checks = {"fidelity": lambda: fidelity(args.tokenizer, args.work),
              "throughput": lambda: throughput(args.tokenizer, args.work, args.documents, args.budget)}
    for name, check in checks.items():
        if args.only in (None, name):
            print(json.dumps(check()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
