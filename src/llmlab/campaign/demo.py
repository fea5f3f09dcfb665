"""`llmlab demo` / `make demo`: the whole path in a few minutes on a laptop CPU.

Prepare the embedded pydocs corpus (byte tokenizer), train tiny base / base+GQA / base+GQA (wider
FFN) / base+GQA+MoE on the same tokens (equal active non-embedding parameters, equal budget) and
the GQA ablation (fewer KV heads alone), sweep decode speed with and without the KV cache, and print the report (also
written to runs/demo/report.md).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from llmlab.campaign.execute import run_and_report
from llmlab.campaign.spec import load_campaign

DEMO_CAMPAIGN = Path(__file__).resolve().parents[3] / "configs" / "campaigns" / "demo.toml"


def run_demo(out_dir: str | Path = "runs/demo", campaign_path: str | Path | None = None,
             overrides: list[str] = (), retrain: list[str] = (), remeasure: bool = False) -> dict[str, Any]:
    path = Path(campaign_path) if campaign_path else DEMO_CAMPAIGN
    campaign = load_campaign(path, list(overrides))
    t0 = time.perf_counter()
    report = run_and_report(campaign, out_dir, retrain=retrain, remeasure=remeasure)
    report["seconds"] = time.perf_counter() - t0
    return report
