"""A CPU rehearsal of both 125M campaign files (issue 18): the same arms, tiers, LR sweep and seeds,
run end to end at toy scale (the width shrunk to 16 with the arms' heads and FFN widths kept, so
the iso-parameter match still holds; a few updates; GPT-2 BPE on a little of the embedded pydocs
text), so that a config error shows in CI rather than after an hour of GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmlab.campaign.execute import run_campaign
from llmlab.campaign.report import write_report
from llmlab.campaign.spec import GenerateSpec, load_campaign

REPO = Path(__file__).resolve().parents[2]
TIERS = {"wikitext103-125m": (5, 4, 3), "wikitext103-125m-quick": (3, 3, 2)}  # arms, sweep LRs, seeds


def toy(corpus: Path, data: Path) -> list[str]:
    """--set overrides for every arm: width 16 and one layer (head_dim, heads and d_ff stay the
    arm's: the parameters GQA saves and the FFN widening scale alike), 4 updates of 2 x 32 tokens."""
    return ["model.d_model=16", "model.n_layers=1", "train.seq_len=32", "train.micro_batch_size=2",
            "train.tokens_per_update=64", "train.max_tokens=256", "train.warmup=1", "train.eval_interval=2",
            "train.eval_windows=2", "train.eval_stride=16", "train.ckpt_interval=0", "train.keep_checkpoints=1",
            "train.log_interval=1", "train.compile=false", "train.device=cpu", f'data.dataset="{corpus}"',
            f'data.dir="{data}"']


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A little of the embedded pydocs text as train/val/test folders (the test split is scored
    whole at the end of every run, so it is kept to a few hundred GPT-2 tokens)."""
    from pydoc_data.topics import topics

    root = tmp_path_factory.mktemp("rehearsal")
    text = "\n".join(topics.values())
    for split, (start, size) in {"train": (0, 20_000), "val": (20_000, 1_500), "test": (21_500, 1_500)}.items():
        (root / "corpus" / split).mkdir(parents=True)
        (root / "corpus" / split / "doc.txt").write_text(text[start:start + size])
    return root


@pytest.mark.slow  # 50 toy runs, two decode sweeps, two reports (~40 s on 2 loaded cores)
@pytest.mark.parametrize("tier", sorted(TIERS))
def test_125m_campaign_rehearses_on_cpu(tier: str, corpus: Path, tmp_path: Path) -> None:
    arms, n_lr, n_seeds = TIERS[tier]
    campaign = load_campaign(REPO / f"configs/campaigns/{tier}.toml",
                             toy(corpus / "corpus", corpus / "data"))  # the match is checked here
    assert len(campaign.variants) == arms and len(campaign.sweep.lr) == n_lr and len(campaign.seeds) == n_seeds
    assert {v.config.data.tokenizer for v in campaign.variants} == {"gpt2"}
    campaign.generate = GenerateSpec(contexts=[16], batch_sizes=[1], new_tokens=4, repeats=1,
                                     prompt="The ", max_new_tokens=4)
    out = tmp_path / "out"
    run_campaign(campaign, out)
    record = json.loads((out / "campaign.json").read_text())
    assert [v["name"] for v in record["variants"]] == [v.name for v in campaign.variants]
    for v in record["variants"]:
        assert v["lr"] in campaign.sweep.lr and len(v["sweep"]) == n_lr
        assert [r["status"] for r in v["runs"]] == ["completed"] * n_seeds
    results = [json.loads(p.read_text()) for p in out.rglob("result.json")]
    assert len(results) == arms * (n_lr + n_seeds)
    assert {r["test_stride"] for r in results} == {16}  # the sliding window reached the records
    md = write_report(out, memory_gb=1.0)["markdown"]
    assert "stride 16 on test" in md and "## Compute per token" in md and "## MoE dispatch" in md
    assert "Every MoE arm ran dropless" in md
    assert "base+gqa does +" in md  # 20 query heads: more FLOPs per token, named
    findings = md.split("## Findings")[1].replace("**", "")
    assert f"over {n_seeds} paired seeds" in findings
    if tier == "wikitext103-125m":
        assert "GQA with the saved parameters in a wider FFN lowers test loss: test loss base+gqa (wider FFN)" in findings
        assert "base+gqa (wider FFN) does" not in md  # its FLOPs stay within 2 % of base's
