"""The evaluate stage's core, rows in, rows out: every model variant answers and is scored on
every test row, then per-model means and paired fine-tuned-minus-base bootstrap CIs
(policytune.evaluation.metrics) become flat DVC keys, plot data and the output files.
"""

from __future__ import annotations

import gc
import math
import time
from pathlib import Path
from typing import Optional, Sequence

from policytune.core.progress import get_logger
from policytune.core.records import write_json, write_jsonl
from policytune.evaluation import metrics as M
from policytune.evaluation.answers import answer_all
from policytune.evaluation.config import COMPARISONS, METRICS, EvaluateConfig, EvaluateError, best_variant
from policytune.evaluation.facts import fact_scores
from policytune.evaluation.general import accept_score
from policytune.evaluation.rag import retrieve
from policytune.evaluation.scoring import Scorer, score_answers

log = get_logger("evaluate")


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


def _page_of(url: str) -> str:
    return str(url or "").replace("\\", "/").split("?")[0].split("#")[0]


def gold_chunks(rows: Sequence[dict], chunks: Sequence[dict]) -> list[Optional[str]]:
    """The source chunk of every test row: its ``chunk_id``, or for an external question (the
    published FAQ: ``source_page`` only) the chunk of that page that states the most of the
    reference's key facts (ties: more of the reference's words); None when neither is known."""
    by_page: dict[str, list[dict]] = {}
    for c in chunks:
        by_page.setdefault(_page_of(c.get("url", "")), []).append(c)
    out: list[Optional[str]] = []
    for r in rows:
        if r.get("chunk_id"):
            out.append(r["chunk_id"])
            continue
        page = _page_of(r.get("source_page", ""))
        cands = [c for p, cs in by_page.items() if page and (p == page or p.endswith("/" + page)) for c in cs]
        best, key = None, None
        for c in cands:
            f = fact_scores(c.get("text", ""), r["answer"])
            k = (f["fact_recall"] or 0.0, M.token_f1(c.get("text", ""), r["answer"]))
            if key is None or k > key:
                best, key = c.get("chunk_id"), k
        out.append(best)
    return out


def coverage(gold: Sequence[Optional[str]], train_rows: Optional[Sequence[dict]]) -> dict:
    """How many test questions have a source chunk, and how many of those chunks produced
    training pairs (a question whose chunk never reached training can only be answered from
    retrieval or from what the base model knew)."""
    with_gold = [g for g in gold if g]
    out = {"questions": len(gold), "with_gold_chunk": len(with_gold)}
    if train_rows is not None:
        trained = {r.get("chunk_id") for r in train_rows}
        out["gold_chunk_in_training"] = sum(g in trained for g in with_gold)
    return out


def retrieve_contexts(rows: Sequence[dict], chunks: Sequence[dict], scorer: Scorer, cfg: EvaluateConfig,
                      gold: Sequence[Optional[str]]) -> tuple[list[list[str]], list[list[str]], dict]:
    """(contexts, retrieved chunk ids, rag stats) of every row: the retriever's top-k chunks;
    recall@k: the share of questions with a known source chunk that find it in their top k."""
    idx = retrieve([r["question"] for r in rows], chunks, scorer.encoder, cfg.rag.top_k, cfg.rag.retriever)
    contexts = [[chunks[j]["text"][:cfg.rag.max_chars] for j in ix] for ix in idx]
    retrieved = [[chunks[j].get("chunk_id") for j in ix] for ix in idx]
    pairs = [(g, ret) for g, ret in zip(gold, retrieved) if g]
    rag = {"top_k": cfg.rag.top_k, "retriever": cfg.rag.retriever, "questions_with_gold_chunk": len(pairs),
           "recall_at_k": (sum(g in ret for g, ret in pairs) / len(pairs)) if pairs else None}
    return contexts, retrieved, rag


def evaluate(rows: Sequence[dict], cfg: EvaluateConfig, scorer: Scorer, base_lm, finetuned_lm, tokenizer,
             chunks: Optional[Sequence[dict]] = None, train_rows: Optional[Sequence[dict]] = None,
             general: Optional[Sequence[dict]] = None) -> tuple[list[dict], list[dict], dict, dict]:
    """Answer and score every test row with every model variant.

    ``base_lm`` / ``finetuned_lm`` are loaded models or zero-argument callables that load them
    (so the stage holds one model in memory at a time). ``general``: rows of the general-skill
    set, answered closed-book by both models (the forgetting check). Returns (answers,
    per_example rows, flat metrics, stats); general answers are answer rows whose ``model`` is
    ``general_base`` / ``general_finetuned``.
    """
    rows = list(rows)
    validate_rows(rows)
    contexts = retrieved = None
    gold = gold_chunks(rows, chunks or [])
    stats: dict = {"models": {}, "coverage": coverage(gold, train_rows)}
    if cfg.rag.enabled:
        chunks = list(chunks or [])
        contexts, retrieved, stats["rag"] = retrieve_contexts(rows, chunks, scorer, cfg, gold)
    answers: list[dict] = []
    per_example: list[dict] = []
    general_rows: list[dict] = []
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
        if general:
            general_rows += answer_general(model, tokenizer, lm_name, general, cfg)
        if model is not lm:
            del model
            gc.collect()
    models = list(stats["models"])
    flat = summarise(per_example, models, cfg)
    for name, t in stats["models"].items():
        flat[f"{name}.empty_answers"] = t["empty_answers"]
        flat[f"{name}.truncated"] = t["truncated"]
        flat[f"{name}.looping_answers"] = int(sum(r["looping"] for r in per_example if r["model"] == name))
    if cfg.rag.enabled and stats["rag"]["recall_at_k"] is not None:
        flat["rag.recall_at_k"] = round(stats["rag"]["recall_at_k"], 6)
    for k, v in stats["coverage"].items():
        flat[f"coverage.{k}"] = v
    if general_rows:
        flat.update(general_summary(general_rows, cfg))
        answers += general_rows
    best = best_variant(flat)
    if best:
        stats["best_variant"] = best
    return answers, per_example, flat, stats


def answer_general(model, tokenizer, lm_name: str, general: Sequence[dict], cfg: EvaluateConfig) -> list[dict]:
    """The general-skill questions answered closed-book, each scored 1/0 by its accepted answers."""
    a, _, timing = answer_all(model, tokenizer, f"general_{lm_name}", general, cfg, ref_ppl=False)
    for row, g in zip(a, general):
        row["general_correct"] = accept_score(row["answer"], g["accept"])
        row["skill"] = g.get("skill")
    return a


def general_summary(rows: Sequence[dict], cfg: EvaluateConfig) -> dict:
    """general.<model>.accuracy.{mean,ci_low,ci_high} and general.delta.accuracy (fine-tuned minus
    base, paired bootstrap): did fine-tuning cost general ability?"""
    b = cfg.bootstrap
    out: dict = {}
    vals = {}
    for m in ("base", "finetuned"):
        v = {r["qa_id"]: r["general_correct"] for r in rows if r["model"] == f"general_{m}"}
        if v:
            vals[m] = v
            s = M.bootstrap_mean_ci(list(v.values()), b.n_resamples, b.ci, b.seed)
            for k in ("mean", "ci_low", "ci_high"):
                out[f"general.{m}.accuracy.{k}"] = M._round(s[k])
    if len(vals) == 2:
        keys = [k for k in vals["finetuned"] if k in vals["base"]]
        s = M.paired_bootstrap([vals["finetuned"][k] for k in keys], [vals["base"][k] for k in keys],
                               b.n_resamples, b.ci, b.seed)
        for k in ("mean", "ci_low", "ci_high"):
            out[f"general.delta.accuracy.{k}"] = M._round(s[k])
        out["general.n"] = len(keys)
    return out





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
    """answers.jsonl (test answers), general.jsonl (the general-skill answers), per_example.jsonl,
    plots/<metric>.json and the metrics file."""
    write_jsonl(out_dir / "answers.jsonl", [a for a in answers if not a["model"].startswith("general_")])
    write_jsonl(out_dir / "general.jsonl", [a for a in answers if a["model"].startswith("general_")])
    write_jsonl(out_dir / "per_example.jsonl", [{k: _json_float(v) for k, v in r.items()} for r in per_example])
    for metric, rows in plot_data(per_example, models).items():
        write_json(out_dir / "plots" / f"{metric}.json", rows)
    write_json(metrics_path, flat)


def _json_float(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return round(v, 6) if isinstance(v, float) else v


def log_comparisons(flat: dict) -> None:
    """One line per comparison that ran and headline metric: mean [CI] and the verdict; the
    forgetting check; the best variant."""
    if flat.get("general.delta.accuracy.mean") is not None:
        log.info("general skills (finetuned - base, closed-book): %+.3f [%+.3f, %+.3f] (base %.3f, finetuned %.3f)",
                 flat["general.delta.accuracy.mean"], flat["general.delta.accuracy.ci_low"],
                 flat["general.delta.accuracy.ci_high"], flat.get("general.base.accuracy.mean") or 0,
                 flat.get("general.finetuned.accuracy.mean") or 0)
    if best_variant(flat):
        log.info("best variant by fact recall: %s", best_variant(flat))
    for name, treat, ctrl in COMPARISONS:
        if f"{name}.bertscore_f1.mean" not in flat:
            continue
        for m in ("fact_recall", "all_facts", "contradiction", "bertscore_f1", "cosine", "token_f1", "ref_ppl",
                  "looping"):
            k = f"{name}.{m}"
            if flat.get(f"{k}.mean") is not None:
                log.info("%s (%s - %s): %+.4f [%+.4f, %+.4f] %s", k, treat, ctrl, flat[f"{k}.mean"],
                         flat[f"{k}.ci_low"], flat[f"{k}.ci_high"],
                         M.verdict(flat[f"{k}.ci_low"], flat[f"{k}.ci_high"], M.DIRECTION[m]))
