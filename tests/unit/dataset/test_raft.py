"""RAFT rows (policytune.dataset.raft): the oracle share is what params say, the gold chunk sits
where retrieval put it (or replaces a distractor), distractor-only rows never hold it, the user
turn is exactly the prompt the evaluate stage asks with, and no test question reaches training."""

from __future__ import annotations

import random
import re
import zlib

import numpy as np
import pytest

from policytune.dataset.raft import RaftConfig, build_rows, choose_contexts, self_distill
from policytune.evaluation.answers import build_prompts
from policytune.lm.chat_format import rag_question, to_messages

WORDS = re.compile(r"\w+")


def bow_embed(texts):
    """A deterministic bag-of-words embedder (hashing trick), unit rows: retrieval by overlap."""
    out = np.zeros((len(texts), 256))
    for i, t in enumerate(texts):
        for w in WORDS.findall(t.lower()):
            out[i, zlib.crc32(w.encode()) % 256] += 1.0  # stable across processes (hash() is salted)
    n = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(n > 0, n, 1)


TOPICS = ["hotel limit euros night", "meal allowance geneva", "parental leave weeks", "laptop encryption",
          "expense claim deadline", "remote work days", "gift register value", "data breach report hours",
          "training budget", "overtime approval", "mileage rate car", "conflict of interest form"]
CHUNKS = [{"chunk_id": f"c{i}", "text": f"Policy on {t}. The {t} rule is set by the office. Section {i}."}
          for i, t in enumerate(TOPICS)]


def _rows(n=200, seed=0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        j = rng.randrange(len(TOPICS))
        q, a = f"What is the {TOPICS[j]} rule?", f"Answer {i} about {TOPICS[j]}."
        rows.append({"qa_id": f"q{i}", "question": q, "answer": a, "chunk_id": f"c{j}",
                     "messages": to_messages(q, a, system="SYS"), "augmentation": None})
    return rows


@pytest.mark.parametrize("share", [0.0, 0.5, 0.8, 1.0])
def test_oracle_share_is_as_configured_and_gold_placement_is_right(share):
    rows = _rows()
    out, counts = build_rows(rows, CHUNKS, bow_embed, RaftConfig(oracle_share=share, top_k=3))
    raft = [r for r in out if r.get("raft")]
    assert len(raft) == counts["raft_rows"] == len(rows)
    oracle = [r for r in raft if r["raft"]["oracle"]]
    assert counts["oracle_rows"] == len(oracle)
    assert abs(len(oracle) / len(raft) - share) <= 0.1  # 200 Bernoulli draws
    for r in raft:
        gold = r["chunk_id"]
        ctx = r["raft"]["contexts"]
        assert len(ctx) == 3 and len(set(ctx)) == 3
        assert (gold in ctx) == r["raft"]["oracle"]
        assert r["raft"]["gold_slot"] == (ctx.index(gold) if gold in ctx else None)
        assert r["messages"][-1] == {"role": "assistant", "content": next(x["answer"] for x in rows
                                                                          if x["qa_id"] == r["raft"]["parent_qa_id"])}
        assert r["messages"][0] == {"role": "system", "content": "SYS"}  # the row's own system message


def test_closed_book_rows_kept_and_augmented_copies_skipped():
    rows = _rows(20)
    rows[0] = {**rows[0], "augmentation": {"op": "synonym"}}
    rows[1] = {**rows[1], "chunk_id": "missing"}
    out, counts = build_rows(rows, CHUNKS, bow_embed, RaftConfig())
    assert counts["augmented_skipped"] == 1 and counts["no_source_chunk"] == 1
    assert counts["raft_rows"] == 18 and counts["rows_out"] == 38 == len(out)
    assert [r["qa_id"] for r in out if not r.get("raft")] == [r["qa_id"] for r in rows]  # order and content kept
    out2, c2 = build_rows(rows, CHUNKS, bow_embed, RaftConfig(closed_book=False))
    assert c2["rows_out"] == 20 and sum(1 for r in out2 if not r.get("raft")) == 2
    off, c3 = build_rows(rows, CHUNKS, bow_embed, RaftConfig(enabled=False))
    assert off == rows and c3["raft_rows"] == 0


def test_rows_do_not_shift_when_others_change():
    """The oracle draw depends on (seed, qa_id) only: dropping a row changes no other row."""
    rows = _rows(50)
    a, _ = build_rows(rows, CHUNKS, bow_embed, RaftConfig())
    b, _ = build_rows(rows[1:], CHUNKS, bow_embed, RaftConfig())
    ra = {r["qa_id"]: r["raft"] for r in a if r.get("raft")}
    rb = {r["qa_id"]: r["raft"] for r in b if r.get("raft")}
    assert all(ra[k] == v for k, v in rb.items())


def test_user_turn_is_the_prompt_evaluate_asks_with():
    rows = _rows(10)
    out, _ = build_rows(rows, CHUNKS, bow_embed, RaftConfig(max_chars=40))
    by_id = {c["chunk_id"]: c["text"] for c in CHUNKS}
    for r in (x for x in out if x.get("raft")):
        parent = next(x for x in rows if x["qa_id"] == r["raft"]["parent_qa_id"])
        texts = [by_id[c][:40] for c in r["raft"]["contexts"]]
        assert r["messages"][1]["content"] == rag_question(parent["question"], texts)
        # the evaluate stage's prompt for the same question and excerpts: the same messages
        asked = build_prompts([{"question": parent["question"]}], "SYS", [texts])[0]
        assert r["messages"][:2] == asked


def test_choose_contexts():
    rng = random.Random(0)
    assert choose_contexts([4, 2, 7, 1], gold=2, k=3, oracle=True, rng=rng) == [4, 2, 7]  # kept at its rank
    ctx = choose_contexts([4, 2, 7, 1], gold=9, k=3, oracle=True, rng=rng)
    assert sorted(ctx) == [2, 4, 9] and len(ctx) == 3  # replaces the weakest distractor
    assert choose_contexts([4, 2, 7, 1], gold=2, k=3, oracle=False, rng=rng) == [4, 7, 1]


def _accept_if_same_number(mine, teacher):
    nums = re.findall(r"\d+", teacher)
    return bool(nums) and all(n in mine for n in nums)


def test_self_distill_takes_the_students_answer_only_where_accepted():
    rows = _rows(40)
    for i, r in enumerate(rows):
        r["messages"][-1]["content"] = r["answer"] = f"Limit {i} EUR."
    out, _ = build_rows(rows, CHUNKS, bow_embed, RaftConfig(oracle_share=0.7))
    prompts_seen = []

    def answer(prompts):
        prompts_seen.extend(prompts)
        res = []
        for k, p in enumerate(prompts):
            n = re.search(r"Answer (\d+)", p[-1]["content"])  # not in the prompt: answers vary by position
            if k % 3 == 0:
                res.append({"answer": "The policy sets no limit.", "finish": "eos"})  # wrong: rejected
            elif k % 3 == 1:
                res.append({"answer": "", "finish": "length"})  # truncated: never taken
            else:
                res.append({"answer": None, "finish": "eos", "k": k, "n": n})
        return res

    oracle_idx = [i for i, r in enumerate(out) if (r.get("raft") or {}).get("oracle")]
    teacher = {i: out[i]["messages"][-1]["content"] for i in oracle_idx}

    def answer_right(prompts):
        base = answer(prompts)
        for k, o in enumerate(base):
            if o["answer"] is None:
                o["answer"] = "You may spend up to " + re.findall(r"\d+", teacher[oracle_idx[k]])[0] + " EUR."
        return base

    new, counts = self_distill(out, answer_right, _accept_if_same_number)
    assert len(prompts_seen) == len(oracle_idx)
    assert all(p[-1]["role"] == "user" for p in prompts_seen)  # the prompt without the assistant turn
    assert counts["self_answers"] + counts["teacher_answers"] == len(oracle_idx)
    assert counts["self_answers"] == sum(1 for k in range(len(oracle_idx)) if k % 3 == 2)
    assert counts["self_truncated"] == sum(1 for k in range(len(oracle_idx)) if k % 3 == 1)
    for k, i in enumerate(oracle_idx):
        r = new[i]
        assert r["messages"][:-1] == out[i]["messages"][:-1]
        if k % 3 == 2:
            assert r["raft"]["answer_source"] == "self" and r["raft"]["teacher_answer"] == teacher[i]
            assert r["messages"][-1]["content"].startswith("You may spend up to")
        else:
            assert r["raft"]["answer_source"] == "teacher" and r["messages"][-1]["content"] == teacher[i]
    # closed-book and distractor-only rows are untouched
    assert [new[i] for i in range(len(out)) if i not in oracle_idx] == [out[i] for i in range(len(out)) if i not in oracle_idx]


def test_self_distill_edge_cases():
    rows = _rows(5)
    out, _ = build_rows(rows, CHUNKS, bow_embed, RaftConfig(oracle_share=0.0))
    called = []
    same, counts = self_distill(out, lambda p: called.append(p) or [], _accept_if_same_number)
    assert same == out and not called and counts["self_answers"] == 0  # no oracle row: the student is not asked
    out, _ = build_rows(rows, CHUNKS, bow_embed, RaftConfig(oracle_share=1.0))
    with pytest.raises(ValueError, match="answers to"):
        self_distill(out, lambda p: [], _accept_if_same_number)
