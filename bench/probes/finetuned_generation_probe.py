"""The base or the fine-tuned student answers the test questions closed-book (the evaluate
stage's generate_continuous, batch 32): wall time, answer tokens and the process's peak RSS.
Run in a checkout holding a default run (models/student, models/adapter, data/split/test.jsonl):

    python bench/probes/finetuned_generation_probe.py base|ft|unmerged

Session 9, bf16 CPU: ft 27.9 s / 9.46 GB before policytune.lm.loading.contiguous_head_input,
9.5 s / 1.73 GB after; base 11.4 s / 1.77 GB."""
import sys, time, resource, torch
from policytune.core.records import read_jsonl
from policytune.lm import chat_format as CF
from policytune.lm.adapters import load_finetuned, load_lm, load_tok
from policytune.lm.generation import generate_continuous
which = sys.argv[1]
rows = read_jsonl("data/split/test.jsonl")
tok = load_tok("models/student")
m = load_lm("models/student", "auto") if which == "base" else load_finetuned("models/student", "models/adapter", "auto", merge=which == "ft")
prompts = [CF.to_messages(r["question"], system=CF.DEFAULT_SYSTEM_PROMPT) for r in rows]
print(which, "loaded rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, flush=True)
t = time.perf_counter()
outs = generate_continuous(m, tok, prompts, 128, 32)
print(which, "gen %.1fs tokens %d peak rss %d MB" % (time.perf_counter() - t, sum(len(tok(o["answer"])["input_ids"]) for o in outs),
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024), flush=True)
