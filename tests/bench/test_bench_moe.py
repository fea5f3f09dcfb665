import json

from llmlab.bench.moe import main


def test_bench_moe_prints_table_then_one_json_line(capsys) -> None:
    assert main(["--tokens", "64", "--repeats", "1", "--warmup", "0", "--no-peers", "--breakdown-tokens", "0",
                 "--d-model", "32", "--d-ff-expert", "16"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    payload = json.loads(lines[-1])
    assert payload["bench"] == "moe"
    assert len(lines) > 3  # a table came first
