"""Configs validate themselves: each kind of bad input is a clear ConfigError naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmlab.config import (
    ModelConfig, MoEConfig, RunConfig, TrainConfig, apply_overrides, dump_toml, load_model_config,
    load_run_config, read_toml,
)
from llmlab.errors import ConfigError


@pytest.mark.parametrize("kwargs,message", [
    (dict(n_heads=12, n_kv_heads=5), r"n_heads \(12\) must be divisible by model.n_kv_heads \(5\)"),
    (dict(d_model=100, n_heads=12), r"d_model \(100\) must be divisible by model.n_heads \(12\)"),
    (dict(n_heads=4, head_dim=7), r"head_dim \(7\) must be even with pos = 'rope'"),
    (dict(n_layers=0), r"model.n_layers must be positive, got 0"),
    (dict(d_model=-8), r"model.d_model must be positive, got -8"),
    (dict(norm="batchnorm"), r"model.norm must be one of rmsnorm, layernorm; got 'batchnorm'"),
    (dict(dropout=1.5), r"model.dropout must be in \[0, 1\)"),
])
def test_invalid_model_configs(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**kwargs)


def test_odd_head_dim_is_fine_with_learned_positions() -> None:
    assert ModelConfig(d_model=28, n_heads=4, pos="learned").head_dim == 7


def test_derived_defaults() -> None:
    cfg = ModelConfig(d_model=768, n_heads=12)
    assert (cfg.n_kv_heads, cfg.head_dim, cfg.d_ff) == (12, 64, 2048)
    assert ModelConfig(d_model=768, n_heads=12, mlp="gelu").d_ff == 3072
    assert ModelConfig(vocab_size=50257, pad_vocab_multiple=64).padded_vocab_size == 50304


def test_moe_config_validation() -> None:
    with pytest.raises(ConfigError, match=r"top_k \(3\) must not exceed model.moe.n_experts \(2\)"):
        MoEConfig(n_experts=2, top_k=3)
    with pytest.raises(ConfigError, match="dispatch must be one of"):
        MoEConfig(dispatch="magic")
    with pytest.raises(ConfigError, match=r"capacity_factor \(1.25\) only applies to dispatch = 'capacity'"):
        MoEConfig(dispatch="grouped", capacity_factor=1.25)
    with pytest.raises(ConfigError, match=r"d_ff_expert \(12\) to be multiples of 8"):
        ModelConfig(d_model=64, n_heads=4, moe=MoEConfig(d_ff_expert=12, dispatch="grouped"))
    assert ModelConfig(d_model=64, n_heads=4, moe=MoEConfig(d_ff_expert=12, dispatch="capacity")).moe.d_ff_expert == 12


def test_train_config_validation() -> None:
    with pytest.raises(ConfigError, match=r"min_lr \(0.1\) must not exceed train.lr \(0.001\)"):
        TrainConfig(lr=1e-3, min_lr=0.1)
    cfg = TrainConfig(seq_len=64, micro_batch_size=4, tokens_per_update=1024)
    assert cfg.grad_accum(1) == 4 and cfg.grad_accum(2) == 2
    with pytest.raises(ConfigError, match=r"tokens_per_update \(1024\) must be a multiple of .* = 768"):
        cfg.grad_accum(3)
    with pytest.raises(ConfigError, match="set train.max_tokens or train.max_steps"):
        cfg.total_steps()
    assert TrainConfig(tokens_per_update=1024, max_tokens=10_000).total_steps() == 9


def test_seq_len_above_context_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"train.seq_len \(2048\) must not exceed model.max_seq_len \(1024\)"):
        RunConfig(train=TrainConfig(seq_len=2048))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_unknown_key_is_an_error_with_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "m.toml", "[model]\nn_head = 4\n")
    with pytest.raises(ConfigError, match=r"unknown key model.n_head \(did you mean model.n_heads\?\)"):
        load_model_config(path)
    path = write(tmp_path, "r.toml", "[trian]\nlr = 1\n")
    with pytest.raises(ConfigError, match=r"unknown table \[trian\]"):
        load_run_config(path)


def test_wrong_type_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "m.toml", '[model]\nn_heads = "12"\n')
    with pytest.raises(ConfigError, match=r"model.n_heads must be of type int, got '12'"):
        load_model_config(path)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_model_config(write(tmp_path, "bad.toml", "[model\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_model_config(tmp_path / "nope.toml")


def test_include_then_override(tmp_path: Path) -> None:
    write(tmp_path, "base.toml", "[model]\nd_model = 64\nn_heads = 4\nn_layers = 2\n")
    child = write(tmp_path, "child.toml", 'include = "base.toml"\n[model]\nn_kv_heads = 2\n')
    cfg = load_model_config(child)
    assert (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.n_layers) == (64, 4, 2, 2)
    loop = write(tmp_path, "loop.toml", 'include = "loop.toml"\n')
    with pytest.raises(ConfigError, match="include cycle"):
        read_toml(loop)


def test_set_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "m.toml", "[model]\nd_model = 64\nn_heads = 4\n")
    cfg = load_run_config(path, ["model.n_kv_heads=2", "train.lr=3e-4", "data.dataset=wikitext-2",
                                 "model.moe.n_experts=4", "model.moe.dispatch=capacity"])
    assert cfg.model.n_kv_heads == 2 and cfg.train.lr == 3e-4 and cfg.data.dataset == "wikitext-2"
    assert cfg.model.moe.n_experts == 4 and cfg.model.moe.dispatch == "capacity"
    with pytest.raises(ConfigError, match="--set expects section.key=value"):
        apply_overrides({}, ["model.n_heads"])
    with pytest.raises(ConfigError, match="unknown key train.lrr"):
        load_run_config(path, ["train.lrr=1"])


def test_dump_toml_round_trips(tmp_path: Path) -> None:
    cfg = load_run_config(write(tmp_path, "m.toml", "[model]\nd_model = 64\nn_heads = 4\n[model.moe]\ntop_k = 1\n"))
    again = load_run_config(write(tmp_path, "again.toml", dump_toml(cfg.to_dict())))
    assert again == cfg


def test_shipped_configs_load() -> None:
    for path in sorted(Path("configs/models").glob("*.toml")):
        load_model_config(path)
