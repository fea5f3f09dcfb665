"""`llmlab report DIR`: one comparison table from run records alone (result.json, infer.json,
metrics.jsonl, config.toml), as markdown, CSV and (when matplotlib is installed) a loss plot.

DIR is a campaign output (campaign.json names the variants, in order) or any folder of run
directories. Ratios are against the first variant: the baseline.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from llmlab.errors import LLMLabError
from llmlab.runs import read_metrics, write_bytes_atomic

COLUMNS = [  # (key, header, format)
    ("variant", "variant", ""),
    ("active_non_embedding", "active non-emb", ",d"),
    ("total", "total params", ",d"),
    ("kv_bytes_per_token", "KV B/token", ",d"),
    ("val_loss", "val loss", ".4f"),
    ("test_loss", "test loss", ".4f"),
    ("test_ppl", "test ppl", ".2f"),
    ("test_bits_per_byte", "test bits/byte", ".3f"),
    ("test_word_ppl", "test word ppl", ".2f"),
    ("train_tokens_per_s", "train tok/s", ",.0f"),
    ("decode_tokens_per_s_cache", "decode tok/s (cache)", ",.1f"),
    ("decode_tokens_per_s_no_cache", "decode tok/s (no cache)", ",.1f"),
    ("kv_cache_speedup", "cache speedup", ".2f"),
    ("moe_max_load", "MoE max/mean load", ".2f"),
    ("moe_min_load", "MoE min load", ".3f"),
    ("moe_dropped_frac", "MoE dropped", ".2%"),
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


def markdown(rows: list[dict[str, Any]]) -> str:
    cols = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    out = io.StringIO()
    out.write("| " + " | ".join(h for _, h, _ in cols) + " |\n")
    out.write("|" + "|".join(" --- " if k == "variant" else " ---: " for k, _, _ in cols) + "|\n")
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


def write_report(directory: str | Path) -> dict[str, Any]:
    """Write report.md, report.csv (and loss.png); return {"rows", "markdown", "files"}."""
    directory = Path(directory)
    if not directory.is_dir():
        raise LLMLabError(f"{directory} is not a directory: pass a campaign output (e.g. runs/demo)")
    runs = run_dirs(directory)
    rows = [variant_row(name, path) for name, path in runs]
    md = markdown(rows)
    write_bytes_atomic(directory / "report.md", md.encode())
    write_bytes_atomic(directory / "report.csv", to_csv(rows).encode())
    files = [str(directory / "report.md"), str(directory / "report.csv")]
    if plot_losses(runs, directory / "loss.png"):
        files.append(str(directory / "loss.png"))
    return {"rows": rows, "markdown": md, "files": files}
