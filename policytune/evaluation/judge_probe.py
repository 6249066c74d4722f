"""The judge probe: how far the judge's scale separates right answers from wrong ones.

Built from the test set (rows ``{qa_id, question, answer}``, ``answer`` being the reference):
for each of the first ``judge.probe.limit`` questions, four synthetic answers with a known
verdict,

- ``exact``           the reference itself (should score high),
- ``other``           the reference of a different test question (a fixed derangement: question
                      ``i`` gets question ``i + n//2``'s, the next one whose reference differs),
- ``vague``           :data:`VAGUE_ANSWER`, a generic non-answer,
- ``number_changed``  the reference with one number changed (:func:`change_one_number`; a
                      reference without a number has none, counted as ``skipped``).

They are judged as answer rows (model ``probe_<kind>``) by :func:`judge.judge_answers` with
the one probe metric (``judge.probe.metric``, Correctness), i.e. with the same GEval prompt,
judge model and content-addressed cache as the real answers: a rerun calls no model. The
summary (:func:`summarise_probe`) is the mean score per kind and the AUC (Mann-Whitney, ties
count 0.5) of exact against each negative kind and against all of them pooled, and whether
the scale *separates*: exact >= 0.8, other and vague <= 0.2, pooled AUC >= 0.95.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional, Sequence

from policytune.core.cache import JsonCache
from policytune.core.params import ParamsError
from policytune.evaluation.judge import JudgeConfig, JudgeStageError, judge_answers, metric_specs

KINDS = ("exact", "other", "vague", "number_changed")
NEGATIVE_KINDS = KINDS[1:]
VAGUE_ANSWER = "It depends on the policy; please check the relevant document or ask your manager."
MODEL_PREFIX = "probe_"
# probe.separates: the scale is usable as a pass/fail grade
EXACT_MIN, WRONG_MAX, AUC_MIN = 0.8, 0.2, 0.95

# a number: digits with thousands separators ("25,000") or a plain digit run
NUMBER_RE = re.compile(r"\d{1,3}(?:,\d{3})+(?!\d)|\d+")


def _is_code(text: str, m: re.Match) -> bool:
    """A digit run that is part of a code or an ordinal, not a quantity: glued to a letter
    ("FIN-03", "A4", "3rd") or to a letter-hyphen prefix."""
    before, after = text[:m.start()], text[m.end():]
    if before[-1:].isalpha() or after[:1].isalpha():
        return True
    return before.endswith("-") and before[-2:-1].isalpha()


def change_one_number(text: str) -> Optional[str]:
    """``text`` with exactly one number changed: the first quantity (else the first number)
    doubled (0 -> 1), its thousands separators and zero-padding kept ("25,000" -> "50,000",
    "03" -> "06"); None when the text has no digit."""
    found = list(NUMBER_RE.finditer(text))
    if not found:
        return None
    m = next((r for r in found if not _is_code(text, r)), found[0])
    old = m.group()
    n = int(old.replace(",", ""))
    new = f"{n * 2 if n else 1:,}" if "," in old else str(n * 2 if n else 1).zfill(len(old))
    return text[:m.start()] + new + text[m.end():]


def other_index(refs: Sequence[str], i: int) -> Optional[int]:
    """The question whose reference question ``i`` gets as its ``other`` answer: ``i + n//2``, or
    the next one after it whose reference differs from ``i``'s; never ``i`` (None if none differs)."""
    n = len(refs)
    shift = max(1, n // 2)
    for t in range(n):
        j = (i + shift + t) % n
        if j != i and refs[j].strip() != refs[i].strip():
            return j
    return None


def build_probe(test_rows: list[dict], limit: int = 0) -> tuple[list[dict], dict[str, int]]:
    """(probe items as judge answer rows, kind -> questions skipped). Each item: qa_id, model
    (``probe_<kind>``), kind, question, reference, answer, gen, and for ``other`` the qa_id whose
    reference it is (``from_qa_id``)."""
    rows = []
    for i, r in enumerate(test_rows, 1):
        bad = [k for k in ("qa_id", "question", "answer") if not isinstance(r.get(k), str) or not r[k].strip()]
        if bad:
            raise JudgeStageError(f"probe: test row {i} has no usable {bad} (the probe needs qa_id, question and "
                                  f"the reference answer); set judge.probe.enabled: false to skip the probe")
        rows.append(r)
    if limit and limit > 0:
        rows = rows[:limit]
    refs = [r["answer"] for r in rows]
    items: list[dict] = []
    skipped = {k: 0 for k in KINDS}
    for i, r in enumerate(rows):
        j = other_index(refs, i)
        changed = change_one_number(r["answer"])
        answers = {"exact": r["answer"], "other": refs[j] if j is not None else None, "vague": VAGUE_ANSWER,
                   "number_changed": changed}
        for kind in KINDS:
            if answers[kind] is None:
                skipped[kind] += 1
                continue
            item = {"qa_id": r["qa_id"], "model": MODEL_PREFIX + kind, "kind": kind, "question": r["question"],
                    "reference": r["answer"], "answer": answers[kind], "gen": {}}
            if kind == "other":
                item["from_qa_id"] = rows[j]["qa_id"]
            items.append(item)
    return items, skipped


def auc(pos: Sequence[float], neg: Sequence[float]) -> Optional[float]:
    """P(a positive scores above a negative), ties 0.5 (the Mann-Whitney U / (n_pos n_neg));
    None when either side is empty."""
    if not pos or not neg:
        return None
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def probe_config(cfg: JudgeConfig) -> JudgeConfig:
    """``cfg`` narrowed to the probe metric (its criteria, fields, steps and rubric unchanged, so
    its prompts and cache keys are the real answers' ones), all probe items, no model filter."""
    name = cfg.probe.metric
    if name not in cfg.metrics:
        raise ParamsError(f"judge.probe.metric {name!r} is not in judge.metrics {list(cfg.metrics)}")
    params = cfg.evaluation_params.get(name) or []
    if not {"actual_output", "expected_output"} <= set(params):
        raise ParamsError(f"judge.probe.metric {name!r} must see actual_output and expected_output "
                          f"(judge.evaluation_params.{name} is {params})")
    pick = lambda d: {name: d[name]} if name in d else {}  # noqa: E731
    return dataclasses.replace(cfg, metrics=pick(cfg.metrics), evaluation_params=pick(cfg.evaluation_params),
                               evaluation_steps=pick(cfg.evaluation_steps), rubrics=pick(cfg.rubrics),
                               score_temperature=pick(cfg.score_temperature), limit=0, models=[])


def summarise_probe(rows: list[dict], skipped: dict[str, int]) -> dict:
    """Flat ``probe.*`` keys: per kind mean, n, failures, skipped; AUC of exact against all
    negatives (``probe.auc``) and against each kind (``probe.auc_<kind>``); ``probe.n``
    (questions) and ``probe.separates`` (1 or 0)."""
    scores = {k: [r["score"] for r in rows if r["kind"] == k and r["score"] is not None] for k in KINDS}
    out: dict = {"probe.n": len({r["qa_id"] for r in rows})}
    for k in KINDS:
        s = scores[k]
        out[f"probe.{k}.mean"] = round(sum(s) / len(s), 6) if s else None
        out[f"probe.{k}.n"] = len(s)
        out[f"probe.{k}.failures"] = sum(1 for r in rows if r["kind"] == k and r["failed"])
        if k != "exact":
            out[f"probe.{k}.skipped"] = skipped.get(k, 0)
    pooled = [x for k in NEGATIVE_KINDS for x in scores[k]]
    a = auc(scores["exact"], pooled)
    out["probe.auc"] = round(a, 6) if a is not None else None
    for k in NEGATIVE_KINDS:
        ak = auc(scores["exact"], scores[k])
        out[f"probe.auc_{k}"] = round(ak, 6) if ak is not None else None
    means = [out[f"probe.{k}.mean"] for k in ("exact", "other", "vague")]
    out["probe.separates"] = int(None not in means and out["probe.auc"] is not None
                                 and means[0] >= EXACT_MIN and max(means[1:]) <= WRONG_MAX
                                 and out["probe.auc"] >= AUC_MIN)
    return out


def run_probe(test_rows: list[dict], cfg: JudgeConfig, judge, cache: JsonCache,
              contexts: Optional[dict[str, tuple[str, str]]] = None) -> tuple[list[dict], dict, dict]:
    """Build the probe, judge it with the probe metric through :func:`judge_answers` (same GEval,
    judge and cache as the real answers), summarise: (probe rows, ``probe.*`` metrics, stats)."""
    pcfg = probe_config(cfg)
    spec = metric_specs(pcfg)[0]
    items, skipped = build_probe(test_rows, cfg.probe.limit)
    if not items:
        raise JudgeStageError("probe: no test questions to build the probe from")
    scored, _, stats = judge_answers(items, contexts or {}, pcfg, judge, cache)
    by = {(r["qa_id"], r["model"]): r for r in scored}
    rows = []
    for it in items:
        r = by[(it["qa_id"], it["model"])]
        row = {"qa_id": it["qa_id"], "kind": it["kind"], "metric": spec["name"], "score": r["score"],
               "failed": r["failed"], "attempts": r["attempts"], "question": it["question"],
               "reference": it["reference"], "answer": it["answer"], "raw": r["raw"]}
        if "from_qa_id" in it:
            row["from_qa_id"] = it["from_qa_id"]
        rows.append(row)
    metrics = summarise_probe(rows, skipped)
    c = stats["counts"]
    metrics.update({"probe.judgements": c["judgements"], "probe.judge_calls": c["model_calls"],
                    "probe.cache_hits": c["cache_hits"], "probe.failures": c["failures"]})
    pstats = {"metric": spec["name"], "skipped": skipped, "counts": c, "seconds": stats["seconds"],
              "s_per_judgement": stats["s_per_judgement"], "thresholds": {
                  "exact_min": EXACT_MIN, "wrong_max": WRONG_MAX, "auc_min": AUC_MIN}}
    return rows, metrics, pstats


def log_probe(log, metrics: dict, metric: str) -> None:
    """One line: the mean per kind, the AUCs, and whether the scale separates."""
    f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    log.info("probe (%s, %d questions): exact %s, other %s, vague %s, number_changed %s; AUC %s "
             "(other %s, vague %s, number_changed %s); separates: %s", metric, metrics["probe.n"],
             *(f(metrics[f"probe.{k}.mean"]) for k in KINDS), f(metrics["probe.auc"]),
             *(f(metrics[f"probe.auc_{k}"]) for k in NEGATIVE_KINDS), "yes" if metrics["probe.separates"] else "no")
