"""Router saturation (OLMoE): hand counts, the captured decision, and a short MoE run."""

from __future__ import annotations

import torch

from llmlab.config import ModelConfig, MoEConfig, load_run_config
from llmlab.model import GPT
from llmlab.train import train
from llmlab.train.routing_probe import (PROBE_WINDOWS, probe_batch, read_routing, router_saturation,
                                        routing_file, saturation, top_k_assignments, truncate_routing)


def test_saturation_equals_a_hand_count():
    # one layer, three tokens, top-2; final decisions vs an earlier step's:
    final = torch.tensor([[[0, 1], [2, 3], [1, 2]]], dtype=torch.int16)
    early = torch.tensor([[[1, 0], [2, 0], [3, 0]]], dtype=torch.int16)
    # token 0: {1,0} vs {0,1} -> 2 kept (order within the top k does not matter)
    # token 1: {2,0} vs {2,3} -> 1 kept;  token 2: {3,0} vs {1,2} -> 0 kept  => 3 of 6 = 0.5
    assert saturation(early, final) == 0.5
    assert saturation(final, final) == 1.0
    two_layers = torch.cat([early, final])  # the second layer already final: (3 + 6) / 12
    assert saturation(two_layers, torch.cat([final, final])) == 0.75


def test_captured_assignments_are_the_routers_decision():
    """The hook's top-k, counted per expert, equals the load the forward pass itself reports."""
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=16,
                      moe=MoEConfig(n_experts=4, top_k=2, dispatch="capacity"))
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    idx = torch.randint(0, 64, (3, 16))
    got = top_k_assignments(model, idx)
    assert got.shape == (2, 48, 2) and got.dtype == torch.int16  # (L_moe, N, K)
    assert all(len(set(row.tolist())) == 2 for row in got.flatten(0, 1))  # distinct experts per token
    counts = torch.stack([torch.bincount(layer.flatten().long(), minlength=4) for layer in got])
    with torch.no_grad():
        load = model(idx).moe_stats["load"]  # (L_moe, E) fraction of assignments per expert
    torch.testing.assert_close(counts.float() / (48 * 2), load)
    assert top_k_assignments(GPT(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, d_ff=64,
                                             max_seq_len=16)), idx) is None


def test_moe_run_records_routing_at_each_eval_and_saturates_at_the_end(make_config, byte_data, tmp_path):
    cfg = load_run_config(make_config("moe", train={"max_steps": 12, "eval_interval": 4}))
    train(cfg, tmp_path / "run")
    recorded = read_routing(tmp_path / "run")
    assert [step for step, _ in recorded] == [4, 8, 12]
    assert recorded[0][1].shape == (2, PROBE_WINDOWS * 32, 2)  # 2 MoE layers, 8 windows of 32, top-2
    curve = router_saturation(tmp_path / "run")
    assert curve[-1] == (12, 1.0)
    assert all(0.0 <= share <= 1.0 for _, share in curve)
    # the last record is the final weights' decision on the probe
    from llmlab.infer.load import load_run_model

    _, _, model = load_run_model(tmp_path / "run", torch.device("cpu"))
    probe = probe_batch(byte_data, 32, 257)
    torch.testing.assert_close(top_k_assignments(model.eval(), probe), recorded[-1][1])


def test_dense_run_records_no_routing(make_config, tmp_path):
    train(load_run_config(make_config(train={"max_steps": 4, "eval_interval": 2})), tmp_path / "run")
    assert not (tmp_path / "run" / "routing").exists()
    assert router_saturation(tmp_path / "run") == []


def test_a_resume_drops_the_routing_recorded_after_its_checkpoint(tmp_path):
    for step in (4, 8, 12):
        routing_file(tmp_path, step).parent.mkdir(exist_ok=True)
        torch.save(torch.full((1, 2, 2), step, dtype=torch.int16), routing_file(tmp_path, step))
    truncate_routing(tmp_path, 8)  # resuming from the checkpoint of step 8
    assert [step for step, _ in read_routing(tmp_path)] == [4, 8]
    truncate_routing(tmp_path, -1)  # no checkpoint: everything is replayed
    assert read_routing(tmp_path) == [] and router_saturation(tmp_path) == []
