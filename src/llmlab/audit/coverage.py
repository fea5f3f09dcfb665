"""Which lines of the user's code run inside forward and decode: one eager pass under sys.settrace.

The static scan reads only code that actually runs for this model (a hazard on a path the model's
configuration never takes — llmlab's eager-only `loop` MoE dispatch when `capacity` is configured —
is not this model's hazard). "User code" is any Python file outside the standard library,
site-packages and torch: the audited file, its sibling modules, an editable install like llmlab's.
"""

from __future__ import annotations

import dataclasses
import sys
import sysconfig
import types
from pathlib import Path
from typing import Any, Callable

import torch

_AUDIT_DIR = str(Path(__file__).resolve().parent)
_LIBRARY_DIRS = tuple({str(Path(p).resolve()) for p in (
    sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
    Path(torch.__file__).parent)})


def is_user_file(filename: str) -> bool:
    """Not the standard library, not an installed package (any site-packages or dist-packages,
    the system's too when a venv sees them), not torch, not the audit itself."""
    if not filename or filename.startswith("<"):
        return False
    path = Path(filename).resolve()
    if {"site-packages", "dist-packages"} & set(path.parts):
        return False
    return not str(path).startswith(_LIBRARY_DIRS) and not str(path).startswith(_AUDIT_DIR)


@dataclasses.dataclass
class Coverage:
    """Executed lines and functions of user code, and which arguments arrived as tensors."""

    lines: dict[str, set[int]] = dataclasses.field(default_factory=dict)  # file -> line numbers run
    functions: set[tuple[str, int]] = dataclasses.field(default_factory=set)  # (file, first line)
    tensor_args: dict[tuple[str, int], set[str]] = dataclasses.field(default_factory=dict)

    def ran(self, file: str, first: int, last: int) -> bool:
        done = self.lines.get(file, set())
        return any(n in done for n in range(first, last + 1))


def record(cov: Coverage, fn: Callable[..., Any], *args: Any) -> Any:
    """Run fn(*args) eagerly, adding the user code it runs to cov."""
    user_files: dict[str, bool] = {}

    def local(frame: types.FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            cov.lines.setdefault(frame.f_code.co_filename, set()).add(frame.f_lineno)
        return local

    def tracer(frame: types.FrameType, event: str, arg: Any) -> Any:
        code = frame.f_code
        file = code.co_filename
        if file not in user_files:
            user_files[file] = is_user_file(file)
        if event != "call" or not user_files[file]:
            return None
        key = (file, code.co_firstlineno)
        cov.functions.add(key)
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        tensors = {n for n in names if isinstance(frame.f_locals.get(n), torch.Tensor)}
        cov.tensor_args.setdefault(key, set()).update(tensors)
        cov.lines.setdefault(file, set()).add(frame.f_lineno)
        return local

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        return fn(*args)
    finally:
        sys.settrace(previous)
