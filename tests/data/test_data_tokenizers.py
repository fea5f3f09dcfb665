"""Tokenizers: GPT-2 ids and round trips, EOT handling, byte and trained BPE, the offline fetch."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import pytest

from llmlab.data import gpt2_ranks as R
from llmlab.data.bpe import train_bpe
from llmlab.data.tokenizers import EOT_TEXT, get_tokenizer
from llmlab.errors import DataError

TEXTS = [
    "Hello world",
    "",
    " leading and trailing spaces  \n\n\ttabs\r\nCRLF",
    "Ünïcödé: café, naïve, Straße, ﬁ ligature, Ωμέγα, русский, 中文字符, 日本語のテキスト, 한국어",
    "emoji 👩‍👩‍👧‍👦 🇫🇷 and combining e\u0301, zero-width\u200bjoiner, RTL עברית العربية",
    "code: def f(x):\n    return x ** 2  # 'quotes' \"double\" it's we'll they're",
    "numbers 3.14159 1,000,000 2024-01-01 0xFF" + " many   spaces" * 3,
]


def test_gpt2_hello_world(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert (gpt2.vocab_size, gpt2.eot_id, gpt2.name) == (50257, 50256, "gpt2")
    assert gpt2._enc.n_vocab == gpt2.vocab_size


@pytest.mark.parametrize("text", TEXTS)
def test_gpt2_round_trip(gpt2, text):
    assert gpt2.decode(gpt2.encode(text)) == text
    assert gpt2.encode_array(text).tolist() == gpt2.encode(text)


def test_gpt2_eot_is_never_produced_from_text(gpt2):
    ids = gpt2.encode(f"end{EOT_TEXT}start")
    assert gpt2.eot_id not in ids  # a corpus cannot forge a document boundary
    assert gpt2.decode(ids) == f"end{EOT_TEXT}start"
    assert gpt2.decode([gpt2.eot_id]) == EOT_TEXT
    assert gpt2.encode_batch(["Hello world", "Hello"]) == [[15496, 995], [15496]]


def test_gpt2_hash_is_stable_and_pickles_by_recipe(gpt2):
    again = pickle.loads(pickle.dumps(gpt2))
    assert again.hash == gpt2.hash and again.encode("Hello world") == [15496, 995]
    assert len(pickle.dumps(gpt2)) < 1000  # the recipe, not the 50k ranks


@pytest.mark.parametrize("text", TEXTS)
def test_byte_round_trip(text):
    tok = get_tokenizer("byte")
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8")) and all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(ids + [tok.eot_id] + ids) == text + EOT_TEXT + text
    assert (tok.vocab_size, tok.eot_id) == (257, 256)


def test_trained_bpe_round_trip(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(TEXTS * 3):
        (corpus / f"doc{i}.txt").write_text(text + f" document number {i}", encoding="utf-8")
    out = tmp_path / "tok" / "small.json"
    info = train_bpe(str(corpus), 300, out, progress=False)
    tok = get_tokenizer(str(out))
    assert info["vocab_size"] == tok.vocab_size <= 300 and tok.vocab_size > 257
    assert tok.name == "small" and tok.hash == info["hash"]
    for text in TEXTS + ["never seen: ☃ ∑ ﬀ"]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.eot_id not in tok.encode(f"a{EOT_TEXT}b")
    assert tok.decode([tok.eot_id]) == EOT_TEXT
    assert pickle.loads(pickle.dumps(tok)).hash == tok.hash


def test_bad_tokenizer_inputs_are_clear(tmp_path):
    with pytest.raises(DataError, match="unknown tokenizer"):
        get_tokenizer("gpt3")
    with pytest.raises(DataError, match="not found"):
        get_tokenizer(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not a tokenizers"):
        get_tokenizer(str(bad))
    wrong = tmp_path / "gpt2.tiktoken"
    wrong.write_bytes(b"IQ== 0\n")
    with pytest.raises(DataError, match="not the GPT-2 ranks file"):
        get_tokenizer("gpt2", str(wrong))
    with pytest.raises(DataError, match="at least 257"):
        train_bpe("pydocs", 100, tmp_path / "x.json")


def _sdist_with(member: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def offline_fetch(tmp_path, monkeypatch):
    """fetch_gpt2 with an empty cache, tiktoken unreachable, and pip replaced by `archive`."""
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(R, "_ranks_from_tiktoken", lambda allow_network: None)
    archive: dict[str, bytes] = {}
    monkeypatch.setattr(R, "_pip_download", lambda requirement: archive["bytes"])
    return archive


def test_fetch_falls_back_to_the_whisper_sdist(gpt2, offline_fetch, tmp_path):
    real = Path(gpt2.spec[1] or R.cache_dir() / R.GPT2_RANKS_FILE)
    if not real.is_file():
        pytest.skip("GPT-2 came from tiktoken's cache, no ranks file to repackage")
    offline_fetch["bytes"] = _sdist_with(f"openai_whisper-20250625/{R.WHISPER_MEMBER}", real.read_bytes())
    out = R.fetch_gpt2(progress=False)
    assert out["source"].startswith("pypi:") and Path(out["path"]).parent == tmp_path / "cache"
    assert hashlib.sha256(Path(out["path"]).read_bytes()).hexdigest() == R.GPT2_RANKS_SHA256
    assert R.fetch_gpt2(progress=False)["source"] == "cache"
    assert get_tokenizer("gpt2").encode("Hello world") == [15496, 995]


def test_fetch_rejects_a_wrong_file(offline_fetch, tmp_path):
    offline_fetch["bytes"] = _sdist_with(f"openai_whisper-20250625/{R.WHISPER_MEMBER}", b"IQ== 0\n")
    with pytest.raises(DataError, match="sha256"):
        R.fetch_gpt2(progress=False)
    assert not (tmp_path / "cache" / R.GPT2_RANKS_FILE).exists()
    offline_fetch["bytes"] = _sdist_with("openai_whisper-20250625/README.md", b"hi")
    with pytest.raises(DataError, match="has no"):
        R.fetch_gpt2(progress=False)


def test_missing_gpt2_says_how_to_fetch(offline_fetch):
    with pytest.raises(DataError, match="llmlab tokenizer fetch gpt2"):
        get_tokenizer("gpt2")


def test_cli_fetch_uses_the_cache(gpt2, capsys):
    from llmlab import cli

    if not (R.cache_dir() / R.GPT2_RANKS_FILE).is_file():
        pytest.skip("no ranks file in llmlab's cache")
    assert cli.main(["tokenizer", "fetch", "gpt2", "--json"]) == 0
    assert '"source": "cache"' in capsys.readouterr().out


def test_fetch_through_tiktoken_writes_the_canonical_file(gpt2, offline_fetch, monkeypatch):
    from tiktoken.load import load_tiktoken_bpe

    real = Path(gpt2.spec[1] or R.cache_dir() / R.GPT2_RANKS_FILE)
    if not real.is_file():
        pytest.skip("no ranks file to compare with")
    monkeypatch.setattr(R, "_ranks_from_tiktoken", lambda allow_network: load_tiktoken_bpe(str(real)))
    out = R.fetch_gpt2(progress=False)
    assert out["source"] == "tiktoken" and Path(out["path"]).read_bytes() == real.read_bytes()


def test_tiktoken_cache_lookup_needs_no_network(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    assert not R._tiktoken_cache_has_gpt2()
    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    for name in ("vocab.bpe", "encoder.json"):
        (tmp_path / hashlib.sha1((base + name).encode()).hexdigest()).write_bytes(b"x")
    assert R._tiktoken_cache_has_gpt2()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken's "no cache"
    assert not R._tiktoken_cache_has_gpt2()
