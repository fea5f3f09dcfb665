"""Decode tokens/s with and without KV cache vs Hugging Face transformers (see llmlab.bench.infer).

    python benchmarks/bench_infer.py [--prompt-len 256 --new-tokens 256 --repeats 3]
"""

import sys

from llmlab.bench.infer import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
