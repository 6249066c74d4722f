"""The report's tables: per-model statistics in the study's layout, deltas with verdicts, the
example questions to show and the judge scores made wide.

The per-example metrics are a polars frame: :func:`metric_frame` makes the long (model, metric,
value) frame, :func:`describe_by_model` its group-by statistics, :func:`judge_wide` pivots the
judge's long scores into one row per (question, model)."""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import polars as pl

from policytune.evaluation import metrics as M
from policytune.report.format import MODEL_NAMES, STAT_ROWS, fmt, fmt_delta, judge_key


def models_in(rows: Sequence[dict]) -> list[str]:
    present = list(dict.fromkeys(r["model"] for r in rows))
    order = [m for m in MODEL_NAMES if m in present]
    return order + [m for m in present if m not in order]


def _number(v) -> float | None:
    return float(v) if isinstance(v, numbers.Real) and not isinstance(v, bool) else None


def metric_frame(rows: Sequence[dict], metrics: Sequence[str]) -> pl.DataFrame:
    """Per-example metrics as a long frame (model, metric, value), finite values only: a failed
    or missing score (None, NaN, inf) is left out, as :func:`policytune.evaluation.metrics.describe`
    leaves it out."""
    model, metric, value = [], [], []
    for r in rows:
        for k in metrics:
            model.append(r["model"])
            metric.append(k)
            value.append(_number(r.get(k)))
    df = pl.DataFrame({"model": model, "metric": metric, "value": value},
                      schema={"model": pl.String, "metric": pl.String, "value": pl.Float64})
    return df.filter(pl.col("value").is_finite())


def describe_by_model(rows: Sequence[dict], models: Sequence[str], metrics: Sequence[str]) -> dict:
    """{(model, metric): the study's summary row} (the keys of ``metrics.describe``: mean, std
    with ddof=1, min, quartiles with linear interpolation, max, n) from one polars group-by."""
    v = pl.col("value")
    stats = metric_frame(rows, metrics).group_by("model", "metric").agg(
        v.len().alias("n"), v.mean().alias("mean"), v.std(ddof=1).alias("std"), v.min().alias("min"),
        v.quantile(0.25, "linear").alias("25%"), v.quantile(0.5, "linear").alias("50%"),
        v.quantile(0.75, "linear").alias("75%"), v.max().alias("max"))
    found = {(r.pop("model"), r.pop("metric")): r for r in stats.to_dicts()}
    out = {}
    for m in models:
        for k in metrics:
            r = found.get((m, k))
            if r is None:  # no finite value: n 0, every statistic NaN
                out[(m, k)] = {"n": 0, **{s: math.nan for s in M.STATS}}
            else:
                out[(m, k)] = {"n": int(r["n"]), **{s: float(r[s]) for s in M.STATS if s != "std"},
                               "std": float(r["std"]) if r["n"] > 1 else 0.0}
    return out


def stats_table(desc: dict, models: Sequence[str], metrics: Sequence[str], names: dict) -> tuple[list, list, list]:
    """Study layout: a row per statistic, a column group per model, a column per metric."""
    headers = ["Stats"] + [names.get(k, k) for _ in models for k in metrics]
    groups = [("", 1)] + [(MODEL_NAMES.get(m, m), len(metrics)) for m in models]
    rows = [[stat] + [fmt(desc[(m, k)][stat], k) for m in models for k in metrics] for stat in STAT_ROWS]
    rows.append(["n"] + [str(desc[(m, k)]["n"]) for m in models for k in metrics])
    return headers, rows, groups


def delta_rows(flat: dict, comparison: str, metrics: Sequence[str], names: dict,
               treat: str, ctrl: str) -> list[list[str]]:
    rows = []
    for k in metrics:
        mean = flat.get(f"{comparison}.{k}.mean")
        if f"{comparison}.{k}.mean" not in flat:
            continue
        lo, hi = flat.get(f"{comparison}.{k}.ci_low"), flat.get(f"{comparison}.{k}.ci_high")
        v = M.verdict(lo if lo is not None else math.nan, hi if hi is not None else math.nan,
                      M.DIRECTION.get(k, 1))
        rows.append([names.get(k, k), fmt(flat.get(f"{ctrl}.{k}.mean"), k), fmt(flat.get(f"{treat}.{k}.mean"), k),
                     fmt_delta(mean, lo, hi, k), {1: "higher", -1: "lower", 0: "–"}[M.DIRECTION.get(k, 1)], v])
    return rows


def pick_examples(per_example: Sequence[dict], metric: str, n: int) -> list[tuple[str, str]]:
    """(qa_id, why): the largest improvements and regressions from fine-tuning on ``metric`` (in
    its good direction) and a typical (median) case."""
    base = {r["qa_id"]: r.get(metric) for r in per_example if r["model"] == "base"}
    ft = {r["qa_id"]: r.get(metric) for r in per_example if r["model"] == "finetuned"}
    diffs = sorted(((ft[q] - base[q], q) for q in ft if q in base and base[q] is not None and ft[q] is not None
                    and math.isfinite(ft[q] - base[q])), key=lambda t: (t[0], t[1]))
    if not diffs or n <= 0:
        return []
    sign = M.DIRECTION.get(metric, 1) or 1
    picks: list[tuple[str, str]] = []
    seen = set()

    def add(q, why):
        if q not in seen and len(picks) < n:
            seen.add(q)
            picks.append((q, why))

    gains = diffs[::-1] if sign > 0 else diffs
    losses = diffs if sign > 0 else diffs[::-1]
    n_gain, n_loss = math.ceil((n - 1) / 2), (n - 1) // 2
    def label(d, improving: bool):
        if d == 0:
            return "no change"
        if (d * sign > 0) == improving:
            return "largest improvement" if improving else "largest regression"
        return "smallest regression" if improving else "smallest improvement"

    for d, q in gains[:max(1, n_gain)]:
        add(q, f"{label(d, True)} in {metric} ({d:+.3f})")
    for d, q in losses[:n_loss]:
        add(q, f"{label(d, False)} in {metric} ({d:+.3f})")
    d, q = diffs[len(diffs) // 2]
    add(q, f"typical: median change in {metric} ({d:+.3f})")
    for d, q in diffs:  # fill up if there were few questions
        add(q, f"change in {metric} ({d:+.3f})")
    return picks



def judge_wide(scores: Sequence[dict]) -> tuple[list[dict], list[str], dict]:
    """Judge rows -> wide rows {qa_id, model, <key>: score} (a failed judgement scores None; a
    repeated one counts its last row), metric keys in order, key -> name; rows and keys in the
    order they first appear."""
    keys: dict = {}
    for r in scores:
        keys.setdefault(judge_key(r["metric"]), str(r["metric"]))
    if not keys:
        return [], [], {}
    long = pl.DataFrame({
        "qa_id": [r["qa_id"] for r in scores], "model": [r["model"] for r in scores],
        "key": [judge_key(r["metric"]) for r in scores],
        "score": [None if r.get("failed") else _number(r.get("score")) for r in scores],
    }, schema={"qa_id": pl.String, "model": pl.String, "key": pl.String, "score": pl.Float64})
    wide = long.pivot(on="key", index=["qa_id", "model"], values="score", aggregate_function="last",
                      maintain_order=True)
    return wide.select("qa_id", "model", *keys).to_dicts(), list(keys), keys
