"""The iso-parameter solver lands a variant within 1 % of a target, or says why it cannot."""

from __future__ import annotations

import json

import pytest

from llmlab.cli import main
from llmlab.config import load_model_config
from llmlab.errors import ConfigError
from llmlab.model.accounting import count, solve_iso_params

BASE = "configs/models/base-125m.toml"


def target() -> int:
    return count(load_model_config(BASE))["active_non_embedding"]


@pytest.mark.parametrize("kv,expect_heads", [(4, 20), (6, 18), (2, 22), (1, 23)])
def test_gqa_reinvests_kv_savings_in_query_heads(kv: int, expect_heads: int) -> None:
    cfg, c = solve_iso_params(load_model_config(BASE, [f"model.n_kv_heads={kv}"]), target(), "n_heads")
    assert cfg.n_heads == expect_heads and cfg.head_dim == 64  # n_heads + n_kv_heads = 24: exact
    assert c["active_non_embedding"] == target()


def test_moe_expert_width_and_dense_width() -> None:
    moe, c = solve_iso_params(load_model_config("configs/models/gqa-moe-125m.toml"), target(), "moe.d_ff_expert")
    assert moe.moe.d_ff_expert == 1024 and abs(c["active_non_embedding"] / target() - 1) < 0.01
    dense, c = solve_iso_params(load_model_config(BASE, ["model.n_kv_heads=4"]), target(), "d_ff")
    assert dense.d_ff % 8 == 0 and abs(c["active_non_embedding"] / target() - 1) < 0.001


def test_unreachable_target_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"no n_layers brings active_non_embedding within 1% of"):
        solve_iso_params(load_model_config("configs/models/tiny.toml"), target(), "n_layers")
    with pytest.raises(ConfigError, match="needs a \\[model.moe\\] table"):
        solve_iso_params(load_model_config(BASE), target(), "moe.d_ff_expert")


def test_params_match_cli(capsys: pytest.CaptureFixture) -> None:
    assert main(["params", BASE, "--set", "model.n_kv_heads=4", "--match", BASE, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["value"] == 20 and out["relative_diff"] == 0.0
