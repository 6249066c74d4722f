"""Pure metric and statistics functions shared by the evaluate, judge and report stages.

Nothing here loads a model: lexical overlap metrics (token-F1, ROUGE-L, BLEU), summary
statistics in the study's shape (mean, std, min, quartiles, max), the paired bootstrap over
questions that turns "fine-tuned minus base" into a confidence interval, the verdict read off
that interval, and the flat ``<model>.<metric>.<stat>`` keys that ``dvc metrics show`` prints.

Tokenisation for the lexical metrics (one rule for all three, so they agree with each other):
lower-case, Unicode word characters only (``\\w+``), punctuation dropped. Token-F1 follows
SQuAD (bag-of-tokens overlap, articles "a/an/the" dropped); ROUGE-L is the LCS F-measure
(beta = 1, as rouge-score reports ``fmeasure``); BLEU is sentence BLEU-4 with uniform weights,
the standard brevity penalty and Chen & Cherry (2014) smoothing method 1 (an epsilon of 0.1
for an n-gram order with no match), identical to NLTK's ``SmoothingFunction().method1``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Annotated, Iterable, Mapping, Sequence

import numpy as np

from policytune.core.params import PositiveInt, Range

_WORD = re.compile(r"\w+", re.UNICODE)
_ARTICLES = {"a", "an", "the"}

# Direction of each metric: +1 higher is better, -1 lower is better, 0 no "better" (descriptive).
DIRECTION: dict[str, int] = {
    "bertscore_p": 1, "bertscore_r": 1, "bertscore_f1": 1,
    "cosine": 1, "relevance": 1,
    "token_f1": 1, "rouge_l": 1, "bleu": 1,
    "ref_ppl": -1, "ref_nll": -1,
    "answer_len": 0,
    # fact-level correctness (policytune.evaluation.facts) and degeneration
    "fact_recall": 1, "all_facts": 1, "contradiction": -1, "looping": -1,
    # LLM-judge metrics (judge stage), scores in 0..1
    "correctness": 1, "helpfulness": 1, "coherence": 1, "consistency": 1,
}


@dataclass
class BootstrapConfig:
    """Paired-bootstrap settings shared by evaluate, judge and report (``<section>.bootstrap``)."""
    n_resamples: PositiveInt = field(default=2000, metadata={"help": "bootstrap resamples for every CI"})
    seed: int = field(default=0, metadata={"help": "bootstrap seed"})
    ci: Annotated[float, Range(gt=0, lt=1)] = field(default=0.95, metadata={"help": "confidence level of the percentile intervals"})


STATS = ("mean", "std", "min", "25%", "50%", "75%", "max")


# --------------------------------------------------------------------------- tokenisation

def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens; punctuation and whitespace are separators."""
    return _WORD.findall((text or "").lower())


# --------------------------------------------------------------------------- lexical metrics

def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1: bag-of-words overlap after dropping articles."""
    pred = [t for t in tokenize(prediction) if t not in _ARTICLES]
    ref = [t for t in tokenize(reference) if t not in _ARTICLES]
    if not pred and not ref:
        return 1.0
    if not pred or not ref:
        return 0.0
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a)·len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (beta = 1) over word tokens."""
    pred, ref = tokenize(prediction), tokenize(reference)
    if not pred and not ref:
        return 1.0
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(prediction: str, reference: str, max_n: int = 4, epsilon: float = 0.1) -> float:
    """Sentence BLEU (uniform weights up to ``max_n``) with smoothing method 1.

    Clipped n-gram precisions; an order with zero matches gets ``epsilon / total`` instead of
    zero so one missing 4-gram does not zero the score; no unigram match at all -> 0. Brevity
    penalty exp(1 - r/c) when the prediction is not longer than the reference. Empty -> 0.
    """
    pred, ref = tokenize(prediction), tokenize(reference)
    if not pred or not ref:
        return 1.0 if not pred and not ref else 0.0
    log_sum = 0.0
    for n in range(1, max_n + 1):
        p_ngrams, r_ngrams = _ngrams(pred, n), _ngrams(ref, n)
        total = max(1, sum(p_ngrams.values()))  # prediction shorter than n: 0/1, as NLTK
        matches = sum((p_ngrams & r_ngrams).values())
        if n == 1 and matches == 0:
            return 0.0  # no word in common: BLEU is 0 whatever the smoothing (as NLTK)
        p_n = matches / total if matches > 0 else epsilon / total
        log_sum += math.log(p_n) / max_n
    c, r = len(pred), len(ref)
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return bp * math.exp(log_sum)


def lexical_scores(prediction: str, reference: str) -> dict[str, float]:
    return {
        "token_f1": token_f1(prediction, reference),
        "rouge_l": rouge_l(prediction, reference),
        "bleu": bleu(prediction, reference),
    }


def cosine_matrix_diag(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two equally shaped embedding matrices."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    denom = np.where((na * nb) > 0, na * nb, 1.0)
    return (a * b).sum(axis=1) / denom


def looping(answer: str, finish: str | None = None, n: int = 4, repeats: int = 4) -> float:
    """1.0 when an answer degenerates: some word n-gram (punctuation marks count as words, so
    "1.1.1.1" is caught) occurs ``repeats`` or more times, or decoding hit ``max_new_tokens``
    (``finish == "length"``); else 0.0."""
    if finish == "length":
        return 1.0
    toks = re.findall(r"\w+|[^\w\s]", (answer or "").lower())
    grams = Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))
    return 1.0 if grams and max(grams.values()) >= repeats else 0.0


# --------------------------------------------------------------------------- statistics

def _clean(values: Iterable) -> np.ndarray:
    arr = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return arr[np.isfinite(arr)]


def describe(values: Iterable) -> dict[str, float]:
    """The study's summary row: mean, std (sample, ddof=1 as pandas), min, quartiles, max, n.

    None / NaN / inf values are dropped (a failed judgement is counted elsewhere, not scored).
    """
    x = _clean(values)
    out = {"n": int(x.size)}
    if x.size == 0:
        out.update({k: float("nan") for k in STATS})
        return out
    q = np.percentile(x, [25, 50, 75])
    out.update({
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
        "min": float(x.min()),
        "25%": float(q[0]), "50%": float(q[1]), "75%": float(q[2]),
        "max": float(x.max()),
    })
    return out


def bootstrap_mean_ci(values: Iterable, n_resamples: int = 2000, ci: float = 0.95,
                      seed: int = 0) -> dict[str, float]:
    """Mean of ``values`` with a percentile bootstrap confidence interval."""
    x = _clean(values)
    if x.size == 0:
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return {"mean": float(x.mean()), "ci_low": float(lo), "ci_high": float(hi), "n": int(x.size)}


def paired_bootstrap(treatment: Sequence, control: Sequence, n_resamples: int = 2000,
                     ci: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean of ``treatment - control`` over paired items, with a paired bootstrap CI.

    Questions are resampled with replacement and the same questions are used for both models,
    so the between-question variance cancels. Pairs where either side is None/NaN are dropped
    (``n`` says how many pairs were used).
    """
    t = np.array([np.nan if v is None else v for v in treatment], dtype=np.float64)
    c = np.array([np.nan if v is None else v for v in control], dtype=np.float64)
    if t.shape != c.shape:
        raise ValueError(f"paired_bootstrap needs equal lengths, got {t.shape} and {c.shape}")
    keep = np.isfinite(t) & np.isfinite(c)
    return bootstrap_mean_ci(t[keep] - c[keep], n_resamples=n_resamples, ci=ci, seed=seed)


def verdict(ci_low: float, ci_high: float, direction: int = 1) -> str:
    """'better' / 'worse' / 'no significant difference' from a CI of (treatment - control)."""
    if direction == 0 or not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return "n/a" if direction == 0 else "no data"
    if ci_low > 0:
        return "better" if direction > 0 else "worse"
    if ci_high < 0:
        return "worse" if direction > 0 else "better"
    return "no significant difference"


# --------------------------------------------------------------------------- DVC-shaped metrics

def pair_by_key(rows: Sequence[Mapping], model_a: str, model_b: str, metric: str,
                key: str = "qa_id") -> tuple[list, list, list]:
    """Align a metric of two models over the items both have; returns (keys, a, b)."""
    a = {r[key]: r.get(metric) for r in rows if r.get("model") == model_a}
    b = {r[key]: r.get(metric) for r in rows if r.get("model") == model_b}
    keys = [k for k in a if k in b]
    return keys, [a[k] for k in keys], [b[k] for k in keys]


def flat_summary(rows: Sequence[Mapping], models: Sequence[str], metrics: Sequence[str],
                 comparisons: Sequence[tuple[str, str, str]], n_resamples: int = 2000,
                 ci: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Flat keys for ``dvc metrics show``/``diff``.

    ``<model>.<metric>.{mean,ci_low,ci_high}`` for each model and
    ``<name>.<metric>.{mean,ci_low,ci_high}`` for each comparison ``(name, treatment, control)``
    (paired over ``qa_id``), plus ``n`` (questions) and ``<model>.n``.
    """
    out: dict[str, float] = {}
    qa_ids = set()
    for m in models:
        mrows = [r for r in rows if r.get("model") == m]
        qa_ids.update(r["qa_id"] for r in mrows)
        out[f"{m}.n"] = len(mrows)
        for metric in metrics:
            s = bootstrap_mean_ci([r.get(metric) for r in mrows], n_resamples, ci, seed)
            for k in ("mean", "ci_low", "ci_high"):
                out[f"{m}.{metric}.{k}"] = _round(s[k])
    for name, treat, ctrl in comparisons:
        for metric in metrics:
            _, a, b = pair_by_key(rows, treat, ctrl, metric)
            s = paired_bootstrap(a, b, n_resamples, ci, seed)
            for k in ("mean", "ci_low", "ci_high"):
                out[f"{name}.{metric}.{k}"] = _round(s[k])
    out["n"] = len(qa_ids)
    return out


def _round(v: float, digits: int = 6):
    if v is None or not np.isfinite(v):
        return None  # JSON has no NaN; DVC shows "-"
    return round(float(v), digits)
