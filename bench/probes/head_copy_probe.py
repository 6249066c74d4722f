"""torch 2.13 CPU: bf16 ``F.linear`` with a frozen weight on a non-contiguous 3-D input copies the
weight once per row (what transformers' ``logits_to_keep`` view hands the output head). Prints the
bytes allocated and the time, for a view and for its contiguous copy:

    python bench/probes/head_copy_probe.py            # Qwen2.5-0.5B's head: 151,936 x 896
    python bench/probes/head_copy_probe.py --rows 4

policytune.lm.loading.contiguous_head_input is the fix (a pre-hook on the head)."""

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile


def allocated_mib(fn) -> float:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
        with torch.inference_mode():
            fn()
    return sum(e.self_cpu_memory_usage for e in p.key_averages() if e.self_cpu_memory_usage > 0) / 2 ** 20


ap = argparse.ArgumentParser()
ap.add_argument("--vocab", type=int, default=151936)
ap.add_argument("--hidden", type=int, default=896)
ap.add_argument("--rows", type=int, default=30)
ap.add_argument("--length", type=int, default=31)
a = ap.parse_args()
w = torch.randn(a.vocab, a.hidden, dtype=torch.bfloat16)  # requires_grad False, as in a frozen model
view = torch.randn(a.rows, a.length, a.hidden, dtype=torch.bfloat16)[:, -1:, :]
print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, weight {w.numel() * 2 / 2**20:.0f} MiB")
for name, x in (("view", view), ("contiguous", view.contiguous())):
    t = time.perf_counter()
    mib = allocated_mib(lambda: torch.nn.functional.linear(x, w))
    print(f"{name:>10}: {mib:8.0f} MiB allocated, {time.perf_counter() - t:6.2f} s")
