import json

from llmlab.bench.infer import main


def test_bench_infer_prints_table_then_one_json_line(capsys) -> None:
    assert main(["--quick", "--no-peers", "--no-compile", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    payload = json.loads(lines[-1])
    assert payload["bench"] == "infer"
    modes = {(r["impl"], r["mode"]) for r in payload["rows"]}
    assert modes == {("llmlab", "kv cache, eager"), ("llmlab", "no cache, eager")}
    assert all(r["tokens_per_s"] > 0 for r in payload["rows"])
    assert any("tokens/s" in line for line in lines[:-1])
