#!/usr/bin/env bash
# The GPU proof in one command (parts in order of value, each kept as it finishes, within
# --budget-s, default 480 s): pytest -m gpu, compiled training tokens/s + MFU + peak memory of the
# 125M arms, eager vs CUDA-graph decode, SDPA kernels per attention shape, MoE dispatch rates,
# compile-check. Writes <out-dir>/gpu-<gpu name>.json (+ its pytest log and junit XML). The logic
# lives in llmlab.gpu_check.
#
#   benchmarks/gpu_check.sh [--out-dir DIR] [--budget-s S] [--parts a,b]   # on a CUDA machine
#   benchmarks/gpu_check.sh --dry-run                                      # on a CPU: checks the script
#
# Runs from a bare copy of the tree (no install, no .venv): this copy's src comes first on the path,
# so the llmlab that runs is this one, whatever else the python has installed. PYTHON picks the
# interpreter (default: .venv/bin/python when present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# The dry run's Triton MoE arm runs in Triton's interpreter, which must be on before triton is imported.
for arg in "$@"; do [ "$arg" = --dry-run ] && export TRITON_INTERPRET=1; done
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" -m llmlab.gpu_check "$@"
