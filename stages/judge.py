"""judge: LLM-as-a-judge scores of every answer with deepeval's G-Eval metrics.

Reads   data/eval/answers.jsonl     {qa_id, model, question, reference, answer, gen}
        data/split/test.jsonl       qa_id -> chunk_id (the source of each test question)
        data/chunks.jsonl           chunk_id -> text (the "source document" for Consistency)
        models/judge                the local judge (backend: local)
Params  ``judge`` (see :class:`JudgeConfig`).
Writes  data/judge/scores.jsonl     one row per (qa_id, model, metric): score in 0..1 or null,
                                    raw (score-token probabilities, or the judge's raw texts),
                                    reason, failed, attempts
        data/judge/cache/           every judgement and every metric's evaluation steps, keyed
                                    by content hash (persisted: a rerun with nothing changed
                                    calls no model; a killed run resumes where it stopped)
        metrics/judge.json          flat DVC keys: <model>.<metric>.{mean,ci_low,ci_high,n,failures},
                                    delta.<metric>.{mean,ci_low,ci_high,n} (fine-tuned minus base,
                                    95% paired bootstrap over questions), n, judgements,
                                    judge_calls, failures, cache_hits
        data/stats/judge.json       timings, judge identity, evaluation steps, cache and
                                    prefix-cache counters

Each metric is a ``deepeval.metrics.GEval`` (criteria from params, a 1..5 rubric, so the score
is one digit token) measured on an ``LLMTestCase``; GEval generates the evaluation steps, renders
the prompts and computes the score. Its results prompt is, by default (``prompt: compact``), a
short one in the G-Eval paper's shape passed through GEval's ``evaluation_template`` hook
(criteria, steps, rubric, test case, score asked first); ``prompt: deepeval`` keeps deepeval's
own template, with which a 1.5B local judge gives nearly flat score probabilities (see
bench/bench_judge.py). The judge model behind it is chosen in params: ``local`` (default) scores from the
probabilities of the score tokens with the shared prompt prefix KV-cached
(:class:`policytune.evaluation.judge_llm.ProbabilityJudge`), ``openai``/``bedrock`` write free-text JSON
that is parsed and retried up to ``max_retries`` times (:class:`policytune.evaluation.judge_llm.TextJudge`).
A judgement whose output never parses is a failure: score null, ``failed: true``, the reason
and the raw outputs kept, counted per model and metric — never silently scored. An empty
answer is scored 0 without calling the judge and counted as ``<model>.empty_answers``.
External test questions (``split.external_test``) have no source chunk: Consistency then uses
the reference answer as the source document (``context_source: reference`` in the row, and
counted in the stats).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["DEEPEVAL_TELEMETRY_OPT_OUT"] = "YES"  # deepeval must never phone home
os.environ.setdefault("DEEPEVAL_DISABLE_DOTENV", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from policytune.core.params import ParamsError, load_section, to_dict  # noqa: E402
from policytune.core.progress import get_logger  # noqa: E402
from policytune.core.records import read_jsonl, write_json, write_jsonl  # noqa: E402
from policytune.core.stage import stage_parser  # noqa: E402
from policytune.evaluation.judge import (JudgeConfig, JudgeStageError, build_judge, judge_answers,  # noqa: E402
                                         judge_cache, load_contexts, log_results, metric_specs, rubric_items)

PATHS = {"answers": "data/eval/answers.jsonl", "test": "data/split/test.jsonl", "chunks": "data/chunks.jsonl",
         "scores": "data/judge/scores.jsonl", "cache": "data/judge/cache", "metrics": "metrics/judge.json",
         "stats": "data/stats/judge.json"}

log = get_logger("judge")


def _load_config(params: str | None) -> tuple[JudgeConfig, list[dict]]:
    try:
        cfg = load_section(JudgeConfig, "judge", params)
        specs = metric_specs(cfg)
        rubric_items(cfg)
    except ParamsError as e:
        raise SystemExit(f"judge: {e}") from None
    return cfg, specs


def _read_inputs(args, specs: list[dict]) -> tuple[list[dict], dict[str, tuple[str, str]]]:
    """(answers, qa_id -> source document); test rows and chunks only when a metric needs them."""
    if not Path(args.answers).is_file():
        raise SystemExit(f"judge: {args.answers} not found; run the evaluate stage first")
    answers = read_jsonl(args.answers)
    needs_context = any("context" in s["params"] for s in specs)
    test_rows = chunks = None
    if needs_context:
        for p in (args.test, args.chunks):
            if not Path(p).is_file():
                raise SystemExit(f"judge: {p} not found (Consistency needs the source chunks); run split/extract")
        test_rows, chunks = read_jsonl(args.test), read_jsonl(args.chunks)
    return answers, load_contexts(answers, test_rows, chunks)


def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__, "judge", PATHS, JudgeConfig).parse_args(argv)
    cfg, specs = _load_config(args.params)
    answers, contexts = _read_inputs(args, specs)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    judge = build_judge(cfg)
    log.info("judge %s (%s scoring), %d metric(s): %s", judge.get_model_name(), judge.scoring, len(specs),
             ", ".join(s["name"] for s in specs))
    try:
        rows, metrics, stats = judge_answers(answers, contexts, cfg, judge, judge_cache(args.cache))
    except (JudgeStageError, ParamsError) as e:
        raise SystemExit(f"judge: {e}") from None
    stats["params"] = to_dict(cfg)
    write_jsonl(args.scores, rows)
    write_json(args.metrics, metrics)
    write_json(args.stats, stats)
    log_results(metrics, stats, specs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
