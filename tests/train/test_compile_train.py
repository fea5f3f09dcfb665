"""With compile = true, the train step compiles once: no graph break (fullgraph=True would raise),
no recompile over the whole run (error_on_recompile would raise), for dense, GQA and MoE (capacity).

Graph capture is dynamo's job whatever the backend, so the fast tests use `aot_eager` (dynamo +
AOTAutograd's forward/backward graphs, no code generation); one inductor run is marked slow."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from llmlab.config import load_run_config
from llmlab.train import train


def compiled_run(make_config, tmp_path, variant: str, backend: str) -> dict[str, int]:
    cfg = load_run_config(make_config(variant, train={
        "max_steps": 6, "compile": True, "compile_backend": backend, "eval_interval": 3, "eval_windows": 4,
    }))
    torch._dynamo.reset()
    counters.clear()
    with torch._dynamo.config.patch(error_on_recompile=True):
        outcome = train(cfg, tmp_path / variant)
    assert outcome.status == "completed"
    return {"graph_breaks": sum(counters["graph_break"].values()), "graphs": counters["stats"]["unique_graphs"]}


@pytest.mark.parametrize("variant", ["dense", "gqa", "moe"])
def test_train_step_compiles_once_without_graph_breaks(variant, make_config, tmp_path):
    stats = compiled_run(make_config, tmp_path, variant, "aot_eager")
    # Two graphs in all: the train step (LossHead) and the evaluation function.
    assert stats == {"graph_breaks": 0, "graphs": 2}


@pytest.mark.slow
def test_inductor_train_step_compiles_once(make_config, tmp_path):
    stats = compiled_run(make_config, tmp_path, "gqa", "inductor")
    assert stats == {"graph_breaks": 0, "graphs": 2}
