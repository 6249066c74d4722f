"""Per-step cost of a local model: prefill of one prompt, and one greedy decode step at several
batch sizes over a cache of --context tokens, bf16/float32 vs int8 side by side in one run.

    python -m bench.bench_decode_step bench/out/decode_step.json                # models/teacher
    python -m bench.bench_decode_step OUT --model-dir models/judge --batch-sizes 1,8,16,32

What it explains: a decode step costs reading the weights, so it hardly grows with the batch
(why batching pays, and why a handful of new chunks decode at nearly the cost of a full batch);
int8 halves the bytes read per step. Each figure is the median of --steps timed steps after a
warm-up step; random token ids (the cost does not depend on the text).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from policytune.core.records import write_json  # noqa: E402
from policytune.lm.catalog import saved_dtype  # noqa: E402
from policytune.lm.generation import grow_in_place  # noqa: E402
from policytune.lm.loading import load_causal_lm, quantize_int8, resolve_dtype  # noqa: E402


def measure(model, prompt_len: int, context: int, batch_sizes: list[int], steps: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(0)
    ids = lambda b, t: torch.randint(100, 1000, (b, t), generator=g)  # noqa: E731
    out: dict = {}
    with torch.inference_mode():
        x = ids(1, prompt_len)
        model(input_ids=x, logits_to_keep=1)  # warm-up
        t0 = time.perf_counter()
        model(input_ids=x, logits_to_keep=1)
        out["prefill_s"] = round(time.perf_counter() - t0, 3)
        out["decode_step_ms"] = {}
        for b in batch_sizes:
            cache = model(input_ids=ids(b, context), use_cache=True, logits_to_keep=1).past_key_values
            grow_in_place(cache)
            attn = torch.ones(b, context, dtype=torch.long)
            pos, last, times = torch.full((b, 1), context), ids(b, 1), []
            for _ in range(steps + 1):
                attn = torch.cat([attn, torch.ones(b, 1, dtype=torch.long)], 1)
                t0 = time.perf_counter()
                model(input_ids=last, attention_mask=attn, position_ids=pos, past_key_values=cache, use_cache=True)
                times.append(time.perf_counter() - t0)
                pos = pos + 1
            out["decode_step_ms"][b] = round(1000 * statistics.median(times[1:]), 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--model-dir", default="models/teacher")
    ap.add_argument("--prompt-len", type=int, default=340, help="prefill length (a teacher prompt: ~340)")
    ap.add_argument("--context", type=int, default=400, help="cached tokens under each decode step")
    ap.add_argument("--batch-sizes", default="1,8,16")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--modes", default="auto,int8", help="auto (the stage's dtype) and/or int8")
    args = ap.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    results = {"model_dir": args.model_dir, "prompt_len": args.prompt_len, "context": args.context, "modes": {}}
    for mode in args.modes.split(","):
        t0 = time.perf_counter()
        if mode == "int8":  # as LocalBackend does: load as saved, quantize layer by layer
            model = quantize_int8(load_causal_lm(args.model_dir, dtype=saved_dtype(args.model_dir) or "auto"))
        else:
            model = load_causal_lm(args.model_dir, dtype=mode)
        name = "int8" if mode == "int8" else str(resolve_dtype(mode, saved_dtype(args.model_dir))).removeprefix("torch.")
        r = {"load_s": round(time.perf_counter() - t0, 1),
             **measure(model, args.prompt_len, args.context, batch_sizes, args.steps)}
        results["modes"][name] = r
        print(f"{name:>9}: load {r['load_s']} s, prefill {args.prompt_len} tokens {r['prefill_s']} s, decode step ms "
              + ", ".join(f"batch {b}: {ms}" for b, ms in r["decode_step_ms"].items()), flush=True)
        del model
    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
