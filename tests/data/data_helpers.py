"""Shared helpers of the data tests (a plain module: conftest.py holds only fixtures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmlab.data.meta import FORMAT, META_FILE
from llmlab.data.tokenfile import write_tokens
from llmlab.files import write_json

SHARED_WIKITEXT = Path("/work/shared/data/wikitext")


def wikitext_article(title: str, sections: dict[str, list[str]]) -> str:
    """One article in the official raw layout: heading, blank lines ' ', paragraphs, sections."""
    lines = [f" = {title} = \n", " \n"]
    for name, paragraphs in sections.items():
        if name:
            lines += [f" = = {name} = = \n", " \n"]
        for p in paragraphs:
            lines += [f" {p} \n", " \n"]
    lines.append(" \n")
    return "".join(lines)


def write_wikitext(folder: Path, articles: dict[str, list[str]]) -> Path:
    """wiki.{train,valid,test}.raw in `folder`; each file starts with the blank line the real ones have."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {"train": "wiki.train.raw", "val": "wiki.valid.raw", "test": "wiki.test.raw"}
    for split, texts in articles.items():
        (folder / names[split]).write_text(" \n" + "".join(texts), encoding="utf-8")
    return folder


def small_wikitext(folder: Path) -> Path:
    """Three splits: 3 train articles, 1 validation, 2 test, with sections and @-@ tokens."""
    a = wikitext_article("Alpha", {"": ["Alpha is the first letter ."], "History": ["It came from aleph @-@ ox ."]})
    b = wikitext_article("Beta", {"": ["Beta follows alpha , in 1 @,@ 000 words ."]})
    c = wikitext_article("Gamma ray", {"": ["Gamma rays are énergétiques — 光 ."], "Uses": ["Medicine ."]})
    d = wikitext_article("Delta", {"": ["A river delta ."]})
    e = wikitext_article("Epsilon", {"": ["Small ."]})
    f = wikitext_article("Zeta = function", {"": ["Riemann ."], "Zeros": ["Many ."]})
    return write_wikitext(folder, {"train": [a, b, c], "val": [d], "test": [e, f]})


def make_token_dir(folder: Path, splits: dict[str, np.ndarray], vocab_size: int, name: str = "synthetic") -> Path:
    """A prepared-looking folder from given id arrays (documents/words/bytes left at zero)."""
    folder.mkdir(parents=True, exist_ok=True)
    info = {}
    for split, ids in splits.items():
        sha = write_tokens(folder / f"{split}.bin", ids, vocab_size)
        info[split] = {"file": f"{split}.bin", "tokens": int(len(ids)), "documents": 0, "words": 0,
                       "lines": 0, "bytes": 0, "sha256": sha}
    meta = {"format": FORMAT, "dataset": name, "source_digest": "-", "dtype": "-", "fingerprint": "-",
            "tokenizer": {"name": name, "hash": "-", "vocab_size": vocab_size, "eot_id": vocab_size - 1},
            "splits": info}
    write_json(folder / META_FILE, meta, sort_keys=True)
    return folder


def counting_dir(folder: Path, n_train: int, vocab_size: int = 65_535, n_eval: int = 1000) -> Path:
    """Token id = position (mod vocab), so a window is identified by its first id."""
    return make_token_dir(
        folder,
        {"train": np.arange(n_train) % vocab_size, "val": np.arange(n_eval) % vocab_size,
         "test": np.arange(n_eval) % vocab_size},
        vocab_size,
    )
