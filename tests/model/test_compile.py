"""torch.compile: no graph breaks in forward+backward, one compilation for every decode position."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend
from torch.testing import assert_close

from llmlab.config import ModelConfig
from llmlab.infer import decode_step, prefill
from llmlab.model import GPT


def tiny(n_kv_heads: int) -> ModelConfig:
    return ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, n_kv_heads=n_kv_heads,
                       head_dim=8, d_ff=64, max_seq_len=48)


def loss_and_grads(fn, model: torch.nn.Module, idx: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Loss of fn (the model or its compiled form) and the gradients it leaves on model."""
    model.zero_grad()
    loss = torch.nn.functional.cross_entropy(fn(idx).logits.flatten(0, 1), idx.flatten())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


# inductor (the real backend) for one variant; aot_eager traces forward and backward the same
# way, without code generation, to keep the suite fast on 2 cores.
@pytest.mark.parametrize("n_kv_heads,backend", [(4, "aot_eager"), (2, "inductor"), (1, "aot_eager")])
def test_forward_backward_compiles_fullgraph(n_kv_heads: int, backend: str) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = GPT(tiny(n_kv_heads))
    idx = torch.randint(0, 64, (2, 16))
    explain = torch._dynamo.explain(lambda i: model(i).logits.sum())(idx)
    assert explain.graph_break_count == 0, explain.break_reasons
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(model, fullgraph=True, backend=counter)  # fullgraph: a break raises
    loss_c, grads_c = loss_and_grads(compiled, model, idx)
    loss_c2, _ = loss_and_grads(compiled, model, idx)
    assert counter.frame_count == 1  # the second step reuses the graph
    loss_e, grads_e = loss_and_grads(model, model, idx)
    assert_close(loss_c, loss_e, atol=1e-5, rtol=1e-5)
    for name, grad in grads_e.items():
        assert_close(grads_c[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_decode_step_compiles_once_for_32_positions() -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = GPT(tiny(2)).eval()
    counter = CompileCounterWithBackend("inductor")
    step = torch.compile(decode_step, fullgraph=True, dynamic=False, backend=counter)
    prompt = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        model.setup_kv_cache(1, 48)
        token = prefill(model, prompt).argmax(-1, keepdim=True)
        fed = [prompt, token]
        compiled_logits = []
        for pos in range(8, 40):
            compiled_logits.append(step(model, token, torch.tensor([pos])))
            token = compiled_logits[-1].argmax(-1, keepdim=True)
            fed.append(token)
        assert counter.frame_count == 1, f"decode step compiled {counter.frame_count} times in 32 positions"
        # and the compiled steps computed the same logits as an uncached forward
        model.clear_kv_cache()
        full = model(torch.cat(fed[:-1], dim=1)).logits[:, 8:]  # positions 8..39
    assert_close(torch.stack(compiled_logits, 1), full, atol=1e-4, rtol=1e-4)
