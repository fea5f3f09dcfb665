"""A campaign: shared settings + `[[variant]]` overrides + a matching rule, planned before any run.

```toml
include = "../runs/_pydocs-tiny.toml"     # shared [data], [train] and [model] keys (e.g. vocab_size)
match = "active_non_embedding"            # what every variant must have equal, within tolerance
tolerance = 0.01
seeds = [0, 1, 2]                         # every variant at every seed (default: [train.seed])

[sweep]                                   # optional: each variant's LR chosen on the same tokens
lr = [1e-3, 2e-3, 4e-3]                   # the grid (runlist.py: lowest final val loss wins)
fraction = 0.5                            # share of the budget each sweep run trains on
seeds = [0, 1]                            # optional: the sweep at several seeds (default: the first seed)
eval_windows = 256                        # optional: a larger validation set for the sweep runs

[budgets]                                 # optional: the answer at several budgets (decay branches)
fractions = [0.25, 0.5]                   # besides the full budget; needs train.schedule = "wsd"

[generate]                                # the inference sweep after training
contexts = [64, 192]                      # sequence length at the last decoded token
batch_sizes = [1, 8]
new_tokens = 32                           # decode steps timed at each point
compile = "auto"                          # compiled decode too: auto = on CUDA only; "max-autotune" = everywhere
prompt = "def "                           # the sample printed in the report
max_new_tokens = 64

[[variant]]
name = "base"
include = "../models/tiny.toml"           # relative to the campaign file; shared keys override it
[[variant]]
name = "base+gqa"
include = "../models/tiny-gqa.toml"
[variant.train]                           # any [model]/[data]/[train] table overrides
lr = 1e-3
[[variant]]
name = "base+gqa (kv only)"
ablation = true                           # exempt from the match, labelled everywhere
include = "../models/tiny.toml"
[variant.model]
n_kv_heads = 2
```

Every variant gets the same data, tokenizer, seq_len, tokens per update, budget and seed: a
variant that changes any of them (RECIPE_KEYS) is refused unless it is marked `ablation = true`.
A variant whose matched figure is more than `tolerance` off the first variant's is an error: the
comparison would not be at equal parameters. Ablations are exempt from both rules and are
labelled as such in the plan and the report, never silently treated as iso-parameter (DESIGN.md 9).
Run directories are `<out>/<variant>/sweep/lr-X` and `<out>/<variant>/seed-N` (runlist.py);
with `[budgets]`, also `<out>/<variant>/stable/seed-N` and `<out>/<variant>/budget-U/seed-N`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from llmlab.config import RunConfig, apply_overrides, deep_merge, flatten, read_toml, run_config_from_dict
from llmlab.errors import ConfigError
from llmlab.model.accounting import count
from llmlab.train.schedule import wsd_decay_start

CAMPAIGN_KEYS = ("name", "match", "tolerance", "generate", "variant", "sweep", "seeds", "budgets")
MATCH_KEYS = ("active_non_embedding", "active", "non_embedding", "total", "none")
# What "equal data and budget" means: a non-ablation variant must share these with the first one.
RECIPE_KEYS = ("data.dataset", "data.tokenizer", "data.dir", "train.seq_len", "train.tokens_per_update",
               "train.max_tokens", "train.max_steps", "train.seed")


@dataclass
class GenerateSpec:
    """The inference sweep: decode tokens/s at each (context, batch size), with and without the
    KV cache (and compiled, where it pays), prefill timed apart; then one sampled text."""

    contexts: list[int] = field(default_factory=lambda: [64])
    """Sequence lengths reached: a prompt of context - new_tokens tokens, then new_tokens decoded
    (llmlab.infer.measure.measure_decode), so the last step attends over `context` positions."""
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    new_tokens: int = 32
    """Tokens generated at each point: the first ends prefill (time to first token), the rest are
    decode. new_tokens < every context <= every variant's max_seq_len."""
    compile: bool | str = "auto"
    """Also time a torch.compile'd decode step: true | false | "auto" (on CUDA only: on a CPU one
    compilation per (context, batch) point takes 6-16 s, longer than the sweep's decoding) |
    "max-autotune" (on every device, also choosing the fastest kernel per matmul shape: the fastest
    CPU decoding, for a longer compile)."""
    repeats: int = 3
    """Interleaved repeats per case; the median is reported."""
    prompt: str = "The "
    """The sample's prompt (temperature 0.8, top-k 50), printed in the report."""
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        for name in ("contexts", "batch_sizes"):
            values = getattr(self, name)
            if not isinstance(values, list) or not values or not all(isinstance(v, int) and v > 0 for v in values):
                raise ConfigError(f"generate.{name} must be a non-empty list of positive integers; got {values!r}")
        for name in ("new_tokens", "repeats", "max_new_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"generate.{name} must be a positive integer; got {getattr(self, name)!r}")
        if self.compile not in (True, False, "auto", "max-autotune"):
            raise ConfigError(f'generate.compile must be true, false, "auto" or "max-autotune"; got {self.compile!r}')

    def compiled_on(self, device_type: str) -> bool:
        return device_type == "cuda" if self.compile == "auto" else bool(self.compile)

    @property
    def compile_mode(self) -> str:
        """The compiled case's mode (llmlab.config.COMPILE_MODES)."""
        return "max-autotune" if self.compile == "max-autotune" else "default"


@dataclass
class SweepSpec:
    """`[sweep]`: a learning-rate grid every variant runs on the same tokens (the first seed, a
    fraction of the budget); the LR with the lowest final validation loss is used for its full runs.
    DESIGN.md 9: each variant at its own tuned learning rate."""

    lr: list[float] = field(default_factory=list)
    fraction: float = 1.0
    """Share of the budget each sweep run trains on (rounded down to whole updates, at least one);
    its schedule (warm-up, cosine) is the full run's compressed to that length. A shorter sweep
    favours higher learning rates a little: the rule is stated in the report."""
    seeds: list[int] = field(default_factory=list)
    """Seeds each grid LR runs at (empty: the campaign's first seed); the choice is on the mean
    final validation loss over them, so one seed's luck does not pick the rate."""
    eval_windows: int = 0
    """Validation windows of a sweep run (0: the variant's train.eval_windows); the choice is only
    as good as this estimate of the validation loss."""

    def __post_init__(self) -> None:
        self._check_seeds_and_windows()
        lrs = self.lr
        if not isinstance(lrs, list) or len(lrs) < 2 or not all(isinstance(x, (int, float)) and x > 0 for x in lrs):
            raise ConfigError(f"sweep.lr must be a list of at least two positive learning rates; got {lrs!r}")
        if len(set(lrs)) != len(lrs):
            raise ConfigError(f"sweep.lr has a repeated value: {lrs!r}")
        self.lr = sorted(float(x) for x in lrs)
        if not isinstance(self.fraction, (int, float)) or not 0 < self.fraction <= 1:
            raise ConfigError(f"sweep.fraction must be in (0, 1]; got {self.fraction!r}")

    def _check_seeds_and_windows(self) -> None:
        seeds = self.seeds
        if not isinstance(seeds, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                                                  for x in seeds) or len(set(seeds)) != len(seeds):
            raise ConfigError(f"sweep.seeds must be a list of distinct integers >= 0; got {seeds!r}")
        if isinstance(self.eval_windows, bool) or not isinstance(self.eval_windows, int) or self.eval_windows < 0:
            raise ConfigError(f"sweep.eval_windows must be an integer >= 0 (0: the variant's); got {self.eval_windows!r}")


@dataclass
class BudgetSpec:
    """`[budgets]`: each variant's answer at several budgets for little more than one run's cost,
    by decay branches of a warmup-stable-decay run (Hägele et al. 2024, "Scaling Laws and
    Compute-Optimal Training Beyond Fixed Training Durations"; train/branch.py). Per variant and
    seed: one *stable* run at the constant peak rate up to the latest decay start, checkpointed at
    every branch's decay start; from each checkpoint a short decay to that budget. The full budget
    (1.0) is always one of them: its branch is the seed run `<variant>/seed-N` the rest of the
    report reads. A branch equals the WSD run of its budget trained from scratch with the full
    run's warm-up (tests/train/test_branch.py)."""

    fractions: list[float] = field(default_factory=list)
    """Budgets besides the full one, as fractions of it (each rounded down to whole updates)."""

    def __post_init__(self) -> None:
        f = self.fractions
        if (not isinstance(f, list) or not f or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                        and 0 < x < 1 for x in f) or len(set(f)) != len(f)):
            raise ConfigError(f"budgets.fractions must be a non-empty list of distinct fractions in (0, 1) (the "
                              f"full budget, 1, is always run); got {f!r}")
        self.fractions = sorted(float(x) for x in f)


@dataclass
class Variant:
    name: str
    config: RunConfig
    params: dict[str, int]
    ablation: bool = False
    """Exempt from the parameter match and the equal-recipe rule; labelled as an ablation."""


@dataclass
class Campaign:
    name: str
    match: str
    tolerance: float
    generate: GenerateSpec
    variants: list[Variant] = field(default_factory=list)
    sweep: SweepSpec | None = None
    """None: each variant trains at its config's train.lr."""
    seeds: list[int] = field(default_factory=list)
    """Every variant runs at every seed (init and data order: seed s is paired across variants);
    empty in the file = [the shared train.seed]."""
    budgets: BudgetSpec | None = None
    """None: each seed run is one run at the full budget."""


def load_campaign(path: str | Path, overrides: list[str] = ()) -> Campaign:
    """Read, merge and validate a campaign; `overrides` (--set) apply to every variant."""
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
    campaign = Campaign(data.get("name", path.stem), match, float(data.get("tolerance", 0.01)), gen,
                        sweep=_table(path, "sweep", SweepSpec, data.get("sweep")), seeds=_seeds(path, data.get("seeds")),
                        budgets=_table(path, "budgets", BudgetSpec, data.get("budgets")))
    names = set()
    for spec in specs:
        name = spec.get("name")
        if not name or name in names:
            raise ConfigError(f"{path}: every [[variant]] needs a unique name; got {name!r}")
        names.add(name)
        base, own = _variant_tables(path, spec)
        merged = apply_overrides(deep_merge(deep_merge(base, shared), own), list(overrides))
        cfg = run_config_from_dict(merged)
        ablation = spec.get("ablation", False)
        if not isinstance(ablation, bool):
            raise ConfigError(f"{path}: variant {name!r}: ablation must be true or false; got {ablation!r}")
        if not ablation:
            check_dropping(name, cfg, explicit=_sets_capacity_factor([shared, own], overrides))
        campaign.variants.append(Variant(name, cfg, count(cfg.model, seq_len=cfg.train.seq_len), ablation))
    if campaign.variants[0].ablation:
        raise ConfigError(f"{path}: the first variant is the baseline and cannot be an ablation")
    check_recipe(campaign)
    check_match(campaign)
    check_generate(campaign)
    check_budgets(campaign)
    campaign.seeds = campaign.seeds or [campaign.variants[0].config.train.seed]
    return campaign


def _table(path: Path, name: str, spec: type, table: Any) -> Any:
    """A [name] table of the campaign file as its spec dataclass (None when absent); an unknown or
    missing key is a one-line error listing the keys."""
    if table is None:
        return None
    try:
        return spec(**table)
    except TypeError as e:
        keys = ", ".join(f.name for f in fields(spec))
        raise ConfigError(f"{path}: [{name}]: {e} (keys: {keys})") from None


def budget_steps(cfg: RunConfig, fraction: float) -> int:
    """Updates of the budget `fraction` of cfg's (rounded down)."""
    return int(cfg.train.total_steps() * fraction)


def check_budgets(campaign: Campaign) -> None:
    """Decay branches need a WSD schedule, and every budget's decay must start after the warm-up
    (the branch shares the stable run's steps up to its decay start) at a distinct update."""
    if campaign.budgets is None:
        return
    for v in campaign.variants:
        t = v.config.train
        if t.schedule != "wsd":
            raise ConfigError(f"[budgets] needs train.schedule = \"wsd\" (a branch decays off a constant-rate run); "
                              f"variant {v.name!r} has {t.schedule!r}: set it in the campaign's [train]")
        starts = []
        for fraction in campaign.budgets.fractions:
            steps = budget_steps(v.config, fraction)
            start = wsd_decay_start(t, steps) if steps > t.warmup else None
            if start is None or start <= t.warmup or start >= steps:
                raise ConfigError(f"[budgets]: fraction {fraction:g} of variant {v.name!r}'s {t.total_steps()} updates "
                                  f"is {steps} updates, too few for a warm-up of {t.warmup} and a decay of "
                                  f"{t.decay_frac:g} of them: raise the fraction or shorten train.warmup")
            starts.append(start)
        if len(set(starts)) != len(starts):
            raise ConfigError(f"[budgets]: fractions {campaign.budgets.fractions} give the same budget in updates for "
                              f"variant {v.name!r}: choose fractions further apart")


def _seeds(path: Path, seeds: Any) -> list[int]:
    if seeds is None:
        return []
    ok = isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                   for s in seeds)
    if not ok or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: seeds must be a non-empty list of distinct integers >= 0; got {seeds!r}")
    return list(seeds)


def _variant_tables(path: Path, spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the variant's included files merged, its own tables). Merge order for a variant: included
    files (its model), then the campaign's shared tables, then the variant's own tables, as a run
    config's `include = [model, recipe]` does: the shared recipe (vocabulary, data, budget) applies
    to every variant; what a variant writes itself wins."""
    unknown = set(spec) - {"name", "ablation", "include", "model", "data", "train"}
    if unknown:
        raise ConfigError(f"{path}: unknown key variant.{sorted(unknown)[0]} "
                          "(valid: name, ablation, include, model, data, train)")
    includes = spec.get("include", [])
    base: dict[str, Any] = {}
    for inc in [includes] if isinstance(includes, str) else includes:
        base = deep_merge(base, read_toml(path.parent / inc))
    return base, {k: spec[k] for k in ("model", "data", "train") if k in spec}


CAPACITY_KEY = "model.moe.capacity_factor"


def _sets_capacity_factor(tables: list[dict[str, Any]], overrides: list[str]) -> bool:
    """Whether the campaign itself (its shared tables, the variant's own, or --set) names
    model.moe.capacity_factor, as opposed to inheriting it from an included model file."""
    return (any(CAPACITY_KEY in flatten(t) for t in tables)
            or any(o.split("=", 1)[0].strip() == CAPACITY_KEY for o in overrides))


def drops_tokens(cfg: RunConfig) -> bool:
    """A capacity dispatch with a factor: assignments beyond an expert's capacity are dropped."""
    moe = cfg.model.moe
    return moe is not None and moe.dispatch == "capacity" and moe.capacity_factor is not None


def check_dropping(name: str, cfg: RunConfig, explicit: bool) -> None:
    """DESIGN.md 9, "the same arm is the same experiment on every device": a compared MoE arm is
    dropless unless the campaign chooses dropping itself, by setting capacity_factor in its own
    tables (an included model file's factor is not a choice made for this comparison)."""
    if drops_tokens(cfg) and not explicit:
        raise ConfigError(
            f"variant {name!r}: model.moe.dispatch = 'capacity' with capacity_factor "
            f"{cfg.model.moe.capacity_factor:g} (from an included file) drops the tokens that overflow an "
            "expert, so it is not the dropless arm it is compared as: use dispatch = \"grouped\" (dropless), "
            f"or accept dropping by setting capacity_factor in that arm's [variant.model.moe] table of the campaign")


def dispatch_text(cfg: RunConfig) -> str:
    """How an arm's MoE dispatches, for the plan and the report: '-' for a dense arm."""
    moe = cfg.model.moe
    if moe is None:
        return "-"
    if moe.dispatch == "capacity":
        return (f"capacity, factor {moe.capacity_factor:g} (drops overflow)" if moe.capacity_factor is not None
                else "capacity, no factor (dropless)")
    return f"{moe.dispatch} (dropless)"


FLOPS_GAP = 0.02
"""Arms compared at equal parameters whose FLOPs per token differ by more than this are named:
the comparison is then also one of compute (DESIGN.md 9: FLOPs are reported beside parameters)."""


def flops_gaps(arms: list[tuple[str, int, bool]]) -> list[str]:
    """One sentence per arm whose FLOPs per token differ from the first (the baseline) by more
    than FLOPS_GAP. arms: (name, FLOPs per token, ablation)."""
    (base, base_flops, _), out = arms[0], []
    for name, flops, ablation in arms[1:]:
        gap = flops / base_flops - 1
        if abs(gap) > FLOPS_GAP:
            out.append(f"{name}{' (ablation)' if ablation else ''} does {gap:+.1%} FLOPs per token against {base} "
                       f"({flops:,} vs {base_flops:,}): more than {FLOPS_GAP:.0%}, so it differs in compute as well "
                       "as in architecture")
    return out


def recipe_diffs(ref: RunConfig, cfg: RunConfig) -> list[tuple[str, Any, Any]]:
    """(key, baseline value, variant value) for each RECIPE_KEYS setting that differs."""
    a, b = flatten(ref.to_dict()), flatten(cfg.to_dict())
    return [(k, a.get(k), b.get(k)) for k in RECIPE_KEYS if a.get(k) != b.get(k)]


def check_recipe(campaign: Campaign) -> None:
    """Equal data, tokenizer, seq_len, tokens per update, budget and seed for every non-ablation."""
    ref = campaign.variants[0]
    for v in campaign.variants[1:]:
        diffs = recipe_diffs(ref.config, v.config)
        if diffs and not v.ablation:
            key, old, new = diffs[0]
            raise ConfigError(
                f"variant {v.name!r} sets {key} = {new!r} ({ref.name!r}: {old!r}); every compared variant "
                "shares the data, tokenizer, seq_len, tokens_per_update, budget and seed: remove the "
                "override or mark the variant ablation = true")


def check_generate(campaign: Campaign) -> None:
    gen = campaign.generate
    if gen.new_tokens >= min(gen.contexts):
        raise ConfigError(f"generate.new_tokens ({gen.new_tokens}) must be below every context "
                          f"(the shortest is {min(gen.contexts)}): the prompt is context - new_tokens tokens")
    for v in campaign.variants:
        if max(gen.contexts) > v.config.model.max_seq_len:
            raise ConfigError(f"generate.contexts: {max(gen.contexts)} exceeds variant {v.name!r}'s "
                              f"model.max_seq_len ({v.config.model.max_seq_len})")


def check_match(campaign: Campaign) -> None:
    if campaign.match == "none":
        return
    ref = campaign.variants[0]
    for v in campaign.variants[1:]:
        if v.ablation:
            continue  # labelled as an ablation instead
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
        diffs = recipe_diffs(campaign.variants[0].config, v.config)
        rows.append({
            "variant": v.name,
            "role": "ablation" if v.ablation else "baseline" if v is campaign.variants[0] else "compared",
            "differs": ", ".join(f"{k}={new!r}" for k, _, new in diffs) or None,
            "heads": f"{m.n_heads}/{m.n_kv_heads}",
            "moe": f"{m.moe.n_experts}x top-{m.moe.top_k}" if m.moe else "-",
            "dispatch": dispatch_text(v.config),
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
