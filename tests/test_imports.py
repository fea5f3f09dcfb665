"""Imports flow one way (DESIGN.md section 1): a lower layer never imports a higher one. Each check
runs in a fresh interpreter, so modules other tests imported do not hide a violation."""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

import llmlab.data


CASES = {
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


def test_tokenizers_are_on_no_import_circle() -> None:
    """Counting imports inside functions too: tokenizers -> sources -> pydocs used to reach back
    into tokenizers for cache_dir (now llmlab.paths). (sources.get_source still imports the
    wikitext and pydocs readers, which subclass its Source, on use: a factory, not a circle
    through shared state.)"""
    folder = Path(llmlab.data.__file__).parent
    graph = {f"llmlab.data.{p.stem}": _llmlab_imports(p) for p in folder.glob("*.py")}
    start = "llmlab.data.tokenizers"
    seen, stack = set(), [start]
    while stack:
        for nxt in graph.get(stack.pop(), ()):
            assert nxt != start, f"tokenizers imports itself back (through {sorted(seen)})"
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    assert "llmlab.paths" in seen  # the cache location, reached without a circle


def _llmlab_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.module for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llmlab.")}
