"""`llmlab report DIR`: comparison tables from run records alone (result.json, infer.json,
metrics.jsonl, config.toml), as markdown, CSV and (when matplotlib is installed) a loss plot.

DIR is a campaign output (campaign.json names the variants, in order, and which are ablations) or
any folder of run directories. Ratios are against the first variant: the baseline. Sections:
quality, speed, MoE routing (one row per variant), memory (what fits a budget), and the decode
sweep (one row per variant, context and batch size).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from llmlab.campaign.memory import MEMORY_COLUMNS, describe_budget, memory_budget, memory_table
from llmlab.errors import LLMLabError
from llmlab.runs import read_metrics, write_bytes_atomic

Column = tuple[str, str, str]  # (key, header, format)
TABLES: list[tuple[str, list[Column]]] = [  # one markdown table each: a wide one would not read
    ("Quality", [
        ("variant", "variant", ""), ("kind", "kind", ""),
        ("active_non_embedding", "active non-emb", ",d"), ("total", "total params", ",d"),
        ("val_loss", "val loss", ".4f"), ("test_loss", "test loss", ".4f"), ("test_ppl", "test ppl", ".2f"),
        ("test_bits_per_byte", "test bits/byte", ".3f"), ("test_word_ppl", "test word ppl", ".2f"),
    ]),
    ("Speed", [
        ("variant", "variant", ""), ("kv_bytes_per_token", "KV B/token (bf16)", ",d"),
        ("train_tokens_per_s", "train tok/s", ",.0f"),
        ("decode_tokens_per_s_cache", "decode tok/s (cache)", ",.1f"),
        ("decode_tokens_per_s_no_cache", "decode tok/s (no cache)", ",.1f"),
        ("kv_cache_speedup", "cache speedup", ".2f"),
    ]),
    ("MoE routing", [
        ("variant", "variant", ""), ("moe_max_load", "MoE max/mean load", ".2f"),
        ("moe_min_load", "MoE min load", ".3f"), ("moe_dropped_frac", "MoE dropped", ".2%"),
    ]),
]
SECTION_NOTES = {
    "Speed": "Decode tokens/s at the sweep's smallest batch and longest context (all points: Decode sweep).\n\n",
}
SWEEP_COLUMNS: list[Column] = [
    ("variant", "variant", ""), ("context", "context", ",d"), ("batch_size", "batch", ",d"),
    ("prefill_ms_cache", "prefill ms (cache)", ",.1f"),
    ("decode_tokens_per_s_cache", "decode tok/s (cache)", ",.1f"),
    ("decode_tokens_per_s_no_cache", "decode tok/s (no cache)", ",.1f"),
    ("kv_cache_speedup", "cache speedup", ".2f"),
    ("decode_tokens_per_s_compiled", "decode tok/s (compiled)", ",.1f"),
    ("compiled_speedup", "compiled speedup", ".2f"),
]


def run_dirs(directory: Path) -> list[tuple[str, Path]]:
    """(variant name, run dir) in campaign order, or sorted by name without campaign.json."""
    record = directory / "campaign.json"
    if record.is_file():
        variants = json.loads(record.read_text())["variants"]
        found = [(v["name"], directory / v["dir"]) for v in variants]
    else:
        found = [(p.name, p) for p in sorted(directory.iterdir()) if (p / "config.toml").is_file()]
    found = [(n, p) for n, p in found if (p / "result.json").is_file()]
    if not found:
        raise LLMLabError(f"{directory}: no finished runs (no */result.json); train them first")
    return found


def routing_summary(metrics: list[dict[str, Any]], last: int = 5) -> dict[str, float]:
    """Mean over the last `last` logged steps (and over MoE layers) of the routing statistics."""
    rows = [r for r in metrics if "moe_load" in r][-last:]
    if not rows:
        return {}
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "moe_max_load": mean([mean(r["moe_max_load"]) for r in rows]),
        "moe_min_load": mean([min(min(layer) for layer in r["moe_load"]) for r in rows]),
        "moe_dropped_frac": mean([mean(r["moe_dropped_frac"]) for r in rows]),
    }


def variant_row(name: str, run_dir: Path) -> dict[str, Any]:
    result = json.loads((run_dir / "result.json").read_text())
    infer_path = run_dir / "infer.json"
    infer = json.loads(infer_path.read_text()) if infer_path.is_file() else {}
    params = result.get("params", {})
    row = {
        "variant": name,
        "active_non_embedding": params.get("active_non_embedding"),
        "total": params.get("total"),
        "kv_bytes_per_token": params.get("kv_cache_bytes_per_token"),
        "val_loss": result.get("val_loss"),
        "test_loss": result.get("test_loss"),
        "test_ppl": result.get("test_ppl"),
        "test_bits_per_byte": result.get("test_bits_per_byte"),
        "test_word_ppl": result.get("test_word_ppl"),
        "train_tokens_per_s": result.get("tokens_per_s"),
        "decode_tokens_per_s_cache": infer.get("tokens_per_s_kv_cache"),
        "decode_tokens_per_s_no_cache": infer.get("tokens_per_s_no_cache"),
        "kv_cache_speedup": infer.get("kv_cache_speedup"),
        "tokens": result.get("tokens"),
        "device": result.get("device"),
        "sample": infer.get("sample"),
    }
    row.update(routing_summary(read_metrics(run_dir)))
    return row


def sweep_rows(name: str, run_dir: Path) -> list[dict[str, Any]]:
    """One row per (context, batch size) of the variant's decode sweep (infer.json "points")."""
    path = run_dir / "infer.json"
    points = json.loads(path.read_text()).get("points", []) if path.is_file() else []
    rows = []
    for p in points:
        cases, base = p["cases"], p["cases"].get("no_cache", {}).get("decode_tokens_per_s")
        tok_s = {case: figures["decode_tokens_per_s"] for case, figures in cases.items()}
        rows.append({
            "variant": name, "context": p["context"], "batch_size": p["batch_size"],
            "prefill_ms_cache": 1000 * cases["kv_cache"]["prefill_s"] if "kv_cache" in cases else None,
            "decode_tokens_per_s_cache": tok_s.get("kv_cache"),
            "decode_tokens_per_s_no_cache": base,
            "kv_cache_speedup": tok_s["kv_cache"] / base if base and "kv_cache" in tok_s else None,
            "decode_tokens_per_s_compiled": tok_s.get("compiled"),
            "compiled_speedup": tok_s["compiled"] / base if base and "compiled" in tok_s else None,
        })
    return rows


def markdown(rows: list[dict[str, Any]], columns: list[Column]) -> str:
    cols = [c for c in columns if any(r.get(c[0]) is not None for r in rows)]
    out = io.StringIO()
    out.write("| " + " | ".join(h for _, h, _ in cols) + " |\n")
    out.write("|" + "|".join(" ---: " if f else " --- " for _, _, f in cols) + "|\n")  # numbers right
    for r in rows:
        cells = ["-" if r.get(k) is None else format(r[k], f) if f else str(r[k]) for k, _, f in cols]
        out.write("| " + " | ".join(cells) + " |\n")
    return out.getvalue()


def to_csv(rows: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def plot_losses(runs: list[tuple[str, Path]], path: Path) -> bool:
    """Training and validation loss per variant against tokens seen. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, run_dir in runs:
        metrics = read_metrics(run_dir)
        train = [(r["tokens"], r["loss"]) for r in metrics if "loss" in r and "tokens" in r]
        line = ax.plot(*zip(*train), label=f"{name} (train)", alpha=0.6)[0] if train else None
        tokens_at = {r["step"]: r["tokens"] for r in metrics if "tokens" in r}
        val = [(tokens_at[r["step"]], r["val_loss"]) for r in metrics if "val_loss" in r and r["step"] in tokens_at]
        if val:
            ax.plot(*zip(*val), "o--", color=line.get_color() if line else None, label=f"{name} (val)")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return True


def kinds(directory: Path, names: list[str]) -> dict[str, str]:
    """baseline / compared / ablation per variant, from campaign.json (without it: unknown)."""
    record = directory / "campaign.json"
    if not record.is_file():
        return {}
    variants = json.loads(record.read_text())["variants"]
    ablation = {v["name"]: v.get("ablation", False) for v in variants}
    first = variants[0]["name"] if variants else None
    return {n: "ablation" if ablation.get(n) else "baseline" if n == first else "compared" for n in names}


def memory_section(runs: list[tuple[str, Path]], kind: dict[str, str], memory_gb: float | None) -> str:
    """What fits a memory budget, per variant, from each run's resolved config (config.toml)."""
    from llmlab.config import load_run_config
    from llmlab.device import resolve_device

    device = resolve_device("auto")
    budget, source = memory_budget(memory_gb, device)
    configs = [(name, load_run_config(path / "config.toml"), kind.get(name) == "ablation") for name, path in runs]
    dtype_bytes = _inference_dtype_bytes(runs[0][1], device)
    seq_len = configs[0][1].train.seq_len
    rows = memory_table([(n, c.model, a) for n, c, a in configs], seq_len, budget, dtype_bytes)
    return f"## Memory\n\n{describe_budget(budget, source, dtype_bytes, seq_len)}.\n\n{markdown(rows, MEMORY_COLUMNS)}"


def _inference_dtype_bytes(run_dir: Path, device: Any) -> int:
    """Bytes per element of the dtype the campaign decoded in (infer.json), else this device's."""
    from llmlab.device import resolve_dtype

    path = run_dir / "infer.json"
    dtype = json.loads(path.read_text()).get("dtype") if path.is_file() else None
    if dtype is None:
        dtype = str(resolve_dtype("auto", device)).removeprefix("torch.")
    return {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]


def report_markdown(directory: Path, runs: list[tuple[str, Path]], rows: list[dict[str, Any]],
                    memory_gb: float | None) -> str:
    parts = [f"# Campaign report: {directory.name}\n"]
    if any(r.get("kind") == "ablation" for r in rows):
        parts.append("Variants of kind *ablation* isolate one change; they are exempt from the parameter"
                     " match and are not iso-parameter comparisons.\n")
    for title, columns in TABLES:
        if any(r.get(k) is not None for r in rows for k, _, _ in columns[1:]):
            parts.append(f"## {title}\n\n{SECTION_NOTES.get(title, '')}{markdown(rows, columns)}")
    parts.append(memory_section(runs, {r["variant"]: r.get("kind") for r in rows}, memory_gb))
    sweep = [r for name, path in runs for r in sweep_rows(name, path)]
    if sweep:
        parts.append("## Decode sweep\n\nDecode tokens/s after the first token (all sequences of the batch),"
                     " prefill (time to first token) apart; medians of interleaved repeats; speedups are"
                     f" over the no-cache baseline at the same point.\n\n{markdown(sweep, SWEEP_COLUMNS)}")
    return "\n".join(parts)


def write_report(directory: str | Path, memory_gb: float | None = None) -> dict[str, Any]:
    """Write report.md, report.csv (and loss.png); return {"rows", "markdown", "files"}.
    memory_gb: the budget of the memory section (default: this machine's device memory)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise LLMLabError(f"{directory} is not a directory: pass a campaign output (e.g. runs/demo)")
    runs = run_dirs(directory)
    kind = kinds(directory, [n for n, _ in runs])
    rows = [variant_row(name, path) | {"kind": kind.get(name)} for name, path in runs]
    md = report_markdown(directory, runs, rows, memory_gb)
    write_bytes_atomic(directory / "report.md", md.encode())
    write_bytes_atomic(directory / "report.csv", to_csv(rows).encode())
    files = [str(directory / "report.md"), str(directory / "report.csv")]
    if plot_losses(runs, directory / "loss.png"):
        files.append(str(directory / "loss.png"))
    return {"rows": rows, "markdown": md, "files": files}
