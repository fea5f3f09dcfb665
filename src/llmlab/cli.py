"""The `llmlab` command: parse arguments, build a config, make one library call.

Every command that prints figures accepts --json. A user error (LLMLabError: bad config, missing
file, corrupt data) prints one line `llmlab: error: ...` and exits 2, with no traceback.
Heavy imports (torch) happen inside the handlers so `llmlab --help` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from llmlab.errors import LLMLabError

EXIT_USAGE = 2


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, sort_keys=False))


# ---------------------------------------------------------------------------------------------
# params


def _add_params(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("params", help="parameter, FLOP and KV-cache accounting of a config")
    p.add_argument("config", help="a TOML file with a [model] table")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. model.n_kv_heads=4")
    p.add_argument("--seq-len", type=int, default=None, help="context for the attention FLOP term (default: max_seq_len)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_params)


def _cmd_params(args: argparse.Namespace) -> int:
    from llmlab.config import load_model_config
    from llmlab.model.accounting import count

    cfg = load_model_config(args.config, args.set)
    c = count(cfg, seq_len=args.seq_len)
    if args.json:
        _print_json(c)
        return 0
    width = max(len(k) for k in c)
    for key, value in c.items():
        print(f"{key:<{width}}  {value:>16,}")
    return 0


# ---------------------------------------------------------------------------------------------
# generate


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text from a run directory or (random weights) a config")
    p.add_argument("source", help="a run directory (trained weights) or a model config TOML (random weights)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt", help="prompt text (needs the run's tokenizer)")
    g.add_argument("--prompt-ids", help="prompt token ids, comma separated, e.g. 1,2,3")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--no-kv-cache", action="store_true", help="recompute the whole prefix every step")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=1, help="copies of the prompt decoded together")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="print ids, text and tokens/s as one JSON object")
    p.set_defaults(func=_cmd_generate)


def _cmd_generate(args: argparse.Namespace) -> int:
    from llmlab.infer.run import generate_from_source

    out = generate_from_source(
        args.source,
        prompt=args.prompt,
        prompt_ids=args.prompt_ids,
        max_new_tokens=args.max_new_tokens,
        use_kv_cache=not args.no_kv_cache,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        compile=args.compile,
        overrides=args.set,
    )
    if args.json:
        _print_json(out)
    else:
        if out.get("text") is not None:
            print(out["text"][0])
        else:
            print(",".join(str(i) for i in out["ids"][0]))
        print(
            f"[{out['new_tokens']} new tokens, {out['tokens_per_s']:.1f} tokens/s, "
            f"kv_cache={'on' if out['kv_cache'] else 'off'}]",
            file=sys.stderr,
        )
    return 0


# ---------------------------------------------------------------------------------------------
# bench: each benchmark is a module llmlab.bench.<kind> with main(argv) -> int (own arguments).

BENCH_KINDS = ("train", "infer", "moe", "data")


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: a table, then one JSON line", add_help=False)
    p.add_argument("kind", choices=BENCH_KINDS)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of that benchmark (--help for them)")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    module = importlib.import_module(f"llmlab.bench.{args.kind}")
    return int(module.main(args.rest) or 0)


# ---------------------------------------------------------------------------------------------

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_params, _add_generate, _add_bench]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmlab",
        description="What do KV caching, GQA and MoE buy a small GPT, at equal active parameters?",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LLMLabError as e:
        print(f"llmlab: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("llmlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
