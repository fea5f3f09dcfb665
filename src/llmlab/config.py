"""Typed, self-validating configuration: one run = [model] (+ [model.moe]), [data], [train].

Config files are TOML. A file may start with `include = "other.toml"` (or a list): the included
files are loaded first and this file's tables override them key by key, so a variant is its
baseline plus a few lines (STYLE.md item 4). `--set section.key=value` overrides come last.
Unknown keys are errors (with a "did you mean" hint): a typo must never be silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmlab.errors import ConfigError

NORMS = ("rmsnorm", "layernorm")
POSITIONS = ("rope", "learned")
MLPS = ("swiglu", "gelu")
DISPATCHES = ("grouped", "capacity", "loop")
GROUPED_KERNELS = ("auto", "torch", "triton")
SCHEDULES = ("cosine", "wsd", "constant")
# The one map of precision names users type to torch dtype names (llmlab.device.torch_dtype);
# "auto" picks bf16 on CUDA and fp32 on CPU.
PRECISIONS = {"bf16": "bfloat16", "fp32": "float32"}
DTYPES = ("auto", *PRECISIONS)
COMPILE_MODES = ("default", "max-autotune")
"""Compiled decoding (`generate(compile=...)`, `llmlab.infer.compiled`): default = CUDA graphs on
CUDA, frozen weights on CPU; max-autotune = also the fastest kernel per matmul shape (longer compile)."""
PARALLELISMS = ("ddp", "fsdp")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")


def _positive(name: str, value: int | float | None) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


@dataclass
class MoEConfig:
    """Mixture-of-experts feed-forward layers. Present in `ModelConfig.moe` = MoE on."""

    n_experts: int = 8
    """Routed experts per MoE layer (Shazeer et al. 2017; Switch, Fedus et al. 2021)."""
    top_k: int = 2
    """Experts each token is sent to (Mixtral uses 2 of 8)."""
    d_ff_expert: int = 0
    """Hidden width of one expert. 0 = derived: the dense d_ff divided by top_k (same active MLP)."""
    n_shared_experts: int = 0
    """Always-on experts every token also goes through (DeepSeekMoE, Dai et al. 2024)."""
    every_n_layers: int = 1
    """MoE in every layer (1) or every n-th layer, the others dense (GShard interleaving)."""
    renormalize: bool = True
    """Softmax over all experts, keep top-k, renormalise to sum 1 (Mixtral). False: keep raw probs."""
    capacity_factor: float | None = None
    """Capacity per expert = ceil(cf * top_k * tokens / n_experts) for `capacity` dispatch (Switch).
    None = dropless (for `capacity` dispatch: capacity = all tokens, nothing dropped)."""
    aux_loss_coef: float = 1e-2
    """Switch load-balancing loss coefficient (Fedus et al. 2021, eq. 4)."""
    z_loss_coef: float = 1e-3
    """Router z-loss coefficient (ST-MoE, Zoph et al. 2022, eq. 5)."""
    dispatch: str = "grouped"
    """grouped (dropless, top-k work) | capacity (fixed buffers + bmm, drops) | loop (reference)."""
    grouped_kernel: str = "auto"
    """The GEMM of `grouped` dispatch: torch (torch._grouped_mm) | triton (llmlab.model.grouped_gemm) |
    auto = triton on CUDA GPUs below sm90, where torch._grouped_mm syncs with the host and loops over
    experts (pytorch/pytorch#186620), torch elsewhere. The same function either way: only speed differs."""

    def __post_init__(self) -> None:
        _positive("model.moe.n_experts", self.n_experts)
        _positive("model.moe.top_k", self.top_k)
        _positive("model.moe.every_n_layers", self.every_n_layers)
        _positive("model.moe.capacity_factor", self.capacity_factor)
        if self.d_ff_expert < 0:
            raise ConfigError(f"model.moe.d_ff_expert must be >= 0 (0 = derived), got {self.d_ff_expert}")
        if self.n_shared_experts < 0:
            raise ConfigError(f"model.moe.n_shared_experts must be >= 0, got {self.n_shared_experts}")
        if self.top_k > self.n_experts:
            raise ConfigError(
                f"model.moe.top_k ({self.top_k}) must not exceed model.moe.n_experts ({self.n_experts})"
            )
        if self.aux_loss_coef < 0 or self.z_loss_coef < 0:
            raise ConfigError("model.moe.aux_loss_coef and z_loss_coef must be >= 0")
        _choice("model.moe.dispatch", self.dispatch, DISPATCHES)
        _choice("model.moe.grouped_kernel", self.grouped_kernel, GROUPED_KERNELS)
        if self.grouped_kernel != "auto" and self.dispatch != "grouped":
            raise ConfigError(
                f"model.moe.grouped_kernel ({self.grouped_kernel!r}) only applies to dispatch = 'grouped', "
                f"not {self.dispatch!r}; remove it or set model.moe.dispatch = \"grouped\""
            )
        if self.capacity_factor is not None and self.dispatch != "capacity":
            raise ConfigError(
                f"model.moe.capacity_factor ({self.capacity_factor}) only applies to dispatch = 'capacity' "
                f"('{self.dispatch}' is dropless); remove it or set model.moe.dispatch = \"capacity\""
            )


@dataclass
class ModelConfig:
    """A pre-norm decoder-only transformer. Defaults are a modern (Llama-style) small GPT."""

    vocab_size: int = 50257
    """Tokenizer vocabulary (GPT-2 BPE: 50257)."""
    d_model: int = 768
    """Residual stream width."""
    n_layers: int = 12
    n_heads: int = 12
    """Query heads."""
    n_kv_heads: int = 0
    """Key/value heads (Ainslie et al. 2023, GQA). 0 = n_heads (multi-head); 1 = multi-query (Shazeer 2019)."""
    head_dim: int = 0
    """Width of one head. 0 = d_model // n_heads. Set it to grow n_heads at a fixed head width:
    the attention width n_heads * head_dim may then differ from d_model."""
    d_ff: int = 0
    """Dense MLP hidden width. 0 = 4 * d_model for gelu, 8/3 * d_model rounded up to 64 for swiglu."""
    max_seq_len: int = 1024
    """Longest sequence (learned position table size; KV cache default)."""
    norm: str = "rmsnorm"
    """rmsnorm (Zhang & Sennrich 2019) | layernorm (GPT-2)."""
    pos: str = "rope"
    """rope (Su et al. 2021) | learned absolute positions (GPT-2)."""
    mlp: str = "swiglu"
    """swiglu (Shazeer 2020) | gelu (GPT-2)."""
    bias: bool = False
    """Biases in linear layers and layernorm (GPT-2: true)."""
    tie_embeddings: bool = True
    """Share the token embedding and output projection (Press & Wolf 2017)."""
    dropout: float = 0.0
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    pad_vocab_multiple: int = 1
    """Pad the embedding rows to a multiple of this (64: 50257 -> 50304, faster matmuls).
    Padded logits are masked to -inf, so results do not change."""
    moe: MoEConfig | None = None
    """Mixture-of-experts feed-forward; None = dense."""

    def __post_init__(self) -> None:
        if isinstance(self.moe, dict):
            self.moe = build_dataclass(MoEConfig, self.moe, "model.moe")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len", "pad_vocab_multiple"):
            _positive(f"model.{name}", getattr(self, name))
        for name in ("n_kv_heads", "head_dim", "d_ff"):
            if getattr(self, name) < 0:
                raise ConfigError(f"model.{name} must be >= 0 (0 = derived), got {getattr(self, name)}")
        _choice("model.norm", self.norm, NORMS)
        _choice("model.pos", self.pos, POSITIONS)
        _choice("model.mlp", self.mlp, MLPS)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.n_kv_heads == 0:
            self.n_kv_heads = self.n_heads
        if self.n_heads % self.n_kv_heads != 0:
            raise ConfigError(
                f"model.n_heads ({self.n_heads}) must be divisible by model.n_kv_heads ({self.n_kv_heads})"
            )
        if self.head_dim == 0:
            if self.d_model % self.n_heads != 0:
                raise ConfigError(
                    f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads}),"
                    " or set model.head_dim explicitly"
                )
            self.head_dim = self.d_model // self.n_heads
        if self.pos == "rope" and self.head_dim % 2 != 0:
            raise ConfigError(f"model.head_dim ({self.head_dim}) must be even with pos = 'rope'")
        if self.d_ff == 0:
            self.d_ff = 4 * self.d_model if self.mlp == "gelu" else _round_up(8 * self.d_model // 3, 64)
        if self.moe is not None and self.moe.d_ff_expert == 0:
            self.moe.d_ff_expert = max(1, self.d_ff // self.moe.top_k)
        if self.moe is not None:
            check_grouped_alignment(self.d_model, self.moe)

    @property
    def padded_vocab_size(self) -> int:
        return _round_up(self.vocab_size, self.pad_vocab_multiple)

    @property
    def n_groups(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv_heads

    def is_moe_layer(self, layer: int) -> bool:
        """Layer i is MoE when (i + 1) % every_n_layers == 0 (the last layer of each group)."""
        return self.moe is not None and (layer + 1) % self.moe.every_n_layers == 0


@dataclass
class DataConfig:
    """Which corpus, tokenized how, stored where."""

    dataset: str = "pydocs"
    """wikitext-103 | wikitext-2 | pydocs (embedded, offline) | a folder of .txt files."""
    tokenizer: str = "gpt2"
    """gpt2 | byte | a path to a trained tokenizer.json."""
    dir: str = ""
    """Prepared token files. "" = data/<dataset>-<tokenizer>. Prepared on first use when missing."""
    source_dir: str = ""
    """Local copy of the raw data set (WikiText raw or parquet files), for offline machines."""
    tokenizer_file: str = ""
    """A local gpt2.tiktoken ranks file, when tiktoken cannot download one."""

    def __post_init__(self) -> None:
        if not self.dataset:
            raise ConfigError("data.dataset must not be empty")
        if not self.tokenizer:
            raise ConfigError("data.tokenizer must not be empty")

    @property
    def resolved_dir(self) -> Path:
        if self.dir:
            return Path(self.dir)
        name = Path(self.dataset).name if "/" in self.dataset else self.dataset
        tok = Path(self.tokenizer).stem if self.tokenizer.endswith(".json") else self.tokenizer
        return Path("data") / f"{name}-{tok}"


@dataclass
class TrainConfig:
    """The training recipe. Tokens per update is the unit of budget; accumulation is derived."""

    seq_len: int = 256
    micro_batch_size: int = 8
    tokens_per_update: int = 0
    """Tokens per optimizer step over all processes. 0 = micro_batch_size * seq_len (no accumulation).
    grad_accum = tokens_per_update / (micro_batch_size * seq_len * world_size), exact or an error."""
    max_tokens: int = 0
    """Training budget in tokens (rounded down to whole updates). Set this or max_steps."""
    max_steps: int = 0
    lr: float = 6e-4
    min_lr: float = 6e-5
    warmup: int = 100
    """Linear warm-up steps."""
    schedule: str = "cosine"
    """cosine (Loshchilov & Hutter 2017) | wsd (warmup-stable-decay, Hu et al. 2024) | constant."""
    decay_frac: float = 0.2
    """wsd: fraction of the steps spent in the final linear decay."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay (Loshchilov & Hutter 2019), on >= 2-D weights only."""
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = off)."""
    dtype: str = "auto"
    """auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N."""
    compile: bool = False
    """torch.compile the model for the train and eval steps."""
    compile_backend: str = "inductor"
    """torch.compile backend: inductor (generated kernels) | aot_eager | eager. The last two capture
    the same graphs without generating code: for debugging graph breaks and for fast CPU tests."""
    seed: int = 0
    eval_interval: int = 100
    """Evaluate on the fixed validation windows every this many steps (0 = only at the end)."""
    eval_windows: int = 64
    """Number of fixed validation windows of seq_len tokens."""
    eval_stride: int = 0
    """Sliding-window evaluation: windows of seq_len start every eval_stride tokens and score only
    their last eval_stride tokens, so each token (after the first window) is predicted from at least
    seq_len - eval_stride tokens of context, as WikiText perplexities are usually reported. Costs
    seq_len / eval_stride times the forward passes. 0 = non-overlapping windows (= seq_len)."""
    ckpt_interval: int = 100
    """Checkpoint every this many steps (0 = only at the end)."""
    keep_checkpoints: int = 2
    ckpt_at: list[int] = field(default_factory=list)
    """Further checkpoints at exactly these steps, never pruned by keep_checkpoints: the stable run
    of a campaign's decay branches keeps one at each branch's decay start (train/branch.py)."""
    log_interval: int = 10
    parallelism: str = "ddp"
    """Multi-process training under torchrun: ddp | fsdp (FSDP2 fully_shard)."""

    def __post_init__(self) -> None:
        for name in ("seq_len", "micro_batch_size", "lr", "keep_checkpoints", "log_interval", "eval_windows"):
            _positive(f"train.{name}", getattr(self, name))
        for name in ("tokens_per_update", "max_tokens", "max_steps", "warmup", "eval_interval",
                     "ckpt_interval", "min_lr", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.eval_stride <= self.seq_len:
            raise ConfigError(f"train.eval_stride ({self.eval_stride}) must be between 0 (= seq_len) and "
                              f"train.seq_len ({self.seq_len})")
        if not isinstance(self.ckpt_at, list) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in self.ckpt_at):
            raise ConfigError(f"train.ckpt_at must be a list of steps >= 1, got {self.ckpt_at!r}")
        _choice("train.schedule", self.schedule, SCHEDULES)
        _choice("train.dtype", self.dtype, DTYPES)
        _choice("train.parallelism", self.parallelism, PARALLELISMS)
        _choice("train.compile_backend", self.compile_backend, COMPILE_BACKENDS)
        if not 0.0 < self.decay_frac <= 1.0:
            raise ConfigError(f"train.decay_frac must be in (0, 1], got {self.decay_frac}")
        if self.min_lr > self.lr:
            raise ConfigError(f"train.min_lr ({self.min_lr}) must not exceed train.lr ({self.lr})")
        if self.tokens_per_update == 0:
            self.tokens_per_update = self.micro_batch_size * self.seq_len

    def grad_accum(self, world_size: int = 1) -> int:
        """Micro-steps per update on each process; raises when tokens_per_update does not divide."""
        per_micro = self.micro_batch_size * self.seq_len * world_size
        if self.tokens_per_update % per_micro != 0:
            raise ConfigError(
                f"train.tokens_per_update ({self.tokens_per_update}) must be a multiple of "
                f"micro_batch_size ({self.micro_batch_size}) x seq_len ({self.seq_len}) x "
                f"world_size ({world_size}) = {per_micro}"
            )
        return self.tokens_per_update // per_micro

    def total_steps(self) -> int:
        """Optimizer steps in the budget (max_steps wins when both are set)."""
        if self.max_steps:
            return self.max_steps
        if self.max_tokens:
            return max(1, self.max_tokens // self.tokens_per_update)
        raise ConfigError("set train.max_tokens or train.max_steps (the training budget)")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.train.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"train.seq_len ({self.train.seq_len}) must not exceed model.max_seq_len ({self.model.max_seq_len})"
            )

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# ---------------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, with unknown keys rejected


def build_dataclass(cls: type, values: dict[str, Any], where: str) -> Any:
    """cls(**values), but an unknown key is a ConfigError naming it and the closest valid key."""
    if not isinstance(values, dict):
        raise ConfigError(f"[{where}] must be a table, got {type(values).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            hint = difflib.get_close_matches(key, names, n=1)
            did = f" (did you mean {where}.{hint[0]}?)" if hint else f" (valid keys: {', '.join(names)})"
            raise ConfigError(f"unknown key {where}.{key}{did}")
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    for key, value in values.items():
        _check_type(f"{where}.{key}", value, types[key])
    try:
        return cls(**values)
    except TypeError as e:  # pragma: no cover - guarded by the checks above
        raise ConfigError(f"[{where}]: {e}") from None


def _check_type(name: str, value: Any, annotation: str) -> None:
    """Reject e.g. n_heads = "12" or lr = "fast" with a message naming the field."""
    ann = str(annotation)
    if value is None:
        if "None" not in ann:
            raise ConfigError(f"{name} must not be empty")
        return
    if ann.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif ann.startswith("float"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif ann.startswith("bool"):
        ok = isinstance(value, bool)
    elif ann.startswith("str"):
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        raise ConfigError(f"{name} must be of type {ann.split(' ')[0]}, got {value!r}")


def model_config_from_dict(values: dict[str, Any]) -> ModelConfig:
    return build_dataclass(ModelConfig, values, "model")


def run_config_from_dict(values: dict[str, Any]) -> RunConfig:
    unknown = set(values) - {"model", "data", "train"}
    if unknown:
        raise ConfigError(f"unknown table [{sorted(unknown)[0]}] (valid: [model], [data], [train])")
    return RunConfig(
        model=build_dataclass(ModelConfig, values.get("model", {}), "model"),
        data=build_dataclass(DataConfig, values.get("data", {}), "data"),
        train=build_dataclass(TrainConfig, values.get("train", {}), "train"),
    )


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a plain dict, dropping None values (TOML has no null)."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        if value is not None:
            out[f.name] = value
    return out


# ---------------------------------------------------------------------------------------------
# TOML files, includes and --set overrides


def read_toml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a TOML file, resolving `include` (relative to the file) recursively."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"include cycle through {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    includes = data.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    merged: dict[str, Any] = {}
    for inc in includes:
        merged = deep_merge(merged, read_toml(path.parent / inc, _seen + (path.resolve(),)))
    return deep_merge(merged, data)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=3e-4' -> (['train', 'lr'], 0.0003). Values are TOML literals; bare words are strings."""
    if "=" not in text:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"--set key must look like section.key (e.g. train.lr), got {key!r}")
    raw = raw.strip()
    if raw.lower() in ("none", "null"):
        return parts, None
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = deep_merge({}, data)
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text}: {part} is not a table")
        if value is None:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return data


def load_run_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """A run config (or a model-only config: data and train take their defaults)."""
    return run_config_from_dict(apply_overrides(read_toml(path), list(overrides)))


def load_model_config(path: str | Path, overrides: list[str] = ()) -> ModelConfig:
    data = apply_overrides(read_toml(path), list(overrides))
    if "model" not in data:
        raise ConfigError(f"{path}: no [model] table")
    return model_config_from_dict(data["model"])


def dump_toml(data: dict[str, Any]) -> str:
    """Write a nested dict of scalars as TOML (enough for our configs; stdlib has no writer)."""
    lines: list[str] = []

    def emit(table: dict[str, Any], prefix: str) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in table.items() if isinstance(v, dict)}
        if prefix and scalars:
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {_toml_value(v)}")
        if prefix and scalars:
            lines.append("")
        for k, v in tables.items():
            emit(v, f"{prefix}.{k}" if prefix else k)

    emit(data, "")
    return "\n".join(lines).rstrip() + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else "nan")
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ConfigError(f"cannot write {v!r} to TOML")


def check_grouped_alignment(d_model: int, moe: MoEConfig) -> None:
    """`grouped` dispatch needs widths that are multiples of 8: torch._grouped_mm wants 16-byte
    aligned rows (8 bf16 elements). Checked by ModelConfig and by MoE itself (built directly in tests
    and benchmarks)."""
    if moe.dispatch == "grouped" and (d_model % 8 or moe.d_ff_expert % 8):
        raise ConfigError(
            f"model.moe.dispatch = 'grouped' needs model.d_model ({d_model}) and model.moe.d_ff_expert "
            f"({moe.d_ff_expert}) to be multiples of 8 (torch._grouped_mm alignment); "
            "resize them or use dispatch = 'capacity'"
        )


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as dotted keys: {"train": {"lr": 1}} -> {"train.lr": 1}."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
