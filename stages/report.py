"""report: the study's tables for base vs fine-tuned, with confidence intervals and verdicts.

Reads   metrics/eval.json, data/eval/per_example.jsonl, data/eval/answers.jsonl  (evaluate)
        metrics/judge.json, data/judge/scores.jsonl   (judge; optional: "judge not run" without)
        data/stats/evaluate.json, data/stats/judge.json  (timings; optional)
        metrics/train.json, metrics/data.json  (training summary, pipeline counts; optional)
        lineage, each optional: data/raw/manifest.jsonl, data/chunks.jsonl, data/qa.jsonl,
        data/split/{train,val,test}.jsonl, data/augment/train.jsonl, params.yaml,
        models/*/policytune_model.json, models/adapter/policytune_train.json
Params  ``report`` (see :class:`ReportConfig`).
Writes  metrics/report.md             the report (GitHub-flavoured Markdown)
        metrics/report.html           the same content as one HTML page (all text escaped)
        metrics/report_assets/*.png   its plots (matplotlib)

Contents: a headline answer to "did fine-tuning help?"; Table 1 of the study (BERTScore,
cosine, relevance: mean, std, min, 25%, 50%, 75%, max for fine-tuned and base) and the same
statistics for every other metric; Tables 2/3 (LLM-judge metrics) when the judge ran; every
delta with its confidence interval (paired bootstrap over questions, from metrics/eval.json and
metrics/judge.json) and a verdict read off the interval (better / worse / no significant
difference); judge failure counts; example questions with the reference and both answers side
by side; plots; evaluation timings; and the data lineage (corpus hash, QA count, split sizes,
model manifests, params).
"""

from __future__ import annotations

import sys
from pathlib import Path

from policytune.core.params import ParamsError, load_section
from policytune.core.progress import get_logger
from policytune.core.stage import stage_parser
from policytune.report.build import ASSETS, ReportConfig, write_report
from policytune.report.inputs import load_inputs

log = get_logger("report")

PATHS = {
    "out_md": "metrics/report.md", "out_html": "metrics/report.html",
    "eval_json": "metrics/eval.json", "per_example": "data/eval/per_example.jsonl",
    "answers": "data/eval/answers.jsonl", "judge_json": "metrics/judge.json",
    "judge_scores": "data/judge/scores.jsonl", "eval_stats": "data/stats/evaluate.json",
    "judge_stats": "data/stats/judge.json", "train_json": "metrics/train.json", "data_json": "metrics/data.json",
}
INPUTS = ("eval_json", "per_example", "answers", "judge_json", "judge_scores", "eval_stats", "judge_stats",
          "train_json", "data_json")


def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__, "report", PATHS, ReportConfig).parse_args(argv)
    try:
        cfg = load_section(ReportConfig, "report", args.params)
    except ParamsError as e:
        raise SystemExit(f"report: {e}") from None
    inp = load_inputs(**{k: Path(getattr(args, k)) for k in INPUTS})
    write_report(inp, cfg, Path(args.out_md), Path(args.out_html))
    log.info("wrote %s, %s and %s/ (judge %s)", args.out_md, args.out_html, Path(args.out_md).parent / ASSETS,
             "included" if inp.judge_scores is not None else "not run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
