"""corpus.chunking (+ corpus.pdftext): page text + spans, heading-aware chunks under a token
budget with overlap."""

from __future__ import annotations

import re

import pymupdf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policytune.core import records
from policytune.core.params import ParamsError
from policytune.corpus.chunking import ExtractConfig, chunk_document, extract_all
from policytune.corpus.html import RenderConfig, extract_main
from policytune.corpus.pdf import Fonts, render_pdf
from policytune.corpus.pdftext import Block, PageText, page_text
from policytune.corpus.tokens import CJK_TOKEN_CHAR, count_tokens


SENT = ["Travel must be approved by the line manager at least 14 days before departure.",
        "Hotels are capped at €180 per night in Zürich and €140 elsewhere.",
        "Claims without receipts above 25 EUR are rejected by the finance team.",
        "Employees may carry over at most five unused leave days into the next year.",
        "The data protection officer answers every request within 30 days."]


def para(i: int, n: int) -> str:
    return " ".join(SENT[(i + k) % len(SENT)] for k in range(n))


LONG_DOC = f"""<html><head><title>Expenses Policy</title></head><body><main>
<h1>Expenses Policy</h1>
<p>{para(0, 2)}</p>
<h2>1. Scope</h2>
<h3>1.1 Purpose</h3>
<p>{para(1, 3)}</p>
<h2>2. Travel</h2>
<p>{para(2, 6)}</p><p>{para(3, 6)}</p><p>{para(4, 4)}</p>
<ul><li>{SENT[0]}</li><li>{SENT[1]}</li></ul>
<h2>3. 個人情報の取扱い</h2>
<p>個人情報を外部のAIサービスに入力してはなりません。違反は二十四時間以内に情報セキュリティ責任者へ報告してください。</p>
<h2>4. Meals</h2>
<table><tr><th>Meal</th><th>Limit</th></tr><tr><td>Lunch</td><td>25</td></tr><tr><td>Dinner</td><td>45</td></tr></table>
<table><tr><th>Completed years of continuous service with the cooperative</th><th>Working days of annual leave per calendar year</th>
<th>Maximum carry-over into the next leave year</th></tr>
<tr><td>0 to 2 years</td><td>25 days</td><td>5 days</td></tr></table>
</main></body></html>"""

CFG = ExtractConfig(max_tokens=60, overlap_tokens=12)


def render_corpus(base):
    """Two rendered documents (one long, one a copy of it under another URL) + their manifest."""
    rcfg = RenderConfig()
    fonts = Fonts(rcfg)
    rows = []
    for name in ("expenses", "expenses-copy"):
        url = f"https://northwind.example/{name}"
        c = extract_main(LONG_DOC, url, rcfg)
        pdf, pages = render_pdf(c, url, rcfg, fonts)
        doc_id = records.stable_id(url)
        rel = f"data/pdf/{doc_id}.pdf"
        records.atomic_write_bytes(base / rel, pdf)
        rows.append({"doc_id": doc_id, "url": url, "title": c.title, "pdf_path": rel, "pages": pages,
                     "status": "ok", "error": None})
    rows.append({"doc_id": "x", "url": "https://northwind.example/empty", "status": "rejected",
                 "error": "empty_content", "pdf_path": None})
    return base, rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return render_corpus(tmp_path_factory.mktemp("extract"))


@pytest.fixture(scope="module")
def chunked(corpus):
    base, rows = corpus
    return extract_all(rows, base, CFG)


def test_spans_index_back_into_page_text(corpus, chunked):
    base, _ = corpus
    chunks, _ = chunked
    assert chunks
    texts = {}
    for c in chunks:
        key = (c["pdf_path"], c["page"])
        if key not in texts:
            with pymupdf.open(base / c["pdf_path"]) as doc:
                texts[key] = page_text(doc[c["page"] - 1])[0]
        page = texts[key]
        assert page[c["char_start"]:c["char_end"]] == c["text"]
        # never mid-word: whitespace (or a CJK character) on both sides of the span
        before = page[c["char_start"] - 1] if c["char_start"] else " "
        after = page[c["char_end"]] if c["char_end"] < len(page) else " "
        assert before.isspace() or CJK_TOKEN_CHAR.match(before) or CJK_TOKEN_CHAR.match(c["text"][0]), c
        assert after.isspace() or CJK_TOKEN_CHAR.match(after) or CJK_TOKEN_CHAR.match(c["text"][-1]), c


def test_budget_and_overlap(chunked):
    chunks, stats = chunked
    assert all(c["n_tokens"] == count_tokens(c["text"]) <= CFG.max_tokens for c in chunks)
    assert stats["tokens_per_chunk_max"] <= CFG.max_tokens
    doc = [c for c in chunks if c["url"].endswith("/expenses")]
    travel = [c for c in doc if c["heading"] == "2. Travel"]
    assert len(travel) >= 3, "the long section is split"
    for prev, nxt in zip(travel, travel[1:]):
        if prev["page"] == nxt["page"]:
            assert nxt["char_start"] < prev["char_end"], "consecutive chunks of a section overlap"
            shared = prev["char_end"] - nxt["char_start"]
            assert 0 < count_tokens(prev["text"][-shared:]) <= CFG.overlap_tokens + 1
            assert nxt["char_end"] > prev["char_end"]


def test_headings_split_and_paths(chunked):
    chunks, _ = chunked
    doc = [c for c in chunks if c["url"].endswith("/expenses")]
    headings = [c["heading"] for c in doc]
    assert "1. Scope > 1.1 Purpose" in headings
    assert "3. 個人情報の取扱い" in headings and "4. Meals" in headings
    for c in doc:
        # a chunk never runs into the next section
        others = [h for h in ("1. Scope", "2. Travel", "4. Meals") if h != c["heading"].split(" > ")[0]]
        assert not any(h in c["text"] for h in others), c
    first_of = {}
    for c in doc:
        first_of.setdefault(c["heading"], c)
    # consecutive headings stay with the text that follows them
    assert first_of["1. Scope > 1.1 Purpose"]["text"].startswith("1. Scope\n1.1 Purpose\n")
    # the page title / "Source:" header is the record's title and url, not chunk text
    assert not any("Source:" in c["text"] for c in doc)
    assert all(c["title"] == "Expenses Policy" for c in doc)
    cjk = first_of["3. 個人情報の取扱い"]["text"]
    assert "個人情報を外部のAIサービスに入力してはなりません。" in cjk
    meals = first_of["4. Meals"]["text"]
    assert "Meal | Limit" in meals and "Dinner | 45" in meals
    # wrapped header cells (MuPDF puts their pieces in separate blocks) stay one table row
    assert ("Completed years of continuous service with the cooperative | Working days of annual leave per "
            "calendar year | Maximum carry-over into the next leave year\n0 to 2 years | 25 days | 5 days") in meals


def test_records_ids_and_dedupe(corpus, chunked):
    base, rows = corpus
    chunks, stats = chunked
    keys = {"chunk_id", "doc_id", "url", "title", "pdf_path", "page", "char_start", "char_end", "text",
            "n_tokens", "heading"}
    assert all(set(c) == keys for c in chunks)
    assert all(c["chunk_id"] == records.stable_id(c["doc_id"], c["text"]) for c in chunks)
    # the copy under another URL is all duplicates: kept once, counted
    assert {c["url"] for c in chunks} == {"https://northwind.example/expenses"}
    assert stats["duplicates_dropped"] == len(chunks)
    assert stats["docs"] == 2 and stats["chunks"] == len(chunks)
    assert stats["chunks_per_doc_min"] == 0 and stats["docs_without_chunks"] == 1
    # stable across runs: same rows, same order
    again, _ = extract_all(rows, base, CFG)
    assert again == chunks


def test_bad_params_are_errors():
    with pytest.raises(ParamsError):
        ExtractConfig(max_tokens=40, overlap_tokens=30)


# ---------------------------------------------------------------------------------------------
# chunker invariants on synthetic pages (no PDF needed)
# ---------------------------------------------------------------------------------------------

WORD = st.one_of(st.sampled_from("policy leave days approval Zürich naïve the a of manager receipts".split()),
                 st.integers(0, 99999).map(str),
                 st.sampled_from(["e-mail", "don't", "U.S.", "€180", "3.5%", "1,000", "(see", "below).", "—",
                                  "end.", "why?", "人工知能", "。", "x" * 40]))
PARA = st.lists(WORD, min_size=1, max_size=90).map(" ".join).map(lambda s: re.sub(r"\s+", " ", s).strip())
BLOCK = st.tuples(st.booleans(), PARA)


def _page(blocks: list[tuple[bool, str]]) -> PageText:
    text, out, pos = "", [], 0
    for is_head, t in blocks:
        if text:
            text += "\n"
            pos += 1
        text += t
        out.append(Block(pos, pos + len(t), 14.0 if is_head else 10.0, 1.0 if is_head else 0.0, 1))
        pos += len(t)
    return PageText(1, text, out)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(BLOCK, min_size=1, max_size=12), st.integers(8, 80), st.integers(0, 40))
def test_chunker_invariants(blocks, max_tokens, overlap):
    overlap = min(overlap, max_tokens // 2)
    cfg = ExtractConfig(max_tokens=max_tokens, overlap_tokens=overlap, min_chars=1, max_heading_chars=10_000)
    page = _page(blocks)
    doc = {"doc_id": "d", "url": "u", "title": "T", "pdf_path": "p.pdf"}
    rows, _ = chunk_document(doc, [page], cfg)
    covered = set()
    for r in rows:
        text = page.text[r["char_start"]:r["char_end"]]
        assert text == r["text"] and text == text.strip()
        assert r["n_tokens"] == count_tokens(text) <= max_tokens
        s, e = r["char_start"], r["char_end"]
        assert s == 0 or page.text[s - 1].isspace() or CJK_TOKEN_CHAR.match(page.text[s - 1]) or CJK_TOKEN_CHAR.match(text[0])
        assert e == len(page.text) or page.text[e].isspace() or CJK_TOKEN_CHAR.match(page.text[e]) or CJK_TOKEN_CHAR.match(text[-1])
        covered.update(range(s, e))
    # every body character ends up in some chunk
    for b in page.blocks:
        if not b.heading_level:
            body = {i for i in range(b.start, b.end) if not page.text[i].isspace()}
            assert body <= covered
