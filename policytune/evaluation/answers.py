"""The evaluate stage's answers: every model variant answers every test question with the same
chat template, system prompt and generation params, longest prompt first with left padding.

Greedy decoding uses continuous batching (:func:`policytune.lm.generation.decode_greedy`: a
finished answer leaves the batch and a waiting question joins); sampling uses
``model.generate`` on static batches. :func:`answer_all` also runs the reference-perplexity
pass (:func:`policytune.evaluation.scoring.reference_nll`) and times both.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

from policytune.core.progress import Progress, get_logger
from policytune.evaluation.config import EvaluateConfig
from policytune.evaluation.scoring import reference_nll
from policytune.lm.chat_format import rag_question, to_messages
from policytune.lm.generation import generate_continuous, left_pad, render_prompts, stop_token_ids

log = get_logger("evaluate")


def build_prompts(rows: Sequence[dict], system_prompt: str, contexts: Optional[list[list[str]]] = None) -> list[list[dict]]:
    out = []
    for i, r in enumerate(rows):
        q = r["question"] if contexts is None else rag_question(r["question"], contexts[i])
        out.append(to_messages(q, system=system_prompt))
    return out


def gen_params(cfg: EvaluateConfig) -> dict:
    g = {"max_new_tokens": cfg.max_new_tokens, "do_sample": cfg.do_sample, "num_beams": 1,
         "repetition_penalty": cfg.repetition_penalty}
    if cfg.do_sample:
        g.update({"temperature": cfg.temperature, "top_p": cfg.top_p, "seed": cfg.seed})
    return g


def is_greedy(gen: dict) -> bool:
    return (not gen.get("do_sample") and gen.get("num_beams", 1) == 1
            and float(gen.get("repetition_penalty", 1.0)) == 1.0)


def generate(model, tokenizer, prompts: Sequence[list[dict]], gen: dict, batch_size: int,
             progress: Optional[Progress] = None, batching: str = "static") -> list[dict]:
    """Answer every prompt; returns [{answer, n_tokens, finish}] in prompt order.

    ``batching="continuous"`` (greedy decoding only) hands over to :func:`generate_continuous`.
    Otherwise prompts are sorted by token length (longest first, so a memory problem shows at
    once) and generated ``batch_size`` at a time with left padding by ``model.generate``.
    Each answer is cut at its first stop token; ``n_tokens`` counts generated tokens up to and
    including that stop token.
    """
    import torch
    from transformers import GenerationConfig

    if batching == "continuous" and is_greedy(gen):
        return generate_continuous(model, tokenizer, prompts, gen["max_new_tokens"], batch_size, progress)

    ids = render_prompts(tokenizer, prompts)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    stops = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    gkw = {k: v for k, v in gen.items() if k != "seed"}
    gc_ = GenerationConfig(**gkw, eos_token_id=stops, pad_token_id=pad)
    if gen.get("do_sample"):
        torch.manual_seed(int(gen.get("seed", 0)))
    device = next(model.parameters()).device
    out: list[Optional[dict]] = [None] * len(ids)
    for start in range(0, len(order), max(1, batch_size)):
        batch = order[start:start + batch_size]
        width = max(len(ids[i]) for i in batch)
        input_ids, attn = left_pad([ids[i] for i in batch], pad)
        with torch.inference_mode():
            gen_ids = model.generate(input_ids=input_ids.to(device), attention_mask=attn.to(device),
                                     generation_config=gc_)
        new = gen_ids[:, width:].tolist()
        for row, i in enumerate(batch):
            toks = new[row]
            cut = next((j for j, t in enumerate(toks) if t in stops), None)
            body = toks if cut is None else toks[:cut]
            out[i] = {"answer": tokenizer.decode(body, skip_special_tokens=True).strip(),
                      "n_tokens": len(toks) if cut is None else cut + 1,
                      "finish": "length" if cut is None else "eos"}
        if progress:
            progress.update(len(batch))
    return out  # type: ignore[return-value]


def answer_all(lm, tokenizer, name: str, rows: Sequence[dict], cfg: EvaluateConfig,
               contexts: Optional[list[list[str]]] = None, retrieved: Optional[list[list[str]]] = None,
               ref_ppl: bool = True) -> tuple[list[dict], list[float], dict]:
    """One model variant answers every row; returns (answer rows, reference NLLs (NaN without
    ``ref_ppl``), timing)."""
    prompts = build_prompts(rows, cfg.system_prompt, contexts)
    gen = gen_params(cfg)
    prog = Progress(log, f"{name}: questions answered", len(rows))
    t0 = time.monotonic()
    outs = generate(lm, tokenizer, prompts, gen, cfg.batch_size, prog, cfg.batching)
    gen_s = time.monotonic() - t0
    t1 = time.monotonic()
    nll = (reference_nll(lm, tokenizer, prompts, [r["answer"] for r in rows], cfg.ppl_batch_size) if ref_ppl
           else [float("nan")] * len(rows))
    ppl_s = time.monotonic() - t1
    answers = []
    for i, (r, o) in enumerate(zip(rows, outs)):
        a = {"qa_id": r["qa_id"], "model": name, "question": r["question"], "reference": r["answer"],
             "answer": o["answer"], "gen": gen, "n_tokens": o["n_tokens"], "finish": o["finish"]}
        if retrieved is not None:
            a["retrieved"] = retrieved[i]
        answers.append(a)
    tokens = sum(o["n_tokens"] for o in outs)
    timing = {"generate_s": round(gen_s, 2), "tokens": tokens,
              "tokens_per_s": round(tokens / gen_s, 2) if gen_s > 0 else None,
              "ref_ppl_s": round(ppl_s, 2),
              "truncated": sum(o["finish"] == "length" for o in outs),
              "empty_answers": sum(not o["answer"].strip() for o in outs)}
    log.info("%s: %d answers, %d tokens in %.1fs (%.1f tok/s), %d hit max_new_tokens, ref_ppl pass %.1fs",
             name, len(outs), tokens, gen_s, timing["tokens_per_s"] or 0, timing["truncated"], ppl_s)
    return answers, nll, timing
