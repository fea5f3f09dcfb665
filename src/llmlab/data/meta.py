"""meta.json: what a prepared data folder holds (no torch import: the CLI and workers use it).

{
  "format": "llmlab-tokens/1",
  "dataset": "pydocs",
  "source_digest": "…",                       # hash of the source text (and reader version)
  "tokenizer": {"name", "hash", "vocab_size", "eot_id"},
  "dtype": "uint16",
  "splits": {"train": {"file", "tokens", "documents", "words", "lines", "bytes", "sha256"}, "val": …, "test": …},
  "fingerprint": "…"                          # hash of format + dataset + source_digest + tokenizer hash
}

Per split: `tokens` counts every id in the file, end-of-text ids included (one per document);
`words` = whitespace-separated words + line ends (WikiText's convention, the denominator of
word-level perplexity); `bytes` = UTF-8 bytes of the text (the denominator of bits per byte).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmlab.errors import DataError

META_FILE = "meta.json"
FORMAT = "llmlab-tokens/1"


def read_meta(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / META_FILE
    if not path.is_file():
        raise DataError(
            f"{data_dir} is not a prepared data folder (no {META_FILE}): run"
            f" llmlab prepare --dataset … --tokenizer … --out {data_dir}"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DataError(f"{path}: invalid JSON ({e}); re-run llmlab prepare --force") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise DataError(f"{path}: format {found!r}, this llmlab reads {FORMAT!r}; re-run llmlab prepare --force")
    return meta


def split_info(meta: dict[str, Any], split: str, data_dir: str | Path) -> dict[str, Any]:
    try:
        return meta["splits"][split]
    except KeyError:
        have = ", ".join(meta.get("splits", {})) or "none"
        raise DataError(f"{data_dir} has no split {split!r} (has: {have})") from None
