"""Evaluation-generation throughput: one question at a time vs length-sorted left-padded batches.

Every run uses the evaluate stage's own code path (``policytune.evaluation.answers.generate``), the same model,
chat template, system prompt, questions and greedy generation params, measured side by side in
one process: one question at a time (``model.generate``, batch 1), then for each batch size
static batches (``model.generate`` on length-sorted left-padded batches) and continuous batching
(``generate_continuous``: finished answers leave, waiting questions join; the stage default).
Throughput counts useful tokens only: generated tokens up to and including each answer's stop
token, never padding or the tokens a finished row idles through while its batch runs on.

    python bench/bench_generate.py results.json                      # models/student, 30 questions
    python bench/bench_generate.py out.json --model /path/to/model --n 16 --batch-sizes 8,16

Questions: data/split/test.jsonl when present, else the repository's data/sample_faq.jsonl.
Goal (issue 5): batched >= 6x the one-at-a-time tokens/s. On a shared, busy machine wall-clock
rates mostly measure the other processes; the table also gives tokens per CPU-second of this
process (with --threads 1 that is the rate it would reach alone on one core), and the load
average before and after.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from policytune.lm.chat_format import DEFAULT_SYSTEM_PROMPT  # noqa: E402
from policytune.core.records import read_jsonl, write_json  # noqa: E402
from policytune.evaluation.answers import build_prompts, generate  # noqa: E402
from policytune.lm.adapters import load_lm, load_tok  # noqa: E402


def questions(n: int) -> tuple[list[dict], str]:
    for p in (Path("data/split/test.jsonl"), Path("data/sample_faq.jsonl")):
        if p.is_file():
            rows = [r for r in read_jsonl(p) if r.get("question")]
            if rows:
                return rows[:n], str(p)
    raise SystemExit("no questions: neither data/split/test.jsonl nor data/sample_faq.jsonl exists")


def run(model, tok, prompts, gen, batch_size: int, batching: str = "static") -> dict:
    t0, c0 = time.monotonic(), time.process_time()
    outs = generate(model, tok, prompts, gen, batch_size, batching=batching)
    dt, cpu = time.monotonic() - t0, time.process_time() - c0
    tokens = sum(o["n_tokens"] for o in outs)
    return {"batch_size": batch_size, "batching": batching, "seconds": round(dt, 2), "cpu_seconds": round(cpu, 2),
            "tokens_per_cpu_s": round(tokens / cpu, 2), "tokens": tokens,
            "tokens_per_s": round(tokens / dt, 2), "questions_per_s": round(len(outs) / dt, 3),
            "hit_max_new_tokens": sum(o["finish"] == "length" for o in outs), "answers": [o["answer"] for o in outs]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="JSON results path")
    ap.add_argument("--model", default="models/student", help="model folder (default models/student)")
    ap.add_argument("--n", type=int, default=30, help="questions (default 30: the sample FAQ test set)")
    ap.add_argument("--batch-sizes", default="16,32", help="comma-separated batch sizes to compare with 1")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 (auto: bf16 only where native)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default; on a busy "
                    "machine 1 avoids OpenMP threads waiting on each other)")
    args = ap.parse_args(argv)

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, source = questions(args.n)
    tok = load_tok(args.model)
    model = load_lm(args.model, dtype=args.dtype)
    prompts = build_prompts(rows, DEFAULT_SYSTEM_PROMPT)
    gen = {"max_new_tokens": args.max_new_tokens, "do_sample": False, "num_beams": 1, "repetition_penalty": 1.0}
    load_before = os.getloadavg()
    generate(model, tok, prompts[:2], {**gen, "max_new_tokens": 4}, 2)  # warm-up (allocator, kernels)

    single = run(model, tok, prompts, gen, 1)
    batched = [run(model, tok, prompts, gen, int(b), mode) for b in args.batch_sizes.split(",") if b.strip()
               for mode in ("static", "continuous")]
    load_after = os.getloadavg()

    results = {
        "model": str(args.model), "questions": len(rows), "question_source": source,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "device": str(next(model.parameters()).device), "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "machine": platform.machine(), "processor": platform.processor(),
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
        "gen": gen, "one_at_a_time": {k: v for k, v in single.items() if k != "answers"},
        "batched": [],
    }
    print(f"{len(rows)} questions from {source}; model {args.model} ({results['dtype']}, {results['device']}, "
          f"{results['torch_threads']} threads); greedy, max_new_tokens {args.max_new_tokens}; "
          f"load average {load_before[0]:.1f} -> {load_after[0]:.1f}")
    print(f"{'mode':<18}{'tokens':>8}{'seconds':>10}{'tokens/s':>11}{'speed-up':>10}"
          f"{'cpu s':>9}{'tok/cpu-s':>11}{'cpu speed-up':>14}{'same answers':>14}")
    print(f"{'one at a time':<18}{single['tokens']:>8}{single['seconds']:>10.1f}{single['tokens_per_s']:>11.1f}"
          f"{'1.0x':>10}{single['cpu_seconds']:>9.1f}{single['tokens_per_cpu_s']:>11.1f}{'1.0x':>14}{'-':>14}")
    for b in batched:
        ratio = b["tokens_per_s"] / single["tokens_per_s"] if single["tokens_per_s"] else float("nan")
        cpu_ratio = b["tokens_per_cpu_s"] / single["tokens_per_cpu_s"] if single["tokens_per_cpu_s"] else float("nan")
        same = sum(x == y for x, y in zip(b["answers"], single["answers"]))
        entry = {k: v for k, v in b.items() if k != "answers"}
        entry.update({"speedup": round(ratio, 2), "cpu_speedup": round(cpu_ratio, 2),
                      "same_answers_as_one_at_a_time": same, "meets_6x_goal": ratio >= 6.0})
        results["batched"].append(entry)
        print(f"{b['batching'] + ' ' + str(b['batch_size']):<18}{b['tokens']:>8}{b['seconds']:>10.1f}"
              f"{b['tokens_per_s']:>11.1f}{ratio:>9.1f}x{b['cpu_seconds']:>9.1f}{b['tokens_per_cpu_s']:>11.1f}"
              f"{cpu_ratio:>13.1f}x{f'{same}/{len(rows)}':>14}")
    write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
