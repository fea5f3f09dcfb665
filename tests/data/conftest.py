"""Fixtures of the data tests; plain helpers live in data_helpers.py."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def gpt2():
    """The GPT-2 tokenizer; skipped (not failed) when its ranks were never fetched."""
    from llmlab.data.tokenizers import get_tokenizer
    from llmlab.errors import DataError

    try:
        return get_tokenizer("gpt2")
    except DataError as e:
        pytest.skip(f"GPT-2 ranks not available ({e}); run: llmlab tokenizer fetch gpt2")
