"""`llmlab bench data`: tokenization throughput of `prepare` versus single-threaded tiktoken.

On one corpus (pydocs repeated to --mb MB and written in WikiText's raw format, or a local WikiText
copy with --source-dir), in interleaved rounds so that a noisy machine hurts every side alike:
  - single-threaded tiktoken: `encode_ordinary` per document (the usual API), and
    `encode_to_numpy` (its fastest single-threaded path);
  - prepare's tokenizer (`ParallelEncoder`) with 1 and with N worker processes, warm;
  - the whole `prepare` (read, split into articles, hash the source, tokenize, write, hash the
    files, meta.json) with N workers; each call starts its own workers, and that is included.
Medians over --repeat rounds; each case's first (warm-up) call is reported apart. Prints a table,
then one JSON line.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmlab.data.corpus import SPLITS, Source
from llmlab.data.encode import ParallelEncoder, chunk_documents, usable_cpus
from llmlab.data.prepare import prepare
from llmlab.data.sources import get_source
from llmlab.data.tokenizers import GPT2Tokenizer, Tokenizer, get_tokenizer
from llmlab.data.wikitext import RAW_FILES
from llmlab.environment import machine
from llmlab.tables import emit_json, print_table
from llmlab.timing import median, time_round_robin


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="llmlab bench data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=64.0, help="corpus size in MB of text (pydocs repeated; default 64)")
    p.add_argument("--source-dir", default=None, help="a folder of WikiText raw files to use instead (all of it)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: all usable CPUs)")
    p.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported (default 3)")
    p.add_argument("--tokenizer", default="gpt2", help="gpt2 | byte | a tokenizer.json (default gpt2)")
    return p.parse_args(argv)


def write_wikitext_corpus(folder: Path, mb: float) -> None:
    """pydocs documents as WikiText raw files: train = all documents repeated to `mb` MB."""
    pydocs = get_source("pydocs")
    articles = [f" = Document {i} = \n{text}" for i, text in enumerate(d for s in SPLITS for d in pydocs.documents(s))]
    block = "".join(articles)
    repeats = max(1, round(mb * 1e6 / len(block.encode("utf-8"))))
    (folder / RAW_FILES["train"]).write_text(block * repeats, encoding="utf-8")
    (folder / RAW_FILES["val"]).write_text(articles[0], encoding="utf-8")
    (folder / RAW_FILES["test"]).write_text(articles[1], encoding="utf-8")


def all_documents(source: Source) -> list[str]:
    return [d for split in SPLITS for d in source.documents(split)]


def single_thread_runs(tok: Tokenizer, docs: list[str]) -> dict[str, Callable[[], int]]:
    """Baselines on one thread; each returns the number of tokens it produced."""
    runs: dict[str, Callable[[], int]] = {}
    if isinstance(tok, GPT2Tokenizer):
        enc = tok._enc  # the raw tiktoken Encoding: the baseline is tiktoken itself, not our wrapper
        runs["tiktoken encode_ordinary, 1 thread"] = lambda: sum(len(enc.encode_ordinary(d)) for d in docs)
        runs["tiktoken encode_to_numpy, 1 thread"] = lambda: sum(
            enc.encode_to_numpy(d, disallowed_special=()).size for d in docs
        )
    else:
        runs[f"{tok.name} encode, 1 thread"] = lambda: sum(len(tok.encode(d)) for d in docs)
    return runs


def encoder_run(encoder: ParallelEncoder, docs: list[str]) -> Callable[[], int]:
    # tokens minus one EOT per document, so the count compares with the baselines'
    return lambda: sum(c.tokens.size - c.documents for _, c in encoder.map((None, ch) for ch in chunk_documents(docs)))


def prepare_run(dataset: str, source_dir: str, out: Path, workers: int, tok: Tokenizer) -> Callable[[], int]:
    def run() -> int:
        meta = prepare(dataset, tok.spec[0], out, source_dir=source_dir, tokenizer_file=tok.spec[1],
                       force=True, workers=workers, progress=False)
        return sum(s["tokens"] - s["documents"] for s in meta["splits"].values())

    return run


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Time every case, interleaved; returns per-case rows and the corpus size."""
    tok = get_tokenizer(args.tokenizer)
    source_dir = args.source_dir or str(tmp / "corpus")
    if not args.source_dir:
        Path(source_dir).mkdir()
        write_wikitext_corpus(Path(source_dir), args.mb)
    docs = all_documents(get_source("wikitext-103", source_dir))
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    workers = args.workers or usable_cpus()
    counts: dict[str, int] = {}

    def counted(name: str, fn: Callable[[], int]) -> Callable[[], None]:
        return lambda: counts.__setitem__(name, fn())

    with ParallelEncoder(tok, 1) as one, ParallelEncoder(tok, workers) as many:
        runs = single_thread_runs(tok, docs)
        runs["prepare tokenizer, 1 process"] = encoder_run(one, docs)
        runs[f"prepare tokenizer, {workers} processes"] = encoder_run(many, docs)  # warm-up starts the workers
        runs[f"prepare end to end, {workers} processes"] = prepare_run(
            "wikitext-103", source_dir, tmp / "out", workers, tok
        )
        times, warmup = time_round_robin({n: counted(n, fn) for n, fn in runs.items()}, repeats=args.repeat)
    rows = []
    for name, t in times.items():
        seconds = median(t)
        rows.append({"case": name, "seconds": seconds, "mb_per_s": mb / seconds, "tokens": counts[name],
                     "mtokens_per_s": counts[name] / seconds / 1e6, "warmup_s": warmup[name]})
    return {"mb": mb, "documents": len(docs), "workers": workers, "rows": rows}


def summarize(m: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    rows, w = {r["case"]: r for r in m["rows"]}, m["workers"]
    baseline = m["rows"][0]  # the usual single-threaded API
    fastest_single = min((r for r in m["rows"] if "1 thread" in r["case"]), key=lambda r: r["seconds"])
    parallel = rows[f"prepare tokenizer, {w} processes"]
    e2e = rows[f"prepare end to end, {w} processes"]
    return {
        "bench": "data",
        "tokenizer": args.tokenizer,
        "corpus": f"WikiText raw files in {args.source_dir}" if args.source_dir else "pydocs as WikiText raw files",
        "mb": round(m["mb"], 2),
        "documents": m["documents"],
        "cpus": usable_cpus(),
        "workers": w,
        "repeat": args.repeat,
        "rows": [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in m["rows"]],
        "speedup_vs_single_thread": round(baseline["seconds"] / parallel["seconds"], 3),
        "speedup_vs_fastest_single_thread": round(fastest_single["seconds"] / parallel["seconds"], 3),
        "scaling_vs_1_process": round(rows["prepare tokenizer, 1 process"]["seconds"] / parallel["seconds"], 3),
        "end_to_end_over_tokenization": round(e2e["seconds"] / parallel["seconds"], 3),
        "environment": machine(),
    }


def print_summary(summary: dict[str, Any]) -> None:
    print(f"corpus: {summary['corpus']}, {summary['mb']} MB, {summary['documents']:,} documents;"
          f" {summary['cpus']} CPUs, {summary['workers']} workers; medians of {summary['repeat']} interleaved rounds")
    print_table(summary["rows"], [("case", "case", ""), ("seconds", "seconds", ".3f"), ("mb_per_s", "MB/s", ".2f"),
                                  ("mtokens_per_s", "Mtokens/s", ".3f"), ("warmup_s", "warm-up s", ".2f")])
    print(f"prepare tokenizer vs single-threaded tiktoken: {summary['speedup_vs_single_thread']:.2f}x"
          f" (vs its fastest single-threaded path: {summary['speedup_vs_fastest_single_thread']:.2f}x;"
          f" vs 1 process: {summary['scaling_vs_1_process']:.2f}x)")
    print(f"end-to-end prepare / tokenization: {summary['end_to_end_over_tokenization']:.2f}x")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="llmlab-bench-data-") as tmp:
        summary = summarize(measure(args, Path(tmp)), args)
    print_summary(summary)
    emit_json(summary)
    return 0
