#!/usr/bin/env bash
# The CPU flavour's judge on a GPU (Triton python backend, irgate's judge engine on CUDA) against
# the same engine in-process; about 2-3 minutes on one H200, no network needed.
#   here:  .venv/bin/python benchmarks/triton_gpu_check.py pack carry   (needs `make triton` and `make prepare`)
#   there: bash benchmarks/triton_gpu_check.sh carry                     (python3 with torch + transformers)
# Prints one JSON line (same_tokens, max_logit_diff, wall times); exit 1 when Triton and
# in-process disagree. Options after the folder go to the script (--device cpu --small rehearses it here).
set -euo pipefail
cd "$(dirname "$0")/.."
carry="${1:?usage: triton_gpu_check.sh CARRY_FOLDER [--device cuda] [--small]}"
shift
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
PYTHONPATH=server timeout 600 python3 benchmarks/triton_gpu_check.py run "$carry" "$@"
