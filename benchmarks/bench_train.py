"""Training-step tokens/s, eager vs torch.compile (compile time apart), vs Hugging Face
LlamaForCausalLM on the same shapes (see llmlab.bench.train).

    python benchmarks/bench_train.py [CONFIG] [--steps 5 --repeats 3 --no-compile --no-peer]

CONFIG defaults to configs/runs/bench-train.toml (d=256, 4 layers, 8 heads, 2 kv heads, ff 704,
vocab 8192, batch 8 x 256, fp32). On a GPU, e.g. configs/runs/base-125m.toml --dtype bf16.
"""

import sys
from pathlib import Path

from llmlab.bench.train import main

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "runs" / "bench-train.toml"

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not argv or argv[0].startswith("-"):
        argv = [str(DEFAULT_CONFIG), *argv]
    raise SystemExit(main(argv))
