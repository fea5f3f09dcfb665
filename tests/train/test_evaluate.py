"""Evaluation figures against independent hand calculations: bits per byte and word perplexity on
a tiny written WikiText split, and the strided (sliding-window) loss against a per-token loop."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from trainkit import TINY_MODEL, TINY_TRAIN

from llmlab.config import ModelConfig, TrainConfig, dump_toml, load_run_config
from llmlab.data.loader import eval_batches, open_split, window_starts
from llmlab.errors import ConfigError
from llmlab.infer.load import load_run_model
from llmlab.model import GPT
from llmlab.train import evaluate_run, train
from llmlab.train.evaluate import split_figures
from llmlab.train.step import bind_eval_loss, evaluate, evaluate_windows

SEQ_LEN = 32
EOT = 256  # the byte tokenizer's end-of-text id
WORDS = ["the", "model", "cache", "head", "expert", "loss", "naïve", "café", "@-@", ",", "."]


def article(rng: random.Random, title: str, paragraphs: int) -> str:
    """WikiText raw layout: ' = Title = ' line, blank lines as ' ', one paragraph per line."""
    lines = [f" = {title} = ", " "]
    for _ in range(paragraphs):
        lines += [" " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 15))) + " ", " "]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def wikitext_run(tmp_path_factory) -> tuple[Path, str]:
    """A 4-step tiny run on a written WikiText-2-shaped corpus (byte tokenizer); returns the run
    directory and the test split's text."""
    root = tmp_path_factory.mktemp("wikitext")
    rng = random.Random(7)
    texts = {"train": "".join(article(rng, f"Train {i}", 6) for i in range(8)),
             "valid": article(rng, "Valid", 4),
             "test": " \n" + article(rng, "Alpha", 3) + article(rng, "Beta", 2)}
    for name, text in texts.items():
        (root / f"wiki.{name}.raw").write_text(text, encoding="utf-8")
    data = {"dataset": "wikitext-2", "tokenizer": "byte", "dir": str(root / "tokens"), "source_dir": str(root)}
    config = root / "run.toml"
    config.write_text(dump_toml({"model": TINY_MODEL, "data": data, "train": {**TINY_TRAIN, "max_steps": 4}}))
    torch.set_num_threads(1)
    train(load_run_config(config), root / "run")
    return root / "run", texts["test"]


def test_bits_per_byte_and_word_perplexity_equal_a_hand_calculation(wikitext_run):
    run_dir, text = wikitext_run
    _, _, model = load_run_model(run_dir, torch.device("cpu"))
    # By hand: the byte tokenizer gives one id per UTF-8 byte; each article ends with EOT. The
    # test file holds two articles, cut before the line ' = Beta = '.
    cut = text.index(" = Beta = ")
    ids = [*text[:cut].encode(), EOT, *text[cut:].encode(), EOT]
    assert open_split(run_dir.parent / "tokens", "test").tolist() == ids
    nll = 0.0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, SEQ_LEN):  # non-overlapping windows, every target once
            x = torch.tensor(ids[start:start + SEQ_LEN])
            y = torch.tensor(ids[start + 1:start + SEQ_LEN + 1])
            logp = torch.log_softmax(model.eval()(x[None]).logits[0, :len(y)].double(), dim=-1)
            nll -= logp[torch.arange(len(y)), y].sum().item()
    n_bytes = len(text.encode("utf-8"))  # "naïve", "café": more bytes than characters
    n_words = len(text.split()) + text.count("\n")  # WikiText: words + line ends (<eos>)
    assert n_bytes > len(text)
    got = evaluate_run(run_dir, "test", device="cpu")
    assert got["tokens"] == len(ids) - 1
    assert got["loss"] == pytest.approx(nll / (len(ids) - 1), rel=1e-6)
    assert got["bits_per_byte"] == pytest.approx(nll / n_bytes / math.log(2), rel=1e-6)
    # compared in log space: exp() turns the fp32 loss's last digits into a large absolute error
    assert math.log(got["word_ppl"]) == pytest.approx(nll / n_words, rel=1e-6)


def test_strided_evaluation_equals_a_per_token_hand_loop(wikitext_run):
    run_dir, _ = wikitext_run
    _, _, model = load_run_model(run_dir, torch.device("cpu"))
    model.eval()
    ids = open_split(run_dir.parent / "tokens", "test").tolist()
    stride = 8
    nll = 0.0
    with torch.no_grad():
        for p in range(1, len(ids)):  # predict token p from the context the rule gives it
            # the first window scores targets 1..SEQ_LEN; window k (start k*stride) scores its
            # last `stride`: targets k*stride + SEQ_LEN - stride + 1 .. k*stride + SEQ_LEN
            k = 0 if p <= SEQ_LEN else -(-(p - SEQ_LEN) // stride)
            context = ids[k * stride:p]
            assert p <= SEQ_LEN or len(context) >= SEQ_LEN - stride + 1
            logits = model(torch.tensor(context)[None]).logits[0, -1].double()
            nll -= torch.log_softmax(logits, dim=-1)[ids[p]].item()
    got = evaluate_run(run_dir, "test", device="cpu", stride=stride)
    assert (got["tokens"], got["stride"]) == (len(ids) - 1, stride)
    assert got["loss"] == pytest.approx(nll / (len(ids) - 1), rel=1e-6)
    assert got["loss"] < evaluate_run(run_dir, "test", device="cpu")["loss"]  # more context, lower loss


def test_stride_equal_to_seq_len_is_the_non_overlapping_evaluation(byte_data):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=257, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=16)).eval()
    fn = bind_eval_loss(model, None)
    ids = torch.from_numpy(np.asarray(open_split(byte_data, "test")[:16 * 5 + 1], dtype=np.int64))
    nll = 0.0
    with torch.no_grad():  # by hand: five non-overlapping windows, each from its own start
        for start in range(0, 80, 16):
            logp = torch.log_softmax(model(ids[None, start:start + 16]).logits[0].double(), dim=-1)
            nll -= logp[torch.arange(16), ids[start + 1:start + 17]].sum().item()
            if start == 0:
                first_window_nll = nll
    cpu = torch.device("cpu")
    by_window = evaluate_windows(fn, eval_batches(byte_data, "test", 16, 3, max_windows=5), cpu)
    assert by_window.tokens == [16] * 5  # 5 windows in batches of 3: the padding row is dropped
    assert math.fsum(by_window.loss_sum) == pytest.approx(nll, rel=1e-6)
    assert by_window.loss_sum[0] == pytest.approx(first_window_nll, rel=1e-5)
    for stride in (None, 16):
        loss, tokens = evaluate(fn, eval_batches(byte_data, "test", 16, 3, max_windows=5, stride=stride), cpu)
        assert tokens == 80
        assert loss == pytest.approx(nll / 80, rel=1e-6)
    assert evaluate(fn, eval_batches(byte_data, "test", 16, 3, max_windows=5, stride=5), cpu)[1] == 80  # every target once
    assert list(window_starts(74, 16, 5)) == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60]  # 60 + 16 >= 74
    assert list(window_starts(10, 16, 5)) == [0]
    assert list(window_starts(80, 16, 16)) == [0, 16, 32, 48, 64]


def test_word_perplexity_only_on_wikitext():
    split = {"tokens": 1001, "bytes": 2000, "words": 300}
    # total NLL = 2.0 x 1000 predicted tokens = 2000 nats
    wiki = split_figures(2.0, split, "wikitext-103")
    assert wiki["bits_per_byte"] == pytest.approx(2000 / 2000 / math.log(2))
    assert wiki["word_ppl"] == pytest.approx(math.exp(2000 / 300))
    for dataset in ("pydocs", "my-folder"):
        figures = split_figures(2.0, split, dataset)
        assert "word_ppl" not in figures and "bits_per_byte" in figures


def test_stride_out_of_range_is_a_config_error(wikitext_run):
    with pytest.raises(ConfigError, match=r"eval_stride \(40\) must be between 0 \(= seq_len\) and train.seq_len \(32\)"):
        TrainConfig(seq_len=32, eval_stride=40, max_steps=1)
    with pytest.raises(ConfigError, match=r"--stride \(0\) must be between 1 and the run's seq_len \(32\)"):
        evaluate_run(wikitext_run[0], "test", device="cpu", stride=0)


def test_cli_eval_stride(wikitext_run, capsys):
    import json

    from llmlab.cli import main

    run_dir = str(wikitext_run[0])
    assert main(["eval", run_dir, "--split", "test", "--stride", "8", "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stride"] == 8 and out["loss"] == pytest.approx(evaluate_run(run_dir, "test", "cpu", stride=8)["loss"])
    assert main(["eval", run_dir, "--stride", "99", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == "llmlab: error: --stride (99) must be between 1 and the run's seq_len (32)\n"
