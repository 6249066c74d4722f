"""The bundled sample corpus: an invented organisation's policy website plus an external FAQ.

data/sample_site/ is the default scrape source and data/sample_faq.jsonl the unseen evaluation
set. These tests pin the properties the pipeline relies on: enough pages across several policy
domains, real page chrome around the content, links that resolve, a robots.txt disallow, one
legacy-charset page, one page with broken markup, one page with CJK text, and FAQ answers that
are backed by the page they cite. Fast and offline.
"""
from __future__ import annotations

import functools
import json
import re
import urllib.robotparser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from bs4 import BeautifulSoup

from tests.helpers.repo import REPO

ROOT = REPO
SITE = ROOT / "data" / "sample_site"
FAQ = ROOT / "data" / "sample_faq.jsonl"

DOMAINS = {"ai", "hr", "finance", "clinical"}
CP1252_PAGE = "finance/travel-expenses.html"
BROKEN_PAGE = "finance/procurement.html"
CJK_PAGE = "clinical/patient-notice.html"
INTERNAL_PAGE = "internal/draft-policy.html"

NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")
FORM_CODE = re.compile(r"\b[A-Z]{2,3}-\d{2}\b")
CJK = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
META_CP1252 = re.compile(rb'<meta\s+http-equiv="Content-Type"\s+content="text/html;\s*charset=windows-1252"', re.I)


def rel(path: Path) -> str:
    return path.relative_to(SITE).as_posix()


ALL_PAGES = sorted(SITE.rglob("*.html"))
PUBLIC_PAGES = [p for p in ALL_PAGES if not rel(p).startswith("internal/")]


def decode(path: Path) -> str:
    """Decode a page the way its markup declares: windows-1252 via meta tag, else UTF-8."""
    raw = path.read_bytes()
    return raw.decode("cp1252") if META_CP1252.search(raw) else raw.decode("utf-8")


@functools.lru_cache(maxsize=None)
def soup(path: Path, parser: str = "lxml") -> BeautifulSoup:
    """Parsed page, cached: callers only read the tree."""
    return BeautifulSoup(decode(path), parser)


def content_root(doc: BeautifulSoup):
    return doc.find("main") or doc.find("article") or doc.find(id="content")


def page_text(path: Path) -> str:
    return " ".join(soup(path).get_text(" ").split())


def words(path: Path) -> int:
    text = content_root(soup(path)).get_text(" ")
    # CJK has no spaces: count two characters as one word, roughly what a tokenizer sees.
    return len(CJK.sub(" ", text).split()) + len(CJK.findall(text)) // 2


# ---------------------------------------------------------------- pages and domains


def test_enough_pages_across_domains():
    assert len(PUBLIC_PAGES) >= 12
    by_domain = {d: [p for p in PUBLIC_PAGES if rel(p).startswith(d + "/")] for d in DOMAINS}
    covered = [d for d, pages in by_domain.items() if pages]
    assert len(covered) >= 3, by_domain
    assert all(len(pages) >= 3 for pages in by_domain.values()), {d: len(p) for d, p in by_domain.items()}


def test_index_links_every_public_page():
    index = SITE / "index.html"
    linked = {a["href"].split("#")[0] for a in content_root(soup(index)).find_all("a", href=True)}
    missing = {rel(p) for p in PUBLIC_PAGES if p != index} - linked
    assert not missing


def test_every_page_has_a_title_and_one_h1():
    for page in ALL_PAGES:
        doc = soup(page)
        assert doc.title and doc.title.get_text(strip=True), rel(page)
        assert len(content_root(doc).find_all("h1")) == 1, rel(page)


def test_main_content_size():
    counts = {rel(p): words(p) for p in PUBLIC_PAGES}
    for name, n in counts.items():
        assert 300 <= n <= 900, (name, n)
    assert 8000 <= sum(counts.values()) <= 11000, sum(counts.values())


# ---------------------------------------------------------------- chrome and structure


@pytest.mark.parametrize("page", ALL_PAGES, ids=rel)
def test_page_chrome(page):
    doc = soup(page)
    assert doc.find("header"), "header"
    assert doc.find("nav"), "nav"
    assert doc.find("footer"), "footer"
    assert doc.find("style"), "inline style"
    banner = doc.find(id="cookie-banner") or doc.find(class_="cookie-banner")
    assert banner and len(banner.find_all("button")) >= 2, "cookie banner with buttons"
    scripts = doc.find_all("script")
    assert any(s.get("src") for s in scripts), "external script"
    assert any(not s.get("src") and s.string and s.string.strip() for s in scripts), "inline script"
    assert doc.find("form"), "search form"
    assert content_root(doc) is not None, "main content container"


def test_content_structure_varies():
    layouts = {}
    for page in PUBLIC_PAGES:
        doc = soup(page)
        layout = "main" if doc.find("main") else "article" if doc.find("article") else "div#content" if doc.find(id="content") else None
        layouts.setdefault(layout, []).append(rel(page))
    assert None not in layouts
    assert {"main", "article", "div#content"} <= set(layouts), layouts


def test_content_has_lists_and_tables():
    docs = [soup(p) for p in PUBLIC_PAGES]
    assert sum(len(d.find_all("table")) for d in docs) >= 4
    assert sum(len(content_root(d).find_all("ol")) for d in docs) >= 5
    assert sum(len(content_root(d).find_all("ul")) for d in docs) >= 5
    assert all(content_root(d).find("h2") for d in docs)


# ---------------------------------------------------------------- links and robots


def local_targets(page: Path):
    doc = soup(page)
    for tag, attr in (("a", "href"), ("link", "href"), ("script", "src"), ("img", "src"), ("form", "action")):
        for el in doc.find_all(tag):
            value = el.get(attr)
            if not value:
                continue
            parts = urlsplit(value)
            if parts.scheme or parts.netloc:
                continue  # absolute / mailto: / tel: — not part of the bundled site
            yield value, parts


def test_relative_links_resolve():
    broken = []
    for page in ALL_PAGES:
        for value, parts in local_targets(page):
            if not parts.path:  # "#fragment" on the same page
                target = page
            else:
                target = (page.parent / unquote(parts.path)).resolve()
                if SITE.resolve() not in target.parents or not target.is_file():
                    broken.append(f"{rel(page)} -> {value}")
                    continue
            if parts.fragment and target.suffix == ".html":
                if not soup(target).find(id=parts.fragment):
                    broken.append(f"{rel(page)} -> {value} (no id)")
    assert not broken, broken


def test_robots_disallows_internal_and_internal_page_is_linked():
    robots = (SITE / "robots.txt").read_text()
    assert "User-agent: *" in robots and "Disallow: /internal/" in robots
    parser = urllib.robotparser.RobotFileParser()
    parser.parse(robots.splitlines())
    assert not parser.can_fetch("policytune", "http://127.0.0.1:8000/" + INTERNAL_PAGE)
    assert parser.can_fetch("policytune", "http://127.0.0.1:8000/index.html")
    assert (SITE / INTERNAL_PAGE).is_file()
    linking = [rel(p) for p in PUBLIC_PAGES
               if any(v.endswith(INTERNAL_PAGE) for v, _ in local_targets(p))]
    assert linking, "some public page must link to the disallowed page"


# ---------------------------------------------------------------- hostile pages


def test_cp1252_page_is_really_windows_1252():
    raw = (SITE / CP1252_PAGE).read_bytes()
    assert not raw.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"))
    assert META_CP1252.search(raw)
    assert not re.search(rb"<meta\s+charset", raw, re.I)
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    text = raw.decode("cp1252")
    for ch in "€’–é":
        assert ch in text, ch
    # The bytes 0x80-0x9F are where cp1252 differs from latin-1: they must be in use.
    assert re.search(rb"[\x80-\x9f]", raw)
    assert "€" not in raw.decode("latin-1")
    # Exactly one page declares the legacy charset; all the others are UTF-8.
    declared = [rel(p) for p in ALL_PAGES if META_CP1252.search(p.read_bytes())]
    assert declared == [CP1252_PAGE]
    for page in ALL_PAGES:
        if rel(page) != CP1252_PAGE:
            page.read_bytes().decode("utf-8")


def test_cp1252_page_facts_survive_decoding():
    text = page_text(SITE / CP1252_PAGE)
    assert "0.32 € per kilometre" in text
    assert "manager’s prior agreement" in text


@pytest.mark.parametrize("parser", ["lxml", "html.parser"])
def test_broken_page_parses_and_keeps_its_text(parser):
    raw = (SITE / BROKEN_PAGE).read_text(encoding="utf-8")
    # It really is broken: mis-nested inline tags, unquoted attributes, table rows and cells
    # never closed, stray </div>, no </body>.
    assert "<b><i>" in raw and "</b></i>" in raw
    assert "<p class=policy-meta>" in raw and "<table class=policy-table border=1>" in raw
    table = raw[raw.index("<table"):raw.index("</table>")]
    assert "</tr>" not in table and "</td>" not in table
    assert raw.count("</div>") > raw.count("<div")
    assert "</body>" not in raw
    doc = BeautifulSoup(raw, parser)
    text = " ".join(doc.get_text(" ").split())
    for fact in ("140,000 EUR", "Procurement Review Panel", "FIN-08", "45 days", "including purchases funded by research grants"):
        assert fact in text, fact
    assert len(doc.find("table").find_all("tr")) == 5
    if parser == "lxml":  # lxml closes the implied </td></tr>; html.parser nests them instead
        rows = doc.find("table").find_all("tr")
        assert all(len(r.find_all(["td", "th"], recursive=False)) == 3 for r in rows)


def test_cjk_page_is_utf8_with_cjk_and_accented_latin():
    raw = (SITE / CJK_PAGE).read_bytes()
    text = raw.decode("utf-8")
    assert re.search(r'<meta charset="utf-8">', text)
    assert len(re.findall(r"[\u4e00-\u9fff]", text)) > 50  # Han
    assert re.search(r"[\u3040-\u30ff]", text)  # kana
    for ch in "éèßüñ’":
        assert ch in text, ch
    langs = {s.get("lang") for s in soup(SITE / CJK_PAGE).find_all("section")}
    assert {"en", "fr", "de", "es", "ja", "zh-Hans"} <= langs


# ---------------------------------------------------------------- FAQ


def load_faq():
    with FAQ.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_faq_shape():
    rows = load_faq()
    assert 20 <= len(rows) <= 30
    for row in rows:
        assert set(row) == {"question", "answer", "source_page"}
        assert row["question"].endswith("?")
        assert 1 <= len(re.findall(r"[.!?](\s|$)", row["answer"])) <= 2, row["answer"]
    assert len({r["question"] for r in rows}) == len(rows)
    sources = {r["source_page"] for r in rows}
    assert len(sources) >= 10
    assert {s.split("/")[0] for s in sources} >= DOMAINS


def test_faq_answers_are_backed_by_their_source_page():
    for row in load_faq():
        page = SITE / row["source_page"]
        assert page.is_file() and not row["source_page"].startswith("internal/"), row["source_page"]
        text = page_text(page)
        page_numbers = set(NUMBER.findall(text))
        keys = set(NUMBER.findall(row["answer"])) | set(FORM_CODE.findall(row["answer"]))
        assert keys, f"answer has no checkable number or form code: {row['answer']}"
        for key in keys:
            found = key in page_numbers if NUMBER.fullmatch(key) else key in text
            assert found, (row["source_page"], key, row["answer"])
        # Phrased like a separate FAQ, not copied from the page.
        assert row["answer"].rstrip(".") not in text
        assert row["question"].rstrip("?") not in text
