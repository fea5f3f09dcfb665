"""The report's PNGs, drawn from run records only (matplotlib, Agg backend, written atomically).

Each function returns the file name it wrote, or None when it had nothing to draw. `pyplot()` is
None without matplotlib: the report then has tables only and says so.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from llmlab.campaign.aggregate import by_seed, routing_over_training
from llmlab.campaign.records import VariantRecord, infer
from llmlab.campaign.records import result
from llmlab.campaign.runlist import lr_points
from llmlab.files import write_bytes_atomic
from llmlab.runs import read_metrics


def pyplot() -> Any:
    try:  # imported here: the Agg backend (no display) must be chosen before pyplot is imported
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    return _write_png(fig, path)


def _write_png(fig: Any, path: Path) -> str:
    """Render in memory, then write atomically: a kill leaves the previous PNG or the new one."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    pyplot().close(fig)
    write_bytes_atomic(path, buffer.getvalue())
    return path.name


def loss_curves(records: list[VariantRecord], path: Path) -> str | None:
    """Training loss against tokens: mean over seeds (line) and min-max over seeds (band); the
    validation loss's mean as markers."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for record in records:
        train, val = _aligned(record)
        if not train:
            continue
        tokens, curves = zip(*sorted(train.items()))
        values = np.array(curves)  # (points, seeds)
        line = ax.plot(tokens, values.mean(axis=1), label=f"{record.name} ({values.shape[1]} seeds)")[0]
        if values.shape[1] > 1:
            ax.fill_between(tokens, values.min(axis=1), values.max(axis=1), color=line.get_color(), alpha=0.2)
        if val:
            vt, vv = zip(*sorted(val.items()))
            ax.plot(vt, [np.mean(v) for v in vv], "o--", color=line.get_color(), markersize=3)
    ax.set(xlabel="training tokens", ylabel="cross-entropy (nats/token)",
           title="training loss: mean over seeds, band = min-max; markers: validation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _aligned(record: VariantRecord) -> tuple[dict[int, list[float]], dict[int, list[float]]]:
    """{tokens: [loss per seed]} at the points every seed logged (train and validation)."""
    train: dict[int, list[float]] = {}
    val: dict[int, list[float]] = {}
    for run_dir in record.runs.values():
        metrics = read_metrics(run_dir)
        tokens_at = {r["step"]: r["tokens"] for r in metrics if "tokens" in r and "event" not in r}
        for r in metrics:
            if "event" in r or r.get("step") not in tokens_at:
                continue
            if "loss" in r:
                train.setdefault(tokens_at[r["step"]], []).append(r["loss"])
            if "val_loss" in r:
                val.setdefault(tokens_at[r["step"]], []).append(r["val_loss"])
    n = len(record.runs)
    return ({t: v for t, v in train.items() if len(v) == n}, {t: v for t, v in val.items() if len(v) == n})


def params_vs_loss(records: list[VariantRecord], path: Path) -> str | None:
    """Final test loss (mean ± std over seeds) against total and against active parameters."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for record in records:
        params = _params(record)
        losses = list(by_seed(record, "test_loss").values())
        if not params or not losses:
            continue
        std = float(np.std(losses, ddof=1)) if len(losses) > 1 else 0.0
        for ax, key in zip(axes, ("total", "active")):
            if key in params:
                ax.errorbar([params[key]], [np.mean(losses)], yerr=[std], fmt="o", capsize=4, label=record.name)
    for ax, key in zip(axes, ("total parameters", "active parameters (per token, with embeddings)")):
        ax.set(xlabel=key)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("final test loss (nats/token), mean ± std over seeds")
    axes[1].legend(fontsize=8)
    return _save(fig, path)


def _params(record: VariantRecord) -> dict[str, int]:
    return result(record.first).get("params", {})


def budget_differences(rows: list[dict[str, Any]], path: Path) -> str | None:
    """Each loss hypothesis's Δ test loss against the training budget (campaign/budgets.py rows):
    the mean over paired seeds, its 95 % seed interval as error bars, 0 drawn: a line crossing it
    is a verdict that depends on the budget."""
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    by_title: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_title.setdefault(row["title"], []).append(row)
    for i, (title, rs) in enumerate(by_title.items()):
        x = [r["tokens"] or r["updates"] for r in rs]
        x = [v * (1 + 0.02 * (i - len(by_title) / 2)) for v in x]  # side by side, not on top of each other
        mean = np.array([r["mean"] for r in rs])
        low = np.array([r["mean"] if r["low"] is None else r["low"] for r in rs])
        high = np.array([r["mean"] if r["high"] is None else r["high"] for r in rs])
        ax.errorbar(x, mean, yerr=[mean - low, high - mean], fmt="o-", capsize=3, label=title)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set(xlabel="training tokens" if rows[0]["tokens"] else "updates", ylabel="Δ test loss (nats/token)",
           title="each hypothesis against budget: mean over paired seeds, 95 % seed interval")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(fig, path)


def lr_sweep(records: list[VariantRecord], path: Path) -> str | None:
    """Each variant's LR curve: mean final validation loss over the sweep seeds against the
    learning rate (log scale), single seeds as small dots; the chosen LR circled; diverged points
    drawn at the top as crosses."""
    plt = pyplot()
    if not any(r.sweep for r in records):
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for record in records:
        points = lr_points(record.sweep)
        done = [(p["lr"], p["val_loss"]) for p in points if p["val_loss"] is not None]
        if not done:
            continue
        line = ax.plot(*zip(*done), "o-", label=record.name)[0]
        seeds = [(p["lr"], v) for p in points if p["seeds"] > 1 for v in p["values"] if v is not None]
        if seeds:
            ax.plot(*zip(*seeds), ".", color=line.get_color(), alpha=0.5, markersize=4)
        chosen = [v for lr, v in done if lr == record.lr]
        if chosen:
            ax.plot([record.lr], chosen, "o", markersize=12, markerfacecolor="none", color=line.get_color())
        for p in points:
            if p["diverged"]:
                ax.plot([p["lr"]], [max(v for _, v in done)], "x", color=line.get_color(), markersize=9)
    ax.set_xscale("log")
    ax.set(xlabel="peak learning rate", ylabel="final validation loss (sweep, mean over seeds)",
           title="LR sweep: circled = chosen (lowest mean val loss); x = diverged")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def decode_speed(records: list[VariantRecord], path: Path) -> str | None:
    """Decode tokens/s against context length, with and without the KV cache, one panel per
    batch size (medians of interleaved repeats, infer.json of each variant's first seed)."""
    plt = pyplot()
    points = {r.name: infer(r.first).get("points", []) for r in records}
    batches = sorted({p["batch_size"] for ps in points.values() for p in ps})
    if not batches:
        return None
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for name, ps in points.items():
            at = sorted((p["context"], p["cases"]) for p in ps if p["batch_size"] == batch)
            if not at:
                continue
            ctx = [c for c, _ in at]
            line = ax.plot(ctx, [c["kv_cache"]["decode_tokens_per_s"] for _, c in at], "o-", label=f"{name} cache")[0]
            ax.plot(ctx, [c["no_cache"]["decode_tokens_per_s"] for _, c in at], "s--", color=line.get_color(),
                    label=f"{name} no cache")
        ax.set(xlabel="context length (tokens)", ylabel="decode tokens/s", title=f"batch {batch}", yscale="log")
        ax.grid(alpha=0.3, which="both")
    axes[0][-1].legend(fontsize=7)
    return _save(fig, path)


def memory_fit(rows: list[dict[str, Any]], path: Path) -> str | None:
    """KV bytes per token, longest context at batch 1, largest batch at seq_len, per variant."""
    plt = pyplot()
    if not rows:
        return None
    names = [r["variant"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    for ax, (key, title) in zip(axes, (("kv_bytes_per_token", "KV cache bytes / token"),
                                       ("max_context_batch1", "longest context that fits (batch 1)"),
                                       ("max_batch_at_seq_len", f"largest batch that fits (seq_len {rows[0]['seq_len']})"))):
        ax.bar(range(len(names)), [r[key] for r in rows], color=[f"C{i}" for i in range(len(names))])
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def moe_load(name: str, run_dir: Path, path: Path) -> str | None:
    """Heatmap per MoE layer: each expert's share of assignments (x uniform share) over training."""
    plt = pyplot()
    over = routing_over_training(read_metrics(run_dir))
    if not over:
        return None
    load = np.array(over["load"], dtype=float)  # (steps, layers, experts)
    n_layers, n_experts = load.shape[1], load.shape[2]
    fig, axes = plt.subplots(n_layers, 1, figsize=(8, 1.2 + 1.3 * n_layers), squeeze=False, sharex=True)
    steps = over["steps"]
    right = steps[-1] if steps[-1] > steps[0] else steps[0] + 1  # one logged step: a visible column
    for layer, ax in enumerate(axes[:, 0]):
        image = ax.imshow(load[:, layer, :].T * n_experts, aspect="auto", cmap="viridis", vmin=0,
                          extent=(steps[0], right, n_experts - 0.5, -0.5), interpolation="nearest")
        ax.set_ylabel(f"MoE layer {layer}\nexpert", fontsize=8)
    axes[-1, 0].set_xlabel("step")
    fig.colorbar(image, ax=axes[:, 0].tolist(), label="load / uniform share")
    fig.suptitle(f"{name}: expert load over training (1.0 = balanced)", fontsize=9)
    return _write_png(fig, path)


def moe_routing(name: str, run_dir: Path, saturation: list[tuple[int, float]], path: Path) -> str | None:
    """Three panels over training: dropped fraction, router entropy (per layer, with log E), and
    router saturation (share of the probe's top-k assignments equal to the final step's)."""
    plt = pyplot()
    over = routing_over_training(read_metrics(run_dir))
    if not over:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    steps = over["steps"]
    for key, ax, title in (("dropped", axes[0], "dropped fraction"), ("entropy", axes[1], "router entropy (nats)")):
        values = np.array([v if v else [np.nan] for v in over[key]], dtype=float)
        for layer in range(values.shape[1]):
            ax.plot(steps, values[:, layer], label=f"layer {layer}")
        ax.set(xlabel="step", title=title)
        ax.grid(alpha=0.3)
    axes[1].axhline(np.log(len(over["load"][-1][0])), color="gray", linestyle=":", label="log E (uniform)")
    axes[1].legend(fontsize=7)
    if saturation:
        axes[2].plot(*zip(*saturation), "o-")
    axes[2].set(xlabel="step", ylim=(0, 1.05), title="router saturation vs the final step (OLMoE)")
    axes[2].grid(alpha=0.3)
    fig.suptitle(name, fontsize=9)
    return _save(fig, path)
