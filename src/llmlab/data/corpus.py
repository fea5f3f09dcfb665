"""A corpus as documents per split: the `Source` interface, the split rules, and the simplest source,
a folder of .txt files. The named corpora subclass `Source` in their own modules (wikitext.py,
pydocs.py); `llmlab.data.sources.get_source` picks among them.

A source yields each split's documents in a fixed order and has a `digest` of its content, which
enters the fingerprint of prepared data (same digest + same tokenizer = same token files).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

from llmlab.errors import DataError

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
WIKITEXT = ("wikitext-103", "wikitext-2")
"""The WikiText corpora (Merity et al. 2016), whose word count is the literature's perplexity unit."""
NAMED_DATASETS = (*WIKITEXT, "pydocs")


class Source(ABC):
    name: str
    """A short label: wikitext-103, pydocs, or a folder's name."""

    @abstractmethod
    def documents(self, split: str) -> Iterator[str]:
        """The split's documents, in a fixed order."""

    def raw_documents(self, split: str) -> Iterator[str | bytes]:
        """What `prepare` tokenizes: the documents, possibly as UTF-8 bytes, which its worker
        processes then decode in parallel rather than the parent process. Default: documents()."""
        return self.documents(split)

    @abstractmethod
    def digest(self) -> str:
        """A hash of the content (and of the reader's version): changes when a document could."""

    def size_hint(self) -> int | None:
        """Approximate bytes of text over all splits, when cheap to know (picks the worker count)."""
        return None


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")


def split_of(doc_id: str, val_percent: int = 5, test_percent: int = 5) -> str:
    """A document's split by a stable hash of its id: ~90/5/5, independent of order and machine,
    and a document keeps its split when others are added or removed."""
    bucket = int.from_bytes(hashlib.sha256(doc_id.encode("utf-8")).digest()[:8], "big") % 100
    if bucket < val_percent:
        return "val"
    if bucket < val_percent + test_percent:
        return "test"
    return "train"


def hash_files(paths: list[Path], root: Path, version: str) -> str:
    """sha256 over (relative name, content) of each file, streamed in 1 MiB blocks."""
    h = hashlib.sha256(version.encode())
    for path in paths:
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()[:16]


def dataset_label(dataset: str) -> str:
    """wikitext-103 | wikitext-2 | pydocs | a folder's name (for directory names and meta.json)."""
    return dataset if dataset in NAMED_DATASETS else Path(dataset).resolve().name


class TextFolder(Source):
    """Every .txt file under a folder (recursively) is one document.

    Splits: subfolders train/, val/ (or valid/, validation/) and test/ when present; otherwise
    ~90/5/5 by a stable hash of each file's relative path.
    """

    VERSION = "textfolder/1"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.name = dataset_label(str(root))
        self.files = sorted(p for p in self.root.rglob("*.txt") if p.is_file())
        if not self.files:
            raise DataError(f"{self.root}: no .txt files found")
        self._split = {p: self._split_of(p) for p in self.files}

    def _split_of(self, path: Path) -> str:
        top = path.relative_to(self.root).parts[0]
        for split, aliases in SPLIT_ALIASES.items():
            if top in aliases and len(path.relative_to(self.root).parts) > 1:
                return split
        return split_of(path.relative_to(self.root).as_posix())

    def documents(self, split: str) -> Iterator[str]:
        check_split(split)
        for path in self.files:
            if self._split[path] == split:
                yield read_text(path)

    def digest(self) -> str:
        return hash_files(self.files, self.root, self.VERSION)

    def size_hint(self) -> int:
        return sum(p.stat().st_size for p in self.files)


def read_text(path: Path) -> str:
    """UTF-8 text, line ends kept exactly as in the file (byte counts then match the file)."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
