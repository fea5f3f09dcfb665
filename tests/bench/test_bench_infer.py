import json

import pytest
import torch

from llmlab.bench.bandwidth import large_buffer_bytes, read_bandwidth
from llmlab.bench.infer import kv_bytes_per_step, main, ratios
from llmlab.config import ModelConfig
from llmlab.errors import ConfigError


def test_bench_infer_prints_table_then_one_json_line(capsys) -> None:
    assert main(["--prompt-len", "8", "--new-tokens", "4", "--repeats", "1", "--no-peers", "--no-compile",
                 "--batch-sizes", "1,2", "--threads", "1,2"]) == 0
    assert torch.get_num_threads() == 1  # the conftest's count: rows at 2 threads put it back
    lines = capsys.readouterr().out.strip().splitlines()
    payload = json.loads(lines[-1])
    assert payload["bench"] == "infer" and payload["threads"] == [1, 2]
    modes = {(r["impl"], r["mode"], r["batch_size"], r["threads"], r["decode_threads"]) for r in payload["rows"]}
    # no-cache rows at the first batch size only; every row at each thread count
    assert modes == {("llmlab", m, b, t, t) for m, b in [("kv cache, eager", 1), ("no cache, eager", 1),
                                                         ("kv cache, eager", 2)] for t in (1, 2)}
    assert set(payload["load_average"]) == {"before", "after"}
    bw = payload["bandwidth"]
    assert bw["weights_sized"]["bytes"] == payload["weight_bytes_per_token"]
    assert bw["larger_than_cache"]["bytes"] >= 256 * 2**20
    for row in payload["rows"]:
        assert row["decode_tokens_per_s"] > 0 and row["prefill_ms"] > 0 and row["same_tokens"]
        # the fraction of bandwidth is bytes per step x steps per second / the measured bandwidth
        steps_per_s = row["decode_tokens_per_s"] / row["batch_size"]
        assert row["frac_weights_sized"] == pytest.approx(
            row["bytes_per_step"] * steps_per_s / 1e9 / bw["weights_sized"]["gb_s"])
    assert payload["ratios"]["1"]["llmlab_cache_speedup"] > 0 and payload["ratios"]["2"]["llmlab_cache_speedup"] > 0
    assert any("decode tok/s" in line for line in lines[:-1])


def test_kv_bytes_per_step_is_hand_arithmetic() -> None:
    cfg = ModelConfig(vocab_size=64, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=96,
                      max_seq_len=64)
    # K and V, 3 layers, 2 kv heads of 16, fp32, batch 8, mean position 10 + 6 / 2 = 13
    assert kv_bytes_per_step(cfg, batch=8, prompt_len=10, new=6, element_size=4) == 2 * 3 * 2 * 16 * 4 * 8 * 13


def test_ratios_compare_batch_one_decode_rows_at_one_thread_count() -> None:
    rows = [{"impl": i, "mode": m, "batch_size": b, "threads": 1, "decode_tokens_per_s": t} for i, m, b, t in [
        ("llmlab", "kv cache, eager", 1, 300.0), ("llmlab", "no cache, eager", 1, 30.0),
        ("llmlab", "kv cache, compiled", 1, 600.0), ("hf-transformers", "kv cache, eager", 1, 200.0),
        ("hf-transformers", "no cache, eager", 1, 40.0), ("llmlab", "kv cache, eager", 8, 1000.0),
        ("llmlab", "kv cache, compiled, max-autotune", 1, 900.0),
        ("hf-transformers", "static cache, compiled", 1, 400.0),
        ("llmlab", "kv cache, compiled, called in inference_mode", 1, 540.0),
        ("llmlab", "kv cache, compiled, max-autotune, called in inference_mode", 1, 900.0)]]
    rows.append({"impl": "llmlab", "mode": "kv cache, eager", "batch_size": 1, "threads": 2,
                 "decode_tokens_per_s": 1.0})  # another thread count: not in the 1-thread ratios
    assert ratios(rows, 1) == pytest.approx({
        "llmlab_cache_speedup": 10.0, "hf_cache_speedup": 5.0, "llmlab_vs_hf_no_cache": 0.75,
        "llmlab_vs_hf_cached": 1.5, "compiled_vs_hf_cached": 3.0, "compiled_vs_eager_cached": 2.0,
        "autotuned_vs_hf_cached": 4.5, "autotuned_vs_eager_cached": 3.0, "hf_static_compiled_vs_hf_cached": 2.0,
        "compiled_vs_hf_static_compiled": 1.5, "autotuned_vs_hf_static_compiled": 2.25,
        "compiled_inference_mode_vs_plain": 0.9, "autotuned_inference_mode_vs_plain": 1.0})
    assert ratios(rows, 2) == {}


def test_read_bandwidth_is_a_plausible_rate() -> None:
    assert 1e6 < read_bandwidth(2**20, repeats=3) < 1e13  # 1 MB/s (a loaded machine) .. 10 TB/s
    assert large_buffer_bytes() >= 256 * 2**20


def test_bad_batch_sizes_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="--batch-sizes must be comma-separated integers"):
        main(["--batch-sizes", "1,x"])
    with pytest.raises(ConfigError, match="must be >= 1"):
        main(["--batch-sizes", "0"])
    with pytest.raises(ConfigError, match="--threads must be comma-separated integers"):
        main(["--threads", "1,two"])
    with pytest.raises(ConfigError, match="--threads must be >= 1"):
        main(["--threads", "0,1"])


def test_skip_no_cache_leaves_out_the_no_cache_rows(capsys) -> None:
    assert main(["--prompt-len", "4", "--new-tokens", "2", "--repeats", "1", "--no-peers", "--no-compile",
                 "--skip-no-cache", "--threads", "1"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {r["mode"] for r in payload["rows"]} == {"kv cache, eager"}
