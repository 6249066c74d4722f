"""Probe: does the student read tables better as key-value lines? The base student answers the
test questions with the hybrid top-3 excerpts and today's RAG prompt, with the excerpts as
extracted ("asis": pipe tables), with every table row as "Header: value; ..." ("kv"), or as
"Row — Header: value; ..." ("row"); fact recall of each. Run in a checkout holding a default run:

    python bench/probes/rag_table_layout_probe.py [MODEL_DIR]

Measured (session 9, bf16 CPU): asis 0.533, kv 0.425, row 0.467; so excerpts stay as extracted.
Answers go to /tmp/probe_table_<style>.jsonl."""
import json, re, sys, time
import numpy as np
sys.path.insert(0, ".")
from policytune.core.records import read_jsonl
from policytune.evaluation.facts import fact_scores
from policytune.lm import chat_format as CF
from policytune.lm.embedding import encode
from policytune.lm.retrieval import ChunkIndex
from policytune.lm.loading import load_encoder
from policytune.lm.generation import generate_continuous
from policytune.lm.adapters import load_lm, load_tok

def cells(line):
    return [c.strip() for c in line.split(" | ")]

def kv_tables(text, style):
    lines = text.split("\n"); out = []; i = 0
    while i < len(lines):
        if " | " in lines[i]:
            j = i
            while j < len(lines) and " | " in lines[j] and len(cells(lines[j])) == len(cells(lines[i])):
                j += 1
            head = cells(lines[i])
            if j - i >= 2 and not any(re.fullmatch(r"[\d.,\s%€$-]+", h) for h in head):
                for row in lines[i + 1:j]:
                    r = cells(row)
                    if style == "kv":
                        out.append("; ".join(f"{h}: {v}" for h, v in zip(head, r)))
                    else:
                        out.append(f"{r[0]} — " + "; ".join(f"{h}: {v}" for h, v in zip(head[1:], r[1:])))
                i = j; continue
        out.append(lines[i]); i += 1
    return "\n".join(out)

student = sys.argv[1] if len(sys.argv) > 1 else "models/student"
rows, chunks = read_jsonl("data/split/test.jsonl"), read_jsonl("data/chunks.jsonl")
enc = load_encoder("models/encoder")
embed = lambda t: encode(enc, t, batch_size=64)
qs = [r["question"] for r in rows]
rank = ChunkIndex(chunks, embed, "hybrid").search(qs, 3)
tok, model = load_tok(student), load_lm(student, "auto")
res = {}
for style in ("asis", "kv", "row"):
    prompts = []
    for i, q in enumerate(qs):
        ctx = [chunks[j]["text"][:1500] for j in rank[i]]
        if style != "asis":
            ctx = [kv_tables(c, style) for c in ctx]
        prompts.append(CF.to_messages(CF.rag_question(q, ctx), system=CF.DEFAULT_SYSTEM_PROMPT))
    t0 = time.monotonic()
    outs = generate_continuous(model, tok, prompts, 128, 32)
    fs = [fact_scores(o["answer"], r["answer"]) for o, r in zip(outs, rows)]
    fr = [f["fact_recall"] or 0.0 for f in fs]
    res[style] = fr
    print(style, "fact_recall %.3f all_facts %.3f  %.0fs" % (np.mean(fr), np.mean([f["all_facts"] or 0 for f in fs]), time.monotonic() - t0), flush=True)
    with open(f"/tmp/probe_table_{style}.jsonl", "w") as f:
        for o, r, s in zip(outs, rows, fr):
            f.write(json.dumps({"q": r["question"], "ref": r["answer"], "a": o["answer"], "fr": s}) + "\n")
