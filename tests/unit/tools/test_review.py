"""The PR review comment's base-vs-fine-tuned table uses each metric's good direction."""

from __future__ import annotations

import json

from policytune.tools.review import eval_table


def test_eval_table_verdicts_follow_metric_direction(tmp_path):
    m = {"n": 30,
         "base": {"bertscore_f1": {"mean": 0.61}, "ref_ppl": {"mean": 40.8}, "answer_len": {"mean": 47.5},
                  "cosine": {"mean": 0.35}},
         "finetuned": {"bertscore_f1": {"mean": 0.59}, "ref_ppl": {"mean": 37.0}, "answer_len": {"mean": 30.7},
                       "cosine": {"mean": 0.33}},
         "delta": {"bertscore_f1": {"mean": -0.02, "ci_low": -0.045, "ci_high": -0.001},
                   "ref_ppl": {"mean": -3.8, "ci_low": -5.3, "ci_high": -2.5},
                   "answer_len": {"mean": -16.8, "ci_low": -26.2, "ci_high": -7.7},
                   "cosine": {"mean": -0.02, "ci_low": -0.07, "ci_high": 0.02}}}
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(m))
    rows = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in eval_table(path).splitlines()
            if line.startswith("| ") and not line.startswith("| metric")}
    assert rows == {"answer_len": "n/a", "bertscore_f1": "worse", "cosine": "no significant difference",
                    "ref_ppl": "better"}
    assert "n = 30 test questions" in eval_table(path)
    assert "not found" in eval_table(tmp_path / "missing.json")


def test_metrics_diff_headline_rows_first_full_table_collapsed():
    from policytune.tools.review import split_metrics_diff

    md = """| Path | Metric | main | workspace | Change |
|------|--------|------|-----------|--------|
| metrics/train.json | best_eval_loss | 2.99 | 2.98 | -0.01 |
| metrics/eval.json | delta.ref_ppl.mean | -3.8 | -3.6 | 0.2 |
| metrics/eval.json | delta.ref_ppl.ci_low | -5.2 | -5.0 | 0.2 |
| metrics/judge.json | judge_failures | 0 | 1 | 1 |
| metrics/data.json | chunks_sent | 112 | 113 | 1 |
"""
    out = split_metrics_diff(md)
    head, details = out.split("<details>")
    assert "best_eval_loss" in head and "delta.ref_ppl.mean" in head and "judge_failures" in head
    assert "ci_low" not in head and "chunks_sent" not in head
    assert "All 5 changed metrics" in details and "ci_low" in details and "chunks_sent" in details
    assert split_metrics_diff("") == "_no metric changed_"
