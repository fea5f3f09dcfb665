"""An llmlab GPT as a Hugging Face `transformers` model with the same weights, in memory.

Layouts (transformers >= 5):
- dense and GQA models -> `LlamaForCausalLM` (Touvron et al. 2023): pre-norm RMSNorm, RoPE in the
  rotate-half layout (channel i pairs with i + head_dim/2, as our `apply_rope`), SwiGLU, no bias,
  tied or untied head, scores scaled by head_dim ** -0.5 (ours: 1 / sqrt(head_dim)). Llama's config
  refuses d_model % n_heads != 0 even with an explicit head_dim (our GQA configs grow n_heads at a
  fixed head width), so those go to `MistralForCausalLM` with `sliding_window = None`: the same
  network under another name.
- MoE models -> `MixtralForCausalLM` (Jiang et al. 2024): its router is softmax over all experts in
  fp32, top-k, renormalised to sum 1, our `MoE.route` with `renormalize = true`; experts are SwiGLU.

Weights map one to one, except: our fused `kv_proj` rows split into k_proj and v_proj (K first);
expert matrices (E, D, F) are transposed into Mixtral's (E, 2F, D) gate+up and (E, D, F) down;
padded vocabulary rows are sliced off. Everything else with no equivalent is refused, naming each
setting (`unsupported`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llmlab.config import ModelConfig, MoEConfig
from llmlab.errors import LLMLabError
from llmlab.infer import generate
from llmlab.model.gpt import GPT
from llmlab.model.moe import MoE

LLAMA, MISTRAL, MIXTRAL = "LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM"


class ExportError(LLMLabError):
    """The model has no Hugging Face equivalent (the message names every setting in the way)."""


def unsupported(cfg: ModelConfig) -> list[str]:
    """Each setting of `cfg` that Llama/Mixtral cannot express, with the reason; [] = exportable."""
    reasons = []
    if cfg.norm != "rmsnorm":
        reasons.append(f"model.norm = {cfg.norm!r} (Llama/Mixtral use RMSNorm)")
    if cfg.pos != "rope":
        reasons.append(f"model.pos = {cfg.pos!r} (Llama/Mixtral use RoPE, no position table)")
    if cfg.mlp != "swiglu":
        reasons.append(f"model.mlp = {cfg.mlp!r} (Llama/Mixtral use SwiGLU)")
    if cfg.bias:
        reasons.append("model.bias = true (Llama/Mixtral have no norm biases; Mixtral none at all)")
    return reasons + (unsupported_moe(cfg.moe) if cfg.moe is not None else [])


def unsupported_moe(moe: MoEConfig) -> list[str]:
    """The MoE settings Mixtral's sparse block cannot express."""
    reasons = []
    if moe.n_shared_experts:
        reasons.append(f"model.moe.n_shared_experts = {moe.n_shared_experts} (Mixtral has no shared experts)")
    if moe.every_n_layers != 1:
        reasons.append(f"model.moe.every_n_layers = {moe.every_n_layers} (Mixtral has MoE in every layer)")
    if not moe.renormalize:
        reasons.append("model.moe.renormalize = false (Mixtral always renormalises the top-k weights)")
    return reasons


def hf_architecture(cfg: ModelConfig) -> str:
    """LlamaForCausalLM, MistralForCausalLM or MixtralForCausalLM; ExportError when none fits."""
    reasons = unsupported(cfg)
    if reasons:
        raise ExportError("no Hugging Face equivalent (Llama/Mixtral layout): " + "; ".join(reasons))
    if cfg.moe is not None:
        return MIXTRAL
    return LLAMA if cfg.d_model % cfg.n_heads == 0 else MISTRAL


def routing_notes(cfg: ModelConfig) -> list[str]:
    """Where the exported model computes something else than ours, though with the same weights."""
    if cfg.moe is not None and cfg.moe.dispatch == "capacity" and cfg.moe.capacity_factor is not None:
        return [f"model.moe.capacity_factor = {cfg.moe.capacity_factor}: llmlab drops tokens over an expert's "
                "capacity, Mixtral is dropless; outputs differ exactly where llmlab drops"]
    return []


def require_transformers() -> Any:
    """transformers >= 5 (stacked expert weights, `rope_parameters`), or a one-line error."""
    try:
        import transformers
    except ImportError:
        raise ExportError("Hugging Face export needs transformers and safetensors: pip install -e '.[dev]'") from None
    if int(transformers.__version__.split(".")[0]) < 5:
        raise ExportError(f"Hugging Face export needs transformers >= 5, found {transformers.__version__}: "
                          "pip install -U 'transformers>=5'")
    return transformers


def hf_config(cfg: ModelConfig, eos_token_id: int | None = None, dtype: torch.dtype = torch.float32,
              attn_implementation: str = "sdpa") -> Any:
    """The transformers config of `cfg` (LlamaConfig, MistralConfig or MixtralConfig)."""
    transformers = require_transformers()
    arch = hf_architecture(cfg)
    common: dict[str, Any] = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
        hidden_act="silu", max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
        # Explicit: each family has its own default theta (Mixtral's and Mistral's are 1e6).
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings, attention_dropout=0.0,
        bos_token_id=eos_token_id, eos_token_id=eos_token_id, pad_token_id=None,
        architectures=[arch], dtype=dtype, attn_implementation=attn_implementation,
    )
    if arch == LLAMA:
        return transformers.LlamaConfig(intermediate_size=cfg.d_ff, attention_bias=False, mlp_bias=False, **common)
    if arch == MISTRAL:
        return transformers.MistralConfig(intermediate_size=cfg.d_ff, sliding_window=None, **common)
    moe = cfg.moe
    return transformers.MixtralConfig(
        intermediate_size=moe.d_ff_expert, num_local_experts=moe.n_experts, num_experts_per_tok=moe.top_k,
        router_aux_loss_coef=moe.aux_loss_coef, router_jitter_noise=0.0, sliding_window=None, **common)


# -- weights ---------------------------------------------------------------------------------------


def mixtral_moe_state(moe: MoE, prefix: str = "") -> dict[str, torch.Tensor]:
    """Router and stacked experts in MixtralSparseMoeBlock's names and shapes: gate_up_proj
    (E, 2F, D) = [gate; up] as F.linear weights, down_proj (E, D, F)."""
    gate_up = torch.cat((moe.w_gate_EDF.mT, moe.w_up_EDF.mT), dim=1)
    return {prefix + "gate.weight": moe.router.weight,
            prefix + "experts.gate_up_proj": gate_up,
            prefix + "experts.down_proj": moe.w_down_EFD.mT}


def _block_state(block: nn.Module, cfg: ModelConfig, prefix: str) -> dict[str, torch.Tensor]:
    k, v = block.attn.kv_proj.weight.split(cfg.n_kv_heads * cfg.head_dim)  # rows: K heads, then V heads
    out = {
        prefix + "input_layernorm.weight": block.attn_norm.weight,
        prefix + "self_attn.q_proj.weight": block.attn.q_proj.weight,
        prefix + "self_attn.k_proj.weight": k,
        prefix + "self_attn.v_proj.weight": v,
        prefix + "self_attn.o_proj.weight": block.attn.o_proj.weight,
        prefix + "post_attention_layernorm.weight": block.ffn_norm.weight,
    }
    if isinstance(block.ffn, MoE):
        return out | mixtral_moe_state(block.ffn, prefix + "mlp.")
    return out | {prefix + "mlp.gate_proj.weight": block.ffn.gate.weight,
                  prefix + "mlp.up_proj.weight": block.ffn.up.weight,
                  prefix + "mlp.down_proj.weight": block.ffn.down.weight}


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under transformers' names (views of ours: clone before writing to them)."""
    cfg, V = model.config, model.config.vocab_size
    state = {"model.embed_tokens.weight": model.tok_emb.weight[:V], "model.norm.weight": model.norm.weight,
             "lm_head.weight": model.lm_head.weight[:V]}  # the same tensor as the embedding when tied
    for i, block in enumerate(model.blocks):
        state |= _block_state(block, cfg, f"model.layers.{i}.")
    return state


def to_transformers(model: GPT, *, eos_token_id: int | None = None, attn_implementation: str = "sdpa") -> Any:
    """A transformers PreTrainedModel computing the same function as `model` (its own copy of the
    weights, same dtype and device, eval mode). Raises ExportError when there is no equivalent."""
    transformers = require_transformers()  # optional ([bench] extra): imported on use, after a clear error
    from transformers.initialization import no_init_weights

    ref = model.lm_head.weight
    hf_cfg = hf_config(model.config, eos_token_id, ref.dtype, attn_implementation)
    with no_init_weights():  # skip the random init (12 s at 294M): strict loading overwrites every weight
        hf = getattr(transformers, hf_cfg.architectures[0])(hf_cfg)
    hf.tie_weights()  # part of the init that no_init_weights skips
    with torch.no_grad():  # load_state_dict copies: the two models share no storage
        hf.load_state_dict(hf_state_dict(model), strict=True)
    if model.config.tie_embeddings and hf.lm_head.weight is not hf.model.embed_tokens.weight:
        raise ExportError("transformers did not tie lm_head to embed_tokens (tie_word_embeddings = true)")
    return hf.to(device=ref.device, dtype=ref.dtype).eval()


def moe_to_transformers(moe: MoE, d_model: int, experts_implementation: str = "eager") -> nn.Module:
    """transformers' MixtralSparseMoeBlock with the weights of our MoE layer (bench moe's peer)."""
    require_transformers()  # optional, as above
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    reasons = unsupported_moe(moe.cfg)
    reasons += ["a GELU expert MLP (Mixtral's are SwiGLU)"] * (moe.w_gate_EDF is None)
    reasons += ["expert biases (Mixtral has none)"] * (moe.b_up_EF is not None)
    if reasons:
        raise ExportError("no Mixtral equivalent: " + "; ".join(reasons))
    block = MixtralSparseMoeBlock(MixtralConfig(
        hidden_size=d_model, intermediate_size=moe.cfg.d_ff_expert, num_local_experts=moe.cfg.n_experts,
        num_experts_per_tok=moe.cfg.top_k, experts_implementation=experts_implementation))
    with torch.no_grad():
        block.load_state_dict(mixtral_moe_state(moe), strict=True)
    ref = moe.router.weight
    return block.to(device=ref.device, dtype=ref.dtype)


# -- equal work: proof that a peer computes our function ------------------------------------------


class PeerMismatch(LLMLabError):
    """A benchmark peer that does not compute what our model computes: its figures would mean nothing."""


@torch.no_grad()
def check_same_function(model: GPT, peer: Any, idx: torch.Tensor, greedy_tokens: int = 0, atol: float = 1e-4) -> None:
    """Raise PeerMismatch unless `peer` (a transformers causal LM) gives logits within `atol` of
    ours on idx (B, T) and, when greedy_tokens > 0, the same greedy continuation of idx (both with
    their KV caches). For fp32 models; call it before casting either side to a lower precision."""
    was_training = (model.training, peer.training)
    model.eval(), peer.eval()
    try:
        diff = (peer(idx).logits.float() - model(idx).logits.float()).abs().max().item()
        if not diff <= atol:
            why = "; ".join(routing_notes(model.config)) or "not the same model"
            raise PeerMismatch(f"peer logits differ from llmlab's by {diff:.3g} (> {atol:g}): {why}")
        if greedy_tokens:
            ours = generate(model, idx, greedy_tokens)
            theirs = peer.generate(idx, max_new_tokens=greedy_tokens, min_new_tokens=greedy_tokens, do_sample=False,
                                   attention_mask=torch.ones_like(idx), pad_token_id=0)
            if not torch.equal(ours, theirs):
                pos = int((ours != theirs).any(dim=0).nonzero()[0]) - idx.shape[1]
                raise PeerMismatch(f"peer's greedy tokens differ from llmlab's at new token {pos} "
                                   f"(logits agree within {diff:.2g} on the prompt)")
    finally:
        model.train(was_training[0]), peer.train(was_training[1])
