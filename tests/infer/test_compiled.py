"""Compiled decoding (issue 10): the same greedy tokens as eager, one compilation for all positions."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch._dynamo
import torch._inductor.config
from torch._dynamo.utils import counters

from llmlab.infer import generate
from llmlab.infer.generate import generate_timed

from inferkit import build


@pytest.mark.parametrize("variant", ["dense", "gqa", "moe"])
def test_compiled_decode_gives_eager_tokens_with_one_compilation(variant: str) -> None:
    torch._dynamo.reset()
    counters.clear()
    model = build(variant)
    idx = torch.randint(0, 97, (2, 7))
    compiled, times = generate_timed(model, idx, 30, compile=True)
    assert torch.equal(compiled, generate(model, idx, 30))
    assert counters["stats"]["unique_graphs"] == 1  # one graph for all 29 decode positions
    assert times.compile_s is not None and times.compile_s > 0
    # a second call at the same (batch, cache length) reuses the compiled step: no compilation
    again, times = generate_timed(model, idx, 30, compile=True)
    assert torch.equal(again, compiled)
    assert counters["stats"]["unique_graphs"] == 1 and times.compile_s is None
    with torch.inference_mode():  # and so does a call in another grad context (issue 20)
        served, times = generate_timed(model, idx, 30, compile=True)
    assert torch.equal(served, compiled)
    assert counters["stats"]["unique_graphs"] == 1 and times.compile_s is None


def test_compiled_step_follows_weights_changed_in_place() -> None:
    """Frozen weights are copies: after an in-place edit (an optimizer step, load_state_dict) the
    step is compiled again, never run with the old weights; an unchanged model reuses its step."""
    model = build("gqa")
    idx = torch.randint(0, 97, (1, 5))
    generate(model, idx, 20, compile=True)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.5)
    edited, times = generate_timed(model, idx, 20, compile=True)
    assert times.compile_s is not None  # compiled again for the new weights
    assert torch.equal(edited, generate(model, idx, 20))


def test_compiled_steps_reuse_their_kv_caches() -> None:
    """Each compiled step owns its caches: every call decodes into the same buffers (a CUDA graph
    replays fixed addresses), and the model holds none between calls."""
    model = build("dense")
    idx = torch.randint(0, 97, (1, 5))
    used = []  # the cache buffer attention writes into, at each (eager) prefill; decode uses the same

    def record(module: torch.nn.Module, args: tuple) -> None:
        if not torch.compiler.is_compiling():  # traced away inside the compiled step
            used.append(module.kv_cache.k.data_ptr())

    model.blocks[0].attn.register_forward_pre_hook(record)
    generate(model, idx, 10, compile=True)
    first = set(used)
    used.clear()
    _, times = generate_timed(model, idx, 10, compile=True)
    assert times.compile_s is None and set(used) == first and len(first) == 1
    assert model.kv_cache is None


def test_release_forgets_the_compiled_steps() -> None:
    """A write through .data is invisible to the stamp: release() makes the next call compile."""
    from llmlab.infer.compiled import release

    model = build("gqa")
    idx = torch.randint(0, 97, (1, 5))
    generate(model, idx, 12, compile=True)
    for p in model.parameters():
        p.data.mul_(-1.5)
    release(model)
    edited, times = generate_timed(model, idx, 12, compile=True)
    assert times.compile_s is not None and torch.equal(edited, generate(model, idx, 12))


@pytest.mark.parametrize("bad", ["fast", "reduce-overhead", 1])
def test_compile_mode_must_be_known(bad: object) -> None:
    from llmlab.errors import ConfigError

    with pytest.raises(ConfigError, match="compile must be True, False or one of default, max-autotune"):
        generate(build("dense"), torch.zeros(1, 3, dtype=torch.long), 4, compile=bad)


def test_max_autotune_decode_gives_eager_tokens() -> None:
    model = build("gqa")
    idx = torch.randint(0, 97, (2, 6))
    tuned, times = generate_timed(model, idx, 24, compile="max-autotune")
    assert torch.equal(tuned, generate(model, idx, 24)) and times.compile_s > 0


def test_a_moe_dispatch_that_cannot_compile_is_refused_in_one_line() -> None:
    """grouped dispatch compiles in bf16 only: refused before any work, with the decoding fixes."""
    from llmlab.errors import ConfigError
    from llmlab.model import GPT

    from inferkit import tiny

    cfg = tiny("moe")
    cfg.moe.dispatch = "grouped"
    model = GPT(cfg).eval()
    with pytest.raises(ConfigError, match=r"compiles only in bf16 .* not float32: decode without compile"):
        generate(model, torch.zeros(1, 3, dtype=torch.long), 4, compile=True)
    assert model.kv_cache is None


class CountingBackend:
    """A torch.compile backend that counts compilations (graphs handed to it) and calls of the
    graphs it returns: what a silent recompile or an eager fallback would change."""

    def __init__(self) -> None:
        self.compiled = self.calls = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        self.compiled += 1

        def run(*args: object) -> object:
            self.calls += 1
            return gm.forward(*args)

        return run


def counting(monkeypatch: pytest.MonkeyPatch) -> CountingBackend:
    """Compiled decode steps go through a CountingBackend (no inductor: counted, not timed)."""
    import llmlab.infer.compiled as compiled

    backend = CountingBackend()
    monkeypatch.setattr(compiled, "settings", lambda device, mode="default": ({"backend": backend}, {}))
    return backend


CONTEXTS = {"neither": contextlib.nullcontext, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


@pytest.mark.parametrize("first", list(CONTEXTS))
def test_compiled_step_is_one_graph_in_every_grad_context(first: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20: a step first used in one context (a warm-up) and then in another (a served loop
    under inference_mode) was recompiled silently, unfrozen, inside the timed loop. Every context,
    in any order, now runs the one graph compiled at the first call, once per decode token."""
    backend = counting(monkeypatch)
    model = build("gqa")
    idx = torch.randint(0, 97, (1, 5))
    order = [first] + [c for c in CONTEXTS if c != first] + [first]
    outs = []
    for i, name in enumerate(order):
        with CONTEXTS[name]():
            out, times = generate_timed(model, idx, 12, compile=True)
        outs.append(out)
        assert (times.compile_s is not None) == (i == 0), name  # compiled at the first call only
        assert backend.compiled == 1, f"recompiled in {name} after {order[:i]}"
        assert backend.calls == 1 + 11 * (i + 1)  # warm-up, then 11 decode steps a call: no eager fallback
    assert all(torch.equal(o, outs[0]) for o in outs)
    assert not outs[0].is_inference() and not outs[0].requires_grad  # ordinary ids, whatever the caller


def test_a_thread_count_change_compiles_a_step_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dynamo guards on the thread count: a step called at another count would recompile silently
    (outside the freezing patch); keyed on it, the new count compiles here, reported in compile_s.
    At 2 threads on a CPU the step is compiled at 2 and at 1 and the faster kept (its count recorded);
    the decode loop runs at that count and the caller's count is back after."""
    backend = counting(monkeypatch)
    model = build("gqa")
    idx = torch.randint(0, 97, (1, 5))
    generate(model, idx, 8, compile=True)
    torch.set_num_threads(2)  # the autouse fixture puts 1 back
    _, times = generate_timed(model, idx, 8, compile=True)
    # compiled at 2 threads; the trial times it against the 1-thread step, reused
    assert times.compile_s is not None and backend.compiled == 2 and set(times.thread_trial_ms) == {1, 2}
    assert times.decode_threads == min(times.thread_trial_ms, key=times.thread_trial_ms.get)
    assert torch.get_num_threads() == 2
    _, again = generate_timed(model, idx, 8, compile=True)
    assert again.compile_s is None and again.decode_threads == times.decode_threads and backend.compiled == 2
    torch.set_num_threads(1)
    calls = backend.calls
    _, times = generate_timed(model, idx, 8, compile=True)  # the 1-thread step is still there
    assert times.compile_s is None and backend.compiled == 2 and backend.calls == calls + 7


def test_decode_threads_fixes_the_count_and_restores_the_callers(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = counting(monkeypatch)
    model = build("gqa")
    idx = torch.randint(0, 97, (1, 5))
    seen = []
    model.blocks[0].register_forward_pre_hook(  # eager calls only: traced away inside the compiled step
        lambda m, a: None if torch.compiler.is_compiling() else seen.append(torch.get_num_threads()))
    torch.set_num_threads(2)
    _, times = generate_timed(model, idx, 6, compile=True, decode_threads=1)
    assert backend.compiled == 1 and times.decode_threads == 1 and torch.get_num_threads() == 2
    _, times = generate_timed(model, idx, 6, decode_threads=1)  # eager: prefill at 2, decode at 1
    assert times.decode_threads == 1 and seen[-6:] == [2, 1, 1, 1, 1, 1] and torch.get_num_threads() == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_decode_threads_must_be_a_positive_integer(bad: object) -> None:
    from llmlab.errors import ConfigError

    with pytest.raises(ConfigError, match="decode_threads must be an integer >= 1"):
        generate(build("dense"), torch.zeros(1, 3, dtype=torch.long), 4, decode_threads=bad)


@pytest.mark.parametrize("verbose", [False, True])
def test_max_autotune_prints_one_summary_line_unless_verbose(verbose: bool, capfd: pytest.CaptureFixture) -> None:
    """Inductor's caches off, so that autotuning really runs: by default one llmlab line and none
    of inductor's tables; verbose=True shows the tables (so the quiet case can fail)."""
    torch._dynamo.reset()
    model = build("gqa")
    with torch._inductor.config.patch(fx_graph_cache=False, autotune_local_cache=False):
        generate(model, torch.randint(0, 97, (1, 4)), 4, compile="max-autotune", verbose=verbose)
    err = capfd.readouterr().err
    summary = [line for line in err.splitlines() if line.startswith("llmlab: max-autotune decode step: autotuned")]
    assert len(summary) == 1
    assert ("AUTOTUNE " in err) is verbose and ("Autotune Choices Stats" in err) is verbose
