"""The audit's train step calls the model the way a training loop does: model(idx, targets) when
forward takes targets (nanoGPT) or labels (Hugging Face), backpropagating the loss the model
returns; model(idx) and the audit's own loss otherwise. Eager only: no compilation here."""

from __future__ import annotations

import types

import torch
from torch import nn

from llmlab.audit.dynamic import TrainStep

IDX = torch.randint(0, 16, (2, 5))


class LM(nn.Module):
    """A tiny LM; subclasses choose forward's signature and what it returns."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(16, 16)
        self.seen: dict[str, torch.Tensor] = {}

    def logits_and_loss(self, idx: torch.Tensor, targets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.emb(idx)
        self.seen = {"targets": targets}
        loss = None if targets is None else 3.0 * nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


class NanoGPT(LM):
    def forward(self, idx, targets=None):
        return self.logits_and_loss(idx, targets)


class HFStyle(LM):
    def forward(self, input_ids, attention_mask=None, *, labels=None):
        logits, loss = self.logits_and_loss(input_ids, labels)
        return types.SimpleNamespace(logits=logits, loss=loss)


class DictOut(LM):
    def forward(self, idx, use_cache=False, targets=None):
        logits, loss = self.logits_and_loss(idx, targets)
        return {"logits": logits, "loss": loss}


class LossOnlySometimes(LM):
    def forward(self, idx, targets=None):
        return self.logits_and_loss(idx, None)[0], None  # takes targets, never computes a loss


class Plain(LM):
    def forward(self, idx):
        return self.logits_and_loss(idx, None)[0]


def test_nanogpt_forward_gets_next_token_targets_and_its_loss_is_used() -> None:
    model = NanoGPT()
    step = TrainStep.of(model)
    assert step == TrainStep("targets", by_keyword=False)
    loss, path = step.run(model, IDX)
    assert path == "model(idx, targets): the loss the model returns"
    torch.testing.assert_close(model.seen["targets"], IDX.roll(-1, dims=-1))
    torch.testing.assert_close(loss, model(IDX, IDX.roll(-1, dims=-1))[1])  # the model's (3x) loss, not ours


def test_labels_by_keyword_and_a_loss_attribute_or_key() -> None:
    model = HFStyle()
    loss, path = TrainStep.of(model).run(model, IDX)
    assert path == "model(idx, labels=labels): the loss the model returns"
    torch.testing.assert_close(model.seen["targets"], IDX)  # HF models shift labels inside
    torch.testing.assert_close(loss, model(IDX, labels=IDX).loss)
    model = DictOut()
    loss, path = TrainStep.of(model).run(model, IDX)
    assert path.startswith("model(idx, targets=targets): the loss the model returns")
    torch.testing.assert_close(loss, model(IDX, targets=IDX.roll(-1, dims=-1))["loss"])


def test_without_a_returned_loss_the_audit_computes_one() -> None:
    for model, call in ((LossOnlySometimes(), "model(idx, targets)"), (Plain(), "model(idx)")):
        loss, path = TrainStep.of(model).run(model, IDX)
        assert path == f"{call}: cross-entropy of the output (the audit's loss)"
        expected = nn.functional.cross_entropy(model.emb(IDX).flatten(0, 1), IDX.flatten())
        torch.testing.assert_close(loss, expected)
