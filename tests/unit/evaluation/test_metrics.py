"""Metric functions on hand-made pairs with a known ordering, and the bootstrap CIs.

identical > paraphrase > unrelated must hold for every similarity metric the evaluate stage
reports; the bootstrap must cover a known effect and include 0 when there is none.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policytune.evaluation import metrics as M
REF = "Employees must submit expense claims within 30 days of the purchase date."
PARA = "Staff have to file their expense claims no later than 30 days after buying."
UNREL = "The cafeteria serves vegetarian lunch on Fridays between noon and two."

PAIRS = [  # (reference, paraphrase, unrelated)
    (REF, PARA, UNREL),
    ("High-risk AI systems must pass a conformity assessment before they are deployed.",
     "Before deployment, a high-risk AI system has to undergo a conformity assessment.",
     "Annual leave requests need the approval of your line manager."),
    ("Personal data may only be processed when there is a lawful basis such as consent.",
     "Processing of personal data requires a lawful basis, for example the person's consent.",
     "The parking garage closes at ten in the evening on weekdays."),
]


@pytest.mark.parametrize("fn", [M.token_f1, M.rouge_l, M.bleu])
@pytest.mark.parametrize("ref,para,unrel", PAIRS)
def test_lexical_ordering(fn, ref, para, unrel):
    same, close, far = fn(ref, ref), fn(para, ref), fn(unrel, ref)
    assert same == pytest.approx(1.0)
    assert same > close > far >= 0.0


def test_lexical_known_values():
    assert M.tokenize("The AI-Act, Art. 6!") == ["the", "ai", "act", "art", "6"]
    # token F1: articles ignored; 2 of 3 tokens shared each way
    assert M.token_f1("the cat sat", "a cat sat down") == pytest.approx(2 * (1.0 * 2 / 3) / (1.0 + 2 / 3))
    # ROUGE-L: LCS of "a b c d" and "a c d e" is "a c d" (3)
    assert M.lcs_length("a b c d".split(), "a c d e".split()) == 3
    assert M.rouge_l("a b c d", "a c d e") == pytest.approx(0.75)
    assert M.token_f1("", "") == 1.0 and M.token_f1("x", "") == 0.0
    assert M.bleu("", "reference text") == 0.0
    assert M.bleu("totally different words", "reference text here") == 0.0


def test_bleu_matches_nltk_method1():
    nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
    smooth = nltk_bleu.SmoothingFunction().method1
    cases = [(PARA, REF), (UNREL, REF), ("employees must submit claims", REF), (REF, REF),
             ("30 days", REF), ("within 30 days of the purchase date employees must submit", REF)]
    for pred, ref in cases:
        ours = M.bleu(pred, ref)
        theirs = nltk_bleu.sentence_bleu([M.tokenize(ref)], M.tokenize(pred), smoothing_function=smooth)
        assert ours == pytest.approx(theirs, abs=1e-9), (pred, ours, theirs)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="abc d.", max_size=30), st.text(alphabet="abc d.", max_size=30))
def test_lexical_bounds(pred, ref):
    for fn in (M.token_f1, M.rouge_l, M.bleu):
        v = fn(pred, ref)
        assert 0.0 <= v <= 1.0 + 1e-12
    assert M.rouge_l(pred, ref) == pytest.approx(M.rouge_l(ref, pred))  # F1 is symmetric
    assert M.token_f1(pred, ref) == pytest.approx(M.token_f1(ref, pred))


def test_describe_matches_study_shape():
    d = M.describe([0.1, 0.2, None, 0.3, 0.4, float("nan")])
    assert d["n"] == 4
    assert d["mean"] == pytest.approx(0.25)
    assert d["std"] == pytest.approx(np.std([0.1, 0.2, 0.3, 0.4], ddof=1))
    assert (d["min"], d["50%"], d["max"]) == pytest.approx((0.1, 0.25, 0.4))
    assert d["25%"] == pytest.approx(0.175) and d["75%"] == pytest.approx(0.325)
    assert M.describe([])["n"] == 0 and math.isnan(M.describe([])["mean"])


def test_paired_bootstrap_known_effect():
    rng = np.random.default_rng(1)
    n = 120
    base = rng.normal(0.6, 0.15, n)              # large between-question variance ...
    ft = base + 0.03 + rng.normal(0, 0.02, n)    # ... and a small, consistent true effect
    s = M.paired_bootstrap(ft, base, n_resamples=2000, seed=0)
    assert s["n"] == n
    assert s["ci_low"] < 0.03 < s["ci_high"]
    assert s["ci_low"] > 0
    assert M.verdict(s["ci_low"], s["ci_high"], +1) == "better"
    assert M.verdict(s["ci_low"], s["ci_high"], -1) == "worse"  # e.g. perplexity went up
    # The unpaired view of the same data cannot see it: the per-model CIs overlap.
    a, b = M.bootstrap_mean_ci(ft), M.bootstrap_mean_ci(base)
    assert a["ci_low"] < b["ci_high"]


def test_paired_bootstrap_no_effect():
    rng = np.random.default_rng(2)
    n = 120
    base = rng.normal(0.6, 0.15, n)
    ft = base + rng.normal(0, 0.03, n)
    s = M.paired_bootstrap(ft, base, n_resamples=2000, seed=0)
    assert s["ci_low"] < 0 < s["ci_high"]
    assert M.verdict(s["ci_low"], s["ci_high"]) == "no significant difference"


def test_paired_bootstrap_drops_failed_pairs_and_is_deterministic():
    s1 = M.paired_bootstrap([1.0, None, 0.5, float("nan")], [0.0, 0.2, 0.5, 0.1], seed=3)
    s2 = M.paired_bootstrap([1.0, None, 0.5, float("nan")], [0.0, 0.2, 0.5, 0.1], seed=3)
    assert s1 == s2 and s1["n"] == 2 and s1["mean"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        M.paired_bootstrap([1.0], [1.0, 2.0])
    assert M.verdict(float("nan"), float("nan")) == "no data"
    assert M.verdict(-1, 1, 0) == "n/a"


def test_flat_summary_keys():
    rows = []
    for i in range(10):
        rows.append({"qa_id": f"q{i}", "model": "base", "bleu": 0.1 * (i % 3), "ref_ppl": 10.0})
        rows.append({"qa_id": f"q{i}", "model": "finetuned", "bleu": 0.1 * (i % 3) + 0.2, "ref_ppl": 8.0})
    out = M.flat_summary(rows, ["base", "finetuned"], ["bleu", "ref_ppl"],
                         [("delta", "finetuned", "base")], n_resamples=200)
    assert out["n"] == 10 and out["base.n"] == 10
    assert out["delta.bleu.mean"] == pytest.approx(0.2)
    assert out["delta.ref_ppl.ci_low"] == pytest.approx(-2.0)
    for k in ("base.bleu.mean", "finetuned.bleu.ci_low", "delta.bleu.ci_high"):
        assert k in out
    assert all("." in k or k == "n" for k in out)
