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

from llmlab.config import COMPILE_MODES, DTYPES
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
    p.add_argument("--match", metavar="BASE.toml", help="resize --free so that --key equals BASE's (iso-parameter solver)")
    p.add_argument("--free", default="n_heads", choices=("n_heads", "d_ff", "n_layers", "moe.d_ff_expert"),
                   help="the dimension --match may change (default n_heads, at a fixed head_dim)")
    p.add_argument("--key", default="active_non_embedding", help="the count to match (default active_non_embedding)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_params)


def _cmd_params(args: argparse.Namespace) -> int:
    from llmlab.config import load_model_config
    from llmlab.model.accounting import count

    cfg = load_model_config(args.config, args.set)
    if args.match:
        return _match_params(cfg, args)
    c = count(cfg, seq_len=args.seq_len)
    if args.json:
        _print_json(c)
        return 0
    width = max(len(k) for k in c)
    for key, value in c.items():
        print(f"{key:<{width}}  {value:>16,}")
    return 0


def _match_params(cfg: Any, args: argparse.Namespace) -> int:
    from llmlab.config import load_model_config
    from llmlab.errors import ConfigError
    from llmlab.model.accounting import count, solve_iso_params

    target_counts = count(load_model_config(args.match))
    if args.key not in target_counts:
        raise ConfigError(f"--key must be one of {', '.join(target_counts)}; got {args.key!r}")
    target = target_counts[args.key]
    solved, c = solve_iso_params(cfg, target, args.free, key=args.key)
    value = solved.moe.d_ff_expert if args.free == "moe.d_ff_expert" else getattr(solved, args.free)
    diff = c[args.key] / target - 1
    if args.json:
        _print_json({"free": args.free, "value": value, "key": args.key, "target": target,
                     "relative_diff": diff, "counts": c})
    else:
        print(f"--set model.{args.free}={value}: {args.key} {c[args.key]:,} vs {target:,} in {args.match} ({diff:+.2%})")
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
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--compile", nargs="?", const="default", default=None, choices=COMPILE_MODES,
                   help="torch.compile the cached decode step: default (CUDA graphs on a GPU, frozen weights "
                        "on a CPU) or max-autotune (also the fastest kernel per matmul; longer compile); "
                        "compile time reported apart")
    p.add_argument("--decode-threads", type=int, default=None,
                   help="intra-op CPU threads of the decode loop (default: torch's; a compiled CPU step takes "
                        "the faster of that and 1, timed when compiling)")
    p.add_argument("--verbose", action="store_true", help="show inductor's max-autotune tables")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="print ids, text and tokens/s as one JSON object")
    p.set_defaults(func=_cmd_generate)


def _cmd_generate(args: argparse.Namespace) -> int:
    from llmlab.infer.command import generate_from_source

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
        dtype=args.dtype,
        compile=args.compile or False,
        decode_threads=args.decode_threads,
        verbose=args.verbose,
        overrides=args.set,
    )
    if args.json:
        _print_json(out)
    else:
        if out.get("text") is not None:
            print(out["text"][0])
        else:
            print(",".join(str(i) for i in out["ids"][0]))
        decode = f"decode {out['decode_tokens_per_s']:.1f} tokens/s, " if out["decode_tokens_per_s"] else ""
        compiled = f", compiled in {out['compile_s']:.1f} s" if out["compile_s"] is not None else ""
        print(
            f"[{out['new_tokens']} new tokens: prefill {out['prefill_s'] * 1e3:.1f} ms, {decode}"
            f"kv_cache={'on' if out['kv_cache'] else 'off'}, decode at {out['decode_threads']} "
            f"thread(s){compiled}]",
            file=sys.stderr,
        )
    return 0


# ---------------------------------------------------------------------------------------------
# train / eval

TRAIN_EPILOG = """exit codes:
  0   done (result.json written)
  2   user error: bad config, data, run directory in use, checkpoint that does not match
  3   non-finite loss or gradient norm: stopped before the update, last good checkpoint kept
  75  stopped by SIGTERM/SIGINT after a checkpoint: run the same command again to resume

multi-process: torchrun --nproc_per_node=N -m llmlab train CONFIG (same tokens per update at any N)"""


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a run (resumes when the run directory holds a checkpoint)",
                       epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="a run TOML file: [model], [data], [train]")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=3e-4")
    p.add_argument("--run-dir", default=None, help="where the run is recorded (default: runs/<config name>)")
    p.add_argument("--json", action="store_true", help="print result.json as one JSON line at the end")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llmlab.config import load_run_config
    from llmlab.train import TrainingDiverged, train

    cfg = load_run_config(args.config, args.set)
    run_dir = args.run_dir or str(Path("runs") / Path(args.config).stem)
    try:
        outcome = train(cfg, run_dir)
    except TrainingDiverged as e:
        print(f"llmlab: error: {e}", file=sys.stderr)
        return e.exit_code
    if args.json and outcome.result is not None:
        _print_json(outcome.result)
    return outcome.exit_code


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate the latest checkpoint of a run directory")
    p.add_argument("run_dir")
    p.add_argument("--split", choices=("val", "test"), default="val",
                   help="val: the fixed validation windows (train.eval_windows); test: the whole split")
    p.add_argument("--stride", type=int, default=None, metavar="N",
                   help="sliding windows every N tokens, each scoring its last N (at least seq_len - N tokens"
                        " of context, as WikiText perplexities are reported); default: the run's train.eval_stride")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from llmlab.train import evaluate_run

    out = evaluate_run(args.run_dir, split=args.split, device=args.device, stride=args.stride)
    if args.json:
        _print_json(out)
        return 0
    width = max(len(k) for k in out)
    for key, value in out.items():
        print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    return 0


# ---------------------------------------------------------------------------------------------
# prepare, tokenizer


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="tokenize a corpus once into token files + meta.json")
    p.add_argument("--dataset", required=True, help="wikitext-103 | wikitext-2 | pydocs | a folder of .txt files")
    p.add_argument("--tokenizer", default="gpt2", help="gpt2 | byte | a trained tokenizer.json (default: gpt2)")
    p.add_argument("--out", default=None, help="output folder (default: data/<dataset>-<tokenizer>)")
    p.add_argument("--source-dir", default=None, help="local WikiText copy: the raw files or the parquet files")
    p.add_argument("--tokenizer-file", default=None, help="a local gpt2.tiktoken ranks file")
    p.add_argument("--force", action="store_true", help="overwrite data prepared differently")
    p.add_argument("--workers", type=int, default=None,
                   help="tokenizer processes (default: all CPUs for large corpora)")
    p.add_argument("--json", action="store_true", help="print meta.json as one JSON line")
    p.set_defaults(func=_cmd_prepare)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from llmlab.config import DataConfig
    from llmlab.data.prepare import prepare, summary

    out = args.out or DataConfig(dataset=args.dataset, tokenizer=args.tokenizer).resolved_dir
    meta = prepare(args.dataset, args.tokenizer, out, source_dir=args.source_dir, tokenizer_file=args.tokenizer_file,
                   force=args.force, workers=args.workers)
    if args.json:
        _print_json(meta)
    else:
        print(summary(meta, out))
    return 0


def _add_tokenizer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="fetch the GPT-2 BPE for offline use, or train a byte-level BPE")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    fetch = actions.add_parser("fetch",
                               help="cache the GPT-2 ranks (tiktoken, else PyPI openai-whisper), sha256-checked")
    fetch.add_argument("name", choices=("gpt2",))
    fetch.add_argument("--json", action="store_true", help="print one JSON object")
    fetch.set_defaults(func=_cmd_tokenizer_fetch)
    train = actions.add_parser("train", help="train a byte-level BPE (HF tokenizers) on a corpus's train split")
    train.add_argument("--dataset", required=True, help="wikitext-103 | wikitext-2 | pydocs | a folder of .txt files")
    train.add_argument("--source-dir", default=None, help="local WikiText copy")
    train.add_argument("--vocab-size", type=int, required=True, help="including 256 bytes and <|endoftext|>")
    train.add_argument("--out", required=True, help="where to write the tokenizer.json")
    train.add_argument("--json", action="store_true", help="print one JSON object")
    train.set_defaults(func=_cmd_tokenizer_train)


def _cmd_tokenizer_fetch(args: argparse.Namespace) -> int:
    from llmlab.data.gpt2_ranks import fetch_gpt2

    out = fetch_gpt2()
    if args.json:
        _print_json(out)
    else:
        print(f"gpt2 ranks: {out['path']} (sha256 {out['sha256'][:16]}…, from {out['source']})")
    return 0


def _cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from llmlab.data.bpe import train_bpe

    out = train_bpe(args.dataset, args.vocab_size, args.out, source_dir=args.source_dir)
    if args.json:
        _print_json(out)
    else:
        print(f"wrote {out['path']}: vocab {out['vocab_size']:,}, hash {out['hash']}")
    return 0


# ---------------------------------------------------------------------------------------------
# audit: compile-readiness of any user model (llmlab.audit)


def _add_audit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="how torch.compile-ready is your own model, line by line (exit 0 ready, 1 hazards)")
    p.add_argument("target", metavar="FILE.py[:FACTORY]",
                   help="FACTORY (default build) returns (model, idx) or (model, idx, decode_step)")
    p.add_argument("--device", default="cpu", help="where the checks run (default cpu)")
    p.add_argument("--steps", type=int, default=4, help="compiled train steps at fixed shapes (default 4)")
    p.add_argument("--json", action="store_true", help="one JSON object: verdict, checks, every finding")
    p.set_defaults(func=_cmd_audit)


def _cmd_audit(args: argparse.Namespace) -> int:
    from llmlab.audit import audit, render, to_json

    report = audit(args.target, device=args.device, steps=args.steps)
    if args.json:
        _print_json(to_json(report))
    else:
        print(render(report))
    return report.exit_code


# ---------------------------------------------------------------------------------------------
# compile-check (its own arguments: see llmlab.audit.compile_check)


def _add_compile_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compile-check", help="prove a model compiles fullgraph with no recompiles (exit 1 if not)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="CONFIG [options] (--help for them)")
    p.set_defaults(func=_cmd_compile_check)


def _cmd_compile_check(args: argparse.Namespace) -> int:
    from llmlab.audit.compile_check import main as compile_check_main

    return compile_check_main(args.rest)


# ---------------------------------------------------------------------------------------------
# plan / campaign / report / demo


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="show a campaign's variants, parameters and budget; check the match")
    p.add_argument("campaign", help="a campaign TOML (configs/campaigns/*.toml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every variant")
    _add_memory_gb(p)
    p.add_argument("--mfu", type=float, default=None,
                   help="model FLOPs utilisation for the A100/H100 wall-time estimates (default: the dense "
                        "baseline's measured in benchmarks/results/gpu-*.json for that GPU, else an assumed 0.40)")
    p.add_argument("--seed-std", type=float, default=None, metavar="NATS",
                   help="seed standard deviation of the test loss for the resolvable-difference estimate "
                        "(default 0.011: the CPU study's, pooled over its compared arms)")
    p.add_argument("--measure-cpu", action="store_true",
                   help="time a few training steps of each variant on this CPU for a CPU wall-time estimate")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_plan)


def _add_memory_gb(p: argparse.ArgumentParser) -> None:
    p.add_argument("--memory-gb", type=float, default=None, metavar="GIB",
                   help="memory budget for the what-fits figures (default: the device's memory, or this machine's RAM)")


def _cmd_plan(args: argparse.Namespace) -> int:
    from llmlab.tables import print_table
    from llmlab.campaign.estimate import estimate
    from llmlab.campaign.memory import MEMORY_COLUMNS, campaign_memory
    from llmlab.campaign.spec import flops_gaps, load_campaign, plan_rows
    from llmlab.model.moe_advice import advice_by_variant

    campaign = load_campaign(args.campaign, args.set)
    rows = plan_rows(campaign)
    first = campaign.variants[0].config
    memory, budget = campaign_memory([(v.name, v.config.model, v.ablation) for v in campaign.variants],
                                     first.train.seq_len, first.train.device, args.memory_gb)
    advice = advice_by_variant({v.name: v.config for v in campaign.variants})
    cost = estimate(campaign, mfu=args.mfu, measure_cpu=args.measure_cpu, seed_std=args.seed_std)
    gaps = flops_gaps([(v.name, v.params["flops_per_token"], v.ablation) for v in campaign.variants])
    if args.json:
        _print_json({"campaign": campaign.name, "match": campaign.match, "variants": rows, "flops_gaps": gaps,
                     "memory_budget": budget, "memory": memory, "dispatch_advice": advice, "estimate": cost})
        return 0
    print(f"campaign {campaign.name}: {campaign.match} equal within {campaign.tolerance:.0%} "
          "(ablations exempt: they isolate one change and are not iso-parameter)")
    print_table(rows, [("variant", "variant", ""), ("role", "kind", ""), ("heads", "q/kv heads", ""),
                       ("moe", "experts", ""), ("dispatch", "MoE dispatch", ""), ("total", "total", ",d"),
                       ("active_non_embedding", "active non-emb", ",d"), ("vs_first", "vs first", ".4f"),
                       ("flops_per_token", "FLOPs/token", ",d")])
    print_table(rows, [("variant", "variant", ""), ("tokens", "train tokens", ",d"), ("steps", "updates", ",d"),
                       ("dataset", "data", ""), ("tokenizer", "tokenizer", ""), ("differs", "recipe differs (ablations)", "")])
    for gap in gaps:
        print(f"FLOPs: {gap}")
    print(f"\n{budget}")
    print_table(memory, MEMORY_COLUMNS)
    for name, message in advice.items():
        print(f"{name}: {message}")
    _print_estimate(cost)
    return 0


def _print_estimate(cost: dict[str, Any]) -> None:
    from llmlab.tables import print_table

    per = cost["per_variant"]
    print(f"\nruns: {cost['runs']} = {len(cost['rows'])} variants x ({per['sweep_runs']} sweep runs + "
          f"{per['seed_runs']} seed runs{' (stable runs and decay branches)' if per.get('branches') else ''}); "
          f"{per['full_run_equivalents']:g} full-run equivalents per variant")
    print_table(cost["rows"], [
        ("variant", "variant", ""), ("active", "active (with emb.)", ",d"), ("tokens", "tokens/run", ",d"),
        ("epochs_text", "epochs", ""), ("tokens_per_active_param", "tokens/active param", ".1f"),
        ("dropout", "dropout", "g"), ("recommended_dropout", "recommended", "g"),
        ("expert_work_factor", "expert work vs top-k", ".2f"),
        ("hours_A100", "A100 h (sweep+seeds)", ".3g"), ("hours_H100", "H100 h (sweep+seeds)", ".3g"),
        ("cpu_tokens_per_s", "CPU tok/s", ",.0f"), ("hours_cpu", "CPU h", ".3g")])
    cpu = f", this CPU {cost['hours_cpu']:.3g} h (measured steps)" if cost["hours_cpu"] is not None else \
        " (--measure-cpu for this CPU)"
    mfu = "; ".join(f"{gpu} {m['mfu']:.0%} ({m['source']})" for gpu, m in cost["mfu"].items())
    print(f"campaign wall time, training only, sweep and seeds included: A100 {cost['hours_A100']:.3g} h, "
          f"H100 {cost['hours_H100']:.3g} h{cpu}")
    print(f"MFU (bf16 peak): {mfu}")
    r = cost["resolution"]
    if r["resolvable"] is None:
        print(f"smallest resolvable test-loss difference: none with {r['seeds']} seed (no seed sd to test against)")
    else:
        print(f"smallest resolvable test-loss difference (estimate): ~{r['resolvable']:.3f} nats/token between two arms' "
              f"means with {r['seeds']} seeds, at a seed sd of {r['seed_std']:g} ({r['seed_std_source']}; unpaired "
              "95 % t half-width, pairing by seed can do better)")
    for warning in cost["warnings"]:
        print(f"warning: {warning}")


def _add_campaign(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("campaign", help="LR sweep per variant, every variant at every seed, decode sweep, report")
    p.add_argument("campaign", help="a campaign TOML (configs/campaigns/*.toml)")
    p.add_argument("--out", default=None, help="output folder (default: runs/<campaign name>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every variant")
    _add_rerun_flags(p)
    _add_memory_gb(p)
    p.set_defaults(func=_cmd_campaign)


def _add_rerun_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--retrain", action="append", default=[], metavar="VARIANT",
                   help="delete this variant's run directory and train it again (repeatable); needed when its"
                        " record was made under another config")
    p.add_argument("--remeasure", action="store_true",
                   help="time the decode sweep again even where infer.json holds the same measurement")


def _cmd_campaign(args: argparse.Namespace) -> int:
    from llmlab.campaign.spec import load_campaign
    from llmlab.campaign.execute import run_and_report

    campaign = load_campaign(args.campaign, args.set)
    out = args.out or f"runs/{campaign.name}"
    report = run_and_report(campaign, out, retrain=args.retrain, remeasure=args.remeasure, memory_gb=args.memory_gb)
    print("\n" + report["markdown"])
    print("written: " + ", ".join(report["files"]))
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="a campaign's report from its records: tables, PNGs, generated Findings")
    p.add_argument("dir", help="a campaign output folder (or any folder of run directories)")
    _add_memory_gb(p)
    p.add_argument("--json", action="store_true", help="print the rows as one JSON object")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from llmlab.campaign.report import write_report

    report = write_report(args.dir, memory_gb=args.memory_gb)
    if args.json:
        _print_json({"rows": report["rows"], "files": report["files"]})
    else:
        print(report["markdown"])
        print("written: " + ", ".join(report["files"]))
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole path in minutes on a CPU: prepare, train 4 variants, sweep decode, compare")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every variant")
    _add_rerun_flags(p)
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from llmlab.campaign.demo import run_demo

    report = run_demo(args.out, overrides=args.set, retrain=args.retrain, remeasure=args.remeasure)
    print("\nsamples (temperature 0.8, top-k 50):")
    for row in report["rows"]:
        print(f"  {row['variant']:>14}: {row.get('sample')!r}")
    print("\n" + report["markdown"])
    print(f"written: {', '.join(report['files'])} ({report['seconds']:.0f} s)")
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
# export


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a trained run as a folder Hugging Face transformers loads")
    p.add_argument("run_dir", help="a run directory (its newest good checkpoint is exported)")
    p.add_argument("--format", default="hf", choices=("hf",),
                   help="hf: Llama (dense, GQA; Mistral when d_model %% n_heads != 0) or Mixtral (MoE) layout")
    p.add_argument("--out", required=True, help="a new (or empty) folder")
    p.add_argument("--force", action="store_true", help="replace a previous export at --out (never another folder)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from llmlab.export import export_run

    out = export_run(args.run_dir, args.out, fmt=args.format, force=args.force)
    for note in out["notes"]:
        print(f"llmlab: note: {note}", file=sys.stderr)
    if args.json:
        _print_json(out)
    else:
        print(f"wrote {out['out']}: {out['architecture']}, step {out['step']}, tokenizer {out['tokenizer']} "
              f"({', '.join(out['files'])})")
    return 0


# ---------------------------------------------------------------------------------------------

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_prepare, _add_tokenizer, _add_params, _add_generate, _add_train, _add_eval,
    _add_compile_check, _add_plan, _add_campaign, _add_report, _add_demo, _add_bench,
    _add_export, _add_audit,
]


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
