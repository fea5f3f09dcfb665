"""GPT-2's BPE ranks on an offline machine: where they are found, and `llmlab tokenizer fetch gpt2`.

The ranks file `gpt2.tiktoken` (50,256 ranks; `<|endoftext|>` = 50256 is added as a special token
by the tokenizer) ships inside the source archive of `openai-whisper` on PyPI; `fetch_gpt2` gets
it with pip (or through tiktoken's own download), checks its sha256 and caches it. Every path
checks the ranks against GPT-2's sha256: nothing else is ever used as GPT-2.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from tiktoken.load import load_tiktoken_bpe

from llmlab.errors import DataError
from llmlab.files import write_bytes_atomic
from llmlab.paths import cache_dir

GPT2_RANKS_FILE = "gpt2.tiktoken"
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
WHISPER_SDIST = "openai-whisper==20250625"  # its sdist carries whisper/assets/gpt2.tiktoken
WHISPER_MEMBER = "whisper/assets/gpt2.tiktoken"
NETWORK_TIMEOUT_S = 10.0


def _ranks_sha256(ranks: dict[bytes, int]) -> str:
    """sha256 of the ranks in .tiktoken form (base64 token, space, rank, newline; by rank).

    This is byte-for-byte the published gpt2.tiktoken file, so ranks read from tiktoken's own
    cache and ranks read from that file check against the same constant.
    """
    lines = (base64.b64encode(tok) + b" %d\n" % rank for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]))
    return hashlib.sha256(b"".join(lines)).hexdigest()


def find_gpt2_ranks(tokenizer_file: str | None) -> tuple[Callable[[], dict[bytes, int]], str | None]:
    """(a loader of GPT-2's checked ranks, the ranks file it reads or None).

    Resolution order: an explicit ranks file; tiktoken's cache; llmlab's cache; tiktoken online.

    Local copies come before the network so that a machine with a cached file never waits on a
    download; the network attempt has a short timeout so an offline machine fails fast.
    """
    if tokenizer_file:
        return _from_ranks_file(Path(tokenizer_file))
    ranks = _ranks_from_tiktoken(allow_network=False)
    if ranks is not None:
        return (lambda: ranks), None
    cached = cache_dir() / GPT2_RANKS_FILE
    if cached.is_file():
        return _from_ranks_file(cached)
    ranks = _ranks_from_tiktoken(allow_network=not os.environ.get("LLMLAB_OFFLINE"))
    if ranks is not None:
        return (lambda: ranks), None
    raise DataError(
        "GPT-2 BPE ranks not found (tiktoken could not download them): run `llmlab tokenizer fetch gpt2`"
        " (needs PyPI), or pass --tokenizer-file PATH to a gpt2.tiktoken file"
    )


def _from_ranks_file(path: Path) -> tuple[Callable[[], dict[bytes, int]], str]:
    """A gpt2.tiktoken file's ranks, after checking its sha256 (any other file is refused)."""
    if not path.is_file():
        raise DataError(f"GPT-2 ranks file not found: {path}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != GPT2_RANKS_SHA256:
        raise DataError(
            f"{path} is not the GPT-2 ranks file (sha256 {digest[:16]}…, expected {GPT2_RANKS_SHA256[:16]}…)"
        )
    return (lambda: load_tiktoken_bpe(str(path))), str(path)


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
    import tiktoken_ext.openai_public as public  # tiktoken's registry of encodings: only on this path

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
    write_bytes_atomic(target, data)
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
