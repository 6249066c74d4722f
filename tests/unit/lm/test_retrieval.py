"""The shared retriever (policytune.lm.retrieval): hybrid finds what a blurry encoder misses
(form codes, amounts), both methods search title + heading + text, ranks are stable, and odd
input (no chunks, no words, CJK) neither crashes nor reorders silently."""

from __future__ import annotations

import re
import zlib

import numpy as np
import pytest

from policytune.lm.retrieval import ChunkIndex, searchable_text, tokens


def letters_embed(texts):
    """A bag-of-words encoder that sees only alphabetic words of 4+ letters: like a small
    sentence encoder, it blurs codes and numbers (FIN-03 and HR-17 look alike)."""
    out = np.zeros((len(texts), 512))
    for i, t in enumerate(texts):
        for w in re.findall(r"[a-z]{4,}", t.lower()):
            out[i, zlib.crc32(w.encode()) % 512] += 1.0  # stable across processes (hash() is salted)
    n = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(n > 0, n, 1)


CHUNKS = [
    {"chunk_id": "a", "title": "Expenses | Corvale", "heading": "Claims",
     "text": "Claims are filed on the claim form HR-17 within the month."},
    {"chunk_id": "b", "title": "Expenses | Corvale", "heading": "Claims",
     "text": "Claims are filed on the claim form FIN-03 within the month."},
    {"chunk_id": "c", "title": "Remote work policy | Corvale", "heading": "Days per team",
     "text": "Finance: up to 3 days a week. Clinical staff: none."},
    {"chunk_id": "d", "title": "Gifts | Corvale", "heading": "",
     "text": "Gifts above 50 EUR go in the register within 5 working days."},
]


def test_hybrid_finds_the_form_code_the_encoder_blurs():
    q = ["Which claims go on form FIN-03?"]
    dense = ChunkIndex(CHUNKS, letters_embed, "dense").search(q, 1)[0]
    hybrid = ChunkIndex(CHUNKS, letters_embed, "hybrid").search(q, 1)[0]
    assert dense == [0]  # a tie between a and b, broken by order: the wrong chunk
    assert hybrid == [1]


def test_title_and_heading_are_searched():
    # chunk c never says "remote" or "work" itself; its title does
    q = ["Which teams may work remotely?"]
    for method in ("dense", "hybrid"):
        assert ChunkIndex(CHUNKS, letters_embed, method).search(q, 1)[0] == [2]
    bare = [{**c, "title": "", "heading": ""} for c in CHUNKS]
    assert ChunkIndex(bare, letters_embed, "dense").search(q, 1)[0] != [2]


def test_searchable_text_cuts_the_site_name_and_does_not_repeat_the_heading():
    c = {"title": "Remote work policy | Corvale Health", "heading": "Days per team",
         "text": "Days per team\nFinance: 3 days."}
    assert searchable_text(c) == "Remote work policy\nDays per team\nFinance: 3 days."
    assert searchable_text({"text": "only text"}) == "only text"


def test_search_shapes_and_order():
    idx = ChunkIndex(CHUNKS, letters_embed)
    assert idx.search([], 3) == []
    out = idx.search(["gifts register", "claims form"], 10)
    assert [len(r) for r in out] == [4, 4]  # k capped at the number of chunks
    assert out[0][0] == 3 and sorted(out[0]) == [0, 1, 2, 3]
    assert idx.search(["gifts register"], 0) == [[]]
    # a question with no word at all: no crash, the stable order of ties
    assert idx.search(["?!"], 2) == [[0, 1]]


def test_no_chunks_and_bad_method():
    assert ChunkIndex([], letters_embed).search(["anything"], 3) == [[]]
    with pytest.raises(ValueError, match="hybrid, dense"):
        ChunkIndex(CHUNKS, letters_embed, "sparse")


def test_tokens_split_cjk_characters():
    assert tokens("第五条 Article 5, HR-17") == ["第", "五", "条", "article", "5", "hr", "17"]
    assert tokens("연차휴가") == ["연", "차", "휴", "가"]


def test_search_reuses_given_cosines_without_encoding_again():
    calls = []

    def counting_embed(texts):
        calls.append(list(texts))
        return letters_embed(texts)

    for method in ("dense", "hybrid"):
        idx = ChunkIndex(CHUNKS, counting_embed, method)
        calls.clear()
        q = ["claims form FIN-03"]
        sims = idx.cosines(q)
        assert idx.search(q, 2, cosines=sims) == ChunkIndex(CHUNKS, letters_embed, method).search(q, 2)
        assert calls == [q]  # encoded once, by cosines()
        with pytest.raises(ValueError, match="shape"):
            idx.search(q, 2, cosines=sims[:, :2])
