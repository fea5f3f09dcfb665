"""Sources: WikiText article splitting (written files, the real validation/test files when present,
Hub rows through a stub `datasets`), pydocs, folders of .txt, and their error messages."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from data_helpers import SHARED_WIKITEXT, small_wikitext

from llmlab.data.corpus import SPLITS, TextFolder, split_of
from llmlab.data.encode import count_words
from llmlab.data.sources import get_source
from llmlab.data.wikitext import is_title, read_blocks, split_articles
from llmlab.errors import DataError


def test_titles_are_top_level_headings_only():
    assert is_title(" = Valkyria Chronicles III = \n")
    assert is_title(" = Zeta = function = \n")
    assert not is_title(" = = Gameplay = = \n")
    assert not is_title(" = = = Sub = = = \n")
    assert not is_title(" The = sign = \n")
    assert not is_title(" = \n")


def test_wikitext_files_split_into_articles(tmp_path):
    folder = small_wikitext(tmp_path / "wt")
    source = get_source("wikitext-2", str(tmp_path / "wt"))
    for split, fname, first_titles in [("train", "wiki.train.raw", ["Alpha", "Beta", "Gamma ray"]),
                                       ("val", "wiki.valid.raw", ["Delta"]),
                                       ("test", "wiki.test.raw", ["Epsilon", "Zeta = function"])]:
        docs = list(source.documents(split))
        text = (folder / fname).read_text(encoding="utf-8")
        assert "".join(docs) == text  # nothing lost, nothing added
        titles = [next(line for line in d.splitlines() if is_title(line + "\n"))[3:-3] for d in docs]
        assert titles == first_titles
        assert docs[0].startswith(" \n = ")  # the file's leading blank line joins the first article
        assert [d.decode("utf-8") for d in source.raw_documents(split)] == docs  # prepare's bytes path
        for block_size in (1, 7, 50):  # blocks of whole lines, cut anywhere: the same articles
            assert list(split_articles(read_blocks(folder / fname, block_size))) == [d.encode() for d in docs]
    assert "History" in list(source.documents("train"))[0]  # sections stay inside their article


def test_wikitext_prefers_the_dataset_subfolder(tmp_path):
    small_wikitext(tmp_path / "root" / "wikitext-2-raw-v1")
    source = get_source("wikitext-2", str(tmp_path / "root"))
    assert source.files["val"].parent.name == "wikitext-2-raw-v1"  # type: ignore[attr-defined]
    with pytest.raises(DataError, match="no wikitext-103 raw files"):
        get_source("wikitext-103", str(tmp_path / "root"))


@pytest.mark.skipif(not SHARED_WIKITEXT.is_dir(), reason="real WikiText files not present")
@pytest.mark.parametrize("fname, articles, lines, words", [
    ("wiki.valid.tokens", 60, 3_760, 213_886),
    ("wiki.test.tokens", 62, 4_358, 241_211),
])
def test_real_wikitext_articles_and_word_counts(fname, articles, lines, words):
    raw = list(split_articles(read_blocks(SHARED_WIKITEXT / fname)))
    assert len(raw) == articles
    with open(SHARED_WIKITEXT / fname, encoding="utf-8", newline="") as f:
        docs = list(split_articles(f))  # text, line by line: the same articles
    assert [d.encode("utf-8") for d in docs] == raw
    counted = [count_words(d) for d in raw]
    assert sum(c[1] for c in counted) == lines
    assert sum(c[0] for c in counted) == words + lines  # Merity et al.: line ends count as words
    assert sum(len(d.split()) for d in docs) == words


def test_word_count_matches_bytes_split():
    for text in ["", " ", "a", " a  b\tc\n", "x\n\ny ", "é  中文 \u00a0 z", "\n\n", "a\x00b\x08c\x0bd\x0e\x1fe\x7f"]:
        data = text.encode("utf-8")
        assert count_words(data) == (len(data.split()) + data.count(b"\n"), data.count(b"\n"))


def _stub_datasets(monkeypatch, load):
    module = types.ModuleType("datasets")
    module.load_dataset = load
    monkeypatch.setitem(sys.modules, "datasets", module)


class _Split:
    """The few bits of a datasets.Dataset that WikiTextHub uses."""

    def __init__(self, rows):
        self.rows, self._fingerprint = rows, f"fp{len(rows)}"

    def iter(self, batch_size):
        batch_size = 3  # tiny batches: articles must not be cut at batch boundaries
        for i in range(0, len(self.rows), batch_size):
            yield {"text": self.rows[i : i + batch_size]}


def test_hub_rows_give_the_same_articles_as_the_raw_files(tmp_path, monkeypatch):
    folder = small_wikitext(tmp_path / "wt")
    names = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}
    # the Hub stores each line as a row, blank lines as ""
    hub = {split: _Split(["" if line == " \n" else line for line in
                          (folder / fname).read_text(encoding="utf-8").splitlines(keepends=True)])
           for split, fname in names.items()}
    _stub_datasets(monkeypatch, lambda repo, config: hub)
    from_hub, from_files = get_source("wikitext-103"), get_source("wikitext-103", str(folder))
    for split in SPLITS:
        assert list(from_hub.documents(split)) == list(from_files.documents(split))
    assert from_hub.digest() != from_files.digest()


def test_unreachable_hub_is_one_clear_line(monkeypatch):
    def offline(repo, config):
        raise ConnectionError("Couldn't reach 'Salesforce/wikitext' on the Hub (LocalEntryNotFoundError)\nmore")

    _stub_datasets(monkeypatch, offline)
    with pytest.raises(DataError) as e:
        get_source("wikitext-103")
    message = str(e.value)
    assert "\n" not in message and "cannot reach wikitext-103" in message
    assert "--source-dir" in message and "pydocs" in message


def test_word_level_files_are_not_mistaken_for_raw(tmp_path):
    (tmp_path / "wiki.valid.tokens").write_text(" = A = \n")
    with pytest.raises(DataError, match="word-level variant"):
        get_source("wikitext-103", str(tmp_path))


def test_pydocs_is_deterministic_english_with_three_splits():
    a, b = get_source("pydocs"), get_source("pydocs")
    assert a.digest() == b.digest()
    sizes = {}
    for split in SPLITS:
        docs = list(a.documents(split))
        assert docs == list(b.documents(split)) and docs
        sizes[split] = sum(len(d.encode("utf-8")) for d in docs)
    total = sum(sizes.values())
    assert 1.0e6 < total < 4e6, total
    assert 0.8 < sizes["train"] / total < 0.97
    assert "the" in " ".join(a.documents("val")).split()  # prose, not just code


def test_split_of_is_stable_and_roughly_90_5_5():
    assert split_of("module:json") == split_of("module:json")
    counts = {s: 0 for s in SPLITS}
    for i in range(4000):
        counts[split_of(f"doc{i}")] += 1
    assert 0.87 < counts["train"] / 4000 < 0.93
    assert 0.03 < counts["val"] / 4000 < 0.07 and 0.03 < counts["test"] / 4000 < 0.07


def test_text_folder_with_split_subfolders(tmp_path):
    for split, names in {"train": ["a", "b"], "valid": ["c"], "test": ["d"]}.items():
        (tmp_path / split).mkdir()
        for name in names:
            (tmp_path / split / f"{name}.txt").write_text(f"text {name}\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored")
    source = get_source(str(tmp_path))
    assert isinstance(source, TextFolder) and source.name == tmp_path.name
    assert list(source.documents("train")) == ["text a\n", "text b\n"]
    assert list(source.documents("val")) == ["text c\n"]
    assert list(source.documents("test")) == ["text d\n"]


def test_text_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no .txt files"):
        get_source(str(tmp_path))
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 latin-1")
    with pytest.raises(DataError, match="bad.txt: not UTF-8"):
        list(get_source(str(tmp_path)).documents(split_of("bad.txt")))
    with pytest.raises(DataError, match="not a folder"):
        get_source(str(tmp_path / "bad.txt"))
    with pytest.raises(DataError, match="unknown split"):
        list(get_source("pydocs").documents("validation"))


def test_word_counts_are_vectorised_not_approximate():
    rng = np.random.default_rng(0)
    pieces = rng.choice(["word", " ", "\n", "\t", "é", "  "], size=5000)
    data = "".join(pieces).encode("utf-8")
    assert count_words(data)[0] == len(data.split()) + data.count(b"\n")


def test_parquet_copy_reads_like_the_raw_files(tmp_path):
    raw = small_wikitext(tmp_path / "raw")
    folder = tmp_path / "parquet" / "wikitext-103-raw-v1"
    folder.mkdir(parents=True)
    names = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        for split in names:
            (folder / f"{split}-00000-of-00001.parquet").write_bytes(b"PAR1")
        with pytest.raises(DataError, match="needs pyarrow"):
            list(get_source("wikitext-103", str(tmp_path / "parquet")).documents("val"))
        return
    for split, fname in names.items():
        lines = (raw / fname).read_text(encoding="utf-8").splitlines(keepends=True)
        rows = ["" if line == " \n" else line for line in lines]
        pq.write_table(pa.table({"text": rows}), folder / f"{split}-00000-of-00001.parquet")
    from_parquet, from_raw = get_source("wikitext-103", str(tmp_path / "parquet")), get_source("wikitext-103", str(raw))
    for split in SPLITS:
        assert list(from_parquet.documents(split)) == list(from_raw.documents(split))
