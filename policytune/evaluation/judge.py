"""The judge stage's core: LLM-as-a-judge scores of every answer with deepeval's G-Eval metrics.

Each metric is a ``deepeval.metrics.GEval`` (criteria from params, a rubric, evaluation steps
pinned in params or generated once by the judge) measured on an ``LLMTestCase`` through one of
the judge wrappers of :mod:`policytune.evaluation.judge_llm`. Every judgement and every
metric's evaluation steps are kept in a content-addressed :class:`JsonCache`, so a rerun with
nothing changed calls no model and a killed run resumes where it stopped. A judgement whose
output never parses is a counted failure (score null), an empty answer is scored 0 without
calling the judge; :func:`summarise` turns the scores into flat DVC keys with paired bootstrap
CIs of fine-tuned minus base.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Optional

os.environ["DEEPEVAL_TELEMETRY_OPT_OUT"] = "YES"  # deepeval must never phone home
os.environ.setdefault("DEEPEVAL_DISABLE_DOTENV", "1")

from policytune.core.cache import JsonCache  # noqa: E402
from policytune.core.params import (Dtype, NonNegFloat, NonNegInt, ParamsError, PositiveInt,  # noqa: E402
                                     Range)
from policytune.core.progress import Progress, get_logger  # noqa: E402
from policytune.core.records import stable_id  # noqa: E402
from policytune.evaluation.config import COMPARISONS as EVAL_COMPARISONS  # noqa: E402
from policytune.evaluation.metrics import flat_summary, pair_by_key  # noqa: E402
from policytune.lm.backends import BedrockConfig, OpenAIConfig  # noqa: E402

CACHE_VERSION = 1  # bump when a change makes old cached judgements invalid

log = get_logger("judge")

# The reference study's five DeepEval G-Eval metrics, with its criteria.
DEFAULT_METRICS = {
    "Correctness": "Determine whether the actual output is factually correct based on the expected output",
    "Helpfulness": "Assess whether the response provides useful and relevant information to the user's query",
    "Relevance": "Evaluate whether the response directly addresses the input query",
    "Coherence": "Assess whether the response is logically structured and consistent",
    "Consistency": "Evaluate whether the response contains only statements that are entailed by the source document",
}
DEFAULT_EVALUATION_PARAMS = {
    "Correctness": ["input", "actual_output", "expected_output"],
    "Helpfulness": ["input", "actual_output"],
    "Relevance": ["input", "actual_output"],
    "Coherence": ["input", "actual_output"],
    "Consistency": ["actual_output", "context"],
}
# One digit per level (the probability scorer reads one token), so 1..5 rather than GEval's 0..10.
DEFAULT_RUBRIC = {
    1: "The response does not meet the criterion at all.",
    2: "The response meets the criterion poorly, with major problems.",
    3: "The response partly meets the criterion, with noticeable problems.",
    4: "The response mostly meets the criterion, with minor problems.",
    5: "The response fully meets the criterion.",
}
PARAM_NAMES = ("input", "actual_output", "expected_output", "context")
# (key prefix in metrics/judge.json, treatment, control): paired over qa_id when both are present.
# The first two comparisons of the evaluate stage (delta, delta_rag): one source of truth.
COMPARISONS = EVAL_COMPARISONS[:2]


@dataclass
class ProbeConfig:
    enabled: bool = field(default=True, metadata={
        "help": "also score a probe built from the test set (reference-exact, other-question, vague and "
                "one-number-changed answers) with the same metric, judge and cache: data/judge/probe.jsonl, "
                "probe.* keys in metrics/judge.json (policytune.evaluation.judge_probe)"})
    limit: NonNegInt = field(default=0, metadata={"help": "probe the first N test questions; 0 = all"})
    metric: str = field(default="Correctness", metadata={
        "help": "the judge.metrics entry the probe scores (it must see actual_output and expected_output)"})


@dataclass
class JudgeConfig:
    backend: Literal["local", "openai", "bedrock"] = field(default="local", metadata={"help": "local | openai | bedrock"})
    model_dir: str = field(default="models/judge", metadata={"help": "local judge model folder (backend: local)"})
    dtype: Dtype = field(default="auto", metadata={"help": "local: auto | float32 | bfloat16 | float16"})
    device: str = field(default="auto", metadata={"help": "local: auto | cpu | cuda"})
    quantize: Literal["none", "int8", "auto"] = field(default="none", metadata={
        "help": "local: none | int8 | auto (int8 Linear layers on a float32 CPU; changes the scores slightly)"})
    prompt: Literal["compact", "deepeval"] = field(default="compact", metadata={
        "help": "GEval results prompt: compact (G-Eval paper shape: criteria, steps, rubric, test case, "
                "score first; via GEval's evaluation_template hook) | deepeval (deepeval's default template); "
                "both fence the test-case fields as data"})
    scoring: Literal["auto", "probabilities", "text"] = field(default="auto", metadata={
        "help": "probabilities (score = expected value over the score tokens; local only) | text "
                "(free-text JSON, parsed and retried) | auto: probabilities for local, text otherwise"})
    openai: OpenAIConfig = field(default_factory=OpenAIConfig, metadata={"help": "backend: openai"})
    bedrock: BedrockConfig = field(default_factory=BedrockConfig, metadata={"help": "backend: bedrock"})
    metrics: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_METRICS), metadata={
        "help": "G-Eval metric name -> criteria text"})
    evaluation_params: dict[str, list[Literal["input", "actual_output", "expected_output", "context"]]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_EVALUATION_PARAMS.items()},
                                    metadata={"help": "metric name -> test-case fields the judge sees "
                                                      "(input, actual_output, expected_output, context)"})
    evaluation_steps: dict[str, list[str]] = field(default_factory=dict, metadata={
        "help": "metric name -> fixed list of evaluation steps; metrics not listed get steps "
                "generated once by the judge from the criteria (cached)"})
    rubric: dict[int, str] = field(default_factory=lambda: dict(DEFAULT_RUBRIC), metadata={
        "help": "score -> description; consecutive integers, single digits for probability scoring"})
    rubrics: dict[str, dict[int, str]] = field(default_factory=dict, metadata={
        "help": "metric name -> its own anchored rubric (score -> what that score means for this metric; "
                "the same scores as judge.rubric); metrics not listed use judge.rubric"})
    score_temperature: dict[str, Annotated[float, Range(gt=0, le=10)]] = field(default_factory=dict, metadata={
        "help": "metric name -> temperature T of its score-token distribution (probability scoring): GEval "
                "weighs softmax(logits / T); T < 1 sharpens (calibration by temperature scaling, checked by "
                "the judge probe); metrics not listed: 1 = G-Eval's plain weighted sum; ignored by text scoring"})
    max_retries: NonNegInt = field(default=2, metadata={"help": "re-asks after a malformed judge output; then a counted failure"})
    temperature: NonNegFloat = field(default=0.0, metadata={"help": "judge sampling temperature (0 = deterministic)"})
    max_new_tokens: PositiveInt = field(default=256, metadata={"help": "cap on generated tokens (text scoring, evaluation steps)"})
    seed: int = field(default=0, metadata={"help": "judge seed and bootstrap seed"})
    limit: NonNegInt = field(default=0, metadata={"help": "judge only the first N questions (all models); 0 = all"})
    models: list[str] = field(default_factory=list, metadata={"help": "answer models to judge; empty = all in answers"})
    bootstrap: PositiveInt = field(default=2000, metadata={"help": "bootstrap resamples for the delta CIs"})
    ci: Annotated[float, Range(gt=0, lt=1)] = field(default=0.95, metadata={"help": "confidence level of the CIs"})
    probe: ProbeConfig = field(default_factory=ProbeConfig, metadata={
        "help": "the judge probe: how far the judge's scale separates right from wrong answers"})


class JudgeStageError(RuntimeError):
    """Input or configuration the judge stage cannot work with."""


# ---------------------------------------------------------------------------------------------
# configuration checks


def metric_key(name: str) -> str:
    """Metric name -> key in metrics/judge.json ("Correctness" -> "correctness")."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def scoring_mode(cfg: JudgeConfig) -> str:
    if cfg.scoring == "auto":
        return "probabilities" if cfg.backend == "local" else "text"
    if cfg.scoring not in ("probabilities", "text"):
        raise ParamsError(f"judge.scoring must be auto | probabilities | text, got {cfg.scoring!r}")
    if cfg.scoring == "probabilities" and cfg.backend != "local":
        raise ParamsError("judge.scoring: probabilities needs backend: local (API judges give no score-token "
                          "probabilities here); use scoring: text")
    return cfg.scoring


def _checked_rubric(cfg: JudgeConfig, rubric: dict, where: str) -> list[tuple[int, str]]:
    try:
        items = sorted((int(k), str(v)) for k, v in rubric.items())
    except (TypeError, ValueError):
        raise ParamsError(f"{where} keys must be integers, got {list(rubric)}") from None
    scores = [s for s, _ in items]
    if len(scores) < 2 or scores != list(range(scores[0], scores[-1] + 1)) or not 0 <= scores[0] < scores[-1] <= 10:
        raise ParamsError(f"{where} needs at least two consecutive integer scores in 0..10, got {scores}")
    if scoring_mode(cfg) == "probabilities" and scores[-1] > 9:
        raise ParamsError(f"{where}: probability scoring reads one digit token; use scores 0..9")
    return items


def rubric_items(cfg: JudgeConfig, metric: Optional[str] = None) -> list[tuple[int, str]]:
    """[(score, description)] of ``metric``'s rubric (``judge.rubrics.<metric>`` where given, else
    ``judge.rubric``), checked; without a metric, the shared ``judge.rubric`` (whose score range
    every per-metric rubric must have: one judge reads one range of score tokens)."""
    items = _checked_rubric(cfg, cfg.rubric, "judge.rubric")
    if metric is None or metric not in cfg.rubrics:
        return items
    own = _checked_rubric(cfg, cfg.rubrics[metric], f"judge.rubrics.{metric}")
    if [s for s, _ in own] != [s for s, _ in items]:
        raise ParamsError(f"judge.rubrics.{metric} scores {[s for s, _ in own]} differ from judge.rubric's "
                          f"{[s for s, _ in items]}")
    return own


def metric_specs(cfg: JudgeConfig) -> list[dict]:
    """[{name, key, criteria, params}] in params order, checked."""
    if not cfg.metrics:
        raise ParamsError("judge.metrics is empty")
    specs, keys = [], set()
    for name, criteria in cfg.metrics.items():
        if not isinstance(criteria, str) or not criteria.strip():
            raise ParamsError(f"judge.metrics.{name}: criteria must be a non-empty string")
        params = cfg.evaluation_params.get(name)
        if params is None:
            raise ParamsError(f"judge.evaluation_params.{name} is missing: list the fields the judge sees "
                              f"for this metric ({', '.join(PARAM_NAMES)})")
        bad = [p for p in params if p not in PARAM_NAMES]
        if bad or not params:
            raise ParamsError(f"judge.evaluation_params.{name}: {bad or 'empty'}; choose from {', '.join(PARAM_NAMES)}")
        steps = cfg.evaluation_steps.get(name)
        if steps is not None and (not isinstance(steps, list) or not all(isinstance(s, str) and s.strip() for s in steps)):
            raise ParamsError(f"judge.evaluation_steps.{name} must be a list of non-empty strings")
        key = metric_key(name)
        if key in keys:
            raise ParamsError(f"judge.metrics: two metrics map to the key {key!r}")
        keys.add(key)
        specs.append({"name": name, "key": key, "criteria": criteria.strip(), "params": list(params),
                      "steps": list(steps) if steps else None})
    for what in ("evaluation_steps", "rubrics", "score_temperature"):
        unknown = sorted(set(getattr(cfg, what)) - set(cfg.metrics))
        if unknown:
            raise ParamsError(f"judge.{what} names unknown metric(s) {unknown}; metrics: {list(cfg.metrics)}")
    for spec in specs:
        spec["rubric"] = rubric_items(cfg, spec["name"])
    return specs


# ---------------------------------------------------------------------------------------------
# cache


def _unreadable(path: Path) -> None:
    log.warning("unreadable or malformed cache entry %s; judging again", path)


JUDGEMENT_KEYS = frozenset({"score", "raw", "failed", "attempts", "reason", "seconds", "qa_id", "model", "metric"})


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def valid_judgement(entry: dict) -> bool:
    """The shape :func:`judge_answers` writes: :func:`judge_one`'s record (score in 0..1, or None
    for a failure; raw; failed: bool; attempts: int >= 0; reason: str; seconds) plus qa_id,
    model and metric strings. ``[]``, ``{"failed": false}`` and the like are corrupt: judged again."""
    if not JUDGEMENT_KEYS <= set(entry):
        return False
    failed, score, attempts = entry["failed"], entry["score"], entry["attempts"]
    if not isinstance(failed, bool) or not isinstance(entry["reason"], str) or not _number(entry["seconds"]):
        return False
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        return False
    if not all(isinstance(entry[k], str) for k in ("qa_id", "model", "metric")):
        return False
    return score is None if failed else (_number(score) and 0.0 <= score <= 1.0)


def valid_steps(entry: dict) -> bool:
    """A cached evaluation-steps record: ``steps`` is a non-empty list of non-empty strings."""
    steps = entry.get("steps")
    return isinstance(steps, list) and bool(steps) and all(isinstance(x, str) and x.strip() for x in steps)


def judge_cache(root: str | Path) -> JsonCache:
    """One JSON file per key under ``root/<key[:2]>/``, written atomically (a killed run loses at
    most the judgement in flight); an unreadable or wrong-shape entry (:func:`valid_judgement`,
    :func:`valid_steps` for steps) is logged, counted (``cache_corrupt``) and judged again."""
    return JsonCache(root, fmt="indent2", on_corrupt=_unreadable, validate=valid_judgement)


# ---------------------------------------------------------------------------------------------
# inputs


def load_contexts(answers: list[dict], test_rows: Optional[list[dict]], chunks: Optional[list[dict]]) -> dict[str, tuple[str, str]]:
    """qa_id -> (source document, where from: chunk | reference)."""
    chunk_of = {r["qa_id"]: r.get("chunk_id") for r in (test_rows or []) if "qa_id" in r}
    text_of = {c["chunk_id"]: c.get("text", "") for c in (chunks or []) if "chunk_id" in c}
    out = {}
    for a in answers:
        cid = chunk_of.get(a["qa_id"])
        text = text_of.get(cid) if cid else None
        out[a["qa_id"]] = (text, "chunk") if text else (a.get("reference") or "", "reference")
    return out


def select_answers(answers: list[dict], cfg: JudgeConfig) -> list[dict]:
    required = ("qa_id", "model", "question", "reference", "answer")
    for i, a in enumerate(answers, 1):
        missing = [k for k in required if not isinstance(a.get(k), str)]
        if missing:
            raise JudgeStageError(f"answers row {i}: missing/non-string field(s) {missing}")
    rows = [a for a in answers if not cfg.models or a["model"] in cfg.models]
    if cfg.models:
        absent = sorted(set(cfg.models) - {a["model"] for a in rows})
        if absent:
            raise JudgeStageError(f"judge.models {absent} have no answers (models in answers: "
                                  f"{sorted({a['model'] for a in answers})})")
    if cfg.limit and cfg.limit > 0:
        keep: list[str] = []
        for a in rows:
            if a["qa_id"] not in keep:
                keep.append(a["qa_id"])
        keep_set = set(keep[:cfg.limit])
        rows = [a for a in rows if a["qa_id"] in keep_set]
    seen = set()
    for a in rows:
        k = (a["qa_id"], a["model"])
        if k in seen:
            raise JudgeStageError(f"answers: duplicate row for qa_id {a['qa_id']} model {a['model']}")
        seen.add(k)
    if not rows:
        raise JudgeStageError("no answers to judge (answers file empty, or judge.models/limit selected none)")
    return rows


# ---------------------------------------------------------------------------------------------
# the judge model


def build_judge(cfg: JudgeConfig):
    """The DeepEvalBaseLLM that GEval calls (nothing is loaded or contacted yet)."""
    from policytune.evaluation.judge_llm import ProbabilityJudge, TextJudge
    from policytune.lm.backends import make_backend

    mode = scoring_mode(cfg)
    items = rubric_items(cfg)
    score_range = (items[0][0], items[-1][0])
    backend = make_backend(cfg)
    if mode == "probabilities":
        return ProbabilityJudge(backend, max_retries=cfg.max_retries, max_new_tokens=cfg.max_new_tokens,
                                score_range=score_range)
    return TextJudge(backend, max_retries=cfg.max_retries, temperature=cfg.temperature,
                     max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, score_range=score_range)


def judge_workers(cfg: JudgeConfig, judge) -> int:
    """Judgements in flight at once: the API backend's ``concurrency`` for free-text API judges;
    one for a local model (one model, one KV cache)."""
    if judge.scoring != "text" or cfg.backend == "local":
        return 1
    sub = cfg.openai if cfg.backend == "openai" else cfg.bedrock
    return max(1, int(getattr(sub, "concurrency", 1)))


def _judge_identity(judge, cfg: JudgeConfig) -> dict:
    """What a judgement depends on besides its prompt: the model (content hash of a local folder,
    the pinned model id of an API), how the score is read, and the generation settings."""
    ident = {"fingerprint": judge.fingerprint()}
    if judge.scoring == "text":
        ident.update(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
    if cfg.backend == "local":
        ident["dtype"] = cfg.dtype
    return ident


def _make_geval(spec: dict, cfg: JudgeConfig, judge, steps: Optional[list[str]]):
    from deepeval.metrics import GEval
    from deepeval.metrics.g_eval.utils import Rubric
    from deepeval.test_case import SingleTurnParams

    from policytune.evaluation.judge_llm import compact_template, deepeval_template

    if cfg.prompt not in ("compact", "deepeval"):
        raise ParamsError(f"judge.prompt must be compact | deepeval, got {cfg.prompt!r}")
    rubric = [Rubric(score_range=(s, s), expected_outcome=text) for s, text in rubric_items(cfg, spec["name"])]
    # both say, before the test case, that its fenced fields are data (judge_llm.DATA_NOTE)
    template = compact_template(spec["criteria"]) if cfg.prompt == "compact" else deepeval_template()
    t = float(cfg.score_temperature.get(spec["name"], 1.0))
    model = judge.calibrated(t) if t != 1.0 and hasattr(judge, "calibrated") else judge
    return GEval(name=spec["name"], criteria=spec["criteria"],
                 evaluation_params=[SingleTurnParams(p) for p in spec["params"]],
                 evaluation_steps=steps, rubric=rubric, model=model, async_mode=False,
                 strict_mode=False, verbose_mode=False, evaluation_template=template)


def prompt_fingerprint(geval) -> str:
    """Hash of the results prompt GEval renders for placeholder fields: it changes whenever the
    template (ours or deepeval's), the steps, the rubric or the fields shown change."""
    from deepeval.test_case import LLMTestCase

    tc = LLMTestCase(input="<input>", actual_output="<actual_output>", expected_output="<expected_output>",
                     context=["<context>"])
    return stable_id(geval._results_prompt(tc, False, None), n=16)


def evaluation_steps(spec: dict, cfg: JudgeConfig, judge, cache: JsonCache, ident: dict,
                     counters: dict) -> tuple[list[str], str, Optional[dict]]:
    """(steps, source, cache record). Pinned in params, else GEval's steps from the judge,
    generated once per (criteria, fields, judge) and cached."""
    from policytune.evaluation.judge_llm import JudgeOutputError

    if spec["steps"]:
        return spec["steps"], "params", None
    geval = _make_geval(spec, cfg, judge, None)
    prompt = geval._steps_prompt(False)  # deepeval's own prompt (pinned deepeval version)
    key = "steps-" + stable_id({"v": CACHE_VERSION, "kind": "steps", "judge": ident["fingerprint"].split(":", 1)[-1],
                                "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
                                "prompt": prompt}, n=32)
    hit = cache.get(key, validate=valid_steps)
    if hit:
        counters["steps_cache_hits"] += 1
        return hit["steps"], "cache", hit
    log.info("%s: generating evaluation steps with the judge (once; cached)", spec["name"])
    judge.calls.clear()
    t0 = time.monotonic()
    try:
        steps = geval._generate_evaluation_steps(False)  # GEval's step generation, via judge.generate
    except JudgeOutputError as e:
        raise JudgeStageError(
            f"{spec['name']}: the judge gave no usable evaluation steps in {e.attempts} attempt(s) ({e}); "
            f"pin them in params.yaml under judge.evaluation_steps.{spec['name']}") from None
    finally:
        counters["model_calls"] += sum(c.get("attempts", 1) for c in judge.calls.entries)
    record = {"steps": list(steps), "metric": spec["name"], "criteria": spec["criteria"],
              "raw": judge.calls.entries[-1].get("raw") if judge.calls.entries else None,
              "attempts": sum(c.get("attempts", 1) for c in judge.calls.entries),
              "seconds": round(time.monotonic() - t0, 3)}
    cache.put(key, record)
    return list(steps), "judge", record


def _test_case_fields(spec: dict, item: dict, context: str) -> dict:
    """The LLMTestCase fields the metric shows, each fenced as data (judge_llm.fence)."""
    from policytune.evaluation.judge_llm import fence

    values = {"input": fence(item["question"]), "actual_output": fence(item["answer"]),
              "expected_output": fence(item["reference"]), "context": [fence(context or "")]}
    return {p: values[p] for p in spec["params"]}


def judge_one(geval, judge, fields: dict) -> dict:
    """Measure one test case with GEval; returns the cache record (score, raw, reason, failed,
    attempts). Malformed judge output after the retries -> a failed record, never a score."""
    from deepeval.errors import MissingTestCaseParamsError
    from deepeval.test_case import LLMTestCase

    from policytune.evaluation.judge_llm import JudgeOutputError

    tc = LLMTestCase(input=fields.get("input", ""), actual_output=fields.get("actual_output"),
                     expected_output=fields.get("expected_output"), context=fields.get("context"))
    judge.calls.clear()
    t0 = time.monotonic()
    try:
        score = geval.measure(tc, _show_indicator=False)
    except JudgeOutputError as e:
        return {"score": None, "raw": e.raw, "failed": True, "attempts": e.attempts,
                "reason": f"judge output unusable after {e.attempts} attempt(s): {e}",
                "seconds": round(time.monotonic() - t0, 3)}
    except MissingTestCaseParamsError as e:
        return {"score": None, "raw": None, "failed": True, "attempts": 0, "reason": f"deepeval: {e}",
                "seconds": 0.0}
    calls = [c for c in judge.calls.entries if c.get("kind") == "score"]
    attempts = sum(c.get("attempts", 1) for c in calls) or 1
    if judge.scoring == "probabilities" and calls:
        c = calls[-1]
        raw = {k: c[k] for k in ("probs", "mass", "expected", "temperature", "model_probs") if k in c}
    else:
        raw = calls[-1].get("raw") if calls else None
    record = {"score": round(float(score), 6), "raw": raw, "failed": False, "attempts": attempts,
              "reason": geval.reason, "seconds": round(time.monotonic() - t0, 3)}
    if not (0.0 <= record["score"] <= 1.0):  # GEval normalises by the rubric range; never expected
        record.update(score=None, failed=True, reason=f"GEval score {score!r} outside 0..1; {geval.reason}")
    return record


# ---------------------------------------------------------------------------------------------
# pure core


def _prepare_gevals(specs: list[dict], cfg: JudgeConfig, judge, cache: JsonCache, ident: dict,
                    counters: dict) -> tuple[dict, dict]:
    """(steps_info, gevals): each metric's evaluation steps (with their source) and its GEval."""
    steps_info = {}
    gevals = {}
    for spec in specs:
        steps, source, _ = evaluation_steps(spec, cfg, judge, cache, ident, counters)
        steps_info[spec["name"]] = {"source": source, "steps": steps}
        gevals[spec["name"]] = _make_geval(spec, cfg, judge, steps)
        log.info("%s: %d evaluation steps (%s)", spec["name"], len(steps), source)
    return steps_info, gevals


def _context_sources(items: list[dict], contexts: dict[str, tuple[str, str]]) -> dict:
    """Questions per source-document origin (chunk | reference)."""
    ctx_sources = {"chunk": 0, "reference": 0}
    for qa in {a["qa_id"] for a in items}:
        ctx_sources[contexts.get(qa, ("", "reference"))[1]] += 1
    return ctx_sources


def _score_row(spec: dict, item: dict, ctx_source: str, rec: dict) -> dict:
    """The scores.jsonl row of one judgement record."""
    raw = rec.get("raw")
    if isinstance(raw, dict):  # in the cache's (sorted) key order: a first run and its rerun write the same bytes
        raw = dict(sorted(raw.items()))
    row = {"qa_id": item["qa_id"], "model": item["model"], "metric": spec["name"], "score": rec["score"],
           "raw": raw, "reason": rec.get("reason", ""), "failed": bool(rec.get("failed")),
           "attempts": rec.get("attempts", 0)}
    if "context" in spec["params"]:
        row["context_source"] = ctx_source
    return row


def _plan(specs: list[dict], items: list[dict], contexts: dict[str, tuple[str, str]], cfg: JudgeConfig,
          cache: JsonCache, ident: dict, steps_info: dict, gevals: dict, counters: dict, finish) -> list[tuple]:
    """Finishes empty answers and cache hits at once; returns the judgements still to run,
    (spec, item, ctx_source, key, fields), metric-major: a metric's prefix stays KV-cached."""
    pending = []
    for spec in specs:
        steps = steps_info[spec["name"]]["steps"]
        template = prompt_fingerprint(gevals[spec["name"]])
        # a calibrated metric's judgements depend on its score temperature (1 leaves old keys as they were)
        temperature = getattr(gevals[spec["name"]].model, "score_temperature", 1.0)
        calib = {"score_temperature": temperature} if temperature != 1.0 else {}
        for item in items:
            context, ctx_source = contexts.get(item["qa_id"], (item["reference"], "reference"))
            fields = _test_case_fields(spec, item, context)
            key = stable_id({"v": CACHE_VERSION, "judge": ident, "metric": spec["name"], "criteria": spec["criteria"],
                             "steps": steps, "rubric": rubric_items(cfg, spec["name"]), "template": template, "fields": fields,
                             **calib}, n=32)
            if not item["answer"].strip():
                counters["empty_answers"] += 1
                finish(spec, item, ctx_source, {
                    "score": 0.0, "raw": None, "failed": False, "attempts": 0,
                    "reason": "empty answer: given the lowest score without calling the judge"})
                continue
            rec = cache.get(key)
            # A cached failure is retried when max_retries was raised since.
            if rec is not None and rec.get("failed") and rec.get("attempts", 0) < cfg.max_retries + 1:
                rec = None
            if rec is not None:
                counters["cache_hits"] += 1
                finish(spec, item, ctx_source, rec)
            else:
                pending.append((spec, item, ctx_source, key, fields))
    return pending


def _run_concurrent(pending: list[tuple], specs: list[dict], steps_info: dict, cfg: JudgeConfig, judge,
                    workers: int, done) -> None:
    """API judges: several requests in flight, each worker with its own judge wrapper and GEval
    objects (they hold per-measure state); the backend (HTTP session / boto3 client) is shared."""
    import threading
    from concurrent.futures import ThreadPoolExecutor, as_completed

    local = threading.local()
    clones = []
    clones_lock = threading.Lock()

    def work(task: tuple) -> dict:
        if not hasattr(local, "judge"):
            local.judge = judge.clone()
            local.gevals = {s["name"]: _make_geval(s, cfg, local.judge, steps_info[s["name"]]["steps"]) for s in specs}
            with clones_lock:
                clones.append(local.judge)
        return judge_one(local.gevals[task[0]["name"]], local.judge, task[4])

    log.info("%d judgements to run, %d at a time", len(pending), workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(work, t): t for t in pending}
        try:
            for fut in as_completed(futures):
                done(futures[fut], fut.result())  # main thread: cache writes, counters, progress
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    for c in clones:
        for k, v in c.stats.items():
            judge.stats[k] = judge.stats.get(k, 0) + v


def _stats(cfg: JudgeConfig, judge, ident: dict, steps_info: dict, counters: dict, rows: list[dict],
           items: list[dict], ctx_sources: dict, elapsed: float) -> dict:
    return {
        "judge": {"backend": cfg.backend, "model": judge.get_model_name(), "scoring": judge.scoring, **ident},
        "evaluation_steps": steps_info,
        "counts": {**counters, "judge_seconds": round(counters["judge_seconds"], 2),
                   "judgements": len(rows), "questions": len({a["qa_id"] for a in items}),
                   "context_sources": ctx_sources},
        "seconds": round(elapsed, 2),
        "s_per_judgement": round(counters["judge_seconds"] / counters["judged"], 3) if counters["judged"] else None,
        "judge_stats": {k: (round(v, 2) if isinstance(v, float) else v) for k, v in judge.stats.items()},
    }


def judge_answers(answers: list[dict], contexts: dict[str, tuple[str, str]], cfg: JudgeConfig, judge,
                  cache: JsonCache) -> tuple[list[dict], dict, dict]:
    """Score every (answer, metric); returns (score rows, flat metrics, stats)."""
    specs = metric_specs(cfg)
    items = select_answers(answers, cfg)
    ident = _judge_identity(judge, cfg)
    counters = {"model_calls": 0, "judged": 0, "cache_hits": 0, "steps_cache_hits": 0, "failures": 0,
                "empty_answers": 0, "retried": 0, "judge_seconds": 0.0, "cache_corrupt": 0}
    corrupt0 = cache.corrupt
    t_start = time.monotonic()
    steps_info, gevals = _prepare_gevals(specs, cfg, judge, cache, ident, counters)

    total = len(items) * len(specs)
    prog = Progress(log, "judgements", total)
    results: dict[tuple[str, str, str], dict] = {}
    ctx_sources = _context_sources(items, contexts)

    def finish(spec: dict, item: dict, ctx_source: str, rec: dict) -> None:
        if rec.get("failed"):
            counters["failures"] += 1
            log.warning("%s %s/%s: failed: %s", spec["name"], item["qa_id"], item["model"], rec["reason"][:200])
        elif rec.get("attempts", 0) > 1:
            counters["retried"] += 1
        results[(item["qa_id"], item["model"], spec["name"])] = _score_row(spec, item, ctx_source, rec)
        prog.update(note=f"cached {counters['cache_hits']} failed {counters['failures']}")

    pending = _plan(specs, items, contexts, cfg, cache, ident, steps_info, gevals, counters, finish)

    def done(task: tuple, rec: dict) -> None:
        spec, item, ctx_source, key, _ = task
        counters["judged"] += 1
        counters["model_calls"] += rec["attempts"]
        counters["judge_seconds"] += rec.get("seconds", 0.0)
        cache.put(key, {**rec, "qa_id": item["qa_id"], "model": item["model"], "metric": spec["name"]})
        finish(spec, item, ctx_source, rec)

    workers = judge_workers(cfg, judge)
    if workers <= 1 or len(pending) <= 1:
        for task in pending:
            done(task, judge_one(gevals[task[0]["name"]], judge, task[4]))
    else:
        _run_concurrent(pending, specs, steps_info, cfg, judge, workers, done)

    counters["cache_corrupt"] = cache.corrupt - corrupt0
    rows = [results[(a["qa_id"], a["model"], s["name"])] for a in items for s in specs]
    metrics = summarise(rows, items, specs, cfg)
    metrics.update({"judgements": len(rows), "judge_calls": counters["model_calls"],
                    "failures": counters["failures"], "cache_hits": counters["cache_hits"]})
    elapsed = time.monotonic() - t_start
    stats = _stats(cfg, judge, ident, steps_info, counters, rows, items, ctx_sources, elapsed)
    return rows, metrics, stats


def summarise(rows: list[dict], items: list[dict], specs: list[dict], cfg: JudgeConfig) -> dict:
    """Flat DVC keys: per model and metric mean/CI/n/failures, deltas with paired bootstrap CIs."""
    models = list(dict.fromkeys(a["model"] for a in items))
    keys = [s["key"] for s in specs]
    key_of = {s["name"]: s["key"] for s in specs}
    wide: dict[tuple[str, str], dict] = {}
    for r in rows:
        w = wide.setdefault((r["qa_id"], r["model"]), {"qa_id": r["qa_id"], "model": r["model"]})
        w[key_of[r["metric"]]] = r["score"]
    wide_rows = list(wide.values())
    comparisons = [c for c in COMPARISONS if c[1] in models and c[2] in models]
    out = flat_summary(wide_rows, models, keys, comparisons, n_resamples=cfg.bootstrap, ci=cfg.ci, seed=cfg.seed)
    for m in models:
        for s in specs:
            mine = [r for r in rows if r["model"] == m and r["metric"] == s["name"]]
            out[f"{m}.{s['key']}.n"] = sum(1 for r in mine if r["score"] is not None)
            out[f"{m}.{s['key']}.failures"] = sum(1 for r in mine if r["failed"])
        out[f"{m}.empty_answers"] = sum(1 for a in items if a["model"] == m and not a["answer"].strip())
    for name, treat, ctrl in comparisons:
        for k in keys:
            _, a, b = pair_by_key(wide_rows, treat, ctrl, k)
            out[f"{name}.{k}.n"] = sum(1 for x, y in zip(a, b) if x is not None and y is not None)
    return out


def log_results(metrics: dict, stats: dict, specs: list[dict]) -> None:
    """The summary line of a run and one line per comparison and metric: mean [CI] (n)."""
    c = stats["counts"]
    log.info("%d judgements of %d questions: %d judged now (%s s each), %d from cache, %d failed, %d retried; "
             "model calls %d", c["judgements"], c["questions"], c["judged"], stats["s_per_judgement"],
             c["cache_hits"], c["failures"], c["retried"], c["model_calls"])
    for name, _, _ in COMPARISONS:
        for s in specs:
            k = f"{name}.{s['key']}"
            if f"{k}.mean" in metrics and metrics[f"{k}.mean"] is not None:
                log.info("%s: %+.3f [%+.3f, %+.3f] (n=%d)", k, metrics[f"{k}.mean"], metrics[f"{k}.ci_low"] or 0,
                         metrics[f"{k}.ci_high"] or 0, metrics[f"{k}.n"])
