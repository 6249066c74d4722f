"""Fixture rows of the report tests: evaluate's per-example metrics and answers, its
metrics/eval.json and judge scores, for 40 questions."""

from __future__ import annotations

import numpy as np

from policytune.evaluation import metrics as M
from policytune.evaluation.config import COMPARISONS, METRICS

N = 40
EVIL = '<script>alert("x")</script> | *bold* [link](http://e.invalid) <img src=x onerror=alert(1)>'
JUDGE = ["Correctness", "Helpfulness", "Relevance", "Coherence", "Consistency"]


def fixture_rows(seed: int = 0):
    """Fine-tuned clearly better on BERTScore/token-F1, lower reference perplexity, no change on
    cosine; one answer carries markup that must stay inert."""
    rng = np.random.default_rng(seed)
    per_example, answers = [], []
    for i in range(N):
        q = f"q{i:02d}"
        base = {"bertscore_f1": rng.uniform(0.5, 0.8), "cosine": rng.uniform(0.4, 0.9),
                "relevance": rng.uniform(0.5, 0.9), "token_f1": rng.uniform(0.1, 0.4),
                "rouge_l": rng.uniform(0.1, 0.4), "bleu": rng.uniform(0.0, 0.2),
                "answer_len": float(rng.integers(10, 60)), "ref_nll": rng.uniform(2.0, 3.0)}
        ft = dict(base)
        ft["bertscore_f1"] += 0.05 + rng.normal(0, 0.01)
        ft["token_f1"] += 0.08 + rng.normal(0, 0.02)
        ft["cosine"] += rng.normal(0, 0.05)
        ft["ref_nll"] -= 0.5 + rng.normal(0, 0.05)
        if i == 3:  # the largest gain, so it is shown among the examples
            ft["bertscore_f1"] += 0.2
        for name, vals in (("base", base), ("finetuned", ft)):
            vals = {**vals, "bertscore_p": vals["bertscore_f1"], "bertscore_r": vals["bertscore_f1"],
                    "ref_ppl": float(np.exp(vals["ref_nll"]))}
            per_example.append({"qa_id": q, "model": name, **vals})
            answer = EVIL if (i == 3 and name == "finetuned") else f"{name} answer to question {i}"
            answers.append({"qa_id": q, "model": name, "question": f"Question {i} about policy? " + (EVIL if i == 3 else ""),
                            "reference": f"Reference answer {i}.", "answer": answer,
                            "gen": {"max_new_tokens": 64, "do_sample": False}, "n_tokens": 12})
    return per_example, answers


def eval_flat(per_example):
    models = ["base", "finetuned"]
    comps = [c for c in COMPARISONS if c[1] in models and c[2] in models]
    return M.flat_summary(per_example, models, METRICS, comps, n_resamples=500, seed=0)


def judge_scores(seed: int = 1):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(N):
        for name, shift in (("base", 0.0), ("finetuned", 0.1)):
            for metric in JUDGE:
                failed = (metric == "Consistency" and name == "base" and i < 3)
                score = None if failed else float(np.clip(rng.uniform(0.3, 0.8) + shift, 0, 1))
                rows.append({"qa_id": f"q{i:02d}", "model": name, "metric": metric, "score": score,
                             "reason": "unparseable" if failed else "ok", "failed": failed})
    return rows
