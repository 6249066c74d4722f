"""The loss: shared prefix once + right padding + logits only at labelled positions gives the
per-example loss and gradients; the fused cross-entropy matches torch's."""

from __future__ import annotations

import pytest
import torch

from policytune.training.batching import collate
from policytune.training.config import LoraParams, TrainConfig
from policytune.training.encode import IGNORE
from policytune.training.lora import (SumCrossEntropy, add_lora, batch_loss, build_model, load_base_model,
                                      trainable)


def _reference_loss(model, exs):
    """Each example alone through the plain HF forward (full logits): sum CE over labels."""
    total = 0.0
    for e in exs:
        logits = model(input_ids=torch.tensor([e.input_ids])).logits[0, :-1].float()
        total = total + torch.nn.functional.cross_entropy(
            logits, torch.tensor(e.labels[1:]), ignore_index=IGNORE, reduction="sum")
    return total


@pytest.mark.parametrize("rows", [[0, 1, 2, 3, 4], [2, 2, 2]], ids=["ragged", "equal-length"])
def test_batched_shared_prefix_loss_equals_per_example_loss(tiny_model_dir, examples, rows):
    """Exactness of the fast path: shared prefix run once + right padding + logits only at
    labelled positions gives the same loss and LoRA gradients as every example on its own,
    so neither attention nor loss crosses example boundaries."""
    model = add_lora(load_base_model(str(tiny_model_dir), "float32", torch.device("cpu")),
                     LoraParams(dropout=0.0), seed=0)
    with torch.no_grad():  # make LoRA B non-zero so the A grads are non-trivial
        for n, p in trainable(model):
            if "lora_B" in n:
                p.normal_(0, 0.1)
    exs = [examples[i] for i in rows]
    results = []
    for how in ("reference", "shared", "plain"):
        model.zero_grad()
        if how == "reference":
            loss = _reference_loss(model, exs)
        else:
            batch = collate(exs, pad_id=0, share_prefix=how == "shared")
            assert (batch.prefix is not None) == (how == "shared")
            assert batch.n_labels == sum(e.n_labels for e in exs)
            loss = batch_loss(model, batch)
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in trainable(model)}))
    (ref, gref), *others = results
    for loss, grads in others:
        assert loss == pytest.approx(ref, rel=1e-5)
        for n, g in grads.items():
            torch.testing.assert_close(g, gref[n], rtol=1e-4, atol=1e-6)


def test_sum_cross_entropy_matches_torch():
    torch.manual_seed(0)
    z = torch.randn(37, 1000, dtype=torch.float64) * 5
    t = torch.randint(0, 1000, (37,))
    a, b = z.clone().requires_grad_(), z.clone().requires_grad_()
    la = SumCrossEntropy.apply(a, t)
    lb = torch.nn.functional.cross_entropy(b, t, reduction="sum")
    (la * 0.3).backward()
    (lb * 0.3).backward()
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(a.grad, b.grad)


def test_build_model_counts_base_and_lora_params(tiny_model_dir):
    cfg = TrainConfig(base_dir=str(tiny_model_dir), dtype="float32")
    student = build_model(cfg, torch.device("cpu"))
    assert student.weight_dtype == torch.float32 and student.saved_dtype == "float32"
    assert student.n_lora == sum(p.numel() for _, p in trainable(student.model)) > 0
    assert all("lora_" in n for n, _ in trainable(student.model))
    assert student.n_base == sum(p.numel() for n, p in student.model.named_parameters() if "lora_" not in n)
