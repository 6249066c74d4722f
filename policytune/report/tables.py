"""The report's tables: per-model statistics in the study's layout, deltas with verdicts, the
example questions to show and the judge scores made wide."""

from __future__ import annotations

import math
from typing import Sequence

from policytune.evaluation import metrics as M
from policytune.report.format import MODEL_NAMES, STAT_ROWS, fmt, fmt_delta, judge_key


def models_in(rows: Sequence[dict]) -> list[str]:
    present = list(dict.fromkeys(r["model"] for r in rows))
    order = [m for m in MODEL_NAMES if m in present]
    return order + [m for m in present if m not in order]


def describe_by_model(rows: Sequence[dict], models: Sequence[str], metrics: Sequence[str]) -> dict:
    return {(m, k): M.describe([r.get(k) for r in rows if r["model"] == m]) for m in models for k in metrics}


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
    """Judge rows -> wide rows {qa_id, model, <key>: score}, metric keys in order, key -> name."""
    wide: dict = {}
    keys: dict = {}
    for r in scores:
        k = judge_key(r["metric"])
        keys.setdefault(k, str(r["metric"]))
        w = wide.setdefault((r["qa_id"], r["model"]), {"qa_id": r["qa_id"], "model": r["model"]})
        w[k] = None if r.get("failed") else r.get("score")
    return list(wide.values()), list(keys), keys
