"""`llmlab train` / `llmlab eval` / `llmlab bench train` from the command line."""

from __future__ import annotations

import json
import os

from llmlab.cli import main
from llmlab.train.lock import RunLock


def test_train_then_eval_json(make_config, tmp_path, capsys):
    config = make_config(train={"max_steps": 6})
    assert main(["train", str(config), "--run-dir", str(tmp_path / "run"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["step"] == 6 and result["status"] == "completed"
    for name in ("config.toml", "env.json", "metrics.jsonl", "result.json", "checkpoints/manifest.json"):
        assert (tmp_path / "run" / name).is_file(), name
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert {"torch", "git", "device", "python"} <= set(env)

    assert main(["eval", str(tmp_path / "run"), "--split", "test", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["step"] == 6 and out["split"] == "test"
    assert out["loss"] == result["test_loss"] and out["bits_per_byte"] == result["test_bits_per_byte"]

    # generate from the run: its trained weights and its tokenizer; cache on and off agree
    texts = []
    for flag in ([], ["--no-kv-cache"]):
        argv = ["generate", str(tmp_path / "run"), "--prompt", "def f(x):", "--max-new-tokens", "12", "--json"]
        assert main(argv + flag) == 0
        gen = json.loads(capsys.readouterr().out)
        assert gen["text"][0].startswith("def f(x):") and len(gen["new_ids"][0]) == 12
        texts.append(gen["text"])
    assert texts[0] == texts[1]


def test_user_errors_are_one_line_exit_2(make_config, tmp_path, capsys):
    config = make_config(train={"tokens_per_update": 1000})
    assert main(["train", str(config), "--run-dir", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llmlab: error: train.tokens_per_update (1000)") and "\n" not in err

    with RunLock(tmp_path / "busy"):
        assert main(["train", str(make_config()), "--run-dir", str(tmp_path / "busy")]) == 2
    assert f"is in use by pid {os.getpid()}" in capsys.readouterr().err

    assert main(["eval", str(tmp_path / "nothing-here")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_bench_train_prints_a_table_then_one_json_line(make_config, capsys):
    config = make_config(train={"micro_batch_size": 2})
    argv = ["bench", "train", str(config), "--no-compile", "--no-peer", "--steps", "1", "--repeats", "1", "--warmup", "1"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "tokens/s" in lines[1]
    payload = json.loads(lines[-1])
    assert payload["bench"] == "train" and payload["results"][0]["impl"] == "llmlab eager"
    assert payload["results"][0]["tokens_per_s"] > 0
