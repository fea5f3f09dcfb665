"""Tokenizers behind one interface: GPT-2 BPE (tiktoken), bytes, and a trained byte-level BPE.

Every tokenizer has a `hash` that changes whenever its output could change (ranks, split regex,
special tokens, vocabulary), so prepared data and checkpoints can refuse a different tokenizer.

Where GPT-2's ranks come from offline: llmlab.data.gpt2_ranks; training a BPE: llmlab.data.bpe.
"""

from __future__ import annotations

import functools
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmlab.data.gpt2_ranks import GPT2_RANKS_SHA256, find_gpt2_ranks
from llmlab.errors import DataError

EOT_TEXT = "<|endoftext|>"

# The GPT-2 split regex (Radford et al. 2019, encoder.py) as tiktoken writes it, with possessive
# quantifiers: the same splits as the original, ~25 % faster. Kept here, not read from tiktoken,
# so the tokenizer hash does not move with the installed tiktoken version.
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_EOT_ID = 50256

BUILTIN_TOKENIZERS = ("gpt2", "byte")


def short_hash(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def tokenizer_label(name: str) -> str:
    """A short name for directories and messages: gpt2, byte, or a tokenizer.json's stem."""
    return Path(name).stem if name.endswith(".json") else name


# ---------------------------------------------------------------------------------------------
# The interface


class Tokenizer(ABC):
    """encode / encode_batch / decode, plus vocab_size, eot_id, name and a stable hash.

    `encode` never turns text into the end-of-text id: "<|endoftext|>" inside a document is plain
    text, so a corpus cannot forge document boundaries. Documents are separated by `eot_id`.
    """

    name: str
    vocab_size: int
    eot_id: int
    hash: str
    spec: tuple[str, str | None]
    """(name, file) that `get_tokenizer` rebuilds this tokenizer from (in worker processes)."""

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_array(self, text: str) -> np.ndarray:
        """The ids as an unsigned numpy array (the fast path of `prepare`)."""
        return np.asarray(self.encode(text), dtype=np.uint32)

    def __reduce__(self) -> tuple[Any, tuple[str, str | None]]:
        # Pickle by recipe: worker processes rebuild the tokenizer instead of copying its tables.
        return (get_tokenizer, self.spec)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, hash={self.hash})"


class GPT2Tokenizer(Tokenizer):
    """GPT-2 BPE through tiktoken (Rust): 50,256 merges' ranks + <|endoftext|> = 50256.

    load_ranks returns ranks already checked against GPT-2's sha256, so the name, vocabulary and
    hash are known up front; tiktoken's tables are built on first use (~0.1 s), which a process
    that only needs the hash (`prepare`'s parent, whose workers do the encoding) never pays.
    """

    def __init__(self, load_ranks: Callable[[], dict[bytes, int]], source_file: str | None = None) -> None:
        self._load_ranks = load_ranks
        self.name = "gpt2"
        self.vocab_size = GPT2_EOT_ID + 1
        self.eot_id = GPT2_EOT_ID
        self.hash = short_hash("gpt2", GPT2_PAT_STR, GPT2_RANKS_SHA256, f"{EOT_TEXT}={GPT2_EOT_ID}")
        self.spec = ("gpt2", source_file)

    @functools.cached_property
    def _enc(self) -> Any:  # tiktoken.Encoding
        import tiktoken  # on first use, like the tables: a process that needs only the hash never loads it

        return tiktoken.Encoding(
            name="gpt2", pat_str=GPT2_PAT_STR, mergeable_ranks=self._load_ranks(),
            special_tokens={EOT_TEXT: GPT2_EOT_ID},
        )

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(list(texts))

    def encode_array(self, text: str) -> np.ndarray:
        # No copy into a Python list: ~2x faster than encode_ordinary for long documents.
        return self._enc.encode_to_numpy(text, disallowed_special=())

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode(list(ids))


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes: ids 0..255, end-of-text = 256. No dependency, no training."""

    def __init__(self) -> None:
        self.name = "byte"
        self.vocab_size = 257
        self.eot_id = 256
        self.hash = short_hash("byte", "utf-8", "eot=256")
        self.spec = ("byte", None)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def decode(self, ids: Sequence[int]) -> str:
        # Runs of bytes decode together (a character spans several ids); EOT reads as its text.
        out, run = [], bytearray()
        for i in ids:
            if i == self.eot_id:
                out.append(run.decode("utf-8", errors="replace") + EOT_TEXT)
                run = bytearray()
            else:
                run.append(i)
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)


class BPETokenizer(Tokenizer):
    """A byte-level BPE trained by `train_bpe` (Hugging Face `tokenizers`), read from tokenizer.json."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer as HFTokenizer  # only a trained-BPE run loads HF tokenizers

        path = Path(path)
        if not path.is_file():
            raise DataError(f"tokenizer file not found: {path} (train one with: llmlab tokenizer train)")
        raw = path.read_bytes()
        try:
            self._tok = HFTokenizer.from_str(raw.decode("utf-8"))
        except Exception as e:  # the Rust parser raises a bare Exception on malformed JSON
            raise DataError(f"{path}: not a tokenizers tokenizer.json ({e})") from None
        eot = self._tok.token_to_id(EOT_TEXT)
        if eot is None:
            raise DataError(f"{path}: has no {EOT_TEXT} token (needed to separate documents)")
        self._tok.encode_special_tokens = True  # "<|endoftext|>" in text stays text, as for gpt2
        self.name = tokenizer_label(str(path))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.eot_id = eot
        self.hash = short_hash("bpe", hashlib.sha256(raw).hexdigest())
        self.spec = (str(path), None)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)


def get_tokenizer(name: str, tokenizer_file: str | None = None) -> Tokenizer:
    """'gpt2' | 'byte' | a path to a tokenizer.json. tokenizer_file: a local gpt2.tiktoken."""
    if name == "gpt2":
        return GPT2Tokenizer(*find_gpt2_ranks(tokenizer_file or None))
    if name == "byte":
        return ByteTokenizer()
    if name.endswith(".json"):
        return BPETokenizer(name)
    raise DataError(f"unknown tokenizer {name!r}: use gpt2, byte, or a path to a trained tokenizer.json")


@functools.lru_cache(maxsize=4)
def cached_tokenizer(name: str, tokenizer_file: str | None, expected_hash: str) -> Tokenizer:
    """get_tokenizer, built once per process (worker processes encode many chunks with it)."""
    tok = get_tokenizer(name, tokenizer_file)
    if tok.hash != expected_hash:
        raise DataError(f"tokenizer {name!r} changed while preparing (hash {tok.hash}, expected {expected_hash})")
    return tok


def describe(tok: Tokenizer) -> dict[str, Any]:
    """The tokenizer block of meta.json."""
    return {"name": tok.name, "hash": tok.hash, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id}


