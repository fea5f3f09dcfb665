"""`pydocs`: an English corpus every Python install carries, for offline runs and tests.

Documents: each help topic of `pydoc_data.topics` (the language reference behind `help("if")`),
and, per standard-library module, its docstrings (module, classes, functions, in source order)
read with `ast` — the modules are never imported. About 2 MB; the split is ~90/5/5 by a stable
hash of each document's id. Parsing the library takes a few seconds, so the extracted documents
are cached in llmlab's cache dir, keyed by the Python version and the library's files.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path

from llmlab.data.corpus import Source, check_split, split_of
from llmlab.files import write_text_atomic
from llmlab.paths import cache_dir

EXTRACTOR_VERSION = "pydocs/1"  # bump when the extraction changes (it changes the documents)
SKIP_DIRS = frozenset(
    {"test", "tests", "idlelib", "lib2to3", "turtledemo", "ensurepip", "pydoc_data",
     "site-packages", "dist-packages", "__pycache__"}
)  # tests, bundled apps and installers: little English prose, lots of fixtures


class PyDocs(Source):
    def __init__(self) -> None:
        self.name = "pydocs"
        self._docs = load_documents()

    def documents(self, split: str) -> Iterator[str]:
        check_split(split)
        return (text for doc_id, text in self._docs if split_of(doc_id) == split)

    def digest(self) -> str:
        h = hashlib.sha256(EXTRACTOR_VERSION.encode())
        for doc_id, text in self._docs:
            h.update(f"{doc_id}\0{text}\0".encode())
        return h.hexdigest()[:16]

    def size_hint(self) -> int:
        return sum(len(text) for _, text in self._docs)


def load_documents() -> list[tuple[str, str]]:
    """[(doc_id, text)] in a fixed order: topics by name, then modules by dotted name (cached)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = module_files(stdlib)
    path = cache_dir() / "pydocs" / f"{_cache_key(stdlib, files)}.json"
    if path.is_file():
        try:
            return [tuple(d) for d in json.loads(path.read_text(encoding="utf-8"))]  # type: ignore[misc]
        except (ValueError, TypeError):
            pass  # a damaged cache entry: rebuild it
    docs = topic_documents() + [(f"module:{m}", t) for m, f in files if (t := module_text(m, f))]
    write_text_atomic(path, json.dumps(docs))
    return docs


def topic_documents() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics  # ~1 MB of text, read only when the corpus is (re)built

    return [(f"topic:{key}", topics[key]) for key in sorted(topics) if topics[key].strip()]


def module_files(stdlib: Path) -> list[tuple[str, Path]]:
    """(dotted module name, path) of the library's .py files, sorted by name."""
    out = []
    for folder, dirs, names in os.walk(stdlib):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]  # prune: the test suite alone is ~1,000 files
        for fname in names:
            if fname.endswith(".py"):
                rel = Path(folder, fname).relative_to(stdlib)
                out.append((".".join(rel.with_suffix("").parts).removesuffix(".__init__"), stdlib / rel))
    return sorted(out)


def module_text(module: str, path: Path) -> str:
    """The module's docstrings, each under its qualified name, blank-line separated; "" if none."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old modules
            tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError):
        return ""  # a file for another Python version: skip it
    parts = [f"{name}\n{doc}" for name, doc in _docstrings(tree, module)]
    return "\n\n".join(parts) + "\n" if parts else ""


def _docstrings(node: ast.AST, name: str) -> Iterator[tuple[str, str]]:
    """Docstrings of node, then of the classes and functions defined in its body, depth first."""
    doc = ast.get_docstring(node, clean=True)  # type: ignore[arg-type]
    if doc:
        yield name, doc
    for child in getattr(node, "body", []):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _docstrings(child, f"{name}.{child.name}")


def _cache_key(stdlib: Path, files: list[tuple[str, Path]]) -> str:
    h = hashlib.sha256(f"{EXTRACTOR_VERSION}\0{sys.version}\0{stdlib}".encode())
    for module, path in files:
        st = path.stat()
        h.update(f"{module}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:16]
