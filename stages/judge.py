"""judge: LLM-as-a-judge scores of every answer with deepeval's G-Eval metrics.

Reads   data/eval/answers.jsonl     {qa_id, model, question, reference, answer, gen}
        data/split/test.jsonl       qa_id -> chunk_id (the source of each test question)
        data/split/test.jsonl       qa_id, question, answer (the reference): the judge probe
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
                                    judge_calls, failures, cache_hits; the judge probe's
                                    probe.{exact,other,vague,number_changed}.{mean,n,failures},
                                    probe.auc (exact vs all wrong answers), probe.auc_<kind>,
                                    probe.n, probe.separates (1: exact >= 0.8, other and vague
                                    <= 0.2, AUC >= 0.95)
        data/judge/probe.jsonl      the probe's rows {qa_id, kind, metric, score, failed, question,
                                    reference, answer, raw}; empty with probe.enabled: false
        data/stats/judge.json       timings, judge identity, evaluation steps, cache and
                                    prefix-cache counters

Each metric is a ``deepeval.metrics.GEval`` (criteria from params, a 1..5 rubric, so the score
is one digit token; ``rubrics.<metric>`` gives one metric an anchored rubric that says what each
score means for it) measured on an ``LLMTestCase``; GEval generates the evaluation steps, renders
the prompts and computes the score. ``score_temperature.<metric>`` (local judge) sharpens that
metric's score-token distribution before GEval's weighted sum (temperature scaling: the most
likely score and the order of judgements stay, the scale's ends are reached); Correctness is
calibrated with both on the judge probe below. Its results prompt is, by default (``prompt: compact``), a
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

The judge probe (``probe.enabled``, :mod:`policytune.evaluation.judge_probe`) tells a reader how
far to trust the judge's scale: for each test question (the first ``probe.limit``) the reference
itself, another question's reference, a vague non-answer and the reference with one number
changed are scored with the same GEval metric (``probe.metric``: Correctness), judge and cache
as the real answers; the mean per kind and the AUC of right against wrong go into
metrics/judge.json, the rows into data/judge/probe.jsonl.
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
from policytune.evaluation.judge_probe import log_probe, probe_config, run_probe  # noqa: E402

PATHS = {"answers": "data/eval/answers.jsonl", "test": "data/split/test.jsonl", "chunks": "data/chunks.jsonl",
         "scores": "data/judge/scores.jsonl", "cache": "data/judge/cache", "metrics": "metrics/judge.json",
         "stats": "data/stats/judge.json", "probe": "data/judge/probe.jsonl"}

log = get_logger("judge")


def _load_config(params: str | None) -> tuple[JudgeConfig, list[dict]]:
    try:
        cfg = load_section(JudgeConfig, "judge", params)
        specs = metric_specs(cfg)
        rubric_items(cfg)
        if cfg.probe.enabled:
            probe_config(cfg)
    except ParamsError as e:
        raise SystemExit(f"judge: {e}") from None
    return cfg, specs


def _read_inputs(args, cfg: JudgeConfig, specs: list[dict]) -> tuple[list[dict], dict[str, tuple[str, str]],
                                                                        list[dict] | None]:
    """(answers, qa_id -> source document, test rows); test rows when a metric or the probe
    needs them, chunks only when a metric needs them."""
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
    if cfg.probe.enabled and test_rows is None:
        if not Path(args.test).is_file():
            raise SystemExit(f"judge: {args.test} not found (the judge probe is built from it); run split, "
                             f"or set judge.probe.enabled: false")
        test_rows = read_jsonl(args.test)
    return answers, load_contexts(answers, test_rows, chunks), test_rows


def main(argv: list[str] | None = None) -> int:
    args = stage_parser(__doc__, "judge", PATHS, JudgeConfig).parse_args(argv)
    cfg, specs = _load_config(args.params)
    answers, contexts, test_rows = _read_inputs(args, cfg, specs)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    judge = build_judge(cfg)
    log.info("judge %s (%s scoring), %d metric(s): %s", judge.get_model_name(), judge.scoring, len(specs),
             ", ".join(s["name"] for s in specs))
    cache = judge_cache(args.cache)
    probe_rows: list[dict] = []
    try:
        rows, metrics, stats = judge_answers(answers, contexts, cfg, judge, cache)
        if cfg.probe.enabled:
            probe_rows, probe_metrics, stats["probe"] = run_probe(test_rows or [], cfg, judge, cache)
            metrics.update(probe_metrics)
    except (JudgeStageError, ParamsError) as e:
        raise SystemExit(f"judge: {e}") from None
    stats["params"] = to_dict(cfg)
    write_jsonl(args.scores, rows)
    write_jsonl(args.probe, probe_rows)
    write_json(args.metrics, metrics)
    write_json(args.stats, stats)
    log_results(metrics, stats, specs)
    if cfg.probe.enabled:
        log_probe(log, metrics, cfg.probe.metric)
    return 0


if __name__ == "__main__":
    sys.exit(main())
