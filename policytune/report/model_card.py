"""The adapter's complete model card: the card the ``train`` stage writes, plus the evaluation
results from ``metrics/eval.json`` (fine-tuned minus base, each with its paired bootstrap CI and
verdict) as a table and as the Hugging Face ``model-index`` of its front matter.

``train`` runs before ``evaluate``, so its card (``models/adapter/README.md``) cannot hold the
evaluation; the ``model_card`` stage, after ``evaluate`` and ``export_dataset``, writes this one
to its own out (``models/card/README.md``) and changes no other stage's outs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from huggingface_hub import EvalResult

from policytune.evaluation import metrics as M
from policytune.report.format import EVAL_METRICS, fmt, fmt_delta
from policytune.training.export import CARD_LICENSE, model_card

COMPARISON = "delta"  # metrics/eval.json: delta.<metric>.{mean,ci_low,ci_high} = fine-tuned minus base
TEST_SPLIT = ("default", "test")  # the exported dataset's config and split that evaluate scores
GOOD = {1: "higher", -1: "lower", 0: "none"}  # metrics.DIRECTION -> the good direction, in words


@dataclass
class ModelCardConfig:
    license: str = field(default=CARD_LICENSE, metadata={
        "help": "license in the card's front matter (the base model's license binds the adapter too)"})
    model_name: str = field(default="", metadata={
        "help": "name in the card's model-index (empty: <base model>-policytune-lora)"})


def eval_deltas(flat: dict) -> list[dict]:
    """One row per metric that has a fine-tuned minus base delta in metrics/eval.json, in the
    report's metric order: key, name, base and fine-tuned means, delta, CI bounds, verdict."""
    rows = []
    for k, name in EVAL_METRICS.items():
        mean = flat.get(f"{COMPARISON}.{k}.mean")
        if mean is None:
            continue
        lo, hi = flat.get(f"{COMPARISON}.{k}.ci_low"), flat.get(f"{COMPARISON}.{k}.ci_high")
        rows.append({"metric": k, "name": name, "base": flat.get(f"base.{k}.mean"),
                     "finetuned": flat.get(f"finetuned.{k}.mean"), "delta": mean, "ci_low": lo, "ci_high": hi,
                     "direction": M.DIRECTION.get(k, 1),
                     "verdict": M.verdict(math.nan if lo is None else lo, math.nan if hi is None else hi,
                                          M.DIRECTION.get(k, 1))})
    return rows


def eval_results(deltas: list[dict], dataset: str, ci: float, n: Optional[int]) -> list[EvalResult]:
    """The model-index entries: each delta (value) with its CI, level and verdict (args)."""
    pct = f"{round(100 * ci)}%"
    out = []
    for d in deltas:
        out.append(EvalResult(
            task_type="text-generation", task_name="policy question answering",
            dataset_type=dataset, dataset_name=f"{dataset} ({TEST_SPLIT[1]} split)",
            dataset_config=TEST_SPLIT[0], dataset_split=TEST_SPLIT[1],
            metric_type=f"{d['metric']}_delta", metric_value=d["delta"],
            metric_name=f"{d['name']}, fine-tuned minus base: "
                        f"{fmt_delta(d['delta'], d['ci_low'], d['ci_high'], d['metric'])} ({pct} CI)",
            metric_args={"ci_level": ci, "ci_low": d["ci_low"], "ci_high": d["ci_high"], "base": d["base"],
                         "finetuned": d["finetuned"], "n_questions": n, "verdict": d["verdict"],
                         "good_direction": GOOD[d["direction"]]},
            verified=False))
    return out


def evaluation_markdown(deltas: list[dict], dataset: str, ci: float, n: Optional[int]) -> str:
    pct = f"{round(100 * ci)}%"
    lines = [f"On {n if n is not None else '?'} held-out test questions (`{dataset}`, config `{TEST_SPLIT[0]}`, "
             f"split `{TEST_SPLIT[1]}`), each difference is the mean over questions of (fine-tuned minus base) "
             f"on the same question, with a {pct} paired bootstrap confidence interval over questions "
             "(`metrics/eval.json`). Verdict: better / worse when the interval excludes 0 in the metric's good "
             "direction, otherwise no significant difference.", "",
             f"| Metric | Base | Fine-tuned | Difference [{pct} CI] | Good | Verdict |",
             "|---|---|---|---|---|---|"]
    for d in deltas:
        lines.append(f"| {d['name']} | {fmt(d['base'], d['metric'])} | {fmt(d['finetuned'], d['metric'])} | "
                     f"{fmt_delta(d['delta'], d['ci_low'], d['ci_high'], d['metric'])} | "
                     f"{GOOD[d['direction']]} | {d['verdict']} |")
    if not deltas:
        lines.append("| (metrics/eval.json has no fine-tuned minus base differences) | | | | | |")
    return "\n".join(lines)


def complete_card(train_info: dict, eval_flat: dict, dataset: str, cfg: ModelCardConfig = ModelCardConfig(),
                  ci: float = 0.95) -> str:
    """README.md of the adapter with its evaluation: the train stage's card, the model-index of
    the deltas with their CIs, and the evaluation table."""
    deltas = eval_deltas(eval_flat)
    n = eval_flat.get("n")
    n = int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) else None
    return model_card(train_info, license=cfg.license, datasets=[dataset],
                      eval_results=eval_results(deltas, dataset, ci, n),
                      evaluation=evaluation_markdown(deltas, dataset, ci, n), model_name=cfg.model_name or None)
