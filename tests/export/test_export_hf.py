"""`llmlab export --format hf`: the folder loads in transformers and computes what llmlab computes
(logits within 1e-4 in fp32, the same greedy tokens), for every layout; what has no equivalent is
refused in one line (exit 2) and nothing is written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from llmlab.cli import main
from llmlab.export import ExportError, export_run, to_transformers
from llmlab.infer import generate
from llmlab.infer.load import load_run_model

transformers = pytest.importorskip("transformers")

GQA = {"n_heads": 8, "n_kv_heads": 2, "head_dim": 16}  # attention width 128 != d_model 64
MOE = {"n_heads": 4, "n_kv_heads": 2, "moe": {"n_experts": 4, "top_k": 2, "d_ff_expert": 64, "dispatch": "grouped"}}
CASES = {
    # name: (model overrides, transformers class)
    "dense-tied": ({}, "LlamaForCausalLM"),
    "gqa-untied-head-dim": ({**GQA, "tie_embeddings": False}, "LlamaForCausalLM"),
    "gqa-6-heads": ({"n_heads": 6, "n_kv_heads": 2, "head_dim": 16}, "MistralForCausalLM"),  # 64 % 6 != 0
    "moe": (MOE, "MixtralForCausalLM"),
}


def ours_and_theirs(run_dir: Path, out: Path) -> tuple[Any, Any]:
    """(our model from the run directory, transformers' model loaded from the exported folder)."""
    export_run(run_dir, out)
    _, _, ours = load_run_model(run_dir, torch.device("cpu"))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    return ours.eval(), theirs.eval()


def assert_same_function(ours: Any, theirs: Any, vocab_size: int, max_len: int = 64) -> None:
    """Logits within 1e-4 on random sequences; 24 greedy tokens equal (cached decode on both sides)."""
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, vocab_size, (2, max_len), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, ours(idx).logits, atol=1e-4, rtol=0)
    prompt = idx[:, :8]
    mine = generate(ours, prompt, max_new_tokens=24, use_kv_cache=True)
    hf = theirs.generate(prompt, max_new_tokens=24, min_new_tokens=24, do_sample=False,
                         attention_mask=torch.ones_like(prompt), pad_token_id=0)
    assert hf.tolist() == mine.tolist()


@pytest.mark.parametrize("case", CASES)
def test_exported_run_loads_and_computes_the_same(case: str, trained_run: Callable[..., Path],
                                                  tmp_path: Path) -> None:
    model, cls = CASES[case]
    ours, theirs = ours_and_theirs(trained_run(case, **model), tmp_path / "hf")
    assert type(theirs).__name__ == cls
    tied = model.get("tie_embeddings", True)
    assert (theirs.lm_head.weight.data_ptr() == theirs.model.embed_tokens.weight.data_ptr()) == tied
    assert_same_function(ours, theirs, ours.config.vocab_size)


def test_folder_contents_and_provenance(trained_run: Callable[..., Path], tmp_path: Path) -> None:
    run_dir = trained_run("dense-tied")
    out = export_run(run_dir, tmp_path / "hf")
    assert set(out["files"]) >= {"config.json", "model.safetensors", "generation_config.json",
                                 "tokenizer.json", "tokenizer_config.json", "llmlab.json"}
    record = json.loads((tmp_path / "hf" / "llmlab.json").read_text())
    assert record["step"] == 4 and record["architecture"] == "LlamaForCausalLM"
    assert record["config"]["model"]["d_model"] == 64
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["rope_parameters"]["rope_theta"] == 10000.0 and config["eos_token_id"] == 256
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_byte_tokenizer_exports_exactly(trained_run: Callable[..., Path], tmp_path: Path) -> None:
    from llmlab.data.tokenizers import ByteTokenizer

    export_run(trained_run("dense-tied"), tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours = ByteTokenizer()
    for text in ("Hello, world!", "  deux  espaces\n\tet un été 😀", ""):
        ids = hf_tok(text)["input_ids"]
        assert ids == ours.encode(text)
        assert hf_tok.decode(ids) == text
    assert hf_tok.eos_token_id == ours.eot_id


def test_gpt2_run_exports_its_tokenizer(checkpoint_run: Callable[..., Path], tmp_path: Path) -> None:
    """A GPT-2 run: tokenizer files built offline from the tiktoken ranks encode like tiktoken, and
    the exported model generates the same text as llmlab from the same prompt."""
    from llmlab.data.pydocs import load_documents
    from llmlab.data.tokenizers import get_tokenizer
    from llmlab.errors import DataError

    try:
        ours_tok = get_tokenizer("gpt2")
        ours_tok.encode("x")
    except DataError as e:
        pytest.skip(f"GPT-2 ranks not available ({e}); run: llmlab tokenizer fetch gpt2")
    run_dir = checkpoint_run("gpt2", vocab_size=50257, d_model=32, n_heads=2, n_kv_heads=1, d_ff=64,
                             pad_vocab_multiple=64)
    ours, theirs = ours_and_theirs(run_dir, tmp_path / "hf")
    assert {"vocab.json", "merges.txt", "tokenizer.json"} <= {p.name for p in (tmp_path / "hf").iterdir()}
    docs = [text for _, text in load_documents()[::97]][:40]
    texts = ["Hello world", " Hello world", "I'm here, you'll see!  \n\n  x\t1234567", "数字 émoji 😀 "] + docs
    for folder_files in (None, ("vocab.json", "merges.txt")):  # tokenizer.json, then GPT2Tokenizer's own files
        hf_tok = _tokenizer_from(tmp_path / "hf", tmp_path / "slow", folder_files)
        for text in texts:
            assert hf_tok(text)["input_ids"] == ours_tok.encode(text), text[:60]
    assert hf_tok("Hello world")["input_ids"] == [15496, 995]
    prompt = torch.tensor([ours_tok.encode("def main():")])
    mine = generate(ours, prompt, max_new_tokens=12)
    hf = theirs.generate(prompt, max_new_tokens=12, min_new_tokens=12, do_sample=False,
                         attention_mask=torch.ones_like(prompt))
    assert hf.tolist() == mine.tolist()


def test_trained_bpe_tokenizer_exports_exactly(tmp_path: Path) -> None:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from llmlab.data.tokenizers import EOT_TEXT, BPETokenizer
    from llmlab.export.hf_tokenizer import write_tokenizer

    raw = HFTokenizer(models.BPE())  # what `llmlab tokenizer train` builds, on a few lines
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    text = ["the expert routes the token to the cache", "a head of the model and the loss"] * 50
    raw.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=[EOT_TEXT],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    raw.save(str(tmp_path / "bpe.json"))
    ours = BPETokenizer(tmp_path / "bpe.json")
    (tmp_path / "hf").mkdir()
    write_tokenizer(ours, tmp_path / "hf", 64)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for sample in ("the expert routes", "unseen wörds 😀  twice"):
        assert hf_tok(sample)["input_ids"] == ours.encode(sample)
        assert hf_tok.decode(ours.encode(sample)) == sample
    assert hf_tok.eos_token_id == ours.eot_id


def _tokenizer_from(folder: Path, scratch: Path, only: tuple[str, ...] | None) -> Any:
    if only is None:
        return transformers.AutoTokenizer.from_pretrained(folder)
    scratch.mkdir()
    for name in (*only, "tokenizer_config.json"):
        (scratch / name).write_bytes((folder / name).read_bytes())
    return transformers.AutoTokenizer.from_pretrained(scratch)


def test_to_transformers_in_memory_padded_vocab_and_moe_loop() -> None:
    """No folder: the peer the benchmarks build. Padded vocabulary rows are sliced off."""
    from llmlab.config import ModelConfig, MoEConfig
    from llmlab.model import GPT

    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=100, pad_vocab_multiple=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=1,
                      d_ff=96, max_seq_len=64, tie_embeddings=False,
                      moe=MoEConfig(n_experts=4, top_k=2, d_ff_expert=32, dispatch="loop"))
    ours = GPT(cfg).eval()
    theirs = to_transformers(ours)
    assert theirs.config.vocab_size == 100 and theirs.lm_head.weight.shape == (100, 64)
    assert_same_function(ours, theirs, 100)
    with torch.no_grad():  # the copy shares no storage with ours
        theirs.model.embed_tokens.weight.zero_()
    assert ours.tok_emb.weight.abs().sum() > 0


def test_moe_block_peer_matches_our_layer() -> None:
    from llmlab.config import MoEConfig
    from llmlab.export.hf import moe_to_transformers
    from llmlab.model.moe import MoE

    torch.manual_seed(0)
    moe = MoE(64, MoEConfig(n_experts=8, top_k=2, d_ff_expert=32, dispatch="grouped"), "swiglu", bias=False)
    x = torch.randn(3, 10, 64)
    for impl in ("eager", "grouped_mm"):
        with torch.no_grad():
            torch.testing.assert_close(moe_to_transformers(moe, 64, impl)(x), moe(x)[0], atol=1e-5, rtol=0)


def test_capacity_dispatch_exports_with_a_note(checkpoint_run: Callable[..., Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    moe = {"n_experts": 4, "top_k": 2, "d_ff_expert": 64, "dispatch": "capacity", "capacity_factor": 1.25}
    run_dir = checkpoint_run(moe=moe)
    assert main(["export", str(run_dir), "--out", str(tmp_path / "hf"), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["architecture"] == "MixtralForCausalLM"
    assert "Mixtral is dropless" in captured.err


REFUSED = {
    "gpt2-style": ({"norm": "layernorm", "pos": "learned", "mlp": "gelu", "bias": True},
                   ["model.norm = 'layernorm'", "model.pos = 'learned'", "model.mlp = 'gelu'", "model.bias = true"]),
    "shared-experts": ({"moe": {"n_experts": 4, "d_ff_expert": 64, "n_shared_experts": 1}},
                       ["n_shared_experts = 1"]),
    "moe-every-2": ({"moe": {"n_experts": 4, "d_ff_expert": 64, "every_n_layers": 2}}, ["every_n_layers = 2"]),
    "no-renormalize": ({"moe": {"n_experts": 4, "d_ff_expert": 64, "renormalize": False}}, ["renormalize = false"]),
}


@pytest.mark.parametrize("case", REFUSED)
def test_no_equivalent_is_one_line_exit_2(case: str, checkpoint_run: Callable[..., Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    model, phrases = REFUSED[case]
    out = tmp_path / "hf"
    assert main(["export", str(checkpoint_run(**model)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmlab: error: no Hugging Face equivalent") and len(err.strip().splitlines()) == 1
    assert all(p in err for p in phrases), err
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_refusal_through_the_installed_command(checkpoint_run: Callable[..., Path], tmp_path: Path) -> None:
    """The real process: one line on stderr, exit 2, no traceback, nothing written."""
    import subprocess
    import sys

    run_dir = checkpoint_run(norm="layernorm")
    proc = subprocess.run([sys.executable, "-m", "llmlab", "export", str(run_dir), "--out", str(tmp_path / "hf")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "llmlab: error: no Hugging Face equivalent (Llama/Mixtral layout): "
        "model.norm = 'layernorm' (Llama/Mixtral use RMSNorm)"]
    assert not (tmp_path / "hf").exists()


def test_out_folder_is_never_overwritten_without_force(checkpoint_run: Callable[..., Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    run_dir, out = checkpoint_run(), tmp_path / "hf"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert main(["export", str(run_dir), "--out", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--out", str(out), "--force"]) == 2  # not a previous export
    assert "--force replaces only those" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    (out / "mine.txt").unlink()
    assert main(["export", str(run_dir), "--out", str(out)]) == 0  # an empty folder is fine
    (out / "stale.txt").write_text("from an older export")
    assert main(["export", str(run_dir), "--out", str(out), "--force"]) == 0  # a previous export is replaced
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()


@pytest.mark.parametrize("args,message", [
    (["export", "no-such-run", "--out", "x"], "not a run directory"),
    (["export", ".", "--out", "x", "--format", "onnx"], "invalid choice"),
])
def test_bad_arguments_exit_2(args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2 and message in capsys.readouterr().err


def test_export_error_is_a_user_error() -> None:
    from llmlab.errors import LLMLabError

    assert issubclass(ExportError, LLMLabError)
