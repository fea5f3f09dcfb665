"""Where llmlab keeps downloads and derived files shared by all runs (tokenizer ranks, the pydocs
corpus). A module of its own so that data modules need not import each other to find it."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """llmlab's cache: $LLMLAB_CACHE, else ~/.cache/llmlab."""
    return Path(os.environ.get("LLMLAB_CACHE") or Path.home() / ".cache" / "llmlab")
