"""A campaign: shared settings + `[[variant]]` overrides + a matching rule, planned before any run.

```toml
include = "../runs/_pydocs-tiny.toml"     # shared [data], [train] and [model] keys (e.g. vocab_size)
match = "active_non_embedding"            # what every variant must have equal, within tolerance
tolerance = 0.01

[generate]                                # the inference measurement after training
prompt = "def "
max_new_tokens = 64

[[variant]]
name = "base"
include = "../models/tiny.toml"           # relative to the campaign file; shared keys override it
[[variant]]
name = "base+gqa"
include = "../models/tiny-gqa.toml"
[variant.train]                           # any [model]/[data]/[train] table overrides
lr = 1e-3
```

Every variant gets the same data, tokenizer and training budget unless it overrides them, which
`plan` reports. A variant whose matched figure is more than `tolerance` off the first variant's is
an error: the comparison would not be at equal parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmlab.config import RunConfig, deep_merge, read_toml, run_config_from_dict
from llmlab.errors import ConfigError
from llmlab.model.accounting import count

CAMPAIGN_KEYS = ("name", "match", "tolerance", "generate", "variant")
MATCH_KEYS = ("active_non_embedding", "active", "non_embedding", "total", "none")


@dataclass
class GenerateSpec:
    prompt: str = "The "
    max_new_tokens: int = 64
    repeats: int = 3


@dataclass
class Variant:
    name: str
    config: RunConfig
    params: dict[str, int]


@dataclass
class Campaign:
    name: str
    match: str
    tolerance: float
    generate: GenerateSpec
    variants: list[Variant] = field(default_factory=list)


def load_campaign(path: str | Path, overrides: list[str] = ()) -> Campaign:
    """Read, merge and validate a campaign; `overrides` (--set) apply to every variant."""
    from llmlab.config import apply_overrides

    path = Path(path)
    data = read_toml(path)
    shared = {k: v for k, v in data.items() if k not in CAMPAIGN_KEYS}
    specs = data.get("variant", [])
    if not specs:
        raise ConfigError(f"{path}: a campaign needs at least one [[variant]]")
    match = data.get("match", "active_non_embedding")
    if match not in MATCH_KEYS:
        raise ConfigError(f"{path}: match must be one of {', '.join(MATCH_KEYS)}; got {match!r}")
    try:
        gen = GenerateSpec(**data.get("generate", {}))
    except TypeError as e:
        raise ConfigError(f"{path}: [generate]: {e}") from None
    campaign = Campaign(data.get("name", path.stem), match, float(data.get("tolerance", 0.01)), gen)
    names = set()
    for spec in specs:
        name = spec.get("name")
        if not name or name in names:
            raise ConfigError(f"{path}: every [[variant]] needs a unique name; got {name!r}")
        names.add(name)
        base, own = _variant_tables(path, spec)
        merged = apply_overrides(deep_merge(deep_merge(base, shared), own), list(overrides))
        cfg = run_config_from_dict(merged)
        campaign.variants.append(Variant(name, cfg, count(cfg.model, seq_len=cfg.train.seq_len)))
    check_match(campaign)
    return campaign


def _variant_tables(path: Path, spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the variant's included files merged, its own tables). Merge order for a variant: included
    files (its model), then the campaign's shared tables, then the variant's own tables, as a run
    config's `include = [model, recipe]` does: the shared recipe (vocabulary, data, budget) applies
    to every variant; what a variant writes itself wins."""
    unknown = set(spec) - {"name", "include", "model", "data", "train"}
    if unknown:
        raise ConfigError(f"{path}: unknown key variant.{sorted(unknown)[0]} (valid: name, include, model, data, train)")
    includes = spec.get("include", [])
    base: dict[str, Any] = {}
    for inc in [includes] if isinstance(includes, str) else includes:
        base = deep_merge(base, read_toml(path.parent / inc))
    return base, {k: spec[k] for k in ("model", "data", "train") if k in spec}


def check_match(campaign: Campaign) -> None:
    if campaign.match == "none":
        return
    ref = campaign.variants[0]
    for v in campaign.variants[1:]:
        a, b = ref.params[campaign.match], v.params[campaign.match]
        if abs(b / a - 1) > campaign.tolerance:
            raise ConfigError(
                f"variant {v.name!r} has {campaign.match} = {b:,}, {b / a - 1:+.1%} from {ref.name!r} "
                f"({a:,}); the campaign requires equality within {campaign.tolerance:.0%}: resize it "
                f"(e.g. d_ff or moe.d_ff_expert) or set match = \"none\""
            )


def plan_rows(campaign: Campaign) -> list[dict[str, Any]]:
    """One row per variant: what it is, what it costs, what it will train on."""
    rows = []
    ref = campaign.variants[0].params
    for v in campaign.variants:
        m, t = v.config.model, v.config.train
        rows.append({
            "variant": v.name,
            "heads": f"{m.n_heads}/{m.n_kv_heads}",
            "moe": f"{m.moe.n_experts}x top-{m.moe.top_k}" if m.moe else "-",
            "total": v.params["total"],
            "active_non_embedding": v.params["active_non_embedding"],
            "vs_first": v.params["active_non_embedding"] / ref["active_non_embedding"],
            "kv_bytes_per_token": v.params["kv_cache_bytes_per_token"],
            "flops_per_token": v.params["flops_per_token"],
            "tokens": t.total_steps() * t.tokens_per_update,
            "steps": t.total_steps(),
            "dataset": v.config.data.dataset,
            "tokenizer": v.config.data.tokenizer,
        })
    return rows
