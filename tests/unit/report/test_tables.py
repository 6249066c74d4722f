"""The report's pure helpers: which example questions it shows, Markdown escaping, number
formatting, judge metric keys, and the polars metric frame (the same statistics as
metrics.describe) and judge pivot."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from policytune.evaluation import metrics as M
from policytune.report.document import md_text
from policytune.report.format import fmt, judge_key
from policytune.report.tables import describe_by_model, judge_wide, metric_frame, pick_examples
from tests.helpers.report_rows import fixture_rows


def test_pick_examples_and_md_escape():
    pe, _ = fixture_rows()
    picks = pick_examples(pe, "bertscore_f1", 5)
    assert len(picks) == 5 and len({q for q, _ in picks}) == 5
    assert "largest improvement" in picks[0][1] and "largest improvement" in picks[1][1]
    assert [w.split(" in ")[0] for _, w in picks][2:4] == ["smallest improvement"] * 2  # no regressions here
    worse = [dict(r, bertscore_f1=-r["bertscore_f1"]) if r["model"] == "finetuned" else r for r in pe]
    assert any("largest regression" in w for _, w in pick_examples(worse, "bertscore_f1", 5))
    # lower perplexity is the improvement
    ppl = pick_examples(pe, "ref_ppl", 3)
    assert ppl[0][1].startswith("largest improvement in ref_ppl (-")
    assert any(w.startswith("typical") for _, w in picks)
    assert md_text("a|b\nc *d*") == "a\\|b<br>c \\*d\\*"
    assert fmt(None) == "–" and fmt(0.12345) == "0.123" and fmt(1234.5, "ref_ppl") == "1234.5"
    assert judge_key("Correctness") == "correctness" and judge_key("Answer Relevancy") == "answer_relevancy"


# ---------------------------------------------------------------------------------------------
# the polars metric frame: the same statistics as metrics.describe, the judge pivot
# ---------------------------------------------------------------------------------------------

value = st.one_of(st.none(), st.just(math.nan), st.just(math.inf),
                  st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), st.integers(-1000, 1000))


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.fixed_dictionaries({"model": st.sampled_from(["base", "finetuned", "base_rag"]),
                                            "a": value, "b": value}), max_size=30))
def test_describe_by_model_matches_metrics_describe(rows):
    models = ["base", "finetuned", "finetuned_rag"]  # finetuned_rag never present: n 0, all NaN
    got = describe_by_model(rows, models, ["a", "b"])
    assert set(got) == {(m, k) for m in models for k in ("a", "b")}
    for (m, k), stats in got.items():
        want = M.describe([r.get(k) for r in rows if r["model"] == m])
        assert stats["n"] == want["n"] and set(stats) == set(want)
        for s in M.STATS:
            if math.isnan(want[s]):
                assert math.isnan(stats[s]), (m, k, s)
            else:
                assert math.isclose(stats[s], want[s], rel_tol=1e-9, abs_tol=1e-9), (m, k, s, stats[s], want[s])


def test_metric_frame_is_long_and_finite_only():
    rows = [{"model": "base", "a": 1.0, "b": None}, {"model": "finetuned", "a": math.inf, "b": 2}]
    df = metric_frame(rows, ["a", "b"])
    assert df.columns == ["model", "metric", "value"]
    assert df.rows() == [("base", "a", 1.0), ("finetuned", "b", 2.0)]


def test_judge_wide_pivots_in_first_seen_order():
    scores = [
        {"qa_id": "q2", "model": "base", "metric": "Correctness", "score": 0.5, "failed": False},
        {"qa_id": "q2", "model": "base", "metric": "Answer Relevancy", "score": None, "failed": True},
        {"qa_id": "q1", "model": "finetuned", "metric": "Correctness", "score": 0.9, "failed": False},
        {"qa_id": "q1", "model": "finetuned", "metric": "Correctness", "score": 0.7, "failed": False},  # repeat: last
        {"qa_id": "q1", "model": "base", "metric": "Answer Relevancy", "score": 1, "failed": False},
    ]
    rows, keys, names = judge_wide(scores)
    assert keys == ["correctness", "answer_relevancy"]
    assert names == {"correctness": "Correctness", "answer_relevancy": "Answer Relevancy"}
    assert rows == [{"qa_id": "q2", "model": "base", "correctness": 0.5, "answer_relevancy": None},
                    {"qa_id": "q1", "model": "finetuned", "correctness": 0.7, "answer_relevancy": None},
                    {"qa_id": "q1", "model": "base", "correctness": None, "answer_relevancy": 1.0}]
    assert judge_wide([]) == ([], [], {})


def test_report_shows_retention_and_the_low_retention_pages():
    from policytune.report.build import _retention
    from policytune.report.document import Doc, render_markdown

    doc = Doc()
    _retention(doc, {"retention": {"pages": 3, "kept_share": 0.9512, "pdf_chars": 9512, "main_chars": 10000,
                                   "visible_chars": 14000, "chrome_chars": 4000, "min": 0.61, "pages_below": 1,
                                   "min_retention": 0.9},
                     "low_retention": 1, "sections": {"found": 40, "kept": 38},
                     "rejected_by_reason": {"too_slow": 1},
                     "low_retention_pages": [{"url": "https://gov.example/act", "status": "low_retention",
                                              "retention": 0.61, "pdf_chars": 610, "main_chars": 1000}]})
    md = render_markdown(doc)
    assert "95.1%" in md and "1 page(s) below render.min" in md and "found 40, kept 38" in md
    assert "https://gov.example/act" in md and "0.610" in md and "too\\_slow" in md
