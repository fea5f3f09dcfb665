"""Dynamic checks: what dynamo does when it compiles the user's model.

Backends (the answers below depend on dynamo's tracing and guards, not on code generation):
- train step (and the forward's graph breaks, from the same compilation): "aot_eager" —
  AOTAutograd traces forward and backward exactly as inductor would receive them, without
  generating kernels (seconds instead of tens of seconds on a CPU);
- other shapes: "eager" (forward + loss only: whether a new shape recompiles is dynamo's call);
- decode: "eager" — recompilations are decided by dynamo's guards, before any backend runs.
Graphs and graph-break reasons are collected by `ExplainWithBackend` (what `torch._dynamo.explain`
uses) wrapped around the backend, so one compilation answers both; recompilation reasons come from
`torch._dynamo.utils.get_compilation_metrics()` (the guard that failed, and the user's line).

The train step calls the model the way a training loop does (TrainStep: model(idx, targets)
when forward takes targets). `run_checks` is the one entry point: `llmlab audit` runs it with the
backends above, `llmlab compile-check` with its own (inductor by default) and dtype.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import logging
import re
import time
import traceback
from typing import Any, Callable, Iterator

import torch
import torch._dynamo
import torch._dynamo.utils as dynamo_utils
from torch._dynamo import convert_frame, symbolic_convert
from torch._dynamo.backends.debugging import ExplainWithBackend
from torch._dynamo.testing import CompileCounterWithBackend

from llmlab.audit.coverage import is_user_file
from llmlab.audit.target import AuditInputError, Target

DECODE_POSITIONS = 32
TARGET_NAMES = ("targets", "labels")
TRAIN_BACKEND, DECODE_BACKEND = "aot_eager", "eager"  # the audit's: dynamo's answers without code generation


@dataclasses.dataclass
class Event:
    """A graph break or a recompilation, at the user's file:line when dynamo says where."""

    kind: str  # graph-break | recompilation | compile-error
    reason: str
    file: str | None = None
    line: int | None = None


@dataclasses.dataclass
class CheckResult:
    name: str
    value: Any
    ok: bool
    detail: str = ""
    events: list[Event] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    info: bool = False  # information only: never fails the audit

    def to_dict(self) -> dict[str, Any]:
        """The row both `llmlab audit --json` and `llmlab compile-check` print."""
        return {"check": self.name, "value": self.value, "ok": self.ok, "info": self.info, "detail": self.detail,
                "seconds": round(self.seconds, 2)}


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Dynamo's warnings and the user's prints go to a buffer: the report (and --json) stays clean."""
    logger = logging.getLogger("torch._dynamo")
    level = logger.level
    logger.setLevel(logging.ERROR)
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield buffer
    finally:
        logger.setLevel(level)


def first_line(text: str) -> str:
    return " ".join(str(text).strip().splitlines()[0].split()) if str(text).strip() else ""


def user_location(frames: list[tuple[str, int]]) -> tuple[str | None, int | None]:
    """The innermost frame in user code."""
    for file, line in reversed(frames):
        if is_user_file(file):
            return file, line
    return None, None


def output_tensor(out: Any) -> torch.Tensor:
    """The logits in whatever the model returns: a tensor, .logits, a tuple/list or a dict."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(getattr(out, "logits", None), torch.Tensor):
        return out.logits
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else []
    for item in items:
        if isinstance(item, torch.Tensor) and item.is_floating_point():
            return item
    raise AuditInputError(f"the model returned {type(out).__name__}: the audit needs a tensor, an object "
                          "with .logits, or a tuple/list/dict holding one")


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """How a training step calls the model, read once from forward's signature (outside the
    compiled code): model(idx), or model(idx, targets) the way a training loop does.

    forward(idx, targets=None, ...) (nanoGPT; `labels` for Hugging Face models) gets targets
    (by keyword when it is not forward's second parameter), and the loss it returns is the loss
    (a scalar in the output tuple, .loss, or ["loss"]): the code under `if targets is not None:`
    is what gets compiled. Otherwise the loss is cross-entropy against idx when the output looks
    like LM logits (the value does not matter, the backward graph does), else the mean square;
    plus any .aux_loss."""

    targets: str | None = None
    by_keyword: bool = False

    @classmethod
    def of(cls, model: torch.nn.Module) -> "TrainStep":
        try:
            params = list(inspect.signature(model.forward).parameters.values())
        except (TypeError, ValueError):  # a C-implemented or oddly wrapped forward: no signature to read
            return cls()
        usable = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        found = next((p for p in params[1:] if p.name in TARGET_NAMES and p.kind in usable), None)
        if found is None:
            return cls()
        return cls(found.name, by_keyword=found is not params[1] or found.kind != inspect.Parameter.POSITIONAL_OR_KEYWORD)

    def __call__(self, model: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
        return self.run(model, idx)[0]

    def run(self, model: torch.nn.Module, idx: torch.Tensor) -> tuple[torch.Tensor, str]:
        """(the loss, which path ran: for the report)."""
        if self.targets is None:
            out, call = model(idx), "model(idx)"
        else:
            targets = _targets(idx, self.targets)
            out = model(idx, **{self.targets: targets}) if self.by_keyword else model(idx, targets)
            call = f"model(idx, {self.targets}={self.targets})" if self.by_keyword else f"model(idx, {self.targets})"
            loss = returned_loss(out)
            if loss is not None:
                return loss, f"{call}: the loss the model returns"
        loss, how = _audit_loss(out, idx)
        return loss, f"{call}: {how} of the output (the audit's loss)"


def _targets(idx: torch.Tensor, name: str) -> torch.Tensor:
    """What a training batch holds: `targets` are the next tokens (nanoGPT's y is x shifted by one;
    here idx rolled: the values do not matter, their shape and range do); `labels` are the input
    itself (Hugging Face models shift inside)."""
    return idx.roll(-1, dims=-1) if name == "targets" and idx.ndim > 1 else idx


def _audit_loss(out: Any, idx: torch.Tensor) -> tuple[torch.Tensor, str]:
    logits = output_tensor(out)
    if logits.ndim == idx.ndim + 1 and logits.shape[:-1] == idx.shape and not idx.is_floating_point():
        loss, how = torch.nn.functional.cross_entropy(logits.flatten(0, -2).float(), idx.flatten()), "cross-entropy"
    else:
        loss, how = logits.float().square().mean(), "mean square"
    aux = getattr(out, "aux_loss", None)
    if isinstance(aux, torch.Tensor) and aux.numel() == 1:
        return loss + aux, how + " + aux_loss"
    return loss, how


def returned_loss(out: Any) -> torch.Tensor | None:
    """The scalar loss a model returned next to its logits: .loss, ["loss"], or the first 0-dim
    floating tensor of a tuple/list ((logits, loss)); None when it returned none (loss=None)."""
    for loss in (getattr(out, "loss", None), out.get("loss") if isinstance(out, dict) else None):
        if isinstance(loss, torch.Tensor):
            return loss
    items = out if isinstance(out, (tuple, list)) else []
    return next((x for x in items if isinstance(x, torch.Tensor) and x.ndim == 0 and x.is_floating_point()), None)


_WRAPPERS = ("Encountered graph break", "Failed to handle graph break", "Graph Break Reason:", "***")


def _break_reason(text: str) -> str:
    """The line that says why: dynamo wraps it in 'Encountered graph break when attempting to ...'."""
    body = text.split("Graph Break Reason:", 1)[-1]
    for line in body.splitlines():
        line = line.strip()
        if line and not line.startswith(_WRAPPERS):
            return " ".join(line.split())
    return first_line(body)


class GraphBreakLog(logging.Handler):
    """Collects dynamo's "graph_breaks" log records ("Graph break in user code at FILE:LINE /
    Graph Break Reason: ..."): the one place that names every break's line, including breaks that
    leave no graph before them (ExplainWithBackend only sees breaks that end a compiled graph)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.events: list[Event] = []
        self._saved: list[tuple[logging.Logger, int, bool]] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        at = re.search(r"Graph break.*? in user code at (.+):(\d+)", text)
        if not at:
            return
        stack = [(f, int(n)) for f, n in re.findall(r'File "([^"]+)", line (\d+)', text)]
        frames = [(at.group(1), int(at.group(2)))] + stack
        file, line = user_location(frames[1:]) if not is_user_file(at.group(1)) else frames[0]
        self.events.append(Event("graph-break", _break_reason(text), file, line))

    def __enter__(self) -> "GraphBreakLog":
        dynamo_utils.graph_break_dup_warning_checker.reset()
        for logger in {symbolic_convert.graph_break_log, convert_frame.graph_break_log}:
            self._saved.append((logger, logger.level, logger.propagate))
            logger.setLevel(logging.DEBUG)
            logger.propagate = False  # ours only: torch's handlers would print it to stderr
            logger.addHandler(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        for logger, level, propagate in self._saved:
            logger.removeHandler(self)
            logger.setLevel(level)
            logger.propagate = propagate


def _break_events(reasons: list[Any]) -> list[Event]:
    """Dynamo's graph-break reasons, each at the innermost user frame of its stack."""
    return [Event("graph-break", first_line(r.reason), *user_location([(f.filename, f.lineno) for f in r.user_stack]))
            for r in reasons if r.graph_break]


def _metric_events() -> tuple[list[Event], list[Event]]:
    """(graph breaks, recompilations) since the last clear, from dynamo's compilation metrics: a
    frame that failed to trace (fail_reason, at fail_user_frame) and a recompilation (the guard
    that failed; dynamo often names the user's line in it)."""
    breaks, recompiles = [], []
    for m in dynamo_utils.get_compilation_metrics():
        if m.fail_reason and m.fail_user_frame_filename and is_user_file(m.fail_user_frame_filename):
            breaks.append(Event("graph-break", first_line(m.fail_reason), m.fail_user_frame_filename,
                                m.fail_user_frame_lineno))
        if m.recompile_reason:
            reason = m.recompile_reason.split("User stack")[0]
            recompiles.append(Event("recompilation", first_line(reason), *_guard_location(m)))
    return breaks, recompiles


def _guard_location(m: Any) -> tuple[str | None, int | None]:
    """The user line a failed guard came from: the stack dynamo prints ('File "...", line N'), or
    its '# source  # path:N' comment (a path shortened from the left), else the recompiled frame."""
    text = m.recompile_reason
    full = re.findall(r'File "([^"]+)", line (\d+)', text)
    located = user_location([(f, int(n)) for f, n in full])
    if located[0]:
        return located
    short = re.search(r"#\s*(\S+):(\d+) in \S+\s*$", text.split("User stack")[0].strip())
    if short and m.co_filename and m.co_filename.endswith(short.group(1).lstrip(".")):
        return m.co_filename, int(short.group(2))
    if m.co_filename and is_user_file(m.co_filename):
        return m.co_filename, m.co_firstlineno
    return None, None


def recompilations() -> list[Event]:
    """Recompilations since the last reset(): one per frame compiled again after a guard failed."""
    return _metric_events()[1]


def _unique(events: list[Event]) -> list[Event]:
    seen: dict[tuple[Any, ...], Event] = {}
    for e in events:
        seen.setdefault((e.kind, e.file, e.line), e)
    return list(seen.values())


def reset() -> None:
    """Forget compiled code and compilation metrics: each check (and benchmark case) starts cold
    and counts only its own recompilations."""
    torch.compiler.reset()
    dynamo_utils.clear_compilation_metrics()


def precision(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to dtype (bf16: what a GPU training step runs), or nothing for None."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def check_train(t: Target, steps: int, backend: str = TRAIN_BACKEND, dtype: torch.dtype | None = None
                ) -> list[CheckResult]:
    """Forward + backward + optimizer for `steps` steps at fixed shapes, compiled once with
    ExplainWithBackend(backend): the first step's graph breaks (with reasons and lines), then
    the compilations over all steps (1 expected)."""
    reset()
    explain = ExplainWithBackend(backend)
    compiled = torch.compile(TrainStep.of(t.model).__call__, backend=explain)
    opt = torch.optim.SGD([p for p in t.model.parameters() if p.requires_grad], lr=1e-4)
    t.model.train()
    with GraphBreakLog() as log:
        for i in range(steps):
            with precision(t.idx.device, dtype):
                loss = compiled(t.model, t.idx)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i == 0:
                first = explain.output()
    metric_breaks, recompiles = _metric_events()
    breaks = _unique(log.events + _break_events(first.break_reasons) + metric_breaks)
    value = len(explain.graphs)
    forward = CheckResult("forward graph breaks", len(breaks), not breaks,
                          f"{first.graph_count} graph(s) per step (same compilation as the train step)", breaks)
    detail = f"{first.graph_count} graph(s) in step 1, {len(recompiles)} recompilation(s) after"
    return [forward, CheckResult(f"train step compilations in {steps} steps", value, value == 1, detail, recompiles)]


def other_shapes(idx: torch.Tensor) -> list[tuple[int, ...]]:
    """Two other (batch, seq) sizes than idx's: a shorter sequence, then more rows and another length."""
    B, T = idx.shape[0], idx.shape[1] if idx.ndim > 1 else 0
    if idx.ndim < 2 or T < 4:
        return [(B + 1, *idx.shape[1:]), (B + 2, *idx.shape[1:])]
    return [(B, T // 2, *idx.shape[2:]), (B + 1, (3 * T) // 4, *idx.shape[2:])]


def resize(idx: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """idx cut (or its rows repeated) to shape: real tokens, so embeddings stay in range."""
    rows = idx.repeat((shape[0] + idx.shape[0] - 1) // idx.shape[0], *([1] * (idx.ndim - 1)))
    return rows[tuple(slice(0, s) for s in shape)].contiguous()


def check_shapes(t: Target) -> CheckResult:
    """Forward + loss at idx's shape, then two others: does dynamo recompile, and does it make
    dimensions dynamic? Information about shapes, not a hazard of the code (a fixed seq_len and
    drop_last avoid it). Backend "eager": the answer is dynamo's guards', the backward adds nothing."""
    reset()
    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(TrainStep.of(t.model).__call__, backend=counter)
    t.model.train()
    shapes = other_shapes(t.idx)
    with torch.no_grad():
        compiled(t.model, t.idx)
        before = counter.frame_count
        for shape in shapes:
            compiled(t.model, resize(t.idx, shape))
    dynamic = any(isinstance(s, torch.SymInt) for g in counter.graphs[before:] for node in g.graph.nodes
                  if node.op == "placeholder" for s in _shape(node))
    recompiles = recompilations()
    dims = sorted({int(d) for e in recompiles for d in re.findall(r"size mismatch at index (\d+)", e.reason)})
    more = len(recompiles)  # frames compiled again on a failed guard; differs from new graphs once the step breaks
    shape_text = ", ".join(str(tuple(s)) for s in shapes)
    detail = (f"{tuple(t.idx.shape)} then {shape_text}: {more} recompilation(s)"
              + (f", dims {dims} made dynamic (symbolic sizes: one graph for all lengths, less specialised kernels)"
                 if dynamic else "") + "; a fixed seq_len and drop_last keep one static graph")
    return CheckResult("other batch/seq shapes (info)", more, True, detail, info=True)


def _shape(node: torch.fx.Node) -> tuple[Any, ...]:
    value = node.meta.get("example_value")
    return tuple(value.shape) if isinstance(value, torch.Tensor) else ()


def decode_inputs(t: Target, position: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token (B, 1) taken from idx, and the position as a (1,) int64 tensor."""
    tokens = t.idx.reshape(t.idx.shape[0], -1)
    col = position % tokens.shape[1]
    return tokens[:, col:col + 1], torch.tensor([position], device=t.idx.device)


@torch.no_grad()
def check_decode(t: Target, positions: int = DECODE_POSITIONS, backend: str = DECODE_BACKEND,
                 dtype: torch.dtype | None = None) -> CheckResult:
    """The decode step compiled over `positions` successive positions: a static cache with tensor
    positions compiles once; a grown cache or an int position recompiles."""
    assert t.decode_step is not None
    t.model.eval()
    reset()
    explain = ExplainWithBackend(backend)
    compiled = torch.compile(t.decode_step, backend=explain)
    with GraphBreakLog() as log, precision(t.idx.device, dtype):
        for pos in range(positions):
            compiled(t.model, *decode_inputs(t, pos))
    metric_breaks, recompiles = _metric_events()
    breaks = _unique(log.events + _break_events(explain.break_reasons) + metric_breaks)
    value = len(explain.graphs)
    detail = f"{len(breaks)} graph break(s), {len(recompiles)} recompilation(s)"
    return CheckResult(f"decode compilations over {positions} positions", value, value == 1, detail,
                       breaks + recompiles)


def run_checks(t: Target, steps: int, *, positions: int = DECODE_POSITIONS, shapes: bool = True,
               backend: str | None = None, dtype: torch.dtype | None = None) -> list[CheckResult]:
    """The compiled checks, each guarded (a check that raises is a failed row, not a crash): train
    step (and forward graph breaks), other shapes (information; `shapes=False` skips it), decode
    when t has a decode step. backend None: the audit's (aot_eager for training, eager for decode);
    `llmlab compile-check` passes its own (inductor by default) and a dtype to autocast to."""
    t0 = time.perf_counter()
    try:
        checks = check_train(t, steps, backend or TRAIN_BACKEND, dtype)
    except Exception as e:  # noqa: BLE001 - a failure to compile is a finding, not a crash
        checks = [_failed(f"train step compilations in {steps} steps", e)]
    checks[-1].seconds = time.perf_counter() - t0
    if shapes:
        checks.append(_guarded("other batch/seq shapes (info)", check_shapes, t))
    if t.decode_step is not None:
        checks.append(_guarded(f"decode compilations over {positions} positions", check_decode, t, positions,
                               backend or DECODE_BACKEND, dtype))
    return checks


def _guarded(name: str, check: Callable[..., CheckResult], *args: Any) -> CheckResult:
    t0 = time.perf_counter()
    try:
        result = check(*args)
    except Exception as e:  # noqa: BLE001 - a failure to compile is a finding, not a crash
        result = _failed(name, e)
    result.seconds = time.perf_counter() - t0
    return result


def _failed(name: str, e: Exception) -> CheckResult:
    """A check that raised: the compiled code failed where plain Python ran (the eager pass did)."""
    frames = [(f.filename, f.lineno) for f in traceback.extract_tb(e.__traceback__)]
    file, line = user_location(frames)
    reason = f"{type(e).__name__}: {first_line(str(e))}"
    return CheckResult(name, "error", False, reason, [Event("compile-error", reason, file, line)])
