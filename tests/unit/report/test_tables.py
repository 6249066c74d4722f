"""The report's pure helpers: which example questions it shows, Markdown escaping, number
formatting and judge metric keys."""

from __future__ import annotations

from policytune.report.document import md_text
from policytune.report.format import fmt, judge_key
from policytune.report.tables import pick_examples
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
