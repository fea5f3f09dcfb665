"""Load what the user points the audit at: `FILE.py[:FACTORY]`.

FACTORY (default `build`) is a function in FILE that returns `(model, idx)` or
`(model, idx, decode_step)`, where `decode_step(model, token, position)` runs one cached decoding
step: token (B, 1), position a (1,) int64 tensor. FILE is imported from its own folder (so its
sibling modules import), under a private module name. Anything that goes wrong in the user's code
is the user's error: one line naming FILE:LINE, exit 2.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import torch
from torch import nn

from llmlab.errors import LLMLabError

DEFAULT_FACTORY = "build"


class AuditInputError(LLMLabError):
    """The audited file, its factory or what the factory returned is unusable."""


@dataclasses.dataclass
class Target:
    path: Path
    factory: str
    model: nn.Module
    idx: torch.Tensor
    decode_step: Callable[..., Any] | None
    make: Callable[[], Any]  # the factory: called again for a fresh model (see rebuild)

    def rebuild(self) -> "Target":
        """A fresh (model, idx, decode_step): checks that mutate state (a grown cache) do not leak."""
        return _call_factory(self.path, self.factory, self.make)


def parse_spec(spec: str) -> tuple[Path, str]:
    """'models.py:make' -> (models.py, 'make'); 'models.py' -> (models.py, 'build')."""
    file, sep, factory = spec.rpartition(":")
    if not sep or not file.endswith(".py"):  # no factory, or a ':' inside the path (C:\...)
        file, factory = spec, DEFAULT_FACTORY
    path = Path(file)
    if path.suffix != ".py":
        raise AuditInputError(f"{spec}: expected FILE.py or FILE.py:FACTORY")
    if not path.is_file():
        raise AuditInputError(f"{path}: no such file")
    if not factory.isidentifier():
        raise AuditInputError(f"{spec}: {factory!r} is not a function name")
    return path.resolve(), factory


def user_error(path: Path, what: str, exc: BaseException) -> AuditInputError:
    """One line: where in the user's file it failed (innermost frame there), and the exception."""
    where = str(path)
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if Path(frame.filename).resolve().parent == path.parent:
            where = f"{frame.filename}:{frame.lineno}"
            break
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f"{exc.filename}:{exc.lineno}"
    message = " ".join(str(exc).split()) or "(no message)"
    return AuditInputError(f"{where}: {what} raised {type(exc).__name__}: {message}")


def import_file(path: Path) -> ModuleType:
    """Import FILE as a module, with its folder first on sys.path while it imports."""
    name = f"_llmlab_audit_{path.stem}_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise AuditInputError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any error while importing is the user's, reported in one line
        sys.modules.pop(name, None)
        raise user_error(path, "importing it", e) from None
    finally:
        sys.path.remove(str(path.parent))
    return module


def load_target(spec: str) -> Target:
    """Import FILE, call FACTORY and check what it returns."""
    path, factory_name = parse_spec(spec)
    module = import_file(path)
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        found = sorted(n for n, v in vars(module).items()
                       if callable(v) and getattr(v, "__module__", None) == module.__name__ and not isinstance(v, type))
        raise AuditInputError(f"{path}: no function {factory_name!r} (functions defined there: "
                              f"{', '.join(found) or 'none'}); name it with {path.name}:FACTORY")
    return _call_factory(path, factory_name, factory)


def _call_factory(path: Path, name: str, factory: Callable[[], Any]) -> Target:
    try:
        built = factory()
    except Exception as e:  # noqa: BLE001 - the factory is user code
        raise user_error(path, f"{name}()", e) from None
    return _check_built(path, name, factory, built)


def _check_built(path: Path, name: str, factory: Callable[[], Any], built: Any) -> Target:
    where = f"{path}: {name}()"
    if not isinstance(built, tuple) or len(built) not in (2, 3):
        got = f"a tuple of {len(built)}" if isinstance(built, tuple) else type(built).__name__
        raise AuditInputError(f"{where} must return (model, idx) or (model, idx, decode_step); got {got}")
    model, idx, decode = (*built, None) if len(built) == 2 else built
    if not isinstance(model, nn.Module):
        raise AuditInputError(f"{where}: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(idx, torch.Tensor) or idx.ndim < 1:
        raise AuditInputError(f"{where}: idx must be a tensor with a batch dimension, got {type(idx).__name__}")
    if decode is not None and not callable(decode):
        raise AuditInputError(f"{where}: decode_step must be callable (model, token, position), "
                              f"got {type(decode).__name__}")
    return Target(path, name, model, idx, decode, factory)
