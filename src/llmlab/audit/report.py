"""The audit's verdict: a short table and the findings (text), or one JSON object (--json)."""

from __future__ import annotations

import os
from typing import Any

from llmlab.audit.hazards import HAZARDS
from llmlab.audit.pipeline import AuditReport


def _rel(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def to_json(report: AuditReport) -> dict[str, Any]:
    return {
        "audit": report.spec, "verdict": "ready" if report.ready else "hazards", "exit_code": report.exit_code,
        "device": report.device, "train_steps": report.steps, "train_path": report.train_path,
        "seconds": round(report.seconds, 2), "checks": [c.to_dict() for c in report.checks],
        "findings": [{**f.to_dict(), "file": _rel(f.file)} for f in report.findings],
    }


def render(report: AuditReport) -> str:
    """The human report: checks table, findings (file:line, effect, fix, guide), verdict line."""
    rows = [("check", "result", "ok", "detail")]
    for c in report.checks:
        rows.append((c.name, str(c.value), "info" if c.info else ("yes" if c.ok else "NO"), c.detail))
    if not report.has_decode:
        rows.append(("decode", "-", "-", "no decode_step returned by the factory: not checked"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"llmlab audit {report.spec} ({report.device}, {report.steps} train steps; {report.seconds:.1f} s)",
             f"train step: {report.train_path}", ""]
    lines += ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
    if report.findings:
        lines += ["", f"findings ({len(report.findings)}):"]
    for f in report.findings:
        h = HAZARDS[f.hazard]
        lines.append(f"  {_rel(f.file)}:{f.line}  [{f.hazard}] {', '.join(h.effects)}  ({f.source})")
        lines.append(f"      {f.code}")
        if f.detail:
            lines.append(f"      found: {f.detail}")
        lines += [f"      dynamo: {e}" for e in f.evidence[:3]]
        lines.append(f"      fix: {h.fix}")
        lines.append(f"      guide: {h.doc}")
    n = len(report.findings)
    lines += ["", "verdict: ready for torch.compile (exit 0)" if report.ready else
              f"verdict: {n} hazard(s) found, not compile-ready (exit 1)"]
    return "\n".join(lines)
