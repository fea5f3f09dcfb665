"""`llmlab audit FILE.py[:FACTORY]`: how torch.compile-ready is a user's model, line by line.

Order: import the file and build (target.py); one eager pass under a line tracer records which
user code runs in forward and decode (coverage.py); a fresh build goes through the compiled
checks (dynamic.py); the source of the code that ran is scanned (static.py); findings at the same
line merge. Exit code: 0 ready, 1 hazards, 2 bad input.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import time
from pathlib import Path
from typing import Any, Callable

import torch

from llmlab.audit.coverage import Coverage, is_user_file, record
from llmlab.audit.dynamic import CheckResult, Event, TrainStep, decode_inputs, first_line, quiet, run_checks
from llmlab.audit.hazards import Finding
from llmlab.audit.static import scan
from llmlab.audit.target import AuditInputError, Target, load_target, user_error
from llmlab.errors import ConfigError

COVERAGE_DECODE_POSITIONS = 3  # enough for a cache's first call (empty) and a later one (grown)
STATE_HAZARDS = ("cat-cache", "global-state", "int-position")  # findings about state a guard can name
GUARD_INTERNALS = {"_modules", "_parameters", "_buffers"}  # nn.Module's dicts in dynamo's guard sources


@dataclasses.dataclass
class AuditReport:
    spec: str
    device: str
    steps: int
    checks: list[CheckResult]
    findings: list[Finding]
    seconds: float
    has_decode: bool
    train_path: str = ""  # how the train step called the model, and whose loss it backpropagated

    @property
    def ready(self) -> bool:
        return not self.findings and all(c.ok for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.ready else 1


def audit(spec: str, device: str = "cpu", steps: int = 4) -> AuditReport:
    """Run every check on FILE.py[:FACTORY]; AuditInputError (exit 2) for anything wrong with the input."""
    if steps < 2:
        raise ConfigError(f"--steps must be at least 2 (one compilation, then steps that must reuse it); got {steps}")
    start = time.perf_counter()
    with quiet():
        target = _on_device(load_target(spec), device)
        cov, train_path = _eager_pass(target)
        fresh = _on_device(target.rebuild(), device)
        checks = run_checks(fresh, steps)
    static = scan(cov, _loop_files(target))
    findings = merge(static, checks, default_where=_default_where(target))
    has_decode = target.decode_step is not None
    return AuditReport(spec, device, steps, checks, findings, time.perf_counter() - start, has_decode, train_path)


def _on_device(t: Target, device: str) -> Target:
    try:
        dev = torch.device(device)
        return dataclasses.replace(t, model=t.model.to(dev), idx=t.idx.to(dev))
    except (RuntimeError, AssertionError) as e:
        raise AuditInputError(f"--device {device}: {first_line(str(e))}") from None


def _eager_pass(t: Target) -> tuple[Coverage, str]:
    """The train step's forward and loss (train mode) and a few decode positions, eagerly: the
    user's errors surface here (exit 2), the tracer records which lines of user code run, and the
    train step says which path it took (model(idx) or model(idx, targets))."""
    cov = Coverage()
    t.model.train()
    step = TrainStep.of(t.model)
    what = "model(idx)" if step.targets is None else f"model(idx, {step.targets})"
    _, train_path = _user_call(t, what, lambda: record(cov, step.run, t.model, t.idx))
    if t.decode_step is not None:
        t.model.eval()
        with torch.no_grad():
            for pos in range(COVERAGE_DECODE_POSITIONS):
                _user_call(t, "decode_step(model, token, position)",
                           lambda: record(cov, t.decode_step, t.model, *decode_inputs(t, pos)))
    return cov, train_path


def _user_call(t: Target, what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except AuditInputError:
        raise
    except Exception as e:  # noqa: BLE001 - the model is user code: its errors are the user's input errors
        raise user_error(t.path, what, e) from None


def _loop_files(t: Target) -> set[str]:
    files = {str(t.path)}
    for m in t.model.modules():
        try:
            file = inspect.getsourcefile(type(m))
        except TypeError:
            continue
        if file and is_user_file(file):
            files.add(str(Path(file).resolve()))
    return files


def _default_where(t: Target) -> dict[str, tuple[str, int]]:
    """Where an event without a user line is reported: forward's def, or the decode step's."""
    def where(obj: Any) -> tuple[str, int]:
        try:
            return str(Path(inspect.getsourcefile(obj)).resolve()), inspect.getsourcelines(obj)[1]
        except (TypeError, OSError):
            return str(t.path), 1
    out = {"forward": where(type(t.model).forward)}
    out["decode"] = where(t.decode_step) if t.decode_step is not None else out["forward"]
    return out


def merge(static: list[Finding], checks: list[CheckResult],
          default_where: dict[str, tuple[str, int]]) -> list[Finding]:
    """Dynamo's events join the static finding at the same line (or, for a recompilation, the
    cache finding whose attribute the failed guard names); the others become findings of their own."""
    by_line: dict[tuple[str, int], Finding] = {}
    for f in static:
        by_line.setdefault((f.file, f.line), f)
    extra: dict[tuple[str, int, str], Finding] = {}
    for check in checks:
        role = "decode" if check.name.startswith("decode") else "forward"
        for e in check.events:
            match = _by_attribute(static, e) or (by_line.get((e.file, e.line)) if e.file else None)
            if match is not None:
                match.source = "static+dynamic"
                if e.reason not in match.evidence:
                    match.evidence.append(e.reason)
                continue
            file, line = (e.file, e.line) if e.file and e.line else default_where[role]
            code = _source_line(file, line)
            kind = _kind(e, code)
            key = (file, line, kind)
            if key not in extra:
                extra[key] = Finding(kind, file, line, code, f"seen by dynamo in: {check.name}", "dynamic")
            if e.reason not in extra[key].evidence:
                extra[key].evidence.append(e.reason)
    return sorted([*static, *extra.values()], key=lambda f: (f.file, f.line, f.hazard))


def _kind(e: Event, code: str) -> str:
    """A recompilation on a guard `value == <int>` at a line handling a position: the compiled code
    was specialised on a Python int position (positions-as-tensors)."""
    if e.kind == "recompilation" and re.search(r"== -?\d+\b", e.reason) and "pos" in code:
        return "int-position"
    return e.kind


def _by_attribute(static: list[Finding], e: Event) -> Finding | None:
    """The state finding a failed guard is about: a grown cache, a Python counter or position, a
    global, named in the guard (`self._modules['attn'].cache is None`, `...cache[0]' size
    mismatch`) and in the finding's line or detail (a cache read through locals names its
    attribute there). Dynamo blames such recompilations on neighbouring lines (the `if cache is
    not None` test, the caller's `def forward`): they are that finding's evidence, not findings."""
    if e.kind != "recompilation":
        return None
    guard = e.reason.split(" # ")[0]
    names = set(re.findall(r"\.([A-Za-z_]\w*)", guard)) - GUARD_INTERNALS
    names |= set(re.findall(r"G\['([A-Za-z_]\w*)'\]", guard))
    for name in sorted(names):
        for f in static:
            if f.hazard in STATE_HAZARDS and re.search(rf"\b{re.escape(name)}\b", f"{f.code} {f.detail}"):
                return f
    return None


def _source_line(file: str, line: int) -> str:
    try:
        return Path(file).read_text(encoding="utf-8").splitlines()[line - 1].strip()
    except (OSError, IndexError):
        return ""
