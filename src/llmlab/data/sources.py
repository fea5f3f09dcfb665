"""Which corpus a dataset name means: WikiText-103/-2, the embedded `pydocs`, or a folder of .txt
(the factory; the `Source` interface is llmlab.data.corpus)."""

from __future__ import annotations

from pathlib import Path

from llmlab.data.corpus import WIKITEXT, Source, TextFolder
from llmlab.data.pydocs import PyDocs
from llmlab.data.wikitext import open_wikitext
from llmlab.errors import DataError


def get_source(dataset: str, source_dir: str | None = None) -> Source:
    """wikitext-103 | wikitext-2 (local copy in source_dir, else the HF Hub) | pydocs | a folder."""
    if dataset in WIKITEXT:
        return open_wikitext(dataset, source_dir or None)
    if dataset == "pydocs":
        return PyDocs()
    path = Path(dataset)
    if path.is_dir():
        return TextFolder(path)
    if path.exists():
        raise DataError(f"dataset path {path} is not a folder (expected a folder of .txt files)")
    raise DataError(f"unknown dataset {dataset!r}: use wikitext-103, wikitext-2, pydocs, or a folder of .txt files")
