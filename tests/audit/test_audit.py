"""`llmlab audit` on the shipped examples: every planted hazard found at its line, fixed versions
and llmlab's own models ready, --json one object. Each example is audited once (module-scoped
fixtures, CLI run in-process): 11 audits and one compile-check took 7 min on the shared 2 cores
at load average 10 from other jobs."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from llmlab.audit import audit, render, to_json
from llmlab.audit.compile_check import main as compile_check_main
from llmlab.audit.hazards import HAZARDS
from llmlab.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "audit"
FLAWED = ("nanogpt_flawed", "moe_flawed", "stats_flawed", "student_flawed")
FIXED = ("nanogpt_fixed", "moe_fixed", "stats_fixed", "student_fixed")
LLMLAB = ("build_dense", "build_gqa", "build_moe")


def run_audit(*args: str) -> tuple[int, str]:
    """The CLI in-process: (exit code, stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["audit", *args])
    return code, out.getvalue()


def planted(name: str) -> set[tuple[str, int]]:
    """(hazard, line) for each `# HAZARD: a, b` marker in an example: the ground truth."""
    hazards = set()
    for n, text in enumerate((EXAMPLES / f"{name}.py").read_text().splitlines(), start=1):
        marker = re.search(r"# HAZARD: ([\w\-, ]+)$", text)
        if marker:
            hazards |= {(h.strip(), n) for h in marker.group(1).split(",")}
    return hazards


@pytest.fixture(scope="module")
def audits() -> dict[str, Any]:
    """Every example audited once: through the CLI with --json (exit code, parsed object, raw
    stdout), except moe_flawed, audited through the library so that its text report is kept too."""
    results: dict[str, Any] = {}
    for name in FLAWED + FIXED:
        path = str(EXAMPLES / f"{name}.py")
        if name == "moe_flawed":
            report = audit(path, steps=3)
            results[name] = report.exit_code, to_json(report)
            results["moe_flawed text"] = render(report)
            continue
        code, out = run_audit(path, "--json", "--steps", "3")
        results[name] = code, json.loads(out)
        results[f"{name} stdout"] = out
    for factory in LLMLAB:
        code, out = run_audit(f"{EXAMPLES / 'llmlab_models.py'}:{factory}", "--json", "--steps", "3")
        results[factory] = code, json.loads(out)
    return results


@pytest.mark.parametrize("name", FLAWED)
def test_flawed_example_reports_each_planted_hazard_at_its_line(audits: dict, name: str) -> None:
    code, report = audits[name]
    found = {(f["hazard"], f["line"]) for f in report["findings"] if f["file"].endswith(f"{name}.py")}
    expected = planted(name)
    assert len(expected) >= 2
    assert expected <= found, f"missing: {expected - found}"
    assert code == 1 and report["verdict"] == "hazards" and report["exit_code"] == 1
    for f in report["findings"]:
        assert f["effects"] == list(HAZARDS[f["hazard"]].effects) and f["fix"] and f["doc"].startswith("docs/")


def test_dynamo_confirms_what_the_scan_reads(audits: dict) -> None:
    """The compiled checks see the same hazards: graph breaks at the planted lines, a grown cache
    recompiling the decode step."""
    checks = {name: {c["check"].split(" in ")[0].split(" over ")[0]: c for c in audits[name][1]["checks"]}
              for name in FLAWED}
    assert checks["moe_flawed"]["forward graph breaks"]["value"] >= 1
    assert checks["stats_flawed"]["forward graph breaks"]["value"] >= 3
    assert checks["nanogpt_flawed"]["decode compilations"]["value"] > 1
    confirmed = {(f["hazard"], f["line"]) for name in FLAWED for f in audits[name][1]["findings"]
                 if f["source"] == "static+dynamic"}
    hazards = {h for h, _ in confirmed}
    assert {"item", "tensor-branch", "print-log", "data-dependent-shape", "cat-cache", "int-position"} <= hazards


@pytest.mark.parametrize("name", FIXED + LLMLAB)
def test_fixed_examples_and_llmlab_models_are_ready(audits: dict, name: str) -> None:
    code, report = audits[name]
    assert report["findings"] == [] and code == 0 and report["verdict"] == "ready"
    assert all(c["ok"] for c in report["checks"])
    names = [c["check"] for c in report["checks"]]
    assert any(n.startswith("train step compilations") for n in names)
    if name.startswith(("nanogpt", "student", "build")):
        decode = next(c for c in report["checks"] if c["check"].startswith("decode"))
        assert decode["value"] == 1  # one compilation for 32 positions


def test_shape_variation_is_information_not_a_hazard(audits: dict) -> None:
    shapes = next(c for c in audits["moe_fixed"][1]["checks"] if c["check"].startswith("other"))
    assert shapes["info"] and shapes["ok"] and shapes["value"] >= 1
    assert "fixed seq_len and drop_last" in shapes["detail"]


def test_every_hazard_has_a_section_in_the_guide() -> None:
    guide = (ROOT / "docs" / "torch-compile.md").read_text()
    anchors = {re.sub(r"[^\w\- ]", "", h.lower()).strip().replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", guide, flags=re.M)}
    missing = {h.anchor for h in HAZARDS.values()} - anchors
    assert not missing, f"docs/torch-compile.md lacks sections: {missing}"


def test_json_is_one_object_with_verdict_and_every_finding(audits: dict) -> None:
    out = audits["stats_flawed stdout"]
    assert out.count("\n") == 1  # nothing else on stdout: the model's own prints are held back
    report = json.loads(out)
    assert report["verdict"] == "hazards" and report["exit_code"] == 1
    assert {"hazard", "file", "line", "effects", "fix", "doc", "code", "source", "evidence"} <= set(report["findings"][0])
    assert {(f["hazard"], f["line"]) for f in report["findings"]} >= planted("stats_flawed")


def test_text_report_lists_checks_findings_and_verdict(audits: dict) -> None:
    text, (_, report) = audits["moe_flawed text"], audits["moe_flawed"]
    assert "forward graph breaks" in text and "train step compilations in 3 steps" in text
    for f in report["findings"]:
        assert f"{Path(f['file']).name}:{f['line']}" in text and f["doc"] in text
    assert text.rstrip().endswith(f"verdict: {len(report['findings'])} hazard(s) found, not compile-ready (exit 1)")


def test_the_train_step_runs_the_loss_path_as_trained(audits: dict) -> None:
    """student_*.py: forward(idx, targets=None) is called with targets and its own loss is
    backpropagated, so the code under `if targets is not None:` (the NaN check and its print,
    planted) is read and compiled; llmlab's GPT takes no targets: model(idx) and the audit's loss."""
    for name in ("student_flawed", "student_fixed"):
        assert audits[name][1]["train_path"] == "model(idx, targets): the loss the model returns"
    found = {f["hazard"] for f in audits["student_flawed"][1]["findings"]
             if "isnan(loss)" in f["code"] or "NaN loss" in f["code"]}
    assert found == {"tensor-branch", "print-log"}
    assert audits["build_moe"][1]["train_path"].startswith("model(idx): cross-entropy + aux_loss")


def test_a_cache_grown_through_locals_is_named_and_its_recompilations_folded_in(audits: dict) -> None:
    """The tuple cache grown by cat: reported at the cat line (cat-cache, static+dynamic, dynamo's
    guards on `cache` as evidence), not as recompilations at the `if self.cache is not None` test
    and the block's `def forward`."""
    findings = [f for f in audits["student_flawed"][1]["findings"] if f["file"].endswith("student_flawed.py")]
    assert not [f for f in findings if f["hazard"] == "recompilation"]
    cat = next(f for f in findings if f["hazard"] == "cat-cache")
    assert cat["source"] == "static+dynamic" and "self.cache" in cat["detail"]
    assert any("cache is None" in e for e in cat["evidence"]) and any("size mismatch" in e for e in cat["evidence"])


def test_compile_check_and_audit_give_the_same_rows(audits: dict, capsys: pytest.CaptureFixture) -> None:
    """One owner for the dynamic checks: compile-check on tiny-moe (the settings of
    examples/audit/llmlab_models.py:build_moe) prints the rows the audit of that model printed."""
    args = ["configs/models/tiny-moe.toml", "--set", "model.vocab_size=512", "--set", "model.n_layers=2",
            "--set", "model.moe.dispatch=capacity", "--backend", "aot_eager", "--steps", "3",
            "--decode-steps", "32", "--seq-len", "32", "--json"]
    capsys.readouterr()
    assert compile_check_main(args) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    audited = [c for c in audits["build_moe"][1]["checks"] if not c["info"]]
    assert [c["check"] for c in audited] == ["forward graph breaks", "train step compilations in 3 steps",
                                             "decode compilations over 32 positions"]
    assert [{**r, "seconds": 0} for r in rows] == [{**c, "seconds": 0} for c in audited]
