"""The output head gets a contiguous input (policytune.lm.loading.contiguous_head_input).

torch 2.13's CPU bf16 ``linear`` with a frozen weight (``requires_grad=False``: a merged or
PEFT-loaded model) on a non-contiguous 3-D input (what transformers passes with
``logits_to_keep``) copies the weight once per row: measured 7.8 GB and 16 s for one prefill of
30 prompts with Qwen2.5-0.5B's head. The weight-copy itself is measured here on a small head."""

from __future__ import annotations

import torch

from policytune.lm.loading import contiguous_head_input, load_causal_lm


def test_every_loaded_model_feeds_its_head_a_contiguous_input_with_the_same_logits(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir, dtype="float32", device="cpu")
    seen = []
    model.get_output_embeddings().register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous()))
    ids = torch.randint(3, 200, (3, 7))
    with torch.inference_mode():
        last = model(input_ids=ids, logits_to_keep=1).logits
        full = model(input_ids=ids).logits
    assert seen == [True, True]
    torch.testing.assert_close(last[:, -1], full[:, -1])
    contiguous_head_input(model)  # idempotent: one hook
    assert len(model.get_output_embeddings()._forward_pre_hooks) == 2  # ours + the spy


def _allocated_mib(fn) -> float:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
        with torch.inference_mode():
            fn()
    return sum(e.self_cpu_memory_usage for e in p.key_averages() if e.self_cpu_memory_usage > 0) / 2 ** 20


def test_a_bf16_head_on_a_view_does_not_copy_its_weight_per_row():
    head = torch.nn.Linear(128, 16384, bias=False, dtype=torch.bfloat16).requires_grad_(False)  # 4 MiB, frozen
    hidden = torch.randn(8, 3, 128, dtype=torch.bfloat16)[:, -1:, :]  # a logits_to_keep=1 view
    assert not hidden.is_contiguous()
    model = torch.nn.Module()
    model.head = head
    model.get_output_embeddings = lambda: head
    contiguous_head_input(model)
    weight_mib = head.weight.numel() * 2 / 2 ** 20
    # unhooked, torch 2.13 allocates 8 weight copies here (32 MiB) on a bf16 CPU
    assert _allocated_mib(lambda: head(hidden)) < weight_mib
    with torch.inference_mode():
        torch.testing.assert_close(head(hidden), torch.nn.functional.linear(hidden.contiguous(), head.weight))
