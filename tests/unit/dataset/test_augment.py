"""augment: the stage core (plans, lineage, skips, stats, params checks, which engines are built)."""

from __future__ import annotations

import shutil

import pytest

from policytune.core.params import ParamsError
from policytune.dataset import augment as A
from tests.helpers.augment_rows import rows_for, train_row


# --------------------------------------------------------------------------------------------- stage core

class UpperEngine:
    """Back translation stand-in: deterministic, changes wording, keeps numbers (except one)."""

    name = "fake"

    def translate_batch(self, texts):
        return [(t.replace("42", "43"), "") if "42" in t else (t.upper(), "") for t in texts]


def run(rows, **kw):
    cfg = A.AugmentConfig(**kw)
    eng = A.Engines(synonym=None, back_translation=UpperEngine())
    if "weights" not in kw:
        cfg.weights = {"synonym": 0, "back_translation": 1, "char_delete": 1, "char_swap": 1}
    return A.augment_records(rows, cfg, eng)


def test_augmented_rows_lineage_messages_and_clean_answers():
    rows = rows_for(30)
    out, skipped, stats = run(rows)
    parents = {r["qa_id"]: r for r in rows}
    aug = [r for r in out if r["augmentation"]]
    assert len(aug) + len(skipped) == 30 and stats["rows_out"] == 30 + len(aug)
    assert [{k: v for k, v in r.items() if k != "augmentation"} for r in out if not r["augmentation"]] == rows
    assert all(set(r) == set(aug[0]) for r in out)  # one schema
    assert {r["augmentation"]["op"] for r in aug} == {"back_translation", "char_delete", "char_swap"}
    for r in aug:
        p = parents[r["augmentation"]["parent_qa_id"]]
        assert r["qa_id"] not in parents and r["question"] != p["question"]
        assert r["answer"] == p["answer"]  # answers untouched by default
        assert r["messages"] == [{"role": "system", "content": "SYS"}, {"role": "user", "content": r["question"]},
                                 {"role": "assistant", "content": p["answer"]}]
        assert r["split"] == "train" and r["chunk_id"] == p["chunk_id"]
        assert set(r["augmentation"]) >= {"op", "seed", "parent_qa_id", "engine"}
        assert r["augmentation"]["engine"] == ("fake" if r["augmentation"]["op"] == "back_translation" else None)
    assert len({r["qa_id"] for r in out}) == len(out)
    assert sum(stats["augmented_by_op"].values()) == len(aug)


def test_augment_is_deterministic_per_record():
    rows = rows_for(20)
    out1, _, _ = run(rows, seed=3)
    out2, _, _ = run(rows, seed=3)
    assert out1 == out2
    # adding and removing rows changes no other row's augmentation
    out3, _, _ = run([train_row(99, "A brand new question about travel?")] + rows[5:], seed=3)
    by_parent = lambda out: {r["augmentation"]["parent_qa_id"]: r for r in out if r["augmentation"]}
    b1, b3 = by_parent(out1), by_parent(out3)
    for qid in (r["qa_id"] for r in rows[5:]):
        assert b1.get(qid) == b3.get(qid)
    out4, _, _ = run(rows, seed=4)
    assert out4 != out1  # another seed, other augmentations


def test_unchanged_and_number_changes_are_skipped_and_counted():
    rows = [train_row(0, "Is it OK?"), train_row(1, "Is the 42 EUR limit per day?")]
    out, skipped, stats = run(rows, weights={"char_swap": 1})
    assert stats["skipped_by_reason"] == {"unchanged": 1}  # no word of 4+ letters to alter
    out, skipped, stats = run(rows[1:], weights={"back_translation": 1})
    assert stats["skipped_by_reason"] == {"numbers_changed": 1} and len(out) == 1
    assert skipped[0]["parent_qa_id"] == "qa001" and skipped[0]["op"] == "back_translation"


def test_copies_weights_and_answer_augmentation():
    rows = rows_for(10)
    out, skipped, stats = run(rows, copies=3, weights={"char_delete": 1, "char_swap": 0})
    aug = [r for r in out if r["augmentation"]]
    assert {r["augmentation"]["op"] for r in aug} == {"char_delete"}
    assert len(aug) + len(skipped) == 30
    assert all(s["reason"] == "duplicate_copy" for s in skipped)
    out, _, _ = run(rows, weights={"char_swap": 1}, augment_answer=True)
    aug = [r for r in out if r["augmentation"]]
    parents = {r["qa_id"]: r for r in rows}
    assert aug and all(r["augmentation"]["fields"] == ["question", "answer"] for r in aug)
    assert sum(r["answer"] != parents[r["augmentation"]["parent_qa_id"]]["answer"] for r in aug) >= len(aug) // 2
    assert all(r["messages"][-1]["content"] == r["answer"] for r in aug)


def test_bad_params_and_non_train_rows():
    with pytest.raises(ParamsError, match="unknown op"):
        run(rows_for(2), weights={"synonyms": 1})
    with pytest.raises(ParamsError, match="engine"):
        A.check_config(A.AugmentConfig(back_translation=A.BackTranslationConfig(engine="deepl")))
    bad = rows_for(1)
    bad[0]["split"] = "test"
    with pytest.raises(ValueError, match="train rows only"):
        run(bad)


def test_engines_only_built_when_weighted(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    cfg = A.AugmentConfig(weights={"char_delete": 1, "back_translation": 0})
    eng = A.make_engines(cfg)  # apertium missing, but nobody asked for it
    assert eng.synonym is None and eng.back_translation is None
    with pytest.raises(A.EngineUnavailable, match="apt-get install apertium"):
        A.make_engines(A.AugmentConfig(weights={"back_translation": 1}))

