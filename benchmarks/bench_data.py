"""Tokenization throughput of `llmlab prepare` vs single-threaded tiktoken (see llmlab.bench.data).

    python benchmarks/bench_data.py [--mb 32 --workers N --repeat 3 --source-dir WIKITEXT_DIR]
"""

import sys

from llmlab.bench.data import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
