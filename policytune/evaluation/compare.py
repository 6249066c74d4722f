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
from policytune.evaluation.config import COMPARISONS, METRICS, EvaluateConfig, EvaluateError
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


def retrieve_contexts(rows: Sequence[dict], chunks: Sequence[dict], scorer: Scorer,
                      cfg: EvaluateConfig) -> tuple[list[list[str]], list[list[str]], dict]:
    """(contexts, retrieved chunk ids, rag stats) of every row: the encoder's top-k chunks."""
    idx = retrieve([r["question"] for r in rows], chunks, scorer.encoder, cfg.rag.top_k)
    contexts = [[chunks[j]["text"][:cfg.rag.max_chars] for j in ix] for ix in idx]
    retrieved = [[chunks[j].get("chunk_id") for j in ix] for ix in idx]
    gold = [(r.get("chunk_id"), ret) for r, ret in zip(rows, retrieved) if r.get("chunk_id")]
    rag = {"top_k": cfg.rag.top_k, "questions_with_gold_chunk": len(gold),
           "recall_at_k": (sum(g in ret for g, ret in gold) / len(gold)) if gold else None}
    return contexts, retrieved, rag


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
        contexts, retrieved, stats["rag"] = retrieve_contexts(rows, chunks, scorer, cfg)
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


def log_comparisons(flat: dict) -> None:
    """One line per comparison that ran and headline metric: mean [CI] and the verdict."""
    for name, treat, ctrl in COMPARISONS:
        if f"{name}.bertscore_f1.mean" not in flat:
            continue
        for m in ("bertscore_f1", "cosine", "relevance", "token_f1", "rouge_l", "ref_ppl"):
            k = f"{name}.{m}"
            if flat.get(f"{k}.mean") is not None:
                log.info("%s (%s - %s): %+.4f [%+.4f, %+.4f] %s", k, treat, ctrl, flat[f"{k}.mean"],
                         flat[f"{k}.ci_low"], flat[f"{k}.ci_high"],
                         M.verdict(flat[f"{k}.ci_low"], flat[f"{k}.ci_high"], M.DIRECTION[m]))
