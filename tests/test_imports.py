"""Imports flow one way (DESIGN.md section 1): a module never imports a higher floor, and no import
circle exists, even inside one package. Two views: the source (every import statement, those
inside functions too, read with `ast`) and the running interpreter (what `import M` really loads,
each in a fresh process so that modules other tests imported do not hide a violation)."""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

import llmlab


CASES = {
    "llmlab.files": ("torch", "llmlab.config", "llmlab.model", "llmlab.data", "llmlab.train", "llmlab.campaign"),
    "llmlab.runs": ("torch", "llmlab.train", "llmlab.bench", "llmlab.campaign", "llmlab.infer"),
    "llmlab.timing": ("llmlab.train", "llmlab.bench", "llmlab.campaign", "llmlab.infer"),
    "llmlab.infer": ("llmlab.train", "llmlab.bench", "llmlab.campaign"),
    "llmlab.infer.command": ("llmlab.train", "llmlab.bench", "llmlab.campaign"),
    "llmlab.model": ("llmlab.data", "llmlab.train", "llmlab.infer", "llmlab.bench", "llmlab.campaign"),
    "llmlab.data.loader": ("llmlab.model", "llmlab.train", "llmlab.infer", "llmlab.bench", "llmlab.campaign"),
    "llmlab.data.prepare": ("torch", "llmlab.model", "llmlab.train", "llmlab.campaign"),
    "llmlab.train": ("llmlab.bench", "llmlab.campaign"),
}
"""module -> packages that importing it must not load. llmlab.runs and llmlab.data.prepare read and
write records without torch (`llmlab report`, `llmlab prepare`); only loading weights needs it."""


@functools.cache
def loaded_after_import() -> dict[str, set[str]]:
    """sys.modules after `import M`, each M in its own interpreter (started together: ~2 s, not ~16)."""
    code = "import json, sys; import {}; print(json.dumps(sorted(sys.modules)))"
    procs = {m: subprocess.Popen([sys.executable, "-c", code.format(m)], stdout=subprocess.PIPE, text=True)
             for m in CASES}
    return {m: set(json.loads(p.communicate()[0])) for m, p in procs.items()}


@pytest.mark.parametrize("module", CASES)
def test_lower_layers_do_not_import_higher_ones(module: str) -> None:
    modules = loaded_after_import()[module]
    assert sorted(p for p in CASES[module] if any(m == p or m.startswith(p + ".") for m in modules)) == []


FLOORS = {
    "llmlab.errors": 0,
    "llmlab.paths": 1, "llmlab.files": 1, "llmlab.tables": 1,
    "llmlab.config": 2, "llmlab.timing": 2,
    "llmlab.runs": 3, "llmlab.device": 3, "llmlab.environment": 3, "llmlab.checkpoint": 3,
    "llmlab.model": 4,
    "llmlab.data": 5,
    "llmlab.infer": 6,
    "llmlab.train": 7, "llmlab.export": 7, "llmlab.audit": 7,
    "llmlab.bench": 8,
    "llmlab.campaign": 9,
    "llmlab.gpu_check": 10, "llmlab.cli": 10,
    "llmlab.__main__": 11,
}
"""The floors, ground first: a module imports its own package and lower floors only. (`llmlab`
itself, the package's __init__ with __version__, stands below all.)"""

APART = {("llmlab.data", "llmlab.model"), ("llmlab.data", "llmlab.runs"), ("llmlab.data", "llmlab.checkpoint")}
"""(importer, imported) pairs the floors allow but the design does not: data prepares tokens and
knows nothing of the model or of run records."""


def source_graph(package: Path) -> dict[str, dict[str, int]]:
    """{module: {imported llmlab module: line of the first import}} over every import statement
    of the package's source, those inside functions included. `from a import b` counts as an
    import of `a.b` when that is a module, else of `a`."""
    modules = {}
    for path in package.rglob("*.py"):
        name = ".".join(path.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path

    def module_of(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, {})
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [module_of(f"{node.module}.{a.name}") if f"{node.module}.{a.name}" in modules
                           else module_of(node.module) for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [module_of(a.name) for a in node.names]
            else:
                continue
            for target in targets:
                if target and target != name and not name.startswith(target + "."):  # a package's own __init__
                    edges.setdefault(target, node.lineno)
    return graph


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def floor_of(module: str) -> tuple[str, int]:
    """(the FLOORS entry a module belongs to, its floor); the package root is below every floor."""
    for prefix, floor in sorted(FLOORS.items(), key=lambda kv: -len(kv[0])):
        if module == prefix or module.startswith(prefix + "."):
            return prefix, floor
    if module == "llmlab":
        return module, -1
    raise AssertionError(f"{module} is on no floor: add it to FLOORS")


def upward_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    """Every import of another package on the same floor or a higher one, and of a pair in APART."""
    found = []
    for module, edges in sorted(graph.items()):
        home, floor = floor_of(module)
        for target, line in sorted(edges.items()):
            there, target_floor = floor_of(target)
            if there != home and (target_floor >= floor or (home, there) in APART):
                found.append(f"{module}:{line} imports {target} (floor {floor} -> {target_floor})")
    return found


SRC = Path(llmlab.__file__).parent


def test_no_import_circle_anywhere() -> None:
    assert circles(source_graph(SRC)) == []


def test_no_module_imports_a_higher_floor() -> None:
    assert upward_imports(source_graph(SRC)) == []


def test_the_checks_catch_a_planted_circle_and_an_upward_import(tmp_path: Path) -> None:
    """The two checks above on a copy of llmlab with two planted imports: they are not vacuous."""
    copy = tmp_path / "llmlab"
    for path in SRC.rglob("*.py"):
        (copy / path.relative_to(SRC)).parent.mkdir(parents=True, exist_ok=True)
        (copy / path.relative_to(SRC)).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    sources = copy / "data" / "corpus.py"
    sources.write_text(sources.read_text(encoding="utf-8") + "\n\ndef _planted():\n    from llmlab.data import pydocs\n",
                       encoding="utf-8")
    runs = copy / "runs.py"
    runs.write_text(runs.read_text(encoding="utf-8") + "\nfrom llmlab.train import loop  # planted\n", encoding="utf-8")
    graph = source_graph(copy)
    assert any({"llmlab.data.corpus", "llmlab.data.pydocs"} <= set(c) for c in circles(graph))
    assert any(v.startswith("llmlab.runs:") and "llmlab.train.loop" in v for v in upward_imports(graph))
