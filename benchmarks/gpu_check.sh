#!/usr/bin/env bash
# The GPU proof of issue 10 in one command (at most ~8 minutes on one GPU): pytest -m gpu,
# compile-check of the 125M models in bf16, compiled training tokens/s + peak memory + MFU,
# eager vs CUDA-graph decode at batch 1 and 8, grouped vs capacity MoE training.
# Writes benchmarks/results/gpu-<gpu name>.json. The logic lives in llmlab.bench.gpu_check.
#
#   benchmarks/gpu_check.sh              # on a CUDA machine
#   benchmarks/gpu_check.sh --dry-run    # on a CPU: tiny shapes, checks the script itself
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" -m llmlab.bench.gpu_check "$@"
