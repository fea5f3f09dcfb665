"""Tokenizers behind one interface: GPT-2 BPE (tiktoken), bytes, and a trained byte-level BPE.

Every tokenizer has a `hash` that changes whenever its output could change (ranks, split regex,
special tokens, vocabulary), so prepared data and checkpoints can refuse a different tokenizer.

GPT-2 on an offline machine: the ranks file `gpt2.tiktoken` (50,256 ranks; `<|endoftext|>` = 50256
is added as a special token) ships inside the source archive of `openai-whisper` on PyPI;
`llmlab tokenizer fetch gpt2` (`fetch_gpt2`) gets it with pip, checks its sha256 and caches it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmlab.errors import DataError
from llmlab.paths import cache_dir

EOT_TEXT = "<|endoftext|>"

# The GPT-2 split regex (Radford et al. 2019, encoder.py) as tiktoken writes it, with possessive
# quantifiers: the same splits as the original, ~25 % faster. Kept here, not read from tiktoken,
# so the tokenizer hash does not move with the installed tiktoken version.
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_EOT_ID = 50256
GPT2_RANKS_FILE = "gpt2.tiktoken"
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
WHISPER_SDIST = "openai-whisper==20250625"  # its sdist carries whisper/assets/gpt2.tiktoken
WHISPER_MEMBER = "whisper/assets/gpt2.tiktoken"
NETWORK_TIMEOUT_S = 10.0

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
        import tiktoken

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
        from tokenizers import Tokenizer as HFTokenizer

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
        return _load_gpt2(tokenizer_file or None)
    if name == "byte":
        return ByteTokenizer()
    if name.endswith(".json"):
        return BPETokenizer(name)
    raise DataError(f"unknown tokenizer {name!r}: use gpt2, byte, or a path to a trained tokenizer.json")


# ---------------------------------------------------------------------------------------------
# GPT-2 ranks: where they come from


def _ranks_sha256(ranks: dict[bytes, int]) -> str:
    """sha256 of the ranks in .tiktoken form (base64 token, space, rank, newline; by rank).

    This is byte-for-byte the published gpt2.tiktoken file, so ranks read from tiktoken's own
    cache and ranks read from that file check against the same constant.
    """
    lines = (base64.b64encode(tok) + b" %d\n" % rank for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]))
    return hashlib.sha256(b"".join(lines)).hexdigest()


def _load_gpt2(tokenizer_file: str | None) -> GPT2Tokenizer:
    """Resolution order: an explicit ranks file; tiktoken's cache; llmlab's cache; tiktoken online.

    Local copies come before the network so that a machine with a cached file never waits on a
    download; the network attempt has a short timeout so an offline machine fails fast.
    """
    if tokenizer_file:
        return _from_ranks_file(Path(tokenizer_file))
    ranks = _ranks_from_tiktoken(allow_network=False)
    if ranks is not None:
        return GPT2Tokenizer(lambda: ranks)
    cached = cache_dir() / GPT2_RANKS_FILE
    if cached.is_file():
        return _from_ranks_file(cached)
    ranks = _ranks_from_tiktoken(allow_network=not os.environ.get("LLMLAB_OFFLINE"))
    if ranks is not None:
        return GPT2Tokenizer(lambda: ranks)
    raise DataError(
        "GPT-2 BPE ranks not found (tiktoken could not download them): run `llmlab tokenizer fetch gpt2`"
        " (needs PyPI), or pass --tokenizer-file PATH to a gpt2.tiktoken file"
    )


def _from_ranks_file(path: Path) -> GPT2Tokenizer:
    """GPT-2 from a gpt2.tiktoken file, after checking its sha256 (any other file is refused)."""
    from tiktoken.load import load_tiktoken_bpe

    if not path.is_file():
        raise DataError(f"GPT-2 ranks file not found: {path}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != GPT2_RANKS_SHA256:
        raise DataError(
            f"{path} is not the GPT-2 ranks file (sha256 {digest[:16]}…, expected {GPT2_RANKS_SHA256[:16]}…)"
        )
    return GPT2Tokenizer(lambda: load_tiktoken_bpe(str(path)), str(path))


def _tiktoken_cache_has_gpt2() -> bool:
    """True when tiktoken's cache already holds GPT-2's two files (mirrors tiktoken.load's lookup:
    $TIKTOKEN_CACHE_DIR, else $DATA_GYM_CACHE_DIR, else <tmp>/data-gym-cache; key = sha1(url))."""
    cache = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR"))
    if cache == "":
        return False
    cache = cache or os.path.join(tempfile.gettempdir(), "data-gym-cache")
    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    urls = (base + "vocab.bpe", base + "encoder.json")
    return all(os.path.exists(os.path.join(cache, hashlib.sha1(u.encode()).hexdigest())) for u in urls)


def _ranks_from_tiktoken(allow_network: bool) -> dict[bytes, int] | None:
    """GPT-2 ranks through tiktoken's own loader (checked against GPT-2's sha256), or None."""
    if not allow_network and not _tiktoken_cache_has_gpt2():
        return None
    import tiktoken_ext.openai_public as public

    # tiktoken's download (requests) has no timeout of its own; the socket default bounds it.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(NETWORK_TIMEOUT_S)
    try:
        ranks = public.gpt2()["mergeable_ranks"]
    except Exception:  # offline, blocked, a proxy error page, a changed tiktoken: use a local file
        return None
    finally:
        socket.setdefaulttimeout(previous)
    return ranks if _ranks_sha256(ranks) == GPT2_RANKS_SHA256 else None


def fetch_gpt2(progress: bool = True) -> dict[str, str]:
    """Make the GPT-2 ranks available offline in llmlab's cache; returns {"path", "sha256", "source"}.

    Tries tiktoken's download first, then `pip download openai-whisper` from the package index.
    """
    target = cache_dir() / GPT2_RANKS_FILE
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == GPT2_RANKS_SHA256:
        return {"path": str(target), "sha256": GPT2_RANKS_SHA256, "source": "cache"}
    ranks = _ranks_from_tiktoken(allow_network=True)
    if ranks is not None:
        data = b"".join(base64.b64encode(t) + b" %d\n" % r for t, r in sorted(ranks.items(), key=lambda kv: kv[1]))
        source = "tiktoken"
    else:
        if progress:
            print(f"tiktoken could not download GPT-2; trying pip download {WHISPER_SDIST} …", file=sys.stderr)
        data = _ranks_from_whisper_sdist(_pip_download(WHISPER_SDIST))
        source = f"pypi:{WHISPER_SDIST}"
    digest = hashlib.sha256(data).hexdigest()
    if digest != GPT2_RANKS_SHA256:
        raise DataError(f"downloaded GPT-2 ranks have sha256 {digest}, expected {GPT2_RANKS_SHA256}: not cached")
    _atomic_write(target, data)
    return {"path": str(target), "sha256": digest, "source": source}


def _pip_download(requirement: str) -> bytes:
    """The source archive of `requirement`, fetched by pip from the configured package index."""
    with tempfile.TemporaryDirectory(prefix="llmlab-pip-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
               "--retries", "2", "--timeout", "20", "-d", tmp, requirement]  # bounded when offline
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archives = sorted(Path(tmp).glob("*.tar.gz"))
        if proc.returncode != 0 or not archives:
            last = (proc.stderr.strip().splitlines() or ["no archive"])[-1]
            raise DataError(
                f"pip download {requirement} failed ({last}); copy a gpt2.tiktoken file to"
                f" {cache_dir() / GPT2_RANKS_FILE} or pass --tokenizer-file PATH"
            )
        return archives[0].read_bytes()


def _ranks_from_whisper_sdist(archive: bytes) -> bytes:
    """Extract whisper/assets/gpt2.tiktoken (only that member) from the sdist bytes."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(WHISPER_MEMBER):
                extracted = tar.extractfile(member)
                if extracted is not None:
                    return extracted.read()
    raise DataError(f"{WHISPER_SDIST} archive has no {WHISPER_MEMBER}")


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Training a byte-level BPE on a corpus's train split


def train_bpe(
    dataset: str, vocab_size: int, out: str | Path, *, source_dir: str | None = None, progress: bool = True
) -> dict[str, Any]:
    """Train a GPT-2-style byte-level BPE (HF tokenizers) on the train split; save tokenizer.json.

    The 256 byte symbols are always in the alphabet, so any text round-trips; <|endoftext|> is
    the only special token. Returns {"path", "vocab_size", "hash", "eot_id"}.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from llmlab.data.sources import get_source

    min_vocab = 256 + 1
    if vocab_size < min_vocab:
        raise DataError(f"--vocab-size must be at least {min_vocab} (256 bytes + {EOT_TEXT}), got {vocab_size}")
    out = Path(out)
    if out.suffix != ".json":
        raise DataError(f"--out must be a .json path (a tokenizer.json), got {out}")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's split regex
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress and sys.stderr.isatty(),
    )
    tok.train_from_iterator(get_source(dataset, source_dir).documents("train"), trainer=trainer)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, tok.to_str(pretty=True).encode("utf-8"))
    trained = BPETokenizer(out)
    return {"path": str(out), "vocab_size": trained.vocab_size, "hash": trained.hash, "eot_id": trained.eot_id}


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


