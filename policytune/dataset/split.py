"""split's mechanisms: QA rows -> leak-free train/val/test splits (see ``stages/split.py``).

Rows are split by group (the source chunk, or the whole document with ``group_by: doc``), so
no chunk/document feeds two splits. Groups are ordered by a seeded hash of their key and cut at
the target fractions of rows; a group's placement does not depend on input order. With few
groups, val and test still get one group each when there are enough groups for that. Then the
near-duplicate guard drops train/val rows whose question is too close to a test question
(normalised exact match always; embedding cosine >= ``near_dup_threshold`` with the encoder).
With ``external_test`` the external rows are the whole test split and generated pairs go to
train/val only.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable, Literal, Optional, Sequence

from policytune.core.params import Fraction, ParamsError, Range
from policytune.core.progress import get_logger
from policytune.core.records import read_jsonl, stable_id
from policytune.lm.chat_format import DEFAULT_SYSTEM_PROMPT, to_messages

SPLITS = ("train", "val", "test")

log = get_logger("split")


@dataclass
class SplitConfig:
    train: Fraction = field(default=0.7, metadata={"help": "fraction of rows for train"})
    val: Fraction = field(default=0.15, metadata={"help": "fraction of rows for val (early stopping)"})
    test: Fraction = field(default=0.15, metadata={"help": "fraction of rows for test; ignored with external_test"})
    seed: int = field(default=42, metadata={"help": "seed of the group order"})
    group_by: Literal["chunk", "doc"] = field(default="chunk", metadata={"help": "chunk|doc: unit that never spans two splits"})
    near_dup_threshold: Optional[Annotated[float, Range(ge=-1, le=1)]] = field(default=0.9, metadata={
        "help": "drop train/val rows whose question has cosine >= this with a test question; "
                "null: exact (normalised) duplicates only, no encoder"})
    external_test: Optional[str] = field(default=None, metadata={
        "help": "JSONL of {question, answer[, source...]} that replaces the generated test split"})
    system_prompt: str = field(default=DEFAULT_SYSTEM_PROMPT, metadata={"help": "system message of train/val rows"})
    encoder_dir: str = field(default="models/encoder", metadata={"help": "sentence-transformers folder for the near-dup guard"})


class SplitError(ValueError):
    """Input that cannot be split (no rows, too few groups, malformed rows)."""


# ---------------------------------------------------------------------------------------------
# pure core
# ---------------------------------------------------------------------------------------------

def target_fractions(cfg: SplitConfig, external: bool) -> dict[str, float]:
    fr = {"train": cfg.train, "val": cfg.val, "test": 0.0 if external else cfg.test}
    if any(v < 0 for v in fr.values()):
        raise ParamsError(f"split fractions must be >= 0, got {fr}")
    if not external and abs(sum(fr.values()) - 1.0) > 1e-6:
        raise ParamsError(f"split fractions train+val+test must sum to 1, got {sum(fr.values()):.4f}")
    total = fr["train"] + fr["val"] + fr["test"]
    if fr["train"] <= 0 or total <= 0:
        raise ParamsError(f"split fraction 'train' must be > 0, got {fr}")
    return {k: v / total for k, v in fr.items()}  # with external_test: train/val renormalised


def group_key(row: dict, group_by: str) -> str:
    field_name = {"chunk": "chunk_id", "doc": "doc_id"}.get(group_by)
    if field_name is None:
        raise ParamsError(f"split.group_by must be 'chunk' or 'doc', got {group_by!r}")
    key = row.get(field_name)
    if key in (None, ""):
        raise SplitError(f"QA row {row.get('qa_id')!r} has no {field_name}; cannot group it")
    return str(key)


def assign_groups(sizes: dict[str, int], fractions: dict[str, float], seed: int) -> tuple[dict[str, str], list[str]]:
    """Place whole groups into splits; returns ({group: split}, notes about small-data repairs).

    Groups are ordered by a seeded hash of their key, then cut where the running row count
    crosses the target fractions (a group goes where its midpoint falls: test first, then val,
    then train), so each split is within one group's size of its target. Afterwards every
    split with a positive fraction gets at least one group when there are enough groups,
    moving the smallest group of the split that has the most groups.
    """
    order = sorted(sizes, key=lambda g: (stable_id("split", seed, g), g))
    total = sum(sizes.values())
    test_end = fractions["test"] * total
    val_end = test_end + fractions["val"] * total
    assign: dict[str, str] = {}
    cum = 0.0
    for g in order:
        mid = cum + sizes[g] / 2.0
        assign[g] = "test" if mid < test_end else "val" if mid < val_end else "train"
        cum += sizes[g]

    notes: list[str] = []
    priority = [s for s in ("train", "test", "val") if fractions[s] > 0]  # who gets scarce groups
    for i, want in enumerate(priority):
        if any(s == want for s in assign.values()):
            continue
        members = {s: [g for g in order if assign[g] == s] for s in SPLITS}
        donors = [s for s in SPLITS if s != want and len(members[s]) > 1]
        if donors:  # a split that keeps at least one group; the one with most groups
            donor = max(donors, key=lambda s: (len(members[s]), s == "train"))
        else:  # else a lower-priority split gives up its only group
            lower = [s for s in priority[i + 1:] if members[s]]
            if not lower:
                notes.append(f"{want}: empty (only {len(order)} group(s))")
                continue
            donor = lower[-1]
        g = min(members[donor], key=lambda x: (sizes[x], order.index(x)))
        assign[g] = want
        notes.append(f"{want}: took group {g} ({sizes[g]} rows) from {donor} (few groups)")
    return assign, notes


_PUNCT = re.compile(r"[^\w\s]")


def normalise_for_leak_guard(q: str) -> str:
    """The test-leak guard's key for exact matches with a test question (NFKC, casefold,
    punctuation to spaces); generate_qa's duplicate check has its own (lower-cased only)."""
    q = unicodedata.normalize("NFKC", q).casefold()
    return " ".join(_PUNCT.sub(" ", q).split())


def near_dup_guard(candidates: list[dict], test_rows: list[dict], threshold: Optional[float],
                   embed: Optional[Callable[[list[str]], "object"]]) -> tuple[list[dict], list[dict]]:
    """Split ``candidates`` into (kept, removed) against the test questions.

    A candidate is removed when its normalised question equals a test question's, or when
    ``threshold`` is set and the cosine of the two question embeddings is >= threshold.
    ``embed`` maps texts to L2-normalised vectors (rows of a 2-D array).
    """
    if not candidates or not test_rows:
        return list(candidates), []
    exact = {}
    for t in test_rows:
        exact.setdefault(normalise_for_leak_guard(t["question"]), t)
    best: list[tuple[float, Optional[dict], str]] = []
    for c in candidates:
        t = exact.get(normalise_for_leak_guard(c["question"]))
        best.append((1.0, t, "exact") if t is not None else (-1.0, None, ""))
    if threshold is not None:
        if embed is None:
            raise ValueError("near_dup_threshold is set but no encoder was given")
        import numpy as np

        vecs = np.asarray(embed([c["question"] for c in candidates] + [t["question"] for t in test_rows]),
                          dtype=np.float32)
        sims = vecs[:len(candidates)] @ vecs[len(candidates):].T
        arg = sims.argmax(axis=1)
        for i, c in enumerate(candidates):
            s = float(sims[i, arg[i]])
            if best[i][1] is None and s >= threshold:
                best[i] = (s, test_rows[int(arg[i])], "cosine")
    kept, removed = [], []
    for c, (score, t, how) in zip(candidates, best):
        if t is None:
            kept.append(c)
        else:
            removed.append({"qa_id": c["qa_id"], "split": c["split"], "question": c["question"],
                            "test_qa_id": t.get("qa_id"), "test_question": t["question"],
                            "match": how, "cosine": round(score, 4)})
    return kept, removed


def validate_qa(rows: Sequence[dict]) -> None:
    seen = set()
    for i, r in enumerate(rows):
        for k in ("qa_id", "question", "answer"):
            if not isinstance(r.get(k), str) or not r[k].strip():
                raise SplitError(f"QA row {i} ({r.get('qa_id')!r}) lacks a non-empty string '{k}'")
        if r["qa_id"] in seen:
            raise SplitError(f"duplicate qa_id {r['qa_id']!r} in the QA rows")
        seen.add(r["qa_id"])


def load_external_test(path: str | Path) -> list[dict]:
    """Read an external test JSONL; each row needs question and answer, other fields are kept."""
    path = Path(path)
    if not path.is_file():
        raise SplitError(f"split.external_test: {path} not found")
    rows = []
    for i, r in enumerate(read_jsonl(path)):
        if not isinstance(r.get("question"), str) or not r["question"].strip() \
                or not isinstance(r.get("answer"), str) or not r["answer"].strip():
            raise SplitError(f"{path}: row {i + 1} needs non-empty string 'question' and 'answer'")
        row = dict(r)
        row.setdefault("qa_id", "ext-" + stable_id("external", r["question"], r["answer"]))
        row["external"] = True
        rows.append(row)
    if not rows:
        raise SplitError(f"split.external_test: {path} has no rows")
    ids = [r["qa_id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise SplitError(f"{path}: duplicate qa_id / duplicate question+answer rows")
    return rows


def split_records(rows: Sequence[dict], cfg: SplitConfig, external: Optional[list[dict]] = None,
                  embed: Optional[Callable[[list[str]], "object"]] = None) -> tuple[dict[str, list[dict]], list[dict], dict]:
    """The stage's pure core: returns ({split: rows}, near-dup manifest, stats)."""
    if not rows:
        raise SplitError("no QA pairs to split (the QA file is empty); check generate_qa's stats")
    validate_qa(rows)
    fractions = target_fractions(cfg, external is not None)
    keys = [group_key(r, cfg.group_by) for r in rows]
    sizes: dict[str, int] = {}
    for k in keys:
        sizes[k] = sizes.get(k, 0) + 1
    min_groups = 1 if external is not None else 2
    if len(sizes) < min_groups:
        hint = " (try group_by: chunk)" if cfg.group_by == "doc" else ""
        raise SplitError(
            f"only {len(sizes)} {cfg.group_by} group(s) in {len(rows)} QA rows: a leak-free split "
            f"needs at least 2 (train and test){hint}, or an external_test set")
    assign, notes = assign_groups(sizes, fractions, cfg.seed)
    for n in notes:
        log.warning("small data: %s", n)

    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for r, k in zip(rows, keys):
        out[assign[k]].append({**r, "split": assign[k]})
    if external is not None:
        out["test"] = [{**r, "split": "test"} for r in external]

    before = {s: len(out[s]) for s in SPLITS}
    kept, removed = near_dup_guard(out["train"] + out["val"], out["test"], cfg.near_dup_threshold, embed)
    out["train"] = [r for r in kept if r["split"] == "train"]
    out["val"] = [r for r in kept if r["split"] == "val"]
    if not out["train"]:
        raise SplitError("the near-duplicate guard removed every train row; lower near_dup_threshold?")
    for s in ("train", "val"):
        out[s] = [{**r, "messages": to_messages(r["question"], r["answer"], system=cfg.system_prompt)}
                  for r in out[s]]

    def groups_in(split: str) -> int | None:  # external test rows have no source groups
        return None if split == "test" and external else len({group_key(r, cfg.group_by) for r in out[split]})

    n_out = sum(len(out[s]) for s in SPLITS)
    stats = {
        "rows_in": len(rows),
        "group_by": cfg.group_by,
        "groups_in": len(sizes),
        "sizes": {s: len(out[s]) for s in SPLITS},
        "groups": {s: groups_in(s) for s in SPLITS},
        "sizes_before_near_dup": before,
        "fractions_target": {s: round(fractions[s], 4) for s in SPLITS},
        "fractions_actual": {s: round(len(out[s]) / n_out, 4) if n_out else 0.0 for s in SPLITS},
        "near_dup_removed": len(removed),
        "near_dup_removed_by_split": {s: sum(1 for r in removed if r["split"] == s) for s in ("train", "val")},
        "near_dup_removed_by_match": {m: sum(1 for r in removed if r["match"] == m) for m in ("exact", "cosine")},
        "small_data_notes": notes,
        "external_test": {"used": external is not None, "path": cfg.external_test,
                          "rows": len(external) if external is not None else 0},
    }
    return out, removed, stats


# ---------------------------------------------------------------------------------------------
# encoder
# ---------------------------------------------------------------------------------------------

def load_near_dup_embedder(encoder_dir: str | Path) -> Callable[[list[str]], "object"]:
    """The prepared encoder on the CPU (:func:`policytune.lm.embedding.load_embedder`) as a texts ->
    unit vectors function; a load failure is a :class:`SplitError` that says how to fix it."""
    from policytune.lm.catalog import ModelSourceError
    from policytune.lm.embedding import load_embedder

    try:
        return load_embedder(encoder_dir, device="cpu")
    except (ModelSourceError, OSError, ValueError) as e:
        raise SplitError(f"encoder for the near-duplicate guard: {e}; build it with "
                         f"`dvc repro prepare_models@encoder`, or set split.near_dup_threshold: null "
                         f"to keep only the exact-duplicate guard") from None
