"""evaluate: base vs fine-tuned answers to every test question, scored per example, with CIs.

Reads   data/split/test.jsonl      {qa_id, question, answer (the reference), chunk_id, ...}
        data/chunks.jsonl          {chunk_id, text, ...}   (only with ``evaluate.rag.enabled``)
        models/student             the base model (plain Hugging Face folder)
        models/adapter             the LoRA adapter of the train stage (PEFT folder); when it
                                   holds ``policytune_train.json`` its ``chat_template_sha`` must equal
                                   the chat template's sha here, else the stage stops
        models/encoder             sentence-transformers folder: BERTScore backbone, embeddings
Params  ``evaluate`` (see :class:`EvaluateConfig`).
Writes  data/eval/answers.jsonl      {qa_id, model, question, reference, answer, gen, n_tokens,
                                     finish ("eos"|"length")[, retrieved]}
        data/eval/per_example.jsonl  {qa_id, model, bertscore_p/r/f1, cosine, relevance, token_f1,
                                     rouge_l, bleu, answer_len, ref_ppl, ref_nll}
        data/eval/plots/<metric>.json  DVC plot data: per metric, every model's per-example values
                                     sorted (a quantile plot = the distribution), x = quantile
        metrics/eval.json            flat DVC keys <model>.<metric>.{mean,ci_low,ci_high},
                                     delta.<metric>.{mean,ci_low,ci_high} (fine-tuned - base, 95%
                                     paired bootstrap over questions), n, counts
        data/stats/evaluate.json     timings (generation tokens/s per model), models, params

Models: ``base`` (the student) and ``finetuned`` (student + adapter, merged in memory) answer
with the same chat template, system prompt and generation params (greedy by default), longest
prompt first with left padding. Greedy decoding uses continuous batching (a finished answer
leaves the batch and a waiting question joins, so no compute is spent on finished rows);
sampling uses ``model.generate`` on static batches. With RAG on, ``base_rag`` and
``finetuned_rag`` answer again with the encoder's top-k chunks in the prompt.

Metrics per (question, model):
- BERTScore P/R/F1 (bert-score, the local encoder path as ``model_type``, no baseline rescale;
  bert-score has no tuned layer for all-MiniLM-L6-v2 and uses layer 5 for every 6-layer model in
  its table, e.g. distilbert-base-uncased, distilroberta-base, bert_uncased_L-6; we follow that);
- cosine of answer and reference embeddings, relevance = cosine of question and answer
  embeddings (the study's "relevance score"); both 0 for an empty answer, as BERTScore does;
- token-F1, ROUGE-L, BLEU (policytune.evaluation.metrics) and answer length in words;
- ref_nll / ref_ppl: mean negative log-likelihood (and its exp, the perplexity) of the
  reference answer's assistant tokens (answer + end-of-turn marker) given the same prompt.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import time
from pathlib import Path
from typing import Optional, Sequence

from policytune.evaluation import metrics as M
from policytune.lm.generation import (decode_greedy, left_pad, render_prompts, split_stop,  # noqa: F401
                                  stop_token_ids)
from policytune.lm.chat_format import template_sha, to_messages
from policytune.core.params import ParamsError, load_section, to_dict
from policytune.core.progress import Progress, get_logger
from policytune.core.records import read_jsonl, write_json, write_jsonl

TEST_PATH = Path("data/split/test.jsonl")
CHUNKS_PATH = Path("data/chunks.jsonl")
OUT_DIR = Path("data/eval")
METRICS_PATH = Path("metrics/eval.json")
STATS_PATH = Path("data/stats/evaluate.json")

log = get_logger("evaluate")

from policytune.evaluation.config import (COMPARISONS, METRICS, BertScoreConfig, EvaluateConfig,  # noqa: E402,F401
                                          EvaluateError, RagConfig)
from policytune.evaluation.rag import rag_question, retrieve  # noqa: E402,F401
from policytune.lm.adapters import (TRAIN_INFO, AdapterError, check_adapter, load_finetuned,  # noqa: E402,F401
                                    load_lm, load_tok)

# ---------------------------------------------------------------------------------------------
# model loading (policytune.lm.loading; transformers + peft underneath)
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# prompts and retrieval
# ---------------------------------------------------------------------------------------------

def build_prompts(rows: Sequence[dict], system_prompt: str, contexts: Optional[list[list[str]]] = None) -> list[list[dict]]:
    out = []
    for i, r in enumerate(rows):
        q = r["question"] if contexts is None else rag_question(r["question"], contexts[i])
        out.append(to_messages(q, system=system_prompt))
    return out


# ---------------------------------------------------------------------------------------------
# generation and reference perplexity
# ---------------------------------------------------------------------------------------------

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
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            seq = ids[i]
            input_ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            attn[row, width - len(seq):] = 1
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


def generate_continuous(model, tokenizer, prompts: Sequence[list[dict]], max_new_tokens: int, batch_size: int,
                        progress: Optional[Progress] = None, refill_at: Optional[int] = None) -> list[dict]:
    """Greedy decoding with continuous batching (policytune.lm.generation.decode_greedy: finished
    answers leave the batch, waiting questions join, a shared prompt prefix is prefilled once);
    same result contract as :func:`generate`."""
    ids = render_prompts(tokenizer, prompts)
    stops = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    done = (lambda i, t: progress.update(1)) if progress else None
    out = []
    for toks in decode_greedy(model, ids, stops, pad, max_new_tokens, batch_size, refill_at=refill_at, on_done=done):
        body, n_tokens, finish = split_stop(toks, stops)
        out.append({"answer": tokenizer.decode(body, skip_special_tokens=True).strip(),
                    "n_tokens": n_tokens, "finish": finish})
    return out


def assistant_ids(tokenizer, prompt: list[dict], answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, assistant ids): the rendered conversation split where the answer starts."""
    head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=False)
    if not full.startswith(head):
        raise EvaluateError("chat template renders the prompt differently once an assistant turn follows; "
                            "cannot locate the assistant tokens for ref_ppl")
    tail = full[len(head):]
    return (tokenizer(head, add_special_tokens=False)["input_ids"],
            tokenizer(tail, add_special_tokens=False)["input_ids"])


def reference_nll(model, tokenizer, prompts: Sequence[list[dict]], references: Sequence[str],
                  batch_size: int = 8) -> list[float]:
    """Mean NLL (nats/token) of each reference's assistant tokens given its prompt.

    Rows are left-padded (explicit positions), so every answer ends at the last column and the
    vocabulary projection is computed only for the last ``longest answer + 1`` columns.
    """
    import torch

    pairs = [assistant_ids(tokenizer, p, r) for p, r in zip(prompts, references)]
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    out = [float("nan")] * len(pairs)
    for start in range(0, len(order), max(1, batch_size)):
        batch = order[start:start + batch_size]
        input_ids, attn = left_pad([pairs[i][0] + pairs[i][1] for i in batch], pad)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        n_ans = torch.tensor([len(pairs[i][1]) for i in batch])
        keep = int(n_ans.max()) + 1
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(device), attention_mask=attn.to(device),
                           position_ids=pos.to(device), logits_to_keep=keep).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)          # predicts the last keep-1 columns
        tgt = input_ids[:, -(keep - 1):].to(device)
        col = torch.arange(keep - 1)
        mask = (col[None, :] >= (keep - 1 - n_ans)[:, None]).to(device)  # the answer's columns
        tok_lp = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) * mask
        nll = -(tok_lp.sum(1) / mask.sum(1).clamp(min=1))
        for row, i in enumerate(batch):
            out[i] = float(nll[row]) if n_ans[row] > 0 else float("nan")
    return out


# ---------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------

class Scorer:
    """BERTScore + embedding similarities with one local encoder folder."""

    def __init__(self, encoder_dir: str | Path, num_layers: int = 5, batch_size: int = 32,
                 device: Optional[str] = None, encoder=None):
        from bert_score import BERTScorer

        from policytune.lm.loading import load_encoder

        self.encoder_dir = str(encoder_dir)
        self.encoder = encoder if encoder is not None else load_encoder(self.encoder_dir, device=device)
        self.num_layers = num_layers
        self.batch_size = batch_size
        self.bert = BERTScorer(model_type=self.encoder_dir, num_layers=num_layers, batch_size=batch_size,
                               rescale_with_baseline=False, idf=False, device=device)

    def embed(self, texts: Sequence[str]):
        return self.encoder.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True,
                                   batch_size=self.batch_size)

    def bertscore(self, candidates: Sequence[str], references: Sequence[str]):
        """(P, R, F1) lists; an empty candidate or reference scores 0 (bert-score's own rule,
        applied here because bert-score 0.3.13 crashes on empty strings under transformers 5)."""
        n = len(candidates)
        P, R, F = [0.0] * n, [0.0] * n, [0.0] * n
        keep = [i for i in range(n) if candidates[i].strip() and references[i].strip()]
        if keep:
            p, r, f = self.bert.score([candidates[i] for i in keep], [references[i] for i in keep],
                                      batch_size=self.batch_size)
            for j, i in enumerate(keep):
                P[i], R[i], F[i] = float(p[j]), float(r[j]), float(f[j])
        return P, R, F

    def score(self, questions: Sequence[str], answers: Sequence[str], references: Sequence[str]) -> list[dict]:
        """Per-example model-based and lexical scores (no ref_ppl; that needs the LM)."""
        n = len(answers)
        if not n:
            return []
        P, R, F = self.bertscore(answers, references)
        ea, er, eq = self.embed(answers), self.embed(references), self.embed(questions)
        cos = M.cosine_matrix_diag(ea, er)
        rel = M.cosine_matrix_diag(eq, ea)
        rows = []
        for i in range(n):
            empty = not answers[i].strip()
            rows.append({
                "bertscore_p": float(P[i]), "bertscore_r": float(R[i]), "bertscore_f1": float(F[i]),
                "cosine": 0.0 if empty else float(cos[i]),
                "relevance": 0.0 if empty else float(rel[i]),
                **M.lexical_scores(answers[i], references[i]),
                "answer_len": len(M.tokenize(answers[i])),
            })
        return rows


# ---------------------------------------------------------------------------------------------
# pure core: rows in, rows out
# ---------------------------------------------------------------------------------------------

def validate_rows(rows: Sequence[dict]) -> None:
    seen = set()
    for i, r in enumerate(rows, 1):
        missing = [k for k in ("qa_id", "question", "answer") if not isinstance(r.get(k), str)]
        if missing:
            raise EvaluateError(f"test row {i}: missing or non-string field(s) {missing}")
        if r["qa_id"] in seen:
            raise EvaluateError(f"test row {i}: duplicate qa_id {r['qa_id']}")
        seen.add(r["qa_id"])
    if not rows:
        raise EvaluateError("no test questions to evaluate (data/split/test.jsonl empty, or limit 0 rows)")


def answer_all(lm, tokenizer, name: str, rows: Sequence[dict], cfg: EvaluateConfig,
               contexts: Optional[list[list[str]]] = None, retrieved: Optional[list[list[str]]] = None) -> tuple[list[dict], list[float], dict]:
    """One model variant answers every row; returns (answer rows, reference NLLs, timing)."""
    prompts = build_prompts(rows, cfg.system_prompt, contexts)
    gen = gen_params(cfg)
    prog = Progress(log, f"{name}: questions answered", len(rows))
    t0 = time.monotonic()
    outs = generate(lm, tokenizer, prompts, gen, cfg.batch_size, prog, cfg.batching)
    gen_s = time.monotonic() - t0
    t1 = time.monotonic()
    nll = reference_nll(lm, tokenizer, prompts, [r["answer"] for r in rows], cfg.ppl_batch_size)
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


def score_answers(answers: Sequence[dict], nlls: Sequence[float], scorer: Scorer) -> list[dict]:
    scores = scorer.score([a["question"] for a in answers], [a["answer"] for a in answers],
                          [a["reference"] for a in answers])
    rows = []
    for a, s, nll in zip(answers, scores, nlls):
        ppl = math.exp(nll) if math.isfinite(nll) and nll < 700 else float("nan")
        rows.append({"qa_id": a["qa_id"], "model": a["model"], **s,
                     "ref_ppl": ppl, "ref_nll": nll})
    return rows


def evaluate(rows: Sequence[dict], cfg: EvaluateConfig, scorer: Scorer, base_lm, finetuned_lm, tokenizer,
             chunks: Optional[Sequence[dict]] = None) -> tuple[list[dict], list[dict], dict, dict]:
    """Answer and score every test row with every model variant.

    ``base_lm`` / ``finetuned_lm`` are loaded models or zero-argument callables that load them
    (so the stage holds one model in memory at a time). Returns (answers, per_example rows,
    flat metrics, stats).
    """
    rows = list(rows)
    validate_rows(rows)
    contexts = retrieved = None
    stats: dict = {"models": {}}
    if cfg.rag.enabled:
        chunks = list(chunks or [])
        idx = retrieve([r["question"] for r in rows], chunks, scorer.encoder, cfg.rag.top_k)
        contexts = [[chunks[j]["text"][:cfg.rag.max_chars] for j in ix] for ix in idx]
        retrieved = [[chunks[j].get("chunk_id") for j in ix] for ix in idx]
        gold = [(r.get("chunk_id"), ret) for r, ret in zip(rows, retrieved) if r.get("chunk_id")]
        stats["rag"] = {"top_k": cfg.rag.top_k, "questions_with_gold_chunk": len(gold),
                        "recall_at_k": (sum(g in ret for g, ret in gold) / len(gold)) if gold else None}
    answers: list[dict] = []
    per_example: list[dict] = []
    for lm_name, lm in (("base", base_lm), ("finetuned", finetuned_lm)):
        t_load = time.monotonic()
        model = lm() if callable(lm) and not hasattr(lm, "generate") else lm
        load_s = time.monotonic() - t_load
        variants = [(lm_name, None, None)]
        if cfg.rag.enabled:
            variants.append((f"{lm_name}_rag", contexts, retrieved))
        for name, ctx, ret in variants:
            a, nll, timing = answer_all(model, tokenizer, name, rows, cfg, ctx, ret)
            timing["load_s"] = round(load_s, 2)
            timing["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
            stats["models"][name] = timing
            answers += a
            t0 = time.monotonic()
            per_example += score_answers(a, nll, scorer)
            timing["score_s"] = round(time.monotonic() - t0, 2)
        if model is not lm:
            del model
            gc.collect()
    models = list(stats["models"])
    flat = summarise(per_example, models, cfg)
    for name, t in stats["models"].items():
        flat[f"{name}.empty_answers"] = t["empty_answers"]
        flat[f"{name}.truncated"] = t["truncated"]
    if cfg.rag.enabled and stats["rag"]["recall_at_k"] is not None:
        flat["rag.recall_at_k"] = round(stats["rag"]["recall_at_k"], 6)
    return answers, per_example, flat, stats


def summarise(per_example: Sequence[dict], models: Sequence[str], cfg: EvaluateConfig) -> dict:
    comparisons = [c for c in COMPARISONS if c[1] in models and c[2] in models]
    b = cfg.bootstrap
    return M.flat_summary(per_example, models, METRICS, comparisons, n_resamples=b.n_resamples, ci=b.ci,
                          seed=b.seed)


def plot_data(per_example: Sequence[dict], models: Sequence[str]) -> dict[str, list[dict]]:
    """Per metric: rows {quantile, <model>: value, ...} of each model's sorted per-example values."""
    out = {}
    for metric in METRICS:
        cols = {}
        for m in models:
            vals = [r.get(metric) for r in per_example if r["model"] == m]
            cols[m] = sorted(v for v in vals if v is not None and math.isfinite(v))
        n = max((len(v) for v in cols.values()), default=0)
        rows = []
        for i in range(n):
            row = {"quantile": round((i + 0.5) / n, 6)}
            for m, v in cols.items():
                row[m] = round(v[i], 6) if i < len(v) else None
            rows.append(row)
        out[metric] = rows
    return out


def write_outputs(out_dir: Path, metrics_path: Path, answers, per_example, flat, models) -> None:
    write_jsonl(out_dir / "answers.jsonl", answers)
    write_jsonl(out_dir / "per_example.jsonl", [{k: _json_float(v) for k, v in r.items()} for r in per_example])
    for metric, rows in plot_data(per_example, models).items():
        write_json(out_dir / "plots" / f"{metric}.json", rows)
    write_json(metrics_path, flat)


def _json_float(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return round(v, 6) if isinstance(v, float) else v


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default=None, help="params.yaml path (default: ./params.yaml)")
    ap.add_argument("--test", default=str(TEST_PATH))
    ap.add_argument("--chunks", default=str(CHUNKS_PATH))
    ap.add_argument("--out-dir", default=str(OUT_DIR))
    ap.add_argument("--metrics", default=str(METRICS_PATH))
    ap.add_argument("--stats", default=str(STATS_PATH))
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t_start = time.monotonic()
    try:
        cfg = load_section(EvaluateConfig, "evaluate", args.params)
        if cfg.batch_size < 1 or cfg.max_new_tokens < 1 or cfg.rag.top_k < 1 or not 0 < cfg.bootstrap.ci < 1:
            raise ParamsError("batch_size, max_new_tokens, rag.top_k must be >= 1 and 0 < bootstrap.ci < 1")
        if cfg.batching not in ("continuous", "static"):
            raise ParamsError(f"batching must be continuous or static, got {cfg.batching!r}")
    except ParamsError as e:
        raise SystemExit(f"evaluate: {e}") from None
    if not Path(args.test).is_file():
        raise SystemExit(f"evaluate: {args.test} not found; run the split stage first")
    rows = read_jsonl(args.test)
    if cfg.limit:
        rows = rows[:cfg.limit]
    chunks = None
    if cfg.rag.enabled:
        if not Path(args.chunks).is_file():
            raise SystemExit(f"evaluate: {args.chunks} not found (rag.enabled needs the chunks); run extract")
        chunks = read_jsonl(args.chunks)
    import transformers

    transformers.logging.set_verbosity_error()
    try:
        tokenizer = load_tok(cfg.base_dir)
        train_info = check_adapter(cfg.adapter_dir, tokenizer)
        scorer = Scorer(cfg.encoder_dir, cfg.bertscore.num_layers, cfg.bertscore.batch_size)
        log.info("%d test questions; models: base=%s, finetuned=%s + %s (template %s); rag %s",
                 len(rows), cfg.base_dir, cfg.base_dir, cfg.adapter_dir, template_sha(tokenizer),
                 f"on (top {cfg.rag.top_k})" if cfg.rag.enabled else "off")
        answers, per_example, flat, stats = evaluate(
            rows, cfg, scorer,
            base_lm=lambda: load_lm(cfg.base_dir, cfg.dtype),
            finetuned_lm=lambda: load_finetuned(cfg.base_dir, cfg.adapter_dir, cfg.dtype, merge=cfg.merge_adapter),
            tokenizer=tokenizer, chunks=chunks)
    except (EvaluateError, AdapterError) as e:
        raise SystemExit(f"evaluate: {e}") from None
    models = list(stats["models"])
    write_outputs(Path(args.out_dir), Path(args.metrics), answers, per_example, flat, models)
    import torch

    stats.update({"questions": len(rows), "template_sha": template_sha(tokenizer), "train_info": train_info,
                  "torch_threads": torch.get_num_threads(), "seconds": round(time.monotonic() - t_start, 2),
                  "params": to_dict(cfg)})
    write_json(args.stats, stats)
    for name, treat, ctrl in COMPARISONS:
        if f"{name}.bertscore_f1.mean" not in flat:
            continue
        for m in ("bertscore_f1", "cosine", "relevance", "token_f1", "rouge_l", "ref_ppl"):
            k = f"{name}.{m}"
            if flat.get(f"{k}.mean") is not None:
                log.info("%s (%s - %s): %+.4f [%+.4f, %+.4f] %s", k, treat, ctrl, flat[f"{k}.mean"],
                         flat[f"{k}.ci_low"], flat[f"{k}.ci_high"],
                         M.verdict(flat[f"{k}.ci_low"], flat[f"{k}.ci_high"], M.DIRECTION[m]))
    log.info("done in %.1fs: %s, %s", stats["seconds"], Path(args.out_dir) / "answers.jsonl", args.metrics)


if __name__ == "__main__":
    main()
