"""Router saturation (OLMoE, Muennighoff et al. 2024, sec. 5): how many tokens are still being
re-routed as training goes on.

For a fixed probe batch -- the first `PROBE_WINDOWS` windows of the validation split, the same at
every step -- each evaluation of an MoE run records the top-k expert ids every MoE layer picks for
every probe token, in `routing/step_XXXXXXXX.pt` (an int16 tensor (L_moe, N, K), written
atomically). Checkpoints are pruned (`train.keep_checkpoints`), so the decisions are recorded as
training goes rather than recomputed from checkpoints later.

Saturation at step s = the share of top-k assignments at s that the final step also makes:
mean over MoE layers and probe tokens of |topk_s(token) ∩ topk_final(token)| / K (the order
within the top k does not matter). It is 1.0 at the final step by definition; OLMoE reports ~60 %
after 1 % of pre-training and ~80 % at 40 %.

The decision is captured with a forward pre-hook on each `MoE` module, which hands the layer's
input to the module's own `route` (the router the forward pass uses). A hook on the `router`
Linear would never fire: `MoE.route` applies its weight in fp32 with `F.linear` instead of calling
the submodule. The MoE forward itself is not touched.

Shape legend: L_moe MoE layers, B probe windows, T seq_len, N = B*T probe tokens, K top_k.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import torch
from torch import nn

from llmlab.data.loader import open_split
from llmlab.errors import LLMLabError
from llmlab.files import write_bytes_atomic
from llmlab.model.moe import MoE
from llmlab.train.step import eval_context

ROUTING_DIR = "routing"
PROBE_WINDOWS = 8
_FILE = re.compile(r"step_(\d{8})\.pt")


def probe_batch(data_dir: str | Path, seq_len: int, vocab_size: int | None = None) -> torch.Tensor:
    """The fixed probe: the first PROBE_WINDOWS non-overlapping windows of the validation split,
    (B, T) int64 (fewer windows when the split is short; one shorter window when it is shorter
    than seq_len). No padding: every probe token is real text."""
    tokens = open_split(data_dir, "val", vocab_size)
    n = min(PROBE_WINDOWS, len(tokens) // seq_len)
    if n == 0:
        return torch.from_numpy(tokens[:seq_len].astype("int64"))[None, :]
    return torch.from_numpy(tokens[: n * seq_len].astype("int64")).view(n, seq_len)  # (B, T)


def moe_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, MoE)]


@torch.no_grad()
def top_k_assignments(model: nn.Module, idx_BT: torch.Tensor,
                      autocast_dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """(L_moe, N, K) int16: the experts each MoE layer's router picks for each token of idx, in
    layer order; None for a dense model. Runs one forward pass in the model's current mode."""
    layers = moe_layers(model)
    if not layers:
        return None
    picked: list[torch.Tensor | None] = [None] * len(layers)

    def capture(i: int):
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x_BTD = args[0]
            experts_A = module.route(x_BTD.reshape(-1, x_BTD.shape[-1])).experts_A  # (K*N,) slot-major
            picked[i] = experts_A.view(module.cfg.top_k, -1).t()  # (N, K)
        return hook

    handles = [m.register_forward_pre_hook(capture(i)) for i, m in enumerate(layers)]
    try:
        device = next(model.parameters()).device
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            model(idx_BT.to(device))
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(picked).to(torch.int16).cpu()  # (L_moe, N, K)


def routing_file(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / ROUTING_DIR / f"step_{step:08d}.pt"


def record_routing(model: nn.Module, probe_BT: torch.Tensor, run_dir: str | Path, step: int,
                   autocast_dtype: torch.dtype | None = None, write: bool = True) -> Path | None:
    """At an evaluation of an MoE run: record the top-k assignments on `probe_BT` (`probe_batch`,
    built once per session) at `step`, in eval mode. Every rank runs the forward (so that it works
    under FSDP); only `write=True` (rank 0) writes. Returns the file written; None for a dense
    model or a rank that does not write."""
    with eval_context(model):
        assignments = top_k_assignments(model, probe_BT, autocast_dtype)
    if assignments is None or not write:
        return None
    path = routing_file(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(assignments, buffer)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def recorded_files(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, file) of every recorded step, in step order."""
    directory = Path(run_dir) / ROUTING_DIR
    return sorted((int(m.group(1)), p) for p in directory.glob("step_*.pt") if (m := _FILE.fullmatch(p.name)))


def truncate_routing(run_dir: str | Path, step: int) -> None:
    """Delete the records of steps after `step`: on resume from the checkpoint of `step` (-1: none)
    they are about to be replayed, and a leftover would otherwise pass for the final decision."""
    for recorded, path in recorded_files(run_dir):
        if recorded > step:
            path.unlink(missing_ok=True)


def read_routing(run_dir: str | Path) -> list[tuple[int, torch.Tensor]]:
    """Every recorded (step, (L_moe, N, K) assignments), in step order."""
    return [(step, torch.load(path, weights_only=True)) for step, path in recorded_files(run_dir)]


def saturation(assignments: torch.Tensor, final: torch.Tensor) -> float:
    """Share of the top-k assignments in `assignments` that `final` also makes, token by token:
    mean over layers and tokens of |A ∩ F| / K (expert ids within one token's top k are distinct)."""
    if assignments.shape != final.shape:
        raise LLMLabError(f"routing shapes differ: {tuple(assignments.shape)} vs final {tuple(final.shape)}"
                          " (the probe changed during the run)")
    kept_LNK = (assignments[..., :, None] == final[..., None, :]).any(dim=-1)
    return kept_LNK.float().mean().item()


def router_saturation(run_dir: str | Path) -> list[tuple[int, float]]:
    """[(step, saturation against the last recorded step)] for an MoE run directory; [] when
    nothing was recorded (a dense run, or one without evaluations)."""
    recorded = read_routing(run_dir)
    if not recorded:
        return []
    final = recorded[-1][1]
    return [(step, saturation(a, final)) for step, a in recorded]


__all__ = ["probe_batch", "top_k_assignments", "record_routing", "truncate_routing", "read_routing", "recorded_files", "routing_file",
           "saturation", "router_saturation", "ROUTING_DIR", "PROBE_WINDOWS"]
