import json

from llmlab.bench.moe import main


def test_bench_moe_prints_table_then_one_json_line(capsys) -> None:
    assert main(["--tokens", "64", "--repeats", "1", "--runs", "2", "--warmup", "0", "--no-peers",
                 "--breakdown-tokens", "0", "--d-model", "32", "--d-ff-expert", "16"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    payload = json.loads(lines[-1])
    assert payload["bench"] == "moe" and payload["runs"] == 2
    assert len(lines) > 3  # a table came first
    cases = {r["case"]: r for r in payload["rows"]}
    assert set(cases) == {"dense", "grouped", "capacity", "loop"}
    lo, hi = cases["grouped"]["ratio_range"]  # the range of the two runs' medians
    assert 0 < lo <= hi and cases["dense"]["ratio_range"] == [1.0, 1.0]
