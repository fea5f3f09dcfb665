"""Tokenize a corpus once into token files + meta.json (DESIGN §4).

Guarantees: the same source and tokenizer give byte-identical files (whatever the number of
workers); a second prepare with the same fingerprint does nothing; a different fingerprint
refuses to overwrite unless forced; files are written in a temporary folder and renamed into
place, meta.json last, so a folder with a meta.json is always complete; one prepare at a time
per folder (a file lock; the second one waits).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llmlab.config import DataConfig
from llmlab.data.corpus import SPLITS, Source, dataset_label
from llmlab.data.encode import ParallelEncoder, chunk_documents, default_workers
from llmlab.data.meta import FORMAT, META_FILE, read_meta
from llmlab.data.sources import get_source
from llmlab.data.tokenfile import TokenFileWriter, token_dtype
from llmlab.data.tokenizers import Tokenizer, describe, get_tokenizer, short_hash, tokenizer_label
from llmlab.errors import DataError
from llmlab.files import fsync_dir, sha256_file, write_json

LOCK_FILE = ".prepare.lock"


def split_file(split: str) -> str:
    return f"{split}.bin"


def prepare(
    dataset: str,
    tokenizer: str,
    out_dir: str | Path,
    *,
    source_dir: str | None = None,
    tokenizer_file: str | None = None,
    force: bool = False,
    workers: int | None = None,
    progress: bool = True,
    lock_timeout: float | None = None,
) -> dict[str, Any]:
    """Prepare `dataset` with `tokenizer` into out_dir; returns the meta.json content.

    workers: tokenizer processes (default: all CPUs for corpora over 32 MB, else in-process).
    lock_timeout: seconds to wait for another prepare of the same folder (None = as long as it takes).
    """
    if workers is not None and workers < 1:
        raise DataError(f"--workers must be at least 1, got {workers}")
    tok = get_tokenizer(tokenizer, tokenizer_file)
    source = get_source(dataset, source_dir)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    with prepare_lock(out, lock_timeout, progress):
        digest = source.digest()
        fingerprint = short_hash(FORMAT, source.name, digest, tok.hash)
        current = None if force else _up_to_date(out, fingerprint, f"{source.name} / {tok.name}", progress)
        if current is not None:
            return current
        n_workers = workers or default_workers(source.size_hint())
        return _build(out, source, tok, digest, fingerprint, n_workers, progress)


def _up_to_date(out: Path, fingerprint: str, what: str, progress: bool) -> dict[str, Any] | None:
    """The folder's meta when it already holds this fingerprint, intact; None when there is
    nothing (or something damaged) to keep; DataError when it holds other data."""
    if not (out / META_FILE).is_file():
        return None
    old = read_meta(out)
    if old.get("fingerprint") != fingerprint:
        raise DataError(
            f"{out} holds {old.get('dataset')} / {old.get('tokenizer', {}).get('name')} data (fingerprint"
            f" {old.get('fingerprint')}), not {what} ({fingerprint}): pass --force to overwrite it,"
            " or choose another --out"
        )
    if not files_intact(out, old):
        _say(progress, f"{out}: token files do not match {META_FILE}; preparing again")
        return None
    _say(progress, f"{out} is up to date (fingerprint {fingerprint})")
    return old


def ensure_prepared(data_cfg: DataConfig, progress: bool = True) -> Path:
    """data_cfg.resolved_dir, prepared first when it holds no meta.json.

    An existing folder is not re-fingerprinted (that would read the whole source, and a training
    node may have the token files but not the source); its dataset and tokenizer names must
    match the config.
    """
    out = data_cfg.resolved_dir
    if not (out / META_FILE).is_file():
        prepare(
            data_cfg.dataset, data_cfg.tokenizer, out, source_dir=data_cfg.source_dir or None,
            tokenizer_file=data_cfg.tokenizer_file or None, progress=progress,
        )
    meta = read_meta(out)
    want = (dataset_label(data_cfg.dataset), tokenizer_label(data_cfg.tokenizer))
    have = (meta.get("dataset"), meta.get("tokenizer", {}).get("name"))
    if have != want:
        raise DataError(
            f"{out} holds {have[0]} / {have[1]} data but the config asks for {want[0]} / {want[1]}:"
            f" set data.dir to another folder, or run llmlab prepare --dataset {data_cfg.dataset}"
            f" --tokenizer {data_cfg.tokenizer} --out {out} --force"
        )
    return out


def summary(meta: dict[str, Any], out: str | Path) -> str:
    """A small table of meta.json for the terminal."""
    tok = meta["tokenizer"]
    lines = [
        f"{out}: {meta['dataset']} / {tok['name']} (vocab {tok['vocab_size']:,}, {meta['dtype']}),"
        f" fingerprint {meta['fingerprint']}",
        f"{'split':<6}{'documents':>11}{'tokens':>14}{'words':>13}{'MB':>9}{'bytes/token':>13}",
    ]
    for split, s in meta["splits"].items():
        lines.append(
            f"{split:<6}{s['documents']:>11,}{s['tokens']:>14,}{s['words']:>13,}{s['bytes'] / 1e6:>9.2f}"
            f"{s['bytes'] / max(1, s['tokens']):>13.2f}"
        )
    return "\n".join(lines)


def files_intact(out: Path, meta: dict[str, Any]) -> bool:
    """Every split file present with the sha256 recorded in meta.json."""
    for info in meta.get("splits", {}).values():
        path = out / info["file"]
        if not path.is_file() or sha256_file(path) != info["sha256"]:
            return False
    return True


def _build(
    out: Path, source: Source, tok: Tokenizer, digest: str, fingerprint: str, workers: int, progress: bool
) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-prepare-", dir=out))
    started = time.perf_counter()
    try:
        with ParallelEncoder(tok, workers) as encoder, _progress_bar(progress, source.size_hint()) as bar:
            splits = _write_splits(tmp, source, tok, encoder, bar)
        meta = {
            "format": FORMAT,
            "dataset": source.name,
            "source_digest": digest,
            "tokenizer": describe(tok),
            "dtype": token_dtype(tok.vocab_size).name,
            "splits": splits,
            "fingerprint": fingerprint,
        }
        write_json(tmp / META_FILE, meta, sort_keys=True)  # equal content, identical bytes
        _install(tmp, out, [split_file(s) for s in SPLITS])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = sum(s["tokens"] for s in splits.values())
    seconds = time.perf_counter() - started
    _say(progress, f"prepared {out}: {total:,} tokens in {seconds:.1f} s (worker processes: {workers})")
    return meta


def _tagged_chunks(source: Source) -> Iterator[tuple[str, list[str | bytes]]]:
    """All splits' chunks in one stream, each tagged with its split: the workers then never
    sit idle while one split drains and the next one starts."""
    for split in SPLITS:
        for chunk in chunk_documents(source.raw_documents(split)):
            yield split, chunk


def _write_splits(tmp: Path, source: Source, tok: Tokenizer, encoder: ParallelEncoder, bar: Any) -> dict[str, Any]:
    """One token file per split in tmp; returns each split's meta entry."""
    counts = {split: {"documents": 0, "words": 0, "lines": 0, "bytes": 0} for split in SPLITS}
    with contextlib.ExitStack() as files:
        writers: dict[str, TokenFileWriter] = {}
        for split, chunk in encoder.map(_tagged_chunks(source)):
            if split not in writers:
                bar.set_description(f"tokenizing {source.name} {split}")
                writers[split] = files.enter_context(TokenFileWriter(tmp / split_file(split), tok.vocab_size))
            writers[split].write(chunk.tokens)
            for key, value in counts[split].items():
                counts[split][key] = value + getattr(chunk, key)
            bar.update(chunk.bytes)
        splits = {}
        for split in SPLITS:
            if counts[split]["documents"] == 0:
                raise DataError(f"the {split} split of {source.name} has no documents")
            sha = writers[split].close()
            splits[split] = {"file": split_file(split), "tokens": writers[split].count, **counts[split], "sha256": sha}
    return splits


def _install(tmp: Path, out: Path, names: list[str]) -> None:
    """Move the new files into place. meta.json goes first out and last in: in between, the
    folder reads as "not prepared" rather than as old meta over new files."""
    (out / META_FILE).unlink(missing_ok=True)
    for name in names:
        os.replace(tmp / name, out / name)
    os.replace(tmp / META_FILE, out / META_FILE)
    with contextlib.suppress(OSError):  # persist the renames (not possible on every platform)
        fsync_dir(out)


@contextlib.contextmanager
def prepare_lock(out: Path, timeout: float | None = None, progress: bool = True) -> Iterator[None]:
    """An exclusive lock on out/.prepare.lock; waits for a concurrent prepare (released by the
    OS if that process dies). timeout: seconds, then DataError; None waits indefinitely."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here; concurrent prepares are the user's care
        yield
        return
    with open(out / LOCK_FILE, "a+") as f:
        start, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "?"
                if timeout is not None and time.monotonic() - start >= timeout:
                    raise DataError(
                        f"another llmlab prepare (pid {holder}) is writing {out}; try again when it ends"
                    ) from None
                if not told:
                    _say(progress, f"waiting for another llmlab prepare (pid {holder}) writing {out} …")
                    told = True
                time.sleep(0.2)
        try:
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _progress_bar(progress: bool, total: int | None) -> Any:
    return tqdm(total=total, unit="B", unit_scale=True, disable=not (progress and sys.stderr.isatty()), leave=False)


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr)


__all__ = ["prepare", "ensure_prepared", "read_meta", "split_file", "files_intact", "prepare_lock", "summary"]
