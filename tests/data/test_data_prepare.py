"""prepare: offline pydocs with GPT-2, byte-identical re-runs, counts that match the files, a
hand-computed token file, fingerprints, --force, atomicity, the lock, ensure_prepared."""

from __future__ import annotations

import hashlib
import json
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from llmlab import cli
from llmlab.config import DataConfig
from llmlab.data.corpus import SPLITS
from llmlab.data.meta import read_meta
from llmlab.data.prepare import ensure_prepared, prepare, prepare_lock
from llmlab.data.sources import get_source
from llmlab.data.tokenfile import open_tokens, read_header, write_tokens
from llmlab.data.tokenizers import get_tokenizer
from llmlab.errors import DataError


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def _text_folder(root: Path, splits: dict[str, list[str]]) -> Path:
    for split, texts in splits.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(texts):
            (root / split / f"{i:03d}.txt").write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def pydocs_gpt2(tmp_path_factory, gpt2) -> Path:
    """`llmlab prepare --dataset pydocs --tokenizer gpt2` through the CLI, offline."""
    out = tmp_path_factory.mktemp("prep") / "pydocs-gpt2"
    assert cli.main(["prepare", "--dataset", "pydocs", "--tokenizer", "gpt2", "--out", str(out), "--json"]) == 0
    return out


def test_prepare_twice_is_byte_identical_and_a_no_op(pydocs_gpt2, tmp_path, capsys):
    first = _files(pydocs_gpt2)
    assert set(first) == {"meta.json", "train.bin", "val.bin", "test.bin"}
    mtimes = {name: (pydocs_gpt2 / name).stat().st_mtime_ns for name in first}
    assert cli.main(["prepare", "--dataset", "pydocs", "--tokenizer", "gpt2", "--out", str(pydocs_gpt2)]) == 0
    assert "up to date" in capsys.readouterr().err
    assert {name: (pydocs_gpt2 / name).stat().st_mtime_ns for name in first} == mtimes  # nothing rewritten
    again = tmp_path / "again"
    prepare("pydocs", "gpt2", again, progress=False)
    assert _files(again) == first


def test_meta_counts_equal_the_files(pydocs_gpt2, gpt2):
    meta = read_meta(pydocs_gpt2)
    assert meta["tokenizer"] == {"name": "gpt2", "hash": gpt2.hash, "vocab_size": 50257, "eot_id": 50256}
    assert meta["dtype"] == "uint16"
    source = get_source("pydocs")
    for split in SPLITS:
        info = meta["splits"][split]
        path = pydocs_gpt2 / info["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == info["sha256"]
        assert read_header(path)["count"] == info["tokens"]
        ids = np.asarray(open_tokens(path, 50257))
        ends = np.flatnonzero(ids == gpt2.eot_id)
        assert len(ends) == info["documents"] and ends[-1] == len(ids) - 1
        docs = list(source.documents(split))
        decoded = [gpt2.decode(seg.tolist()) for seg in np.split(ids, ends + 1)[:-1]]
        assert [d[:-len("<|endoftext|>")] for d in decoded] == docs  # the file is the corpus, in order
        assert info["bytes"] == sum(len(d.encode("utf-8")) for d in docs)
        assert info["lines"] == sum(d.count("\n") for d in docs)
        assert info["words"] == sum(len(d.encode("utf-8").split()) for d in docs) + info["lines"]


def test_token_file_of_a_synthetic_corpus_is_the_hand_computed_bytes(tmp_path, gpt2):
    src = _text_folder(tmp_path / "corpus", {"train": ["Hello world", "Hello"], "val": ["é"], "test": ["a\nb"]})
    prepare(str(src), "gpt2", tmp_path / "gpt2", progress=False)
    ids = [15496, 995, 50256, 15496, 50256]  # "Hello world", EOT, "Hello", EOT
    header = b"LLMLABTK" + struct.pack("<IIQQ", 1, 2, len(ids), 50257)
    assert (tmp_path / "gpt2" / "train.bin").read_bytes() == header + struct.pack(f"<{len(ids)}H", *ids)

    prepare(str(src), "byte", tmp_path / "byte", progress=False)
    ids = [0xC3, 0xA9, 256]  # "é" in UTF-8, EOT
    header = b"LLMLABTK" + struct.pack("<IIQQ", 1, 2, len(ids), 257)
    assert (tmp_path / "byte" / "val.bin").read_bytes() == header + struct.pack("<3H", *ids)
    test = read_meta(tmp_path / "byte")["splits"]["test"]
    assert (test["tokens"], test["documents"], test["words"], test["lines"], test["bytes"]) == (4, 1, 3, 1, 3)


def test_worker_processes_write_the_same_bytes(tmp_path):
    one = prepare("pydocs", "byte", tmp_path / "one", workers=1, progress=False)
    two = prepare("pydocs", "byte", tmp_path / "two", workers=2, progress=False)
    assert one == two and _files(tmp_path / "one") == _files(tmp_path / "two")


def test_different_data_is_refused_unless_forced(tmp_path, capsys):
    src = _text_folder(tmp_path / "corpus", {"train": ["one two"], "val": ["three"], "test": ["four"]})
    out = tmp_path / "out"
    prepare(str(src), "byte", out, progress=False)
    (src / "train" / "000.txt").write_text("changed text", encoding="utf-8")
    rc = cli.main(["prepare", "--dataset", str(src), "--tokenizer", "byte", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--force" in err and err.startswith("llmlab: error:")
    meta = prepare(str(src), "byte", out, force=True, progress=False)
    assert meta["splits"]["train"]["bytes"] == len("changed text")


def test_damaged_files_with_the_same_fingerprint_are_rebuilt(tmp_path):
    src = _text_folder(tmp_path / "corpus", {"train": ["one two"], "val": ["three"], "test": ["four"]})
    out = tmp_path / "out"
    prepare(str(src), "byte", out, progress=False)
    good = _files(out)
    (out / "train.bin").write_bytes(b"garbage")
    prepare(str(src), "byte", out, progress=False)
    assert _files(out) == good


def test_a_failed_prepare_leaves_the_old_data_and_no_debris(tmp_path):
    src = _text_folder(tmp_path / "corpus", {"train": ["one two"], "val": ["three"], "test": ["four"]})
    out = tmp_path / "out"
    prepare(str(src), "byte", out, progress=False)
    good = _files(out)
    for path in (src / "test").iterdir():
        path.unlink()
    (src / "test" / "000.txt").write_bytes(b"\xff not utf-8")
    with pytest.raises(DataError, match="not UTF-8"):
        prepare(str(src), "byte", out, force=True, progress=False)
    assert _files(out) == good
    assert not list(out.glob(".tmp-*"))


def test_an_empty_split_is_an_error(tmp_path):
    src = _text_folder(tmp_path / "corpus", {"train": ["x"], "val": [], "test": ["y"]})
    with pytest.raises(DataError, match="val split of corpus has no documents"):
        prepare(str(src), "byte", tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "meta.json").exists()


def test_concurrent_prepare_waits_or_says_so(tmp_path):
    src = _text_folder(tmp_path / "corpus", {"train": ["a"], "val": ["b"], "test": ["c"]})
    out = tmp_path / "out"
    out.mkdir()
    with prepare_lock(out, progress=False):
        with pytest.raises(DataError, match="another llmlab prepare .* is writing"):
            prepare(str(src), "byte", out, lock_timeout=0.3, progress=False)

    def hold_briefly():
        with prepare_lock(out, progress=False):
            holding.set()
            time.sleep(0.5)

    holding = threading.Event()
    holder = threading.Thread(target=hold_briefly)
    holder.start()
    holding.wait()
    started = time.monotonic()
    prepare(str(src), "byte", out, progress=False)  # waits for the holder, then prepares
    assert time.monotonic() - started >= 0.3
    holder.join()
    assert (out / "meta.json").is_file()


def test_ensure_prepared(tmp_path):
    src = _text_folder(tmp_path / "corpus", {"train": ["a b"], "val": ["c"], "test": ["d"]})
    cfg = DataConfig(dataset=str(src), tokenizer="byte", dir=str(tmp_path / "data"))
    assert ensure_prepared(cfg, progress=False) == tmp_path / "data"
    meta_mtime = (tmp_path / "data" / "meta.json").stat().st_mtime_ns
    ensure_prepared(cfg, progress=False)
    assert (tmp_path / "data" / "meta.json").stat().st_mtime_ns == meta_mtime
    with pytest.raises(DataError, match="holds corpus / byte data but the config asks for corpus / gpt2"):
        ensure_prepared(DataConfig(dataset=str(src), tokenizer="gpt2", dir=str(tmp_path / "data")), progress=False)


def test_token_files_use_uint32_beyond_65535_and_never_wrap(tmp_path):
    ids = np.array([0, 65_535, 65_536, 69_999])
    write_tokens(tmp_path / "big.bin", ids, vocab_size=70_000)
    assert read_header(tmp_path / "big.bin")["itemsize"] == 4
    assert np.asarray(open_tokens(tmp_path / "big.bin", 70_000)).tolist() == ids.tolist()
    write_tokens(tmp_path / "small.bin", np.array([65_534]), vocab_size=65_535)
    assert read_header(tmp_path / "small.bin")["itemsize"] == 2
    with pytest.raises(DataError, match="token id 65535 is outside the vocabulary of 65,535"):
        write_tokens(tmp_path / "wrap.bin", np.array([1, 65_535]), vocab_size=65_535)


def test_cli_json_and_table(tmp_path, capsys):
    src = _text_folder(tmp_path / "corpus", {"train": ["a b"], "val": ["c"], "test": ["d"]})
    args = ["prepare", "--dataset", str(src), "--tokenizer", "byte", "--out", str(tmp_path / "o")]
    assert cli.main(args + ["--json"]) == 0
    meta = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert meta["splits"]["train"]["tokens"] == 4
    assert cli.main(args) == 0
    table = capsys.readouterr().out
    assert "train" in table and "bytes/token" in table
    assert cli.main(["prepare", "--dataset", "pydocs", "--tokenizer", "nope", "--out", str(tmp_path / "x")]) == 2
    assert cli.main(args + ["--workers", "0"]) == 2


def test_tokenizer_train_cli(tmp_path, capsys):
    src = _text_folder(tmp_path / "corpus", {"train": ["some text to learn merges from " * 20],
                                             "val": ["c"], "test": ["d"]})
    out = tmp_path / "bpe.json"
    args = ["tokenizer", "train", "--dataset", str(src), "--vocab-size", "280", "--out", str(out), "--json"]
    assert cli.main(args) == 0
    info = json.loads(capsys.readouterr().out)
    tok = get_tokenizer(str(out))
    assert info["vocab_size"] == tok.vocab_size and tok.decode(tok.encode("some text")) == "some text"
    meta = prepare(str(src), str(out), tmp_path / "prepared", progress=False)
    assert meta["tokenizer"]["name"] == "bpe" and meta["tokenizer"]["hash"] == tok.hash


def test_wikitext_bytes_that_are_not_utf8_are_reported(tmp_path):
    from data_helpers import small_wikitext

    folder = small_wikitext(tmp_path / "wt")
    (folder / "wiki.test.raw").write_bytes((folder / "wiki.test.raw").read_bytes().replace(b"Small", b"Sm\xffll"))
    with pytest.raises(DataError, match=r"not UTF-8 text .*Sm\\xffll"):
        prepare("wikitext-2", "byte", tmp_path / "out", source_dir=str(folder), progress=False)
