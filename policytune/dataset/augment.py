"""The augment stage's core: its params, the check of them, and the pass over the train rows.

:func:`augment_records` draws one op per (row, copy) from a seed derived from the global seed,
the row's qa_id and the copy number (:func:`~policytune.dataset.augment_ops.record_seed`), runs
the local ops and the back translation engine, and assembles the original rows, each followed
by its augmented copies, plus the manifest of skipped copies and the stats.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional, Sequence

from policytune.core.params import NonNegFloat, NonNegInt, ParamsError
from policytune.core.records import stable_id
from policytune.dataset.augment_ops import (CharConfig, SynonymConfig, SynonymReplacer, char_delete,
                                            char_swap, numbers_of, record_seed)
from policytune.dataset.translate import (ENGINES, BackTranslationConfig, EngineUnavailable, TeacherConfig,
                                          make_engine)

OPS = ("synonym", "back_translation", "char_delete", "char_swap")

__all__ = ["OPS", "ENGINES", "AugmentConfig", "SynonymConfig", "BackTranslationConfig", "TeacherConfig",
           "CharConfig", "EngineUnavailable", "check_config", "rebuild_messages", "Engines", "make_engines",
           "check_train_rows", "plan_copies", "run_local_ops", "run_back_translation", "assemble_rows",
           "augment_stats", "augment_records"]


@dataclass
class AugmentConfig:
    seed: int = field(default=42, metadata={"help": "global seed; each copy's seed derives from it and the qa_id"})
    copies: NonNegInt = field(default=1, metadata={"help": "augmented copies drawn per train row"})
    weights: dict[Literal["synonym", "back_translation", "char_delete", "char_swap"], NonNegFloat] = field(default_factory=lambda: {op: 1.0 for op in OPS}, metadata={
        "help": "relative probability of each op (synonym, back_translation, char_delete, char_swap); "
                "0 or left out disables it"})
    augment_answer: bool = field(default=False, metadata={"help": "also augment the answer (default: answers stay clean)"})
    synonym: SynonymConfig = field(default_factory=SynonymConfig)
    back_translation: BackTranslationConfig = field(default_factory=BackTranslationConfig)
    char: CharConfig = field(default_factory=CharConfig)


def check_config(cfg: AugmentConfig) -> dict[str, float]:
    unknown = sorted(set(cfg.weights) - set(OPS))
    if unknown:
        raise ParamsError(f"augment.weights: unknown op(s) {', '.join(unknown)}; valid: {', '.join(OPS)}")
    weights = {op: float(cfg.weights.get(op, 0.0)) for op in OPS}
    if any(w < 0 for w in weights.values()) or (cfg.copies > 0 and sum(weights.values()) <= 0):
        raise ParamsError(f"augment.weights must be >= 0 with a positive sum, got {cfg.weights}")
    if cfg.copies < 0:
        raise ParamsError(f"augment.copies must be >= 0, got {cfg.copies}")
    if cfg.back_translation.engine not in ENGINES:
        raise ParamsError(f"augment.back_translation.engine must be one of {', '.join(ENGINES)}, "
                          f"got {cfg.back_translation.engine!r}")
    for name in ("word_p", "char_p"):
        v = getattr(cfg.char, name)
        if not 0.0 <= v <= 1.0:
            raise ParamsError(f"augment.char.{name} must be in [0, 1], got {v}")
    return weights


def rebuild_messages(row: dict, question: str, answer: str) -> list[dict]:
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ValueError(f"train row {row.get('qa_id')!r} has no 'messages'; run the split stage first")
    out = [dict(m) for m in msgs]
    users = [i for i, m in enumerate(out) if m.get("role") == "user"]
    bots = [i for i, m in enumerate(out) if m.get("role") == "assistant"]
    if not users or not bots:
        raise ValueError(f"train row {row.get('qa_id')!r}: messages need a user and an assistant turn")
    out[users[-1]]["content"] = question
    out[bots[-1]]["content"] = answer
    return out


@dataclass
class Engines:
    synonym: Optional[Callable[[str, random.Random], str]] = None
    back_translation: object = None  # has translate_batch(texts) and name

    def versions(self) -> dict:
        v = {}
        if self.synonym is not None:
            v["synonym"] = self.synonym.version() if hasattr(self.synonym, "version") else "custom"
        if self.back_translation is not None:
            bt = self.back_translation
            v["back_translation"] = bt.version() if hasattr(bt, "version") else getattr(bt, "name", "custom")
        return v


def make_engines(cfg: AugmentConfig) -> Engines:
    """Build the engines that a positive weight asks for (errors name how to install them)."""
    weights = check_config(cfg)
    eng = Engines()
    if cfg.copies > 0 and weights["synonym"] > 0:
        eng.synonym = SynonymReplacer(cfg.synonym)
    if cfg.copies > 0 and weights["back_translation"] > 0:
        eng.back_translation = make_engine(cfg.back_translation)
    return eng



# ---------------------------------------------------------------------------------------------
# augment_records and its steps
# ---------------------------------------------------------------------------------------------

def check_train_rows(rows: Sequence[dict]) -> None:
    for r in rows:
        if r.get("split", "train") != "train":
            raise ValueError(f"augment takes train rows only; row {r.get('qa_id')!r} has split {r.get('split')!r}")


def plan_copies(rows: Sequence[dict], cfg: AugmentConfig, weights: dict[str, float]) -> list[dict]:
    """One plan per (row, copy): its seed and the op drawn with it (``new``/``reason`` filled later)."""
    ops = [op for op in OPS if weights[op] > 0]
    plans = []  # one per (row, copy)
    for r in rows:
        for k in range(cfg.copies):
            seed = record_seed(cfg.seed, r["qa_id"], k)
            op = random.Random(seed).choices(ops, weights=[weights[o] for o in ops])[0]
            plans.append({"row": r, "copy": k, "seed": seed, "op": op, "new": {}, "reason": ""})
    return plans


def _timed(timings: dict, op: str, fn: Callable[[], None]) -> None:
    t0 = time.perf_counter()
    fn()
    timings[op] = timings.get(op, 0.0) + time.perf_counter() - t0


def run_local_ops(plans: list[dict], cfg: AugmentConfig, engines: Engines, fields: tuple[str, ...],
                  timings: dict) -> None:
    """Fill ``new`` of the synonym / char_delete / char_swap plans, op by op (timed per op)."""
    local = {"char_delete": lambda t, rng: char_delete(t, rng, cfg.char),
             "char_swap": lambda t, rng: char_swap(t, rng, cfg.char),
             "synonym": engines.synonym}
    for op in ("synonym", "char_delete", "char_swap"):
        mine = [p for p in plans if p["op"] == op]
        if not mine:
            continue
        fn = local[op]
        if fn is None:
            raise EngineUnavailable(f"op {op} drawn but no engine was built for it")

        def run_local(mine=mine, fn=fn):
            for p in mine:
                for f in fields:
                    rng = random.Random(record_seed(cfg.seed, p["row"]["qa_id"], p["copy"], f))
                    p["new"][f] = fn(p["row"][f], rng)

        _timed(timings, op, run_local)


def run_back_translation(plans: list[dict], cfg: AugmentConfig, engines: Engines, fields: tuple[str, ...],
                         timings: dict) -> None:
    """Fill ``new`` (and ``reason`` on a failure or changed numbers) of the back_translation plans,
    all texts in one ``translate_batch`` call."""
    bt_plans = [p for p in plans if p["op"] == "back_translation"]
    if bt_plans:
        if engines.back_translation is None:
            raise EngineUnavailable("op back_translation drawn but no engine was built for it")

        def run_bt():
            texts = [p["row"][f] for p in bt_plans for f in fields]
            res = iter(engines.back_translation.translate_batch(texts))
            for p in bt_plans:
                for f in fields:
                    text, reason = next(res)
                    if text is None:
                        p["reason"] = p["reason"] or reason
                    elif cfg.back_translation.keep_numbers and numbers_of(text) != numbers_of(p["row"][f]):
                        p["reason"] = p["reason"] or "numbers_changed"
                    p["new"][f] = text

        _timed(timings, "back_translation", run_bt)


def _skip_reason(p: dict, r: dict, q, a, emitted: set) -> str:
    reason = p["reason"]
    if not reason and (not (q or "").strip() or not (a or "").strip()):
        reason = "empty"
    if not reason and (q, a) == (r["question"], r["answer"]):
        reason = "unchanged"
    if not reason and (q, a) in emitted:
        reason = "duplicate_copy"
    return reason


def _augmented_row(r: dict, p: dict, q, a, engine, fields: tuple[str, ...]) -> dict:
    row = {k: v for k, v in r.items() if k not in ("messages", "augmentation")}
    row.update({
        "qa_id": stable_id("augment", r["qa_id"], p["copy"], p["op"], p["seed"]),
        "question": q,
        "answer": a,
        "split": "train",
        "augmentation": {"op": p["op"], "seed": p["seed"], "parent_qa_id": r["qa_id"],
                         "engine": engine, "copy": p["copy"], "fields": list(fields)},
        "messages": rebuild_messages(r, q, a),
    })
    return row


def assemble_rows(rows: Sequence[dict], plans: list[dict], cfg: AugmentConfig, engines: Engines,
                  fields: tuple[str, ...]) -> tuple[list[dict], list[dict], dict[str, int], dict[str, int]]:
    """(every row followed by its emitted copies, skipped manifest, planned_by_op, augmented_by_op)."""
    bt_engine = getattr(engines.back_translation, "name", None)
    syn_engine = "wordnet" if engines.synonym is not None else None
    out, skipped = [], []
    augmented_by_op = {op: 0 for op in OPS}
    planned_by_op = {op: 0 for op in OPS}
    by_parent: dict[str, list[dict]] = {}
    for p in plans:
        by_parent.setdefault(p["row"]["qa_id"], []).append(p)
    for r in rows:
        out.append({**r, "augmentation": None})  # same keys on every row (one schema for readers)
        emitted = {(r["question"], r["answer"])}
        for p in by_parent.get(r["qa_id"], []):
            planned_by_op[p["op"]] += 1
            q = p["new"].get("question", r["question"])
            a = p["new"].get("answer", r["answer"]) if cfg.augment_answer else r["answer"]
            reason = _skip_reason(p, r, q, a, emitted)
            if reason:
                skipped.append({"parent_qa_id": r["qa_id"], "copy": p["copy"], "op": p["op"],
                                "seed": p["seed"], "reason": reason})
                continue
            emitted.add((q, a))
            engine = bt_engine if p["op"] == "back_translation" else syn_engine if p["op"] == "synonym" else None
            out.append(_augmented_row(r, p, q, a, engine, fields))
            augmented_by_op[p["op"]] += 1
    return out, skipped, planned_by_op, augmented_by_op


def augment_stats(rows: Sequence[dict], out: list[dict], skipped: list[dict], cfg: AugmentConfig,
                  engines: Engines, planned_by_op: dict[str, int], augmented_by_op: dict[str, int]) -> dict:
    skipped_by_reason: dict[str, int] = {}
    for s in skipped:
        skipped_by_reason[s["reason"]] = skipped_by_reason.get(s["reason"], 0) + 1
    return {
        "rows_in": len(rows),
        "rows_out": len(out),
        "copies": cfg.copies,
        "augmented": sum(augmented_by_op.values()),
        "planned_by_op": planned_by_op,
        "augmented_by_op": augmented_by_op,
        "skipped": len(skipped),
        "skipped_by_reason": skipped_by_reason,
        "augment_answer": cfg.augment_answer,
        "engines": engines.versions(),
    }


def augment_records(rows: Sequence[dict], cfg: AugmentConfig, engines: Engines,
                    timings: Optional[dict] = None) -> tuple[list[dict], list[dict], dict]:
    """Return (original + augmented rows, skipped manifest, stats) for the train rows."""
    weights = check_config(cfg)
    check_train_rows(rows)
    fields = ("question", "answer") if cfg.augment_answer else ("question",)
    plans = plan_copies(rows, cfg, weights)
    timings = timings if timings is not None else {}
    run_local_ops(plans, cfg, engines, fields, timings)
    run_back_translation(plans, cfg, engines, fields, timings)
    out, skipped, planned_by_op, augmented_by_op = assemble_rows(rows, plans, cfg, engines, fields)
    stats = augment_stats(rows, out, skipped, cfg, engines, planned_by_op, augmented_by_op)
    return out, skipped, stats
