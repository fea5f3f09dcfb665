"""WikiText-103 and WikiText-2, raw variants (Merity et al. 2016), one article per document.

Layout of the raw files: one paragraph per line; an article opens with a top-level heading line
` = Title = `, sections with ` = = Section = = `; blank lines are ` ` (a space). Articles are
split at the top-level headings; lines before the first heading join the first article, so the
documents concatenated give back the file exactly (and the word and byte counts match it).

Where the text comes from, in order: `source_dir` holding the official raw files
(wiki.{train,valid,test}.raw) or the Hub's parquet files ({train,validation,test}-*.parquet);
otherwise Hugging Face `datasets` (online). The Hub's rows are the file's lines with blank
lines as "", which we turn back into " \n".
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import AnyStr

from llmlab.data.corpus import WIKITEXT, Source, check_split, hash_files
from llmlab.errors import DataError

HUB_REPO = "Salesforce/wikitext"
HUB_CONFIGS = {name: f"{name}-raw-v1" for name in WIKITEXT}  # wikitext-103-raw-v1, wikitext-2-raw-v1
RAW_FILES = {"train": "wiki.train.raw", "val": "wiki.valid.raw", "test": "wiki.test.raw"}
HUB_SPLITS = {"train": "train", "val": "validation", "test": "test"}
READER_VERSION = "wikitext/1"  # bump when the article splitting changes (it changes the tokens)


# A title line preceded by its line end: a literal prefix, so the regex engine skips ahead at
# memchr-like speed (~10x faster than testing each line in Python). Bytes or text alike.
_TITLE = {
    str: re.compile(r"\n = (?!=)[^\n]* = \r?(?=\n|\Z)"),
    bytes: re.compile(rb"\n = (?!=)[^\n]* = \r?(?=\n|\Z)"),
}
_NEWLINE = {str: "\n", bytes: b"\n"}
BLOCK_SIZE = 1 << 24  # read 16 MB at a time


def is_title(line: str) -> bool:
    """` = Title = ` (one '=' each side), not a section heading ` = = Section = = `."""
    return _TITLE[str].match("\n" + line) is not None


def title_starts(text: AnyStr) -> list[int]:
    """Offsets of the title lines in text (which starts at a line start)."""
    kind = type(text)
    return [m.start() for m in _TITLE[kind].finditer(_NEWLINE[kind] + text)]  # the prefix shifts by one


def split_articles(blocks: Iterable[AnyStr]) -> Iterator[AnyStr]:
    """Cut text (str or UTF-8 bytes) into articles at the top-level headings; blocks hold whole lines."""
    article: list[AnyStr] = []
    seen_title = False
    for text in blocks:
        join, start = text[:0].join, 0
        for pos in title_starts(text):
            if seen_title:  # the first title does not cut: the lines before it join its article
                article.append(text[start:pos])
                yield join(article)
                article, start = [], pos
            seen_title = True
        article.append(text[start:])
    if any(article):
        yield join(article)


def read_blocks(path: Path, block_size: int = BLOCK_SIZE) -> Iterator[bytes]:
    """The file's bytes in blocks of whole lines."""
    with open(path, "rb") as f:
        tail = b""
        while block := f.read(block_size):
            data = tail + block
            cut = data.rfind(b"\n") + 1
            if cut:
                yield data[:cut]
            tail = data[cut:]
        if tail:
            yield tail


def rows_to_blocks(rows: Iterable[str], batch: int = 4096) -> Iterator[str]:
    """Hub/parquet rows -> blocks of raw file lines: a blank line is stored as "" there, " \n" in the file."""
    lines: list[str] = []
    for row in rows:
        lines.append(row if row else " \n")
        if len(lines) == batch:
            yield "".join(lines)
            lines = []
    if lines:
        yield "".join(lines)


class WikiTextFiles(Source):
    """The official raw files, e.g. wikitext-103-raw/wiki.{train,valid,test}.raw."""

    def __init__(self, name: str, folder: Path) -> None:
        self.name = name
        self.files = {split: folder / fname for split, fname in RAW_FILES.items()}

    def documents(self, split: str) -> Iterator[str]:
        for article in self.raw_documents(split):
            try:
                yield article.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{self.files[split]}: not UTF-8 text ({e.reason} in an article)") from None

    def raw_documents(self, split: str) -> Iterator[bytes]:
        # Bytes: prepare's worker processes decode them, in parallel, instead of the parent.
        check_split(split)
        return split_articles(read_blocks(self.files[split]))

    def digest(self) -> str:
        paths = list(self.files.values())
        return hash_files(paths, paths[0].parent, READER_VERSION)

    def size_hint(self) -> int:
        return sum(p.stat().st_size for p in self.files.values())


class WikiTextParquet(Source):
    """The Hub's parquet files: {train,validation,test}-NNNNN-of-NNNNN.parquet (needs pyarrow)."""

    def __init__(self, name: str, files: dict[str, list[Path]]) -> None:
        self.name = name
        self.files = files

    def documents(self, split: str) -> Iterator[str]:
        check_split(split)
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(
                "reading WikiText parquet files needs pyarrow: pip install pyarrow (or use the raw files)"
            ) from None
        # one row stream over all shards: an article may continue in the next shard
        tables = (pq.read_table(path, columns=["text"]) for path in self.files[split])
        rows = (row for table in tables for row in table.column("text").to_pylist())
        yield from split_articles(rows_to_blocks(rows))

    def digest(self) -> str:
        paths = [p for split in HUB_SPLITS for p in self.files[split]]
        return hash_files(paths, paths[0].parent, READER_VERSION + "/parquet")

    def size_hint(self) -> int:
        # parquet is compressed ~2x; the hint only picks the number of workers
        return 2 * sum(p.stat().st_size for paths in self.files.values() for p in paths)


class WikiTextHub(Source):
    """Downloaded (and cached) by Hugging Face `datasets`."""

    def __init__(self, name: str, dataset_dict: object) -> None:
        self.name = name
        self._ds = dataset_dict

    def documents(self, split: str) -> Iterator[str]:
        check_split(split)
        batches = self._ds[HUB_SPLITS[split]].iter(batch_size=4096)  # type: ignore[index]
        yield from split_articles(rows_to_blocks(row for batch in batches for row in batch["text"]))

    def digest(self) -> str:
        parts = [READER_VERSION, HUB_CONFIGS[self.name]]
        parts += [self._ds[s]._fingerprint for s in HUB_SPLITS.values()]  # type: ignore[index]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def open_wikitext(name: str, source_dir: str | None) -> Source:
    """A local copy when source_dir is given, else the Hub."""
    if source_dir:
        return _find_local(name, Path(source_dir))
    return _open_hub(name)


def _find_local(name: str, root: Path) -> Source:
    """Look in root/<config>/ (e.g. wikitext-103-raw-v1, wikitext-103-raw), then root itself."""
    if not root.is_dir():
        raise DataError(f"--source-dir {root} is not a folder")
    for folder in (root / HUB_CONFIGS[name], root / f"{name}-raw", root):
        if all((folder / f).is_file() for f in RAW_FILES.values()):
            return WikiTextFiles(name, folder)
        parquet = {split: sorted(folder.glob(f"{hub}-*.parquet")) for split, hub in HUB_SPLITS.items()}
        if all(parquet.values()):
            return WikiTextParquet(name, parquet)
    word_level = " (found wiki.*.tokens: that is the word-level variant with <unk>; llmlab reads the raw one)"
    raise DataError(
        f"no {name} raw files ({', '.join(RAW_FILES.values())}) or parquet files"
        f" ({', '.join(f'{s}-*.parquet' for s in HUB_SPLITS.values())}) in {root} or {root / HUB_CONFIGS[name]}"
        + (word_level if any(root.glob("wiki.*.tokens")) else "")
    )


def _open_hub(name: str) -> Source:
    offline = (
        f"offline options: --source-dir DIR with the raw files ({', '.join(RAW_FILES.values())}) or the"
        f" parquet files of {HUB_REPO}/{HUB_CONFIGS[name]}, or --dataset pydocs (embedded)"
    )
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"downloading {name} needs Hugging Face datasets (pip install 'llmlab[wikitext]'); {offline}"
        ) from None
    try:
        ds = datasets.load_dataset(HUB_REPO, HUB_CONFIGS[name])
    except Exception as e:  # ConnectionError, hub errors, offline mode: all mean "not reachable"
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise DataError(f"cannot reach {name} on the Hugging Face Hub ({reason}); {offline}") from None
    return WikiTextHub(name, ds)
