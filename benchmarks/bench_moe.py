"""MoE layer forward+backward per dispatch vs a dense MLP at equal active parameters
(see llmlab.bench.moe).

    python benchmarks/bench_moe.py [--tokens 512,2048,8192 --threads 1 --clock cpu --repeats 10]
"""

import sys

from llmlab.bench.moe import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
