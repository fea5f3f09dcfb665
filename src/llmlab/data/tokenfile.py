"""The token file format: a 32-byte self-describing header, then the token ids.

Header (little-endian, llm.c-style, STYLE.md item 9):

    offset  size  field
         0     8  magic b"LLMLABTK"
         8     4  format version (uint32, currently 1)
        12     4  bytes per token (uint32: 2 = uint16, 4 = uint32)
        16     8  token count (uint64)
        24     8  vocabulary size of the tokenizer that wrote it (uint64)

Every id is checked against the vocabulary before it is written, so an id never wraps around
silently, and again when the file is opened (a corrupt or foreign file fails before any batch).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from llmlab.errors import DataError
from llmlab.files import sha256_file

MAGIC = b"LLMLABTK"
VERSION = 1
HEADER = struct.Struct("<8sIIQQ")  # magic, version, itemsize, count, vocab_size
HEADER_SIZE = HEADER.size  # 32: keeps the token array aligned for memmap
UINT16_MAX_VOCAB = 65_535  # DESIGN §4: uint32 when the vocabulary exceeds 65,535


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32 (half the disk and page cache for GPT-2's 50,257)."""
    if vocab_size > 2**32:
        raise DataError(f"vocabulary of {vocab_size:,} ids does not fit in uint32 token files")
    return np.dtype(np.uint16 if vocab_size <= UINT16_MAX_VOCAB else np.uint32)


def check_ids(ids: np.ndarray, vocab_size: int, where: str) -> None:
    """Raise DataError when an id is outside [0, vocab_size) (the cast to the file dtype would wrap)."""
    if ids.size and int(ids.max()) >= vocab_size:
        raise DataError(f"{where}: token id {int(ids.max())} is outside the vocabulary of {vocab_size:,}")
    if ids.size and ids.dtype.kind == "i" and int(ids.min()) < 0:
        raise DataError(f"{where}: negative token id {int(ids.min())}")


class TokenFileWriter:
    """Appends token arrays to `path`, then writes the header with the final count on close.

    The caller writes into a temporary path and renames it into place when everything succeeded,
    so a reader never sees a half-written file.
    """

    def __init__(self, path: str | Path, vocab_size: int) -> None:
        self.path = Path(path)
        self.vocab_size = vocab_size
        self.dtype = token_dtype(vocab_size)
        self.count = 0
        self._file = open(self.path, "wb")
        self._file.write(b"\0" * HEADER_SIZE)  # placeholder until the count is known

    def write(self, ids: np.ndarray) -> None:
        check_ids(ids, self.vocab_size, str(self.path))
        self._file.write(np.ascontiguousarray(ids, dtype=self.dtype).data)
        self.count += int(ids.size)

    def close(self) -> str:
        """Finish the header, fsync, and return the sha256 of the whole file."""
        self._file.seek(0)
        self._file.write(HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, self.count, self.vocab_size))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return sha256_file(self.path)

    def __enter__(self) -> TokenFileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._file.closed:
            self._file.close()


def write_tokens(path: str | Path, ids: np.ndarray, vocab_size: int) -> str:
    """Write one array as a token file; returns its sha256."""
    with TokenFileWriter(path, vocab_size) as writer:
        writer.write(np.asarray(ids))
        return writer.close()


def read_header(path: str | Path) -> dict[str, int]:
    """Parse and check the header against the file size; raises DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"token file not found: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(HEADER_SIZE)
    if len(raw) < HEADER_SIZE:
        raise DataError(f"{path}: {size} bytes is too short for a token file header ({HEADER_SIZE} bytes)")
    magic, version, itemsize, count, vocab_size = HEADER.unpack(raw)
    if magic != MAGIC:
        raise DataError(f"{path}: not an llmlab token file (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise DataError(
            f"{path}: token file version {version}, this llmlab reads version {VERSION}; re-run llmlab prepare --force"
        )
    if not 0 < vocab_size <= 2**32 or token_dtype(vocab_size).itemsize != itemsize:
        raise DataError(
            f"{path}: header says {itemsize} bytes per token for a vocabulary of {vocab_size:,}: corrupt header"
        )
    expected = HEADER_SIZE + count * itemsize
    if size != expected:
        raise DataError(
            f"{path}: file is {size:,} bytes but its header promises {count:,} tokens ({expected:,} bytes):"
            " truncated or corrupt; re-run llmlab prepare --force"
        )
    return {"version": version, "itemsize": itemsize, "count": count, "vocab_size": vocab_size}


def open_tokens(path: str | Path, vocab_size: int | None = None, check_range: bool = True) -> np.memmap:
    """Memory-map a token file after checking its header, size, vocabulary and (optionally) id range.

    vocab_size: the model's vocabulary; must equal the one the file was written with.
    check_range: scan every id once (about 0.1 s per 100 M tokens) so that a corrupt id fails here,
    not as an index error deep inside an embedding on some later step.
    """
    header = read_header(path)
    if vocab_size is not None and vocab_size != header["vocab_size"]:
        raise DataError(
            f"{path}: tokens were written with a vocabulary of {header['vocab_size']:,} but the model has"
            f" vocab_size {vocab_size:,}: use the matching tokenizer or re-run llmlab prepare"
        )
    dtype = np.uint16 if header["itemsize"] == 2 else np.uint32
    if header["count"] == 0:
        return np.zeros(0, dtype=dtype)  # np.memmap refuses empty maps
    tokens = np.memmap(path, dtype=dtype, mode="r", offset=HEADER_SIZE, shape=(header["count"],))
    if check_range:
        check_ids(tokens, header["vocab_size"], str(path))
    return tokens
